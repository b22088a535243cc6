"""The suite's rule on skips (tests/conftest.py): only a missing CUDA device may skip a test; any other skip is
named at the end of the run and makes the run fail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """Run pytest on one test file outside the repository, with the suite's conftest loaded as a plugin."""
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rs", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_skip_for_any_other_reason_fails_the_run(tmp_path):
    result = run_pytest(
        tmp_path,
        """
        import pytest

        def test_passes():
            pass

        def test_skips():
            pytest.skip("x")

        @pytest.mark.skipif(True, reason="the data is not there")
        def test_skipped_by_mark():
            pass

        def test_skips_without_cuda():
            pytest.skip("needs a CUDA device")

        @pytest.mark.xfail(reason="known", strict=True)
        def test_expected_failure():
            assert False
        """,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 passed, 3 skipped, 1 xfailed" in output  # the skip summary (-rs) still lists every skip
    assert "FAILED (skipped) test_sample.py::test_skips: x" in output
    assert "FAILED (skipped) test_sample.py::test_skipped_by_mark: the data is not there" in output
    assert "FAILED (skipped) test_sample.py::test_skips_without_cuda" not in output
    assert "FAILED (skipped) test_sample.py::test_expected_failure" not in output


def test_a_module_that_skips_itself_fails_the_run(tmp_path):
    result = run_pytest(
        tmp_path,
        """
        import pytest

        pytest.skip("reference files not found", allow_module_level=True)

        def test_never_runs():
            pass
        """,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAILED (skipped) test_sample.py: reference files not found" in output


def test_only_cuda_skips_pass(tmp_path):
    result = run_pytest(
        tmp_path,
        """
        import pytest

        def test_passes():
            pass

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_on_a_gpu():
            pass
        """,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed, 1 skipped" in output and "FAILED" not in output

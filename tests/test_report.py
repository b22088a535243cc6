"""`voxelbase report`: a tiny finished experiment written as a static HTML page, then opened in a real headless
Chromium that must show every image, log nothing to the console and render a non-empty page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, tiny_spec
from voxelbase.catalog import transaction
from voxelbase.catalog.queries import run_query
from voxelbase.catalog.runs import record_experiment, start_training_run
from voxelbase.evaluation.report import CaseResult, ReportError, pick_cases, write_report
from voxelbase.images import read_image
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.project import Project

SPEC = tiny_spec(source="raw")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # a closed network refuses Chromium's own connections
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
# Added to a copy of the page only: the report itself carries no script.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  document.body.dataset.images = broken.length ? "broken:" + broken.map((i) => i.alt).join("|") : "ok";
  document.body.dataset.imageCount = String(images.length);
  document.body.dataset.textLength = String(document.body.innerText.trim().length);
});
</script>
"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed when missing (a fresh CI machine has none)."""
    found = shutil.which("chromium")
    if found is None:
        steps = (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"])
        for step in steps:
            noninteractive = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            result = subprocess.run(step, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=noninteractive)
            if result.returncode != 0:
                pytest.fail(
                    f"Chromium is needed to check the HTML report and could not be installed ({' '.join(step)} "
                    f"exited {result.returncode}: {result.stderr.strip()[-500:]}); install Debian's 'chromium' "
                    "package (apt-get install chromium) and run the tests again"
                )
        found = shutil.which("chromium")
        if found is None:
            pytest.fail("apt-get installed 'chromium' but no chromium executable is on PATH")
    return found


def open_in_chromium(binary: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            # without a session bus Chromium waits seconds on each D-Bus call; 'disabled:' skips them
            env={**os.environ, "HOME": profile, "DBUS_SESSION_BUS_ADDRESS": "disabled:"},
        )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Project:
    """'tiny': 3d_fullres trained on folds 0 and 1 (one epoch of two iterations), validated, postprocessed, selected."""
    root = tmp_path_factory.mktemp("report")
    write_demo_dataset(root / "raw", cases=6, test_cases=0, seed=4, shape=(12, 24, 24))
    (root / "spec.toml").write_text(SPEC)
    project = Project.resolve(root / "project")
    run_cli(project, "run", str(root / "spec.toml"))
    return project


def validation_case_count(project: Project) -> int:
    rows = run_query(
        "SELECT count(DISTINCT m.case_id) AS n FROM metrics m JOIN result_runs r USING (run_id) "
        "WHERE r.experiment = 'tiny' AND r.fold <> 'all'",
        project=project,
    ).to_pylist()
    return rows[0]["n"]


def test_report_renders_in_headless_chromium(finished, chromium, tmp_path):
    out = tmp_path / "report"
    result = run_cli(finished, "report", "tiny", "--output", str(out))
    index = out / "index.html"
    assert str(index) in result.output and index.is_file()
    text = index.read_text(encoding="utf-8")

    # self-contained: no script, stylesheet link or address outside the file
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img [^>]*src="([^"]+)"', text))
    # the tables: compare per metric (with the pooled 'mean' row), the selection, the postprocessing decision
    assert [m for m in ("dice", "hd95", "iou", "nsd") if f'class="compare {m}"' in text] == [
        "dice",
        "hd95",
        "iou",
        "nsd",
    ]
    for column in ("dice_liver", "dice_tumor", "dice_kidney", "dice_fg", "hd95_liver"):
        assert f"<th>{column}</th>" in text
    assert text.count('<tr class="mean">') == 4 and "±" in text
    assert "Chosen: <strong>3d_fullres</strong>" in text
    assert "largest foreground component" in text
    # the figures: a curve per fold, a distribution per configuration, best/median/worst overlays
    n_cases = validation_case_count(finished)
    assert n_cases == 3
    assert text.count('<img class="curves"') == 2
    assert text.count('<img class="distribution"') == 1
    assert text.count('<img class="overlay"') == min(3, n_cases)
    for role in ("best:", "median:", "worst:"):
        assert f"<figcaption>{role} demo_" in text
    assert "no saved prediction" not in text

    checked = out / "check.html"  # beside index.html, so relative references would resolve the same
    checked.write_text(text.replace("</body>", IMAGE_CHECK + "</body>"), encoding="utf-8")
    dom = open_in_chromium(chromium, checked, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], "console messages:\n" + "\n".join(console)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attributes.get("images") == "ok", attributes
    assert int(attributes["image-count"]) == text.count("<img ") == 6
    assert int(attributes["text-length"]) > 500

    screenshot = tmp_path / "report.png"
    shot = open_in_chromium(chromium, index, f"--screenshot={screenshot}", "--window-size=1400,4400")
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], "console messages:\n" + "\n".join(console)
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (4400, 1400)
    assert (pixels < 200).mean() > 0.02, f"the screenshot {screenshot} is (nearly) blank"
    print(f"report screenshot: {screenshot}")


def test_overlays_read_the_arrays_kept_without_simpleitk(finished, tmp_path):
    """Validation on a machine without SimpleITK keeps `<case>.segmentation.npz`; a missing file is named."""
    project = Project.resolve(tmp_path / "copy")
    shutil.copytree(finished.root, project.root)
    saved = sorted((project.runs_path / "tiny" / "3d_fullres").glob("fold_*/validation/*.nii.gz"))
    assert len(saved) == 3
    for path in saved[:-1]:
        segmentation, _ = read_image(path)
        np.savez_compressed(
            path.with_name(path.name.replace(".nii.gz", ".segmentation.npz")), segmentation=segmentation
        )
        path.unlink()
    saved[-1].unlink()
    text = write_report("tiny", output=tmp_path / "out", project=project).read_text(encoding="utf-8")
    assert text.count('<img class="overlay"') == 3
    assert len(re.findall(r"<figcaption>[^<]*no saved prediction", text)) == 1  # the case whose file is gone


def test_unknown_or_unfinished_experiments_are_clear_errors(finished, tmp_path):
    result = run_cli(finished, "report", "nope", "--output", str(tmp_path / "out"), expect_ok=False)
    assert result.exit_code == 1 and "unknown experiment 'nope'" in result.output and "tiny" in result.output
    assert not (tmp_path / "out").exists()

    project = Project.resolve(tmp_path / "fresh")
    with transaction(project) as con:
        record_experiment(con, name="pending", dataset="demo", spec={}, spec_hash="h")
        start_training_run(
            con,
            experiment="pending",
            configuration="3d_fullres",
            fold="0",
            plan="nnunet-8gb",
            spec_hash="h",
            epochs=1,
            device="cpu",
            run_dir=str(tmp_path),
        )
    with pytest.raises(ReportError, match="no finished training run"):
        write_report("pending", output=tmp_path / "out", project=project)


def _case(case_id: str, *dice: float | None) -> CaseResult:
    return CaseResult("3d_fullres", "train", "0", case_id, dict(enumerate(dice, 1)), {})


def test_best_median_and_worst_by_mean_foreground_dice():
    cases = [_case("a", 0.2, 0.4), _case("b", 0.9, None), _case("c", 0.5), _case("d", None, None), _case("e", 0.1)]
    cases.append(_case("f", 0.7, 0.7))
    picks = [(role, case.case_id) for role, case in pick_cases(cases)]
    assert picks == [("best", "b"), ("median", "c"), ("worst", "e")]  # b .9, f .7, c .5, a .3, e .1; d: no Dice
    assert [(r, c.case_id) for r, c in pick_cases(cases[:2])] == [("best = median", "b"), ("worst", "a")]
    assert [(r, c.case_id) for r, c in pick_cases(cases[1:2])] == [("best = median = worst", "b")]
    assert pick_cases([_case("d", None)]) == []

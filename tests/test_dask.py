"""Per-case work on Dask `distributed`: a real LocalCluster of 2 worker processes against the local process pool.

Ingest and preprocessing on the cluster must leave the same catalog rows and the same store bytes as the pool; a
worker that dies in the middle of a case must not leave it half-written or done twice; a bad scheduler is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import pytest

from tests.conftest import catalog_snapshot, run_cli, sql_rows
from voxelbase.parallel import SCHEDULER_ENV, THREAD_VARIABLES, SchedulerError, completed, resolve_scheduler
from voxelbase.preprocessing import dataset as preprocessing
from voxelbase.project import Project

VICTIM = "demo_002"
STAGE_ROWS = (
    "SELECT case_id, shape, spacing, original_spacing, shape_before_cropping, bbox, shape_after_cropping, input_hash, "
    "stored_bytes FROM preprocessed_cases ORDER BY case_id"
)
CASE_ROWS = "SELECT case_id, shape, spacing, origin, direction, content_hash FROM cases ORDER BY case_id"
LOCATION_ROWS = "SELECT case_id, label, count(*) AS n, sum(z * 10000 + y * 100 + x) AS s FROM class_locations GROUP BY ALL ORDER BY ALL"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dask") / "raw"
    run_cli(
        Project.resolve(out.parent / "scratch"),
        "demo-data",
        str(out),
        "--cases",
        "4",
        "--test-cases",
        "0",
        "--shape",
        "12",
        "24",
        "24",
    )
    return out


def _prepare(project: Project, raw: Path, *options: str) -> None:
    run_cli(project, "ingest", str(raw), "--name", "demo", *options)
    run_cli(project, "plan", "demo")
    run_cli(project, "preprocess", "demo", "-c", "3d_fullres", *options)


def _store_files(project: Project) -> dict[str, str]:
    return catalog_snapshot(project)["files"]


def test_a_local_cluster_writes_what_the_pool_writes(raw, tmp_path):
    pool, cluster = Project.resolve(tmp_path / "pool"), Project.resolve(tmp_path / "cluster")
    _prepare(pool, raw, "--workers", "2")
    threads = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    _prepare(cluster, raw, "--scheduler", "local:2")
    assert os.environ.get(SCHEDULER_ENV) is None  # the option holds for its command only
    # Dask's one-thread settings for its workers do not leak into this process (a later training would inherit them)
    assert {name: os.environ.get(name) for name in THREAD_VARIABLES} == threads
    files = _store_files(pool)
    assert len(files) > 20 and _store_files(cluster) == files
    for query in (CASE_ROWS, STAGE_ROWS, LOCATION_ROWS):
        assert sql_rows(cluster, query) == sql_rows(pool, query)


def preprocess_dying_once(task):
    """On the victim's first attempt: start writing its temporary folder, then kill this worker process."""
    marker = Path(task.project_root) / f"killed-{task.case_id}"
    if task.case_id == VICTIM and not marker.exists():
        marker.write_text(str(os.getpid()))
        from voxelbase.store.layout import stage_dir

        partial = stage_dir(Project.resolve(task.project_root), task.dataset, task.stage) / (
            f".{task.case_id}{preprocessing.PARTIAL}{os.getpid()}"
        )
        (partial / "image").mkdir(parents=True)
        (partial / "image" / "zarr.json").write_text("{")  # half-written
        os._exit(1)
    return preprocessing.preprocess_stored_case(task)


def test_a_worker_killed_mid_case_leaves_every_case_done_once(raw, tmp_path, monkeypatch):
    reference = Project.resolve(tmp_path / "reference")
    _prepare(reference, raw, "--workers", "1")
    project = Project.resolve(tmp_path / "killed")
    run_cli(project, "ingest", str(raw), "--name", "demo", "--workers", "1")
    run_cli(project, "plan", "demo")
    monkeypatch.setattr(preprocessing, "preprocess_stored_case", preprocess_dying_once)
    run_cli(project, "preprocess", "demo", "-c", "3d_fullres", "--scheduler", "local:2")
    assert (project.root / f"killed-{VICTIM}").exists()  # it did die once
    rows = sql_rows(project, "SELECT case_id, count(*) AS n FROM preprocessed_cases GROUP BY case_id ORDER BY 1")
    assert rows == [{"case_id": f"demo_{i:03d}", "n": 1} for i in range(4)]
    stage = project.store_path / "demo" / "nnunet-8gb" / "3d_fullres"
    assert not [p.name for p in stage.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert _store_files(project) == _store_files(reference)
    assert sql_rows(project, STAGE_ROWS) == sql_rows(reference, STAGE_ROWS)


def test_bad_schedulers_are_refused(raw, tmp_path):
    for bad in ("local:0", "local:two", "local:"):
        with pytest.raises(SchedulerError, match="local:N"):
            resolve_scheduler(bad)
    project = Project.resolve(tmp_path / "p")
    result = run_cli(project, "ingest", str(raw), "--name", "demo", "--scheduler", "local:0", expect_ok=False)
    assert result.exit_code != 0 and "local:N" in result.output
    assert not project.catalog_path.exists()  # nothing was stored
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(SchedulerError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"),
    ):
        list(completed(len, ["a"], workers=1, scheduler="tcp://127.0.0.1:9"))


def test_predict_on_a_local_cluster_writes_what_the_serial_predict_writes(preprocessed_base, tmp_path, monkeypatch):
    from tests.conftest import copy_project, volume_digest
    from voxelbase.inference import predict as prediction

    on_dask = []
    real = prediction._predict_on_dask
    monkeypatch.setattr(prediction, "_predict_on_dask", lambda *a, **k: on_dask.append(k["scheduler"]) or real(*a, **k))

    project = copy_project(preprocessed_base, tmp_path)
    images = preprocessed_base.parent / "raw" / "imagesTr"
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny"\ndataset = "demo"\n[train]\nfolds = [0]\nepochs = 1\niterations_per_epoch = 2\n'
        'val_iterations = 1\nnum_workers = 1\ndevice = "cpu"\nvalidate = false\n[predict]\ntta = false\n'
    )
    run_cli(project, "train", str(spec), "--fold", "0")
    serial, dask_out = tmp_path / "serial", tmp_path / "dask"
    run_cli(project, "predict", "--experiment", "tiny", "--input", str(images), "--output", str(serial))
    result = run_cli(
        project, "predict", "--experiment", "tiny", "--input", str(images), "--output", str(dask_out),
        "--scheduler", "local:2",
    )  # fmt: skip
    assert "wrote 6 segmentation(s)" in result.output and on_dask == ["local:2"]  # the serial run did not use it
    written = sorted(p.name for p in serial.iterdir())
    assert written == sorted(p.name for p in dask_out.iterdir()) and len(written) == 6
    for name in written:
        assert volume_digest(serial / name) == volume_digest(dask_out / name), name

    bundle, from_bundle = tmp_path / "bundle", tmp_path / "bundle_out"  # a bundle: workers load it themselves
    run_cli(project, "export", "tiny", "--output", str(bundle))
    run_cli(project, "predict", "--model", str(bundle), "--input", str(images), "--output", str(from_bundle),
            "--scheduler", "local:2")  # fmt: skip
    assert on_dask == ["local:2", "local:2"]
    for name in written:
        assert volume_digest(serial / name) == volume_digest(from_bundle / name), name

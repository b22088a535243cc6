"""End to end on a sparsely annotated copy of the demo CT (the ignore label) through the CLI: sample data and its
sparse copy, ingest, plan, run (train 3d_fullres on 2 folds, validate, score, postprocess, select), predict,
evaluate against the sparse and the dense labels, compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from tests.conftest import run_cli, sql_rows
from voxelbase.images import read_image
from voxelbase.project import Project
from voxelbase.store.layout import case_dir

IGNORE = 4  # the demo CT declares 0-3
SPEC = """name = "sparse"
dataset = "sparse"
[train]
configurations = ["3d_fullres"]
folds = [0, 1]
epochs = 1
iterations_per_epoch = 1
val_iterations = 1
num_workers = 1
[predict]
tta = false
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    project = Project.resolve(root / "project")
    dense, sparse = root / "dense", root / "sparse_raw"
    run_cli(project, "demo-data", str(dense), "--cases", "4", "--test-cases", "1", "--shape", "12", "24", "24")
    run_cli(project, "demo-data", str(sparse), "--sparse-from", str(dense), "--keep-every", "3")
    run_cli(project, "ingest", str(sparse), "--name", "sparse", "--workers", "1")
    run_cli(project, "plan", "sparse")
    run_cli(project, "splits", "sparse", "--folds", "2")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    run_cli(project, "run", str(spec))
    return root, project


def test_the_sparse_copy_keeps_one_slice_in_n_per_axis(finished):
    root, _ = finished
    description = json.loads((root / "sparse_raw" / "dataset.json").read_text())
    assert description["labels"]["ignore"] == IGNORE
    dense = read_image(root / "dense" / "labelsTr" / "demo_000.nii.gz")[0]
    sparse = read_image(root / "sparse_raw" / "labelsTr" / "demo_000.nii.gz")[0]
    kept = sparse != IGNORE
    assert np.array_equal(sparse[kept], dense[kept])
    assert kept[1].all() and kept[:, 1].all() and kept[:, :, 1].all()  # offset 3 // 2 on each axis
    assert not kept[0, 0, 0] and 0.3 < kept.mean() < 0.8


def test_the_network_has_no_output_for_the_ignore_label_and_never_predicts_it(finished):
    _, project = finished
    plan = json.loads((project.root / "plans" / "sparse" / "nnunet-8gb.json").read_text())
    assert plan["configurations"]["3d_fullres"]["num_classes"] == 4  # background + 3; no ignore output
    for fold in ("0", "1"):
        for path in (project.run_dir("sparse", "3d_fullres", fold) / "validation").glob("*.nii.gz"):
            assert read_image(path)[0].max() < IGNORE


def test_class_locations_never_fall_on_ignored_voxels(finished):
    _, project = finished
    rows = sql_rows(project, "SELECT case_id, label, z, y, x FROM class_locations WHERE dataset = 'sparse'")
    assert {-1, 1} <= {r["label"] for r in rows}  # the annotated voxels' key and the classes
    arrays = {}
    for row in rows:
        case = row["case_id"]
        if case not in arrays:
            arrays[case] = zarr.open_array(
                str(case_dir(project, "sparse", case, stage="nnunet-8gb/3d_fullres") / "label"), mode="r"
            )[...]
        assert arrays[case][row["z"], row["y"], row["x"]] != IGNORE


def test_validation_metrics_leave_ignored_voxels_out(finished):
    _, project = finished
    rows = sql_rows(
        project,
        "SELECT m.case_id, m.label, m.tp, m.fp, m.fn, r.fold FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.kind = 'train' ORDER BY m.case_id, m.label",
    )
    assert rows
    for row in rows:
        folder = project.run_dir("sparse", "3d_fullres", row["fold"]) / "validation"
        pred = read_image(folder / f"{row['case_id']}.nii.gz")[0]
        ref = zarr.open_array(str(case_dir(project, "sparse", row["case_id"]) / "label"), mode="r")[...]
        annotated = ref != IGNORE
        p, r = (pred == row["label"]) & annotated, ref == row["label"]
        assert (row["tp"], row["fp"], row["fn"]) == (
            int(np.sum(p & r)),
            int(np.sum(p & ~r)),
            int(np.sum(r & ~p)),
        )


def test_predict_evaluate_against_dense_labels_and_compare(finished):
    root, project = finished
    assert sql_rows(project, "SELECT choice FROM selections")
    assert sql_rows(project, "SELECT decision FROM postprocessing")
    out = root / "predicted"
    run_cli(
        project,
        "predict",
        "--experiment",
        "sparse",
        "--input",
        str(root / "sparse_raw" / "imagesTs"),
        "--output",
        str(out),
    )
    assert len(list(out.glob("*.nii.gz"))) == 1
    validation = project.run_dir("sparse", "3d_fullres", "0") / "validation"
    run_cli(
        project,
        "evaluate",
        str(validation),
        "--reference",
        str(root / "dense" / "labelsTr"),
        "--name",
        "dense",
        "--workers",
        "1",
    )
    run_cli(project, "evaluate", str(validation), "--dataset", "sparse", "--name", "sparse_labels", "--workers", "1")
    counts = {
        r["name"]: r["n_ref"]
        for r in sql_rows(
            project,
            "SELECT e.name, sum(m.n_ref) AS n_ref FROM evaluations e JOIN metrics m USING (run_id) GROUP BY e.name",
        )
    }
    assert counts["dense"] > counts["sparse_labels"] > 0  # the sparse labels score only the annotated voxels
    table = run_cli(project, "compare", "sparse").output
    assert "dice_liver" in table and "dice_ignore" not in table

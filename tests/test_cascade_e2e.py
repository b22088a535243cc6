"""The cascade end to end on tiny data: a memory target small enough that the planner makes all four
configurations, then one `voxelbase run` of a spec listing all four that trains and validates each (every 3d_lowres
fold's validation handing its held-out cases over to the next stage before 3d_cascade_fullres trains), selects among
them, and a `predict` of the cascade; then the refusals. Two folds (`voxelbase
splits --folds 2` on 4 cases) keep it small: the hand-over needs every case held out once, whatever the fold count."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import zarr

from tests.conftest import catalog_snapshot, run_cli, sql_rows
from voxelbase.images import read_image
from voxelbase.networks import network_for_plan
from voxelbase.planning import load_plan
from voxelbase.project import Project

CONFIGURATIONS = ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
SPEC = """name = "casc"
dataset = "casc"
[plan]
gpu_memory_gb = 0.01
[train]
configurations = ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
folds = [0, 1]
epochs = 1
iterations_per_epoch = 1
val_iterations = 1
num_workers = 1
save_probabilities = false
[predict]
tta = false
step_size = 1.0  # windows that just touch: a quarter of nnU-Net's default count on these tiny patches
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    project = Project.resolve(root / "project")
    run_cli(project, "demo-data", str(root / "raw"), "--cases", "4", "--test-cases", "1", "--shape", "16", "48", "48")
    run_cli(project, "ingest", str(root / "raw"), "--name", "casc", "--workers", "1")
    run_cli(project, "plan", "casc", "--gpu-memory", "0.01")
    run_cli(project, "splits", "casc", "--folds", "2")
    (root / "spec.toml").write_text(SPEC)
    result = run_cli(project, "run", str(root / "spec.toml"))
    return root, project, result.output


def _weights(project: Project, configuration: str, fold: str) -> dict:
    return torch.load(
        project.run_dir("casc", configuration, fold) / "checkpoint_final.pt", map_location="cpu", weights_only=False
    )["network"]


def test_one_run_trains_every_configuration_and_selects(finished):
    _, project, output = finished
    plan = json.loads(next((project.root / "plans" / "casc").glob("*.json")).read_text())
    assert sorted(plan["configurations"]) == sorted(CONFIGURATIONS)
    assert plan["configurations"]["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    rows = sql_rows(project, "SELECT configuration, count(*) AS n FROM runs WHERE status = 'finished' GROUP BY 1")
    assert {r["configuration"]: r["n"] for r in rows} == dict.fromkeys(CONFIGURATIONS, 2)
    assert "selected" in output
    scored = sql_rows(project, "SELECT DISTINCT r.configuration FROM metrics JOIN runs r USING (run_id) ORDER BY 1")
    assert [r["configuration"] for r in scored] == sorted(CONFIGURATIONS)  # selection chose among all four
    assert len(sql_rows(project, "SELECT choice FROM selections WHERE experiment = 'casc'")) == 1
    # the cascade's training steps came after every low-res validation (which wrote its input)
    order = [r["step"] for r in sql_rows(project, "SELECT step FROM steps ORDER BY finished_at")]
    assert max(order.index(f"validate:3d_lowres:{f}") for f in "01") < order.index("train:3d_cascade_fullres:0")


def test_each_case_is_handed_over_by_the_lowres_fold_that_held_it_out(finished):
    _, project, _ = finished
    rows = sql_rows(
        project,
        "SELECT n.case_id, n.fold, n.run_id, n.next_configuration, r.fold AS run_fold, r.configuration AS run_config "
        "FROM next_stage_predictions n JOIN runs r USING (run_id) ORDER BY n.case_id",
    )
    splits = sql_rows(project, "SELECT fold, case_id FROM splits WHERE dataset = 'casc' AND role = 'val'")
    held_out = {r["case_id"]: str(r["fold"]) for r in splits}
    assert [r["case_id"] for r in rows] == [f"demo_{i:03d}" for i in range(4)]
    for row in rows:
        assert row["fold"] == held_out[row["case_id"]] == row["run_fold"]
        assert row["run_config"] == "3d_lowres" and row["next_configuration"] == "3d_cascade_fullres"
        stored = zarr.open_array(
            str(project.run_dir("casc", "3d_lowres", "0").parent / "predicted_next_stage" / row["case_id"]), mode="r"
        )
        shape = sql_rows(
            project,
            "SELECT shape FROM preprocessed_cases WHERE configuration = '3d_cascade_fullres' "
            f"AND case_id = '{row['case_id']}'",
        )[0]["shape"]
        assert list(stored.shape) == shape
        assert set(np.unique(stored[...])) <= {0, 1, 2, 3}


def test_the_cascade_network_takes_one_extra_channel_per_foreground_label(finished):
    _, project, _ = finished
    cascade = _weights(project, "3d_cascade_fullres", "0")
    plan = load_plan(project, "casc", configuration="3d_fullres")
    fullres = network_for_plan(plan, deep_supervision=True).state_dict()  # the same U-Net without the cascade
    first = next(k for k in cascade if k.endswith("weight") and cascade[k].ndim == 5)
    assert cascade[first].shape[1] == 1 + 3 and fullres[first].shape[1] == 1  # CT + liver, tumor, kidney
    extra = sum(v.numel() for v in cascade.values()) - sum(v.numel() for v in fullres.values())
    out_channels, _, *kernel = cascade[first].shape
    assert extra == out_channels * 3 * int(np.prod(kernel))  # nnU-Net's count: only the first conv grows


def test_predict_runs_the_lowres_stage_then_the_cascade(finished):
    root, project, _ = finished
    out = root / "pred"
    run_cli(
        project,
        "predict",
        "-e",
        "casc",
        "-c",
        "3d_cascade_fullres",
        "--input",
        str(root / "raw" / "imagesTs"),
        "--output",
        str(out),
        "--no-tta",
    )
    predicted, geometry = read_image(out / "demo_004.nii.gz")
    source, source_geometry = read_image(root / "raw" / "imagesTs" / "demo_004_0000.nii.gz")
    assert predicted.shape == source.shape and geometry.spacing == pytest.approx(source_geometry.spacing)
    assert set(np.unique(predicted)) <= {0, 1, 2, 3}


def test_a_second_run_has_nothing_to_do(finished):
    root, project, _ = finished
    result = run_cli(project, "run", str(root / "spec.toml"))
    assert "never ran" not in result.output and " ran " not in result.output.replace("already", "")


def test_a_cascade_whose_lowres_folds_are_missing_is_refused_naming_them(finished, tmp_path):
    root, _, _ = finished
    project = Project.resolve(tmp_path / "fresh")
    run_cli(project, "ingest", str(root / "raw"), "--name", "casc", "--workers", "1")
    run_cli(project, "plan", "casc", "--gpu-memory", "0.01")
    run_cli(project, "splits", "casc", "--folds", "2")
    run_cli(project, "preprocess", "casc", "-c", "3d_cascade_fullres", "--workers", "1")
    (tmp_path / "spec.toml").write_text(SPEC)
    before = catalog_snapshot(project)
    result = run_cli(
        project, "train", str(tmp_path / "spec.toml"), "-c", "3d_cascade_fullres", "--fold", "0", expect_ok=False
    )
    assert result.exit_code != 0
    assert "3d_lowres fold(s) 0, 1" in result.output and "no 3d_lowres prediction" in result.output
    after = catalog_snapshot(project)
    assert after["files"] == before["files"]
    assert sql_rows(project, "SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_a_plan_without_lowres_has_no_cascade_to_train(finished, tmp_path):
    root, _, _ = finished
    project = Project.resolve(tmp_path / "default")
    run_cli(project, "ingest", str(root / "raw"), "--name", "casc", "--workers", "1")
    run_cli(project, "plan", "casc")  # 8 GB: these volumes fit one patch, no low-res stage
    (tmp_path / "spec.toml").write_text(SPEC.replace("0.01", "8"))
    result = run_cli(
        project, "train", str(tmp_path / "spec.toml"), "-c", "3d_cascade_fullres", "--fold", "0", expect_ok=False
    )
    assert result.exit_code != 0 and "'3d_cascade_fullres' was never planned" in result.output


def test_a_cascade_is_not_exported_to_nnunet(finished, tmp_path):
    _, project, _ = finished
    out = tmp_path / "exported"
    args = ["export", "casc", "--output", str(out), "-c", "3d_cascade_fullres", "--format", "nnunet"]
    result = run_cli(project, *args, expect_ok=False)
    assert result.exit_code != 0 and "3d_cascade_fullres cannot be exported yet" in result.output
    assert "3d_lowres" in result.output and not out.exists()


def test_a_bundle_of_the_cascade_carries_its_lowres_stage(finished, tmp_path):
    root, project, _ = finished
    bundle = tmp_path / "casc.zip"
    run_cli(project, "export", "casc", "-c", "3d_cascade_fullres", "--output", str(bundle))
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["choice"] == "3d_cascade_fullres"
    assert manifest["configurations"] == {"3d_cascade_fullres": ["0", "1"], "3d_lowres": ["0", "1"]}
    inputs = root / "raw" / "imagesTs"
    outputs = {name: tmp_path / name for name in ("experiment", "bundle", "imported")}
    run_cli(project, "predict", "-e", "casc", "-c", "3d_cascade_fullres", "--input", str(inputs), "--output",
            str(outputs["experiment"]), "--no-tta")  # fmt: skip
    run_cli(project, "predict", "--model", str(bundle), "--input", str(inputs), "--output", str(outputs["bundle"]),
            "--no-tta")  # fmt: skip
    other = Project.resolve(tmp_path / "other")
    run_cli(other, "import-model", str(bundle), "--name", "back")
    run_cli(other, "predict", "-e", "back", "-c", "3d_cascade_fullres", "--input", str(inputs), "--output",
            str(outputs["imported"]), "--no-tta")  # fmt: skip
    reference = read_image(outputs["experiment"] / "demo_004.nii.gz")[0]
    for name in ("bundle", "imported"):  # the same networks, the same low-res stage first: the same labels
        assert np.array_equal(read_image(outputs[name] / "demo_004.nii.gz")[0], reference), name


def test_a_bundle_of_the_cascade_without_its_lowres_folds_is_refused(finished, tmp_path):
    _, project, _ = finished
    lowres = project.run_dir("casc", "3d_lowres", "1")
    moved = lowres.with_name("1.moved-away")
    lowres.rename(moved)  # the catalog says finished, but no final checkpoint is on disk: not a trained fold
    try:
        out = tmp_path / "casc.zip"
        result = run_cli(project, "export", "casc", "-c", "3d_cascade_fullres", "--output", str(out), expect_ok=False)
    finally:
        moved.rename(lowres)
    assert result.exit_code == 1 and "3d_lowres" in result.output and "fold(s) 1" in result.output
    assert not out.exists()

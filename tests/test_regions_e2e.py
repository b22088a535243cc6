"""End to end on a tiny BraTS-like dataset (region labels) through the CLI: sample data, ingest, plan, run (train
2d and 3d_fullres on 2 folds, validate, score, postprocess, ensemble, select), predict, evaluate, compare."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import nnunet_round_trip, run_cli, sql_rows
from voxelbase.images import read_image, read_probabilities
from voxelbase.networks import load_checkpoint
from voxelbase.plan import ConfigurationPlan
from voxelbase.project import Project

REGIONS = ["whole_tumor", "tumor_core", "enhancing_tumor"]
SPEC = """name = "regions"
dataset = "brats"
[train]
configurations = ["2d", "3d_fullres"]
folds = [0, 1]
epochs = 1
iterations_per_epoch = 1
val_iterations = 1
num_workers = 1
save_probabilities = true
[predict]
tta = false
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    project = Project.resolve(root / "project")
    raw = root / "raw"
    run_cli(
        project,
        "demo-data",
        str(raw),
        "--kind",
        "brats",
        "--cases",
        "4",
        "--test-cases",
        "1",
        "--shape",
        "12",
        "20",
        "20",
    )
    run_cli(project, "ingest", str(raw), "--name", "brats", "--workers", "1")
    run_cli(project, "plan", "brats")
    run_cli(project, "splits", "brats", "--folds", "2")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    run_cli(project, "run", str(spec))
    return root, project


def test_the_plan_has_one_sigmoid_output_per_region(finished):
    root, project = finished
    plan = json.loads((project.root / "plans" / "brats" / "nnunet-8gb.json").read_text())["configurations"]
    for configuration in plan.values():
        assert configuration["num_classes"] == 3
        assert configuration["regions_class_order"] == [1, 2, 3]
        assert configuration["region_names"] == REGIONS


def test_validation_is_scored_per_region_named_with_its_label_list(finished):
    _, project = finished
    rows = sql_rows(
        project,
        "SELECT DISTINCT m.label, m.region, l.region_values, l.value FROM metrics m JOIN runs r USING (run_id) "
        "JOIN labels l ON l.dataset = 'brats' AND l.name = m.region WHERE r.kind = 'train' ORDER BY m.label",
    )
    assert [(r["label"], r["region"]) for r in rows] == list(enumerate(REGIONS, 1))
    assert rows[0]["region_values"] == [1, 2, 3] and rows[2]["value"] == 3
    epochs = sql_rows(project, "SELECT val_dice FROM epochs")
    assert epochs and all(len(e["val_dice"]) == 3 for e in epochs)


def test_saved_probabilities_are_per_region_sigmoid_maps_and_the_segmentation_their_conversion(finished):
    _, project = finished
    folder = project.run_dir("regions", "3d_fullres", "0") / "validation"
    npz = sorted(folder.glob("*.npz"))
    assert npz
    probabilities = read_probabilities(npz[0])
    assert probabilities.shape[0] == 3 and probabilities.min() >= 0 and probabilities.max() <= 1
    segmentation = read_image(folder / npz[0].name.replace(".npz", ".nii.gz"))[0]
    expected = np.zeros(segmentation.shape, np.uint16)
    for index, value in enumerate([1, 2, 3]):
        expected[probabilities[index] > 0.5] = value
    # the segmentation was converted from the maps before they were saved at the original geometry
    assert np.mean(expected == segmentation) > 0.99
    assert set(np.unique(segmentation)) <= {0, 1, 2, 3}


def test_postprocessing_ensemble_and_selection_work_on_regions(finished):
    _, project = finished
    decisions = {
        r["configuration"]: json.loads(r["decision"]) for r in sql_rows(project, "SELECT * FROM postprocessing")
    }
    assert "3d_fullres" in decisions and "ensemble:2d+3d_fullres" in decisions
    for decision in decisions.values():
        assert "per_region_lcc" in decision and set(decision["region_names"].values()) == set(REGIONS)
    ensemble = sql_rows(project, "SELECT DISTINCT region FROM metrics JOIN runs USING (run_id) WHERE kind = 'ensemble'")
    assert {r["region"] for r in ensemble} == set(REGIONS)
    ranking = sql_rows(project, "SELECT configuration, n_labels, mean_dice FROM configuration_ranking")
    assert ranking and all(r["n_labels"] <= 3 for r in ranking)
    assert sql_rows(project, "SELECT choice FROM selections")


def test_predict_evaluate_and_compare_name_the_regions(finished):
    root, project = finished
    out = root / "predicted"
    run_cli(
        project,
        "predict",
        "--experiment",
        "regions",
        "--input",
        str(root / "raw" / "imagesTs"),
        "--output",
        str(out),
        "--save-probabilities",
    )
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 1
    assert read_probabilities(out / written[0].name.replace(".nii.gz", ".npz")).shape[0] == 3
    assert set(np.unique(read_image(written[0])[0])) <= {0, 1, 2, 3}
    validation = project.run_dir("regions", "3d_fullres", "0") / "validation"
    run_cli(project, "evaluate", str(validation), "--dataset", "brats", "--name", "by_dataset", "--workers", "1")
    run_cli(
        project,
        "evaluate",
        str(validation),
        "--reference",
        str(root / "raw" / "labelsTr"),
        "--name",
        "by_folder",
        "--workers",
        "1",
    )
    scored = sql_rows(project, "SELECT e.name, e.regions, m.region FROM evaluations e JOIN metrics m USING (run_id)")
    for name in ("by_dataset", "by_folder"):
        assert {r["region"] for r in scored if r["name"] == name} == set(REGIONS)
        assert next(r["regions"] for r in scored if r["name"] == name) == REGIONS
    table = run_cli(project, "compare", "regions").output
    for region in REGIONS:
        assert f"dice_{region}" in table
    run_cli(project, "report", "regions", "--output", str(root / "report"))
    html = (root / "report" / "index.html").read_text()
    assert all(region in html for region in REGIONS)


def test_exported_to_nnunet_with_its_regions_and_imported_back(finished, tmp_path):
    root, project = finished
    trip = nnunet_round_trip(project, "regions", "3d_fullres", root / "raw" / "imagesTs", tmp_path)
    labels = trip["dataset"]["labels"]
    # nnU-Net's LabelManager reads regions in the file's key order: background, then the regions in output order
    assert list(labels) == ["background", *REGIONS]
    assert labels == {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
    assert trip["dataset"]["regions_class_order"] == [1, 2, 3]
    assert trip["same_weights"] and sorted(trip["weights"]) == ["0", "1"]
    # the imported model averages the folds' logits and applies the sigmoid after resampling (nnU-Net's order),
    # the original averages sigmoid maps: on a 1-iteration network near 0.5 everywhere a few voxels may flip
    assert min(trip["agreement"].values()) >= 0.9, trip["agreement"]
    imported = load_checkpoint(
        Project.resolve(tmp_path / "imported").run_dir("back", "3d_fullres", "0") / "checkpoint_final.pt"
    )
    plan = ConfigurationPlan.from_dict(imported["plan"])
    assert [name for name, _ in plan.regions] == REGIONS and plan.regions_class_order == (1, 2, 3)

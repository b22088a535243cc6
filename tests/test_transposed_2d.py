"""2d along the coarse axis: a dataset whose thick-slice axis is x (nnU-Net's `transpose_forward` [2, 0, 1]).

nnU-Net's own 2d preprocessing of the same cases (`tests/fixtures/nnunet_demo_x`, NOTE.md says how it was made) is
compared with what `voxelbase preprocess` stores, and a 2d train -> validate -> predict round trip must give back
every case in its own geometry.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import zarr

from tests.conftest import REPO, nnunet_round_trip, run_cli, sql_rows, volume_digest
from tests.test_store_ome_zarr import validate_case
from voxelbase.catalog import connect
from voxelbase.catalog.preprocessed import case_properties
from voxelbase.images import read_image
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.plan import ConfigurationPlan, Normalization
from voxelbase.planning.api import load_plan
from voxelbase.preprocessing import preprocess_case
from voxelbase.project import Project
from voxelbase.store.layout import case_dir, read_case
from voxelbase.volumes import revert_segmentation

FIXTURE = REPO / "tests" / "fixtures" / "nnunet_demo_x"
DATA = {"cases": 5, "test_cases": 1, "seed": 0, "shape": (40, 40, 20), "coarse_axis": "x"}
STAGE = "nnunet-8gb/2d"
IMAGE_TOLERANCE = 1e-6  # as the 3d_fullres parity (tests/test_preprocessing.py)
SPEC = """name = "tx"
dataset = "tx"
[train]
configurations = ["2d"]
folds = ["all"]
epochs = 1
iterations_per_epoch = 2
val_iterations = 1
num_workers = 1
[predict]
tta = true
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("transposed")
    raw = write_demo_dataset(root / "raw", **DATA)
    expected = json.loads((FIXTURE / "inputs_sha256.json").read_text())
    written = {p.relative_to(raw).as_posix(): volume_digest(p) for p in sorted(raw.rglob("*.nii.gz"))}
    assert written == expected, f"the generator changed: make {FIXTURE} again as its NOTE.md says"
    project = Project.resolve(root / "project")
    run_cli(project, "ingest", str(raw), "--name", "tx", "--workers", "1")
    run_cli(project, "plan", "tx")
    run_cli(project, "preprocess", "tx", "--configuration", "2d", "--workers", "1")
    return root, project


def test_the_2d_plan_transposes_like_nnunet(project):
    _, project = project
    ours = load_plan(project, "tx", configuration="2d")
    theirs = json.loads((FIXTURE / "nnUNetPlans.json").read_text())
    assert list(ours.transpose_forward) == theirs["transpose_forward"] == [2, 0, 1]
    config = theirs["configurations"]["2d"]
    np.testing.assert_allclose(ours.spacing, config["spacing"], rtol=1e-9)
    assert list(ours.patch_size) == config["patch_size"]
    assert ours.axes_forward == (2, 0, 1) and ours.axes_backward == (1, 2, 0)
    # 3d configurations stay in (z, y, x): only the 2d one stores transposed arrays
    assert load_plan(project, "tx", configuration="3d_fullres").axes_forward == (0, 1, 2)


@pytest.mark.parametrize("case", ["demo_000", "demo_002"])
def test_stored_2d_arrays_equal_nnunets(project, case):
    _, project = project
    expected = np.load(FIXTURE / "preprocessed_2d" / f"{case}.npz")
    expected_props = json.loads((FIXTURE / "preprocessed_2d" / f"{case}.json").read_text())
    folder = case_dir(project, "tx", case, stage=STAGE)
    image = zarr.open_array(str(folder / "image"), mode="r")
    label = zarr.open_array(str(folder / "label"), mode="r")
    assert image.shape == expected["data"].shape
    np.testing.assert_array_equal(label[...], expected["seg"][0])
    # the image with nnU-Net's own intensity statistics (the SQL fingerprint's agree only within 1e-3 of the range,
    # tests/test_planning_fingerprint.py), through the same preprocess_case the store was written with
    plan = load_plan(project, "tx", configuration="2d")
    stats = json.loads((FIXTURE / "nnUNetPlans.json").read_text())["foreground_intensity_properties_per_channel"]["0"]
    normalization = (Normalization.from_dict({**plan.normalization[0].to_dict(), **stats}),)
    raw = read_case(project, "tx", case)
    again, _, _ = preprocess_case(
        *raw, spacing=props_spacing(project, case), plan=replace(plan, normalization=normalization)
    )
    np.testing.assert_allclose(again, expected["data"], rtol=0, atol=IMAGE_TOLERANCE)
    ours, _, _ = preprocess_case(*raw, spacing=props_spacing(project, case), plan=plan)
    np.testing.assert_array_equal(image[...], ours)  # and the store holds exactly what preprocess_case makes
    assert list(image.metadata.dimension_names) == ["c", "x", "z", "y"]
    with connect(project, read_only=True) as con:
        props = case_properties(con, "tx", case, plan="nnunet-8gb", configuration="2d")
    # nnU-Net keeps the case's spacing in (z, y, x); the catalog states it in the stored (transposed) order
    assert props["spacing"] == pytest.approx([expected_props["spacing"][a] for a in (2, 0, 1)])
    assert props["shape_before_cropping"] == expected_props["shape_before_cropping"]
    assert props["bbox"] == [v for pair in expected_props["bbox_used_for_cropping"] for v in pair]
    assert props["shape_after_cropping"] == expected_props["shape_after_cropping_and_before_resampling"]
    rows = sql_rows(
        project,
        "SELECT label, count(*) AS n FROM class_locations WHERE dataset = 'tx' AND configuration = '2d' "
        f"AND case_id = '{case}' GROUP BY label ORDER BY label",
    )
    assert {str(r["label"]): r["n"] for r in rows} == expected_props["class_locations_count"]
    for value in expected_props["class_locations_count"]:
        coords = sql_rows(
            project,
            "SELECT z, y, x FROM class_locations WHERE dataset = 'tx' AND configuration = '2d' "
            f"AND case_id = '{case}' AND label = {int(value)} ORDER BY z, y, x",
        )
        theirs = expected[f"class_locations_{value}"][:, 1:]
        ordered = theirs[np.lexsort(theirs.T[::-1])]
        np.testing.assert_array_equal([[r["z"], r["y"], r["x"]] for r in coords], ordered, err_msg=f"label {value}")


def props_spacing(project: Project, case: str) -> tuple[float, ...]:
    """The case's own (z, y, x) spacing, as ingest recorded it."""
    return tuple(
        sql_rows(project, f"SELECT spacing FROM cases WHERE dataset = 'tx' AND case_id = '{case}'")[0]["spacing"]
    )


def test_the_stored_case_group_names_its_transposed_axes(project):
    _, project = project
    group = zarr.open_group(str(case_dir(project, "tx", "demo_000", stage=STAGE)), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "x", "z", "y"]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    with connect(project, read_only=True) as con:
        props = case_properties(con, "tx", "demo_000", plan="nnunet-8gb", configuration="2d")
    assert scale == pytest.approx([1.0, *props["target_spacing"]])  # the spacing in the stored (x, z, y) order


def test_reverting_a_stored_label_gives_the_case_back_in_its_own_axes(project):
    root, project = project
    plan: ConfigurationPlan = load_plan(project, "tx", configuration="2d")
    original = read_image(root / "raw" / "labelsTr" / "demo_000.nii.gz")[0]
    stored = zarr.open_array(str(case_dir(project, "tx", "demo_000", stage=STAGE) / "label"), mode="r")[...]
    assert stored.shape != original.shape  # it really is transposed
    with connect(project, read_only=True) as con:
        props = case_properties(con, "tx", "demo_000", plan="nnunet-8gb", configuration="2d")
    back = revert_segmentation(np.maximum(stored, 0), properties=props, plan=plan)
    assert back.shape == original.shape
    assert (back == original).mean() > 0.97  # resampled there and back: only boundary voxels may move


def test_2d_train_validate_predict_round_trip_keeps_the_geometry(project):
    root, project = project
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    run_cli(project, "run", str(spec))
    validation = project.run_dir("tx", "2d", "all") / "validation"
    for case in ("demo_000", "demo_003"):
        reference = read_image(root / "raw" / "labelsTr" / f"{case}.nii.gz")
        predicted = read_image(validation / f"{case}.nii.gz")
        assert predicted[0].shape == reference[0].shape
        for field in ("spacing", "origin", "direction"):
            assert getattr(predicted[1], field) == pytest.approx(getattr(reference[1], field)), field
    out = root / "predicted"
    run_cli(project, "predict", "--experiment", "tx", "--input", str(root / "raw" / "imagesTs"), "--output", str(out))
    import SimpleITK as sitk

    source = sitk.ReadImage(str(root / "raw" / "imagesTs" / "demo_005_0000.nii.gz"))
    result = sitk.ReadImage(str(out / "demo_005.nii.gz"))
    assert result.GetSize() == source.GetSize()
    assert result.GetSpacing() == pytest.approx(source.GetSpacing())
    assert result.GetOrigin() == pytest.approx(source.GetOrigin())
    assert result.GetDirection() == pytest.approx(source.GetDirection())


def test_the_transposed_stage_validates_as_ome_zarr(project):
    _, project = project
    image = validate_case(case_dir(project, "tx", "demo_000", stage=STAGE))
    assert [a.name for a in image.attributes.ome.multiscales[0].axes] == ["c", "x", "z", "y"]


def test_exported_to_nnunet_transposed_and_imported_back(project, tmp_path):
    root, project = project
    run_cli(project, "run", str(root / "spec.toml"))  # trained by the round-trip test above; nothing to do then
    trip = nnunet_round_trip(project, "tx", "2d", root / "raw" / "imagesTs", tmp_path)
    plans = trip["plans"]
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    ours = load_plan(project, "tx", configuration="2d")
    assert plans["configurations"]["2d"]["spacing"] == pytest.approx(list(ours.spacing))
    assert plans["configurations"]["2d"]["patch_size"] == list(ours.patch_size)
    # nnU-Net's "after transposition" medians: the coarse x axis first
    spacing = plans["original_median_spacing_after_transp"]
    assert spacing[0] == pytest.approx(max(spacing)) and spacing[0] > 2
    assert trip["same_weights"] and list(trip["weights"]) == ["all"]
    # one fold: logits resampled then softmax (imported, nnU-Net's order) vs probabilities resampled (original)
    assert min(trip["agreement"].values()) >= 0.9, trip["agreement"]

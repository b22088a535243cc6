"""`voxelbase import-nnunet` of the label kinds and axis orders nnU-Net trains beyond plain labels in (z, y, x):
a region-based model (BraTS-like: whole tumour ⊇ tumour core ⊇ enhancing tumour, `regions_class_order`) and models
of a dataset whose thick axis is x, which nnU-Net's planner transposes (`transpose_forward` [2, 0, 1]; its 2d
slices along x, its 3d plan stated in the transposed order). `predict --experiment` must write what
`nnUNetv2_predict` wrote with the same fold. The models and nnU-Net's outputs are in
`tests/fixtures/nnunet_label_kinds_model` (NOTE.md there says how they were made)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import catalog_snapshot, run_cli
from voxelbase.networks import load_checkpoint
from voxelbase.plan import ConfigurationPlan
from voxelbase.project import Project

FIXTURE = Path(__file__).parent / "fixtures" / "nnunet_label_kinds_model"
MODELS = {
    ("regions", "3d_fullres"): FIXTURE / "regions" / "nnUNetTrainer_vbTiny__nnUNetPlans__3d_fullres",
    ("coarse_x", "2d"): FIXTURE / "coarse_x" / "nnUNetTrainer_vbTiny__nnUNetPlans__2d",
    ("coarse_x", "3d_fullres"): FIXTURE / "coarse_x" / "nnUNetTrainer_vbTiny__nnUNetPlans__3d_fullres",
}


def _image(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize(
    ("kind", "configuration", "tta"),
    [
        ("regions", "3d_fullres", True),
        ("regions", "3d_fullres", False),
        ("coarse_x", "2d", True),
        ("coarse_x", "2d", False),
        ("coarse_x", "3d_fullres", False),
    ],
)
def test_predict_writes_what_nnunet_predict_wrote(tmp_path, kind, configuration, tta):
    project = Project.resolve(tmp_path / "project")
    run_cli(project, "import-nnunet", str(MODELS[kind, configuration]), "--name", "nn")
    out = tmp_path / "pred"
    inputs = FIXTURE / kind / "imagesTs"
    args = ["predict", "--experiment", "nn", "--input", str(inputs), "--output", str(out), "--save-probabilities"]
    run_cli(project, *args, *([] if tta else ["--no-tta"]), "--device", "cpu")
    reference = FIXTURE / kind / f"nnunet_{configuration}_{'tta' if tta else 'notta'}"
    cases = sorted(p.name for p in reference.glob("*.nii.gz"))
    assert cases and sorted(p.name for p in out.glob("*.nii.gz")) == cases
    for name in cases:
        theirs, ours = _image(reference / name), _image(out / name)
        assert ours.GetSize() == theirs.GetSize()
        for field in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(ours, field)() == pytest.approx(getattr(theirs, field)()), field
        a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
        agreement = float((a == b).mean())
        assert agreement >= 0.999, f"{name}: {agreement:.5f} voxel agreement with nnU-Net"
        stem = name.removesuffix(".nii.gz")
        with np.load(reference / f"{stem}.npz") as stored, np.load(out / f"{stem}.npz") as written:
            their_probabilities, our_probabilities = (
                stored["probabilities"],
                written["probabilities"].astype(np.float32),
            )
        # both (K, Z, Y, X) in the image's own axes: softmax maps, or a region model's per-region sigmoid maps
        assert our_probabilities.shape == their_probabilities.shape
        assert float(np.abs(our_probabilities - their_probabilities).max()) < 1e-3  # Voxelbase writes float16


def _plan(project: Project, configuration: str) -> ConfigurationPlan:
    state = load_checkpoint(project.run_dir("nn", configuration, "all") / "checkpoint_final.pt")
    return ConfigurationPlan.from_dict(state["plan"])


def test_the_imported_region_plan_has_nnunets_regions_in_order(tmp_path):
    project = Project.resolve(tmp_path / "project")
    run_cli(project, "import-nnunet", str(MODELS["regions", "3d_fullres"]), "--name", "nn")
    plan = _plan(project, "3d_fullres")
    assert plan.regions == [("whole_tumor", (1, 2, 3)), ("tumor_core", (2, 3)), ("enhancing_tumor", (3,))]
    assert plan.regions_class_order == (1, 2, 3) and plan.num_classes == 3


def test_the_imported_transposed_plans_keep_nnunets_axis_order(tmp_path):
    project = Project.resolve(tmp_path / "project")
    for configuration in ("2d", "3d_fullres"):
        run_cli(project, "import-nnunet", str(MODELS["coarse_x", configuration]), "--name", "nn", "--replace")
        plan = _plan(project, configuration)
        plans = json.loads((MODELS["coarse_x", configuration] / "plans.json").read_text())
        assert plan.transpose_forward == (2, 0, 1) == tuple(plans["transpose_forward"])
        # the stored arrays follow nnU-Net's order (its network's kernels and strides are stated in it)
        assert plan.axes_forward == (2, 0, 1)
        assert list(plan.patch_size) == plans["configurations"][configuration]["patch_size"]


def test_a_region_model_without_regions_class_order_is_refused(tmp_path):
    source = tmp_path / "models" / MODELS["regions", "3d_fullres"].name
    shutil.copytree(MODELS["regions", "3d_fullres"], source)
    description = json.loads((source / "dataset.json").read_text())
    del description["regions_class_order"]
    (source / "dataset.json").write_text(json.dumps(description))
    project = Project.resolve(tmp_path / "project")
    run_cli(project, "import-nnunet", str(MODELS["coarse_x", "2d"]), "--name", "kept")
    before = catalog_snapshot(project)
    result = run_cli(project, "import-nnunet", str(source), "--name", "nn", expect_ok=False)
    assert result.exit_code == 1
    assert "regions_class_order" in result.output and "dataset.json" in result.output
    assert catalog_snapshot(project) == before
    assert not project.run_dir("nn", "3d_fullres", "all").exists()

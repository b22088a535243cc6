"""`voxelbase export --format nnunet`: an nnU-Net v2 trained-model folder (dataset.json, a whole plans.json,
fold_<k>/checkpoint_final.pth under nnU-Net's exact state dict names), readable with `weights_only=True`, that
`import-nnunet` reads back to the same weights; bad requests refused with nothing left behind. nnU-Net itself is
not needed (benchmarks/nnunet_export.py runs nnU-Net's predictor on the folder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from tests.conftest import run_cli, tiny_spec
from tests.planning_parity import parity_problems
from voxelbase.inference import nnunet_export
from voxelbase.inference.nnunet_export import NnunetExportError, nnunet_plans, nnunet_state_dict_names
from voxelbase.inference.nnunet_model import postprocessing_decision
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.networks import build_network, load_checkpoint
from voxelbase.networks.nnunet import nnunet_architecture
from voxelbase.plan import Architecture, ConfigurationPlan, Normalization
from voxelbase.project import Project

KEYS = Path(__file__).parent / "fixtures" / "nnunet_network" / "state_dict_keys.json"
MODEL_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"
TOP_KEYS = {
    "dataset_name",
    "plans_name",
    "original_median_spacing_after_transp",
    "original_median_shape_after_transp",
    "image_reader_writer",
    "transpose_forward",
    "transpose_backward",
    "configurations",
    "experiment_planner_used",
    "label_manager",
    "foreground_intensity_properties_per_channel",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny experiment (2 folds, selection, postprocessing), its own predictions, and its nnU-Net export."""
    root = tmp_path_factory.mktemp("export_nnunet")
    write_demo_dataset(root / "raw", cases=6, test_cases=2, seed=5, shape=(12, 24, 24))
    (root / "spec.toml").write_text(tiny_spec(name="exp", source="raw"))
    project = Project.resolve(root / "project")
    run_cli(project, "run", str(root / "spec.toml"))
    inputs = root / "raw" / "imagesTs"
    reference = root / "reference"
    run_cli(project, "predict", "-e", "exp", "--input", str(inputs), "--output", str(reference))
    folder = root / "out" / MODEL_DIR
    result = run_cli(project, "export", "exp", "--format", "nnunet", "--output", str(folder))
    assert "nnUNetv2_predict_from_modelfolder" in result.output
    return project, inputs, reference, folder


def _plan(project: Project, fold: str = "0") -> tuple[dict, dict]:
    state = load_checkpoint(project.run_dir("exp", "3d_fullres", fold) / "checkpoint_final.pt")
    return state["plan"], state["network"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_folder_layout_dataset_json_and_a_whole_plans_file(trained):
    project, _, _, folder = trained
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("crossval_results_folds_")] == [
        "dataset.json",
        "fold_0/checkpoint_final.pth",
        "fold_1/checkpoint_final.pth",
        "plans.json",
    ]
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"} and dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["labels"]["background"] == 0 and dataset_json["numTraining"] == 6
    plans = json.loads((folder / "plans.json").read_text())
    assert set(plans) == TOP_KEYS and list(plans["configurations"]) == ["3d_fullres"]
    assert plans["image_reader_writer"] == "SimpleITKIO" and plans["label_manager"] == "LabelManager"
    entry = plans["configurations"]["3d_fullres"]
    assert entry["preprocessor_name"] == "DefaultPreprocessor" and entry["normalization_schemes"] == ["CTNormalization"]
    arch = entry["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert arch["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv3d"
    assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
    # every key nnU-Net writes is there and maps back onto the Voxelbase plan (tests/planning_parity.py)
    plan, _ = _plan(project)
    assert parity_problems({"3d_fullres": plan}, plans, complete=True) == []


def test_checkpoints_load_weights_only_with_nnunets_key_names(trained):
    project, _, _, folder = trained
    plans = json.loads((folder / "plans.json").read_text())
    for fold in ("0", "1"):
        checkpoint = _load(folder / f"fold_{fold}" / "checkpoint_final.pth")
        plan, weights = _plan(project, fold)
        names = nnunet_state_dict_names(ConfigurationPlan.from_dict(plan).architecture)
        assert list(checkpoint["network_weights"]) == [k for k, _ in names]
        assert checkpoint["trainer_name"] == "nnUNetTrainer"
        assert checkpoint["init_args"]["configuration"] == "3d_fullres"
        assert checkpoint["init_args"]["fold"] == int(fold) and checkpoint["init_args"]["device"] == "cpu"
        assert checkpoint["init_args"]["plans"] == plans
        assert tuple(checkpoint["inference_allowed_mirroring_axes"]) == (0, 1, 2)
        # the parameters, in order, are the Voxelbase network's, and every alias holds its tensor's values
        exported = checkpoint["network_weights"]
        canonical = list(dict.fromkeys(c for _, c in names))
        for (_, ours), name in zip(weights.items(), canonical, strict=True):
            assert torch.equal(exported[name], ours)
        for key, source in names:
            assert torch.equal(exported[key], exported[source])


@pytest.mark.parametrize(
    "name", ["plain_unet_3d", "resenc_unet_3d", "plain_unet_2d", "plain_unet_3d_uneven", "resenc_unet_2d"]
)
def test_key_names_equal_those_nnunet_builds(name):
    entry = json.loads(KEYS.read_text())[name]
    arch = Architecture.from_dict(nnunet_architecture(entry))
    names = nnunet_state_dict_names(arch)
    assert [k for k, _ in names] == entry["state_dict_keys"]
    assert list(dict.fromkeys(c for _, c in names)) == entry["parameter_names"]
    network = build_network(
        arch.to_dict(), in_channels=entry["input_channels"], num_classes=entry["num_classes"], deep_supervision=False
    )
    weights = nnunet_export.nnunet_network_weights(arch, network.state_dict())
    assert [list(t.shape) for t in weights.values()] == entry["shapes"]


def test_postprocessing_pickle_reads_back_as_the_decision(trained):
    project, _, _, folder = trained
    from voxelbase.catalog import connect
    from voxelbase.catalog.results import postprocessing_decisions

    with connect(project, read_only=True) as con:
        decision = postprocessing_decisions(con, "exp").get("3d_fullres")
    pickles = list(folder.glob("crossval_results_folds_*/postprocessing.pkl"))
    wanted = bool(decision and (decision["foreground_lcc"] or decision["per_label_lcc"]))
    assert len(pickles) == int(wanted)
    if wanted:
        assert pickles[0].parent.name == "crossval_results_folds_0_1"
        plan = ConfigurationPlan.from_dict(_plan(project)[0])
        read = postprocessing_decision(pickles[0].read_bytes(), where="pkl", foreground=plan.sampled_labels)
        assert read == {"foreground_lcc": decision["foreground_lcc"], "per_label_lcc": decision["per_label_lcc"]}
    both = nnunet_export.postprocessing_pickle({"foreground_lcc": True, "per_label_lcc": [2]}, [1, 2])
    assert postprocessing_decision(both, where="pkl", foreground=[1, 2]) == {
        "foreground_lcc": True,
        "per_label_lcc": [2],
    }
    # a region dataset's decision: each region's largest component, as nnU-Net's (labels_or_regions a tuple)
    regions = nnunet_export.postprocessing_pickle({"per_region_lcc": [[2, 3], [3]]}, [1, 2, 3])
    assert postprocessing_decision(regions, where="pkl", foreground=[1, 2, 3]) == {
        "foreground_lcc": False,
        "per_label_lcc": [],
        "per_region_lcc": [[2, 3], [3]],
    }


def test_round_trip_through_import_nnunet(trained, tmp_path):
    project, inputs, reference, folder = trained
    other = Project.resolve(tmp_path / "other")
    run_cli(other, "import-nnunet", str(folder), "--name", "back")
    fields = (
        "spacing patch_size batch_size median_image_size_in_voxels batch_dice n_channels labels num_classes "
        "normalization resampling architecture transpose_forward"
    ).split()
    for fold in ("0", "1"):
        state = load_checkpoint(other.run_dir("back", "3d_fullres", fold) / "checkpoint_final.pt")
        plan, ours = _plan(project, fold)
        mine, theirs = ConfigurationPlan.from_dict(plan), ConfigurationPlan.from_dict(state["plan"])
        # an imported model resamples bit-exactly as nnU-Net does: the one setting the round trip adds
        assert theirs.resampling.bit_exact and not mine.resampling.bit_exact
        theirs = dataclasses.replace(theirs, resampling=dataclasses.replace(theirs.resampling, bit_exact=False))
        assert {f: getattr(theirs, f) for f in fields} == {f: getattr(mine, f) for f in fields}
        back = state["network"]
        assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    out = tmp_path / "out"
    run_cli(other, "predict", "-e", "back", "--input", str(inputs), "--output", str(out), "--no-tta")
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names and len(names) == 2
    for name in names:
        want, got = sitk.ReadImage(str(reference / name)), sitk.ReadImage(str(out / name))
        assert got.GetSpacing() == want.GetSpacing() and got.GetOrigin() == want.GetOrigin()
        a, b = sitk.GetArrayFromImage(want), sitk.GetArrayFromImage(got)
        # Same weights and plan, but the imported model predicts as nnU-Net does (fold logits averaged, logits
        # resampled back, then softmax), the original as Voxelbase does (probabilities): with this 1-epoch
        # network, whose logits are close everywhere, a few percent of voxels flip (the benchmark measures it).
        assert a.shape == b.shape and (a == b).mean() >= 0.9, (name, float((a == b).mean()))


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")] if parent.exists() else []


def test_existing_output_is_refused_unless_replace(trained, tmp_path):
    project, _, _, folder = trained
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = run_cli(project, "export", "exp", "--format", "nnunet", "--output", str(folder), expect_ok=False)
    assert result.exit_code == 1 and "exists" in result.output and "--replace" in result.output
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    target = tmp_path / MODEL_DIR
    target.mkdir()
    (target / "stale.txt").write_text("old")
    args = ("export", "exp", "--format", "nnunet", "--output", str(target), "--folds", "0", "--replace")
    run_cli(project, *args)
    assert not (target / "stale.txt").exists() and (target / "fold_0" / "checkpoint_final.pth").is_file()
    assert not (target / "fold_1").exists() and not _no_leftovers(tmp_path)


def test_experiment_without_finished_folds_is_refused(trained, tmp_path):
    project, _, _, _ = trained
    runs = project.runs_path / "exp"
    moved = project.runs_path / "exp.moved-away"
    runs.rename(moved)  # the catalog says finished, but no final checkpoint is on disk
    try:
        out = tmp_path / "nn"
        result = run_cli(project, "export", "exp", "--format", "nnunet", "--output", str(out), expect_ok=False)
    finally:
        moved.rename(runs)
    assert result.exit_code == 1 and "no finished fold" in result.output
    assert not out.exists() and not _no_leftovers(tmp_path)
    unknown = run_cli(project, "export", "nope", "--format", "nnunet", "--output", str(out), expect_ok=False)
    assert unknown.exit_code == 1 and "nope" in unknown.output and not out.exists()


def test_folder_format_refuses_a_zip_and_an_unknown_format(trained, tmp_path):
    project, _, _, _ = trained
    out = tmp_path / "model.zip"
    result = run_cli(project, "export", "exp", "--format", "nnunet", "--output", str(out), expect_ok=False)
    assert result.exit_code == 1 and "folder" in result.output and not out.exists()
    bad = run_cli(project, "export", "exp", "--format", "onnx", "--output", str(tmp_path / "x"), expect_ok=False)
    assert bad.exit_code != 0 and "onnx" in bad.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"previous_stage": "3d_lowres"}, "cascade"),
        ({"normalization": (Normalization("rgb_to_0_1", False),)}, "rgb_to_0_1"),
    ],
)
def test_a_configuration_nnunet_cannot_express_is_refused(trained, tmp_path, monkeypatch, change, message):
    project, _, _, _ = trained
    plan = ConfigurationPlan.from_dict(_plan(project)[0])
    with pytest.raises(NnunetExportError, match=message):
        nnunet_plans(dataclasses.replace(plan, **change), median_spacing=plan.spacing, median_shape=(12, 24, 24))

    real = nnunet_export.load_checkpoint

    def altered(path):
        state = real(path)
        return {**state, "plan": dataclasses.replace(ConfigurationPlan.from_dict(state["plan"]), **change).to_dict()}

    monkeypatch.setattr(nnunet_export, "load_checkpoint", altered)
    out = tmp_path / "parent" / MODEL_DIR
    result = run_cli(project, "export", "exp", "--format", "nnunet", "--output", str(out), expect_ok=False)
    assert result.exit_code == 1 and message in result.output
    assert not out.exists() and not _no_leftovers(out.parent)


def test_voxelbase_stays_the_default_format(trained, tmp_path):
    project, _, _, _ = trained
    out = tmp_path / "bundle"
    run_cli(project, "export", "exp", "--output", str(out), "--folds", "0")
    assert (out / "manifest.json").is_file() and not (out / "plans.json").exists()

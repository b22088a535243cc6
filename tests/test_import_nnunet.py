"""`voxelbase import-nnunet`: an nnU-Net v2 trained model (folder or exported zip) registered as an experiment, then
`predict --experiment` writes what `nnUNetv2_predict` wrote with the same folds on the same inputs.

The model, its inputs and nnU-Net's own predictions are in `tests/fixtures/nnunet_trained_model` (how they were
made: NOTE.md there). Bad input is refused with a message naming the problem, and nothing is stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import catalog_snapshot, run_cli
from voxelbase.inference.inputs import list_input_cases, read_input_case
from voxelbase.inference.models import load_models
from voxelbase.inference.nnunet_model import ALLOWED_GLOBALS, load_nnunet_checkpoint
from voxelbase.inference.predict import member_probabilities
from voxelbase.inference.probabilities import predict_probabilities, revert_logits
from voxelbase.preprocessing import preprocess_case
from voxelbase.project import Project
from voxelbase.volumes import apply_postprocessing

FIXTURE = Path(__file__).parent / "fixtures" / "nnunet_trained_model"
MODEL_NAME = "nnUNetTrainer_vbTiny__nnUNetPlans__3d_fullres"
MODEL = FIXTURE / MODEL_NAME
INPUTS = FIXTURE / "imagesTs"
CASES = ("demo_006", "demo_007")
NNUNET_OUTPUT = {True: FIXTURE / "nnunet_predictions_tta", False: FIXTURE / "nnunet_predictions_notta"}
# nnUNetv2_export_model_to_zip's zip of two configurations (3d_fullres: the folder above; 2d), progress.png left out
EXPORT_ZIP = FIXTURE / "Dataset987_Tiny_export.zip"
NNUNET_2D_OUTPUT = FIXTURE / "nnunet_predictions_2d_notta"  # nnUNetv2_predict -c 2d, folds 0 1, no mirroring


def _model_copy(tmp_path: Path, *, postprocessing: bool = False) -> Path:
    """The fixture model folder (without its crossval postprocessing unless asked: nnUNetv2_predict applies none)."""
    target = tmp_path / "models" / MODEL_NAME
    shutil.copytree(MODEL, target, ignore=None if postprocessing else shutil.ignore_patterns("crossval_results_*"))
    return target


def _segmentation(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def project(tmp_path) -> Project:
    return Project.resolve(tmp_path / "project")


@pytest.mark.parametrize("tta", [True, False], ids=["tta", "no-tta"])
def test_predict_writes_what_nnunet_predict_wrote(project, tmp_path, tta):
    source = _model_copy(tmp_path)
    run_cli(project, "import-nnunet", str(source), "--name", "nn")
    out = tmp_path / "pred"
    args = ["predict", "--experiment", "nn", "--input", str(INPUTS), "--output", str(out), "--folds", "0", "1"]
    run_cli(project, *args, "--save-probabilities", *([] if tta else ["--no-tta"]), "--device", "cpu")
    for case in CASES:
        theirs = _segmentation(NNUNET_OUTPUT[tta] / f"{case}.nii.gz")
        ours = _segmentation(out / f"{case}.nii.gz")
        assert ours.shape == theirs.shape
        agreement = float((ours == theirs).mean())
        assert agreement >= 0.999, f"{case}: {agreement:.5f} voxel agreement with nnU-Net"
        with np.load(NNUNET_OUTPUT[tta] / f"{case}.npz") as stored:
            their_probabilities = stored["probabilities"]
        with np.load(out / f"{case}.npz") as written:
            our_probabilities = written["probabilities"].astype(np.float32)
        assert our_probabilities.shape == their_probabilities.shape  # both (K, Z, Y, X) in the image's geometry
        # Voxelbase writes float16 (a rounding of up to 2.4e-4 near 1); the float32 values are checked below
        assert float(np.abs(our_probabilities - their_probabilities).max()) < 1e-3


@pytest.fixture
def two_threads():
    """nnU-Net made the stored logits with two intra-op threads; the 1x1 heads' CPU kernel depends on it
    (see tests/test_network.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _spec(models, tta: bool):
    return dataclasses.replace(models.spec, predict=dataclasses.replace(models.spec.predict, tta=tta))


def test_an_imported_model_preprocesses_bit_identically_to_nnunet(project, tmp_path):
    """Its plan resamples with nnU-Net's float64 path (`bit_exact`): the array equals nnU-Net's preprocessor's."""
    run_cli(project, "import-nnunet", str(_model_copy(tmp_path)), "--name", "nn")
    models = load_models("nn", project=project, configuration=None, folds=["0"], device="cpu")
    (member,) = models.members
    assert member.plan.resampling.bit_exact
    (case,) = [c for c in list_input_cases(INPUTS, n_channels=1) if c.case_id == "demo_006"]
    image, geometry = read_input_case(case)
    ours, _, _ = preprocess_case(image, spacing=geometry.spacing, plan=member.plan)
    with np.load(FIXTURE / "nnunet_logits_demo_006.npz") as stored:
        assert np.array_equal(ours, stored["preprocessed"])
    # the project's own fast path agrees to about one float32 step, not bit for bit
    fast, _, _ = preprocess_case(
        image,
        spacing=geometry.spacing,
        plan=dataclasses.replace(member.plan, resampling=dataclasses.replace(member.plan.resampling, bit_exact=False)),
    )
    np.testing.assert_allclose(fast, ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tta", [True, False], ids=["tta", "no-tta"])
def test_logits_of_nnunet_preprocessed_array_are_bit_identical(project, tmp_path, tta, two_threads):
    """Given the array nnU-Net's preprocessor made, the folds' logits equal nnU-Net's
    `predict_logits_from_preprocessed_data` bit for bit (its float16 sliding window, folds 0 and 1)."""
    run_cli(project, "import-nnunet", str(_model_copy(tmp_path)), "--name", "nn")
    models = load_models("nn", project=project, configuration=None, folds=["0", "1"], device="cpu")
    (member,) = models.members
    with np.load(FIXTURE / "nnunet_logits_demo_006.npz") as stored:
        preprocessed, theirs = stored["preprocessed"], stored["logits_tta" if tta else "logits_notta"]
    ours = predict_probabilities(
        list(member.networks), preprocessed, plan=member.plan, spec=models.spec, device=models.device, tta=tta
    )
    assert np.array_equal(ours, theirs.astype(np.float32))


@pytest.mark.parametrize("tta", [True, False], ids=["tta", "no-tta"])
def test_probabilities_within_1e_4_of_nnunet(project, tmp_path, tta, two_threads):
    """The float32 probabilities in the image's geometry, before Voxelbase rounds them to float16 for its .npz.

    An imported model preprocesses with nnU-Net's own float64 resampling (`Resampling.bit_exact`), so the network
    sees bit-identical input, its float16 logits round the same way, and every probability is within 1e-4."""
    run_cli(project, "import-nnunet", str(_model_copy(tmp_path)), "--name", "nn")
    models = load_models("nn", project=project, configuration=None, folds=["0", "1"], device="cpu")
    (member,) = models.members
    spec = _spec(models, tta)
    for case in list_input_cases(INPUTS, n_channels=1):
        image, geometry = read_input_case(case)
        logits, properties = member_probabilities(member, image, geometry=geometry, spec=spec, device=models.device)
        ours = revert_logits(logits, properties=properties, plan=member.plan)
        with np.load(NNUNET_OUTPUT[tta] / f"{case.case_id}.npz") as stored:
            theirs = stored["probabilities"]
        difference = np.abs(ours - theirs)
        assert float(difference.max()) <= 1e-4, f"{case.case_id}: max difference {float(difference.max()):.2e}"
        assert np.array_equal(ours.argmax(0), theirs.argmax(0))


def test_zip_import_equals_folder_import(project, tmp_path):
    run_cli(project, "import-nnunet", str(EXPORT_ZIP), "--name", "zipped")
    run_cli(project, "import-nnunet", str(_model_copy(tmp_path / "again")), "--name", "folder")
    rows = json.loads(
        run_cli(
            project, "sql", "SELECT experiment, configuration, fold FROM runs ORDER BY 1, 3", "--format", "json"
        ).output
    )
    assert sorted((r["experiment"], r["configuration"], r["fold"]) for r in rows) == [
        ("folder", "3d_fullres", "0"),
        ("folder", "3d_fullres", "1"),
        ("zipped", "2d", "0"),
        ("zipped", "2d", "1"),
        ("zipped", "3d_fullres", "0"),
        ("zipped", "3d_fullres", "1"),
    ]
    for configuration, reference in (("3d_fullres", NNUNET_OUTPUT[False]), ("2d", NNUNET_2D_OUTPUT)):
        out = tmp_path / f"pred_{configuration}"
        args = ["-e", "zipped", "-c", configuration, "--input", str(INPUTS), "--output", str(out)]
        run_cli(project, "predict", *args, "--no-tta", "--save-probabilities")
        for case in CASES:
            theirs = _segmentation(reference / f"{case}.nii.gz")
            assert float((_segmentation(out / f"{case}.nii.gz") == theirs).mean()) >= 0.999, (configuration, case)
            with np.load(reference / f"{case}.npz") as stored, np.load(out / f"{case}.npz") as written:
                difference = np.abs(written["probabilities"].astype(np.float32) - stored["probabilities"])
            assert float(difference.max()) < 1e-3, (configuration, case)  # ours are written as float16


def test_plan_labels_mirroring_and_postprocessing_carry_over(project, tmp_path):
    run_cli(project, "import-nnunet", str(_model_copy(tmp_path, postprocessing=True)), "--name", "nn")
    models = load_models("nn", project=project, configuration=None, folds=None, device="cpu")
    (member,) = models.members
    plans = json.loads((MODEL / "plans.json").read_text())
    nnunet = plans["configurations"]["3d_fullres"]
    plan = member.plan
    assert member.folds == ("0", "1")
    assert list(plan.spacing) == nnunet["spacing"] and list(plan.patch_size) == nnunet["patch_size"]
    assert plan.architecture.features_per_stage == tuple(nnunet["architecture"]["arch_kwargs"]["features_per_stage"])
    assert dict(plan.labels) == json.loads((MODEL / "dataset.json").read_text())["labels"]
    assert plan.normalization[0].scheme == "ct"
    assert plan.normalization[0].mean == plans["foreground_intensity_properties_per_channel"]["0"]["mean"]
    assert plan.extra["mirror_axes"] == [0, 1, 2]
    expected = json.loads((MODEL / "crossval_results_folds_0_1" / "postprocessing.json").read_text())
    decision = models.postprocessing
    kwargs = expected["postprocessing_kwargs"]
    per_label = [k["labels_or_regions"] for k in kwargs if isinstance(k["labels_or_regions"], int)]
    assert decision is not None and decision["per_label_lcc"] == per_label
    assert decision["foreground_lcc"] == any(isinstance(k["labels_or_regions"], list) for k in kwargs)


def _stand_in():
    """Pickled in place of nnU-Net's function, then renamed to it in the pickle's bytes."""


def _postprocessing_pickle(kwargs: list[dict]) -> bytes:
    """A postprocessing.pkl as nnU-Net writes it ((functions, kwargs)), made without nnU-Net: protocol 2 names a
    function as `c<module>\\n<name>\\n`, so the stand-in's name is replaced by nnU-Net's."""
    data = pickle.dumps(([_stand_in] * len(kwargs), kwargs), protocol=2)
    ours = f"c{__name__}\n_stand_in\n".encode()
    theirs = (
        b"cnnunetv2.postprocessing.remove_connected_components\nremove_all_but_largest_component_from_segmentation\n"
    )
    assert ours in data
    return data.replace(ours, theirs)


def test_postprocessing_decision_is_applied_by_predict(project, tmp_path):
    source = _model_copy(tmp_path, postprocessing=True)
    pkl = source / "crossval_results_folds_0_1" / "postprocessing.pkl"
    pkl.write_bytes(_postprocessing_pickle([{"labels_or_regions": [1, 2, 3]}, {"labels_or_regions": 2}]))
    run_cli(project, "import-nnunet", str(source), "--name", "nn")
    rows = json.loads(run_cli(project, "sql", "SELECT decision FROM postprocessing", "--format", "json").output)
    decision = rows[0]["decision"]
    decision = json.loads(decision) if isinstance(decision, str) else decision
    assert decision == {"foreground_lcc": True, "per_label_lcc": [2]}
    out = tmp_path / "pred"
    run_cli(project, "predict", "-e", "nn", "--input", str(INPUTS), "--output", str(out), "--no-tta")
    for case in CASES:
        expected = apply_postprocessing(_segmentation(NNUNET_OUTPUT[False] / f"{case}.nii.gz"), decision)
        assert np.array_equal(_segmentation(out / f"{case}.nii.gz"), expected)


def test_postprocessing_pickle_naming_other_code_is_refused(project, tmp_path):
    source = _model_copy(tmp_path, postprocessing=True)
    pkl = source / "crossval_results_folds_0_1" / "postprocessing.pkl"
    pkl.write_bytes(pickle.dumps(([_Marker(str(tmp_path / "code-was-run"))], [{}])))
    output = _refused(project, "import-nnunet", str(source), "--name", "nn")
    assert "postprocessing.pkl" in output and "posix.mkdir is not allowed" in output
    assert not (tmp_path / "code-was-run").exists() and _no_runs(project, "nn")


def test_checkpoint_loads_with_the_numpy_allow_list_only():
    data = (MODEL / "fold_0" / "checkpoint_final.pth").read_bytes()
    named = set(torch.serialization.get_unsafe_globals_in_checkpoint(__import__("io").BytesIO(data)))
    assert named and named <= set(ALLOWED_GLOBALS)
    payload = load_nnunet_checkpoint(data, where="fold_0")
    assert payload["inference_allowed_mirroring_axes"] == (0, 1, 2)


# --- bad input: refused by name, nothing stored -----------------------------------------------------------------


def _refused(project: Project, *args: str) -> str:
    before = catalog_snapshot(project)
    result = run_cli(project, *args, expect_ok=False)
    assert result.exit_code != 0
    assert catalog_snapshot(project) == before
    return result.output


def _no_runs(project: Project, name: str) -> bool:
    return not (project.runs_path / name).exists()


def test_missing_plans_json_is_refused(project, tmp_path):
    source = _model_copy(tmp_path)
    (source / "plans.json").unlink()
    output = _refused(project, "import-nnunet", str(source), "--name", "nn")
    assert "plans.json is missing" in output and _no_runs(project, "nn")


def test_missing_requested_fold_is_refused(project, tmp_path):
    output = _refused(project, "import-nnunet", str(_model_copy(tmp_path)), "--name", "nn", "--folds", "0", "2")
    assert "fold(s) 2 missing" in output and _no_runs(project, "nn")


class _Marker:
    """Unpickling this would create a folder: proof of code run from a checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_checkpoint_naming_a_type_outside_the_allow_list_is_refused(project, tmp_path):
    source = _model_copy(tmp_path)
    checkpoint = source / "fold_1" / "checkpoint_final.pth"
    payload = load_nnunet_checkpoint(checkpoint.read_bytes(), where="fixture")
    marker = tmp_path / "code-was-run"
    payload["logging"] = {"evil": _Marker(str(marker))}
    torch.save(payload, checkpoint)
    output = _refused(project, "import-nnunet", str(source), "--name", "nn")
    assert "posix.mkdir" in output and "allow-list" in output and "fold_1" in output
    assert not marker.exists() and _no_runs(project, "nn")


def test_network_class_voxelbase_cannot_build_is_named(project, tmp_path):
    source = _model_copy(tmp_path)
    plans = json.loads((source / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    architecture["network_class_name"] = "dynamic_network_architectures.architectures.primus.Primus"
    (source / "plans.json").write_text(json.dumps(plans))
    output = _refused(project, "import-nnunet", str(source), "--name", "nn")
    assert "network class dynamic_network_architectures.architectures.primus.Primus cannot be built" in output
    assert _no_runs(project, "nn")


def test_existing_experiment_name_is_refused_unless_replace(project, tmp_path):
    source = _model_copy(tmp_path)
    run_cli(project, "import-nnunet", str(source), "--name", "nn", "--folds", "0")
    output = _refused(project, "import-nnunet", str(source), "--name", "nn")
    assert "already exists" in output and "--replace" in output
    run_cli(project, "import-nnunet", str(source), "--name", "nn", "--replace")
    rows = json.loads(run_cli(project, "sql", "SELECT fold FROM runs ORDER BY fold", "--format", "json").output)
    assert [r["fold"] for r in rows] == ["0", "1"]

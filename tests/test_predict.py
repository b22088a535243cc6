"""`predict`: trained tiny models on new images -- geometry round trip, fold and ensemble averaging, recorded
postprocessing and selection, bad input and interrupted cases."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import TINY_SHAPE, run_cli, write_nifti
from voxelbase.catalog import transaction
from voxelbase.catalog.results import record_postprocessing
from voxelbase.images import read_probabilities
from voxelbase.inference.predict import PredictionError, PredictionWarning, predict
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import plan_dataset
from voxelbase.preprocessing.dataset import preprocess_dataset
from voxelbase.project import Project
from voxelbase.volumes import keep_largest_component
from voxelbase.workflow.train import train

SPEC = """
name = "exp"
dataset = "demo"
[train]
configurations = ["3d_fullres", "2d"]
folds = [0, 1]
epochs = 1
iterations_per_epoch = 2
val_iterations = 1
num_workers = 1
save_probabilities = true
[predict]
tta = false
"""
# ITK direction (row-major, x y z): a rotation of 30 degrees about an oblique axis, as scanners tilt gantries
OBLIQUE = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An experiment with 3d_fullres trained on folds 0 and 1 and 2d on fold 0 (one tiny epoch each)."""
    root = tmp_path_factory.mktemp("predict")
    raw = write_demo_dataset(root / "raw", cases=5, test_cases=0, seed=3, shape=TINY_SHAPE)
    project = Project.resolve(root / "project")
    ingest_dataset(raw, name="demo", project=project, workers=1)
    plan_dataset("demo", project=project)
    for configuration in ("3d_fullres", "2d"):
        preprocess_dataset("demo", configuration=configuration, workers=1, project=project)
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    train(spec, project=project, configuration="3d_fullres", device="cpu")
    train(spec, project=project, configuration="2d", fold="0", device="cpu")

    inputs = root / "inputs"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / "demo_000_0000.nii.gz")))
    write_nifti(image, inputs / "oblique_0000.nii.gz", spacing=(3.1, 0.75, 0.85), origin=(12.5, -40.0, 7.25))
    oblique = sitk.ReadImage(str(inputs / "oblique_0000.nii.gz"))
    oblique.SetDirection(OBLIQUE)
    sitk.WriteImage(oblique, str(inputs / "oblique_0000.nii.gz"))
    write_nifti(image[:, ::-1], inputs / "flipped.case_0000.mha", spacing=(2.8, 0.8, 0.8), origin=(-3.0, 1.0, 2.0))
    return project, inputs


def geometry(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_outputs_have_the_inputs_geometry_and_format(trained, tmp_path):
    project, inputs = trained
    out = tmp_path / "out"
    written = predict(
        "exp", input_dir=inputs, output_dir=out, project=project, configuration="3d_fullres", folds=[0], tta=True
    )
    assert sorted(p.name for p in written) == ["flipped.case.mha", "oblique.nii.gz"]
    for case, ending in (("oblique", ".nii.gz"), ("flipped.case", ".mha")):
        source = inputs / f"{case}_0000{ending}"
        size, spacing, origin, direction = geometry(out / f"{case}{ending}")
        expected = geometry(source)
        assert size == expected[0]
        np.testing.assert_allclose(spacing, expected[1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(origin, expected[2], rtol=0, atol=1e-5)
        np.testing.assert_allclose(direction, expected[3], rtol=0, atol=1e-6)
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}{ending}"))))
        assert set(values.tolist()) <= {0, 1, 2, 3}
    assert not np.allclose(geometry(out / "oblique.nii.gz")[3], np.eye(3).ravel(), atol=0.1)


def test_folds_are_averaged_and_the_segmentation_is_their_argmax(trained, tmp_path):
    project, inputs = trained
    probs = {}
    for folds in ([0], [1], [0, 1]):
        out = tmp_path / "f".join(map(str, folds))
        predict(
            "exp",
            input_dir=inputs,
            output_dir=out,
            project=project,
            configuration="3d_fullres",
            folds=folds,
            save_probabilities=True,
        )
        probs[tuple(folds)] = read_probabilities(out / "oblique.npz")
    both = probs[(0, 1)]
    image_shape = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "oblique_0000.nii.gz"))).shape
    assert both.shape == (4, *image_shape)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=2e-3)
    np.testing.assert_allclose(both, (probs[(0,)] + probs[(1,)]) / 2, atol=2e-3)  # float16 files
    assert not np.allclose(probs[(0,)], probs[(1,)], atol=1e-2)  # the two folds really differ
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "0f1" / "oblique.nii.gz")))
    decided = both.max(0) - np.sort(both, 0)[-2] > 4e-3  # voxels not tied within float16 precision
    np.testing.assert_array_equal(seg[decided], both.argmax(0)[decided])


def test_ensemble_averages_its_members_and_selection_is_used(trained, tmp_path):
    project, inputs = trained
    with pytest.raises(PredictionError, match="several trained configurations .*2d, 3d_fullres"):
        predict("exp", input_dir=inputs, output_dir=tmp_path / "none", project=project)
    members = {}
    for configuration in ("2d", "3d_fullres"):
        out = tmp_path / configuration
        predict(
            "exp",
            input_dir=inputs,
            output_dir=out,
            project=project,
            configuration=configuration,
            folds=[0],
            save_probabilities=True,
        )
        members[configuration] = read_probabilities(out / "flipped.case.npz")
    with transaction(project) as con:
        con.execute(
            "INSERT INTO selections (experiment, choice, kind, members, mean_dice, ranking) "
            "VALUES ('exp', 'ensemble:2d+3d_fullres', 'ensemble', ['2d', '3d_fullres'], 0.5, '[]')"
        )
    try:
        out = tmp_path / "selected"
        predict("exp", input_dir=inputs, output_dir=out, project=project, folds=[0], save_probabilities=True)
    finally:
        with transaction(project) as con:
            con.execute("DELETE FROM selections WHERE experiment = 'exp'")
    ensemble = read_probabilities(out / "flipped.case.npz")
    np.testing.assert_allclose(ensemble, (members["2d"] + members["3d_fullres"]) / 2, atol=2e-3)


def test_recorded_postprocessing_is_applied(trained, tmp_path):
    project, inputs = trained
    plain = tmp_path / "plain"
    predict("exp", input_dir=inputs, output_dir=plain, project=project, configuration="3d_fullres", folds=[0])
    with transaction(project) as con:
        record_postprocessing(
            con, experiment="exp", configuration="3d_fullres", decision={"foreground_lcc": True, "per_label_lcc": [1]}
        )
    try:
        post = tmp_path / "post"
        predict("exp", input_dir=inputs, output_dir=post, project=project, configuration="3d_fullres", folds=[0])
    finally:
        with transaction(project) as con:
            con.execute("DELETE FROM postprocessing WHERE experiment = 'exp'")
    for name in ("oblique.nii.gz", "flipped.case.mha"):
        before = sitk.GetArrayFromImage(sitk.ReadImage(str(plain / name)))
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(post / name)))
        expected = keep_largest_component(keep_largest_component(before, labels=None), labels=[1])
        np.testing.assert_array_equal(after, expected)


def test_missing_experiment_fold_and_configuration_name_what_exists(trained, tmp_path):
    project, inputs = trained
    out = tmp_path / "out"
    with pytest.raises(PredictionError, match="experiment 'nope' not found.*experiments: exp"):
        predict("nope", input_dir=inputs, output_dir=out, project=project)
    with pytest.raises(PredictionError, match=r"fold\(s\) 3 of exp/3d_fullres not trained \(finished folds: 0, 1"):
        predict("exp", input_dir=inputs, output_dir=out, project=project, configuration="3d_fullres", folds=[0, 3])
    with pytest.raises(PredictionError, match="'3d_lowres' .*no finished fold .*2d: folds 0; 3d_fullres: folds 0, 1"):
        predict("exp", input_dir=inputs, output_dir=out, project=project, configuration="3d_lowres")
    assert not out.exists()


def test_bad_inputs_fail_before_any_prediction(trained, tmp_path):
    project, inputs = trained
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "oblique_0000.nii.gz")))
    two = tmp_path / "two_channels"
    write_nifti(image, two / "a_0000.nii.gz")
    write_nifti(image, two / "b_0000.nii.gz")
    write_nifti(image, two / "b_0001.nii.gz")
    with pytest.raises(PredictionError, match=r"b_0001.nii.gz: case 'b' has 2 channel files .* 1 channel \(CT\)"):
        predict("exp", input_dir=two, output_dir=tmp_path / "o1", project=project, configuration="3d_fullres")
    shifted = tmp_path / "shifted"
    write_nifti(image, shifted / "c_0001.nii.gz")
    with pytest.raises(PredictionError, match=r"c_0000.nii.gz: missing; case 'c' has 1 channel file"):
        predict("exp", input_dir=shifted, output_dir=tmp_path / "o2", project=project, configuration="3d_fullres")
    unnamed = tmp_path / "unnamed"
    write_nifti(image, unnamed / "scan.nii.gz")
    with pytest.raises(PredictionError, match=r"scan.nii.gz: input images must be named <case>_<cccc>"):
        predict("exp", input_dir=unnamed, output_dir=tmp_path / "o3", project=project, configuration="3d_fullres")
    for output in (inputs, inputs / "predictions"):
        with pytest.raises(PredictionError, match="input folder .* so no input is overwritten"):
            predict("exp", input_dir=inputs, output_dir=output, project=project, configuration="3d_fullres")
    assert sorted(p.name for p in inputs.iterdir()) == ["flipped.case_0000.mha", "oblique_0000.nii.gz"]
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_far_spacing_warns_and_still_predicts(trained, tmp_path):
    project, inputs = trained
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "oblique_0000.nii.gz")))
    coarse = tmp_path / "coarse"
    write_nifti(image, coarse / "thick_0000.nii.gz", spacing=(3.0, 0.25, 0.25))
    with pytest.warns(PredictionWarning, match=r"'thick': spacing far outside .*y 0.25 mm \(trained 0\.7"):
        written = predict(
            "exp", input_dir=coarse, output_dir=tmp_path / "out", project=project, configuration="3d_fullres"
        )
    assert [p.name for p in written] == ["thick.nii.gz"]


def test_a_failed_case_leaves_no_complete_looking_file(trained, tmp_path, monkeypatch):
    project, inputs = trained
    out = tmp_path / "out"
    real_write = sitk.WriteImage

    def dies_halfway(image, path, *args, **kwargs):
        if "oblique" in str(path):  # a crash after part of the file reached the disk
            with open(path, "wb") as handle:
                handle.write(b"\x1f\x8b partial")
            raise RuntimeError("disk full")
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", dies_halfway)
    with pytest.raises(RuntimeError, match="disk full"):
        predict("exp", input_dir=inputs, output_dir=out, project=project, configuration="3d_fullres")
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["flipped.case.mha"]  # written before the failure, complete; nothing named oblique.nii.gz
    assert geometry(out / "flipped.case.mha")[0] == geometry(inputs / "flipped.case_0000.mha")[0]


def test_cli_predict(trained, tmp_path):
    project, inputs = trained
    out = tmp_path / "cli"
    result = run_cli(
        project,
        "predict",
        "--experiment",
        "exp",
        "--input",
        str(inputs),
        "--output",
        str(out),
        "-c",
        "3d_fullres",
        "--folds",
        "0",
        "1",
        "--no-tta",
        "--batch-windows",
        "2",
        "--device",
        "cpu",
    )
    assert "wrote 2 segmentation(s)" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["flipped.case.mha", "oblique.nii.gz"]
    bad = run_cli(
        project, "predict", "-e", "exp", "--input", str(inputs), "--output", str(inputs), "-c", "2d", expect_ok=False
    )
    assert bad.exit_code == 1 and "so no input is overwritten" in bad.output

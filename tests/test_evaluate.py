"""`evaluate`: prediction files against a reference folder or an ingested dataset, into the catalog."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from voxelbase.catalog import connect
from voxelbase.evaluation.evaluate import EvaluationError, evaluate_folder
from voxelbase.evaluation.metrics import case_metrics

SPACING_ZYX = (2.5, 0.8, 0.7)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # ITK order: a rotation about z


def write(path, array, *, spacing_zyx=SPACING_ZYX, origin=(10.0, -5.0, 3.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))


def make_case(seed: int, shape=(10, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    ref[2:8, 4:16, 5:15] = 1
    ref[4:6, 8:12, 8:12] = 2
    pred = np.roll(ref, int(rng.integers(1, 3)), axis=1)
    pred[0, 0, 0] = 1  # a stray voxel
    return pred, ref


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    arrays = {}
    for i in range(3):
        pred, ref = make_case(i)
        write(pred_dir / f"case_{i:03d}.nii.gz", pred)
        write(ref_dir / f"case_{i:03d}.nii.gz", ref)
        arrays[f"case_{i:03d}"] = (pred, ref)
    (pred_dir / "notes.txt").write_text("not a segmentation")
    return pred_dir, ref_dir, arrays, tmp_path / "project"


def test_folder_evaluation_is_recorded(folders):
    pred_dir, ref_dir, arrays, project = folders
    run_id = evaluate_folder(
        pred_dir, reference_dir=ref_dir, project=project, name="trial", nsd_tolerance_mm=2.0, workers=1
    )
    with connect(project, read_only=True) as con:
        run = con.execute(
            "SELECT experiment, configuration, fold, kind, status FROM runs WHERE run_id = ?", [run_id]
        ).fetchone()
        assert run == ("trial", "evaluation:trial", "all", "evaluation", "finished")
        stored = con.execute(
            "SELECT case_id, label, dice, iou, hd95, nsd, tp, fp, fn, n_ref, n_pred, nsd_tolerance_mm FROM metrics "
            "WHERE run_id = ? ORDER BY case_id, label",
            [run_id],
        ).fetchall()
        evaluation = con.execute(
            "SELECT name, reference, n_cases, labels, nsd_tolerance_mm FROM evaluations"
        ).fetchone()
    assert evaluation == ("trial", str(ref_dir.absolute()), 3, [1, 2], 2.0)
    assert len(stored) == 6
    for case_id, (pred, ref) in arrays.items():
        expected = case_metrics(pred, ref, labels=[1, 2], spacing=SPACING_ZYX, nsd_tolerance_mm=2.0)
        got = [row for row in stored if row[0] == case_id]
        for row, want in zip(got, expected):
            assert row[1] == want["label"] and row[-1] == 2.0
            assert row[2:6] == pytest.approx((want["dice"], want["iou"], want["hd95"], want["nsd"]))
            assert row[6:11] == (want["tp"], want["fp"], want["fn"], want["n_ref"], want["n_pred"])


def test_worker_processes_give_the_same_rows(folders):
    pred_dir, ref_dir, _, project = folders
    one = evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=1)
    two = evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=2)
    query = "SELECT case_id, label, dice, hd95, nsd, tp FROM metrics WHERE run_id = ? ORDER BY ALL"
    with connect(project, read_only=True) as con:
        assert con.execute(query, [one]).fetchall() == con.execute(query, [two]).fetchall()


def _counts(project):
    with connect(project, read_only=True) as con:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "metrics", "evaluations")]


def test_bad_predictions_write_nothing(folders):
    pred_dir, ref_dir, _, project = folders
    evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=1)
    before = _counts(project)

    write(pred_dir / "case_009.nii.gz", np.zeros((10, 24, 20), np.uint8))  # no reference
    with pytest.raises(EvaluationError, match="no reference for prediction.*case_009.nii.gz"):
        evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=1)
    (pred_dir / "case_009.nii.gz").unlink()

    write(pred_dir / "case_002.nii.gz", np.zeros((10, 24, 21), np.uint8))  # wrong shape
    with pytest.raises(EvaluationError, match=r"case_002.nii.gz: shape \(10, 24, 21\).*\(10, 24, 20\)"):
        evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=1)

    write(pred_dir / "case_002.nii.gz", np.zeros((10, 24, 20), np.uint8), spacing_zyx=(3.0, 0.8, 0.7))
    with pytest.raises(EvaluationError, match="case_002.nii.gz: geometry differs.*spacing"):
        evaluate_folder(pred_dir, reference_dir=ref_dir, project=project, workers=1)
    assert _counts(project) == before


def test_dataset_references_and_command(tmp_path):
    from voxelbase.cli import cli
    from voxelbase.ingest import ingest_dataset
    from voxelbase.ingest.demo import write_demo_dataset

    raw, project = tmp_path / "raw", tmp_path / "project"
    write_demo_dataset(raw, cases=2, test_cases=0, seed=1, shape=(8, 24, 24))
    ingest_dataset(raw, name="demo", project=project, workers=1)
    pred_dir = tmp_path / "pred"
    shutil.copytree(raw / "labelsTr", pred_dir)  # perfect predictions with the labels' own geometry
    run_id = evaluate_folder(pred_dir, dataset="demo", project=project, workers=1)
    with connect(project, read_only=True) as con:
        rows = con.execute(
            "SELECT label, dice, hd95, nsd FROM metrics WHERE run_id = ? ORDER BY ALL", [run_id]
        ).fetchall()
        assert con.execute("SELECT reference, dataset FROM evaluations").fetchone() == ("dataset:demo", "demo")
    assert {r[0] for r in rows} == {1, 2, 3}
    assert all(r[1] in (1.0, None) and r[2] in (0.0, None) and r[3] == 1.0 for r in rows)

    result = CliRunner().invoke(
        cli, ["--project", str(project), "evaluate", str(pred_dir), "--dataset", "demo", "--name", "copy"]
    )
    assert result.exit_code == 0, result.output
    assert "dice" in result.output and "run " in result.output
    result = CliRunner().invoke(cli, ["--project", str(project), "evaluate", str(pred_dir), "--dataset", "nope"])
    assert result.exit_code != 0 and "nope" in result.output
    result = CliRunner().invoke(cli, ["--project", str(project), "compare", "copy", "--format", "csv"])
    assert result.exit_code == 0 and "evaluation:copy" in result.output

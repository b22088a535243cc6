"""Ensembles on cross-validation: members' saved validation probabilities averaged, scored against the stored
labels, recorded atomically as runs of kind 'ensemble' that `select_best` ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import TINY_SHAPE
from voxelbase.catalog import connect, transaction
from voxelbase.catalog.results import insert_metrics
from voxelbase.evaluation.ensemble import EnsembleError, ensemble_all, ensemble_cross_validation
from voxelbase.evaluation.metrics import case_metrics
from voxelbase.evaluation.selection import select_best
from voxelbase.images import write_probabilities
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import load_splits, plan_dataset
from voxelbase.project import Project
from voxelbase.store import read_case

MEMBERS = ("3d_fullres", "2d")
LABELS = [1, 2, 3]


def member_probabilities(reference: np.ndarray, member: str) -> np.ndarray:
    """0.7 on the reference class, 0.1 on the others -- except that 3d_fullres is unsure about kidneys (3) and
    calls them background, and 2d calls the liver (1) background. Averaged, the two get every voxel right."""
    p = np.full((4, *reference.shape), 0.1, np.float32)
    np.put_along_axis(p, reference[None].astype(np.int64), 0.7, axis=0)
    if member == "3d_fullres":
        p[:, reference == 3] = np.array([0.5, 0.05, 0.05, 0.4], np.float32)[:, None]
    else:
        p[:, reference == 1] = np.array([0.45, 0.35, 0.1, 0.1], np.float32)[:, None]
    return p


@pytest.fixture
def experiment(tmp_path):
    """A real catalog and store (5 ingested demo cases, nnU-Net's splits) and two members' finished
    cross-validation runs with saved probabilities and their own metrics."""
    raw = write_demo_dataset(tmp_path / "raw", cases=5, test_cases=0, seed=7, shape=TINY_SHAPE)
    project = Project.resolve(tmp_path / "project")
    ingest_dataset(raw, name="demo", project=project, workers=1)
    plan_dataset("demo", project=project)
    splits = load_splits(project, "demo")
    spec = {"name": "exp", "dataset": "demo", "evaluate": {"nsd_tolerance_mm": 2.0}}
    with transaction(project) as con:
        con.execute(
            "INSERT INTO experiments (name, dataset, spec, spec_hash) VALUES ('exp', 'demo', ?, 'h')",
            [json.dumps(spec)],
        )
        spacing = dict(con.execute("SELECT case_id, spacing FROM cases WHERE dataset = 'demo'").fetchall())
        for member in MEMBERS:
            for fold, roles in splits.items():
                run_id = con.execute(
                    "INSERT INTO runs (experiment, configuration, fold, kind, status) "
                    "VALUES ('exp', ?, ?, 'train', 'finished') RETURNING run_id",
                    [member, fold],
                ).fetchone()[0]
                scored = []
                for case_id in roles["val"]:
                    _, reference = read_case(project, "demo", case_id)
                    p = member_probabilities(reference, member)
                    write_probabilities(p, project.run_dir("exp", member, fold) / "validation" / f"{case_id}.npz")
                    rows = case_metrics(p.argmax(0), reference, labels=LABELS, spacing=spacing[case_id])
                    scored.append((case_id, rows))
                insert_metrics(con, run_id=run_id, cases=scored)
    return project, splits


def test_ensemble_is_scored_recorded_and_selected(experiment):
    project, splits = experiment
    result = ensemble_cross_validation("exp", MEMBERS, project=project, progress=False)
    assert result.configuration == "ensemble:2d+3d_fullres" and result.members == ("2d", "3d_fullres")
    assert sorted(result.run_ids) == sorted(splits) and result.n_cases == 5
    assert result.mean_dice == pytest.approx(1.0)
    with connect(project, read_only=True) as con:
        runs = con.execute(
            "SELECT fold, kind, status, configuration FROM runs WHERE run_id IN (SELECT unnest(?)) ORDER BY fold",
            [list(result.run_ids.values())],
        ).fetchall()
        metrics = con.execute(
            "SELECT r.fold, m.case_id, m.label, m.dice, m.tp, m.fp, m.fn, m.n_ref, m.hd95, m.nsd, m.nsd_tolerance_mm "
            "FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'ensemble' ORDER BY r.fold, m.label"
        ).fetchall()
    assert runs == [(fold, "ensemble", "finished", "ensemble:2d+3d_fullres") for fold in sorted(splits)]
    assert len(metrics) == 5 * len(LABELS)
    for fold, case_id, _label, dice, tp, fp, fn, n_ref, hd95, nsd, tolerance in metrics:
        assert splits[fold]["val"] == [case_id]
        assert (fp, fn, tp) == (0, 0, n_ref) and tolerance == 2.0
        if n_ref:
            assert (dice, hd95, nsd) == (1.0, 0.0, 1.0)
        else:
            assert dice is None
    # the ensembled segmentations are kept (for a postprocessing decision), with the case's geometry
    for fold, folder in zip(sorted(splits), result.pred_dirs, strict=True):
        case_id = splits[fold]["val"][0]
        written = sitk.ReadImage(str(folder / f"{case_id}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), read_case(project, "demo", case_id)[1])
    best = select_best("exp", project=project)
    assert best.choice == "ensemble:2d+3d_fullres" and best.members == ("2d", "3d_fullres")
    by_name = {r["configuration"]: r["mean_dice"] for r in best.ranking}
    assert by_name["ensemble:2d+3d_fullres"] == pytest.approx(1.0)
    assert by_name["3d_fullres"] < 1.0 and by_name["2d"] < 1.0


def test_missing_probabilities_record_nothing(experiment):
    project, splits = experiment
    last = sorted(splits)[-1]
    missing = project.run_dir("exp", "2d", last) / "validation" / f"{splits[last]['val'][0]}.npz"
    missing.unlink()
    with pytest.raises(EnsembleError, match=r"validation probabilities missing; .*train.save_probabilities = true"):
        ensemble_cross_validation("exp", MEMBERS, project=project, progress=False)
    with connect(project, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE kind = 'ensemble'").fetchone() == (0,)


def test_members_must_share_their_folds(experiment):
    project, _ = experiment
    with transaction(project) as con:
        con.execute("UPDATE runs SET status = 'failed' WHERE configuration = '2d' AND fold = '3'")
    with pytest.raises(EnsembleError, match=r"exp/2d lacks fold\(s\) \['3'\]"):
        ensemble_cross_validation("exp", MEMBERS, project=project, progress=False)
    with pytest.raises(EnsembleError, match="exp/3d_lowres has no finished cross-validation fold"):
        ensemble_cross_validation("exp", ("3d_fullres", "3d_lowres"), project=project, progress=False)
    assert ensemble_all("exp", project=project) == []  # 2d is incomplete, so no pair is a candidate

"""Run steps declare what they read; order and keys are derived from the declarations alone."""

from __future__ import annotations

import dataclasses

import pytest

from voxelbase.project import Project
from voxelbase.spec import parse_spec
from voxelbase.workflow.run import ordered, step_key
from voxelbase.workflow.steps import Step, declare_steps

SPEC = """
name = "e"
dataset = "d"
[train]
configurations = ["3d_fullres", "2d"]
folds = [0, 1]
save_probabilities = true
"""


def _noop() -> str:
    return ""


def test_order_follows_after_whatever_the_declaration_order():
    steps = [
        Step("select", _noop, after=("train:a", "train:b")),
        Step("train:b", _noop, after=("prepare",)),
        Step("train:a", _noop, after=("prepare",)),
        Step("prepare", _noop),
    ]
    names = [s.name for s in ordered(steps)]
    assert names.index("prepare") < names.index("train:b") < names.index("select")
    assert names.index("train:a") < names.index("select")
    assert sorted(names) == sorted(s.name for s in steps)


def test_a_cycle_is_refused_naming_it():
    steps = [Step("a", _noop, after=("b",)), Step("b", _noop, after=("a",))]
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        ordered(steps)


def test_every_declared_step_runs_after_its_upstream():
    steps = ordered(declare_steps(Project.resolve("unused"), parse_spec(SPEC)))
    position = {s.name: i for i, s in enumerate(steps)}
    assert set(position) >= {"plan", "preprocess:2d", "train:3d_fullres:1", "ensemble:2d+3d_fullres", "select"}
    for step in steps:
        assert all(position[u] < position[step.name] for u in step.after if u in position), step.name


def _keys(project: Project, text: str) -> dict:
    return {s.name: step_key(project, parse_spec(text), s) for s in declare_steps(project, parse_spec(text))}


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name].spec_hash != after[name].spec_hash}


def test_a_setting_changes_the_key_of_the_steps_that_depend_on_it_only(tmp_path):
    project = Project.resolve(tmp_path / "project")  # no catalog yet: data fingerprints read 'missing'
    before = _keys(project, SPEC)
    folds = [f"{c}:{f}" for c in ("3d_fullres", "2d") for f in (0, 1)]
    # prediction settings: re-validate, never retrain
    assert _changed(before, _keys(project, SPEC + "[predict]\ntta = false\n")) == {f"validate:{x}" for x in folds}
    # evaluation settings: re-score (and the ensembles' scores), never predict again
    nsd = _keys(project, SPEC + "[evaluate]\nnsd_tolerance_mm = 2.0\n")
    assert _changed(before, nsd) == {f"score:{x}" for x in folds} | {"ensemble:2d+3d_fullres"}
    # learning settings: retrain
    lr = _keys(project, SPEC.replace("save_probabilities = true", "save_probabilities = true\ninitial_lr = 0.001"))
    assert _changed(before, lr) == {f"train:{x}" for x in folds}
    # another memory target is another plan: re-plan and retrain on it
    memory = _keys(project, SPEC + "[plan]\ngpu_memory_gb = 4\n")
    assert _changed(before, memory) == {"plan"} | {f"train:{x}" for x in folds}
    # where and how fast a step runs is not what it produces
    workers = _keys(project, SPEC.replace("save_probabilities = true", "save_probabilities = true\nnum_workers = 1"))
    assert all(before[n] == workers[n] for n in before)
    assert all(before[n] == _keys(project, SPEC + "[preprocess]\nworkers = 1\n")[n] for n in before)


def test_an_ingest_source_is_the_same_written_relative_or_absolute(tmp_path):
    (tmp_path / "raw").mkdir()
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    relative = parse_spec(SPEC + '[ingest]\nsource = "../raw"\n')
    absolute = parse_spec(SPEC + f'[ingest]\nsource = "{(tmp_path / "raw").as_posix()}"\n')
    relative = dataclasses.replace(relative, spec_dir=str(spec_dir))
    project = Project.resolve(tmp_path / "project")
    steps = {s.name: s for s in declare_steps(project, relative)}
    assert step_key(project, relative, steps["ingest"]) == step_key(project, absolute, steps["ingest"])

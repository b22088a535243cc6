"""Bad region and ignore-label declarations: a clear error naming the dataset.json key, and nothing stored.

Each bad dataset.json is ingested both as a new dataset and over an already ingested one of the same name; the
catalog and the store must be exactly as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import catalog_snapshot, run_cli
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.ingest.demo_brats import write_brats_dataset


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("label_kinds")
    return {
        "brats": write_brats_dataset(root / "brats", cases=2, test_cases=0, seed=3, shape=(8, 12, 12)),
        "ct": write_demo_dataset(root / "ct", cases=2, test_cases=0, seed=3, shape=(8, 12, 12)),
    }


def _spoiled(raws, tmp_path, kind: str, change) -> Path:
    bad = tmp_path / f"bad_{kind}"
    shutil.copytree(raws[kind], bad)
    description = json.loads((bad / "dataset.json").read_text())
    change(description)
    (bad / "dataset.json").write_text(json.dumps(description))
    return bad


def _no_order(d):
    del d["regions_class_order"]


def _short_order(d):
    d["regions_class_order"] = [1, 2]


def _undeclared_value(d):
    d["labels"]["whole_tumor"] = [1, 2, 3, 7]


def _ignore_not_highest(d):
    d["labels"]["ignore"] = 2  # kidney is 3


def _ignore_in_region(d):
    d["labels"]["whole_tumor"] = [1, 2, 3, 4]
    d["labels"]["ignore"] = 4


def _ignore_zero(d):
    d["labels"]["ignore"] = 0


BAD = {
    "regions without regions_class_order": ("brats", _no_order, ["'regions_class_order' is missing"]),
    "regions_class_order of another length": (
        "brats",
        _short_order,
        ["'regions_class_order' has 2 entries", "3 regions"],
    ),
    "a region naming an undeclared value": ("brats", _undeclared_value, ["'whole_tumor'", "[7]"]),
    "an ignore label that is not the highest": ("ct", _ignore_not_highest, ["label 'ignore' has value 2", "highest"]),
    "an ignore label inside a region": ("brats", _ignore_in_region, ["'whole_tumor'", "'ignore'", "part of a region"]),
    "an ignore label of 0": ("ct", _ignore_zero, ["label 'ignore' has value 0", "highest"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_declarations_are_refused_naming_the_key_and_nothing_is_stored(raws, tmp_path, project, case):
    kind, change, fragments = BAD[case]
    ingest_dataset(raws[kind], name="good", project=project, workers=1)
    bad = _spoiled(raws, tmp_path, kind, change)
    before = catalog_snapshot(project)
    for name in ("new", "good"):  # a new dataset, and over one already ingested
        result = run_cli(project, "ingest", str(bad), "--name", name, "--workers", "1", expect_ok=False)
        assert result.exit_code == 1, result.output
        assert "dataset.json" in result.output, result.output
        for fragment in fragments:
            assert fragment in result.output, result.output
        assert catalog_snapshot(project) == before
        assert not (project.store_path / "new").exists()


def test_good_region_and_ignore_declarations_are_stored(raws, tmp_path, project):
    ingest_dataset(raws["brats"], name="brats", project=project, workers=1)
    sparse = _spoiled(raws, tmp_path, "ct", lambda d: d["labels"].update(ignore=9))
    ingest_dataset(sparse, name="sparse", project=project, workers=1)
    out = run_cli(
        project,
        "sql",
        "SELECT dataset, name, value, region_values, is_ignore FROM labels ORDER BY dataset, name",
        "--format",
        "json",
    ).output
    rows = {(r["dataset"], r["name"]): r for r in json.loads(out)}
    assert rows[("brats", "whole_tumor")]["region_values"] == [1, 2, 3]
    assert rows[("brats", "enhancing_tumor")]["value"] == 3
    assert rows[("sparse", "ignore")]["is_ignore"] and rows[("sparse", "ignore")]["value"] == 9

"""Ingest: what goes in comes back out voxel for voxel, with SimpleITK's geometry, and the catalog is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import run_cli, write_nifti
from voxelbase.catalog.queries import run_query
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.case import SAMPLES_PER_CASE
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.store import read_case


def _itk_geometry_zyx(path):
    image = sitk.ReadImage(str(path))
    direction = np.array(image.GetDirection()).reshape(3, 3)[::-1, ::-1].ravel()
    return list(reversed(image.GetSpacing())), list(reversed(image.GetOrigin())), list(direction)


def test_demo_dataset_cases_voxels_and_geometry(tmp_path, project):
    raw = write_demo_dataset(tmp_path / "demo", cases=6, test_cases=2, seed=0, shape=(16, 32, 32))
    run_cli(project, "ingest", str(raw), "--name", "demo", "--workers", "2")
    splits = run_query("SELECT split, count(*) AS n FROM cases GROUP BY split ORDER BY split", project=project)
    assert splits.to_pylist() == [{"split": "test", "n": 2}, {"split": "train", "n": 6}]
    rows = run_query("SELECT * FROM cases ORDER BY case_id", project=project).to_pylist()
    for row in rows:
        folder = "imagesTr" if row["split"] == "train" else "imagesTs"
        source = raw / folder / f"{row['case_id']}_0000.nii.gz"
        image, label = read_case(project, "demo", row["case_id"])
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
        assert image.dtype == expected.dtype and np.array_equal(image[0], expected)
        spacing, origin, direction = _itk_geometry_zyx(source)
        assert row["spacing"] == pytest.approx(spacing) and row["origin"] == pytest.approx(origin)
        assert row["direction"] == pytest.approx(direction)
        assert list(row["shape"]) == list(expected.shape)
        if row["split"] == "train":
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{row['case_id']}.nii.gz")))
            assert label.dtype == np.uint8 and np.array_equal(label, ref)
        else:
            assert label is None


def test_demo_dataset_with_rotated_directions(tiny_raw, project):
    result = ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    assert (result.status, result.n_train, result.n_test) == ("ingested", 4, 1)
    rows = run_query(
        "SELECT case_id, direction, crop_bbox, shape FROM cases ORDER BY case_id", project=project
    ).to_pylist()
    rotated = [r for r in rows if abs(r["direction"][4] - 1) > 1e-3 and abs(r["direction"][4] + 1) > 1e-3]
    assert rotated, "the demo data must include a non-axis-aligned direction"
    for row in rows:
        spacing, origin, direction = _itk_geometry_zyx(
            tiny_raw / ("imagesTr" if row["case_id"] < "demo_004" else "imagesTs") / f"{row['case_id']}_0000.nii.gz"
        )
        assert row["direction"] == pytest.approx(direction)
        assert row["crop_bbox"] == [0, row["shape"][0], 0, row["shape"][1], 0, row["shape"][2]]  # CT air is nonzero


def test_label_and_foreground_statistics_are_exact(tiny_raw, project):
    ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    _, label = read_case(project, "demo", "demo_000")
    image, _ = read_case(project, "demo", "demo_000")
    stats = run_query(
        "SELECT label, voxels FROM label_stats WHERE case_id = 'demo_000' ORDER BY label", project=project
    )
    counts = np.bincount(label.ravel())
    assert stats.to_pylist() == [{"label": v, "voxels": int(n)} for v, n in enumerate(counts) if n]
    fg = image[0][label > 0].astype(float)
    row = run_query("SELECT * FROM foreground_stats WHERE case_id = 'demo_000'", project=project).to_pylist()[0]
    assert row["voxels"] == fg.size and row["min"] == fg.min() and row["max"] == fg.max()
    assert row["mean"] == pytest.approx(fg.mean()) and row["std"] == pytest.approx(fg.std())
    n = run_query("SELECT count(*) AS n FROM intensity_samples WHERE case_id = 'demo_000'", project=project)
    assert n.to_pylist()[0]["n"] == SAMPLES_PER_CASE


def test_sampled_percentiles_match_all_foreground_voxels(tmp_path, project):
    raw = write_demo_dataset(tmp_path / "raw", cases=6, test_cases=0, seed=3, shape=(24, 48, 48))
    ingest_dataset(raw, name="demo", project=project, workers=2)
    everything = []
    for case in run_query("SELECT case_id FROM cases", project=project).column("case_id").to_pylist():
        image, label = read_case(project, "demo", case)
        everything.append(image[0][label > 0].astype(float))
    everything = np.concatenate(everything)
    sampled = run_query("SELECT value FROM intensity_samples", project=project).column("value").to_numpy()
    low, high = np.percentile(everything, [0.5, 99.5])
    tolerance = 0.01 * (high - low)
    for q in (0.5, 5, 25, 50, 75, 95, 99.5):
        assert abs(np.percentile(sampled, q) - np.percentile(everything, q)) <= tolerance, q


def test_msd_layout_four_d_images(tmp_path, project):
    root = tmp_path / "Task01"
    rng = np.random.default_rng(0)
    training = []
    for case in ("brain_001", "brain_002"):
        channels = [rng.normal(100, 10, (8, 16, 16)).astype(np.float32) for _ in range(2)]
        image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])
        image.SetSpacing((1.0, 1.0, 2.0, 1.0))
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / "imagesTr" / f"{case}.nii.gz"))
        label = np.zeros((8, 16, 16), np.uint8)
        label[2:5, 4:9, 4:9] = 1
        write_nifti(label, root / "labelsTr" / f"{case}.nii.gz", spacing=(2.0, 1.0, 1.0))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "t",
                "modality": {"0": "FLAIR", "1": "T1w"},
                "labels": {"0": "background", "1": "tumour"},
                "training": training,
                "test": [],
            }
        )
    )
    ingest_dataset(root, name="brain", project=project, workers=1)
    image, label = read_case(project, "brain", "brain_001")
    assert image.shape == (2, 8, 16, 16) and label.shape == (8, 16, 16)
    channels = run_query("SELECT name FROM channels ORDER BY channel", project=project).column("name").to_pylist()
    assert channels == ["FLAIR", "T1w"]
    row = run_query("SELECT spacing FROM cases WHERE case_id = 'brain_001'", project=project).to_pylist()[0]
    assert row["spacing"] == [2.0, 1.0, 1.0]


def test_region_and_ignore_labels_are_recorded(tiny_raw, project):
    description = json.loads((tiny_raw / "dataset.json").read_text())
    description["labels"] = {"background": 0, "liver": 1, "tumor": 2, "kidney": 3, "liver_all": [1, 2], "ignore": 4}
    description["regions_class_order"] = [1, 2, 3, 1]  # regions need it: one value per region
    (tiny_raw / "dataset.json").write_text(json.dumps(description))
    ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    rows = run_query(
        "SELECT name, value, region_values, is_ignore FROM labels ORDER BY name", project=project
    ).to_pylist()
    by_name = {r["name"]: r for r in rows}
    assert by_name["liver_all"]["value"] is None and by_name["liver_all"]["region_values"] == [1, 2]
    assert by_name["ignore"]["is_ignore"] and by_name["ignore"]["value"] == 4
    meta = run_query("SELECT ignore_label, has_regions FROM datasets", project=project).to_pylist()[0]
    assert meta == {"ignore_label": 4, "has_regions": True}


def test_same_source_again_is_a_no_op(tiny_raw, project):
    ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    created = run_query("SELECT created_at FROM datasets", project=project).to_pylist()
    result = run_cli(project, "ingest", str(tiny_raw), "--name", "demo")
    assert "already ingested" in result.output
    assert run_query("SELECT created_at FROM datasets", project=project).to_pylist() == created


def test_replace_swaps_content(tmp_path, tiny_raw, project):
    ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    other = write_demo_dataset(tmp_path / "other", cases=3, test_cases=0, seed=9, shape=(10, 20, 20))
    result = ingest_dataset(other, name="demo", project=project, workers=1, replace=True)
    assert result.status == "replaced"
    assert run_query("SELECT count(*) AS n FROM cases", project=project).to_pylist() == [{"n": 3}]
    image, _ = read_case(project, "demo", "demo_000")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(other / "imagesTr" / "demo_000_0000.nii.gz")))
    assert np.array_equal(image[0], expected)
    leftovers = [p.name for p in (project.store_path / "demo").iterdir() if p.is_dir() and p.name != "raw"]
    assert leftovers == []


def test_sql_formats(tiny_raw, project, tmp_path):
    ingest_dataset(tiny_raw, name="demo", project=project, workers=1)
    out = run_cli(
        project,
        "sql",
        "SELECT case_id, shape, CAST('NaN' AS DOUBLE) AS x FROM cases ORDER BY case_id LIMIT 2",
        "--format",
        "json",
    ).output
    rows = json.loads(out)
    assert rows[0]["case_id"] == "demo_000" and isinstance(rows[0]["shape"], list) and rows[0]["x"] is None
    csv_text = run_cli(
        project, "sql", "SELECT case_id, shape FROM cases ORDER BY case_id LIMIT 1", "--format", "csv"
    ).output
    header, first = csv_text.strip().splitlines()[:2]
    assert header.strip() == "case_id,shape" and first.startswith('demo_000,"[')
    target = tmp_path / "out.json"
    run_cli(project, "sql", "SELECT count(*) AS n FROM cases", "--format", "json", "--output", str(target))
    assert json.loads(target.read_text()) == [{"n": 5}]
    listing = run_cli(project, "datasets").output
    assert "demo" in listing and "liver=1" in listing
    bad = run_cli(project, "sql", "DELETE FROM cases", expect_ok=False)
    assert bad.exit_code != 0 and "read-only" in bad.output
    assert run_query("SELECT count(*) AS n FROM cases", project=project).to_pylist() == [{"n": 5}]


def test_quick_demo_kind_has_larger_structures_in_separate_intensity_bands(tmp_path):
    """`ct-quick` (what `make demo` trains) draws the same cases as `ct` with learnable sizes and contrasts."""
    ct = write_demo_dataset(tmp_path / "ct", cases=3, test_cases=0, shape=(16, 40, 40))
    quick = write_demo_dataset(tmp_path / "quick", cases=3, test_cases=0, shape=(16, 40, 40), kind="ct-quick")
    for index in range(3):
        name = f"demo_{index:03d}"
        plain, easy = (sitk.ReadImage(str(root / "labelsTr" / f"{name}.nii.gz")) for root in (ct, quick))
        assert plain.GetSize() == easy.GetSize() and plain.GetSpacing() == easy.GetSpacing()
        small, large = sitk.GetArrayFromImage(plain), sitk.GetArrayFromImage(easy)
        for value in (2, 3):  # tumour and kidneys: a few dozen voxels in `ct`, hundreds in `ct-quick`
            assert (large == value).sum() >= max(150, 3 * (small == value).sum())
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(quick / "imagesTr" / f"{name}_0000.nii.gz")))
        medians = {value: float(np.median(image[large == value])) for value in (1, 2, 3)}
        body = float(np.median(image[(large == 0) & (image > -500)]))
        # bands in order: body, liver, tumour, kidney
        assert body + 30 < medians[1] < medians[2] - 40 < medians[3] - 40, (medians, body)


def test_unknown_demo_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo data kind 'mri'; known: ct, ct-quick"):
        write_demo_dataset(tmp_path / "x", cases=2, test_cases=0, kind="mri")
    assert not (tmp_path / "x").exists()

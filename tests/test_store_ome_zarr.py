"""The store is a Zarr v3 hierarchy other tools open: groups from the root to each case, OME-Zarr 0.5 geometry on
each case (checked with the published `ome-zarr-models` validator), and an old store upgraded in place by the
catalog migration without touching a chunk."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pytest
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from voxelbase.catalog import connect
from voxelbase.catalog.datasets import case_geometries
from voxelbase.catalog.preprocessed import case_properties
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import plan_dataset
from voxelbase.preprocessing.dataset import preprocess_dataset
from voxelbase.project import Project
from voxelbase.store import CaseGeometry, read_case, write_case
from voxelbase.store.ome import read_case_geometry
from voxelbase.training.patches import chunk_files

DATASET = "demo"
CONFIGURATION = "3d_fullres"
CASES = ("demo_000", "demo_001", "demo_002")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Project, str]:
    """The project's demo data ingested, planned and preprocessed (built once; tests that change it copy it)."""
    root = tmp_path_factory.mktemp("ome")
    raw = write_demo_dataset(root / "raw", cases=3, test_cases=0, seed=1, shape=(8, 16, 16))
    project = Project.resolve(root / "project")
    ingest_dataset(raw, name=DATASET, project=project, workers=1)
    plan_dataset(DATASET, project=project)
    result = preprocess_dataset(DATASET, configuration=CONFIGURATION, project=project, workers=1, progress=False)
    assert result.processed == CASES
    return project, result.plan


@pytest.fixture
def copied(built, tmp_path) -> tuple[Project, str]:
    project, plan = built
    shutil.copytree(project.root, tmp_path / "project", symlinks=True)
    return Project.resolve(tmp_path / "project"), plan


def stages(plan: str) -> tuple[str, ...]:
    return ("raw", f"{plan}/{CONFIGURATION}")


def walk(store: Path) -> dict[str, str]:
    """Every node `zarr.open_group(store)` reaches: path -> 'group' or 'array'."""
    with warnings.catch_warnings():  # the `.input_hash` markers are not Zarr nodes; zarr says so and skips them
        warnings.simplefilter("ignore")
        root = zarr.open_group(str(store), mode="r", zarr_format=3)
        return {
            path: "group" if isinstance(node, zarr.Group) else "array" for path, node in root.members(max_depth=None)
        }


def validate_case(directory: Path) -> Image:
    """The case through the validator: an OME-Zarr 0.5 image whose label is an OME-Zarr label image."""
    group = zarr.open_group(str(directory), mode="r", zarr_format=3)
    image = Image.from_zarr(group)
    assert type(open_ome_zarr(group, version="0.5")) is Image
    labels = image.labels
    assert labels is not None and labels.label_paths == ["label"]
    label = open_ome_zarr(zarr.open_group(str(directory / "labels" / "label"), mode="r"), version="0.5")
    assert type(label) is ImageLabel
    assert label.ome_attributes.image_label.source.image == "../../"
    return image


def scale_and_translation(model) -> tuple[list[float], list[float]]:
    (dataset,) = model.ome_attributes.multiscales[0].datasets
    scale, translation = dataset.coordinateTransformations
    return list(scale.scale), list(translation.translation)


def chunk_state(store: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every chunk file of every array in the store."""
    return {
        str(path.relative_to(store)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(store.rglob("*"))
        if path.is_file() and "c" in path.relative_to(store).parts
    }


def make_old(store: Path) -> None:
    """The store as written before it was a hierarchy: arrays only, no group nodes, no axis names, no labels group."""
    for node in sorted(store.rglob("zarr.json")):
        document = json.loads(node.read_text())
        if document["node_type"] == "group":
            node.unlink()
        else:
            document.pop("dimension_names", None)
            node.write_text(json.dumps(document))
    for labels in sorted(store.rglob("labels")):
        shutil.rmtree(labels)


def test_every_dataset_stage_and_case_is_a_group_reached_from_the_root(built):
    project, plan = built
    nodes = walk(project.store_path)
    assert json.loads((project.store_path / "zarr.json").read_text())["node_type"] == "group"
    expected_groups = {DATASET, f"{DATASET}/raw", f"{DATASET}/{plan}", f"{DATASET}/{plan}/{CONFIGURATION}"}
    for stage in stages(plan):
        for case in CASES:
            expected_groups.add(f"{DATASET}/{stage}/{case}")
            assert nodes[f"{DATASET}/{stage}/{case}/image"] == "array"
            assert nodes[f"{DATASET}/{stage}/{case}/label"] == "array"
    assert {path for path in expected_groups if nodes.get(path) == "group"} == expected_groups


def test_case_geometry_is_the_catalogs(built):
    project, plan = built
    with connect(project, read_only=True) as con:
        raw = case_geometries(con, DATASET)
        properties = {
            case: case_properties(con, DATASET, case, plan=plan, configuration=CONFIGURATION) for case in CASES
        }
    assert any(abs(g.direction[4] - 1) > 1e-3 for g in raw.values()), "the demo data has a rotated case"
    for case in CASES:
        raw_dir = project.store_path / DATASET / "raw" / case
        attributes = zarr.open_group(str(raw_dir), mode="r").attrs.asdict()
        mine = attributes["voxelbase"]
        assert mine["spacing"] == pytest.approx(raw[case].spacing)
        assert mine["origin"] == pytest.approx(raw[case].origin)
        assert mine["direction"] == pytest.approx(raw[case].direction)
        # ITK's own order, as SimpleITK's SetSpacing/SetOrigin/SetDirection take it
        itk_direction = np.asarray(raw[case].direction).reshape(3, 3)[::-1, ::-1].ravel()
        assert mine["itk"]["spacing"] == pytest.approx(raw[case].spacing[::-1])
        assert mine["itk"]["direction"] == pytest.approx(itk_direction)
        scale, translation = scale_and_translation(validate_case(raw_dir))
        assert scale == pytest.approx([1.0, *raw[case].spacing])
        assert translation == pytest.approx([0.0, *raw[case].origin])

        preprocessed_dir = project.store_path / DATASET / plan / CONFIGURATION / case
        target = properties[case]["target_spacing"]
        assert read_case_geometry(preprocessed_dir).spacing == pytest.approx(target)
        scale, translation = scale_and_translation(validate_case(preprocessed_dir))
        assert scale == pytest.approx([1.0, *target])
        start = np.asarray(properties[case]["bbox"][0::2], dtype=float)
        origin = np.asarray(raw[case].origin) + np.asarray(raw[case].direction).reshape(3, 3) @ (
            start * np.asarray(raw[case].spacing)
        )
        assert translation == pytest.approx([0.0, *origin])


def test_arrays_name_their_axes_and_the_label_image_is_the_label_array(built):
    project, plan = built
    for stage in stages(plan):
        directory = project.store_path / DATASET / stage / CASES[0]
        image = zarr.open_array(str(directory / "image"), mode="r")
        label = zarr.open_array(str(directory / "label"), mode="r")
        assert image.metadata.dimension_names == ("c", "z", "y", "x")
        assert label.metadata.dimension_names == ("z", "y", "x")
        through_ome = zarr.open_array(str(directory / "labels" / "label" / "0"), mode="r")
        assert np.array_equal(through_ome[...], label[...])
        assert (directory / "labels" / "label" / "0").resolve() == (directory / "label").resolve()
        # the readers of the store are unchanged: whole reads and the training stream's direct chunk reads
        assert chunk_files(image) is not None and chunk_files(label) is not None
    stored_image, stored_label = read_case(project, DATASET, CASES[0])
    assert stored_image.ndim == 4 and stored_label.ndim == 3


def test_an_old_store_is_upgraded_in_place_by_the_migration(copied):
    project, plan = copied
    store = project.store_path
    written = {
        (stage, case): zarr.open_group(str(store / DATASET / stage / case), mode="r").attrs.asdict()
        for stage in stages(plan)
        for case in CASES
    }
    arrays_before = {case: read_case(project, DATASET, case) for case in CASES}
    make_old(store)
    assert not (store / "zarr.json").exists()
    with pytest.raises(Exception):  # noqa: B017 - the validator's error types vary; the old store must not pass
        Image.from_zarr(zarr.open_group(str(store / DATASET / "raw" / CASES[0]), mode="r"))
    chunks = chunk_state(store)
    assert chunks, "the store has chunk files"

    with duckdb.connect(str(project.catalog_path)) as con:  # the catalog as it was before migration 010
        con.execute("DELETE FROM schema_migrations WHERE version = 10")
    with connect(project, read_only=True):  # opening the catalog applies the migration, which upgrades the store
        pass

    assert chunk_state(store) == chunks  # no chunk rewritten: same bytes, same modification times
    nodes = walk(store)
    for stage in stages(plan):
        for case in CASES:
            directory = store / DATASET / stage / case
            assert nodes[f"{DATASET}/{stage}/{case}"] == "group"
            validate_case(directory)
            # the upgrade writes exactly what ingest and preprocessing write
            assert zarr.open_group(str(directory), mode="r").attrs.asdict() == written[stage, case]
    for case, (image, label) in arrays_before.items():
        again_image, again_label = read_case(project, DATASET, case)
        assert np.array_equal(image, again_image) and np.array_equal(label, again_label)


def test_upgrading_a_current_store_changes_nothing(copied):
    project, _ = copied
    store = project.store_path
    before = {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }
    links = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_symlink())
    with duckdb.connect(str(project.catalog_path)) as con:
        con.execute("DELETE FROM schema_migrations WHERE version = 10")
    with connect(project):
        pass
    after = {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }
    assert after == before
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_symlink()) == links
    assert all(os.readlink(store / link) == "../../label" for link in links) and links


def test_an_unlabelled_case_is_an_image_without_labels(tmp_path):
    directory = tmp_path / "store" / "demo" / "raw" / "case_9"
    image = np.arange(2 * 4 * 6 * 6, dtype=np.int16).reshape(2, 4, 6, 6)
    geometry = CaseGeometry.of((2.5, 0.5, 0.75), (1.0, -2.0, 3.0), (1, 0, 0, 0, 0, -1, 0, 1, 0))
    write_case(directory, image, None, spatial_chunk_shape=(4, 6, 6), geometry=geometry)
    model = Image.from_zarr(zarr.open_group(str(directory), mode="r"))
    assert model.labels is None and not (directory / "labels").exists()
    assert scale_and_translation(model) == ([1.0, 2.5, 0.5, 0.75], [0.0, 1.0, -2.0, 3.0])
    assert read_case_geometry(directory) == geometry
    assert zarr.open_group(str(directory), mode="r").attrs["voxelbase"]["label"] is None


def test_a_copy_that_followed_the_label_link_still_validates_and_upgrades(built, tmp_path):
    """`shutil.copytree` without `symlinks=True` copies the label into `labels/label/0`: still a valid store."""
    project, plan = built
    shutil.copytree(project.root, tmp_path / "project")
    copy = Project.resolve(tmp_path / "project")
    directory = copy.store_path / DATASET / "raw" / CASES[0]
    assert not (directory / "labels" / "label" / "0").is_symlink()
    validate_case(directory)
    with duckdb.connect(str(copy.catalog_path)) as con:
        con.execute("DELETE FROM schema_migrations WHERE version = 10")
    with connect(copy):
        pass
    validate_case(directory)


def test_a_crop_moves_the_origin_along_the_direction():
    """The preprocessed origin is the raw position of the crop's first voxel (the demo data crops nothing)."""
    direction = (1, 0, 0, 0, 0, -1, 0, 1, 0)  # (z, y, x) rows: y runs along -x, x along +y
    raw = CaseGeometry.of((2.0, 0.5, 0.25), (10.0, 20.0, 30.0), direction)
    moved = raw.cropped((3, 4, 8), spacing=(1.0, 1.0, 1.0))
    assert moved.origin == pytest.approx((10.0 + 3 * 2.0, 20.0 - 8 * 0.25, 30.0 + 4 * 0.5))
    assert moved.spacing == (1.0, 1.0, 1.0) and moved.direction == raw.direction

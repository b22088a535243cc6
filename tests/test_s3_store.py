"""The store on object storage: a project created with `--store s3://bucket/prefix` against a real S3 server (moto,
in server mode on 127.0.0.1), run through ingest, plan, preprocess, one tiny epoch and predict, and compared with the
same steps on a local store: the same catalog rows, the same stored bytes and the same predicted segmentations.
Also: later commands find the store without `--store`, another `--store` for the project is refused and changes
nothing, and a missing bucket or an unreachable endpoint is a clear error.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import duckdb
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import TINY_SHAPE, run_cli, sql_rows, tiny_spec, volume_digest
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.preprocessing.dataset import preprocess_dataset
from voxelbase.project import Project
from voxelbase.store import StoreError
from voxelbase.store.location import location_path, open_array
from voxelbase.training.patches import read_patch

BUCKET = "voxelbase-test"
LABELLED = 5  # nnU-Net's five folds need five labelled cases
STORE = f"s3://{BUCKET}/projects/demo"
CASES = "SELECT case_id, split, shape, spacing, origin, direction, crop_bbox, content_hash FROM cases ORDER BY 1"
PREPROCESSED = (
    "SELECT case_id, plan, configuration, shape, spacing, bbox, shape_after_cropping, input_hash "
    "FROM preprocessed_cases ORDER BY 1, 2, 3"
)
LOCATIONS = (
    "SELECT case_id, label, count(*) AS n, sum(z) AS z, sum(y) AS y, sum(x) AS x FROM class_locations "
    "GROUP BY ALL ORDER BY 1, 2"
)
EPOCHS = "SELECT epoch, train_loss, val_loss, val_dice FROM epochs ORDER BY epoch"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on a free local port with one bucket; the AWS variables point at it for this module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = tmp_path_factory.mktemp("aws") / "none"  # no user's AWS config or credentials file is read
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        env.setenv("AWS_CONFIG_FILE", str(nowhere))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


def _pipeline(project: Project, raw: Path, spec: Path, out: Path, *store: str, workers: str = "1") -> None:
    """Each step a separate command, as a user types them: only the first names the store."""
    run_cli(project, *store, "ingest", str(raw), "--name", "demo", "--workers", workers)
    run_cli(project, "plan", "demo")
    run_cli(project, "preprocess", "demo", "--configuration", "3d_fullres", "--workers", workers)
    run_cli(project, "train", str(spec), "--fold", "0", "--device", "cpu")
    run_cli(project, "predict", "--experiment", "tiny", "--input", str(raw / "imagesTs"), "--output", str(out))


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory):
    """The same data through the same commands into a local store and into an S3 store."""
    root = tmp_path_factory.mktemp("s3_store")
    raw = write_demo_dataset(root / "raw", cases=LABELLED, test_cases=1, seed=1, shape=TINY_SHAPE)
    spec = root / "tiny.toml"
    spec.write_text(tiny_spec(folds="[0]"))
    local, remote = Project.resolve(root / "local"), Project.resolve(root / "remote")
    _pipeline(local, raw, spec, root / "out_local")
    # two worker processes: cases are written to S3 from other processes than the one that swaps them in
    _pipeline(remote, raw, spec, root / "out_remote", "--store", STORE, workers="2")
    return local, remote, root


def _local_objects(store: Path) -> dict[str, bytes]:
    """Every stored file by its key under the store; the OME-Zarr label image (`labels/`, a group over a symlink to
    the label array) exists only where the filesystem has symlinks, so it is left out."""
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and "labels" not in p.relative_to(store).parts
    }


def _remote_objects(fs, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix) + 1 :]: fs.cat_file(key) for key in fs.find(prefix)}


def _catalog_rows(project: Project) -> dict[str, list]:
    """Every row of every table."""
    con = duckdb.connect(str(project.catalog_path), read_only=True)
    try:
        tables = con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
        return {name: sorted(map(str, con.execute(f"SELECT * FROM {name}").fetchall())) for (name,) in tables}
    finally:
        con.close()


def test_the_s3_store_holds_what_a_local_store_holds(pair, s3):
    local, remote, root = pair
    assert remote.store_path.protocol == "s3" and str(remote.store_path) == STORE
    assert not remote.default_store_path.exists()  # nothing went to the project folder
    for query in (CASES, PREPROCESSED, LOCATIONS):
        rows = sql_rows(local, query)
        assert rows and sql_rows(remote, query) == rows, query
    assert sql_rows(remote, "SELECT location FROM store_location") == [{"location": STORE}]
    assert sql_rows(local, "SELECT location FROM store_location") == []  # a default store records nothing

    expected = _local_objects(local.store_path)
    stored = _remote_objects(s3, STORE.removeprefix("s3://"))
    assert sorted(stored) == sorted(expected)
    assert [k for k in stored if stored[k] != expected[k]] == []  # byte for byte: chunks, nodes, markers
    assert not [k for k in stored if "/." in f"/{k}" and not k.endswith(".input_hash")]  # no staging left
    nodes = {k.removesuffix("/zarr.json"): json.loads(v) for k, v in stored.items() if k.endswith("zarr.json")}
    arrays = [k for k, node in nodes.items() if node["node_type"] == "array"]
    assert len(arrays) == 2 * LABELLED + 1 + 2 * LABELLED  # raw: labelled cases and 1 test image; preprocessed
    for key in arrays:  # and zarr reads the same voxels back through either store
        here, there = open_array(local.store_path / key), open_array(remote.store_path / key)
        assert here.dtype == there.dtype and here.chunks == there.chunks
        np.testing.assert_array_equal(here[...], there[...])


def test_training_and_prediction_agree_across_stores(pair):
    local, remote, root = pair
    assert sql_rows(remote, EPOCHS) == sql_rows(local, EPOCHS)
    written = sorted(p.name for p in (root / "out_local").iterdir() if p.name.endswith(".nii.gz"))
    assert written == sorted(p.name for p in (root / "out_remote").iterdir() if p.name.endswith(".nii.gz"))
    assert written
    for name in written:
        assert volume_digest(root / "out_remote" / name) == volume_digest(root / "out_local" / name)


def test_a_patch_read_fetches_only_the_chunks_it_touches(pair, s3):
    """A chunk the patch does not touch is made unreadable: the patch still reads, the whole array does not."""
    _, remote, _ = pair
    stage = remote.store_path / "demo" / "nnunet-8gb" / "3d_fullres"
    source = f"{stage.path}/demo_000/image"
    scratch = f"{BUCKET}/scratch/image"
    s3.copy(source, scratch, recursive=True)
    array = open_array(location_path(f"s3://{scratch}"))
    assert len(array.chunks) == 4 and any(n > c for n, c in zip(array.shape[1:], array.chunks[1:]))
    last = max(s3.find(f"{scratch}/c"), key=lambda k: [int(v) for v in k.split("/c/")[1].split("/")])
    s3.pipe_file(last, b"not a blosc frame")
    patch = read_patch(array, (0, 0, 0), array.chunks[1:])
    first = (slice(None), *(slice(0, n) for n in array.chunks[1:]))
    np.testing.assert_array_equal(patch, open_array(stage / "demo_000" / "image")[first])
    with pytest.raises(Exception):  # noqa: B017 - the codec's own error type: what matters is that it is read
        array[...]


def test_later_commands_find_the_store_and_another_store_is_refused(pair, s3):
    local, remote, _ = pair
    assert "demo" in run_cli(remote, "datasets").output
    before = (_catalog_rows(remote), _remote_objects(s3, BUCKET))
    other = f"s3://{BUCKET}/elsewhere"
    result = run_cli(remote, "--store", other, "preprocess", "demo", "-c", "3d_fullres", expect_ok=False)
    assert result.exit_code == 1
    assert STORE in result.output and other in result.output and "Traceback" not in result.output
    assert (_catalog_rows(remote), _remote_objects(s3, BUCKET)) == before
    # a project made without --store keeps its own folder: an S3 store for it is refused the same way
    result = run_cli(local, "--store", STORE, "datasets", expect_ok=False)
    assert result.exit_code == 1 and str(local.default_store_path) in result.output and STORE in result.output
    # the Python API refuses it too, when the catalog is opened, before the store is touched
    with pytest.raises(StoreError, match="keeps its store at"):
        preprocess_dataset("demo", configuration="3d_fullres", project=Project.resolve(remote.root, store=other))
    assert (_catalog_rows(remote), _remote_objects(s3, BUCKET)) == before
    # naming the project's own location is no change
    assert "demo" in run_cli(remote, "--store", STORE + "/", "datasets").output


def test_a_missing_bucket_or_an_unreachable_endpoint_is_a_clear_error(s3, tmp_path, monkeypatch):
    raw = write_demo_dataset(tmp_path / "raw", cases=2, test_cases=0, seed=1, shape=TINY_SHAPE)
    project = Project.resolve(tmp_path / "project")
    args = ("ingest", str(raw), "--name", "demo", "--workers", "1")
    result = run_cli(project, "--store", "s3://no-such-bucket/prefix", *args, expect_ok=False)
    assert result.exit_code == 1 and "bucket 'no-such-bucket' does not exist" in result.output
    assert not project.catalog_path.exists()  # the project was not created
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    result = run_cli(project, "--store", f"s3://{BUCKET}/unreachable", *args, expect_ok=False)
    assert result.exit_code == 1 and "cannot reach the store" in result.output and "AWS_ENDPOINT_URL" in result.output
    assert not project.catalog_path.exists()


def test_a_store_url_without_its_filesystem_is_a_clear_error(tmp_path):
    raw = write_demo_dataset(tmp_path / "raw", cases=2, test_cases=0, seed=1, shape=TINY_SHAPE)
    project = Project.resolve(tmp_path / "project")
    result = run_cli(
        project, "--store", "nosuchfs://bucket/prefix", "ingest", str(raw), "--name", "demo", expect_ok=False
    )
    assert result.exit_code == 1 and "the store nosuchfs://bucket/prefix" in result.output
    assert not project.catalog_path.exists()

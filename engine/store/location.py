"""Where the store lives, and the few file operations the store makes, on a local folder or on object storage.

The store's root is `<project>/store`, or the location the project was created with (`voxelbase --store URL`), which
the catalog records (`store_location`, see `voxelbase.catalog.store_location`). A local root is a `pathlib.Path` and
every operation is the plain local one (zarr's `LocalStore`, `os.replace`, `shutil.rmtree`): the fast path, byte for
byte what the store always was. A URL (`s3://bucket/prefix`; any fsspec protocol) is a `upath.UPath`, which keeps
the `Path` API the store code uses (`/`, `exists`, `read_text`, `iterdir`, `glob`), over fsspec; arrays open through
zarr's `FsspecStore`, so a read decodes only the chunks its region touches, as on a local store.

S3 credentials, region and endpoint come from the usual places (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server): botocore reads all of them
itself, including `AWS_ENDPOINT_URL`, so nothing is passed here.

"Nothing half-written" on object storage. A local case or stage is written under a hidden staging name and renamed
into place. Object storage has no rename (a "move" is a copy of every object, then a delete), so `replace_tree`
copies the staged objects to their final keys in an order that makes the result appear complete or not at all: every
chunk and marker first, then the `zarr.json` documents deepest first (each array's, then the case group's, then the
stage's). A node's `zarr.json` is thus written only once everything beneath it is in place, and the store's rule is
that a case exists when its group `zarr.json` does (`voxelbase.store.layout.case_exists`). Replacing an existing case
deletes its group `zarr.json` first, so a reader never sees old and new objects mixed under one visible case. The
staged copy is deleted last: a crash mid-copy leaves it for the next run to finish or discard, as locally.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from voxelbase.errors import VoxelbaseError
from voxelbase.project import Project, is_url, normalize_store

if TYPE_CHECKING:
    import zarr
    from upath import UPath

StorePath: TypeAlias = "Path | UPath"  # a local folder, or a prefix in object storage

NODE = "zarr.json"
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # URLs whose first segment is a bucket
EXTRA_FOR = {"s3": "s3", "s3a": "s3"}  # the package extra that brings a protocol's filesystem


class StoreError(VoxelbaseError):
    """The store's location cannot be used: not reachable, not installed, or not the project's."""


# --- which location, once per process -------------------------------------------------------------------------------

_recorded: dict[tuple[str, int], str | None] = {}  # (catalog path, inode) -> recorded location (None: the default)
_reached: set[str] = set()  # remote locations checked reachable in this process


def remember_recorded(catalog_path: Path, location: str | None) -> None:
    """Called by the catalog whenever it is opened: later lookups in this process need not open it again (and cannot
    while this process holds a writing connection). A recorded location never changes, so the answer stays true."""
    try:
        key = (str(catalog_path), catalog_path.stat().st_ino)
    except OSError:
        return
    _recorded[key] = location


def _recorded_location(project: Project) -> tuple[bool, str | None]:
    """(whether the catalog exists, the location it records or None)."""
    try:
        key = (str(project.catalog_path), project.catalog_path.stat().st_ino)
    except FileNotFoundError:
        return False, None  # a project not created yet: not cached, a later command may create it
    if key not in _recorded:
        from voxelbase.catalog.connection import read_store_location

        remember_recorded(project.catalog_path, read_store_location(project))
    return True, _recorded.get(key)


def location_mismatch(project: Project, kept: str, given: str) -> StoreError:
    return StoreError(
        f"project {project.root} keeps its store at {kept}, but --store names {given}: a project's store is chosen "
        "when the project is created. Leave out --store (the project remembers its store), or use another --project "
        f"for a store at {given}"
    )


def store_root(project: Project) -> StorePath:
    """The project's store root: the location asked for, else the one the catalog records, else `<project>/store`.

    A location asked for is checked against the catalog's wherever the catalog is opened (every command opens it
    before it touches the store) and by the CLI up front (`check_store_location`); here it is taken as it is, so worker
    processes handed a settled location never open the catalog. A remote root is checked reachable once per process,
    so a wrong bucket, endpoint or credential fails here with a clear message instead of deep inside a write."""
    default = str(project.default_store_path)
    if project.store is not None:
        location = normalize_store(project.store)
    else:
        location = _recorded_location(project)[1] or default
    if location == default:
        return project.default_store_path
    path = location_path(location)
    if is_remote(path) and location not in _reached:
        check_reachable(path)
        _reached.add(location)
    return path


def settled(project: Project) -> Project:
    """The project with its store location resolved now, to hand to other processes (DDP ranks, loader worker
    processes): they find the store from it without opening the catalog, which another process may be writing."""
    root = store_root(project)
    return dataclasses.replace(project, store=normalize_store(str(root)))


def check_store_location(project: Project) -> None:
    """Refuse a store location asked for that is not the existing project's (no project yet: any is fine)."""
    if project.store is None:
        return
    exists, recorded = _recorded_location(project)
    kept = recorded or str(project.default_store_path)
    if exists and normalize_store(project.store) != kept:
        raise location_mismatch(project, kept, normalize_store(project.store))


def location_path(location: str) -> StorePath:
    """A normalized location as a path: `Path` for a local folder, `UPath` for a URL."""
    if not is_url(location):
        return Path(location)
    protocol = location.partition("://")[0].lower()
    extra = EXTRA_FOR.get(protocol)
    hint = f"pip install 'voxelbase[{extra}]'" if extra else f"install fsspec's filesystem for {protocol}://"
    try:
        import fsspec
        from upath import UPath

        fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        raise StoreError(f"the store {location} needs packages that are not installed ({error}): {hint}") from error
    except ValueError as error:
        raise StoreError(f"the store {location}: {error}") from error
    # listings are not cached: worker processes write cases the main process then lists (cached ones go stale)
    return UPath(location, use_listings_cache=False)


def is_remote(path: StorePath) -> bool:
    return not isinstance(path, Path)


def check_reachable(path: StorePath) -> None:
    """Fail clearly when an object store's bucket is missing or cannot be reached (few retries: an unreachable
    endpoint answers in about a second instead of after botocore's full back-off)."""
    protocol = path.protocol
    if protocol not in BUCKET_PROTOCOLS:
        return
    bucket = path.path.split("/", 1)[0]
    fs = path.fs
    if protocol in ("s3", "s3a"):
        import fsspec

        fs = fsspec.filesystem(
            protocol,
            skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 2}, "connect_timeout": 10},
            **{k: v for k, v in path.storage_options.items() if k != "config_kwargs"},
        )
    where = f"the store {path}"
    try:
        fs.info(bucket)
    except FileNotFoundError as error:
        raise StoreError(
            f"{where}: bucket {bucket!r} does not exist (or these credentials cannot see it); create it first "
            "or check --store"
        ) from error
    except PermissionError as error:
        raise StoreError(
            f"{where}: access to bucket {bucket!r} is denied ({error}); check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        ) from error
    except Exception as error:  # botocore's connection and credential errors share no base class with OSError
        raise StoreError(
            f"cannot reach {where} ({type(error).__name__}: {error}); check the endpoint (AWS_ENDPOINT_URL), "
            "the network and the credentials"
        ) from error


# --- the operations the store makes ---------------------------------------------------------------------------------


def make_dirs(path: StorePath) -> None:
    """A local folder and its parents; nothing on object storage, where prefixes exist by holding objects (and where
    fsspec's mkdir would create a missing bucket instead of reporting it)."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)


def remove_tree(path: StorePath) -> None:
    """Delete a folder or prefix and everything under it; nothing when it is not there. On object storage the group
    node goes first, so what is being deleted stops counting as a stored node before its chunks go."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs = path.fs
    try:
        fs.rm_file(f"{path.path}/{NODE}")
    except FileNotFoundError:
        pass
    try:
        fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass


def remove_if_empty(path: StorePath) -> None:
    """An empty local folder goes; an object-storage prefix with no objects does not exist anyway."""
    if not is_remote(path) and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def replace_tree(staged: StorePath, final: StorePath) -> None:
    """Make the fully written `staged` folder the content of `final`, replacing what was there.

    Local: `final` is removed and `staged` renamed onto it (a rename is atomic). Object storage: the copy in node
    order described in the module docstring, then `staged` is deleted."""
    if not is_remote(staged):
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        return
    fs = staged.fs
    source, target = staged.path.rstrip("/"), final.path.rstrip("/")
    keys = fs.find(source)
    if not keys:
        raise FileNotFoundError(f"nothing staged at {staged}")
    remove_tree(final)
    nodes = [k for k in keys if k.rsplit("/", 1)[-1] == NODE]
    batches = [[k for k in keys if k.rsplit("/", 1)[-1] != NODE]]
    for depth in sorted({k.count("/") for k in nodes}, reverse=True):
        batches.append([k for k in nodes if k.count("/") == depth])
    for batch in batches:
        if batch:
            fs.copy(batch, [target + k[len(source) :] for k in batch])
    remove_tree(staged)


def write_node_text(path: StorePath, text: str) -> None:
    """Replace a `zarr.json` whole, so that a reader sees the old or the new document, never half: locally through
    a temporary file and `os.replace`, on object storage by one PUT (an object is replaced atomically)."""
    if is_remote(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_text_or_none(path: StorePath) -> str | None:
    """A small file's text, or None when it is not there (one request on object storage, not an exists + a read)."""
    try:
        return path.read_text()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def tree_bytes(path: StorePath) -> int:
    """Bytes stored under a folder or prefix."""
    if is_remote(path):
        return int(path.fs.du(path.path, total=True)) if path.exists() else 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def can_link(path: StorePath) -> bool:
    """Whether the store can hold the label image's relative symlink (`voxelbase.store.ome`): object storage cannot."""
    return not is_remote(path)


# --- zarr on either -------------------------------------------------------------------------------------------------


def zarr_store(path: StorePath, *, read_only: bool = False) -> Any:
    """What zarr opens for the node at `path`: the local path itself (zarr's `LocalStore`, which the patch reader's
    direct chunk-file path recognizes) or an `FsspecStore` on the same filesystem and options."""
    if not is_remote(path):
        return str(path)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=read_only)


def open_array(path: StorePath) -> zarr.Array:
    """A stored array, opened read-only and lazily (metadata only; voxels are read per region)."""
    import zarr

    if not is_remote(path):
        return zarr.open_array(str(path), mode="r")
    return zarr.open_array(store=zarr_store(path, read_only=True), mode="r", zarr_format=3)

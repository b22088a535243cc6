"""Image files, below every stage: read with every check, written with the original geometry.

Arrays are (Z, Y, X) (or (C, Z, Y, X) for a case's channels) and geometry is in (z, y, x) order. Ingest, predict
and evaluate all read through `read_image` / `read_channels`, so a file refused by one is refused by all with the
same message; segmentations and probabilities are written through a temporary name and renamed, so no partial file
ever looks complete. SimpleITK is imported inside the functions that touch files: training and inference from the
store never need it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelbase.errors import VoxelbaseError

TWO_D_SPACING = 999.0  # the spacing nnU-Net gives the missing axis of a 2-D image


class ImageFileError(VoxelbaseError, RuntimeError):
    """An image file that cannot be used as it is; the message names the file and the problem."""


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, (z, y, x) rows and columns

    @classmethod
    def of(cls, row) -> Geometry:
        """The geometry of a `cases` row (or anything with spacing, origin, direction in (z, y, x))."""
        get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
        return cls(*(tuple(float(v) for v in get(key)) for key in ("spacing", "origin", "direction")))

    def mismatch(self, other: Geometry, *, rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
        """Which field differs beyond tolerance (relative to spacing for origins), or None."""
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol):
            return f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=max(1e-3, 1e-3 * min(self.spacing))):
            return f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            return f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}"
        return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def itk_to_zyx(spacing, origin, direction) -> Geometry:
    """ITK's (x, y, z) geometry to (z, y, x): reverse spacing and origin, reverse rows and columns of the matrix."""
    n = len(spacing)
    matrix = np.asarray(direction, dtype=float).reshape(n, n)[:3, :3]
    return Geometry(
        spacing=tuple(float(s) for s in reversed(spacing[:3])),
        origin=tuple(float(o) for o in reversed(origin[:3])),
        direction=tuple(float(v) for v in matrix[::-1, ::-1].ravel()),
    )


def zyx_to_itk(geometry: Geometry) -> tuple[tuple, tuple, tuple]:
    """The inverse of `itk_to_zyx`, for writing images."""
    matrix = np.asarray(geometry.direction, dtype=float).reshape(3, 3)[::-1, ::-1]
    return tuple(reversed(geometry.spacing)), tuple(reversed(geometry.origin)), tuple(matrix.ravel())


def read_image(path: Path, *, four_d: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read one file. Returns (Z, Y, X) for 3-D (or (C, Z, Y, X) when `four_d`) and its geometry."""
    import SimpleITK as sitk

    if not path.is_file():
        raise ImageFileError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        reason = next((line for line in first if "ERROR" in line or "rror" in line), first[-1] if first else "")
        raise ImageFileError(f"{path}: unreadable or truncated image file ({reason.strip()[:200]})") from error
    dimension = image.GetDimension()
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFileError(f"{path}: vector images are not supported; store each channel as its own file")
    if array.dtype.kind in "fc" and path.name.lower().endswith((".nii", ".nii.gz")):
        # ITK's NIfTI reader has already turned NaN and infinite voxels into 0, so only the file's own bytes can
        # tell; integer files are never read twice.
        count = nifti_nonfinite_count(path)
        if count:
            raise ImageFileError(f"{path}: {count} NaN or infinite voxel(s)")
    if dimension == 2 and not four_d:
        array = array[None]
        spacing, origin = (*spacing, TWO_D_SPACING), (*origin, 0.0)
        d = direction
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    elif four_d and dimension == 3:
        array = array[None]  # a single-channel MSD image
    elif four_d and dimension != 4:
        raise ImageFileError(f"{path}: expected a 3-D or 4-D image, got {dimension}-D")
    elif not four_d and dimension != 3:
        raise ImageFileError(f"{path}: expected a 2-D or 3-D image, got {dimension}-D")
    return array, itk_to_zyx(spacing, origin, direction)


# NIfTI datatype codes whose voxels can be NaN or infinite, as numpy types (byte order set from the header).
_NIFTI_FLOATS = {16: np.float32, 64: np.float64, 32: np.complex64, 1792: np.complex128}
# Floating-point codes numpy cannot read portably (NIfTI leaves the 128-bit layout open), refused rather than passed.
_NIFTI_UNCHECKABLE = {1536: "float128", 2048: "complex256"}
_NIFTI_BLOCK = 1 << 22  # bytes of voxel data per step: a multiple of every item size, and bounded memory


def nifti_nonfinite_count(path: Path) -> int:
    """How many NaN or infinite voxels a NIfTI-1 or NIfTI-2 file (`.nii` or `.nii.gz`, either byte order) holds,
    counted in the file's own voxel bytes block by block.

    Only float32/float64 and complex64/complex128 payloads are read; integer payloads return 0 at once (they cannot
    hold NaN, and a scaling that overflows shows as infinity in the image ITK returns). `scl_slope`/`scl_inter` are
    not applied: a non-finite voxel stays non-finite whatever the scaling, and the NIfTI reader ignores a
    non-finite slope or intercept. Raises `ImageFileError` for a header that is not NIfTI, a 128-bit float
    payload, or voxel data that ends early.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(540)
            layout = _nifti_payload(path, head)
            if layout is None:
                return 0
            dtype, offset, remaining = layout
            handle.seek(offset)
            buffer = bytearray(min(_NIFTI_BLOCK, remaining))
            view = memoryview(buffer)
            finite = np.empty(len(buffer) // dtype.itemsize, dtype=bool)
            count = 0
            while remaining:
                size = _fill(handle, view[: min(len(buffer), remaining)])
                if size == 0 or size % dtype.itemsize:
                    raise ImageFileError(f"{path}: unreadable or truncated image file (the voxel data ends early)")
                values = np.frombuffer(buffer, dtype=dtype, count=size // dtype.itemsize)
                count += values.size - np.count_nonzero(np.isfinite(values, out=finite[: values.size]))
                remaining -= size
            return int(count)
    except (OSError, EOFError, zlib.error) as error:
        raise ImageFileError(f"{path}: unreadable or truncated image file ({error})") from error


def _nifti_payload(path: Path, head: bytes) -> tuple[np.dtype, int, int] | None:
    """(voxel dtype, byte offset, byte count) of a floating-point NIfTI payload; None for any other datatype.

    `sizeof_hdr` (348 for NIfTI-1, 540 for NIfTI-2) gives the byte order. The datatype alone gives the voxel size,
    as it does for the reader, which ignores `bitpix`. The voxels start at `vox_offset`, but never inside the
    header: the reader moves a smaller (or negative) offset to the header's end.
    """
    if len(head) < 348:
        raise ImageFileError(f"{path}: not a NIfTI file (only {len(head)} bytes of header)")
    order = next((o for o in "<>" if struct.unpack_from(o + "i", head)[0] in (348, 540)), None)
    if order is None:
        raise ImageFileError(f"{path}: not a NIfTI file (sizeof_hdr is neither 348 nor 540 in either byte order)")
    header_size = struct.unpack_from(order + "i", head)[0]
    if header_size == 348:
        dims = struct.unpack_from(order + "8h", head, 40)
        (datatype,) = struct.unpack_from(order + "h", head, 70)
        (vox_offset,) = struct.unpack_from(order + "f", head, 108)
    elif len(head) < 540:
        raise ImageFileError(f"{path}: unreadable or truncated image file (NIfTI-2 header cut short)")
    else:
        (datatype,) = struct.unpack_from(order + "h", head, 12)
        dims = struct.unpack_from(order + "8q", head, 16)
        (vox_offset,) = struct.unpack_from(order + "q", head, 168)
    if datatype in _NIFTI_UNCHECKABLE:
        raise ImageFileError(
            f"{path}: {_NIFTI_UNCHECKABLE[datatype]} voxels cannot be checked for NaN or infinite values; "
            "store the image as float32 or float64"
        )
    if datatype not in _NIFTI_FLOATS:
        return None
    if not 1 <= dims[0] <= 7:
        raise ImageFileError(f"{path}: not a valid NIfTI header (dim[0] is {dims[0]}, not 1 to 7)")
    dtype = np.dtype(_NIFTI_FLOATS[datatype]).newbyteorder(order)
    voxels = math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1])
    offset = max(int(vox_offset) if math.isfinite(vox_offset) else 0, header_size)
    return dtype, offset, voxels * dtype.itemsize


def _fill(handle, view: memoryview) -> int:
    """Read into all of `view` unless the file ends first; the number of bytes read."""
    filled = 0
    while filled < len(view):
        size = handle.readinto(view[filled:])
        if not size:
            break
        filled += size
    return filled


def read_channels(paths: Sequence[Path], *, four_d: bool = False) -> tuple[np.ndarray, Geometry]:
    """A case's (C, Z, Y, X) image from one file per channel (or one 4-D file): every file must have the first
    one's shape and geometry, and a floating-point image must hold no NaN or infinite voxel."""
    paths = [Path(p) for p in paths]
    if four_d:
        image, geometry = read_image(paths[0], four_d=True)
    else:
        arrays, geometry = [], None
        for path in paths:
            array, found = read_image(path)
            if geometry is None:
                geometry = found
            else:
                if array.shape != arrays[0].shape:
                    raise ImageFileError(
                        f"{path}: shape {array.shape} differs from {paths[0].name}'s {arrays[0].shape}"
                    )
                problem = geometry.mismatch(found)
                if problem:
                    raise ImageFileError(f"{path}: geometry differs from {paths[0].name}'s: {problem}")
            arrays.append(array)
        dtype = np.result_type(*[a.dtype for a in arrays])
        image = np.stack([a.astype(dtype, copy=False) for a in arrays])
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            channel = int(np.argwhere(bad)[0][0])
            raise ImageFileError(f"{paths[min(channel, len(paths) - 1)]}: {int(bad.sum())} NaN or infinite voxel(s)")
    return image, geometry


def read_label(path: Path, *, shape: Sequence[int], geometry: Geometry, declared: frozenset[int] | None = None):
    """A (Z, Y, X) label map that must match its image's shape and geometry and hold only integers (and, when
    `declared` is given, only those values)."""
    label, found = read_image(path)
    if label.shape != tuple(shape):
        raise ImageFileError(f"{path}: label shape {label.shape} differs from image shape {tuple(shape)}")
    problem = geometry.mismatch(found)
    if problem:
        raise ImageFileError(f"{path}: label geometry differs from the image: {problem}")
    if label.dtype.kind == "f" and (not np.all(np.isfinite(label)) or np.any(label != np.round(label))):
        raise ImageFileError(f"{path}: label holds non-integer values")
    if declared is not None:
        unknown = sorted(int(v) for v in np.unique(label) if int(v) not in declared)
        if unknown:
            raise ImageFileError(
                f"{path}: label values {unknown} are not declared in dataset.json (declared: {sorted(declared)})"
            )
    return label


def file_hash(paths: Sequence[Path], *, check_gzip: bool = False) -> str:
    """sha256 over the files' bytes; with `check_gzip`, also proves each .gz stream is complete.

    ITK's NIfTI reader silently zero-fills a truncated .nii.gz, so completeness is checked here, in the
    same pass that reads the bytes for the hash.
    """
    digest = hashlib.sha256()
    for path in paths:
        inflater = zlib.decompressobj(wbits=47) if check_gzip and path.name.endswith(".gz") else None
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                if inflater is not None:
                    try:
                        while block and not inflater.eof:
                            inflater.decompress(block, 1 << 22)
                            block = inflater.unconsumed_tail
                    except zlib.error as error:
                        raise ImageFileError(
                            f"{path}: unreadable or truncated image file (corrupt gzip data: {error})"
                        ) from error
        if inflater is not None and not inflater.eof:
            raise ImageFileError(f"{path}: unreadable or truncated image file (the gzip stream ends early)")
    return digest.hexdigest()


def _replace_atomically(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_segmentation(segmentation: np.ndarray, path: Path, *, geometry: Geometry) -> Path:
    """Write a (Z, Y, X) label map to `path` (format from its ending) with exactly `geometry`."""
    import SimpleITK as sitk

    array = np.ascontiguousarray(segmentation.astype(np.uint8 if segmentation.max(initial=0) < 256 else np.uint16))
    image = sitk.GetImageFromArray(array)
    spacing, origin, direction = zyx_to_itk(geometry)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return _replace_atomically(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def write_probabilities(probabilities: np.ndarray, path: Path) -> Path:
    """Class probabilities (K, Z, Y, X) in the original geometry, float16 `.npz` (for ensembling)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, probabilities=probabilities.astype(np.float16))

    return _replace_atomically(path, write)


def read_probabilities(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["probabilities"].astype(np.float32)

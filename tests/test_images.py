"""Image files: NaN and infinite voxels in a floating-point NIfTI are found in the file's own bytes, since ITK's
NIfTI reader turns them into 0."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import voxelbase.images
from tests.conftest import write_nifti
from voxelbase.images import ImageFileError, nifti_nonfinite_count, read_image
from voxelbase.inference.inputs import InputCase, PredictionError, read_input_case

# The numeric fields of a NIfTI-1 header in file order (text fields as opaque bytes), so a whole header can change
# byte order in one cast.
NIFTI1_HEADER = np.dtype(
    [
        ("sizeof_hdr", "<i4"),
        ("text", "V36"),
        ("dim", "<i2", 8),
        ("intent_p", "<f4", 3),
        ("codes", "<i2", 4),  # intent_code, datatype, bitpix, slice_start
        ("pixdim", "<f4", 8),
        ("vox_offset", "<f4"),
        ("scl", "<f4", 2),
        ("slice_end", "<i2"),
        ("slice_info", "V2"),
        ("cal", "<f4", 4),
        ("glmax_glmin", "<i4", 2),
        ("descrip_aux", "V104"),
        ("form_codes", "<i2", 2),
        ("quatern", "<f4", 6),
        ("srow", "<f4", 12),
        ("intent_name_magic", "V20"),
    ]
)
assert NIFTI1_HEADER.itemsize == 348


def nifti_bytes(path: Path) -> bytes:
    """A NIfTI file's uncompressed bytes."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def nifti_payload(path: Path) -> np.ndarray:
    """The float32 voxels exactly as stored in a NIfTI-1 file, read without ITK."""
    raw = nifti_bytes(path)
    order = "<" if struct.unpack_from("<i", raw)[0] == 348 else ">"
    assert struct.unpack_from(order + "h", raw, 70)[0] == 16, "not a float32 NIfTI"
    offset = int(struct.unpack_from(order + "f", raw, 108)[0])
    return np.frombuffer(raw, dtype=order + "f4", offset=offset)


def make_big_endian(path: Path) -> None:
    """Rewrite a little-endian float32 NIfTI-1 file (as SimpleITK writes it) in big-endian byte order."""
    raw = nifti_bytes(path)
    header = np.frombuffer(raw, dtype=NIFTI1_HEADER, count=1)
    assert header["sizeof_hdr"][0] == 348 and header["codes"][0][1] == 16
    offset = int(header["vox_offset"][0])
    swapped = (
        header.astype(NIFTI1_HEADER.newbyteorder(">")).tobytes()
        + raw[348:offset]
        + np.frombuffer(raw, dtype="<f4", offset=offset).astype(">f4").tobytes()
    )
    path.write_bytes(gzip.compress(swapped, compresslevel=1) if path.name.endswith(".gz") else swapped)


def _hand_made(array: np.ndarray, datatype: int, *, nifti2: bool = False, order: str = "<", offset: int = 0) -> bytes:
    """A minimal one-file NIfTI-1 or NIfTI-2 header and payload, for what SimpleITK cannot write."""
    dims = [array.ndim, *reversed(array.shape)] + [1] * (7 - array.ndim)
    if nifti2:
        header = bytearray(540)
        struct.pack_into(order + "i8s2h8q", header, 0, 540, b"n+2\0\r\n\x1a\n", datatype, array.itemsize * 8, *dims)
        struct.pack_into(order + "q", header, 168, offset or 544)
    else:
        header = bytearray(348)
        struct.pack_into(order + "i", header, 0, 348)
        struct.pack_into(order + "8h", header, 40, *dims)
        struct.pack_into(order + "2h", header, 70, datatype, array.itemsize * 8)
        struct.pack_into(order + "3f", header, 108, offset or 352, 1.0, 0.0)
        header[344:348] = b"n+1\0"
    start = offset or len(header) + 4
    return bytes(header) + bytes(start - len(header)) + array.astype(array.dtype.newbyteorder(order)).tobytes()


def _volume(dtype=np.float32) -> np.ndarray:
    return np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_clean_float_nifti_passes(tmp_path, ending):
    path = write_nifti(_volume() - 50.5, tmp_path / f"clean{ending}")
    assert nifti_nonfinite_count(path) == 0
    array, _ = read_image(path)
    assert array.dtype == np.float32 and array.shape == (4, 5, 6)


def test_integer_nifti_is_never_read_twice(tmp_path, monkeypatch):
    path = write_nifti(_volume(np.int16), tmp_path / "int.nii.gz")
    assert nifti_nonfinite_count(path) == 0

    def refuse(_):
        raise AssertionError("an integer image's voxels were read a second time")

    monkeypatch.setattr(voxelbase.images, "nifti_nonfinite_count", refuse)
    array, _ = read_image(path)
    assert array.dtype == np.int16


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nan_in_float64_is_refused(tmp_path, ending):
    volume = _volume(np.float64)
    volume[1, 2, 3] = np.nan
    volume[3, 4, 5] = -np.inf
    path = write_nifti(volume, tmp_path / f"nan64{ending}")
    raw = nifti_bytes(path)
    stored = np.frombuffer(raw, dtype="<f8", offset=int(struct.unpack_from("<f", raw, 108)[0]))
    assert np.isnan(stored).sum() == 1 and np.isinf(stored).sum() == 1  # the file really holds them
    assert nifti_nonfinite_count(path) == 2
    with pytest.raises(ImageFileError, match=r"nan64\.nii(\.gz)?: 2 NaN or infinite voxel\(s\)"):
        read_image(path)


def test_big_endian_nan_is_refused(tmp_path):
    volume = _volume()
    volume[0, 0, 1] = np.nan
    volume[2, 2, 2] = np.inf
    path = write_nifti(volume, tmp_path / "big.nii.gz")
    make_big_endian(path)
    assert struct.unpack_from(">i", nifti_bytes(path))[0] == 348
    assert np.isnan(nifti_payload(path)).sum() == 1
    with pytest.raises(ImageFileError, match=r"big\.nii\.gz: 2 NaN or infinite voxel\(s\)"):
        read_image(path)


def test_nan_in_complex_nifti_is_refused(tmp_path):
    volume = _volume(np.complex64)
    volume[1, 1, 1] = complex(0, np.nan)
    path = tmp_path / "complex.nii"
    path.write_bytes(_hand_made(volume, 32))
    with pytest.raises(ImageFileError, match=r"complex\.nii: 1 NaN or infinite voxel\(s\)"):
        read_image(path)


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti2_and_extensions_are_counted(tmp_path, order):
    volume = _volume()
    volume[0, 1, 2] = volume[3, 2, 1] = volume[2, 2, 2] = np.nan
    nifti2 = tmp_path / "two.nii.gz"
    nifti2.write_bytes(gzip.compress(_hand_made(volume, 16, nifti2=True, order=order)))
    assert nifti_nonfinite_count(nifti2) == 3
    extended = tmp_path / "extended.nii"  # voxels after a header extension, not straight after the header
    extended.write_bytes(_hand_made(volume, 16, order=order, offset=1024))
    assert nifti_nonfinite_count(extended) == 3


def test_what_cannot_be_checked_is_refused(tmp_path):
    wide = tmp_path / "wide.nii"
    wide.write_bytes(_hand_made(np.zeros((2, 2, 2), dtype=np.complex128), 1536))  # float128, 16 bytes a voxel
    with pytest.raises(ImageFileError, match=r"wide\.nii: float128 voxels cannot be checked"):
        nifti_nonfinite_count(wide)
    other = tmp_path / "other.nii"
    other.write_bytes(b"\0" * 400)
    with pytest.raises(ImageFileError, match=r"other\.nii: not a NIfTI file"):
        nifti_nonfinite_count(other)


def test_truncated_float_nifti_is_refused(tmp_path):
    path = write_nifti(_volume(), tmp_path / "cut.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageFileError, match=r"cut\.nii\.gz: unreadable or truncated image file"):
        read_image(path)
    short = tmp_path / "short.nii"
    short.write_bytes(_hand_made(_volume(), 16)[:-10])
    with pytest.raises(ImageFileError, match=r"short\.nii: unreadable or truncated image file"):
        nifti_nonfinite_count(short)


def test_prediction_input_with_nan_is_refused(tmp_path):
    volume = _volume()
    volume[1, 2, 3] = np.nan
    path = write_nifti(volume, tmp_path / "in" / "case_0000.nii.gz")
    with pytest.raises(PredictionError, match=r"case_0000\.nii\.gz: 1 NaN or infinite voxel\(s\)"):
        read_input_case(InputCase("case", (path,), ".nii.gz"))

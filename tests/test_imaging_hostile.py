"""Hostile input: broken NIfTI files give ldae's own errors, naming the file.

A corpus of deliberately broken files, then a fuzz test that mutates the header
and the voxels of a valid file: loading and preprocessing either give a finite
volume in [0, 1] or raise InputError naming the file, nothing else.
"""

import gzip
import logging
import os
import struct

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldae.exceptions import InputError
from ldae.imaging import Preprocessing, as_volume_dataset

SHAPE = (12, 14, 10)
# Byte offsets of NIfTI-1 header fields.
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET = 40, 70, 72, 76, 108
SCL_SLOPE, QFORM_CODE, SROW_X, MAGIC, HEADER_END = 112, 252, 280, 344, 352
# NIfTI-2 stores dim as 8 int64 from byte 16.
NIFTI2_DIM = 16


@pytest.fixture(autouse=True)
def quiet_nibabel():
    """nibabel logs every header fix it makes; the tests make many."""
    logger = logging.getLogger("nibabel")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def volume(seed=0):
    return np.random.default_rng(seed).gamma(2.0, 50.0, SHAPE).astype(np.float32)


def nifti_bytes(data, affine=np.eye(4), image_class=nib.Nifti1Image):
    return image_class(data, affine).to_bytes()


def patched(*edits, data=None):
    """A valid NIfTI-1 file's bytes with (offset, struct format, *values) edits."""
    content = bytearray(nifti_bytes(volume() if data is None else data))
    for offset, layout, *values in edits:
        struct.pack_into("<" + layout, content, offset, *values)
    return bytes(content)


def rgb_volume():
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = volume().astype(np.uint8)
    return rgb


def with_nan(count):
    data = volume()
    data.flat[:count] = np.nan
    return data


def nifti2_claiming_a_million_voxels_per_row():
    content = bytearray(nifti_bytes(volume(), image_class=nib.Nifti2Image))
    struct.pack_into("<q", content, NIFTI2_DIM + 8, 10**6)
    return gzip.compress(bytes(content))


def sheared(factor):
    return patched((SROW_X + 4, "f", factor))


def opposite_extremes():
    data = volume()
    data[: SHAPE[0] // 2] = -3e38
    data[SHAPE[0] // 2 :] = 3e38
    return data


VALID = nifti_bytes(volume())
CORPUS = {
    # name: (file name, bytes or "directory", expected message, preprocessing)
    "empty file": ("empty.nii", b"", "not a readable NIfTI image", None),
    "empty gzip": ("empty.nii.gz", b"", "not a readable NIfTI image", None),
    "not a NIfTI": ("notes.nii", b"hello " * 100, "not a readable NIfTI image", None),
    "directory": ("folder.nii", "directory", "is a directory", None),
    "corrupted magic": ("magic.nii", patched((MAGIC, "4s", b"xx\0\0")), "not a readable", None),
    "unknown data type": ("code.nii", patched((DATATYPE, "h", 9999)), "not a readable", None),
    "binary data type": (
        "binary.nii", patched((DATATYPE, "h", 1), (BITPIX, "h", 1)), "not a readable", None),
    "negative voxel offset": ("offset.nii", patched((VOX_OFFSET, "f", -100.0)), "not a readable",
                              None),
    "NaN voxel offset": ("offset.nii", patched((VOX_OFFSET, "f", np.nan)), "not a readable", None),
    "voxel offset past the end": ("offset.nii", patched((VOX_OFFSET, "f", 1e12)), "truncated file",
                                  None),
    "zero dimension": ("dim0.nii", patched((DIM + 2, "h", 0)), "invalid dimensions", None),
    "negative dimension": ("dim-5.nii", patched((DIM + 2, "h", -5)), "invalid dimensions", None),
    "no dimension": ("ndim0.nii", patched((DIM, "h", 0)), "invalid dimensions", None),
    "32767 voxels per row": ("long.nii", patched((DIM + 2, "h", 32767)), "truncated file", None),
    "absurd dims, every axis": (
        "huge.nii", patched((DIM + 2, "3h", 32767, 32767, 32767)), "truncated file", None),
    "10^6 voxels per row, gzip": (
        "million.nii.gz", nifti2_claiming_a_million_voxels_per_row(),
        "truncated or corrupt file: its header claims 560000544 bytes", None),
    "zero voxel size": ("zero.nii", patched((SROW_X, "f", 0.0)), "affine is singular", None),
    "NaN voxel size": ("nan.nii", patched((SROW_X, "f", np.nan)), "finite 4x4 matrix", None),
    "infinite voxel size": ("inf.nii", patched((SROW_X, "f", np.inf)), "finite 4x4 matrix", None),
    "NaN pixdim without affine": (
        "pixdim.nii", patched((QFORM_CODE, "2h", 0, 0), (PIXDIM + 4, "f", np.nan)),
        "finite 4x4 matrix", None),
    "1e-30 mm voxels": ("tiny.nii", patched((SROW_X, "f", 1e-30)), "affine is singular", None),
    "1e30 mm voxels, resampled": (
        "vast.nii", patched((SROW_X, "f", 1e30)), "is its header's voxel size right",
        Preprocessing(voxel_size=1.0, shape=SHAPE)),
    "affine without orientation": ("shear.nii", sheared(1e38), "no clear orientation", None),
    "complex voxels": ("complex.nii", nifti_bytes(volume().astype(np.complex64)),
                       "complex voxels", None),
    "RGB voxels": ("rgb.nii", nifti_bytes(rgb_volume()), "RGB or structured voxels", None),
    "4D": ("4d.nii", nifti_bytes(np.stack([volume()] * 2, -1)), "4D image with 2 volumes", None),
    "2D": ("2d.nii", nifti_bytes(volume()[:, :, 0]), "2D image", None),
    "all NaN": ("allnan.nii.gz", gzip.compress(nifti_bytes(with_nan(volume().size))),
                f"{volume().size} NaN or infinite voxels", None),
    "some NaN": ("somenan.nii", nifti_bytes(with_nan(3)), "3 NaN or infinite voxels", None),
    "range beyond float32": ("extreme.nii", nifti_bytes(opposite_extremes()),
                             "span more than float32 holds", None),
    "constant": ("flat.nii", nifti_bytes(np.full(SHAPE, 5.0, np.float32)), "constant", None),
    "truncated .nii": ("cut.nii", VALID[: len(VALID) // 2], "truncated file", None),
    "truncated .nii.gz": ("cut.nii.gz", gzip.compress(VALID)[:-200],
                          "cannot read the image data", None),
    "gzip cut in the header": ("cut.nii.gz", gzip.compress(VALID)[:30], "not a readable", None),
}


def load(path, preprocessing=None):
    """Build a dataset of one scan and read it: everything a fit does with a file."""
    return as_volume_dataset([path], preprocessing or Preprocessing(shape=SHAPE))[0]


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_each_broken_file_is_named_with_what_is_wrong(tmp_path, case):
    name, content, message, preprocessing = CORPUS[case]
    path = tmp_path / name
    if content == "directory":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load(str(path), preprocessing)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_the_valid_file_of_the_corpus_loads(tmp_path):
    """The corpus breaks a file that is otherwise fine."""
    path = tmp_path / "valid.nii"
    path.write_bytes(VALID)
    result = load(str(path))
    assert result.shape == SHAPE and result.min() == 0.0 and result.max() == 1.0


# Values that make header fields absurd, and the fields they go to.
EXTREME_FLOATS = [0.0, -1.0, np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-38, 1e6]
EXTREME_SHORTS = [-32768, -1, 0, 1, 2, 4, 5, 8, 16, 255, 1024, 32767]
FLOAT_FIELDS = [*range(PIXDIM, PIXDIM + 32, 4), VOX_OFFSET, SCL_SLOPE, SCL_SLOPE + 4,
                *range(256, 328, 4)]
SHORT_FIELDS = [*range(DIM, DIM + 16, 2), DATATYPE, BITPIX, QFORM_CODE, QFORM_CODE + 2]
VALID_INT16 = nifti_bytes((volume() * 10).astype(np.int16), np.diag([1.5, 1.5, 1.5, 1.0]))

mutations = st.one_of(
    st.tuples(st.just("B"), st.integers(0, HEADER_END - 1), st.integers(0, 255)),
    st.tuples(st.just("f"), st.sampled_from(FLOAT_FIELDS), st.sampled_from(EXTREME_FLOATS)),
    st.tuples(st.just("h"), st.sampled_from(SHORT_FIELDS), st.sampled_from(EXTREME_SHORTS)),
    st.tuples(st.just("B"), st.integers(HEADER_END, len(VALID_INT16) - 1), st.integers(0, 255)),
)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    base=st.sampled_from([VALID, VALID_INT16]),
    edits=st.lists(mutations, min_size=1, max_size=6),
    kept_fraction=st.one_of(st.none(), st.floats(0.0, 1.0)),
    compressed=st.booleans(),
    voxel_size=st.sampled_from([None, 2.0]),
)
def test_fuzzed_files_give_a_valid_volume_or_an_input_error_naming_them(
        tmp_path, base, edits, kept_fraction, compressed, voxel_size):
    content = bytearray(base)
    for layout, offset, value in edits:
        struct.pack_into("<" + layout, content, offset, value)
    if compressed:
        content = gzip.compress(bytes(content))
    if kept_fraction is not None:
        content = content[: int(len(content) * kept_fraction)]
    path = os.path.join(tmp_path, "fuzzed.nii.gz" if compressed else "fuzzed.nii")
    with open(path, "wb") as file:
        file.write(content)
    try:
        result = load(path, Preprocessing(shape=SHAPE, voxel_size=voxel_size))
    except InputError as error:
        assert str(error).startswith(f"{path}: "), str(error)
        return
    assert result.shape == SHAPE and result.dtype == np.float32
    assert np.isfinite(result).all() and result.min() >= 0.0 and result.max() <= 1.0

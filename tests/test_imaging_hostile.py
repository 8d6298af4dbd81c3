"""Hostile input: broken NIfTI files give ldae's own errors, naming the file.

A corpus of deliberately broken files, then a fuzz test that mutates the header
and the voxels of a valid file: loading and preprocessing either give a finite
volume in [0, 1] or raise InputError naming the file, nothing else. Then
on_error="skip": bad scans are left out, recorded, and do not end a run.
"""

import bz2
import gzip
import logging
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ldae import LDAEEncoder
from ldae.exceptions import InputError, SkippedScanWarning
from ldae.imaging import Preprocessing, as_volume_dataset
from ldae.imaging.grid import grid_affine

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


def flipped(content, position, bit=0):
    content = bytearray(content)
    content[position] ^= 1 << bit
    return bytes(content)


# the gzip trailer: CRC-32 of the data, then its length modulo 2^32 (8 bytes in all)
GZIPPED = gzip.compress(VALID)
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
    "600^3 voxels claimed, bz2": (
        "bomb.nii.bz2", bz2.compress(patched((DIM + 2, "3h", 600, 600, 600))),
        "its header claims 216000000 voxels (shape (600, 600, 600)), more than "
        "Preprocessing(max_voxels=134217728)", None),
    "more voxels than max_voxels": (
        "big.nii", VALID, "more than Preprocessing(max_voxels=1000)",
        Preprocessing(shape=SHAPE, max_voxels=1000)),
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
    "truncated .nii.gz": ("cut.nii.gz", gzip.compress(VALID)[:-200], "truncated gzip file",
                          None),
    "gzip cut in the header": ("cut.nii.gz", gzip.compress(VALID)[:30], "not a readable", None),
    "gzip cut in its trailer": ("cut.nii.gz", GZIPPED[:-4], "truncated gzip file", None),
    "gzip CRC-32 flipped": ("crc.nii.gz", flipped(GZIPPED, len(GZIPPED) - 8),
                            "corrupt gzip data", None),
    "gzip length flipped": ("length.nii.gz", flipped(GZIPPED, len(GZIPPED) - 1),
                            "corrupt gzip data", None),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# the deflate stream's last byte (before the 8-byte trailer) may end in padding bits that
# decode to the same voxels: a flip there leaves the file intact
@given(position=st.integers(len(GZIPPED) // 2, len(GZIPPED) - 10), bit=st.integers(0, 7))
@example(position=3226, bit=1)  # damages what nibabel decompresses ahead to read the header
def test_a_flipped_bit_in_gzip_voxels_is_refused_not_read(tmp_path, position, bit):
    # nibabel alone reads most such files with wrong voxels: it stops before the CRC
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(flipped(GZIPPED, position, bit))
    with pytest.raises(InputError, match=f"^{path}: (corrupt|truncated) gzip"):
        load(str(path))


def test_a_multi_member_gzip_reads_like_a_single_one(tmp_path):
    # bgzip and concatenated gzips write several members; the voxels may span them
    path = tmp_path / "members.nii.gz"
    half = len(VALID) // 2
    path.write_bytes(gzip.compress(VALID[:half]) + gzip.compress(VALID[half:]))
    single = tmp_path / "single.nii.gz"
    single.write_bytes(GZIPPED)
    np.testing.assert_array_equal(load(str(path)), load(str(single)))


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


@settings(max_examples=200, deadline=None, derandomize=True,
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


# ------------------------------------------------------------- on_error="skip"


@pytest.fixture
def mixed_scans(tmp_path):
    """Good scans with, at positions 1, 3 and 4, a broken header, NaN voxels
    (found only when read) and a scan of another shape."""
    paths = []
    for position, content in enumerate([
        VALID, patched((MAGIC, "4s", b"xx\0\0")), nifti_bytes(volume(1)), nifti_bytes(with_nan(3)),
        nifti_bytes(volume()[:10]), nifti_bytes(volume(2)),
    ]):
        path = tmp_path / f"scan{position}.nii"
        path.write_bytes(content)
        paths.append(str(path))
    return paths


def test_skip_leaves_out_bad_headers_and_odd_grids_and_records_them(mixed_scans):
    with pytest.warns(SkippedScanWarning, match=r"left out 2 skipped: .*scan1\.nii.*scan4\.nii"):
        dataset = as_volume_dataset(mixed_scans, Preprocessing(), on_error="skip")
    assert len(dataset) == 4 and dataset.n_inputs == 6 and dataset.shape == SHAPE
    assert dataset.positions.tolist() == [0, 2, 3, 5]
    assert dataset.names == [mixed_scans[i] for i in (0, 2, 3, 5)]
    assert dataset.skipped_["position"].tolist() == [1, 4]
    assert dataset.skipped_["scan"].tolist() == [mixed_scans[1], mixed_scans[4]]
    assert "not a readable NIfTI image" in dataset.skipped_["error"][0]
    assert "shape (10, 14, 10)" in dataset.skipped_["error"][1]
    # Voxels are decoded on access: the NaN scan reads as NaN, with a warning.
    with pytest.warns(SkippedScanWarning, match=r"scan3\.nii: 3 NaN"):
        assert np.isnan(dataset[2]).all()
    np.testing.assert_array_equal(dataset[1], as_volume_dataset([mixed_scans[2]])[0])


def test_a_memory_bomb_is_skipped_without_stopping_the_cohort(tmp_path):
    good, bomb = tmp_path / "good.nii", tmp_path / "bomb.nii.bz2"
    good.write_bytes(VALID)
    bomb.write_bytes(bz2.compress(patched((DIM + 2, "3h", 600, 600, 600))))
    with pytest.warns(SkippedScanWarning, match="bomb.nii.bz2"):
        dataset = as_volume_dataset([str(bomb), str(good)], Preprocessing(shape=SHAPE),
                                    on_error="skip")
    assert dataset.names == [str(good)] and "max_voxels" in dataset.skipped_["error"][0]


def test_screen_reads_every_scan_and_keeps_the_usable_ones(mixed_scans):
    with pytest.warns(SkippedScanWarning):
        dataset = as_volume_dataset(mixed_scans, on_error="skip")
    with pytest.warns(SkippedScanWarning, match=r"scan3\.nii: 3 NaN"):
        screened = dataset.screen(num_workers=1)
    assert screened.positions.tolist() == [0, 2, 5] and len(screened) == 3
    assert screened.skipped_["position"].tolist() == [1, 3, 4]
    assert "NaN or infinite voxels" in screened.skipped_["error"][1]
    assert all(np.isfinite(screened[i]).all() for i in range(3))


def test_skip_keeps_the_index_of_a_series_for_the_usable_scans(mixed_scans):
    series = pd.Series(mixed_scans, index=list("abcdef"))
    with pytest.warns(SkippedScanWarning):
        dataset = as_volume_dataset(series, on_error="skip")
    assert list(dataset.index) == ["a", "c", "d", "f"]


def test_raise_is_the_default_and_skip_refuses_a_cohort_of_only_bad_scans(mixed_scans):
    with pytest.raises(InputError, match=r"scan1\.nii: not a readable"):
        as_volume_dataset(mixed_scans)
    with pytest.raises(InputError, match=r"X: no scan is usable; 1 skipped: .*scan1\.nii"):
        as_volume_dataset([mixed_scans[1]], on_error="skip")
    with pytest.raises(InputError, match=r"on_error='ignore': expected one of"):
        as_volume_dataset(mixed_scans, on_error="ignore")


def test_encoder_with_skip_fits_around_a_broken_scan_and_gives_it_a_nan_row(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for number in range(6):
        path = tmp_path / f"scan{number}.nii.gz"
        data = rng.gamma(2.0, 50.0, (32, 40, 32)).astype(np.float32)
        path.write_bytes(gzip.compress(nifti_bytes(data, grid_affine((32, 40, 32)))))
        paths.append(str(path))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(Path(paths[0]).read_bytes()[:-5000])  # data cut short: found when read
    X = paths[:2] + [str(broken)] + paths[2:]
    groups = ["a", "a", "x", "b", "b", "c", "c"]
    settings = dict(preset="tiny", ae_epochs=1, diffusion_epochs=1, representation_epochs=1,
                    random_state=0, on_error="skip")
    with pytest.warns(SkippedScanWarning, match="broken.nii.gz"):
        model = LDAEEncoder(**settings).fit(X, groups=groups)  # groups follow the usable scans
    assert model.skipped_scans_["scan"].tolist() == [str(broken)]
    assert model.skipped_scans_["position"].tolist() == [2]
    assert "truncated gzip file" in model.skipped_scans_["error"][0]
    with pytest.warns(SkippedScanWarning, match="broken.nii.gz"):
        embeddings = model.transform(X)
    assert embeddings.shape == (len(X), model.config_.embedding_dim)
    assert np.isnan(embeddings[2]).all()
    good = np.delete(embeddings, 2, axis=0)
    # other batch composition: float32 convolutions differ in the last bits, and the
    # code standardisation magnifies them (a tiny model's codes barely differ across scans)
    np.testing.assert_allclose(good, model.transform(paths), rtol=1e-4, atol=1e-4)
    # The record survives saving the model.
    model.save(tmp_path / "model.pt")
    loaded = LDAEEncoder.load(tmp_path / "model.pt")
    pd.testing.assert_frame_equal(loaded.skipped_scans_, model.skipped_scans_, check_dtype=False)

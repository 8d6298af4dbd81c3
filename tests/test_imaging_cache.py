"""The on-disk cache of preprocessed volumes: hits, invalidation, atomic writes."""

import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.arrayproxy import ArrayProxy

from ldae.exceptions import InputError
from ldae.imaging import Preprocessing, as_volume_dataset
from ldae.imaging import cache as cache_module

SHAPE = (20, 24, 20)


def write(path, seed):
    data = np.random.default_rng(seed).gamma(2.0, 50.0, size=SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return str(path)


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "scans").mkdir()
    return [write(tmp_path / "scans" / f"scan{i}.nii.gz", seed=i) for i in range(3)]


@pytest.fixture
def decodes(monkeypatch):
    """Counts the image decodings (nibabel array proxies read)."""
    counter = []
    original = ArrayProxy.__array__
    monkeypatch.setattr(
        ArrayProxy, "__array__", lambda self, *a, **k: counter.append(1) or original(self, *a, **k)
    )
    return counter


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def read_all(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_a_second_pass_reads_the_cache_and_decodes_nothing(tmp_path, paths, decodes):
    settings = Preprocessing(shape=(16, 20, 18))
    uncached = read_all(as_volume_dataset(paths, settings))
    decodes.clear()
    dataset = as_volume_dataset(paths, settings, cache_dir=tmp_path / "cache")
    first = read_all(dataset)
    assert len(decodes) == 3 and len(files_in(tmp_path / "cache")) == 3
    second = read_all(dataset)
    again = read_all(as_volume_dataset(paths, settings, cache_dir=tmp_path / "cache"))
    assert len(decodes) == 3
    for volumes in (first, second, again):
        for volume, reference in zip(volumes, uncached):
            np.testing.assert_array_equal(volume, reference)
            assert volume.dtype == np.float32 and volume.flags.writeable


def test_a_changed_file_is_decoded_again_and_replaces_its_entry(tmp_path, paths, decodes):
    dataset = as_volume_dataset(paths, cache_dir=tmp_path / "cache")
    before = dataset[0]
    write(paths[0], seed=99)
    status = os.stat(paths[0])
    os.utime(paths[0], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    decodes.clear()
    after = dataset[0]
    assert len(decodes) == 1
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, as_volume_dataset([paths[0]])[0])
    assert len(files_in(tmp_path / "cache")) == 1  # the stale entry is gone


def test_touching_a_file_invalidates_its_entry(tmp_path, paths, decodes):
    dataset = as_volume_dataset(paths[:1], cache_dir=tmp_path / "cache")
    before = dataset[0]
    status = os.stat(paths[0])
    os.utime(paths[0], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    decodes.clear()
    np.testing.assert_array_equal(dataset[0], before)
    assert len(decodes) == 1


def test_other_settings_get_their_own_entries(tmp_path, paths, decodes):
    cache = tmp_path / "cache"
    narrow = read_all(as_volume_dataset(paths, Preprocessing(percentiles=(5, 95)), cache_dir=cache))
    wide = read_all(as_volume_dataset(paths, Preprocessing(percentiles=(1, 99)), cache_dir=cache))
    assert len(decodes) == 6 and len(files_in(cache)) == 6
    assert not np.array_equal(narrow[0], wide[0])
    narrow_again = read_all(
        as_volume_dataset(paths, Preprocessing(percentiles=(5, 95)), cache_dir=cache)
    )
    assert len(decodes) == 6
    np.testing.assert_array_equal(narrow_again[2], narrow[2])


def test_a_failed_preprocessing_leaves_nothing_in_the_cache(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    dataset = as_volume_dataset([str(path)], cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="holes.nii.gz"):
        dataset[0]
    assert files_in(tmp_path / "cache") == []


def interrupted_save(error):
    def save(file, array):
        file.write(b"\x93NUMPY half of it")
        raise error

    return save


def test_a_failed_write_leaves_nothing_half_written_and_still_returns_the_volume(
    tmp_path, paths, monkeypatch
):
    monkeypatch.setattr(cache_module.np, "save", interrupted_save(OSError("No space left")))
    dataset = as_volume_dataset(paths[:1], cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="could not cache.*No space left"):
        volume = dataset[0]
    np.testing.assert_array_equal(volume, as_volume_dataset(paths[:1])[0])
    assert files_in(tmp_path / "cache") == []


def test_an_interrupted_write_leaves_nothing_half_written(tmp_path, paths, monkeypatch):
    monkeypatch.setattr(cache_module.np, "save", interrupted_save(KeyboardInterrupt()))
    dataset = as_volume_dataset(paths[:1], cache_dir=tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        dataset[0]
    assert files_in(tmp_path / "cache") == []


def test_a_damaged_entry_is_rebuilt(tmp_path, paths, decodes):
    dataset = as_volume_dataset(paths[:1], cache_dir=tmp_path / "cache")
    reference = dataset[0]
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:200])
    np.testing.assert_array_equal(dataset[0], reference)
    np.testing.assert_array_equal(dataset[0], reference)
    assert len(decodes) == 2


def test_in_memory_scans_are_not_cached(tmp_path):
    X = np.random.default_rng(0).random((2, *SHAPE)).astype(np.float32)
    dataset = as_volume_dataset(X, cache_dir=tmp_path / "cache")
    read_all(dataset)
    assert files_in(tmp_path / "cache") == []


def test_an_unusable_cache_dir_is_named(tmp_path, paths):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(InputError, match="cache_dir=.*taken.*cannot create"):
        as_volume_dataset(paths, cache_dir=tmp_path / "taken")


def _damage_flip(entry):
    content = bytearray(entry.read_bytes())
    content[-5] ^= 0x40  # a voxel's byte: the data no longer matches its CRC-32
    entry.write_bytes(bytes(content))


def _damage_shape(entry):
    np.save(entry, np.zeros((3, 3, 3), np.float32))


def _damage_nan(entry):
    np.save(entry, np.full(np.load(entry).shape, np.nan, np.float32))


@pytest.mark.parametrize("damage", [_damage_flip, _damage_shape, _damage_nan],
                         ids=["flipped bytes", "wrong shape", "NaN-filled"])
def test_a_damaged_entry_is_rebuilt_not_served(tmp_path, paths, decodes, damage):
    reference = as_volume_dataset(paths[:1])[0]
    dataset = as_volume_dataset(paths[:1], cache_dir=tmp_path / "cache")
    dataset[0]
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    damage(entry)
    decodes.clear()
    np.testing.assert_array_equal(dataset[0], reference)  # never the damaged voxels
    assert len(decodes) == 1  # decoded again ...
    decodes.clear()
    np.testing.assert_array_equal(dataset[0], reference)
    assert decodes == []  # ... and the rebuilt entry serves the next read

"""Preprocessing: recorded settings, intensity scaling, resampling, brain mask."""

import json

import nibabel as nib
import numpy as np
import pytest

from ldae.exceptions import InputError
from ldae.imaging import Preprocessing, as_volume_dataset

SHAPE = (20, 24, 20)


def volume(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).gamma(2.0, 50.0, size=shape).astype(np.float32)


def preprocess(data, preprocessing, affine=None):
    return preprocessing.apply(nib.Nifti1Image(data, np.eye(4) if affine is None else affine))


def test_settings_are_normalised_compared_and_round_trip_through_a_dict(tmp_path):
    settings = Preprocessing(shape=[32, 40, 32], voxel_size=2, percentiles=[1, 99])
    assert settings.shape == (32, 40, 32)
    assert settings.voxel_size == (2.0, 2.0, 2.0)
    assert settings == Preprocessing(shape=(32, 40, 32), voxel_size=(2, 2, 2), percentiles=(1, 99))
    assert hash(settings) == hash(Preprocessing.from_dict(settings.to_dict()))
    assert Preprocessing.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    masked = Preprocessing(brain_mask=tmp_path / "mask.nii.gz")
    assert masked.to_dict()["brain_mask"] == str(tmp_path / "mask.nii.gz")


def test_the_cache_key_changes_with_every_setting_and_only_then(tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:16, 4:20, 4:16] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(1 - mask, np.eye(4)), tmp_path / "other.nii.gz")
    variants = [
        Preprocessing(),
        Preprocessing(shape=SHAPE),
        Preprocessing(voxel_size=2),
        Preprocessing(percentiles=(1, 99)),
        Preprocessing(nan_policy="zero"),
        Preprocessing(brain_mask=tmp_path / "mask.nii.gz"),
        Preprocessing(brain_mask=tmp_path / "other.nii.gz"),
    ]
    keys = [variant.cache_key for variant in variants]
    assert len(set(keys)) == len(keys)
    assert Preprocessing(voxel_size=(2, 2, 2)).cache_key == variants[2].cache_key
    in_memory = Preprocessing(brain_mask=nib.Nifti1Image(mask, np.eye(4)))
    assert in_memory.cache_key == variants[5].cache_key  # the mask counts by content


@pytest.mark.parametrize(
    "settings, argument",
    [
        ({"shape": (32, 40)}, "shape"),
        ({"shape": (32, 40, 1)}, "shape"),
        ({"shape": (32.5, 40, 32)}, "shape"),
        ({"voxel_size": 0}, "voxel_size"),
        ({"voxel_size": (1, 1)}, "voxel_size"),
        ({"voxel_size": "1mm"}, "voxel_size"),
        ({"percentiles": (99, 1)}, "percentiles"),
        ({"percentiles": (0, 101)}, "percentiles"),
        ({"percentiles": 5}, "percentiles"),
        ({"nan_policy": "ignore"}, "nan_policy"),
        ({"brain_mask": 3}, "brain_mask"),
    ],
)
def test_bad_settings_are_named(settings, argument):
    with pytest.raises(InputError, match=rf"Preprocessing\({argument}="):
        Preprocessing(**settings)


def test_intensities_map_the_percentiles_to_0_and_1_and_are_clipped():
    data = volume()
    scaled, _ = preprocess(data, Preprocessing(percentiles=(2, 95)))
    low, high = np.percentile(data, [2, 95])
    np.testing.assert_allclose(scaled, np.clip((data - low) / (high - low), 0, 1), atol=1e-6)
    assert scaled.dtype == np.float32 and scaled.min() == 0 and scaled.max() == 1


def test_percentiles_of_large_volumes_come_from_a_subsample_close_to_the_exact_ones():
    data = volume(shape=(110, 110, 110))
    scaled, _ = preprocess(data, Preprocessing())
    low, high = np.percentile(data, [0.5, 99.5])
    exact = np.clip((data - low) / (high - low), 0, 1)
    assert np.abs(scaled - exact).max() < 0.01


def test_crop_and_pad_are_centred_and_padding_is_zero():
    data = volume()
    padded, grid = preprocess(data, Preprocessing(shape=(24, 20, 23), percentiles=(0, 100)))
    # Axis 0: 2 voxels of padding each side; axis 1: crop 2 each side; axis 2: 1 before, 2 after.
    assert (padded[:2] == 0).all() and (padded[-2:] == 0).all()
    assert (padded[:, :, :1] == 0).all() and (padded[:, :, -2:] == 0).all()
    reference, _ = preprocess(data[:, 2:-2], Preprocessing(percentiles=(0, 100)))
    np.testing.assert_array_equal(padded[2:-2, :, 1:-2], reference)
    np.testing.assert_array_equal(grid.affine[:3, 3], [-2, 2, -1])


def test_resampling_to_2mm_averages_voxel_blocks_and_keeps_world_coordinates():
    affine = np.array([[1.0, 0, 0, -10], [0, 1, 0, -12], [0, 0, 1, -8], [0, 0, 0, 1]])
    data = np.zeros(SHAPE, np.float32)
    data[4:6, 6:8, 8:10] = 1.0
    data[0, 0, 0] = 2.0  # single voxel: halved in each of 3 axes
    resampled, grid = preprocess(data, Preprocessing(voxel_size=2, percentiles=(0, 100)), affine)
    assert resampled.shape == (10, 12, 10)
    np.testing.assert_allclose(np.abs(grid.affine[:3, :3]).sum(axis=0), [2, 2, 2])
    bright = np.unravel_index(np.argmax(resampled), resampled.shape)
    np.testing.assert_allclose(resampled[bright], 1.0)
    assert np.isclose(resampled[0, 0, 0], 2.0 / 8)
    # The 2 mm voxel sits at the centre of the 1 mm block it averages.
    np.testing.assert_allclose(grid.affine @ [*bright, 1], affine @ [4.5, 6.5, 8.5, 1])


def test_a_voxel_size_that_leaves_no_volume_is_named():
    with pytest.raises(InputError, match=r"X\[0\]: resampling to voxel size \(15, 15, 15\) mm "
                                         r"leaves shape \(1, 1, 1\)"):
        as_volume_dataset(
            volume()[None], affine=np.eye(4), preprocessing=Preprocessing(voxel_size=15)
        )


def test_the_brain_mask_zeroes_the_outside_and_sets_the_intensity_range(tmp_path):
    data = volume()
    inside = np.zeros(SHAPE, bool)
    inside[3:17, 4:20, 3:17] = True
    data[~inside] = 1e6  # bright outside: would set the top percentile without the mask
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(inside.astype(np.uint8), np.eye(4)), mask_path)
    masked, _ = preprocess(data, Preprocessing(percentiles=(0, 100), brain_mask=mask_path))
    assert (masked[~inside] == 0).all()
    low, high = data[inside].min(), data[inside].max()
    np.testing.assert_allclose(masked[inside], (data[inside] - low) / (high - low), atol=1e-6)


def test_a_brain_mask_off_the_target_grid_is_refused(tmp_path):
    mask = np.ones(SHAPE, np.uint8)
    nib.save(nib.Nifti1Image(mask[:18], np.eye(4)), tmp_path / "small.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.diag([2.0, 2, 2, 1])), tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(0 * mask, np.eye(4)), tmp_path / "empty.nii.gz")
    X = volume()[None]
    with pytest.raises(InputError, match=r"brain_mask: shape \(18, 24, 20\) differs.*X\[0\]"):
        as_volume_dataset(X, Preprocessing(brain_mask=tmp_path / "small.nii.gz"))
    with pytest.raises(InputError, match=r"brain_mask: its affine differs .*X\[0\]"):
        as_volume_dataset(X, Preprocessing(brain_mask=tmp_path / "coarse.nii.gz"))
    with pytest.raises(InputError, match=r"brain_mask: the mask is empty"):
        as_volume_dataset(X, Preprocessing(brain_mask=tmp_path / "empty.nii.gz"))
    with pytest.raises(InputError, match=r"absent\.nii\.gz: does not exist"):
        as_volume_dataset(X, Preprocessing(brain_mask=tmp_path / "absent.nii.gz"))

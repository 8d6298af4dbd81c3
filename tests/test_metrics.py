"""Image similarity metrics: SSIM, MS-SSIM, MSE, PSNR on arrays, images and paths."""

import nibabel as nib
import numpy as np
import pytest

from ldae.exceptions import InputError
from ldae.metrics import ms_ssim, mse, psnr, ssim

SHAPE = (32, 40, 32)


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.random((3, *SHAPE)), axis=1), axis=2)
    return (smooth / smooth.max()).astype(np.float32)


def test_mse_and_psnr_match_their_definitions(volumes):
    rng = np.random.default_rng(1)
    noisy = volumes + rng.normal(0, 0.05, volumes.shape).astype(np.float32)
    expected_mse = ((noisy.astype(float) - volumes) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(mse(noisy, volumes), expected_mse, rtol=1e-6)
    np.testing.assert_allclose(psnr(noisy, volumes), 10 * np.log10(1 / expected_mse), rtol=1e-6)
    np.testing.assert_allclose(psnr(noisy, volumes, data_range=2.0),
                               10 * np.log10(4 / expected_mse), rtol=1e-6)
    assert psnr(volumes[0], volumes[0]) == np.inf


def test_ssim_is_one_for_identical_volumes_and_falls_with_noise(volumes):
    rng = np.random.default_rng(2)
    assert ssim(volumes[0], volumes[0]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(ssim(volumes, volumes), 1.0, atol=1e-6)
    slightly = ssim(volumes + rng.normal(0, 0.02, volumes.shape), volumes)
    badly = ssim(volumes + rng.normal(0, 0.2, volumes.shape), volumes)
    assert np.all(slightly < 1) and np.all(badly < slightly)
    assert ssim(volumes[1], volumes[0]) == pytest.approx(ssim(volumes[0], volumes[1]), abs=1e-6)


def test_ssim_of_uniform_volumes_is_the_luminance_term():
    a, b = np.full(SHAPE, 0.2), np.full(SHAPE, 0.6)
    c1 = (0.01 * 1.0) ** 2  # (k1 · data_range)²; no variance, so contrast terms are 1
    # MONAI computes in float32: variances of E[x²] − E[x]² are off by ~1e-6, 0.4 % of c2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=5e-3)


def test_ms_ssim_needs_room_for_its_scales(volumes):
    with pytest.raises(InputError, match="at least 176 voxels.*5 scales"):
        ms_ssim(volumes, volumes)
    weights = (0.3, 0.4, 0.3)
    np.testing.assert_allclose(ms_ssim(volumes, volumes, win_size=7, weights=weights), 1.0, atol=1e-6)
    noisy = volumes + np.random.default_rng(3).normal(0, 0.1, volumes.shape)
    scores = ms_ssim(noisy, volumes, win_size=7, weights=weights)
    assert scores.shape == (3,) and np.all(scores < 0.99)


def test_images_paths_and_lists_give_the_scores_of_arrays(volumes, tmp_path):
    noisy = np.clip(volumes + 0.05, 0, 1)
    images = [nib.Nifti1Image(volume, np.eye(4)) for volume in noisy]
    path = tmp_path / "scan.nii.gz"
    nib.save(images[0], path)
    from_arrays = ssim(noisy, volumes)
    assert isinstance(ssim(images[0], volumes[0]), float)
    assert ssim(images[0], volumes[0]) == pytest.approx(from_arrays[0], abs=1e-6)
    assert ssim(path, volumes[0]) == pytest.approx(from_arrays[0], abs=1e-6)
    np.testing.assert_allclose(ssim(images, list(volumes)), from_arrays, atol=1e-6)
    np.testing.assert_allclose(mse(noisy[:, None], volumes), mse(noisy, volumes))


def test_bad_inputs_are_named(volumes):
    with pytest.raises(InputError, match="must match"):
        ssim(volumes[0], volumes[0, :-1])
    with pytest.raises(InputError, match="must match"):
        mse(volumes[:2], volumes)
    with pytest.raises(InputError, match="reference holds NaN"):
        mse(volumes[0], np.full(SHAPE, np.nan))
    with pytest.raises(InputError, match=r"image\[1\]: expected a 3D volume"):
        mse([volumes[0], None], volumes[:2])
    with pytest.raises(InputError, match="at least 11 voxels"):
        ssim(volumes[0, :8], volumes[0, :8])
    with pytest.raises(InputError, match="data_range"):
        psnr(volumes, volumes, data_range=0)

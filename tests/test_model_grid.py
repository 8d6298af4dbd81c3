"""Model grids fixed in MNI space: every scan is resampled into them, outputs carry them."""

import copy
import dataclasses
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ldae import LDAEEncoder, cli
from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import InputError, OutOfDistributionWarning
from ldae.imaging import Preprocessing, as_volume_dataset
from ldae.imaging.grid import MNI_BRAIN_CENTRE_MM, grid_affine, voxel_sizes
from ldae.presets import PRESETS, grid_for_voxel_size, resolve_config

from _generative_model import cohort, fitted_encoder

SHAPE = (32, 40, 32)
GRID = grid_affine(SHAPE)
BLOB_MM = np.array([20.0, -40.0, 15.0])  # a point of MNI space off every axis of symmetry


def world_centre_of_mass(volume, affine):
    index = np.array(ndimage.center_of_mass(np.asarray(volume, dtype=float)))
    return affine[:3, :3] @ index + affine[:3, 3]


def blob_image(affine, shape, radius_mm=30.0):
    """A bright ball at BLOB_MM on a dim background, on the grid (shape, affine)."""
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - BLOB_MM, axis=-1) < radius_mm
    return nib.Nifti1Image(np.where(inside, 100.0, 10.0).astype(np.float32), affine)


def rotation_about_z(degrees):
    angle = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


def one_mm_affine(shape, axes=np.eye(3)):
    """A 1 mm grid of ``shape`` centred on the MNI brain, voxel axes along ``axes``."""
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = np.asarray(MNI_BRAIN_CENTRE_MM) - axes @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def test_every_preset_models_an_mni_grid_and_the_cohort_lies_on_it():
    for name, config in PRESETS.items():
        affine = config.grid_affine
        np.testing.assert_allclose(voxel_sizes(affine), np.array(config.field_of_view)
                                   / np.array(config.image_shape))
        centre = affine[:3, :3] @ ((np.array(config.image_shape) - 1) / 2.0) + affine[:3, 3]
        np.testing.assert_allclose(centre, MNI_BRAIN_CENTRE_MM, err_msg=name)
    assert PRESETS["small"].voxel_size == (5.5, 5.5, 5.5)
    assert PRESETS["paper"].voxel_size == (1.375, 1.375, 1.375)
    cohort = make_synthetic_cohort(2, shape=PRESETS["small"].image_shape, random_state=0)
    np.testing.assert_allclose(cohort.affine, PRESETS["small"].grid_affine)


@pytest.mark.parametrize("axes", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),  # RAS and LPS
                                  np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                                  rotation_about_z(12.0)[:3, :3]],  # permuted; oblique
                         ids=["RAS", "LPS", "permuted", "oblique"])
def test_a_1mm_scan_is_resampled_into_the_grid_where_its_world_coordinates_say(axes):
    shape = (150, 190, 150)
    image = blob_image(one_mm_affine(shape, axes), shape)
    volume = as_volume_dataset([image], Preprocessing(shape=SHAPE, affine=GRID))[0]
    assert volume.shape == SHAPE
    bright = np.where(volume > 0.5, volume, 0.0)
    # the ball lands at its MNI coordinates: within a third of a 5.5 mm voxel
    assert np.linalg.norm(world_centre_of_mass(bright, GRID) - BLOB_MM) < 5.5 / 3


def test_downsampling_smooths_before_sampling():
    # a 1 mm pattern of period 2 mm: no 5.5 mm grid can show it; sampled without
    # smoothing it aliases into a coarse pattern, smoothed it averages out
    shape = (176, 220, 176)
    index = np.indices(shape).sum(axis=0)
    image = nib.Nifti1Image(np.where(index % 2 == 0, 100.0, 0.0).astype(np.float32),
                            one_mm_affine(shape))
    preprocessing = Preprocessing(shape=SHAPE, affine=GRID, percentiles=(0, 100))
    grid = preprocessing.plan(image.shape, image.affine)
    assert all(sigma == pytest.approx(5.5 / 2.3548, rel=1e-3) for sigma in grid.sigma)
    smoothed = grid.resample(image.get_fdata(dtype=np.float32))
    unsmoothed = ndimage.affine_transform(image.get_fdata(dtype=np.float32), grid.to_source[:3, :3],
                                          offset=grid.to_source[:3, 3], output_shape=SHAPE, order=1)
    assert smoothed.std() < 0.05 * unsmoothed.std()
    np.testing.assert_allclose(smoothed.mean(), 50.0, rtol=0.02)


def test_a_scan_on_the_grid_is_read_as_it_is():
    cohort = make_synthetic_cohort(2, shape=SHAPE, random_state=0)
    image = nib.Nifti1Image(cohort.images[0], cohort.affine)
    volume = as_volume_dataset([image], Preprocessing(shape=SHAPE, affine=GRID,
                                                      percentiles=(0, 100)))[0]
    low, high = cohort.images[0].min(), cohort.images[0].max()
    np.testing.assert_allclose(volume, (cohort.images[0] - low) / (high - low), atol=1e-6)


def test_scans_not_in_the_grids_space_and_misplaced_arrays_are_refused_naming_them(tmp_path):
    preprocessing = Preprocessing(shape=SHAPE, affine=GRID)
    path = tmp_path / "native.nii.gz"
    nib.save(blob_image(np.eye(4), (150, 190, 150)), path)  # voxel (0, 0, 0) at the origin
    with pytest.raises(InputError, match=r"native.nii.gz: it covers \d+% of the model grid"):
        as_volume_dataset([str(path)], preprocessing)
    arrays = np.zeros((2, 30, 40, 32), np.float32)
    with pytest.raises(InputError, match=r"X\[0\]: array of shape \(30, 40, 32\).*model grid"):
        as_volume_dataset(arrays, preprocessing)
    # the same arrays placed in the world by an affine are resampled
    arrays[:, 10:20, 10:30, 10:20] = 1.0
    volumes = as_volume_dataset(arrays, preprocessing, affine=GRID)
    assert volumes[0].shape == SHAPE
    with pytest.raises(InputError, match="shape"):
        Preprocessing(affine=GRID)
    with pytest.raises(InputError, match="voxel_size"):
        Preprocessing(shape=SHAPE, affine=GRID, voxel_size=2.0)


def test_voxel_size_gives_a_grid_over_the_presets_field_of_view():
    # rounded so that the denoiser can halve the latent too (44x56x44 gave an 11x14x11
    # latent, refused when stage 2 began)
    grid = grid_for_voxel_size("small", 4.0)
    assert grid == {"image_shape": (48, 56, 48), "field_of_view": (192.0, 224.0, 192.0)}
    assert resolve_config("small", **grid).latent_shape == (8, 12, 14, 12)
    args = cli._parser().parse_args(["fit", "--manifest", "m.tsv", "--out", "o",
                                     "--voxel-size", "4", "--percentiles", "1", "99"])
    params = cli._encoder_params(args, Path("o"))
    assert params["image_shape"] == (48, 56, 48)
    preprocessing = params["preprocessing"]
    assert preprocessing.percentiles == (1.0, 99.0)
    np.testing.assert_allclose(voxel_sizes(np.array(preprocessing.affine)), 4.0)
    with pytest.raises(InputError, match="voxel_size"):
        grid_for_voxel_size("small", 0.0)


# --------------------------------------------- a real-shaped scan through a fitted model


@pytest.fixture(scope="module")
def fitted():
    """The tiny model the generative tests share, and its cohort (on the 32x40x32 grid)."""
    return fitted_encoder(), cohort()


@pytest.fixture(scope="module")
def one_mm_scan(tmp_path_factory):
    """A synthetic subject imaged at 1 mm on a 176 x 220 x 176 MNI grid, stored LPS."""
    scan = make_synthetic_cohort(1, shape=(176, 220, 176), random_state=5, visit_months=(0,))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [175, 219]  # voxel axes reversed along x and y: the same world points
    image = nib.Nifti1Image(scan.images[0][::-1, ::-1], scan.affine @ flip)
    path = tmp_path_factory.mktemp("real") / "sub-01_T1w.nii.gz"
    nib.save(image, path)
    return str(path)


def test_a_1mm_scan_is_embedded_in_distribution_and_reconstructed_where_it_lies(fitted,
                                                                                one_mm_scan):
    model, _ = fitted
    np.testing.assert_allclose(model.affine_, GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        embedding = model.transform([one_mm_scan])
    assert np.isfinite(embedding).all()
    assert not model.training_distribution_.outside(embedding).any()
    # the whole brain, not a block around the centre: the resampled scan's brain
    # extends as far as the synthetic cohort's
    resampled = as_volume_dataset([one_mm_scan], model.preprocessing_)[0]
    cohort_brain = fitted[1].images[0] > 0.1
    assert abs((resampled > 0.1).sum() - cohort_brain.sum()) < 0.1 * cohort_brain.sum()
    reconstruction = model.reconstruct([one_mm_scan], steps=2)[0]
    np.testing.assert_allclose(reconstruction.affine, GRID)
    shift = (world_centre_of_mass(reconstruction.get_fdata(), reconstruction.affine)
             - world_centre_of_mass(resampled, GRID))
    assert np.linalg.norm(shift) < 5.5  # within a voxel of the input, in world space


def test_transform_warns_once_naming_the_scans_far_from_the_training_scans(fitted, tmp_path):
    model, cohort = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        training = model.transform(cohort.images)  # the training scans themselves
    distribution = model.training_distribution_
    # summarised at fit from the cached fp32 latents: the embeddings transform gives in fp32
    # (under "auto" transform encodes in bf16, within 1 % of their spread)
    precision = model.precision
    try:
        exact = model.set_params(precision="fp32").transform(cohort.images)
    finally:
        model.set_params(precision=precision)
    np.testing.assert_allclose(distribution.centre, np.median(exact, axis=0), atol=1e-4)
    assert np.abs(np.median(training, axis=0) - distribution.centre).max() < 0.01 * np.ptp(training)
    far = distribution.centre + 10 * distribution.scale  # every dimension 10 robust SDs off
    assert distribution.outside(np.stack([distribution.centre, far])).tolist() == [False, True]
    # a stricter threshold flags the farthest of 6 scans: one warning naming them
    scans = cohort.images[:6]
    distances = distribution.distance(model.transform(scans))
    strict = copy.copy(model)
    strict.training_distribution_ = dataclasses.replace(
        distribution, threshold=float(np.sort(distances)[3]))
    with pytest.warns(OutOfDistributionWarning) as caught:
        strict.transform(scans)
    assert len(caught) == 1
    flagged = np.flatnonzero(distances > strict.training_distribution_.threshold)
    assert str(caught[0].message).startswith(f"{len(flagged)} of 6 scans")
    assert all(f"X[{row}]" in str(caught[0].message) for row in flagged)
    model.save(tmp_path / "model.pt")
    loaded = LDAEEncoder.load(tmp_path / "model.pt")
    np.testing.assert_allclose(loaded.training_distribution_.scale, distribution.scale)
    assert loaded.training_distribution_.threshold == distribution.threshold

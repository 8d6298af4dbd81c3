"""The voxel-space diffusion autoencoder and the supervised reference encoder."""

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from ldae.baselines import SupervisedEncoder, VoxelDAEEncoder, build_conditional_unet
from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import InputError
from ldae.imaging.grid import grid_affine

SHAPE = (16, 24, 16)
FAST = dict(preset="tiny", image_shape=SHAPE, epochs=1)


@pytest.fixture(scope="module")
def scans():
    # images on a 5.5 mm grid: each model resamples them into its own grid
    cohort = make_synthetic_cohort(3, shape=(32, 40, 32), random_state=0)
    return [nib.Nifti1Image(volume, cohort.affine) for volume in cohort.images[:6]]


@pytest.fixture(scope="module")
def voxel_dae(scans):
    return VoxelDAEEncoder(**FAST, random_state=0).fit(scans)


def test_parameters_survive_clone():
    model = VoxelDAEEncoder(preset="tiny", unet_channels=(8, 16), epochs=3, random_state=1)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert clone(SupervisedEncoder(task="regression")).get_params()["task"] == "regression"


def test_transform_gives_one_finite_embedding_per_scan(voxel_dae, scans):
    embeddings = voxel_dae.transform(scans)
    assert embeddings.shape == (len(scans), voxel_dae.config_.embedding_dim)
    assert np.all(np.isfinite(embeddings))
    assert voxel_dae.get_feature_names_out()[0] == "voxeldaeencoder0"
    assert set(voxel_dae.history_) == set(voxel_dae.fit_seconds_) == {"voxel_dae"}


def test_same_random_state_gives_same_embeddings_on_cpu(voxel_dae, scans):
    again = VoxelDAEEncoder(**FAST, random_state=0).fit(scans)
    other = VoxelDAEEncoder(**FAST, random_state=1).fit(scans)
    np.testing.assert_array_equal(again.transform(scans), voxel_dae.transform(scans))
    assert not np.allclose(other.transform(scans), voxel_dae.transform(scans))


def test_reconstruct_and_stochastic_code_have_the_model_shapes(voxel_dae, scans):
    codes = voxel_dae.encode_stochastic(scans[:2], steps=3)
    assert codes.shape == (2, 1, *SHAPE)
    images = voxel_dae.reconstruct(scans[:2], steps=3)
    volumes = np.stack([image.get_fdata() for image in images])
    assert volumes.shape == (2, *SHAPE)
    assert volumes.min() >= 0 and volumes.max() <= 1
    # outputs lie on the model grid in world space, where the inputs were resampled
    np.testing.assert_allclose(images[0].affine, grid_affine(SHAPE))
    with pytest.raises(InputError, match="steps"):
        voxel_dae.reconstruct(scans[:1], steps=0)


def test_denoiser_output_depends_on_the_semantic_code():
    torch.manual_seed(0)
    unet = build_conditional_unet(embedding_dim=4, channels=(8, 16), num_head_channels=16)
    x, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        for parameter in unet.parameters():  # MONAI zero-initialises every residual branch's end
            torch.nn.init.normal_(parameter, std=0.1)
        zero = unet(x, t, class_labels=torch.zeros(2, 4))
        other = unet(x, t, class_labels=torch.ones(2, 4))
    assert (zero - other).abs().max() > 1e-4


def test_grid_that_the_unet_cannot_halve_is_refused(scans):
    with pytest.raises(InputError, match="image_shape"):
        VoxelDAEEncoder(preset="tiny", image_shape=(18, 24, 16), epochs=0).fit(scans)


def _cube_volumes(n, rng):
    """Noise volumes with a bright cube in the first (label 0) or second (label 1) half
    of the axial slices."""
    labels = np.arange(n) % 2
    volumes = rng.uniform(0.0, 0.3, size=(n, *SHAPE)).astype(np.float32)
    for volume, label in zip(volumes, labels):
        x, y, z = rng.integers(2, 12), rng.integers(2, 18), rng.integers(1, 4) + 8 * label
        volume[x:x + 4, y:y + 4, z:z + 4] = 1.0
    return volumes, labels


def test_supervised_embedding_separates_an_easy_label():
    rng = np.random.default_rng(0)
    volumes, labels = _cube_volumes(40, rng)
    model = make_pipeline(SupervisedEncoder(preset="tiny", image_shape=SHAPE, epochs=6, lr=1e-3,
                                            random_state=0),
                          LogisticRegression())
    model.fit(volumes[:24], labels[:24])
    assert model.score(volumes[24:], labels[24:]) >= 0.8  # chance: 0.5
    encoder = model[0]
    # the labels drive the training: cross-entropy falls far below chance (ln 2)
    assert encoder.history_["supervised"]["loss"][-1] < 0.5 * np.log(2)
    assert encoder.task_ == "classification" and list(encoder.classes_) == [0, 1]


def test_supervised_regression_and_label_checks():
    rng = np.random.default_rng(1)
    volumes, _ = _cube_volumes(4, rng)
    age = np.array([60.0, 70.5, 80.0, 65.2])
    model = SupervisedEncoder(preset="tiny", image_shape=SHAPE, epochs=1, random_state=0)
    model.fit(volumes, age)
    assert model.task_ == "regression" and model.target_mean_ == pytest.approx(age.mean())
    assert model.transform(volumes).shape == (4, model.config_.embedding_dim)
    with pytest.raises(InputError, match="y"):
        model.fit(volumes, None)
    with pytest.raises(InputError, match="one label per scan"):
        model.fit(volumes, age[:3])
    with pytest.raises(InputError, match="task"):
        SupervisedEncoder(task="ranking").fit(volumes, age)


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_ldae_unet_presets_give_the_voxel_dae_the_latent_unet_architecture(preset):
    # the efficiency comparison must differ only in where the denoiser works:
    # every layer matches except the image/latent channels of the first and last conv
    from ldae.baselines import resolve_baseline_config
    from ldae.diffusion import build_latent_unet
    from ldae.presets import resolve_config

    latent, voxel = resolve_config(preset), resolve_baseline_config(f"{preset}-ldae-unet")
    with torch.device("meta"):
        latent_unet = build_latent_unet(
            latent_channels=latent.latent_channels, channels=latent.unet_channels,
            num_res_blocks=latent.unet_res_blocks, attention_levels=latent.unet_attention,
            num_head_channels=latent.unet_head_channels, norm_num_groups=latent.unet_norm_groups)
        denoiser = build_conditional_unet(
            embedding_dim=voxel.embedding_dim, channels=voxel.unet_channels,
            num_res_blocks=voxel.unet_res_blocks, attention_levels=voxel.unet_attention,
            num_head_channels=voxel.unet_head_channels, norm_num_groups=voxel.unet_norm_groups)
    shapes = {name: tuple(p.shape) for name, p in latent_unet.named_parameters()}
    differing = {name for name, p in denoiser.named_parameters()
                 if name in shapes and tuple(p.shape) != shapes[name]}
    assert differing == {"conv_in.conv.weight", "out.2.conv.weight", "out.2.conv.bias"}
    extra = {name.split(".")[0] for name, _ in denoiser.named_parameters()} - {
        name.split(".")[0] for name in shapes}
    assert extra == {"class_embedding"}  # the code's path into the time embedding
    assert len(shapes) == len(list(denoiser.named_parameters())) - 2

"""Generative methods of LDAEEncoder: codes, reconstruction, variations, manipulation, interpolation."""

import nibabel as nib
import numpy as np
import pytest
import torch
from _generative_model import STEPS, cohort, fitted_encoder
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae import LDAEEncoder
from ldae.exceptions import InputError
from ldae.generation import decode_codes, embedding_direction, interpolate_codes, slerp
from ldae.metrics import ssim


@pytest.fixture(scope="module")
def encoder():
    return fitted_encoder()


@pytest.fixture(scope="module")
def baselines():
    """The baseline scan of each of the 8 subjects."""
    frame = cohort().frame
    return cohort().images[(frame["months"] == 0).to_numpy()]


@pytest.fixture(scope="module")
def reconstructions(encoder, baselines):
    return encoder.reconstruct(baselines[:4], steps=STEPS)


def test_encoded_codes_beat_random_codes(encoder, baselines, reconstructions):
    """Decoding y from its encoded x_T is closer to the scan than from random x_T.

    That random x_T with the scan's own y beats random x_T with another scan's y
    needs a trained model (subjects differ subtly): benchmarks/bench_reconstruction.py
    reports it.
    """
    scans = baselines[:4]
    from_noise = encoder.generate(encoder.transform(scans), random_state=0, steps=STEPS)[:, 0]
    encoded, random_codes = ssim(reconstructions, scans).mean(), ssim(from_noise, scans).mean()
    print(f"SSIM to the input: encoded x_T {encoded:.5f}, random x_T {random_codes:.5f}")
    assert encoded > random_codes + 0.05


def test_stochastic_code_and_embedding_decode_to_the_reconstruction(encoder, baselines,
                                                                    reconstructions):
    scans = baselines[:4]
    codes = encoder.encode_stochastic(scans, steps=STEPS)
    assert codes.shape == (4, *encoder.config_.latent_shape)
    decoded = decode_codes(encoder, torch.from_numpy(codes),
                           torch.from_numpy(encoder.transform(scans)), STEPS)
    np.testing.assert_allclose(decoded.numpy(), reconstructions, atol=1e-4)
    assert reconstructions.shape == scans.shape and reconstructions.dtype == np.float32
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1


def test_stochastic_encoding_runs_the_autoencoder_once_per_scan(encoder, baselines):
    # the code y of a latent semantic encoder comes from the same latents as x_T
    encoded = []
    hook = encoder.autoencoder_.encoder.register_forward_hook(
        lambda module, args, output: encoded.append(len(args[0])))
    try:
        encoder.encode_stochastic(baselines[:3], steps=2)
    finally:
        hook.remove()
    assert sum(encoded) == 3


def test_interpolation_endpoints_are_the_reconstructions(encoder, baselines, reconstructions):
    ends = encoder.interpolate(baselines[:2], baselines[2:4], [0.0, 1.0], steps=STEPS)
    assert ends.shape == (2, 2, *baselines.shape[1:])
    np.testing.assert_allclose(ends[0], reconstructions[:2], atol=1e-4)
    np.testing.assert_allclose(ends[1], reconstructions[2:4], atol=1e-4)


def test_slerp_keeps_the_norm_of_stochastic_codes(encoder, baselines):
    codes = torch.from_numpy(encoder.encode_stochastic(baselines[:4], steps=STEPS))
    start, end = codes[:2], codes[2:4]
    start_norm, end_norm = start.flatten(1).norm(dim=1), end.flatten(1).norm(dim=1)
    for t in (0.25, 0.5, 0.75):
        middle = slerp(start, end, torch.full((2,), t)).flatten(1).norm(dim=1)
        expected = (1 - t) * start_norm + t * end_norm
        np.testing.assert_allclose(middle, expected, rtol=0.02)

    # between two Gaussian codes of one norm, SLERP stays on their sphere, LERP cuts inside it
    gaussian = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(0))
    gaussian = gaussian / gaussian.norm(dim=2, keepdim=True)
    t = torch.full((2,), 0.5)
    np.testing.assert_allclose(slerp(gaussian[0], gaussian[1], t).norm(dim=1), 1.0, atol=1e-6)
    assert torch.all(torch.lerp(gaussian[0], gaussian[1], 0.5).norm(dim=1) < 0.9)
    # interpolate combines LERP of y with this SLERP of x_T, one angle per pair
    y = torch.randn(2, 2, 5)
    y_middle, x_middle = interpolate_codes(y[0], y[1], gaussian[0], gaussian[1], t)
    np.testing.assert_allclose(y_middle, (y[0] + y[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(x_middle, slerp(gaussian[0], gaussian[1], t))


def test_manipulation_along_a_probe_steers_the_decoder_along_one_direction(encoder, baselines,
                                                                        reconstructions):
    """alpha = 0 is the reconstruction; -alpha and +alpha move the scan in opposite ways.

    Whether the moved scans re-embed further along the probe is a property of a
    trained model, measured by benchmarks/bench_manipulation.py; this tiny model only
    shows that manipulate decodes y + alpha * direction from the scan's own x_T.
    """
    frame, images = cohort().frame, cohort().images
    probe = make_pipeline(StandardScaler(), LogisticRegression())
    probe.fit(encoder.transform(images), (frame["diagnosis"] == "AD").to_numpy())
    unit = embedding_direction(probe, encoder.config_.embedding_dim)
    spread = float(np.std(encoder.transform(images) @ unit))
    # one SD each way: the decoder's near-linear range, where the two changes agree for every
    # model measured (fp32 on an AVX2 CPU, random_state 0-3: cosines >= 0.84; at 3 SDs 0.08-0.90)
    alphas = [-spread, 0.0, spread]

    moved = encoder.manipulate(baselines[:3], probe, alphas, steps=STEPS)
    assert moved.shape == (3, 3, *baselines.shape[1:])
    np.testing.assert_allclose(moved[1], reconstructions[:3], atol=1e-4)
    toward, away = (moved[2] - moved[1]).reshape(3, -1), (moved[1] - moved[0]).reshape(3, -1)
    assert np.all(np.linalg.norm(toward, axis=1) > 1e-4)
    cosine = np.sum(toward * away, axis=1) / (np.linalg.norm(toward, axis=1) *
                                               np.linalg.norm(away, axis=1))
    print("cosine of the +alpha and -alpha changes per scan:", cosine.round(3))
    assert np.all(cosine > 0.5)  # random directions in ~40,000 voxels would give ~0
    # a direction given as a plain vector is the same manipulation
    np.testing.assert_allclose(encoder.manipulate(baselines[:1], unit, alphas[2], steps=STEPS),
                               moved[2, :1], atol=1e-4)


def test_outputs_for_paths_are_nifti_images_on_the_model_grid(encoder, baselines, tmp_path):
    paths = []
    for i, volume in enumerate(baselines[:2]):
        paths.append(tmp_path / f"scan{i}.nii.gz")
        nib.save(nib.Nifti1Image(volume, cohort().affine), paths[-1])

    images = encoder.reconstruct(paths, steps=1)
    assert len(images) == 2 and all(isinstance(image, nib.Nifti1Image) for image in images)
    for i, image in enumerate(images):
        assert image.shape == encoder.config_.image_shape
        np.testing.assert_array_equal(image.affine, encoder.affine_)
        nib.save(image, tmp_path / f"out{i}.nii.gz")
        reloaded = nib.load(tmp_path / f"out{i}.nii.gz")
        np.testing.assert_array_equal(reloaded.get_fdata(dtype=np.float32), image.get_fdata(dtype=np.float32))
        np.testing.assert_allclose(reloaded.affine, encoder.affine_, atol=1e-5)
    # as array input gives arrays: the same volumes
    np.testing.assert_allclose(images[0].get_fdata(dtype=np.float32),
                               encoder.reconstruct(baselines[:1], steps=1)[0], atol=1e-5)

    direction = np.ones(encoder.config_.embedding_dim)
    per_alpha = encoder.manipulate(paths, direction, [0.0, 1.0], steps=1)
    assert len(per_alpha) == 2 and all(len(images) == 2 for images in per_alpha)
    assert isinstance(per_alpha[1][0], nib.Nifti1Image)


def test_generate_is_reproducible_with_a_random_state(encoder, baselines):
    embeddings = encoder.transform(baselines[:2])
    first = encoder.generate(embeddings, n_variations=2, random_state=1, steps=1)
    assert first.shape == (2, 2, *baselines.shape[1:])
    np.testing.assert_array_equal(first, encoder.generate(embeddings, n_variations=2,
                                                          random_state=1, steps=1))
    assert not np.allclose(first, encoder.generate(embeddings, n_variations=2, random_state=2,
                                                   steps=1))
    assert not np.allclose(first[:, 0], first[:, 1])  # variations differ


def test_direction_of_a_pipeline_is_the_gradient_of_its_decision_function():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)) * [1.0, 10.0, 0.1, 1.0]
    probe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, X[:, 0] + X[:, 2] * 10 > 0)
    unit = embedding_direction(probe, 4)
    gradient = probe[-1].coef_[0] / probe[0].scale_
    np.testing.assert_allclose(unit, gradient / np.linalg.norm(gradient), rtol=1e-5)
    # moving along it raises the decision function the most per unit of distance
    base = probe.decision_function(X[:1])
    step = probe.decision_function(X[:1] + 0.1 * unit) - base
    for other in np.eye(4):
        assert step >= probe.decision_function(X[:1] + 0.1 * other) - base - 1e-9

    np.testing.assert_allclose(embedding_direction([0, 3.0, 4.0, 0], 4), [0, 0.6, 0.8, 0])
    with pytest.raises(InputError, match="direction has shape"):
        embedding_direction(np.ones(3), 4)
    with pytest.raises(InputError, match="non-zero"):
        embedding_direction(np.zeros(4), 4)
    with pytest.raises(InputError, match="PCA"):
        embedding_direction(make_pipeline(PCA(2), LogisticRegression()).fit(X, X[:, 0] > 0), 4)
    with pytest.raises(InputError, match="3 rows"):
        embedding_direction(LogisticRegression().fit(X, np.arange(40) % 3), 4)
    with pytest.raises(NotFittedError):
        embedding_direction(LogisticRegression(), 4)


def test_arguments_are_checked_before_any_computation(encoder, baselines):
    two = baselines[:2]
    with pytest.raises(InputError, match=r"t must lie in \[0, 1\]"):
        encoder.interpolate(two, two, 1.5)
    with pytest.raises(InputError, match="X_start has 2 scans and X_end 1"):
        encoder.interpolate(two, two[:1], 0.5)
    with pytest.raises(InputError, match="direction has shape"):
        encoder.manipulate(two, np.ones(3), 1.0)
    with pytest.raises(InputError, match="alpha"):
        encoder.manipulate(two, np.ones(encoder.config_.embedding_dim), [np.nan])
    with pytest.raises(InputError, match="embeddings has shape"):
        encoder.generate(np.ones(encoder.config_.embedding_dim))
    with pytest.raises(InputError, match="n_variations"):
        encoder.generate(np.ones((1, encoder.config_.embedding_dim)), n_variations=0)
    with pytest.raises(InputError, match="steps"):
        encoder.reconstruct(two, steps=0)
    with pytest.raises(NotFittedError):
        LDAEEncoder(preset="tiny").reconstruct(two)

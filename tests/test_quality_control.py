"""Quality control: corrupted scans rank above clean ones; robust outlier scores."""

import numpy as np
import pandas as pd
import pytest

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import InputError
from ldae.quality_control import (CORRUPTIONS, QualityControl, latent_statistics,
                                  reconstruction_error, simulate_corruptions)


@pytest.fixture(scope="module")
def fitted():
    """A tiny encoder fitted on clean synthetic scans, and those scans.

    Its stage 1 is a plain AutoencoderKL: ``latent_statistics`` describes a scan's global
    intensity and contrast as such a latent holds them (see its docstring).
    """
    cohort = make_synthetic_cohort(10, shape=(32, 40, 32), visit_months=(0, 12), random_state=0)
    return (LDAEEncoder(preset="tiny", ae_template=False, random_state=0).fit(cohort.images),
            cohort.images)


@pytest.fixture(scope="module")
def scored_mix(fitted):
    """Clean scans plus corrupted ones: two representations and the reconstruction errors."""
    encoder, clean = fitted
    scans = np.concatenate([clean, simulate_corruptions(clean[::5], random_state=0)])
    labels = ["clean"] * len(clean) + list(CORRUPTIONS)
    frame = pd.DataFrame({"scan": [f"scan-{i}" for i in range(len(scans))], "truth": labels})
    representations = {"LDAE embedding": encoder.transform(scans),
                       "latent statistics": latent_statistics(encoder, scans)}
    return representations, reconstruction_error(encoder, scans), frame


@pytest.mark.parametrize("representation", ["LDAE embedding", "latent statistics"])
def test_every_corrupted_scan_ranks_above_every_clean_one(scored_mix, representation):
    representations, errors, frame = scored_mix
    X = representations[representation]
    qc = QualityControl(random_state=0).fit(X, reconstruction_error=errors)
    table = qc.score_table(X, errors, frame=frame)
    print(f"\nQC on {representation} + reconstruction error\n" + table.round(2).to_string())

    is_clean = table["truth"] == "clean"
    assert table["outlier_score"][~is_clean].min() > table["outlier_score"][is_clean].max()
    assert sorted(table["truth"][:len(CORRUPTIONS)]) == sorted(CORRUPTIONS)
    if representation == "latent statistics":  # the embedding is not trained enough to flag all
        flagged = qc.flag(X, errors, frame=frame)
        assert sorted(flagged["truth"]) == sorted(CORRUPTIONS)  # and no clean scan
        np.testing.assert_array_equal(qc.predict(X, errors), np.where(is_clean.sort_index(), 1, -1))


def test_simulated_corruptions():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.9, size=(2, 6, 9, 5)).astype(np.float32)
    clean[:, 0] = 0  # background
    kinds = ("artefact", "upside-down", "inverted contrast", "noise", "left-right")
    artefact, upside_down, inverted, noise, left_right = simulate_corruptions(clean, kinds, random_state=0)
    assert (artefact[:, ::3] == 1).all() and np.array_equal(artefact[:, 1::3], clean[0][:, 1::3])
    np.testing.assert_array_equal(upside_down, clean[1][:, :, ::-1])
    np.testing.assert_allclose(inverted[1:], 1 - clean[0][1:])
    assert (inverted[0] == 0).all()  # the background stays dark
    assert abs(noise.mean() - 0.5) < 0.1 and np.corrcoef(noise.ravel(), clean[1].ravel())[0, 1] < 0.2
    np.testing.assert_array_equal(left_right, clean[0][::-1])
    with pytest.raises(InputError, match="unknown corruptions \\['blur'\\]"):
        simulate_corruptions(clean, ["blur"])


def test_reconstruction_error_rises_off_the_training_data(scored_mix):
    representations, errors, frame = scored_mix
    clean = (frame.truth == "clean").to_numpy()
    noise = (frame.truth == "noise").to_numpy()
    assert errors.shape == (len(frame),) and (errors > 0).all()
    assert errors[noise].min() > 2 * errors[clean].max()
    assert representations["latent statistics"].shape == (len(frame), 6)  # 3 channels: means, sds


def test_mse_metric_and_unknown_metric(fitted):
    encoder, clean = fitted
    l1 = reconstruction_error(encoder, clean[:2])
    mse = reconstruction_error(encoder, clean[:2], metric="mse")
    assert mse.shape == l1.shape == (2,) and (mse < l1).all()  # errors below 1: squares are smaller
    with pytest.raises(InputError, match="metric"):
        reconstruction_error(encoder, clean[:2], metric="ssim")


def gaussian_with_outliers(n_inliers, n_features, spread=1.0, seed=0):
    """Correlated Gaussian inliers, then 3 outliers: two off the correlation axis, one far."""
    rng = np.random.default_rng(seed)
    covariance = np.eye(n_features)
    covariance[0, 1] = covariance[1, 0] = 0.9
    inliers = rng.multivariate_normal(np.zeros(n_features), covariance, size=n_inliers)
    # unremarkable dimension by dimension, far in Mahalanobis distance
    outliers = np.zeros((3, n_features))
    outliers[0, :2], outliers[1, :2], outliers[2, -1] = [2.5, -2.5], [-3.0, 3.0], 9.0
    return np.vstack([inliers, spread * outliers])


# with few scans per dimension, shrinkage blurs the correlation: the outliers must lie further
@pytest.mark.parametrize("n_inliers, n_features, spread, detector",
                         [(200, 3, 1.0, "MinCovDet"), (30, 10, 2.5, "LedoitWolf")])
def test_mahalanobis_flags_planted_outliers(n_inliers, n_features, spread, detector):
    X = gaussian_with_outliers(n_inliers, n_features, spread)
    qc = QualityControl(random_state=0).fit(X)
    assert type(qc.detector_).__name__ == detector
    scores = qc.outlier_score(X)
    assert scores[-3:].min() > scores[:-3].max()
    assert (qc.predict(X)[-3:] == -1).all() and (qc.predict(X)[:-3] == 1).mean() > 0.95
    np.testing.assert_allclose(qc.score_samples(X), -scores)
    np.testing.assert_allclose(qc.decision_function(X), 3.5 - scores)


def test_isolation_forest_and_the_flag_table():
    X = gaussian_with_outliers(200, 3, spread=2.0)  # axis-parallel splits miss subtle ones
    qc = QualityControl(method="isolation_forest", random_state=0).fit(X)
    frame = pd.DataFrame({"scan": [f"s{i}" for i in range(len(X))]}, index=np.arange(len(X)) + 100)
    table = qc.score_table(X, frame=frame)
    assert set(table.index[:3]) == {300, 301, 302}  # the planted outliers first
    assert table.loc[302, "scan"] == "s202" and table["outlier_score"].is_monotonic_decreasing
    flagged = qc.flag(X, frame=frame)
    assert {300, 301, 302} <= set(flagged.index) and flagged["flagged"].all()
    assert len(flagged) == (table["outlier_score"] > qc.threshold).sum() < 0.1 * len(X)


def test_sites_are_compared_with_themselves():
    rng = np.random.default_rng(1)
    site = np.repeat(["A", "B", "C"], 30)
    X = rng.normal(size=(90, 4)) + 4.0 * (site == "B")[:, None]  # site B's scanner shifts everything
    errors = np.exp(rng.normal(np.log(0.05), 0.05, 90) + 0.5 * (site == "B"))
    X[[0, 60]] += 6.0  # one broken scan at sites A and C
    errors[[0, 60]] *= 2.0
    pooled = QualityControl(random_state=0).fit(X, reconstruction_error=errors)
    assert (pooled.predict(X, errors)[site == "B"] == -1).mean() > 0.5  # the whole site looks wrong
    by_site = QualityControl(random_state=0).fit(X, reconstruction_error=errors, site=site)
    assert list(np.flatnonzero(by_site.predict(X, errors, site) == -1)) == [0, 60]
    assert list(by_site.site_medians_["embedding"].index) == ["A", "B", "C"]
    with pytest.raises(InputError, match="site: required"):
        by_site.predict(X, errors)
    with pytest.raises(InputError, match="\\['D'\\] were not seen"):
        by_site.predict(X[:2], errors[:2], site=["A", "D"])
    with pytest.raises(InputError, match="fewer than 5 scans"):
        QualityControl().fit(X[:33], site=site[:33])
    with pytest.raises(InputError, match="refit with site="):
        pooled.predict(X, errors, site=site)


def test_reconstruction_errors_must_be_given_consistently():
    X = gaussian_with_outliers(40, 3)
    errors = np.full(len(X), 0.05)
    with_errors = QualityControl().fit(X, reconstruction_error=errors)
    with pytest.raises(InputError, match="reconstruction_error: required"):
        with_errors.outlier_score(X)
    with pytest.raises(InputError, match="refit"):
        QualityControl().fit(X).outlier_score(X, errors)
    with pytest.raises(InputError, match="one value per scan"):
        QualityControl().fit(X, reconstruction_error=errors[:5])
    with pytest.raises(InputError, match="positive"):
        QualityControl().fit(X, reconstruction_error=np.zeros(len(X)))
    with pytest.raises(InputError, match="method"):
        QualityControl(method="lof").fit(X)

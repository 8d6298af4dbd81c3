"""Linear probes: AD vs CN and age, on shared subject-grouped folds."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin

from ldae.exceptions import InputError
from ldae.probes import MEAN_AGE_BASELINE, probe_embeddings


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(40):
        diagnosis = ["CN", "MCI", "AD"][subject % 3]
        age0 = rng.uniform(60, 85)
        for visit in range(3):
            rows.append(dict(subject=f"sub-{subject:03d}", diagnosis=diagnosis, age=age0 + visit))
    return pd.DataFrame(rows)


def test_informative_features_beat_noise_on_the_same_folds(frame):
    rng = np.random.default_rng(1)
    is_ad = (frame.diagnosis == "AD").to_numpy()
    informative = np.c_[is_ad + rng.normal(0, 0.3, len(frame)), frame.age + rng.normal(0, 2, len(frame))]
    noise = rng.normal(size=(len(frame), 2))
    results = probe_embeddings({"informative": informative, "noise": noise}, frame, n_splits=4)

    auc = results.diagnosis.scores.groupby("model")["roc_auc"].mean()
    assert auc["informative"] > 0.95 and auc["noise"] < 0.8
    mae = results.age.scores.groupby("model")["mae"].mean().abs()
    assert mae["informative"] < mae[MEAN_AGE_BASELINE] < mae["noise"] + 1
    # both feature sets were scored on identical folds
    folds = results.diagnosis.scores.groupby("model")["n_test"].apply(list)
    assert folds["informative"] == folds["noise"]
    # MCI scans take no part in the AD-vs-CN probe
    assert results.diagnosis.scores.groupby("model")["n_test"].sum()["noise"] == (frame.diagnosis != "MCI").sum()

    table = results.table()
    # the paper's columns (Lozupone et al. 2025, Table 2)
    assert {"roc_auc", "accuracy", "precision", "recall", "f1", "mae", "rmse"} <= set(table.columns)
    assert "informative" in table.index
    comparisons = results.comparisons("informative")
    assert set(comparisons.metric) == {"roc_auc", "mae"}
    assert (comparisons.pvalue_corrected >= comparisons.pvalue).all()
    # MAE differences read in years of error: the informative features err less
    row = comparisons[(comparisons.metric == "mae") & (comparisons.model_b == "noise")].iloc[0]
    assert row.model_a == "informative"
    assert row.mean_difference == pytest.approx(mae["informative"] - mae["noise"])
    assert row.ci_low < row.mean_difference < row.ci_high < 0  # in years of error, like it


def test_features_that_only_identify_subjects_do_not_beat_the_mean_age(frame):
    # each subject's scans share a random code unrelated to age: the ridge's alpha
    # must be chosen on subject-grouped folds, or it memorises subjects and errs more
    rng = np.random.default_rng(3)
    subject_codes = rng.normal(size=(frame.subject.nunique(), 60))
    identity = subject_codes[frame.subject.factorize()[0]] + rng.normal(0, 0.05, (len(frame), 60))
    results = probe_embeddings({"identity": identity}, frame, n_splits=4)
    mae = results.age.scores.groupby("model")["mae"].mean().abs()
    assert mae["identity"] < 1.1 * mae[MEAN_AGE_BASELINE]  # 1.34x with leave-one-scan-out


def test_voxel_pca_baseline_is_added(frame):
    rng = np.random.default_rng(2)
    voxels = rng.normal(size=(len(frame), 4, 5, 4)).astype(np.float32)
    results = probe_embeddings({"noise": rng.normal(size=(len(frame), 3))}, frame, voxels=voxels,
                               n_splits=3)
    assert "PCA of voxels" in set(results.diagnosis.scores.model)


def test_misaligned_features_are_named(frame):
    with pytest.raises(InputError, match="features\\['short'\\]"):
        probe_embeddings({"short": np.zeros((3, 2))}, frame)
    with pytest.raises(InputError, match="age"):
        probe_embeddings({"x": np.zeros((len(frame), 2))}, frame.drop(columns="age"))


class _LabelReadingEncoder(TransformerMixin, BaseEstimator):
    """Embeds a volume as the mean of the training targets of the scans whose
    first voxel matches: only informative when fitted on the fold's own labels."""

    fits = []

    def fit(self, X, y):
        type(self).fits.append((X.shape, np.unique(y).size))
        self.lookup_ = dict(zip(X[:, 0, 0, 0].round(6), y))
        self.default_ = float(np.mean(y))
        return self

    def transform(self, X):
        return np.array([[self.lookup_.get(key, self.default_)] for key in X[:, 0, 0, 0].round(6)])


def test_fold_encoders_are_fitted_per_training_fold_with_its_labels(frame):
    rng = np.random.default_rng(3)
    voxels = rng.normal(size=(len(frame), 4, 5, 4)).astype(np.float32)
    # every scan of a subject shares its first voxel: the encoder can look labels up
    subject_code = frame.subject.str[-3:].astype(int).to_numpy()
    voxels[:, 0, 0, 0] = subject_code
    _LabelReadingEncoder.fits.clear()
    results = probe_embeddings({}, frame, voxels=voxels, n_splits=4,
                               fold_encoders={"lookup": _LabelReadingEncoder()})

    shapes, n_labels = zip(*_LabelReadingEncoder.fits)
    assert len(shapes) == 8 and all(shape[1:] == (4, 5, 4) for shape in shapes)
    assert n_labels[:4] == (2,) * 4  # AD vs CN labels for the diagnosis probe
    assert min(n_labels[4:]) > 2  # ages for the age probe
    n_diagnosed = (frame.diagnosis != "MCI").sum()
    assert all(shape[0] < n_diagnosed for shape in shapes[:4])  # training folds only
    # test subjects are unseen, so looked-up labels carry nothing about them
    auc = results.diagnosis.scores.groupby("model")["roc_auc"].mean()
    assert auc["lookup"] == pytest.approx(0.5)


def test_fold_encoders_need_voxels(frame):
    with pytest.raises(InputError, match="voxels"):
        probe_embeddings({"x": np.zeros((len(frame), 2))}, frame, fold_encoders={"e": _LabelReadingEncoder()})

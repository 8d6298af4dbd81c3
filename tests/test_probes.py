"""Linear probes: AD vs CN and age, on shared subject-grouped folds."""

import numpy as np
import pandas as pd
import pytest

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
    assert {"roc_auc", "mae"} <= set(table.columns) and "informative" in table.index
    comparisons = results.comparisons("informative")
    assert set(comparisons.metric) == {"roc_auc", "mae"}
    assert (comparisons.pvalue_corrected >= comparisons.pvalue).all()


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

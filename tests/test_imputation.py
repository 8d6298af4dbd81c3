"""Missing-visit imputation: triplets, predictions by interpolation, baselines, scores."""

import pandas as pd
import pytest
from _generative_model import STEPS, cohort, fitted_encoder

from ldae.exceptions import InputError
from ldae.generation import autoencoder_reconstruction
from ldae.imaging import as_volume_dataset
from ldae.imputation import AUTOENCODER, LDAE, LINEAR, NEAREST, SCAN, impute_missing_visits
from ldae.metrics import mse, ssim


@pytest.fixture(scope="module")
def visits():
    """One subject with visits at 0, 6, 12 and 24 months, one with two visits."""
    frame = pd.DataFrame({"subject": ["a", "b", "a", "a", "b", "a"],
                          "months": [12, 0, 0, 24, 6, 6]}, index=[10, 11, 12, 13, 14, 15])
    return cohort().images[:6], frame


@pytest.fixture(scope="module")
def result(visits):
    images, frame = visits
    return impute_missing_visits(fitted_encoder(), images, frame, steps=STEPS)


def test_every_triplet_of_a_subject_with_its_month_ratio(result):
    scores = result.scores
    assert len(scores) == 4 * 3 * 2  # triplets x methods x references
    assert set(scores["subject"]) == {"a"}
    triplets = scores.drop_duplicates(["months_start", "months_mid", "months_end"])
    table = triplets.set_index(["months_start", "months_mid", "months_end"])
    assert sorted(table.index) == [(0, 6, 12), (0, 6, 24), (0, 12, 24), (6, 12, 24)]
    assert table.loc[(0, 6, 24), "t"] == pytest.approx(0.25)
    assert table.loc[(6, 12, 24), "t"] == pytest.approx(1 / 3)
    assert table.loc[(0, 6, 24), "gap"] == 6 and table.loc[(0, 6, 24), "total_gap"] == 24
    assert table.loc[(0, 12, 24), "gap"] == 12
    # positions of the scans in images / frame
    assert tuple(table.loc[(0, 6, 24), ["scan_start", "scan_mid", "scan_end"]]) == (2, 5, 3)

    summary = result.summary.set_index(["reference", "gap", "method"])
    assert summary.loc[(SCAN, 6, LDAE), "n_triplets"] == 3
    assert summary.loc[(AUTOENCODER, 12, LINEAR), "n_triplets"] == 1
    gap_six = scores[(scores.gap == 6) & (scores.method == NEAREST) & (scores.reference == SCAN)]
    assert summary.loc[(SCAN, 6, NEAREST), "ssim_mean"] == pytest.approx(gap_six["ssim"].mean())


def test_predictions_are_interpolations_and_baselines_use_the_real_scans(visits, result):
    images, _ = visits
    encoder = fitted_encoder()
    row = result.scores.query("months_start == 0 and months_mid == 6 and months_end == 24")
    score = row.set_index(["method", "reference"])
    # scores compare volumes as the model sees them: preprocessed
    start, middle, end = (as_volume_dataset(images[[i]], encoder.preprocessing_)[0] for i in (2, 5, 3))

    predicted = encoder.interpolate(images[[2]], images[[3]], 0.25, steps=STEPS)[0]
    assert score.loc[(LDAE, SCAN), "mse"] == pytest.approx(mse(predicted, middle), rel=1e-3)
    reconstructed = autoencoder_reconstruction(encoder, middle[None])[0]
    assert score.loc[(LDAE, AUTOENCODER), "ssim"] == pytest.approx(
        ssim(predicted, reconstructed), abs=1e-3)
    assert score.loc[(NEAREST, SCAN), "mse"] == pytest.approx(mse(start, middle), rel=1e-5)
    assert score.loc[(LINEAR, SCAN), "ssim"] == pytest.approx(
        ssim(0.75 * start + 0.25 * end, middle), abs=1e-5)


def test_inputs_are_checked(visits):
    images, frame = visits
    encoder = fitted_encoder()
    with pytest.raises(InputError, match="months"):
        impute_missing_visits(encoder, images, frame.drop(columns="months"))
    with pytest.raises(InputError, match="images has 5 scans but frame 6 rows"):
        impute_missing_visits(encoder, images[:5], frame)
    with pytest.raises(InputError, match="no subject of frame has three visits"):
        impute_missing_visits(encoder, images[:2], frame.iloc[:2])

import warnings

import numpy as np
import pytest
from scipy import sparse
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import make_classification
from sklearn.dummy import DummyClassifier
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.model_selection import KFold, cross_val_score

from ldae.exceptions import InputError
from ldae.model_selection import RepeatedStratifiedGroupKFold, run_study


def make_cohort(n_subjects=40, n_features=5, seed=0, max_visits=4):
    """Scans of subjects with 1..max_visits visits; the label is constant per subject."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, max_visits + 1, n_subjects)
    groups = np.repeat(np.arange(n_subjects), visits)
    subject_X, subject_y = make_classification(
        n_subjects, n_features, weights=[0.7], flip_y=0, random_state=seed
    )
    X = subject_X[groups] + rng.normal(0, 0.3, (len(groups), n_features))
    return X, subject_y[groups], groups


def test_splitter_keeps_subjects_whole_and_tests_every_scan_once_per_repeat():
    X, y, groups = make_cohort(60)
    cv = RepeatedStratifiedGroupKFold(n_splits=4, n_repeats=3, random_state=0)
    splits = list(cv.split(X, y, groups))
    assert len(splits) == cv.get_n_splits() == 12
    for repeat in range(3):
        tested = []
        for train, test in splits[4 * repeat : 4 * repeat + 4]:
            assert not set(groups[train]) & set(groups[test])
            assert len(train) + len(test) == len(y)
            tested.extend(test)
        assert sorted(tested) == list(range(len(y)))
    first_folds = [frozenset(splits[4 * r][1]) for r in range(3)]
    assert len(set(first_folds)) == 3, "every repeat must shuffle differently"


def test_splitter_balances_classes_in_every_fold():
    X, y, groups = make_cohort(80, seed=1)
    overall = y.mean()
    for _, test in RepeatedStratifiedGroupKFold(5, n_repeats=4, random_state=0).split(X, y, groups):
        assert abs(y[test].mean() - overall) < 0.08


def test_splitter_is_reproducible_with_an_int_seed_and_varies_with_it():
    X, y, groups = make_cohort(30)

    def test_sets(seed):
        cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=seed)
        return [tuple(test) for _, test in cv.split(X, y, groups)]

    assert test_sets(3) == test_sets(3)
    assert test_sets(3) != test_sets(4)


def test_splitter_stratifies_a_continuous_target_on_subject_quantiles():
    rng = np.random.default_rng(0)
    n_subjects = 50
    visits = rng.integers(1, 4, n_subjects)
    groups = np.repeat(np.arange(n_subjects), visits)
    subject_age = rng.uniform(55, 90, n_subjects)
    age = subject_age[groups] + rng.uniform(0, 2, len(groups))
    quintile = np.searchsorted(np.quantile(subject_age, [0.2, 0.4, 0.6, 0.8]), subject_age)
    cv = RepeatedStratifiedGroupKFold(5, n_repeats=3, n_bins=5, random_state=0)
    for _, test in cv.split(age, age, groups):
        tested_subjects = np.unique(groups[test])
        assert set(quintile[tested_subjects]) == set(range(5))


def test_splitter_bins_whole_year_ages_instead_of_treating_them_as_classes():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 2)
    age = np.round(rng.uniform(55, 90, 40))[groups]
    with warnings.catch_warnings():
        # sklearn warns about classes smaller than n_splits if ages are classes
        warnings.simplefilter("error")
        splits = list(RepeatedStratifiedGroupKFold(5, random_state=0).split(age, age, groups))
    assert len(splits) == 5


def test_splitter_keeps_a_converting_subject_in_one_fold():
    groups = np.repeat(np.arange(20), 3)
    diagnosis = np.array(["CN"] * 30 + ["MCI", "MCI", "AD"] * 5 + ["AD"] * 15)
    cv = RepeatedStratifiedGroupKFold(4, n_repeats=2, random_state=0)
    for train, test in cv.split(diagnosis, diagnosis, groups):
        assert not set(groups[train]) & set(groups[test])
        converters = set(groups[test]) & set(range(10, 15))
        assert converters, "converters form one stratum (MCI), spread over the folds"


def test_splitter_works_inside_scikit_learn_model_selection():
    X, y, groups = make_cohort(30)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    scores = cross_val_score(LinearDiscriminantAnalysis(), X, y, groups=groups, cv=cv)
    assert scores.shape == (6,)


@pytest.mark.parametrize(
    "kwargs", [{"n_splits": 1}, {"n_repeats": 0}, {"n_bins": 1}, {"n_splits": 2.5}]
)
def test_splitter_rejects_bad_parameters(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        RepeatedStratifiedGroupKFold(**kwargs)


def test_splitter_requires_groups_and_enough_subjects():
    X, y, groups = make_cohort(10)
    with pytest.raises(InputError, match="groups"):
        next(RepeatedStratifiedGroupKFold(3).split(X, y))
    with pytest.raises(InputError, match="subjects"):
        next(RepeatedStratifiedGroupKFold(20).split(X, y, groups))


def two_models():
    return {"lda": LinearDiscriminantAnalysis(), "dummy": DummyClassifier(strategy="prior")}


def test_run_study_evaluates_every_model_on_the_same_splits():
    X, y, groups = make_cohort(30)
    # random_state=None: drawing the splits once per model would give different splits
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2)
    result = run_study(two_models(), X, y, groups=groups, cv=cv, scoring="roc_auc")
    assert result.models == ["lda", "dummy"]
    assert len(result.scores) == 2 * 6
    keys = ["repeat", "fold", "row"]
    rows = {
        name: frame.sort_values(keys)[keys].to_numpy()
        for name, frame in result.predictions.groupby("model")
    }
    np.testing.assert_array_equal(rows["lda"], rows["dummy"])
    sizes = result.scores.pivot(index=["repeat", "fold"], columns="model", values="n_test")
    np.testing.assert_array_equal(sizes["lda"], sizes["dummy"])


def test_run_study_predictions_cover_every_row_once_per_repeat():
    X, y, groups = make_cohort(30)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    result = run_study(two_models(), X, y, groups=groups, cv=cv, scoring=["accuracy"])
    for _, frame in result.predictions.groupby(["model", "repeat"]):
        assert sorted(frame["row"]) == list(range(len(y)))
    predictions = result.predictions
    np.testing.assert_array_equal(predictions["y_true"], y[predictions["row"]])
    np.testing.assert_array_equal(predictions["subject"], groups[predictions["row"]])
    assert predictions["score"].between(0, 1).all()


def test_run_study_scores_match_a_manual_fit_on_each_split():
    X, y, groups = make_cohort(30)
    cv = RepeatedStratifiedGroupKFold(3, random_state=0)
    result = run_study(two_models(), X, y, groups=groups, cv=cv, scoring="accuracy")
    lda_rows = result.scores.query("model == 'lda'").iterrows()
    for (train, test), (_, row) in zip(result.splits, lda_rows):
        expected = LinearDiscriminantAnalysis().fit(X[train], y[train]).score(X[test], y[test])
        assert row["accuracy"] == pytest.approx(expected)
        assert (row["n_train"], row["n_test"]) == (len(train), len(test))


def test_run_study_gives_the_same_scores_in_parallel():
    X, y, groups = make_cohort(30)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    scoring = ["roc_auc", "accuracy"]
    serial = run_study(two_models(), X, y, groups=groups, cv=cv, scoring=scoring, n_jobs=1)
    parallel = run_study(two_models(), X, y, groups=groups, cv=cv, scoring=scoring, n_jobs=2)
    columns = ["model", "repeat", "fold", "n_train", "n_test", *scoring]
    assert serial.scores[columns].equals(parallel.scores[columns])
    assert serial.predictions.equals(parallel.predictions)


class CountingEncoder(TransformerMixin, BaseEstimator):
    """Keeps the first two features and counts its calls."""

    def fit(self, X, y=None):
        self.fit_calls_ = getattr(self, "fit_calls_", 0) + 1
        self.transform_calls_ = 0
        return self

    def transform(self, X):
        self.transform_calls_ += 1
        return np.asarray(X)[:, :2]


def test_run_study_applies_a_frozen_encoder_once():
    X, y, groups = make_cohort(30)
    encoder = CountingEncoder().fit(X)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    encoded = run_study(
        two_models(), X, y, groups=groups, cv=cv, scoring="accuracy", frozen_encoder=encoder
    )
    assert (encoder.fit_calls_, encoder.transform_calls_) == (1, 1)
    direct = run_study(two_models(), X[:, :2], y, groups=groups, cv=cv, scoring="accuracy")
    np.testing.assert_allclose(encoded.scores["accuracy"], direct.scores["accuracy"])


def test_run_study_refuses_an_unfitted_frozen_encoder():
    X, y, groups = make_cohort(20)
    with pytest.raises(InputError, match="frozen_encoder"):
        run_study(two_models(), X, y, groups=groups, cv=3, scoring="accuracy",
                  frozen_encoder=CountingEncoder())


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored by KFold")
def test_run_study_refuses_splits_that_share_a_subject():
    X, y, groups = make_cohort(20)
    with pytest.raises(InputError, match="both train and test"):
        run_study(two_models(), X, y, groups=groups, cv=KFold(3), scoring="accuracy")


def test_run_study_rejects_bad_arguments():
    X, y, groups = make_cohort(20)
    with pytest.raises(InputError, match="models"):
        run_study({}, X, y, groups=groups, cv=3, scoring="accuracy")
    with pytest.raises(InputError, match="scoring"):
        run_study(two_models(), X, y, groups=groups, cv=3, scoring="no_such_metric")
    with pytest.raises(InputError, match="groups"):
        run_study(two_models(), X, y, groups=groups[:-1], cv=3, scoring="accuracy")


def test_run_study_keeps_regression_predictions_and_multiclass_scores():
    X, y, groups = make_cohort(30)
    target = X[:, 0] * 2 + 1
    result = run_study({"ridge": Ridge()}, X, target, groups=groups, cv=3, scoring="r2")
    assert {"y_pred", "y_true"} <= set(result.predictions.columns)
    assert not result.predictions.columns.str.startswith("score").any()

    labels = np.array(["CN", "MCI", "AD"])[groups % 3]
    result = run_study({"lr": LinearDiscriminantAnalysis()}, X, labels, groups=groups, cv=3,
                       scoring="accuracy")
    class_scores = result.predictions[["score_AD", "score_CN", "score_MCI"]]
    np.testing.assert_allclose(class_scores.sum(axis=1), 1.0)


def test_run_study_accepts_sparse_features():
    X, y, groups = make_cohort(30)
    result = run_study({"ridge": RidgeClassifier()}, sparse.csr_matrix(X), y, groups=groups,
                       cv=3, scoring="accuracy")
    assert len(result.predictions) == len(y)


def test_study_result_summaries_and_plot():
    X, y, groups = make_cohort(30)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    result = run_study(two_models(), X, y, groups=groups, cv=cv, scoring=["roc_auc", "accuracy"])
    summary = result.summary()
    lda_scores = result.scores.query("model == 'lda'")["roc_auc"]
    assert summary.loc["lda", ("roc_auc", "mean")] == pytest.approx(lda_scores.mean())
    assert summary.loc["lda", ("roc_auc", "sd")] == pytest.approx(lda_scores.std(ddof=1))

    markdown = result.to_markdown(digits=2).splitlines()
    assert markdown[0] == "| model | roc_auc | accuracy |"
    assert markdown[2].startswith(f"| lda | {lda_scores.mean():.2f} ± {lda_scores.std():.2f} |")
    assert len(markdown) == 4
    assert "<table" in result._repr_html_()

    figure = result.plot("roc_auc")
    assert isinstance(figure, Figure)
    labels = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert labels == ["lda", "dummy"]
    with pytest.raises(InputError, match="metric"):
        result.plot("r2")


def test_study_result_plot_roc_draws_subject_level_curves_with_delong_intervals():
    from sklearn.metrics import roc_auc_score, roc_curve

    from ldae.stats import delong_test

    X, y, groups = make_cohort(40)
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=2, random_state=0)
    result = run_study(two_models(), X, y, groups=groups, cv=cv, scoring="roc_auc")
    figure = result.plot_roc()
    assert isinstance(figure, Figure)
    ax = figure.axes[0]

    per_subject = result.predictions.query("model == 'lda'").groupby("subject")
    subject_score = per_subject["score"].mean().to_numpy()
    subject_label = per_subject["y_true"].first().to_numpy()
    fpr, tpr, _ = roc_curve(subject_label, subject_score)
    lda_line = ax.get_lines()[0]
    np.testing.assert_allclose(lda_line.get_xdata(), fpr)
    np.testing.assert_allclose(lda_line.get_ydata(), tpr)

    interval = delong_test(subject_label, subject_score, subject_score).ci_a
    auc = roc_auc_score(subject_label, subject_score)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0] == f"lda: AUC {auc:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    assert len(labels) == 2 and labels[1].startswith("dummy: AUC ")
    assert "40 subjects" in ax.get_title()
    per_scan = result.plot_roc(per_subject=False).axes[0]
    assert f"{len(y)} scans" in per_scan.get_title()

    regression = run_study({"ridge": Ridge()}, X, y.astype(float), groups=groups, cv=3,
                           scoring="r2")
    with pytest.raises(InputError, match="binary"):
        regression.plot_roc()
    changing = y.copy()
    changing[0] = 1 - changing[0]  # subject 0 now has both labels
    mixed = run_study(two_models(), X, changing, groups=groups, cv=3, scoring="roc_auc")
    with pytest.raises(InputError, match="per_subject"):
        mixed.plot_roc()

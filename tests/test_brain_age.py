import numpy as np
import pytest
import sklearn
from scipy import stats as scipy_stats
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GroupKFold, cross_validate

from ldae.brain_age import BrainAgeRegressor, brain_age_report
from ldae.exceptions import InputError
from ldae.model_selection import run_study


def make_ages(n_subjects=60, n_visits=3, n_noise=40, seed=0):
    """Features that are noisy readings of age, plus pure-noise features; subject ids."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_subjects), n_visits)
    age = rng.uniform(55, 90, n_subjects)[groups] + np.tile(np.arange(n_visits), n_subjects)
    readings = age[:, None] + rng.normal(0, 15, (len(age), 3))
    X = np.column_stack([readings, rng.normal(size=(len(age), n_noise))])
    return X, age, groups


def test_report_numbers_equal_hand_computations():
    rng = np.random.default_rng(0)
    age = rng.uniform(50, 90, 40)
    predicted = 0.6 * age + 28 + rng.normal(0, 4, 40)
    corrected = predicted + 5
    train_mean = 71.5
    report = brain_age_report(age, predicted, y_train_mean=train_mean, corrected=corrected)
    assert list(report.index) == ["training mean", "prediction", "corrected"]

    for name, prediction in (("prediction", predicted), ("corrected", corrected)):
        row = report.loc[name]
        gap = prediction - age
        assert row["mae"] == pytest.approx(np.mean(np.abs(gap)))
        assert row["rmse"] == pytest.approx(np.sqrt(np.mean(gap**2)))
        assert row["r"] == pytest.approx(np.corrcoef(prediction, age)[0, 1])
        total = np.sum((age - age.mean()) ** 2)
        assert row["r2"] == pytest.approx(1 - np.sum(gap**2) / total)
        assert row["mean_gap"] == pytest.approx(gap.mean())
        assert row["gap_age_r"] == pytest.approx(np.corrcoef(gap, age)[0, 1])
    baseline = report.loc["training mean"]
    assert baseline["mae"] == pytest.approx(np.mean(np.abs(age - train_mean)))
    assert np.isnan(baseline["r"])
    assert report.loc["prediction", "gap_age_r"] < -0.5  # regression to the mean

    per_scan_means = np.where(np.arange(40) < 20, 70.0, 73.0)
    per_fold = brain_age_report(age, predicted, y_train_mean=per_scan_means)
    assert per_fold.loc["training mean", "mae"] == pytest.approx(
        np.mean(np.abs(age - per_scan_means)))
    assert "corrected" not in per_fold.index


def test_bias_is_fitted_on_out_of_fold_training_predictions_by_subject():
    X, age, groups = make_ages()
    model = BrainAgeRegressor(Ridge(alpha=1.0), cv=4).fit(X, age, groups=groups)
    out_of_fold = np.empty_like(age)
    for train, test in GroupKFold(4).split(X, age, groups):
        out_of_fold[test] = Ridge(alpha=1.0).fit(X[train], age[train]).predict(X[test])
    expected = scipy_stats.linregress(age, out_of_fold)
    assert model.bias_slope_ == pytest.approx(expected.slope)
    assert model.bias_intercept_ == pytest.approx(expected.intercept)
    assert model.age_mean_ == pytest.approx(age.mean())

    in_sample = BrainAgeRegressor(Ridge(alpha=1.0), cv=None).fit(X, age)
    # in-sample predictions follow age more closely: a smaller correction
    assert in_sample.bias_slope_ > model.bias_slope_


def test_predict_and_correct_apply_the_training_bias():
    X, age, groups = make_ages()
    train, test = groups < 40, groups >= 40
    model = BrainAgeRegressor(LinearRegression()).fit(X[train], age[train], groups=groups[train])
    raw = model.estimator_.predict(X[test])
    a, b = model.bias_intercept_, model.bias_slope_
    np.testing.assert_allclose(model.predict(X[test]), (raw - a) / b)
    np.testing.assert_allclose(model.correct(X[test], age[test]), raw + age[test] - (a + b * age[test]))
    raw_model = BrainAgeRegressor(LinearRegression(), correction=None).fit(X[train], age[train])
    np.testing.assert_allclose(raw_model.predict(X[test]), raw)



def test_correction_removes_most_of_the_age_bias_on_new_subjects():
    X, age, groups = make_ages(100)
    train, test = groups < 60, groups >= 60
    model = BrainAgeRegressor().fit(X[train], age[train], groups=groups[train])
    report = model.report(X[test], age[test])
    uncorrected, corrected = report.loc[["uncorrected", "cole"], "gap_age_r"]
    assert uncorrected < -0.5
    assert abs(corrected) < 0.5 * abs(uncorrected)
    # the de Lange & Cole gap is the Cole gap times the slope: same correlation with age
    gap = model.correct(X[test], age[test]) - age[test]
    assert np.corrcoef(gap, age[test])[0, 1] == pytest.approx(corrected)
    assert report.loc["de lange & cole", "gap_age_r"] == pytest.approx(corrected)


def test_report_labels_each_kind_of_prediction_by_what_it_is():
    # predict() applies Cole's correction by default: the report must not call it uncorrected
    X, age, groups = make_ages(100)
    train, test = groups < 60, groups >= 60
    model = BrainAgeRegressor().fit(X[train], age[train], groups=groups[train])
    report = model.report(X[test], age[test])
    assert list(report.index) == ["training mean", "uncorrected", "cole", "de lange & cole"]
    raw = model.estimator_.predict(X[test])
    expected = brain_age_report(age[test], raw, y_train_mean=model.age_mean_,
                                corrected=model.predict(X[test]))
    assert list(expected.index) == ["training mean", "prediction", "corrected"]
    np.testing.assert_allclose(report.loc["uncorrected"], expected.loc["prediction"])
    np.testing.assert_allclose(report.loc["cole"], expected.loc["corrected"])
    assert report.loc["training mean", "mae"] == pytest.approx(
        np.abs(age[test] - age[train].mean()).mean())


def test_test_fold_ages_do_not_change_the_fitted_correction():
    X, age, groups = make_ages()
    train, test = np.flatnonzero(groups < 40), np.flatnonzero(groups >= 40)
    altered = age.copy()
    altered[test] = np.random.default_rng(1).permutation(age[test]) + 30

    def study(target):
        result = run_study({"brain age": BrainAgeRegressor()}, X, target, groups=groups,
                           cv=[(train, test)], scoring="neg_mean_absolute_error")
        return result.predictions["y_pred"].to_numpy()

    np.testing.assert_array_equal(study(age), study(altered))

    model = BrainAgeRegressor().fit(X[train], age[train], groups=groups[train])
    fitted = (model.bias_intercept_, model.bias_slope_)
    model.correct(X[test], altered[test])
    model.predict(X[test])
    assert (model.bias_intercept_, model.bias_slope_) == fitted
    again = BrainAgeRegressor().fit(X[train], altered[train], groups=groups[train])
    assert (again.bias_intercept_, again.bias_slope_) == fitted


def test_groups_reach_the_inner_splits_through_metadata_routing():
    X, age, groups = make_ages(30)
    with sklearn.config_context(enable_metadata_routing=True):
        model = BrainAgeRegressor(Ridge(), cv=3).set_fit_request(groups=True)
        scores = cross_validate(model, X, age, cv=GroupKFold(3), params={"groups": groups},
                                scoring="neg_mean_absolute_error", return_estimator=True,
                                return_indices=True)
    for fitted, train in zip(scores["estimator"], scores["indices"]["train"]):
        by_hand = BrainAgeRegressor(Ridge(), cv=3).fit(X[train], age[train], groups=groups[train])
        assert fitted.bias_slope_ == pytest.approx(by_hand.bias_slope_)
        without_groups = BrainAgeRegressor(Ridge(), cv=3).fit(X[train], age[train])
        assert fitted.bias_slope_ != pytest.approx(without_groups.bias_slope_)


def test_bad_arguments_and_weak_predictions():
    X, age, groups = make_ages(20)
    with pytest.raises(InputError, match="correction"):
        BrainAgeRegressor(correction="median").fit(X, age)
    with pytest.raises(InputError, match="groups"):
        BrainAgeRegressor().fit(X, age, groups=groups[:-1])
    model = BrainAgeRegressor(LinearRegression()).fit(X, age)
    with pytest.raises(InputError, match="age"):
        model.correct(X, age[:-1])
    with pytest.raises(InputError, match="y_train_mean"):
        brain_age_report(age, age, y_train_mean=[70.0, 71.0])
    noise = np.random.default_rng(0).normal(size=X.shape)
    with pytest.warns(UserWarning, match="slope"):
        BrainAgeRegressor(Ridge(alpha=1e4)).fit(noise, age)


class _RecordingGroupKFold(GroupKFold):
    """GroupKFold that records the subjects on each side of every split it makes."""

    records = []

    def split(self, X, y=None, groups=None):
        for train, test in super().split(X, y, groups):
            type(self).records.append((set(groups[train]), set(groups[test])))
            yield train, test


def test_run_study_gives_brain_age_its_subjects_and_no_inner_split_splits_one():
    # rows ordered by visit: an unshuffled KFold without groups would split subjects
    X, age, groups = make_ages(30)
    by_visit = np.argsort(np.tile(np.arange(3), 30), kind="stable")
    X, age, groups = X[by_visit], age[by_visit], groups[by_visit]
    _RecordingGroupKFold.records = []
    study = run_study({"brain age": BrainAgeRegressor(cv=_RecordingGroupKFold(3))}, X, age,
                      groups=groups, cv=3, scoring="neg_mean_absolute_error")
    # 3 outer folds x 3 inner bias folds, each with its subjects on one side only
    assert len(_RecordingGroupKFold.records) == 9
    assert all(train.isdisjoint(test) for train, test in _RecordingGroupKFold.records)
    assert study.scores["neg_mean_absolute_error"].notna().all()


def test_default_age_model_chooses_its_alpha_on_subject_grouped_folds():
    # features that only identify subjects, ages unrelated to them: leave-one-scan-out
    # alpha selection sees other scans of the subject and shrinks too little
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 4)
    X = rng.normal(size=(40, 30))[groups] + rng.normal(0, 0.05, (160, 30))
    age = rng.uniform(55, 90, 40)[groups]
    grouped = BrainAgeRegressor(cv=None).fit(X, age, groups=groups)
    leaky = BrainAgeRegressor(cv=None).fit(X, age)
    grouped_alpha = grouped.estimator_[-1].alpha_
    assert grouped_alpha == 1e3 and leaky.estimator_[-1].alpha_ < grouped_alpha

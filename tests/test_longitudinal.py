import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae.exceptions import InputError
from ldae.longitudinal import MixedEffectsRegressor, fit_mixed_models

DIAGNOSES = ["CN", "MCI", "AD"]
VISIT_MONTHS = np.array([0, 6, 12, 24, 36, 48])


def make_visits(n_subjects=60, seed=0):
    """A cohort table: 3 to 6 visits per subject, diagnoses balanced, age rising with time."""
    rng = np.random.default_rng(seed)
    n_visits = rng.integers(3, len(VISIT_MONTHS) + 1, n_subjects)
    subject = np.repeat(np.arange(n_subjects), n_visits)
    months = np.concatenate([VISIT_MONTHS[:k] for k in n_visits]).astype(float)
    baseline_age = rng.uniform(55, 90, n_subjects)
    diagnosis = np.array(DIAGNOSES)[np.arange(n_subjects) % 3]
    return pd.DataFrame({
        "subject": [f"sub-{s:03d}" for s in subject],
        "months": months,
        "age": baseline_age[subject] + months / 12,
        "sex": rng.choice(["F", "M"], n_subjects)[subject],
        "diagnosis": pd.Categorical(diagnosis[subject], categories=DIAGNOSES, ordered=True),
    })


def simulate_embeddings(frame, slopes, seed=0, slope_sd=0.15, noise_sd=0.3):
    """One column per row of ``slopes`` (yearly slope per diagnosis), random intercepts/slopes."""
    rng = np.random.default_rng(seed)
    subject_codes, subject = np.unique(frame["subject"], return_inverse=True)
    n_subjects = len(subject_codes)
    years = frame["months"].to_numpy() / 12
    columns = []
    for per_diagnosis in slopes:
        mean_slope = frame["diagnosis"].map(dict(zip(DIAGNOSES, per_diagnosis))).astype(float)
        slope = mean_slope.to_numpy() + rng.normal(0, slope_sd, n_subjects)[subject]
        intercept = rng.normal(0, 1, n_subjects)[subject]
        columns.append(intercept + slope * years + rng.normal(0, noise_sd, len(frame)))
    return np.column_stack(columns)


def test_mixed_models_recover_known_slopes_per_diagnosis_within_their_intervals():
    frame = make_visits()
    # yearly slopes for CN, MCI, AD; the last two dimensions do not differ between diagnoses
    slopes = np.array([[0.0, 0.3, 0.8], [0.2, 0.2, -0.6], [-0.3, 0.1, 0.5],
                       [0.4, 0.4, 0.4], [0.0, 0.0, 0.0]])
    table = fit_mixed_models(simulate_embeddings(frame, slopes), frame, standardize=False)

    truth = {"time": slopes[:, 0],
             "time:diagnosis[T.MCI]": slopes[:, 1] - slopes[:, 0],
             "time:diagnosis[T.AD]": slopes[:, 2] - slopes[:, 0]}
    covered = []
    for term, values in truth.items():
        rows = table[table["term"] == term].set_index("dimension").loc[range(len(slopes))]
        assert np.all(np.abs(rows["estimate"] - values) < 3 * rows["std_error"]), term
        covered.extend((rows["ci_low"] <= values) & (values <= rows["ci_high"]))
    assert np.mean(covered) >= 13 / 15  # 95% intervals: at most two misses out of 15

    ad = table[table["term"] == "time:diagnosis[T.AD]"].set_index("dimension")
    assert ad.loc[[0, 1, 2], "significant"].all()
    assert not ad.loc[[3, 4], "significant"].any()
    assert table["converged"].all()
    assert table.attrs["correction"] == "fdr_bh" and table.attrs["reference"] == "CN"


def test_mixed_models_correct_p_values_across_dimensions_per_term():
    frame = make_visits(45, seed=1)
    embeddings = simulate_embeddings(frame, [[0.0, 0.0, 0.6]] * 2 + [[0.0, 0.0, 0.0]] * 2, seed=1)
    table = fit_mixed_models(embeddings, frame, method="bonferroni")
    for term, rows in table.groupby("term"):
        expected = np.minimum(rows["pvalue"] * len(rows), 1.0)
        np.testing.assert_allclose(rows["pvalue_corrected"], expected, err_msg=term)


def test_mixed_models_use_baseline_covariates_and_time_since_first_visit():
    frame = make_visits(45, seed=2)
    embeddings = simulate_embeddings(frame, [[0.0, 0.2, 0.6], [0.1, 0.1, 0.1]], seed=2)
    table = fit_mixed_models(embeddings, frame)
    assert "baseline_age" in set(table["term"]) and "age" not in set(table["term"])

    # The same study with visit times counted from another origin per subject and
    # the age of the first visit written on every row gives the same model.
    shifted = frame.copy()
    first_age = frame.groupby("subject")["age"].transform("first")
    origin = frame.groupby("subject").ngroup() * 7.0
    shifted = shifted.assign(months=frame["months"] + origin, age=first_age)
    same = fit_mixed_models(embeddings, shifted)
    np.testing.assert_allclose(same["estimate"], table["estimate"], rtol=1e-4, atol=1e-6)
    assert list(same["term"].replace("age", "baseline_age")) == list(table["term"])


def test_mixed_models_fall_back_to_a_random_intercept_and_say_so():
    frame = make_visits(30, seed=3)
    rng = np.random.default_rng(3)
    subject = frame.groupby("subject").ngroup().to_numpy()
    years = frame["months"].to_numpy() / 12
    no_slope_variance = rng.normal(size=30)[subject] + 0.5 * years + rng.normal(0, 0.1, len(frame))
    real_slopes = simulate_embeddings(frame, [[0.0, 0.0, 0.5]], seed=3, slope_sd=0.5)[:, 0]
    with pytest.warns(ConvergenceWarning, match=r"dimensions \[0\]"):
        table = fit_mixed_models(np.column_stack([no_slope_variance, real_slopes]), frame,
                                 standardize=False)
    per_dimension = table.groupby("dimension")[["random_slope", "converged"]].first()
    assert per_dimension["random_slope"].tolist() == [False, True]
    assert per_dimension["converged"].all()
    time_row = table.query("dimension == 0 and term == 'time'").iloc[0]
    assert time_row["ci_low"] <= 0.5 <= time_row["ci_high"]


def test_mixed_models_on_principal_components():
    frame = make_visits(30, seed=4)
    embeddings = simulate_embeddings(frame, [[0.0, 0.0, 0.8]] * 6, seed=4)
    table = fit_mixed_models(pd.DataFrame(embeddings).add_prefix("e"), frame, n_components=2)
    assert list(dict.fromkeys(table["dimension"])) == ["PC1", "PC2"]
    # every dimension shares the AD slope, so the first component carries it
    pc1 = table.query("dimension == 'PC1' and term == 'time:diagnosis[T.AD]'").iloc[0]
    assert pc1["significant"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_components": 0}, "n_components"),
        ({"covariates": ("education",)}, "education"),
        ({"covariates": ("time",)}, "covariates"),
        ({"alpha": 1.5}, "alpha"),
        ({"time_scale": 0}, "time_scale"),
        ({"reference": "FTD"}, "reference"),
        ({"method": "magic"}, "method"),
    ],
)
def test_mixed_models_reject_bad_arguments(kwargs, message):
    frame = make_visits(12, seed=5)
    embeddings = simulate_embeddings(frame, [[0.0, 0.0, 0.5]], seed=5)
    with pytest.raises(InputError, match=message):
        fit_mixed_models(embeddings, frame, **kwargs)
    with pytest.raises(InputError, match="rows"):
        fit_mixed_models(embeddings[:-1], frame)


def make_regression(n_subjects=40, n_visits=6, seed=0):
    """y = X @ beta + subject intercept + subject slope * time; time is also a column of X."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_subjects), n_visits)
    time = np.tile(np.arange(n_visits, dtype=float), n_subjects)
    X = np.column_stack([rng.normal(size=(len(groups), 2)), time])
    y = (X @ [1.0, -0.5, 0.3] + rng.normal(0, 1.0, n_subjects)[groups]
         + rng.normal(0, 0.4, n_subjects)[groups] * time + rng.normal(0, 0.2, len(groups)))
    return X, y, groups, time


def test_regressor_uses_random_effects_of_known_subjects_and_fixed_effects_for_new_ones():
    X, y, groups, time = make_regression()
    early = time < 4  # later visits of the same subjects are held out
    model = MixedEffectsRegressor().fit(X[early], y[early], groups=groups[early], time=time[early])
    assert model.random_slope_ and model.converged_
    np.testing.assert_allclose(model.coef_, [1.0, -0.5, 0.3], atol=0.2)

    late = ~early
    fixed_only = model.predict(X[late])
    with_effects = model.predict(X[late], groups=groups[late], time=time[late])
    error_fixed = np.abs(y[late] - fixed_only).mean()
    error_mixed = np.abs(y[late] - with_effects).mean()
    assert error_mixed < 0.5 * error_fixed

    effects = model.random_effects_.loc[groups[late]].to_numpy()
    np.testing.assert_allclose(with_effects - fixed_only,
                               effects[:, 0] + effects[:, 1] * time[late])
    unseen = groups[late] + 1000
    np.testing.assert_array_equal(model.predict(X[late], groups=unseen, time=time[late]),
                                  fixed_only)


def test_regressor_routes_groups_and_time_through_a_pipeline_and_cross_validate():
    X, y, groups, time = make_regression(30, seed=1)
    with sklearn.config_context(enable_metadata_routing=True):
        regressor = (MixedEffectsRegressor().set_fit_request(groups=True, time=True)
                     .set_predict_request(groups=True, time=True))
        pipeline = make_pipeline(StandardScaler(), regressor)
        cv = GroupKFold(3)
        scores = cross_validate(pipeline, X, y, cv=cv, params={"groups": groups, "time": time},
                                scoring="neg_mean_absolute_error", return_estimator=True)
        for (train, test), fitted, score in zip(cv.split(X, y, groups), scores["estimator"],
                                                scores["test_score"]):
            assert set(fitted[-1].random_effects_.index) == set(groups[train])
            # a scorer passes no metadata: test subjects get the fixed-effect prediction
            scaler = StandardScaler().fit(X[train])
            manual = MixedEffectsRegressor().fit(scaler.transform(X[train]), y[train],
                                                 groups=groups[train], time=time[train])
            fixed = manual.predict(scaler.transform(X[test]))
            assert score == pytest.approx(-np.abs(y[test] - fixed).mean())

        pipeline.fit(X, y, groups=groups, time=time)
        routed = pipeline.predict(X, groups=groups, time=time)
    direct = pipeline[-1].predict(pipeline[0].transform(X), groups=groups, time=time)
    np.testing.assert_array_equal(routed, direct)
    assert not np.allclose(routed, pipeline[-1].predict(pipeline[0].transform(X)))


def test_regressor_refuses_missing_metadata():
    X, y, groups, time = make_regression(10)
    with pytest.raises(InputError, match="groups"):
        MixedEffectsRegressor().fit(X, y)
    model = MixedEffectsRegressor().fit(X, y, groups=groups, time=time)
    with pytest.raises(InputError, match="time"):
        model.predict(X, groups=groups)
    with pytest.raises(InputError, match="groups"):
        model.predict(X, groups=groups[:-1], time=time)
    intercept_only = MixedEffectsRegressor(random_slope=False).fit(X, y, groups=groups, time=time)
    assert not intercept_only.random_slope_
    assert list(intercept_only.random_effects_.columns) == ["intercept"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        intercept_only.predict(X, groups=groups)


def test_mixed_models_keep_the_best_likelihood_of_several_optimisers():
    # pure noise on which statsmodels' default chain (bfgs -> lbfgs -> cg) stops short of
    # the optimum (whether it then reports convergence varies between machines); lme4 and
    # a plain lbfgs fit reach -173.895
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(28)
    data = pd.DataFrame({"group": np.repeat(np.arange(30), 4), "time": np.tile(np.arange(4.0), 30)})
    data["y"] = rng.normal(size=len(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chained = smf.mixedlm("y ~ time", data, groups=data["group"], re_formula="~time").fit(reml=True)
    assert chained.llf == pytest.approx(-174.358, abs=1e-3)
    model = MixedEffectsRegressor().fit(data[["time"]].to_numpy(), data["y"].to_numpy(),
                                        groups=data["group"].to_numpy(), time=data["time"].to_numpy())
    assert model.random_slope_ and model.converged_
    assert model.result_.llf == pytest.approx(-173.895, abs=1e-3)


def test_mixed_model_table_reports_likelihood_and_variance_components():
    frame = make_visits(30)
    table = fit_mixed_models(simulate_embeddings(frame, [(0.0, 0.5, 1.0)]), frame)
    fit = table.iloc[0]
    assert np.isfinite(fit.log_likelihood) and fit.residual_variance > 0
    # the simulation: intercept SD 1, noise SD 0.3 (dimensions are standardised: compare ratios)
    assert fit.intercept_variance / fit.residual_variance == pytest.approx(1 / 0.09, rel=0.4)
    assert (table.groupby("dimension").log_likelihood.nunique() == 1).all()

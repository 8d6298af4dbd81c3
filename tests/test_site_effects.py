"""Site prediction from embeddings, and site harmonisation fitted within training folds."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import InputError
from ldae.site_effects import SiteHarmonizer, site_prediction_score

from _small import GRID, small_cohort


def site_table(n_subjects=40, n_features=4, seed=0):
    """Scans of subjects at 3 sites: site offsets, an age effect, and older subjects at site C."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), 2)
    site = np.array(["A", "B", "C"])[subject % 3]
    age = rng.uniform(60, 80, n_subjects)[subject] + np.tile([0, 2], n_subjects) + 8 * (site == "C")
    offsets = {"A": 0.0, "B": 3.0, "C": -2.0}
    embedding = (np.outer(np.vectorize(offsets.get)(site), np.ones(n_features))
                 + 0.1 * np.outer(age, np.arange(1, n_features + 1))
                 + rng.normal(0, 0.3, (len(subject), n_features)))
    frame = pd.DataFrame(embedding, columns=[f"e{j}" for j in range(n_features)])
    return frame.assign(site=site, age=age, sex=rng.choice(["F", "M"], len(subject))), subject


def test_harmoniser_removes_site_offsets_and_keeps_covariate_effects():
    scans, _ = site_table()
    harmonised = SiteHarmonizer(covariates=["age", "sex"]).fit_transform(scans)
    assert harmonised.shape == (len(scans), 4)
    # with age in the model the site offsets go and the age effect stays
    site_and_age = pd.get_dummies(scans[["site", "age"]], drop_first=True, dtype=float)
    coefficients = LinearRegression().fit(site_and_age, harmonised).coef_
    np.testing.assert_allclose(coefficients[:, 0], 0.1 * np.arange(1, 5), rtol=0.1)  # age
    np.testing.assert_allclose(coefficients[:, 1:], 0, atol=0.3)  # sites B and C
    # without it, site C's older age is taken for a site effect: all site means become
    # equal and the age slope shrinks
    naive = SiteHarmonizer().fit_transform(scans.drop(columns=["age", "sex"]))
    site_means = pd.DataFrame(naive).groupby(scans.site.to_numpy()).mean()
    np.testing.assert_allclose(site_means - naive.mean(axis=0), 0, atol=1e-9)
    naive_slope = LinearRegression().fit(scans[["age"]], naive).coef_.ravel()
    assert (naive_slope < 0.8 * coefficients[:, 0]).all()


def test_harmoniser_fitted_in_training_folds_never_uses_test_scans():
    scans, subject = site_table()
    pipeline = make_pipeline(SiteHarmonizer(covariates=["age", "sex"]), StandardScaler(), LogisticRegression())
    target = scans.site
    cv = list(GroupKFold(n_splits=4).split(scans, groups=subject))
    first = cross_validate(pipeline, scans, target, cv=cv, return_estimator=True)["estimator"]

    train, test = cv[0]
    perturbed = scans.copy()
    perturbed.loc[test, ["e0", "e1", "e2", "e3"]] += np.where(perturbed.site[test] == "B", 50.0, -50.0)[:, None]
    second = cross_validate(pipeline, perturbed, target, cv=cv, return_estimator=True)["estimator"]

    harmonisers = [fold[0] for fold in first], [fold[0] for fold in second]
    pd.testing.assert_frame_equal(harmonisers[0][0].site_effects_, harmonisers[1][0].site_effects_)
    np.testing.assert_array_equal(harmonisers[0][0].transform(scans.loc[train]),
                                  harmonisers[1][0].transform(perturbed.loc[train]))
    # the same scans sat in the training folds of the others, whose site effects moved
    for fold in range(1, len(cv)):
        assert not np.allclose(harmonisers[0][fold].site_effects_, harmonisers[1][fold].site_effects_)


@pytest.fixture(scope="module")
def cohort_features():
    """Synthetic cohort and a representation that carries the site contrast (brain intensity deciles)."""
    cohort = make_synthetic_cohort(30, shape=(24, 28, 24), visit_months=(0, 12), random_state=0)
    volumes = cohort.images.reshape(len(cohort.frame), -1)
    deciles = np.stack([np.quantile(volume[volume > 0.02], np.linspace(0.1, 0.9, 9))
                        for volume in volumes])
    return cohort.frame, deciles


def test_site_prediction_falls_to_chance_after_harmonisation(cohort_features):
    frame, features = cohort_features
    result = site_prediction_score(features, frame.site, frame.subject, cv=3, random_state=0)
    print("\n" + result.table().round(3).to_string(index=False))
    accuracy = result.balanced_accuracy
    assert result.chance == pytest.approx(1 / 3)
    assert accuracy["embedding"] > result.chance + 0.2
    assert abs(accuracy["harmonised embedding"] - result.chance) < 0.1
    assert set(result.study.scores.model) == {"embedding", "harmonised embedding"}
    assert "| harmonised embedding |" in result.to_markdown()
    # folds are subject-grouped
    for train, test in result.study.splits:
        assert set(frame.subject.iloc[train]).isdisjoint(frame.subject.iloc[test])

    with_covariates = site_prediction_score(features, frame.site, frame.subject, cv=3, random_state=0,
                                            covariates=frame[["age", "sex", "diagnosis"]])
    assert with_covariates.balanced_accuracy["harmonised embedding"] < accuracy["embedding"]


def test_transform_output_and_bad_input():
    scans, _ = site_table(n_subjects=9)
    harmoniser = SiteHarmonizer(covariates="age").fit(scans.drop(columns="sex"))
    assert list(harmoniser.get_feature_names_out()) == ["e0", "e1", "e2", "e3"]
    as_frame = harmoniser.set_output(transform="pandas").transform(scans.drop(columns=["age", "sex"]))
    assert list(as_frame.columns) == ["e0", "e1", "e2", "e3"]
    with pytest.raises(InputError, match="sites \\['D'\\] were not seen"):
        harmoniser.transform(scans.assign(site="D"))
    with pytest.raises(InputError, match="DataFrame"):
        SiteHarmonizer().fit(scans[["e0", "e1"]].to_numpy())
    with pytest.raises(InputError, match="lacks the columns \\['scanner'\\]"):
        SiteHarmonizer(site="scanner").fit(scans)
    with pytest.raises(InputError, match="numeric"):
        SiteHarmonizer().fit(scans)  # sex is neither numeric nor declared a covariate
    with pytest.raises(InputError, match="two sites"):
        site_prediction_score(np.zeros((4, 2)), ["A"] * 4, [0, 1, 2, 3])


def test_harmoniser_after_an_embedding_step_gets_the_site_by_metadata_routing():
    from sklearn import config_context
    from sklearn.decomposition import PCA

    scans, subject = site_table()
    embedding = scans[["e0", "e1", "e2", "e3"]].to_numpy()
    train, test = subject < 30, subject >= 30
    pipeline = make_pipeline(PCA(3), SiteHarmonizer(covariates=["age"]))
    with config_context(enable_metadata_routing=True):
        pipeline.fit(embedding[train], frame=scans[train])
        harmonised = pipeline.transform(embedding[test], frame=scans[test])
        # the same as harmonising the PCA scores with site and age as columns
        scores = pd.DataFrame(pipeline[0].transform(embedding), columns=["x0", "x1", "x2"])
        direct = SiteHarmonizer(covariates=["age"]).fit(
            scores[train].assign(site=scans.site[train].to_numpy(), age=scans.age[train].to_numpy()))
        np.testing.assert_allclose(harmonised, direct.transform(
            scores[test].assign(site=scans.site[test].to_numpy())))
        assert pipeline[1].n_features_in_ == 3 and not hasattr(pipeline[1], "feature_names_in_")
        with pytest.raises(InputError, match="frame="):
            pipeline.transform(embedding[test])
        with pytest.raises(InputError, match=r"frame lacks the columns \['age'\]"):
            pipeline.fit(embedding[train], frame=scans[train].drop(columns="age"))


def test_run_study_routes_the_scans_table_to_a_harmoniser_after_ldae():
    from ldae import LDAEEncoder
    from ldae.model_selection import run_study

    cohort = small_cohort(18, random_state=1)
    frame = cohort.frame
    is_ad = (frame.diagnosis != "CN").to_numpy().astype(int)
    pipeline = make_pipeline(
        LDAEEncoder(preset="tiny", image_shape=GRID, ae_epochs=1, diffusion_epochs=1,
                    representation_epochs=1, random_state=0),
        SiteHarmonizer(covariates=["age"]), StandardScaler(), LogisticRegression())
    study = run_study({"harmonised LDAE": pipeline}, cohort.images, is_ad,
                      groups=frame.subject, cv=3, scoring="roc_auc", params={"frame": frame})
    assert len(study.scores) == 3 and study.scores.roc_auc.between(0, 1).all()
    # without the table the harmoniser cannot find the sites
    flat = make_pipeline(FunctionTransformer(lambda images: images.reshape(len(images), -1)[:, :50]),
                         SiteHarmonizer(), LogisticRegression())
    with pytest.raises(InputError, match="frame="):
        run_study({"harmonised voxels": flat}, cohort.images, is_ad, groups=frame.subject,
                  cv=2, scoring="roc_auc")
    with pytest.raises(InputError, match=r"no model requests \['sites'\]"):
        run_study({"harmonised voxels": flat}, cohort.images, is_ad, groups=frame.subject,
                  cv=2, scoring="roc_auc", params={"frame": frame, "sites": frame.site})

import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.datasets import make_classification
from sklearn.dummy import DummyClassifier
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.model_selection import GroupKFold, permutation_test_score
from sklearn.neighbors import KNeighborsClassifier
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from ldae import stats
from ldae.exceptions import InputError
from ldae.model_selection import RepeatedStratifiedGroupKFold, run_study


def brute_force_delong(y, scores_a, scores_b):
    """AUCs and their covariance from the definition: pairwise comparisons, ties = 1/2."""
    positive, negative = y == 1, y == 0
    m, n = positive.sum(), negative.sum()
    aucs, v10s, v01s = [], [], []
    for scores in (scores_a, scores_b):
        x, z = scores[positive][:, None], scores[negative][None, :]
        psi = (x > z) + 0.5 * (x == z)
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    covariance = np.cov(np.array(v10s)) / m + np.cov(np.array(v01s)) / n
    z = (aucs[0] - aucs[1]) / np.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    return aucs, covariance, z


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_the_definition_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    scores_a = rng.integers(0, 6, 60) + y  # few distinct values: many ties
    scores_b = np.round(scores_a + rng.normal(0, 1.5, 60))
    (auc_a, auc_b), covariance, z = brute_force_delong(y, scores_a, scores_b)

    result = stats.delong_test(y, scores_a, scores_b)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-10)
    assert result.auc_b == pytest.approx(auc_b, abs=1e-10)
    assert result.auc_a == pytest.approx(roc_auc_score(y, scores_a), abs=1e-10)
    np.testing.assert_allclose(result.covariance, covariance, atol=1e-10)
    assert result.statistic == pytest.approx(z, abs=1e-10)
    assert 0 <= result.pvalue <= 1
    assert result.pvalue == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), abs=1e-10)


def test_delong_intervals_and_edge_cases():
    rng = np.random.default_rng(0)
    y = np.repeat(["CN", "AD"], 40)  # positive class: the larger label, "CN"
    scores = rng.normal(size=80) + (y == "CN")
    result = stats.delong_test(y, scores, -scores)
    assert result.auc_a == pytest.approx(1 - result.auc_b)
    assert result.ci_a[0] < result.auc_a < result.ci_a[1]
    assert result.pvalue < 0.01

    same = stats.delong_test(y, scores, scores)
    assert (same.statistic, same.pvalue) == (0.0, 1.0)
    with pytest.raises(InputError, match="two classes"):
        stats.delong_test(np.zeros(10), scores[:10], scores[:10])
    with pytest.raises(InputError, match="scores_b"):
        stats.delong_test(y, scores, scores[:-1])


def test_corrected_ttest_equals_the_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(0.80, 0.03, 20)
    b = rng.normal(0.78, 0.03, 20)
    d = a - b
    t = d.mean() / np.sqrt((1 / 20 + 30 / 120) * d.var(ddof=1))

    result = stats.corrected_ttest(a, b, n_train=120, n_test=30)
    assert result.statistic == pytest.approx(t)
    assert result.df == 19
    assert result.pvalue == pytest.approx(2 * scipy_stats.t.sf(abs(t), 19))
    assert result.ci[0] < result.mean_difference < result.ci[1]
    # the correction makes the test more conservative than the naive paired t-test
    assert result.pvalue > scipy_stats.ttest_rel(a, b).pvalue

    swapped = stats.corrected_ttest(b, a, n_train=120, n_test=30)
    assert (swapped.statistic, swapped.pvalue) == pytest.approx((-t, result.pvalue))


def test_corrected_ttest_uses_the_mean_ratio_of_per_fold_sizes():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=6), rng.normal(size=6)
    n_train = np.array([100, 90, 110, 100, 95, 105])
    n_test = 200 - n_train
    ratio = np.mean(n_test / n_train)
    d = a - b
    t = d.mean() / np.sqrt((1 / 6 + ratio) * d.var(ddof=1))
    assert stats.corrected_ttest(a, b, n_train=n_train, n_test=n_test).statistic == pytest.approx(t)


def test_corrected_ttest_rejects_bad_input():
    with pytest.raises(InputError, match="scores_b"):
        stats.corrected_ttest([1, 2, 3], [1, 2], n_train=10, n_test=5)
    with pytest.raises(InputError, match="scores_a"):
        stats.corrected_ttest([1, np.nan], [1, 2], n_train=10, n_test=5)
    with pytest.raises(InputError, match="n_train"):
        stats.corrected_ttest([1, 2], [1, 3], n_train=0, n_test=5)


def table_to_predictions(table):
    """Labels and two prediction vectors whose correctness table is ``table``."""
    y, pred_a, pred_b = [], [], []
    for a_right, b_right, count in [(1, 1, table[0][0]), (1, 0, table[0][1]),
                                     (0, 1, table[1][0]), (0, 0, table[1][1])]:
        y += [1] * count
        pred_a += [1 if a_right else 0] * count
        pred_b += [1 if b_right else 0] * count
    return np.array(y), np.array(pred_a), np.array(pred_b)


def test_mcnemar_is_exact_for_few_discordant_pairs():
    table = [[10, 3], [12, 5]]
    result = stats.mcnemar_test(*table_to_predictions(table))
    expected = mcnemar(np.array(table), exact=True)
    assert result.exact and result.n_discordant == 15
    assert (result.statistic, result.pvalue) == pytest.approx((expected.statistic, expected.pvalue))
    assert result.pvalue == pytest.approx(scipy_stats.binomtest(3, 15).pvalue)
    np.testing.assert_array_equal(result.table, table)


def test_mcnemar_uses_corrected_chi_square_for_many_discordant_pairs():
    table = [[50, 30], [10, 20]]
    result = stats.mcnemar_test(*table_to_predictions(table))
    assert not result.exact
    assert result.statistic == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)
    assert result.pvalue == pytest.approx(scipy_stats.chi2.sf(result.statistic, 1))
    forced = stats.mcnemar_test(*table_to_predictions(table), exact=True)
    assert forced.pvalue == pytest.approx(mcnemar(np.array(table), exact=True).pvalue)


@pytest.mark.parametrize("exact", [True, False])
def test_mcnemar_without_discordant_pairs_finds_no_difference(exact):
    # two classifiers right and wrong on the same scans: p = 1, never "p = 0, statistic inf"
    result = stats.mcnemar_test(*table_to_predictions([[40, 0], [0, 10]]), exact=exact)
    assert (result.statistic, result.pvalue, result.n_discordant) == (0.0, 1.0, 0)


def subject_cohort(seed, n_subjects=24, effect=0.0):
    """Scans share their subject's features; y is constant per subject."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_subjects), rng.integers(1, 4, n_subjects))
    subject_y = rng.normal(size=n_subjects)
    subject_X = rng.normal(size=(n_subjects, 2))
    subject_X[:, 0] += effect * subject_y
    X = subject_X[groups] + rng.normal(0, 0.3, (len(groups), 2))
    return X, subject_y[groups], groups


def test_subject_permutation_pvalues_are_roughly_uniform_under_the_null():
    pvalues = []
    for seed in range(40):
        X, y, groups = subject_cohort(seed)
        result = stats.subject_permutation_test(
            Ridge(), X, y, groups=groups, cv=GroupKFold(3), scoring="r2",
            n_permutations=19, random_state=seed,
        )
        pvalues.append(result.pvalue)
    pvalues = np.array(pvalues)
    assert 0 <= np.mean(pvalues <= 0.05) <= 0.15
    assert 0.35 < pvalues.mean() < 0.65


def test_subject_permutation_detects_a_clear_effect_where_sklearn_cannot():
    X, y, groups = subject_cohort(0, n_subjects=30, effect=3.0)
    labels = (y > 0).astype(int)
    cv = GroupKFold(3)
    ours = stats.subject_permutation_test(
        LinearDiscriminantAnalysis(), X, labels, groups=groups, cv=cv, scoring="roc_auc",
        n_permutations=19, random_state=0,
    )
    assert ours.pvalue == pytest.approx(1 / 20)
    assert ours.statistic > 0.75
    assert ours.null_distribution.shape == (19,)
    stratified = stats.subject_permutation_test(
        LinearDiscriminantAnalysis(), X, labels, groups=groups, cv=3, scoring="roc_auc",
        n_permutations=9, random_state=0,
    )
    assert stratified.pvalue == pytest.approx(1 / 10)
    # sklearn permutes within subjects: a no-op for subject-constant labels
    _, _, sklearn_pvalue = permutation_test_score(
        LinearDiscriminantAnalysis(), X, labels, groups=groups, cv=cv, scoring="roc_auc",
        n_permutations=19, random_state=0,
    )
    assert sklearn_pvalue == 1.0


def test_permutations_move_labels_between_subjects():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), [1, 2, 3] * 4)
    constant = np.repeat(np.arange(12), [1, 2, 3] * 4)
    sources = stats._between_subject_permutations(constant, groups, 20, rng)
    for source in sources:
        permuted = constant[source]
        assert all(len(set(permuted[groups == s])) == 1 for s in range(12))
        assert sorted(permuted[np.unique(groups, return_index=True)[1]]) == list(range(12))
    assert len({tuple(source) for source in sources}) > 1

    # labels that change between visits move as blocks among subjects with as many scans
    varying = np.arange(len(groups))
    blocks = {tuple(varying[groups == s]) for s in range(12)}
    for source in stats._between_subject_permutations(varying, groups, 20, rng):
        permuted = varying[source]
        assert {tuple(permuted[groups == s]) for s in range(12)} == blocks


@pytest.mark.parametrize("labels", [(0, 1), (False, True), ("AD", "CN")])
def test_rank_roc_auc_is_roc_auc_score_and_gives_the_same_bootstrap_interval(labels):
    rng = np.random.default_rng(0)
    y = np.array(labels)[rng.integers(0, 2, 90)]
    score = np.round(rng.random(90) + 0.3 * (y == labels[1]), 1)  # ties included
    assert stats.rank_roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    groups = np.arange(90) // 3
    fast, reference = (stats.bootstrap_ci(y, score, metric, groups=groups, n_boot=200,
                                          random_state=0)
                       for metric in (stats.rank_roc_auc, roc_auc_score))
    np.testing.assert_allclose([fast.low, fast.high], [reference.low, reference.high], atol=1e-12)
    with pytest.raises(ValueError, match="two classes"):
        stats.rank_roc_auc(y[y == labels[0]], score[y == labels[0]])


def test_bootstrap_ci_resamples_subjects_not_scans():
    rng = np.random.default_rng(0)
    n_other = 29
    groups = np.concatenate([np.zeros(60, int), np.arange(1, n_other + 1)])
    y_true = np.zeros(len(groups))
    # one subject with 60 scans and a large error: the scans are not independent
    y_pred = np.concatenate([np.full(60, 5.0) + rng.normal(0, 0.1, 60), rng.normal(0, 1, n_other)])

    subject_level = stats.bootstrap_ci(
        y_true, y_pred, mean_absolute_error, groups=groups, n_boot=500, random_state=0
    )
    scan_level = stats.bootstrap_ci(
        y_true, y_pred, mean_absolute_error, groups=np.arange(len(groups)), n_boot=500,
        random_state=0,
    )
    assert subject_level.estimate == pytest.approx(mean_absolute_error(y_true, y_pred))
    assert subject_level.low <= subject_level.estimate <= subject_level.high
    assert subject_level.confidence_level == 0.95
    assert subject_level.distribution.shape == (500,)
    assert subject_level.high - subject_level.low > 2 * (scan_level.high - scan_level.low)

    again = stats.bootstrap_ci(
        y_true, y_pred, mean_absolute_error, groups=groups, n_boot=500, random_state=0
    )
    assert (again.low, again.high) == (subject_level.low, subject_level.high)
    with pytest.raises(InputError, match="groups"):
        stats.bootstrap_ci(y_true, y_pred, mean_absolute_error, groups=groups[:-1])


def test_bootstrap_ci_leaves_out_and_counts_resamples_where_the_metric_is_undefined():
    # 8 subjects: many resamples draw a single class, where ROC-AUC is undefined
    groups = np.repeat(np.arange(8), 2)
    y_true = np.repeat([0, 1, 0, 1, 0, 1, 0, 1], 2)
    scores = y_true + np.random.default_rng(0).normal(0, 0.8, 16)
    with pytest.warns(UserWarning, match=r"undefined on \d+ of 200 resamples"):
        interval = stats.bootstrap_ci(y_true, scores, roc_auc_score, groups=groups, n_boot=200,
                                      random_state=0)
    assert 0 < interval.n_undefined < 100
    assert len(interval.distribution) == 200 - interval.n_undefined
    assert np.isfinite([interval.low, interval.high]).all()
    assert 0 <= interval.low <= interval.estimate <= interval.high <= 1
    with pytest.raises(InputError, match="undefined on these data"):
        stats.bootstrap_ci(np.zeros(16), scores, roc_auc_score, groups=groups)


@pytest.fixture(scope="module")
def three_model_study():
    subject_X, subject_y = make_classification(36, 4, random_state=0)
    groups = np.repeat(np.arange(36), 2)
    X = subject_X[groups] + np.random.default_rng(0).normal(0, 0.3, (72, 4))
    models = {
        "lda": LinearDiscriminantAnalysis(),
        "knn": KNeighborsClassifier(5),
        "dummy": DummyClassifier(),
    }
    cv = RepeatedStratifiedGroupKFold(3, n_repeats=3, random_state=0)
    return run_study(models, X, subject_y[groups], groups=groups, cv=cv,
                     scoring=["roc_auc", "accuracy"])


def test_compare_models_runs_corrected_ttests_on_every_pair(three_model_study):
    table = stats.compare_models(three_model_study, metric="roc_auc")
    assert table.shape == (3, 11)
    assert list(zip(table["model_a"], table["model_b"])) == [
        ("lda", "knn"), ("lda", "dummy"), ("knn", "dummy")
    ]
    assert (table["pvalue_corrected"] >= table["pvalue"]).all()
    assert (table["correction"] == "holm").all()
    np.testing.assert_allclose(
        table["pvalue_corrected"], multipletests(table["pvalue"], method="holm")[1]
    )

    scores = three_model_study.scores
    a = scores.query("model == 'lda'")["roc_auc"].to_numpy()
    b = scores.query("model == 'dummy'")["roc_auc"].to_numpy()
    sizes = scores.query("model == 'dummy'")
    expected = stats.corrected_ttest(a, b, n_train=sizes["n_train"], n_test=sizes["n_test"])
    row = table.iloc[1]
    assert row["statistic"] == pytest.approx(expected.statistic)
    assert row["mean_difference"] == pytest.approx((a - b).mean())
    assert row["df"] == 8
    # the interval corrected_ttest computes is kept
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(expected.ci)


def test_compare_models_uses_the_named_correction(three_model_study):
    holm = stats.compare_models(three_model_study, metric="accuracy")
    bonferroni = stats.compare_models(three_model_study, metric="accuracy", method="bonferroni")
    np.testing.assert_allclose(
        bonferroni["pvalue_corrected"], np.minimum(3 * bonferroni["pvalue"], 1)
    )
    assert (bonferroni["pvalue_corrected"] >= holm["pvalue_corrected"] - 1e-12).all()
    with pytest.raises(InputError, match="method"):
        stats.compare_models(three_model_study, metric="accuracy", method="no-such-method")
    with pytest.raises(InputError, match="metric"):
        stats.compare_models(three_model_study, metric="r2")


def test_test_result_exposes_details_and_pickles():
    result = stats.corrected_ttest([1.0, 2.0, 4.0], [0.0, 1.0, 1.0], n_train=8, n_test=2)
    assert result.df == 2 and "df" in dir(result)
    restored = pickle.loads(pickle.dumps(result))
    assert restored.df == 2 and restored.statistic == result.statistic
    with pytest.raises(AttributeError):
        result.auc_a


def test_importing_stats_does_not_import_torch():
    code = "import sys, ldae.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_submodules_are_reachable_after_a_bare_import():
    code = ("import sys, ldae; assert ldae.stats.delong_test and ldae.probes.probe_embeddings; "
            "assert 'torch' not in sys.modules; assert 'stats' in dir(ldae); "
            "assert all(hasattr(ldae, name) for name in ldae.SUBMODULES)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mcnemar_reports_the_accuracy_difference_with_its_interval():
    # a right and b wrong on 20 scans, the reverse on 5, of 100
    table = [[60, 20], [5, 15]]
    result = stats.mcnemar_test(*table_to_predictions(table))
    assert result.accuracy_difference == pytest.approx(0.15)
    # Wald interval for paired proportions: sqrt(b + c - (b - c)^2 / n) / n
    margin = 1.959964 * np.sqrt(25 - 15**2 / 100) / 100
    assert result.ci == pytest.approx((0.15 - margin, 0.15 + margin), abs=1e-6)


def test_results_have_a_compact_repr_and_a_one_row_frame():
    X, y, groups = subject_cohort(0, n_subjects=12, effect=3.0)
    result = stats.subject_permutation_test(Ridge(), X, y, groups=groups, cv=GroupKFold(3),
                                            scoring="r2", n_permutations=99, random_state=0)
    text = repr(result)
    assert text.startswith("TestResult(subject-level permutation test") or "pvalue=" in text
    assert len(text) < 300 and "array" not in text  # no null distribution dumped
    frame = result.to_frame()
    assert frame.shape[0] == 1 and frame.loc[0, "pvalue"] == result.pvalue
    assert not any(isinstance(value, np.ndarray) for value in frame.iloc[0])
    mcnemar = stats.mcnemar_test(*table_to_predictions([[60, 20], [5, 15]])).to_frame()
    assert {"accuracy_difference", "ci_low", "ci_high", "n_discordant"} <= set(mcnemar.columns)
    assert "table" not in mcnemar.columns

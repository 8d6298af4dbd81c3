"""Statistical tests for comparing models on subject-level data.

Subjects, not scans, are the unit: resampling and permutation schemes here move
whole subjects. Tests that assume independent observations (DeLong, McNemar) are
valid only on one scan per subject, or on predictions aggregated per subject.

This module does not import torch; it only needs numpy, scipy, pandas,
statsmodels and scikit-learn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations
from numbers import Integral
from typing import Any, Mapping

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import stats as scipy_stats
from sklearn.base import clone
from sklearn.metrics import check_scoring
from sklearn.utils import _safe_indexing, check_random_state
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from .exceptions import InputError
from .model_selection import _check_lengths, _check_metric, _group_splits

__all__ = [
    "TestResult",
    "ConfidenceInterval",
    "corrected_ttest",
    "delong_test",
    "mcnemar_test",
    "subject_permutation_test",
    "bootstrap_ci",
    "rank_roc_auc",
    "compare_models",
]


@dataclass(frozen=True)
class TestResult:
    """Outcome of a statistical test.

    Parameters
    ----------
    statistic : float
        The test statistic (t, z, McNemar's statistic or the observed score).
    pvalue : float
        The p-value, a probability in [0, 1]; two-sided except for the
        permutation test, whose alternative is a better-than-chance score.
    method : str
        Name of the test.
    details : mapping
        Test-specific values (degrees of freedom, AUCs, confidence intervals, the
        null distribution, ...). Each is also readable as an attribute, e.g.
        ``result.df`` or ``result.auc_a``.
    """

    __test__ = False  # not a pytest test class despite its name

    statistic: float
    pvalue: float
    method: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name):
        # Only reached when normal lookup fails; __dict__ is read directly so that
        # unpickling (which probes attributes before details exists) cannot recurse.
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        return [*super().__dir__(), *self.details]

    def __repr__(self):
        shown = ", ".join(f"{key}={_short(value)}" for key, value in self.details.items()
                          if _short(value) is not None)
        return (f"TestResult({self.method}: statistic={self.statistic:.4g}, "
                f"pvalue={self.pvalue:.4g}" + (f", {shown})" if shown else ")"))

    def to_frame(self):
        """One row: method, statistic, p-value and the scalar details (intervals split
        into ``_low``/``_high``); arrays such as null distributions are left out."""
        row = {"method": self.method, "statistic": self.statistic, "pvalue": self.pvalue}
        for key, value in self.details.items():
            if isinstance(value, tuple) and len(value) == 2:
                row[f"{key}_low"], row[f"{key}_high"] = map(float, value)
            elif np.ndim(value) == 0:
                row[key] = value.item() if isinstance(value, np.generic) else value
        return pd.DataFrame([row])


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with a bootstrap percentile confidence interval.

    Parameters
    ----------
    estimate : float
        The metric on the full data.
    low, high : float
        Bounds of the interval.
    confidence_level : float
        ``1 - alpha``.
    distribution : ndarray
        The bootstrap replicates of the metric (those where it is defined).
    n_undefined : int, default=0
        Replicates left out because the metric was undefined on them (e.g. a
        ROC-AUC on a resample of a single class).
    """

    estimate: float
    low: float
    high: float
    confidence_level: float
    distribution: np.ndarray = field(repr=False)
    n_undefined: int = 0


def corrected_ttest(scores_a, scores_b, *, n_train, n_test, alpha=0.05):
    """Corrected resampled t-test for paired cross-validation scores.

    Scores from overlapping training sets are correlated, which makes the plain
    paired t-test far too liberal. Nadeau & Bengio (2003) inflate the variance by
    the test/train size ratio; Bouckaert & Frank (2004) extend it to r repeats of
    k folds: with ``d = a - b`` over the J = k·r splits,
    ``t = mean(d) / sqrt((1/J + n_test/n_train) · var(d, ddof=1))``, ``df = J - 1``.

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_splits,)
        Scores of two models on the same splits, in the same order.
    n_train, n_test : int or array-like of shape (n_splits,)
        Training and test set sizes; with per-split sizes, the mean of the per-split
        ratios ``n_test / n_train`` is used.
    alpha : float, default=0.05
        One minus the confidence level of the interval on the mean difference.

    Returns
    -------
    result : TestResult
        ``statistic`` (t), two-sided ``pvalue``, and details ``df``,
        ``mean_difference``, ``ci`` (of the mean difference), ``n_scores`` and
        ``test_train_ratio``.
    """
    a = _as_finite_vector("scores_a", scores_a)
    b = _as_finite_vector("scores_b", scores_b)
    if len(a) != len(b):
        raise InputError(f"scores_b: has {len(b)} scores but scores_a has {len(a)}")
    if len(a) < 2:
        raise InputError("scores_a: at least two paired scores are needed")
    _check_alpha(alpha)
    train_sizes = np.broadcast_to(_as_finite_vector("n_train", n_train), a.shape)
    test_sizes = np.broadcast_to(_as_finite_vector("n_test", n_test), a.shape)
    if np.any(train_sizes <= 0) or np.any(test_sizes <= 0):
        raise InputError("n_train, n_test: set sizes must be positive")
    ratio = float(np.mean(test_sizes / train_sizes))

    differences = a - b
    n_scores = len(differences)
    mean = float(differences.mean())
    standard_error = np.sqrt((1.0 / n_scores + ratio) * differences.var(ddof=1))
    df = n_scores - 1
    statistic, pvalue = _two_sided(mean, standard_error, scipy_stats.t(df))
    margin = scipy_stats.t.ppf(1 - alpha / 2, df) * standard_error
    return TestResult(
        statistic,
        pvalue,
        "corrected resampled t-test (Nadeau & Bengio 2003)",
        {
            "df": df,
            "mean_difference": mean,
            "ci": (mean - margin, mean + margin),
            "n_scores": n_scores,
            "test_train_ratio": ratio,
        },
    )


def delong_test(y_true, scores_a, scores_b, *, alpha=0.05):
    """DeLong's test for two correlated ROC AUCs on the same samples.

    Uses the fast algorithm of Sun & Xu (2014): the structural components of the
    Mann–Whitney statistic come from mid-ranks (ties count one half), in
    O(n log n). The positive class is the larger of the two labels, as in
    :func:`sklearn.metrics.roc_auc_score`. Samples must be independent: use one
    scan per subject (or per-subject mean scores).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels.
    scores_a, scores_b : array-like of shape (n_samples,)
        Scores of the two models (higher means more likely positive).
    alpha : float, default=0.05
        One minus the confidence level of the AUC intervals.

    Returns
    -------
    result : TestResult
        ``statistic`` (z of AUC_a − AUC_b), two-sided ``pvalue`` (a probability, not
        its logarithm) and details ``auc_a``, ``auc_b``, ``ci_a``, ``ci_b``,
        ``difference``, ``ci_difference``, ``covariance`` (2×2 of the two AUCs),
        ``n_positive`` and ``n_negative``.
    """
    y = np.asarray(y_true)
    _check_lengths(y, scores_a=scores_a, scores_b=scores_b)
    scores = np.vstack(
        [_as_finite_vector("scores_a", scores_a), _as_finite_vector("scores_b", scores_b)]
    )
    _check_alpha(alpha)
    classes = np.unique(y)
    if len(classes) != 2:
        raise InputError(f"y_true: expected two classes, got {len(classes)}: {classes[:5]}")
    is_positive = y == classes[1]
    positive, negative = scores[:, is_positive], scores[:, ~is_positive]
    m, n = positive.shape[1], negative.shape[1]
    if min(m, n) < 2:
        raise InputError("y_true: each class needs at least two samples")

    ranks = scipy_stats.rankdata(np.hstack([positive, negative]), axis=1)
    # Share of negatives below each positive, and of positives above each negative.
    v10 = (ranks[:, :m] - scipy_stats.rankdata(positive, axis=1)) / n
    v01 = 1.0 - (ranks[:, m:] - scipy_stats.rankdata(negative, axis=1)) / m
    auc = v10.mean(axis=1)
    covariance = np.cov(v10) / m + np.cov(v01) / n

    difference = float(auc[0] - auc[1])
    standard_error = np.sqrt(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0))
    statistic, pvalue = _two_sided(difference, standard_error, scipy_stats.norm)
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    margin = z * standard_error
    auc_errors = np.sqrt(np.diag(covariance))
    return TestResult(
        statistic,
        pvalue,
        "DeLong test (Sun & Xu 2014)",
        {
            "auc_a": float(auc[0]),
            "auc_b": float(auc[1]),
            "ci_a": _clipped_interval(auc[0], z * auc_errors[0]),
            "ci_b": _clipped_interval(auc[1], z * auc_errors[1]),
            "difference": difference,
            "ci_difference": (float(difference - margin), float(difference + margin)),
            "covariance": covariance,
            "n_positive": m,
            "n_negative": n,
        },
    )


def _short(value):
    """A detail as the repr shows it: scalars and pairs, never whole arrays."""
    if isinstance(value, tuple) and len(value) == 2 and all(np.ndim(v) == 0 for v in value):
        return f"({float(value[0]):.4g}, {float(value[1]):.4g})"
    if isinstance(value, (bool, np.bool_, str)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    if np.ndim(value) == 0 and isinstance(value, (int, float, np.number)):
        return f"{float(value):.4g}"
    return None


def mcnemar_test(y_true, pred_a, pred_b, *, exact=None, alpha=0.05):
    """McNemar's test for two classifiers' paired correctness.

    Wraps :func:`statsmodels.stats.contingency_tables.mcnemar` on the 2×2 table of
    (a correct, b correct). Pairs must be independent: use one scan per subject.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    pred_a, pred_b : array-like of shape (n_samples,)
        Predicted labels of the two classifiers.
    exact : bool, optional
        Exact binomial test (True) or chi-square with continuity correction
        (False). By default exact when fewer than 25 pairs are discordant, where
        the chi-square approximation is poor.
    alpha : float, default=0.05
        One minus the confidence level of the interval on the accuracy difference.

    Returns
    -------
    result : TestResult
        ``statistic``, ``pvalue`` (1 with statistic 0 when no pair is discordant,
        whichever test) and details ``table`` (rows: a correct / wrong,
        columns: b correct / wrong), ``exact``, ``n_discordant``, and the effect
        size: ``accuracy_difference`` (accuracy of a − accuracy of b) with its
        Wald interval for paired proportions ``ci``.
    """
    y = np.asarray(y_true)
    _check_lengths(y, pred_a=pred_a, pred_b=pred_b)
    correct_a = np.asarray(pred_a) == y
    correct_b = np.asarray(pred_b) == y
    table = np.array(
        [
            [np.sum(correct_a & correct_b), np.sum(correct_a & ~correct_b)],
            [np.sum(~correct_a & correct_b), np.sum(~correct_a & ~correct_b)],
        ]
    )
    n_discordant = int(table[0, 1] + table[1, 0])
    if exact is None:
        exact = n_discordant < 25
    if n_discordant == 0:
        # identical correctness: no evidence of a difference (the chi-square
        # statistic would be 1/0, "infinitely significant")
        statistic, pvalue = 0.0, 1.0
    else:
        outcome = mcnemar(table, exact=exact, correction=True)
        statistic, pvalue = float(outcome.statistic), float(outcome.pvalue)
    return TestResult(
        statistic,
        pvalue,
        "McNemar test (exact binomial)" if exact else "McNemar test (chi-square, corrected)",
        {"table": table, "exact": bool(exact), "n_discordant": n_discordant,
         **_paired_accuracy_difference(table, alpha)},
    )


def _paired_accuracy_difference(table, alpha):
    """Accuracy of a − accuracy of b, with the Wald interval for paired proportions."""
    _check_alpha(alpha)
    n, only_a, only_b = table.sum(), table[0, 1], table[1, 0]
    difference = (only_a - only_b) / n
    standard_error = np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    margin = scipy_stats.norm.ppf(1 - alpha / 2) * standard_error
    return {"accuracy_difference": float(difference),
            "ci": (float(difference - margin), float(difference + margin))}


def subject_permutation_test(
    estimator,
    X,
    y,
    *,
    groups,
    cv,
    scoring=None,
    n_permutations=1000,
    n_jobs=None,
    random_state=None,
):
    """Permutation test of a cross-validated score, permuting labels between subjects.

    Each permutation reassigns labels between subjects, runs the same grouped
    cross-validation and records the mean score. A label constant within each
    subject is shuffled among subjects and broadcast to their scans. A label that
    varies within subjects is moved as a whole block (its rows in data order)
    between subjects with the same number of scans, the exchangeability blocks of
    Winkler et al. (2015).

    :func:`sklearn.model_selection.permutation_test_score` with ``groups`` permutes
    labels *within* each group instead: when the label is constant per subject,
    every permutation reproduces the original labels and the p-value is 1 whatever
    the data.

    Parameters
    ----------
    estimator : estimator
        Unfitted scikit-learn estimator or pipeline.
    X : array-like, list or pandas object of length n_samples
        Inputs.
    y : array-like of shape (n_samples,)
        Target.
    groups : array-like of shape (n_samples,)
        Subject identifier of every scan.
    cv : int, cross-validation splitter or iterable of (train, test)
        Group-aware splitting, as in :func:`ldae.model_selection.run_study` (an int
        is a stratified subject-level K-fold); a splitter is called again for each
        permutation, with the permuted labels.
    scoring : str or callable, optional
        A single metric (greater is better); the estimator's ``score`` by default.
    n_permutations : int, default=1000
        Number of permutations.
    n_jobs : int, optional
        Number of joblib workers over permutations.
    random_state : int, RandomState instance or None, default=None
        Seed of the permutations.

    Returns
    -------
    result : TestResult
        ``statistic`` (the observed mean score), ``pvalue`` =
        (1 + #{null >= observed}) / (1 + n_permutations), where an undefined (NaN)
        permuted score counts as extreme, and details
        ``null_distribution`` and ``n_permutations``.
    """
    n_samples = _check_lengths(X, y=y, groups=groups)
    if groups is None:
        raise InputError("groups: a subject identifier per scan is required")
    if not isinstance(n_permutations, Integral) or n_permutations < 1:
        raise InputError(f"n_permutations: expected a positive integer, got {n_permutations!r}")
    groups = np.asarray(groups)
    y = np.asarray(y)
    try:
        scorer = check_scoring(estimator, scoring=scoring)
    except (ValueError, TypeError) as error:
        raise InputError(f"scoring: {error}") from error
    rng = check_random_state(random_state)
    sources = _between_subject_permutations(y, groups, n_permutations, rng)
    if np.array_equal(sources, np.broadcast_to(np.arange(n_samples), sources.shape)):
        raise InputError("groups: no two subjects can exchange labels")

    if not isinstance(cv, Integral) and not hasattr(cv, "split"):
        cv = list(cv)  # a generator of splits must serve every permutation
    observed = _cross_validated_score(estimator, X, y, groups, cv, scorer)
    if np.isnan(observed):
        raise InputError("scoring: the observed cross-validated score is NaN")
    null = np.array(
        Parallel(n_jobs=n_jobs)(
            delayed(_cross_validated_score)(estimator, X, y[source], groups, cv, scorer)
            for source in sources
        )
    )
    # An undefined (NaN) permuted score counts as extreme: the p-value stays valid.
    pvalue = (1 + np.sum(~(null < observed))) / (1 + n_permutations)
    return TestResult(
        observed,
        float(pvalue),
        "subject-level permutation test",
        {"null_distribution": null, "n_permutations": n_permutations},
    )


def bootstrap_ci(y_true, y_pred, metric, *, groups, n_boot=1000, alpha=0.05, random_state=None):
    """Subject-level (cluster) bootstrap percentile interval for any metric.

    Each replicate draws subjects with replacement and keeps all scans of every
    drawn subject, so that the correlation between a subject's scans widens the
    interval as it should; resampling scans would make it too narrow.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True values.
    y_pred : array-like of shape (n_samples,) or (n_samples, n_outputs)
        Predictions or scores, as ``metric`` expects them.
    metric : callable
        ``metric(y_true, y_pred) -> float``, e.g. :func:`sklearn.metrics.roc_auc_score`.
    groups : array-like of shape (n_samples,)
        Subject identifier of every scan.
    n_boot : int, default=1000
        Number of bootstrap replicates.
    alpha : float, default=0.05
        One minus the confidence level.
    random_state : int, RandomState instance or None, default=None
        Seed of the resampling.

    Returns
    -------
    interval : ConfidenceInterval
        The metric on all data, the percentile bounds and the replicates.
        Replicates on which the metric is undefined (it raises ``ValueError`` or
        gives a non-finite value, as a ROC-AUC of one class does) are left out
        of the bounds and counted in ``n_undefined``, with a warning; never a
        silent NaN bound.

    Raises
    ------
    InputError
        If the metric is undefined on the data, or on more than half of the
        replicates (too few subjects of some class).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if groups is None:
        raise InputError("groups: a subject identifier per scan is required")
    _check_lengths(y_true, y_pred=y_pred, groups=groups)
    if not callable(metric):
        raise InputError(f"metric: expected a callable metric(y_true, y_pred), got {metric!r}")
    if not isinstance(n_boot, Integral) or n_boot < 1:
        raise InputError(f"n_boot: expected a positive integer, got {n_boot!r}")
    _check_alpha(alpha)
    rows_of_subject = _rows_by_subject(np.asarray(groups))
    rng = check_random_state(random_state)

    estimate = _defined_metric(metric, y_true, y_pred)
    if np.isnan(estimate):
        raise InputError(f"metric: {_name(metric)} is undefined on these data")
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.randint(len(rows_of_subject), size=len(rows_of_subject))
        rows = np.concatenate([rows_of_subject[s] for s in drawn])
        replicates[b] = _defined_metric(metric, y_true[rows], y_pred[rows])
    defined = replicates[~np.isnan(replicates)]
    n_undefined = n_boot - len(defined)
    if n_undefined > n_boot / 2:
        raise InputError(
            f"metric: {_name(metric)} is undefined on {n_undefined} of {n_boot} subject "
            "resamples (too few subjects of some class); no interval can be given"
        )
    if n_undefined:
        warnings.warn(
            f"bootstrap_ci: {_name(metric)} is undefined on {n_undefined} of {n_boot} "
            "resamples (e.g. a single class drawn); the interval uses the other "
            f"{len(defined)}", UserWarning, stacklevel=2)
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(estimate, float(low), float(high), 1 - alpha, defined, n_undefined)


def rank_roc_auc(y_true, y_score):
    """ROC-AUC from the Mann–Whitney statistic, with mid-ranks for ties.

    The same value as :func:`sklearn.metrics.roc_auc_score` on binary labels (the
    positive class is the larger label), without its input checks: 17 times faster on
    300 samples on two CPU cores, for resampling loops such as
    ``bootstrap_ci(..., rank_roc_auc, ...)``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels.
    y_score : array-like of shape (n_samples,)
        Scores (higher means more likely positive).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When ``y_true`` does not hold exactly two classes (the AUC is undefined).
    """
    y_true = np.asarray(y_true)
    classes = np.unique(y_true)
    if len(classes) != 2:
        raise ValueError(f"rank_roc_auc needs two classes in y_true, got {len(classes)}")
    positive = y_true == classes[1]
    n_positive = int(positive.sum())
    n_negative = len(y_true) - n_positive
    ranks = scipy_stats.rankdata(np.asarray(y_score, dtype=float))
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2)
                 / (n_positive * n_negative))


def _defined_metric(metric, y_true, y_pred):
    """The metric's value, or NaN where it is undefined (raises or is not finite)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns, then returns NaN, on one class
        try:
            value = float(metric(y_true, y_pred))
        except ValueError:
            return np.nan
    return value if np.isfinite(value) else np.nan


def _name(metric):
    return getattr(metric, "__name__", type(metric).__name__)


def compare_models(study_result, *, metric, method="holm"):
    """Pairwise corrected t-tests between all models of a study.

    Every pair of models is compared with :func:`corrected_ttest` on their paired
    per-split scores, and the p-values are adjusted for the number of pairs with
    :func:`statsmodels.stats.multitest.multipletests`.

    Parameters
    ----------
    study_result : StudyResult
        Output of :func:`ldae.model_selection.run_study`.
    metric : str
        One of ``study_result.metrics``.
    method : str, default="holm"
        Correction passed to ``multipletests`` by name. Our default is Holm's
        step-down (family-wise error control without independence assumptions);
        note that ``multipletests``' own default is Holm–Šidák (``"holm-sidak"``).
        ``"fdr_bh"`` controls the false discovery rate instead.

    Returns
    -------
    table : pandas.DataFrame
        One row per pair with ``model_a``, ``model_b``, ``mean_difference``
        (a − b), its 95 % interval ``ci_low`` – ``ci_high`` (corrected for the
        overlap of training sets, not for multiplicity), ``statistic``, ``df``,
        ``pvalue``, ``pvalue_corrected``, ``test`` and ``correction``.
    """
    _check_metric(metric, study_result.metrics)
    models = study_result.models
    if len(models) < 2:
        raise InputError("study_result: at least two models are needed for a comparison")
    scores = study_result.scores
    per_split = scores.pivot(index=["repeat", "fold"], columns="model", values=metric)
    sizes = scores.groupby(["repeat", "fold"])[["n_train", "n_test"]].first()
    sizes = sizes.loc[per_split.index]

    rows = []
    for model_a, model_b in combinations(models, 2):
        result = corrected_ttest(
            per_split[model_a], per_split[model_b], n_train=sizes["n_train"], n_test=sizes["n_test"]
        )
        rows.append(
            {
                "model_a": model_a,
                "model_b": model_b,
                "mean_difference": result.mean_difference,
                "ci_low": result.ci[0],
                "ci_high": result.ci[1],
                "statistic": result.statistic,
                "df": result.df,
                "pvalue": result.pvalue,
                "test": result.method,
            }
        )
    table = pd.DataFrame(rows)
    try:
        table["pvalue_corrected"] = multipletests(table["pvalue"], method=method)[1]
    except ValueError as error:
        raise InputError(f"method: {method!r} is not a multipletests method ({error})") from error
    table["correction"] = method
    columns = ["model_a", "model_b", "mean_difference", "ci_low", "ci_high", "statistic", "df",
               "pvalue"]
    return table[[*columns, "pvalue_corrected", "test", "correction"]]


def _as_finite_vector(name, values):
    try:
        vector = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: expected numbers ({error})") from error
    if vector.ndim != 1:
        raise InputError(f"{name}: expected a one-dimensional array, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return vector


def _check_alpha(alpha):
    if not 0 < alpha < 1:
        raise InputError(f"alpha: expected a value in (0, 1), got {alpha!r}")


def _two_sided(estimate, standard_error, distribution):
    """Statistic and two-sided p-value, defined when the standard error is zero."""
    if standard_error > 0:
        statistic = estimate / standard_error
    elif estimate == 0:
        statistic = 0.0
    else:
        statistic = np.copysign(np.inf, estimate)
    return float(statistic), float(2 * distribution.sf(abs(statistic)))


def _clipped_interval(center, margin):
    return (float(max(center - margin, 0.0)), float(min(center + margin, 1.0)))


def _rows_by_subject(groups):
    _, subject_of_row = np.unique(groups, return_inverse=True)
    order = np.argsort(subject_of_row, kind="stable")
    boundaries = np.flatnonzero(np.diff(subject_of_row[order])) + 1
    return np.split(order, boundaries)


def _between_subject_permutations(y, groups, n_permutations, rng):
    """Row-index arrays ``source`` such that ``y[source]`` permutes labels between subjects."""
    rows_of_subject = _rows_by_subject(groups)
    constant = all(np.all(y[rows] == y[rows[0]]) for rows in rows_of_subject)
    n_scans = np.array([len(rows) for rows in rows_of_subject])
    # Exchangeable subjects: all of them for subject-constant labels, otherwise
    # those with the same number of scans.
    exchange_classes = (
        [np.arange(len(rows_of_subject))]
        if constant
        else [np.flatnonzero(n_scans == size) for size in np.unique(n_scans)]
    )
    sources = np.empty((n_permutations, len(y)), dtype=int)
    for permutation in sources:
        for members in exchange_classes:
            donors = rng.permutation(members)
            for receiver, donor in zip(members, donors):
                donor_rows = rows_of_subject[donor]
                permutation[rows_of_subject[receiver]] = donor_rows[0] if constant else donor_rows
    return sources


def _cross_validated_score(estimator, X, y, groups, cv, scorer):
    scores = []
    for train, test in _group_splits(cv, X, y, groups):
        fitted = clone(estimator).fit(_safe_indexing(X, train), y[train])
        scores.append(scorer(fitted, _safe_indexing(X, test), y[test]))
    return float(np.mean(scores))

"""Linear mixed models of embeddings over time.

Two tools, both on statsmodels' :class:`~statsmodels.regression.mixed_linear_model.MixedLM`:

- :func:`fit_mixed_models` asks which embedding dimensions change over time, and
  which change faster in one diagnosis than in another: one model per dimension,
  ``value ~ time * diagnosis + baseline covariates`` with a random intercept and slope
  per subject, p-values corrected across dimensions.
- :class:`MixedEffectsRegressor` is a scikit-learn regressor whose subjects (and visit
  times) arrive through metadata routing; it predicts with the fixed effects for a new
  subject and adds the estimated random effects of a subject it has seen.

When the random-slope model does not converge (a slope variance on the boundary, a
singular Hessian), both fall back to a random intercept only, warn, and record it.
"""

from __future__ import annotations

import keyword
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.stats.multitest import multipletests

from ._documentation import DocumentationLinkMixin
from .exceptions import InputError

__all__ = ["fit_mixed_models", "MixedEffectsRegressor"]

_RESERVED = ("value", "time", "diagnosis", "group")
_TABLE_COLUMNS = [
    "dimension", "term", "estimate", "std_error", "ci_low", "ci_high", "pvalue",
    "pvalue_corrected", "significant", "random_slope", "converged", "log_likelihood",
    "intercept_variance", "slope_variance", "residual_variance",
]


def fit_mixed_models(
    embeddings,
    frame,
    *,
    time="months",
    group="subject",
    diagnosis="diagnosis",
    covariates=("age", "sex"),
    time_scale=12.0,
    reference=None,
    n_components=None,
    standardize=True,
    alpha=0.05,
    method="fdr_bh",
    reml=False,
    n_jobs=None,
):
    """Fit one linear mixed model per embedding dimension (or principal component).

    For every dimension ``value`` the model is::

        value ~ time * diagnosis + covariates,   random intercept and time slope per subject

    fitted with :class:`statsmodels.regression.mixed_linear_model.MixedLM`. The
    ``time:diagnosis[T.AD]`` term is how much faster the dimension changes in AD than
    in the reference group. When the random-slope model fails to converge, the
    dimension is refitted with a random intercept only, one warning lists those
    dimensions and their ``random_slope`` column is False.

    Time is measured from each subject's first visit. Diagnosis and covariates are
    taken at that baseline visit, so a time-varying covariate such as age enters as
    baseline age (named ``baseline_age``) and does not compete with time, and every
    subject stays in one diagnostic group (an MCI converter counts as MCI).

    Parameters
    ----------
    embeddings : array-like or DataFrame of shape (n_scans, n_dimensions)
        One embedding per scan, in the row order of ``frame``. DataFrame columns name
        the dimensions; otherwise they are numbered from 0.
    frame : pandas.DataFrame
        One row per scan with the ``time``, ``group``, ``diagnosis`` and ``covariates``
        columns (e.g. ``make_synthetic_cohort(...).frame``).
    time : str, default="months"
        Column holding the visit time.
    group : str, default="subject"
        Column identifying the subject.
    diagnosis : str, default="diagnosis"
        Column holding the diagnosis.
    covariates : sequence of str, default=("age", "sex")
        Columns added as fixed effects, at their baseline value. Names must be
        valid Python identifiers.
    time_scale : float, default=12.0
        Visit times are divided by it: 12 turns months into years, so that slopes
        are per year; 1 keeps the column's unit.
    reference : str, optional
        Reference diagnosis of the treatment coding. By default the first category
        of a categorical column (CN for the synthetic cohort), otherwise the first
        value in sorted order.
    n_components : int, optional
        Model this many principal components of the embeddings (fitted on all
        scans, without labels, and named ``PC1``, ``PC2``, ...) instead of the raw
        dimensions.
    standardize : bool, default=True
        Scale every dimension to zero mean and unit variance over scans first, so
        that estimates are in standard deviations (per year, for time terms).
    alpha : float, default=0.05
        Level of the confidence intervals and of the ``significant`` column.
    method : str, default="fdr_bh"
        Correction of :func:`statsmodels.stats.multitest.multipletests`, applied for
        every term separately across the dimensions. Benjamini–Hochberg false
        discovery rate by default.
    reml : bool, default=False
        Restricted maximum likelihood. The default, maximum likelihood, keeps the
        log-likelihoods of models with different fixed effects comparable.
    n_jobs : int, optional
        joblib workers over dimensions.

    Returns
    -------
    table : pandas.DataFrame
        One row per (dimension, fixed-effect term) with ``dimension``, ``term``,
        ``estimate``, ``std_error``, ``ci_low``, ``ci_high``, ``pvalue`` (Wald z),
        ``pvalue_corrected``, ``significant`` (corrected p below ``alpha``),
        ``random_slope`` (False where the fit fell back to a random intercept),
        ``converged``, and the fit itself: its (restricted) ``log_likelihood`` and
        variance components ``intercept_variance``, ``slope_variance`` (NaN
        without a random slope) and ``residual_variance``. Each model is fitted
        with several optimisers and the best likelihood kept. ``table.attrs`` records the correction, ``alpha``, the
        time unit divisor and the reference diagnosis.

    Examples
    --------
    >>> table = fit_mixed_models(embeddings, cohort.frame)        # doctest: +SKIP
    >>> table.query("term == 'time:diagnosis[T.AD]' and significant")  # doctest: +SKIP
    """
    _check_probability("alpha", alpha)
    values, names = _dimensions(embeddings, len(frame), n_components)
    data, reference = _model_frame(frame, time, group, diagnosis, covariates, time_scale, reference)
    if standardize:
        spread = values.std(axis=0)
        values = (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    formula = "value ~ time * diagnosis" + "".join(
        f" + {column}" for column in data.columns if column not in ("time", "diagnosis", "group")
    )
    fits = Parallel(n_jobs=n_jobs)(
        delayed(_fit_dimension)(formula, data.assign(value=values[:, j]), reml, alpha)
        for j in range(values.shape[1])
    )
    rows = [fit.assign(dimension=name) for name, fit in zip(names, fits)]
    table = pd.concat(rows, ignore_index=True)
    table["pvalue_corrected"] = _corrected_per_term(table, method)
    table["significant"] = table["pvalue_corrected"] < alpha
    _warn_about_fallbacks(table)
    table = table[_TABLE_COLUMNS]
    table.attrs.update(correction=method, alpha=alpha, time_scale=time_scale, reference=reference)
    return table


class MixedEffectsRegressor(DocumentationLinkMixin, RegressorMixin, BaseEstimator):
    """Linear mixed-effects regression, with subjects passed by metadata routing.

    Fits ``y = b0 + X @ coef + u0[g] + u1[g] * time + noise`` with statsmodels'
    :class:`~statsmodels.regression.mixed_linear_model.MixedLM`: fixed effects from
    the columns of ``X``, and for every group ``g`` (subject) a random intercept
    ``u0[g]`` and, when ``time`` is given, a random slope ``u1[g]`` over time.
    ``time`` only says along which variable each subject may deviate from the
    population; to model the population's own trend over time, put time among the
    columns of ``X`` too.

    :meth:`predict` returns the fixed-effect prediction for rows whose group was not
    seen in fit (or when no ``groups`` are given, as in a scorer) and adds the
    estimated random effects (the best linear unbiased predictions) of a seen group.

    With ``sklearn.set_config(enable_metadata_routing=True)``, request the metadata
    so that a :class:`~sklearn.pipeline.Pipeline` or
    :func:`~sklearn.model_selection.cross_validate` passes it on::

        MixedEffectsRegressor().set_fit_request(groups=True, time=True)
                               .set_predict_request(groups=True, time=True)

    Parameters
    ----------
    random_slope : bool, default=True
        Whether a ``time`` passed to :meth:`fit` gets a random slope per group. If
        that model does not converge, the fit falls back to a random intercept
        only with a :class:`~sklearn.exceptions.ConvergenceWarning`.
    reml : bool, default=True
        Restricted maximum likelihood (less biased variance components) rather than
        maximum likelihood.
    max_iter : int, default=200
        Maximum number of optimiser iterations.

    Attributes
    ----------
    intercept_ : float
        Fixed intercept ``b0``.
    coef_ : ndarray of shape (n_features,)
        Fixed-effect coefficients of the columns of ``X``.
    random_effects_ : pandas.DataFrame
        One row per group seen in fit, columns ``intercept`` and (with a random
        slope) ``slope``.
    random_slope_ : bool
        Whether the fitted model has a random slope.
    converged_ : bool
        Whether the kept model converged.
    result_ : statsmodels MixedLMResults
        The fitted statsmodels result (summary, variance components, ...).
    n_features_in_ : int
        Number of columns of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(20), 4)
    >>> X = rng.normal(size=(80, 2))
    >>> y = X @ [1.0, -1.0] + rng.normal(size=20)[groups] + rng.normal(0, 0.1, 80)
    >>> model = MixedEffectsRegressor().fit(X, y, groups=groups)
    >>> np.round(model.coef_, 1)
    array([ 1., -1.])
    """

    # requested by default: meta-estimators with metadata routing pass the subjects
    __metadata_request__fit = {"groups": True}

    def __init__(self, random_slope=True, reml=True, max_iter=200):
        self.random_slope = random_slope
        self.reml = reml
        self.max_iter = max_iter

    def fit(self, X, y, groups=None, time=None):
        """Fit the fixed effects and the per-group random effects.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Fixed-effect features.
        y : array-like of shape (n_samples,)
            Target.
        groups : array-like of shape (n_samples,)
            Group (subject) of every sample; required.
        time : array-like of shape (n_samples,), optional
            Variable of the random slopes (e.g. years since baseline).

        Returns
        -------
        self : MixedEffectsRegressor
        """
        if not isinstance(self.max_iter, Integral) or self.max_iter < 1:
            raise InputError(f"max_iter: expected a positive integer, got {self.max_iter!r}")
        X, y = validate_data(self, X, y, y_numeric=True)
        if groups is None:
            raise InputError("groups: a group (subject) per sample is required; with metadata "
                             "routing, call set_fit_request(groups=True)")
        groups = _metadata_vector("groups", groups, len(y))
        if len(np.unique(groups)) < 2:
            raise InputError("groups: at least two groups are needed")
        with_slope = bool(self.random_slope) and time is not None
        time = None if time is None else _numeric_metadata("time", time, len(y))

        exog = np.column_stack([np.ones(len(y)), X])

        def model(slope):
            random_design = np.column_stack([np.ones(len(y)), time]) if slope else None
            return MixedLM(y, exog, groups, exog_re=random_design)

        outcome = _fit_with_fallback(model, with_slope, reml=bool(self.reml),
                                     fit_kwargs={"maxiter": self.max_iter})
        if outcome.result is None:
            raise InputError(f"X: the mixed model could not be fitted ({outcome.error})")
        if with_slope and not outcome.random_slope:
            warnings.warn("MixedEffectsRegressor: the random-slope model did not converge; "
                          "fitted a random intercept only", ConvergenceWarning, stacklevel=2)
        result = outcome.result
        self.result_ = result
        self.intercept_ = float(result.fe_params[0])
        self.coef_ = np.asarray(result.fe_params[1:], dtype=float)
        self.random_slope_ = outcome.random_slope
        self.converged_ = outcome.converged
        columns = ["intercept", "slope"] if outcome.random_slope else ["intercept"]
        effects = pd.DataFrame.from_dict(
            {key: np.asarray(value, dtype=float) for key, value in result.random_effects.items()},
            orient="index", columns=columns,
        )
        self.random_effects_ = effects
        return self

    def predict(self, X, groups=None, time=None):
        """Predict, adding the random effects of groups seen in fit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Fixed-effect features.
        groups : array-like of shape (n_samples,), optional
            Group of every sample. Rows of unseen groups, or all rows when omitted,
            get the fixed-effect prediction.
        time : array-like of shape (n_samples,), optional
            Required for rows of seen groups when the model has random slopes.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        prediction = self.intercept_ + X @ self.coef_
        if groups is None:
            return prediction
        groups = _metadata_vector("groups", groups, len(X))
        known = pd.Index(self.random_effects_.index).get_indexer(groups)
        seen = known >= 0
        if not seen.any():
            return prediction
        effects = self.random_effects_.to_numpy()[known[seen]]
        prediction[seen] += effects[:, 0]
        if self.random_slope_:
            if time is None:
                raise InputError("time: required to add the random slopes of groups seen in "
                                 "fit; with metadata routing, call set_predict_request(time=True)")
            time = _numeric_metadata("time", time, len(X))
            prediction[seen] += effects[:, 1] * time[seen]
        return prediction


OPTIMISERS = ("lbfgs", "bfgs", "cg")
"""Optimisers every mixed model is fitted with, independently."""


class _Outcome(NamedTuple):
    """What fitting one mixed model gave: the result, or the error that stopped it."""

    result: object
    random_slope: bool
    converged: bool
    error: Exception | None = None


def _fit_with_fallback(make_model, with_slope, *, reml, fit_kwargs=None):
    """Fit with a random slope if asked, else (or when that fails) a random intercept."""
    if with_slope:
        result, converged, error = _quiet_fit(make_model(True), reml, fit_kwargs)
        if result is not None and converged:
            return _Outcome(result, True, True)
    result, converged, error = _quiet_fit(make_model(False), reml, fit_kwargs)
    return _Outcome(result, False, converged, error)


def _quiet_fit(model, reml, fit_kwargs):
    """Fit a MixedLM quietly with each of ``OPTIMISERS``; keep the converged fit of
    highest (restricted) log-likelihood, and judge its convergence from the result.

    statsmodels' own chain (bfgs, then lbfgs, then cg) restarts each optimiser where
    the previous one stopped and can report a sub-optimal point as converged;
    independent fits compared by likelihood find the optimum lme4 finds.

    Converged means the optimiser converged and every parameter has a finite standard
    error (a Hessian that is not negative definite leaves NaN ones). statsmodels'
    "MLE may be on the boundary" warning compares variances with an absolute 0.01,
    whatever the unit of the data, so it is not taken as a failure.
    """
    best, error = None, None
    for method in OPTIMISERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = model.fit(reml=reml, method=method, **(fit_kwargs or {}))
                standard_errors = np.asarray(result.bse, dtype=float)
            except (np.linalg.LinAlgError, ValueError) as failure:
                error = failure
                continue
        converged = bool(result.converged) and bool(np.all(np.isfinite(standard_errors)))
        if best is None or (converged, result.llf) > (best[1], best[0].llf):
            best = (result, converged)
    return (None, False, error) if best is None else (*best, None)


def _fit_dimension(formula, data, reml, alpha):
    def model(slope):
        return smf.mixedlm(formula, data, groups=data["group"],
                           re_formula="~time" if slope else None)

    outcome = _fit_with_fallback(model, True, reml=reml)
    result = outcome.result
    if result is None:
        terms = model(False).exog_names
        return pd.DataFrame({"term": terms, "estimate": np.nan, "std_error": np.nan,
                             "ci_low": np.nan, "ci_high": np.nan, "pvalue": np.nan,
                             "random_slope": False, "converged": False,
                             "log_likelihood": np.nan, "intercept_variance": np.nan,
                             "slope_variance": np.nan, "residual_variance": np.nan})
    terms = list(result.fe_params.index)
    interval = result.conf_int(alpha=alpha).loc[terms]
    return pd.DataFrame({
        "term": terms,
        "estimate": result.fe_params.to_numpy(),
        "std_error": result.bse_fe.to_numpy(),
        "ci_low": interval[0].to_numpy(),
        "ci_high": interval[1].to_numpy(),
        "pvalue": result.pvalues.loc[terms].to_numpy(),
        "random_slope": outcome.random_slope,
        "converged": outcome.converged,
        "log_likelihood": result.llf,
        "intercept_variance": result.cov_re.iloc[0, 0],
        "slope_variance": result.cov_re.iloc[1, 1] if outcome.random_slope else np.nan,
        "residual_variance": result.scale,
    })


def _dimensions(embeddings, n_scans, n_components):
    names = list(embeddings.columns) if isinstance(embeddings, pd.DataFrame) else None
    try:
        values = np.asarray(embeddings, dtype=float)
    except (TypeError, ValueError) as error:
        raise InputError(f"embeddings: expected numbers ({error})") from error
    if values.ndim != 2:
        raise InputError(f"embeddings: expected shape (n_scans, n_dimensions), got {values.shape}")
    if len(values) != n_scans:
        raise InputError(f"embeddings: has {len(values)} rows but frame has {n_scans}")
    if not np.all(np.isfinite(values)):
        raise InputError("embeddings: contains NaN or infinite values")
    if n_components is None:
        return values, names or list(range(values.shape[1]))
    limit = min(values.shape)
    if not isinstance(n_components, Integral) or not 1 <= n_components <= limit:
        raise InputError(f"n_components: expected an integer in [1, {limit}], got {n_components!r}")
    components = PCA(n_components, svd_solver="full").fit_transform(values)
    return components, [f"PC{k + 1}" for k in range(n_components)]


def _model_frame(frame, time, group, diagnosis, covariates, time_scale, reference):
    """Columns of the model: time since baseline, baseline diagnosis and covariates, group."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    if isinstance(covariates, str):
        covariates = (covariates,)
    for column in covariates:
        if not column.isidentifier() or keyword.iskeyword(column):
            raise InputError(f"covariates: {column!r} is not a valid identifier")
        if column in _RESERVED:
            raise InputError(f"covariates: {column!r} is a name the model uses itself")
    needed = [time, group, diagnosis, *covariates]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise InputError(f"frame: lacks the columns {missing}")
    if not isinstance(time_scale, Real) or not time_scale > 0:
        raise InputError(f"time_scale: expected a positive number, got {time_scale!r}")
    frame = frame.reset_index(drop=True)
    if frame[needed].isna().any().any():
        incomplete = frame[needed].columns[frame[needed].isna().any()].tolist()
        raise InputError(f"frame: missing values in the columns {incomplete}")
    try:
        visit_time = frame[time].astype(float)
    except (TypeError, ValueError) as error:
        raise InputError(f"time: column {time!r} is not numeric ({error})") from error

    first_visit = visit_time.groupby(frame[group]).idxmin()

    def at_baseline(column):
        return frame[group].map(frame.loc[first_visit, column].set_axis(first_visit.index))

    data = pd.DataFrame({
        "time": (visit_time - at_baseline(time).astype(float)) / time_scale,
        "group": frame[group],
    })
    levels = _diagnosis_levels(frame[diagnosis], reference)
    data["diagnosis"] = pd.Categorical(at_baseline(diagnosis).astype(object), categories=levels)
    for column in covariates:
        varies = frame.groupby(group)[column].nunique().max() > 1
        data[f"baseline_{column}" if varies else column] = at_baseline(column).to_numpy()
    return data, levels[0]


def _diagnosis_levels(values, reference):
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna())
        levels = [level for level in values.cat.categories if level in present]
    else:
        levels = sorted(values.unique())
    if len(levels) < 2:
        raise InputError(f"diagnosis: at least two diagnoses are needed, got {levels}")
    if reference is not None:
        if reference not in levels:
            raise InputError(f"reference: {reference!r} is not one of the diagnoses {levels}")
        levels = [reference, *(level for level in levels if level != reference)]
    return levels


def _corrected_per_term(table, method):
    corrected = pd.Series(np.nan, index=table.index)
    for _, pvalues in table.groupby("term", sort=False)["pvalue"]:
        finite = pvalues.dropna()
        if finite.empty:
            continue
        try:
            corrected[finite.index] = multipletests(finite, method=method)[1]
        except ValueError as error:
            raise InputError(f"method: {method!r} is not a multipletests method ({error})") from error
    return corrected


def _warn_about_fallbacks(table):
    per_dimension = table.groupby("dimension", sort=False)[["random_slope", "converged"]].first()
    fell_back = per_dimension.index[~per_dimension["random_slope"]].tolist()
    failed = per_dimension.index[~per_dimension["converged"]].tolist()
    if fell_back:
        warnings.warn(f"fit_mixed_models: random-slope model did not converge for dimensions "
                      f"{fell_back[:10]}{' ...' if len(fell_back) > 10 else ''}; fitted a random "
                      "intercept only (column random_slope)", ConvergenceWarning, stacklevel=3)
    if failed:
        warnings.warn(f"fit_mixed_models: no model converged for dimensions {failed[:10]}"
                      f"{' ...' if len(failed) > 10 else ''} (column converged)",
                      ConvergenceWarning, stacklevel=3)


def _metadata_vector(name, values, n_samples):
    vector = np.asarray(values)
    if vector.ndim != 1 or len(vector) != n_samples:
        raise InputError(f"{name}: expected {n_samples} values, got shape {vector.shape}")
    return vector


def _numeric_metadata(name, values, n_samples):
    vector = _metadata_vector(name, values, n_samples)
    try:
        vector = vector.astype(float)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: expected numbers ({error})") from error
    if not np.all(np.isfinite(vector)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return vector


def _check_probability(name, value):
    if not isinstance(value, Real) or not 0 < value < 1:
        raise InputError(f"{name}: expected a value in (0, 1), got {value!r}")

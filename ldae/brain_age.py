"""Brain age: age regression from images or embeddings, with age-bias correction.

A brain-age model regresses chronological age on image features; the brain-age gap
(predicted minus chronological age) is the quantity of interest. Every such model
regresses towards the mean age: the old are predicted too young, the young too old,
so the raw gap correlates negatively with age. The usual correction fits, on the
training data, the linear bias ``predicted = intercept + slope * age``
(Smith et al. 2019; Cole et al. 2018; de Lange & Cole 2020) and removes it:

- Cole et al. (2018): ``corrected = (predicted - intercept) / slope``. It needs only
  the prediction, so :meth:`BrainAgeRegressor.predict` applies it.
- de Lange & Cole (2020): ``corrected = predicted + (age - (intercept + slope * age))``.
  It needs the true age of the scan, which a model cannot know at prediction time;
  :meth:`BrainAgeRegressor.correct` applies it to test scans whose ages are known,
  with the intercept and slope still fitted on the training data.

Fitting the bias on the test set, or reporting MAE/R² of age-corrected predictions
as accuracy, are known traps (Butler et al. 2021): the correction uses the true age,
so those numbers are optimistic. Judge accuracy on uncorrected predictions; use the
corrected gap for association studies.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import check_is_fitted, validate_data

from ._documentation import DocumentationLinkMixin
from .exceptions import InputError
from .model_selection import RIDGE_ALPHAS, fit_with_groups, grouped_ridge

__all__ = ["BrainAgeRegressor", "brain_age_report"]

_CORRECTIONS = ("cole", None)
# Below this bias slope the predictions barely follow age and the Cole inversion
# mostly amplifies their noise.
_WEAK_SLOPE = 0.1


class BrainAgeRegressor(DocumentationLinkMixin, RegressorMixin, BaseEstimator):
    """Age regressor with an age-bias correction fitted on its training data only.

    :meth:`fit` fits ``estimator`` on (X, age), then regresses the predicted age on
    the true age over the training scans, ``predicted = bias_intercept_ +
    bias_slope_ * age``. The predictions used for that regression are out-of-fold
    predictions from an inner ``cv`` (in-sample predictions of a flexible model
    follow age too closely and under-correct). Nothing about the scans passed to
    :meth:`predict` or :meth:`correct` changes the fitted correction, so inside a
    cross-validation it is fitted on the training folds only.

    Parameters
    ----------
    estimator : regressor, optional
        The age model; by default ``StandardScaler`` followed by ``RidgeCV`` with
        alphas 1e-3 ... 1e3, chosen on subject-grouped inner folds when ``groups``
        are given (:func:`ldae.model_selection.grouped_ridge`). The subjects reach
        any part of it that requests ``groups`` (metadata routing).
    correction : {"cole", None}, default="cole"
        What :meth:`predict` returns: ``"cole"`` the bias-corrected age
        ``(raw - bias_intercept_) / bias_slope_`` (Cole et al. 2018), ``None`` the raw
        prediction of ``estimator``.
    cv : int, cross-validation splitter or None, default=5
        Inner splits giving the out-of-fold training predictions for the bias
        regression. An int is a :class:`~sklearn.model_selection.GroupKFold` when
        ``groups`` are passed to :meth:`fit` (so a subject's scans stay together),
        else an unshuffled :class:`~sklearn.model_selection.KFold` (scans stored
        subject by subject then stay together except at fold edges). ``None`` uses
        in-sample predictions.

    Attributes
    ----------
    estimator_ : regressor
        ``estimator`` fitted on all training scans.
    bias_intercept_, bias_slope_ : float
        The bias regression of predicted on true age, on the training scans.
    age_mean_ : float
        Mean training age (the trivial predictor of :meth:`report`).
    n_features_in_ : int
        Number of features of ``X``.

    Examples
    --------
    >>> model = BrainAgeRegressor().fit(X_train, age_train, groups=subject_train)  # doctest: +SKIP
    >>> brain_age = model.predict(X_test)                 # uses X only  # doctest: +SKIP
    >>> gap = model.correct(X_test, age_test) - age_test  # de Lange & Cole  # doctest: +SKIP
    """

    # requested by default: meta-estimators with metadata routing pass the subjects
    __metadata_request__fit = {"groups": True}

    def __init__(self, estimator=None, correction="cole", cv=5):
        self.estimator = estimator
        self.correction = correction
        self.cv = cv

    def fit(self, X, y, groups=None):
        """Fit the age model and the bias regression on the training scans.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features (an embedding, voxels, ...).
        y : array-like of shape (n_samples,)
            Chronological age.
        groups : array-like of shape (n_samples,), optional
            Subject of every scan, used by the inner ``cv``. Requested by default
            with metadata routing (:func:`ldae.model_selection.run_study` routes it).

        Returns
        -------
        self : BrainAgeRegressor
        """
        if self.correction not in _CORRECTIONS:
            raise InputError(f"correction: expected one of {_CORRECTIONS}, got {self.correction!r}")
        X, y = validate_data(self, X, y, y_numeric=True)
        if groups is not None and len(groups) != len(y):
            raise InputError(f"groups: has {len(groups)} entries but X has {len(y)}")
        estimator = self._estimator(groups)
        training_predictions = self._training_predictions(estimator, X, y, groups)
        slope, intercept = np.polyfit(y, training_predictions, deg=1)
        if slope < _WEAK_SLOPE:
            warnings.warn(f"BrainAgeRegressor: predicted age barely follows age on the training "
                          f"data (bias slope {slope:.3f}); the age-bias correction divides by "
                          "this slope and amplifies the noise", UserWarning, stacklevel=2)
        self.estimator_ = fit_with_groups(clone(estimator), X, y, groups)
        self.bias_slope_ = float(slope)
        self.bias_intercept_ = float(intercept)
        self.age_mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        """Predict brain age from ``X`` alone.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        age : ndarray of shape (n_samples,)
            With ``correction="cole"``, ``(raw - bias_intercept_) / bias_slope_``;
            with ``correction=None``, the raw prediction.
        """
        raw = self._raw_prediction(X)
        return self._cole(raw) if self.correction == "cole" else raw

    def correct(self, X, age):
        """Brain age corrected with the scans' true ages (de Lange & Cole 2020).

        ``raw + (age - (bias_intercept_ + bias_slope_ * age))``, with the bias fitted
        on the training data. Use it on test scans whose ages are known, for
        brain-age-gap analyses; their MAE/R² are optimistic and not a measure of
        accuracy.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        age : array-like of shape (n_samples,)
            True chronological age of every scan.

        Returns
        -------
        age : ndarray of shape (n_samples,)
        """
        raw = self._raw_prediction(X)
        return self._de_lange(raw, _as_vector("age", age, len(raw)))

    def report(self, X, age):
        """Accuracy and age bias of every kind of prediction on scans of known age.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        age : array-like of shape (n_samples,)
            True chronological age of every scan.

        Returns
        -------
        report : pandas.DataFrame
            :func:`brain_age_report` with rows ``training mean``, ``uncorrected`` (the
            raw prediction: judge accuracy on it), ``cole`` (Cole et al. 2018, from X
            alone) and ``de lange & cole`` (uses the true age: its MAE/R² are
            optimistic; for brain-age-gap analyses).
        """
        raw = self._raw_prediction(X)
        age = _as_vector("age", age, len(raw))
        rows = {"uncorrected": raw, "cole": self._cole(raw),
                "de lange & cole": self._de_lange(raw, age)}
        return _report(age, self.age_mean_, rows)

    def _cole(self, raw):
        return (raw - self.bias_intercept_) / self.bias_slope_

    def _de_lange(self, raw, age):
        return raw + age - (self.bias_intercept_ + self.bias_slope_ * age)

    def _raw_prediction(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return np.asarray(self.estimator_.predict(X), dtype=float)

    def _estimator(self, groups):
        if self.estimator is None:
            ridge = grouped_ridge() if groups is not None else RidgeCV(alphas=RIDGE_ALPHAS)
            return make_pipeline(StandardScaler(), ridge)
        if not hasattr(self.estimator, "fit") or not hasattr(self.estimator, "predict"):
            raise InputError(f"estimator: {type(self.estimator).__name__} is not a regressor")
        return self.estimator

    def _training_predictions(self, estimator, X, y, groups):
        if self.cv is None:
            return fit_with_groups(clone(estimator), X, y, groups).predict(X)
        splitter = self.cv
        if isinstance(splitter, Integral):
            splitter = GroupKFold(splitter) if groups is not None else KFold(splitter)
        predictions = np.empty(len(y))
        covered = np.zeros(len(y), dtype=bool)
        for train, test in splitter.split(X, y, groups):
            fold_model = fit_with_groups(clone(estimator), _safe_indexing(X, train), y[train],
                                   None if groups is None else np.asarray(groups)[train])
            predictions[test] = fold_model.predict(_safe_indexing(X, test))
            covered[test] = True
        if not covered.all():
            raise InputError("cv: the inner splits must test every training scan once")
        return predictions


def brain_age_report(y_true, y_pred, *, y_train_mean, corrected=None):
    """Accuracy and age bias of brain-age predictions, next to the trivial predictor.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Chronological age.
    y_pred : array-like of shape (n_samples,)
        Predicted age. Judge accuracy on uncorrected predictions: those of
        ``BrainAgeRegressor(correction=None)`` or of its ``estimator_``, not of
        :meth:`BrainAgeRegressor.predict` with the default Cole correction
        (:meth:`BrainAgeRegressor.report` labels each kind).
    y_train_mean : float or array-like of shape (n_samples,)
        Mean training age: the prediction of the trivial model that ignores the
        images. Per scan when out-of-fold predictions come from folds with
        different training sets.
    corrected : array-like of shape (n_samples,), optional
        Bias-corrected predicted age (:meth:`BrainAgeRegressor.predict` or
        :meth:`BrainAgeRegressor.correct`).

    Returns
    -------
    report : pandas.DataFrame
        Rows ``training mean``, ``prediction`` and (if given) ``corrected``; columns
        ``mae``, ``rmse``, ``r`` (Pearson correlation of prediction and age; NaN for
        a constant prediction), ``r2`` (:func:`sklearn.metrics.r2_score`),
        ``mean_gap`` (mean of predicted minus true age) and ``gap_age_r`` (Pearson
        correlation of that gap with age: the age bias; near 0 after correction).
    """
    y_true = _as_vector("y_true", y_true)
    train_mean = _as_vector("y_train_mean", np.atleast_1d(y_train_mean))
    if len(train_mean) not in (1, len(y_true)):
        raise InputError(f"y_train_mean: expected one value or {len(y_true)}, got {len(train_mean)}")
    rows = {"prediction": _as_vector("y_pred", y_pred, len(y_true))}
    if corrected is not None:
        rows["corrected"] = _as_vector("corrected", corrected, len(y_true))
    return _report(y_true, train_mean, rows)


def _report(age, train_mean, predictions):
    rows = {"training mean": np.broadcast_to(train_mean, age.shape), **predictions}
    report = pd.DataFrame.from_dict(
        {name: _accuracy(age, prediction) for name, prediction in rows.items()}, orient="index")
    report.index.name = "prediction"
    return report


def _accuracy(age, prediction):
    gap = prediction - age
    return {
        "mae": mean_absolute_error(age, prediction),
        "rmse": root_mean_squared_error(age, prediction),
        "r": _pearson(prediction, age),
        "r2": r2_score(age, prediction),
        "mean_gap": float(gap.mean()),
        "gap_age_r": _pearson(gap, age),
    }


def _pearson(a, b):
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan
    return float(scipy_stats.pearsonr(a, b).statistic)


def _as_vector(name, values, length=None):
    try:
        vector = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name}: expected numbers ({error})") from error
    if vector.ndim != 1:
        raise InputError(f"{name}: expected a one-dimensional array, got shape {vector.shape}")
    if length is not None and len(vector) != length:
        raise InputError(f"{name}: has {len(vector)} values, expected {length}")
    if not np.all(np.isfinite(vector)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return vector

"""Subject-level cross-validation and multi-model studies.

Subjects, not scans, are the unit of every analysis here: all scans of one subject
always sit on the same side of a split, so that no model is tested on a subject
whose other sessions it was trained on.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn import config_context
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import RidgeCV
from sklearn.metrics import check_scoring
from sklearn.model_selection import BaseCrossValidator, GroupKFold, StratifiedGroupKFold
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.metadata_routing import get_routing_for_object
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from .exceptions import InputError

__all__ = ["RepeatedStratifiedGroupKFold", "StudyResult", "fit_with_groups", "grouped_ridge",
           "run_study"]

RIDGE_ALPHAS = np.logspace(-3, 3, 13)
INNER_SPLITS = 3

_SPLIT_COLUMNS = ("model", "repeat", "fold", "n_train", "n_test", "fit_time", "score_time")


class RepeatedStratifiedGroupKFold(BaseCrossValidator):
    """Stratified K-fold over subjects, repeated with a different shuffle each time.

    Each repeat is a scikit-learn :class:`~sklearn.model_selection.StratifiedGroupKFold`
    with ``shuffle=True``, so a subject's scans are never split between train and
    test, and every scan is tested exactly once per repeat. Stratification uses one
    label per subject (the most frequent label among its scans), so that a subject
    whose label changes between visits (an MCI converter) still falls in a single
    stratum; folds are then balanced in scans of each stratum.

    A continuous target (age, a volume) is stratified on ``n_bins`` quantile bins of
    the subjects' mean target. A numeric target is also treated as continuous when it
    holds more than ``n_bins`` distinct values, some of them shared by fewer subjects
    than ``n_splits`` (ages in whole years, for instance).

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds per repeat; at least 2.
    n_repeats : int, default=1
        Number of times the K-fold is repeated with a new shuffle.
    random_state : int, RandomState instance or None, default=None
        Controls the shuffles. Pass an int for splits that are identical at every
        call of :meth:`split`.
    n_bins : int, default=5
        Number of quantile bins used to stratify a continuous target.

    Examples
    --------
    >>> import numpy as np
    >>> subject = np.repeat(np.arange(10), 2)
    >>> diagnosis = np.repeat(["CN", "AD"] * 5, 2)
    >>> cv = RepeatedStratifiedGroupKFold(n_splits=2, n_repeats=3, random_state=0)
    >>> cv.get_n_splits()
    6
    >>> splits = cv.split(diagnosis, diagnosis, groups=subject)
    >>> all(set(subject[train]).isdisjoint(subject[test]) for train, test in splits)
    True
    """

    __metadata_request__split = {"groups": True}

    def __init__(self, n_splits=5, n_repeats=1, random_state=None, n_bins=5):
        _check_count("n_splits", n_splits, minimum=2)
        _check_count("n_repeats", n_repeats, minimum=1)
        _check_count("n_bins", n_bins, minimum=2)
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state
        self.n_bins = n_bins

    def get_n_splits(self, X=None, y=None, groups=None):
        """Return the number of splits, ``n_splits * n_repeats``.

        Parameters
        ----------
        X, y, groups : object
            Ignored, present for API compatibility.

        Returns
        -------
        n_splits : int
            Total number of (train, test) splits over all repeats.
        """
        return self.n_splits * self.n_repeats

    def split(self, X, y=None, groups=None):
        """Generate train/test indices, repeat after repeat.

        Parameters
        ----------
        X : array-like or list of length n_samples
            The scans (only their number is used).
        y : array-like of shape (n_samples,)
            Target to stratify on: class labels or a continuous value.
        groups : array-like of shape (n_samples,)
            Subject identifier of every scan.

        Yields
        ------
        train : ndarray
            Training-set indices of the split.
        test : ndarray
            Test-set indices of the split. Splits come repeat by repeat, fold by fold.
        """
        n_samples = _check_lengths(X, y=y, groups=groups)
        if y is None:
            raise InputError("y: a target is required to stratify the folds")
        if groups is None:
            raise InputError("groups: a subject identifier per scan is required")
        strata = _subject_strata(np.asarray(y), np.asarray(groups), self.n_splits, self.n_bins)
        rng = check_random_state(self.random_state)
        indices = np.arange(n_samples)
        for _ in range(self.n_repeats):
            folds = StratifiedGroupKFold(self.n_splits, shuffle=True, random_state=rng)
            yield from folds.split(indices, strata, groups)


@dataclass(frozen=True, repr=False)
class StudyResult:
    """Scores and out-of-fold predictions of several models on the same splits.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per (model, repeat, fold) with columns ``model``, ``repeat``,
        ``fold``, ``n_train``, ``n_test`` (numbers of scans), ``fit_time``,
        ``score_time`` (seconds) and one column per metric.
    predictions : pandas.DataFrame or None
        One row per (model, repeat, tested scan) with ``model``, ``repeat``,
        ``fold``, ``row`` (position of the scan in ``X``), ``subject``, ``y_true``,
        ``y_pred`` and, for classifiers, ``score`` (probability or decision value of
        the positive class) or one ``score_<class>`` column per class.
    metrics : tuple of str
        Names of the metric columns of ``scores``.
    splits : tuple of (ndarray, ndarray)
        The (train, test) indices shared by every model.
    """

    scores: pd.DataFrame
    predictions: pd.DataFrame | None
    metrics: tuple[str, ...]
    splits: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def models(self):
        """list of str: model names, in the order they were given."""
        return list(dict.fromkeys(self.scores["model"]))

    def summary(self):
        """Mean and standard deviation of every metric, per model.

        Returns
        -------
        summary : pandas.DataFrame
            One row per model; columns are a MultiIndex (metric, ``mean`` | ``sd``),
            the standard deviation taken over all folds of all repeats (ddof=1).
        """
        per_model = self.scores.groupby("model", sort=False)[list(self.metrics)]
        return per_model.agg(["mean", "std"]).rename(columns={"std": "sd"}, level=1)

    def to_markdown(self, digits=3):
        """Render the summary as a Markdown table of ``mean ± sd``.

        Parameters
        ----------
        digits : int, default=3
            Number of decimals.

        Returns
        -------
        table : str
            A GitHub-flavoured Markdown table, one row per model.
        """
        return markdown_table(self._formatted_summary(digits).reset_index(names="model"))

    def _repr_html_(self):
        return self._formatted_summary(digits=3).to_html()

    def __repr__(self):
        n_repeats = self.scores["repeat"].nunique()
        n_folds = self.scores["fold"].nunique()
        return (
            f"StudyResult({len(self.models)} models, {n_repeats} repeats x {n_folds} folds, "
            f"metrics={list(self.metrics)})"
        )

    def _formatted_summary(self, digits):
        summary = self.summary()
        formatted = {
            metric: [
                f"{mean:.{digits}f} ± {sd:.{digits}f}"
                for mean, sd in zip(summary[metric, "mean"], summary[metric, "sd"])
            ]
            for metric in self.metrics
        }
        return pd.DataFrame(formatted, index=summary.index)

    def plot(self, metric, ax=None):
        """Plot the per-fold scores of every model.

        Each model gets a box plot of its fold scores with the individual folds on
        top; grey lines join the scores of one split across models, since the
        comparison between models is paired.

        Parameters
        ----------
        metric : str
            One of :attr:`metrics`.
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure is created when omitted.

        Returns
        -------
        figure : matplotlib.figure.Figure
            The figure holding the plot.
        """
        import matplotlib.pyplot as plt

        _check_metric(metric, self.metrics)
        models = self.models
        if ax is None:
            _, ax = plt.subplots(figsize=(1.5 + 1.2 * len(models), 3.5), layout="constrained")
        per_split = self.scores.pivot(index=["repeat", "fold"], columns="model", values=metric)
        values = per_split[models].to_numpy()
        positions = np.arange(1, len(models) + 1)
        ax.boxplot(list(values.T), positions=positions, widths=0.5, showfliers=False)
        x = positions + np.random.default_rng(0).uniform(-0.08, 0.08, size=values.shape)
        ax.plot(x.T, values.T, color="0.75", linewidth=0.7, zorder=1)
        ax.scatter(x.ravel(), values.ravel(), s=10, zorder=3)
        ax.set_xticks(positions, models)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per fold ({len(values)} splits)")
        return ax.figure

    def plot_roc(self, ax=None, *, per_subject=True, alpha=0.05):
        """Plot every model's ROC curve of its pooled out-of-fold scores, with DeLong CIs.

        A scan's out-of-fold scores are averaged over the repeats. DeLong's interval
        assumes independent samples, so by default the scores are also averaged over
        each subject's scans and the curve is drawn over subjects. The legend gives
        each model's AUC with its DeLong confidence interval
        (:func:`ldae.stats.delong_test`).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure is created when omitted.
        per_subject : bool, default=True
            Average the scores over each subject's scans (the label must then be
            constant within every subject). ``False`` draws the curve over scans,
            whose DeLong interval is too narrow when subjects have several scans.
        alpha : float, default=0.05
            One minus the confidence level of the AUC intervals.

        Returns
        -------
        figure : matplotlib.figure.Figure
            The figure holding the plot.
        """
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve

        from .stats import delong_test

        if self.predictions is None or "score" not in self.predictions:
            raise InputError("plot_roc: needs the out-of-fold scores of binary classifiers "
                             "(run_study with return_predictions=True)")
        unit = "subjects" if per_subject else "scans"
        if per_subject and (self.predictions.groupby("subject")["y_true"].nunique() > 1).any():
            raise InputError("per_subject: the label changes within some subjects; "
                             "use per_subject=False")
        scores = self.predictions.pivot_table(
            index=["subject" if per_subject else "row", "y_true"], columns="model",
            values="score", aggfunc="mean",
        ).reindex(columns=self.models)
        unscored = scores.columns[scores.isna().any()].tolist()
        if unscored:
            raise InputError(f"plot_roc: models {unscored} have no binary out-of-fold score")

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
        y_true = scores.index.get_level_values("y_true").to_numpy()
        for model in self.models:
            result = delong_test(y_true, scores[model], scores[model], alpha=alpha)
            fpr, tpr, _ = roc_curve(y_true, scores[model], pos_label=np.unique(y_true)[1])
            low, high = result.ci_a
            ax.plot(fpr, tpr, label=f"{model}: AUC {result.auc_a:.3f} [{low:.3f}, {high:.3f}]")
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"Out-of-fold ROC over {len(scores)} {unit}")
        ax.legend(title=f"DeLong {1 - alpha:.0%} CI", loc="lower right", fontsize="small")
        return ax.figure


def markdown_table(frame, digits=4):
    """Render a DataFrame as a GitHub-flavoured Markdown table (no ``tabulate`` needed).

    Parameters
    ----------
    frame : pandas.DataFrame
        Its columns become the header; the index is not shown.
    digits : int, default=4
        Significant digits of float cells.

    Returns
    -------
    str
    """

    def cell(value):
        text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
        return text.replace("|", r"\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(value) for value in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def run_study(
    models,
    X,
    y,
    *,
    groups,
    cv,
    scoring,
    n_jobs=None,
    frozen_encoder=None,
    return_predictions=True,
    params=None,
):
    """Cross-validate several models on exactly the same subject-level splits.

    The splits are drawn once and shared by every model, which makes the per-fold
    scores paired (as :func:`ldae.stats.compare_models` requires). Every
    (model, split) fit is an independent joblib task, so any joblib backend works,
    e.g. ``with joblib.parallel_config(backend="dask"): run_study(...)``.

    Parameters
    ----------
    models : dict of str to estimator
        Unfitted scikit-learn estimators or pipelines, by name. Each is cloned for
        every split.
    X : array-like, list or pandas object of length n_samples
        Inputs: features, or whatever the pipelines accept (e.g. NIfTI paths).
    y : array-like of shape (n_samples,)
        Target.
    groups : array-like of shape (n_samples,)
        Subject identifier of every scan. The training fold's subjects also go to
        the ``fit`` of every model that requests ``groups`` through scikit-learn's
        metadata routing (an inner ``GroupKFold``, :class:`ldae.BrainAgeRegressor`),
        so no inner split puts one subject on both sides.
    cv : int, cross-validation splitter or iterable of (train, test)
        An int is ``RepeatedStratifiedGroupKFold(n_splits=cv, random_state=0)``.
        A splitter's ``split(X, y, groups)`` is called once. Splits that put one
        subject on both sides are refused. When the splitter has ``n_repeats``,
        the splits are numbered repeat by repeat.
    scoring : str, callable, list of str or dict of str to (str or callable)
        Metrics, as in :func:`sklearn.model_selection.cross_validate`. A single
        callable is named ``score``.
    n_jobs : int, optional
        Number of joblib workers; ``None`` means 1 unless in a
        :func:`joblib.parallel_config` context.
    frozen_encoder : fitted transformer, optional
        Applied once to ``X`` before cross-validation, e.g. an expensive, already
        trained :class:`ldae.LDAEEncoder`. Whatever it learned from this study's
        scans is shared by every fold: fit it on other subjects, or without labels
        and report the representation as transductive.
    return_predictions : bool, default=True
        Whether to keep the out-of-fold predictions.
    params : dict of str to array-like of length n_samples, optional
        Per-scan metadata routed (scikit-learn metadata routing) to whatever in a
        model requests it: the training fold's rows to ``fit``, the test fold's rows
        to the prediction methods, e.g. ``{"frame": cohort_table}`` for a
        :class:`ldae.site_effects.SiteHarmonizer` after an encoder.

    Returns
    -------
    result : StudyResult
        Per-fold scores, out-of-fold predictions and the shared splits.
    """
    _check_models(models)
    scoring = _normalise_scoring(scoring, next(iter(models.values())))
    n_samples = _check_lengths(X, y=y, groups=groups)
    if groups is None:
        raise InputError("groups: a subject identifier per scan is required")
    params = dict(params or {})
    _check_lengths(X, **{f"params[{name!r}]": value for name, value in params.items()})
    _check_params_requested(models, params)
    groups = np.asarray(groups)
    if frozen_encoder is not None:
        X = _encode_once(frozen_encoder, X, n_samples)
    splits = _group_splits(cv, X, y, groups)
    folds_per_repeat = len(splits) // _count_repeats(cv, len(splits))

    tasks = [(name, index) for name in models for index in range(len(splits))]
    outcomes = Parallel(n_jobs=n_jobs)(
        delayed(_fit_and_evaluate)(
            clone(models[name]), X, y, groups, *splits[index], scoring, return_predictions,
            params,
        )
        for name, index in tasks
    )

    score_rows, prediction_frames = [], []
    y_array = np.asarray(y)
    for (name, index), outcome in zip(tasks, outcomes):
        train, test = splits[index]
        repeat, fold = divmod(index, folds_per_repeat)
        location = {"model": name, "repeat": repeat, "fold": fold}
        score_rows.append(
            {
                **location,
                "n_train": len(train),
                "n_test": len(test),
                "fit_time": outcome["fit_time"],
                "score_time": outcome["score_time"],
                **outcome["scores"],
            }
        )
        if return_predictions:
            columns = {"row": test, "subject": groups[test], "y_true": y_array[test]}
            prediction_frames.append(
                pd.DataFrame({**location, **columns, **outcome["predictions"]})
            )

    scores = pd.DataFrame(score_rows)
    metrics = tuple(column for column in scores.columns if column not in _SPLIT_COLUMNS)
    predictions = (
        pd.concat(prediction_frames, ignore_index=True) if return_predictions else None
    )
    return StudyResult(scores, predictions, metrics, tuple(splits))


def _subject_strata(y, groups, n_splits, n_bins):
    """One stratum per subject, broadcast to its scans."""
    if y.ndim != 1:
        raise InputError(f"y: expected a one-dimensional target, got shape {y.shape}")
    subjects, subject_of_row = np.unique(groups, return_inverse=True)
    if len(subjects) < n_splits:
        raise InputError(
            f"groups: {len(subjects)} subjects cannot fill n_splits={n_splits} folds"
        )
    numeric = y.dtype != bool and np.issubdtype(y.dtype, np.number)
    if numeric and type_of_target(y) == "continuous":
        return _subject_mean_bins(y, subject_of_row, n_bins)[subject_of_row]
    subject_class = _subject_mode(y, subject_of_row, len(subjects))
    subjects_per_class = np.bincount(subject_class)
    if numeric and len(subjects_per_class) > n_bins and subjects_per_class.min() < n_splits:
        return _subject_mean_bins(y, subject_of_row, n_bins)[subject_of_row]
    return subject_class[subject_of_row]


def _subject_mode(y, subject_of_row, n_subjects):
    classes, class_of_row = np.unique(y, return_inverse=True)
    counts = np.zeros((n_subjects, len(classes)), dtype=int)
    np.add.at(counts, (subject_of_row, class_of_row), 1)
    return counts.argmax(axis=1)


def _subject_mean_bins(y, subject_of_row, n_bins):
    subject_mean = np.bincount(subject_of_row, weights=y.astype(float))
    subject_mean /= np.bincount(subject_of_row)
    inner_edges = np.quantile(subject_mean, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(np.unique(inner_edges), subject_mean)


def _check_count(name, value, *, minimum):
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _check_lengths(X, **others):
    n_samples = _length(X)
    for name, value in others.items():
        if value is not None and _length(value) != n_samples:
            raise InputError(f"{name}: has {_length(value)} entries but X has {n_samples}")
    return n_samples


def _length(values):
    # len() is ambiguous for scipy sparse matrices; shape is not
    return values.shape[0] if hasattr(values, "shape") else len(values)


def _check_models(models):
    if not isinstance(models, dict) or not models:
        raise InputError("models: expected a non-empty dict of name -> estimator")
    for name, model in models.items():
        if not isinstance(name, str):
            raise InputError(f"models: names must be strings, got {name!r}")
        if not hasattr(model, "fit"):
            raise InputError(f"models[{name!r}]: {type(model).__name__} has no fit method")


def _encode_once(encoder, X, n_samples):
    if not hasattr(encoder, "transform"):
        raise InputError(f"frozen_encoder: {type(encoder).__name__} has no transform method")
    if hasattr(encoder, "fit"):
        try:
            check_is_fitted(encoder)
        except NotFittedError as error:
            raise InputError(f"frozen_encoder: must be fitted beforehand ({error})") from error
    encoded = encoder.transform(X)
    if _length(encoded) != n_samples:
        raise InputError(
            f"frozen_encoder: transform returned {_length(encoded)} rows for {n_samples} inputs"
        )
    return encoded


def _group_splits(cv, X, y, groups):
    """Draw the splits once and refuse any that shares a subject between sides."""
    if isinstance(cv, Integral):
        cv = RepeatedStratifiedGroupKFold(n_splits=cv, random_state=0)
    if hasattr(cv, "split"):
        splits = list(cv.split(X, y, groups))
    else:
        splits = list(cv)
    if not splits:
        raise InputError("cv: produced no split")
    checked = []
    for index, (train, test) in enumerate(splits):
        train, test = np.asarray(train), np.asarray(test)
        shared = np.intersect1d(groups[train], groups[test])
        if shared.size:
            raise InputError(
                f"cv: split {index} puts subject(s) {shared[:5].tolist()} in both train "
                "and test; use a group-aware splitter such as RepeatedStratifiedGroupKFold"
            )
        checked.append((train, test))
    return checked


def _count_repeats(cv, n_splits):
    n_repeats = getattr(cv, "n_repeats", 1)
    if isinstance(n_repeats, Integral) and n_repeats > 0 and n_splits % n_repeats == 0:
        return int(n_repeats)
    return 1


def _normalise_scoring(scoring, estimator):
    """Turn ``scoring`` into a list or dict that ``check_scoring`` accepts; fail early."""
    if isinstance(scoring, str):
        scoring = [scoring]
    elif callable(scoring):
        scoring = {"score": scoring}
    elif isinstance(scoring, (list, tuple)):
        scoring = list(scoring)
    elif not isinstance(scoring, dict):
        raise InputError(
            f"scoring: expected a name, callable, list or dict, got {type(scoring).__name__}"
        )
    names = scoring if isinstance(scoring, list) else list(scoring)
    clashes = set(names) & set(_SPLIT_COLUMNS)
    if clashes:
        raise InputError(f"scoring: metric names {sorted(clashes)} are reserved columns")
    try:
        check_scoring(estimator, scoring=scoring)
    except (ValueError, TypeError) as error:
        raise InputError(f"scoring: {error}") from error
    return scoring


def fit_with_groups(estimator, X, y, groups, **params):
    """Fit an estimator, passing the subjects to whatever in it requests ``groups``.

    The subjects travel by scikit-learn's metadata routing, so the inner splits of
    a pipeline (a :func:`grouped_ridge`'s folds, a BrainAgeRegressor's bias CV)
    never put one subject on both sides; an estimator that requests nothing is
    fitted as ``estimator.fit(X, y)``.

    Parameters
    ----------
    estimator : estimator
    X, y : array-like of length n_samples
    groups : array-like of shape (n_samples,) or None
        Subject of every sample; None fits ``estimator.fit(X, y)``.
    **params
        Other per-sample metadata, routed the same way (e.g. ``frame`` for a
        :class:`ldae.site_effects.SiteHarmonizer`).

    Returns
    -------
    estimator
        The fitted estimator.
    """
    metadata = {"groups": None if groups is None else np.asarray(groups), **params}
    return _routed_call(estimator, "fit", {k: v for k, v in metadata.items() if v is not None},
                        X, y)


def _routed_call(estimator, method, metadata, *args):
    """``estimator.<method>(*args, **what it requests of metadata)``, under metadata routing."""
    if not metadata:
        return getattr(estimator, method)(*args)
    with config_context(enable_metadata_routing=True):
        consumed = get_routing_for_object(estimator).consumes(method, list(metadata))
        return getattr(estimator, method)(*args, **{name: metadata[name] for name in consumed})


def _check_params_requested(models, params):
    requested = set()
    with config_context(enable_metadata_routing=True):
        for model in models.values():
            routing = get_routing_for_object(model)
            for method in ("fit", *_TestMetadata.METHODS):
                requested.update(routing.consumes(method, list(params)))
    unused = sorted(set(params) - requested)
    if unused:
        raise InputError(f"params: no model requests {unused} (scikit-learn metadata routing: "
                         "set_fit_request / set_transform_request on the step that reads it)")


class _TestMetadata:
    """A fitted model whose prediction methods receive one test fold's metadata.

    scikit-learn's scorers call ``predict``/``predict_proba``/... with X alone; this
    proxy routes the fold's rows of ``run_study(params=...)`` to them.
    """

    METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")

    def __init__(self, estimator, metadata):
        self._estimator = estimator
        self._metadata = metadata

    def __getattr__(self, name):
        if name not in self.METHODS:
            return getattr(self._estimator, name)
        method = getattr(self._estimator, name)  # AttributeError for a method the model lacks

        @functools.wraps(method)  # scorers call the response method by its __name__
        def routed(X):
            return _routed_call(self._estimator, name, self._metadata, X)

        return routed

    def __sklearn_tags__(self):
        return self._estimator.__sklearn_tags__()


def grouped_ridge():
    """Ridge regression whose alpha (1e-3 ... 1e3) is chosen on subject-grouped inner folds.

    ``RidgeCV``'s default leave-one-out choice of alpha leaks: another scan of the
    left-out scan's subject stays in training, so features that merely identify
    subjects look predictive and get too little shrinkage. Fit it with
    :func:`fit_with_groups` (or :func:`run_study`, which does).

    Returns
    -------
    sklearn.linear_model.RidgeCV
    """
    return RidgeCV(alphas=RIDGE_ALPHAS, cv=GroupKFold(INNER_SPLITS))


def _fit_and_evaluate(estimator, X, y, groups, train, test, scoring, with_predictions, params):
    X_train, X_test = _safe_indexing(X, train), _safe_indexing(X, test)
    y_train, y_test = _safe_indexing(y, train), _safe_indexing(y, test)
    start = time.perf_counter()
    fit_with_groups(estimator, X_train, y_train, groups[train],
                    **{name: _safe_indexing(value, train) for name, value in params.items()})
    fit_time = time.perf_counter() - start
    if params:
        estimator = _TestMetadata(estimator, {name: _safe_indexing(value, test)
                                              for name, value in params.items()})
    # The multi-metric scorer caches predictions shared by several metrics.
    scores = check_scoring(estimator, scoring=scoring)(estimator, X_test, y_test)
    score_time = time.perf_counter() - start - fit_time
    return {
        "scores": {name: float(value) for name, value in scores.items()},
        "fit_time": fit_time,
        "score_time": score_time,
        "predictions": _out_of_fold_outputs(estimator, X_test) if with_predictions else None,
    }


def _out_of_fold_outputs(estimator, X_test):
    outputs = {"y_pred": np.asarray(estimator.predict(X_test))}
    if not is_classifier(estimator):
        return outputs
    for method in ("predict_proba", "decision_function"):
        if hasattr(estimator, method):
            values = np.asarray(getattr(estimator, method)(X_test))
            break
    else:
        return outputs
    classes = estimator.classes_
    if values.ndim == 1:
        outputs["score"] = values
    elif len(classes) == 2 and values.shape[1] == 2:
        outputs["score"] = values[:, 1]
    else:
        names = classes if values.shape[1] == len(classes) else range(values.shape[1])
        outputs.update({f"score_{name}": values[:, j] for j, name in enumerate(names)})
    return outputs


def _check_metric(metric, metrics):
    if metric not in metrics:
        raise InputError(f"metric: {metric!r} is not among the study's metrics {list(metrics)}")

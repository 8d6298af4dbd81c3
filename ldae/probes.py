"""Linear probes of embeddings: AD vs CN classification and age regression.

The two standard read-outs of a brain-MRI representation (Lozupone et al. 2025,
Table 2): a logistic regression separating Alzheimer's disease from cognitively
normal scans, and a ridge regression of age. Both are cross-validated with
subject-grouped folds shared by every feature set, so the feature sets can be
compared fold by fold with :func:`ldae.stats.compare_models`.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, make_scorer, precision_score, recall_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from . import stats
from .exceptions import InputError
from .model_selection import RepeatedStratifiedGroupKFold, grouped_ridge, run_study

__all__ = ["CLASSIFICATION_SCORING", "MEAN_AGE_BASELINE", "PCA_OF_VOXELS", "REGRESSION_SCORING",
           "ProbeResults", "probe_embeddings"]

# a fold whose probe predicts no AD scores 0 precision/F1 rather than warning per fold
CLASSIFICATION_SCORING = {
    "roc_auc": "roc_auc",
    "accuracy": "accuracy",
    "precision": make_scorer(precision_score, zero_division=0),
    "recall": make_scorer(recall_score, zero_division=0),
    "f1": make_scorer(f1_score, zero_division=0),
}
REGRESSION_SCORING = {"mae": "neg_mean_absolute_error", "rmse": "neg_root_mean_squared_error"}
MEAN_AGE_BASELINE = "mean age"

PCA_OF_VOXELS = "PCA of voxels"
"""Name of the PCA-of-voxels baseline in probe results."""


@dataclass
class ProbeResults:
    """Cross-validated probe results of several feature sets.

    Attributes
    ----------
    diagnosis : StudyResult
        AD-vs-CN logistic-regression study (scans diagnosed CN or AD).
    age : StudyResult
        Ridge age-regression study (all scans), with the mean-age predictor as a
        reference line; MAE and RMSE are reported as positive numbers.
    """

    diagnosis: object
    age: object

    def table(self):
        """One row per feature set: mean ± sd over folds of every metric."""
        rows = {}
        for study, metrics in ((self.diagnosis, tuple(CLASSIFICATION_SCORING)),
                               (self.age, tuple(REGRESSION_SCORING))):
            for model, scores in study.scores.groupby("model", sort=False):
                for metric in metrics:
                    values = scores[metric].abs()
                    rows.setdefault(model, {})[metric] = f"{values.mean():.3f} ± {values.std():.3f}"
        return pd.DataFrame(rows).T.fillna("")

    def comparisons(self, reference):
        """Corrected resampled t-tests of ``reference`` against every other feature set.

        Returns
        -------
        DataFrame
            The rows of :func:`ldae.stats.compare_models` that involve ``reference``,
            for ROC-AUC and for age MAE, with Holm-corrected p-values. For MAE,
            ``mean_difference`` is MAE(a) − MAE(b) in years (negative: a errs less).
        """
        tables = []
        for study, metric, sign in ((self.diagnosis, "roc_auc", 1), (self.age, "mae", -1)):
            table = stats.compare_models(study, metric=metric)
            # age scores are scikit-learn's negated errors; report differences of errors
            table[["mean_difference", "statistic"]] *= sign
            if sign < 0:
                table[["ci_low", "ci_high"]] = -table[["ci_high", "ci_low"]].to_numpy()
            involved = (table["model_a"] == reference) | (table["model_b"] == reference)
            tables.append(table[involved].assign(metric=metric))
        return pd.concat(tables, ignore_index=True)


def probe_embeddings(features, frame, *, voxels=None, fold_encoders=None, n_splits=5, n_repeats=1,
                     random_state=0, n_jobs=None):
    """Cross-validate linear probes on several feature sets of the same scans.

    Parameters
    ----------
    features : dict of str to ndarray of shape (n_scans, n_features)
        Named feature sets, e.g. ``{"LDAE": encoder.transform(images)}``.
    frame : DataFrame
        One row per scan, in the order of the features, with columns ``subject``,
        ``diagnosis`` and ``age``.
    voxels : ndarray of shape (n_scans, ...), optional
        Raw volumes; adds a "PCA of voxels" baseline whose PCA is fitted inside each
        training fold.
    fold_encoders : dict of str to estimator, optional
        Volume encoders fitted inside each training fold on ``voxels``, then probed
        like the other feature sets. A supervised one
        (:class:`~ldae.baselines.SupervisedEncoder`) is trained on that fold's
        labels: AD vs CN for the diagnosis probe, age for the age probe.
    n_splits, n_repeats : int, default=5, 1
        Subject-grouped stratified folds and their repetitions.
    random_state : int, default=0
        Seed of the folds.
    n_jobs : int, optional
        joblib workers over (feature set, fold).

    Returns
    -------
    ProbeResults
    """
    _check_frame(frame, features)
    blocks = dict(features)
    if voxels is not None:
        blocks[PCA_OF_VOXELS] = np.asarray(voxels, dtype=np.float32).reshape(len(frame), -1)
    fold_encoders = dict(fold_encoders or {})
    if fold_encoders and voxels is None:
        raise InputError("fold_encoders need the voxels: pass voxels=<the scans' volumes>")
    X, columns = _stack(blocks)
    volume_shape = None if voxels is None else np.shape(voxels)[1:]
    subjects = frame["subject"].to_numpy()
    cv = RepeatedStratifiedGroupKFold(n_splits=n_splits, n_repeats=n_repeats,
                                      random_state=random_state)

    diseased = frame["diagnosis"].isin(["CN", "AD"]).to_numpy()
    is_ad = (frame["diagnosis"][diseased] == "AD").to_numpy().astype(int)
    classifiers = {name: _probe(columns[name], LogisticRegression(max_iter=2000),
                                pca=name == PCA_OF_VOXELS) for name in blocks}
    classifiers.update({name: _encoder_probe(columns[PCA_OF_VOXELS], volume_shape, encoder,
                                             LogisticRegression(max_iter=2000))
                        for name, encoder in fold_encoders.items()})
    diagnosis = run_study(classifiers, X[diseased], is_ad, groups=subjects[diseased], cv=cv,
                          scoring=CLASSIFICATION_SCORING, n_jobs=n_jobs)

    regressors = {name: _probe(columns[name], grouped_ridge(), pca=name == PCA_OF_VOXELS)
                  for name in blocks}
    regressors.update({name: _encoder_probe(columns[PCA_OF_VOXELS], volume_shape, encoder,
                                            grouped_ridge())
                       for name, encoder in fold_encoders.items()})
    regressors[MEAN_AGE_BASELINE] = DummyRegressor(strategy="mean")
    age = run_study(regressors, X, frame["age"].to_numpy(dtype=float), groups=subjects, cv=cv,
                    scoring=REGRESSION_SCORING, n_jobs=n_jobs)
    return ProbeResults(diagnosis=diagnosis, age=age)


def _probe(columns, head, *, pca):
    steps = [("select", ColumnTransformer([("features", "passthrough", columns)]))]
    if pca:
        steps.append(("pca", PCA(n_components=0.9, svd_solver="full")))
    steps += [("scale", StandardScaler()), ("probe", head)]
    return Pipeline(steps)


def _encoder_probe(columns, volume_shape, encoder, head):
    return Pipeline([
        ("select", ColumnTransformer([("voxels", "passthrough", columns)])),
        ("volumes", FunctionTransformer(_as_volumes, kw_args={"shape": volume_shape})),
        ("encoder", clone(encoder)),
        ("scale", StandardScaler()),
        ("probe", head),
    ])


def _as_volumes(rows, shape):
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), *shape)


def _stack(blocks):
    columns, start = {}, 0
    for name, block in blocks.items():
        columns[name] = np.arange(start, start + block.shape[1])
        start += block.shape[1]
    return np.hstack([np.asarray(block, dtype=np.float32) for block in blocks.values()]), columns


def _check_frame(frame, features):
    missing = {"subject", "diagnosis", "age"} - set(frame.columns)
    if missing:
        raise InputError(f"frame lacks the columns {sorted(missing)}")
    for name, block in features.items():
        if np.ndim(block) != 2 or len(block) != len(frame):
            raise InputError(
                f"features[{name!r}] has shape {np.shape(block)}; expected ({len(frame)}, n_features)")

"""Acquisition-site effects in embeddings: how well site is predicted, and its removal.

Scanner and protocol differences between sites leak into any image representation
and confound multi-site Alzheimer's studies (a probe may learn the site instead of
the disease when sites differ in case mix). :func:`site_prediction_score` measures
the leak with subject-grouped cross-validation; :class:`SiteHarmonizer` regresses
site out of the embedding, learning the site effects from training scans only.
"""

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

from ._documentation import DocumentationLinkMixin
from .exceptions import InputError
from .model_selection import RepeatedStratifiedGroupKFold, markdown_table, run_study

__all__ = ["SiteHarmonizer", "SitePrediction", "site_prediction_score"]

RAW, HARMONISED = "embedding", "harmonised embedding"


class SiteHarmonizer(DocumentationLinkMixin, TransformerMixin, BaseEstimator):
    """Remove additive site effects from embeddings by linear regression.

    Input is a DataFrame holding the embedding columns, a site column and,
    optionally, covariate columns (age, sex, diagnosis, ...). ``fit`` regresses
    every embedding column on the one-hot site and the covariates; ``transform``
    subtracts the fitted site terms, centred on the training scans' site mix, and
    returns the embedding columns only. Covariates are there so that a site effect
    is not confused with a difference in case mix between sites: their effects
    stay in the embedding, and ``transform`` does not need them (a test scan's
    diagnosis is never read). Only the mean is harmonised: site differences in
    variance remain (ComBat would also scale them).

    Passing site as a column keeps the transformer a plain scikit-learn
    transformer: in a :class:`~sklearn.pipeline.Pipeline` under
    ``cross_validate``, each fold fits it on its training scans only, and test
    scans are adjusted with those coefficients, without metadata routing.

    After a step that returns only the embedding (an :class:`ldae.LDAEEncoder` in a
    pipeline), the site and covariate columns come as metadata instead: ``frame``,
    the scans' table, is requested by ``fit`` and ``transform``, so a pipeline with
    metadata routing enabled passes it to this step (as ``groups`` reaches the
    encoder); :func:`ldae.model_selection.run_study` routes it per fold with
    ``params={"frame": table}``.

    Parameters
    ----------
    site : str, default="site"
        Name of the site column.
    covariates : sequence of str, default=()
        Columns whose effects are preserved. Numeric columns enter linearly;
        others (strings, categoricals, booleans) one-hot encoded.

    Attributes
    ----------
    feature_names_in_ : ndarray of str
        Columns seen in ``fit``.
    n_features_in_ : int
    embedding_columns_ : list of str
        The columns harmonised and returned: all but the site and the covariates.
    sites_ : ndarray
        Sites seen in ``fit``; ``transform`` refuses others.
    site_effects_ : DataFrame of shape (n_sites, n_embedding_columns)
        Additive effect of each site on each column, relative to the training
        scans' average (what ``transform`` subtracts).

    Examples
    --------
    >>> import pandas as pd
    >>> scans = pd.DataFrame({"e0": [1.0, 2.0, 11.0, 12.0], "site": ["A", "A", "B", "B"]})
    >>> SiteHarmonizer().fit_transform(scans).ravel().round(6).tolist()
    [6.0, 7.0, 6.0, 7.0]
    """

    # requested by default: a pipeline with metadata routing passes the scans' table
    __metadata_request__fit = {"frame": True}
    __metadata_request__transform = {"frame": True}

    def __init__(self, site="site", covariates=()):
        self.site = site
        self.covariates = covariates

    def fit(self, X, y=None, frame=None):
        """Estimate each site's additive effect on each embedding column.

        Parameters
        ----------
        X : DataFrame of shape (n_scans, n_columns) or array of shape (n_scans, n_features)
            Embedding columns, the site column and the covariate columns; or, with
            ``frame``, the embedding alone.
        y : ignored
        frame : DataFrame of shape (n_scans, ...), optional
            One row per scan of ``X``, holding the site and covariate columns.

        Returns
        -------
        self : SiteHarmonizer
        """
        covariates = self._covariate_names()
        given, X = X, self._joined(X, frame, [self.site, *covariates])
        self._check_frame(X, [self.site, *covariates])
        self.n_features_in_ = np.shape(given)[1]
        if isinstance(given, pd.DataFrame):
            self.feature_names_in_ = np.asarray(given.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.embedding_columns_ = [column for column in X.columns
                                   if column != self.site and column not in covariates]
        embedding = self._embedding(X)
        self.site_encoder_ = OneHotEncoder(drop="first", sparse_output=False).fit(X[[self.site]])
        self.sites_ = self.site_encoder_.categories_[0]
        site_design = self.site_encoder_.transform(X[[self.site]])
        design = site_design
        if covariates:
            self.covariate_encoder_ = _covariate_encoder(X[covariates]).fit(X[covariates])
            design = np.hstack([site_design, self.covariate_encoder_.transform(X[covariates])])
        regression = LinearRegression().fit(design, embedding)
        site_coefficients = regression.coef_[:, :site_design.shape[1]]
        self.site_mean_ = site_design.mean(axis=0)
        every_site = self.site_encoder_.transform(pd.DataFrame({self.site: self.sites_}))
        self.site_effects_ = pd.DataFrame((every_site - self.site_mean_) @ site_coefficients.T,
                                          index=pd.Index(self.sites_, name=self.site),
                                          columns=self.embedding_columns_)
        return self

    def transform(self, X, frame=None):
        """Subtract the site effects learned in ``fit``.

        Parameters
        ----------
        X : DataFrame or array of shape (n_scans, n_features)
            The embedding columns and the site column (covariate columns may be
            present; they are not used); or, with ``frame``, the embedding alone.
        frame : DataFrame of shape (n_scans, ...), optional
            One row per scan of ``X``, holding the site column.

        Returns
        -------
        ndarray of shape (n_scans, n_embedding_columns)
        """
        check_is_fitted(self)
        X = self._joined(X, frame, [self.site])
        self._check_frame(X, [self.site, *self.embedding_columns_])
        unknown = sorted(set(X[self.site]) - set(self.sites_), key=str)
        if unknown:
            raise InputError(f"X[{self.site!r}]: sites {unknown} were not seen in fit "
                             f"(known: {list(self.sites_)})")
        effects = self.site_effects_.loc[X[self.site].to_numpy()].to_numpy()
        return self._embedding(X) - effects

    def fit_transform(self, X, y=None, frame=None):
        """Fit, then harmonise the same scans (``frame`` reaches both steps).

        Parameters
        ----------
        X, y, frame
            As for :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_scans, n_embedding_columns)
        """
        return self.fit(X, y, frame=frame).transform(X, frame=frame)

    def get_feature_names_out(self, input_features=None):
        """Names of the returned columns: the embedding columns.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self)
        return np.asarray(self.embedding_columns_, dtype=object)

    def _covariate_names(self):
        if isinstance(self.covariates, str):
            return [self.covariates]
        return list(self.covariates)

    def _joined(self, X, frame, columns):
        """X with ``columns`` of ``frame`` beside it (X unchanged without a frame)."""
        if frame is None:
            return X
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"frame must be a pandas DataFrame of the scans' {self.site!r} "
                             f"and covariate columns; got {type(frame).__name__}")
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise InputError(f"frame lacks the columns {missing}")
        if not isinstance(X, pd.DataFrame):
            X = np.asarray(X)
            if X.ndim != 2:
                raise InputError(f"X must be a 2-D embedding; got shape {X.shape}")
            X = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        if len(frame) != len(X):
            raise InputError(f"frame has {len(frame)} rows but X has {len(X)} scans")
        clashes = sorted(set(columns) & set(X.columns))
        if clashes:
            raise InputError(f"X and frame both hold the columns {clashes}")
        return pd.concat([X.reset_index(drop=True), frame[columns].reset_index(drop=True)],
                         axis=1)

    def _check_frame(self, X, required):
        if not isinstance(X, pd.DataFrame):
            raise InputError(
                f"X must be a pandas DataFrame of embedding columns plus the site column "
                f"{self.site!r} (or the embedding with frame=, the scans' table, beside it); "
                f"got {type(X).__name__}")
        missing = [column for column in required if column not in X.columns]
        if missing:
            raise InputError(f"X lacks the columns {missing}")
        if X[self.site].isna().any():
            raise InputError(f"X[{self.site!r}]: missing site labels")

    def _embedding(self, X):
        embedding = X[self.embedding_columns_]
        if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in embedding.dtypes):
            raise InputError("X: every column besides the site and the covariates must be numeric "
                             "(list the others in covariates=)")
        return embedding.to_numpy(dtype=np.float64)


@dataclass
class SitePrediction:
    """Cross-validated prediction of acquisition site from embeddings.

    Attributes
    ----------
    study : ldae.model_selection.StudyResult
        Per-fold balanced accuracy of the models ``"embedding"`` and, when
        harmonisation was asked, ``"harmonised embedding"``, on the same folds.
    chance : float
        Balanced accuracy of guessing: 1 / number of sites.
    """

    study: object
    chance: float

    @property
    def balanced_accuracy(self):
        """Series: mean balanced accuracy over folds, per model."""
        return self.study.scores.groupby("model", sort=False)["balanced_accuracy"].mean()

    def table(self):
        """One row per model: mean and sd of the balanced accuracy, and chance level."""
        grouped = self.study.scores.groupby("model", sort=False)["balanced_accuracy"]
        return pd.DataFrame({"balanced_accuracy": grouped.mean(), "sd": grouped.std(),
                             "chance": self.chance}).reset_index(names="features")

    def to_markdown(self):
        """The :meth:`table` as a Markdown table."""
        return markdown_table(self.table())


def site_prediction_score(embeddings, site, groups, *, cv=5, random_state=None, harmonize=True,
                          covariates=None, n_jobs=None):
    """How well a linear classifier predicts the acquisition site from the embeddings.

    A multinomial logistic regression on standardised embeddings is scored by
    balanced accuracy over subject-grouped folds stratified by site; chance is
    1 / number of sites. With ``harmonize``, the same folds also score the
    embedding after :class:`SiteHarmonizer`, fitted inside each training fold: a
    score near chance means the linear site signal was removed.

    Parameters
    ----------
    embeddings : array-like of shape (n_scans, n_features)
    site : array-like of shape (n_scans,)
        Acquisition site of each scan.
    groups : array-like of shape (n_scans,)
        Subject of each scan: a subject's scans never sit on both sides of a split.
    cv : int or cross-validation splitter, default=5
        An int is ``RepeatedStratifiedGroupKFold(n_splits=cv, random_state=random_state)``.
    random_state : int, RandomState instance or None, default=None
        Seed of the folds when ``cv`` is an int.
    harmonize : bool, default=True
        Also score the harmonised embedding.
    covariates : DataFrame of shape (n_scans, n_covariates), optional
        Columns whose effects the harmoniser preserves (e.g. age, sex, diagnosis).
        Where sites differ in these, the harmonised embedding still predicts site
        above chance: that part of the site signal is case mix, not scanner.
    n_jobs : int, optional
        joblib workers over (model, fold).

    Returns
    -------
    SitePrediction
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise InputError(f"embeddings has shape {embeddings.shape}; expected (n_scans, n_features)")
    n_scans = len(embeddings)
    site = _column("site", site, n_scans)
    groups = _column("groups", groups, n_scans)
    n_sites = len(pd.unique(site))
    if n_sites < 2:
        raise InputError("site: at least two sites are needed")
    features = [f"embedding_{j}" for j in range(embeddings.shape[1])]
    X = pd.DataFrame(embeddings, columns=features)
    X["site"] = site
    covariate_names = []
    if covariates is not None:
        if not isinstance(covariates, pd.DataFrame) or len(covariates) != n_scans:
            raise InputError(f"covariates: expected a DataFrame of {n_scans} rows")
        covariate_names = [str(name) for name in covariates.columns]
        if set(covariate_names) & {*features, "site"}:
            raise InputError("covariates: column names clash with embedding_<j> or site")
        X = pd.concat([X, covariates.set_axis(covariate_names, axis=1).reset_index(drop=True)], axis=1)

    classifier = LogisticRegression(max_iter=2000, class_weight="balanced")
    models = {RAW: make_pipeline(ColumnTransformer([("embedding", "passthrough", features)]),
                                 StandardScaler(), classifier)}
    if harmonize:
        models[HARMONISED] = make_pipeline(SiteHarmonizer(site="site", covariates=covariate_names),
                                           StandardScaler(), classifier)
    if isinstance(cv, Integral):
        cv = RepeatedStratifiedGroupKFold(n_splits=cv, random_state=random_state)
    study = run_study(models, X, site, groups=groups, cv=cv, scoring="balanced_accuracy",
                      n_jobs=n_jobs, return_predictions=False)
    return SitePrediction(study=study, chance=1.0 / n_sites)


def _covariate_encoder(covariates):
    numeric = [column for column in covariates.columns
               if pd.api.types.is_numeric_dtype(covariates[column])
               and not pd.api.types.is_bool_dtype(covariates[column])]
    categorical = [column for column in covariates.columns if column not in numeric]
    return ColumnTransformer([
        ("numeric", StandardScaler(), numeric),
        ("categorical", OneHotEncoder(drop="first", sparse_output=False), categorical),
    ])


def _column(name, values, n_scans):
    values = np.asarray(values)
    if values.shape != (n_scans,):
        raise InputError(f"{name} has shape {values.shape}; expected one value per scan ({n_scans},)")
    return values

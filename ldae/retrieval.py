"""Similar-scan retrieval: the scans of a cohort nearest to a given scan in embedding space."""

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from ._documentation import DocumentationLinkMixin
from .exceptions import InputError

__all__ = ["SimilarScans", "recall_at_k"]

METRICS = ("cosine", "euclidean")


class SimilarScans(DocumentationLinkMixin, BaseEstimator):
    """Index of scan embeddings answering "which scans are most like this one?".

    A :class:`~sklearn.neighbors.NearestNeighbors` index over the (optionally
    standardised) embeddings of a cohort, which remembers each scan's identifier and
    subject so that a query can leave out the visits of a given subject.

    Parameters
    ----------
    n_neighbors : int, default=5
        Number of neighbours a query returns unless it asks for another number.
    metric : {"cosine", "euclidean"}, default="cosine"
        Distance between embeddings.
    standardize : bool, default=True
        Scale every embedding dimension to zero mean and unit variance over the
        indexed scans first, so that no dimension dominates the distance.

    Attributes
    ----------
    scaler_ : StandardScaler or None
    neighbors_ : NearestNeighbors
        The index.
    ids_ : ndarray of shape (n_scans,)
        Identifier of each indexed scan.
    subjects_ : ndarray of shape (n_scans,) or None
        Subject of each indexed scan.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> embeddings = np.array([[0.0, 1.0], [0.1, 1.0], [5.0, 0.0], [5.0, 0.2]])
    >>> index = SimilarScans(n_neighbors=1, metric="euclidean", standardize=False)
    >>> index = index.fit(embeddings, subjects=["a", "a", "b", "b"])
    >>> index.query(embeddings[:1])[["rank", "neighbour", "subject"]].values.tolist()
    [[1, 0, 'a']]
    >>> index.query(embeddings[:1], exclude_subjects=["a"])[["neighbour", "subject"]].values.tolist()
    [[3, 'b']]
    """

    def __init__(self, n_neighbors=5, metric="cosine", standardize=True):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.standardize = standardize

    def fit(self, X, y=None, subjects=None, index=None):
        """Index the embeddings of a cohort.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
            Embeddings.
        y : ignored
        subjects : array-like of shape (n_scans,), optional
            Subject of each scan: reported with every neighbour.
        index : array-like of shape (n_scans,), optional
            Identifier of each scan (a path, a session label, a frame index...);
            default ``0 .. n_scans - 1``. A pandas object's index is used when
            ``X`` is a DataFrame and ``index`` is not given.

        Returns
        -------
        self : SimilarScans
        """
        _check_count("n_neighbors", self.n_neighbors)
        if self.metric not in METRICS:
            raise InputError(f"metric={self.metric!r}: expected one of {METRICS}")
        ids = index if index is not None or not isinstance(X, pd.DataFrame) else X.index
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        self.ids_ = _labels("index", ids, len(X), default=np.arange(len(X)))
        self.subjects_ = _labels("subjects", subjects, len(X))
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        self.neighbors_ = NearestNeighbors(metric=self.metric).fit(self._scaled(X))
        return self

    def query(self, X=None, k=None, *, ids=None, exclude_subjects=None):
        """The ``k`` indexed scans nearest to each query scan.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), optional
            Embeddings of the query scans. None queries every indexed scan, each of
            which is then never its own neighbour.
        k : int, optional
            Neighbours per query; default ``n_neighbors``. Fewer come back when the
            index holds fewer eligible scans.
        ids : array-like of shape (n_queries,), optional
            Identifier of each query for the ``query`` column; default the indexed
            identifiers when ``X`` is None, else ``0 .. n_queries - 1``.
        exclude_subjects : array-like of shape (n_queries,), optional
            For each query, a subject whose scans must not be returned (typically
            the query's own subject, to find scans of *other* people). Needs the
            subjects given to ``fit``.

        Returns
        -------
        DataFrame
            One row per (query, neighbour), nearest first: ``query``, ``rank``
            (1 = nearest), ``neighbour`` (identifier of the indexed scan),
            ``subject`` (its subject, when known) and ``distance``.
        """
        check_is_fitted(self)
        k = self.n_neighbors if k is None else k
        _check_count("k", k)
        own = X is None
        if own:
            default_ids = self.ids_
        else:
            X = self._scaled(validate_data(self, X, dtype=np.float64, reset=False))
            default_ids = np.arange(len(X))
        n_queries = len(self.ids_) if own else len(X)
        query_ids = _labels("ids", ids, n_queries, default=default_ids)
        excluded = _labels("exclude_subjects", exclude_subjects, n_queries)
        if excluded is not None and self.subjects_ is None:
            raise InputError("exclude_subjects: the index was fitted without subjects")

        # X=None: scikit-learn leaves each indexed scan out of its own neighbours
        available = len(self.ids_) - own
        distances, neighbours = self.neighbors_.kneighbors(
            X, n_neighbors=min(available, k + self._most_excluded(excluded)))
        rows = []
        for position in range(n_queries):
            eligible = np.ones(neighbours.shape[1], dtype=bool)
            if excluded is not None:
                eligible = self.subjects_[neighbours[position]] != excluded[position]
            columns = np.flatnonzero(eligible)[:k]
            found = neighbours[position, columns]
            rows.append(pd.DataFrame({
                "query": query_ids[position],
                "rank": np.arange(1, len(found) + 1),
                "neighbour": self.ids_[found],
                **({} if self.subjects_ is None else {"subject": self.subjects_[found]}),
                "distance": distances[position, columns],
            }))
        return pd.concat(rows, ignore_index=True)

    def _scaled(self, X):
        return X if self.scaler_ is None else self.scaler_.transform(X)

    def _most_excluded(self, excluded):
        """Extra neighbours to fetch so that ``k`` remain after leaving out one subject."""
        if excluded is None:
            return 0
        _, counts = np.unique(self.subjects_, return_counts=True)
        return int(counts.max())


def recall_at_k(X, subjects, k=5, *, metric="cosine", standardize=True):
    """How often a scan's own other visits are among its ``k`` nearest scans.

    Every scan of a subject with at least two scans queries all the others; it
    counts as a hit when at least one of its ``k`` nearest scans (itself left out)
    belongs to the same subject: the Recall@K of metric learning. A representation
    that keeps subject identity across visits scores close to 1; a random one
    about ``k`` times the share of a subject's other visits in the cohort.

    Parameters
    ----------
    X : array-like of shape (n_scans, n_features)
        Embeddings.
    subjects : array-like of shape (n_scans,)
        Subject of each scan.
    k : int, default=5
        Number of neighbours looked at.
    metric : {"cosine", "euclidean"}, default="cosine"
    standardize : bool, default=True
        As in :class:`SimilarScans`.

    Returns
    -------
    float
        Fraction of the scans with another visit that find one among their ``k``
        nearest neighbours.
    """
    if subjects is None:
        raise InputError("subjects: one subject per scan is required")
    index = SimilarScans(n_neighbors=k, metric=metric, standardize=standardize)
    index.fit(X, subjects=subjects)
    scans_of_subject = pd.Series(index.subjects_).map(pd.Series(index.subjects_).value_counts())
    if scans_of_subject.max() < 2:
        raise InputError("subjects: no subject has two scans, so no visit can be retrieved")
    neighbours = index.query()
    same_subject = neighbours["subject"].to_numpy() == index.subjects_[neighbours["query"].to_numpy()]
    hits = pd.Series(same_subject).groupby(neighbours["query"].to_numpy()).any()
    return float(hits[scans_of_subject.to_numpy() > 1].mean())


def _labels(name, values, n_scans, default=None):
    if values is None:
        return default
    values = np.asarray(values)
    if values.shape != (n_scans,):
        raise InputError(f"{name} has shape {values.shape}; expected one value per scan ({n_scans},)")
    return values


def _check_count(name, value):
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}={value!r}: expected a positive integer")

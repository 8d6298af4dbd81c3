"""Quality control of scans from their embedding and their reconstruction error.

A scan that does not belong in a cohort (failed preprocessing, a flipped volume,
another contrast, an artefact, noise) sits far from the other scans in embedding
space, and the stage-1 autoencoder, trained on normal scans, often reconstructs it
badly. :class:`QualityControl` turns both signals into robust z-scores and flags
the scans whose larger z-score passes a threshold, optionally comparing each scan
with its own acquisition site. With a fitted :class:`ldae.LDAEEncoder`,
:func:`reconstruction_error` measures the second signal and
:func:`latent_statistics` gives a small stage-1 representation to use in place of
the semantic embedding; :func:`simulate_corruptions` makes corrupted scans to check
that QC catches them.
"""

from numbers import Real

import numpy as np
import pandas as pd
import torch
from scipy.stats import median_abs_deviation
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.covariance import LedoitWolf, MinCovDet
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import RobustScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from ._documentation import DocumentationLinkMixin
from .exceptions import InputError
from .imaging import as_volume_dataset

__all__ = ["CORRUPTIONS", "QualityControl", "latent_statistics", "reconstruction_error",
           "simulate_corruptions"]

METHODS = ("mahalanobis", "isolation_forest")
ERROR_METRICS = ("l1", "mse")
CORRUPTIONS = ("artefact", "upside-down", "inverted contrast", "noise")
SIMULATED = (*CORRUPTIONS, "left-right")
# Below this many scans per embedding dimension the MCD's h-subset covariance is
# unstable (the usual rule of thumb is n > 5p): shrink instead.
MCD_SAMPLES_PER_DIMENSION = 5
MIN_SCANS_PER_SITE = 5


class QualityControl(DocumentationLinkMixin, OutlierMixin, BaseEstimator):
    """Outlier score of each scan from its embedding and, optionally, its reconstruction error.

    Each signal becomes a robust z-score against the scans seen in ``fit``:
    ``(value - median) / MAD``, with the MAD scaled to the standard deviation of a
    normal distribution. The embedding signal is the Mahalanobis distance to a
    robust centre (``method="mahalanobis"``; its squared value to the power 1/3,
    which is close to normal in any dimension) or the anomaly score of an
    isolation forest; the reconstruction signal is the logarithm of the reconstruction error
    (errors are positive and skewed). The outlier score of a scan is the larger of
    its z-scores, so a scan is flagged when either signal is abnormal; scans whose
    score exceeds ``threshold`` are flagged.

    ``fit`` may see the outliers themselves: medians, MADs, the minimum covariance
    determinant and isolation forests resist a minority of contaminated scans.

    In a multi-site cohort, pass ``site``: a site whose scanner gives noisier or
    differently contrasted images otherwise looks abnormal as a whole. Both
    signals are then centred on their site's median before scoring, so a scan is
    compared with its own site's scans; every site needs at least 5 scans in
    ``fit``, and a site whose scans are all corrupted is no longer visible (the
    site-prediction check of :mod:`ldae.site_effects` shows such a site).

    Parameters
    ----------
    method : {"mahalanobis", "isolation_forest"}, default="mahalanobis"
        Embedding signal. "mahalanobis": distance under the minimum covariance
        determinant (:class:`~sklearn.covariance.MinCovDet`) when there are more
        than 5 scans per embedding dimension, else under a Ledoit-Wolf shrunk
        covariance refitted once without the scans it finds beyond ``threshold``.
        "isolation_forest": :class:`~sklearn.ensemble.IsolationForest`.
    threshold : float, default=3.5
        Robust z-score above which a scan is flagged (3.5 is the usual cut-off of
        modified z-scores, Iglewicz & Hoaglin 1993).
    random_state : int, RandomState instance or None, default=None
        Seeds the minimum covariance determinant or the isolation forest.

    Attributes
    ----------
    scaler_ : RobustScaler
        Median/IQR scaling of the embedding dimensions applied before the model.
    detector_ : MinCovDet, LedoitWolf or IsolationForest
        The fitted model of the embedding signal.
    centers_, scales_ : dict of str to float
        Median and normal-scaled MAD of each signal ("embedding", and
        "reconstruction" when errors were given) over the fitted scans.
    site_medians_ : dict of str to DataFrame, or None
        With ``site``: per site (rows), the median embedding ("embedding") and
        the median log reconstruction error ("reconstruction") subtracted from its
        scans.
    uses_reconstruction_ : bool
        Whether ``fit`` received reconstruction errors (then scoring needs them).
    offset_ : float
        ``-threshold``: ``decision_function = score_samples - offset_``, as in
        scikit-learn's outlier detectors.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embeddings = np.vstack([rng.normal(size=(60, 4)), [[8.0, 8.0, 8.0, 8.0]]])
    >>> qc = QualityControl(random_state=0).fit(embeddings)
    >>> int(np.argmax(qc.outlier_score(embeddings)))
    60
    """

    def __init__(self, method="mahalanobis", threshold=3.5, random_state=None):
        self.method = method
        self.threshold = threshold
        self.random_state = random_state

    def fit(self, X, y=None, reconstruction_error=None, site=None):
        """Learn what normal scans look like.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
            Embeddings of the scans.
        y : ignored
        reconstruction_error : array-like of shape (n_scans,), optional
            Reconstruction error of each scan (see :func:`reconstruction_error`).
        site : array-like of shape (n_scans,), optional
            Acquisition site of each scan: compare each scan with its own site.

        Returns
        -------
        self : QualityControl
        """
        self._check_params()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=3)
        self.uses_reconstruction_ = reconstruction_error is not None
        raw = {"embedding": X}
        if self.uses_reconstruction_:
            raw["reconstruction"] = _log_errors(reconstruction_error, len(X))[:, None]
        self.site_medians_ = None if site is None else _site_medians(raw, _sites(site, len(X)))
        centred = self._site_centred(raw, site)
        self.scaler_ = RobustScaler().fit(centred["embedding"])
        scaled = self.scaler_.transform(centred["embedding"])
        self.detector_ = self._fit_detector(scaled)
        signals = {"embedding": self._embedding_signal(scaled)}
        if self.uses_reconstruction_:
            signals["reconstruction"] = centred["reconstruction"][:, 0]
        self.centers_ = {name: float(np.median(values)) for name, values in signals.items()}
        self.scales_ = {name: _spread(values) for name, values in signals.items()}
        self.offset_ = -float(self.threshold)
        return self

    def signal_scores(self, X, reconstruction_error=None, site=None):
        """Robust z-score of each signal.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
            Required when ``fit`` received reconstruction errors.
        site : array-like of shape (n_scans,), optional
            Required when ``fit`` received sites.

        Returns
        -------
        DataFrame
            Columns ``embedding_z`` and, when used, ``reconstruction_z``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        raw = {"embedding": X}
        if self.uses_reconstruction_:
            if reconstruction_error is None:
                raise InputError("reconstruction_error: required, since fit received reconstruction errors")
            raw["reconstruction"] = _log_errors(reconstruction_error, len(X))[:, None]
        elif reconstruction_error is not None:
            raise InputError("reconstruction_error: fit received none, so it cannot be scored; "
                             "refit with reconstruction_error=")
        centred = self._site_centred(raw, site)
        signals = {"embedding": self._embedding_signal(self.scaler_.transform(centred["embedding"]))}
        if self.uses_reconstruction_:
            signals["reconstruction"] = centred["reconstruction"][:, 0]
        return pd.DataFrame({f"{name}_z": (values - self.centers_[name]) / self.scales_[name]
                             for name, values in signals.items()})

    def outlier_score(self, X, reconstruction_error=None, site=None):
        """Outlier score of each scan: the larger of its robust z-scores (higher is worse).

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional

        Returns
        -------
        ndarray of shape (n_scans,)
        """
        return self.signal_scores(X, reconstruction_error, site).max(axis=1).to_numpy()

    def score_samples(self, X, reconstruction_error=None, site=None):
        """Normality of each scan, scikit-learn's convention: ``-outlier_score`` (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional

        Returns
        -------
        ndarray of shape (n_scans,)
        """
        return -self.outlier_score(X, reconstruction_error, site)

    def decision_function(self, X, reconstruction_error=None, site=None):
        """``threshold - outlier_score``: negative for flagged scans.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional

        Returns
        -------
        ndarray of shape (n_scans,)
        """
        return self.score_samples(X, reconstruction_error, site) - self.offset_

    def predict(self, X, reconstruction_error=None, site=None):
        """-1 for flagged scans, 1 for the others (scikit-learn's outlier convention).

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional

        Returns
        -------
        ndarray of shape (n_scans,) of int
        """
        return np.where(self.decision_function(X, reconstruction_error, site) < 0, -1, 1)

    def fit_predict(self, X, y=None, reconstruction_error=None, site=None):
        """Fit on the scans, then flag among them: -1 for flagged scans, 1 for the others.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        y : ignored
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional

        Returns
        -------
        ndarray of shape (n_scans,) of int
        """
        self.fit(X, reconstruction_error=reconstruction_error, site=site)
        return self.predict(X, reconstruction_error, site)

    def score_table(self, X, reconstruction_error=None, site=None, frame=None):
        """Every scan's scores, worst first.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional
        frame : DataFrame, optional
            One row per scan (e.g. the cohort table); its columns are joined and its
            index is kept.

        Returns
        -------
        DataFrame
            The ``frame`` columns, then ``embedding_z``, ``reconstruction_z`` (when
            used), ``outlier_score`` and ``flagged``, sorted by decreasing
            ``outlier_score``.
        """
        table = self.signal_scores(X, reconstruction_error, site)
        table["outlier_score"] = table.max(axis=1)
        table["flagged"] = table["outlier_score"] > self.threshold
        if frame is not None:
            if len(frame) != len(table):
                raise InputError(f"frame has {len(frame)} rows for {len(table)} scans")
            table = pd.concat([frame.reset_index(drop=True), table], axis=1).set_axis(frame.index)
        return table.sort_values("outlier_score", ascending=False, kind="stable")

    def flag(self, X, reconstruction_error=None, site=None, frame=None):
        """The flagged scans, worst first: the rows of :meth:`score_table` above ``threshold``.

        Parameters
        ----------
        X : array-like of shape (n_scans, n_features)
        reconstruction_error : array-like of shape (n_scans,), optional
        site : array-like of shape (n_scans,), optional
        frame : DataFrame, optional

        Returns
        -------
        DataFrame
        """
        table = self.score_table(X, reconstruction_error, site, frame)
        return table[table["flagged"]]

    def _check_params(self):
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r}: expected one of {METHODS}")
        if not isinstance(self.threshold, Real) or not np.isfinite(self.threshold):
            raise InputError(f"threshold={self.threshold!r}: expected a finite number")

    def _site_centred(self, raw, site):
        """Each signal minus the median of the scan's site (unchanged without sites)."""
        if self.site_medians_ is None:
            if site is not None:
                raise InputError("site: fit received no sites; refit with site=")
            return raw
        if site is None:
            raise InputError("site: required, since fit received sites")
        site = _sites(site, len(raw["embedding"]))
        unknown = sorted(set(site.tolist()) - set(self.site_medians_["embedding"].index), key=str)
        if unknown:
            raise InputError(f"site: sites {unknown} were not seen in fit")
        return {name: values - self.site_medians_[name].loc[site].to_numpy()
                for name, values in raw.items()}

    def _fit_detector(self, scaled):
        if self.method == "isolation_forest":
            return IsolationForest(random_state=self.random_state).fit(scaled)
        n_samples, n_features = scaled.shape
        if n_samples > MCD_SAMPLES_PER_DIMENSION * n_features:
            return MinCovDet(random_state=self.random_state).fit(scaled)
        shrunk = LedoitWolf().fit(scaled)
        # one reweighting step: outliers in the fit would inflate the covariance
        distances = np.cbrt(shrunk.mahalanobis(scaled))
        inliers = (distances - np.median(distances)) / _spread(distances) <= self.threshold
        return LedoitWolf().fit(scaled[inliers]) if inliers.sum() >= 3 else shrunk

    def _embedding_signal(self, scaled):
        if self.method == "isolation_forest":
            return -self.detector_.score_samples(scaled)
        # the cube root of a squared distance is close to normal (Wilson & Hilferty
        # 1931) whatever the dimension, so robust z-scores of it are calibrated
        return np.cbrt(self.detector_.mahalanobis(scaled))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


def reconstruction_error(encoder, X, metric="l1"):
    """Per-scan reconstruction error of a fitted encoder's stage-1 autoencoder.

    Each scan is preprocessed as the encoder preprocesses it, encoded to the mean of
    the autoencoder's posterior and decoded; the error is averaged over voxels.
    Scans unlike the training data (noise, a strong artefact) reconstruct worse; a
    convolutional autoencoder still reconstructs some unfamiliar images (another
    contrast, a flipped head) about as well as normal ones, which the embedding or
    :func:`latent_statistics` catch instead.

    Parameters
    ----------
    encoder : ldae.LDAEEncoder
        A fitted encoder.
    X : list of paths or nibabel images, pandas Series of paths, or ndarray
        Scans, as :meth:`ldae.LDAEEncoder.transform` accepts them.
    metric : {"l1", "mse"}, default="l1"
        Mean absolute error (the stage-1 training loss) or mean squared error.

    Returns
    -------
    ndarray of shape (n_scans,), float64
    """
    if metric not in ERROR_METRICS:
        raise InputError(f"metric={metric!r}: expected one of {ERROR_METRICS}")
    check_is_fitted(encoder)
    dataset = as_volume_dataset(X, encoder.preprocessing_, cache_dir=encoder.cache_dir)
    autoencoder = encoder.autoencoder_

    def per_scan_error(volumes):
        mean, _ = autoencoder.encode(volumes)
        difference = autoencoder.decode(mean).float() - volumes.float()
        pointwise = difference.abs() if metric == "l1" else difference.square()
        return pointwise.flatten(start_dim=1).mean(dim=1)

    return torch.cat(list(encoder._batches(dataset, per_scan_error))).numpy().astype(np.float64)


def latent_statistics(encoder, X):
    """Mean and standard deviation of each channel of a scan's stage-1 latent.

    A compact description of a scan's global intensity and contrast as the
    autoencoder encodes it: an inverted contrast, a flipped head or noise move it
    far from normal scans even where the reconstruction error stays normal (a
    convolutional autoencoder reconstructs many unfamiliar images well). It
    depends on stage 1 only, so it is a QC representation that does not wait for
    the semantic embedding to be trained well: pass it to
    :class:`QualityControl` in place of the embedding.

    With ``ae_template=True`` (the ``tiny`` and ``small`` presets) the latent codes the
    scan's deviation from the mean training scan, and these statistics separate
    corrupted scans less sharply; the reconstruction error separates them more
    sharply instead (on a tiny model of 19 clean scans: 0.04–0.07 for clean scans,
    0.10–0.44 for the four corruptions of :func:`simulate_corruptions`, against
    0.19–0.24 and 0.19–0.51 with a plain AutoencoderKL), so pass both to
    :class:`QualityControl`.

    Parameters
    ----------
    encoder : ldae.LDAEEncoder
        A fitted encoder.
    X : list of paths or nibabel images, pandas Series of paths, or ndarray
        Scans, as :meth:`ldae.LDAEEncoder.transform` accepts them.

    Returns
    -------
    ndarray of shape (n_scans, 2 * latent_channels)
        Per channel of :meth:`ldae.LDAEEncoder.encode_latent`: the spatial means,
        then the spatial standard deviations.
    """
    latents = encoder.encode_latent(X)
    spatial = tuple(range(2, latents.ndim))
    return np.concatenate([latents.mean(axis=spatial), latents.std(axis=spatial)], axis=1)


def _sites(site, n_scans):
    site = np.asarray(site)
    if site.shape != (n_scans,):
        raise InputError(f"site has shape {site.shape}; expected one site per scan ({n_scans},)")
    return site


def _site_medians(raw, site):
    counts = pd.Series(site).value_counts()
    small = counts[counts < MIN_SCANS_PER_SITE]
    if len(small):
        raise InputError(f"site: sites {small.to_dict()} have fewer than {MIN_SCANS_PER_SITE} scans, "
                         "too few for a typical value; merge them or leave site out")
    return {name: pd.DataFrame(values).groupby(site).median() for name, values in raw.items()}


def _log_errors(errors, n_scans):
    errors = np.asarray(errors, dtype=np.float64)
    if errors.shape != (n_scans,):
        raise InputError(
            f"reconstruction_error has shape {errors.shape}; expected one value per scan ({n_scans},)")
    if not np.all(np.isfinite(errors)) or np.any(errors <= 0):
        raise InputError("reconstruction_error: values must be finite and positive")
    return np.log(errors)


def _spread(values):
    """Normal-scaled MAD; the standard deviation, or 1, where it is 0 (z would be infinite)."""
    for spread in (median_abs_deviation(values, scale="normal"), np.std(values)):
        if spread > 0:
            return float(spread)
    return 1.0


def simulate_corruptions(volumes, kinds=CORRUPTIONS, random_state=None):
    """Corrupted copies of clean scans, to check that quality control catches them.

    Parameters
    ----------
    volumes : ndarray of shape (n_scans, D, H, W)
        Clean scans on a RAS grid with intensities in [0, 1] (e.g. the images of
        :func:`ldae.datasets.make_synthetic_cohort`). Corruption ``i`` starts from
        ``volumes[i % n_scans]``.
    kinds : sequence of str, default=CORRUPTIONS
        Any of "artefact" (every third coronal slice saturated: a zipper/spike
        artefact), "upside-down" (inferior-superior flip), "inverted contrast"
        (1 - intensity inside the head: a T2-like contrast), "noise" (uniform noise,
        no anatomy) and "left-right" (a left-right flip, which a nearly symmetric
        brain hides from both signals: not among the defaults).
    random_state : int, Generator or None, default=None
        Seed of the noise.

    Returns
    -------
    ndarray of shape (len(kinds), D, H, W), float32
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim != 4 or len(volumes) == 0:
        raise InputError(f"volumes has shape {volumes.shape}; expected (n_scans, D, H, W)")
    unknown = sorted(set(kinds) - set(SIMULATED))
    if unknown:
        raise InputError(f"kinds: unknown corruptions {unknown}; expected some of {SIMULATED}")
    rng = np.random.default_rng(random_state)
    corrupted = []
    for position, kind in enumerate(kinds):
        volume = volumes[position % len(volumes)].copy()
        if kind == "artefact":
            volume[:, ::3, :] = 1.0
        elif kind == "upside-down":
            volume = volume[:, :, ::-1]
        elif kind == "left-right":
            volume = volume[::-1]
        elif kind == "inverted contrast":
            volume = np.where(volume > 0.05, 1 - volume, 0)
        else:
            volume = rng.random(volume.shape)
        corrupted.append(volume)
    return np.stack(corrupted).astype(np.float32)

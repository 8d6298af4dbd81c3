"""How far an embedding lies from the embeddings of the scans a model was fitted on.

A scan unlike the training scans (another contrast, an unregistered or aliased volume,
a lesion the cohort never showed) still gets an embedding; nothing in it says that it
cannot be trusted. :class:`TrainingDistribution` keeps a robust summary of the training
embeddings — the median and the scaled median absolute deviation (MAD) of each
dimension — and scores a new embedding by the median over dimensions of its robust
z-scores' magnitudes. For Gaussian embeddings a typical scan scores about 0.67. An
embedding is flagged when it scores above ``OUTLIER_FACTOR`` times the 99th percentile
of the training scans' own scores, and at least ``MIN_THRESHOLD`` (half its dimensions
more than 2 robust SDs away; this floor rules when few scans were trained on): cheap,
independent of the embedding's size, and not moved by a few extreme training scans.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import median_abs_deviation

OUTLIER_FACTOR = 1.5
MIN_THRESHOLD = 2.0


@dataclass(frozen=True)
class TrainingDistribution:
    """Robust summary of training embeddings, and the distance of new ones from it.

    Attributes
    ----------
    centre : ndarray of shape (n_dims,)
        Median of each dimension over the training scans.
    scale : ndarray of shape (n_dims,)
        MAD of each dimension scaled to a Gaussian's SD (1.4826 × MAD; a constant
        dimension gets 1).
    threshold : float
        Distance above which an embedding counts as out of distribution.
    """

    centre: np.ndarray
    scale: np.ndarray
    threshold: float

    @classmethod
    def of(cls, embeddings):
        """Summarise the training embeddings (n_scans, n_dims); NaN rows are ignored."""
        embeddings = np.asarray(embeddings, dtype=float)
        embeddings = embeddings[~np.isnan(embeddings).any(axis=1)]
        centre = np.median(embeddings, axis=0)
        scale = median_abs_deviation(embeddings, axis=0, scale="normal")
        scale[scale <= 0] = 1.0
        summary = cls(centre, scale, np.inf)
        threshold = max(MIN_THRESHOLD,
                        OUTLIER_FACTOR * float(np.percentile(summary.distance(embeddings), 99)))
        return cls(centre, scale, threshold)

    def distance(self, embeddings):
        """Median absolute robust z-score of each embedding (n_scans, n_dims): NaN for a NaN row."""
        z = (np.asarray(embeddings, dtype=float) - self.centre) / self.scale
        return np.median(np.abs(z), axis=1)

    def outside(self, embeddings):
        """Whether each embedding lies beyond ``threshold`` (False for a NaN row)."""
        with np.errstate(invalid="ignore"):
            return self.distance(embeddings) > self.threshold

    def to_dict(self):
        """Plain lists and floats, for a model file."""
        return {"centre": self.centre.tolist(), "scale": self.scale.tolist(),
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, values):
        """Rebuild a summary saved with :meth:`to_dict`."""
        return cls(np.asarray(values["centre"], dtype=float),
                   np.asarray(values["scale"], dtype=float), float(values["threshold"]))

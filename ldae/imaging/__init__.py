"""Image input layer: scans in (paths, images, arrays, cohort tables), volumes out.

- :func:`as_volume_dataset` turns X into a lazy :class:`VolumeDataset` of
  preprocessed float32 volumes on one target grid.
- :class:`Preprocessing` holds the settings: resampling into a model grid fixed in
  world space (or reorientation, resampling and crop/pad of each scan's own grid),
  percentile intensity scaling, brain mask; :func:`model_preprocessing` gives a
  model's default.
- :func:`read_manifest` and :func:`read_bids` read cohort tables, one row per scan.
"""

from .cohort import read_bids, read_manifest
from .inputs import VolumeDataset, as_volume_dataset
from .preprocessing import Preprocessing, model_preprocessing

__all__ = ["Preprocessing", "VolumeDataset", "as_volume_dataset", "model_preprocessing",
           "read_bids", "read_manifest"]

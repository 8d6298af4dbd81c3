"""Reference encoders that LDAE is compared with, exposed like :class:`ldae.LDAEEncoder`.

- :class:`VoxelDAEEncoder`: a diffusion autoencoder in voxel space (DiffAE-style),
  the model whose inference LDAE claims to speed up ~20x.
- :class:`SupervisedEncoder`: the same semantic encoder design trained on the labels,
  the upper line of a probe table.
"""

from ._base import BASELINE_PRESETS, BaselineConfig, resolve_baseline_config
from .supervised import SupervisedEncoder
from .voxel_dae import VoxelDAEEncoder, build_conditional_unet

__all__ = [
    "BASELINE_PRESETS",
    "BaselineConfig",
    "SupervisedEncoder",
    "VoxelDAEEncoder",
    "build_conditional_unet",
    "resolve_baseline_config",
]

"""What the two baseline encoders share: settings from presets, data in, batched inference."""

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import DataLoader

from .._documentation import DocumentationLinkMixin
from ..exceptions import InputError
from ..imaging import as_volume_dataset, model_preprocessing
from ..imaging.grid import MNI_FIELD_OF_VIEW_MM, grid_affine
from ..presets import PRESETS
from ..training.device import autocast, resolve_device, resolve_precision
from ..training.stages import as_volume_batch


@dataclass(frozen=True)
class BaselineConfig:
    """Every setting of a baseline encoder, resolved from a preset and overrides.

    The semantic encoder is the paper's 2.5D slice encoder
    (:class:`~ldae.representation.SliceSemanticEncoder`); ``unet_*`` settings are
    used by :class:`~ldae.baselines.VoxelDAEEncoder` only.
    """

    image_shape: tuple = (32, 40, 32)
    field_of_view: tuple = MNI_FIELD_OF_VIEW_MM
    encoder_channels: tuple = (32, 64)
    embedding_dim: int = 32
    unet_channels: tuple = (8, 16, 32)
    unet_res_blocks: int = 1
    unet_attention: tuple = ()
    unet_head_channels: int = 32
    unet_norm_groups: int = 8
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-3
    ema_decay: float = 0.999
    ddim_steps: int = 10

    @property
    def grid_affine(self):
        """World (MNI mm) affine of the model grid, as LDAE's (:class:`ldae.presets.ModelConfig`)."""
        return grid_affine(self.image_shape, self.field_of_view)

    def to_dict(self):
        """Plain-Python dictionary of the settings (lists for tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}


def _from_ldae_preset(name, **baseline_settings):
    """A baseline preset sharing grid, encoder, embedding, batch and DDIM steps with LDAE's."""
    ldae = PRESETS[name]
    shared = dict(image_shape=ldae.image_shape, field_of_view=ldae.field_of_view,
                  encoder_channels=ldae.encoder_channels,
                  embedding_dim=ldae.embedding_dim, batch_size=ldae.batch_size,
                  ema_decay=ldae.ema_decay, ddim_steps=ldae.ddim_steps)
    return BaselineConfig(**shared, **baseline_settings)


def _ldae_denoiser(name):
    """The architecture of the latent UNet of LDAE's preset ``name``: a voxel DAE with it
    differs from LDAE only in where its denoiser works (the equal-architecture comparison)."""
    ldae = PRESETS[name]
    return dict(unet_channels=ldae.unet_channels, unet_res_blocks=ldae.unet_res_blocks,
                unet_attention=ldae.unet_attention, unet_head_channels=ldae.unet_head_channels,
                unet_norm_groups=ldae.unet_norm_groups)


BASELINE_PRESETS = {
    "tiny": _from_ldae_preset("tiny", unet_channels=(8, 16, 32), epochs=5, lr=1e-3),
    "small": _from_ldae_preset("small", unet_channels=(16, 32, 64, 64), unet_head_channels=64,
                               epochs=30, lr=1e-3),
    "paper": _from_ldae_preset("paper", unet_channels=(32, 64, 128, 256, 256),
                               unet_head_channels=64, unet_norm_groups=32, epochs=200, lr=1e-4),
    "small-ldae-unet": _from_ldae_preset("small", **_ldae_denoiser("small"), epochs=30, lr=1e-3),
    "paper-ldae-unet": _from_ldae_preset("paper", **_ldae_denoiser("paper"), epochs=200, lr=1e-4),
}


def resolve_baseline_config(preset, **overrides):
    """Combine a baseline preset with explicit overrides into a validated config.

    Parameters
    ----------
    preset : {"tiny", "small", "paper", "small-ldae-unet", "paper-ldae-unet"}
        Same names, grids, encoder widths, embedding sizes, batch sizes and DDIM
        steps as the presets of :class:`ldae.LDAEEncoder`; the ``-ldae-unet``
        presets give the voxel DAE the latent UNet architecture of that LDAE preset.
    **overrides
        Settings of :class:`BaselineConfig`; ``None`` values are ignored.

    Returns
    -------
    BaselineConfig
    """
    if preset not in BASELINE_PRESETS:
        raise InputError(f"preset={preset!r} is not one of {sorted(BASELINE_PRESETS)}")
    given = {key: tuple(value) if isinstance(value, list) else value
             for key, value in overrides.items() if value is not None}
    if "unet_channels" in given:  # the preset's attention flags are for its own levels
        given.setdefault("unet_attention", ())
    config = replace(BASELINE_PRESETS[preset], **given)
    if len(config.image_shape) != 3 or min(config.image_shape) < 1:
        raise InputError(f"image_shape={config.image_shape} must be three positive sizes (D, H, W)")
    for name in ("embedding_dim", "batch_size", "ddim_steps"):
        if getattr(config, name) < 1:
            raise InputError(f"{name}={getattr(config, name)} must be at least 1")
    if config.epochs < 0:
        raise InputError(f"epochs={config.epochs} must not be negative")
    if not config.lr > 0:
        raise InputError(f"lr={config.lr} must be positive")
    return config


class VolumeEncoderBase(DocumentationLinkMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                        BaseEstimator):
    """Shared machinery of the baseline encoders (not for direct use).

    Subclasses define ``_config_overrides()`` and the fitted ``semantic_encoder_``.
    """

    def _resolve_config(self):
        return resolve_baseline_config(self.preset, **self._config_overrides())


    def _start_fit(self, X):
        """Resolve the settings and read X: (dataset, device, autocast dtype, seed)."""
        config = self._resolve_config()
        if int(self.num_workers) != self.num_workers or self.num_workers < 0:
            raise InputError(f"num_workers={self.num_workers} must be a non-negative integer")
        preprocessing = model_preprocessing(self.preprocessing, config.image_shape,
                                            config.grid_affine)
        dataset = as_volume_dataset(X, preprocessing, cache_dir=self.cache_dir)
        device = resolve_device(self.device)
        dtype = resolve_precision(self.precision, device, "training")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.config_ = config
        self.preprocessing_ = preprocessing
        self.affine_ = np.asarray(dataset.affine, dtype=float)
        self._n_features_out = config.embedding_dim
        return dataset, device, dtype, seed

    def _training_loader(self, dataset, seed):
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=self.config_.batch_size, shuffle=True,
                          generator=generator, num_workers=self.num_workers)

    def _dataset(self, X):
        return as_volume_dataset(X, self.preprocessing_, cache_dir=self.cache_dir)

    @torch.no_grad()
    def _batches(self, X, compute):
        """Yield ``compute(volumes)`` over batches of X's (B, 1, D, H, W) volumes on the
        model's device, as float32 CPU tensors."""
        device = next(self.semantic_encoder_.parameters()).device
        dtype = resolve_precision(self.precision, device, "embedding")
        loader = DataLoader(self._dataset(X), batch_size=self.config_.batch_size * 2,
                            num_workers=self.num_workers)
        for batch in loader:
            with autocast(device, dtype):
                yield compute(as_volume_batch(batch, device)).float().cpu()

    def transform(self, X):
        """Semantic embedding of each scan.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans: NIfTI files, images, or an array (n, D, H, W) / (n, 1, D, H, W).

        Returns
        -------
        ndarray of shape (n_scans, embedding_dim), float32
        """
        check_is_fitted(self)
        return torch.cat(list(self._batches(X, self.semantic_encoder_))).numpy()

    def __sklearn_is_fitted__(self):
        return hasattr(self, "semantic_encoder_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = self.random_state is None
        return tags


def frozen(network):
    """``network`` in evaluation mode without gradients."""
    return network.eval().requires_grad_(False)

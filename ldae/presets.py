"""Named model configurations of LDAEEncoder and how overrides combine with them.

A preset fixes every architectural and training choice of the three stages; any
LDAEEncoder parameter left at ``None`` takes the preset's value.

Every preset models a physical grid: ``image_shape`` voxels spanning ``field_of_view``
mm (176 x 220 x 176, the MNI152 brain with a margin) centred on the MNI brain; scans are
resampled into it (:func:`ldae.imaging.grid.grid_affine`, :class:`ldae.imaging.Preprocessing`).

- ``"tiny"``: 32x40x32 voxels of 5.5 mm, a few epochs. For tests: fits in seconds on a CPU.
- ``"small"``: 32x40x32 voxels of 5.5 mm, networks and epochs sized so that a cohort of a few
  hundred scans trains in minutes on two CPU cores; an 8-channel latent (with 3, a
  linear probe on the latent itself reaches ROC-AUC 0.65 instead of 0.85 for AD vs CN in
  ``benchmarks/bench_probes.py``). The default; what the demo uses.
- ``"paper"``: the architecture of Lozupone et al. (2025) at 128x160x128 voxels of
  1.375 mm: AutoencoderKL
  (64, 128, 128, 128) with f = 8, latent UNet (256, 512, 768) with attention, and the
  2.5D slice encoder with a 768-d embedding, the paper's plain PDAE loss (no code
  decorrelation, no encoder warm-up), a plain AutoencoderKL and constant learning
  rates. Training it is for GPUs.

Beyond the paper, ``tiny`` and ``small`` train a stage 1 that codes each scan's
deviation from the mean training scan (``ae_template``) and decay every learning rate
on a cosine (``lr_schedule``); ``small`` also holds the semantic encoder at its initial weights for the first quarter
of stage 3 (``encoder_warmup_fraction``). Their effect is measured by
``benchmarks/bench_model_quality.py`` (docs/benchmarks.md).
"""

from dataclasses import asdict, dataclass, replace
from math import inf
from numbers import Real

from .exceptions import InputError
from .imaging.grid import MNI_FIELD_OF_VIEW_MM, grid_affine
from .training.learning_rate import LR_SCHEDULES


@dataclass(frozen=True)
class ModelConfig:
    """Every setting of the three stages, resolved from a preset and overrides."""

    image_shape: tuple = (32, 40, 32)
    field_of_view: tuple = MNI_FIELD_OF_VIEW_MM
    # stage 1: AutoencoderKL
    ae_channels: tuple = (8, 16, 32)
    ae_res_blocks: int = 1
    ae_norm_groups: int = 8
    latent_channels: int = 3
    ae_template: bool = True
    kl_weight: float = 1e-7
    adversarial_weight: float = 0.0
    # stage 2: latent denoiser
    unet_channels: tuple = (32, 64)
    unet_res_blocks: int = 1
    unet_attention: tuple = (False, False)
    unet_head_channels: int = 32
    unet_norm_groups: int = 8
    # stage 3: semantic encoder
    semantic_encoder: str = "latent"
    encoder_channels: tuple = (32, 64)
    embedding_dim: int = 32
    code_decorrelation: float = 0.0
    code_timesteps: int = 1000
    encoder_warmup_fraction: float = 0.0
    encoder_input_noise: float = 0.0
    # training
    ae_epochs: int = 3
    diffusion_epochs: int = 5
    representation_epochs: int = 5
    batch_size: int = 4
    ae_batch_size: int = 4
    ae_lr: float = 1e-3
    diffusion_lr: float = 1e-3
    representation_lr: float = 1e-3
    lr_schedule: str = "cosine"
    ema_decay: float = 0.999
    # inference
    ddim_steps: int = 10

    @property
    def grid_affine(self):
        """World (MNI mm) affine of the model grid: ``image_shape`` voxels over ``field_of_view``."""
        return grid_affine(self.image_shape, self.field_of_view)

    @property
    def voxel_size(self):
        """Voxel size (mm) of the model grid along x, y and z."""
        return tuple(f / n for f, n in zip(self.field_of_view, self.image_shape))

    @property
    def latent_shape(self):
        """Shape (C, d, h, w) of one scan's latent."""
        factor = 2 ** (len(self.ae_channels) - 1)
        return (self.latent_channels, *(size // factor for size in self.image_shape))

    def to_dict(self):
        """Plain-Python dictionary of the settings (lists for tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}


PRESETS = {
    "tiny": ModelConfig(),
    "small": ModelConfig(
        ae_channels=(16, 32, 32),
        latent_channels=8,
        encoder_warmup_fraction=0.25,
        unet_channels=(64, 128),
        encoder_channels=(64, 128),
        embedding_dim=64,
        ae_epochs=30,
        diffusion_epochs=30,
        representation_epochs=60,
        batch_size=8,
        ae_batch_size=8,
        ae_lr=2e-3,
        diffusion_lr=1e-3,
        representation_lr=1e-3,
        ddim_steps=20,
    ),
    "paper": ModelConfig(
        image_shape=(128, 160, 128),
        ae_channels=(64, 128, 128, 128),
        ae_res_blocks=2,
        ae_norm_groups=32,
        ae_template=False,
        adversarial_weight=0.025,
        unet_channels=(256, 512, 768),
        unet_res_blocks=2,
        unet_attention=(False, True, True),
        unet_head_channels=64,
        unet_norm_groups=32,
        semantic_encoder="slice",
        encoder_channels=(32, 64, 128, 256),
        embedding_dim=768,
        ae_epochs=100,
        diffusion_epochs=500,
        representation_epochs=200,
        batch_size=4,
        ae_batch_size=4,
        ae_lr=1e-4,
        diffusion_lr=1e-4,
        representation_lr=1e-4,
        lr_schedule="constant",
        ddim_steps=100,
    ),
}

SEMANTIC_ENCODERS = ("latent", "slice")


def resolve_config(preset, **overrides):
    """Combine a preset with explicit overrides into a validated ModelConfig.

    Parameters
    ----------
    preset : str
        One of ``PRESETS``.
    **overrides
        Settings of :class:`ModelConfig`; ``None`` values are ignored.

    Returns
    -------
    ModelConfig
    """
    if preset not in PRESETS:
        raise InputError(f"preset={preset!r} is not one of {sorted(PRESETS)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    for key, value in given.items():
        if isinstance(value, list):
            given[key] = tuple(value)
    if "unet_channels" in given and "unet_attention" not in given:
        given["unet_attention"] = (False,) * len(given["unet_channels"])
    config = replace(PRESETS[preset], **given)
    _validate(config)
    return config


def grid_for_voxel_size(preset, voxel_size):
    """The model grid of ``preset`` at another voxel size, over the same field of view.

    Parameters
    ----------
    preset : str
        One of ``PRESETS``.
    voxel_size : float
        Voxel size in mm.

    Returns
    -------
    dict
        ``image_shape`` (the preset's field of view over ``voxel_size``, rounded to the
        downsampling factor of the autoencoder and the denoiser together) and
        ``field_of_view`` (that shape times ``voxel_size``): parameters of
        :class:`ldae.LDAEEncoder`.
    """
    if preset not in PRESETS:
        raise InputError(f"preset={preset!r} is not one of {sorted(PRESETS)}")
    if not (isinstance(voxel_size, Real) and 0 < voxel_size < inf):
        raise InputError(f"voxel_size={voxel_size!r} must be a positive number of mm")
    config = PRESETS[preset]
    # the denoiser halves the latent at each of its levels but the last
    factor = 2 ** (len(config.ae_channels) - 1) * 2 ** (len(config.unet_channels) - 1)
    shape = tuple(max(factor, factor * round(extent / voxel_size / factor))
                  for extent in config.field_of_view)
    return {"image_shape": shape,
            "field_of_view": tuple(float(n * voxel_size) for n in shape)}


def _validate(config):
    if len(config.image_shape) != 3 or min(config.image_shape) < 1:
        raise InputError(f"image_shape={config.image_shape} must be three positive sizes (D, H, W)")
    factor = 2 ** (len(config.ae_channels) - 1)
    if any(size % factor for size in config.image_shape):
        raise InputError(
            f"image_shape={config.image_shape} must divide by {factor}, the autoencoder's "
            f"downsampling factor for ae_channels={config.ae_channels}"
        )
    # before stage 1 trains, not when stage 2 builds its denoiser; imported here because
    # the unet module imports MONAI (3.5 s), which reading a preset does not need
    from .diffusion.unet import check_latent_shape

    check_latent_shape(config.latent_shape[1:], config.unet_channels)
    if not (len(config.field_of_view) == 3 and all(
            isinstance(v, Real) and 0 < v < inf for v in config.field_of_view)):
        raise InputError(f"field_of_view={config.field_of_view} must be three positive sizes in mm")
    if config.lr_schedule not in LR_SCHEDULES:
        raise InputError(f"lr_schedule={config.lr_schedule!r} is not one of {LR_SCHEDULES}")
    if config.semantic_encoder not in SEMANTIC_ENCODERS:
        raise InputError(
            f"semantic_encoder={config.semantic_encoder!r} is not one of {SEMANTIC_ENCODERS}"
        )
    if len(config.unet_attention) != len(config.unet_channels):
        raise InputError(
            f"unet_attention={config.unet_attention} needs one entry per level of "
            f"unet_channels={config.unet_channels}"
        )
    positive = ("embedding_dim", "batch_size", "ae_batch_size", "ddim_steps", "latent_channels")
    for name in positive:
        if getattr(config, name) < 1:
            raise InputError(f"{name}={getattr(config, name)} must be at least 1")
    for name in ("ae_epochs", "diffusion_epochs", "representation_epochs"):
        if getattr(config, name) < 0:
            raise InputError(f"{name}={getattr(config, name)} must not be negative")
    if not (isinstance(config.encoder_warmup_fraction, Real)
            and 0 <= config.encoder_warmup_fraction <= 1):
        raise InputError(
            f"encoder_warmup_fraction={config.encoder_warmup_fraction} must be between 0 and 1")
    if not (isinstance(config.encoder_input_noise, Real) and 0 <= config.encoder_input_noise < inf):
        raise InputError(f"encoder_input_noise={config.encoder_input_noise!r} must be a "
                         "non-negative number (an SD in the units of the encoder's input)")
    if not (isinstance(config.code_timesteps, int) and 1 <= config.code_timesteps <= 1000):
        raise InputError(f"code_timesteps={config.code_timesteps!r} must be an integer from 1 "
                         "to the 1000 training timesteps")
    if not (isinstance(config.code_decorrelation, Real) and 0 <= config.code_decorrelation < inf):
        raise InputError(f"code_decorrelation={config.code_decorrelation} must be a number >= 0")
    if config.ddim_steps > 1000:
        raise InputError(f"ddim_steps={config.ddim_steps} cannot exceed the 1000 training steps")

"""Stage 2: the noise schedule, the latent denoising UNet and the DDIM sampler."""

from .ddim import ddim_decode, ddim_encode
from .loss import diffusion_loss, standard_normal_like
from .schedule import NoiseSchedule
from .unet import build_latent_unet, check_latent_shape

__all__ = [
    "NoiseSchedule",
    "build_latent_unet",
    "check_latent_shape",
    "ddim_decode",
    "ddim_encode",
    "diffusion_loss",
    "standard_normal_like",
]

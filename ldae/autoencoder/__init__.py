"""Stage 1: the 3D AutoencoderKL that maps volumes to compact latents and back."""

from .loss import AdversarialTerm, autoencoder_loss, kl_divergence
from .network import TemplateAutoencoderKL, build_autoencoder, check_network_widths

__all__ = ["AdversarialTerm", "TemplateAutoencoderKL", "autoencoder_loss", "build_autoencoder", "check_network_widths", "kl_divergence"]

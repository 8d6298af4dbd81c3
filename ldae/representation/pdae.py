"""The PDAE objective of stage 3 (Zhang et al. 2022), in latent space."""

import torch

from ..diffusion.loss import standard_normal_like
from .gradient_estimator import unet_features, unet_head


def pdae_loss(unet, estimator, semantic_encoder, z0, encoder_input, schedule, *, gamma=0.1, generator=None):
    """Posterior-mean-gap loss mean_B[λ_t · mean((ε − (ε_θ(z_t, t) + k_t · G_ψ(z_t, y, t)))²)].

    The UNet is frozen: ε_θ and its encoder-half features are computed without a
    graph, so only the semantic encoder and the gradient estimator get gradients.

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        The trained, frozen denoiser.
    estimator : GradientEstimator
        G_ψ.
    semantic_encoder : torch.nn.Module
        Enc_φ, producing y = semantic_encoder(encoder_input) of shape (B, embedding_dim).
    z0 : torch.Tensor
        Clean (scaled) latents, shape (B, C, d, h, w).
    encoder_input : torch.Tensor
        What the semantic encoder reads: the volumes (B, 1, D, H, W) or the latents.
    schedule : NoiseSchedule
        The noise schedule the UNet was trained with.
    gamma : float, default=0.1
        Exponent of the weighting λ_t = SNR_t^γ / (1 + SNR_t).
    generator : torch.Generator, optional
        Source of the timesteps and the noise.

    Returns
    -------
    torch.Tensor
        float32 scalar.
    """
    t = schedule.sample_timesteps(z0.shape[0], generator=generator, device=z0.device)
    noise = standard_normal_like(z0, generator=generator)
    z_t = schedule.add_noise(z0, noise, t)
    with torch.no_grad():
        features = unet_features(unet, z_t, t)
        eps_theta = unet_head(unet, features).float()
    y = semantic_encoder(encoder_input)
    shift = estimator(features, y).float()
    k_t, lambda_t = schedule.pdae_weights(t, gamma)
    broadcast = (-1,) + (1,) * (z0.ndim - 1)
    residual = noise - (eps_theta + k_t.reshape(broadcast) * shift)
    per_sample = residual.square().flatten(1).mean(dim=1)
    return (lambda_t * per_sample).mean()

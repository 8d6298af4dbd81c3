"""The PDAE objective of stage 3 (Zhang et al. 2022), in latent space."""

import torch

from ..diffusion.loss import standard_normal_like
from .gradient_estimator import unet_features, unet_head


def pdae_loss(unet, estimator, semantic_encoder, z0, encoder_input, schedule, *, gamma=0.1,
              decorrelation=0.0, timesteps=None, generator=None):
    """Posterior-mean-gap loss mean_B[λ_t · mean((ε − (ε_θ(z_t, t) + k_t · G_ψ(z_t, y, t)))²)],
    plus ``decorrelation`` · :func:`code_correlation_penalty` (y).

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
    decorrelation : float, default=0.0
        Weight of the penalty on correlated code dimensions; 0 is the plain PDAE loss.
    timesteps : int, optional
        Draw t uniformly from {0, ..., timesteps − 1} (default: every timestep).
    generator : torch.Generator, optional
        Source of the timesteps and the noise.

    Returns
    -------
    torch.Tensor
        float32 scalar.
    """
    t = schedule.sample_timesteps(z0.shape[0], generator=generator, device=z0.device,
                                  high=timesteps)
    noise = standard_normal_like(z0, generator=generator)
    z_t = schedule.add_noise(z0, noise, t)
    with torch.no_grad():
        features = unet_features(unet, z_t, t)
        eps_theta = unet_head(unet, features).float()
    y = semantic_encoder(encoder_input)
    shift = estimator.shift(features, y, t)
    k_t, lambda_t = schedule.pdae_weights(t, gamma)
    broadcast = (-1,) + (1,) * (z0.ndim - 1)
    residual = noise - (eps_theta + k_t.reshape(broadcast) * shift)
    per_sample = residual.square().flatten(1).mean(dim=1)
    loss = (lambda_t * per_sample).mean()
    if decorrelation:
        loss = loss + decorrelation * code_correlation_penalty(y)
    return loss


def code_correlation_penalty(codes):
    """Sum of the squared off-diagonal correlations between code dimensions over a
    batch, divided by the code size (VICReg's covariance term, on correlations).

    Left alone, the PDAE code spends nearly all its dimensions on the latent's
    largest factor of variation (on the synthetic cohort, head size). Penalising
    correlated dimensions makes each one carry something the others do not
    (``benchmarks/bench_probes.py`` reports the embedding's effective rank).

    Parameters
    ----------
    codes : torch.Tensor
        Codes of a batch, shape (B, embedding_dim).

    Returns
    -------
    torch.Tensor
        float32 scalar; 0 for a batch of fewer than two codes.
    """
    codes = codes.float()
    if len(codes) < 2:
        return codes.sum() * 0.0
    centred = codes - codes.mean(dim=0)
    # the floor inside the root keeps the gradient finite for a dimension that is
    # constant over the batch (in bf16, two close codes can round to the same value)
    standardised = centred / (centred.square().mean(dim=0) + 1e-4).sqrt()
    correlation = standardised.T @ standardised / len(codes)
    off_diagonal_squares = correlation.square().sum() - correlation.diagonal().square().sum()
    return off_diagonal_squares / correlation.shape[0]


@torch.no_grad()
def code_steering(unet, estimator, semantic_encoder, z0, encoder_input, schedule, *, repeats=4,
                  random_state=0, batch_size=64):
    """How much the semantic code steers the frozen denoiser: the PDAE loss of the
    scans with no shift (G = 0), with each scan's own code, and with the codes of
    other scans (a fixed permutation), on the same noise and timesteps: those of the
    stage-3 loss, t < ``estimator.timesteps`` (every timestep when it is None).

    ``gain`` = shuffled / own − 1 is the part of the denoising that is specific to the
    scan: 0 when G_ψ learnt a correction that is the same for every scan.

    Parameters
    ----------
    unet, estimator, semantic_encoder, schedule
        As for :func:`pdae_loss`, all in evaluation mode.
    z0 : torch.Tensor
        Scaled latents of the scans, shape (n, C, d, h, w).
    encoder_input : torch.Tensor
        What the semantic encoder reads for the same scans (``z0`` for a latent encoder).
    repeats : int, default=4
        Draws of noise and timesteps per scan.
    random_state : int, default=0
        Seed of the draws and of the permutation.
    batch_size : int, default=64

    Returns
    -------
    dict
        ``{"no shift", "own code", "shuffled codes", "gain"}`` as floats.
    """
    codes = torch.cat([semantic_encoder(chunk) for chunk in torch.split(encoder_input, batch_size)])
    permutation = torch.randperm(len(codes), generator=torch.Generator().manual_seed(random_state))
    variants = {"no shift": (_NoShift, codes), "own code": (estimator, codes),
                "shuffled codes": (estimator, codes[permutation])}
    timesteps = getattr(estimator, "timesteps", None)
    losses = {}
    for name, (shift, variant_codes) in variants.items():
        generator = torch.Generator().manual_seed(random_state)  # the same draws for each
        total = 0.0
        for _ in range(repeats):
            for first in range(0, len(z0), batch_size):
                batch = slice(first, first + batch_size)
                loss = pdae_loss(unet, shift, lambda _: variant_codes[batch], z0[batch], None,
                                 schedule, timesteps=timesteps, generator=generator)
                total += float(loss) * len(z0[batch])
        losses[name] = total / (repeats * len(z0))
    losses["gain"] = losses["shuffled codes"] / losses["own code"] - 1.0
    return losses


class _NoShift:
    """A gradient estimator that never shifts the denoiser (G = 0)."""

    @staticmethod
    def shift(features, y, t):
        return torch.zeros(())

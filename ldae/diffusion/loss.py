"""Training objective of the stage-2 latent denoiser."""

import torch
import torch.nn.functional as F


def diffusion_loss(unet, z0, schedule, *, generator=None):
    """ε-prediction loss ‖ε − ε_θ(z_t, t)‖² with t ~ U{0 … T − 1}, ε ~ N(0, I).

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        The denoiser, called as ``unet(z_t, t)``.
    z0 : torch.Tensor
        Clean (scaled) latents, shape (B, C, d, h, w).
    schedule : NoiseSchedule
        The noise schedule.
    generator : torch.Generator, optional
        Source of the timesteps and the noise.

    Returns
    -------
    torch.Tensor
        float32 scalar, the mean squared error over all elements.
    """
    t = schedule.sample_timesteps(z0.shape[0], generator=generator, device=z0.device)
    noise = standard_normal_like(z0, generator=generator)
    z_t = schedule.add_noise(z0, noise, t)
    return F.mse_loss(unet(z_t, t).float(), noise)


def standard_normal_like(reference, *, generator=None):
    """float32 N(0, I) noise of ``reference``'s shape, drawn on the generator's device.

    Parameters
    ----------
    reference : torch.Tensor
        Gives the shape and the device of the result.
    generator : torch.Generator, optional
        Source of randomness.

    Returns
    -------
    torch.Tensor
        float32 tensor on ``reference``'s device.
    """
    draw_device = generator.device if generator is not None else reference.device
    noise = torch.randn(reference.shape, generator=generator, device=draw_device, dtype=torch.float32)
    return noise.to(reference.device)

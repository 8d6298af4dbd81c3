"""Deterministic DDIM (η = 0) sampling and inversion on an explicit timestep grid.

MONAI's ``DDIMScheduler`` is not used: its ``set_timesteps`` grid disagrees with the
stride of ``step``/``reversed_step``, so encoding followed by decoding does not return
the start point. Here both directions walk the same (τ_i, τ_{i±1}) pairs of
:meth:`NoiseSchedule.ddim_timesteps`, with the clean signal at the virtual level −1.
"""

import torch


def _alpha_bar(schedule, timestep):
    """ᾱ at ``timestep`` as a Python float, with ᾱ_{−1} = 1 for the clean signal."""
    return 1.0 if timestep < 0 else float(schedule.alphas_cumprod[timestep])


def _ddim_move(z, eps, alpha_bar_from, alpha_bar_to):
    """Move z from noise level ᾱ_from to ᾱ_to along the deterministic DDIM path.

    Equivalent to predicting z0 = (z − √(1 − ᾱ_from) ε) / √ᾱ_from and re-noising it
    to ᾱ_to with the same ε, written with one fewer division.
    """
    ratio = (alpha_bar_to / alpha_bar_from) ** 0.5
    eps_coefficient = (1.0 - alpha_bar_to) ** 0.5 - ratio * (1.0 - alpha_bar_from) ** 0.5
    return ratio * z + eps_coefficient * eps


def _evaluate(eps_fn, z, timestep):
    t = torch.full((z.shape[0],), int(timestep), dtype=torch.long, device=z.device)
    return eps_fn(z, t).to(z.dtype)


def _working_dtype(z):
    # The update is done in at least float32, whatever precision eps_fn runs in.
    return torch.promote_types(z.dtype, torch.float32)


def ddim_decode(eps_fn, z_T, schedule, steps):
    """Run deterministic DDIM from the top of the grid down to the clean signal.

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(z, t) -> eps_hat`` with z of shape (B, ...) and t a LongTensor (B,).
    z_T : torch.Tensor
        Start point at level τ_{S−1} of the grid (e.g. N(0, I) noise or the output of
        :func:`ddim_encode`).
    schedule : NoiseSchedule
        The training noise schedule.
    steps : int
        Number of DDIM steps S (network evaluations).

    Returns
    -------
    torch.Tensor
        The decoded clean sample z0, float32 (float64 if z_T is float64).
    """
    grid = schedule.ddim_timesteps(steps).tolist()
    z = z_T.to(_working_dtype(z_T))
    for current, target in zip(reversed(grid), list(reversed(grid))[1:] + [-1]):
        eps = _evaluate(eps_fn, z, current)
        z = _ddim_move(z, eps, _alpha_bar(schedule, current), _alpha_bar(schedule, target))
    return z


def ddim_encode(eps_fn, z0, schedule, steps):
    """Invert deterministic DDIM: map a clean sample to its code at the top of the grid.

    Each step from level a to the next level b evaluates ε at the current point
    (z_a, a). The first step leaves the clean signal (level −1) and evaluates ε at
    timestep τ_0 = 0, the closest level the network knows.

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(z, t) -> eps_hat`` with z of shape (B, ...) and t a LongTensor (B,).
    z0 : torch.Tensor
        Clean samples, shape (B, ...).
    schedule : NoiseSchedule
        The training noise schedule.
    steps : int
        Number of DDIM steps S (network evaluations); use the same value to decode.

    Returns
    -------
    torch.Tensor
        The stochastic code z_T at level τ_{S−1}, float32 (float64 if z0 is float64).
    """
    grid = schedule.ddim_timesteps(steps).tolist()
    z = z0.to(_working_dtype(z0))
    for current, target in zip([-1] + grid[:-1], grid):
        eps = _evaluate(eps_fn, z, max(current, 0))
        z = _ddim_move(z, eps, _alpha_bar(schedule, current), _alpha_bar(schedule, target))
    return z

"""The linear DDPM noise schedule shared by training and DDIM inference."""

import numbers

import torch

from ..exceptions import InputError


class NoiseSchedule:
    """Linear-beta variance schedule of a discrete diffusion process.

    Timesteps are 0-indexed: ``t = 0`` is the least noisy level and
    ``t = num_train_timesteps - 1`` the most noisy one. The clean signal sits at the
    virtual level ``t = -1`` with ``alphas_cumprod[-1] := 1``.

    Parameters
    ----------
    num_train_timesteps : int, default=1000
        Number of diffusion steps T.
    beta_start, beta_end : float, default=1e-4, 0.02
        First and last variance of the linear beta schedule.

    Attributes
    ----------
    num_train_timesteps : int
        T.
    betas, alphas, alphas_cumprod : torch.Tensor
        float64 CPU tensors of shape (T,): β_t, α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s.
    """

    def __init__(self, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        if int(num_train_timesteps) < 1:
            raise InputError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise InputError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.betas = torch.linspace(beta_start, beta_end, self.num_train_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def __repr__(self):
        return (
            f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"beta_start={self.betas[0].item():g}, beta_end={self.betas[-1].item():g})"
        )

    def _per_sample(self, values, t, like):
        """Gather ``values[t]`` and shape it (B, 1, ..., 1) to broadcast against ``like``."""
        gathered = values[t.detach().cpu().long()]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return gathered.reshape(shape)

    def add_noise(self, z0, noise, t):
        """Sample the forward process: z_t = √ᾱ_t · z0 + √(1 − ᾱ_t) · noise.

        Parameters
        ----------
        z0 : torch.Tensor
            Clean samples, shape (B, ...).
        noise : torch.Tensor
            Standard normal noise of the same shape.
        t : torch.LongTensor
            Timesteps, shape (B,).

        Returns
        -------
        torch.Tensor
            z_t, in z0's dtype and on z0's device.
        """
        compute_dtype = torch.promote_types(z0.dtype, torch.float32)
        alpha_bar = self._per_sample(self.alphas_cumprod, t, z0)
        signal = alpha_bar.sqrt().to(device=z0.device, dtype=compute_dtype)
        sigma = (1.0 - alpha_bar).sqrt().to(device=z0.device, dtype=compute_dtype)
        z_t = signal * z0.to(compute_dtype) + sigma * noise.to(device=z0.device, dtype=compute_dtype)
        return z_t.to(z0.dtype)

    def pdae_weights(self, t, gamma=0.1):
        """Coefficient and loss weight of the PDAE objective at timesteps ``t``.

        k_t = −√α_t · (1 − ᾱ_{t−1}) / √(1 − ᾱ_t) scales the gradient estimator's output
        into ε-space (ᾱ_{−1} := 1, so k_0 = 0); λ_t = SNR_t^γ / (1 + SNR_t) with
        SNR_t = ᾱ_t / (1 − ᾱ_t) weights the per-sample loss.

        Parameters
        ----------
        t : torch.LongTensor
            Timesteps, shape (B,).
        gamma : float, default=0.1
            Exponent γ of the weighting.

        Returns
        -------
        k_t, lambda_t : torch.Tensor
            float32 tensors of shape (B,) on t's device.
        """
        index = t.detach().cpu().long()
        alpha_bar = self.alphas_cumprod[index]
        alpha_bar_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])[index]
        k_t = -self.alphas[index].sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar).sqrt()
        snr = alpha_bar / (1.0 - alpha_bar)
        lambda_t = snr**gamma / (1.0 + snr)
        return k_t.to(device=t.device, dtype=torch.float32), lambda_t.to(device=t.device, dtype=torch.float32)

    def sample_timesteps(self, batch_size, *, generator=None, device=None, high=None):
        """Draw timesteps uniformly from {0, ..., high − 1} (default high = T).

        Parameters
        ----------
        batch_size : int
            Number of timesteps.
        high : int, optional
            Exclusive upper bound, at most T.
        generator : torch.Generator, optional
            Source of randomness; the draw happens on its device, then moves to ``device``.
        device : torch.device or str, optional
            Device of the result (default: the generator's device, else the CPU).

        Returns
        -------
        torch.LongTensor
            Shape (batch_size,).
        """
        draw_device = generator.device if generator is not None else device
        high = self.num_train_timesteps if high is None else min(int(high), self.num_train_timesteps)
        t = torch.randint(high, (batch_size,), generator=generator, device=draw_device)
        return t if device is None else t.to(device)

    def ddim_timesteps(self, steps):
        """The DDIM grid of ``steps`` timesteps, shared by encoding and decoding.

        The grid is τ_i = round(i · (T − 1) / (S − 1)), i = 0 … S − 1, so it starts at
        τ_0 = 0 and, for S > 1, ends at the most noisy level τ_{S−1} = T − 1 (where
        z_T ~ N(0, I) is a faithful start for generation). Decoding walks
        τ_{S−1} → … → τ_0 → clean and encoding walks the same pairs backwards.

        Parameters
        ----------
        steps : int
            Number of network evaluations S, 1 ≤ S ≤ T.

        Returns
        -------
        torch.LongTensor
            Strictly increasing CPU tensor of shape (S,).
        """
        is_integer = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
        if not is_integer or not 1 <= steps <= self.num_train_timesteps:
            raise InputError(
                f"steps must be an integer between 1 and {self.num_train_timesteps}, got {steps!r}"
            )
        grid = torch.linspace(0, self.num_train_timesteps - 1, int(steps), dtype=torch.float64)
        return grid.round().long()

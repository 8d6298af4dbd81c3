"""Noise schedule, PDAE weights and the DDIM sampler/inverter."""

import numpy as np
import pytest
import torch

from ldae.diffusion import NoiseSchedule, ddim_decode, ddim_encode
from ldae.exceptions import InputError

T = 1000


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule()


def reference_alphas_cumprod():
    betas = np.linspace(1e-4, 0.02, T)
    return np.cumprod(1.0 - betas), betas


def oracle_eps(schedule, z0):
    """The ε that a perfect model would predict if it knew the clean sample z0."""

    def eps_fn(z, t):
        alpha_bar = schedule.alphas_cumprod[t].to(z.dtype).reshape(-1, *(1,) * (z.ndim - 1))
        return (z - alpha_bar.sqrt() * z0) / (1.0 - alpha_bar).sqrt()

    return eps_fn


def gaussian_data_eps(schedule, data_std):
    """Exact E[ε | z_t] when the data are N(0, data_std² I)."""

    def eps_fn(z, t):
        alpha_bar = schedule.alphas_cumprod[t].to(z.dtype).reshape(-1, *(1,) * (z.ndim - 1))
        return (1.0 - alpha_bar).sqrt() * z / (alpha_bar * data_std**2 + 1.0 - alpha_bar)

    return eps_fn


def test_schedule_matches_linear_beta_formulas(schedule):
    alphas_cumprod, betas = reference_alphas_cumprod()
    for name in ("betas", "alphas", "alphas_cumprod"):
        values = getattr(schedule, name)
        assert values.dtype == torch.float64 and values.device.type == "cpu" and values.shape == (T,)
    assert schedule.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert schedule.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas.numpy(), 1.0 - betas, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), alphas_cumprod, rtol=1e-10)
    assert torch.all(torch.diff(schedule.alphas_cumprod) < 0)


def test_pdae_weights_match_the_formulas(schedule):
    alphas_cumprod, betas = reference_alphas_cumprod()
    t = torch.tensor([0, 1, 7, 250, 500, 999])
    k_t, lambda_t = schedule.pdae_weights(t, gamma=0.1)
    assert k_t.dtype == lambda_t.dtype == torch.float32 and k_t.shape == lambda_t.shape == (6,)
    assert k_t[0].item() == 0.0

    index = t.numpy()
    previous = np.where(index > 0, alphas_cumprod[np.maximum(index - 1, 0)], 1.0)
    expected_k = -np.sqrt(1.0 - betas[index]) * (1.0 - previous) / np.sqrt(1.0 - alphas_cumprod[index])
    snr = alphas_cumprod[index] / (1.0 - alphas_cumprod[index])
    expected_lambda = snr**0.1 / (1.0 + snr)
    np.testing.assert_allclose(k_t.numpy(), expected_k, rtol=1e-5)
    np.testing.assert_allclose(lambda_t.numpy(), expected_lambda, rtol=1e-5)

    _, lambda_gamma_one = schedule.pdae_weights(t, gamma=1.0)
    np.testing.assert_allclose(lambda_gamma_one.numpy(), snr / (1.0 + snr), rtol=1e-5)


def test_add_noise_formula_dtype_and_statistics(schedule):
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 2, 4, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    z_t = schedule.add_noise(z0, noise, t)
    assert z_t.dtype == torch.float64
    for i, step in enumerate(t.tolist()):
        alpha_bar = schedule.alphas_cumprod[step]
        expected = alpha_bar.sqrt() * z0[i] + (1.0 - alpha_bar).sqrt() * noise[i]
        torch.testing.assert_close(z_t[i], expected, rtol=1e-12, atol=1e-12)

    # Unit-variance data stay unit-variance at every level; the mean shrinks by √ᾱ_t.
    n = 200_000
    data = 2.0 + torch.randn(2, n, generator=generator)
    noisy = schedule.add_noise(data, torch.randn(2, n, generator=generator), torch.tensor([100, 700]))
    assert noisy.dtype == torch.float32
    for row, step in enumerate((100, 700)):
        assert noisy[row].mean().item() == pytest.approx(2.0 * schedule.alphas_cumprod[step].sqrt().item(), abs=0.02)
        assert noisy[row].std().item() == pytest.approx(1.0, abs=0.01)


def test_sample_timesteps_is_uniform_and_reproducible(schedule):
    draws = schedule.sample_timesteps(100_000, generator=torch.Generator().manual_seed(1))
    again = schedule.sample_timesteps(100_000, generator=torch.Generator().manual_seed(1))
    assert draws.dtype == torch.long and torch.equal(draws, again)
    assert draws.min().item() == 0 and draws.max().item() == T - 1
    counts = torch.bincount(draws // 100, minlength=10).double()
    assert torch.all((counts / counts.mean() - 1.0).abs() < 0.05)


@pytest.mark.parametrize("steps", [1, 2, 10, 50, 100, 999, 1000])
def test_ddim_grid_starts_at_zero_and_ends_at_the_top(schedule, steps):
    grid = schedule.ddim_timesteps(steps)
    assert grid.dtype == torch.long and grid.shape == (steps,)
    assert grid[0].item() == 0
    assert torch.all(torch.diff(grid) > 0)
    if steps > 1:
        assert grid[-1].item() == T - 1


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True])
def test_ddim_grid_rejects_bad_step_counts(schedule, steps):
    with pytest.raises(InputError, match="steps"):
        schedule.ddim_timesteps(steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps", [10, 50, 100])
def test_oracle_round_trip(schedule, dtype, steps):
    z0 = torch.randn(2, 3, 4, 5, 4, generator=torch.Generator().manual_seed(steps), dtype=dtype)
    eps_fn = oracle_eps(schedule, z0)
    z_T = ddim_encode(eps_fn, z0, schedule, steps)
    assert z_T.dtype == dtype
    assert not torch.allclose(z_T, z0)
    torch.testing.assert_close(ddim_decode(eps_fn, z_T, schedule, steps), z0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 50])
def test_grid_levels_agree_with_add_noise(schedule, steps):
    # With an ε that ignores its input, each direction lands exactly on the forward
    # process at the grid's top level, which an off-by-one grid would miss.
    generator = torch.Generator().manual_seed(3)
    z0 = torch.randn(2, 3, 4, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float64)
    top = torch.full((2,), int(schedule.ddim_timesteps(steps)[-1]))
    z_top = schedule.add_noise(z0, noise, top)
    constant_eps = lambda z, t: noise  # noqa: E731
    torch.testing.assert_close(ddim_encode(constant_eps, z0, schedule, steps), z_top, rtol=0, atol=1e-12)
    torch.testing.assert_close(ddim_decode(constant_eps, z_top, schedule, steps), z0, rtol=0, atol=1e-10)


def test_ddim_with_exact_gaussian_score_converges_to_the_data_distribution(schedule):
    # For N(0, s² I) data the exact ε is linear, so DDIM maps z_T to c_S · z_T and the
    # probability-flow ODE it discretises has c = s (up to the tiny ᾱ at the top).
    data_std = 0.5
    eps_fn = gaussian_data_eps(schedule, data_std)
    unit = torch.ones(1, 1, dtype=torch.float64)
    gains = [ddim_decode(eps_fn, unit, schedule, steps).item() for steps in (10, 50, 100, 1000)]
    errors = [abs(gain - data_std) for gain in gains]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * data_std
    code = ddim_encode(eps_fn, data_std * unit, schedule, 1000).item()
    assert code == pytest.approx(1.0, abs=0.01)


def test_ddim_arithmetic_stays_float32_when_eps_is_bfloat16(schedule):
    z0 = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    oracle = oracle_eps(schedule, z0)
    seen = []

    def bf16_eps(z, t):
        seen.append((z.dtype, t.dtype, tuple(t.shape)))
        return oracle(z, t).to(torch.bfloat16)

    z_T = ddim_encode(bf16_eps, z0, schedule, 10)
    decoded = ddim_decode(bf16_eps, z_T, schedule, 10)
    assert z_T.dtype == decoded.dtype == torch.float32
    assert set(seen) == {(torch.float32, torch.long, (2,))} and len(seen) == 20
    torch.testing.assert_close(decoded, z0, rtol=0, atol=1e-3)

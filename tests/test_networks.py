"""Autoencoder, latent UNet, gradient estimator, semantic encoders, the PDAE loss and stage-3 training."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from ldae.autoencoder import AdversarialTerm, autoencoder_loss, build_autoencoder, kl_divergence
from ldae.diffusion import NoiseSchedule, build_latent_unet, check_latent_shape, diffusion_loss
from ldae.exceptions import InputError
from ldae.presets import resolve_config
from ldae.representation import semantic_encoder as semantic_encoder_module
from ldae.representation import (
    GradientEstimator,
    LatentSemanticEncoder,
    SliceSemanticEncoder,
    code_correlation_penalty,
    code_steering,
    pdae_loss,
    shifted_eps,
    unet_features,
    unet_head,
)
from ldae.training.loop import train_stage
from ldae.training.learning_rate import learning_rate_schedule
from ldae.training.stages import diffusion_stage, representation_stage

LATENT = (3, 8, 10, 8)


def attention_modules(network):
    return [name for name, module in network.named_modules() if "Attention" in type(module).__name__]


def randomise(network, seed):
    """Replace every weight (including MONAI's zero-initialised output conv) by noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return network


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return randomise(build_latent_unet(channels=(16, 32), norm_num_groups=8, num_head_channels=16), seed=1)


def latents(batch, seed=0):
    return torch.randn(batch, *LATENT, generator=torch.Generator().manual_seed(seed))


def test_autoencoder_shapes_loss_and_gradients():
    torch.manual_seed(0)
    autoencoder = build_autoencoder(channels=(8, 16, 32))
    assert attention_modules(autoencoder) == []
    x = torch.rand(2, 1, 16, 16, 16)  # small: bf16 is slow where the CPU only emulates it
    mu, sigma = autoencoder.encode(x)
    assert mu.shape == sigma.shape == (2, 3, 4, 4, 4)
    assert autoencoder.decode(mu).shape == x.shape

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, reconstruction = autoencoder_loss(autoencoder, x, kl_weight=1e-3)
    assert reconstruction.shape == x.shape and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in autoencoder.encoder.parameters())


def test_kl_divergence_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, *LATENT, generator=generator)
    sigma = torch.rand(3, *LATENT, generator=generator) + 0.1
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    )
    expected = reference.flatten(1).sum(dim=1).mean()
    torch.testing.assert_close(kl_divergence(mu, sigma), expected)


def test_adversarial_term_trains_generator_and_discriminator_separately():
    torch.manual_seed(0)
    autoencoder = build_autoencoder(channels=(8, 16, 32))
    adversarial = AdversarialTerm(channels=8, weight=0.5)
    x = torch.rand(2, 1, 32, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, reconstruction = autoencoder_loss(autoencoder, x)
        discriminator_loss = adversarial.discriminator_loss(reconstruction, x)
    assert discriminator_loss.dtype == torch.float32 and torch.isfinite(discriminator_loss)
    discriminator_loss.backward()
    assert all(p.grad is None for p in autoencoder.parameters())
    assert all(p.grad is not None for p in adversarial.parameters())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        generator_loss = adversarial.generator_loss(reconstruction)
    assert generator_loss.dtype == torch.float32 and generator_loss.item() > 0
    generator_loss.backward()
    assert all(p.grad is not None for p in autoencoder.decoder.parameters())

    unweighted = AdversarialTerm(channels=8, weight=1.0)
    unweighted.load_state_dict(adversarial.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(0.5 * unweighted.generator_loss(reconstruction), generator_loss)


def test_check_latent_shape_accepts_what_the_unet_can_run():
    check_latent_shape((8, 10, 8), (32, 64))
    check_latent_shape((8, 10, 8), (32, 48))  # heads are only checked when num_head_channels is given
    check_latent_shape((3, 16, 20, 16), (32, 64, 96), num_head_channels=32)
    check_latent_shape((16, 20, 16), (256, 512, 768), attention_levels=(False, True, True), num_head_channels=64)


@pytest.mark.parametrize(
    ("shape", "channels", "kwargs", "message"),
    [
        ((8, 10, 8), (32, 64, 96), {}, r"axes \[1\].*divisible by 4"),
        ((3, 9, 10, 8), (32, 64), {}, r"axes \[0\]"),
        ((8, 10), (32, 64), {}, "latent_shape"),
        ((8, 10, 8), (32, 48), {"num_head_channels": 32}, "middle block"),
        ((8, 8, 8), (48, 64), {"attention_levels": (True, False), "num_head_channels": 32}, "width 48"),
        ((8, 8, 8), (32, 64), {"attention_levels": (True,)}, "attention_levels"),
    ],
)
def test_check_latent_shape_names_the_problem(shape, channels, kwargs, message):
    with pytest.raises(InputError, match=message):
        check_latent_shape(shape, channels, **kwargs)


def test_builders_reject_bad_widths():
    with pytest.raises(InputError, match="norm_num_groups=8"):
        build_latent_unet(channels=(32, 60))
    with pytest.raises(InputError, match="num_head_channels"):
        build_latent_unet(channels=(32, 48), num_head_channels=32)
    with pytest.raises(InputError, match="norm_num_groups=32"):
        build_autoencoder(channels=(8, 16, 32), norm_num_groups=32)


def test_unet_split_in_two_halves_is_exact():
    torch.manual_seed(0)
    network = build_latent_unet(
        channels=(16, 32, 32), num_res_blocks=2, attention_levels=(False, True, True), num_head_channels=16
    )
    randomise(network, seed=2)
    z = torch.randn(2, 3, 8, 8, 8)
    t = torch.tensor([5, 900])
    expected = network(z, t)
    assert expected.abs().mean() > 0
    assert torch.equal(unet_head(network, unet_features(network, z, t)), expected)


def test_gradient_estimator_starts_at_zero_and_owns_only_its_copies(unet):
    z, t, y = latents(2), torch.tensor([10, 600]), torch.randn(2, 16)
    estimator = GradientEstimator(unet, embedding_dim=16)
    shift = estimator(unet_features(unet, z, t), y)
    assert shift.shape == z.shape and torch.count_nonzero(shift) == 0
    assert torch.equal(shifted_eps(unet, estimator, z, t, y, NoiseSchedule()), unet(z, t))

    prefixes = {key.split(".")[0] for key in estimator.state_dict()}
    assert prefixes == {"middle_block", "up_blocks", "out", "embedding_projection"}
    unet_parameters = {id(p) for p in unet.parameters()}
    assert not any(id(p) in unet_parameters for p in estimator.parameters())
    copied = {key.replace("norm2.norm.", "norm2."): value
              for key, value in estimator.up_blocks.state_dict().items() if "scale_shift" not in key}
    torch.testing.assert_close(copied, unet.up_blocks.state_dict(), rtol=0, atol=0)
    # every residual block of the decoder half reads the code (AdaGN), not only the first
    resnets = [m for m in unet.modules() if hasattr(m, "time_emb_proj")]
    decoder_resnets = [m for block in (unet.middle_block, *unet.up_blocks)
                       for m in block.modules() if hasattr(m, "time_emb_proj")]
    modulated = [key for key in estimator.state_dict() if key.endswith("scale_shift.weight")]
    assert len(modulated) == len(decoder_resnets) and 0 < len(decoder_resnets) < len(resnets)
    from_frozen = GradientEstimator(unet.requires_grad_(False), embedding_dim=16)
    assert all(p.requires_grad for p in from_frozen.parameters())


def test_shifted_eps_subtracts_the_scaled_shift(unet):
    schedule = NoiseSchedule()
    z, t, y = latents(2), torch.tensor([0, 700]), torch.randn(2, 16)
    estimator = randomise(GradientEstimator(unet, embedding_dim=16), seed=3)
    features = unet_features(unet, z, t)
    sigma = (1.0 - schedule.alphas_cumprod[t]).sqrt().float().reshape(-1, 1, 1, 1, 1)
    expected = unet(z, t) - sigma * estimator(features, y)
    torch.testing.assert_close(shifted_eps(unet, estimator, z, t, y, schedule), expected)
    other_y = shifted_eps(unet, estimator, z, t, torch.randn(2, 16), schedule)
    assert not torch.allclose(other_y, expected)


def test_pdae_training_updates_only_encoder_and_estimator(unet):
    # The UNet is left trainable on purpose: pdae_loss itself must keep gradients away from it.
    frozen = {name: p.clone() for name, p in unet.state_dict().items()}
    schedule = NoiseSchedule()
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    estimator = GradientEstimator(unet, embedding_dim=16)
    encoder_before = [p.clone() for p in encoder.parameters()]
    optimiser = torch.optim.Adam([*encoder.parameters(), *estimator.parameters()], lr=1e-3)
    z0 = latents(4, seed=5)
    losses = []
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = pdae_loss(unet, estimator, encoder, z0, z0, schedule, generator=torch.Generator().manual_seed(step))
        assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())

    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(unet.state_dict()[name], value) for name, value in frozen.items())
    assert all(p.grad is not None for p in estimator.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(encoder_before, encoder.parameters()))
    z, t = latents(2), torch.tensor([50, 500])
    assert torch.count_nonzero(estimator(unet_features(unet, z, t), encoder(z))) > 0


@pytest.mark.parametrize("epochs, averaged", [(0, []), (1, ["estimator", "semantic_encoder"])])
def test_only_stages_that_train_keep_weight_averages(unet, epochs, averaged):
    # an average copies its network (1.8 GB for the paper UNet): an untrained stage,
    # e.g. the representation_epochs=0 control, must not allocate one
    config = replace(resolve_config("tiny"), diffusion_epochs=epochs, representation_epochs=epochs)
    cpu = torch.device("cpu")
    diffusion = diffusion_stage(unet, NoiseSchedule(), config, cpu, None)
    estimator = GradientEstimator(unet, embedding_dim=16)
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    representation = representation_stage(unet, estimator, encoder, NoiseSchedule(), config, cpu, None)
    assert sorted(diffusion.averages) == (["unet"] if epochs else [])
    assert sorted(representation.averages) == averaged
    assert sorted(key for key in representation.state if key.endswith("_ema")) == [
        f"{name}_ema" for name in averaged]


def test_encoder_warmup_trains_only_the_estimator_in_its_epochs(unet):
    config = replace(resolve_config("tiny"), representation_epochs=2, encoder_warmup_fraction=0.5)
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    estimator = GradientEstimator(unet, embedding_dim=16)
    batches = [(latents(4, seed=seed),) for seed in range(2)]
    stage = representation_stage(unet, estimator, encoder, NoiseSchedule(), config,
                                 torch.device("cpu"), None, steps_per_epoch=len(batches))
    weights_before_step = []
    step = stage.step

    def snapshot_then_step(batch, generator):
        weights_before_step.append([[p.detach().clone() for p in network.parameters()]
                                    for network in (encoder, estimator)])
        return step(batch, generator)

    stage.step = snapshot_then_step
    train_stage(stage, batches, generator=torch.Generator().manual_seed(0))

    def unchanged(before, after):
        return all(torch.equal(a, b) for a, b in zip(before, after))

    (encoder_initial, estimator_initial) = weights_before_step[0]
    encoder_after_warmup = weights_before_step[len(batches)][0]
    assert unchanged(encoder_initial, encoder_after_warmup)
    assert not unchanged(estimator_initial, estimator.parameters())
    assert not unchanged(encoder_after_warmup, encoder.parameters())


def test_encoder_input_noise_perturbs_what_the_encoder_reads_in_training_steps_only(unet):
    config = replace(resolve_config("tiny"), encoder_input_noise=0.5)
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    read = []
    encoder.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0].detach().clone()))
    stage = representation_stage(unet, GradientEstimator(unet, embedding_dim=16), encoder,
                                 NoiseSchedule(), config, torch.device("cpu"), None)
    z0 = latents(64, seed=1)
    stage.step((z0,), torch.Generator().manual_seed(0))
    noise = read.pop() - z0
    assert noise.std().item() == pytest.approx(0.5, rel=0.02) and abs(noise.mean().item()) < 0.01
    stage.evaluate((z0,), torch.Generator().manual_seed(0))
    assert all(torch.equal(inputs, z0) for inputs in read)  # validation reads the clean latent
    with pytest.raises(InputError, match="encoder_input_noise=-0.1 must be a non-negative number"):
        resolve_config("small", encoder_input_noise=-0.1)
    assert resolve_config("paper").encoder_input_noise == 0  # the paper's objective


def test_cosine_schedule_warms_up_decays_to_zero_and_holds_late_groups():
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": parameters[:1]}, {"params": parameters[1:]}], lr=1.0)
    scheduler = learning_rate_schedule(optimizer, "cosine", 100, start_steps=[50, 0])
    rates = []
    for _ in range(100):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    first, second = np.array(rates).T
    assert np.all(first[:50] == 0) and first[50] > 0 and first.max() == pytest.approx(1.0)
    assert second[0] < second[5] == pytest.approx(1.0)  # 5 warm-up steps
    assert np.all(np.diff(second[5:]) <= 0) and second[-1] < 0.01
    constant = learning_rate_schedule(optimizer, "constant", 100)
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 1.0]
    assert constant.get_last_lr() == [1.0, 1.0]


def test_encoder_warmup_fraction_must_lie_between_0_and_1():
    with pytest.raises(InputError, match="encoder_warmup_fraction=1.5 must be between 0 and 1"):
        resolve_config("tiny", encoder_warmup_fraction=1.5)


def test_pdae_loss_matches_its_definition(unet):
    schedule = NoiseSchedule()
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    estimator = randomise(GradientEstimator(unet, embedding_dim=16), seed=4)
    z0 = latents(3, seed=6)
    loss = pdae_loss(unet, estimator, encoder, z0, z0, schedule, gamma=0.3, generator=torch.Generator().manual_seed(9))

    generator = torch.Generator().manual_seed(9)
    t = schedule.sample_timesteps(3, generator=generator)
    noise = torch.randn(z0.shape, generator=generator)
    z_t = schedule.add_noise(z0, noise, t)
    k_t, lambda_t = schedule.pdae_weights(t, gamma=0.3)
    shift = estimator(unet_features(unet, z_t, t), encoder(z0))
    residual = noise - unet(z_t, t) - k_t.reshape(-1, 1, 1, 1, 1) * shift
    expected = (lambda_t * residual.square().mean(dim=(1, 2, 3, 4))).mean()
    torch.testing.assert_close(loss, expected)


def test_code_correlation_penalty_is_zero_for_uncorrelated_and_largest_for_collapsed_codes():
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    uncorrelated = signs * torch.tensor([3.0, 0.5]) + torch.tensor([0.0, 2.0])
    assert code_correlation_penalty(uncorrelated).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.randn(6, 1, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, -2.0, 5.0])
    # every one of the d·(d−1) off-diagonal correlations is ±1, divided by d
    assert code_correlation_penalty(collapsed).item() == pytest.approx(2.0, rel=1e-3)
    assert code_correlation_penalty(collapsed[:1]).item() == 0.0
    constant_dimension = uncorrelated.clone().requires_grad_(True)
    with torch.no_grad():
        constant_dimension[:, 1] = 0.25
    code_correlation_penalty(constant_dimension).backward()
    assert torch.isfinite(constant_dimension.grad).all()  # a NaN here stopped a full fit


def test_decorrelation_adds_the_weighted_penalty_of_the_batch_codes(unet):
    schedule = NoiseSchedule()
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16)
    estimator = randomise(GradientEstimator(unet, embedding_dim=16), seed=4)
    z0 = latents(3, seed=6)
    plain = pdae_loss(unet, estimator, encoder, z0, z0, schedule, generator=torch.Generator().manual_seed(9))
    penalised = pdae_loss(unet, estimator, encoder, z0, z0, schedule, decorrelation=0.5,
                          generator=torch.Generator().manual_seed(9))
    expected = plain + 0.5 * code_correlation_penalty(encoder(z0))
    torch.testing.assert_close(penalised, expected)
    assert penalised > plain


def test_diffusion_loss_trains_the_unet(unet):
    schedule = NoiseSchedule()
    z0 = latents(4, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(unet, z0, schedule, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters())


def test_semantic_encoders_shapes_and_kinds():
    torch.manual_seed(0)
    latent_encoder = LatentSemanticEncoder(latent_channels=3, channels=(16, 32), embedding_dim=24)
    assert latent_encoder.input_kind == "latent"
    assert latent_encoder(latents(2)).shape == (2, 24)

    slice_encoder = SliceSemanticEncoder(embedding_dim=32, channels=(8, 16), num_heads=4)
    assert slice_encoder.input_kind == "image"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        code = slice_encoder(torch.rand(2, 1, 16, 20, 12))
    assert code.shape == (2, 32) and torch.isfinite(code.float()).all()

    with pytest.raises(InputError, match=r"\(B, 1, D, H, W\)"):
        slice_encoder(torch.rand(2, 16, 20, 12))
    with pytest.raises(InputError, match="num_heads"):
        SliceSemanticEncoder(embedding_dim=30, num_heads=4, channels=(8, 16))


def test_slice_encoder_depends_on_slice_order(monkeypatch):
    torch.manual_seed(0)
    encoder = SliceSemanticEncoder(embedding_dim=32, channels=(8, 16), num_heads=4).eval()
    volume = torch.rand(1, 1, 16, 20, 12, generator=torch.Generator().manual_seed(1))
    shuffled = volume[..., torch.randperm(12, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        original = encoder(volume)
        assert (original - encoder(shuffled)).abs().max() > 1e-3
        batch = encoder(torch.cat([volume, shuffled]))
        torch.testing.assert_close(batch[:1], original, rtol=1e-4, atol=1e-5)

        # Without the slice-position encoding the read-out is symmetric in the slices.
        monkeypatch.setattr(
            semantic_encoder_module, "get_timestep_embedding", lambda positions, dim: torch.zeros(len(positions), dim)
        )
        torch.testing.assert_close(encoder(shuffled), encoder(volume), rtol=1e-4, atol=1e-5)


def test_slice_encoder_reads_slices_in_bounded_passes_with_the_same_code(monkeypatch):
    # a paper scan has 128 slices: all at once cost ~1 GB of activations at inference
    torch.manual_seed(0)
    encoder = SliceSemanticEncoder(embedding_dim=32, channels=(8, 16), num_heads=4).eval()
    volumes = torch.rand(2, 1, 16, 20, 12, generator=torch.Generator().manual_seed(1))
    passes = []
    encoder.slice_cnn.register_forward_hook(lambda module, args, output: passes.append(len(args[0])))
    with torch.no_grad():
        whole = encoder(volumes)
        monkeypatch.setattr(semantic_encoder_module, "SLICES_PER_PASS", 5)
        passes.clear()
        chunked = encoder(volumes)
    assert passes == [5, 5, 5, 5, 4]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_paper_size_networks_construct():
    # On the meta device: the constructors run, no memory is allocated and nothing is computed.
    with torch.device("meta"):
        autoencoder = build_autoencoder(
            channels=(64, 128, 128, 128), num_res_blocks=2, latent_channels=3, norm_num_groups=32
        )
        unet = build_latent_unet(
            channels=(256, 512, 768),
            num_res_blocks=2,
            attention_levels=(False, True, True),
            num_head_channels=64,
            norm_num_groups=32,
        )
    autoencoder_parameters = sum(p.numel() for p in autoencoder.parameters())
    unet_parameters = sum(p.numel() for p in unet.parameters())
    print(f"paper AutoencoderKL: {autoencoder_parameters:,} parameters; latent UNet: {unet_parameters:,}")
    assert attention_modules(autoencoder) == []
    level_attention = [bool(attention_modules(block)) for block in unet.down_blocks]
    assert level_attention == [False, True, True]
    check_latent_shape((3, 16, 20, 16), (256, 512, 768), attention_levels=(False, True, True), num_head_channels=64)


def test_template_autoencoder_codes_the_deviation_from_its_template():
    torch.manual_seed(0)
    plain = build_autoencoder(channels=(8, 16), latent_channels=2)
    templated = build_autoencoder(channels=(8, 16), latent_channels=2, template_shape=(8, 8, 8))
    templated.load_state_dict({**plain.state_dict(), "template": torch.zeros(1, 1, 8, 8, 8)})
    x = torch.rand(2, 1, 8, 8, 8)
    # a zero template is the plain AutoencoderKL
    torch.testing.assert_close(templated.encode(x)[0], plain.encode(x)[0])
    template = torch.rand(8, 8, 8)
    templated.set_template(template)
    torch.testing.assert_close(templated.encode(x)[0], plain.encode(x - template)[0])
    z = torch.randn(2, 2, 4, 4, 4)
    torch.testing.assert_close(templated.decode(z), plain.decode(z) + template)
    assert torch.equal(templated.state_dict()["template"][0, 0], template)


def test_code_steering_measures_what_is_specific_to_each_scan(unet):
    schedule = NoiseSchedule()
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16).eval()
    z0 = latents(6, seed=7)
    untrained = GradientEstimator(unet, embedding_dim=16).eval()  # G ≡ 0
    losses = code_steering(unet, untrained, encoder, z0, z0, schedule, repeats=1, batch_size=4)
    assert losses["no shift"] == losses["own code"] == losses["shuffled codes"]
    assert losses["gain"] == 0

    estimator = randomise(GradientEstimator(unet, embedding_dim=16, timesteps=400), seed=4).eval()
    losses = code_steering(unet, estimator, encoder, z0, z0, schedule, repeats=2, batch_size=4)
    assert losses["own code"] != losses["no shift"] and losses["gain"] != 0
    # the own-code loss is the stage-3 loss on the same draws: t < 400, scans in batches of 4
    generator, expected = torch.Generator().manual_seed(0), 0.0
    with torch.no_grad():
        for _ in range(2):
            for batch in (z0[:4], z0[4:]):
                expected += float(pdae_loss(unet, estimator, encoder, batch, batch, schedule,
                                            timesteps=400, generator=generator)) * len(batch)
    assert losses["own code"] == pytest.approx(expected / 12, rel=1e-5)

    class IgnoresTheCode(torch.nn.Module):
        def shift(self, features, y, t):
            return estimator.shift(features, torch.zeros_like(y), t)

    losses = code_steering(unet, IgnoresTheCode(), encoder, z0, z0, schedule, repeats=1)
    assert losses["own code"] != losses["no shift"] and losses["gain"] == 0


def test_stage_3_validation_measures_steering_on_the_draws_of_its_loss(unet):
    config = replace(resolve_config("tiny"), code_timesteps=400)
    encoder = LatentSemanticEncoder(channels=(16, 32), embedding_dim=16).eval()
    estimator = randomise(GradientEstimator(unet, embedding_dim=16, timesteps=400), seed=4).eval()
    stage = representation_stage(unet, estimator, encoder, NoiseSchedule(), config,
                                 torch.device("cpu"), None)
    z0 = latents(4, seed=3)
    generator = torch.Generator().manual_seed(5)
    values = stage.evaluate((z0,), generator)

    replay = torch.Generator().manual_seed(5)
    with torch.no_grad():
        own = pdae_loss(unet, estimator, encoder, z0, z0, NoiseSchedule(), timesteps=400,
                        generator=replay)
        replay.manual_seed(5)
        other = pdae_loss(unet, estimator, lambda inputs: encoder(inputs).roll(1, 0), z0, z0,
                          NoiseSchedule(), timesteps=400, generator=replay)
    assert values["loss"] == pytest.approx(float(own), rel=1e-6)
    assert values["loss_shuffled_codes"] == pytest.approx(float(other), rel=1e-6)
    assert values["loss_shuffled_codes"] != values["loss"]
    # the second pass replays the draws: training draws the same after it as without it
    assert torch.equal(generator.get_state(), replay.get_state())

    history = train_stage(stage, [(z0,)], [(z0,), (z0[:1],)], generator=torch.Generator())
    assert len(history["val_loss"]) == len(history["val_loss_shuffled_codes"]) == config.representation_epochs


def test_code_timesteps_bound_where_the_estimator_acts_and_trains(unet):
    estimator = randomise(GradientEstimator(unet, embedding_dim=8, timesteps=600), seed=2)
    z, y = latents(4), torch.randn(4, 8)
    t = torch.tensor([0, 599, 600, 999])
    shift = estimator.shift(unet_features(unet, z, t), y, t)
    assert shift[:2].abs().amax() > 0 and torch.count_nonzero(shift[2:]) == 0
    # the denoiser is unchanged above the bound
    schedule = NoiseSchedule()
    with torch.no_grad():
        shifted = shifted_eps(unet, estimator, z, t, y, schedule)
        plain = unet_head(unet, unet_features(unet, z, t)).float()
    assert torch.equal(shifted[2:], plain[2:]) and not torch.equal(shifted[:2], plain[:2])
    draws = schedule.sample_timesteps(10_000, generator=torch.Generator().manual_seed(0), high=600)
    assert int(draws.max()) == 599 and int(draws.min()) == 0
    with pytest.raises(InputError, match="code_timesteps=0 must be an integer from 1"):
        resolve_config("small", code_timesteps=0)
    assert resolve_config("paper").code_timesteps == 1000  # the paper's objective

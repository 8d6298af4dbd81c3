"""The three LDAE training stages, each expressed as a :class:`~ldae.training.loop.Stage`.

1. ``autoencoder``: AutoencoderKL on volumes, L1 + KL (+ optional LSGAN term).
2. ``diffusion``: unconditional latent denoiser, ε-prediction MSE, EMA of its weights.
3. ``representation``: semantic encoder + gradient estimator with the PDAE objective
   against the frozen (EMA) denoiser, EMA of both.
"""

import torch

from ..autoencoder.loss import AdversarialTerm, autoencoder_loss
from ..diffusion.loss import diffusion_loss, standard_normal_like
from ..representation.pdae import pdae_loss
from .device import autocast
from .ema import stage_averages
from .learning_rate import learning_rate_schedule
from .loop import Stage, optimisation_step


def as_volume_batch(batch, device):
    """(B, D, H, W) float volumes from a DataLoader -> (B, 1, D, H, W) on ``device``."""
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return batch.to(device, non_blocking=True).unsqueeze(1).float()


@torch.no_grad()
def mean_volume(loader, device):
    """Voxel-wise mean (1, 1, D, H, W) of the volumes of ``loader``, in float32."""
    total, count = 0.0, 0
    for batch in loader:
        volumes = as_volume_batch(batch, device)
        total = total + volumes.sum(dim=0, keepdim=True)
        count += len(volumes)
    return total / max(count, 1)


def autoencoder_stage(autoencoder, config, device, dtype, *, steps_per_epoch=1):
    """Stage 1: train ``autoencoder`` (already on ``device``) on volume batches."""
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=config.ae_lr)
    scheduler = learning_rate_schedule(optimizer, config.lr_schedule,
                                       config.ae_epochs * steps_per_epoch)
    state = {"autoencoder": autoencoder, "optimizer": optimizer, "scheduler": scheduler}
    adversary = None
    if config.adversarial_weight > 0:
        adversary = AdversarialTerm(weight=config.adversarial_weight).to(device)
        adversary_optimizer = torch.optim.Adam(adversary.parameters(), lr=config.ae_lr)
        state.update(adversary=adversary, adversary_optimizer=adversary_optimizer)

    def step(batch, generator):
        autoencoder.train()
        x = as_volume_batch(batch, device)
        with autocast(device, dtype):
            loss, reconstruction = autoencoder_loss(autoencoder, x, kl_weight=config.kl_weight)
            if adversary is not None:
                loss = loss + adversary.generator_loss(reconstruction)
        optimisation_step(loss, optimizer, autoencoder.parameters())
        scheduler.step()
        if adversary is not None:
            with autocast(device, dtype):
                critic_loss = adversary.discriminator_loss(reconstruction, x)
            optimisation_step(critic_loss, adversary_optimizer, adversary.parameters())
        return loss.item()

    def evaluate(batch, generator):
        autoencoder.eval()
        with autocast(device, dtype):
            loss, _ = autoencoder_loss(autoencoder, as_volume_batch(batch, device),
                                       kl_weight=config.kl_weight)
        return loss.item()

    return Stage("autoencoder", step, evaluate, state, config.ae_epochs)


@torch.no_grad()
def encode_latents(autoencoder, loader, device, dtype, out):
    """Write the posterior means μ of every volume in ``loader``, in order, into ``out``.

    ``out`` is a float32 CPU tensor of shape (n_scans, C, d, h, w), possibly backed by
    a file (:func:`ldae.training.latents.latent_array`). The mean (not a sample) is
    cached: it is the deterministic latent of a scan, so the embedding of a scan does
    not depend on a random draw.
    """
    autoencoder.eval()
    first = 0
    for batch in loader:
        with autocast(device, dtype):
            mean, _ = autoencoder.encode(as_volume_batch(batch, device))
        out[first:first + len(mean)] = mean.float().cpu()
        first += len(mean)
    return out


def diffusion_stage(unet, schedule, config, device, dtype, *, steps_per_epoch=1):
    """Stage 2: train the latent denoiser ``unet`` on batches of scaled latents z0."""
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.diffusion_lr)
    scheduler = learning_rate_schedule(optimizer, config.lr_schedule,
                                       config.diffusion_epochs * steps_per_epoch)
    averages = stage_averages(config.diffusion_epochs, config.ema_decay, unet=unet)

    def loss_of(batch, generator):
        with autocast(device, dtype):
            return diffusion_loss(unet, batch[0].to(device), schedule, generator=generator)

    def step(batch, generator):
        unet.train()
        loss = loss_of(batch, generator)
        optimisation_step(loss, optimizer, unet.parameters(), averages=[(averages["unet"], unet)])
        scheduler.step()
        return loss.item()

    def evaluate(batch, generator):
        unet.eval()
        return loss_of(batch, generator).item()

    state = {"unet": unet, "optimizer": optimizer, "scheduler": scheduler,
             **{f"{name}_ema": average for name, average in averages.items()}}
    return Stage("diffusion", step, evaluate, state, config.diffusion_epochs, averages=averages)


def representation_stage(unet, estimator, semantic_encoder, schedule, config, device, dtype, *,
                         steps_per_epoch=1):
    """Stage 3: train ``semantic_encoder`` and ``estimator`` against the frozen ``unet``.

    Batches are ``(z0,)`` for an encoder over latents, ``(z0, volume)`` for one over images.
    During the first ``config.encoder_warmup_fraction`` of the epochs the encoder's
    learning rate is 0: trained jointly from the start, G_ψ spends its updates on the
    code-independent correction of the frozen denoiser and never comes to read the
    still-changing code; against a fixed code it does. A zero learning rate keeps the
    encoder's graph, so every process of a data-parallel fit averages the same gradients.

    In training steps the encoder reads its input plus Gaussian noise of SD
    ``config.encoder_input_noise`` (the target latent stays clean), an ablation against
    a code that steers the denoiser on training scans far more than on held-out ones.
    """
    unet.requires_grad_(False).eval()
    encoder_parameters, estimator_parameters = (list(semantic_encoder.parameters()),
                                                list(estimator.parameters()))
    parameters = encoder_parameters + estimator_parameters
    optimizer = torch.optim.Adam([{"params": encoder_parameters}, {"params": estimator_parameters}],
                                 lr=config.representation_lr)
    warmup_steps = round(config.encoder_warmup_fraction * config.representation_epochs) * steps_per_epoch
    scheduler = learning_rate_schedule(optimizer, config.lr_schedule,
                                       config.representation_epochs * steps_per_epoch,
                                       start_steps=[warmup_steps, 0])
    averages = stage_averages(config.representation_epochs, config.ema_decay,
                              semantic_encoder=semantic_encoder, estimator=estimator)

    def loss_of(batch, generator, encoder=semantic_encoder, input_noise=0.0):
        z0 = batch[0].to(device)
        encoder_input = z0 if len(batch) == 1 else as_volume_batch(batch[1], device)
        if input_noise:
            encoder_input = encoder_input + input_noise * standard_normal_like(
                encoder_input, generator=generator)
        with autocast(device, dtype):
            return pdae_loss(unet, estimator, encoder, z0, encoder_input, schedule,
                             decorrelation=config.code_decorrelation,
                             timesteps=config.code_timesteps, generator=generator)

    def step(batch, generator):
        semantic_encoder.train()
        estimator.train()
        loss = loss_of(batch, generator, input_noise=config.encoder_input_noise)
        optimisation_step(loss, optimizer, parameters,
                          averages=[(averages["semantic_encoder"], semantic_encoder),
                                    (averages["estimator"], estimator)])
        scheduler.step()
        return loss.item()

    def evaluate(batch, generator):
        """The loss with each scan's own code and, on the same noise and timesteps, with
        the code of the next scan of the batch: their ratio is how much the code steers
        the denoiser on held-out scans (1 when G_ψ ignores it; a batch of one scan gives 1)."""
        semantic_encoder.eval()
        estimator.eval()
        draws = generator.get_state()
        own = loss_of(batch, generator)
        generator.set_state(draws)
        shuffled = loss_of(batch, generator, lambda inputs: semantic_encoder(inputs).roll(1, 0))
        return {"loss": own.item(), "loss_shuffled_codes": shuffled.item()}

    state = {"semantic_encoder": semantic_encoder, "estimator": estimator, "optimizer": optimizer,
             "scheduler": scheduler, **{f"{name}_ema": average for name, average in averages.items()}}
    return Stage("representation", step, evaluate, state, config.representation_epochs,
                 averages=averages)

"""A diffusion autoencoder in voxel space (DiffAE-style): the baseline LDAE is measured against.

Same semantic encoder design as LDAE's paper configuration (the 2.5D slice encoder
over the preprocessed volume), but the diffusion model works on the volume itself:
a conditional denoiser ε_θ(x_t, t, y) in image space, with y = Enc(x0) projected
and added to the time embedding, both trained jointly with the standard
ε-prediction loss (Preechakul et al. 2022). No autoencoder, no latent space: every
DDIM step evaluates a UNet on the full-resolution volume, which is what LDAE avoids.

Volumes in [0, 1] are mapped to [-1, 1] for the diffusion process; reconstructions
are mapped back and clipped to [0, 1].
"""

import time

import nibabel as nib
import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..diffusion import NoiseSchedule, build_latent_unet, ddim_decode, ddim_encode, diffusion_loss
from ..exceptions import InputError
from ..representation import SliceSemanticEncoder
from ..training.device import autocast, resolve_precision
from ..training.ema import exponential_moving_average
from ..training.loop import Stage, optimisation_step, train_stage
from ..training.stages import as_volume_batch
from ._base import VolumeEncoderBase, frozen

STAGE = "voxel_dae"


def build_conditional_unet(*, embedding_dim, in_channels=1, channels=(8, 16, 32), num_res_blocks=1,
                           attention_levels=None, num_head_channels=32, norm_num_groups=8):
    """A MONAI ``DiffusionModelUNet`` conditioned on a continuous semantic code.

    MONAI adds ``class_embedding(class_labels)`` to the time embedding of every
    residual block; with a linear layer in place of its class lookup table, that
    additive path carries a continuous code y instead of a class index. Attention
    uses PyTorch's fused ``scaled_dot_product_attention``: at full resolution the
    middle block attends over thousands of voxels, whose attention matrix would
    not fit in memory.

    Parameters
    ----------
    embedding_dim : int
        Size of the semantic code y.
    in_channels : int, default=1
        Channels of the image (input and output).
    channels : sequence of int, default=(8, 16, 32)
        Widths of the levels; each level but the last halves every axis.
    num_res_blocks : int, default=1
    attention_levels : sequence of bool, optional
        Self-attention per level; None or empty means none (the middle block
        always has one).
    num_head_channels : int, default=32
        Channels per attention head.
    norm_num_groups : int, default=8

    Returns
    -------
    monai.networks.nets.DiffusionModelUNet
        Called as ``unet(x_t, t, class_labels=y)`` with t (B,) and y (B, embedding_dim).
    """
    if int(embedding_dim) != embedding_dim or embedding_dim < 1:
        raise InputError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    unet = build_latent_unet(latent_channels=in_channels, channels=channels,
                             num_res_blocks=num_res_blocks,
                             attention_levels=tuple(attention_levels or ()) or None,
                             num_head_channels=num_head_channels,
                             norm_num_groups=norm_num_groups, use_flash_attention=True)
    unet.num_class_embeds = int(embedding_dim)
    unet.class_embedding = nn.Linear(int(embedding_dim), unet.time_embed[-1].out_features)
    return unet


def _diffusion_space(volumes):
    return volumes * 2.0 - 1.0


def _image_space(x):
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _conditional_eps(denoiser, y):
    def eps_fn(x, t):
        return denoiser(x, t, class_labels=y)

    return eps_fn


def voxel_dae_stage(semantic_encoder, denoiser, schedule, config, device, dtype):
    """The joint training of the semantic encoder and the conditional denoiser.

    Parameters
    ----------
    semantic_encoder : SliceSemanticEncoder
    denoiser : monai.networks.nets.DiffusionModelUNet
        From :func:`build_conditional_unet`.
    schedule : NoiseSchedule
    config : BaselineConfig
    device : torch.device
    dtype : torch.dtype or None
        Autocast dtype.

    Returns
    -------
    Stage
        Batches are volumes (B, D, H, W); EMA of both networks.
    """
    parameters = [*semantic_encoder.parameters(), *denoiser.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    encoder_average = exponential_moving_average(semantic_encoder, config.ema_decay)
    denoiser_average = exponential_moving_average(denoiser, config.ema_decay)

    def loss_of(batch, generator):
        volumes = as_volume_batch(batch, device)
        with autocast(device, dtype):
            y = semantic_encoder(volumes)
            return diffusion_loss(_conditional_eps(denoiser, y), _diffusion_space(volumes),
                                  schedule, generator=generator)

    def step(batch, generator):
        semantic_encoder.train()
        denoiser.train()
        loss = loss_of(batch, generator)
        optimisation_step(loss, optimizer, parameters,
                          averages=[(encoder_average, semantic_encoder),
                                    (denoiser_average, denoiser)])
        return loss.item()

    def evaluate(batch, generator):
        semantic_encoder.eval()
        denoiser.eval()
        return loss_of(batch, generator).item()

    state = {"semantic_encoder": semantic_encoder, "denoiser": denoiser, "optimizer": optimizer,
             "semantic_encoder_ema": encoder_average, "denoiser_ema": denoiser_average}
    return Stage(STAGE, step, evaluate, state, config.epochs,
                 averages={"semantic_encoder": encoder_average, "denoiser": denoiser_average})


class VoxelDAEEncoder(VolumeEncoderBase):
    """Diffusion autoencoder in voxel space (DiffAE-style), the baseline of LDAE.

    ``fit`` trains, without labels and in one stage, the 2.5D semantic encoder and
    a conditional denoising UNet on the preprocessed volumes (ε-prediction loss,
    y = Enc(x0) added to the time embedding). ``transform`` returns the semantic
    embedding, ``encode_stochastic`` the DDIM code x_T (a noise volume) and
    ``reconstruct`` decodes (x_T, y) back to the scan: the same interface as
    :class:`ldae.LDAEEncoder`, so the two run on the same data, DDIM steps, batch
    size and device. Every DDIM step evaluates the UNet at full resolution.

    Every parameter left at ``None`` takes the value of ``preset``; the presets
    share the grid, encoder, embedding size, batch size and DDIM steps of
    LDAEEncoder's presets of the same name.

    Parameters
    ----------
    preset : {"tiny", "small", "paper", "small-ldae-unet", "paper-ldae-unet"}, default="small"
        The ``-ldae-unet`` presets use the latent UNet architecture of that LDAE
        preset (widths, residual blocks, attention levels, heads) as the denoiser:
        the two models then differ only in where the denoiser works.
    image_shape : tuple of 3 int, optional
        Grid every scan is brought to; each size must divide by
        2 ** (len(unet_channels) - 1).
    embedding_dim : int, optional
        Size of the semantic embedding.
    encoder_channels : tuple of int, optional
        Widths of the slice encoder's 2D CNN.
    unet_channels : tuple of int, optional
        Widths of the voxel-space denoiser's levels.
    epochs : int, optional
    batch_size : int, optional
    lr : float, optional
        Adam learning rate.
    ddim_steps : int, optional
        Default DDIM steps of ``encode_stochastic`` and ``reconstruct``.
    preprocessing : ldae.imaging.Preprocessing, optional
        As in :class:`ldae.LDAEEncoder`.
    cache_dir : str or Path, optional
        Folder caching preprocessed volumes of files between passes.
    device : str, default="auto"
    precision : {"auto", "bf16", "fp32"}, default="auto"
        As in :class:`~ldae.LDAEEncoder` (bf16 training on CPUs with native bf16).
    num_workers : int, default=0
        DataLoader worker processes.
    random_state : int, RandomState instance or None, default=None
        On the CPU, the same integer gives the same embeddings.
    verbose : int, default=0

    Attributes
    ----------
    config_ : BaselineConfig
    preprocessing_ : Preprocessing
    affine_ : ndarray of shape (4, 4)
    semantic_encoder_, denoiser_ : torch.nn.Module
        EMA weights of the trained networks.
    history_ : dict
        ``{"voxel_dae": {"loss": [...], "val_loss": []}}``, one value per epoch.
    fit_seconds_ : dict
        ``{"voxel_dae": seconds}``.
    n_scans_ : int

    Examples
    --------
    >>> from ldae.baselines import VoxelDAEEncoder
    >>> model = VoxelDAEEncoder(preset="tiny", random_state=0)
    """

    def __init__(self, *, preset="small", image_shape=None, embedding_dim=None,
                 encoder_channels=None, unet_channels=None, epochs=None, batch_size=None, lr=None,
                 ddim_steps=None, preprocessing=None, cache_dir=None, device="auto",
                 precision="auto", num_workers=0, random_state=None, verbose=0):
        self.preset = preset
        self.image_shape = image_shape
        self.embedding_dim = embedding_dim
        self.encoder_channels = encoder_channels
        self.unet_channels = unet_channels
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.ddim_steps = ddim_steps
        self.preprocessing = preprocessing
        self.cache_dir = cache_dir
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state
        self.verbose = verbose

    def _config_overrides(self):
        return dict(image_shape=self.image_shape, embedding_dim=self.embedding_dim,
                    encoder_channels=self.encoder_channels, unet_channels=self.unet_channels,
                    epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                    ddim_steps=self.ddim_steps)

    def fit(self, X, y=None):
        """Train the semantic encoder and the voxel-space denoiser on the scans ``X``.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans: NIfTI files, images, or an array (n, D, H, W) / (n, 1, D, H, W).
        y : ignored
            Training uses no labels.

        Returns
        -------
        self : VoxelDAEEncoder
        """
        dataset, device, dtype, seed = self._start_fit(X)
        config = self.config_
        _check_grid(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            semantic_encoder = SliceSemanticEncoder(embedding_dim=config.embedding_dim,
                                                    channels=config.encoder_channels).to(device)
            denoiser = build_conditional_unet(
                embedding_dim=config.embedding_dim, channels=config.unet_channels,
                num_res_blocks=config.unet_res_blocks, attention_levels=config.unet_attention,
                num_head_channels=config.unet_head_channels,
                norm_num_groups=config.unet_norm_groups).to(device)
            stage = voxel_dae_stage(semantic_encoder, denoiser, NoiseSchedule(), config, device,
                                    dtype)
            generator = torch.Generator(device=device).manual_seed(seed)
            start = time.perf_counter()
            history = train_stage(stage, self._training_loader(dataset, seed), None,
                                  generator=generator, verbose=self.verbose)
            seconds = time.perf_counter() - start
        semantic_encoder.load_state_dict(stage.averages["semantic_encoder"].module.state_dict())
        denoiser.load_state_dict(stage.averages["denoiser"].module.state_dict())
        self.semantic_encoder_ = frozen(semantic_encoder)
        self.denoiser_ = frozen(denoiser)
        self.history_ = {STAGE: history}
        self.fit_seconds_ = {STAGE: seconds}
        self.n_scans_ = len(dataset)
        return self

    def encode_stochastic(self, X, steps=None):
        """Stochastic code x_T of each scan: deterministic DDIM encoding conditioned
        on the scan's own embedding.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
        steps : int, optional
            DDIM steps (network evaluations); decode with the same number.

        Returns
        -------
        ndarray of shape (n_scans, 1, D, H, W), float32
            x_T, in the shape the denoiser works on.
        """
        check_is_fitted(self)
        steps = self._steps(steps)
        return torch.cat(list(self._batches(X, lambda volumes: self._codes(volumes, steps)[1]))).numpy()

    def reconstruct(self, X, steps=None):
        """Reconstruct each scan from its own semantic and stochastic codes.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
        steps : int, optional
            DDIM steps of encoding and of decoding (2 × steps network evaluations).

        Returns
        -------
        ndarray of shape (n_scans, D, H, W) or list of nibabel.Nifti1Image
            An array for array input, images on ``affine_`` otherwise; in [0, 1].
        """
        check_is_fitted(self)
        steps = self._steps(steps)
        schedule = NoiseSchedule()

        def round_trip(volumes):
            y, x_T = self._codes(volumes, steps)
            with self._sampling(volumes):
                z0 = ddim_decode(_conditional_eps(self.denoiser_, y), x_T, schedule, steps)
            return _image_space(z0)[:, 0]

        volumes = torch.cat(list(self._batches(X, round_trip))).numpy()
        if isinstance(X, np.ndarray):
            return volumes
        return [nib.Nifti1Image(volume, self.affine_) for volume in volumes]

    def _codes(self, volumes, steps):
        y = self.semantic_encoder_(volumes)
        with self._sampling(volumes):
            x_T = ddim_encode(_conditional_eps(self.denoiser_, y), _diffusion_space(volumes),
                              NoiseSchedule(), steps)
        return y, x_T

    def _sampling(self, volumes):
        """Autocast of the DDIM steps (the semantic encoder runs at the embedding's)."""
        return autocast(volumes.device, resolve_precision(self.precision, volumes.device,
                                                          "sampling"))

    def _steps(self, steps):
        steps = self.config_.ddim_steps if steps is None else steps
        NoiseSchedule().ddim_timesteps(steps)  # raises InputError naming steps
        return steps


def _check_grid(config):
    factor = 2 ** (len(config.unet_channels) - 1)
    if any(size % factor for size in config.image_shape):
        raise InputError(
            f"image_shape={config.image_shape} must divide by {factor}: the voxel-space UNet with "
            f"unet_channels={config.unet_channels} halves every axis {factor.bit_length() - 1} times")

"""The gradient estimator G_ψ of PDAE, built on the frozen latent denoiser.

MONAI's ``DiffusionModelUNet.forward`` is split in two halves: the encoder half
(time embedding, input conv, down blocks) and the decoder half (middle block, up
blocks, output block). G_ψ reads the frozen encoder half's features and runs a
trainable copy of the decoder half, conditioned on the semantic code y by a scale and
shift of the normalised features in every residual block (AdaGN, as in PDAE), so one
pass of the frozen encoder half serves both ε_θ and G_ψ.
"""

import copy
from typing import NamedTuple

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from ..exceptions import InputError


class UNetFeatures(NamedTuple):
    """Output of the encoder half of a latent UNet.

    Attributes
    ----------
    h : torch.Tensor
        Deepest feature map, input of the middle block.
    skips : tuple of torch.Tensor
        Skip connections in the order the down blocks produced them.
    emb : torch.Tensor
        Time embedding, shape (B, 4 · channels[0]).
    """

    h: torch.Tensor
    skips: tuple
    emb: torch.Tensor


def unet_features(unet, z, t):
    """Run the encoder half of an unconditional MONAI ``DiffusionModelUNet``.

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        A network from :func:`ldae.diffusion.build_latent_unet` (no class or
        cross-attention conditioning).
    z : torch.Tensor
        Noisy latents, shape (B, C, d, h, w).
    t : torch.LongTensor
        Timesteps, shape (B,).

    Returns
    -------
    UNetFeatures
    """
    if unet.with_conditioning or unet.num_class_embeds is not None:
        raise InputError("unet_features supports only unconditional DiffusionModelUNet networks")
    time_features = get_timestep_embedding(t, unet.block_out_channels[0]).to(dtype=z.dtype)
    emb = unet.time_embed(time_features)
    h = unet.conv_in(z)
    skips = [h]
    for down_block in unet.down_blocks:
        h, block_skips = down_block(hidden_states=h, temb=emb)
        skips.extend(block_skips)
    return UNetFeatures(h=h, skips=tuple(skips), emb=emb)


def _run_decoder_half(middle_block, up_blocks, out, h, skips, emb):
    h = middle_block(hidden_states=h, temb=emb)
    remaining = list(skips)
    for up_block in up_blocks:
        count = len(up_block.resnets)
        block_skips, remaining = remaining[-count:], remaining[:-count]
        h = up_block(hidden_states=h, res_hidden_states_list=block_skips, temb=emb)
    return out(h)


def unet_head(unet, features):
    """Run the decoder half of a MONAI ``DiffusionModelUNet`` on encoder-half features.

    ``unet_head(unet, unet_features(unet, z, t))`` equals ``unet(z, t)``.

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        The network whose encoder half produced ``features``.
    features : UNetFeatures
        Output of :func:`unet_features`.

    Returns
    -------
    torch.Tensor
        ε_θ(z, t), shape of z.
    """
    return _run_decoder_half(unet.middle_block, unet.up_blocks, unet.out, *features)


class _CodeModulatedNorm(nn.Module):
    """AdaGN: (1 + s) · GN(h) + b, with (s, b) read from the code by a linear layer."""

    def __init__(self, norm, code):
        super().__init__()
        self.norm = norm
        self.code = code
        self.scale_shift = nn.Linear(code.features, 2 * norm.num_channels)

    def forward(self, h):
        scale, shift = self.scale_shift(self.code.value).to(h.dtype).chunk(2, dim=1)
        broadcast = (*scale.shape, *(1,) * (h.ndim - 2))
        return self.norm(h) * (1 + scale.reshape(broadcast)) + shift.reshape(broadcast)


class _Code:
    """The projected code of the batch being estimated, shared by the modulated norms."""

    def __init__(self, features):
        self.features = features
        self.value = None


class GradientEstimator(nn.Module):
    """G_ψ(z_t, y, t): a trainable decoder half conditioned on the semantic code.

    Holds deep copies of the UNet's middle block, up blocks and output block,
    initialised from its weights, except that the output block's final convolution
    is zero-initialised so that G ≡ 0 before training. y is projected (linear, SiLU)
    and every residual block's second normalisation is modulated by it:
    (1 + s) · GN(h) + b with (s, b) a linear function of the projection (AdaGN, the
    conditioning of PDAE; a code that is only added to the time embedding becomes a
    per-channel bias that G_ψ learns to ignore). The frozen UNet itself is not a
    submodule: the state dict holds only the trainable parts.

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        The trained (frozen) latent denoiser.
    embedding_dim : int
        Size of the semantic code y.
    timesteps : int or None, default=None
        G_ψ acts on timesteps t < ``timesteps`` only (it is trained there, and
        :meth:`shift` is 0 above); None: on every timestep, as in PDAE.
    """

    def __init__(self, unet, embedding_dim, timesteps=None):
        super().__init__()
        self.timesteps = timesteps
        self.middle_block = copy.deepcopy(unet.middle_block)
        self.up_blocks = copy.deepcopy(unet.up_blocks)
        self.out = copy.deepcopy(unet.out)
        final_conv = [module for module in self.out.modules() if isinstance(module, nn.Conv3d)][-1]
        nn.init.zeros_(final_conv.weight)
        nn.init.zeros_(final_conv.bias)
        time_embed_dim = unet.time_embed[-1].out_features
        self.embedding_projection = nn.Linear(int(embedding_dim), time_embed_dim)
        self._code = _Code(time_embed_dim)
        for block in (self.middle_block, *self.up_blocks):
            for resnet in block.modules():
                if hasattr(resnet, "time_emb_proj"):
                    resnet.norm2 = _CodeModulatedNorm(resnet.norm2, self._code)
        # The copies inherit requires_grad=False from a frozen UNet.
        self.requires_grad_(True)


    def shift(self, features, y, t):
        """G_ψ's output in float32, 0 for the timesteps it does not act on.

        Parameters
        ----------
        features : UNetFeatures
            Of the frozen denoiser at (z_t, t).
        y : torch.Tensor
            Semantic codes, shape (B, embedding_dim).
        t : torch.LongTensor
            The timesteps, shape (B,).

        Returns
        -------
        torch.Tensor
        """
        shift = self(features, y).float()
        if self.timesteps is None:
            return shift
        acts = (t < self.timesteps).to(shift.dtype)
        return shift * acts.reshape((-1,) + (1,) * (shift.ndim - 1))

    def forward(self, features, y):
        """Estimate the gradient shift for the latents that produced ``features``.

        Parameters
        ----------
        features : UNetFeatures
            Output of :func:`unet_features` on the frozen UNet.
        y : torch.Tensor
            Semantic codes, shape (B, embedding_dim).

        Returns
        -------
        torch.Tensor
            G, shape of the latents.
        """
        self._code.value = nn.functional.silu(self.embedding_projection(y))
        try:
            return _run_decoder_half(self.middle_block, self.up_blocks, self.out, features.h,
                                     features.skips, features.emb)
        finally:
            self._code.value = None


def shifted_eps(unet, estimator, z, t, y, schedule):
    """Conditional noise prediction ε̂ = ε_θ(z, t) − √(1 − ᾱ_t) · G_ψ(z, y, t).

    The frozen encoder half runs once for both terms. This is the ``eps_fn`` that
    :func:`ldae.diffusion.ddim_decode` and :func:`ldae.diffusion.ddim_encode` use at
    inference (bind ``unet``, ``estimator``, ``y`` and ``schedule``).

    Parameters
    ----------
    unet : monai.networks.nets.DiffusionModelUNet
        The frozen denoiser.
    estimator : GradientEstimator
        The trained gradient estimator.
    z : torch.Tensor
        Noisy latents, shape (B, C, d, h, w).
    t : torch.LongTensor
        Timesteps, shape (B,).
    y : torch.Tensor
        Semantic codes, shape (B, embedding_dim).
    schedule : NoiseSchedule
        The noise schedule the UNet was trained with.

    Returns
    -------
    torch.Tensor
        float32 ε̂, shape of z.
    """
    features = unet_features(unet, z, t)
    eps = unet_head(unet, features).float()
    shift = estimator.shift(features, y, t)
    sigma = (1.0 - schedule.alphas_cumprod[t.detach().cpu()]).sqrt()
    sigma = sigma.to(device=z.device, dtype=torch.float32).reshape((-1,) + (1,) * (z.ndim - 1))
    return eps - sigma * shift

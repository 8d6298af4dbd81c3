"""Semantic encoders Enc_φ that map a scan to its semantic code y_sem."""

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from ..autoencoder.network import check_network_widths
from ..exceptions import InputError

_CONVOLUTIONS = {2: nn.Conv2d, 3: nn.Conv3d}


def _conv_block(spatial_dims, in_channels, out_channels, stride, norm_num_groups):
    return nn.Sequential(
        _CONVOLUTIONS[spatial_dims](in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(norm_num_groups, out_channels),
        nn.SiLU(),
    )


def _conv_stack(spatial_dims, in_channels, channels, norm_num_groups):
    """Two conv blocks per level; every level after the first starts by halving the size."""
    blocks = []
    for level, width in enumerate(channels):
        stride = 1 if level == 0 else 2
        blocks.append(_conv_block(spatial_dims, in_channels, width, stride, norm_num_groups))
        blocks.append(_conv_block(spatial_dims, width, width, 1, norm_num_groups))
        in_channels = width
    return nn.Sequential(*blocks)


def _check_input(x, channels, kind):
    if x.ndim != 5 or x.shape[1] != channels:
        raise InputError(
            f"the semantic encoder expects {kind} of shape (B, {channels}, D, H, W), got {tuple(x.shape)}"
        )


SLICES_PER_PASS = 32
"""Slices the 2D CNN of :class:`SliceSemanticEncoder` reads per pass (bounds the
activations of a 128-slice paper scan at inference to a quarter)."""


class SliceSemanticEncoder(nn.Module):
    """The paper's 2.5D semantic encoder over the axial slices of a volume.

    A 2D CNN shared by every axial slice (``x[..., k]``, the last array axis of a
    RAS volume) turns each slice into a feature map, soft-attention pooling reduces
    it to one token, a sinusoidal encoding of the slice index is added, one learned
    query reads all slice tokens with multi-head attention, and a linear projection
    followed by LayerNorm gives the code, standardised over the training scans
    (:class:`CodeStandardization`). The CNN reads ``SLICES_PER_PASS`` slices at a
    time: at inference its memory does not grow with the number of slices (in
    training the graph keeps every slice's activations).

    Parameters
    ----------
    embedding_dim : int, default=768
        Size of the code (and of the slice tokens); must be divisible by ``num_heads``.
    channels : sequence of int, default=(32, 64, 128, 256)
        Widths of the 2D CNN levels; each level after the first halves the slice size.
    num_heads : int, default=8
        Heads of the attention read-out.
    norm_num_groups : int, default=8
        GroupNorm groups; must divide every width.

    Attributes
    ----------
    input_kind : str
        ``"image"``: the encoder reads the preprocessed volume (B, 1, D, H, W).
    """

    input_kind = "image"

    def __init__(self, *, embedding_dim=768, channels=(32, 64, 128, 256), num_heads=8, norm_num_groups=8):
        super().__init__()
        channels = tuple(int(width) for width in channels)
        check_network_widths(channels, norm_num_groups)
        if embedding_dim < 1 or num_heads < 1 or embedding_dim % num_heads != 0:
            raise InputError(
                f"embedding_dim={embedding_dim} must be a positive multiple of num_heads={num_heads}"
            )
        self.embedding_dim = int(embedding_dim)
        self.slice_cnn = _conv_stack(2, 1, channels, norm_num_groups)
        self.pooling_logits = nn.Conv2d(channels[-1], 1, kernel_size=1)
        self.token_projection = nn.Linear(channels[-1], self.embedding_dim)
        self.query = nn.Parameter(torch.empty(1, 1, self.embedding_dim))
        # Unit scale, so the read-out is not a plain (order-blind) slice average at start.
        nn.init.normal_(self.query)
        self.readout = nn.MultiheadAttention(self.embedding_dim, num_heads, batch_first=True)
        self.projection = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.norm = nn.LayerNorm(self.embedding_dim)
        self.standardize = CodeStandardization(self.embedding_dim)

    def forward(self, x):
        """Encode volumes.

        Parameters
        ----------
        x : torch.Tensor
            Volumes, shape (B, 1, D, H, W).

        Returns
        -------
        torch.Tensor
            Codes, shape (B, embedding_dim).
        """
        _check_input(x, 1, "volumes")
        batch, _, depth, height, n_slices = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(batch * n_slices, 1, depth, height)
        pooled = torch.cat([self._slice_features(chunk) for chunk in slices.split(SLICES_PER_PASS)])
        tokens = self.token_projection(pooled).reshape(batch, n_slices, self.embedding_dim)
        positions = torch.arange(n_slices, device=x.device)
        tokens = tokens + get_timestep_embedding(positions, self.embedding_dim).to(tokens.dtype)
        query = self.query.expand(batch, -1, -1).to(tokens.dtype)
        code, _ = self.readout(query, tokens, tokens, need_weights=False)
        return self.standardize(self.norm(self.projection(code.squeeze(1))))

    def _slice_features(self, slices):
        """One attention-pooled feature vector per slice (S, channels[-1])."""
        maps = self.slice_cnn(slices)
        weights = torch.softmax(self.pooling_logits(maps).flatten(2).float(), dim=-1)
        return (maps.flatten(2).float() * weights).sum(dim=-1)


class LatentSemanticEncoder(nn.Module):
    """A small 3D CNN semantic encoder over the stage-1 latent (the cheap option).

    Two conv blocks (GroupNorm, SiLU) per level, each level after the first halving
    the latent size, average pooling to a 2x2x2 grid (kept, not averaged away: where
    a difference lies, e.g. central ventricles or medial temporal lobes, is what
    distinguishes brains), a linear projection, LayerNorm and :class:`CodeStandardization`.

    Parameters
    ----------
    latent_channels : int, default=3
        Channels of the latent.
    channels : sequence of int, default=(32, 64)
        Widths of the levels.
    embedding_dim : int, default=64
        Size of the code.
    norm_num_groups : int, default=8
        GroupNorm groups; must divide every width.

    Attributes
    ----------
    input_kind : str
        ``"latent"``: the encoder reads the scaled latent z0 (B, latent_channels, d, h, w).
    """

    input_kind = "latent"

    def __init__(self, *, latent_channels=3, channels=(32, 64), embedding_dim=64, norm_num_groups=8):
        super().__init__()
        channels = tuple(int(width) for width in channels)
        check_network_widths(channels, norm_num_groups)
        if embedding_dim < 1:
            raise InputError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        self.latent_channels = int(latent_channels)
        self.embedding_dim = int(embedding_dim)
        self.features = _conv_stack(3, self.latent_channels, channels, norm_num_groups)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.projection = nn.Linear(channels[-1] * 8, self.embedding_dim)
        self.norm = nn.LayerNorm(self.embedding_dim)
        self.standardize = CodeStandardization(self.embedding_dim)

    def forward(self, z):
        """Encode latents.

        Parameters
        ----------
        z : torch.Tensor
            Latents, shape (B, latent_channels, d, h, w).

        Returns
        -------
        torch.Tensor
            Codes, shape (B, embedding_dim).
        """
        _check_input(z, self.latent_channels, "latents")
        pooled = self.pool(self.features(z)).flatten(1)
        return self.standardize(self.norm(self.projection(pooled)))


DEGENERATE_SPREAD = 1e-3
"""A code dimension whose SD across the training scans is below this fraction of the
codes' RMS value carries no information about them."""


class CodeStandardization(nn.BatchNorm1d):
    """Standardise every code dimension over the training scans (BatchNorm, no affine).

    Under the PDAE objective the codes of different scans drift apart only slowly:
    their spread across scans stays ~1 % of their common value, and the gradient
    estimator, reading y through a linear projection, then barely depends on y (it
    decodes every scan alike, so manipulation and interpolation do nothing). Centring
    and scaling each dimension across the batch gives y unit spread from the first
    step; the gradient estimator then responds to the code (measured in
    ``benchmarks/bench_manipulation.py``).

    In training, a batch of one scan is standardised with the running statistics.
    After training, :meth:`set_statistics` replaces the running statistics with the
    exact ones of the final (EMA) encoder on the training scans.

    Parameters
    ----------
    embedding_dim : int
    """

    def __init__(self, embedding_dim):
        super().__init__(int(embedding_dim), affine=False)

    def forward(self, codes):
        """Standardised codes, shape (B, embedding_dim)."""
        if self.training and codes.shape[0] == 1:
            return F.batch_norm(codes, self.running_mean, self.running_var, training=False,
                                eps=self.eps)
        return super().forward(codes)

    @torch.no_grad()
    def set_statistics(self, codes):
        """Use the mean and variance of ``codes`` (N, embedding_dim), before standardisation.

        A dimension whose spread across the scans is below ``DEGENERATE_SPREAD`` times
        the codes' root-mean-square value (identical or near-identical training
        scans) is centred and divided by that RMS value, rather than by its ~0
        spread, which would inflate it (and its noise) a thousandfold.

        Returns
        -------
        int
            The number of such degenerate dimensions.
        """
        codes = codes.float()
        variance = (codes.var(dim=0, unbiased=False) if len(codes) > 1
                    else torch.ones_like(self.running_var))
        mean_square = codes.square().mean()
        degenerate = variance < DEGENERATE_SPREAD**2 * mean_square
        self.running_mean.copy_(codes.mean(dim=0))
        self.running_var.copy_(torch.where(degenerate, mean_square.clamp_min(self.eps), variance))
        return int(degenerate.sum())


@torch.no_grad()
def calibrate_code_statistics(semantic_encoder, inputs):
    """Set the :class:`CodeStandardization` statistics of a trained encoder.

    Parameters
    ----------
    semantic_encoder : SliceSemanticEncoder or LatentSemanticEncoder
    inputs : iterable of torch.Tensor
        Batches of what the encoder reads (volumes or latents), on its device:
        the training scans.

    Returns
    -------
    int
        Number of code dimensions that barely vary across these scans
        (see :meth:`CodeStandardization.set_statistics`).
    """
    standardize = semantic_encoder.standardize
    semantic_encoder.eval()
    captured = []
    hook = standardize.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        for batch in inputs:
            semantic_encoder(batch)
    finally:
        hook.remove()
    return standardize.set_statistics(torch.cat(captured))

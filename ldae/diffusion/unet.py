"""The latent denoising UNet ε_θ(z_t, t) of stage 2."""

import numbers

from monai.networks.nets import DiffusionModelUNet

from ..autoencoder.network import check_network_widths
from ..exceptions import InputError


def _attention_flags(channels, attention_levels):
    if attention_levels is None:
        return (False,) * len(channels)
    flags = tuple(bool(flag) for flag in attention_levels)
    if len(flags) != len(channels):
        raise InputError(
            f"attention_levels has {len(flags)} entries but channels has {len(channels)} levels"
        )
    return flags


def _check_attention_heads(channels, attention_flags, num_head_channels):
    # MONAI's middle block always holds a self-attention block at the deepest width.
    attended = {width for width, flag in zip(channels, attention_flags) if flag} | {channels[-1]}
    for width in sorted(attended):
        if width % num_head_channels != 0:
            raise InputError(
                f"num_head_channels={num_head_channels} does not divide the width {width} of a level "
                f"with attention (channels={tuple(channels)}; the middle block at width {channels[-1]} "
                "always has attention)"
            )


def check_latent_shape(latent_shape, channels, *, attention_levels=None, num_head_channels=None):
    """Check that a latent UNet with these widths can process latents of this shape.

    MONAI's ``DiffusionModelUNet`` halves every spatial axis at each level but the
    last, so every spatial size must be divisible by 2 ** (len(channels) − 1). When
    ``num_head_channels`` is given, it must also divide the width of every level with
    attention and of the middle block (which always has attention);
    :func:`build_latent_unet` checks that too.

    Parameters
    ----------
    latent_shape : sequence of int
        Spatial latent shape (d, h, w), or (C, d, h, w); the last three entries are checked.
    channels : sequence of int
        Widths of the UNet levels.
    attention_levels : sequence of bool, optional
        Which levels have self-attention (default: none).
    num_head_channels : int, optional
        Channels per attention head; None skips the attention check.

    Raises
    ------
    InputError
        When a size or a width does not fit, with a message that names it.
    """
    channels = tuple(int(width) for width in channels)
    shape = tuple(int(size) for size in latent_shape)
    if len(shape) not in (3, 4):
        raise InputError(f"latent_shape must be (d, h, w) or (C, d, h, w), got {tuple(latent_shape)}")
    factor = 2 ** (len(channels) - 1)
    spatial = shape[-3:]
    bad_axes = [axis for axis, size in enumerate(spatial) if size % factor != 0]
    if bad_axes:
        raise InputError(
            f"latent spatial shape {spatial} cannot go through a {len(channels)}-level UNet "
            f"(channels={channels}): axes {bad_axes} are not divisible by {factor}; "
            "use fewer levels or a model grid whose latent sizes divide by it"
        )
    flags = _attention_flags(channels, attention_levels)
    if num_head_channels is not None:
        _check_attention_heads(channels, flags, num_head_channels)


def build_latent_unet(
    *,
    latent_channels=3,
    channels=(32, 64),
    num_res_blocks=1,
    attention_levels=None,
    num_head_channels=32,
    norm_num_groups=8,
    use_flash_attention=False,
):
    """Build the 3D denoising UNet that predicts ε from a noisy latent and a timestep.

    Parameters
    ----------
    latent_channels : int, default=3
        Channels of the latent (input and output).
    channels : sequence of int, default=(32, 64)
        Widths of the levels; each level but the last halves the spatial size.
        The paper uses (256, 512, 768).
    num_res_blocks : int, default=1
        Residual blocks per level (the paper uses 2).
    attention_levels : sequence of bool, optional
        Self-attention per level; None means none (the middle block always has one).
    num_head_channels : int, default=32
        Channels per attention head.
    norm_num_groups : int, default=8
        GroupNorm groups; must divide every width.
    use_flash_attention : bool, default=False
        Use PyTorch's fused ``scaled_dot_product_attention`` (less memory at large latents).

    Returns
    -------
    monai.networks.nets.DiffusionModelUNet
        Called as ``unet(z_t, t)`` with t a LongTensor (B,).
    """
    channels = tuple(int(width) for width in channels)
    check_network_widths(channels, norm_num_groups)
    if not isinstance(num_head_channels, numbers.Integral) or num_head_channels < 1:
        raise InputError(f"num_head_channels must be a positive integer, got {num_head_channels!r}")
    flags = _attention_flags(channels, attention_levels)
    _check_attention_heads(channels, flags, num_head_channels)
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=latent_channels,
        out_channels=latent_channels,
        channels=channels,
        attention_levels=flags,
        num_res_blocks=num_res_blocks,
        num_head_channels=int(num_head_channels),
        norm_num_groups=norm_num_groups,
        use_flash_attention=use_flash_attention,
    )

"""The 3D AutoencoderKL of stage 1 (volume <-> latent)."""

from monai.networks.nets import AutoencoderKL

from ..exceptions import InputError


def check_network_widths(channels, norm_num_groups):
    """Check that a sequence of network widths can be used with GroupNorm.

    Parameters
    ----------
    channels : sequence of int
        Widths of the network levels.
    norm_num_groups : int
        GroupNorm groups; must divide every width.

    Raises
    ------
    InputError
        When ``channels`` is empty or holds a non-positive width, or when a width is
        not divisible by ``norm_num_groups``.
    """
    channels = tuple(channels)
    if not channels or any(int(width) != width or width < 1 for width in channels):
        raise InputError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
    if int(norm_num_groups) != norm_num_groups or norm_num_groups < 1:
        raise InputError(f"norm_num_groups must be a positive integer, got {norm_num_groups!r}")
    bad = [width for width in channels if width % norm_num_groups != 0]
    if bad:
        raise InputError(
            f"norm_num_groups={norm_num_groups} does not divide the widths {bad} of channels={channels}"
        )


def build_autoencoder(*, channels=(8, 16, 32), num_res_blocks=1, latent_channels=3, norm_num_groups=8):
    """Build the single-channel 3D AutoencoderKL, without any attention block.

    The latent is 2 ** (len(channels) − 1) times smaller than the volume along every
    axis. The paper uses channels (64, 128, 128, 128), 2 res blocks, 32 groups
    (1×128×160×128 -> 3×16×20×16).

    Parameters
    ----------
    channels : sequence of int, default=(8, 16, 32)
        Widths of the encoder levels (mirrored by the decoder).
    num_res_blocks : int, default=1
        Residual blocks per level.
    latent_channels : int, default=3
        Channels of the latent.
    norm_num_groups : int, default=8
        GroupNorm groups; must divide every width.

    Returns
    -------
    monai.networks.nets.AutoencoderKL
        ``encode(x) -> (mu, sigma)``, ``decode(z) -> x_hat``, ``forward(x) -> (x_hat, mu, sigma)``.
    """
    channels = tuple(int(width) for width in channels)
    check_network_widths(channels, norm_num_groups)
    if int(latent_channels) != latent_channels or latent_channels < 1:
        raise InputError(f"latent_channels must be a positive integer, got {latent_channels!r}")
    return AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=channels,
        num_res_blocks=num_res_blocks,
        latent_channels=int(latent_channels),
        attention_levels=(False,) * len(channels),
        norm_num_groups=norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )

"""The 3D AutoencoderKL of stage 1 (volume <-> latent)."""

import torch
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


class TemplateAutoencoderKL(AutoencoderKL):
    """An AutoencoderKL that codes each volume's deviation from a template volume.

    ``encode(x)`` encodes ``x − template`` and ``decode(z)`` adds the template back,
    so the networks spend their capacity on what differs between scans rather than
    on the anatomy they all share. The template (a buffer saved with the weights)
    starts at zero, which is the plain AutoencoderKL; set it to the mean training
    volume with :meth:`set_template` before training.

    Parameters
    ----------
    image_shape : tuple of 3 int
        Grid (D, H, W) of the volumes.
    **kwargs
        Arguments of :class:`monai.networks.nets.AutoencoderKL`.
    """

    def __init__(self, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("template", torch.zeros(1, 1, *image_shape))

    def set_template(self, volume):
        """Use ``volume`` (shape (D, H, W) or (1, 1, D, H, W)) as the template."""
        self.template.copy_(torch.as_tensor(volume).reshape(self.template.shape))

    def encode(self, x):
        """Posterior mean and standard deviation of the latent of ``x`` minus the template."""
        return super().encode(x - self.template.to(x.dtype))

    def decode(self, z):
        """The volume of latent ``z``: the decoded deviation plus the template."""
        decoded = super().decode(z)
        return decoded + self.template.to(decoded.dtype)


def build_autoencoder(*, channels=(8, 16, 32), num_res_blocks=1, latent_channels=3, norm_num_groups=8,
                      template_shape=None):
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
    template_shape : tuple of 3 int, optional
        Grid (D, H, W) of the volumes: builds a :class:`TemplateAutoencoderKL`, which
        codes each volume's deviation from a template (zero until set).

    Returns
    -------
    monai.networks.nets.AutoencoderKL
        ``encode(x) -> (mu, sigma)``, ``decode(z) -> x_hat``, ``forward(x) -> (x_hat, mu, sigma)``.
    """
    channels = tuple(int(width) for width in channels)
    check_network_widths(channels, norm_num_groups)
    if int(latent_channels) != latent_channels or latent_channels < 1:
        raise InputError(f"latent_channels must be a positive integer, got {latent_channels!r}")
    network, extra = AutoencoderKL, {}
    if template_shape is not None:
        network, extra = TemplateAutoencoderKL, {"image_shape": tuple(template_shape)}
    return network(
        **extra,
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

"""Image formation: T1-weighted intensities from tissue maps, with site effects.

Each tissue has a site-specific intensity (CSF dark, grey matter middle, white matter
bright); the mixture is multiplied by a smooth bias field drawn per scan, Gaussian
noise of a site-specific level is added inside the brain, and the result is clipped
to [0, 1]. The background stays 0, as in skull-stripped scans.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._fields import control_grid_affine, sample_grid, smooth_random_field
from ._template import CSF_CHANNELS, GREY_CHANNELS, WHITE_MATTER

TISSUE_INTENSITY_RANGES = {"csf": (0.12, 0.22), "grey": (0.42, 0.52), "white": (0.70, 0.80)}
"""Site intensities of each tissue are uniform in these ranges."""

BIAS_SPACING_MM = 20.0
BIAS_CORRELATION_MM = 40.0


@dataclass(frozen=True)
class SiteContrast:
    """Acquisition properties of one site.

    Attributes
    ----------
    csf, grey, white : float
        Intensity of each pure tissue.
    noise : float
        Standard deviation of the additive Gaussian noise.
    bias : float
        Standard deviation of the log bias field.
    """

    csf: float
    grey: float
    white: float
    noise: float
    bias: float


def sample_sites(rng, n_sites, *, noise, bias_field):
    """Draw the contrast of every site.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_sites : int
        Number of sites.
    noise : float
        Typical noise standard deviation; each site's is 0.75 to 1.25 times it.
    bias_field : float
        Typical standard deviation of the log bias field; each site's is 0.5 to 1.5
        times it.

    Returns
    -------
    list of SiteContrast
    """
    return [
        SiteContrast(
            **{tissue: rng.uniform(*limits) for tissue, limits in TISSUE_INTENSITY_RANGES.items()},
            noise=noise * rng.uniform(0.75, 1.25),
            bias=bias_field * rng.uniform(0.5, 1.5),
        )
        for _ in range(n_sites)
    ]


def form_images(rng, tissues, world, site):
    """Render T1-weighted images of one subject's scans.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the bias fields and the noise.
    tissues : torch.Tensor of shape (n_scans, len(CHANNELS), D, H, W)
        Tissue compartments of the scans.
    world : torch.Tensor of shape (3, D, H, W)
        World coordinates of the voxels (the bias field lives in scanner space).
    site : SiteContrast
        Contrast of the subject's site.

    Returns
    -------
    ndarray of shape (n_scans, D, H, W)
        Images, float32, in [0, 1].
    """
    weights = torch.zeros(tissues.shape[1])
    weights[list(CSF_CHANNELS)] = site.csf
    weights[list(GREY_CHANNELS)] = site.grey
    weights[WHITE_MATTER] = site.white
    images = torch.einsum("nc...,c->n...", tissues, weights)
    images *= _bias_fields(rng, len(images), world, site.bias)
    brain = tissues.sum(dim=1)
    noise = torch.from_numpy(rng.standard_normal(images.shape, dtype=np.float32))
    images += site.noise * brain * noise
    return images.clamp_(0.0, 1.0).numpy()


def _bias_fields(rng, n_scans, world, strength):
    """Smooth multiplicative fields of shape (n_scans, D, H, W) at the voxel centres."""
    log_bias = torch.stack([smooth_random_field(rng, 1, BIAS_SPACING_MM, BIAS_CORRELATION_MM)
                            for _ in range(n_scans)])
    # The field is so smooth that sampling about every 4th voxel and interpolating is
    # exact enough; the coarse points span the grid's corners (align_corners=True).
    axes = [torch.linspace(float(coordinate.min()), float(coordinate.max()), -(-size // 4) + 1)
            for coordinate, size in zip(world, world.shape[1:])]
    coarse_points = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    coarse = sample_grid(log_bias, coarse_points, control_grid_affine(BIAS_SPACING_MM))
    fine = F.interpolate(coarse, size=world.shape[1:], mode="trilinear", align_corners=True)
    return torch.exp(strength * fine[:, 0])

"""Smooth random fields and sampling of grid data at world coordinates.

Random fields are drawn on a coarse control grid that covers a fixed world box, so
the same random numbers give the same field whatever the target grid: a subject's
anatomy does not depend on the resolution it is rendered at.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

CONTROL_BOX_MM = ((-110.0, 110.0), (-150.0, 120.0), (-110.0, 125.0))
"""World box (x, y, z limits in mm) covered by the control grids; it encloses any head."""


def control_grid_affine(spacing_mm):
    """Voxel-to-world affine of the control grid with the given spacing (mm)."""
    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = [low for low, _ in CONTROL_BOX_MM]
    return affine


def smooth_random_field(rng, n_components, spacing_mm, correlation_mm):
    """Draw a smooth Gaussian random field on a control grid.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the white noise.
    n_components : int
        Number of independent components (3 for a displacement field, 1 for a scalar).
    spacing_mm : float
        Distance between control points; the grid is :func:`control_grid_affine`.
    correlation_mm : float
        Standard deviation of the Gaussian kernel that smooths the white noise.

    Returns
    -------
    torch.Tensor of shape (n_components, X, Y, Z)
        Field with zero mean and unit standard deviation per component, float32.
    """
    shape = [int(np.ceil((high - low) / spacing_mm)) + 1 for low, high in CONTROL_BOX_MM]
    noise = rng.standard_normal((n_components, *shape), dtype=np.float32)
    field = ndimage.gaussian_filter(noise, (0, *[correlation_mm / spacing_mm] * 3))
    field -= field.mean(axis=(1, 2, 3), keepdims=True)
    field /= field.std(axis=(1, 2, 3), keepdims=True)
    return torch.from_numpy(field)


def sample_grid(volumes, points, affine):
    """Trilinearly interpolate volumes on a grid at world points.

    Parameters
    ----------
    volumes : torch.Tensor of shape (N or 1, C, X, Y, Z)
        Data on the grid described by ``affine`` (diagonal, axes x, y, z).
    points : torch.Tensor of shape (N or 1, 3, D, H, W)
        World coordinates (x, y, z) in mm, components first. A batch of 1 in either
        argument is shared by every item of the other.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of ``volumes``.

    Returns
    -------
    torch.Tensor of shape (N, C, D, H, W)
        Values at the points (0 outside the grid).
    """
    n_items = max(len(volumes), len(points))
    origin = torch.tensor(affine[:3, 3], dtype=points.dtype).view(1, 3, 1, 1, 1)
    extent = torch.tensor(np.diag(affine)[:3] * (np.asarray(volumes.shape[2:]) - 1),
                          dtype=points.dtype).view(1, 3, 1, 1, 1)
    normalised = (points - origin) * (2.0 / extent) - 1.0
    # grid_sample wants coordinates last, the first one indexing the last spatial axis.
    grid = torch.stack([normalised[:, 2], normalised[:, 1], normalised[:, 0]], dim=-1)
    return F.grid_sample(
        volumes.expand(n_items, *volumes.shape[1:]),
        grid.expand(n_items, *grid.shape[1:]),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )

"""The MNI ICBM152 2009 template as tissue maps on a target grid.

nilearn installs the 1 mm template with its grey-matter, white-matter and brain-mask
images. Their tissue fractions are resampled once per grid and split into the
compartments that the atrophy model changes separately (ventricles, hippocampi, the
outer layer of the cortex, ...). The regions that make this split are defined in world
(MNI mm) coordinates so that they hold at any grid.
"""

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from nilearn import datasets, image
from scipy import ndimage
from scipy.special import expit

from ..imaging.grid import grid_affine

VENTRICLE_REGION_MM = ((-25.0, 25.0), (-45.0, 30.0), (-5.0, 35.0))
"""(x, y, z) limits of the central region whose CSF counts as ventricles."""

HIPPOCAMPUS_CENTRES_MM = ((-26.0, -22.0, -14.0), (26.0, -22.0, -14.0))
HIPPOCAMPUS_SEMI_AXES_MM = (7.0, 20.0, 7.0)
HIPPOCAMPUS_TILT_DEG = 30.0
"""The long axis runs from the posterior-superior tail to the anterior-inferior head."""

CHANNELS = ("ventricles", "sulcal_csf", "outer_cortex", "other_grey", "hippocampi",
            "white_matter")
"""Tissue compartments; they partition the brain (their sum is the brain mask).

``sulcal_csf`` is all CSF outside the central (ventricular) region, ``outer_cortex`` the
cortical grey matter that borders CSF (what thinning removes), ``other_grey`` the rest
of the grey matter outside the hippocampi.
"""

VENTRICLES, SULCAL_CSF, OUTER_CORTEX, OTHER_GREY, HIPPOCAMPI, WHITE_MATTER = range(6)
CSF_CHANNELS = (VENTRICLES, SULCAL_CSF)
GREY_CHANNELS = (OUTER_CORTEX, OTHER_GREY, HIPPOCAMPI)

_REGION_EDGE_MM = 2.0
_OUTER_CORTEX_SIGMA_MM = 2.0


@dataclass(frozen=True)
class TemplateGrid:
    """Tissue compartments of the MNI template sampled on one target grid.

    Instances are shared by a cache: never modify their arrays.

    Attributes
    ----------
    affine : ndarray of shape (4, 4)
        Voxel to world (RAS, MNI mm) transform of the grid.
    world : torch.Tensor of shape (3, D, H, W)
        World coordinates (x, y, z) of every voxel centre, float32.
    channels : torch.Tensor of shape (len(CHANNELS), D, H, W)
        Tissue probability of each compartment (see CHANNELS), float32, stored
        channels-last: grid_sample then gathers a voxel's compartments together (15 %
        faster).
    """

    affine: np.ndarray
    world: torch.Tensor
    channels: torch.Tensor

    @property
    def voxel_volume_ml(self):
        """Volume of one voxel in millilitres."""
        return abs(np.linalg.det(self.affine[:3, :3])) / 1000.0


@functools.lru_cache(maxsize=1)
def _mni152_tissue_image():
    """GM, WM and CSF fractions inside the brain mask of the 1 mm template (4D, float32)."""
    images = [datasets.load_mni152_gm_template(), datasets.load_mni152_wm_template(),
              datasets.load_mni152_brain_mask()]
    grey, white, mask = (np.asarray(img.get_fdata(), dtype=np.float32) for img in images)
    grey, white = grey * mask, white * mask
    csf = np.clip(mask - grey - white, 0.0, None)
    return nib.Nifti1Image(np.stack([grey, white, csf], axis=-1), images[0].affine)


@functools.lru_cache(maxsize=8)
def template_on_grid(shape, fov):
    """The template's tissue compartments on a target grid (cached per grid).

    Parameters
    ----------
    shape : tuple of 3 int
        Number of voxels along x, y and z.
    fov : tuple of 3 float
        Field of view in mm along x, y and z.

    Returns
    -------
    TemplateGrid
        Read-only world coordinates and compartments.
    """
    affine = grid_affine(shape, fov)
    voxel_size = np.diag(affine)[:3]
    # Smoothing to the target voxel size before linear resampling avoids aliasing.
    smoothed = image.smooth_img(_mni152_tissue_image(), fwhm=voxel_size)
    resampled = image.resample_img(
        smoothed, target_affine=affine, target_shape=shape, interpolation="linear"
    )
    grey, white, csf = np.moveaxis(resampled.get_fdata(dtype=np.float32), -1, 0)

    world = _world_coordinates(affine, shape)
    central = _box_weight(world, VENTRICLE_REGION_MM)
    hippocampal = _hippocampus_weight(world)
    cortex = grey * (1.0 - central) * (1.0 - hippocampal)
    outer_cortex = cortex * _closeness_to_csf(csf, voxel_size)
    channels = np.stack(
        [
            csf * central,
            csf * (1.0 - central),
            outer_cortex,
            grey * (1.0 - hippocampal) - outer_cortex,
            grey * hippocampal,
            white,
        ],
        axis=-1,
    ).astype(np.float32)
    affine.flags.writeable = False
    return TemplateGrid(affine=affine, world=torch.from_numpy(world),
                        channels=torch.from_numpy(channels).permute(3, 0, 1, 2))


def _world_coordinates(affine, shape):
    axes = [affine[k, 3] + affine[k, k] * np.arange(shape[k]) for k in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


def _box_weight(world, limits):
    """Soft indicator of an axis-aligned box (logistic edges of _REGION_EDGE_MM)."""
    weight = np.ones(world.shape[1:], dtype=np.float32)
    for coordinate, (low, high) in zip(world, limits):
        weight *= expit((coordinate - low) / _REGION_EDGE_MM)
        weight *= expit((high - coordinate) / _REGION_EDGE_MM)
    return weight


def _hippocampus_weight(world):
    """Soft indicator of two tilted ellipsoids around the hippocampi."""
    tilt = np.deg2rad(HIPPOCAMPUS_TILT_DEG)
    semi_x, semi_long, semi_short = HIPPOCAMPUS_SEMI_AXES_MM
    weight = np.zeros(world.shape[1:], dtype=np.float32)
    for centre in HIPPOCAMPUS_CENTRES_MM:
        dx, dy, dz = world - np.asarray(centre, dtype=np.float32).reshape(3, 1, 1, 1)
        along = dy * np.cos(tilt) - dz * np.sin(tilt)
        across = dy * np.sin(tilt) + dz * np.cos(tilt)
        radius = np.sqrt((dx / semi_x) ** 2 + (along / semi_long) ** 2 + (across / semi_short) ** 2)
        # Edge width in mm, expressed in units of the shortest semi-axis.
        weight += expit((1.0 - radius) * semi_short / _REGION_EDGE_MM)
    return np.clip(weight, 0.0, 1.0)


def _closeness_to_csf(csf, voxel_size):
    """Weight in [0, 1] that is high where grey matter borders CSF (the pial side)."""
    nearby_csf = ndimage.gaussian_filter(csf, _OUTER_CORTEX_SIGMA_MM / voxel_size)
    return np.clip(2.0 * nearby_csf, 0.0, 1.0)

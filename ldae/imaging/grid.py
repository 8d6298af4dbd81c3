"""Geometry of the target grid: a model grid fixed in world space, or RAS reorientation,
resampling and centre crop/pad of each image's own grid.

A grid is planned from an image's shape and affine alone (the header), so a whole
cohort's target grids are known before any voxel is decoded. Every step keeps each
voxel at its world coordinate: the target affine maps target voxel indices to the
same millimetres as the source affine does.

A :class:`WorldGrid` is what a model uses: every image, whatever its voxel size,
orientation or obliquity, is resampled into one grid whose voxels sit at fixed
MNI coordinates (:func:`grid_affine`), smoothing first where it loses resolution.
A :class:`Grid` keeps the image's own voxels and only crops or pads the array.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from nibabel import affines, orientations
from scipy import ndimage

from ..exceptions import InputError

# Voxel sizes closer than this (relative) count as equal: no resampling, and
# no complaint that two scans of a cohort differ.
VOXEL_SIZE_RTOL = 1e-3

# Resampling to more voxels than this (4 GiB of float32) means a wrong header.
MAX_RESAMPLED_VOXELS = 2**30


MNI_BRAIN_CENTRE_MM = (0.0, -17.0, 5.0)
"""Centre of the MNI152 template brain's bounding box, (x, y, z) in mm."""

MNI_FIELD_OF_VIEW_MM = (176.0, 220.0, 176.0)
"""Extent (x, y, z) in mm of the model grids: the template brain with a margin."""

MIN_GRID_COVERAGE = 0.5
"""Least fraction of a model grid an image must cover: less means it is not in MNI space."""

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def grid_affine(shape, field_of_view=MNI_FIELD_OF_VIEW_MM):
    """Affine of a grid of ``shape`` voxels spanning ``field_of_view`` mm around the MNI brain.

    Parameters
    ----------
    shape : tuple of 3 int
        Number of voxels along x, y and z.
    field_of_view : tuple of 3 float, default=MNI_FIELD_OF_VIEW_MM
        Extent in mm along x, y and z; the voxel size is ``field_of_view / shape``.

    Returns
    -------
    ndarray of shape (4, 4)
        RAS voxel-to-world affine, world in MNI mm, centred on the brain.
    """
    voxel_size = np.asarray(field_of_view, dtype=float) / np.asarray(shape, dtype=float)
    first_centre = (np.asarray(MNI_BRAIN_CENTRE_MM) - np.asarray(field_of_view, dtype=float) / 2.0
                    + voxel_size / 2.0)
    affine = np.diag([*voxel_size, 1.0])
    affine[:3, 3] = first_centre
    return affine


def voxel_sizes(affine):
    """Voxel size in mm along each array axis of a 4x4 affine."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


MAX_OBLIQUITY_DEGREES = 1.0
"""Largest angle between a voxel axis and the nearest world axis that is read as straight
(1 degree moves a voxel 100 mm away by 1.7 mm)."""


def obliquity(affine):
    """Largest angle (degrees) between a voxel axis of a 4x4 affine and its nearest world axis."""
    return float(np.degrees(affines.obliquity(np.asarray(affine, dtype=float))).max())


def format_sizes(values):
    """Numbers as users write them in messages: ``(5.5, 5.5, 5.5)``, not numpy reprs."""
    return "(" + ", ".join(f"{round(float(v), 4):g}" for v in values) + ")"


@dataclass(frozen=True)
class Grid:
    """How one image maps onto the target grid.

    Attributes
    ----------
    orientation : ndarray of shape (3, 2)
        nibabel orientation transform from the image's axes to RAS.
    zoom : tuple of 3 floats or None
        Resampling factor per RAS axis (source voxel size / target voxel
        size), or None when the image already has the target voxel size.
    source_shape : tuple of 3 ints
        Shape after reorientation and resampling, before crop/pad.
    start : tuple of 3 ints
        Index in the resampled volume of target voxel (0, 0, 0); negative
        where the target grid is padded.
    shape : tuple of 3 ints
        Target shape (D, H, W).
    affine : ndarray of shape (4, 4)
        Affine of the target grid.
    """

    orientation: np.ndarray
    zoom: tuple | None
    source_shape: tuple
    start: tuple
    shape: tuple
    affine: np.ndarray

    @property
    def source_slices(self):
        """Slices of the resampled volume that land on the target grid."""
        return tuple(
            slice(max(s, 0), max(s, 0) + min(n, m))
            for s, n, m in zip(self.start, self.source_shape, self.shape)
        )

    @property
    def target_slices(self):
        """Slices of the target grid that receive image voxels (the rest is padding)."""
        return tuple(
            slice(max(-s, 0), max(-s, 0) + min(n, m))
            for s, n, m in zip(self.start, self.source_shape, self.shape)
        )

    @property
    def pads(self):
        """Whether part of the target grid lies outside the image."""
        return any(n < m for n, m in zip(self.source_shape, self.shape))

    def resample(self, data):
        """Reorient `data` to RAS and resample it to the target voxel size.

        Parameters
        ----------
        data : ndarray of shape (X, Y, Z), float32
            Voxels of the image this grid was planned for.

        Returns
        -------
        ndarray of shape ``source_shape``
            A view of `data` when no resampling is needed, otherwise a new
            array (trilinear interpolation; downsampling by an integer factor
            averages whole blocks of voxels).
        """
        data = orientations.apply_orientation(data, self.orientation)
        if self.zoom is None:
            return data
        # Image arrays are usually Fortran-ordered: the reversed-axes view is
        # C-contiguous, which is what torch wants, at no copy.
        reversed_axes = np.ascontiguousarray(data.T)
        if not reversed_axes.flags.writeable:
            reversed_axes = reversed_axes.copy()
        resampled = torch.nn.functional.interpolate(
            torch.from_numpy(reversed_axes)[None, None],
            scale_factor=self.zoom[::-1],
            mode="trilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )
        return resampled[0, 0].numpy().T


@dataclass(frozen=True)
class WorldGrid:
    """How one image is resampled into a model grid fixed in world space.

    Attributes
    ----------
    to_source : ndarray of shape (4, 4)
        Maps a target voxel index to the image's voxel index at the same world point.
    sigma : tuple of 3 floats
        Gaussian smoothing (in the image's voxels, per image axis) applied before
        sampling: a full width at half maximum of one target voxel where the target
        voxel is larger, 0 elsewhere (anti-aliasing, as ``nilearn.image.smooth_img``
        with ``fwhm`` = the target voxel size before ``resample_img``).
    shape : tuple of 3 ints
        Target shape (D, H, W).
    affine : ndarray of shape (4, 4)
        Affine of the target grid.
    """

    to_source: np.ndarray
    sigma: tuple
    shape: tuple
    affine: np.ndarray

    # The whole target grid is resampled: nothing is cropped or padded in the array.
    source_slices = target_slices = (slice(None),) * 3

    @property
    def is_identity(self):
        """Whether the image already lies on the target grid, voxel for voxel."""
        return not any(self.sigma) and np.allclose(self.to_source, np.eye(4), atol=1e-4)

    def resample(self, data):
        """The image's voxels `data` (its own grid) resampled onto the target grid.

        Trilinear interpolation after the anti-aliasing smoothing; target voxels
        outside the image are 0. Returns `data` itself when it is on the grid.
        """
        if self.is_identity and data.shape == self.shape:
            return data
        data = np.asarray(data, dtype=np.float32)
        if any(self.sigma):
            data = ndimage.gaussian_filter(data, self.sigma, mode="nearest", truncate=3.0)
        return ndimage.affine_transform(
            data, self.to_source[:3, :3], offset=self.to_source[:3, 3], output_shape=self.shape,
            output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False)


def plan_world_grid(shape, affine, target_shape, target_affine, *, name="image"):
    """Plan the resampling of one image into a model grid fixed in world space.

    Parameters
    ----------
    shape : tuple of 3 ints
        Spatial shape of the image.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the image (any orientation, oblique included).
    target_shape : tuple of 3 ints
    target_affine : ndarray of shape (4, 4)
        The model grid.
    name : str
        How to name the image in errors.

    Returns
    -------
    WorldGrid

    Raises
    ------
    InputError
        If the image covers less than ``MIN_GRID_COVERAGE`` of the model grid: it
        is then not in the grid's space (MNI), e.g. not registered.
    """
    to_source = np.linalg.solve(affine, target_affine)
    coverage = _coverage(to_source, shape, target_shape)
    if coverage < MIN_GRID_COVERAGE:
        grid_low, grid_high = map(format_sizes, _world_extent(target_affine, target_shape))
        own_low, own_high = map(format_sizes, _world_extent(affine, shape))
        raise InputError(
            f"{name}: it covers {coverage:.0%} of the model grid (MNI mm {grid_low} to "
            f"{grid_high}), where its own voxels span {own_low} to {own_high} mm; the model "
            "expects scans registered to MNI space (e.g. affinely, with FSL FLIRT or ANTs)")
    # Target voxel step in image voxels along each image axis; > 1 loses resolution.
    step = np.sqrt((to_source[:3, :3] ** 2).sum(axis=1))
    sigma = tuple(float(s / FWHM_PER_SIGMA) if s > 1.0 + VOXEL_SIZE_RTOL else 0.0 for s in step)
    return WorldGrid(to_source=to_source, sigma=sigma, shape=tuple(target_shape),
                     affine=np.asarray(target_affine, dtype=float))


def _coverage(to_source, shape, target_shape, points=12):
    """Fraction of the target grid's voxel centres (on a regular subsample) inside the image."""
    axes = [np.linspace(0, n - 1, min(n, points)) for n in target_shape]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside_source = centres @ to_source[:3, :3].T + to_source[:3, 3]
    limits = np.asarray(shape, dtype=float) - 0.5
    return float(np.all((inside_source >= -0.5) & (inside_source <= limits), axis=1).mean())


def _world_extent(affine, shape):
    """World coordinates of the lowest and highest voxel-centre corners of a grid."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]) @ np.asarray(affine).T
    return corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)


def plan_grid(shape, affine, *, voxel_size=None, target_shape=None, name="image"):
    """Plan the target grid of one image from its header.

    Parameters
    ----------
    shape : tuple of 3 ints
        Spatial shape of the image.
    affine : array-like of shape (4, 4)
        Voxel-to-world affine of the image.
    voxel_size : tuple of 3 floats or None
        Target voxel size in mm; None keeps the image's.
    target_shape : tuple of 3 ints or None
        Target shape for the centre crop/pad; None keeps the resampled shape.
    name : str
        How to name the image in errors.

    Returns
    -------
    Grid

    Raises
    ------
    InputError
        If the affine has no clear orientation or is oblique by more than
        ``MAX_OBLIQUITY_DEGREES``, or the requested voxel size
        leaves an axis with fewer than two voxels or makes an absurd number of
        voxels.
    """
    try:
        orientation = orientations.io_orientation(affine)
        ras_affine = affine @ orientations.inv_ornt_aff(orientation, shape)
    except orientations.OrientationError as exc:
        raise InputError(
            f"{name}: its affine has no clear orientation ({exc}): {affine.tolist()}"
        ) from exc
    tilt = obliquity(affine)
    if tilt > MAX_OBLIQUITY_DEGREES:
        raise InputError(
            f"{name}: its voxel axes are {tilt:.1f} degrees off the world axes; ldae "
            "reorients by axis flips and permutations only, so an oblique scan would be "
            "read as if it were straight. Resample it to an axis-aligned grid first "
            "(e.g. nilearn.image.resample_img with a diagonal target_affine)"
        )
    ras_shape = [0, 0, 0]
    for axis, (ras_axis, _) in enumerate(orientation):
        ras_shape[int(ras_axis)] = int(shape[axis])

    zoom = None
    if voxel_size is not None and not np.allclose(
        voxel_sizes(ras_affine), voxel_size, rtol=VOXEL_SIZE_RTOL, atol=0
    ):
        zoom = tuple(float(v) for v in voxel_sizes(ras_affine) / np.asarray(voxel_size))
        if math.prod(n * z for n, z in zip(ras_shape, zoom)) > MAX_RESAMPLED_VOXELS:
            raise InputError(
                f"{name}: resampling its {format_sizes(ras_shape)} voxels of "
                f"{format_sizes(voxel_sizes(ras_affine))} mm to {format_sizes(voxel_size)} mm "
                f"would make more than {MAX_RESAMPLED_VOXELS} voxels; is its header's "
                "voxel size right?"
            )
        # The same arithmetic torch uses for the output size of interpolate.
        ras_shape = [math.floor(n * z) for n, z in zip(ras_shape, zoom)]
        if min(ras_shape) < 2:
            raise InputError(
                f"{name}: resampling to voxel size {format_sizes(voxel_size)} mm leaves shape "
                f"{format_sizes(ras_shape)}; choose a smaller voxel_size"
            )
        # Target voxel j samples source coordinate (j + 0.5) / zoom - 0.5.
        to_source = np.eye(4)
        to_source[:3, :3] = np.diag(1.0 / np.asarray(zoom))
        to_source[:3, 3] = 0.5 / np.asarray(zoom) - 0.5
        ras_affine = ras_affine @ to_source

    shape_out = tuple(ras_shape) if target_shape is None else tuple(target_shape)
    # Centre crop/pad; an odd difference leaves the extra voxel at the end.
    start = tuple((n - m) // 2 if n >= m else -((m - n) // 2) for n, m in zip(ras_shape, shape_out))
    shift = np.eye(4)
    shift[:3, 3] = start
    return Grid(
        orientation=orientation,
        zoom=zoom,
        source_shape=tuple(ras_shape),
        start=start,
        shape=shape_out,
        affine=ras_affine @ shift,
    )

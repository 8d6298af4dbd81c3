"""Preprocessing settings, and their application to one image.

The pipeline, in order: resampling into a model grid fixed in world space
(``shape`` and ``affine``: what a model uses) — or, without ``affine``,
reorientation to RAS, optional resampling to a voxel size and centre crop/pad to
a target shape —, robust intensity scaling to [0, 1] between two percentiles
(clipped), optional brain mask. The settings live in a
small frozen object that can be saved with a model, compared, and turned into
a cache key.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from numbers import Real

import numpy as np
from nibabel.spatialimages import SpatialImage

from ..exceptions import InputError
from .grid import format_sizes, plan_grid, plan_world_grid
from .nifti import check_affine, open_image, read_volume, spatial_shape

# Bump when a change of the code changes the volumes it produces: it is part of
# the cache key, so stale cached volumes are never served.
PIPELINE_VERSION = 2

# Percentiles are estimated on a regular subsample of about this many voxels
# (all of them for smaller volumes): exact enough, and 60x cheaper at 1 mm.
_PERCENTILE_SAMPLE_SIZE = 2**17

# Tolerance (mm) between the brain mask's affine and a scan's target grid.
_MASK_AFFINE_ATOL = 1e-3

_NAN_POLICIES = ("raise", "zero")


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing settings of 3D brain scans.

    Parameters
    ----------
    shape : tuple of 3 ints or None, default=None
        Target shape (D, H, W). With ``affine``, the shape of the model grid.
        Without, every scan is centre-cropped or zero-padded to it after
        resampling; None keeps the shape of the (resampled) scans, which then
        must all agree.
    voxel_size : float, tuple of 3 floats or None, default=None
        Without ``affine`` only: target voxel size in mm; scans with another
        voxel size are resampled (trilinear). None keeps each scan's voxel
        size, which then must all agree.
    affine : array-like of shape (4, 4) or None, default=None
        World (e.g. MNI mm) affine of a model grid of ``shape`` voxels: every
        scan is resampled into it from its own affine — any voxel size,
        orientation or obliquity —, smoothed first where it has finer voxels
        than the grid (anti-aliasing), with 0 where the grid lies outside the
        scan. A scan covering less than half of the grid is refused (it is not
        in the grid's space). :class:`ldae.LDAEEncoder` uses its preset's grid
        (:func:`ldae.imaging.grid.grid_affine`).
    percentiles : tuple of 2 floats, default=(0.5, 99.5)
        Intensities at these percentiles of the voxels on the target grid
        (inside the brain mask, when one is given) map to 0 and 1; values
        beyond are clipped.
    brain_mask : str, path-like, nibabel image or None, default=None
        Mask on the target grid (same shape, same affine); voxels outside it
        are set to 0.
    nan_policy : {"raise", "zero"}, default="raise"
        What to do with NaN or infinite voxels: raise an InputError naming
        the scan, or set them to 0.
    max_voxels : int, default=512**3
        Largest number of voxels a scan's header may claim (all volumes
        together). A larger claim is refused from the header, before any
        memory is allocated: a damaged or hostile file cannot exhaust memory.
        Not part of the cache key (it never changes a volume).
    """

    shape: tuple | None = None
    voxel_size: tuple | None = None
    affine: tuple | None = None
    percentiles: tuple = (0.5, 99.5)
    brain_mask: object = None
    nan_policy: str = "raise"
    max_voxels: int = 512**3

    def __post_init__(self):
        # Settings are normalised once so that equal settings compare and
        # hash equal, whatever sequence types they were given as.
        set_field = object.__setattr__
        set_field(self, "shape", _check_shape(self.shape))
        set_field(self, "voxel_size", _check_voxel_size(self.voxel_size))
        set_field(self, "affine", _check_grid_affine(self.affine, self.shape, self.voxel_size))
        set_field(self, "percentiles", _check_percentiles(self.percentiles))
        set_field(self, "brain_mask", _check_mask_argument(self.brain_mask))
        if not _is_int(self.max_voxels) or self.max_voxels < 8:
            raise InputError(
                f"Preprocessing(max_voxels={self.max_voxels!r}): expected an integer >= 8"
            )
        if self.nan_policy not in _NAN_POLICIES:
            raise InputError(
                f"Preprocessing(nan_policy={self.nan_policy!r}): expected one of {_NAN_POLICIES}"
            )

    def to_dict(self):
        """The settings as a dict of plain values.

        Returns
        -------
        dict
            JSON-serialisable unless the brain mask was given as an image;
            ``Preprocessing.from_dict`` rebuilds equal settings from it.
        """
        return {
            "shape": None if self.shape is None else list(self.shape),
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "affine": None if self.affine is None else [list(row) for row in self.affine],
            "percentiles": list(self.percentiles),
            "brain_mask": self.brain_mask,
            "nan_policy": self.nan_policy,
            "max_voxels": self.max_voxels,
        }

    @classmethod
    def from_dict(cls, settings):
        """Rebuild settings saved with :meth:`to_dict`.

        Parameters
        ----------
        settings : dict

        Returns
        -------
        Preprocessing
        """
        return cls(**settings)

    @cached_property
    def mask(self):
        """The brain mask as (boolean array, affine), or None."""
        if self.brain_mask is None:
            return None
        image = self.brain_mask
        if isinstance(image, str):
            image = open_image(image)
        affine = check_affine(image.affine, "brain_mask")
        inside = read_volume(image, "brain_mask") > 0
        if not inside.any():
            raise InputError("brain_mask: the mask is empty (no voxel > 0)")
        return inside, affine

    @cached_property
    def cache_key(self):
        """Hex digest of the settings (the mask by content) and the pipeline version."""
        settings = self.to_dict()
        del settings["max_voxels"]
        if self.mask is not None:
            inside, affine = self.mask
            settings["brain_mask"] = hashlib.sha256(inside.tobytes() + affine.tobytes()).hexdigest()
        settings["pipeline_version"] = PIPELINE_VERSION
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def plan(self, shape, affine, name="image"):
        """Plan the target grid of a scan from its header.

        Parameters
        ----------
        shape : tuple of ints
            Shape of the scan's data.
        affine : array-like of shape (4, 4)
            Voxel-to-world affine of the scan.
        name : str, default="image"
            How to name the scan in errors.

        Returns
        -------
        ldae.imaging.grid.Grid

        Raises
        ------
        InputError
            If the header claims more than ``max_voxels`` voxels, the scan is not
            one 3D volume, its affine is unusable, or the
            brain mask does not lie on its target grid.
        """
        self.check_voxel_count(shape, name)
        if self.affine is not None:
            grid = plan_world_grid(spatial_shape(shape, name), check_affine(affine, name),
                                   self.shape, np.array(self.affine), name=name)
        else:
            grid = plan_grid(spatial_shape(shape, name), check_affine(affine, name),
                             voxel_size=self.voxel_size, target_shape=self.shape, name=name)
        if self.mask is not None:
            inside, mask_affine = self.mask
            if inside.shape != grid.shape:
                raise InputError(
                    f"brain_mask: shape {inside.shape} differs from the target grid "
                    f"{grid.shape} of {name}"
                )
            if not np.allclose(mask_affine, grid.affine, atol=_MASK_AFFINE_ATOL):
                raise InputError(
                    f"brain_mask: its affine differs from the target grid of {name}; "
                    f"mask:\n{mask_affine}\ntarget grid:\n{grid.affine}"
                )
        return grid

    def check_voxel_count(self, shape, name="image"):
        """Refuse, from its header's shape, a scan of more than ``max_voxels`` voxels.

        Raises
        ------
        InputError
            Naming the scan, its claimed shape and the setting.
        """
        claimed = math.prod(int(n) for n in shape)
        if claimed > self.max_voxels:
            raise InputError(
                f"{name}: its header claims {claimed} voxels (shape {format_sizes(shape)}), "
                f"more than Preprocessing(max_voxels={self.max_voxels}); raise max_voxels "
                "if the scan is really that large"
            )

    def apply(self, image, name="image"):
        """Preprocess one scan.

        Parameters
        ----------
        image : nibabel.spatialimages.SpatialImage
            The scan (a file-backed image is decoded here).
        name : str, default="image"
            How to name the scan in errors.

        Returns
        -------
        volume : ndarray of shape ``grid.shape``, float32
            Intensities in [0, 1]; Fortran-ordered when the scan's data is (as
            nibabel decodes files), C-ordered otherwise.
        grid : ldae.imaging.grid.Grid
            The target grid, whose ``affine`` places `volume` in the world.

        Raises
        ------
        InputError
            If the data cannot be decoded, holds NaN/Inf (with
            ``nan_policy="raise"``), or is constant on the target grid.
        """
        grid = self.plan(image.shape, image.affine, name)
        data = self._finite(read_volume(image, name), name)
        source = grid.resample(data)[grid.source_slices]
        low, high = self._intensity_range(source, grid, name)
        # The volume keeps the memory layout of its source (Fortran order for
        # files, as nibabel gives them): a transposing copy would cost a third
        # of the decoding time, and batching copies the volume anyway.
        order = "F" if abs(source.strides[0]) < abs(source.strides[-1]) else "C"
        volume = np.zeros(grid.shape, np.float32, order=order)
        target = volume[grid.target_slices]
        np.subtract(source, low, out=target)
        np.divide(target, high - low, out=target)
        np.clip(target, 0.0, 1.0, out=target)
        if self.mask is not None:
            np.multiply(volume, self.mask[0], out=volume)
        return volume, grid

    def _finite(self, data, name):
        if np.isfinite(data).all():
            return data
        if self.nan_policy == "raise":
            count = int(data.size - np.isfinite(data).sum())
            raise InputError(
                f"{name}: {count} NaN or infinite voxels; pass "
                "Preprocessing(nan_policy='zero') to set them to 0"
            )
        return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)

    def _intensity_range(self, source, grid, name):
        """Float32 intensities at the two percentiles, over a regular subsample."""
        inside = None if self.mask is None else self.mask[0][grid.target_slices]
        count = source.size if inside is None else np.count_nonzero(inside)
        if count == 0:
            raise InputError(f"{name}: the brain mask covers none of its voxels")
        step = max(1, round(np.cbrt(count / _PERCENTILE_SAMPLE_SIZE)))
        sample = source[::step, ::step, ::step]
        if inside is not None:
            sample = sample[inside[::step, ::step, ::step]]
        low, high = np.percentile(sample, self.percentiles).astype(np.float32)
        with np.errstate(over="ignore"):
            span = high - low
        if not np.isfinite(span):
            raise InputError(
                f"{name}: intensities from {low} to {high} span more than float32 holds"
            )
        if high > low:
            return low, high
        if source.min() == source.max():
            raise InputError(f"{name}: the image is constant ({source.flat[0]}) on the target grid")
        raise InputError(
            f"{name}: percentiles {self.percentiles} of the intensities are equal ({low}); "
            "choose wider percentiles"
        )


def model_preprocessing(preprocessing, shape, affine):
    """The preprocessing of a model whose grid is ``shape`` voxels placed by ``affine``.

    Parameters
    ----------
    preprocessing : Preprocessing or None
        What the user gave; None gives the default, which resamples every scan into
        the model grid.
    shape : tuple of 3 ints
    affine : ndarray of shape (4, 4)

    Returns
    -------
    Preprocessing

    Raises
    ------
    InputError
        If ``preprocessing`` is not a Preprocessing or makes volumes of another shape.
    """
    if preprocessing is None:
        return Preprocessing(shape=tuple(shape), affine=affine)
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(
            f"preprocessing must be an ldae.imaging.Preprocessing, got {type(preprocessing).__name__}")
    if preprocessing.shape is None or tuple(preprocessing.shape) != tuple(shape):
        raise InputError(f"preprocessing.shape={preprocessing.shape} differs from the model's "
                         f"image_shape={tuple(shape)}")
    return preprocessing


def _check_shape(shape):
    if shape is None:
        return None
    if not _is_triple(shape) or not all(_is_int(n) and n >= 2 for n in shape):
        raise InputError(
            f"Preprocessing(shape={shape!r}): expected 3 integers >= 2 (D, H, W) or None"
        )
    return tuple(int(n) for n in shape)


def _check_voxel_size(voxel_size):
    if voxel_size is None:
        return None
    if isinstance(voxel_size, Real):
        voxel_size = (voxel_size,) * 3
    if not _is_triple(voxel_size) or not all(
        isinstance(v, Real) and np.isfinite(v) and v > 0 for v in voxel_size
    ):
        raise InputError(
            f"Preprocessing(voxel_size={voxel_size!r}): expected a positive number of mm, "
            "3 of them, or None"
        )
    return tuple(float(v) for v in voxel_size)


def _check_grid_affine(affine, shape, voxel_size):
    if affine is None:
        return None
    if shape is None or voxel_size is not None:
        raise InputError(
            "Preprocessing(affine=...): a model grid needs its shape and takes its voxel size "
            "from the affine; give shape=(D, H, W) and no voxel_size")
    affine = check_affine(affine, "Preprocessing(affine=...)")
    return tuple(tuple(float(v) for v in row) for row in affine)


def _check_percentiles(percentiles):
    valid = (
        isinstance(percentiles, (tuple, list, np.ndarray))
        and len(percentiles) == 2
        and all(isinstance(p, Real) for p in percentiles)
        and 0 <= percentiles[0] < percentiles[1] <= 100
    )
    if not valid:
        raise InputError(
            f"Preprocessing(percentiles={percentiles!r}): expected (low, high) with "
            "0 <= low < high <= 100"
        )
    return tuple(float(p) for p in percentiles)


def _check_mask_argument(mask):
    if mask is None or isinstance(mask, SpatialImage):
        return mask
    if isinstance(mask, (str, os.PathLike)):
        return os.path.abspath(os.fspath(mask))
    raise InputError(
        f"Preprocessing(brain_mask=...): expected a path, a nibabel image or None, "
        f"got {type(mask).__name__}"
    )


def _is_triple(value):
    return isinstance(value, (tuple, list, np.ndarray)) and len(value) == 3


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

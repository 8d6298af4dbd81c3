"""Opening image files and checking images, with errors that name the item.

Everything nibabel reads as a volume image is accepted (NIfTI-1/2, Analyze,
MGH...). Opening reads the header only; the voxels are decoded by
:func:`read_volume` when they are needed.
"""

import os
import zlib

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from ..exceptions import InputError

# What nibabel and the decompressors raise for an unreadable, truncated or
# corrupted file.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")


def open_image(path):
    """Open an image file, reading its header only.

    Parameters
    ----------
    path : str
        Path of a NIfTI (or other nibabel volume) file.

    Returns
    -------
    nibabel.spatialimages.SpatialImage

    Raises
    ------
    InputError
        If the path is missing, a directory, not an image nibabel reads, or
        an uncompressed file shorter than its header says.
    """
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not an image file")
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: not a readable NIfTI image ({exc})") from exc
    if not isinstance(image, SpatialImage):
        raise InputError(f"{path}: a {type(image).__name__} is not a volume image")
    _check_uncompressed_size(image, path)
    return image


def _check_uncompressed_size(image, path):
    """Catch a truncated uncompressed file from its size, without decoding it."""
    data_file = image.file_map["image"].filename
    proxy = image.dataobj
    if data_file.endswith(_COMPRESSED_SUFFIXES) or not hasattr(proxy, "offset"):
        return
    needed = proxy.offset + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
    size = os.path.getsize(data_file)
    if size < needed:
        raise InputError(f"{path}: truncated file ({size} bytes; its header needs {needed})")


def spatial_shape(shape, name):
    """The 3D shape of an image, refusing 2D images and several volumes.

    Parameters
    ----------
    shape : tuple of ints
        Shape of the image data; a 4th (or later) axis of length 1 is allowed.
    name : str
        How to name the image in errors.

    Returns
    -------
    tuple of 3 ints

    Raises
    ------
    InputError
        If the image is not a single 3D volume.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        volumes = int(np.prod(shape[3:]))
        raise InputError(
            f"{name}: {len(shape)}D image with {volumes} volumes (shape {shape}); "
            "pass one 3D volume per scan (e.g. nilearn.image.index_img(img, 0))"
        )
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise InputError(f"{name}: 2D image (shape {shape}); a 3D volume is needed")
    return shape[:3]


def check_affine(affine, name):
    """Refuse an affine that cannot place voxels in the world.

    Parameters
    ----------
    affine : array-like of shape (4, 4)
    name : str
        How to name the image (or argument) in errors.

    Returns
    -------
    ndarray of shape (4, 4), float64

    Raises
    ------
    InputError
        If the affine is not a finite, invertible 4x4 matrix.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{name}: the affine must be a finite 4x4 matrix, got {affine!r}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: the affine is singular (a voxel size is 0): {affine!r}")
    return affine


def read_volume(image, name):
    """Decode the voxels of a single-volume image as float32.

    Parameters
    ----------
    image : nibabel.spatialimages.SpatialImage
    name : str
        How to name the image in errors.

    Returns
    -------
    ndarray of shape (X, Y, Z), float32
        With the header's intensity scaling applied. For an image holding an
        array, it may be that array (never modify it in place).

    Raises
    ------
    InputError
        If the file is truncated or corrupted.
    """
    spatial_shape(image.shape, name)
    try:
        data = image.get_fdata(caching="unchanged", dtype=np.float32)
    except _READ_ERRORS as exc:
        raise InputError(f"{name}: cannot read the image data ({exc})") from exc
    return data[(slice(None),) * 3 + (0,) * (data.ndim - 3)]

"""Opening image files and checking images, with errors that name the item.

Everything nibabel reads as a volume image is accepted (NIfTI-1/2, Analyze,
MGH...). Opening reads the header only; the voxels are decoded by
:func:`read_volume` when they are needed.

Files are untrusted input: whatever nibabel or a decompressor raises while
parsing one becomes an :class:`~ldae.exceptions.InputError` naming the file,
and a header that claims more data than the file can hold is refused before
any memory is allocated for it.
"""

import io
import math
import os
import zlib

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.spatialimages import SpatialImage

from ..exceptions import InputError

_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")
# Deflate expands at most 1032-fold: a gzip file claiming more data is damaged.
_DEFLATE_MAX_RATIO = 1032
# A gzip stream is decompressed in pieces of at most this many bytes beyond the
# data the header claims (trailing bytes are checked, never accumulated).
_GZIP_PIECE = 2**24
# Voxel data types a scan may hold: booleans, integers and reals (not complex
# numbers, RGB triplets or other structured types).
_SCALAR_KINDS = "biuf"


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
        If the path is missing, a directory, not an image nibabel reads, holds
        complex or RGB voxels, or is shorter than its header says (exactly for
        an uncompressed file; beyond what deflate can expand to for a gzip).
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: {why_not_a_file(path)}")
    try:
        image = nib.load(path)
    except zlib.error as exc:  # the header's read decompresses ahead into damaged voxels
        raise _corrupt_gzip(path, exc) from exc
    except Exception as exc:  # nibabel parses hostile bytes: any failure means a bad file
        raise InputError(f"{path}: not a readable NIfTI image ({_describe(exc)})") from exc
    if not isinstance(image, SpatialImage):
        raise InputError(f"{path}: a {type(image).__name__} is not a volume image")
    check_data_type(image, path)
    _check_file_size(image, path)
    return image


def why_not_a_file(path):
    """Why a path names no readable file, in words: missing, a directory, a broken link."""
    if os.path.isdir(path):
        return "is a directory, not an image file"
    if os.path.islink(path):
        return "is a symbolic link that leads nowhere (a loop, or a missing target)"
    if os.path.exists(path):
        return "is not a regular file"
    return "does not exist"


def check_data_type(image, name):
    """Refuse an image whose voxels are not scalars (complex, RGB, structured).

    Parameters
    ----------
    image : nibabel.spatialimages.SpatialImage
    name : str
        How to name the image in errors.

    Raises
    ------
    InputError
        If the voxel data type is not boolean, integer or real.
    """
    dtype = np.dtype(image.get_data_dtype())
    if dtype.kind not in _SCALAR_KINDS:
        kind = {"c": "complex", "V": "RGB or structured"}.get(dtype.kind, "non-numeric")
        raise InputError(
            f"{name}: {kind} voxels (data type {dtype}); a scan must hold one real "
            "intensity per voxel"
        )


def _data_file(image):
    """(file name, bytes its header needs) of a file-backed image, else None."""
    proxy = image.dataobj
    data_file = image.file_map["image"].filename
    if data_file is None or not isinstance(proxy, ArrayProxy):
        return None
    return data_file, int(proxy.offset) + math.prod(proxy.shape) * proxy.dtype.itemsize


def _check_file_size(image, path):
    """Catch a truncated file, or absurd dimensions, from sizes alone."""
    source = _data_file(image)
    if source is None:
        return
    data_file, needed = source
    proxy = image.dataobj
    size = os.path.getsize(data_file)
    if data_file.endswith(".gz") and needed > _DEFLATE_MAX_RATIO * size:
        raise InputError(
            f"{path}: truncated or corrupt file: its header claims {needed} bytes of "
            f"data (shape {tuple(proxy.shape)}), more than {size} gzip bytes can hold"
        )
    if not data_file.endswith(_COMPRESSED_SUFFIXES) and size < needed:
        raise InputError(
            f"{path}: truncated file ({size} bytes; its header needs {needed}, "
            f"shape {tuple(proxy.shape)})"
        )


def _describe(exc):
    """An exception in a few words: its message, or its type when it has none."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


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
    if any(n < 1 for n in shape):
        raise InputError(f"{name}: invalid dimensions {shape} (a length below 1)")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        volumes = math.prod(shape[3:])
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
        If the image is not one 3D volume of scalars, or its file is
        truncated or corrupted.
    """
    spatial_shape(image.shape, name)
    data = _decode(image, name)
    return data[(slice(None),) * 3 + (0,) * (data.ndim - 3)]


def split_volumes(image, name):
    """The 3D volumes of a 4D image, each as an in-memory image on its grid.

    A 4D image (a series of volumes along its 4th axis) counts as that many scans,
    as in nilearn. Its data is decoded once, with the checks of :func:`read_volume`.

    Parameters
    ----------
    image : nibabel.spatialimages.SpatialImage
        Of shape (X, Y, Z, n) (a 5th or later axis must have length 1).
    name : str
        How to name the image in errors.

    Returns
    -------
    list of nibabel.spatialimages.SpatialImage
    """
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 4 or any(n != 1 for n in shape[4:]):
        raise InputError(f"{name}: shape {shape} is not a series of 3D volumes")
    spatial_shape(shape[:3], name)
    data = _decode(image, name).reshape(shape[:4])
    return [SpatialImage(data[..., k], image.affine) for k in range(shape[3])]


def _decode(image, name):
    """All the voxels of an image, float32, with the header's scaling applied."""
    check_data_type(image, name)
    source = _data_file(image)
    try:
        if source is not None and source[0].endswith(".gz"):
            data = _read_gzip_data(image, *source, name)
        else:
            data = image.get_fdata(caching="unchanged", dtype=np.float32)
    except InputError:
        raise
    except Exception as exc:  # decoding hostile bytes: any failure means a bad file
        raise InputError(f"{name}: cannot read the image data ({_describe(exc)})") from exc
    return data


def _read_gzip_data(image, path, needed, name):
    """Decode a gzip image's voxels, checking the whole stream (CRC-32 and length).

    nibabel stops reading once it has the voxels, before the gzip trailer, so a
    flipped bit would pass unnoticed; decompressing here, once, reaches the end of
    every member (bgzip writes many). Bytes past the ``needed`` ones are checked
    in pieces and dropped, never accumulated.
    """
    with open(path, "rb") as file:
        rest = file.read()
    pieces, size = [], 0
    try:
        while rest:  # one gzip member per round
            decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = rest
            while pending:
                piece = decompressor.decompress(pending, needed - size if size < needed
                                                else _GZIP_PIECE)
                if size < needed:
                    pieces.append(piece)
                    size += len(piece)
                pending = decompressor.unconsumed_tail
            if not decompressor.eof:
                raise InputError(f"{name}: truncated gzip file (the stream ends early); "
                                 "the file is damaged")
            rest = decompressor.unused_data
    except zlib.error as exc:
        raise _corrupt_gzip(name, exc) from exc
    if size < needed:
        raise InputError(f"{name}: truncated gzip file ({size} of the {needed} bytes its "
                         "header needs); the file is damaged")
    data = b"".join(pieces)
    proxy = image.dataobj
    copy = ArrayProxy(io.BytesIO(data), (proxy.shape, proxy.dtype, proxy.offset, proxy.slope,
                                          proxy.inter), order=proxy.order)
    return np.asarray(copy, dtype=np.float32)


def _corrupt_gzip(name, exc):
    return InputError(f"{name}: corrupt gzip data ({exc}); the file is damaged")

"""What users pass as X, turned into a lazy dataset of preprocessed volumes.

X may be what nilearn accepts for a set of 3D scans: a list or tuple of paths
(str or path-like) or of nibabel images, a pandas Series of paths (its index is
kept), or an array (n, D, H, W) / (n, 1, D, H, W). Every item goes through the
same pipeline, so one scan given as a path, an image or an array gives the same
volume. Headers are checked when the dataset is built; voxels are decoded only
when an item is read.
"""

import hashlib
import operator
import os

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.sparse
import torch
from nibabel.spatialimages import SpatialImage

from ..exceptions import InputError
from .cache import VolumeCache
from .grid import VOXEL_SIZE_RTOL, voxel_sizes
from .nifti import check_affine, open_image
from .preprocessing import Preprocessing

_EXPECTED_X = (
    "a list/tuple of NIfTI paths or nibabel images, a pandas Series of paths, "
    "or an array of shape (n, D, H, W) or (n, 1, D, H, W)"
)


class VolumeDataset(torch.utils.data.Dataset):
    """Scans preprocessed on access: ``ds[i]`` decodes and preprocesses scan i.

    Build it with :func:`as_volume_dataset`, which checks the scans first. It
    is picklable, so a ``torch.utils.data.DataLoader`` with workers can
    stream it.

    Parameters
    ----------
    sources : list
        Per scan, its absolute path (str) or a nibabel image.
    names : list of str
        Per scan, how errors name it.
    affines : ndarray of shape (n, 4, 4)
        Per scan, the affine of its target grid.
    shape : tuple of 3 ints
        Shape of every preprocessed volume.
    preprocessing : Preprocessing
        The settings to apply.
    index : pandas.Index or None, default=None
        Labels of the scans.
    cache : VolumeCache or None, default=None
        Where preprocessed volumes of files are kept.

    Attributes
    ----------
    names : list of str
        How each scan is named in errors: its absolute path, or ``"X[i]"``.
    index : pandas.Index or None
        The index of X when X was a Series.
    shape : tuple of 3 ints
        Shape (D, H, W) of every volume.
    affines : ndarray of shape (n, 4, 4)
        Affine of each scan's target grid.
    affine : ndarray of shape (4, 4)
        Affine of the first scan's target grid (all of them, for scans
        registered to one space): save outputs as NIfTI with it.
    preprocessing : Preprocessing
        The settings applied.
    """

    def __init__(self, sources, names, affines, shape, preprocessing, index=None, cache=None):
        self._sources = sources
        self.names = names
        self.affines = affines
        self.shape = shape
        self.preprocessing = preprocessing
        self.index = index
        self._cache = cache

    @property
    def affine(self):
        """Affine (4, 4) of the first scan's target grid."""
        return self.affines[0]

    def fingerprint(self):
        """A digest that changes when the scans or the preprocessing do.

        Files count by absolute path, modification time and size (nothing is
        decoded); in-memory images and arrays by their voxels.

        Returns
        -------
        str
            Hex digest.
        """
        digest = hashlib.sha256(self.preprocessing.cache_key.encode())
        digest.update(np.ascontiguousarray(self.affines).tobytes())
        for source in self._sources:
            _hash_source(digest, source)
        return digest.hexdigest()

    def __len__(self):
        return len(self._sources)

    def __getitem__(self, i):
        """Scan i, preprocessed.

        Parameters
        ----------
        i : int

        Returns
        -------
        ndarray of shape ``self.shape``, float32
            Intensities in [0, 1]. Volumes read from files are Fortran-ordered,
            like the arrays nibabel returns.

        Raises
        ------
        InputError
            If the scan's data is unreadable or unusable, or its file changed
            shape since the dataset was built.
        """
        i = operator.index(i)
        source, name = self._sources[i], self.names[i]
        stamp = None
        if self._cache is not None and isinstance(source, str):
            stamp = VolumeCache.stamp(source)
            volume = self._cache.load(source, stamp)
            if volume is not None:
                return volume
        volume, grid = self.preprocessing.apply(_image(source), name)
        if grid.shape != self.shape:
            raise InputError(
                f"{name}: preprocessed shape {grid.shape} differs from the dataset's "
                f"{self.shape}; did the file change after the dataset was built?"
            )
        if stamp is not None:
            self._cache.store(source, stamp, volume)
        return volume


def as_volume_dataset(X, preprocessing=None, *, affine=None, cache_dir=None):
    """Turn scans into a lazy dataset of preprocessed float32 volumes.

    Parameters
    ----------
    X : list, tuple, pandas.Series or ndarray
        The scans: NIfTI paths (str or path-like) or nibabel images in a list,
        tuple or Series, or an array of shape (n, D, H, W) or
        (n, 1, D, H, W). Arrays are taken as RAS-oriented volumes on the grid
        of `affine`.
    preprocessing : Preprocessing or None, default=None
        The settings; None uses ``Preprocessing()``.
    affine : array-like of shape (4, 4) or None, default=None
        Grid of array input. None: voxel size ``preprocessing.voxel_size``
        (1 mm if unset), origin at voxel (0, 0, 0). Images carry their own
        affine, so it is refused for them.
    cache_dir : str, path-like or None, default=None
        Folder caching the preprocessed volumes of files (not of in-memory
        images or arrays); a second pass over the scans then decodes nothing.

    Returns
    -------
    VolumeDataset

    Raises
    ------
    InputError
        If X or an item of it is unusable (the message names it): wrong type,
        empty, missing file, directory, not an image, 2D, several volumes,
        array of the wrong rank or inconsistent shapes, or scans that do not
        share one shape or voxel size after preprocessing.
    """
    preprocessing = Preprocessing() if preprocessing is None else preprocessing
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(
            f"preprocessing: expected a Preprocessing or None, got {type(preprocessing).__name__}"
        )
    index = X.index if isinstance(X, pd.Series) else None
    items = _items(X)
    if any(isinstance(item, np.ndarray) for item in items):
        affine = _array_affine(affine, preprocessing)
    elif affine is not None:
        raise InputError("affine: only array input takes one; images carry their own")
    # Every item's type first (cheap), then every header (one file read each).
    sources, names = map(list, zip(*(_source(item, i, affine) for i, item in enumerate(items))))
    grids = []
    for source, name in zip(sources, names):
        image = _image(source)
        grids.append(preprocessing.plan(image.shape, image.affine, name))
    _check_consistent(grids, names)
    cache = None if cache_dir is None else VolumeCache(cache_dir, preprocessing.cache_key)
    return VolumeDataset(
        sources,
        names,
        np.stack([grid.affine for grid in grids]),
        grids[0].shape,
        preprocessing,
        index=index,
        cache=cache,
    )


def _items(X):
    """The scans of X as a list, refusing what cannot be a set of scans."""
    if isinstance(X, pd.DataFrame):
        raise InputError("X is a DataFrame; pass its column of paths, e.g. X['path']")
    if isinstance(X, (str, os.PathLike, SpatialImage)):
        scan = type(X).__name__ if isinstance(X, SpatialImage) else os.fspath(X)
        raise InputError(f"X is a single scan ({scan}); pass a list of scans, e.g. [X]")
    if scipy.sparse.issparse(X):
        raise InputError(
            f"X: sparse input is not supported ({type(X).__name__}); expected {_EXPECTED_X}"
        )
    if isinstance(X, np.ndarray) and X.dtype.kind == "c":
        # scikit-learn's wording, which its estimator checks look for.
        raise InputError(f"X: Complex data not supported (array of dtype {X.dtype})")
    if isinstance(X, np.ndarray) and X.dtype.kind in "iuf":
        if X.ndim == 5 and X.shape[1] == 1:
            X = X[:, 0]
        elif X.ndim != 4:
            raise InputError(
                f"X: array of shape {X.shape}; expected (n, D, H, W) or (n, 1, D, H, W)"
                + (" (for one volume, pass X[None])" if X.ndim == 3 else "")
            )
        items = list(X)
    elif isinstance(X, np.ndarray) and X.dtype.kind in "OU" and X.ndim == 1:
        items = X.tolist()
    elif isinstance(X, (list, tuple, pd.Series)):
        items = list(X)
    else:
        description = f"array of dtype {X.dtype}" if isinstance(X, np.ndarray) else type(X).__name__
        raise InputError(f"X: unsupported input ({description}); expected {_EXPECTED_X}")
    if not items:
        raise InputError("X is empty: no scan to read")
    return items


def _source(item, position, affine):
    """What the dataset keeps of one item, and the item's name in errors."""
    name = f"X[{position}]"
    if isinstance(item, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(item))
        return path, path
    if isinstance(item, SpatialImage):
        return item, name
    if isinstance(item, np.ndarray) and item.dtype.kind in "iuf":
        volume = item[0] if item.ndim == 4 and len(item) == 1 else item
        if volume.ndim != 3:
            raise InputError(f"{name}: array of shape {item.shape}; expected (D, H, W)")
        # The generic image class: NIfTI's would refuse some dtypes (float16, int64).
        return SpatialImage(volume, affine), name
    description = (
        f"array of dtype {item.dtype}" if isinstance(item, np.ndarray) else type(item).__name__
    )
    raise InputError(
        f"{name}: unsupported item ({description}); expected a path or a nibabel image"
    )


def _hash_source(digest, source):
    """Feed what identifies a scan's content to a hashlib digest."""
    if not isinstance(source, str) and nib.is_proxy(source.dataobj) and source.get_filename():
        source = os.path.abspath(source.get_filename())
    if isinstance(source, str):
        digest.update(f"{source}\n{VolumeCache.stamp(source)}\n".encode())
    else:
        voxels = np.ascontiguousarray(source.dataobj)
        digest.update(f"{voxels.dtype}{voxels.shape}".encode())
        digest.update(memoryview(voxels).cast("B"))


def _image(source):
    """The image of a source; a file's is opened (header only)."""
    return open_image(source) if isinstance(source, str) else source


def _array_affine(affine, preprocessing):
    if affine is not None:
        return check_affine(affine, "affine")
    return np.diag([*(preprocessing.voxel_size or (1.0, 1.0, 1.0)), 1.0])


def _check_consistent(grids, names):
    """All scans must land on grids of one shape and one voxel size."""
    first_sizes = voxel_sizes(grids[0].affine)
    for grid, name in zip(grids, names):
        if grid.shape != grids[0].shape:
            raise InputError(
                f"{name}: shape {grid.shape} after preprocessing, but {names[0]} has "
                f"{grids[0].shape}; set Preprocessing(shape=...) to crop/pad every scan "
                "to one shape"
            )
        sizes = voxel_sizes(grid.affine)
        if not np.allclose(sizes, first_sizes, rtol=VOXEL_SIZE_RTOL, atol=0):
            raise InputError(
                f"{name}: voxel size {tuple(sizes.round(4))} mm, but {names[0]} has "
                f"{tuple(first_sizes.round(4))} mm; set Preprocessing(voxel_size=...) to "
                "resample every scan to one voxel size"
            )

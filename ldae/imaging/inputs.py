"""What users pass as X, turned into a lazy dataset of preprocessed volumes.

X may be what nilearn accepts for a set of 3D scans: a list or tuple of paths
(str or path-like) or of nibabel images, a pandas Series of paths (its index is
kept), or an array (n, D, H, W) / (n, 1, D, H, W). Every item goes through the
same pipeline, so one scan given as a path, an image or an array gives the same
volume. Headers are checked when the dataset is built; voxels are decoded only
when an item is read.
"""

import glob
import hashlib
import operator
import os
import warnings
from collections import Counter
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.sparse
import torch
from nibabel.spatialimages import SpatialImage

from ..exceptions import InputError, SkippedScanWarning
from .cache import VolumeCache
from .grid import VOXEL_SIZE_RTOL, format_sizes, voxel_sizes
from .nifti import check_affine, check_data_type, open_image, split_volumes
from .preprocessing import Preprocessing

ON_ERROR = ("raise", "skip")
SKIPPED_COLUMNS = ["position", "scan", "error"]
_EXPECTED_X = (
    "a list/tuple of NIfTI paths or nibabel images, a pandas Series of paths, a glob "
    "pattern, a 4D image or file, or an array or tensor of shape (n, D, H, W) or "
    "(n, 1, D, H, W)"
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
    on_error : {"raise", "skip"}, default="raise"
        What reading an unusable scan does: raise its InputError, or warn
        (:class:`~ldae.exceptions.SkippedScanWarning`) and give a volume of
        NaN in its place.
    positions : array-like of int or None, default=None
        Per scan, its position in X; None: 0, 1, 2...
    skipped : pandas.DataFrame or None, default=None
        Scans of X already left out (columns ``position``, ``scan``, ``error``).

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
    on_error : {"raise", "skip"}
    positions : ndarray of int
        Position in X of each scan of the dataset.
    skipped_ : pandas.DataFrame
        The scans of X left out, one row each: ``position`` in X, ``scan``
        (its name) and ``error`` (what is wrong with it). Empty unless
        ``on_error="skip"``.
    n_inputs : int
        Number of scans in X, the skipped ones included.
    """

    def __init__(self, sources, names, affines, shape, preprocessing, index=None, cache=None,
                 on_error="raise", positions=None, skipped=None):
        self._sources = sources
        self.names = names
        self.affines = affines
        self.shape = shape
        self.preprocessing = preprocessing
        self.index = index
        self._cache = cache
        self.on_error = on_error
        self.positions = np.arange(len(sources)) if positions is None else np.asarray(positions)
        self.skipped_ = _skipped_frame([]) if skipped is None else skipped
        self.n_inputs = len(self.positions) + len(self.skipped_)

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
            like the arrays nibabel returns. With ``on_error="skip"``, an
            unusable scan gives a volume of NaN (and a SkippedScanWarning).

        Raises
        ------
        InputError
            With ``on_error="raise"``, if the scan's data is unreadable or
            unusable, or its file changed shape since the dataset was built.
        """
        try:
            return self._read(i)
        except InputError as error:
            if self.on_error == "raise":
                raise
            warnings.warn(f"{error} (skipped: on_error='skip')", SkippedScanWarning, stacklevel=2)
            return np.full(self.shape, np.nan, np.float32)

    def read_error(self, i):
        """What is wrong with scan i, or None when it reads.

        Parameters
        ----------
        i : int

        Returns
        -------
        str or None
            The message of the InputError reading it raises.
        """
        try:
            self._read(i)
        except InputError as error:
            return str(error)
        return None

    def screen(self, num_workers=0):
        """Read every scan once and keep those that read.

        With a ``cache_dir``, the volumes read are cached, so the pass is not
        lost for the next one.

        Parameters
        ----------
        num_workers : int, default=0
            Worker processes reading the scans.

        Returns
        -------
        VolumeDataset
            The scans that read; the others are added to ``skipped_`` (with a
            SkippedScanWarning naming them).

        Raises
        ------
        InputError
            If no scan reads.
        """
        loader = torch.utils.data.DataLoader(
            _ReadErrors(self), batch_size=None, num_workers=num_workers
        )
        errors = list(loader)
        failed = [i for i, error in enumerate(errors) if error]
        if not failed:
            return self
        records = [(int(self.positions[i]), self.names[i], errors[i]) for i in failed]
        skipped = pd.concat([self.skipped_, _skipped_frame(records)], ignore_index=True)
        kept = [i for i, error in enumerate(errors) if not error]
        if not kept:
            raise InputError(f"X: no scan is usable; {_summary(skipped)}")
        _warn_skipped(records, stacklevel=3)
        return VolumeDataset(
            [self._sources[i] for i in kept],
            [self.names[i] for i in kept],
            self.affines[kept],
            self.shape,
            self.preprocessing,
            index=None if self.index is None else self.index[kept],
            cache=self._cache,
            on_error=self.on_error,
            positions=self.positions[kept],
            skipped=skipped.sort_values("position", ignore_index=True),
        )

    def _read(self, i):
        i = operator.index(i)
        source, name = self._sources[i], self.names[i]
        stamp = None
        if self._cache is not None and isinstance(source, str):
            stamp = VolumeCache.stamp(source)
            volume = self._cache.load(source, stamp, self.shape)
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


def as_volume_dataset(X, preprocessing=None, *, affine=None, cache_dir=None, on_error="raise",
                      reference=None):
    """Turn scans into a lazy dataset of preprocessed float32 volumes.

    Parameters
    ----------
    X : list, tuple, pandas.Series, str, nibabel image, ndarray or torch.Tensor
        The scans: NIfTI paths (str or path-like) or nibabel images in a list,
        tuple or Series; a glob pattern such as ``"sub-*/anat/*T1w.nii.gz"``
        (its matches, sorted); a 4D image or file, whose volumes are the scans
        (as in nilearn); or an array or tensor of shape (n, D, H, W) or
        (n, 1, D, H, W). Arrays are taken as RAS-oriented volumes on the grid
        of `affine`.
    preprocessing : Preprocessing or None, default=None
        The settings; None uses ``Preprocessing()``.
    affine : array-like of shape (4, 4) or None, default=None
        Grid of array input. None: the model grid ``preprocessing.affine``
        when set (the arrays must then have its shape), else voxel size
        ``preprocessing.voxel_size`` (1 mm if unset), origin at voxel (0, 0, 0). Images carry their own
        affine, so it is refused for them.
    cache_dir : str, path-like or None, default=None
        Folder caching the preprocessed volumes of files (not of in-memory
        images or arrays); a second pass over the scans then decodes nothing.
    on_error : {"raise", "skip"}, default="raise"
        What an unusable scan does. "raise": raise an InputError naming it.
        "skip": leave it out with a :class:`~ldae.exceptions.SkippedScanWarning`
        and a row in the dataset's ``skipped_`` table, so that one bad scan
        among thousands does not end a run. Headers are checked here; a scan
        whose voxels turn out unusable when read gives a volume of NaN (see
        :meth:`VolumeDataset.screen` to find those up front). With "skip",
        scans whose grid differs from the most common one are the ones left
        out.
    reference : (shape, affine) or None, default=None
        A grid every scan must match (shape and voxel size after
        preprocessing), e.g. a fitted model's ``(shape, affine_)``: a scan on
        another grid is refused (or skipped) whatever the other scans are.
        None: the scans must agree with each other.

    Returns
    -------
    VolumeDataset

    Raises
    ------
    InputError
        If X or an item of it is unusable (the message names it): wrong type,
        empty, missing file, directory, not an image, 2D, several volumes,
        complex or RGB voxels, array of the wrong rank or inconsistent
        shapes, or scans that do not share one shape or voxel size after
        preprocessing. With ``on_error="skip"``, only if X itself is unusable
        or every scan is.
    """
    preprocessing = Preprocessing() if preprocessing is None else preprocessing
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(
            f"preprocessing: expected a Preprocessing or None, got {type(preprocessing).__name__}"
        )
    if on_error not in ON_ERROR:
        raise InputError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
    index = X.index if isinstance(X, pd.Series) else None
    items = _items(X, preprocessing)
    array_shape = None
    if any(isinstance(item, np.ndarray) for item in items):
        if affine is None and preprocessing.affine is not None:
            array_shape = preprocessing.shape
        affine = _array_affine(affine, preprocessing)
    elif affine is not None:
        raise InputError("affine: only array input takes one; images carry their own")
    skipping = _Skipping(on_error)
    # Every item's type first (cheap), then every header (one file read each).
    scans = skipping.keep(
        [(i,) for i in range(len(items))], lambda i: _source(items[i], i, affine, array_shape),
        _item_name(items)
    )
    scans = skipping.keep(scans, lambda i, source, name: (_plan(source, name, preprocessing),))
    scans = _on_one_grid(scans, skipping, reference)
    skipped = skipping.table(len(items))
    positions, sources, names, grids = map(list, zip(*scans))
    cache = None if cache_dir is None else VolumeCache(cache_dir, preprocessing.cache_key)
    return VolumeDataset(
        sources,
        names,
        np.stack([grid.affine for grid in grids]),
        grids[0].shape,
        preprocessing,
        index=None if index is None else index[positions],
        cache=cache,
        on_error=on_error,
        positions=positions,
        skipped=skipped,
    )


class _Skipping:
    """Applies on_error to the scans as the checks go: raise, or set aside."""

    def __init__(self, on_error):
        self.on_error = on_error
        self.records = []

    def keep(self, scans, check, name_of=None):
        """Scans (tuples starting with their position) extended by ``check(*scan)``.

        A scan whose check raises InputError is set aside (or the error raised).
        """
        kept = []
        for scan in scans:
            try:
                kept.append((*scan, *check(*scan)))
            except InputError as error:
                name = name_of(scan[0]) if name_of else scan[2]
                self.set_aside(scan[0], name, error)
        return kept

    def set_aside(self, position, name, error):
        if self.on_error == "raise":
            raise error
        self.records.append((position, name, str(error)))

    def table(self, n_items):
        """The skipped scans as a frame, after a warning naming them."""
        if not self.records:
            return _skipped_frame([])
        if len(self.records) == n_items:
            raise InputError(f"X: no scan is usable; {_summary(_skipped_frame(self.records))}")
        _warn_skipped(self.records, stacklevel=4)
        return _skipped_frame(sorted(self.records))


class _ReadErrors(torch.utils.data.Dataset):
    """Per scan of a dataset, what reading it raises ("" when it reads)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset.read_error(i) or ""


def _skipped_frame(records):
    frame = pd.DataFrame(records, columns=SKIPPED_COLUMNS)
    return frame.astype({"position": int, "scan": str, "error": str})


def _summary(skipped, shown=5):
    lines = [f"{row.scan} ({row.error})" for row in skipped.head(shown).itertuples()]
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} skipped: " + "; ".join(lines) + more


def _warn_skipped(records, stacklevel):
    warnings.warn(
        f"on_error='skip' left out {_summary(_skipped_frame(records))}",
        SkippedScanWarning,
        stacklevel=stacklevel + 1,
    )


def _item_name(items):
    """How errors name item i of X, before its type is checked."""

    def name(i):
        item = items[i]
        if isinstance(item, (str, os.PathLike)):
            return os.path.abspath(os.fspath(item))
        return f"X[{i}]"

    return name


def _plan(source, name, preprocessing):
    """The target grid of a scan, from its header."""
    image = _image(source)
    check_data_type(image, name)
    return preprocessing.plan(image.shape, image.affine, name)


def _items(X, preprocessing):
    """The scans of X as a list, refusing what cannot be a set of scans."""
    if isinstance(X, pd.DataFrame):
        raise InputError("X is a DataFrame; pass its column of paths, e.g. X['path']")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if isinstance(X, (str, os.PathLike)) and not os.path.exists(X) and glob.has_magic(os.fspath(X)):
        matches = sorted(glob.glob(os.path.expanduser(os.fspath(X))))
        if not matches:
            raise InputError(f"X: the pattern {os.fspath(X)!r} matches no file")
        return matches
    if isinstance(X, (str, os.PathLike, SpatialImage)):
        return _volumes_of_one_image(X, preprocessing)
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


def _volumes_of_one_image(X, preprocessing):
    """A 4D image or file given as X: its volumes are the scans (nilearn's convention)."""
    is_path = isinstance(X, (str, os.PathLike))
    name = os.path.abspath(os.fspath(X)) if is_path else "X"
    image = open_image(name) if is_path and os.path.isfile(name) else X
    shape = tuple(int(n) for n in image.shape) if isinstance(image, SpatialImage) else ()
    if len(shape) < 4 or shape[3] < 2:
        scan = os.fspath(X) if is_path else type(X).__name__
        raise InputError(f"X is a single scan ({scan}); pass a list of scans, e.g. [X]")
    preprocessing.check_voxel_count(shape, name)
    return split_volumes(image, name)


def _source(item, position, affine, array_shape=None):
    """What the dataset keeps of one item, and the item's name in errors.

    ``array_shape``: the shape an array must have (it is taken to lie on the model grid).
    """
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
        if array_shape is not None and volume.shape != tuple(array_shape):
            raise InputError(
                f"{name}: array of shape {volume.shape}, but arrays without an affine are taken "
                f"to lie on the model grid of shape {tuple(array_shape)}; pass affine= (its "
                "voxel-to-world matrix) to have it resampled, or give it as a NIfTI image")
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
    if preprocessing.affine is not None:
        return np.array(preprocessing.affine)
    return np.diag([*(preprocessing.voxel_size or (1.0, 1.0, 1.0)), 1.0])


def _on_one_grid(scans, skipping, given=None):
    """The scans whose grid has the shape and voxel size of a reference.

    The reference is the ``given`` grid, else the first scan, or with
    on_error="skip" the first of the most common grid, so that the odd scans are
    the ones left out.
    """
    if not scans:
        return scans
    if given is not None:
        shape, affine = given
        reference = (None, None, "the model's grid", _GivenGrid(tuple(shape), np.asarray(affine)))
        return skipping.keep(scans, lambda *scan: _check_same_grid(scan, reference))
    reference = scans[0]
    if skipping.on_error == "skip":
        counts = Counter(_grid_key(grid) for *_, grid in scans)
        reference = next(scan for scan in scans if counts[_grid_key(scan[3])] == max(counts.values()))
    return skipping.keep(scans, lambda *scan: _check_same_grid(scan, reference))


class _GivenGrid(NamedTuple):
    shape: tuple
    affine: np.ndarray


def _grid_key(grid):
    return grid.shape, tuple(voxel_sizes(grid.affine).round(3))


def _check_same_grid(scan, reference):
    """Refuse a scan whose grid has another shape or voxel size than the reference's."""
    (_, _, name, grid), (_, _, reference_name, reference_grid) = scan, reference
    if grid.shape != reference_grid.shape:
        raise InputError(
            f"{name}: shape {grid.shape} after preprocessing, but {reference_name} has "
            f"{reference_grid.shape}; set Preprocessing(shape=...) to crop/pad every scan "
            "to one shape"
        )
    sizes, reference_sizes = voxel_sizes(grid.affine), voxel_sizes(reference_grid.affine)
    if not np.allclose(sizes, reference_sizes, rtol=VOXEL_SIZE_RTOL, atol=0):
        remedy = ("resample the scan to that voxel size, or fit with "
                  "Preprocessing(voxel_size=...) to resample every scan"
                  if isinstance(reference_grid, _GivenGrid) else
                  "set Preprocessing(voxel_size=...) to resample every scan to one voxel size")
        raise InputError(
            f"{name}: voxel size {format_sizes(sizes)} mm, but {reference_name} has "
            f"{format_sizes(reference_sizes)} mm; {remedy}"
        )
    return ()

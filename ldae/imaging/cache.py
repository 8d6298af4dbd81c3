"""On-disk cache of preprocessed volumes.

One ``.npy`` file per (scan file, preprocessing settings), read back through a
memory map, so a second pass over a cohort decodes no gzip. Layout:
``<folder>/<digest of the scan's absolute path and the settings>/<mtime>-<size>.<crc32>.npy``:
editing or replacing a scan, or changing a setting, leads to another entry, and
writing the entry of a new version of a scan removes the old one. Entries are
written to a temporary file in the same folder and renamed into place, so a
crash or an error never leaves a half-written entry behind; an entry is checked
(shape, dtype, finite voxels, CRC-32 of its data) every time it is read.
"""

import glob
import hashlib
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from .._files import write_atomically
from ..exceptions import InputError


class VolumeCache:
    """Preprocessed volumes of scan files, stored in a folder.

    Parameters
    ----------
    folder : str or path-like
        Where the entries live; created if missing.
    settings_key : str
        Digest of the preprocessing settings (``Preprocessing.cache_key``).
    """

    def __init__(self, folder, settings_key):
        self.folder = Path(folder).absolute()
        self.settings_key = settings_key
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cache_dir={str(folder)!r}: cannot create the folder ({exc})"
            ) from exc

    def load(self, path, stamp, shape):
        """The cached volume of a scan file, or None when there is no valid one.

        An entry is used only if it holds a finite float32 volume of the expected
        shape whose CRC-32 matches the one recorded in its name; anything else
        (damaged or edited outside ldae) is ignored, then rebuilt and replaced.

        Parameters
        ----------
        path : str
            Absolute path of the scan file.
        stamp : str or None
            :meth:`stamp` of the file (None when it cannot be read).
        shape : tuple of ints
            The shape the volume must have.

        Returns
        -------
        ndarray or None
            An in-memory float32 copy (the caller owns it).
        """
        if stamp is None:
            return None
        folder = self._folder(path)
        for entry in sorted(folder.glob(f"{glob.escape(stamp)}.*.npy")):
            try:
                volume = np.array(np.load(entry, mmap_mode="r"))
            except (OSError, ValueError):
                continue
            if _intact(volume, shape, entry.name[len(stamp) + 1 : -len(".npy")]):
                return volume
        return None

    def store(self, path, stamp, volume):
        """Save the preprocessed volume of a scan file.

        Parameters
        ----------
        path : str
            Absolute path of the scan file.
        stamp : str
            :meth:`stamp` of the file taken before it was read, so that an
            entry never claims a newer version of the file than it holds.
        volume : ndarray
            Its preprocessed volume.
        """
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        entry = self._folder(path) / f"{stamp}.{_checksum(volume)}.npy"
        try:
            write_atomically(entry, lambda temporary: _save_array(temporary, volume))
        except OSError as exc:
            # The cache only saves time: a full disk must not stop the work.
            warnings.warn(
                f"could not cache the volume of {path} in {self.folder}: {exc}", stacklevel=3
            )
            return
        for stale in entry.parent.glob("[!.]*.npy"):  # not another writer's temporary file
            if stale != entry:
                stale.unlink(missing_ok=True)

    @staticmethod
    def stamp(path):
        """Modification time (ns) and size of a file, as they name an entry.

        Parameters
        ----------
        path : str

        Returns
        -------
        str or None
            None when the file cannot be examined.
        """
        try:
            status = os.stat(path)
        except OSError:
            return None
        return f"{status.st_mtime_ns:x}-{status.st_size:x}"

    def _folder(self, path):
        scan = hashlib.sha256(f"{path}\n{self.settings_key}".encode()).hexdigest()[:32]
        return self.folder / scan


def _checksum(volume):
    return f"{zlib.crc32(memoryview(volume).cast('B')):08x}"


def _intact(volume, shape, checksum):
    return (volume.dtype == np.float32 and volume.shape == tuple(shape)
            and volume.flags.c_contiguous and _checksum(volume) == checksum
            and bool(np.isfinite(volume).all()))


def _save_array(path, array):
    with open(path, "wb") as file:
        np.save(file, array)

"""Atomic file writing: every file the library writes appears whole or not at all."""

import os
import tempfile
from pathlib import Path


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write):
    """Call ``write(temporary_path)``, flush it to disk, then rename it to ``path``.

    The temporary file sits in the destination folder (so the rename is atomic) and
    keeps the destination's suffixes (nibabel picks gzip from ``.nii.gz``). It gets
    the permissions a plain ``open`` would give, not ``mkstemp``'s private 0600.

    Parameters
    ----------
    path : str or Path
        Destination; its folder is created if missing.
    write : callable
        Writes the content to the path it receives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix="".join(path.suffixes) or ".tmp")
    os.close(descriptor)
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

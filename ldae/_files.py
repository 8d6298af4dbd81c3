"""Atomic file writing: every file the library writes appears whole or not at all."""

import glob
import os
import tempfile
import time
from pathlib import Path

# A temporary of ours untouched for this long was left by a killed writer (a live
# one streams into it, then renames it within milliseconds).
STALE_SECONDS = 60


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write):
    """Call ``write(temporary_path)``, flush it to disk, then rename it to ``path``.

    The temporary file sits in the destination folder (so the rename is atomic) and
    keeps the destination's suffixes (nibabel picks gzip from ``.nii.gz``). It gets
    the permissions a plain ``open`` would give, not ``mkstemp``'s private 0600.
    Temporaries of the same destination that a killed run left behind (untouched
    for ``STALE_SECONDS``) are removed first.

    Parameters
    ----------
    path : str or Path
        Destination; its folder is created if missing.
    write : callable
        Writes the content to the path it receives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{path.name}.", "".join(path.suffixes) or ".tmp"
    _remove_stale_temporaries(path.parent, prefix, suffix)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
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


def _remove_stale_temporaries(folder, prefix, suffix):
    pattern = os.path.join(glob.escape(str(folder)), glob.escape(prefix) + "*" + glob.escape(suffix))
    deadline = time.time() - STALE_SECONDS
    for leftover in glob.glob(pattern):
        try:
            if os.stat(leftover).st_mtime < deadline:
                os.unlink(leftover)
        except FileNotFoundError:  # another run removed or renamed it meanwhile
            pass

"""Atomic, code-free checkpoint files.

Checkpoints hold only tensors and plain Python values, are written to a temporary
file and renamed into place (a crash never leaves a half-written checkpoint), and are
read with ``torch.load(weights_only=True)`` so that loading a file from an untrusted
source cannot execute code.
"""

import os
import tempfile
from pathlib import Path

import torch

from ..exceptions import CheckpointError


def save_checkpoint(payload, path):
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`, on the CPU.

    Raises
    ------
    CheckpointError
        When the file is missing, truncated, corrupt, or holds anything but
        tensors and plain Python values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or a pickle
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not an ldae checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None


class StageCheckpoints:
    """The checkpoints of one fit in a folder: a final file per completed stage, and
    a periodic file per stage in progress.

    Every file carries the fingerprint of the fit's settings and data; a file with
    another fingerprint belongs to another fit and is ignored (then overwritten).

    Parameters
    ----------
    directory : str or Path
    fingerprint : str
        Hash of everything that makes two fits the same (settings and data).
    """

    def __init__(self, directory, fingerprint):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def _path(self, stage, partial):
        return self.directory / f"{stage}{'.partial' if partial else ''}.pt"

    def load(self, stage, *, partial=False):
        """The payload saved for ``stage`` by this fit, or None."""
        path = self._path(stage, partial)
        if not path.exists():
            return None
        payload = load_checkpoint(path)
        if not isinstance(payload, dict) or "fingerprint" not in payload:
            raise CheckpointError(f"checkpoint {path} is not an ldae stage checkpoint")
        return payload if payload["fingerprint"] == self.fingerprint else None

    def save(self, stage, payload, *, partial=False):
        """Write ``payload`` for ``stage`` atomically; a completed stage drops its partial file."""
        save_checkpoint({**payload, "fingerprint": self.fingerprint}, self._path(stage, partial))
        if not partial:
            self._path(stage, True).unlink(missing_ok=True)

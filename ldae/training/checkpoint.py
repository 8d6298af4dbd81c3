"""Atomic, checksummed, code-free checkpoint files.

Checkpoints hold only tensors and plain Python values, are written to a temporary
file and renamed into place (a crash never leaves a half-written checkpoint), and are
read with ``torch.load(weights_only=True)`` so that loading a file from an untrusted
source cannot execute code.

Each file stores its payload with a SHA-256 digest of the payload's content (every
tensor's bytes and every plain value). ``torch.load`` reads a file whose tensor bytes
were damaged without complaint; the digest, checked on every load, catches it.
"""

import hashlib
import json
import pickle
import warnings
from pathlib import Path

import torch

from .._files import write_atomically
from ..exceptions import CheckpointError
from . import distributed

_CONTAINER = "ldae.checkpoint"
_CONTAINER_VERSION = 1
_PLAIN_TYPES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def save_checkpoint(payload, path):
    """Write ``payload`` to ``path`` atomically, with its checksum.

    Parameters
    ----------
    payload : dict, list, tuple, tensor or plain value
        Tensors, numbers, strings, None, and lists, tuples and dicts of them.
    path : str or Path
        The file; its folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = {"format": _CONTAINER, "version": _CONTAINER_VERSION,
                 "sha256": payload_digest(payload), "payload": payload}
    write_atomically(path, lambda temporary: _save_container(container, temporary))


def _save_container(container, path):
    with open(path, "wb") as stream:
        torch.save(container, stream)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`, on the CPU.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    object
        The payload, after its checksum was verified.

    Raises
    ------
    CheckpointError
        When the file is missing, truncated, corrupt (its content does not match
        its checksum), has no checksum, or holds anything but tensors and plain
        Python values (such as code to run on unpickling). The message names the
        file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        container = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: that would run the code
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain values, "
            "which would run code when unpickled; ldae refuses to load it"
        ) from None
    except Exception as error:  # torch raises many types for a damaged zip
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not an ldae checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if not isinstance(container, dict) or container.get("format") != _CONTAINER:
        raise CheckpointError(
            f"checkpoint {path} has no checksum: it was not written by this version of "
            "ldae's save_checkpoint"
        )
    if container.get("version", 0) > _CONTAINER_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer ldae")
    try:
        intact = payload_digest(container["payload"]) == container["sha256"]
    except (KeyError, TypeError):
        intact = False
    if not intact:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match its SHA-256 "
            "checksum; delete it (a fit then retrains what it held)"
        )
    return container["payload"]


def payload_digest(payload):
    """SHA-256 of a payload's content: its structure, plain values and tensor bytes.

    Parameters
    ----------
    payload : dict, list, tuple, tensor or plain value

    Returns
    -------
    str
        Hex digest; equal payloads (as ``torch.save`` then ``torch.load`` give back)
        have equal digests, wherever their tensors live.

    Raises
    ------
    TypeError
        If the payload holds a value of another type.
    """
    digest = hashlib.sha256()
    _feed(digest, payload)
    return digest.hexdigest()


def _feed(digest, value):
    """Feed a value to the digest, tagged by type so that 1, "1" and [1] differ."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, _PLAIN_TYPES):
        text = repr(value).encode()
        digest.update(f"{type(value).__name__}{len(text)}:".encode() + text)
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


class StageCheckpoints:
    """The checkpoints of one fit in a folder: a final file per completed stage, and
    a periodic file per stage in progress.

    Every file carries the fingerprint of the fit's settings and data; a file with
    another fingerprint belongs to another fit: it is ignored (then overwritten),
    with a warning that names the settings that differ.
    In a data-parallel fit, process 0 writes the files and every process reads
    them: the folder must be one that all processes see.

    Parameters
    ----------
    directory : str or Path
    fingerprint : str or dict
        Hash of everything that makes two fits the same (settings and data); a
        dict gives each stage (by name) its own, so that fits which differ only in
        a later stage share the earlier stages' files. A stage's fingerprint may
        itself be a dict of named JSON-able settings: each is stored as a digest,
        so that a mismatch can say which settings changed.
    """

    def __init__(self, directory, fingerprint):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def _fingerprint(self, stage):
        value = self.fingerprint[stage] if isinstance(self.fingerprint, dict) else self.fingerprint
        if isinstance(value, dict):
            return {key: _digest(item) for key, item in value.items()}
        return value

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
        expected = self._fingerprint(stage)
        if payload["fingerprint"] == expected:
            return payload
        warnings.warn(f"checkpoint {path} belongs to another fit ({_changes(payload['fingerprint'], expected)}); "
                      f"the {stage} stage is trained again and the file overwritten",
                      UserWarning, stacklevel=2)
        return None

    def save(self, stage, payload, *, partial=False):
        """Write ``payload`` for ``stage`` atomically; a completed stage drops its partial file.

        In a data-parallel fit, process 0 writes and every process waits for it.
        """
        if distributed.is_main_process():
            save_checkpoint({**payload, "fingerprint": self._fingerprint(stage)},
                            self._path(stage, partial))
            if not partial:
                self._path(stage, True).unlink(missing_ok=True)
        distributed.barrier()


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _changes(stored, expected):
    """Which named settings differ between two fingerprints, in words."""
    if not (isinstance(stored, dict) and isinstance(expected, dict)):
        return "its settings or data differ"
    changed = sorted(key for key in stored.keys() | expected.keys()
                     if stored.get(key) != expected.get(key))
    return "these differ: " + ", ".join(changed)

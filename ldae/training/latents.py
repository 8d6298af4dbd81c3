"""Where the scans' stage-1 latents live while stages 2 and 3 train.

Every scan is encoded once and its latent reused by every later epoch. A small
cohort's latents stay in memory; above ``IN_MEMORY_LIMIT_BYTES`` they go to a
memory-mapped file (in ``cache_dir``, else the system's temporary folder) that is
deleted when the fit ends, so a 100,000-scan cohort does not need its latents in RAM:
the loaders read them by index and the operating system pages them in and out.
"""

import contextlib
import math
import tempfile

import numpy as np
import torch

from ..exceptions import InputError

IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
CHUNK = 256  # scans per slice when statistics or scaling walk the whole array


@contextlib.contextmanager
def latent_array(shape, folder=None):
    """A float32 tensor of ``shape`` for the latents of a fit, freed on exit.

    Parameters
    ----------
    shape : tuple of int
        ``(n_scans, C, d, h, w)``.
    folder : str or Path, optional
        Where a memory-mapped file goes when the latents exceed
        ``IN_MEMORY_LIMIT_BYTES``; the system's temporary folder by default.

    Yields
    ------
    torch.Tensor
        In memory, or a view of a memory-mapped file that is deleted on exit.
    """
    if math.prod(shape) * 4 <= IN_MEMORY_LIMIT_BYTES:
        yield torch.empty(shape, dtype=torch.float32)
        return
    try:
        backing = tempfile.NamedTemporaryFile(dir=folder, prefix="ldae-latents-", suffix=".f32")
    except OSError as error:
        raise InputError(f"cache_dir={str(folder)!r}: cannot create the latent file ({error})") from None
    with backing:
        yield torch.from_numpy(np.memmap(backing, dtype=np.float32, mode="w+", shape=shape))


def standard_deviation(latents, index):
    """Sample standard deviation of ``latents[index]`` over every value, read in chunks."""
    total = total_squares = 0.0
    for first in range(0, len(index), CHUNK):
        chunk = latents[torch.as_tensor(index[first:first + CHUNK])].double()
        total += float(chunk.sum())
        total_squares += float(chunk.square().sum())
    count = len(index) * math.prod(latents.shape[1:])
    return math.sqrt(max(total_squares - total * total / count, 0.0) / (count - 1))


def scale_in_place(latents, factor):
    """Multiply every latent by ``factor``, a chunk at a time."""
    for first in range(0, len(latents), CHUNK):
        latents[first:first + CHUNK] *= factor

"""Choosing the device and the numerical precision of training and inference."""

import contextlib

import torch

from ..exceptions import InputError

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device):
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device into a torch.device.

    ``"auto"`` picks CUDA when a GPU is visible, else the CPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"device={device!r} is not a device name ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} was asked for, but no CUDA device is available")
    return resolved


def resolve_precision(precision, device):
    """Return the autocast dtype (``torch.bfloat16``) or ``None`` for full float32.

    ``"auto"`` uses bfloat16 on GPUs that support it and float32 on every CPU. On
    CPUs with native bf16 (AVX-512 BF16, AMX) bf16 is faster but not numerically safe:
    a semantic code's spread across scans is a fraction of a percent of its size, the
    order of bf16 rounding, and bf16 and fp32 embeddings disagree far beyond the 5 %
    tolerance of ``benchmarks/bench_precision.py``. ``"bf16"`` still forces it.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} is not one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return None


def autocast(device, dtype):
    """Autocast context for ``dtype`` on ``device``, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""Choosing the device and the numerical precision of training and inference."""

import contextlib

import torch

from ..exceptions import InputError

PRECISIONS = ("auto", "bf16", "fp32")
PURPOSES = ("training", "caching", "encoding", "embedding", "sampling")


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


def resolve_precision(precision, device, purpose):
    """Return the autocast dtype (``torch.bfloat16``) or ``None`` for full float32.

    ``"auto"`` caches the latents that stages 2 and 3 train on in float32 on every
    device: trained on bf16-encoded latents, the `small` model's embedding lost 0.03 to
    0.07 ROC-AUC on each of three seeds (``benchmarks/bench_model_quality.py``), and the
    cache is computed once per fit. For the rest, ``"auto"`` uses bfloat16 on GPUs that
    support it; on CPUs it uses bfloat16 only on CPUs with native bf16 (AVX-512 BF16,
    AMX), and there for training steps and for the autoencoder's encoding of scans at
    inference: a training step is about twice as fast with held-out losses close to
    fp32 training; bf16 latents give embeddings of a trained model within 1 % of their
    spread of the fp32 ones. The semantic encoder stays float32 on a CPU (the whole
    embedding in bf16 is further off), and so do DDIM steps and decoding: in bf16 they
    reconstruct scans within 0.001 SSIM of fp32 at about half the time, but the small
    changes a manipulation makes lose their shape (``benchmarks/bench_precision.py``).
    ``"bf16"`` forces bfloat16 everywhere, ``"fp32"`` float32 everywhere.

    Parameters
    ----------
    precision : {"auto", "bf16", "fp32"}
    device : torch.device
    purpose : {"training", "caching", "encoding", "embedding", "sampling"}
        What the dtype is for: training steps; the autoencoder's encoding of the
        training scans into the latents a fit caches; its encoding of scans at
        inference; the semantic encoder at inference; DDIM steps and the decoding of
        latents into volumes.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} is not one of {PRECISIONS}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r} is not one of {PURPOSES}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if purpose == "caching":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if purpose in ("training", "encoding") and has_native_bf16() else None


def has_native_bf16():
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class _Fallback:
    """Whether the stage in training has fallen back from reduced precision to fp32."""

    to_fp32 = False


def autocast(device, dtype):
    """Autocast context for ``dtype`` on ``device``; a no-op when dtype is None or the
    stage in training fell back to fp32 (:func:`fall_back_to_fp32`)."""
    if dtype is None or _Fallback.to_fp32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fall_back_to_fp32(active=True):
    """Make :func:`autocast` a no-op until the next stage (``active=False`` resets it).

    Reduced-precision kernels can return NaN gradients where fp32 ones do not
    (oneDNN's bf16 convolution backward on tiny volumes); the loop then trains the rest
    of the stage in fp32 rather than in bf16 with NaN steps.
    """
    _Fallback.to_fp32 = active

"""Choosing the device and the numerical precision of training and inference."""

import contextlib
import threading

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
    stage in training fell back to fp32 (:func:`fall_back_to_fp32`).

    In bf16 on a CPU, a 3-D convolution whose kernel is deeper than its input (a
    3x3x3 kernel over a depth of 2, as at the deepest level of a UNet over a small
    latent) computes in fp32 (:func:`is_unsound_cpu_bf16_convolution`).
    """
    if dtype is None or _Fallback.to_fp32:
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype == torch.bfloat16:
        return _cpu_bf16_autocast()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_unsound_cpu_bf16_convolution(module, volume):
    """Whether oneDNN's bf16 weight gradient of this 3-D convolution would be wrong.

    With torch 2.13 on a CPU with AVX-512 BF16, the weight gradient of a stride-1
    ``Conv3d`` over an input of depth d, 1 < d < kernel depth, is off by up to 1e37 or
    NaN on every call, while its output and input gradient are right (a 3x3x3 kernel
    at depth 2, a 5x5x5 one at depths 2 to 4; height and width are unaffected).
    """
    return (isinstance(module, torch.nn.Conv3d) and module.stride[0] == 1
            and 1 < volume.shape[-3] < module.kernel_size[0])


_guarded = threading.local()


def _compute_in_fp32(module, args):
    # runs before every module's forward in the context: the type check comes first
    if (args and is_unsound_cpu_bf16_convolution(module, args[0])
            and torch.is_autocast_enabled("cpu")):
        torch.set_autocast_enabled("cpu", False)
        _guarded.module = module
        return (args[0].float(), *args[1:])
    return None


def _restore_autocast(module, args, output):
    if getattr(_guarded, "module", None) is module:
        _guarded.module = None
        torch.set_autocast_enabled("cpu", True)


@contextlib.contextmanager
def _cpu_bf16_autocast():
    before = torch.nn.modules.module.register_module_forward_pre_hook(_compute_in_fp32)
    after = torch.nn.modules.module.register_module_forward_hook(_restore_autocast,
                                                                  always_call=True)
    try:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            yield
    finally:
        before.remove()
        after.remove()


def fall_back_to_fp32(active=True):
    """Make :func:`autocast` a no-op until the end of the stage (``active=False`` resets it).

    A reduced-precision kernel can return NaN gradients where the fp32 one does not;
    the loop then trains the rest of the stage in fp32 rather than in bf16 with NaN
    steps. The one such kernel known is avoided up front
    (:func:`is_unsound_cpu_bf16_convolution`).
    """
    _Fallback.to_fp32 = active

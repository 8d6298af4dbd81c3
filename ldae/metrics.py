"""Image similarity of volumes: SSIM, MS-SSIM, MSE and PSNR.

Every function compares ``image`` with ``reference`` voxel by voxel, one score per
pair of volumes. Each argument may be one volume (a (D, H, W) array or a 3D
nibabel image / NIfTI path) or a batch (an array (n, D, H, W) or (n, 1, D, H, W),
or a list of volumes). One pair gives a float, a batch an array of n scores.

``data_range`` defaults to 1.0, the intensity range of preprocessed scans and of
what :class:`ldae.LDAEEncoder` decodes; it is a fixed number rather than each
volume's own max − min so that scores of different volumes are comparable.
SSIM uses MONAI's implementation with the window of Wang et al. (2004): a
Gaussian of σ = 1.5 voxels truncated to 11 voxels per axis, constants
k1 = 0.01, k2 = 0.03, averaged over every window position that fits inside the
volume (no padding).
"""

import os

import numpy as np
import torch
from monai.metrics import MSEMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from nibabel.spatialimages import SpatialImage

from .exceptions import InputError
from .imaging.nifti import open_image

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Weights of the 5 scales of Wang et al. (2003), finest first."""


def ssim(image, reference, *, data_range=1.0, win_size=11, sigma=1.5):
    """Structural similarity (SSIM) of each volume with its reference.

    Parameters
    ----------
    image, reference : ndarray, nibabel image, path, or list of them
        Volumes of the same shape (see the module documentation).
    data_range : float, default=1.0
        Intensity range of the volumes (max − min possible value).
    win_size : int, default=11
        Side of the Gaussian window in voxels; every side of the volumes must be
        at least this long.
    sigma : float, default=1.5
        Standard deviation of the Gaussian window in voxels.

    Returns
    -------
    float or ndarray of shape (n,)
        1 for identical volumes, lower for less similar ones.
    """
    predicted, target, single = _pair(image, reference)
    _check_window(predicted.shape[2:], win_size, 1)
    metric = SSIMMetric(spatial_dims=3, data_range=_positive(data_range, "data_range"),
                        win_size=win_size, kernel_sigma=sigma, reduction="none")
    return _scores(metric(predicted, target), single)


def ms_ssim(image, reference, *, data_range=1.0, win_size=11, sigma=1.5, weights=MS_SSIM_WEIGHTS):
    """Multi-scale structural similarity (MS-SSIM) of each volume with its reference.

    The volumes are compared at ``len(weights)`` scales, halving the resolution
    (2x2x2 average pooling) between scales, with MONAI's implementation.

    Parameters
    ----------
    image, reference : ndarray, nibabel image, path, or list of them
        Volumes of the same shape (see the module documentation).
    data_range : float, default=1.0
        Intensity range of the volumes.
    win_size : int, default=11
        Side of the Gaussian window in voxels, at every scale.
    sigma : float, default=1.5
        Standard deviation of the Gaussian window in voxels.
    weights : sequence of float, default=MS_SSIM_WEIGHTS
        Exponent of each scale, finest first. MONAI requires every side of the
        volumes to be at least ``win_size · (len(weights) − 1)²`` voxels (176
        with the defaults), and the coarsest scale at least ``win_size``; for
        small volumes pass fewer weights or a smaller window, e.g.
        ``win_size=7, weights=(0.3, 0.4, 0.3)`` for sides of 28 voxels or more.

    Returns
    -------
    float or ndarray of shape (n,)
    """
    predicted, target, single = _pair(image, reference)
    weights = tuple(float(weight) for weight in weights)
    if not weights:
        raise InputError("weights must hold at least one scale weight")
    _check_window(predicted.shape[2:], win_size, len(weights))
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=_positive(data_range, "data_range"),
                                  kernel_size=win_size, kernel_sigma=sigma, weights=weights,
                                  reduction="none")
    return _scores(metric(predicted, target), single)


def mse(image, reference):
    """Mean squared error over the voxels of each volume.

    Parameters
    ----------
    image, reference : ndarray, nibabel image, path, or list of them
        Volumes of the same shape (see the module documentation).

    Returns
    -------
    float or ndarray of shape (n,)
    """
    predicted, target, single = _pair(image, reference)
    return _scores(MSEMetric(reduction="none")(predicted, target), single)


def psnr(image, reference, *, data_range=1.0):
    """Peak signal-to-noise ratio in dB: 10 · log10(data_range² / MSE).

    Parameters
    ----------
    image, reference : ndarray, nibabel image, path, or list of them
        Volumes of the same shape (see the module documentation).
    data_range : float, default=1.0
        Intensity range of the volumes (the peak signal).

    Returns
    -------
    float or ndarray of shape (n,)
        ``inf`` for identical volumes.
    """
    predicted, target, single = _pair(image, reference)
    metric = PSNRMetric(max_val=_positive(data_range, "data_range"), reduction="none")
    return _scores(metric(predicted, target), single)


def _pair(image, reference):
    """Both arguments as float64 tensors (n, 1, D, H, W), and whether they were single volumes."""
    predicted, single_image = _batch(image, "image")
    target, single_reference = _batch(reference, "reference")
    if predicted.shape != target.shape:
        raise InputError(f"image has shape {tuple(predicted.shape[2:])} x {len(predicted)} volumes "
                         f"but reference {tuple(target.shape[2:])} x {len(target)}; "
                         "they must match")
    return predicted, target, single_image and single_reference


def _batch(volumes, name):
    if isinstance(volumes, (list, tuple)):
        if not volumes:
            raise InputError(f"{name} is empty")
        arrays = [_volume(item, f"{name}[{i}]") for i, item in enumerate(volumes)]
        if len({array.shape for array in arrays}) > 1:
            raise InputError(f"{name}: volumes of different shapes {sorted({a.shape for a in arrays})}")
        stacked, single = np.stack(arrays), False
    elif isinstance(volumes, np.ndarray) and volumes.ndim in (4, 5):
        if volumes.ndim == 5 and volumes.shape[1] != 1:
            raise InputError(f"{name}: array of shape {volumes.shape}; expected (n, 1, D, H, W)")
        stacked, single = _finite(volumes.reshape(len(volumes), *volumes.shape[-3:]), name), False
    else:
        stacked, single = _volume(volumes, name)[None], True
    return torch.from_numpy(np.asarray(stacked, dtype=np.float64)[:, None]), single


def _volume(item, name):
    if isinstance(item, (str, os.PathLike)):
        item = open_image(os.fspath(item))
    if isinstance(item, SpatialImage):
        item = np.asanyarray(item.dataobj)
    array = np.asarray(item)
    if array.dtype.kind not in "iufb" or array.ndim != 3:
        raise InputError(f"{name}: expected a 3D volume (array, nibabel image or path), "
                         f"got {type(item).__name__} of shape {np.shape(array)}")
    return _finite(array, name)


def _finite(array, name):
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} holds NaN or infinite values")
    return array


def _check_window(shape, win_size, n_scales):
    if int(win_size) != win_size or win_size < 1:
        raise InputError(f"win_size must be a positive integer, got {win_size!r}")
    # MONAI's own test is side // (n_scales - 1)² >= win_size; the coarsest scale also
    # needs side / 2^(n_scales - 1) >= win_size for its unpadded window.
    smallest = win_size * max(1, (n_scales - 1) ** 2, 2 ** (n_scales - 1))
    if min(shape) < smallest:
        scales = f" and {n_scales} scales; pass fewer weights or a smaller win_size" if n_scales > 1 else ""
        raise InputError(f"volumes of shape {tuple(shape)} are too small: every side must be at "
                         f"least {smallest} voxels for win_size={win_size}{scales}")


def _positive(value, name):
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _scores(values, single):
    scores = values.reshape(-1).numpy()
    return float(scores[0]) if single else scores

"""Generative use of a fitted LDAEEncoder (Lozupone et al. 2025, DESIGN §1 "Inference").

A scan is described by two codes: its semantic embedding y = Enc(x) (what
``transform`` returns) and its stochastic code x_T, obtained by running the
deterministic (η = 0) DDIM sampler backwards from the scan's diffusion latent z0,
with the noise prediction shifted by the gradient estimator conditioned on y.
Decoding (x_T, y) with the same sampler and the autoencoder gives the scan back.
Every method below combines these two codes differently:

- ``reconstruct``: decode the scan's own (x_T, y);
- ``generate``: decode a given y from fresh Gaussian x_T (stochastic variations);
- ``manipulate``: move y along a direction (e.g. a linear probe's), keep x_T;
- ``interpolate``: LERP between two scans' y, SLERP between their x_T.

All work in batches on the encoder's device, without gradients. Decoded volumes
are clipped to [0, 1], the intensity range of preprocessed scans.
"""

import numbers

import nibabel as nib
import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .diffusion.ddim import ddim_decode, ddim_encode
from .diffusion.schedule import NoiseSchedule
from .exceptions import InputError
from .imaging import as_volume_dataset
from .representation.gradient_estimator import shifted_eps
from .training.device import autocast, resolve_precision


class GenerativeMixin:
    """Generative methods of :class:`ldae.LDAEEncoder`.

    The encoder must be fitted. ``steps`` is the number of DDIM steps (network
    evaluations) used to encode and to decode; None uses the model's ``ddim_steps``.
    Scans given as an array give arrays back; scans given as paths or nibabel images
    give ``nibabel.Nifti1Image`` objects on the model grid (affine ``affine_``).
    An unusable scan raises an InputError naming it, whatever ``on_error`` says:
    these methods return one volume per input and cannot leave one out.
    """

    def encode_stochastic(self, X, steps=None):
        """Stochastic code x_T of each scan (shifted deterministic DDIM encoding).

        The scan's diffusion latent z0 is walked up the DDIM grid with the noise
        prediction conditioned on the scan's own embedding, so that decoding
        (x_T, ``transform(X)``) gives the scan back.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans, as in :meth:`fit`.
        steps : int, optional
            DDIM steps; decode with the same number.

        Returns
        -------
        ndarray of shape (n_scans, C, d, h, w), float32 (the latent shape)
            x_T, in the latent shape (C, d, h, w) of the diffusion model.
        """
        check_is_fitted(self)
        steps = _checked_steps(self, steps)
        _, x_T = _scan_codes(self, _dataset(self, X, "X"), steps)
        return x_T.numpy()

    def reconstruct(self, X, steps=None):
        """Reconstruct each scan from its own semantic and stochastic codes.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans, as in :meth:`fit`.
        steps : int, optional
            DDIM steps of encoding and decoding.

        Returns
        -------
        ndarray of shape (n_scans, D, H, W) or list of nibabel.Nifti1Image
            An array for array input, images on ``affine_`` otherwise.
        """
        check_is_fitted(self)
        steps = _checked_steps(self, steps)
        y, x_T = _scan_codes(self, _dataset(self, X, "X"), steps)
        return _outputs(self, decode_codes(self, x_T, y, steps), _is_array_input(X))

    def generate(self, embeddings, n_variations=1, random_state=None, steps=None):
        """Decode semantic embeddings from fresh Gaussian stochastic codes.

        The variations of one embedding share its semantics (anatomy, atrophy, ...)
        and differ in what the embedding leaves to x_T.

        Parameters
        ----------
        embeddings : array-like of shape (n_embeddings, embedding_dim)
            Semantic codes, e.g. rows of ``transform(X)`` or edited ones.
        n_variations : int, default=1
            Volumes decoded per embedding, each from its own x_T ~ N(0, I).
        random_state : int, RandomState instance or None, default=None
            Seeds the x_T draws (drawn on the CPU, so the same integer gives the
            same codes on every device).
        steps : int, optional
            DDIM steps of decoding.

        Returns
        -------
        ndarray of shape (n_embeddings, n_variations, D, H, W), float32
        """
        check_is_fitted(self)
        y = _checked_embeddings(embeddings, self.config_.embedding_dim)
        is_count = isinstance(n_variations, numbers.Integral) and not isinstance(n_variations, bool)
        if not is_count or n_variations < 1:
            raise InputError(f"n_variations must be a positive integer, got {n_variations!r}")
        steps = _checked_steps(self, steps)
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        generator = torch.Generator().manual_seed(int(seed))
        x_T = torch.randn((len(y) * n_variations, *self.config_.latent_shape), generator=generator)
        volumes = decode_codes(self, x_T, y.repeat_interleave(n_variations, dim=0), steps)
        return volumes.reshape(len(y), n_variations, *volumes.shape[1:]).numpy()

    def manipulate(self, X, direction, alpha, steps=None):
        """Move each scan along a direction of the embedding space and decode it.

        The embedding y of each scan becomes ``y + alpha * u`` with ``u`` the unit
        vector of ``direction`` in embedding space, and is decoded with the scan's
        own stochastic code, so that what the embedding does not hold (the
        scan's individual details) is kept.

        Parameters
        ----------
        X : list of paths or nibabel images, pandas Series of paths, or ndarray
            Scans, as in :meth:`fit`.
        direction : array-like of shape (embedding_dim,), or a fitted linear model
            A vector, or a fitted linear estimator trained on embeddings (anything
            with a single-row ``coef_``, e.g. LogisticRegression, Ridge), or a
            fitted Pipeline of StandardScaler steps ending in one. For a model the
            direction is the gradient of its decision function with respect to the
            embedding: ``coef_``, divided element-wise by the ``scale_`` of each
            StandardScaler before it. It is then normalised to unit length, so a
            positive ``alpha`` raises the decision function (towards the probe's
            ``classes_[1]``) and a negative one lowers it.
        alpha : float or sequence of float
            Distance moved along ``u`` in embedding units (the units of
            ``transform``'s output). To move by k standard deviations of a set of
            embeddings ``E`` along the direction, use ``alpha = k * np.std(E @ u)``.
        steps : int, optional
            DDIM steps of encoding and decoding.

        Returns
        -------
        ndarray or list of nibabel.Nifti1Image, or a sequence of them
            For a scalar ``alpha``: like :meth:`reconstruct`. For a sequence: an
            array of shape (n_alphas, n_scans, D, H, W) for array input, else a list
            (one per alpha) of lists of images.
        """
        check_is_fitted(self)
        unit = torch.from_numpy(embedding_direction(direction, self.config_.embedding_dim))
        alphas, is_scalar = _checked_values(alpha, "alpha")
        steps = _checked_steps(self, steps)
        y, x_T = _scan_codes(self, _dataset(self, X, "X"), steps)
        shifted = torch.cat([y + float(value) * unit for value in alphas])
        volumes = decode_codes(self, x_T.repeat(len(alphas), *(1,) * (x_T.ndim - 1)), shifted, steps)
        return _per_value_outputs(self, volumes, alphas, is_scalar, _is_array_input(X))

    def interpolate(self, X_start, X_end, t, steps=None):
        """Decode points between pairs of scans: LERP on y, SLERP on x_T.

        Scan i of ``X_start`` is paired with scan i of ``X_end``; the SLERP angle
        is that of each pair's own stochastic codes. ``t = 0`` gives the
        reconstruction of the start scan, ``t = 1`` that of the end scan.

        Parameters
        ----------
        X_start, X_end : list of paths or nibabel images, pandas Series of paths, or ndarray
            The same number of scans each, as in :meth:`fit`.
        t : float or sequence of float
            Positions in [0, 1] between start (0) and end (1).
        steps : int, optional
            DDIM steps of encoding and decoding.

        Returns
        -------
        ndarray or list of nibabel.Nifti1Image, or a sequence of them
            For a scalar ``t``: an array (n_pairs, D, H, W) if ``X_start`` is an
            array, else a list of images. For a sequence: an array
            (n_t, n_pairs, D, H, W), or a list (one per t) of lists of images.
        """
        check_is_fitted(self)
        positions, is_scalar = _checked_values(t, "t")
        if np.any((positions < 0) | (positions > 1)):
            raise InputError(f"t must lie in [0, 1], got {positions.tolist()}")
        steps = _checked_steps(self, steps)
        start, end = _dataset(self, X_start, "X_start"), _dataset(self, X_end, "X_end")
        if len(start) != len(end):
            raise InputError(f"X_start has {len(start)} scans and X_end {len(end)}; "
                             "interpolate pairs them one to one")
        y_start, x_start = _scan_codes(self, start, steps)
        y_end, x_end = _scan_codes(self, end, steps)
        codes = [interpolate_codes(y_start, y_end, x_start, x_end, torch.full((len(start),), value))
                 for value in positions]
        y = torch.cat([pair[0] for pair in codes])
        x_T = torch.cat([pair[1] for pair in codes])
        volumes = decode_codes(self, x_T, y, steps)
        return _per_value_outputs(self, volumes, positions, is_scalar, _is_array_input(X_start))


# --------------------------------------------------------------- building blocks


def slerp(start, end, t):
    """Spherical linear interpolation between pairs of tensors, one angle per pair.

    Parameters
    ----------
    start, end : torch.Tensor of shape (n, ...)
        Pairs of points; row i of ``start`` goes with row i of ``end``.
    t : torch.Tensor of shape (n,)
        Position of each pair in [0, 1].

    Returns
    -------
    torch.Tensor of shape (n, ...), in ``start``'s dtype
        ``sin((1 − t) θ) / sin θ · start + sin(t θ) / sin θ · end`` with θ the angle
        between the pair (a linear interpolation where θ is almost 0). Between two
        points of equal norm it stays on their sphere.
    """
    a = start.reshape(len(start), -1).double()
    b = end.reshape(len(end), -1).double()
    t = t.double().reshape(-1, 1)
    cosine = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    theta = torch.arccos(cosine.clamp(-1.0, 1.0))
    sine = torch.sin(theta)
    parallel = sine < 1e-6
    safe_sine = torch.where(parallel, torch.ones_like(sine), sine)
    weight_start = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * theta) / safe_sine)
    weight_end = torch.where(parallel, t, torch.sin(t * theta) / safe_sine)
    return (weight_start * a + weight_end * b).reshape(start.shape).to(start.dtype)


def interpolate_codes(y_start, y_end, x_start, x_end, t):
    """Codes between pairs of scans: LERP on the embeddings, SLERP on x_T.

    Parameters
    ----------
    y_start, y_end : torch.Tensor of shape (n, embedding_dim)
    x_start, x_end : torch.Tensor of shape (n, C, d, h, w)
    t : torch.Tensor of shape (n,)
        Position of each pair in [0, 1].

    Returns
    -------
    y, x_T : torch.Tensor
        The interpolated codes, shapes of the inputs.
    """
    weight = t.to(y_start.dtype).reshape(-1, 1)
    return torch.lerp(y_start, y_end, weight), slerp(x_start, x_end, t)


def embedding_direction(direction, embedding_dim):
    """Unit vector in embedding space of a vector or a fitted linear model.

    Parameters
    ----------
    direction : array-like of shape (embedding_dim,), or a fitted linear model
        See :meth:`GenerativeMixin.manipulate`.
    embedding_dim : int

    Returns
    -------
    ndarray of shape (embedding_dim,), float32
    """
    if hasattr(direction, "steps"):
        vector = _pipeline_gradient(direction)
    elif isinstance(direction, BaseEstimator):
        vector = _coefficients(direction, "direction")
    else:
        vector = np.asarray(direction, dtype=float)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
    if vector.shape != (embedding_dim,):
        raise InputError(f"direction has shape {vector.shape}; expected ({embedding_dim},), "
                         "one value per embedding dimension")
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise InputError("direction must be finite and non-zero")
    return (vector / norm).astype(np.float32)


def _pipeline_gradient(pipeline):
    *transforms, (name, model) = pipeline.steps
    vector = _coefficients(model, f"direction (step {name!r})")
    for name, step in transforms:
        if step is None or step == "passthrough":
            continue
        if not isinstance(step, StandardScaler):
            raise InputError(
                f"direction: cannot map the coefficients back through pipeline step {name!r} "
                f"({type(step).__name__}); only StandardScaler steps may precede the linear model")
        check_is_fitted(step)
        if step.scale_ is not None:
            vector = vector / step.scale_
    return vector


def _coefficients(model, name):
    if not hasattr(model, "coef_") and not hasattr(model, "fit"):
        raise InputError(f"{name}: expected a fitted linear model, got {type(model).__name__}")
    check_is_fitted(model)
    if not hasattr(model, "coef_"):
        raise InputError(f"{name}: {type(model).__name__} has no coef_; pass a linear model")
    coef = np.asarray(model.coef_, dtype=float)
    if coef.ndim == 2 and coef.shape[0] != 1:
        raise InputError(f"{name}: coef_ has {coef.shape[0]} rows (a multi-class or "
                         "multi-output model); pass one row as a vector")
    return coef.reshape(-1)


def _checked_values(values, name):
    """``values`` as a float array, and whether it was a scalar."""
    is_scalar = np.ndim(values) == 0
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if array.ndim != 1 or len(array) == 0 or not np.all(np.isfinite(array)):
        raise InputError(f"{name} must be a finite number or a non-empty sequence of them, "
                         f"got {values!r}")
    return array, is_scalar


def _checked_steps(encoder, steps):
    steps = encoder.config_.ddim_steps if steps is None else steps
    NoiseSchedule().ddim_timesteps(steps)  # raises InputError naming steps
    return steps


def _checked_embeddings(embeddings, embedding_dim):
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != embedding_dim or len(array) == 0:
        raise InputError(f"embeddings has shape {array.shape}; expected (n_embeddings, "
                         f"{embedding_dim})" + (" (for one embedding, pass embeddings[None])"
                                                if array.ndim == 1 else ""))
    if not np.all(np.isfinite(array)):
        raise InputError("embeddings holds NaN or infinite values")
    return torch.from_numpy(array)


def _dataset(encoder, X, name):
    try:
        return as_volume_dataset(X, encoder.preprocessing_, cache_dir=encoder.cache_dir)
    except InputError as error:
        if name == "X":
            raise
        raise InputError(f"{name}: {error}") from None


def _is_array_input(X):
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "iuf"
    return isinstance(X, (list, tuple)) and all(isinstance(item, np.ndarray) for item in X)


def _scan_codes(encoder, dataset, steps):
    """Embeddings y and stochastic codes x_T of the scans of a dataset (CPU tensors)."""
    z0 = torch.cat(list(encoder._batches(dataset, encoder._latent_batch)))
    y = torch.from_numpy(encoder._embed_scans(z0, dataset, np.arange(len(z0))))
    schedule = NoiseSchedule()

    def encode(z, codes):
        return ddim_encode(_conditional_eps(encoder, codes, schedule), z, schedule, steps)

    return y, _in_batches(encoder, encode, z0, y)


def decode_codes(encoder, x_T, y, steps):
    """Volumes decoded from stochastic codes and embeddings.

    Parameters
    ----------
    encoder : LDAEEncoder
        Fitted.
    x_T : torch.Tensor of shape (n, C, d, h, w)
    y : torch.Tensor of shape (n, embedding_dim)
    steps : int
        DDIM steps.

    Returns
    -------
    torch.Tensor of shape (n, D, H, W), float32 on the CPU, clipped to [0, 1]
    """
    schedule = NoiseSchedule()

    def decode(z, codes):
        z0 = ddim_decode(_conditional_eps(encoder, codes, schedule), z, schedule, steps)
        return encoder._decode_latent(z0)[:, 0].clamp(0.0, 1.0)

    return _in_batches(encoder, decode, x_T, y)


def autoencoder_reconstruction(encoder, X):
    """Reconstruct scans with the stage-1 autoencoder alone (no diffusion).

    The reference that LDAE reconstructions are compared with: they cannot be
    sharper than what the autoencoder keeps.

    Parameters
    ----------
    encoder : LDAEEncoder
        Fitted.
    X : list of paths or nibabel images, pandas Series of paths, or ndarray
        Scans, as in :meth:`LDAEEncoder.fit`.

    Returns
    -------
    ndarray of shape (n_scans, D, H, W) or list of nibabel.Nifti1Image
        Clipped to [0, 1]; an array for array input, images on ``affine_`` otherwise.
    """
    check_is_fitted(encoder)
    volumes = _autoencoder_volumes(encoder, _dataset(encoder, X, "X"))
    return _outputs(encoder, volumes, _is_array_input(X))


def _autoencoder_volumes(encoder, dataset):
    def round_trip(volumes):
        return encoder._decode_latent(encoder._latent_batch(volumes))[:, 0].clamp(0.0, 1.0)

    return torch.cat(list(encoder._batches(dataset, round_trip)))


def _conditional_eps(encoder, y, schedule):
    def eps_fn(z, t):
        return shifted_eps(encoder.unet_, encoder.estimator_, z, t, y, schedule)

    return eps_fn


@torch.no_grad()
def _in_batches(encoder, compute, *tensors):
    """``compute(*chunks)`` over row batches, on the encoder's device; float32 CPU result."""
    device = next(encoder.autoencoder_.parameters()).device
    dtype = resolve_precision(encoder.precision, device, "sampling")
    size = encoder.config_.batch_size * 2
    results = []
    for start in range(0, len(tensors[0]), size):
        chunks = [tensor[start:start + size].to(device) for tensor in tensors]
        with autocast(device, dtype):
            results.append(compute(*chunks).float().cpu())
    return torch.cat(results)


def _outputs(encoder, volumes, as_array):
    """Volumes (n, D, H, W) as an array, or as NIfTI images on the model grid."""
    array = volumes.numpy()
    if as_array:
        return array
    return [nib.Nifti1Image(volume, encoder.affine_) for volume in array]


def _per_value_outputs(encoder, volumes, values, is_scalar, as_array):
    per_value = volumes.reshape(len(values), -1, *volumes.shape[1:])
    if is_scalar:
        return _outputs(encoder, per_value[0], as_array)
    if as_array:
        return per_value.numpy()
    return [_outputs(encoder, block, as_array) for block in per_value]

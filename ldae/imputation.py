"""Missing-visit imputation with a fitted LDAEEncoder, scored against trivial baselines.

For every subject with three visits or more, each (earlier, middle, later) triplet
of its visits is a test case: the middle scan is predicted from the two that
bracket it by :meth:`ldae.LDAEEncoder.interpolate` at
t = (months_mid − months_start) / (months_end − months_start), i.e. LERP of the
embeddings and SLERP of the stochastic codes (Lozupone et al. 2025, DESIGN §1).
Each prediction is scored with SSIM and MSE against the real middle scan and
against the autoencoder's reconstruction of it (the paper's reference: the best
any decoder of this autoencoder can do). The same triplets are filled in by two
baselines that use the real bracketing scans: copying the nearest visit, and
voxel-wise linear interpolation at the same t.
"""

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_is_fitted

from .exceptions import InputError
from .generation import (
    _autoencoder_volumes,
    _checked_steps,
    _dataset,
    _scan_codes,
    decode_codes,
    interpolate_codes,
)
from .metrics import mse, ssim

LDAE, NEAREST, LINEAR = "LDAE", "nearest visit", "linear"
"""Names of the imputation methods in the ``method`` column."""
SCAN, AUTOENCODER = "scan", "autoencoder reconstruction"
"""Names of the references in the ``reference`` column."""
TRIPLETS_PER_CHUNK = 32


@dataclass
class ImputationResult:
    """Scores of imputed middle visits.

    Attributes
    ----------
    scores : DataFrame
        One row per (triplet, method, reference): ``subject``, ``scan_start``,
        ``scan_mid``, ``scan_end`` (0-based positions of the three scans in
        ``images`` and ``frame``), ``months_start``,
        ``months_mid``, ``months_end``, ``gap`` (months from the middle visit to
        the nearest of the two others), ``total_gap`` (months from start to end),
        ``t``, ``method`` (LDAE, nearest visit, linear), ``reference`` (scan,
        autoencoder reconstruction), ``ssim`` and ``mse``.
    summary : DataFrame
        Per reference, gap and method: ``n_triplets`` and the mean and standard
        deviation of SSIM and MSE.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame


def impute_missing_visits(encoder, images, frame, *, steps=None):
    """Predict every middle visit from the two that bracket it, and score it.

    Parameters
    ----------
    encoder : LDAEEncoder
        A fitted encoder.
    images : list of paths or nibabel images, pandas Series of paths, or ndarray
        The scans, one per row of ``frame`` and in its order, as in
        :meth:`ldae.LDAEEncoder.fit`.
    frame : DataFrame
        One row per scan with columns ``subject`` and ``months`` (time of the
        visit); e.g. the ``frame`` of :func:`ldae.datasets.make_synthetic_cohort`.
    steps : int, optional
        DDIM steps of encoding and decoding (default: the model's ``ddim_steps``).

    Returns
    -------
    ImputationResult
        ``scores`` (one row per triplet, method and reference) and ``summary`` (by
        gap to the nearest visit).

    Notes
    -----
    A subject with v visits gives v (v − 1) (v − 2) / 6 triplets, each decoded
    with ``steps`` network evaluations. The scans that take part in a triplet are
    held in memory twice (as read and as reconstructed by the autoencoder).
    """
    check_is_fitted(encoder)
    steps = _checked_steps(encoder, steps)
    triplets = _triplets(_checked_frame(frame, images))
    involved = np.unique(triplets[["scan_start", "scan_mid", "scan_end"]].to_numpy())
    dataset = _dataset(encoder, _select(images, involved), "images")
    position = {row: i for i, row in enumerate(involved)}
    start, mid, end = (torch.tensor(triplets[column].map(position).to_numpy())
                       for column in ("scan_start", "scan_mid", "scan_end"))

    real = torch.from_numpy(np.stack([dataset[i] for i in range(len(dataset))]))
    autoencoder = _autoencoder_volumes(encoder, dataset)
    y, x_T = _scan_codes(encoder, dataset, steps)
    t = torch.tensor(triplets["t"].to_numpy(), dtype=torch.float32)

    rows = []
    for chunk in np.array_split(np.arange(len(triplets)), -(-len(triplets) // TRIPLETS_PER_CHUNK)):
        s, m, e, w = start[chunk], mid[chunk], end[chunk], t[chunk]
        y_mid, x_mid = interpolate_codes(y[s], y[e], x_T[s], x_T[e], w)
        nearest = torch.where(w <= 0.5, s, e)  # a tie goes to the earlier visit
        predictions = {
            LDAE: decode_codes(encoder, x_mid, y_mid, steps),
            NEAREST: real[nearest],
            LINEAR: torch.lerp(real[s], real[e], w.reshape(-1, 1, 1, 1)),
        }
        for reference, target in ((SCAN, real[m]), (AUTOENCODER, autoencoder[m])):
            for method, prediction in predictions.items():
                rows.append(triplets.iloc[chunk].assign(
                    method=method, reference=reference,
                    ssim=ssim(prediction.numpy(), target.numpy()),
                    mse=mse(prediction.numpy(), target.numpy())))
    scores = pd.concat(rows, ignore_index=True)
    return ImputationResult(scores=scores, summary=summarise_by_gap(scores))


def summarise_by_gap(scores):
    """Mean and standard deviation of SSIM and MSE per reference, gap and method.

    Parameters
    ----------
    scores : DataFrame
        The ``scores`` of an :class:`ImputationResult`.

    Returns
    -------
    DataFrame
        Columns ``reference``, ``gap``, ``method``, ``n_triplets``, ``ssim_mean``,
        ``ssim_sd``, ``mse_mean``, ``mse_sd``.
    """
    grouped = scores.groupby(["reference", "gap", "method"], sort=True)
    return grouped.agg(n_triplets=("ssim", "size"), ssim_mean=("ssim", "mean"),
                       ssim_sd=("ssim", "std"), mse_mean=("mse", "mean"),
                       mse_sd=("mse", "std")).reset_index()


def _checked_frame(frame, images):
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    missing = {"subject", "months"} - set(frame.columns)
    if missing:
        raise InputError(f"frame lacks the columns {sorted(missing)}")
    if len(images) != len(frame):
        raise InputError(f"images has {len(images)} scans but frame {len(frame)} rows; "
                         "give one row per scan, in the same order")
    months = pd.to_numeric(frame["months"], errors="coerce")
    if months.isna().any():
        raise InputError("frame['months'] must hold a number for every scan")
    return pd.DataFrame({"subject": frame["subject"].to_numpy(), "months": months.to_numpy(float)})


def _triplets(visits):
    """Every (earlier, middle, later) triplet of visits of each subject."""
    rows = []
    for subject, group in visits.groupby("subject", sort=False):
        ordered = group.sort_values("months", kind="stable")
        for a, b, c in combinations(range(len(ordered)), 3):
            months = ordered["months"].to_numpy()[[a, b, c]]
            if not months[0] < months[1] < months[2]:
                continue
            positions = ordered.index.to_numpy()[[a, b, c]]  # visits has a RangeIndex
            rows.append({
                "subject": subject,
                "scan_start": positions[0], "scan_mid": positions[1], "scan_end": positions[2],
                "months_start": months[0], "months_mid": months[1], "months_end": months[2],
                "gap": min(months[1] - months[0], months[2] - months[1]),
                "total_gap": months[2] - months[0],
                "t": (months[1] - months[0]) / (months[2] - months[0]),
            })
    if not rows:
        raise InputError("no subject of frame has three visits at distinct months: "
                         "there is no middle visit to impute")
    return pd.DataFrame(rows)


def _select(images, positions):
    """The scans of ``images`` at integer ``positions``, in the same kind of container."""
    if isinstance(images, np.ndarray):
        return images[positions]
    if isinstance(images, pd.Series):
        return images.iloc[positions]
    return [images[i] for i in positions]

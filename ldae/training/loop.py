"""The epoch loop shared by the three stages: batches, validation, progress, resume."""

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..exceptions import LDAEError
from . import distributed
from .device import fall_back_to_fp32


CHECKPOINT_SECONDS = 300.0
"""Default time between periodic checkpoints of a stage in progress."""
PROGRESS_SECONDS = 0.5
"""Least time between two redraws of a stage's progress bar."""


class TrainingDivergedError(LDAEError, FloatingPointError):
    """A training loss became NaN or infinite."""


@dataclass
class Stage:
    """What the loop needs to train one stage.

    Attributes
    ----------
    name : str
        ``"autoencoder"``, ``"diffusion"`` or ``"representation"``.
    step : callable
        ``step(batch, generator) -> float``: one optimisation step (forward,
        backward, optimiser and EMA updates); returns the batch loss.
    evaluate : callable
        ``evaluate(batch, generator)``: the loss without any update, as a float or as
        a dict of named values that holds it as ``"loss"``; each is recorded per epoch
        as ``history["val_<name>"]``.
    state : dict
        Name -> object with ``state_dict``/``load_state_dict`` (networks,
        optimisers, averaged networks): what a periodic checkpoint saves.
    epochs : int
    averages : dict
        Network name -> AveragedModel whose EMA weights replace the trained ones
        once the stage completes.
    """

    name: str
    step: Callable
    evaluate: Callable
    state: dict
    epochs: int
    averages: dict = field(default_factory=dict)
    history: dict = field(default_factory=lambda: {"loss": [], "val_loss": []})


def optimisation_step(loss, optimizer, parameters, *, max_norm=1.0, averages=()):
    """Backpropagate ``loss``, average the gradients over the processes of a
    data-parallel fit, clip the gradient norm, step, and update EMAs.

    A step whose gradients are not finite although its loss is (a reduced-precision
    kernel that misbehaves at some size) is skipped, as mixed-precision training skips
    overflowed steps, and the rest of the stage trains in fp32, with a warning. Where
    it falls back is not reproducible; the one such kernel known, oneDNN's bf16 3-D
    convolution over a shallow input, is computed in fp32 from the start
    (:func:`ldae.training.device.autocast`).

    Returns
    -------
    bool
        Whether the step was taken.
    """
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(parameters)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if not torch.isfinite(norm) and math.isfinite(float(loss.detach())):
        optimizer.zero_grad(set_to_none=True)
        fall_back_to_fp32()
        warnings.warn("an optimisation step gave non-finite gradients with a finite loss: "
                      "it was skipped, and the rest of the stage trains in fp32 (reduced-"
                      "precision kernels of this CPU misbehave at this size)",
                      UserWarning, stacklevel=3)
        return False
    optimizer.step()
    for average, module in averages:
        average.update_parameters(module)
    return True


def train_stage(stage, train_loader, val_loader=None, *, generator, checkpoints=None,
                checkpoint_seconds=CHECKPOINT_SECONDS, verbose=0):
    """Train ``stage`` for its epochs, resuming from a periodic checkpoint when one exists.

    Parameters
    ----------
    stage : Stage
    train_loader, val_loader : iterable of batches
        ``val_loader`` may be None (no validation loss).
    generator : torch.Generator
        Source of the noise and time steps drawn by the losses; its state is
        checkpointed so a resumed fit draws what the uninterrupted one would.
    checkpoints : StageCheckpoints, optional
    checkpoint_seconds : float
        Write a periodic checkpoint at the end of the first epoch that ends this
        long after the last one (or the start): at most one epoch of work is
        lost to an interruption beyond this time, whatever the epoch length.
        The checkpoint holds the weights, optimisers, the loss's random
        generator and the shuffling generator of ``train_loader``, so a resumed
        stage is bitwise the uninterrupted one.
    verbose : int
        0: silent; 1 or more: a progress bar that moves with every batch (redrawn at
        most every ``PROGRESS_SECONDS``) and shows the epoch and its mean loss.

    Returns
    -------
    dict
        ``{"loss": [...], "val_loss": [...]}``, one mean value per epoch; in a
        data-parallel fit, means over the processes.
    """
    fall_back_to_fp32(False)
    try:
        return _train_epochs(stage, train_loader, val_loader, generator=generator,
                             checkpoints=checkpoints, checkpoint_seconds=checkpoint_seconds,
                             verbose=verbose)
    finally:
        fall_back_to_fp32(False)  # a fallback ends with its stage, before any inference


def _train_epochs(stage, train_loader, val_loader, *, generator, checkpoints, checkpoint_seconds,
                  verbose):
    start = _resume(stage, generator, train_loader, checkpoints)
    last_saved = time.monotonic()
    steps = len(train_loader)
    progress = tqdm(desc=stage.name, unit="batch", total=stage.epochs * steps,
                    initial=start * steps, mininterval=PROGRESS_SECONDS,
                    disable=not verbose or not distributed.is_main_process(),
                    leave=verbose > 1)
    for epoch in range(start, stage.epochs):
        _start_epoch(train_loader, epoch)
        losses = []
        for step, batch in enumerate(train_loader):
            # Every process checks the same (averaged) loss, so all stop together.
            losses.append(_checked(distributed.mean(stage.step(batch, generator),
                                                    generator.device), stage.name, epoch, step))
            progress.update()
        stage.history["loss"].append(float(sum(losses) / max(len(losses), 1)))
        if val_loader is not None:
            _record_validation(stage, val_loader, generator)
        progress.set_postfix(epoch=f"{epoch + 1}/{stage.epochs}",
                             loss=f"{stage.history['loss'][-1]:.4f}")
        done = epoch + 1
        # every process must take the same decision (saving waits at a barrier)
        due = distributed.mean(float(time.monotonic() - last_saved >= checkpoint_seconds),
                               generator.device) > 0
        if checkpoints is not None and done < stage.epochs and due:
            checkpoints.save(stage.name, _snapshot(stage, generator, train_loader, done),
                             partial=True)
            last_saved = time.monotonic()
    progress.close()
    return stage.history


def _record_validation(stage, val_loader, generator):
    """Append the epoch's mean of each value ``stage.evaluate`` gives over the validation batches."""
    with torch.no_grad():
        values = [stage.evaluate(batch, generator) for batch in val_loader]
    values = [value if isinstance(value, dict) else {"loss": value} for value in values]
    for name in values[0] if values else ("loss",):
        mean = sum(value[name] for value in values) / max(len(values), 1)
        stage.history.setdefault(f"val_{name}", []).append(
            distributed.mean(float(mean), generator.device))


def _start_epoch(loader, epoch):
    """Reshuffle a data-parallel loader's shares for this epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _checked(loss, stage_name, epoch, step):
    # Raised before any checkpoint of this epoch is written: the last one on disk
    # holds good weights, and a rerun resumes from it.
    if not math.isfinite(loss):
        raise TrainingDivergedError(
            f"the {stage_name} loss became {loss} at step {step + 1} of epoch {epoch + 1}; "
            "nothing of this epoch was saved (a rerun resumes from the last checkpoint). "
            "Check the input scans, lower the learning rate or use precision='fp32'"
        )
    return loss


def _snapshot(stage, generator, train_loader, epochs_done):
    shuffling = _shuffling_generator(train_loader)
    return {
        "epochs_done": epochs_done,
        "history": stage.history,
        "generator": generator.get_state(),
        "shuffling": None if shuffling is None else shuffling.get_state(),
        "state": {name: item.state_dict() for name, item in stage.state.items()},
    }


def _shuffling_generator(loader):
    """The generator drawing a DataLoader's order (a data-parallel sampler reseeds per epoch)."""
    return getattr(loader, "generator", None)


def _resume(stage, generator, train_loader, checkpoints):
    if checkpoints is None:
        return 0
    snapshot = checkpoints.load(stage.name, partial=True)
    if snapshot is None:
        return 0
    for name, item in stage.state.items():
        item.load_state_dict(snapshot["state"][name])
    generator.set_state(snapshot["generator"])
    shuffling = _shuffling_generator(train_loader)
    if shuffling is not None and snapshot.get("shuffling") is not None:
        shuffling.set_state(snapshot["shuffling"])
    stage.history.update(snapshot["history"])
    return int(snapshot["epochs_done"])

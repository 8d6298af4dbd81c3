"""A NaN loss during training stops the fit, names where it happened, and saves nothing bad."""

import numpy as np
import pytest
import torch

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.training import stages
from ldae.training.checkpoint import load_checkpoint
from ldae.training.loop import TrainingDivergedError

EPOCHS = dict(preset="tiny", ae_epochs=1, diffusion_epochs=2, representation_epochs=1,
              random_state=0)


def nan_on_call(function, call):
    calls = {"count": 0}

    def wrapped(*args, **kwargs):
        calls["count"] += 1
        loss = function(*args, **kwargs)
        return loss * float("nan") if calls["count"] == call else loss

    return wrapped


def test_a_nan_loss_stops_the_fit_and_a_rerun_resumes_from_the_last_good_stage(tmp_path,
                                                                              monkeypatch):
    images = make_synthetic_cohort(2, shape=(32, 40, 32), random_state=0).images
    folder = tmp_path / "checkpoints"
    # the 3rd diffusion loss: in the diffusion stage's second epoch, or its validation
    monkeypatch.setattr(stages, "diffusion_loss", nan_on_call(stages.diffusion_loss, 3))
    with pytest.raises(TrainingDivergedError, match=r"diffusion loss became nan at step \d+ of "
                                                    r"epoch \d+; nothing of this epoch was saved"):
        LDAEEncoder(checkpoint_dir=folder, **EPOCHS).fit(images)
    finished = folder / "autoencoder.pt"
    written = finished.stat().st_mtime_ns
    assert not any(folder.rglob("diffusion*.pt")), "a diverged stage must not be checkpointed"
    saved = [load_checkpoint(path) for path in folder.rglob("*.pt")]
    for payload in saved:
        tensors = [value for value in _tensors(payload)]
        assert tensors and all(torch.isfinite(value).all() for value in tensors)

    monkeypatch.undo()
    resumed = LDAEEncoder(checkpoint_dir=folder, **EPOCHS).fit(images)
    fresh = LDAEEncoder(**EPOCHS).fit(images)
    # the finished autoencoder stage was loaded, not trained (and written) again
    assert finished.stat().st_mtime_ns == written
    assert resumed.history_ == fresh.history_
    np.testing.assert_allclose(resumed.transform(images), fresh.transform(images), atol=1e-5)


def _tensors(payload):
    if isinstance(payload, torch.Tensor):
        if payload.is_floating_point():
            yield payload
    elif isinstance(payload, dict):
        for value in payload.values():
            yield from _tensors(value)
    elif isinstance(payload, (list, tuple)):
        for value in payload:
            yield from _tensors(value)


class _NanGradient(torch.autograd.Function):
    """The identity, whose backward returns NaN: a finite loss with NaN gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, gradient):
        return torch.full_like(gradient, float("nan"))


def test_a_step_with_nan_gradients_is_skipped_and_the_stage_continues_in_fp32():
    # a reduced-precision kernel that returns NaN gradients for a finite loss
    from ldae.training.device import autocast
    from ldae.training.loop import Stage, optimisation_step, train_stage

    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    in_bf16, calls = [], []

    def step(batch, generator):
        calls.append(1)
        with autocast(torch.device("cpu"), torch.bfloat16):
            in_bf16.append(torch.is_autocast_enabled("cpu"))
            output = network(batch)
            if len(calls) == 2:
                output = _NanGradient.apply(output)
            loss = output.float().square().mean()
        optimisation_step(loss, optimizer, network.parameters())
        return float(loss.detach())

    stage = Stage("diffusion", step, lambda batch, generator: 0.0, {}, epochs=4)
    with pytest.warns(UserWarning, match="it was skipped, and the rest of the stage trains in fp32"):
        train_stage(stage, [torch.ones(3, 2)], generator=torch.Generator())
    assert torch.isfinite(network.weight).all() and len(stage.history["loss"]) == 4
    assert in_bf16 == [True, True, False, False]
    with autocast(torch.device("cpu"), torch.bfloat16):  # what follows the fit: inference
        assert torch.is_autocast_enabled("cpu")
    # the next stage tries reduced precision again
    train_stage(Stage("representation", step, lambda b, g: 0.0, {}, epochs=1), [torch.ones(3, 2)],
                generator=torch.Generator())
    assert in_bf16[-1] is True


def test_the_progress_bar_moves_with_every_batch_inside_an_epoch(monkeypatch, capsys):
    # a long epoch must give feedback before it ends, not only once per epoch
    from ldae.training import loop

    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    seen = []

    def step(batch, generator):
        seen.append(capsys.readouterr().err)
        return 1.0

    stage = loop.Stage("diffusion", step, lambda batch, generator: 0.0, {}, epochs=2)
    loop.train_stage(stage, [torch.ones(1)] * 3, generator=torch.Generator(), verbose=1)
    seen.append(capsys.readouterr().err)
    # before the 2nd and 3rd batch of the first epoch, the bar already counts 1 and 2 batches
    assert "1/6" in seen[1] and "2/6" in seen[2]
    assert "6/6" in seen[-1] and "epoch=2/2" in seen[-1]

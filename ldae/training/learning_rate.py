"""Learning-rate schedules of the training stages, stepped once per optimisation step."""

import math

from torch.optim.lr_scheduler import LambdaLR

LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(optimizer, kind, total_steps, *, start_steps=None, warmup_fraction=0.05):
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` over the optimiser's groups.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    kind : {"constant", "cosine"}
        "constant": each group's learning rate as given. "cosine": a linear warm-up
        over ``warmup_fraction`` of the group's steps, then a cosine decay to 0 at
        ``total_steps`` — a fixed budget of steps ends converged instead of at a
        high learning rate.
    total_steps : int
        Optimisation steps of the stage.
    start_steps : sequence of int, optional
        Per group, the step before which its learning rate is 0 (the group's
        parameters are held at their values); default 0 for every group.
    warmup_fraction : float, default=0.05

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR
        Call its ``step()`` after each ``optimizer.step()``; its state belongs in
        the stage's checkpoint.
    """
    start_steps = start_steps or [0] * len(optimizer.param_groups)
    return LambdaLR(optimizer, [_factor(kind, start, total_steps, warmup_fraction)
                                for start in start_steps])


def _factor(kind, start, total_steps, warmup_fraction):
    length = max(total_steps - start, 1)
    warmup = max(round(warmup_fraction * length), 1)

    def factor(step):
        if step < start:
            return 0.0
        if kind == "constant":
            return 1.0
        step -= start
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, length - warmup) / max(length - warmup, 1)))

    return factor

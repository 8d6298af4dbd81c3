"""Exponential moving average of a network's weights (the weights used at inference)."""

from torch.optim.swa_utils import AveragedModel


def exponential_moving_average(module, decay):
    """Wrap ``module`` in an AveragedModel that keeps an EMA of its weights.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
    that short trainings are not dominated by the random initialisation (a fixed
    0.999 needs thousands of steps to forget it).

    Parameters
    ----------
    module : torch.nn.Module
    decay : float
        Final decay, e.g. 0.999.

    Returns
    -------
    torch.optim.swa_utils.AveragedModel
        Call ``update_parameters(module)`` after each optimiser step; the averaged
        network is its ``.module``.
    """

    def average(averaged, current, n_averaged):
        effective = min(decay, (1.0 + float(n_averaged)) / (10.0 + float(n_averaged)))
        return effective * averaged + (1.0 - effective) * current

    return AveragedModel(module, avg_fn=average, use_buffers=True)


def stage_averages(epochs, decay, **modules):
    """EMA wrappers of ``modules``, by name, for a stage of ``epochs`` epochs.

    A stage with no epochs gets none: its weights stay as initialised, and each
    wrapper would copy them (1.8 GB for the paper preset's latent UNet).
    """
    if not epochs:
        return {}
    return {name: exponential_moving_average(module, decay) for name, module in modules.items()}

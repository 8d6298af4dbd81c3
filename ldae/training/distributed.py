"""Data-parallel training over several processes (GPUs or CPU cores, one or more machines).

A fit launched with ``torchrun --nproc_per_node=N ...`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``) trains on N processes: each
process reads its own share of every epoch's scans (a ``DistributedSampler``) and,
after each backward pass, the gradients are averaged over the processes, so every
process takes the same optimiser step and holds the same weights. This is what
``DistributedDataParallel`` does; it is done here with one ``all_reduce`` of the
flattened gradients per step, because the stage losses call their networks in
several ways (EMA copies, frozen denoisers, sub-networks) that a DDP wrapper does not
follow. The process group uses NCCL on CUDA and gloo on the CPU; process 0 writes
the checkpoints and shows progress.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a data-parallel fit.

    Attributes
    ----------
    rank : int
        This process's number, 0 to ``world_size - 1``.
    world_size : int
        Number of processes.
    device : torch.device
        The device this process trains on.
    owns_group : bool
        Whether this fit created the process group (and destroys it at the end).
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool


def launched_by_torchrun():
    """Whether this process is one of several started by torchrun (or alike).

    Returns
    -------
    bool
    """
    return (all(name in os.environ for name in _TORCHRUN_VARIABLES)
            and int(os.environ["WORLD_SIZE"]) > 1)


def start(device):
    """Join the process group of a torchrun launch, or None when not launched so.

    Parameters
    ----------
    device : torch.device
        The device asked for; on CUDA, each process takes the GPU of its
        ``LOCAL_RANK``.

    Returns
    -------
    Context or None
    """
    if not launched_by_torchrun() and not dist.is_initialized():
        return None
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device, owns_group)


def stop(context):
    """Leave the process group when this fit created it."""
    if context is not None and context.owns_group:
        dist.barrier()
        dist.destroy_process_group()


def active():
    """Whether this process trains in a group of several.

    Returns
    -------
    bool
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process():
    """Whether this process writes files and shows progress (rank 0, or no group).

    Returns
    -------
    bool
    """
    return not active() or dist.get_rank() == 0


def rank():
    """This process's rank (0 without a group).

    Returns
    -------
    int
    """
    return dist.get_rank() if active() else 0


def barrier():
    """Wait for every process of the group (nothing without one)."""
    if active():
        dist.barrier()


def average_gradients(parameters):
    """Replace each parameter's gradient by its mean over the processes.

    Parameters
    ----------
    parameters : list of torch.nn.Parameter
        The same parameters, in the same order, on every process. A parameter
        without gradient counts as a zero gradient.
    """
    if not active():
        return
    parameters = [p for p in parameters if p.requires_grad]
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    gradients = [parameter.grad for parameter in parameters]
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for gradient, averaged in zip(gradients, torch.split(flat, [g.numel() for g in gradients])):
        gradient.copy_(averaged.view_as(gradient))


def mean(value, device):
    """The mean of a float over the processes (the float itself without a group).

    Parameters
    ----------
    value : float
    device : torch.device
        Where the collective runs (the process's training device).

    Returns
    -------
    float
    """
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def broadcast_parameters(modules):
    """Give every process the weights and buffers of process 0.

    Parameters
    ----------
    modules : iterable of torch.nn.Module
    """
    if not active():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def sampler(dataset, seed):
    """A sampler giving this process its share of a shuffled epoch, or None alone.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
    seed : int
        Shuffling seed, the same on every process.

    Returns
    -------
    torch.utils.data.DistributedSampler or None
    """
    if not active():
        return None
    return torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=seed)

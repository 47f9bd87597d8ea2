"""Data-parallel training under ``torchrun`` (DDP), shared by the trainers.

    torchrun --standalone --nproc-per-node 2 -m defectlab segment fit DATA --out RUN
    torchrun --standalone --nproc-per-node 2 -m defectlab classify run EXPERIMENT.yaml --out RUN

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) for each process.
:func:`setup` reads them: with ``WORLD_SIZE`` > 1 it joins the process group (NCCL when the device is CUDA,
each process on ``cuda:LOCAL_RANK``; gloo on the CPU); without them it is a one-process run and nothing
changes (no process group, the trainer's own code path, CPU results bit for bit as before).

A trainer then: wraps its model with :func:`wrap` (DDP averages gradients across processes), shards the
data with :func:`sampler` (``DistributedSampler``; call ``set_epoch`` each epoch), sums its per-epoch
numbers with :func:`all_reduce_sum` so every process reports the same history, copies process 0's
buffers with :func:`sync_buffers` before evaluating (BatchNorm statistics), and lets only
:func:`is_rank0` write checkpoints, reports and progress bars. :func:`teardown` leaves the group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from defectlab.devices import resolve_device
from defectlab.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | torch.device = "auto", *, what: str = "--device") -> DistEnv:
    """The run's ranks and device; joins the process group when torchrun started several processes.

    Idempotent: a second call in a process that already joined returns the same environment."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, what=what)
    if world <= 1:
        return DistEnv(device=dev)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s): "
                              "use --nproc-per-node <= the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type == "mps":
        raise ConfigError("distributed training runs on CUDA (NCCL) or the CPU (gloo), not on MPS")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_rank0() -> bool:
    """True in a one-process run and in process 0 of a distributed one: it alone writes files and reports
    (also after :func:`teardown`: it falls back on torchrun's ``RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def wrap(model: torch.nn.Module, env: DistEnv, *, find_unused: bool = False) -> torch.nn.Module:
    """``model`` on the run's device, in DDP when distributed (the caller keeps the bare model to save).
    ``find_unused``: tolerate parameters a step does not use (e.g. a long-tail method's extra head)."""
    model = model.to(env.device)
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def sync_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Copy process 0's buffers (BatchNorm running statistics) to every process, so that all evaluate one
    model: DDP keeps the parameters equal, but each process updates the statistics on its own share."""
    if not env.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def sampler(dataset: Dataset, env: DistEnv, *, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This process's share of ``dataset``: every process a disjoint, equally long slice of one
    seeded permutation (padded by repeats to equal length)."""
    return DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=shuffle, seed=seed)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum over processes (unchanged in a one-process run), e.g. [loss * n, n]."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


__all__ = ["DistEnv", "all_reduce_sum", "barrier", "is_rank0", "sampler", "setup", "sync_buffers", "teardown",
           "wrap"]

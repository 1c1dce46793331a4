"""Communication for APTS across processes (no Lightning): who owns which replica, and sums.

With ``W`` processes, rank ``w`` owns replicas ``w*D/W .. (w+1)*D/W - 1`` and their parts of
the interior set.  :class:`Communicator` is the single-process case (sums are identities);
:class:`TorchDistributed` sums with ``torch.distributed.all_reduce`` over the default process
group, which Lightning's DDP strategy sets up (gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["Communicator", "TorchDistributed", "default_communicator", "replicas_of_rank"]


class Communicator:
    """One process: rank 0 of 1, and a sum over processes is the value itself."""

    rank: int = 0
    world_size: int = 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor


class TorchDistributed(Communicator):
    """Sums over the processes of the default ``torch.distributed`` process group."""

    def __init__(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchDistributed needs an initialized torch.distributed process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def default_communicator() -> Communicator:
    """:class:`TorchDistributed` inside a process group of more than one process, else :class:`Communicator`."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return Communicator()


def replicas_of_rank(num_replicas: int, rank: int, world_size: int) -> range:
    """The replicas rank ``rank`` owns: a contiguous block of ``num_replicas / world_size``."""
    if num_replicas % world_size:
        raise ValueError(
            f"num_subdomains (D={num_replicas}) must be divisible by the number of processes "
            f"(W={world_size}): each process owns D/W replicas"
        )
    per_rank = num_replicas // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)

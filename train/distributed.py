"""Data-parallel training on CPU processes (``torchrun``, gloo): joining the group, keeping ranks
in step."""

from __future__ import annotations

import os

import torch

from train.losses import ClusterCentroidLoss

__all__ = ["agree", "broadcast_state", "distributed", "same_centroids"]


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), world


def same_centroids(loss: ClusterCentroidLoss, world: int) -> None:
    """After a fit on rank-local embeddings, every rank takes rank 0's clusters."""
    if world > 1:
        torch.distributed.broadcast(loss.sums, 0)
        torch.distributed.broadcast(loss.counts, 0)
        for flags in (loss.active, loss.is_split):  # gloo broadcasts numbers, not bools
            as_int = flags.to(torch.uint8)
            torch.distributed.broadcast(as_int, 0)
            flags.copy_(as_int.bool())


def agree(flag: bool, world: int) -> bool:
    """Rank 0's decision (stop, change stage), the same on every rank."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)])
    torch.distributed.broadcast(value, 0)
    return bool(value.item())


def broadcast_state(model: torch.nn.Module, loss: ClusterCentroidLoss | None, world: int) -> None:
    """Every rank takes rank 0's weights (and centroids): after rank 0 restored a best epoch."""
    if world == 1:
        return
    for tensor in model.state_dict().values():
        torch.distributed.broadcast(tensor, 0)
    if loss is not None:
        same_centroids(loss, world)

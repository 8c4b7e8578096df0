"""Data-parallel helpers that work with any torch.distributed process group (Ray Train, torchrun) or none.

Only the prompt tensors are trained, so gradients are averaged by hand after backward: no DDP wrapper
around a module whose frozen CLIP would otherwise be scanned every step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Start every rank from rank 0's prompts."""
    if world()[1] > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def average_gradients(params: list[torch.Tensor]) -> None:
    _, size = world()
    if size == 1:
        return
    # a parameter frozen for this stage (grad None) stays None on every rank: SGD must skip it, weight decay too
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p in with_grad:
        n = p.grad.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

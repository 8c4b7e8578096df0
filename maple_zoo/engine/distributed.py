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
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

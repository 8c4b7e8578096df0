"""Device and precision: bf16 autocast on CUDA (prompts stay fp32 parameters), plain fp32 on CPU."""

from __future__ import annotations

import contextlib

import torch

from ..errors import MapleZooError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MapleZooError(f"device '{name}' requested but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

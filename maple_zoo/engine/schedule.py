"""Dassl's learning-rate schedule: constant warm-up, then cosine over `epochs`, stepped once per epoch.

With lr 0.0035, 5 epochs and one warm-up epoch at 1e-5 the per-epoch rates are
[1e-5, 0.0035, 0.003166, 0.002291, 0.001209]: the cosine restarts after warm-up, so it never reaches 0.
"""

import math


def epoch_lr(epoch: int, lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate used during 0-based `epoch`."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def epoch_lrs(lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> list[float]:
    return [epoch_lr(e, lr, epochs, warmup_epochs, warmup_lr) for e in range(epochs)]

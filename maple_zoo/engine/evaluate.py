"""Evaluation: text features once per evaluation for image-independent methods, then per-batch images.

Under data parallelism every rank evaluates the whole split; rank 0 reports.
"""

from __future__ import annotations

import torch

from ..methods.base import PromptMethod
from .device import autocast
from .metrics import accuracy, macro_f1


@torch.no_grad()
def predict(method: PromptMethod, loader, device: torch.device, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of every image, labels) in loader order."""
    method.eval()
    text = None
    outs, targets = [], []
    with autocast(device, precision):
        if not method.image_conditioned:
            text = method.text_features()
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            logits = method(images) if text is None else method.logits_with(images, text)
            outs.append(logits.float().cpu())
            targets.append(labels)
    if not outs:
        return torch.empty(0, len(method.classnames)), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(targets)


def evaluate(method: PromptMethod, loader, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    logits, labels = predict(method, loader, device, precision)
    pred = logits.argmax(-1)
    return {"accuracy": accuracy(pred, labels), "macro_f1": macro_f1(pred, labels), "n": len(labels)}

"""Dassl's classification metrics: top-1 accuracy (%), macro-F1 (%) over the labels present, and HM."""

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 100.0 * (pred == target).float().mean().item() if len(target) else 0.0


def macro_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """sklearn f1_score(average='macro'): mean F1 over labels that occur in target or prediction."""
    labels = torch.unique(torch.cat([pred, target]))
    scores = []
    for c in labels:
        tp = ((pred == c) & (target == c)).sum().item()
        fp = ((pred == c) & (target != c)).sum().item()
        fn = ((pred != c) & (target == c)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N); the tables' average row is the HM of the averaged B and N."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0

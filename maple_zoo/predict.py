"""Classify image files with a trained checkpoint: top-k class names with softmax scores."""

from __future__ import annotations

from pathlib import Path

import torch

from .data.loaders import read_rgb
from .data.transforms import test_transform
from .engine.device import resolve_device
from .engine.restore import load_method
from .errors import MapleZooError


@torch.no_grad()
def predict_images(folder: Path, images: list[Path], top_k: int = 3, classnames: list[str] | None = None,
                   device: str = "auto") -> list[dict]:
    for path in images:
        if not Path(path).is_file():
            raise MapleZooError(f"image not found: {path}")
    dev = resolve_device(device)
    method, card, bb = load_method(folder, dev, classnames)
    method.eval()
    transform = test_transform(bb.image_size, bb.mean, bb.std, bb.interpolation)
    batch = torch.stack([transform(read_rgb(str(p))) for p in images]).to(dev)
    text = None if method.image_conditioned else method.text_features()
    logits = method(batch) if text is None else method.logits_with(batch, text)
    probs = logits.float().softmax(-1).cpu()
    k = min(top_k, probs.shape[1])
    out = []
    for path, row in zip(images, probs):
        scores, idx = row.topk(k)
        out.append({"image": str(path), "top": [{"class": method.classnames[i], "score": round(float(s), 4)}
                                                 for s, i in zip(scores.tolist(), idx.tolist())]})
    return out

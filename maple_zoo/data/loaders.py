"""torch Datasets over `Datum` lists: a lazily decoded one (test sets) and a decode-once cache (few-shot train)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import MapleZooError
from .datasets import Datum


def read_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise MapleZooError(f"cannot read image {path}: {exc}") from None


class ImageList(Dataset):
    def __init__(self, items: list[Datum], transform: Callable):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        d = self.items[i]
        return self.transform(read_rgb(d.impath)), d.label


class CachedImageList(Dataset):
    """Decodes every image once (few-shot sets are tiny), then only augments tensors per step."""

    def __init__(self, items: list[Datum], decode: Callable, transform: Callable, progress: Callable | None = None):
        self.labels = [d.label for d in items]
        self.images = []
        for i, d in enumerate(items):
            self.images.append(decode(read_rgb(d.impath)))
            if progress:
                progress(i + 1, len(items))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def collate(batch):
    images, labels = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)

"""Image transforms as the reference (Dassl): bicubic RandomResizedCrop(0.08-1) + flip for training,
resize + centre crop for testing, CLIP mean/std; sizes from the backbone.

The cached training path (`cache_images`) decodes each few-shot image once into a uint8 tensor and
runs the same random crop and flip on tensors; images larger than `2 x size` on the shorter side are
stored at that size (a documented, tiny deviation from cropping the original: none for EuroSAT-like data).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _normalize(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(size: int, mean, std, interpolation: str, crop_scale: tuple[float, float]) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float tensor, randomly cropped (area in `crop_scale`,
    the reference 0.08-1 unless the dataset or config says otherwise) and flipped."""
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=crop_scale, interpolation=_INTERP[interpolation], antialias=True),
        v2.RandomHorizontalFlip(0.5),
        *_normalize(mean, std),
    ])


def test_transform(size: int, mean, std, interpolation: str = "bicubic") -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, interpolation=_INTERP[interpolation], antialias=True),
        v2.CenterCrop(size),
        *_normalize(mean, std),
    ])


def cache_transform(size: int, interpolation: str = "bicubic") -> v2.Compose:
    """Decode once: shorter side capped at 2 x size, kept as uint8."""
    return v2.Compose([v2.ToImage(), _CapShorterSide(2 * size, _INTERP[interpolation])])


class _CapShorterSide(torch.nn.Module):
    def __init__(self, limit: int, interpolation):
        super().__init__()
        self.limit, self.interpolation = limit, interpolation

    def forward(self, img):
        if min(img.shape[-2:]) > self.limit:
            img = v2.functional.resize(img, self.limit, interpolation=self.interpolation, antialias=True)
        return img

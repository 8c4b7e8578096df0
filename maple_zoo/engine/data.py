"""Turn a DataConfig into loaders: read splits, few-shot sample, pick base/novel classes, transform."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..backbones import Backbone
from ..config import DataConfig
from ..data import transforms
from ..data.datasets import Datum, Splits, get_dataset, load_splits
from ..data.fewshot import fewshot, subsample_classes
from ..data.loaders import CachedImageList, ImageList, collate
from . import distributed


@dataclass
class ClassSet:
    """Items of one evaluation/training class set with labels 0..k-1 and their names."""
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]


def _names(items: list[Datum], k: int) -> list[str]:
    names = {d.label: d.classname for d in items}
    return [names.get(i, f"class {i}") for i in range(k)]


def class_set(splits: Splits, subsample: str) -> ClassSet:
    s = subsample_classes(splits, subsample)
    k = len({d.label for d in s.train + s.val + s.test})
    return ClassSet(s.train, s.val, s.test, _names(s.train + s.val + s.test, k))


def load_dataset(cfg: DataConfig, name: str | None = None, seed: int = 1, shots: int | None = None) -> Splits:
    name = name or cfg.dataset
    info = get_dataset(name)
    splits = load_splits(name, cfg.root)
    if info.test_only:
        return splits
    return fewshot(splits, cfg.shots if shots is None else shots, seed, Path(cfg.root).expanduser() / info.folder, name)


def holdout(cs: ClassSet, fraction: float) -> tuple[ClassSet, ClassSet]:
    """Split a (base) class set into trained classes and pseudo-novel ones: the last ceil(f*k) labels,
    the same 'later labels are the unseen ones' rule as base/novel. Pseudo-novel items come from train+val
    (few-shot images the model never trains on), test is never touched."""
    k = len(cs.classnames)
    n_hold = min(k - 1, max(1, math.ceil(fraction * k)))
    keep = k - n_hold
    trained = ClassSet([d for d in cs.train if d.label < keep], [d for d in cs.val if d.label < keep], [],
                       cs.classnames[:keep])
    pseudo = [Datum(d.impath, d.label - keep, d.classname) for d in cs.train + cs.val if d.label >= keep]
    return trained, ClassSet([], pseudo, [], cs.classnames[keep:])


def train_loader(items: list[Datum], backbone: Backbone, batch_size: int, seed: int, cfg: DataConfig,
                 progress=None) -> DataLoader:
    size, mean, std, interp = backbone.image_size, backbone.mean, backbone.std, backbone.interpolation
    augment = transforms.train_transform(size, mean, std, interp, cfg.train_crop_scale())
    if cfg.cache_images:
        dataset = CachedImageList(items, transforms.cache_transform(size, interp), augment, progress)
    else:
        dataset = ImageList(items, augment)
    rank, world = distributed.world()
    drop_last = len(dataset) >= batch_size * world  # the reference drops the last partial batch
    generator = torch.Generator().manual_seed(seed)
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=cfg.num_workers, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last,
                      num_workers=cfg.num_workers, collate_fn=collate)


def eval_loader(items: list[Datum], backbone: Backbone, batch_size: int, cfg: DataConfig) -> DataLoader:
    t = transforms.test_transform(backbone.image_size, backbone.mean, backbone.std, backbone.interpolation)
    return DataLoader(ImageList(items, t), batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers,
                      collate_fn=collate)

"""Few-shot sampling and the base/novel class split, as Dassl/CoOp do them.

Sampling: Python's `random` seeded with the run seed; for each label in order of first appearance
`random.sample(items, K)` (all items if fewer), train first then val with min(K, 4) shots, over all
classes *before* the base/novel split. Same seed and shots give the same images as the reference.
The result is cached as JSON per (dataset, shots, seed) beside the dataset (or in the user cache).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from ..backbones import maple_zoo_cache
from ..fsutil import atomic_write_text
from .datasets import Datum, Splits

SUBSAMPLES = ("base", "new", "all")


def sample_per_class(items: list[Datum], shots: int, rng: random.Random) -> list[Datum]:
    by_label: dict[int, list[Datum]] = {}
    for d in items:
        by_label.setdefault(d.label, []).append(d)
    out = []
    for group in by_label.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def _cache_paths(dataset_folder: Path, name: str, shots: int, seed: int) -> list[Path]:
    filename = f"shot_{shots}-seed_{seed}.json"
    return [dataset_folder / "split_fewshot" / filename, maple_zoo_cache() / "fewshot" / name / filename]


def fewshot(splits: Splits, shots: int, seed: int, dataset_folder: Path, name: str) -> Splits:
    """Splits with `shots` train images and min(shots, 4) val images per class; test untouched."""
    if shots <= 0:
        return splits
    paths = _cache_paths(dataset_folder, name, shots, seed)
    for path in paths:
        if path.is_file():
            raw = json.loads(path.read_text())
            return Splits(
                train=[Datum(*d) for d in raw["train"]], val=[Datum(*d) for d in raw["val"]], test=splits.test
            )
    rng = random.Random(seed)
    train = sample_per_class(splits.train, shots, rng)
    val = sample_per_class(splits.val, min(shots, 4), rng)
    payload = json.dumps({"train": [list(vars(d).values()) for d in train], "val": [list(vars(d).values()) for d in val]})
    for path in paths:  # beside the data when writable, else the user cache
        try:
            atomic_write_text(path, payload)
            break
        except OSError:
            continue
    return Splits(train=train, val=val, test=splits.test)


def class_split(labels: list[int], subsample: str) -> list[int]:
    """The kept labels: base = the first ceil(n/2) sorted labels, new = the rest, all = every label."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return {"base": labels[:m], "new": labels[m:], "all": labels}[subsample]


def subsample_classes(splits: Splits, subsample: str) -> Splits:
    """Keep the base or new half (decided on the train labels) and renumber labels 0..k-1 in order."""
    if subsample == "all":
        return splits
    keep = class_split([d.label for d in splits.train], subsample)
    relabel = {y: i for i, y in enumerate(keep)}

    def select(items: list[Datum]) -> list[Datum]:
        return [Datum(d.impath, relabel[d.label], d.classname) for d in items if d.label in relabel]

    return Splits(train=select(splits.train), val=select(splits.val), test=select(splits.test))

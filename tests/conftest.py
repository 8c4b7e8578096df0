"""Shared fixtures. `world`: the offline procedural world (small scale) and its small pretrained CLIP.

Both are cached under the maple-zoo cache (MAPLE_ZOO_CACHE overrides ~/.cache/maple-zoo), so only the
first test session on a machine pays for the build (about 4-5 minutes on 2 CPU cores; `maple-zoo sweep
sweeps/demo.yaml` shares the same cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class World:
    root: Path  # data root: load_splits(name, root) reads every world dataset from here
    datasets: tuple[str, ...]  # every world dataset, the test-only shifted domain included
    backbone: object  # maple_zoo.backbones.BackboneConfig of the small pretrained CLIP
    seed: int
    scale: str


@pytest.fixture(scope="session")
def world() -> World:
    from maple_zoo.backbones import BackboneConfig, default_weights_cache
    from maple_zoo.data.world import WORLD_DATASET_NAMES, build_world, default_world_root
    from maple_zoo.world_clip import TAG, TEST_ARCH, build_world_clip

    seed, scale = 0, "small"
    root = build_world(default_world_root(seed, scale), seed=seed, scale=scale)
    cache = default_weights_cache()
    build_world_clip(TEST_ARCH, cache, progress=False)
    backbone = BackboneConfig(arch=TEST_ARCH, pretrained=TAG, offline=True, cache_dir=cache)
    return World(root=root, datasets=WORLD_DATASET_NAMES, backbone=backbone, seed=seed, scale=scale)

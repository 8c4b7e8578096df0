"""The offline procedural world: seeded images of compositional concepts, written as CoOp-layout datasets.

Every image shows one object, a `Concept` (shape x colour x pattern x size), drawn in a `Style` (the
domain: background, noise, blur, lighting, scale, sketch). The same renderer feeds two consumers:

- `world_clip.py` pretrains a small CLIP on freshly drawn (image, caption) pairs of the *pretraining*
  style, whose captions use every concept word;
- `build_world(root)` writes the downstream datasets below (each with its own classes and domain
  shift) to disk in exactly the CoOp layout, so `datasets.load_splits` reads them like EuroSAT.

Nothing is downloaded; the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from PIL import Image

from ..errors import MapleZooError, unknown
from ..fsutil import atomic_write_text
from .datasets import DatasetInfo, register_dataset

WORLD_VERSION = 2  # bump whenever a change alters rendered pixels or splits: cached worlds are rebuilt
IMAGE_SIZE = 64

# ---------------------------------------------------------------------------------------------- concepts

# Silhouettes that stay distinct at 64 pixels (pentagons and hexagons read as circles there).
SHAPES = ("circle", "oval", "ring", "square", "diamond", "triangle",
          "arrow", "hourglass", "star", "cross", "heart", "crescent")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12), "orange": (0.97, 0.53, 0.08), "yellow": (0.95, 0.86, 0.14),
    "green": (0.16, 0.62, 0.20), "cyan": (0.12, 0.78, 0.84), "blue": (0.14, 0.28, 0.86),
    "purple": (0.52, 0.20, 0.74), "pink": (0.97, 0.52, 0.74), "brown": (0.48, 0.29, 0.12),
    "black": (0.07, 0.07, 0.07), "gray": (0.50, 0.50, 0.50), "white": (0.96, 0.96, 0.96),
}
PATTERNS = ("plain", "striped", "dotted", "checkered", "outlined")
SIZES = ("small", "medium", "large")  # from the object's radius, see `_size_word`


@dataclass(frozen=True)
class Concept:
    shape: str
    colour: str
    pattern: str


@dataclass(frozen=True)
class Style:
    """A domain: how a concept is drawn. The pretraining style is mild; downstream styles shift it."""

    radius: tuple[float, float] = (0.35, 0.9)  # object radius as a fraction of half the image
    jitter: float = 0.8  # how far the centre may wander, as a fraction of the room the radius leaves
    background: str = "plain"  # plain | texture (low-frequency colour noise) | paper (sketches)
    texture_strength: float = 0.0  # how saturated the texture background is, 0..1
    gradient: float = 0.3  # probability of a two-tone gradient under a plain background
    noise: tuple[float, float] = (0.0, 0.03)  # pixel noise sigma range (noisy PNGs are ~5x larger on disk)
    blur: float = 0.0  # gaussian blur sigma in pixels
    lighting: float = 0.0  # strength of a random colour cast and contrast change
    sketch: bool = False  # draw only a wobbly dark outline: colours and patterns are lost


# The pretraining distribution: mostly clean, centred objects (a small ViT learns shapes several times faster
# without translation and scale spread) mixed with milder versions of every downstream domain, as a web-trained
# CLIP has seen many. Each downstream dataset pushes one domain further (busier texture, smaller and blurred
# objects, stronger lighting, a pencil sketch), so zero-shot transfer is good but imperfect. (weight, style):
PRETRAIN_MIX: tuple[tuple[float, Style], ...] = (
    (0.6, Style(radius=(0.5, 0.85), jitter=0.15)),
    (0.1, Style(radius=(0.4, 0.9), jitter=0.3, background="texture", texture_strength=0.2, noise=(0.0, 0.03))),
    (0.1, Style(radius=(0.35, 0.6), jitter=0.3, blur=0.4)),
    (0.1, Style(radius=(0.45, 0.85), jitter=0.2, lighting=0.2, gradient=1.0)),
    (0.1, Style(radius=(0.5, 0.85), jitter=0.15, background="paper", sketch=True, noise=(0.0, 0.0))),
)

# ---------------------------------------------------------------------------------------------- shapes
# Each shape is a predicate on object coordinates (u right, v up, the object's radius is 1).


def _polygon(n: int):
    def inside(u, v):
        r = np.hypot(u, v)
        sector = np.mod(np.arctan2(u, v), 2 * math.pi / n) - math.pi / n
        return r * np.cos(sector) <= math.cos(math.pi / n)
    return inside


def _star(u, v, points=5, inner=0.4):
    r = np.hypot(u, v)
    phi = np.abs(np.mod(np.arctan2(u, v), 2 * math.pi / points) - math.pi / points)
    phi = math.pi / points - phi  # angle from the nearest outer vertex, 0..pi/points
    x0, y0 = 1.0, 0.0
    x1, y1 = inner * math.cos(math.pi / points), inner * math.sin(math.pi / points)
    nx, ny = y1 - y0, x0 - x1
    return r * (nx * np.cos(phi) + ny * np.sin(phi)) <= nx * x0 + ny * y0


def _heart(u, v):
    x, y = u * 1.2, v * 1.2 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


SHAPE_FNS = {
    "circle": lambda u, v: np.hypot(u, v) <= 1,
    "oval": lambda u, v: np.hypot(u, v / 0.55) <= 1,
    "ring": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= 0.6),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.78,
    "diamond": lambda u, v: np.abs(u) + np.abs(v) * 0.8 <= 0.95,
    "triangle": _polygon(3),
    "arrow": lambda u, v: (((v >= 0) & (v <= 0.95) & (np.abs(u) <= 0.9 * (0.95 - v) / 0.95))
                           | ((v < 0) & (v >= -0.95) & (np.abs(u) <= 0.28))),
    "hourglass": lambda u, v: (np.abs(v) <= 0.9) & (np.abs(u) <= 0.12 + 0.7 * np.abs(v) / 0.9),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "heart": _heart,
    "crescent": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u - 0.45, v - 0.2) > 0.82),
}

# ---------------------------------------------------------------------------------------------- rendering


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _size_word(radius_fraction: float) -> str:
    return "small" if radius_fraction < 0.5 else "large" if radius_fraction > 0.72 else "medium"


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w, C) -> (N, size, size, C), bilinear: smooth backgrounds and wobble fields."""
    t = torch.from_numpy(np.ascontiguousarray(low)).permute(0, 3, 1, 2)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(0, 3, 1, 2)
    c = t.shape[1]
    t = F.pad(t, (radius,) * 4, mode="replicate")
    t = F.conv2d(t, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    t = F.conv2d(t, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return t.permute(0, 2, 3, 1).numpy()


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    t = torch.from_numpy(~mask).float().unsqueeze(1)
    grown = F.max_pool2d(t, 2 * px + 1, stride=1, padding=px)
    return ~(grown[:, 0].numpy() > 0)


def _pattern_masks(patterns: list[str], u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where each pattern's second tone goes, in object coordinates (so a pattern scales with its object)."""
    n = len(patterns)
    period = rng.uniform(0.38, 0.5, (n, 1, 1)).astype(np.float32)
    angle = (rng.integers(0, 4, (n, 1, 1)) * 0.25 * math.pi + rng.uniform(-0.15, 0.15, (n, 1, 1))).astype(np.float32)
    out = np.zeros(u.shape, dtype=bool)
    for pattern in ("striped", "dotted", "checkered"):
        i = np.array([k for k, p in enumerate(patterns) if p == pattern], dtype=int)
        if not len(i):
            continue
        pu, pv = u[i] / period[i], v[i] / period[i]
        if pattern == "striped":
            out[i] = np.sin(2 * math.pi * (pu * np.cos(angle[i]) + pv * np.sin(angle[i]))) > 0
        elif pattern == "dotted":
            fu, fv = pu - np.floor(pu) - 0.5, pv - np.floor(pv) - 0.5
            out[i] = fu * fu + fv * fv <= 0.09
        else:
            out[i] = (np.floor(pu) + np.floor(pv)) % 2 == 0
    return out


def _background(n: int, style: Style, fills: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = IMAGE_SIZE
    if style.background == "paper":
        tone = rng.uniform(0.85, 0.98, (n, 1, 1, 1)).astype(np.float32)
        grain = _upsample(rng.normal(0, 0.04, (n, 16, 16, 1)).astype(np.float32), size)
        return np.repeat(tone + grain, 3, axis=3)
    # a plain tone whose brightness keeps the object visible: dark objects on light ground and vice versa
    lum = _luminance(fills)
    light = np.where(lum < 0.45, 1.0, np.where(lum > 0.7, 0.0, rng.integers(0, 2, n)))
    level = np.where(light > 0, rng.uniform(0.72, 0.95, n), rng.uniform(0.05, 0.3, n))
    base = np.clip(level[:, None] + rng.uniform(-0.08, 0.08, (n, 3)), 0, 1).astype(np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    vertical = rng.random(n) < 0.5
    tilt = np.where(vertical[:, None, None], ramp[None, :, None], ramp[None, None, :])  # (n, size, size)
    has_gradient = rng.random(n) < style.gradient
    slope = (rng.uniform(-0.15, 0.15, (n, 3)) * has_gradient[:, None]).astype(np.float32)
    img = np.empty((n, size, size, 3), dtype=np.float32)
    img[:] = base[:, None, None, :]
    if has_gradient.any():
        g = np.flatnonzero(has_gradient)
        img[g] += tilt[g, :, :, None] * slope[g, None, None, :]
    if style.background == "texture":
        low = rng.uniform(0, 1, (n, 5, 5, 3)).astype(np.float32)
        img = (1 - style.texture_strength) * img + style.texture_strength * _upsample(low, size)
    return img.astype(np.float32)


def _object_coords(n: int, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: object coordinates u, v (N, H, W), the object's radius 1, placed, scaled and tilted."""
    size, half = IMAGE_SIZE, IMAGE_SIZE / 2
    radius = rng.uniform(*style.radius, n).astype(np.float32)
    slack = np.maximum(1.0 - radius, 0.0) * style.jitter
    cx, cy = (rng.uniform(-1, 1, (2, n)) * slack).astype(np.float32)
    theta = rng.uniform(-0.3, 0.3, n).astype(np.float32)
    pix = (np.arange(size, dtype=np.float32) + 0.5 - half) / half  # -1..1
    gx, gy = np.meshgrid(pix, -pix)  # y up
    r3 = radius[:, None, None]
    x, y = (gx - cx[:, None, None]) / r3, (gy - cy[:, None, None]) / r3
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = x * cos + y * sin, -x * sin + y * cos
    if style.sketch:  # a wobbly hand-drawn line
        wob = _upsample(rng.normal(0, 0.06, (n, 6, 6, 2)).astype(np.float32), size)
        u, v = u + wob[..., 0], v + wob[..., 1]
    return u, v, radius


def render(concepts: list[Concept], style: Style, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Draw one image per concept, vectorised over the batch: uint8 (N, 64, 64, 3) and each image's size word."""
    n = len(concepts)
    fills = np.array([COLOURS[c.colour] for c in concepts], dtype=np.float32)
    fills = np.clip(fills + rng.uniform(-0.05, 0.05, fills.shape), 0, 1).astype(np.float32)
    img = _background(n, style, fills, rng)
    u, v, radius = _object_coords(n, style, rng)
    masks = np.zeros(u.shape, dtype=bool)
    for shape in set(c.shape for c in concepts):
        idx = np.array([i for i, c in enumerate(concepts) if c.shape == shape])
        masks[idx] = SHAPE_FNS[shape](u[idx], v[idx])
    outline = np.array([style.sketch or c.pattern == "outlined" for c in concepts])
    line = np.where(style.sketch, 1, np.maximum(1, np.round(radius * IMAGE_SIZE / 2 * 0.14))).astype(int)
    for width in set(line[outline].tolist()):
        idx = np.flatnonzero(outline & (line == width))
        masks[idx] &= ~_erode(masks[idx], width)
    if style.sketch:
        ink = rng.uniform(0.05, 0.35, (n, 1, 1, 1)).astype(np.float32)
        img = np.where(masks[..., None], ink, img)
    else:
        second = _pattern_masks([c.pattern for c in concepts], u, v, rng)
        towards = (_luminance(fills) < 0.5).astype(np.float32)[:, None]  # the pattern's lighter/darker tone
        seconds = 0.45 * fills + 0.55 * towards
        np.copyto(img, fills[:, None, None, :], where=(masks & ~second)[..., None])
        np.copyto(img, seconds[:, None, None, :].astype(np.float32), where=(masks & second)[..., None])
    if style.lighting > 0:
        gain = 1 + rng.uniform(-style.lighting, style.lighting, (n, 1, 1, 3))
        contrast = 1 - rng.uniform(0, style.lighting, (n, 1, 1, 1))
        mean = img.mean(axis=(1, 2, 3), keepdims=True)
        img = (img - mean) * contrast + mean * gain
    if style.blur > 0:
        img = _blur(img.astype(np.float32), style.blur)
    img *= 255
    if style.noise[1] > 0:
        sigma = rng.uniform(*style.noise, (n, 1, 1, 1)).astype(np.float32)
        noise = rng.random(img.shape, dtype=np.float32)  # uniform: cheaper than gaussian; std = sigma
        noise -= 0.5
        noise *= sigma * math.sqrt(12) * 255
        img += noise
    img += 0.5
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return out, [_size_word(r) for r in radius]


def render_mixture(concepts: list[Concept], mix: tuple[tuple[float, Style], ...], rng: np.random.Generator
                   ) -> tuple[np.ndarray, list[str]]:
    """`render` with each image's style drawn from `mix`, a tuple of (weight, style)."""
    weights = np.array([w for w, _ in mix], dtype=float)
    styles = [style for _, style in mix]
    pick = rng.choice(len(styles), size=len(concepts), p=weights / weights.sum())
    images = np.empty((len(concepts), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    sizes = [""] * len(concepts)
    for k, style in enumerate(styles):
        idx = np.flatnonzero(pick == k)
        if len(idx):
            images[idx], group_sizes = render([concepts[i] for i in idx], style, rng)
            for i, size in zip(idx, group_sizes):
                sizes[i] = size
    return images, sizes


def png_bytes(image: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class WorldClass:
    """A downstream class: its name as the text tower reads it, and the attributes it fixes (None: any)."""

    name: str
    shape: str | None = None
    colour: str | None = None
    pattern: str | None = None

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


@dataclass(frozen=True)
class WorldDataset:
    info: DatasetInfo
    classes: tuple[WorldClass, ...]
    style: Style
    # where a class leaves an attribute free, images draw it from these pools
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    patterns: tuple[str, ...] = PATTERNS

    def concepts(self, label: int, count: int, rng: np.random.Generator) -> list[Concept]:
        c = self.classes[label]
        return [Concept(c.shape or self.shapes[rng.integers(len(self.shapes))],
                        c.colour or self.colours[rng.integers(len(self.colours))],
                        c.pattern or self.patterns[rng.integers(len(self.patterns))]) for _ in range(count)]


@dataclass(frozen=True)
class Scale:
    """Images per class in each split."""

    train: int
    val: int
    test: int


SCALES = {"full": Scale(train=24, val=6, test=30), "small": Scale(train=16, val=4, test=16)}


# One object fills each image and its whole silhouette is the label: the reference's crops down to 8% of the
# area would mostly show a fragment of it (and teach the prompts noise), so world training crops stay near-whole.
WORLD_CROP_SCALE = (0.9, 1.0)


def _info(name: str, title: str, template: str, **kw) -> DatasetInfo:
    return DatasetInfo(name, title, name, "images", template=template, split_file=f"split_zhou_{title}.json",
                       crop_scale=WORLD_CROP_SCALE, **kw)


def _sorted(classes: list[WorldClass]) -> tuple[WorldClass, ...]:
    return tuple(sorted(classes, key=lambda c: c.name))  # CoOp labels follow sorted class folders


SHAPE_CLASSES = _sorted([WorldClass(s, shape=s) for s in SHAPES])
WORLD_DATASETS: tuple[WorldDataset, ...] = (
    # every shape, any colour or pattern, over busy textured backgrounds with pixel noise
    WorldDataset(_info("world_shapes", "WorldShapes", "a photo of a {} shape."), SHAPE_CLASSES,
                 Style(radius=(0.4, 0.9), jitter=0.4, background="texture", texture_strength=0.3, noise=(0.01, 0.04))),
    # colour x shape under coloured lighting: red/orange/pink and blue/purple are easy to confuse
    WorldDataset(_info("world_colors", "WorldColors", "a photo of a {}."),
                 _sorted([WorldClass(f"{c} {s}", shape=s, colour=c)
                          for c in ("red", "orange", "pink", "purple", "blue", "green")
                          for s in ("circle", "square", "triangle")]),
                 Style(lighting=0.35, gradient=1.0, noise=(0.0, 0.0))),
    # pattern x shape, drawn small and blurred: stripes, dots and checks blur together
    WorldDataset(_info("world_patterns", "WorldPatterns", "a drawing of a {}."),
                 _sorted([WorldClass(f"{p} {s}", shape=s, pattern=p)
                          for p in ("striped", "dotted", "checkered", "outlined")
                          for s in ("star", "hourglass", "heart", "diamond")]),
                 Style(radius=(0.35, 0.55), jitter=0.4, blur=0.6, noise=(0.0, 0.0))),
    # the shapes of world_shapes as pencil sketches: a test-only shifted domain (domain generalisation)
    WorldDataset(_info("world_shapes_sketch", "WorldShapesSketch", "a sketch of a {}.",
                       test_only=True, domain_of="world_shapes"), SHAPE_CLASSES,
                 Style(radius=(0.4, 0.9), jitter=0.4, background="paper", sketch=True, noise=(0.0, 0.0))),
)
WORLD_DATASET_NAMES = tuple(d.info.name for d in WORLD_DATASETS)

for _d in WORLD_DATASETS:
    register_dataset(_d.info)


def world_dataset(name: str) -> WorldDataset:
    for d in WORLD_DATASETS:
        if d.info.name == name:
            return d
    raise unknown("world dataset", name, WORLD_DATASET_NAMES)


# ---------------------------------------------------------------------------------------------- writing

MANIFEST = "world.json"  # written last: its presence means the world is complete


def _stable_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _write_dataset(root: Path, d: WorldDataset, seed: int, scale: Scale) -> int:
    """Render `d` into root/<folder>/images/<class>/<split><k>.png plus its split_zhou JSON; returns the image count."""
    folder = root / d.info.folder
    image_dir = folder / d.info.image_dir
    counts = {"train": 0, "val": 0, "test": scale.test} if d.info.test_only else asdict(scale)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for k, part in enumerate(("train", "val", "test")):
        if not counts[part]:
            continue
        rng = np.random.default_rng([seed, _stable_id(d.info.name), k])
        concepts, labels = [], []
        for label in range(len(d.classes)):
            concepts += d.concepts(label, counts[part], rng)
            labels += [label] * counts[part]
        images, _ = render(concepts, d.style, rng)
        for j, (image, label) in enumerate(zip(images, labels)):
            c = d.classes[label]
            rel = f"{c.folder}/{part}_{j % counts[part]:03d}.png"
            (image_dir / c.folder).mkdir(parents=True, exist_ok=True)
            (image_dir / rel).write_bytes(png_bytes(image))
            split[part].append([rel, label, c.name])
    (folder / d.info.split_file).write_text(json.dumps(split, indent=0), encoding="utf-8")
    return sum(len(v) for v in split.values())


def _digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests = byte-identical worlds."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def default_world_root(seed: int = 0, scale: str = "full") -> Path:
    from ..backbones import maple_zoo_cache

    return maple_zoo_cache() / "world" / f"{scale}-seed{seed}"


def read_manifest(root: str | Path) -> dict | None:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _is_complete(root: Path, seed: int, scale: str) -> bool:
    m = read_manifest(root)
    return bool(m) and (m.get("seed"), m.get("scale"), m.get("version")) == (seed, scale, WORLD_VERSION)


def build_world(root: str | Path | None = None, seed: int = 0, scale: str = "full") -> Path:
    """Write every world dataset under `root` (CoOp layout) and return it; a complete world there is reused.

    Built in a temp folder beside `root` and renamed into place, so a killed build leaves nothing half-written.
    """
    if scale not in SCALES:
        raise unknown("world scale", scale, SCALES)
    root = Path(root).expanduser() if root is not None else default_world_root(seed, scale)
    if _is_complete(root, seed, scale):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root.parent / f".{root.name}.lock"))
        with lock:
            if _is_complete(root, seed, scale):  # another process built it while we waited
                return root
            m = read_manifest(root)
            stale = bool(m) and (m.get("seed"), m.get("scale")) == (seed, scale)  # an older version: replaced
            if root.exists() and not stale and (not root.is_dir() or any(root.iterdir())):
                what = f"the world of scale {m.get('scale')}, seed {m.get('seed')}" if m else "not empty"
                raise MapleZooError(f"world root {root} is {what}: remove it or choose another folder")
            tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
            try:
                start = time.perf_counter()
                counts = {d.info.name: _write_dataset(tmp, d, seed, SCALES[scale]) for d in WORLD_DATASETS}
                manifest = {"version": WORLD_VERSION, "seed": seed, "scale": scale, "images": counts,
                            "digest": _digest(tmp), "build_seconds": round(time.perf_counter() - start, 2)}
                atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
                old = root.with_name(f".{root.name}.old-{os.getpid()}")
                if stale:
                    os.replace(root, old)
                elif root.exists():
                    root.rmdir()
                os.replace(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        raise MapleZooError(f"cannot write the world to {root}: {exc.strerror or exc}") from None
    return root


# The world's small CLIP registers its pretrained tags (`MZ-World`/`procedural`, ...) with the backbone loader.
from .. import world_clip  # noqa: E402,F401

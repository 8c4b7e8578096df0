"""The offline world's small CLIP: an open_clip model pretrained contrastively on generated (image, caption) pairs.

    load_backbone(BackboneConfig(arch="MZ-World", pretrained="procedural"))

builds the weights on first use (a few minutes on 2 CPU cores, under a file lock) and loads them from
the cache afterwards. Pretraining draws fresh concepts from the world's pretraining mixture of styles,
captioned with every concept word; the downstream datasets (`data/world.py`) shift those styles further,
so zero-shot transfer is good but imperfect. Same seed and recipe -> same weights -> same fingerprint (on one
machine: float reductions may differ across CPU instruction sets).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import save as save_safetensors

from .backbones import LOCAL_TAGS, state_dict_fingerprint
from .data import world
from .errors import MapleZooError, unknown
from .fsutil import atomic_write_bytes, atomic_write_text

TAG = "procedural"
BUILD_THREADS = 2  # fixed, so the float reductions (hence the fingerprint) do not depend on the machine's cores

# Caption templates of the pretraining distribution; together they hold every word of the downstream templates.
PRETRAIN_TEMPLATES = (
    "a photo of a {}.", "a photo of a {} shape.", "a drawing of a {}.", "a sketch of a {}.",
    "an image of a {}.", "a picture of a {}.", "{}.", "a rendering of a {}.",
)


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the weights: a cached file built with another recipe is rebuilt."""

    arch: str
    seed: int = 0
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.1
    p_colour: float = 0.75  # probability that a caption names the image's colour
    p_pattern: float = 0.6
    p_size: float = 0.25
    attribute_weight: float = 1.0  # weight of the every-word contrast (see `_attribute_loss`)
    world_version: int = world.WORLD_VERSION


RECIPES: dict[str, PretrainRecipe] = {
    "MZ-World": PretrainRecipe(arch="MZ-World"),
    # a smaller, quicker, much weaker CLIP: fine for smoke tests, too weak to show the base-to-novel phenomenon
    "MZ-World-S": PretrainRecipe(arch="MZ-World-S", steps=300),
}


TEST_ARCH = "MZ-World"  # the test fixture builds the CLIP users get, so the tests check the phenomenon they see


def recipe_for(arch: str) -> PretrainRecipe:
    if arch not in RECIPES:
        raise unknown("procedural backbone", arch, RECIPES)
    return RECIPES[arch]


# ---------------------------------------------------------------------------------------------- pairs

@dataclass
class PairBatch:
    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]
    attrs: np.ndarray  # (N, 4) int: shape, colour, pattern, size ids of what the image shows
    named: np.ndarray  # (N, 4) bool: which of those the caption names (the shape always)


def sample_pairs(n: int, recipe: PretrainRecipe, rng: np.random.Generator) -> PairBatch:
    """n fresh (image, caption) pairs of the pretraining distribution; captions name any subset of attributes."""
    colours = list(world.COLOURS)
    shape = rng.integers(0, len(world.SHAPES), n)
    colour = rng.integers(0, len(colours), n)
    pattern = rng.integers(0, len(world.PATTERNS), n)
    concepts = [world.Concept(world.SHAPES[s], colours[c], world.PATTERNS[p]) for s, c, p in zip(shape, colour, pattern)]
    images, sizes = world.render_mixture(concepts, world.PRETRAIN_MIX, rng)
    size = np.array([world.SIZES.index(s) for s in sizes])
    named = np.stack([np.ones(n, bool), rng.random(n) < recipe.p_colour, rng.random(n) < recipe.p_pattern,
                      rng.random(n) < recipe.p_size], axis=1)
    template = rng.integers(0, len(PRETRAIN_TEMPLATES), n)
    captions = []
    for i, c in enumerate(concepts):
        words = [w for w, say in zip((sizes[i], c.colour, c.pattern), named[i, [3, 1, 2]]) if say]
        captions.append(PRETRAIN_TEMPLATES[template[i]].format(" ".join(words + [c.shape])))
    return PairBatch(images, captions, np.stack([shape, colour, pattern, size], axis=1), named)


def positives(b: PairBatch) -> torch.Tensor:
    """[i, j] = caption j is true of image i (it names nothing image i lacks). Captions leave words out, so
    one batch holds many true pairs: the contrastive targets spread over all of them, not just the diagonal."""
    same = b.attrs[:, None, :] == b.attrs[None, :, :]  # (image i, caption j, attribute)
    return torch.from_numpy((same | ~b.named[None, :, :]).all(axis=2))


# ---------------------------------------------------------------------------------------------- model

def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def preprocess_stats(model: torch.nn.Module) -> tuple[tuple, tuple]:
    pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))


class Vocabulary:
    """The few dozen token ids the pretraining captions use. Training only their embedding rows (a compact
    table written back into the CLIP at the end) spares the optimizer the other ~49k rows of the table."""

    def __init__(self, tokenizer, model: open_clip.CLIP):
        words = [*world.SHAPES, *world.COLOURS, *world.PATTERNS, *world.SIZES]
        texts = [t.format(w) for t in PRETRAIN_TEMPLATES for w in words]
        self.ids = torch.unique(tokenizer(texts))  # includes padding 0, start and end tokens
        self.remap = torch.full((model.token_embedding.num_embeddings,), -1, dtype=torch.long)
        self.remap[self.ids] = torch.arange(len(self.ids))
        self.table = torch.nn.Parameter(model.token_embedding.weight.detach()[self.ids].clone())

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        local = self.remap[tokens]
        if bool((local < 0).any()):
            raise RuntimeError("a pretraining caption uses a token outside the pretraining vocabulary")
        return self.table[local]

    @torch.no_grad()
    def write_back(self, model: open_clip.CLIP) -> None:
        model.token_embedding.weight[self.ids] = self.table.detach()


def encode_text_truncated(model: open_clip.CLIP, tokens: torch.Tensor, vocab: Vocabulary | None = None) -> torch.Tensor:
    """CLIP.encode_text on tokens cut after the longest caption's end token: exact (the text tower is causal
    and pooled at the end token) and several times cheaper than the full 77-token context."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    embedded = vocab.embed(tokens) if vocab is not None else model.token_embedding(tokens)
    x = embedded + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def _soft_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    target = pos / pos.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


ATTRIBUTE_PROMPTS = (  # (attribute column, the words, a caption naming only that attribute; None: the step's template)
    (0, world.SHAPES, None), (1, tuple(world.COLOURS), "a photo of a {} shape."), (2, world.PATTERNS, "a photo of a {} shape."),
)


def _attribute_loss(model, image: torch.Tensor, batch: PairBatch, tokenizer, vocab, template: str) -> torch.Tensor:
    """Contrast every image with one caption per word of each attribute ("a photo of a star.", "... a red shape.").
    In-batch captions alone show each image only a few of the 12 shape words as negatives; this shows it all of
    them, every step, which is what lets a small ViT learn shapes within the CPU budget."""
    texts = [(phrase or template).format(w) for _, words, phrase in ATTRIBUTE_PROMPTS for w in words]
    feats = F.normalize(encode_text_truncated(model, tokenizer(texts), vocab), dim=-1)
    logits = model.logit_scale.exp() * image @ feats.T
    loss, start = 0.0, 0
    for column, words, _ in ATTRIBUTE_PROMPTS:
        target = torch.from_numpy(batch.attrs[:, column])
        loss = loss + F.cross_entropy(logits[:, start:start + len(words)], target)
        start += len(words)
    return loss / len(ATTRIBUTE_PROMPTS)


def _lr_at(step: int, recipe: PretrainRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))


class _Deterministic:
    """Fixed thread count and deterministic kernels for the build; the caller's settings come back after."""

    def __enter__(self):
        self.threads, self.det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        self.fill = torch.utils.deterministic.fill_uninitialized_memory
        torch.set_num_threads(BUILD_THREADS)
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every allocation costs ~20%

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.det)
        torch.utils.deterministic.fill_uninitialized_memory = self.fill


def pretrain(recipe: PretrainRecipe, on_step: Callable[[int, float], None] | None = None) -> torch.nn.Module:
    """Train `recipe.arch` from a seeded random init; returns the model in eval mode."""
    with _Deterministic():
        torch.manual_seed(recipe.seed)
        model = open_clip.create_model(recipe.arch, pretrained=None)
        if not isinstance(model, open_clip.CLIP):
            raise MapleZooError(f"{recipe.arch}: the procedural pretraining expects a plain open_clip CLIP config")
        tokenizer = open_clip.get_tokenizer(recipe.arch)
        mean, std = preprocess_stats(model)
        vocab = Vocabulary(tokenizer, model)
        model.token_embedding.requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad] + [vocab.table]
        decay = [p for p in trainable if p.ndim >= 2]
        rest = [p for p in trainable if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6,
                                fused=True)
        rng = np.random.default_rng([recipe.seed, 7])
        model.train()
        for step in range(recipe.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, recipe)
            batch = sample_pairs(recipe.batch_size, recipe, rng)
            image = F.normalize(model.encode_image(to_tensor(batch.images, mean, std)), dim=-1)
            text = F.normalize(encode_text_truncated(model, tokenizer(batch.captions), vocab), dim=-1)
            logits = model.logit_scale.exp() * image @ text.T
            pos = positives(batch).float()
            loss = 0.5 * (_soft_ce(logits, pos) + _soft_ce(logits.T, pos.T))
            if recipe.attribute_weight > 0:
                template = PRETRAIN_TEMPLATES[step % len(PRETRAIN_TEMPLATES)]
                loss = loss + recipe.attribute_weight * _attribute_loss(model, image, batch, tokenizer, vocab, template)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if on_step is not None:
                on_step(step, loss.item())
        vocab.write_back(model)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- the cached build

def weights_file(cache_dir: Path, arch: str) -> Path:
    return Path(cache_dir) / f"{arch}-{TAG}.safetensors"


def read_sidecar(weights: Path) -> dict | None:
    try:
        return json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _is_built(weights: Path, recipe: PretrainRecipe) -> bool:
    side = read_sidecar(weights)
    return weights.is_file() and bool(side) and side.get("recipe") == asdict(recipe)


def _progress_callback(recipe: PretrainRecipe, enabled: bool):
    """A rich progress bar (steps, loss, time left) on stderr; a no-op when disabled."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True))
    task = bar.add_task(f"pretraining {recipe.arch} on the procedural world", total=recipe.steps, loss=float("nan"))

    def on_step(step: int, loss: float) -> None:
        bar.update(task, completed=step + 1, loss=loss)
    return bar, on_step


def build_world_clip(arch: str = "MZ-World", cache_dir: str | Path | None = None, progress: bool = True,
                     recipe: PretrainRecipe | None = None) -> Path:
    """Path of the pretrained weights for `arch`, pretraining them first unless a file of the same recipe is cached.

    Writes `<cache>/<arch>-procedural.safetensors` and a JSON sidecar (recipe, seed, fingerprint, build time);
    a file lock makes a second process wait for the first build instead of repeating it.
    """
    from .backbones import default_weights_cache

    recipe = recipe or recipe_for(arch)
    cache = Path(cache_dir).expanduser() if cache_dir else default_weights_cache()
    weights = weights_file(cache, recipe.arch)
    if _is_built(weights, recipe):
        return weights
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / f".{weights.name}.lock"))
        lock.acquire()
    except OSError as exc:
        raise MapleZooError(f"cannot write backbone weights to {cache}: {exc.strerror or exc}") from None
    try:
        if _is_built(weights, recipe):  # another process built it while we waited
            return weights
        wall, cpu = time.perf_counter(), time.process_time()
        bar, on_step = _progress_callback(recipe, progress)
        losses: list[float] = []

        def record(step: int, loss: float) -> None:
            losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
        if bar is not None:
            with bar:
                model = pretrain(recipe, record)
        else:
            model = pretrain(recipe, record)
        data = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
        sidecar = {
            "arch": recipe.arch, "tag": TAG, "seed": recipe.seed, "recipe": asdict(recipe),
            "fingerprint": state_dict_fingerprint(model), "file_sha256": hashlib.sha256(data).hexdigest(),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
            "build_seconds": round(time.perf_counter() - wall, 1), "build_cpu_seconds": round(time.process_time() - cpu, 1),
            "threads": BUILD_THREADS, "torch": torch.__version__, "open_clip": open_clip.__version__,
        }
        atomic_write_bytes(weights, data)
        atomic_write_text(weights.with_suffix(".json"), json.dumps(sidecar, indent=2))  # last: marks it complete
    finally:
        lock.release()
    return weights


# open_clip loads these like any other weights: load_backbone(BackboneConfig(arch="MZ-World", pretrained="procedural"))
for _arch in RECIPES:
    LOCAL_TAGS[(_arch, TAG)] = lambda cache_dir, _arch=_arch: build_world_clip(_arch, cache_dir)


# ---------------------------------------------------------------------------------------------- verification

def load_images(paths: list[str], image_size: int, mean, std) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            arrays.append(np.asarray(im))
    return to_tensor(np.stack(arrays), mean, std)


@torch.no_grad()
def zero_shot_accuracy(backbone, splits, classnames: list[str], template: str) -> dict[str, float]:
    """Plain CLIP zero-shot accuracy on the test split: over all classes, and base-to-novel style on the base
    half (the first ceil(n/2) labels, scored among base names only) and the novel half (among novel names)."""
    items = splits.test if hasattr(splits, "test") else list(splits)
    model = backbone.model
    labels = torch.tensor([d.label for d in items])
    images = torch.cat([F.normalize(model.encode_image(load_images([d.impath for d in items[i:i + 256]],
                                                                   backbone.image_size, backbone.mean, backbone.std)), dim=-1)
                        for i in range(0, len(items), 256)])
    text = F.normalize(model.encode_text(backbone.tokenizer([template.format(c) for c in classnames])), dim=-1)
    n_base = math.ceil(len(classnames) / 2)
    out = {}
    for half, lo, hi in (("all", 0, len(classnames)), ("base", 0, n_base), ("novel", n_base, len(classnames))):
        keep = (labels >= lo) & (labels < hi)
        pred = (images[keep] @ text[lo:hi].T).argmax(dim=1) + lo
        out[half] = float((pred == labels[keep]).float().mean()) if keep.any() else float("nan")
    return out

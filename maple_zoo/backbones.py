"""Load frozen open_clip backbones: pretrained tags, local weight files, offline mode, fingerprints.

    backbone = load_backbone(BackboneConfig(arch="ViT-B-16", pretrained="openai"))
    backbone.model        # the open_clip CLIP, frozen, in eval mode
    backbone.fingerprint  # sha256 of the weights, recorded with every run and zoo entry

`pretrained` is an open_clip tag (resolved through open_clip's registry and cache), a path to a
weights file, a tag registered by maple-zoo itself (the offline world's small CLIP), or null for a
seeded random init (benchmarks and shape tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from pydantic import BaseModel, ConfigDict

from .errors import MapleZooError, did_you_mean

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

# (arch, tag) -> function(cache_dir) returning the path of a weights file, building it if needed.
# The offline world registers its small pretrained CLIP here.
LOCAL_TAGS: dict[tuple[str, str], Callable[[Path], Path]] = {}


class BackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: str = "ViT-B-16"
    pretrained: str | None = "openai"
    offline: bool = False
    cache_dir: Path | None = None
    init_seed: int = 0  # only for pretrained: null


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: Callable
    arch: str
    pretrained: str | None
    fingerprint: str
    weights_path: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def describe(self) -> dict:
        return {"arch": self.arch, "pretrained": self.pretrained, "fingerprint": self.fingerprint}


def maple_zoo_cache() -> Path:
    return Path(os.environ.get("MAPLE_ZOO_CACHE", Path.home() / ".cache" / "maple-zoo"))


def default_weights_cache() -> Path:
    return maple_zoo_cache() / "backbones"


def state_dict_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over (key, fp32 bytes) in sorted key order: the same weights give the same id, whatever the file format."""
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


PLACED_SUFFIXES = (".safetensors", ".bin", ".pt")


def _placed_file(arch: str, tag: str, cache: Path) -> Path | None:
    """A weights file the user copied into the cache by hand, named `<arch>-<tag>.<ext>`."""
    for suffix in PLACED_SUFFIXES:
        candidate = cache / f"{arch}-{tag}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _offline_hint(arch: str, tag: str, cache: Path, cfg: dict) -> str:
    source = f"hf.co/{cfg['hf_hub']}" if cfg.get("hf_hub") else cfg.get("url") or "its source"
    return (
        f"weights for {arch}/{tag} are not in the cache {cache}: download them ({source}) on a machine "
        f"with internet, then place the file at {cache / (arch + '-' + tag + '.safetensors')} (or .bin/.pt) "
        f"or pass its path as backbone.pretrained"
    )


def _resolve_open_clip_tag(arch: str, tag: str, cache: Path, offline: bool) -> str:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch) + [t for a, t in LOCAL_TAGS if a == arch]
        raise MapleZooError(
            f"unknown pretrained tag '{tag}' for {arch}{did_you_mean(tag, tags)}; "
            f"known: {', '.join(sorted(tags)) or 'none'} (or give a weights file path)"
        )
    placed = _placed_file(arch, tag, cache)
    if placed is not None:
        return str(placed)
    if offline:
        url = cfg.get("url", "")
        candidate = cache / os.path.basename(url) if url else None
        if candidate is not None and candidate.is_file():
            return str(candidate)
        if cfg.get("hf_hub"):
            from huggingface_hub import hf_hub_download

            model_id, filename = os.path.split(cfg["hf_hub"])
            for name in (filename.replace(".bin", ".safetensors"), filename or "open_clip_pytorch_model.bin"):
                try:
                    return hf_hub_download(model_id, name, cache_dir=str(cache), local_files_only=True)
                except Exception:  # noqa: BLE001 - any miss means "not cached"
                    continue
        raise MapleZooError(_offline_hint(arch, tag, cache, cfg))
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=str(cache))
    except Exception as exc:  # network errors come in many types
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MapleZooError(f"{_offline_hint(arch, tag, cache, cfg)} (download failed: {first})") from None
    if not path:
        raise MapleZooError(_offline_hint(arch, tag, cache, cfg))
    return path


def resolve_weights(cfg: BackboneConfig) -> str | None:
    """Path of the weights file for `cfg`, or None for a random init. Never touches the network when offline."""
    if cfg.pretrained is None:
        return None
    if cfg.arch not in open_clip.list_models():
        raise MapleZooError(f"unknown open_clip architecture '{cfg.arch}'{did_you_mean(cfg.arch, open_clip.list_models())}")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_weights_cache()
    from .data import world  # noqa: F401  (registers the offline world's small CLIP in LOCAL_TAGS)

    builder = LOCAL_TAGS.get((cfg.arch, cfg.pretrained))
    if builder is not None:
        return str(builder(cache))
    as_path = Path(cfg.pretrained).expanduser()
    if as_path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in cfg.pretrained:
        if not as_path.is_file():
            raise MapleZooError(f"backbone weights file not found: {as_path}")
        return str(as_path)
    return _resolve_open_clip_tag(cfg.arch, cfg.pretrained, cache, cfg.offline)


def load_backbone(cfg: BackboneConfig, device: str | torch.device = "cpu") -> Backbone:
    weights = resolve_weights(cfg)
    tag_cfg = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained) if cfg.pretrained else {}
    if weights is None:
        torch.manual_seed(cfg.init_seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights" on the root logger: we load them next
    try:
        model = open_clip.create_model(cfg.arch, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu")))
    finally:
        root.setLevel(level)
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, weights)
        except Exception as exc:  # corrupt file, wrong architecture
            reason = str(exc).splitlines()[0][:200]
            raise MapleZooError(f"cannot load backbone weights {weights} into {cfg.arch}: {reason}") from None
    model.eval().requires_grad_(False)
    fingerprint = state_dict_fingerprint(model)
    model.to(device)
    pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    for key in ("mean", "std", "interpolation"):
        if tag_cfg.get(key):
            pre[key] = tag_cfg[key]
    size = model.visual.image_size
    return Backbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(cfg.arch),
        arch=cfg.arch,
        pretrained=cfg.pretrained,
        fingerprint=fingerprint,
        weights_path=weights,
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=pre.get("interpolation", "bicubic"),
    )

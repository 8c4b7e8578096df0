"""Rebuild a trained method from a checkpoint folder, for any class list (base -> novel, other datasets)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones import Backbone, BackboneConfig, load_backbone
from ..config import parse_method
from ..errors import MapleZooError
from ..methods import PromptMethod, get_method
from ..prompting import PromptedCLIP
from . import checkpoint as ckpt


def load_method(folder: str | Path, device: torch.device, classnames: list[str] | None = None,
                template: str | None = None, backbone: BackboneConfig | None = None) -> tuple[PromptMethod, dict, Backbone]:
    """The method of `folder` on its backbone, with class-token buffers built for `classnames`
    (default: the classes it was trained on). A backbone whose weights differ from the card's is refused."""
    card = ckpt.load_card(folder)
    options = parse_method(card["method"], str(Path(folder) / ckpt.CARD))
    want = card["backbone"]
    cfg = backbone or BackboneConfig(arch=want["arch"], pretrained=want["pretrained"])
    bb = load_backbone(cfg, device)
    if want.get("fingerprint") and bb.fingerprint != want["fingerprint"]:
        raise MapleZooError(
            f"backbone {cfg.arch}/{cfg.pretrained} has fingerprint {bb.fingerprint[:12]}…, but {folder} was trained on "
            f"{want['fingerprint'][:12]}…; load the same weights"
        )
    names = classnames or card["classnames"]
    method = get_method(options.name)(PromptedCLIP(bb.model, bb.tokenizer), names, options,
                                      template or card.get("template", "a photo of a {}."))
    try:
        method.load_trainable_state(ckpt.load_tensors(folder))
    except ValueError as exc:
        raise MapleZooError(f"{folder}: {exc}") from None
    return method.to(device), card, bb

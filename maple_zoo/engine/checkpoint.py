"""Prompt-only checkpoints: `prompts.safetensors` (the learnable tensors) + `card.json` (what they are).

The frozen CLIP is never copied (the official checkpoint carries ~300 MB of it); a card names the
backbone by architecture, tag and weight fingerprint instead. `optimizer.safetensors` is added only
for resumable training checkpoints. Writes go to a temp folder renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MapleZooError
from ..fsutil import public_mode

FORMAT = "maple-zoo/checkpoint/1"
PROMPTS, CARD, OPTIMIZER = "prompts.safetensors", "card.json", "optimizer.safetensors"


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], card: dict,
                    optimizer_state: dict[str, torch.Tensor] | None = None) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / PROMPTS))
        if optimizer_state:
            save_file({k: v.contiguous() for k, v in optimizer_state.items()}, str(tmp / OPTIMIZER))
        (tmp / CARD).write_text(json.dumps({"format": FORMAT, **card}, indent=2, default=str))
        public_mode(tmp, directory=True)
        for f in tmp.iterdir():
            public_mode(f)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        raise MapleZooError(f"not a maple-zoo checkpoint (no {CARD}): {folder}")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MapleZooError(f"corrupt checkpoint card {path}: {exc}") from None
    if card.get("format") != FORMAT:
        raise MapleZooError(f"{path}: unsupported checkpoint format {card.get('format')!r} (expected {FORMAT})")
    return card


def load_tensors(folder: str | Path, name: str = PROMPTS) -> dict[str, torch.Tensor]:
    path = Path(folder) / name
    if not path.is_file():
        raise MapleZooError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MapleZooError(f"corrupt checkpoint file {path}: {str(exc).splitlines()[0]}") from None

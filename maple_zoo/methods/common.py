"""Pieces shared by several methods: context initialisation, prompt-tensor lists and the frozen
zero-shot teacher (the dataset's hand-crafted template through the prompt-free CLIP) that COMMA's
knowledge-preservation loss and APLe-style's stage-1 KL both use.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import MapleZooError
from ..prompting.clip import PromptedCLIP

Tensor = torch.Tensor


def normal_prompts(count: int, n: int, width: int, std: float = 0.02) -> nn.ParameterList:
    """`count` learnable (n, width) prompts ~ N(0, std), the reference init of every deep prompt."""
    prompts = nn.ParameterList([nn.Parameter(torch.empty(n, width)) for _ in range(count)])
    for p in prompts:
        nn.init.normal_(p, std=std)
    return prompts


def words_context(clip: PromptedCLIP, n_ctx: int, ctx_init: str | None) -> tuple[Tensor, str, int]:
    """CoOp / CoCoOp rule: with ctx_init, n_ctx = its word count and ctx = the embeddings of its first
    n_ctx tokens; otherwise ctx ~ N(0, 0.02) and the prefix is 'X X ...'. Returns (ctx, prefix, n_ctx)."""
    if ctx_init:
        words = ctx_init.replace("_", " ")
        n_ctx = len(words.split(" "))
        ctx = clip.embed_tokens(clip.tokenize([words]))[0, 1 : 1 + n_ctx].detach().clone().float()
        return ctx, words, n_ctx
    ctx = torch.empty(n_ctx, clip.text_width, device=clip.device)
    nn.init.normal_(ctx, std=0.02)
    return ctx, " ".join(["X"] * n_ctx), n_ctx


def load_parameters(params: dict[str, nn.Parameter], tensors: dict[str, Tensor]) -> None:
    """Copy checkpoint tensors into `params` (names and shapes must match exactly)."""
    missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or extra:
        raise ValueError(f"prompt tensors do not match the method: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[name].shape:
                raise ValueError(f"prompt tensor {name}: shape {tuple(tensors[name].shape)} != {tuple(p.shape)}")
            p.copy_(tensors[name].to(p.dtype))


def check_depth(method: str, what: str, depth: int, layers: int) -> None:
    if depth > layers:
        raise MapleZooError(f"{method} {what} {depth} exceeds the backbone's {layers} layers")


def name_lengths(clip: PromptedCLIP, classnames: list[str]) -> list[int]:
    """Tokens of each class name on its own (between start and end of text)."""
    ids = clip.tokenize([c.replace("_", " ") for c in classnames])
    return (clip.eot_index(ids) - 1).tolist()


def _full_precision(device: torch.device):
    # teacher tensors are computed once: do it in fp32 even inside the training loop's autocast
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else contextlib.nullcontext()


@torch.no_grad()
def zero_shot_text(clip: PromptedCLIP, classnames: list[str], template: str, hidden_layers: int = 0
                   ) -> tuple[Tensor, Tensor | None]:
    """Frozen CLIP, no prompts, the dataset template: L2-normalised text features (n_cls, D) and, with
    `hidden_layers=k`, the outputs of the true last k blocks over all context positions (before ln_final,
    each token L2-normalised), stacked (k, n_cls, context_length, width)."""
    ids = clip.tokenize([template.format(c.replace("_", " ")) for c in classnames])
    with _full_precision(clip.device):
        if hidden_layers:
            feats, hidden = clip.encode_text(ids, truncate=False, hidden_layers=hidden_layers)
            hidden = torch.nn.functional.normalize(torch.stack(hidden).float(), dim=-1)
        else:
            feats, hidden = clip.encode_text(ids), None
    return torch.nn.functional.normalize(feats.float(), dim=-1), hidden


class ZeroShotTeacher(nn.Module):
    """Zero-shot teacher tensors for the current class set, held as non-persistent buffers (they follow
    .to(device) and never enter a checkpoint). Computed on first use after the class set changes, once per
    class set and never per step; novel-class evaluation, which needs no teacher, never pays for one."""

    def __init__(self, hidden_layers: int = 0):
        super().__init__()
        self.hidden_layers = hidden_layers
        self._key: tuple | None = None
        self.register_buffer("features", None, persistent=False)
        self.register_buffer("hidden", None, persistent=False)

    def get(self, clip: PromptedCLIP, classnames: list[str], template: str) -> tuple[Tensor, Tensor | None]:
        key = (tuple(classnames), template)
        if key != self._key or self.features is None:
            self.features, self.hidden = zero_shot_text(clip, classnames, template, self.hidden_layers)
            self._key = key
        return self.features, self.hidden

    def clear(self) -> None:
        self._key, self.features, self.hidden = None, None, None

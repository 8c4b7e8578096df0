"""Prompted forward passes through a frozen open_clip CLIP, layer by layer.

Text tower (causal, pooled at the end-of-text token):
  - layer-0 prompts replace token positions [start, start + n) of the input embeddings, *before*
    the positional embedding is added (as MaPLe/CoOp build `prefix | ctx | suffix`);
  - `deep[i]` replaces the same positions of the hidden states at the input of block i + 1;
  - blocks past the last deep prompt carry the transformed prompts on.
Image tower:
  - layer-0 prompts are appended after the CLS + patch tokens, after the positional embedding and
    before ln_pre (they get no positional embedding);
  - `deep[i]` replaces the last n tokens at the input of block i + 1; the prompt tokens are dropped
    before pooling.
A prompt is (n, width), shared by every class / image, or (rows, n, width) with one row per class
(text) or per image (vision). Widths, depths and lengths are read from the loaded model.

Speed, all exact (same outputs within float tolerance; `fast=False` and `truncate=False` give the
plain path that tests compare against):
- tokens after the longest sequence's end-of-text token never influence the pooled output under the
  causal mask, so the text sequence is cut there (`truncate=True`);
- blocks run through `blocks.block_forward` (fused attention), and the last block of each tower only
  computes the pooled rows (CLS, end-of-text);
- the text positions every class prompt has in common ("<sot> ctx ctx of a") are computed once, not
  once per class (`blocks.shared_prefix_block_forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MapleZooError
from .blocks import block_forward, shared_prefix_block_forward

Tensor = torch.Tensor


@dataclass
class TextPrompts:
    first: Tensor | None = None  # (n, d) or (n_cls, n, d), replaces input positions [start, start+n)
    deep: Sequence[Tensor | None] = ()  # deep[i] enters at block i + 1
    start: int = 1  # position 0 is the start-of-text token


@dataclass
class VisionPrompts:
    first: Tensor | None = None  # (n, d) or (B, n, d), appended after the image tokens
    deep: Sequence[Tensor | None] = ()  # deep[i] replaces the last n tokens at block i + 1
    # block index -> f(tokens) applied to the hidden states at the input of that block (adapters)
    hooks: dict[int, Callable[[Tensor], Tensor]] = field(default_factory=dict)


def _rows(prompt: Tensor, rows: int) -> Tensor:
    return prompt.unsqueeze(0).expand(rows, -1, -1) if prompt.dim() == 2 else prompt


def _replace(x: Tensor, prompt: Tensor, start: int) -> Tensor:
    prompt = _rows(prompt, x.shape[0]).to(x.dtype)
    return torch.cat([x[:, :start], prompt, x[:, start + prompt.shape[1]:]], dim=1)


def _with_prefix(prefix: Tensor | None, x: Tensor) -> Tensor:
    """Every row's full sequence again: the shared prefix (1, P, d), if any, in front of each row of x."""
    return x if prefix is None else torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)


class PromptedCLIP(nn.Module):
    """A frozen open_clip CLIP whose towers accept prompts at every layer."""

    def __init__(self, model: nn.Module, tokenizer: Callable):
        super().__init__()
        for attr in ("transformer", "token_embedding", "visual", "ln_final", "positional_embedding"):
            if not hasattr(model, attr):
                raise MapleZooError(
                    f"{type(model).__name__} is not a plain open_clip CLIP with a built-in text transformer "
                    f"(missing '{attr}'); prompt learning needs one"
                )
        visual = model.visual
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            raise MapleZooError(f"the image tower {type(visual).__name__} is not an open_clip ViT; prompt learning needs one")
        if not getattr(model.transformer, "batch_first", True) or not getattr(visual.transformer, "batch_first", True):
            raise MapleZooError("open_clip transformers must run batch-first")
        self.clip = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos"):
            raise MapleZooError(f"text pool type '{self.pool_type}' is not supported (argmax or eos)")
        self.eos_id = getattr(model, "text_eos_id", None) or getattr(tokenizer, "eot_token_id", None)
        self.fast = True  # fused attention + last-block pruning; False runs open_clip's own blocks
        self._pools_cls = getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", "tok") == "tok"

    # ---------------------------------------------------------------- sizes, read from the model
    @property
    def text_width(self) -> int:
        return self.clip.token_embedding.weight.shape[1]

    @property
    def vision_width(self) -> int:
        return self.clip.visual.conv1.out_channels

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def context_length(self) -> int:
        return self.clip.positional_embedding.shape[0]

    @property
    def embed_dim(self) -> int:
        proj = self.clip.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def device(self) -> torch.device:
        return self.clip.token_embedding.weight.device

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(list(texts))
        return ids.to(self.device)

    @torch.no_grad()
    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        return self.clip.token_embedding(token_ids)

    def eot_index(self, token_ids: Tensor) -> Tensor:
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        return token_ids.argmax(dim=-1)  # the end-of-text id is the largest id in CLIP's vocabulary

    def encode_text(
        self,
        token_ids: Tensor,
        prompts: TextPrompts | None = None,
        *,
        embeds: Tensor | None = None,
        truncate: bool = True,
        hidden_layers: int = 0,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Text features (rows, embed_dim), unnormalised.

        `embeds` lets a method lay out the input embeddings itself (CoOp's class token in the middle);
        by default they are the token embeddings of `token_ids`. With `hidden_layers=k` the outputs of
        the last k blocks (before ln_final) come back too, untruncated positions only if truncate=False.
        """
        prompts = prompts or TextPrompts()
        eot = self.eot_index(token_ids)
        x = self.embed_tokens(token_ids) if embeds is None else embeds
        if prompts.first is not None:
            x = _replace(x, prompts.first, prompts.start)
        length = int(eot.max()) + 1 if truncate else x.shape[1]
        x = x[:, :length] + self.clip.positional_embedding[:length].to(x.dtype)
        mask = self.clip.attn_mask[:length, :length] if self.clip.attn_mask is not None else None
        blocks = self.clip.transformer.resblocks
        prune = self.fast and not hidden_layers  # the hidden states of every position are wanted otherwise
        shared = self._shared_prefix_length(x, eot, prompts, mask) if self.fast else 0
        prefix, x = (x[:1, :shared], x[:, shared:]) if shared else (None, x)  # x: the positions rows differ in
        hidden = []
        for i, block in enumerate(blocks):
            deep = prompts.deep[i - 1] if 1 <= i <= len(prompts.deep) else None
            if deep is not None and prefix is not None and prompts.start < shared:
                prefix = _replace(prefix, deep, prompts.start)  # the prompt positions lie in the shared prefix
            elif deep is not None:
                x = _replace(x, deep, prompts.start - shared)
            last = prune and i == len(blocks) - 1  # compute the end-of-text rows only
            if prefix is not None:
                prefix, x = shared_prefix_block_forward(block, prefix, x, mask, rows=eot - shared if last else None)
            elif last:
                x = block_forward(block, x, mask, rows=eot)
            else:
                x = block_forward(block, x, mask) if self.fast else block(x, attn_mask=mask)
            if last:
                eot = torch.zeros_like(eot)
            if i >= len(blocks) - hidden_layers:
                hidden.append(_with_prefix(prefix, x))
        x = _with_prefix(prefix, x)
        x = self.clip.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.clip.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return (pooled, hidden) if hidden_layers else pooled

    @staticmethod
    def _shared_prefix_length(x: Tensor, eot: Tensor, prompts: TextPrompts, mask: Tensor | None) -> int:
        """How many leading positions every row of the layer-0 input has in common (0: none worth sharing).

        Exact only under the causal mask. The end-of-text rows stay outside the prefix, and so does any
        deep prompt that differs per row or would straddle the boundary."""
        if mask is None or x.shape[0] < 2:
            return 0
        same = (x == x[:1]).all(dim=2).all(dim=0)
        shared = min(int(same.long().cumprod(0).sum()), int(eot.min()))
        for deep in prompts.deep:
            if deep is not None and (deep.dim() == 3 or shared < prompts.start + deep.shape[-2]):
                shared = min(shared, prompts.start)
        return shared if shared >= 2 else 0

    # ---------------------------------------------------------------- image
    def encode_image(self, images: Tensor, prompts: VisionPrompts | None = None) -> Tensor:
        """Image features (B, embed_dim), unnormalised."""
        prompts = prompts or VisionPrompts()
        v = self.clip.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n_prompt = 0
        if prompts.first is not None:
            first = _rows(prompts.first, x.shape[0]).to(x.dtype)
            n_prompt = first.shape[1]
            x = torch.cat([x, first], dim=1)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        for i, block in enumerate(blocks):
            if 1 <= i <= len(prompts.deep) and prompts.deep[i - 1] is not None:
                deep = _rows(prompts.deep[i - 1], x.shape[0]).to(x.dtype)
                x = torch.cat([x[:, : x.shape[1] - n_prompt], deep], dim=1)
                n_prompt = deep.shape[1]
            if i in prompts.hooks:
                x = prompts.hooks[i](x)
            if self.fast and self._pools_cls and i == len(blocks) - 1:
                cls_rows = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                x = block_forward(block, x, rows=cls_rows)  # only the CLS row is pooled
                n_prompt = 0
            else:
                x = block_forward(block, x) if self.fast else block(x)
        if n_prompt:
            x = x[:, : x.shape[1] - n_prompt]
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled


def cosine_logits(image_features: Tensor, text_features: Tensor, scale: Tensor) -> Tensor:
    """scale * cos(image, text): (B, n_cls), or (B, n_cls) from per-image text (B, n_cls, D)."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    if txt.dim() == 3:
        return scale * torch.einsum("bd,bcd->bc", img, txt)
    return scale * img @ txt.t()

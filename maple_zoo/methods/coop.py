"""CoOp (Zhou et al., IJCV 2022; trainers/coop.py): one learnable text context, image tower untouched.

Context: n_ctx (16) x d_text ~ N(0, 0.02) and prompt "X X ... X {class}.", or, with ctx_init, the
embeddings of its words (n_ctx = their count, the reference rule). csc learns one context per class
(n_cls x n_ctx x d_text); such a model can only score the classes it was trained on. The class token
sits at the end (default), in the middle or at the front. ViT-B/16, 16 tokens: 8,192 parameters.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import MapleZooError
from ..prompting.clip import PromptedCLIP, TextPrompts
from .base import MethodOptions, PromptMethod
from .common import name_lengths, words_context
from .registry import register_method

Tensor = torch.Tensor


class CoOpOptions(MethodOptions):
    name: str = "coop"
    n_ctx: int = Field(16, ge=1, description="context tokens (ignored with ctx_init: its word count is used)")
    ctx_init: str | None = Field(None, description="words whose embeddings initialise the context, e.g. 'a photo of a'")
    class_token_position: Literal["end", "middle", "front"] = "end"
    csc: bool = Field(False, description="class-specific contexts (one per training class)")


@register_method
class CoOp(PromptMethod):
    Options = CoOpOptions
    # the CoCoOp paper's base-to-novel CoOp (configs/trainers/CoOp/vit_b16.yaml); few-shot uses ep50/ep100 too
    reference_optim: ClassVar[dict] = {"lr": 0.002, "epochs": 200, "batch_size": 32}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: CoOpOptions, template: str):
        super().__init__(clip, classnames, options, template)
        if options.csc and not options.ctx_init:
            ctx = torch.empty(len(classnames), options.n_ctx, clip.text_width, device=clip.device)
            nn.init.normal_(ctx, std=0.02)
            self.prefix, self.n_ctx = " ".join(["X"] * options.n_ctx), options.n_ctx
        else:
            ctx, self.prefix, self.n_ctx = words_context(clip, options.n_ctx, options.ctx_init)
            if options.csc:  # the reference ignores csc with ctx_init; here every class starts from the words
                ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(ctx)
        self.trained_classnames = list(classnames) if options.csc else None
        self.set_classnames(classnames)

    def class_prompts(self) -> list[str]:
        return [f"{self.prefix} {c.replace('_', ' ')}." for c in self.classnames]

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        if self.trained_classnames is not None and list(classnames) != self.trained_classnames:
            raise MapleZooError("coop with csc learns one context per training class and cannot score other "
                                "classes (novel, other datasets); train with csc: false for those protocols")
        super().set_classnames(classnames, template)
        position = self.options.class_token_position
        if position != "end":
            self.register_buffer("order", self._positions(position), persistent=False)

    def _positions(self, position: str) -> Tensor:
        """Per-class source position of every token, moving the class-name tokens in front of (or into) the
        context laid out as "[SOS] ctx {class}. [EOS]" (the reference's prefix/ctx/class/suffix concat)."""
        n, length = self.n_ctx, self.token_ids.shape[1]
        eot = self.clip.eot_index(self.token_ids).tolist()
        rows = []
        for name_len, end in zip(name_lengths(self.clip, self.classnames), eot):
            name_len = min(name_len, end - 1 - n)  # a prompt the tokenizer cut short
            ctx = list(range(1, 1 + n))
            name = list(range(1 + n, 1 + n + name_len))
            if position == "front":
                middle = name + ctx
            else:
                middle = ctx[: n // 2] + name + ctx[n // 2:]
            rows.append([0, *middle, *range(1 + n + name_len, length)])
        return torch.tensor(rows, device=self.token_ids.device)

    def text_features(self) -> Tensor:
        prompts = TextPrompts(first=self.ctx)
        if self.options.class_token_position == "end":
            return self.clip.encode_text(self.token_ids, prompts, truncate=self.truncate_text)
        ids = self.token_ids
        embeds = self.clip.embed_tokens(ids)
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(len(ids), -1, -1)
        embeds = torch.cat([embeds[:, :1], ctx.to(embeds.dtype), embeds[:, 1 + self.n_ctx:]], dim=1)
        embeds = torch.gather(embeds, 1, self.order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        return self.clip.encode_text(ids, embeds=embeds, truncate=self.truncate_text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images)

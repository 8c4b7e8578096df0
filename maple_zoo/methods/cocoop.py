"""CoCoOp (Zhou et al., CVPR 2022; trainers/cocoop.py): CoOp context shifted by an image-conditioned bias.

Context: 4 tokens from "a photo of a" (n_ctx = word count, as the reference). Meta-net: Linear(embed_dim ->
embed_dim // 16), ReLU, Linear(-> d_text) on the normalised image feature; its output is added to every
context token, so every image gets its own prompts for all classes (text features cannot be cached at
evaluation). ViT-B/16: 2,048 + 33,312 = 35,360 parameters. Reference: batch 1, 10 epochs, lr 0.002.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..prompting.clip import PromptedCLIP, TextPrompts, cosine_logits
from .base import MethodOptions, PromptMethod
from .common import words_context
from .registry import register_method

Tensor = torch.Tensor
MAX_TEXT_ROWS = 4096  # prompts encoded per text-tower call (images x classes) at evaluation


class CoCoOpOptions(MethodOptions):
    name: str = "cocoop"
    n_ctx: int = Field(4, ge=1, description="context tokens (ignored with ctx_init: its word count is used)")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise the context")


class CoCoOpPromptLearner(nn.Module):
    """Names as the reference (ctx, meta_net.linear1/linear2)."""

    def __init__(self, clip: PromptedCLIP, options: CoCoOpOptions):
        super().__init__()
        ctx, self.prefix, self.n_ctx = words_context(clip, options.n_ctx, options.ctx_init)
        self.ctx = nn.Parameter(ctx)
        vis_dim = clip.embed_dim
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, clip.text_width)),
        ]))

    def forward(self, image_features: Tensor) -> Tensor:
        """(B, n_ctx, d_text): the context shifted by each image's bias."""
        return self.ctx.unsqueeze(0) + self.meta_net(image_features).unsqueeze(1)


@register_method
class CoCoOp(PromptMethod):
    Options = CoCoOpOptions
    reference_optim: ClassVar[dict] = {"lr": 0.002, "epochs": 10, "batch_size": 1}
    image_conditioned = True

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: CoCoOpOptions, template: str):
        super().__init__(clip, classnames, options, template)
        self.prompt_learner = CoCoOpPromptLearner(clip, options).to(clip.device)
        self.set_classnames(classnames)

    def class_prompts(self) -> list[str]:
        return [f"{self.prompt_learner.prefix} {c.replace('_', ' ')}." for c in self.classnames]

    def text_features(self) -> Tensor:
        raise NotImplementedError("cocoop's text features depend on the image: call the method on images")

    def image_features(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images)

    def logits_with(self, images: Tensor, text_features: Tensor) -> Tensor:
        return self(images)

    def forward(self, images: Tensor) -> Tensor:
        image = F.normalize(self.image_features(images), dim=-1)
        ctx = self.prompt_learner(image)  # (B, n_ctx, d)
        n_cls = len(self.classnames)
        chunk = max(1, MAX_TEXT_ROWS // n_cls)
        logits = []
        for start in range(0, len(images), chunk):
            part = ctx[start:start + chunk]
            ids = self.token_ids.repeat(len(part), 1)  # image-major: rows i*n_cls .. (i+1)*n_cls - 1
            text = self.clip.encode_text(ids, TextPrompts(first=part.repeat_interleave(n_cls, dim=0)),
                                         truncate=self.truncate_text)
            logits.append(cosine_logits(image[start:start + chunk], text.view(len(part), n_cls, -1),
                                        self.clip.logit_scale()))
        return torch.cat(logits)

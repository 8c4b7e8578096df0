"""MaPLe (Khattak et al., CVPR 2023), as the official trainers/maple.py.

Learned: the layer-0 text context `ctx` (n_ctx x d_text, initialised from the first n_ctx token
embeddings of "a photo of a"; the rest of the template stays frozen text), the layer-0 coupling
`proj` (Linear d_text -> d_vision), J-1 deep text prompts ~ N(0, 0.02) and J-1 deep couplings that
start from one shared initialisation. Vision prompt k = coupling_k(text prompt k).
Parameter names follow the official ones so reference checkpoints map one to one.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import nn

from ..errors import MapleZooError
from ..prompting.clip import PromptedCLIP, TextPrompts, VisionPrompts, cosine_logits
from .base import MethodOptions, PromptMethod
from .registry import register_method


class MapleOptions(MethodOptions):
    name: str = "maple"
    n_ctx: int = Field(2, ge=1, description="prompt tokens per layer on each side")
    depth: int = Field(9, ge=1, description="prompt depth J: layers 1..J receive fresh prompts")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise ctx (n_ctx <= 4)")


def init_text_context(clip: PromptedCLIP, n_ctx: int, ctx_init: str | None) -> tuple[torch.Tensor, str]:
    """The reference rule: with ctx_init and n_ctx <= 4, ctx = embeddings of its first n_ctx tokens and
    the prompt prefix is the whole ctx_init string; otherwise ctx ~ N(0, 0.02) and prefix 'X X ...'."""
    if ctx_init and n_ctx <= 4:
        words = ctx_init.replace("_", " ")
        ids = clip.tokenize([words])
        ctx = clip.embed_tokens(ids)[0, 1 : 1 + n_ctx].detach().clone().float()
        return ctx, words
    ctx = torch.empty(n_ctx, clip.text_width)
    nn.init.normal_(ctx, std=0.02)
    return ctx, " ".join(["X"] * n_ctx)


class MultiModalPromptLearner(nn.Module):
    """The official prompt learner's learnable part (names kept: ctx, proj, compound_*)."""

    def __init__(self, clip: PromptedCLIP, n_ctx: int, depth: int, ctx_init: str | None):
        super().__init__()
        d_text, d_vision = clip.text_width, clip.vision_width
        ctx, self.prefix = init_text_context(clip, n_ctx, ctx_init)
        self.ctx = nn.Parameter(ctx.to(clip.device))
        self.proj = nn.Linear(d_text, d_vision)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, d_text)) for _ in range(depth - 1)]
        )
        for p in self.compound_prompts_text:
            nn.init.normal_(p, std=0.02)
        single = nn.Linear(d_text, d_vision)  # one init, deep-copied: every coupling starts identical
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def forward(self) -> tuple[TextPrompts, VisionPrompts]:
        deep_text = list(self.compound_prompts_text)
        deep_vision = [f(p) for f, p in zip(self.compound_prompt_projections, deep_text)]
        return TextPrompts(first=self.ctx, deep=deep_text), VisionPrompts(first=self.proj(self.ctx), deep=deep_vision)


@register_method
class MaPLe(PromptMethod):
    Options = MapleOptions
    reference_optim = {"lr": 0.0035, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: MapleOptions, template: str):
        super().__init__(clip, classnames, options, template)
        layers = min(clip.text_layers, clip.vision_layers)
        if options.depth > layers:
            raise MapleZooError(f"maple depth {options.depth} exceeds the backbone's {layers} layers")
        self.prompt_learner = MultiModalPromptLearner(clip, options.n_ctx, options.depth, options.ctx_init)
        self.prompt_learner.to(clip.device)
        self.set_classnames(classnames)

    def class_prompts(self) -> list[str]:
        # "a photo of a {class}." whatever the dataset: the first n_ctx words become learnable
        return [f"{self.prompt_learner.prefix} {c.replace('_', ' ')}." for c in self.classnames]

    def text_features(self) -> torch.Tensor:
        text, _ = self.prompt_learner()
        return self.clip.encode_text(self.token_ids, text, truncate=self.truncate_text)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        _, vision = self.prompt_learner()
        return self.clip.encode_image(images, vision)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text, vision = self.prompt_learner()  # one prompt computation for both towers
        return cosine_logits(
            self.clip.encode_image(images, vision),
            self.clip.encode_text(self.token_ids, text, truncate=self.truncate_text),
            self.clip.logit_scale(),
        )

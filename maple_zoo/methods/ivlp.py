"""IVLP, independent V-L prompting (trainers/independentVL.py): deep text and vision prompts, no coupling.

Text: layer-0 `ctx` (first n_ctx token embeddings of "a photo of a" when n_ctx <= 4, else N(0, 0.02) and
prefix "X X ..."), then one N(0, 0.02) prompt replacing the same positions at each of blocks 1..depth-1.
Vision: a N(0, 0.02) prompt appended after the patch tokens, then one per block 1..depth-1 replacing the
last n tokens. ViT-B/16 with 2 + 2 tokens at depth 12 on both sides: 30,720 parameters.
The same learner serves deep vision prompting (vpt.py) and deep language prompting (language.py).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from ..errors import MapleZooError
from ..prompting.clip import PromptedCLIP, TextPrompts, VisionPrompts, cosine_logits
from .base import MethodOptions, PromptMethod
from .common import check_depth, normal_prompts
from .maple import init_text_context
from .registry import register_method

Tensor = torch.Tensor
FIXED_TEMPLATE = "a photo of a {}."  # what VPT's FixedEmbeddings encode, on every dataset


class IndependentPromptLearner(nn.Module):
    """Uncoupled text and vision prompt stacks; a side with n_ctx 0 or depth 0 is not prompted."""

    def __init__(self, clip: PromptedCLIP, n_ctx_text: int, depth_text: int, n_ctx_vision: int, depth_vision: int,
                 ctx_init: str | None, method: str):
        super().__init__()
        self.prefix: str | None = None
        self.text_ctx = self.vision_ctx = None
        if n_ctx_text and depth_text:
            check_depth(method, "text depth", depth_text, clip.text_layers)
            ctx, self.prefix = init_text_context(clip, n_ctx_text, ctx_init)
            self.text_ctx = nn.Parameter(ctx)
            self.text_deep = normal_prompts(depth_text - 1, n_ctx_text, clip.text_width)
        if n_ctx_vision and depth_vision:
            check_depth(method, "vision depth", depth_vision, clip.vision_layers)
            self.vision_ctx = normal_prompts(1, n_ctx_vision, clip.vision_width)[0]
            self.vision_deep = normal_prompts(depth_vision - 1, n_ctx_vision, clip.vision_width)

    @property
    def has_text(self) -> bool:
        return self.text_ctx is not None

    @property
    def has_vision(self) -> bool:
        return self.vision_ctx is not None

    def text(self, detach: bool = False) -> TextPrompts:
        if not self.has_text:
            return TextPrompts()
        ctx, deep = self.text_ctx, list(self.text_deep)
        if detach:
            ctx, deep = ctx.detach(), [p.detach() for p in deep]
        return TextPrompts(first=ctx, deep=deep)

    def vision(self, detach: bool = False, hooks: dict | None = None) -> VisionPrompts:
        if not self.has_vision:
            return VisionPrompts(hooks=hooks or {})
        first, deep = self.vision_ctx, list(self.vision_deep)
        if detach:
            first, deep = first.detach(), [p.detach() for p in deep]
        return VisionPrompts(first=first, deep=deep, hooks=hooks or {})


class IVLPOptions(MethodOptions):
    name: str = "ivlp"
    n_ctx_text: int = Field(2, ge=0, description="text prompt tokens per layer")
    n_ctx_vision: int = Field(2, ge=0, description="vision prompt tokens per layer")
    depth_text: int = Field(12, ge=0, description="text layers 1..depth carrying prompts")
    depth_vision: int = Field(12, ge=0, description="vision layers 1..depth carrying prompts")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise the text ctx (n <= 4)")


class IndependentVL(PromptMethod):
    """Prompted text and/or vision towers without coupling; subclasses choose which side and how large."""

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: MethodOptions, template: str,
                 n_ctx_text: int, depth_text: int, n_ctx_vision: int, depth_vision: int, ctx_init: str | None):
        super().__init__(clip, classnames, options, template)
        self.prompt_learner = IndependentPromptLearner(clip, n_ctx_text, depth_text, n_ctx_vision, depth_vision,
                                                       ctx_init, options.name).to(clip.device)
        if not (self.prompt_learner.has_text or self.prompt_learner.has_vision):
            raise MapleZooError(f"{options.name}: both prompt stacks are empty (n_ctx or depth 0 on each side); "
                                "use zeroshot for unprompted CLIP")
        self.register_buffer("fixed_text", None, persistent=False)
        self.set_classnames(classnames)

    def class_prompts(self) -> list[str]:
        if self.prompt_learner.has_text:  # "a photo of a {class}.": its first n_ctx tokens become learnable
            return [f"{self.prompt_learner.prefix} {c.replace('_', ' ')}." for c in self.classnames]
        return [FIXED_TEMPLATE.format(c.replace("_", " ")) for c in self.classnames]

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        super().set_classnames(classnames, template)
        self.fixed_text = None

    def text_features(self) -> Tensor:
        if self.prompt_learner.has_text:
            return self.clip.encode_text(self.token_ids, self.prompt_learner.text(), truncate=self.truncate_text)
        if self.fixed_text is None:  # unprompted text tower: encode once per class set (VPT's FixedEmbeddings)
            with torch.no_grad():
                self.fixed_text = self.clip.encode_text(self.token_ids, truncate=self.truncate_text).float()
        return self.fixed_text

    def image_features(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images, self.prompt_learner.vision())

    def forward(self, images: Tensor) -> Tensor:
        return cosine_logits(self.image_features(images), self.text_features(), self.clip.logit_scale())


@register_method
class IVLP(IndependentVL):
    Options = IVLPOptions
    reference_optim: ClassVar[dict] = {"lr": 0.0035, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: IVLPOptions, template: str):
        super().__init__(clip, classnames, options, template, options.n_ctx_text, options.depth_text,
                         options.n_ctx_vision, options.depth_vision, options.ctx_init)

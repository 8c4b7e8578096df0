"""Deep language prompting (IVLP trainer, language-only config): text prompts at every layer.

4 text tokens, so all of "a photo of a" becomes learnable at layer 0, then a fresh N(0, 0.02) prompt at
each of blocks 1..11: 12 x 4 x d_text = 24,576 parameters at ViT-B/16.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ..prompting.clip import PromptedCLIP
from .base import MethodOptions
from .ivlp import IndependentVL
from .registry import register_method


class DeepLanguageOptions(MethodOptions):
    name: str = "deep_language"
    n_ctx: int = Field(4, ge=1, description="text prompt tokens per layer")
    depth: int = Field(12, ge=1, description="text layers 1..depth carrying prompts")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise ctx (n_ctx <= 4)")


@register_method
class DeepLanguage(IndependentVL):
    Options = DeepLanguageOptions
    reference_optim: ClassVar[dict] = {"lr": 0.0025, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: DeepLanguageOptions, template: str):
        super().__init__(clip, classnames, options, template, options.n_ctx, options.depth, 0, 0, options.ctx_init)

"""Deep vision prompting, VPT-deep (trainers/vpt.py): vision prompts at every layer, fixed text.

Vision: 8 tokens ~ N(0, 0.02) appended after the patch tokens, and a fresh N(0, 0.02) prompt replacing
them at each of blocks 1..depth-1 (depth 12): 12 x 8 x d_vision = 73,728 parameters at ViT-B/16.
Text: the frozen tower on "a photo of a {class}." whatever the dataset, encoded once per class set.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ..prompting.clip import PromptedCLIP
from .base import MethodOptions
from .ivlp import IndependentVL
from .registry import register_method


class VPTOptions(MethodOptions):
    name: str = "vpt"
    n_ctx: int = Field(8, ge=1, description="vision prompt tokens per layer (the reference yaml's N_CTX_VISION)")
    depth: int = Field(12, ge=1, description="vision layers 1..depth carrying prompts")


@register_method
class VPT(IndependentVL):
    Options = VPTOptions
    reference_optim: ClassVar[dict] = {"lr": 0.0025, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: VPTOptions, template: str):
        super().__init__(clip, classnames, options, template, 0, 0, options.n_ctx, options.depth, None)

"""Zero-shot CLIP (trainers/zsclip.py ZeroshotCLIP): the dataset's hand-crafted template, nothing learned."""

from __future__ import annotations

import torch

from ..prompting.clip import PromptedCLIP
from .base import MethodOptions, PromptMethod
from .registry import register_method


class ZeroShotOptions(MethodOptions):
    name: str = "zeroshot"


@register_method
class ZeroShotCLIP(PromptMethod):
    Options = ZeroShotOptions
    reference_optim = {"lr": 0.0, "epochs": 0, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: ZeroShotOptions, template: str):
        super().__init__(clip, classnames, options, template)
        self.set_classnames(classnames)

    def text_features(self) -> torch.Tensor:
        return self.clip.encode_text(self.token_ids, truncate=self.truncate_text)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

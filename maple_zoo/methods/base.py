"""What every prompt-learning method is: a small nn.Module on top of a frozen PromptedCLIP.

A method owns its learnable tensors and turns them into prompts; `prompting/` does the injection.
The engine only uses this interface:

    method.set_classnames(names)        # rebuild class-token buffers (base -> novel evaluation)
    method.text_features()              # (n_cls, D), for image-independent methods: once per evaluation
    method.image_features(images)       # (B, D)
    method(images) -> logits            # per batch (image-conditioned methods use this at evaluation)
    method.training_loss(images, labels) -> (loss, logits)
    method.trainable_state() / load_trainable_state(tensors)   # what a checkpoint holds
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..prompting.clip import PromptedCLIP, cosine_logits

Tensor = torch.Tensor


class MethodOptions(BaseModel):
    """Base of every method's options; each method adds its fields with the reference defaults."""

    model_config = ConfigDict(extra="forbid")
    name: str


class PromptMethod(nn.Module):
    Options: ClassVar[type[MethodOptions]]
    # the reference training recipe (lr, epochs, batch_size) used when a config leaves them out
    reference_optim: ClassVar[dict] = {"lr": 0.0035, "epochs": 5, "batch_size": 4}
    # True when text features depend on the image (CoCoOp): evaluation cannot cache them
    image_conditioned: ClassVar[bool] = False

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: MethodOptions, template: str):
        super().__init__()
        self.clip = clip
        self.options = options
        self.template = template
        self.truncate_text = True
        self.classnames: list[str] = []

    # ---------------------------------------------------------------- class set
    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        """Rebuild everything that depends on the class names (nothing learnable)."""
        self.classnames = list(classnames)
        if template is not None:
            self.template = template
        self.register_buffer("token_ids", self.clip.tokenize(self.class_prompts()), persistent=False)

    def class_prompts(self) -> list[str]:
        return [self.template.format(c.replace("_", " ")) for c in self.classnames]

    # ---------------------------------------------------------------- forward
    def text_features(self) -> Tensor:
        raise NotImplementedError

    def image_features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        return cosine_logits(self.image_features(images), self.text_features(), self.clip.logit_scale())

    def logits_with(self, images: Tensor, text_features: Tensor) -> Tensor:
        """Logits against text features computed once beforehand (evaluation)."""
        return cosine_logits(self.image_features(images), text_features, self.clip.logit_scale())

    def training_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self(images)
        return F.cross_entropy(logits, labels), logits

    # ---------------------------------------------------------------- checkpoint
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("clip.")}

    def trainable_state(self) -> dict[str, Tensor]:
        return {n: p.detach().float().cpu().contiguous() for n, p in self.trainable_parameters().items()}

    def load_trainable_state(self, tensors: dict[str, Tensor]) -> None:
        params = self.trainable_parameters()
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or extra:
            raise ValueError(f"prompt tensors do not match the method: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for name, p in params.items():
                if p.shape != tensors[name].shape:
                    raise ValueError(f"prompt tensor {name}: shape {tuple(tensors[name].shape)} != {tuple(p.shape)}")
                p.copy_(tensors[name].to(p.dtype))

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def num_declared(self) -> int:
        """Parameters the method declares, including any that never receive a gradient."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("clip."))

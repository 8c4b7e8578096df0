"""APLe-style (reconstructed, not APLe): language then vision prompts, zero-shot KL, FFT low-pass adapter.

Sequential language-then-vision prompt training with zero-shot KL guidance and an FFT + Gaussian
low-pass adapter. NOT APLe: no code or hyper-parameters of APLe (Cao et al., arXiv 2401.06827)
are public; every unknown is a knob with the defaults of methods.md §3.3, and results are "APLe-style".

Prompts: IVLP-style uncoupled stacks (text ctx from "a photo of a" + deep text prompts, vision prompts
appended and replaced per layer), n_ctx 2 and depth 9 on both sides, so each side can be frozen alone.
Adapter: at the input of one vision block (default the last), the patch-token grid (gh x gw, per channel)
goes through a 2-D FFT, a Gaussian low-pass mask exp(-|f|^2 / (2 (sigma * f_nyquist)^2)) and the inverse
FFT, mixed back residually x + alpha (filtered - x), alpha learnable (init 0.1). CLS and prompt tokens
pass untouched.
Schedule (sequential): stage 1 = the first round(stage_split * epochs) epochs trains the first branch
(text by default) with CE + kl_weight * T^2 KL(p_zs(T) || p(T)), p_zs from frozen CLIP on the dataset
template; stage 2 trains the other branch (vision prompts + adapter) with CE only. The waiting branch is
present but frozen (or absent in stage 1 with waiting_branch: absent). A frozen branch is detached in
the forward pass, so it gets no gradient and SGD (weight decay, momentum) leaves it untouched.
`schedule: joint` trains everything together with the KL term throughout. The train loop calls
`on_epoch_start(epoch, epochs)`; without it the method trains jointly.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import MapleZooError
from ..prompting.clip import PromptedCLIP, cosine_logits
from .base import MethodOptions, PromptMethod
from .common import ZeroShotTeacher
from .ivlp import IndependentPromptLearner
from .registry import register_method

Tensor = torch.Tensor
Branch = Literal["text", "vision"]


class APLeOptions(MethodOptions):
    name: str = "aple"
    n_ctx: int = Field(2, ge=1, description="prompt tokens per layer on each side")
    depth: int = Field(9, ge=1, description="prompt depth on each side")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise the text ctx")
    schedule: Literal["sequential", "joint"] = Field("sequential", description="sequential stages or joint training")
    stage_order: Literal["text_first", "vision_first"] = "text_first"
    stage_split: float = Field(0.6, gt=0, lt=1, description="share of the epochs in stage 1 (3 of 5)")
    waiting_branch: Literal["frozen", "absent"] = Field(
        "frozen", description="the branch not yet trained in stage 1: present but frozen, or left out")
    kl_weight: float = Field(1.0, ge=0, description="weight of the zero-shot KL in stage 1 (0 = off)")
    kl_temperature: float = Field(1.0, gt=0)
    adapter: bool = Field(True, description="FFT + Gaussian low-pass adapter on the patch-token grid")
    adapter_sigma: float = Field(0.5, gt=0, description="Gaussian std as a fraction of the Nyquist frequency")
    adapter_alpha: float = Field(0.1, description="initial mixing weight (learnable)")
    adapter_block: int = Field(-1, description="vision block whose input is filtered (negative: from the end)")


class FourierLowPass(nn.Module):
    """x + alpha * (lowpass(x) - x) on the patch tokens 1..1+gh*gw of (B, L, d) hidden states."""

    def __init__(self, grid: tuple[int, int], sigma: float, alpha: float):
        super().__init__()
        self.grid = grid
        fy = torch.fft.fftfreq(grid[0]).view(-1, 1)  # cycles per token; Nyquist = 0.5
        fx = torch.fft.fftfreq(grid[1]).view(1, -1)
        cutoff = sigma * 0.5
        self.register_buffer("mask", torch.exp(-(fy**2 + fx**2) / (2 * cutoff**2)), persistent=False)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def filtered(self, patches: Tensor) -> Tensor:
        gh, gw = self.grid
        b, n, d = patches.shape
        grid = patches.float().reshape(b, gh, gw, d)
        spectrum = torch.fft.fft2(grid, dim=(1, 2)) * self.mask.view(1, gh, gw, 1)  # FFTs need fp32
        return torch.fft.ifft2(spectrum, dim=(1, 2)).real.reshape(b, n, d)

    def forward(self, x: Tensor, alpha: Tensor | None = None) -> Tensor:
        alpha = self.alpha if alpha is None else alpha
        n = self.grid[0] * self.grid[1]
        patches = x[:, 1:1 + n].float()
        mixed = patches + alpha * (self.filtered(patches) - patches)
        return torch.cat([x[:, :1], mixed.to(x.dtype), x[:, 1 + n:]], dim=1)


@register_method
class APLeStyle(PromptMethod):
    Options = APLeOptions
    reference_optim: ClassVar[dict] = {"lr": 0.0035, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: APLeOptions, template: str):
        super().__init__(clip, classnames, options, template)
        self.prompt_learner = IndependentPromptLearner(clip, options.n_ctx, options.depth, options.n_ctx,
                                                       options.depth, options.ctx_init, "aple").to(clip.device)
        if not -clip.vision_layers <= options.adapter_block < clip.vision_layers:
            raise MapleZooError(f"aple adapter_block {options.adapter_block} is outside the backbone's "
                                f"{clip.vision_layers} vision blocks")
        self.adapter_block = options.adapter_block % clip.vision_layers
        self.adapter = (FourierLowPass(tuple(clip.clip.visual.grid_size), options.adapter_sigma,
                                       options.adapter_alpha).to(clip.device) if options.adapter else None)
        self.teacher = ZeroShotTeacher()
        self.stage: int | None = None  # None: not scheduled (train loop without on_epoch_start) = joint
        self.set_classnames(classnames)

    # ------------------------------------------------------------ schedule
    def stage_of(self, epoch: int, epochs: int) -> int | None:
        if self.options.schedule == "joint":
            return None
        first = max(1, min(epochs - 1, math.floor(self.options.stage_split * epochs + 0.5))) if epochs > 1 else 1
        return 1 if epoch < first else 2

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the train loop before each 0-based epoch."""
        self.stage = self.stage_of(epoch, epochs)

    def active_branches(self) -> set[str]:
        if self.stage is None:
            return {"text", "vision"}
        first, second = ("text", "vision") if self.options.stage_order == "text_first" else ("vision", "text")
        return {first} if self.stage == 1 else {second}

    def kl_active(self) -> bool:
        return self.options.kl_weight > 0 and self.stage in (None, 1)

    def _absent(self, branch: str) -> bool:
        return self.stage == 1 and self.options.waiting_branch == "absent" and branch not in self.active_branches()

    # ------------------------------------------------------------ forward
    def class_prompts(self) -> list[str]:
        return [f"{self.prompt_learner.prefix} {c.replace('_', ' ')}." for c in self.classnames]

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        super().set_classnames(classnames, template)
        self.teacher.clear()

    def text_features(self) -> Tensor:
        frozen = "text" not in self.active_branches()
        # absent: the unprompted "a photo of a {class}." (what the text prompts start from)
        prompts = None if self._absent("text") else self.prompt_learner.text(detach=frozen)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # a frozen branch needs no graph
            return self.clip.encode_text(self.token_ids, prompts, truncate=self.truncate_text)

    def image_features(self, images: Tensor) -> Tensor:
        frozen = "vision" not in self.active_branches()
        if self._absent("vision"):
            return self.clip.encode_image(images)
        hooks = {}
        if self.adapter is not None:
            alpha = self.adapter.alpha.detach() if frozen else self.adapter.alpha
            hooks[self.adapter_block] = lambda x: self.adapter(x, alpha)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.clip.encode_image(images, self.prompt_learner.vision(detach=frozen, hooks=hooks))

    def training_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        if self.kl_active():
            with torch.no_grad():
                teacher, _ = self.teacher.get(self.clip, self.classnames, self.template)
                zs = cosine_logits(self.clip.encode_image(images), teacher, self.clip.logit_scale())
            t = self.options.kl_temperature
            kl = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(zs.float() / t, -1),
                          log_target=True, reduction="batchmean")
            loss = loss + self.options.kl_weight * t * t * kl
        return loss, logits

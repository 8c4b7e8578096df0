"""COMMA (Hu et al., AAAI 2024): MaPLe with attention-generated deep vision prompts and knowledge preservation.

Deep vision prompts are generated from the previous layer's vision and text prompts, plus a
knowledge-preservation loss against frozen CLIP.

Learned, as the official trainers/comma.py (parameter names kept, so its checkpoints map one to one):
the layer-0 text context `ctx` (first n_ctx token embeddings of "a photo of a"), the layer-0 coupling
`proj` (Linear d_text -> d_vision, V_0 = proj(ctx)), J-1 deep text prompts ~ N(0, 0.02), and J-1
generators: V_k = MLP(LN(softmax(V_{k-1} T~^T / sqrt(d_vision)) T~)) with T~ = fc(T_{k-1}), the MLP
d_vision -> d_vision/r -> d_vision (r = 4), no residual. Generator 1 ("base") reads (V_0, ctx), generator
k > 1 reads (V_{k-1}, deep text prompt k-1).

Loss: CE + kp_weight * (1 - mean over layers, classes and all context positions of the cosine between the
prompted text tower's block outputs (before ln_final) and those of frozen, prompt-free CLIP on the
dataset's hand-crafted template). Positions are compared by index, as the reference does, although the
student reads "[SOS][p1][p2] of a {class}." and a suffixed teacher template ("..., a type of pet.") does
not line up after the class name. `kp_layers=k` uses the true last k blocks (the reference's k > 1 runs
the wrong blocks; its released setting is k = 1).

`generator_grad` switches between the paper's intent (true: generators in the graph, trained) and the
released code (false, the default): there the generators write their output into `.data` of a Parameter
and read detached inputs, so they never receive a gradient and stay at their random init, and no
gradient reaches ctx/proj/text prompts through the deep vision prompts. This mode keeps the generators
(and the overwritten image-prompt Parameter) declared but frozen, and stores the generators' random
weights in checkpoints because they define the model. ViT-B/16, n_ctx 2, J 9: 403,200 trained of
5,946,624 declared (reference mode); 5,934,336 trained (generator_grad).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..prompting.clip import PromptedCLIP, TextPrompts, VisionPrompts, cosine_logits
from .base import MethodOptions, PromptMethod
from .common import ZeroShotTeacher, check_depth, load_parameters
from .maple import init_text_context
from .registry import register_method

Tensor = torch.Tensor


class CommaOptions(MethodOptions):
    name: str = "comma"
    n_ctx: int = Field(2, ge=1, description="prompt tokens per layer on each side")
    depth: int = Field(9, ge=1, description="prompt depth J: layers 1..J receive prompts")
    ctx_init: str | None = Field("a photo of a", description="words whose embeddings initialise ctx (n_ctx <= 4)")
    generator_grad: bool = Field(False, description="true: train the generators (paper intent); "
                                                    "false: frozen random generators, as the released code")
    kp_weight: float = Field(1.0, ge=0, description="weight of the knowledge-preservation loss (0 = off)")
    kp_layers: int = Field(1, ge=1, description="last text blocks compared with frozen CLIP")
    reduction: int = Field(4, ge=1, description="generator MLP reduction r: d_vision -> d_vision/r -> d_vision")


class AttentionTransform(nn.Module):
    """One prompt generator (the reference `attention_transform`; submodule names kept)."""

    def __init__(self, d_text: int, d_vision: int, reduction: int):
        super().__init__()
        self.fc = nn.Linear(d_text, d_vision)
        self.ln = nn.LayerNorm(d_vision)
        self.mlp = nn.Sequential(nn.Linear(d_vision, d_vision // reduction), nn.ReLU(),
                                 nn.Linear(d_vision // reduction, d_vision))

    def forward(self, vision_prompt: Tensor, text_prompt: Tensor) -> Tensor:
        text = self.fc(text_prompt)  # (n, d_vision): keys and values
        affinity = F.softmax(vision_prompt @ text.t() / math.sqrt(text.shape[-1]), dim=-1)  # (n, n)
        return self.mlp(self.ln(affinity @ text))  # no residual from the previous vision prompt


class CommaPromptLearner(nn.Module):
    def __init__(self, clip: PromptedCLIP, options: CommaOptions):
        super().__init__()
        d_text, d_vision, n, depth = clip.text_width, clip.vision_width, options.n_ctx, options.depth
        self.generator_grad = options.generator_grad
        ctx, self.prefix = init_text_context(clip, n, options.ctx_init)
        self.ctx = nn.Parameter(ctx)
        self.proj = nn.Linear(d_text, d_vision)
        self.compound_prompts_text = nn.Parameter(torch.empty(depth - 1, n, d_text))
        for i in range(depth - 1):
            nn.init.normal_(self.compound_prompts_text[i], std=0.02)
        if not self.generator_grad:
            # the reference's store for generated prompts: overwritten every forward, so declared but frozen;
            # zero-filled (not drawn) so both modes consume the same random numbers and start identical
            self.compound_prompts_image = nn.Parameter(torch.zeros(depth - 1, n, d_vision), requires_grad=False)
        gens = [AttentionTransform(d_text, d_vision, options.reduction) for _ in range(depth - 1)]
        self.compound_prompt_projections_image_base = gens[0] if gens else None
        self.compound_prompt_projections_image = nn.ModuleList(gens[1:])
        if not self.generator_grad:
            self.generators().requires_grad_(False)

    def generators(self) -> nn.ModuleList:
        base = self.compound_prompt_projections_image_base
        return nn.ModuleList(([base] if base is not None else []) + list(self.compound_prompt_projections_image))

    def forward(self) -> tuple[TextPrompts, VisionPrompts]:
        deep_text = list(self.compound_prompts_text.unbind(0))
        shared = self.proj(self.ctx)  # V_0: in the graph in both modes
        previous_text = [self.ctx, *deep_text[:-1]]  # generator k reads T_{k-1}
        deep_vision = []
        if self.generator_grad:
            v = shared
            for gen, t in zip(self.generators(), previous_text):
                v = gen(v, t)
                deep_vision.append(v)
        else:
            with torch.no_grad():  # the reference: `.data` writes from detached inputs, no gradient anywhere
                v = shared.detach()
                for gen, t in zip(self.generators(), previous_text):
                    v = gen(v, t.detach())
                    deep_vision.append(v)
                if deep_vision:
                    self.compound_prompts_image.copy_(torch.stack(deep_vision))
        return TextPrompts(first=self.ctx, deep=deep_text), VisionPrompts(first=shared, deep=deep_vision)


@register_method
class COMMA(PromptMethod):
    Options = CommaOptions
    reference_optim: ClassVar[dict] = {"lr": 0.0035, "epochs": 5, "batch_size": 4}

    def __init__(self, clip: PromptedCLIP, classnames: list[str], options: CommaOptions, template: str):
        super().__init__(clip, classnames, options, template)
        check_depth("comma", "depth", options.depth, min(clip.text_layers, clip.vision_layers))
        check_depth("comma", "kp_layers", options.kp_layers, clip.text_layers)
        self.prompt_learner = CommaPromptLearner(clip, options).to(clip.device)
        self.teacher = ZeroShotTeacher(hidden_layers=options.kp_layers)
        self.set_classnames(classnames)

    def class_prompts(self) -> list[str]:
        # the student reads "a photo of a {class}." whatever the dataset; the teacher the dataset template
        return [f"{self.prompt_learner.prefix} {c.replace('_', ' ')}." for c in self.classnames]

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        super().set_classnames(classnames, template)
        self.teacher.clear()  # rebuilt on the next training step, once for this class set

    def text_features(self) -> Tensor:
        text, _ = self.prompt_learner()
        return self.clip.encode_text(self.token_ids, text, truncate=self.truncate_text)

    def image_features(self, images: Tensor) -> Tensor:
        _, vision = self.prompt_learner()
        return self.clip.encode_image(images, vision)

    def forward(self, images: Tensor) -> Tensor:
        text, vision = self.prompt_learner()
        return cosine_logits(self.clip.encode_image(images, vision),
                             self.clip.encode_text(self.token_ids, text, truncate=self.truncate_text),
                             self.clip.logit_scale())

    def knowledge_preservation(self, hidden: list[Tensor]) -> Tensor:
        """1 - mean per-token cosine with the frozen teacher, averaged over the last kp_layers blocks."""
        _, teacher = self.teacher.get(self.clip, self.classnames, self.template)
        student = F.normalize(torch.stack(hidden).float(), dim=-1)  # (k, n_cls, context, width)
        cos = (student * teacher).sum(-1)
        return (1.0 - cos.mean(dim=(1, 2))).mean()

    def training_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        text, vision = self.prompt_learner()
        image = self.clip.encode_image(images, vision)
        opts = self.options
        if opts.kp_weight == 0:
            logits = cosine_logits(image, self.clip.encode_text(self.token_ids, text, truncate=self.truncate_text),
                                   self.clip.logit_scale())
            return F.cross_entropy(logits, labels), logits
        # the reference compares every context position (padding included): run the text tower untruncated
        features, hidden = self.clip.encode_text(self.token_ids, text, truncate=False, hidden_layers=opts.kp_layers)
        logits = cosine_logits(image, features, self.clip.logit_scale())
        return F.cross_entropy(logits, labels) + opts.kp_weight * self.knowledge_preservation(hidden), logits

    # ------------------------------------------------------------ checkpoint: frozen generators define the model
    def stored_parameters(self) -> dict[str, nn.Parameter]:
        params = self.trainable_parameters()
        if not self.options.generator_grad:
            params.update({f"prompt_learner.{n}": p for n, p in self.prompt_learner.named_parameters()
                           if n.startswith("compound_prompt_projections_image")})
        return params

    def trainable_state(self) -> dict[str, Tensor]:
        return {n: p.detach().float().cpu().contiguous() for n, p in self.stored_parameters().items()}

    def load_trainable_state(self, tensors: dict[str, Tensor]) -> None:
        load_parameters(self.stored_parameters(), tensors)

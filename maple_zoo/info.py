"""`maple-zoo info method NAME`: parameter counts and tensor shapes of a method on an architecture."""

from __future__ import annotations

from .backbones import BackboneConfig, load_backbone
from .config import parse_method
from .methods import get_method
from .prompting import PromptedCLIP
from .yamlio import apply_overrides


def method_info(name: str, arch: str, n_ctx: int | None = None, depth: int | None = None,
                overrides: list[str] | None = None) -> dict:
    cls = get_method(name)
    raw = {"name": name}
    fields = cls.Options.model_fields
    if n_ctx is not None:
        raw["n_ctx" if "n_ctx" in fields else "n_ctx_text"] = n_ctx
    if depth is not None:
        raw["depth" if "depth" in fields else "depth_text"] = depth
    raw = apply_overrides(raw, overrides or [], "--set")
    options = parse_method(raw, "command line", prefix=())
    bb = load_backbone(BackboneConfig(arch=arch, pretrained=None))
    method = cls(PromptedCLIP(bb.model, bb.tokenizer), ["class a", "class b"], options, "a photo of a {}.")
    return {
        "method": options.model_dump(mode="json"),
        "arch": arch,
        "trainable_params": method.num_trainable(),
        "declared_params": method.num_declared(),
        "tensors": {n: list(p.shape) for n, p in method.trainable_parameters().items()},
        "reference_optim": cls.reference_optim,
    }

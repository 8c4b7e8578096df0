"""`maple-zoo info method NAME`: parameter counts and tensor shapes of a method on an architecture."""

from __future__ import annotations

from .backbones import BackboneConfig, load_backbone
from .config import parse_method
from .errors import MapleZooError
from .methods import get_method
from .prompting import PromptedCLIP
from .yamlio import apply_overrides


def method_info(name: str, arch: str, n_ctx: int | None = None, depth: int | None = None,
                overrides: list[str] | None = None) -> dict:
    cls = get_method(name)
    raw = {"name": name}
    fields = cls.Options.model_fields
    for flag, key, value in (("--n-ctx", "n_ctx", n_ctx), ("--depth", "depth", depth)):
        if value is None:
            continue
        # one shared field (maple, comma, vpt...), else both towers' fields (ivlp)
        targets = [key] if key in fields else [f for f in (f"{key}_text", f"{key}_vision") if f in fields]
        if not targets:
            raise MapleZooError(f"method {name} has no {key.replace('_', '-')} option; drop {flag}")
        raw.update(dict.fromkeys(targets, value))
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

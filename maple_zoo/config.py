"""Typed configuration for one training run, parsed once from YAML at the edge.

    cfg = load_train_config("configs/eurosat.yaml", overrides=["optim.lr=0.002"])

Method options are validated by the chosen method's own pydantic model (methods/<name>.py), so
`method: {name: maple, depth: 9}` and `method: maple` both work and an unknown key names itself.
Optimiser fields left unset take the method's reference recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from .backbones import BackboneConfig
from .data.datasets import get_dataset
from .errors import MapleZooError
from .methods import MethodOptions, get_method
from .yamlio import LineMap, apply_overrides, read_yaml, validate


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    dataset: str = Field(description="registry name, e.g. eurosat, imagenet, world_shapes")
    root: Path = Field(description="data root holding the dataset folders in the CoOp layout")
    shots: int = Field(16, description="training images per class; <= 0 uses every image")
    num_workers: int = 0
    cache_images: bool = Field(True, description="decode and resize the few-shot train set once, augment tensors")
    crop_scale: tuple[float, float] | None = Field(
        None, description="training RandomResizedCrop area range; default: the dataset's (the reference 0.08-1)")

    @field_validator("crop_scale")
    @classmethod
    def _valid_scale(cls, scale: tuple[float, float] | None) -> tuple[float, float] | None:
        if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop_scale {list(scale)}: need 0 < low <= high <= 1")
        return scale

    def train_crop_scale(self) -> tuple[float, float]:
        return self.crop_scale or get_dataset(self.dataset).crop_scale

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        try:
            get_dataset(name)
        except MapleZooError as exc:
            raise ValueError(str(exc)) from None
        return name


class OptimConfig(Strict):
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: the method's reference)")
    epochs: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    eval_batch_size: int = 100

    def resolved(self, reference: dict) -> OptimConfig:
        return self.model_copy(update={k: v for k, v in reference.items() if getattr(self, k) is None})


class ValidationConfig(Strict):
    """Model selection on training-side data only (sweeps): never the test splits."""
    every_epoch: bool = Field(False, description="evaluate the few-shot val split after every epoch")
    pseudo_novel_fraction: float = Field(0.0, ge=0, lt=1, description="train classes held out as pseudo-novel")
    evaluate_test: bool = Field(True, description="evaluate the test splits at the end")


Protocol = Literal["base2novel", "fewshot", "cross_dataset", "domain_generalisation"]


class TrainConfig(Strict):
    method: SerializeAsAny[MethodOptions]
    backbone: BackboneConfig = BackboneConfig()
    data: DataConfig
    protocol: Protocol = "base2novel"
    targets: list[str] = Field(default_factory=list, description="evaluation datasets for cross_dataset / DG")

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, names: list[str]) -> list[str]:
        for name in names:
            DataConfig._known_dataset(name)
        return names
    optim: OptimConfig = OptimConfig()
    validation: ValidationConfig = ValidationConfig()
    seed: int = 1
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    output_dir: Path = Path("runs/train")

    @model_validator(mode="after")
    def _fill_reference_optim(self) -> TrainConfig:
        self.optim = self.optim.resolved(get_method(self.method.name).reference_optim)
        if self.protocol in ("cross_dataset", "domain_generalisation") and not self.targets:
            raise ValueError(f"protocol {self.protocol} needs a list of targets")
        return self


def parse_method(raw: Any, source: str, lines: LineMap | None = None, prefix: tuple = ("method",)) -> MethodOptions:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        where = f"{source}:{lines.line(prefix)}" if lines and lines.line(prefix) else source
        raise MapleZooError(f"{where}: method: give a method name, e.g. `method: maple` or `method: {{name: maple}}`")
    try:
        cls = get_method(str(raw["name"]))
    except MapleZooError as exc:
        line = lines.line(prefix + ("name",)) if lines else None
        raise MapleZooError(f"{source}{f':{line}' if line else ''}: method.name: {exc}") from None
    return validate(cls.Options, raw, source, lines, prefix)


def train_config_from_dict(data: dict, source: str = "<config>", lines: LineMap | None = None) -> TrainConfig:
    data = dict(data)
    method = parse_method(data.pop("method", None), source, lines)
    cfg = validate(TrainConfig, {**data, "method": {"name": method.name}}, source, lines)
    cfg.method = method
    return cfg


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise MapleZooError(f"{path}:1: expected a mapping at the top level")
    if overrides:
        data = apply_overrides(data, overrides)
    return train_config_from_dict(data, str(path), lines)

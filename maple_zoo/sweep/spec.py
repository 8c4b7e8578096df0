"""The sweep spec: one YAML file, validated once into a typed `SweepSpec`, W&B-sweep style.

    spec = load_spec("sweeps/eurosat.yaml", overrides=["budget.num_samples=4"])
    plan = spec.plan("eurosat")        # base TrainConfig + search space for one dataset

Search-space keys use the product's names (`prompt_depth`, `n_ctx`, `lr`, `epochs`, `batch_size`) and
are mapped onto the chosen method's own option names (MaPLe: `depth`; IVLP: `depth_text` and
`depth_vision`), or written as a dotted TrainConfig path (`method.ctx_init`, `optim.weight_decay`).
Every error names the file, the key and its line, and is raised before Ray or MLflow is touched:
the reference point and every corner of the search box are built into TrainConfigs up front.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..backbones import BackboneConfig
from ..config import Protocol, TrainConfig, parse_method, train_config_from_dict
from ..data.datasets import get_dataset
from ..errors import MapleZooError, did_you_mean
from ..methods import get_method
from ..yamlio import LineMap, read_mapping, validate


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Distribution = Literal["int_uniform", "uniform", "log_uniform", "categorical", "constant"]


class Param(Strict):
    """One search dimension, as in a W&B sweep file: `{min, max}`, `{values: [...]}` or `{value: x}`.

    Without `distribution`, integer bounds mean int_uniform, float bounds uniform, `values` categorical."""

    distribution: Distribution | None = None
    min: int | float | None = None  # int kept as int: integer bounds mean int_uniform
    max: int | float | None = None
    values: list[Any] | None = None
    value: Any = None

    @model_validator(mode="before")
    @classmethod
    def _scalar_is_constant(cls, raw: Any) -> Any:
        return raw if isinstance(raw, dict) else {"value": raw}

    @model_validator(mode="after")
    def _infer_and_check(self) -> Param:
        has_bounds = self.min is not None or self.max is not None
        if self.distribution is None:
            if self.values is not None:
                self.distribution = "categorical"
            elif has_bounds:
                ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.max))
                self.distribution = "int_uniform" if ints else "uniform"
            elif self.value is not None:
                self.distribution = "constant"
            else:
                raise ValueError("give min and max, values, or value")
        d = self.distribution
        if d in ("int_uniform", "uniform", "log_uniform"):
            if self.min is None or self.max is None:
                raise ValueError(f"{d} needs both min and max")
            if self.min > self.max:
                raise ValueError(f"min {self.min} is greater than max {self.max}")
            if d == "log_uniform" and self.min <= 0:
                raise ValueError(f"log_uniform needs min > 0, got {self.min}")
            if d == "int_uniform":
                if self.min != int(self.min) or self.max != int(self.max):
                    raise ValueError("int_uniform needs integer min and max")
                self.min, self.max = int(self.min), int(self.max)
        elif d == "categorical" and not self.values:
            raise ValueError("categorical needs a non-empty list of values")
        elif d == "constant" and self.value is None:
            raise ValueError("constant needs a value")
        return self

    def to_tune(self):
        from ray import tune

        d = self.distribution
        if d == "int_uniform":
            return tune.randint(self.min, self.max + 1)  # randint's upper bound is exclusive
        if d == "uniform":
            return tune.uniform(self.min, self.max)
        if d == "log_uniform":
            return tune.loguniform(self.min, self.max)
        if d == "categorical":
            return tune.choice(list(self.values))
        return self.value

    def corners(self) -> list[Any]:
        """The values that bound what a trial can draw (validated before anything starts)."""
        if self.distribution in ("int_uniform", "uniform", "log_uniform"):
            return [self.min, self.max]
        if self.distribution == "categorical":
            return list(self.values)
        return [self.value]

    def contains(self, v: Any) -> bool:
        if self.distribution in ("int_uniform", "uniform", "log_uniform"):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and self.min <= v <= self.max
        if self.distribution == "categorical":
            return v in self.values
        return v == self.value


class ObjectiveConfig(Strict):
    """What the search maximises: training-side validation metrics only, never a test split."""

    metric: Literal["val_hm", "val_acc", "val_pseudo_novel_acc"] = Field(
        "val_hm", description="val_acc: few-shot val of the trained classes; val_hm: HM with pseudo-novel")
    mode: Literal["max"] = "max"
    pseudo_novel_fraction: float = Field(0.25, ge=0, lt=1, description="trained classes held out as pseudo-novel")

    @field_validator("metric", mode="before")
    @classmethod
    def _no_test_metrics(cls, v: Any) -> Any:
        if isinstance(v, str) and v in {"hm", "base_acc", "novel_acc", "test_acc", "targets_mean_acc"}:
            raise ValueError(f"'{v}' is a test-split metric: selecting on it would peek at test data; "
                             "use val_hm, val_acc or val_pseudo_novel_acc")
        return v

    @model_validator(mode="after")
    def _needs_pseudo_novel(self) -> ObjectiveConfig:
        if self.metric != "val_acc" and self.pseudo_novel_fraction <= 0:
            raise ValueError(f"{self.metric} needs pseudo_novel_fraction > 0")
        return self


class SearchConfig(Strict):
    algorithm: Literal["optuna"] = "optuna"
    sampler: Literal["tpe"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(3, ge=0, description="random draws before TPE models the results")
    reference: dict[str, Any] | None = Field(
        None, description="first point evaluated (default: the method's reference configuration)")


class SchedulerConfig(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(2, gt=1)


class BudgetConfig(Strict):
    num_samples: int = Field(8, ge=1, description="trials in the search")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster fits")
    time_budget_s: float | None = Field(None, gt=0, description="stop starting new trials after this long")


class ResourcesConfig(Strict):
    workers_per_trial: int = Field(1, ge=1, description="DDP ranks per trial (Ray Train workers)")
    gpus_per_worker: float = Field(0, ge=0, description="0: CPU (gloo); fractions share a GPU between trials")
    cpus_per_worker: float = Field(1, gt=0)
    worker_max_failures: int = Field(2, ge=-1, description="Train-level retries of a killed worker (-1: forever)")
    trial_max_failures: int = Field(1, ge=0, description="Tune-level retries of a failed trial")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class StorageS3(Strict):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL (MinIO, Ceph, moto)")
    region: str | None = None


class StorageConfig(Strict):
    """Ray's experiment storage, spelt as in maple-zoo.yaml; flags and the environment win (settings.py)."""

    path: str | None = Field(None, description="local folder or s3://bucket/prefix (default: the sweep folder)")
    s3: StorageS3 = StorageS3()


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite:///./.maple-zoo/mlflow.db)")
    experiment: str | None = Field(None, description="MLflow experiment (default: the sweep name)")


class PromoteConfig(Strict):
    enabled: bool = False
    name: str | None = Field(None, description="zoo entry name (default: <dataset>-<shots>shot)")
    alias: str | None = "champion"


class SweepSpec(Strict):
    name: str | None = Field(None, description="stable sweep name (default: the file's stem); resume uses it")
    description: str = ""
    dataset: str | list[str]
    data_root: str
    protocol: Protocol = "base2novel"
    targets: list[str] = Field(default_factory=list, description="evaluation datasets for cross_dataset / DG")
    shots: int = 16
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3],
                             description="the search uses the first; the chosen configuration is re-run on all")
    method: str | dict[str, Any] = "maple"
    backbone: BackboneConfig = BackboneConfig()
    train: dict[str, Any] = Field(default_factory=dict, description="other TrainConfig keys (optim, device, ...)")
    parameters: dict[str, Param]
    objective: ObjectiveConfig = ObjectiveConfig()
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names folders and runs)")
        return v

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str | list[str]) -> str | list[str]:
        for name in [v] if isinstance(v, str) else v:
            try:
                get_dataset(name)
            except MapleZooError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(v, list) and not v:
            raise ValueError("give at least one dataset")
        return v

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("give one or more distinct seeds")
        return v

    @field_validator("parameters")
    @classmethod
    def _some_parameters(cls, v: dict) -> dict:
        if not v:
            raise ValueError("give at least one parameter to search")
        return v

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


# ---------------------------------------------------------------------------------------------- plan

# product name -> the option names a method may use for it, most specific first
METHOD_ALIASES = {
    "prompt_depth": ("prompt_depth", "depth", "depth_text", "depth_vision"),
    "n_ctx": ("n_ctx", "n_ctx_text", "n_ctx_vision"),
}
OPTIM_ALIASES = {"lr": "lr", "epochs": "epochs", "batch_size": "batch_size", "batch": "batch_size"}


@dataclass(frozen=True)
class DatasetPlan:
    """Everything the Ray layer needs for one dataset's search, as plain typed values."""

    dataset: str
    base_config: dict  # a valid TrainConfig as JSON-able dict (trial params are written into it)
    param_paths: dict[str, tuple[tuple[str, ...], ...]]  # spec key -> config paths it sets
    reference: dict[str, Any]
    max_epochs: int

    def trial_config(self, params: dict[str, Any]) -> dict:
        return apply_params(self.base_config, self.param_paths, params)


def apply_params(base: dict, paths: dict[str, tuple[tuple[str, ...], ...]], params: dict[str, Any]) -> dict:
    """A copy of `base` with each param written at its config path(s)."""
    import copy

    cfg = copy.deepcopy(base)
    for key, value in params.items():
        for path in paths[key]:
            node = cfg
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return cfg


class Spec:
    """A validated SweepSpec plus where it came from (for errors that name lines after validation)."""

    def __init__(self, model: SweepSpec, source: str, lines: LineMap | None, raw: dict):
        self.model, self.source, self.lines, self.raw = model, source, lines, raw
        self.name = model.name or Path(source).stem
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.name):
            raise MapleZooError(f"{source}: name: the file name '{self.name}' cannot name a sweep; set `name:`")
        self.plans = {ds: self._plan(ds) for ds in model.datasets}

    def error(self, path: tuple, message: str) -> MapleZooError:
        line = self.lines.line(path) if self.lines else None
        key = ".".join(str(p) for p in path)
        return MapleZooError(f"{self.source}{f':{line}' if line else ''}: {key}: {message}")

    # ------------------------------------------------------------------ building one dataset's plan
    def _param_paths(self, method_fields: set[str], method_name: str) -> dict[str, tuple[tuple[str, ...], ...]]:
        paths: dict[str, tuple[tuple[str, ...], ...]] = {}
        for key in self.model.parameters:
            if key in METHOD_ALIASES:
                fields = [f for f in METHOD_ALIASES[key] if f in method_fields]
                # IVLP has depth_text + depth_vision: one product knob drives both sides
                if fields and fields[0] in (key, "depth", "n_ctx"):
                    fields = fields[:1]
                if not fields:
                    raise self.error(("parameters", key), f"method {method_name} has no {key} option")
                paths[key] = tuple(("method", f) for f in fields)
            elif key in OPTIM_ALIASES:
                paths[key] = (("optim", OPTIM_ALIASES[key]),)
            elif "." in key and key.split(".")[0] in ("method", "optim", "data", "validation"):
                paths[key] = (tuple(key.split(".")),)
            elif key == "seed":
                raise self.error(("parameters", key), "seeds are not searched: list them in `seeds`")
            else:
                known = sorted({*METHOD_ALIASES, *OPTIM_ALIASES})
                raise self.error(("parameters", key), f"unknown parameter; known: {', '.join(known)}, "
                                                      "or a dotted path such as method.ctx_init")
        return paths

    def _reference(self, method, paths) -> dict[str, Any]:
        """The first point: the method's own defaults (MaPLe: depth 9, n_ctx 2, lr 0.0035), then
        `search.reference` on top; categorical/constant parameters fall back to their first value."""
        m = self.model
        defaults = {**method.reference_optim, **method.Options().model_dump()}
        ref: dict[str, Any] = {}
        for key, key_paths in paths.items():
            leaf = key_paths[0][-1]
            if key_paths[0][0] in ("method", "optim") and defaults.get(leaf) is not None:
                ref[key] = defaults[leaf]
        for key, value in (m.search.reference or {}).items():
            if key not in m.parameters:
                raise self.error(("search", "reference", key), "not a key of `parameters`")
            ref[key] = value
        for key, p in m.parameters.items():
            if key not in ref and p.distribution in ("categorical", "constant"):
                ref[key] = p.corners()[0]
            if key not in ref:
                raise self.error(("search", "reference"), f"give a reference value for {key}")
            if p.distribution == "int_uniform" and isinstance(ref[key], float) and ref[key].is_integer():
                ref[key] = int(ref[key])
            if not p.contains(ref[key]):
                given = m.search.reference and key in m.search.reference
                where = ("search", "reference", key) if given else ("parameters", key)
                raise self.error(where, f"reference value {ref[key]!r} is outside the search space"
                                        + ("" if given else " (set search.reference)"))
        return ref

    def _check_depth_fits(self, paths) -> None:
        """prompt_depth cannot exceed the backbone's layer count (read from open_clip's config, no weights)."""
        if "prompt_depth" not in paths:
            return
        import open_clip

        cfg = open_clip.get_model_config(self.model.backbone.arch)
        if not cfg:
            return  # an arch open_clip does not know is reported by the backbone loader
        layers = min(cfg["vision_cfg"].get("layers", 12), cfg["text_cfg"].get("layers", 12))
        if isinstance(layers, (list, tuple)):
            return
        top = max(v for v in self.model.parameters["prompt_depth"].corners())
        if top > layers:
            raise self.error(("parameters", "prompt_depth"),
                             f"max {top} exceeds the {layers} layers of {self.model.backbone.arch}")

    def _plan(self, dataset: str) -> DatasetPlan:
        m = self.model
        method_opts = parse_method(m.method, self.source, self.lines)
        method = get_method(method_opts.name)
        paths = self._param_paths(set(method.Options.model_fields), method_opts.name)
        self._check_depth_fits(paths)
        train = dict(m.train)
        for key in ("method", "backbone", "protocol", "targets", "seed", "output_dir"):
            if key in train:
                raise self.error(("train", key), "set at the top level of the sweep file, not under train")
        if "validation" in train:
            raise self.error(("train", "validation"), "set by `objective` (trials never evaluate test splits)")
        if any(k in train.get("data", {}) for k in ("dataset", "root", "shots")):
            raise self.error(("train", "data"), "dataset, data_root and shots are top-level keys")
        validation = {"every_epoch": True, "pseudo_novel_fraction": m.objective.pseudo_novel_fraction,
                      "evaluate_test": False}  # trials never touch a test split
        if m.objective.metric == "val_acc":
            validation["pseudo_novel_fraction"] = 0.0
        base = {
            **train,
            "method": method_opts.model_dump(mode="json"),
            "backbone": m.backbone.model_dump(mode="json"),
            "data": {**train.get("data", {}), "dataset": dataset, "root": expand_vars(m.data_root, self, ("data_root",)),
                     "shots": m.shots},
            "protocol": m.protocol,
            "targets": list(m.targets),
            "seed": m.seeds[0],
            "validation": validation,
        }
        built = self._trial(base, {}, ("train",))
        base = built.model_dump(mode="json")
        base.pop("output_dir", None)
        ref = self._reference(method, paths)
        # every corner of the search box (and the reference) must be a valid TrainConfig
        keys = list(m.parameters)
        for combo in itertools.islice(itertools.product(*(m.parameters[k].corners() for k in keys)), 256):
            self._trial(base, dict(zip(keys, combo)), ("parameters",), paths)
        self._trial(base, ref, ("search", "reference"), paths)
        epochs = [base["optim"]["epochs"]]
        if "epochs" in m.parameters:
            epochs = [int(v) for v in m.parameters["epochs"].corners()]
        return DatasetPlan(dataset, base, paths, ref, max(epochs))

    def _trial(self, base: dict, params: dict, where: tuple, paths=None) -> TrainConfig:
        cfg = apply_params(base, paths or {}, params) if params else base
        try:
            return train_config_from_dict(cfg, "<trial>")
        except MapleZooError as exc:
            msg = str(exc).removeprefix("<trial>: ")
            key, _, detail = msg.partition(": ")
            if params:
                culprit = [k for k, ps in (paths or {}).items() if tuple(key.split(".")) in ps]
                if culprit and where == ("parameters",):
                    where = ("parameters", culprit[0])
                raise self.error(where, f"trial {params} is not a valid training config: {msg}") from None
            raise self.error(self._spec_path(tuple(key.split("."))), detail or msg) from None

    def _spec_path(self, cfg_path: tuple) -> tuple:
        """Where a TrainConfig key was written in the sweep file (for error lines)."""
        head = cfg_path[0]
        if cfg_path[:2] in (("data", "root"), ("data", "shots"), ("data", "dataset")):
            return {"root": ("data_root",), "shots": ("shots",), "dataset": ("dataset",)}[cfg_path[1]]
        if head in ("method", "backbone", "protocol", "targets"):
            return cfg_path
        return ("train", *cfg_path)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, spec: Spec, path: tuple) -> str:
    """`${DATA}` / `${DATA:-./data}` from the environment, then `~`; an unset variable is an error."""

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise spec.error(path, f"environment variable {name} is not set (or write ${{{name}:-default}})")

    return os.path.expanduser(_VAR.sub(sub, text))


def spec_settings(spec: Spec) -> dict[str, tuple[Any, str]]:
    """The deployment settings this sweep file sets, with where (for settings.load_settings)."""
    m = spec.model
    found = {"tracking_uri": (m.tracking.uri, ("tracking", "uri")),
             "experiment": (m.tracking.experiment, ("tracking", "experiment")),
             "storage_path": (m.storage.path, ("storage", "path")),
             "storage_endpoint_url": (m.storage.s3.endpoint_url, ("storage", "s3", "endpoint_url")),
             "storage_region": (m.storage.s3.region, ("storage", "s3", "region"))}
    out = {}
    for key, (value, path) in found.items():
        if value is not None:
            line = spec.lines.line(path) if spec.lines else None
            out[key] = (value, f"{spec.source}{f':{line}' if line else ''} {'.'.join(path)}")
    return out


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    data, lines = read_mapping(path, overrides)
    for key in data:  # a misspelt key first: otherwise it surfaces as "required key is missing"
        if key not in SweepSpec.model_fields:
            line = lines.line((key,))
            raise MapleZooError(f"{path}{f':{line}' if line else ''}: {key}: unknown key"
                                f"{did_you_mean(str(key), SweepSpec.model_fields)}")
    model = validate(SweepSpec, data, str(path), lines)
    spec = Spec(model, str(path), lines, data)
    if model.promote.name and len(model.datasets) > 1:
        raise spec.error(("promote", "name"), "one name cannot hold several datasets; leave it out "
                                              "(each dataset is promoted as <dataset>-<shots>shot)")
    if model.promote.enabled and model.promote.name:
        from ..zoo.names import validate_name

        try:
            validate_name(model.promote.name)
        except MapleZooError as exc:
            raise spec.error(("promote", "name"), str(exc)) from None
    return spec


"""One training run from a TrainConfig, end to end: backbone -> data -> method -> train -> evaluate -> checkpoint.

    result = run_training(cfg)                      # `maple-zoo train`
    run_training(cfg, RunHooks(on_epoch=report))    # a Ray Train worker reports each epoch

Protocols: base2novel (train on the base half, test base and novel, HM), fewshot (all classes),
cross_dataset / domain_generalisation (train on the source, test each target zero-shot).
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..backbones import Backbone, load_backbone
from ..config import TrainConfig
from ..data.datasets import get_dataset
from ..fsutil import atomic_write_text
from ..methods import PromptMethod, get_method
from ..progress import Reporter
from ..prompting import PromptedCLIP
from . import checkpoint as ckpt
from . import distributed
from .data import ClassSet, class_set, eval_loader, holdout, load_dataset, train_loader
from .device import resolve_device, resolve_precision
from .evaluate import evaluate
from .metrics import harmonic_mean
from .train import Trainer


@dataclass
class RunHooks:
    # called on every rank after each epoch with the metrics and, when asked, a checkpoint folder
    on_epoch: Callable[[dict, Path | None], None] | None = None
    checkpoint_every_epoch: bool = False
    resume_from: Path | None = None  # a checkpoint folder written by this engine (with optimizer state)
    reporter: Reporter = field(default_factory=Reporter)


@dataclass
class RunResult:
    metrics: dict
    checkpoint: Path | None
    history: list[dict]


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_method(cfg: TrainConfig, clip: PromptedCLIP, classnames: list[str], template: str) -> PromptMethod:
    return get_method(cfg.method.name)(clip, classnames, cfg.method, template)


def make_card(cfg: TrainConfig, backbone: Backbone, method: PromptMethod, template: str, **extra) -> dict:
    return {
        "method": cfg.method.model_dump(mode="json"),
        "backbone": backbone.describe(),
        "dataset": cfg.data.dataset,
        "shots": cfg.data.shots,
        "protocol": cfg.protocol,
        "classnames": method.classnames,
        "template": template,
        "seed": cfg.seed,
        "optim": cfg.optim.model_dump(mode="json"),
        "trainable_params": method.num_trainable(),
        "code_version": code_version(),
        **extra,
    }


class Run:
    """State shared by the steps of one run (kept small: everything derives from cfg)."""

    def __init__(self, cfg: TrainConfig, hooks: RunHooks):
        self.cfg, self.hooks = cfg, hooks
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.rank, self.world = distributed.world()
        self.say = hooks.reporter if self.rank == 0 else Reporter(quiet=True)
        seed_everything(cfg.seed)
        self.backbone = load_backbone(cfg.backbone, self.device)
        self.clip = PromptedCLIP(self.backbone.model, self.backbone.tokenizer)
        self.info = get_dataset(cfg.data.dataset)
        self.template = self.info.template

    def loader(self, items, train: bool = False):
        if train:
            bar = self.say.task("decoding few-shot images", total=len(items)) if self.cfg.data.cache_images else None
            return train_loader(items, self.backbone, self.cfg.optim.batch_size, self.cfg.seed, self.cfg.data,
                                progress=bar.update_to if bar else None)
        return eval_loader(items, self.backbone, self.cfg.optim.eval_batch_size, self.cfg.data)

    def score(self, method: PromptMethod, items, classnames: list[str], template: str | None = None) -> dict:
        method.set_classnames(classnames, template)
        return evaluate(method, self.loader(items), self.device, self.precision)


def _training_classes(run: Run) -> tuple[ClassSet, ClassSet | None]:
    cfg = run.cfg
    splits = load_dataset(cfg.data, seed=cfg.seed)
    subsample = "base" if cfg.protocol == "base2novel" else "all"
    cs = class_set(splits, subsample)
    if cfg.validation.pseudo_novel_fraction > 0:
        return holdout(cs, cfg.validation.pseudo_novel_fraction)
    return cs, None


def _validate(run: Run, method: PromptMethod, trained: ClassSet, pseudo: ClassSet | None) -> dict:
    out = {}
    if trained.val:
        out["val_acc"] = run.score(method, trained.val, trained.classnames)["accuracy"]
    if pseudo is not None and pseudo.val:
        out["val_pseudo_novel_acc"] = run.score(method, pseudo.val, pseudo.classnames)["accuracy"]
        out["val_hm"] = harmonic_mean(out.get("val_acc", 0.0), out["val_pseudo_novel_acc"])
    method.set_classnames(trained.classnames)
    return out


def _test(run: Run, method: PromptMethod) -> dict:
    cfg, out = run.cfg, {}
    if cfg.protocol == "base2novel":
        splits = load_dataset(cfg.data, seed=cfg.seed)
        for half, key in (("base", "base"), ("new", "novel")):
            cs = class_set(splits, half)
            m = run.score(method, cs.test, cs.classnames)
            out[f"{key}_acc"], out[f"{key}_macro_f1"] = m["accuracy"], m["macro_f1"]
        out["hm"] = harmonic_mean(out["base_acc"], out["novel_acc"])
    else:
        for name in [cfg.data.dataset, *cfg.targets]:
            splits = load_dataset(cfg.data, name=name, seed=cfg.seed)
            cs = class_set(splits, "all")
            m = run.score(method, cs.test, cs.classnames, get_dataset(name).template)
            out[f"{name}_acc"], out[f"{name}_macro_f1"] = m["accuracy"], m["macro_f1"]
        if cfg.targets:
            out["targets_mean_acc"] = sum(out[f"{t}_acc"] for t in cfg.targets) / len(cfg.targets)
        else:
            out["test_acc"] = out[f"{cfg.data.dataset}_acc"]
    return out


def run_training(cfg: TrainConfig, hooks: RunHooks | None = None) -> RunResult:
    hooks = hooks or RunHooks()
    run = Run(cfg, hooks)
    say = run.say
    trained, pseudo = _training_classes(run)
    method = build_method(cfg, run.clip, trained.classnames, run.template)
    method.to(run.device)
    say.line(f"{cfg.method.name} on {cfg.data.dataset} ({len(trained.classnames)} classes, {len(trained.train)} "
             f"train images), {method.num_trainable():,} trainable parameters, {run.device} {run.precision}")
    epochs = cfg.optim.epochs if method.num_trainable() else 0  # zero-shot methods only evaluate
    trainer = Trainer(method, cfg.optim, run.device, run.precision) if epochs else None
    start_epoch = 0
    if hooks.resume_from is not None and trainer is not None:
        card = ckpt.load_card(hooks.resume_from)
        method.load_trainable_state(ckpt.load_tensors(hooks.resume_from))
        trainer.load_optimizer_state(ckpt.load_tensors(hooks.resume_from, ckpt.OPTIMIZER))
        start_epoch = int(card.get("epoch", 0))
        say.line(f"resumed from {hooks.resume_from} after epoch {start_epoch}")
    history: list[dict] = []
    loader = run.loader(trained.train, train=True) if epochs > start_epoch else None
    for epoch in range(start_epoch, epochs):
        bar = say.task(f"epoch {epoch + 1}/{epochs}", total=len(loader))
        result = trainer.train_epoch(loader, epoch, on_step=lambda s, n, loss, bar=bar: bar.update_to(s, loss=loss))
        metrics = {"epoch": result.epoch, "lr": result.lr, "train_loss": result.loss, "train_acc": result.train_acc,
                   "epoch_seconds": result.seconds, "data_wait_fraction": result.data_wait_fraction}
        if cfg.validation.every_epoch:
            metrics.update(_validate(run, method, trained, pseudo))
        bar.done(", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch",)))
        history.append(metrics)
        if hooks.on_epoch is not None:
            folder = None
            if hooks.checkpoint_every_epoch:
                folder = Path(tempfile.mkdtemp(prefix="maple-zoo-ckpt-")) / "checkpoint"
                ckpt.save_checkpoint(folder, method.trainable_state(),
                                     make_card(cfg, run.backbone, method, run.template, epoch=result.epoch, metrics=metrics),
                                     trainer.optimizer_state())
            hooks.on_epoch(metrics, folder)
    final = dict(history[-1]) if history else {}
    if not history and cfg.validation.every_epoch:  # nothing trained: validate once for the sweep objective
        final.update(_validate(run, method, trained, pseudo))
        if hooks.on_epoch is not None:
            hooks.on_epoch({"epoch": 0, **final}, None)
    if cfg.validation.evaluate_test:
        final.update(_test(run, method))
        method.set_classnames(trained.classnames)
    checkpoint = None
    if run.rank == 0:
        out = Path(cfg.output_dir)
        checkpoint = ckpt.save_checkpoint(out / "checkpoint", method.trainable_state(),
                                          make_card(cfg, run.backbone, method, run.template,
                                                    epoch=epochs, metrics=final))
        atomic_write_text(out / "metrics.json", json.dumps({"final": final, "history": history}, indent=2))
        atomic_write_text(out / "config.json", cfg.model_dump_json(indent=2))
    return RunResult(final, checkpoint, history)

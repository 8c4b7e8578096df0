"""Core commands: train, eval, info, methods, bench. Each parses, calls one function, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .errors import MapleZooError
from .zoo.commands import ConfigOpt, EndpointOpt, StoreOpt


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def train(
    config: Annotated[Path, typer.Argument(help="train config YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: optim.lr=0.002")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="where the checkpoint and metrics go")] = None,
) -> None:
    """Train one run in-process (base-to-novel by default) and evaluate it."""
    from .config import load_train_config
    from .engine.run import run_training

    overrides = list(set_ or []) + ([f"output_dir={output_dir}"] if output_dir else [])
    cfg = load_train_config(config, overrides)
    result = run_training(cfg)
    typer.echo(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}))
    typer.echo(f"checkpoint: {result.checkpoint}")


def resolve_checkpoint(ref: str, store=None, endpoint_url=None, config=None, offline: bool = False) -> Path:
    """A checkpoint folder given directly, or a zoo entry NAME[@vN] pulled (verified) into the cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    from .zoo import pull
    from .zoo.commands import config_from_flags

    return pull(ref, config=config_from_flags(store, endpoint_url, config), offline=offline).path


def eval_(
    checkpoint: Annotated[str, typer.Argument(help="checkpoint folder, or a zoo entry NAME[@vN]")],
    dataset: Annotated[str, typer.Option(help="dataset registry name")],
    root: Annotated[Path, typer.Option(help="data root")],
    split: Annotated[str, typer.Option(help="base | novel | all")] = "all",
    seed: int = 1,
    batch_size: int = 100,
    device: str = "auto",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    store: StoreOpt = None,
    endpoint_url: EndpointOpt = None,
    config: ConfigOpt = None,
    offline: Annotated[bool, typer.Option(help="use the zoo cache only")] = False,
) -> None:
    """Evaluate a checkpoint or zoo entry on a dataset's test split (base, novel or all classes)."""
    from .config import DataConfig
    from .data.datasets import get_dataset
    from .engine.data import class_set, eval_loader, load_dataset
    from .engine.device import resolve_device, resolve_precision
    from .engine.evaluate import evaluate
    from .engine.restore import load_method
    from .yamlio import validate

    subsample = {"base": "base", "novel": "new", "new": "new", "all": "all"}.get(split)
    if subsample is None:
        raise MapleZooError(f"--split must be base, novel or all, not '{split}'")
    data = validate(DataConfig, {"dataset": dataset, "root": root}, "command line", prefix=("--",))
    cs = class_set(load_dataset(data, seed=seed), subsample)
    dev = resolve_device(device)
    folder = resolve_checkpoint(checkpoint, store, endpoint_url, config, offline)
    method, card, bb = load_method(folder, dev, cs.classnames, get_dataset(dataset).template)
    loader = eval_loader(cs.test, bb, batch_size, data)
    metrics = evaluate(method, loader, dev, resolve_precision("auto", dev))
    out = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "classes": len(cs.classnames), **metrics}
    _print_json(out) if as_json else typer.echo(
        f"{dataset} {split}: accuracy {metrics['accuracy']:.2f}%  macro-F1 {metrics['macro_f1']:.2f}%  ({metrics['n']} images)")


def predict(
    ref: Annotated[str, typer.Argument(help="zoo entry NAME[@vN] or a checkpoint folder")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    top_k: Annotated[int, typer.Option("--top-k")] = 3,
    classes: Annotated[str | None, typer.Option(help="comma-separated class names (default: the entry's)")] = None,
    device: str = "auto",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    store: StoreOpt = None,
    endpoint_url: EndpointOpt = None,
    config: ConfigOpt = None,
    offline: Annotated[bool, typer.Option(help="use the zoo cache only")] = False,
) -> None:
    """Classify images with a zoo entry's prompts: top-k class names and probabilities."""
    from .predict import predict_images

    folder = resolve_checkpoint(ref, store, endpoint_url, config, offline)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    results = predict_images(folder, images, top_k=top_k, classnames=names, device=device)
    if as_json:
        _print_json(results)
        return
    for item in results:
        typer.echo(item["image"])
        for row in item["top"]:
            typer.echo(f"  {row['score']:6.2%}  {row['class']}")


def info(
    kind: Annotated[str, typer.Argument(help="'method'")],
    name: Annotated[str, typer.Argument(help="method name, e.g. maple")],
    arch: str = "ViT-B-16",
    n_ctx: Annotated[int | None, typer.Option("--n-ctx")] = None,
    depth: int | None = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="other method options: generator_grad=false")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Describe a method on an architecture: trainable parameters and tensor shapes (random weights)."""
    from .info import method_info

    if kind != "method":
        raise MapleZooError(f"info supports 'method', not '{kind}'")
    out = method_info(name, arch, n_ctx=n_ctx, depth=depth, overrides=list(set_ or []))
    if as_json:
        _print_json(out)
    else:
        typer.echo(f"{name} on {arch}: {out['trainable_params']:,} trainable parameters "
                   f"({out['declared_params']:,} declared)")
        for tensor, shape in out["tensors"].items():
            typer.echo(f"  {tensor}: {shape}")


def methods() -> None:
    """List the available methods with their reference training recipe."""
    import sys

    from .methods import get_method, method_names

    for name in method_names():
        m = get_method(name)
        doc = (sys.modules[m.__module__].__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:<14} lr {m.reference_optim['lr']:<7} epochs {m.reference_optim['epochs']:<4} "
                   f"batch {m.reference_optim['batch_size']:<3} {doc}")


def register(app: typer.Typer) -> None:
    from .bench import bench_app
    from .world_commands import register as register_world

    app.command("train")(train)
    app.command("eval")(eval_)
    app.command("predict")(predict)
    app.command("info")(info)
    app.command("methods")(methods)
    app.add_typer(bench_app, name="bench")
    register_world(app)

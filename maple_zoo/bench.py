"""Benchmarks printing JSON: `maple-zoo bench train-step`, `bench eval` and `bench matmul`.

Random weights (the cost does not depend on them). `--compare` also runs the plain configuration of
our own code - full 77-token text, open_clip's own blocks, text features recomputed per batch, fp32 -
in the same process,
and prints the speed-up, so results compare across machines as ratios.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Annotated

import torch
import typer

from .backbones import BackboneConfig, load_backbone
from .config import parse_method
from .engine.device import autocast, resolve_device, resolve_precision
from .methods import get_method
from .prompting import PromptedCLIP

bench_app = typer.Typer(help="Speed and memory benchmarks (JSON).", no_args_is_help=True)

# realistic class-name lengths (2-4 BPE tokens), deterministic
_WORDS = ["annual crop land", "forest", "herbaceous vegetation", "highway or road", "industrial buildings",
          "pasture land", "permanent crop", "residential buildings", "river", "sea or lake"]


def classnames(n: int) -> list[str]:
    return [f"{_WORDS[i % len(_WORDS)]} {i // len(_WORDS)}" if i >= len(_WORDS) else _WORDS[i] for i in range(n)]


def _build(method: str, arch: str, n_classes: int, device: torch.device, n_ctx, depth):
    bb = load_backbone(BackboneConfig(arch=arch, pretrained=None), device)
    cls = get_method(method)
    raw = {"name": method, **({"n_ctx": n_ctx} if n_ctx else {}), **({"depth": depth} if depth else {})}
    m = cls(PromptedCLIP(bb.model, bb.tokenizer), classnames(n_classes), parse_method(raw, "bench", prefix=()),
            "a photo of a {}.")
    return m.to(device), bb


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _env(device: torch.device, precision: str) -> dict:
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": precision,
    }


def _train_batch(m, bb, batch: int, device, plain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch `m` to the plain or optimised path and make a random batch (images, labels) for it."""
    m.truncate_text = m.clip.fast = not plain
    images = torch.randn(batch, 3, bb.image_size, bb.image_size, device=device)
    return images, torch.arange(batch, device=device) % len(m.classnames)


def time_train_steps(m, bb, batch: int, steps: int, device, precision: str, plain: bool) -> list[float]:
    images, labels = _train_batch(m, bb, batch, device, plain)
    params = list(m.trainable_parameters().values())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    times = []
    for i in range(steps + 1):  # one untimed warm-up step
        _sync(device)
        t = time.perf_counter()
        with autocast(device, "fp32" if plain else precision):
            loss, _ = m.training_loss(images, labels)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def time_eval(m, bb, batch: int, batches: int, device, precision: str, plain: bool) -> float:
    """Seconds to classify `batches` batches; the optimised path encodes the class prompts once."""
    m.truncate_text = m.clip.fast = not plain
    m.eval()
    images = torch.randn(batch, 3, bb.image_size, bb.image_size, device=device)
    with autocast(device, "fp32" if plain else precision):
        m.logits_with(images[:1], m.text_features())  # warm-up
        _sync(device)
        t = time.perf_counter()
        text = None if plain else m.text_features()
        for _ in range(batches):
            m(images) if plain else m.logits_with(images, text)
        _sync(device)
    return time.perf_counter() - t


def count_train_gflop(m, bb, batch: int, device, precision: str, plain: bool) -> float:
    """GFLOP of one training step (matmuls, convolutions and attention, forward and backward), counted by
    torch's FlopCounterMode on an untimed step: the work a machine's matmul ceiling is compared with."""
    from torch.utils.flop_counter import FlopCounterMode

    images, labels = _train_batch(m, bb, batch, device, plain)
    with FlopCounterMode(display=False) as counter, autocast(device, "fp32" if plain else precision):
        loss, _ = m.training_loss(images, labels)
        loss.float().backward()
    m.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def _fig(x: float, digits: int = 5) -> float:
    """A measured figure to `digits` significant digits: as precise for a 8 ms tiny-model step as for a 2 s one."""
    return float(f"{x:.{digits}g}")


def _settings(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def _report(out: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            typer.echo(f"{k}: {v}")


Method = Annotated[str, typer.Option(help="method name")]


@bench_app.command("train-step")
def train_step(
    arch: str = "ViT-B-16", classes: int = 10, batch: int = 4, steps: int = 3, device: str = "cpu",
    method: Method = "maple", n_ctx: Annotated[int | None, typer.Option("--n-ctx")] = None,
    depth: int | None = None, precision: str = "auto", threads: int | None = None,
    compare: Annotated[bool, typer.Option(help="also time the plain path and print the ratio")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Seconds per training step (forward, loss, backward, SGD step) after one warm-up step."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    m, bb = _build(method, arch, classes, dev, n_ctx, depth)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = time_train_steps(m, bb, batch, steps, dev, prec, plain=False)
    sec = statistics.median(times)
    out = {"benchmark": "train-step", **_settings(method=method, arch=arch, classes=classes, batch=batch,
                                                  steps=steps, n_ctx=n_ctx, depth=depth),
           **_env(dev, prec), "seconds_per_step": _fig(sec), "images_per_second": _fig(batch / sec),
           "step_times": [_fig(t) for t in times]}
    if dev.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    gflop = count_train_gflop(m, bb, batch, dev, prec, plain=False)
    out.update({"gflop_per_step": _fig(gflop), "gflop_per_second": _fig(gflop / sec)})
    if compare:
        plain = statistics.median(time_train_steps(m, bb, batch, steps, dev, prec, plain=True))
        out.update({"plain_seconds_per_step": _fig(plain), "speedup_vs_plain": _fig(plain / sec),
                    "plain_gflop_per_step": _fig(count_train_gflop(m, bb, batch, dev, prec, plain=True))})
    _report(out, as_json)


@bench_app.command("eval")
def eval_(
    arch: str = "ViT-B-16", classes: int = 1000, batch: int = 100, batches: int = 2, device: str = "cpu",
    method: Method = "maple", n_ctx: Annotated[int | None, typer.Option("--n-ctx")] = None,
    depth: int | None = None, precision: str = "auto", threads: int | None = None,
    compare: Annotated[bool, typer.Option(help="also time the plain path and print the ratio")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evaluation throughput (images per second) over a label set of `classes` names."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    m, bb = _build(method, arch, classes, dev, n_ctx, depth)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sec = time_eval(m, bb, batch, batches, dev, prec, plain=False)
    n = batch * batches
    out = {"benchmark": "eval", **_settings(method=method, arch=arch, classes=classes, batch=batch, batches=batches),
           **_env(dev, prec), "seconds": _fig(sec), "images_per_second": _fig(n / sec)}
    if dev.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    if compare:
        plain = time_eval(m, bb, batch, batches, dev, prec, plain=True)
        out.update({"plain_images_per_second": _fig(n / plain), "speedup_vs_plain": _fig(plain / sec)})
    _report(out, as_json)


@bench_app.command("matmul")
def matmul(
    tokens: Annotated[int, typer.Option(help="rows: images x tokens (ViT-B/16 at batch 4: 4 x 199)")] = 796,
    width: Annotated[int, typer.Option(help="model width")] = 768,
    mlp: Annotated[int, typer.Option(help="MLP hidden width")] = 3072,
    device: str = "cpu", threads: int | None = None, repeats: int = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """This machine's matmul ceiling (GFLOP/s, fp32 and bf16) at a transformer block's shapes: dividing a
    step's `gflop_per_step` by it gives the fastest that step can run exactly at that precision."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    shapes = {"qkv": (tokens, width, 3 * width), "out_proj": (tokens, width, width), "mlp_fc": (tokens, width, mlp),
              "mlp_proj": (tokens, mlp, width)}
    out = {"benchmark": "matmul", "tokens": tokens, "width": width, "mlp": mlp, **_env(dev, "fp32, bf16")}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rates = {}
        for name, (m, k, n) in shapes.items():
            a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
            a @ b  # warm-up
            _sync(dev)
            t = time.perf_counter()
            for _ in range(repeats):
                a @ b
            _sync(dev)
            rates[name] = _fig(2 * m * k * n * repeats / (time.perf_counter() - t) / 1e9)
        out[f"{label}_gflop_per_second"] = rates
        out[f"{label}_best_gflop_per_second"] = max(rates.values())
    _report(out, as_json)

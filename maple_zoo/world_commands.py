"""`maple-zoo world build|report` and `maple-zoo backbone build procedural`: the offline world on demand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

world_app = typer.Typer(help="The offline procedural world (datasets in the CoOp layout).", no_args_is_help=True)
backbone_app = typer.Typer(help="Backbones maple-zoo builds itself.", no_args_is_help=True)


@world_app.command("build")
def build(root: Annotated[Path | None, typer.Option(help="where to write it (default: the user cache)")] = None,
          seed: int = 0, scale: str = "full") -> None:
    """Write the world's datasets (reused when already complete) and print the data root."""
    from .data.world import build_world

    typer.echo(build_world(root, seed=seed, scale=scale))


@world_app.command("report")
def report(seeds: Annotated[list[int], typer.Option("--seed", help="repeat for several seeds")] = [1, 2, 3],  # noqa: B006
           out: Annotated[Path | None, typer.Option(help="also write the markdown table here")] = None,
           runs_dir: Path = Path("runs/world-report"), as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Measure zero-shot CLIP vs MaPLe (base / novel / HM) on every world dataset, over seeds."""
    from .world_report import world_report

    rows, table = world_report(list(seeds), runs_dir)
    if out:
        out.write_text(table + "\n")
    typer.echo(json.dumps(rows, indent=2) if as_json else table)


@backbone_app.command("build")
def build_backbone(name: Annotated[str, typer.Argument(help="'procedural': the offline world's small CLIP")],
                   arch: str = "MZ-World") -> None:
    """Pretrain (or reuse from the cache) a backbone that maple-zoo builds itself; print its weights file."""
    from .backbones import BackboneConfig, load_backbone
    from .errors import MapleZooError

    if name != "procedural":
        raise MapleZooError(f"unknown buildable backbone '{name}'; known: procedural")
    bb = load_backbone(BackboneConfig(arch=arch, pretrained="procedural"))
    typer.echo(f"{bb.weights_path}\nfingerprint {bb.fingerprint}")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
    app.add_typer(backbone_app, name="backbone")

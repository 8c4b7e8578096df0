"""`maple-zoo promote | list | show | pull | publish-index`: thin commands over the zoo functions.

Commands that take a zoo entry elsewhere (eval, predict) reuse the shared options and resolve it with
`pull(ref, config=config_from_flags(store, endpoint_url, config), offline=offline)`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import MapleZooError
from .config import load_config
from .index import EntryRecord, VersionRecord, export_catalogue, read_index
from .names import format_ref, parse_ref
from .names import show as show_text
from .stores import ProgressFactory

StoreOpt = Annotated[str | None, typer.Option("--store", help="Zoo store: a folder or s3://bucket/prefix "
                                                 "(env MAPLE_ZOO_STORE).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint URL "
                                                    "(env MAPLE_ZOO_S3_ENDPOINT_URL).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file with a 'zoo:' section "
                                                   "(env MAPLE_ZOO_CONFIG; default ./maple-zoo.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def config_from_flags(store: str | None = None, endpoint_url: str | None = None, config: Path | None = None):
    """The ZooConfig for the shared flags; eval/predict reuse StoreOpt/EndpointOpt/ConfigOpt and this."""
    return load_config(config, store=store, endpoint_url=endpoint_url)


@contextlib.contextmanager
def _progress() -> Iterator[ProgressFactory]:
    """Byte progress bars on stderr, only when it is a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bars:

        def factory(label: str, total: int):
            task = bars.add_task(label, total=total)
            return lambda n: bars.advance(task, n)

        yield factory


def _console() -> Console:
    """Full-width tables when piped (no squeezing to 80 columns); the terminal's width otherwise."""
    console = Console()
    return console if console.is_terminal else Console(width=220)


def _metric(card: dict, key: str = "hm") -> str:
    metrics = card.get("metrics") or {}
    for k, v in metrics.items() if isinstance(metrics, dict) else ():
        if key in k.lower() and isinstance(v, (int, float)):
            return f"{v:.2f}" if v > 1 else f"{v:.4f}"
    return "-"


def _backbone(card: dict) -> str:
    b = card.get("backbone") or {}
    return f"{b.get('arch', '?')}/{b.get('pretrained', '?')}" if isinstance(b, dict) else str(b)


def _method(card: dict) -> str:
    m = card.get("method") or {}
    return str(m.get("name", "?")) if isinstance(m, dict) else str(m)


def _versions_table(title: str, versions: list[VersionRecord]) -> Table:
    table = Table(title=title)
    for col in ("version", "created", "method", "backbone", "hm", "size", "sha256", "mlflow run"):
        table.add_column(col)
    for r in sorted(versions, key=lambda r: r.version):
        table.add_row(f"v{r.version}", r.created, _method(r.card), _backbone(r.card), _metric(r.card),
                      f"{r.size:,}", r.sha256[:12], r.source_run or "-")
    return table


def promote(
    name: Annotated[str | None, typer.Argument(help="Zoo name (default: <dataset>-<shots>shot from the card).")] = None,
    from_checkpoint: Annotated[Path | None, typer.Option("--from-checkpoint", help="Checkpoint folder.")] = None,
    from_run: Annotated[str | None, typer.Option("--from-run", help="MLflow run id with a checkpoint/ artifact.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    alias: Annotated[str, typer.Option("--alias", help="MLflow registry alias for the new version.")] = "champion",
    store: StoreOpt = None, endpoint_url: EndpointOpt = None, config: ConfigOpt = None,
) -> None:
    """Upload a checkpoint as the next version of NAME, verify it, then add it to the index."""
    from .promote import promote_from_checkpoint_and_record, promote_from_mlflow_run

    if (from_checkpoint is None) == (from_run is None):
        raise MapleZooError("promote: give exactly one of --from-checkpoint DIR or --from-run RUN_ID")
    if name and "@" in name:
        raise MapleZooError(f"promote: {show_text(name)}: versions are assigned by the zoo; give a bare NAME")
    cfg = config_from_flags(store, endpoint_url, config)
    with _progress() as progress:
        if from_run:
            p = promote_from_mlflow_run(from_run, name, config=cfg, tracking_uri=tracking_uri, alias=alias,
                                        progress=progress)
        else:
            p = promote_from_checkpoint_and_record(from_checkpoint, name, config=cfg, tracking_uri=tracking_uri,
                                                   alias=alias, progress=progress)
    what = "promoted" if p.added else "unchanged (newest version already holds this checkpoint):"
    typer.echo(f"{what} {p.ref} (sha256 {p.record.sha256[:12]}, {p.record.size:,} bytes) in {p.store_url}")
    if p.model_version:
        typer.echo(f"registered MLflow model {p.name} version {p.model_version} (alias {alias})")
    if p.warning:
        typer.secho(f"warning: {p.warning}", fg=typer.colors.YELLOW, err=True)


def list_entries(json_out: JsonOpt = False, store: StoreOpt = None, endpoint_url: EndpointOpt = None,
                 config: ConfigOpt = None) -> None:
    """List zoo entries with their newest version."""
    zoo = config_from_flags(store, endpoint_url, config).open_store()
    index, _ = read_index(zoo)
    entries = {n: e for n, e in sorted(index.entries.items()) if e.versions}
    if json_out:
        out = [{"name": n, "latest": e.latest.version, "versions": [r.version for r in e.versions],
                **{k: e.latest.model_dump(mode="json")[k] for k in ("sha256", "size", "created", "source_run", "card")}}
               for n, e in entries.items()]
        typer.echo(json.dumps(out, indent=1))
        return
    if not entries:
        typer.echo(f"the zoo at {zoo.url} is empty")
        return
    table = Table(title=f"zoo: {zoo.url}")
    table.add_column("name", no_wrap=True)
    for col in ( "latest", "versions", "method", "backbone", "dataset", "shots", "hm", "created"):
        table.add_column(col)
    for n, e in entries.items():
        r = e.latest
        table.add_row(n, f"v{r.version}", str(len(e.versions)), _method(r.card), _backbone(r.card),
                      str(r.card.get("dataset", "-")), str(r.card.get("shots", "-")), _metric(r.card), r.created)
    _console().print(table)


def show(ref: Annotated[str, typer.Argument(help="NAME or NAME@vN.")], json_out: JsonOpt = False,
         store: StoreOpt = None, endpoint_url: EndpointOpt = None, config: ConfigOpt = None) -> None:
    """Show an entry's versions, or one version's card and files."""
    name, version = parse_ref(ref)
    index, _ = read_index(config_from_flags(store, endpoint_url, config).open_store())
    record = index.resolve(name, version)
    entry: EntryRecord = index.entries[name]
    if json_out:
        data = record.model_dump(mode="json") if version else entry.model_dump(mode="json")
        typer.echo(json.dumps({"name": name, **data}, indent=1))
        return
    console = _console()
    console.print(_versions_table(name, [record] if version else entry.versions))
    card = Table(title=f"{format_ref(name, record.version)} card", show_header=False)
    for k, v in record.card.items():
        card.add_row(k, v if isinstance(v, str) else json.dumps(v))
    console.print(card)
    files = Table(title="files")
    for col in ("file", "size", "sha256", "uri"):
        files.add_column(col)
    for fname, f in record.files.items():
        files.add_row(fname, f"{f.size:,}", f.sha256, f.uri)
    console.print(files)


def pull_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@vN (bare NAME = newest).")],
    offline: Annotated[bool, typer.Option("--offline", help="Use the local cache only; never the store.")] = False,
    to: Annotated[Path | None, typer.Option("--to", help="Also copy the verified files into DIR.")] = None,
    store: StoreOpt = None, endpoint_url: EndpointOpt = None, config: ConfigOpt = None,
) -> None:
    """Download NAME or NAME@vN, verify every sha256, and place it in the cache atomically."""
    from .pull import pull

    cfg = config_from_flags(store, endpoint_url, config)
    with _progress() as progress:
        entry = pull(ref, config=cfg, offline=offline, to=to, progress=progress)
    how = "cached, verified" if entry.from_cache else "downloaded, verified"
    typer.echo(f"{entry.ref} ({how}) -> {entry.path}")


def publish_index(
    out: Annotated[Path, typer.Option("--out", help="Catalogue file to write.")] = Path("zoo_index.yaml"),
    store: StoreOpt = None, endpoint_url: EndpointOpt = None, config: ConfigOpt = None,
) -> None:
    """Write the store's index as the published catalogue (zoo_index.yaml)."""
    index, _ = read_index(config_from_flags(store, endpoint_url, config).open_store())
    export_catalogue(index, out)
    n = sum(len(e.versions) for e in index.entries.values())
    typer.echo(f"wrote {out} ({len(index.entries)} names, {n} versions)")


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)
    app.command("list")(list_entries)
    app.command("show")(show)
    app.command("pull")(pull_cmd)
    app.command("publish-index")(publish_index)

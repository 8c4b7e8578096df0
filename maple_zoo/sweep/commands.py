"""`maple-zoo sweep SPEC` and `maple-zoo ui`: parse, call one function, print."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from ..errors import MapleZooError


def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML, e.g. sweeps/demo.yaml")],
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted sweep; finished trials are kept")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address ('auto'); default: a local Ray")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec key: budget.num_samples=4")] = None,
    config: Annotated[Path | None, typer.Option(help="settings file (default: $MAPLE_ZOO_CONFIG, ./maple-zoo.yaml)")] = None,
) -> None:
    """Search prompt depth, context length and lr (Optuna + ASHA over Ray Train runs), then re-run the best on every seed."""
    from .runner import SweepInterrupted, run_sweep
    from .spec import load_spec

    parsed = load_spec(spec, list(set_ or []))  # every input error surfaces here, before anything starts
    try:
        run_sweep(parsed, resume=resume, address=address, config_file=config)
    except SweepInterrupted as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.YELLOW)
        raise SystemExit(130) from None  # typer.Exit is swallowed by the non-standalone click main


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def ui(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                                                              "sqlite:///.maple-zoo/mlflow.db)")] = None,
    port: Annotated[int, typer.Option(help="port to listen on")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
    config: Annotated[Path | None, typer.Option(help="settings file (default: $MAPLE_ZOO_CONFIG, ./maple-zoo.yaml)")] = None,
) -> None:
    """Open the MLflow UI on the configured tracking store and print its address."""
    from ..mlflow_store import open_client, sqlite_path
    from ..settings import load_settings
    from .tracking import default_tracking_uri

    uri = load_settings(config, tracking_uri=tracking_uri).tracking_uri or default_tracking_uri()
    if sqlite_path(uri) and not sqlite_path(uri).is_file():
        raise MapleZooError(f"no MLflow store at {uri}: run a sweep first, or pass --tracking-uri")
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "http://", "https://", "databricks")):
        raise MapleZooError(f"--tracking-uri {uri}: give sqlite:///<abs path>, a database URL or an http(s) server")
    if uri.startswith(("http://", "https://")):
        typer.echo(f"MLflow UI: {uri} (a tracking server already serves it)")
        return
    open_client(uri)  # a store a running sweep is still creating is finished first, not migrated twice
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers: faster start
    errlog = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: the server's request log never blocks it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errlog, text=True)
    url = f"http://{host}:{port}"
    try:
        if not _wait_ready(url, proc):
            proc.terminate()
            proc.wait(timeout=10)
            errlog.seek(0)
            err = errlog.read().strip().splitlines()
            raise MapleZooError(f"mlflow ui did not start on {url}: {err[-1] if err else 'timed out'}")
        typer.echo(f"MLflow UI for {uri}: {url}  (Ctrl-C stops it)")
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        errlog.close()


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
    app.command("ui")(ui)

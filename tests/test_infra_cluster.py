"""docs/operations.md section 2 end to end: a Ray cluster of two `ray start` processes, the MLflow
tracking server started by infra/mlflow/start-mlflow.sh (basic-auth on, artifacts proxied to S3),
and an S3-compatible endpoint (moto) for Ray storage and the zoo. A tiny sweep runs with
`--address`, configured only by ./maple-zoo.yaml and credentials in the environment; the runs reach
the server, Ray's state lands in the bucket, the best prompts are promoted and pulled back.

Everything binds or connects to 127.0.0.1 (Ray itself advertises the machine's own address: it
rewrites a loopback node IP on Linux). Processes are started in their own process groups and
killed in finalizers; every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import test_zoo_support as support
from coop_layout import make_eurosat

pytestmark = [pytest.mark.integration, pytest.mark.slow]
moto_endpoint = support.moto_endpoint  # fixture: a moto S3 server on 127.0.0.1 and fake AWS_* variables

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARK = "MZ_INFRA_TEST_MARK"  # set in every process we start, so cleanup finds Ray's workers too
ADMIN_PASSWORD = "loopback-admin-password"
AUTH = importlib.util.find_spec("flask_wtf") is not None  # `mlflow[auth]`: basic-auth needs Flask-WTF
SCRUB = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS", "MAPLE_ZOO_CONFIG", "MAPLE_ZOO_STORAGE",
         "MAPLE_ZOO_STORE", "MAPLE_ZOO_S3_ENDPOINT_URL", "MAPLE_ZOO_STORAGE_S3_ENDPOINT_URL", "MAPLE_ZOO_RAY_FORWARD_ENV",
         "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

SPEC = """\
name: loopback
dataset: eurosat
data_root: {root}
shots: 2
seeds: [1]
method: maple
backbone: {{arch: MZ-Tiny, pretrained: null}}
train:
  optim: {{epochs: 1, batch_size: 4}}
  device: cpu
parameters:
  prompt_depth: {{min: 1, max: 2}}
  lr: {{distribution: log_uniform, min: 0.001, max: 0.05}}
objective: {{metric: val_acc}}
search: {{seed: 0, reference: {{prompt_depth: 1, lr: 0.01}}}}
scheduler: {{type: none}}
budget: {{num_samples: 2, max_concurrent_trials: 2}}
promote: {{enabled: true, name: loopback-2shot}}
"""


def free_ports(n: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (ephemeral range: outside Ray's worker ports 10002-19999)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries our mark (Ray's workers rename themselves, not their env)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"{MARK}={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stop(procs: list[subprocess.Popen], mark: str, grace: float = 3.0) -> list[int]:
    """SIGTERM our process groups; after `grace` seconds SIGKILL the groups and every marked process,
    a few rounds (a dying raylet may still start a worker); returns the marked processes left."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and marked_pids(mark):
        time.sleep(0.3)
    for _ in range(20):
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in marked_pids(mark):  # Ray workers that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        if not marked_pids(mark):
            break
    for proc in procs:  # reap our direct children
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return marked_pids(mark)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def stack(moto_endpoint, tmp_path_factory):
    """moto S3 + MLflow server + a two-process Ray cluster, all on this machine; torn down at the end."""
    import boto3

    work = tmp_path_factory.mktemp("loopback")
    mark = uuid.uuid4().hex
    bucket = support.new_bucket(moto_endpoint)
    # a short temp dir: Ray's unix socket paths must stay under ~107 characters
    ray_tmp = Path(tempfile.mkdtemp(prefix="mzray-", dir="/tmp"))
    gcs, dash, client_port, agent_head, agent_worker, mlflow_port = free_ports(6)
    base = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env = {**base, **support.FAKE_AWS_ENV, MARK: mark, "MAPLE_ZOO_CACHE": str(work / "cache"),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),  # as a second machine would
           "RAY_TRAIN_V2_ENABLED": "1", "PATH": f"{BIN}:{base.get('PATH', '')}"}
    procs: list[subprocess.Popen] = []
    logs = work / "logs"
    logs.mkdir()

    def start(name: str, cmd: list[str], extra: dict | None = None) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, env={**env, **(extra or {})}, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=work)
        procs.append(proc)
        return proc

    def log_tail(name: str) -> str:
        return (logs / f"{name}.log").read_text()[-3000:]

    try:
        # the tracking server first: it starts while Ray does
        server_env = {"MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(mlflow_port), "MLFLOW_WORKERS": "1",
                      "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{work}/mlflow.db",
                      "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{work}/auth.db",
                      "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow", "MLFLOW_S3_ENDPOINT_URL": moto_endpoint,
                      "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "TMPDIR": str(work)}
        if AUTH:
            server = start("mlflow", ["sh", str(ROOT / "infra/mlflow/start-mlflow.sh")], server_env)
        else:  # without Flask-WTF: the same server, authentication off
            server = start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                      "--backend-store-uri", server_env["MLFLOW_BACKEND_STORE_URI"],
                                      "--artifacts-destination", server_env["MLFLOW_ARTIFACTS_DESTINATION"],
                                      "--workers", "1"], server_env)
        t0 = time.monotonic()
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
                  f"--object-store-memory={100 * 2**20}"]
        head = start("ray-head", [str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--temp-dir={ray_tmp}",
                                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                  f"--ray-client-server-port={client_port}",
                                  f"--dashboard-agent-listen-port={agent_head}", *common])
        assert head.wait(timeout=90) == 0, log_tail("ray-head")
        worker = start("ray-worker", [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}",
                                      f"--dashboard-agent-listen-port={agent_worker}", *common])
        assert worker.wait(timeout=90) == 0, log_tail("ray-worker")
        ray_s = time.monotonic() - t0
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", timeout=90, proc=server)
        yield {"work": work, "env": env, "bucket": bucket, "s3": boto3.client("s3", endpoint_url=moto_endpoint),
               "endpoint": moto_endpoint, "gcs": f"127.0.0.1:{gcs}", "mlflow": f"http://127.0.0.1:{mlflow_port}",
               "dashboard": f"http://127.0.0.1:{dash}",
               "ray_start_s": ray_s, "log": log_tail}
    finally:
        leftover = stop(procs, mark)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not leftover, f"processes left running: {leftover}"


@pytest.fixture(scope="module")
def swept(stack):
    """The tiny sweep, run once through the CLI exactly as docs/operations.md shows."""
    work = stack["work"]
    data = make_eurosat(work / "data")
    (work / "sweep.yaml").write_text(SPEC.format(root=data))
    endpoint = stack["endpoint"]
    (work / "maple-zoo.yaml").write_text(
        f"tracking:\n  uri: {stack['mlflow']}\n  experiment: infra-loopback\n"
        f"storage:\n  path: s3://{stack['bucket']}/ray-results\n  s3: {{endpoint_url: \"{endpoint}\"}}\n"
        f"zoo:\n  store: s3://{stack['bucket']}/zoo\n  s3: {{endpoint_url: \"{endpoint}\"}}\n")
    env = {**stack["env"], "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
           "COLUMNS": "200"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "maple_zoo.cli", "sweep", "sweep.yaml", "--address", stack["gcs"]],
                         cwd=work, env=env, capture_output=True, text=True, timeout=420)
    (work / "logs" / "sweep.log").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return {**stack, "stdout": out.stdout, "sweep_env": env, "sweep_s": time.monotonic() - t0}


def keys(stack: dict, prefix: str) -> list[str]:
    pages = stack["s3"].get_paginator("list_objects_v2").paginate(Bucket=stack["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_cluster_has_two_nodes_and_asks_for_the_token(stack):
    url = f"{stack['dashboard']}/api/v0/nodes"

    def get(token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30)

    with get(stack["env"]["RAY_AUTH_TOKEN"]) as r:
        nodes = json.loads(r.read())["data"]["result"]["result"]
    assert sum(n["state"] == "ALIVE" for n in nodes) == 2
    for token, code in ((None, 401), ("0" * 64, 403)):  # token authentication is on
        with pytest.raises(urllib.error.HTTPError) as err:
            get(token)
        assert err.value.code == code


def test_the_tracking_server_requires_a_password(stack):
    if not AUTH:
        pytest.skip("Flask-WTF is not installed (pip install 'mlflow[auth]'): the server runs without basic-auth")
    url = f"{stack['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 401


def test_a_sweep_on_the_loopback_cluster_logs_to_the_server_and_stores_in_s3(swept):
    from mlflow import MlflowClient

    os.environ.update({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD})
    try:
        client = MlflowClient(swept["mlflow"])
        exp = client.get_experiment_by_name("infra-loopback")  # tracking.experiment from maple-zoo.yaml
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], max_results=100)
    finally:
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(var, None)
    parents = [r for r in runs if r.data.tags.get("maple_zoo.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = sorted(r.data.tags["maple_zoo.stage"] for r in children)
    assert stages == ["final", "search", "search"]
    # artifacts went through the server into the bucket; the client never needed S3 for them
    assert any(k.endswith("checkpoint/prompts.safetensors") for k in keys(swept, "mlflow/"))
    # Ray's experiment state and checkpoints are in the bucket, not in the sweep folder
    ray_keys = keys(swept, "ray-results/")
    assert any("checkpoint" in k for k in ray_keys) and any(k.endswith("tuner.pkl") for k in ray_keys), ray_keys[:20]
    assert not (swept["work"] / ".maple-zoo" / "sweeps" / "loopback" / "ray").exists()
    assert "promoted to the zoo as loopback-2shot@v1" in swept["stdout"]


def test_the_promoted_entry_is_in_the_bucket_and_pulls_back_verified(swept, monkeypatch):
    from typer.testing import CliRunner

    from maple_zoo.cli import app

    monkeypatch.chdir(swept["work"])  # ./maple-zoo.yaml names the bucket and endpoint
    for var in SCRUB:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MAPLE_ZOO_CACHE", str(swept["work"] / "pull-cache"))

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    listing = json.loads(cli("list", "--json"))
    assert [e["name"] for e in listing] == ["loopback-2shot"] and listing[0]["latest"] == 1
    assert listing[0]["source_run"]  # the MLflow run it came from
    assert any(k.startswith("zoo/blobs/sha256/") for k in keys(swept, "zoo/"))
    assert "downloaded, verified" in cli("pull", "loopback-2shot")

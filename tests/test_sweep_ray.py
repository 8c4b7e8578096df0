"""Sweeps on a local Ray (2 CPUs) with SQLite MLflow: nested runs and selection, DDP on 2 CPU workers,
and an interrupted sweep that resumes without re-running finished trials. Talks to 127.0.0.1 only."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from coop_layout import make_eurosat
from rich.console import Console

from maple_zoo.mlflow_store import open_client
from maple_zoo.sweep.display import SweepDisplay
from maple_zoo.sweep.runner import run_sweep, start_local_ray
from maple_zoo.sweep.spec import load_spec

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

SPEC = """\
name: {name}
dataset: eurosat
data_root: {root}
shots: 4
seeds: [1]
method: maple
backbone: {{arch: MZ-Tiny, pretrained: null}}
train:
  optim: {{epochs: 2, batch_size: 4}}
  device: cpu
parameters:
  prompt_depth: {{min: 1, max: 4}}
  n_ctx: {{values: [1, 2]}}
  lr: {{distribution: log_uniform, min: 0.001, max: 0.05}}
objective: {{metric: val_hm, pseudo_novel_fraction: 0.25}}
search: {{seed: 0, reference: {{prompt_depth: 3}}}}
scheduler: {{type: {scheduler}}}
budget: {{num_samples: {samples}, max_concurrent_trials: {concurrent}}}
tracking: {{uri: "sqlite:///{db}"}}
promote: {{enabled: {promote}, name: eurosat-4shot-demo}}
"""


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting one costs seconds)."""
    if not ray.is_initialized():
        start_local_ray(num_cpus=2)  # ray.init(num_cpus=2), robust to other Ray instances on the machine
    yield "127.0.0.1:" + ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_eurosat(tmp_path_factory.mktemp("data"))


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS", "MAPLE_ZOO_CONFIG", "MAPLE_ZOO_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(folder: Path, data_root: Path, name: str, samples: int, concurrent: int, scheduler="asha",
               promote=False) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, root=data_root, samples=samples, concurrent=concurrent,
                                scheduler=scheduler, db=folder / "mlflow.db", promote=str(promote).lower()))
    return path


def quiet_display() -> tuple[SweepDisplay, io.StringIO]:
    out = io.StringIO()
    return SweepDisplay(console=Console(file=io.StringIO()), out=Console(file=out, width=160)), out


def runs_of(db: Path):
    client = open_client(f"sqlite:///{db}")  # as any second process must: the sweep may be creating the store
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def test_two_trial_sweep_logs_nested_runs_and_picks_the_best_by_the_objective(ray_local, data_root, sweep_dir,
                                                                              monkeypatch):
    monkeypatch.setenv("MAPLE_ZOO_STORE", str(sweep_dir / "zoo"))
    path = write_spec(sweep_dir, data_root, "two", samples=2, concurrent=2, promote=True)
    display, out = quiet_display()
    summary = run_sweep(load_spec(path), display=display)

    client, runs = runs_of(sweep_dir / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("maple_zoo.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert {"sweep/spec.yaml", "sweep/spec.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    search = [r for r in children if r.data.tags["maple_zoo.stage"] == "search"]
    final = [r for r in children if r.data.tags["maple_zoo.stage"] == "final"]
    assert len(search) == 2 and len(final) == 1
    for run in search:
        assert {"prompt_depth", "n_ctx", "lr", "dataset", "seed"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_hm")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and history  # one point per epoch
        assert not {"base_acc", "novel_acc", "hm"} & set(run.data.metrics)  # trials never touch test splits
        assert len(run.data.tags["backbone_fingerprint"]) == 64 and run.data.tags["code_version"]
        ckpt = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert ckpt == {"checkpoint/card.json", "checkpoint/prompts.safetensors"}  # no optimizer state
    # the best trial: highest objective among trials that ran every epoch (ASHA may stop one early)
    full = [r for r in search if r.data.metrics["epochs_completed"] == 2] or search
    top = max(r.data.metrics["objective"] for r in full)
    winners = [r for r in full if r.data.metrics["objective"] == top]  # tiny val sets: ties happen
    assert summary.datasets[0].best_value == top
    assert summary.datasets[0].best_params in [{k: json.loads(r.data.params[k]) for k in ("prompt_depth", "n_ctx", "lr")}
                                               for r in winners]
    best = next(r for r in winners if json.loads(r.data.params["lr"]) == summary.datasets[0].best_params["lr"])
    reference = next(r for r in search if r.data.params["lr"] == "0.0035")  # the reference point ran
    assert reference.data.params["prompt_depth"] == "3" and reference.data.params["n_ctx"] == "2"
    # the chosen configuration, re-run on the seeds with test evaluation, base and novel apart, with HM
    f = final[0]
    assert {"base_acc", "novel_acc", "hm"} <= set(f.data.metrics)
    assert f.data.params["lr"] == best.data.params["lr"]
    assert parent.data.metrics["test_hm_mean"] == pytest.approx(f.data.metrics["hm"])
    card = json.loads(Path(client.download_artifacts(f.info.run_id, "checkpoint/card.json", str(sweep_dir))).read_text())
    assert card["mlflow_run_id"] == f.info.run_id and card["metrics_per_seed"]["1"]["hm"] == f.data.metrics["hm"]
    # promoted through the zoo from the first seed's run
    assert summary.datasets[0].promotion == "eurosat-4shot-demo@v1"
    assert f.data.tags["maple_zoo.promoted_as"] == "eurosat-4shot-demo@v1"
    text = out.getvalue()
    assert "best configuration" in text and "maple-zoo ui" in text and "novel_acc" in text


def _ddp_worker(loop: dict) -> None:
    """Runs on each Ray Train rank: the engine's loop, copying this rank's prompts after every epoch."""
    import shutil

    import ray.train

    from maple_zoo.config import train_config_from_dict
    from maple_zoo.engine.run import RunHooks, run_training
    from maple_zoo.progress import Reporter

    rank = ray.train.get_context().get_world_rank()
    out = Path(loop["out"])
    cfg = train_config_from_dict({**loop["config"], "output_dir": str(out / f"run-rank{rank}")})

    def on_epoch(metrics: dict, folder: Path) -> None:
        shutil.copy(folder / "prompts.safetensors", out / f"rank{rank}-epoch{metrics['epoch']}.safetensors")
        (out / "world-size").write_text(str(ray.train.get_context().get_world_size()))
        ray.train.report({"epoch": metrics["epoch"]})

    run_training(cfg, RunHooks(on_epoch=on_epoch, checkpoint_every_epoch=True, reporter=Reporter(quiet=True)))


def test_ddp_with_two_cpu_workers_keeps_prompts_identical_on_both_ranks(ray_local, data_root, tmp_path):
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    config = {"method": {"name": "maple", "depth": 3}, "backbone": {"arch": "MZ-Tiny", "pretrained": None},
              "data": {"dataset": "eurosat", "root": str(data_root), "shots": 6},
              "optim": {"epochs": 3, "lr": 0.01, "batch_size": 2}, "device": "cpu",
              "validation": {"evaluate_test": False}}
    trainer = TorchTrainer(_ddp_worker, train_loop_config={"config": config, "out": str(tmp_path)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),  # gloo on CPU
                           run_config=RunConfig(name="ddp", storage_path=str(tmp_path / "ray")))
    trainer.fit()
    assert (tmp_path / "world-size").read_text() == "2"
    first = load_file(str(tmp_path / "rank0-epoch1.safetensors"))
    for epoch in (1, 2, 3):
        a = load_file(str(tmp_path / f"rank0-epoch{epoch}.safetensors"))
        b = load_file(str(tmp_path / f"rank1-epoch{epoch}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (epoch, key)
    last = load_file(str(tmp_path / "rank0-epoch3.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the prompts did train


def _finished_search_runs(db: Path) -> dict[str, list]:
    if not db.is_file():
        return {}
    try:
        client, runs = runs_of(db)
    except Exception:  # noqa: BLE001 - the store is being created by the other process
        return {}
    done = {}
    for r in runs:
        if r.data.tags.get("maple_zoo.stage") == "search" and r.info.status == "FINISHED":
            done[r.data.tags["maple_zoo.trial_id"]] = [(m.step, m.timestamp, m.value) for m in
                                                       client.get_metric_history(r.info.run_id, "train_loss")]
    return done


def test_an_interrupted_sweep_resumes_and_reruns_no_finished_trial(ray_local, data_root, sweep_dir):
    path = write_spec(sweep_dir, data_root, "resumable", samples=3, concurrent=2, scheduler="none")
    db = sweep_dir / "mlflow.db"
    # the first run is a separate driver on the same cluster (--address), interrupted like Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "maple_zoo.cli", "sweep", str(path), "--address", ray_local],
                            cwd=sweep_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 480  # starting Ray actors is slow on a loaded 2-core machine
        while not _finished_search_runs(db) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
        if not _finished_search_runs(db):
            proc.kill()
            pytest.fail(f"no trial finished in time (sweep exit {proc.poll()}):\n{proc.communicate(timeout=30)[0][-4000:]}")
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "--resume" in output
    before = _finished_search_runs(db)
    assert 1 <= len(before) < 3

    display, _ = quiet_display()
    summary = run_sweep(load_spec(path), resume=True, display=display)

    after = _finished_search_runs(db)
    assert len(after) == 3  # every trial finished, each exactly one child run
    for trial_id, history in before.items():
        assert after[trial_id] == history  # a trial finished before the interruption was not trained again
    client, runs = runs_of(db)
    parents = [r for r in runs if r.data.tags.get("maple_zoo.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, continued
    assert len([r for r in runs if r.data.tags.get("maple_zoo.stage") == "search"]) == 3
    assert summary.parent_run_id == parents[0].info.run_id and summary.datasets[0].per_seed
    manifest = json.loads((sweep_dir / ".maple-zoo" / "sweeps" / "resumable" / "manifest.json").read_text())
    assert manifest["status"] == "finished"

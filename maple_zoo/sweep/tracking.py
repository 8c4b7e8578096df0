"""MLflow layout of a sweep: one parent run, one nested child run per trial, logged from the driver.

    experiment (tracking.experiment, default "maple-zoo")
      <sweep name>                 parent: spec artifact, tags, search-space params, summary metrics
        trial-01 ... trial-NN      stage=search: params, per-epoch metrics (step = epoch), objective,
                                   checkpoint/ artifact, backbone fingerprint, code version
        final-seed1 ... seedK      stage=final: the chosen configuration, test metrics, checkpoint/

Logging happens in the process that runs the Tuner (a Tune Callback), never in trial actors, so a
SQLite store only needs to be reachable from one place. Child runs are found again by the tag
`maple_zoo.trial_id`, so a resumed sweep continues the same runs instead of adding duplicates.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..mlflow_store import open_client, sqlite_path

DEFAULT_DIR = Path(".maple-zoo")
TRAINING_ONLY = {"optimizer.safetensors"}  # resume state: never part of a logged checkpoint
# keys Tune adds to every result; only the engine's own metrics go to MLflow
TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
             "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
             "checkpoint_path", "should_checkpoint", "experiment_tag", "replayed", "final", "epoch"}
STRING_TAGS = ("backbone_fingerprint", "code_version")


def default_tracking_uri(base: Path | None = None) -> str:
    """When no flag, env or file sets one: a SQLite file in ./.maple-zoo that every sweep of this folder
    shares, so `maple-zoo ui` with no argument shows them all."""
    return sqlite_uri((base or Path.cwd()) / DEFAULT_DIR / "mlflow.db")


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"  # always absolute: MLflow refuses file stores


def local_artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (an explicit location: MLflow's default is relative to the CWD)."""
    path = sqlite_path(uri)
    return (path.parent / "mlartifacts").as_uri() if path else None


def numeric_metrics(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """Thin MlflowClient wrapper with the sweep's conventions (tags, names, artifact layout)."""

    def __init__(self, uri: str, experiment: str | None = None, experiment_id: str | None = None):
        self.uri = uri
        self.client = open_client(uri)
        self.experiment_id = experiment_id or self._experiment(experiment or "maple-zoo")

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=local_artifact_root(self.uri))

    # ------------------------------------------------------------------ parent
    def start_parent(self, name: str, tags: dict[str, str], params: dict[str, Any], files: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"maple_zoo.kind": "sweep", "maple_zoo.sweep": name, **tags})
        self.log(run.info.run_id, params=params)
        with tempfile.TemporaryDirectory() as tmp:
            for fname, text in files.items():
                Path(tmp, fname).write_text(text)
            self.client.log_artifacts(run.info.run_id, tmp, "sweep")
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    # ------------------------------------------------------------------ children
    def child(self, parent_id: str, trial_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The child run of a trial: the existing one when the sweep is resumed, else a new one."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.maple_zoo.trial_id = '{trial_id}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"mlflow.parentRunId": parent_id, "maple_zoo.trial_id": trial_id, **tags})
        self.log(run.info.run_id, params=params)
        return run.info.run_id

    def children(self, parent_id: str, stage: str | None = None) -> list:
        flt = f"tags.mlflow.parentRunId = '{parent_id}'" + (f" and tags.maple_zoo.stage = '{stage}'" if stage else "")
        return list(self.client.search_runs([self.experiment_id], filter_string=flt, max_results=5000))

    # ------------------------------------------------------------------ logging
    def log(self, run_id: str, metrics: dict[str, float] | None = None, step: int = 0,
            params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_checkpoint(self, run_id: str, folder: Path, card_update: dict | None = None) -> None:
        """Log a prompt-only checkpoint folder as the run's `checkpoint/` artifact (what the zoo promotes)."""
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp, "checkpoint")
            dst.mkdir()
            for p in Path(folder).iterdir():
                if p.is_file() and p.name not in TRAINING_ONLY and not p.name.startswith("."):
                    shutil.copy2(p, dst / p.name)
            if card_update and (dst / "card.json").is_file():
                card = json.loads((dst / "card.json").read_text())
                card.update(card_update)
                (dst / "card.json").write_text(json.dumps(card, indent=2, default=str))
            self.client.log_artifacts(run_id, str(dst), "checkpoint")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def fetch_checkpoint(checkpoint_path: str, storage) -> Path:
    """A local copy of a checkpoint Ray persisted (local folder or S3) in a fresh temp folder."""
    import pyarrow.fs

    fs, _ = storage.filesystem()
    tmp = Path(tempfile.mkdtemp(prefix="maple-zoo-ckpt-"))
    if storage.is_s3:
        path = checkpoint_path.removeprefix("s3://")
        pyarrow.fs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    else:
        shutil.copytree(checkpoint_path, tmp, dirs_exist_ok=True)
    return tmp


class TrackingCallback(Callback):
    """Tune callback (runs in the Tuner's process): trial -> nested MLflow run.

    Picklable on purpose: Tune stores it with the experiment and uses it again on `Tuner.restore`."""

    def __init__(self, uri: str, experiment_id: str, parent_id: str, sweep: str, dataset: str, stage: str,
                 objective: str, storage, epochs: int, log_checkpoints: bool = True, fixed_params: dict | None = None):
        self.uri, self.experiment_id, self.parent_id = uri, experiment_id, parent_id
        self.sweep, self.dataset, self.stage, self.objective = sweep, dataset, stage, objective
        self.storage, self.epochs, self.log_checkpoints = storage, epochs, log_checkpoints
        self.fixed_params = dict(fixed_params or {})
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._tagged: set[str] = set()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tracker"], state["_runs"], state["_tagged"] = None, {}, set()
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, experiment_id=self.experiment_id)
        return self._tracker

    def run_name(self, trials, trial) -> str:
        if self.stage == "final":
            return f"final-seed{trial.config.get('seed')}"
        return f"trial-{trials.index(trial) + 1:02d}"

    def _run(self, trials, trial) -> str:
        if trial.trial_id not in self._runs:
            tags = {"maple_zoo.sweep": self.sweep, "maple_zoo.stage": self.stage, "maple_zoo.dataset": self.dataset,
                    "maple_zoo.objective": self.objective}
            self._runs[trial.trial_id] = self.tracker.child(
                self.parent_id, trial.trial_id, self.run_name(trials, trial), tags,
                {**self.fixed_params, **trial.config})
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trials, trial)
        if result.get("replayed"):
            return  # a finished trial's last result, replayed on resume: already logged
        tags = {k: result[k] for k in STRING_TAGS if result.get(k)} if run_id not in self._tagged else {}
        if tags:
            self._tagged.add(run_id)
        self.tracker.log(run_id, numeric_metrics(result), step=int(result.get("epoch") or 0), tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trials, trial)
        last = trial.last_result or {}
        epoch = int(last.get("epoch") or 0)
        summary = {"epochs_completed": float(epoch)}
        if isinstance(last.get(self.objective), (int, float)):
            summary["objective"] = float(last[self.objective])
        stopped = epoch < int(trial.config.get("epochs", self.epochs))  # ASHA stopped it at a rung
        self.tracker.log(run_id, summary, step=epoch, tags={"maple_zoo.stopped_early": str(stopped).lower()})
        if self.log_checkpoints and last.get("checkpoint_path"):
            folder = fetch_checkpoint(last["checkpoint_path"], self.storage)
            try:
                self.tracker.log_checkpoint(run_id, folder, {"mlflow_run_id": run_id})
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        self.tracker.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.finish(self._run(trials, trial), "FAILED")

"""The Ray layer of one trial (Train V2 pattern): a Tune function trainable runs a TorchTrainer whose
workers call the engine. It knows config dicts and metrics, nothing about prompts.

    Tuner(make_trainable(job), param_space=...)    # job: TrialJob, a plain frozen dataclass

- `train_driver(config, job)`: the Tune trial. Builds the trial's TrainConfig dict from the sampled
  params, runs `TorchTrainer(train_worker)` named `train-<trial_id>` so that a restarted trial finds
  and continues its own Train run, and leaves a `done` marker so that a resumed sweep replays a
  finished trial's last result instead of training it again.
- `train_worker(loop)`: one DDP rank. `run_training` with a per-epoch hook calling `ray.train.report`
  (a barrier: every rank reports every epoch) with rank 0's prompt-only checkpoint; a retried worker
  continues from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import apply_params

DONE_MARKER = "maple_zoo_done.json"
DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}  # a trial driver only waits: it must not hold a CPU worker slot


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def resources_per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker  # fractions share a GPU (accounting only, no isolation)
        return res

    def ray(self):
        import ray.train

        return ray.train.ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                       resources_per_worker=self.resources_per_worker())


@dataclass(frozen=True)
class StorageTarget:
    """Where Ray keeps experiment state and checkpoints: a local folder or s3://bucket/prefix."""

    path: str
    endpoint: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.path.startswith("s3://")

    def resolve(self) -> tuple[str, Any]:
        """(storage_path, pyarrow filesystem or None) for Ray's RunConfig."""
        if self.is_s3 and (self.endpoint or self.region):
            import pyarrow.fs

            # an explicit filesystem with a prefix-less path: the query-string form breaks restore
            kwargs: dict[str, Any] = {}
            if self.endpoint:
                kwargs["endpoint_override"] = self.endpoint
                if self.endpoint.startswith("http://"):
                    kwargs["scheme"] = "http"
            if self.region:
                kwargs["region"] = self.region
            return self.path[len("s3://"):].strip("/"), pyarrow.fs.S3FileSystem(**kwargs)
        if self.is_s3:
            return self.path, None
        return str(Path(self.path).expanduser().resolve()), None

    def filesystem(self) -> tuple[Any, str]:
        """(pyarrow filesystem, path inside it) for reading and writing small files."""
        import pyarrow.fs

        path, fs = self.resolve()
        if fs is not None:
            return fs, path
        if self.is_s3:
            return pyarrow.fs.FileSystem.from_uri(path)
        return pyarrow.fs.LocalFileSystem(), path

    def join(self, *parts: str) -> StorageTarget:
        return StorageTarget("/".join([self.path.rstrip("/"), *parts]), self.endpoint, self.region)


@dataclass(frozen=True)
class TrialJob:
    """What every trial of one Tune experiment shares; the sampled params complete it."""

    base_config: dict  # a TrainConfig as JSON-able dict
    param_paths: dict[str, tuple[tuple[str, ...], ...]]  # param name -> config path(s) it sets
    storage: StorageTarget  # Train runs live under storage/<train_dir>/train-<trial_id>
    train_dir: str
    scaling: Scaling = field(default_factory=Scaling)
    worker_max_failures: int = 2
    report_final: bool = False  # one more report after training with the final (test) metrics
    checkpoints_to_keep: int = 2
    controller_failure_limit: int = -1  # Ray's default: retry a worker group that cannot start, forever

    def trial_config(self, params: dict[str, Any]) -> dict:
        return apply_params(self.base_config, self.param_paths, {k: params[k] for k in self.param_paths})


def make_trainable(job: TrialJob):
    from ray import tune

    return tune.with_resources(tune.with_parameters(train_driver, job=job), DRIVER_RESOURCES)


# ---------------------------------------------------------------------------------------------- driver

def _marker(job: TrialJob, run_name: str) -> tuple[Any, str]:
    fs, root = job.storage.join(job.train_dir, run_name).filesystem()
    return fs, f"{root}/{DONE_MARKER}"


def _read_marker(job: TrialJob, run_name: str) -> dict | None:
    import pyarrow.fs

    fs, path = _marker(job, run_name)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def _write_marker(job: TrialJob, run_name: str, metrics: dict) -> None:
    fs, path = _marker(job, run_name)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(metrics, default=str).encode())


def train_driver(config: dict, job: TrialJob) -> None:
    """The Tune function trainable: one TorchTrainer run per trial (use only ray.tune.* APIs here)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    run_name = f"train-{tune.get_context().get_trial_id()}"  # stable: a restarted trial continues its run
    done = _read_marker(job, run_name)
    if done is not None:  # finished before the sweep was interrupted: replay, do not retrain
        tune.report({**done, "replayed": 1})
        return
    storage_path, fs = job.storage.join(job.train_dir).resolve()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": job.trial_config(config), "report_final": job.report_final},
        scaling_config=job.scaling.ray(),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=fs,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=job.worker_max_failures,
                                                   controller_failure_limit=job.controller_failure_limit),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoints_to_keep),
        ),
    )
    result = trainer.fit()
    last = dict(result.metrics or {})
    if result.checkpoint is not None:
        last["checkpoint_path"] = result.checkpoint.path
    _write_marker(job, run_name, last)


# ---------------------------------------------------------------------------------------------- worker

def _stamp(folder: Path | None) -> dict:
    """Provenance read from the engine's checkpoint card: which weights, which code."""
    from ..engine.checkpoint import CARD

    if folder is None or not (folder / CARD).is_file():
        return {}
    card = json.loads((folder / CARD).read_text())
    return {"backbone_fingerprint": card.get("backbone", {}).get("fingerprint", ""),
            "code_version": card.get("code_version", "")}


def train_worker(loop: dict) -> None:
    """One Ray Train worker (DDP rank): the engine's train loop, reporting every epoch."""
    import ray.train

    from ..config import train_config_from_dict
    from ..engine.checkpoint import OPTIMIZER, load_card
    from ..engine.run import RunHooks, run_training
    from ..progress import Reporter

    rank = ray.train.get_context().get_world_rank()
    out = Path(tempfile.mkdtemp(prefix="maple-zoo-worker-"))
    cfg = train_config_from_dict({**loop["config"], "output_dir": str(out)}, "<trial>")
    stamp: dict = {}

    def report(metrics: dict, folder: Path | None) -> None:
        stamp.update(stamp or _stamp(folder))
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None and rank == 0 else None
        ray.train.report({**metrics, **stamp}, checkpoint=checkpoint)

    def on_epoch(metrics: dict, folder: Path | None) -> None:
        report(metrics, folder)
        if folder is not None:
            shutil.rmtree(folder.parent, ignore_errors=True)  # the engine's temp folder; Ray has its copy

    previous = ray.train.get_checkpoint()
    try:
        with previous.as_directory() if previous is not None else nullcontext(None) as resume:
            resume = Path(resume) if resume is not None else None
            if resume is not None and not (resume / OPTIMIZER).is_file():
                # the run's final checkpoint (no optimizer state): training and evaluation already finished
                card = load_card(resume)
                if loop["report_final"]:
                    report({**card.get("metrics", {}), "final": 1}, resume)
                return
            result = run_training(cfg, RunHooks(on_epoch=on_epoch, checkpoint_every_epoch=True,
                                                resume_from=resume, reporter=Reporter(quiet=True)))
        if loop["report_final"]:  # only what the epochs did not report already: the test metrics
            last = result.history[-1] if result.history else {}
            tested = {k: v for k, v in result.metrics.items() if k not in last}
            report({**tested, "epoch": cfg.optim.epochs, "final": 1}, result.checkpoint if rank == 0 else None)
    finally:
        shutil.rmtree(out, ignore_errors=True)

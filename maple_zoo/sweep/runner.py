"""Run a sweep end to end, resumably: for each dataset, search -> select -> final seeds -> summary.

    summary = run_sweep(load_spec("sweeps/demo.yaml"), resume=False, address=None)

Stages per dataset, recorded in the sweep's manifest so `--resume` picks up where it stopped:
1. search: Tuner(Optuna TPE from the reference point, ASHA over epochs) over trials that train on
   the base classes minus a pseudo-novel hold-out and never touch a test split;
2. select: the best trial by the objective (last value, among trials that ran all their epochs);
3. final: the chosen configuration trained on all training classes for every seed in `seeds`, test
   splits evaluated (base, novel, HM), mean and std; their checkpoints logged for the zoo;
4. promote (when the spec asks): the first seed's checkpoint, through the zoo.
Working state lives in `.maple-zoo/sweeps/<name>/` (manifest, Ray storage unless `storage.path`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MapleZooError
from ..fsutil import atomic_write_text
from ..settings import Resolved, load_settings
from . import display as live
from .display import Row, SweepDisplay
from .spec import DatasetPlan, Spec, spec_settings
from .tracking import Tracker, TrackingCallback, default_tracking_uri, fetch_checkpoint
from .trainable import Scaling, StorageTarget, TrialJob, make_trainable

log = logging.getLogger(__name__)
SWEEPS_DIR = Path(".maple-zoo") / "sweeps"


class SweepInterrupted(MapleZooError):
    """The Tuner stopped before every trial finished (Ctrl-C): the state is saved for --resume."""


# ---------------------------------------------------------------------------------------------- results

@dataclass
class BestTrial:
    trial_id: str
    name: str
    params: dict[str, Any]
    value: float
    epoch: int


@dataclass
class DatasetResult:
    dataset: str
    protocol: str
    objective: str
    best_trial: str
    best_params: dict[str, Any]
    best_value: float
    seeds: list[int]
    columns: list[str]  # the headline test metrics, in display order
    per_seed: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    final_run_ids: list[str]
    promotion: str | None = None


@dataclass
class SweepSummary:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    workdir: str
    elapsed_s: float
    datasets: list[DatasetResult] = field(default_factory=list)

    @property
    def ui_command(self) -> str:
        default = self.tracking_uri == default_tracking_uri()
        return "maple-zoo ui" + ("" if default else f" --tracking-uri {self.tracking_uri}")

    @property
    def ui_path(self) -> str:
        return f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"


# ---------------------------------------------------------------------------------------------- state

@dataclass
class Manifest:
    """What --resume needs that Ray does not keep: the MLflow parent run and each dataset's stage."""

    name: str
    spec_sha256: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str
    datasets: dict[str, dict] = field(default_factory=dict)
    status: str = "running"

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise MapleZooError(f"{path}: corrupt sweep manifest ({exc}); delete the sweep folder to start over") from None

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2, default=str))


def spec_digest(spec: Spec) -> str:
    return hashlib.sha256(json.dumps(spec.model.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def experiment_name(spec: Spec, dataset: str) -> str:
    return spec.name if len(spec.model.datasets) == 1 else f"{spec.name}-{dataset}"


# ---------------------------------------------------------------------------------------------- ray

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_ray(num_cpus: int | None = None, runtime_env: dict | None = None, **kwargs) -> str:
    """Start a new local Ray whose processes know its address.

    Ray Train's placement-group cleaner finds the cluster by auto-detection, which fails as soon as a
    second Ray runs on the machine (another user, another sweep): the leaked placement group then
    starves the next trial forever. Pinning the GCS port and handing every worker RAY_ADDRESS avoids it.
    """
    import ray

    port = _free_port()
    address = f"127.0.0.1:{port}"  # a laptop Ray listens on loopback only
    env = dict((runtime_env or {}).get("env_vars") or {})
    env.update({"RAY_ADDRESS": address, "RAY_TRAIN_V2_ENABLED": "1"})
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the head node Ray starts in-process
    try:
        ray.init(address="local", num_cpus=num_cpus, runtime_env={**(runtime_env or {}), "env_vars": env},
                 **{"log_to_driver": False, "logging_level": logging.ERROR, "_node_ip_address": "127.0.0.1",
                    **kwargs})
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    return ray.get_runtime_context().gcs_address


def ensure_ray(settings: Resolved) -> bool:
    """Connect to the configured cluster or start a local Ray in-process; True when this call started one."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    kwargs = settings.ray_init_kwargs()  # address + runtime_env (settings decide what is forwarded)
    if not kwargs["address"]:
        start_local_ray(runtime_env=kwargs["runtime_env"])
        return True
    env = {"RAY_TRAIN_V2_ENABLED": "1", **((kwargs["runtime_env"] or {}).get("env_vars") or {})}
    kwargs["runtime_env"] = {**(kwargs["runtime_env"] or {}), "env_vars": env}
    try:
        ray.init(**kwargs, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as exc:
        raise MapleZooError(f"ray address {kwargs['address']} ({settings.sources.get('ray_address')}): "
                            f"cannot connect: {exc}") from None
    return True


def quiet_libraries() -> None:
    """Ray Tune's console reporter and Optuna's INFO lines would fight the live table: silence them."""
    import mlflow  # noqa: F401 - imported first: it sets its own log level on import
    import optuna

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # experiment state saved often: resume loses little
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray.tune", "ray.train", "ray.air", "mlflow", "alembic"):  # their errors still show
        logging.getLogger(name).setLevel(logging.ERROR)


def plan_concurrency(spec: Spec, cluster: dict[str, float], local: bool) -> int:
    """How many trials run at once: what the cluster fits (each trial = its workers), capped by the spec."""
    res = spec.model.resources
    key, need = ("GPU", res.gpus_per_worker) if res.use_gpu else ("CPU", res.cpus_per_worker)
    per_trial = need * res.workers_per_trial
    have = float(cluster.get(key, 0))
    fits = int(math.floor(have / per_trial + 1e-9))
    if fits < 1:
        msg = f"a trial needs {per_trial:g} {key} ({res.workers_per_trial} workers) but the cluster has {have:g}"
        if local:
            raise spec.error(("resources",), msg)
        log.warning("%s; waiting for the autoscaler", msg)
        fits = 1
    cap = spec.model.budget.max_concurrent_trials
    return max(1, min(fits, cap or fits, spec.model.budget.num_samples))


# ---------------------------------------------------------------------------------------------- stages

class SweepRun:
    """One invocation of `maple-zoo sweep`: owns the display, tracker, manifest and storage."""

    def __init__(self, spec: Spec, resume: bool, settings: Resolved, display: SweepDisplay, workdir: Path):
        self.spec, self.resume, self.settings, self.display = spec, resume, settings, display
        self.address = settings.ray_address
        self.workdir = workdir
        self.manifest_path = workdir / "manifest.json"
        self.storage = StorageTarget(settings.storage_path or str(workdir / "ray"), settings.storage_endpoint_url,
                                     settings.storage_region)
        self.objective = spec.model.objective.metric
        self.display_key = spec.name  # stable: the restored (unpickled) LiveCallback finds the display by it

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        manifest = Manifest.load(self.manifest_path)
        if manifest is not None and not self.resume:
            raise MapleZooError(
                f"sweep '{self.spec.name}' already exists in {self.workdir} ({manifest.status}): continue it with "
                f"--resume, or start another with --set name={self.spec.name}-2")
        if manifest is None and self.resume:
            raise MapleZooError(f"nothing to resume: no sweep '{self.spec.name}' in {self.workdir}")
        if self.address is None:  # on a cluster the data lives on the workers, not necessarily here
            self.prepare_local_assets()
            for plan in self.spec.plans.values():
                root = Path(plan.base_config["data"]["root"])
                if not root.is_dir():
                    raise self.spec.error(("data_root",), f"data root not found: {root}")
        digest = spec_digest(self.spec)
        if manifest is None:
            uri = self.settings.tracking_uri or default_tracking_uri()
            self.tracker = Tracker(uri, self.settings.experiment or self.spec.name)
            parent = self.tracker.start_parent(self.spec.name, self._parent_tags(), self._parent_params(),
                                               self._spec_files())
            manifest = Manifest(self.spec.name, digest, uri, self.tracker.experiment_id, parent, self.storage.path)
            manifest.save(self.manifest_path)
        else:
            if manifest.spec_sha256 != digest:
                self.display.message("note: the spec changed since this sweep started; the stored search state "
                                     "and search space are kept")
            self.tracker = Tracker(manifest.tracking_uri, experiment_id=manifest.experiment_id)
            self.tracker.reopen(manifest.parent_run_id)
            self.storage = StorageTarget(manifest.storage, self.storage.endpoint, self.storage.region)
        self.manifest = manifest

    def prepare_local_assets(self) -> None:
        """Build once, here, what every trial would otherwise build for itself: the offline world's
        images (when every dataset is a world dataset and the data root is still empty) and locally
        registered backbone weights (the world's small CLIP)."""
        from ..backbones import LOCAL_TAGS, BackboneConfig, resolve_weights
        from ..data import world

        for plan in self.spec.plans.values():
            cfg = plan.base_config
            root = Path(cfg["data"]["root"])
            names = [cfg["data"]["dataset"], *cfg["targets"]]
            empty = not root.exists() or (root.is_dir() and not any(root.iterdir()))
            if all(n in world.WORLD_DATASET_NAMES for n in names) and empty:
                self.display.message(f"building the offline world in {root} (once)")
                world.build_world(root)
            bb = BackboneConfig(**cfg["backbone"])
            if (bb.arch, bb.pretrained) in LOCAL_TAGS:
                self.display.message(f"backbone {bb.arch}/{bb.pretrained}: built once on this machine, then cached")
                resolve_weights(bb)

    def _parent_tags(self) -> dict[str, str]:
        from ..engine.run import code_version

        m = self.spec.model
        return {"maple_zoo.datasets": ",".join(m.datasets), "maple_zoo.protocol": m.protocol,
                "maple_zoo.method": next(iter(self.spec.plans.values())).base_config["method"]["name"],
                "maple_zoo.backbone": f"{m.backbone.arch}/{m.backbone.pretrained}",
                "maple_zoo.objective": self.objective, "maple_zoo.code_version": code_version(),
                "mlflow.source.name": self.spec.source, "mlflow.note.content": m.description or ""}

    def _parent_params(self) -> dict[str, Any]:
        m = self.spec.model
        params = {"dataset": ",".join(m.datasets), "protocol": m.protocol, "shots": m.shots, "seeds": m.seeds,
                  "backbone": f"{m.backbone.arch}/{m.backbone.pretrained}", "objective": self.objective,
                  "num_samples": m.budget.num_samples, "scheduler": m.scheduler.type,
                  "workers_per_trial": m.resources.workers_per_trial,
                  "gpus_per_worker": m.resources.gpus_per_worker}
        for key, p in m.parameters.items():
            params[f"space.{key}"] = json.dumps(p.model_dump(exclude_none=True))
        params["reference"] = json.dumps(next(iter(self.spec.plans.values())).reference)
        return params

    def _spec_files(self) -> dict[str, str]:
        files = {"spec.json": json.dumps(self.spec.model.model_dump(mode="json"), indent=2),
                 "plans.json": json.dumps({ds: asdict(p) for ds, p in self.spec.plans.items()}, indent=2, default=str)}
        src = Path(self.spec.source)
        if src.is_file():
            files["spec.yaml"] = src.read_text()
        return files

    # ------------------------------------------------------------------ search
    def _job(self, base: dict, paths: dict, train_dir: str, report_final: bool) -> TrialJob:
        r = self.spec.model.resources
        # a local Ray never autoscales: a worker group that cannot start is an error, not a wait
        return TrialJob(base, paths, self.storage, train_dir,
                        Scaling(r.workers_per_trial, r.gpus_per_worker, r.cpus_per_worker),
                        worker_max_failures=r.worker_max_failures, report_final=report_final,
                        controller_failure_limit=3 if self.address is None else -1)

    def _callbacks(self, plan: DatasetPlan, stage: str, fixed: dict) -> list:
        tracking = TrackingCallback(self.tracker.uri, self.tracker.experiment_id, self.manifest.parent_run_id,
                                    self.spec.name, plan.dataset, stage, self.objective, self.storage,
                                    epochs=plan.base_config["optim"]["epochs"], log_checkpoints=stage == "search",
                                    fixed_params=fixed)
        return [tracking, live.LiveCallback(self.display_key, plan.base_config["optim"]["epochs"])]

    def _children(self, stage: str, dataset: str) -> list:
        return [r for r in self.tracker.children(self.manifest.parent_run_id, stage)
                if r.data.tags.get("maple_zoo.dataset") == dataset]

    def _unfinished(self, grid, stage: str, dataset: str) -> int:
        """Trials that neither completed nor failed. After Ctrl-C Tune marks the stopped ones TERMINATED,
        but only a real completion reaches the tracking callback, which closes the MLflow run."""
        closed = {r.data.tags.get("maple_zoo.trial_id") for r in self._children(stage, dataset)
                  if r.info.status in ("FINISHED", "FAILED")}
        return sum(1 for r in grid if r.error is None and (r.metrics or {}).get("trial_id") not in closed)

    def _close_budget_stopped(self, stage: str, dataset: str) -> None:
        """The time budget ran out: Tune stopped the running trials; their runs end as KILLED, tagged."""
        for run in self._children(stage, dataset):
            if run.info.status == "RUNNING":
                self.tracker.log(run.info.run_id, tags={"maple_zoo.stopped_by": "time_budget"})
                self.tracker.finish(run.info.run_id, "KILLED")

    def _fit(self, name: str, trainable, make_tuner, stage: str, dataset: str):
        """Restore the named Tune experiment when it exists (resume), else build it; then fit."""
        from ray import tune

        path, fs = self.storage.join(name).resolve()
        if tune.Tuner.can_restore(path, storage_filesystem=fs):
            if not self.resume:
                raise MapleZooError(f"{path} already holds a Tune experiment '{name}': use --resume or another name")
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs)
        else:
            tuner = make_tuner()
        started = time.monotonic()
        grid = tuner.fit()
        unfinished = self._unfinished(grid, stage, dataset)
        budget = self.spec.model.budget.time_budget_s if stage == "search" else None
        if unfinished > 0 and budget and time.monotonic() - started >= budget:
            self.display.message(f"time budget of {budget:g}s spent: {unfinished} running trial(s) stopped")
            self._close_budget_stopped(stage, dataset)
        elif unfinished > 0:
            raise SweepInterrupted(f"sweep '{self.spec.name}' interrupted with {unfinished} unfinished trial(s); "
                                   f"continue it with: maple-zoo sweep {self.spec.source} --resume")
        return grid

    def _run_config(self, name: str, callbacks: list):
        from ray import tune

        path, fs = self.storage.resolve()
        return tune.RunConfig(name=name, storage_path=path, storage_filesystem=fs, callbacks=callbacks, verbose=0,
                              failure_config=tune.FailureConfig(max_failures=self.spec.model.resources.trial_max_failures))

    def search(self, plan: DatasetPlan, concurrency: int) -> BestTrial:
        from optuna.samplers import TPESampler
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        m = self.spec.model
        name = experiment_name(self.spec, plan.dataset)
        trainable = make_trainable(self._job(plan.base_config, plan.param_paths, f"{name}-runs", False))
        space = {k: p.to_tune() for k, p in m.parameters.items()}
        searched = {k: v for k, v in plan.reference.items() if m.parameters[k].distribution != "constant"}
        fixed = {"dataset": plan.dataset, "shots": m.shots, "seed": plan.base_config["seed"],
                 "method": plan.base_config["method"]["name"], "backbone": m.backbone.arch,
                 "epochs": plan.base_config["optim"]["epochs"], "batch_size": plan.base_config["optim"]["batch_size"]}

        def make_tuner():
            sampler = TPESampler(seed=m.search.seed, n_startup_trials=m.search.n_startup_trials)
            searcher = OptunaSearch(metric=self.objective, mode="max", points_to_evaluate=[searched], sampler=sampler)
            scheduler = None
            if m.scheduler.type == "asha":
                scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs,
                                          grace_period=min(m.scheduler.grace_period, plan.max_epochs),
                                          reduction_factor=m.scheduler.reduction_factor)
            return tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(metric=self.objective, mode="max", search_alg=searcher,
                                            scheduler=scheduler, num_samples=m.budget.num_samples,
                                            max_concurrent_trials=concurrency, time_budget_s=m.budget.time_budget_s),
                run_config=self._run_config(name, self._callbacks(plan, "search", fixed)))

        self.display.begin(f"sweep {self.spec.name} · {plan.dataset} · search", list(m.parameters), self.objective,
                           m.budget.num_samples)
        self._show_finished(plan.dataset, "search")
        try:
            grid = self._fit(name, trainable, make_tuner, "search", plan.dataset)
        finally:
            self.display.end()
        return self._select(grid, plan)

    def _show_finished(self, dataset: str, stage: str) -> None:
        """On resume, the trials that already finished (from MLflow) are listed, not re-run."""
        if not self.resume:
            return
        rows = []
        for run in self.tracker.children(self.manifest.parent_run_id, stage):
            if run.data.tags.get("maple_zoo.dataset") != dataset or run.info.status != "FINISHED":
                continue
            label = run.info.run_name or ""
            index = int(label.rsplit("-", 1)[-1]) if label.rsplit("-", 1)[-1].isdigit() else 0
            params = {k: _parse(v) for k, v in run.data.params.items()}
            status = "STOPPED" if run.data.tags.get("maple_zoo.stopped_early") == "true" else "DONE"
            rows.append(Row(index, run.data.tags.get("maple_zoo.trial_id", "?"), params, status,
                            int(run.data.metrics.get("epochs_completed", 0)), run.data.metrics.get("objective")))
        self.display.restore(rows)

    def _select(self, grid, plan: DatasetPlan) -> BestTrial:
        scored = [r for r in grid if r.error is None and isinstance((r.metrics or {}).get(self.objective), (int, float))]
        if not scored:
            errors = [r.error for r in grid if r.error is not None]
            first = str(errors[0]).strip().splitlines()[-1] if errors else "no trial reported the objective"
            raise MapleZooError(f"sweep '{self.spec.name}' ({plan.dataset}): no trial succeeded; first error: {first}")

        def full(r) -> bool:
            return int(r.metrics.get("epoch", 0)) >= int(r.config.get("epochs", plan.base_config["optim"]["epochs"]))

        # a trial ASHA stopped early scored on fewer epochs: prefer trials that ran the whole budget
        pool = [r for r in scored if full(r)] or scored
        best = max(pool, key=lambda r: r.metrics[self.objective])
        trial_id = best.metrics["trial_id"]
        runs = self.tracker.children(self.manifest.parent_run_id, "search")
        name = next((r.info.run_name for r in runs if r.data.tags.get("maple_zoo.trial_id") == trial_id), trial_id)
        params = {k: best.config[k] for k in self.spec.model.parameters}
        return BestTrial(trial_id, name, params, float(best.metrics[self.objective]), int(best.metrics["epoch"]))

    # ------------------------------------------------------------------ final seeds
    def final(self, plan: DatasetPlan, best: BestTrial, concurrency: int) -> DatasetResult:
        from ray import tune

        m = self.spec.model
        name = f"{experiment_name(self.spec, plan.dataset)}-final"
        base = plan.trial_config(best.params)
        # the chosen configuration trained on every training class; only now are test splits evaluated
        base["validation"] = {"every_epoch": False, "pseudo_novel_fraction": 0.0, "evaluate_test": True}
        trainable = make_trainable(self._job(base, {"seed": (("seed",),)}, f"{name}-runs", True))
        fixed = {"dataset": plan.dataset, "shots": m.shots, "method": base["method"]["name"],
                 "backbone": m.backbone.arch, "epochs": base["optim"]["epochs"], **best.params}

        def make_tuner():
            return tune.Tuner(trainable, param_space={"seed": tune.grid_search(list(m.seeds))},
                              tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency),
                              run_config=self._run_config(name, self._callbacks(plan, "final", fixed)))

        self.display.begin(f"sweep {self.spec.name} · {plan.dataset} · final: chosen configuration, "
                           f"seeds {', '.join(map(str, m.seeds))}", ["seed"], self._final_headline(plan), len(m.seeds),
                           ranked=False)
        try:
            grid = self._fit(name, trainable, make_tuner, "final", plan.dataset)
        finally:
            self.display.end()
        failed = [r for r in grid if r.error is not None]
        if failed:
            raise MapleZooError(f"sweep '{self.spec.name}' ({plan.dataset}): a final seed run failed: "
                                f"{str(failed[0].error).strip().splitlines()[-1]}")
        return self._report_final(plan, best, grid)

    def _final_headline(self, plan: DatasetPlan) -> str:
        return "hm" if plan.base_config["protocol"] == "base2novel" else self._columns(plan)[0]

    def _columns(self, plan: DatasetPlan) -> list[str]:
        cfg = plan.base_config
        if cfg["protocol"] == "base2novel":
            return ["base_acc", "novel_acc", "hm"]
        if not cfg["targets"]:
            return ["test_acc"]
        return [f"{cfg['data']['dataset']}_acc", *[c for c in ("xd_mean_acc", "dg_mean_acc") if self._groups(plan)[c]]]

    def _groups(self, plan: DatasetPlan) -> dict[str, list[str]]:
        """Cross-dataset targets vs domain-shifted versions of the source (domain generalisation)."""
        from ..data.datasets import get_dataset

        src = plan.base_config["data"]["dataset"]
        dg = [t for t in plan.base_config["targets"] if get_dataset(t).domain_of == src]
        return {"dg_mean_acc": dg, "xd_mean_acc": [t for t in plan.base_config["targets"] if t not in dg]}

    def _report_final(self, plan: DatasetPlan, best: BestTrial, grid) -> DatasetResult:
        from ..engine.metrics import harmonic_mean

        m = self.spec.model
        results = sorted(grid, key=lambda r: m.seeds.index(r.config["seed"]))
        per_seed = []
        for r in results:
            metrics = {k: float(v) for k, v in r.metrics.items()
                       if isinstance(v, (int, float)) and k.endswith(("_acc", "hm", "_f1")) and k != "train_acc"}
            for group, targets in self._groups(plan).items():
                if targets and all(f"{t}_acc" in metrics for t in targets):
                    metrics[group] = sum(metrics[f"{t}_acc"] for t in targets) / len(targets)
            per_seed.append(metrics)
        keys = sorted(set.intersection(*(set(p) for p in per_seed)))
        mean = {k: sum(p[k] for p in per_seed) / len(per_seed) for k in keys}
        std = {k: _std([p[k] for p in per_seed]) for k in keys}
        if "base_acc" in mean and "novel_acc" in mean:
            mean["hm"] = harmonic_mean(mean["base_acc"], mean["novel_acc"])  # as in the papers' average rows
        finals = {r.data.tags.get("maple_zoo.trial_id"): r for r in self.tracker.children(self.manifest.parent_run_id, "final")
                  if r.data.tags.get("maple_zoo.dataset") == plan.dataset}
        run_ids = []
        card_extra = {"sweep": self.spec.name, "seeds": list(m.seeds),
                      "metrics_per_seed": {str(s): p for s, p in zip(m.seeds, per_seed)},
                      "metrics_mean": mean, "metrics_std": std,
                      "selection": {"objective": self.objective, "value": best.value, "trial": best.name,
                                    "params": best.params, "data": "training-side validation only"}}
        for r in results:
            run = finals.get(r.metrics.get("trial_id"))
            if run is None:
                continue
            run_ids.append(run.info.run_id)
            if r.metrics.get("checkpoint_path"):
                folder = fetch_checkpoint(r.metrics["checkpoint_path"], self.storage)
                try:
                    self.tracker.log_checkpoint(run.info.run_id, folder, {**card_extra, "mlflow_run_id": run.info.run_id})
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        return DatasetResult(plan.dataset, plan.base_config["protocol"], self.objective, best.name, best.params,
                             best.value, list(m.seeds), self._columns(plan), per_seed, mean, std, run_ids)

    # ------------------------------------------------------------------ parent + promotion
    def log_parent(self, result: DatasetResult) -> None:
        prefix = f"{result.dataset}." if len(self.spec.model.datasets) > 1 else ""
        metrics = {f"{prefix}best_{self.objective}": result.best_value}
        metrics.update({f"{prefix}test_{k}_mean": v for k, v in result.mean.items()})
        metrics.update({f"{prefix}test_{k}_std": v for k, v in result.std.items()})
        self.tracker.log(self.manifest.parent_run_id, metrics,
                         params={f"{prefix}best.{k}": v for k, v in result.best_params.items()},
                         tags={f"maple_zoo.{prefix}best_trial": result.best_trial,
                               f"maple_zoo.{prefix}final_runs": ",".join(result.final_run_ids)})

    def promote(self, result: DatasetResult) -> str | None:
        p = self.spec.model.promote
        if not p.enabled or not result.final_run_ids:
            return None
        from ..zoo.names import default_name
        from ..zoo.promote import promote_from_mlflow_run

        name = p.name or default_name(result.dataset, self.spec.model.shots)
        promotion = promote_from_mlflow_run(result.final_run_ids[0], name, tracking_uri=self.tracker.uri, alias=p.alias)
        if promotion.warning:
            self.display.message(f"warning: {promotion.warning}")
        return promotion.ref

    # ------------------------------------------------------------------ the whole sweep
    def run(self) -> SweepSummary:
        import ray

        t0 = time.monotonic()
        quiet_libraries()
        started = ensure_ray(self.settings)
        live.register(self.display_key, self.display)
        try:
            concurrency = plan_concurrency(self.spec, ray.cluster_resources(), local=self.address is None)
            results = []
            for ds, plan in self.spec.plans.items():
                state = self.manifest.datasets.setdefault(ds, {"stage": "search"})
                if state["stage"] == "done":
                    results.append(DatasetResult(**state["result"]))
                    continue
                if state["stage"] == "search":
                    best = self.search(plan, concurrency)
                    state.update(stage="final", best=asdict(best))
                    self.manifest.save(self.manifest_path)
                result = self.final(plan, BestTrial(**state["best"]), concurrency)
                self.log_parent(result)
                result.promotion = self.promote(result)
                state.update(stage="done", result=asdict(result))
                self.manifest.save(self.manifest_path)
                results.append(result)
            self.manifest.status = "finished"
            self.manifest.save(self.manifest_path)
            self.tracker.finish(self.manifest.parent_run_id, "FINISHED")
            return SweepSummary(self.spec.name, self.tracker.uri, self.tracker.experiment_id,
                                self.manifest.parent_run_id, str(self.workdir), time.monotonic() - t0, results)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SweepInterrupted)) else "FAILED"
            self.tracker.finish(self.manifest.parent_run_id, status)
            raise
        finally:
            live.unregister(self.display_key)
            if started:
                ray.shutdown()


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def sweep_workdir(spec: Spec, base: Path | None = None) -> Path:
    return (base or Path.cwd()) / SWEEPS_DIR / spec.name


def run_sweep(spec: Spec, resume: bool = False, address: str | None = None, config_file: str | Path | None = None,
              display: SweepDisplay | None = None, base: Path | None = None) -> SweepSummary:
    """Run (or with resume=True continue) a sweep; deployment settings: flag > env > spec > maple-zoo.yaml."""
    display = display or SweepDisplay()
    quiet_libraries()
    settings = load_settings(config_file, address=address, spec=spec_settings(spec))
    run = SweepRun(spec, resume, settings, display, sweep_workdir(spec, base))
    run.open()
    summary = run.run()
    display.summary(summary)
    return summary

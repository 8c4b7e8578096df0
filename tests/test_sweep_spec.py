"""Sweep specs: every shipped file validates, bad input is one line naming file:line: key, nothing starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maple_zoo.errors import MapleZooError
from maple_zoo.sweep.runner import plan_concurrency
from maple_zoo.sweep.spec import apply_params, load_spec

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
B2N = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
       "sun397", "dtd", "eurosat", "ucf101"]

TINY_SPEC = """\
dataset: eurosat
data_root: {root}
shots: 4
method: maple
backbone: {{arch: MZ-Tiny, pretrained: null}}
train:
  optim: {{epochs: 2, batch_size: 4}}
parameters:
  prompt_depth: {{min: 1, max: 4}}
  n_ctx: {{values: [1, 2]}}
  lr: {{distribution: log_uniform, min: 0.001, max: 0.05}}
search: {{reference: {{prompt_depth: 3}}}}
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_sweep_file_validates(monkeypatch):
    monkeypatch.setenv("DATA", "/datasets")
    names = {p.stem for p in SWEEPS}
    assert set(B2N) <= names and "demo" in names and "imagenet_source" in names
    for path in SWEEPS:
        spec = load_spec(path)
        for plan in spec.plans.values():
            assert plan.base_config["validation"]["evaluate_test"] is False  # trials never see test data
            if path.stem != "demo":
                assert plan.reference == {"prompt_depth": 9, "n_ctx": 2, "lr": 0.0035}, path
                assert plan.base_config["data"]["root"] == "/datasets"
    xd = load_spec(REPO / "sweeps" / "imagenet_source.yaml").plans["imagenet"].base_config
    assert xd["protocol"] == "cross_dataset" and {"imagenet_sketch", "eurosat"} <= set(xd["targets"])


def test_product_names_map_to_the_methods_own_options(tmp_path):
    spec = load_spec(write(tmp_path, TINY_SPEC.format(root=tmp_path)))
    plan = spec.plans["eurosat"]
    assert plan.param_paths == {"prompt_depth": (("method", "depth"),), "n_ctx": (("method", "n_ctx"),),
                                "lr": (("optim", "lr"),)}
    assert plan.reference == {"prompt_depth": 3, "n_ctx": 2, "lr": 0.0035}  # MaPLe's own n_ctx and lr
    cfg = apply_params(plan.base_config, plan.param_paths, {"prompt_depth": 2, "n_ctx": 1, "lr": 0.01})
    assert cfg["method"]["depth"] == 2 and cfg["method"]["n_ctx"] == 1 and cfg["optim"]["lr"] == 0.01
    assert plan.base_config["method"]["depth"] == 9  # the base is never modified
    # IVLP has one depth per tower: the product's prompt_depth drives both
    ivlp = load_spec(write(tmp_path, TINY_SPEC.format(root=tmp_path).replace("method: maple", "method: ivlp")
                           .replace("n_ctx: {values: [1, 2]}", "n_ctx: {values: [2]}")))
    assert ivlp.plans["eurosat"].param_paths["prompt_depth"] == (("method", "depth_text"), ("method", "depth_vision"))


@pytest.mark.parametrize("edit, culprit", [
    (("parameters:", "paramters:"), "spec.yaml:8: paramters: unknown key"),
    (("dataset: eurosat", "dataset: eurosot"), "spec.yaml:1: dataset: unknown dataset 'eurosot'"),
    (("min: 0.001, max: 0.05", "min: 0.05, max: 0.001"), "spec.yaml:11: parameters.lr: min 0.05 is greater than max 0.001"),
    (("max: 4}", "max: 9}"), "spec.yaml:9: parameters.prompt_depth: max 9 exceeds the 4 layers of MZ-Tiny"),
    (("prompt_depth: 3}", "prompt_depth: 5}"), "spec.yaml:12: search.reference.prompt_depth: reference value 5 is outside"),
    (("search:", "objective: {metric: hm}\nsearch:"), "spec.yaml:12: objective.metric: 'hm' is a test-split metric"),
    (("lr: {", "temperature: {"), "spec.yaml:11: parameters.temperature: unknown parameter"),
    (("epochs: 2,", "epochs: -1,"), "spec.yaml:7: train.optim.epochs: Input should be greater than or equal to 0"),
    (("shots: 4", "shots: [4"), "spec.yaml:4: malformed YAML"),
])
def test_bad_specs_name_file_line_and_key(tmp_path, edit, culprit):
    path = write(tmp_path, TINY_SPEC.format(root=tmp_path).replace(*edit))
    with pytest.raises(MapleZooError) as err:
        load_spec(path)
    assert culprit in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_spec_exits_2_and_starts_nothing(tmp_path):
    path = write(tmp_path, TINY_SPEC.format(root=tmp_path).replace("min: 0.001, max: 0.05", "min: 0.05, max: 0.001"))
    out = subprocess.run([sys.executable, "-m", "maple_zoo.cli", "sweep", str(path)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "parameters.lr: min 0.05" in lines[0], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no sweep folder, no MLflow store


def test_missing_data_root_is_reported_before_anything_is_written(tmp_path, monkeypatch):
    from maple_zoo.sweep.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, TINY_SPEC.format(root=tmp_path / "nowhere")))
    with pytest.raises(MapleZooError, match=r"spec.yaml:2: data_root: data root not found"):
        run_sweep(spec)
    assert not (tmp_path / ".maple-zoo").exists()


def test_concurrency_follows_the_resources(tmp_path):
    def spec(resources="", budget=""):
        text = TINY_SPEC.format(root=tmp_path) + f"resources: {{{resources}}}\nbudget: {{num_samples: 16{budget}}}\n"
        return load_spec(write(tmp_path, text))

    assert plan_concurrency(spec(), {"CPU": 2.0}, local=True) == 2
    assert plan_concurrency(spec("workers_per_trial: 2"), {"CPU": 2.0}, local=True) == 1
    assert plan_concurrency(spec("gpus_per_worker: 0.5"), {"CPU": 64.0, "GPU": 4.0}, local=True) == 8
    assert plan_concurrency(spec("gpus_per_worker: 0.5", ", max_concurrent_trials: 3"), {"GPU": 4.0}, local=True) == 3
    with pytest.raises(MapleZooError, match="resources: a trial needs 1 GPU"):
        plan_concurrency(spec("gpus_per_worker: 1"), {"CPU": 2.0}, local=True)


def test_several_datasets_make_one_plan_each(tmp_path):
    text = TINY_SPEC.format(root=tmp_path).replace("dataset: eurosat", "dataset: [eurosat, dtd]")
    spec = load_spec(write(tmp_path, text))
    assert list(spec.plans) == ["eurosat", "dtd"]
    assert spec.plans["dtd"].base_config["data"]["dataset"] == "dtd"
    with pytest.raises(MapleZooError, match="promote.name: one name cannot hold several datasets"):
        load_spec(write(tmp_path, text + "promote: {enabled: true, name: both-4shot}\n"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_configured_store_and_prints_its_address(tmp_path):
    import json
    import signal
    import urllib.request

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("browse-me", artifact_location=(tmp_path / "art").as_uri())
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "maple_zoo.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the server answers (bounded by the command's own wait)
        assert f"http://127.0.0.1:{port}" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10",
                                    timeout=10) as r:
            assert "browse-me" in [e["name"] for e in json.loads(r.read())["experiments"]]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ui_without_a_store_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "maple_zoo.cli", "ui"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                            if k not in ("MLFLOW_TRACKING_URI", "MAPLE_ZOO_CONFIG")})
    assert out.returncode == 2 and "no MLflow store at sqlite:///" in out.stderr and "run a sweep first" in out.stderr


def test_live_table_shows_trials_parameters_epoch_objective_and_best():
    import io

    from rich.console import Console

    from maple_zoo.sweep.display import SweepDisplay

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140)
    d = SweepDisplay(console=console, out=console, live=True)
    d.begin("sweep demo · world_shapes · search", ["prompt_depth", "n_ctx", "lr"], "val_hm", 3)
    d.trial_start("aaa", 1, {"prompt_depth": 3, "n_ctx": 2, "lr": 0.0035})
    d.trial_start("bbb", 2, {"prompt_depth": 1, "n_ctx": 4, "lr": 0.02})
    d.trial_result("aaa", {"epoch": 1, "val_hm": 61.0})
    d.trial_result("bbb", {"epoch": 1, "val_hm": 70.5})
    d.trial_end("bbb", "DONE", stopped_early=True)
    table = Console(file=io.StringIO(), width=140)
    table.print(d.render())
    text = table.file.getvalue()
    d.end()
    assert "1/3 done" in text and "best val_hm 70.5 (#2)" in text and "stopped" in text and "0.0035" in text

"""The zoo commands end to end (local folder and S3 by configuration), exit codes, and MLflow promotion."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import test_zoo_support as support
from test_zoo_support import FAKE_SECRET, make_checkpoint, new_bucket
from typer.testing import CliRunner

from maple_zoo.cli import app, main
from maple_zoo.zoo.config import ZooConfig
from maple_zoo.zoo.index import load_catalogue

moto_endpoint = support.moto_endpoint  # fixture

ZOO_ENV = ("MAPLE_ZOO_STORE", "MAPLE_ZOO_CONFIG", "MAPLE_ZOO_ZOO_CACHE", "MAPLE_ZOO_S3_ENDPOINT_URL",
           "MAPLE_ZOO_S3_REGION", "MAPLE_ZOO_S3_PROFILE", "MAPLE_ZOO_S3_ADDRESSING_STYLE", "MAPLE_ZOO_S3_CHECKSUM")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean zoo environment: no stray settings, the cache and working folder under tmp_path."""
    for var in ZOO_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MAPLE_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def run(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    return result


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_cli_local_round_trip(env, tmp_path):
    make_checkpoint(tmp_path / "ck")
    out = ok("promote", "--from-checkpoint", "ck")  # default store ./.maple-zoo/zoo, default name
    assert "promoted eurosat-16shot@v1" in out
    make_checkpoint(tmp_path / "ck2", seed=2)
    assert "eurosat-16shot@v2" in ok("promote", "eurosat-16shot", "--from-checkpoint", "ck2")

    listing = ok("list")
    assert "eurosat-16shot" in listing and "v2" in listing and "maple" in listing
    data = json.loads(ok("list", "--json"))
    assert data[0]["name"] == "eurosat-16shot" and data[0]["latest"] == 2 and data[0]["versions"] == [1, 2]
    assert "v1" in ok("show", "eurosat-16shot")
    shown = json.loads(ok("show", "eurosat-16shot@v1", "--json"))
    assert shown["version"] == 1 and shown["card"]["seed"] == 1 and "prompts.safetensors" in shown["files"]

    assert "downloaded, verified" in ok("pull", "eurosat-16shot")
    assert "cached, verified" in ok("pull", "eurosat-16shot")
    assert "eurosat-16shot@v2 (cached" in ok("pull", "eurosat-16shot", "--offline")
    ok("pull", "eurosat-16shot@v2", "--to", "out")
    assert (tmp_path / "out" / "prompts.safetensors").is_file()

    assert "1 names, 2 versions" in ok("publish-index", "--out", "zoo_index.yaml")
    assert load_catalogue(tmp_path / "zoo_index.yaml").entries["eurosat-16shot"].latest.version == 2


def test_cli_s3_by_configuration(env, tmp_path, moto_endpoint, caplog):
    caplog.set_level(logging.DEBUG)  # botocore logs requests at DEBUG: the secret must not be among them
    bucket = new_bucket(moto_endpoint)
    (tmp_path / "maple-zoo.yaml").write_text(
        f"zoo:\n  store: s3://{bucket}/zoo\n  s3:\n    addressing_style: path\n    checksum: when_required\n"
    )
    env.setenv("MAPLE_ZOO_S3_ENDPOINT_URL", moto_endpoint)
    make_checkpoint(tmp_path / "ck")
    outputs = [ok("promote", "demo-16shot", "--from-checkpoint", "ck"), ok("list"), ok("pull", "demo-16shot"),
               ok("pull", "demo-16shot"), ok("show", "demo-16shot@v1"), ok("show", "demo-16shot@v1", "--json")]
    assert f"s3://{bucket}/zoo" in outputs[0] and "demo-16shot" in outputs[1]
    assert "downloaded, verified" in outputs[2] and "cached, verified" in outputs[3]
    uri = json.loads(outputs[5])["files"]["prompts.safetensors"]["uri"]
    assert uri.startswith(f"s3://{bucket}/zoo/blobs/sha256/")
    everything = "\n".join(outputs) + "\n".join(r.getMessage() for r in caplog.records)
    assert FAKE_SECRET not in everything


def test_cli_errors_are_one_line(env, tmp_path):
    result = run("promote", "x")
    assert "exactly one of --from-checkpoint" in str(result.exception)
    result = run("promote", "x@v1", "--from-checkpoint", "ck")
    assert "versions are assigned by the zoo" in str(result.exception)
    result = run("pull", "nothing-here")
    assert "unknown zoo entry 'nothing-here'" in str(result.exception)


@pytest.mark.parametrize("args", [["pull", "../x"], ["show", "a/b"], ["pull", "UPPER"], ["pull", ""],
                                  ["promote", "x..y", "--from-checkpoint", "."], ["pull", "/etc/passwd"],
                                  ["pull", "x" * 300], ["pull", "ok-16shot@latest"]])
def test_bad_names_exit_2(env, args, capsys):
    env.setattr(sys, "argv", ["maple-zoo", *args])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: invalid") and "\n" not in err and len(err) < 200


def test_bad_name_exit_code_in_a_subprocess(env):
    proc = subprocess.run([sys.executable, "-m", "maple_zoo.cli", "pull", "../etc"], check=False, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: invalid zoo name '../etc': path separators are not allowed"


def test_promote_from_mlflow_run(env, tmp_path):
    from mlflow import MlflowClient

    from maple_zoo.zoo import promote_from_mlflow_run, pull
    from maple_zoo.zoo.promote import MLFLOW_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = []
    for seed in (1, 2):
        r = client.create_run(exp)
        client.log_param(r.info.run_id, "lr", 0.0035)
        client.log_metric(r.info.run_id, "hm", 78.0 + seed)
        client.log_artifacts(r.info.run_id, str(make_checkpoint(tmp_path / f"ck{seed}", seed=seed)), "checkpoint")
        client.set_terminated(r.info.run_id)
        runs.append(r.info.run_id)

    cfg = ZooConfig(store=str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    p = promote_from_mlflow_run(runs[0], config=cfg, tracking_uri=uri)
    assert (p.ref, p.model_version, p.warning) == ("eurosat-16shot@v1", "1", None)
    assert p.record.source_run == runs[0]
    assert client.get_run(runs[0]).data.tags[MLFLOW_TAG] == "eurosat-16shot@v1"
    mv = client.get_model_version_by_alias("eurosat-16shot", "champion")
    assert str(mv.version) == "1" and mv.run_id == runs[0] and mv.tags["sha256"] == p.record.sha256
    assert pull("eurosat-16shot", config=cfg).card["mlflow_run_id"] == runs[0]

    # the same through the command line, for the second run: alias moves to the new version
    out = ok("promote", "eurosat-16shot", "--from-run", runs[1], "--tracking-uri", uri, "--store", cfg.store)
    assert "eurosat-16shot@v2" in out and "registered MLflow model eurosat-16shot version 2" in out
    assert str(client.get_model_version_by_alias("eurosat-16shot", "champion").version) == "2"

    result = run("promote", "--from-run", "0" * 32, "--tracking-uri", uri, "--store", cfg.store)
    assert "cannot download its 'checkpoint' artifact" in str(result.exception)

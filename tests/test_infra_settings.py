"""maple_zoo.settings: one maple-zoo.yaml for tracking, Ray, storage and zoo; flag > env > sweep file >
config file > default, one-line errors naming file, line and key. No processes are started here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maple_zoo.errors import MapleZooError
from maple_zoo.settings import load_settings, read_settings_file

ENV = ("MAPLE_ZOO_CONFIG", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS", "MAPLE_ZOO_STORAGE",
       "MAPLE_ZOO_STORAGE_S3_ENDPOINT_URL", "MAPLE_ZOO_STORAGE_S3_REGION", "MAPLE_ZOO_RAY_FORWARD_ENV",
       "MAPLE_ZOO_STORE", "MAPLE_ZOO_S3_ENDPOINT_URL", "MAPLE_ZOO_S3_REGION", "RAY_JOB_CONFIG_JSON_ENV_VAR")

FULL = """\
tracking:
  uri: http://mlflow.internal:5000
  experiment: team
ray:
  address: auto
  runtime_env:
    env_vars: {OMP_NUM_THREADS: "1"}
  forward_env: [AWS_ACCESS_KEY_ID]
storage:
  path: s3://bucket/ray
zoo:
  store: s3://bucket/zoo
  s3:
    endpoint_url: http://127.0.0.1:9000
    region: eu-west-1
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_without_any_configuration(env):
    s = load_settings()
    assert (s.config_file, s.tracking_uri, s.experiment, s.ray_address, s.storage_path) == (None,) * 5
    assert s.ray_init_kwargs() == {"address": None, "runtime_env": None}
    assert s.zoo.store == "./.maple-zoo/zoo"
    assert set(s.sources.values()) <= {"default", "none"}


def test_file_values_and_their_lines(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text(FULL)
    s = load_settings()
    assert s.config_file == "maple-zoo.yaml" and s.sources["config_file"] == "./maple-zoo.yaml"
    assert s.tracking_uri == "http://mlflow.internal:5000" and s.sources["tracking_uri"] == "maple-zoo.yaml:2 tracking.uri"
    assert s.experiment == "team" and s.ray_address == "auto" and s.storage_path == "s3://bucket/ray"
    # one S3-compatible server for storage and zoo: storage inherits the zoo's endpoint and region
    assert s.storage_endpoint_url == "http://127.0.0.1:9000" and s.storage_region == "eu-west-1"
    assert s.sources["storage_endpoint_url"] == "maple-zoo.yaml:14 zoo.s3.endpoint_url (zoo)"
    assert s.zoo.store == "s3://bucket/zoo"


def test_precedence_flag_env_sweep_file_default(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text(FULL)
    spec = {"tracking_uri": ("sqlite:////tmp/spec.db", "sweeps/x.yaml:3 tracking.uri"),
            "storage_path": ("/tmp/spec-ray", "sweeps/x.yaml:5 storage.path")}
    s = load_settings(spec=spec)
    assert s.tracking_uri == "sqlite:////tmp/spec.db" and s.sources["tracking_uri"] == "sweeps/x.yaml:3 tracking.uri"
    assert s.storage_path == "/tmp/spec-ray"
    env.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    env.setenv("MAPLE_ZOO_STORAGE", "s3://env-bucket/ray")
    env.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    s = load_settings(spec=spec)
    assert (s.tracking_uri, s.storage_path, s.ray_address) == ("http://env:5000", "s3://env-bucket/ray", "10.0.0.1:6379")
    assert s.sources["ray_address"] == "env RAY_ADDRESS"
    s = load_settings(spec=spec, tracking_uri="https://flag", address="ray://head:10001", storage="/flag")
    assert (s.tracking_uri, s.ray_address, s.storage_path) == ("https://flag", "ray://head:10001", "/flag")
    assert s.sources["tracking_uri"] == "flag --tracking-uri" and s.sources["ray_address"] == "flag --address"


def test_config_file_choice_flag_env_cwd(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text("tracking: {uri: http://cwd:1}\n")
    (tmp_path / "env.yaml").write_text("tracking: {uri: http://env:1}\n")
    (tmp_path / "flag.yaml").write_text("tracking: {uri: http://flag:1}\n")
    assert load_settings().tracking_uri == "http://cwd:1"
    env.setenv("MAPLE_ZOO_CONFIG", str(tmp_path / "env.yaml"))
    assert load_settings().sources["config_file"] == "env MAPLE_ZOO_CONFIG"
    assert load_settings().tracking_uri == "http://env:1"
    assert load_settings(tmp_path / "flag.yaml").tracking_uri == "http://flag:1"


@pytest.mark.parametrize("text, expected", [
    ("trackin:\n  uri: x\n", "maple-zoo.yaml:1: trackin: unknown section (did you mean: tracking?)"),
    ("ray:\n  adress: auto\n", "maple-zoo.yaml:2: ray.adress: unknown key"),
    ("tracking:\n  uri: ftp://x\n", "maple-zoo.yaml:2: tracking.uri: 'ftp://x' is not a tracking URI"),
    ("tracking:\n  uri: http://bob:secret@host\n", "maple-zoo.yaml:2: tracking.uri: credentials do not belong in the URI"),
    ("ray:\n  address: 'head 6379'\n", "maple-zoo.yaml:2: ray.address: 'head 6379' is not a Ray address"),
    ("ray:\n  forward_env: [OK, 'not-a-name']\n", "maple-zoo.yaml:2: ray.forward_env: 'not-a-name' is not"),
    ("zoo:\n  stor: x\n", "maple-zoo.yaml:2: zoo.stor: unknown key"),
    ("storage:\n  path: gs://b/ray\n", "maple-zoo.yaml:2: storage.path: 'gs://b/ray': expected a folder"),
    ("storage:\n  path: s3:///ray\n", "maple-zoo.yaml:2: storage.path: 's3:///ray': missing bucket name"),
    ("- a\n- b\n", "maple-zoo.yaml:1: expected a mapping with sections"),
    ("tracking: [\n", "maple-zoo.yaml:2: malformed YAML"),
])
def test_file_errors_are_one_line_with_file_line_key(env, tmp_path, text, expected):
    (tmp_path / "maple-zoo.yaml").write_text(text)
    with pytest.raises(MapleZooError) as err:
        load_settings()
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_env_and_flag_values_are_checked_and_named(env):
    env.setenv("RAY_ADDRESS", "not an address")
    with pytest.raises(MapleZooError, match=r"^env RAY_ADDRESS: ray.address: 'not an address' is not a Ray address"):
        load_settings()
    env.delenv("RAY_ADDRESS")
    with pytest.raises(MapleZooError, match=r"^flag --tracking-uri: tracking.uri: 'mlflow.db' is not a tracking URI"):
        load_settings(tracking_uri="mlflow.db")
    with pytest.raises(MapleZooError, match=r"^sweeps/x.yaml:4 tracking.uri: tracking.uri: "):
        load_settings(spec={"tracking_uri": ("nope", "sweeps/x.yaml:4 tracking.uri")})
    env.setenv("MAPLE_ZOO_STORAGE", "hdfs://x")
    with pytest.raises(MapleZooError, match=r"^env MAPLE_ZOO_STORAGE: storage.path: 'hdfs://x': expected a folder"):
        load_settings()
    env.delenv("MAPLE_ZOO_STORAGE")
    env.setenv("MAPLE_ZOO_RAY_FORWARD_ENV", "A,1B")
    with pytest.raises(MapleZooError, match=r"^env MAPLE_ZOO_RAY_FORWARD_ENV: ray.forward_env: '1B'"):
        load_settings()
    with pytest.raises(MapleZooError, match=r"maple-zoo.yaml: file not found"):
        load_settings("maple-zoo.yaml")


def test_storage_endpoint_precedence_over_the_zoo(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text(FULL + "  # end\n")
    env.setenv("MAPLE_ZOO_S3_ENDPOINT_URL", "http://zoo-env:1")
    s = load_settings()
    assert s.storage_endpoint_url == "http://zoo-env:1" and s.sources["storage_endpoint_url"].endswith("(zoo)")
    env.setenv("MAPLE_ZOO_STORAGE_S3_ENDPOINT_URL", "http://storage-env:1")
    assert load_settings().storage_endpoint_url == "http://storage-env:1"
    assert load_settings(storage_endpoint_url="http://flag:1").storage_endpoint_url == "http://flag:1"


def test_ray_init_kwargs_forward_and_merge(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text(FULL)
    env.setenv("AWS_ACCESS_KEY_ID", "key-id")
    kwargs = load_settings().ray_init_kwargs()
    assert kwargs["address"] == "auto"
    assert kwargs["runtime_env"] == {"env_vars": {"AWS_ACCESS_KEY_ID": "key-id", "OMP_NUM_THREADS": "1"}}
    # under `ray job submit`, whatever the job's runtime_env sets is left to it (Ray refuses duplicates)
    env.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
               json.dumps({"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2"}, "working_dir": "gcs://x.zip"}}))
    assert load_settings().ray_init_kwargs()["runtime_env"] == {"env_vars": {"AWS_ACCESS_KEY_ID": "key-id"}}
    # nothing is forwarded unless listed: a runtime_env is visible in the Ray dashboard
    env.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    env.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    (tmp_path / "maple-zoo.yaml").write_text("ray: {address: auto}\n")
    assert load_settings().ray_init_kwargs() == {"address": "auto", "runtime_env": None}
    env.setenv("MAPLE_ZOO_RAY_FORWARD_ENV", "MLFLOW_TRACKING_PASSWORD, UNSET_VAR")
    assert load_settings().ray_init_kwargs()["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_PASSWORD": "pw"}}


def test_printed_settings_name_sources_and_hide_passwords(env, tmp_path):
    (tmp_path / "maple-zoo.yaml").write_text(FULL.replace("http://127.0.0.1:9000", "http://u:hidden@127.0.0.1:9000"))
    out = subprocess.run([sys.executable, "-m", "maple_zoo.settings"], capture_output=True, text=True, timeout=60,
                         env={**dict(__import__("os").environ), "RAY_ADDRESS": "10.1.2.3:6379"})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "env RAY_ADDRESS" in lines["ray.address"] and "maple-zoo.yaml:2 tracking.uri" in lines["tracking.uri"]
    assert "hidden" not in out.stdout and "***@127.0.0.1:9000" in lines["zoo.s3.endpoint_url"]
    bad = subprocess.run([sys.executable, "-m", "maple_zoo.settings", "--config", "missing.yaml"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: missing.yaml: file not found"


def test_example_settings_files_in_infra_are_valid(tmp_path):
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cluster, _ = read_settings_file(root / "infra/ray/maple-zoo.cluster.yaml")
    assert cluster.storage.path.startswith("s3://") and cluster.zoo.store.startswith("s3://")
    docs = list(yaml.safe_load_all((root / "infra/kuberay/maple-zoo-config.yaml").read_text()))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (tmp_path / "k8s.yaml").write_text(config_map["data"]["maple-zoo.yaml"])
    k8s, _ = read_settings_file(tmp_path / "k8s.yaml")
    assert k8s.tracking.uri == "http://mlflow:5000" and k8s.ray.address == "auto"

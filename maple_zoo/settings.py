"""Where maple-zoo runs: one file (`maple-zoo.yaml`) for the Ray cluster, the MLflow tracking server,
Ray's result storage and the zoo, so a sweep moves from a laptop to a cluster by configuration only.

Precedence, per setting: command-line flag > environment variable > config file > default; a sweep
file's own `tracking:`/`storage:` keys rank between the environment and this file (`spec=` below).
The config file is `--config PATH`, else $MAPLE_ZOO_CONFIG, else `./maple-zoo.yaml` when present.

    file key (section.key)      environment variable                  default (nothing set)
    tracking.uri                MLFLOW_TRACKING_URI                   sqlite:///./.maple-zoo/mlflow.db
    tracking.experiment         MLFLOW_EXPERIMENT_NAME                the sweep's name
    ray.address                 RAY_ADDRESS                           a local Ray started in-process
    ray.runtime_env             (file only)                           {}
    ray.forward_env             MAPLE_ZOO_RAY_FORWARD_ENV (comma list) []: nothing is copied
    storage.path                MAPLE_ZOO_STORAGE                     ./.maple-zoo/sweeps/<name>/ray
    storage.s3.endpoint_url     MAPLE_ZOO_STORAGE_S3_ENDPOINT_URL     the zoo's S3 endpoint, else AWS
    storage.s3.region           MAPLE_ZOO_STORAGE_S3_REGION           the zoo's S3 region, else pyarrow's
    zoo.*                       MAPLE_ZOO_STORE, MAPLE_ZOO_S3_* ...    see maple_zoo/zoo/config.py

Secrets are never part of this file: MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD (or _TOKEN),
boto3 and pyarrow read AWS_* (or a profile / instance role), Ray reads RAY_AUTH_TOKEN. URLs are shown
with any `user:password@` removed.

`python -m maple_zoo.settings [--config FILE]` prints every resolved value and where it came from.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import MapleZooError, did_you_mean
from .yamlio import LineMap, read_yaml, validate
from .zoo.config import DEFAULT_CONFIG_FILE, ENV_CONFIG, ZooConfig
from .zoo.config import load_config as load_zoo_config
from .zoo.s3 import redact_url

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"  # MLflow's own variable, so plain mlflow clients agree with us
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_RAY_ADDRESS = "RAY_ADDRESS"  # Ray's own variable; `ray job submit` and KubeRay RayJobs set it
ENV_FORWARD = "MAPLE_ZOO_RAY_FORWARD_ENV"
ENV_STORAGE = "MAPLE_ZOO_STORAGE"
ENV_STORAGE_S3 = {"endpoint_url": "MAPLE_ZOO_STORAGE_S3_ENDPOINT_URL", "region": "MAPLE_ZOO_STORAGE_S3_REGION"}
ENV_ZOO_S3 = {"endpoint_url": "MAPLE_ZOO_S3_ENDPOINT_URL", "region": "MAPLE_ZOO_S3_REGION"}

# Variables copied from the driver's environment into the Ray job's runtime_env (only those set).
# None by default: trials never talk to MLflow (the driver logs), and a runtime_env is visible in
# the Ray dashboard, so secrets are not copied unless listed. Typical entries: AWS_* on a cluster
# whose nodes lack credentials for the storage bucket.
DEFAULT_FORWARD_ENV: tuple[str, ...] = ()

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+:\d+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _strip(value: str | None) -> str | None:
    value = value.strip() if isinstance(value, str) else value
    return value or None


def check_tracking_uri(uri: str) -> str:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(f"'{redact_url(uri)}' is not a tracking URI (expected one of "
                         f"{', '.join(s + ':' for s in TRACKING_SCHEMES)}...)")
    if scheme in ("http", "https") and "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError("credentials do not belong in the URI; set MLFLOW_TRACKING_USERNAME/PASSWORD")
    return uri


def check_address(address: str) -> str:
    if not _ADDRESS.match(address):
        raise ValueError(f"'{address}' is not a Ray address (expected auto, HOST:PORT or ray://HOST:PORT)")
    return address


def check_storage_path(path: str) -> str:
    if "://" in path and not path.startswith("s3://"):
        raise ValueError(f"'{redact_url(path)}': expected a folder (shared by every node) or s3://bucket/prefix")
    if path.startswith("s3://") and not path[len("s3://"):].split("/", 1)[0]:
        raise ValueError(f"'{path}': missing bucket name (expected s3://bucket/prefix)")
    return path


def check_env_names(names: list[str]) -> list[str]:
    for name in names:
        if not _ENV_NAME.match(name):
            raise ValueError(f"'{name}' is not an environment variable name")
    return names


class TrackingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str | None = None
    experiment: str | None = None

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return check_tracking_uri(v) if v else v


class RaySection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    forward_env: list[str] | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return check_address(v) if v else v

    @field_validator("forward_env")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        return check_env_names(v) if v else v


class StorageS3(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None


class StorageSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    s3: StorageS3 = StorageS3()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return check_storage_path(v) if v else v


class SettingsFile(BaseModel):
    """The whole `maple-zoo.yaml`. The `zoo:` section keeps its own schema (ZooConfig)."""

    model_config = ConfigDict(extra="forbid")

    tracking: TrackingSection = TrackingSection()
    ray: RaySection = RaySection()
    storage: StorageSection = StorageSection()
    zoo: ZooConfig | None = None


SECTIONS = tuple(SettingsFile.model_fields)
SPEC_KEYS = ("tracking_uri", "experiment", "storage_path", "storage_endpoint_url", "storage_region")


@dataclass(frozen=True)
class Resolved:
    """Every resolved setting (None = not set anywhere: the caller's own default applies)."""

    config_file: str | None
    tracking_uri: str | None
    experiment: str | None
    ray_address: str | None
    runtime_env: dict[str, Any]
    forward_env: tuple[str, ...]
    storage_path: str | None
    storage_endpoint_url: str | None
    storage_region: str | None
    zoo: ZooConfig
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    # -- what the sweep hands to Ray -------------------------------------------------------------

    def ray_init_kwargs(self) -> dict[str, Any]:
        """kwargs for `ray.init`: the address (None = a local Ray) and the job's runtime_env.

        runtime_env.env_vars gets the forwarded variables from this process's environment; values
        written in the file's runtime_env.env_vars win over forwarded ones. Under `ray job submit`
        (or a KubeRay RayJob) whatever the submitted job's runtime_env already sets is left out:
        Ray refuses to merge a driver's runtime_env that repeats a key of the job's.
        """
        runtime_env = dict(self.runtime_env)
        forwarded = {k: os.environ[k] for k in self.forward_env if os.environ.get(k)}
        if self.tracking_uri and "MLFLOW_TRACKING_URI" in self.forward_env:
            forwarded["MLFLOW_TRACKING_URI"] = self.tracking_uri  # the resolved one, flag included
        env_vars = {**forwarded, **(runtime_env.get("env_vars") or {})}
        job_env = _submitted_job_runtime_env()
        for key in job_env:
            if key != "env_vars":
                runtime_env.pop(key, None)
        for key in job_env.get("env_vars") or {}:
            env_vars.pop(key, None)
        runtime_env.pop("env_vars", None)
        if env_vars:
            runtime_env["env_vars"] = env_vars
        return {"address": self.ray_address, "runtime_env": runtime_env or None}

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value, source) rows with secrets redacted, for printing."""
        rows = [
            ("config file", self.config_file or "-", self.sources["config_file"]),
            ("tracking.uri", redact_url(self.tracking_uri) or "(sqlite:///./.maple-zoo/mlflow.db)", self.sources["tracking_uri"]),
            ("tracking.experiment", self.experiment or "(the sweep name)", self.sources["experiment"]),
            ("ray.address", self.ray_address or "(local Ray in-process)", self.sources["ray_address"]),
            ("ray.runtime_env", ", ".join(sorted(self.runtime_env)) or "-", self.sources["runtime_env"]),
            ("ray.forward_env", ", ".join(k for k in self.forward_env if os.environ.get(k)) or "-",
             self.sources["forward_env"]),
            ("storage.path", redact_url(self.storage_path) or "(./.maple-zoo/sweeps/<name>/ray)", self.sources["storage_path"]),
            ("storage.s3.endpoint_url", redact_url(self.storage_endpoint_url) or "-",
             self.sources["storage_endpoint_url"]),
            ("storage.s3.region", self.storage_region or "-", self.sources["storage_region"]),
            ("zoo.store", redact_url(self.zoo.store) or "-", "see docs/zoo.md"),
            ("zoo.s3.endpoint_url", redact_url(self.zoo.s3.endpoint_url) or "-", "see docs/zoo.md"),
        ]
        return rows


def _submitted_job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the Ray job this driver was submitted as ({} outside `ray job submit`)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


# -- the file ------------------------------------------------------------------------------------


def config_path(config_file: str | Path | None = None) -> tuple[Path | None, str]:
    """The config file in force and why: --config > $MAPLE_ZOO_CONFIG > ./maple-zoo.yaml."""
    if config_file:
        return Path(config_file), "flag --config"
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]), f"env {ENV_CONFIG}"
    if Path(DEFAULT_CONFIG_FILE).is_file():
        return Path(DEFAULT_CONFIG_FILE), "./" + DEFAULT_CONFIG_FILE
    return None, "none"


def read_settings_file(path: Path | None) -> tuple[SettingsFile, LineMap | None]:
    """The whole file, validated (unknown sections and keys are errors naming file, line and key)."""
    if path is None:
        return SettingsFile(), None
    data, lines = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MapleZooError(f"{path}:1: expected a mapping with sections {', '.join(SECTIONS)}")
    for key in data:
        if key not in SECTIONS:
            raise MapleZooError(f"{path}:{lines.line((key,))}: {key}: unknown section"
                                f"{did_you_mean(str(key), SECTIONS)}; known: {', '.join(SECTIONS)}")
    data = {k: ({} if v is None else v) for k, v in data.items()}
    return validate(SettingsFile, data, str(path), lines), lines


# -- resolution ----------------------------------------------------------------------------------


def resolve(flag: Any, flag_name: str | None, env: str | None, *files: tuple[Any, str],
            default: Any = None) -> tuple[Any, str]:
    """One setting by precedence flag > env > files (in the order given) > default: (value, source).

    Each file layer is (value, where) with where like "maple-zoo.yaml:3 tracking.uri"; None = not set.
    """
    if flag is not None and flag != "":
        return flag, f"flag {flag_name}" if flag_name else "argument"
    if env and _strip(os.environ.get(env)):
        return os.environ[env].strip(), f"env {env}"
    for value, where in files:
        if value is not None and value != "":
            return value, where
    return default, "default"


def _check(value: Any, source: str, key: str, check) -> Any:
    """Validate a flag, env or sweep-file value with the file's rule, naming where it came from."""
    if value is None or source == "default":
        return value
    try:
        return check(value)
    except ValueError as exc:
        raise MapleZooError(f"{source}: {key}: {exc}") from None


def load_settings(
    config_file: str | Path | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    storage_endpoint_url: str | None = None,
    zoo_store: str | None = None,
    zoo_endpoint_url: str | None = None,
    spec: dict[str, tuple[Any, str]] | None = None,
) -> Resolved:
    """Resolve every setting: keyword arguments are the command-line flags (None = not given).

    `spec` holds the values a sweep file sets itself, {setting: (value, "sweeps/x.yaml:7 tracking.uri")}
    for the keys tracking_uri, experiment, storage_path, storage_endpoint_url, storage_region. They rank
    between the environment and maple-zoo.yaml: flag > env > sweep file > maple-zoo.yaml > default, so
    a cluster's environment wins over a laptop path written in a sweep file.
    """
    spec = dict(spec or {})
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise TypeError(f"unknown sweep-file settings: {sorted(unknown)}")
    none = (None, "")
    path, why = config_path(config_file)
    f, lines = read_settings_file(path)

    def where(*key: str) -> str:
        line = lines.line(key) if lines else None
        return f"{path}:{line} {'.'.join(key)}" if line else f"{path} {'.'.join(key)}"

    src: dict[str, str] = {"config_file": why}
    v: dict[str, Any] = {}
    v["tracking_uri"], src["tracking_uri"] = resolve(tracking_uri, "--tracking-uri", ENV_TRACKING_URI,
                                                     spec.get("tracking_uri", none),
                                                     (f.tracking.uri, where("tracking", "uri")))
    _check(v["tracking_uri"], src["tracking_uri"], "tracking.uri", check_tracking_uri)
    v["experiment"], src["experiment"] = resolve(experiment, "--experiment", ENV_EXPERIMENT,
                                                 spec.get("experiment", none),
                                                 (f.tracking.experiment, where("tracking", "experiment")))
    v["ray_address"], src["ray_address"] = resolve(address, "--address", ENV_RAY_ADDRESS,
                                                   (f.ray.address, where("ray", "address")))
    _check(v["ray_address"], src["ray_address"], "ray.address", check_address)
    src["runtime_env"] = where("ray", "runtime_env") if f.ray.runtime_env else "default"

    env_forward = _strip(os.environ.get(ENV_FORWARD))
    forward_list = [n.strip() for n in env_forward.split(",") if n.strip()] if env_forward else None
    forward, src["forward_env"] = resolve(forward_list, None, None, (f.ray.forward_env, where("ray", "forward_env")),
                                          default=list(DEFAULT_FORWARD_ENV))
    if forward_list is not None:
        src["forward_env"] = f"env {ENV_FORWARD}"
        _check(forward_list, src["forward_env"], "ray.forward_env", check_env_names)

    v["storage_path"], src["storage_path"] = resolve(storage, "--storage", ENV_STORAGE, spec.get("storage_path", none),
                                                     (f.storage.path, where("storage", "path")))
    _check(v["storage_path"], src["storage_path"], "storage.path", check_storage_path)

    zoo = load_zoo_config(path, store=zoo_store, endpoint_url=zoo_endpoint_url)
    zoo_file = f.zoo.s3 if f.zoo else None
    for key in ("endpoint_url", "region"):
        flag = storage_endpoint_url if key == "endpoint_url" else None
        value, source = resolve(flag, "--storage-endpoint-url", ENV_STORAGE_S3[key], spec.get(f"storage_{key}", none),
                                (getattr(f.storage.s3, key), where("storage", "s3", key)))
        if value is None:  # one S3-compatible server for both is the common case: inherit the zoo's
            zoo_value = getattr(zoo.s3, key)
            if zoo_value:
                value = zoo_value
                if zoo_endpoint_url and key == "endpoint_url":
                    source = "flag --endpoint-url (zoo)"
                elif os.environ.get(ENV_ZOO_S3[key]):
                    source = f"env {ENV_ZOO_S3[key]} (zoo)"
                elif zoo_file is not None and getattr(zoo_file, key):
                    source = f"{where('zoo', 's3', key)} (zoo)"
        v[f"storage_{key}"], src[f"storage_{key}"] = value, source

    return Resolved(config_file=str(path) if path else None, runtime_env=dict(f.ray.runtime_env),
                    forward_env=tuple(forward), zoo=zoo, sources=src, **v)


def main(argv: list[str] | None = None) -> int:
    """`python -m maple_zoo.settings [--config FILE]`: print the resolved settings and their sources."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m maple_zoo.settings", description=main.__doc__)
    parser.add_argument("--config", default=None, help="config file (default: $MAPLE_ZOO_CONFIG, ./maple-zoo.yaml)")
    args = parser.parse_args(argv)
    try:
        resolved = load_settings(args.config)
    except MapleZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = resolved.describe()
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

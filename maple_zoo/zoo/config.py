"""Where the zoo lives and where pulls are cached.

Precedence, per setting: command-line flag > environment variable > config file > default.

    setting           env var                          config file key (under `zoo:`)   default
    store             MAPLE_ZOO_STORE                  store                           ./.maple-zoo/zoo
    S3 endpoint       MAPLE_ZOO_S3_ENDPOINT_URL        s3.endpoint_url                 AWS
    S3 region         MAPLE_ZOO_S3_REGION              s3.region                       boto3 chain
    S3 profile        MAPLE_ZOO_S3_PROFILE             s3.profile                      boto3 chain
    addressing style  MAPLE_ZOO_S3_ADDRESSING_STYLE    s3.addressing_style             boto3 default
    checksum mode     MAPLE_ZOO_S3_CHECKSUM            s3.checksum                     boto3 default
    cache folder      MAPLE_ZOO_ZOO_CACHE              cache_dir                       $MAPLE_ZOO_CACHE/zoo

The config file is `--config PATH`, else $MAPLE_ZOO_CONFIG, else `./maple-zoo.yaml` when present;
only its `zoo:` section is read here. Credentials are never part of this config: boto3 finds them
(AWS_* env vars, AWS_PROFILE, SSO, instance roles).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..errors import MapleZooError
from ..yamlio import read_yaml, validate
from .s3 import S3Options, redact_url

DEFAULT_STORE = "./.maple-zoo/zoo"
DEFAULT_CONFIG_FILE = "maple-zoo.yaml"
ENV_CONFIG = "MAPLE_ZOO_CONFIG"
ENV_STORE = "MAPLE_ZOO_STORE"
ENV_CACHE = "MAPLE_ZOO_ZOO_CACHE"
ENV_S3 = {
    "endpoint_url": "MAPLE_ZOO_S3_ENDPOINT_URL",
    "region": "MAPLE_ZOO_S3_REGION",
    "profile": "MAPLE_ZOO_S3_PROFILE",
    "addressing_style": "MAPLE_ZOO_S3_ADDRESSING_STYLE",
    "checksum": "MAPLE_ZOO_S3_CHECKSUM",
}


def user_cache_root() -> Path:
    # Same rule as backbones.maple_zoo_cache(), repeated so the zoo never has to import torch.
    return Path(os.environ.get("MAPLE_ZOO_CACHE", Path.home() / ".cache" / "maple-zoo"))


class ZooConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = DEFAULT_STORE
    s3: S3Options = S3Options()
    cache_dir: Path | None = None

    @property
    def cache_root(self) -> Path:
        return (self.cache_dir or user_cache_root() / "zoo").expanduser()

    def store_cache(self) -> Path:
        """Per-store cache folder: two zoos with the same entry names never share cached files."""
        url = self.store
        if not url.startswith("s3://"):
            url = Path(url.removeprefix("file://")).expanduser().resolve().as_uri()
        tag = hashlib.sha256(url.encode()).hexdigest()[:12]
        kind = "s3" if url.startswith("s3://") else "local"
        return self.cache_root / f"{kind}-{tag}"

    def open_store(self):
        from .stores import open_store

        return open_store(self.store, self.s3)

    def __repr__(self) -> str:  # URLs may carry user:password@; never show them
        return (
            f"ZooConfig(store={redact_url(self.store)!r}, endpoint_url={redact_url(self.s3.endpoint_url)!r}, "
            f"region={self.s3.region!r}, profile={self.s3.profile!r}, cache_dir={str(self.cache_root)!r})"
        )

    __str__ = __repr__


def _config_section(path: Path | None) -> tuple[dict, str | None]:
    if path is None:
        env = os.environ.get(ENV_CONFIG)
        path = Path(env) if env else (Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    if path is None:
        return {}, None
    data, lines = read_yaml(path)
    section = (data or {}).get("zoo", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise MapleZooError(f"{path}: 'zoo' must be a mapping")
    return validate(ZooConfig, section, str(path), lines, prefix=("zoo",)).model_dump(exclude_unset=True), str(path)


def load_config(
    config_file: str | Path | None = None,
    store: str | None = None,
    cache_dir: str | Path | None = None,
    **s3_flags: str | None,
) -> ZooConfig:
    """Merge flags (non-None arguments) > env vars > config file > defaults into one ZooConfig."""
    file_values, _ = _config_section(Path(config_file) if config_file else None)
    s3 = dict(file_values.get("s3", {}))
    for key, env in ENV_S3.items():
        if os.environ.get(env):
            s3[key] = os.environ[env]
    unknown = set(s3_flags) - set(ENV_S3)
    if unknown:
        raise TypeError(f"unknown S3 flags: {sorted(unknown)}")
    s3.update({k: v for k, v in s3_flags.items() if v is not None})

    values = {k: v for k, v in file_values.items() if k != "s3"}
    if os.environ.get(ENV_STORE):
        values["store"] = os.environ[ENV_STORE]
    if os.environ.get(ENV_CACHE):
        values["cache_dir"] = os.environ[ENV_CACHE]
    if store is not None:
        values["store"] = store
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    return validate(ZooConfig, {**values, "s3": s3}, "zoo settings (flags/env)")

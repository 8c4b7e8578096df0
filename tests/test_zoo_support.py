"""Shared helpers for the zoo tests (no tests here): checkpoint folders, an S3 server on 127.0.0.1,
and a `zoo` fixture that yields a ZooConfig for the local store or for S3, so the same tests run on both.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from maple_zoo.zoo.config import ZooConfig
from maple_zoo.zoo.s3 import S3Options

FAKE_SECRET = "fake-secret-never-to-be-printed"
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "fake-key-id",
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
_SERVER: dict = {}


def make_checkpoint(folder: Path, dataset: str = "eurosat", shots: int = 16, seed: int = 1, **extra) -> Path:
    """A checkpoint folder as the training engine writes it: prompts.safetensors + card.json."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"ctx": rng.standard_normal((2, 8)).astype(np.float32),
               "vis_ctx": rng.standard_normal((3, 2, 8)).astype(np.float32)}, str(folder / "prompts.safetensors"))
    card = {
        "format": "maple-zoo/checkpoint/1",
        "method": {"name": "maple", "n_ctx": 2, "depth": 9},
        "backbone": {"arch": "MZ-Tiny", "pretrained": "world", "fingerprint": "f" * 64},
        "dataset": dataset,
        "shots": shots,
        "protocol": "base2novel",
        "classnames": ["forest", "river", "sea lake"],
        "template": "a centered satellite photo of {}.",
        "seed": seed,
        "metrics": {"base_acc": 90.0, "novel_acc": 70.0, "hm": 78.75},
        "code_version": "test",
        **extra,
    }
    (folder / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


def moto_endpoint_url() -> str:
    """One moto S3 server per test process, on 127.0.0.1 and a free port, reached over real HTTP."""
    if "url" not in _SERVER:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        _SERVER.update(server=server, url=f"http://{host}:{port}")
    return _SERVER["url"]


@pytest.fixture(scope="session")
def moto_endpoint():
    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    try:
        yield moto_endpoint_url()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"zoo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def zoo(request, tmp_path) -> ZooConfig:
    """A fresh, empty zoo (local folder or an S3 bucket with a prefix) and a fresh cache."""
    cache = tmp_path / "cache"
    if request.param == "local":
        return ZooConfig(store=str(tmp_path / "store"), cache_dir=cache)
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = new_bucket(endpoint)
    return ZooConfig(store=f"s3://{bucket}/team/zoo", s3=S3Options(endpoint_url=endpoint), cache_dir=cache)


def cache_files(config: ZooConfig) -> list[str]:
    """Everything under the cache folder (hidden files included), relative."""
    root = config.cache_root
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []

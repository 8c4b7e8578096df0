"""`maple-zoo predict NAME IMAGE...` and `maple-zoo eval NAME` on a zoo entry, through the real CLI."""

import json
import os
import subprocess
import sys

import pytest
from coop_layout import make_eurosat


@pytest.mark.integration
def test_predict_and_eval_a_promoted_entry(tmp_path):
    from maple_zoo.config import train_config_from_dict
    from maple_zoo.engine.run import run_training

    root = make_eurosat(tmp_path / "data")
    cfg = train_config_from_dict({
        "method": {"name": "maple", "depth": 3}, "backbone": {"arch": "MZ-Tiny", "pretrained": None},
        "data": {"dataset": "eurosat", "root": str(root), "shots": 2},
        "optim": {"epochs": 1, "lr": 0.01}, "output_dir": str(tmp_path / "run"),
    })
    checkpoint = run_training(cfg).checkpoint
    env = {**os.environ, "MAPLE_ZOO_STORE": str(tmp_path / "store"), "MAPLE_ZOO_CACHE": str(tmp_path / "cache")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "maple_zoo.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)

    assert cli("promote", "eurosat-2shot", "--from-checkpoint", str(checkpoint)).returncode == 0
    image = root / "eurosat" / "2750" / "Forest" / "Forest_0.jpg"
    out = cli("predict", "eurosat-2shot", str(image), "--top-k", "2", "--json")
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)[0]["top"]
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"]
    assert {t["class"] for t in top} <= {"Annual Crop Land", "Forest", "Herbaceous Vegetation Land"}

    out = cli("eval", "eurosat-2shot@v1", "--dataset", "eurosat", "--root", str(root), "--split", "novel", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["classes"] == 3

    missing = cli("predict", "eurosat-2shot", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 2 and "image not found" in missing.stderr

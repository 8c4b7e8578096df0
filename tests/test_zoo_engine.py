"""A checkpoint written by the real training engine survives promote -> pull bit for bit and loads
back into the same model (this is the path eval/predict take: pull(...).path -> load_method)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.integration
def test_engine_checkpoint_round_trips_through_the_zoo(tmp_path):
    from coop_layout import make_eurosat

    from maple_zoo.config import train_config_from_dict
    from maple_zoo.engine.restore import load_method
    from maple_zoo.engine.run import run_training
    from maple_zoo.zoo import promote_checkpoint, pull
    from maple_zoo.zoo.config import ZooConfig

    root = make_eurosat(tmp_path / "data")
    cfg = train_config_from_dict({
        "method": {"name": "maple", "depth": 3}, "backbone": {"arch": "MZ-Tiny", "pretrained": None},
        "data": {"dataset": "eurosat", "root": str(root), "shots": 2},
        "optim": {"epochs": 1, "lr": 0.01}, "output_dir": str(tmp_path / "run"), "seed": 1,
    })
    result = run_training(cfg)
    zoo = ZooConfig(store=str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    promotion = promote_checkpoint(result.checkpoint, "demo-16shot", config=zoo)
    assert promotion.record.card["method"]["name"] == "maple"

    entry = pull("demo-16shot", config=zoo)
    original, _, _ = load_method(result.checkpoint, torch.device("cpu"))
    pulled, card, bb = load_method(entry.path, torch.device("cpu"))
    assert card["classnames"] == entry.card["classnames"]
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        assert torch.equal(original(images), pulled(images))

"""Schedule, metrics, few-shot sampling, base/novel rule, config errors: fast unit tests."""

import math
from pathlib import Path

import pytest
from coop_layout import NAMES, make_eurosat

from maple_zoo.config import load_train_config, train_config_from_dict
from maple_zoo.data.datasets import Datum, Splits, load_splits
from maple_zoo.data.fewshot import class_split, fewshot, subsample_classes
from maple_zoo.engine.metrics import harmonic_mean, macro_f1
from maple_zoo.engine.schedule import epoch_lrs
from maple_zoo.errors import MapleZooError


def test_base_to_novel_learning_rates_match_the_reference():
    lrs = epoch_lrs(0.0035, 5, warmup_epochs=1, warmup_lr=1e-5)
    assert lrs == pytest.approx([1e-5, 0.0035, 0.003166, 0.002291, 0.001209], abs=1e-6)


def test_cross_dataset_learning_rates_match_the_reference():
    assert epoch_lrs(0.0026, 2) == pytest.approx([1e-5, 0.0026])


def test_harmonic_mean_of_the_maple_average_row():
    assert harmonic_mean(82.28, 75.14) == pytest.approx(78.55, abs=0.005)


def test_macro_f1_averages_over_present_labels():
    import torch

    pred, target = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    # class 0: P=1/2 R=1 -> 2/3; class 1: P=1 R=1/3 -> 1/2; class 2: 0
    assert macro_f1(pred, target) == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def _items(n_classes, per_class):
    return [Datum(f"/img/{c}_{i}.jpg", c, f"class {c}") for c in range(n_classes) for i in range(per_class)]


def test_fewshot_is_deterministic_per_shots_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPLE_ZOO_CACHE", str(tmp_path / "cache"))
    splits = Splits(_items(5, 30), _items(5, 10), _items(5, 10))
    a = fewshot(splits, 16, 1, tmp_path / "a", "x")
    b = fewshot(splits, 16, 1, tmp_path / "b", "x")  # different cache folder: sampled afresh
    c = fewshot(splits, 16, 2, tmp_path / "c", "x")
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train
    assert len(a.train) == 5 * 16 and len(a.val) == 5 * 4
    assert (tmp_path / "a" / "split_fewshot" / "shot_16-seed_1.json").is_file()
    again = fewshot(Splits([], [], splits.test), 16, 1, tmp_path / "a", "x")  # served from the cache
    assert again.train == a.train


def test_fewshot_matches_python_random_sample_order():
    """The reference: random.seed(seed), then random.sample per label in order of appearance."""
    import random

    splits = Splits(_items(3, 20), _items(3, 5), [])
    random.seed(7)
    expected = []
    for c in range(3):
        expected += random.sample([d for d in splits.train if d.label == c], 4)
    out = fewshot(splits, 4, 7, Path("/nonexistent-readonly"), "order-test")
    assert out.train == expected


def test_base_is_first_ceil_half_of_sorted_labels_relabelled_from_zero():
    assert class_split([4, 0, 2, 1, 3], "base") == [0, 1, 2]
    assert class_split([4, 0, 2, 1, 3], "new") == [3, 4]
    splits = Splits(_items(5, 2), [], _items(5, 1))
    novel = subsample_classes(splits, "new")
    assert sorted({d.label for d in novel.train}) == [0, 1]
    assert {d.classname for d in novel.test} == {"class 3", "class 4"}
    assert all(d.classname == f"class {d.label + 3}" for d in novel.test)


def test_coop_split_json_is_read_with_class_names(tmp_path):
    make_eurosat(tmp_path)
    splits = load_splits("eurosat", tmp_path)
    assert splits.classnames == NAMES
    assert Path(splits.train[0].impath).is_file()


BASE = {"method": "maple", "data": {"dataset": "eurosat", "root": "/data"}}


def test_method_defaults_fill_the_reference_recipe():
    cfg = train_config_from_dict(BASE)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.batch_size) == (0.0035, 5, 4)
    assert (cfg.method.n_ctx, cfg.method.depth) == (2, 9)


@pytest.mark.parametrize("yaml_text, fragment", [
    ("method: maple\ndata:\n  dataset: eurosat\n  root: /d\nlearning_rate: 1\n", "x.yaml:5: learning_rate: unknown key"),
    ("method: maple\ndata:\n  dataset: eurosot\n  root: /d\n", "x.yaml:3: data.dataset: unknown dataset 'eurosot'"),
    ("method: {name: maple, dept: 3}\ndata: {dataset: eurosat, root: /d}\n", "x.yaml:1: method.dept: unknown key"),
    ("method: maple\ndata: [unclosed\n", "x.yaml:3: malformed YAML"),
])
def test_config_errors_name_file_line_and_key(tmp_path, yaml_text, fragment):
    path = tmp_path / "x.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MapleZooError) as err:
        load_train_config(path)
    message = str(err.value).replace(str(tmp_path) + "/", "")
    assert fragment in message
    assert "\n" not in message


def test_missing_data_root_is_one_line(tmp_path):
    with pytest.raises(MapleZooError, match=r"data root not found: .*nowhere$"):
        load_splits("eurosat", tmp_path / "nowhere")


def test_ceil_rule_on_odd_counts():
    assert len(class_split(list(range(37)), "base")) == math.ceil(37 / 2) == 19

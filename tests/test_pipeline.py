"""The core pipeline on a tiny open_clip config and generated CoOp-layout images."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from coop_layout import make_eurosat

from maple_zoo.backbones import BackboneConfig, load_backbone
from maple_zoo.config import train_config_from_dict
from maple_zoo.engine.restore import load_method
from maple_zoo.engine.run import run_training
from maple_zoo.methods import get_method
from maple_zoo.prompting import PromptedCLIP

TINY = {"arch": "MZ-Tiny", "pretrained": None}
NAMES = ["forest", "sea or lake", "a very long class name with many many words in it", "river"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_eurosat(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tiny_clip():
    bb = load_backbone(BackboneConfig(**TINY))
    return PromptedCLIP(bb.model, bb.tokenizer), bb


def test_truncated_text_encoding_equals_the_full_context(tiny_clip):
    clip, _ = tiny_clip
    Maple = get_method("maple")
    m = Maple(clip, NAMES, Maple.Options(depth=3), "a photo of a {}.")
    with torch.no_grad():
        m.prompt_learner.compound_prompts_text[0].add_(0.5)  # make the deep prompts matter
        truncated = m.text_features()
        m.truncate_text = False
        full = m.text_features()
    assert m.token_ids.shape[1] == clip.context_length == 77
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=1e-5)


def test_prompts_are_injected_where_the_reference_puts_them(tiny_clip):
    """Layer-0 text ctx replaces positions 1..n_ctx: with ctx_init it reproduces the plain template."""
    clip, _ = tiny_clip
    Maple = get_method("maple")
    m = Maple(clip, NAMES, Maple.Options(depth=1), "a photo of a {}.")
    zs = get_method("zeroshot")(clip, NAMES, get_method("zeroshot").Options(), "a photo of a {}.")
    with torch.no_grad():
        torch.testing.assert_close(m.text_features(), zs.text_features(), atol=1e-5, rtol=1e-5)


def test_parameter_count_scales_with_model_widths(tiny_clip):
    clip, _ = tiny_clip
    Maple = get_method("maple")
    m = Maple(clip, NAMES, Maple.Options(n_ctx=2, depth=3), "a photo of a {}.")
    dt, dv = clip.text_width, clip.vision_width
    assert m.num_trainable() == 2 * dt + 2 * (2 * dt) + 3 * (dt * dv + dv)


def _cfg(root, tmp_path, **extra):
    base = {"method": {"name": "maple", "depth": 3}, "backbone": TINY,
            "data": {"dataset": "eurosat", "root": str(root), "shots": 6},
            "optim": {"epochs": 6, "lr": 0.01}, "output_dir": str(tmp_path / "run"), "seed": 1}
    base.update(extra)
    return train_config_from_dict(base)


def _train_loss(method, root, bb):
    """Loss over the (un-augmented) base training images, in eval mode."""
    from maple_zoo.config import DataConfig
    from maple_zoo.engine.data import class_set, eval_loader, load_dataset

    data = DataConfig(dataset="eurosat", root=root, shots=6)
    cs = class_set(load_dataset(data, seed=1), "base")
    images, labels = next(iter(eval_loader(cs.train, bb, 100, data)))
    method.set_classnames(cs.classnames)
    with torch.no_grad():
        return F.cross_entropy(method(images), labels).item()


def test_training_lowers_the_loss_and_the_checkpoint_reproduces_the_logits(data_root, tmp_path, tiny_clip):
    cfg = _cfg(data_root, tmp_path)
    _, bb = tiny_clip
    Maple = get_method("maple")
    torch.manual_seed(cfg.seed)  # the run seeds the same way before building the method
    before = Maple(PromptedCLIP(bb.model, bb.tokenizer), ["x"], cfg.method, "a photo of a {}.")
    loss_before = _train_loss(before, data_root, bb)

    result = run_training(cfg)
    assert {"base_acc", "novel_acc", "hm", "base_macro_f1"} <= set(result.metrics)
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert result.history[-1]["epoch"] == 6

    method, card, bb2 = load_method(result.checkpoint, torch.device("cpu"))
    loss_after = _train_loss(method, data_root, bb2)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)

    # round trip: the same prompts give the same logits in a freshly built model
    images = torch.randn(3, 3, bb2.image_size, bb2.image_size)
    reloaded, _, _ = load_method(result.checkpoint, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(method(images), reloaded(images))
    assert card["backbone"]["fingerprint"] == bb2.fingerprint
    files = {p.name: p.stat().st_size for p in result.checkpoint.iterdir()}
    assert set(files) == {"prompts.safetensors", "card.json"} and files["prompts.safetensors"] < 200_000


def test_a_base_trained_checkpoint_evaluates_on_novel_classes(data_root, tmp_path):
    result = run_training(_cfg(data_root, tmp_path, optim={"epochs": 1}))
    card = json.loads((result.checkpoint / "card.json").read_text())
    assert card["classnames"] == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]
    novel = ["Highway or Road", "Industrial Buildings", "Pasture Land"]
    method, _, bb = load_method(result.checkpoint, torch.device("cpu"), classnames=novel)
    assert method.token_ids.shape[0] == 3
    with torch.no_grad():
        assert method(torch.randn(2, 3, bb.image_size, bb.image_size)).shape == (2, 3)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "maple_zoo.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_train_and_eval_end_to_end(data_root, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "method: {name: maple, depth: 3}\n"
        "backbone: {arch: MZ-Tiny, pretrained: null}\n"
        f"data: {{dataset: eurosat, root: {data_root}, shots: 4}}\n"
        "optim: {epochs: 2}\n"
    )
    out = _cli("train", str(cfg), "--set", "optim.lr=0.01", "--output-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout.splitlines()[0])
    assert set(metrics) >= {"base_acc", "novel_acc", "hm"}
    ev = _cli("eval", str(tmp_path / "run" / "checkpoint"), "--dataset", "eurosat", "--root", str(data_root),
              "--split", "novel", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["classes"] == 3


@pytest.mark.parametrize("args, culprit", [
    (["train", "missing.yaml"], "missing.yaml: file not found"),
    (["eval", "nowhere", "--dataset", "eurosat", "--root", "/nonexistent"], "data root not found: /nonexistent"),
    (["eval", "nowhere", "--dataset", "eurosot", "--root", "/"], "unknown dataset 'eurosot'"),
    (["info", "method", "mapel"], "unknown method 'mapel'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, culprit):
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], out.stderr


@pytest.mark.parametrize("args, culprit", [
    (["world", "report", "--bogus"], "No such option: --bogus"),
    (["train"], "Missing argument 'config'"),
])
def test_cli_usage_errors_name_the_culprit_without_a_traceback(tmp_path, args, culprit):
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert culprit in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_info_reports_the_reference_parameter_count_for_vit_b16():
    out = _cli("info", "method", "maple", "--arch", "ViT-B-16", "--n-ctx", "2", "--depth", "9", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trainable_params"] == 3_555_072
    out = _cli("info", "method", "maple", "--arch", "ViT-B-16", "--n-ctx", "2", "--depth", "3", "--json")
    assert json.loads(out.stdout)["trainable_params"] == 1_185_024


def test_zero_shot_runs_through_train_without_an_optimiser(data_root, tmp_path):
    cfg = train_config_from_dict({"method": "zeroshot", "backbone": TINY, "output_dir": str(tmp_path / "zs"),
                                  "data": {"dataset": "eurosat", "root": str(data_root), "shots": 4}})
    result = run_training(cfg)
    assert result.history == [] and {"base_acc", "novel_acc", "hm"} <= set(result.metrics)
    assert (result.checkpoint / "card.json").is_file()

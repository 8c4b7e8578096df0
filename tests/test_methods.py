"""Every method on the shared prompting layer: reference parameter counts at ViT-B/16, training lowers the
loss on a tiny backbone, COMMA's two gradient modes, APLe-style's stage schedule, baseline layouts."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from coop_layout import make_eurosat

from maple_zoo.backbones import BackboneConfig, load_backbone
from maple_zoo.config import parse_method, train_config_from_dict
from maple_zoo.engine.restore import load_method
from maple_zoo.engine.run import run_training
from maple_zoo.errors import MapleZooError
from maple_zoo.info import method_info
from maple_zoo.methods import get_method, method_names
from maple_zoo.methods.common import zero_shot_text
from maple_zoo.prompting import PromptedCLIP

NAMES = ["forest", "sea or lake", "river", "annual crop land"]
TEMPLATE = "a centered satellite photo of {}."
# small but deep enough to exercise deep prompts on the 4-layer tiny towers
TINY_OPTIONS = {
    "coop": {"n_ctx": 4},
    "cocoop": {},
    "vpt": {"n_ctx": 4, "depth": 4},
    "ivlp": {"depth_text": 3, "depth_vision": 3},
    "deep_language": {"depth": 3},
    "maple": {"depth": 3},
    "comma": {"depth": 3},
    "comma_paper": {"depth": 3, "generator_grad": True},
    "aple": {"depth": 3},
}


def build(clip, name, template=TEMPLATE, classnames=NAMES, **options):
    cls = get_method(name)
    return cls(clip, list(classnames), cls.Options(**options), template)


def grads(method) -> set[str]:
    return {n for n, p in method.named_parameters() if p.grad is not None and not n.startswith("clip.")}


@pytest.fixture(scope="module")
def tiny():
    bb = load_backbone(BackboneConfig(arch="MZ-Tiny", pretrained=None))
    return PromptedCLIP(bb.model, bb.tokenizer)


@pytest.fixture(scope="module")
def batch(tiny):
    g = torch.Generator().manual_seed(0)
    size = tiny.clip.visual.image_size[0]
    return torch.randn(8, 3, size, size, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


# ------------------------------------------------------------------------------------------ ViT-B/16 counts
@pytest.fixture(scope="module")
def vitb16():
    torch.manual_seed(0)
    bb = load_backbone(BackboneConfig(arch="ViT-B-16", pretrained=None))
    return PromptedCLIP(bb.model, bb.tokenizer)


REFERENCE_COUNTS = [  # (method, options, trainable, declared): maple.md §1.6 / §2, methods.md §1.2 / §2.5
    ("coop", {}, 8_192, 8_192),
    ("cocoop", {}, 35_360, 35_360),
    ("vpt", {}, 73_728, 73_728),
    ("ivlp", {}, 30_720, 30_720),
    ("deep_language", {}, 24_576, 24_576),
    ("maple", {}, 3_555_072, 3_555_072),
    ("comma", {}, 403_200, 5_946_624),  # reference-faithful: generators and image store declared, never trained
    ("comma", {"generator_grad": True}, 5_934_336, 5_934_336),
    ("aple", {}, 23_041, 23_041),  # 9 x 2 x (512 + 768) prompts + the adapter's alpha
    ("zeroshot", {}, 0, 0),
]


@pytest.mark.parametrize("name,options,trainable,declared", REFERENCE_COUNTS)
def test_parameter_counts_at_vit_b16_match_the_reference(vitb16, name, options, trainable, declared):
    m = build(vitb16, name, classnames=["dog", "cat"], **options)
    assert (m.num_trainable(), m.num_declared()) == (trainable, declared)


def test_counts_follow_the_model_widths(tiny):
    dt, dv, e = tiny.text_width, tiny.vision_width, tiny.embed_dim
    assert build(tiny, "cocoop").num_trainable() == 4 * dt + (e * (e // 16) + e // 16) + (e // 16 * dt + dt)
    assert build(tiny, "vpt", n_ctx=8, depth=4).num_trainable() == 4 * 8 * dv
    assert build(tiny, "coop", n_ctx=16, csc=True).num_trainable() == len(NAMES) * 16 * dt


def test_every_method_is_registered_and_described():
    assert set(method_names()) >= {"zeroshot", "coop", "cocoop", "vpt", "ivlp", "deep_language", "maple", "comma",
                                   "aple"}
    for name in method_names():
        depth = 2 if name not in ("coop", "cocoop", "zeroshot") else None
        info = method_info(name, "MZ-Tiny", depth=depth)
        assert info["trainable_params"] == sum(torch.Size(s).numel() for s in info["tensors"].values())
        assert set(info["reference_optim"]) >= {"lr", "epochs", "batch_size"}
    with pytest.raises(MapleZooError, match="no depth option"):
        method_info("coop", "MZ-Tiny", depth=2)


def test_cli_info_json_and_methods_listing():
    from typer.testing import CliRunner

    from maple_zoo.cli import app

    out = CliRunner().invoke(app, ["info", "method", "comma", "--json", "--set", "generator_grad=false"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert (info["trainable_params"], info["declared_params"]) == (403_200, 5_946_624)
    listing = CliRunner().invoke(app, ["methods"]).stdout
    for name in ("comma", "aple", "coop", "cocoop", "vpt", "ivlp", "deep_language", "zeroshot"):
        assert name in listing
    assert "APLe-style (reconstructed" in listing


def test_reference_recipes():
    recipes = {n: get_method(n).reference_optim for n in method_names()}
    assert recipes["coop"] == {"lr": 0.002, "epochs": 200, "batch_size": 32}
    assert recipes["cocoop"] == {"lr": 0.002, "epochs": 10, "batch_size": 1}
    assert recipes["vpt"] == recipes["deep_language"] == {"lr": 0.0025, "epochs": 5, "batch_size": 4}
    assert recipes["ivlp"] == recipes["comma"] == recipes["aple"] == {"lr": 0.0035, "epochs": 5, "batch_size": 4}
    assert get_method("cocoop").image_conditioned


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("key", list(TINY_OPTIONS))
def test_a_few_steps_lower_the_training_loss(tiny, batch, key):
    name = "comma" if key.startswith("comma") else key
    torch.manual_seed(0)
    m = build(tiny, name, **TINY_OPTIONS[key])
    if hasattr(m, "on_epoch_start"):
        m.on_epoch_start(0, 2)
    images, labels = batch
    opt = torch.optim.SGD(list(m.trainable_parameters().values()), lr=0.05, momentum=0.9)
    m.train()
    m.clip.eval()
    with torch.no_grad():
        before = m.training_loss(images, labels)[0].item()
    for _ in range(8):
        loss, logits = m.training_loss(images, labels)
        assert logits.shape == (8, len(NAMES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = m.training_loss(images, labels)[0].item()
    assert after < before - 0.02, (before, after)


def test_bad_options_are_one_line_errors(tiny):
    with pytest.raises(MapleZooError, match="generator_gradient"):
        parse_method({"name": "comma", "generator_gradient": True}, "cfg.yaml")
    with pytest.raises(MapleZooError, match="exceeds the backbone's 4 layers"):
        build(tiny, "vpt", depth=12)
    with pytest.raises(MapleZooError, match="kp_layers 5 exceeds"):
        build(tiny, "comma", depth=2, kp_layers=5)
    with pytest.raises(MapleZooError, match="both prompt stacks are empty"):
        build(tiny, "ivlp", n_ctx_text=0, depth_vision=0)
    with pytest.raises(MapleZooError, match="adapter_block"):
        build(tiny, "aple", depth=2, adapter_block=7)


# ------------------------------------------------------------------------------------------ COMMA
GENERATOR_PREFIX = "prompt_learner.compound_prompt_projections_image"


def test_comma_modes_compute_the_same_function_and_differ_only_in_gradients(tiny, batch):
    images, labels = batch
    models = {}
    for mode in (False, True):
        torch.manual_seed(3)
        models[mode] = build(tiny, "comma", depth=4, generator_grad=mode)
    ref, paper = models[False], models[True]
    with torch.no_grad():
        torch.testing.assert_close(ref(images), paper(images))  # same init, same forward

    for m in (ref, paper):
        m.zero_grad(set_to_none=True)
        m.training_loss(images, labels)[0].backward()
    shared = {"prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.proj.bias",
              "prompt_learner.compound_prompts_text"}
    generators = {n for n, _ in paper.named_parameters() if n.startswith(GENERATOR_PREFIX)}
    assert len(generators) == 3 * 8  # 3 generators x (fc, ln, mlp.0, mlp.2) x (weight, bias)
    assert grads(ref) == shared
    assert grads(paper) == shared | generators
    assert set(ref.trainable_parameters()) == shared and set(paper.trainable_parameters()) == shared | generators
    assert not ref.prompt_learner.compound_prompts_image.requires_grad
    # in the reference mode no gradient reaches ctx through the generated prompts: ctx's gradient differs
    assert not torch.allclose(ref.prompt_learner.ctx.grad, paper.prompt_learner.ctx.grad)
    # the reference's store holds the generated prompts (as its `.data` writes do)
    assert ref.prompt_learner.compound_prompts_image.abs().sum() > 0


def test_comma_reference_checkpoint_keeps_its_random_generators(tiny, batch):
    images, _ = batch
    torch.manual_seed(1)
    trained = build(tiny, "comma", depth=3)
    state = trained.trainable_state()
    assert any(k.startswith(GENERATOR_PREFIX) for k in state)
    torch.manual_seed(2)  # a different init: the checkpoint must fully define the model
    fresh = build(tiny, "comma", depth=3)
    fresh.load_trainable_state(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), trained(images))


def test_comma_knowledge_preservation(tiny, batch, monkeypatch):
    images, labels = batch
    # no deep prompts and the student's own template: the prompted tower is frozen CLIP, the loss is 0
    same = build(tiny, "comma", template="a photo of a {}.", depth=1)
    with torch.no_grad():
        text, _ = same.prompt_learner()
        _, hidden = tiny.encode_text(same.token_ids, text, truncate=False, hidden_layers=1)
        assert same.knowledge_preservation(hidden).abs().item() < 1e-5
    # the teacher is computed once per class set, not per step, and is no checkpoint tensor
    import maple_zoo.methods.common as common

    calls = []
    real = common.zero_shot_text
    monkeypatch.setattr(common, "zero_shot_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = build(tiny, "comma", depth=3)
    for _ in range(3):
        m.training_loss(images, labels)
    assert len(calls) == 1 and m.teacher.hidden.shape == (1, len(NAMES), tiny.context_length, tiny.text_width)
    assert not any("teacher" in k for k in m.state_dict())
    m.set_classnames(NAMES[:2])
    m.training_loss(images[:2], labels[:2] % 2)
    assert len(calls) == 2 and m.teacher.hidden.shape[1] == 2
    # with kp_weight the total is CE + weight * KP
    with torch.no_grad():
        m.options = m.options.model_copy(update={"kp_weight": 0.0})
        ce = m.training_loss(images[:2], labels[:2] % 2)[0]
        m.options = m.options.model_copy(update={"kp_weight": 2.0})
        total = m.training_loss(images[:2], labels[:2] % 2)[0]
        text, _ = m.prompt_learner()
        _, hidden = tiny.encode_text(m.token_ids, text, truncate=False, hidden_layers=1)
        torch.testing.assert_close(total, ce + 2.0 * m.knowledge_preservation(hidden))


def test_multi_layer_knowledge_preservation_uses_the_true_last_blocks(tiny):
    _, one = zero_shot_text(tiny, NAMES, TEMPLATE, hidden_layers=1)
    _, two = zero_shot_text(tiny, NAMES, TEMPLATE, hidden_layers=2)
    torch.testing.assert_close(two[1], one[0])  # the last block is the last block
    assert not torch.allclose(two[0], two[1])  # and the one before differs (the reference repeats a block)


# ------------------------------------------------------------------------------------------ APLe-style
TEXT = {"prompt_learner.text_ctx", "prompt_learner.text_deep.0", "prompt_learner.text_deep.1"}
VISION = {"prompt_learner.vision_ctx", "prompt_learner.vision_deep.0", "prompt_learner.vision_deep.1",
          "adapter.alpha"}


@pytest.mark.parametrize("options,stage1,stage2", [
    ({}, TEXT, VISION),
    ({"stage_order": "vision_first"}, VISION, TEXT),
    ({"schedule": "joint"}, TEXT | VISION, TEXT | VISION),
])
def test_aple_stage_schedule_freezes_and_unfreezes_branches(tiny, batch, options, stage1, stage2):
    images, labels = batch
    torch.manual_seed(0)
    m = build(tiny, "aple", depth=3, **options)
    params = m.trainable_parameters()
    assert set(params) == TEXT | VISION  # the trainer's optimiser sees every branch from the start
    opt = torch.optim.SGD(list(params.values()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for epoch, expected in enumerate([stage1, stage1, stage1, stage2, stage2]):  # 5 epochs, split 0.6 -> 3 + 2
        m.on_epoch_start(epoch, 5)
        before = {n: p.detach().clone() for n, p in params.items()}
        opt.zero_grad(set_to_none=True)
        m.training_loss(images, labels)[0].backward()
        assert grads(m) == expected, epoch
        opt.step()
        for n, p in params.items():  # weight decay and momentum never move a frozen branch
            assert torch.equal(p, before[n]) == (n not in expected), (epoch, n)
        assert m.kl_active() == (epoch < 3 or options.get("schedule") == "joint")


def test_aple_stage_one_kl_guidance(tiny, batch):
    images, labels = batch
    m = build(tiny, "aple", depth=3)
    m.on_epoch_start(0, 5)
    with torch.no_grad():
        guided = m.training_loss(images, labels)[0]
        m.options = m.options.model_copy(update={"kl_weight": 0.0})
        plain = m.training_loss(images, labels)[0]
        zs_text, _ = zero_shot_text(tiny, NAMES, TEMPLATE)
        zs = tiny.logit_scale() * F.normalize(tiny.encode_image(images), dim=-1) @ zs_text.t()
        kl = F.kl_div(F.log_softmax(m(images), -1), F.log_softmax(zs, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(guided, plain + kl)
    m.on_epoch_start(4, 5)
    assert not m.kl_active()


def test_aple_waiting_branch_absent_uses_plain_clip_in_stage_one(tiny, batch):
    images, _ = batch
    m = build(tiny, "aple", depth=3, waiting_branch="absent")
    m.on_epoch_start(0, 5)
    with torch.no_grad():
        torch.testing.assert_close(m.image_features(images), tiny.encode_image(images))
        m.on_epoch_start(3, 5)  # stage 2: the trained text branch stays, frozen
        assert not torch.allclose(m.image_features(images), tiny.encode_image(images))


def test_aple_fourier_adapter(tiny):
    m = build(tiny, "aple", depth=2)
    adapter, (gh, gw) = m.adapter, tiny.clip.visual.grid_size
    x = torch.randn(2, 1 + gh * gw + 2, tiny.vision_width)
    torch.testing.assert_close(adapter(x, torch.tensor(0.0)), x)
    # a very narrow low-pass keeps only the mean of the grid; CLS and prompt tokens are untouched
    narrow = build(tiny, "aple", depth=2, adapter_sigma=1e-3).adapter
    out = narrow(x, torch.tensor(1.0))
    torch.testing.assert_close(out[:, 1:1 + gh * gw], x[:, 1:1 + gh * gw].mean(1, keepdim=True).expand(-1, gh * gw, -1),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :1], x[:, :1])
    torch.testing.assert_close(out[:, 1 + gh * gw:], x[:, 1 + gh * gw:])
    assert build(tiny, "aple", depth=2, adapter=False).adapter is None


# ------------------------------------------------------------------------------------------ baselines
def _reference_coop_prompts(m, clip, position):
    """trainers/coop.py's PromptLearner.forward, line for line (prefix / ctx / class / suffix)."""
    emb = clip.embed_tokens(m.token_ids)
    n = m.n_ctx
    prefix, suffix = emb[:, :1], emb[:, 1 + n:]
    ctx = m.ctx if m.ctx.dim() == 3 else m.ctx.unsqueeze(0).expand(len(m.classnames), -1, -1)
    rows = []
    for i, name in enumerate(m.classnames):
        name_len = len(clip.tokenizer.encode(name)) if hasattr(clip.tokenizer, "encode") else None
        if name_len is None:
            ids = clip.tokenize([name])
            name_len = int(clip.eot_index(ids)[0]) - 1
        cls_i, suf_i = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
        if position == "front":
            parts = [prefix[i:i + 1], cls_i, ctx[i:i + 1], suf_i]
        else:
            h = n // 2
            parts = [prefix[i:i + 1], ctx[i:i + 1, :h], cls_i, ctx[i:i + 1, h:], suf_i]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


@pytest.mark.parametrize("position", ["front", "middle"])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_class_token_positions_match_the_reference_layout(tiny, position, csc):
    m = build(tiny, "coop", n_ctx=4, class_token_position=position, csc=csc)
    with torch.no_grad():
        expected = tiny.encode_text(m.token_ids, embeds=_reference_coop_prompts(m, tiny, position), truncate=False)
        torch.testing.assert_close(m.text_features(), expected, atol=1e-5, rtol=1e-5)


def test_coop_init_and_class_specific_contexts(tiny):
    m = build(tiny, "coop", ctx_init="a photo of a")  # n_ctx = word count; reproduces the plain template
    zs = build(tiny, "zeroshot", template="a photo of a {}.")
    with torch.no_grad():
        torch.testing.assert_close(m.text_features(), zs.text_features(), atol=1e-5, rtol=1e-5)
    assert m.ctx.shape == (4, tiny.text_width)
    csc = build(tiny, "coop", csc=True)
    assert csc.ctx.shape == (len(NAMES), 16, tiny.text_width)
    with pytest.raises(MapleZooError, match="csc"):
        csc.set_classnames(["a", "b", "c", "d"])


def test_cocoop_conditions_every_image_and_chunks_exactly(tiny, batch, monkeypatch):
    images, _ = batch
    torch.manual_seed(0)
    m = build(tiny, "cocoop")
    with torch.no_grad():
        m.prompt_learner.meta_net.linear2.bias.add_(0.3)
        logits = m(images)
        # per image, as the reference loops: prompts = ctx + meta_net(image feature)
        from maple_zoo.prompting.clip import TextPrompts

        img = F.normalize(tiny.encode_image(images), dim=-1)
        rows = []
        for i in range(len(images)):
            ctx = m.prompt_learner.ctx + m.prompt_learner.meta_net(img[i:i + 1])
            txt = F.normalize(tiny.encode_text(m.token_ids, TextPrompts(first=ctx)), dim=-1)
            rows.append(tiny.logit_scale() * img[i] @ txt.t())
        torch.testing.assert_close(logits, torch.stack(rows), atol=1e-4, rtol=1e-5)
        import maple_zoo.methods.cocoop as cocoop

        monkeypatch.setattr(cocoop, "MAX_TEXT_ROWS", 2 * len(NAMES) + 1)  # chunks of 2 images
        torch.testing.assert_close(m(images), logits)
    with pytest.raises(NotImplementedError):
        m.text_features()


def test_fixed_and_initialised_text_sides_reproduce_zero_shot_clip(tiny, batch):
    images, _ = batch
    zs = build(tiny, "zeroshot", template="a photo of a {}.")
    vpt = build(tiny, "vpt", n_ctx=8, depth=4)
    lang = build(tiny, "deep_language", depth=1)  # all of "a photo of a" learnable, untouched at init
    ivlp = build(tiny, "ivlp", depth_text=1, depth_vision=0)
    with torch.no_grad():
        ref = zs.text_features()
        for m in (vpt, lang, ivlp):
            torch.testing.assert_close(m.text_features(), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lang.image_features(images), zs.image_features(images))
        assert not torch.allclose(vpt.image_features(images), zs.image_features(images))
    assert vpt.token_ids.shape == zs.token_ids.shape  # VPT ignores the dataset template, as the reference


# ------------------------------------------------------------------------------------------ maple-zoo train
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_eurosat(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("method", [{"name": "comma", "depth": 3},
                                    {"name": "aple", "depth": 3, "stage_split": 0.5},
                                    {"name": "cocoop"}])
def test_train_runs_and_the_checkpoint_reproduces_the_logits(data_root, tmp_path, method):
    cfg = train_config_from_dict({
        "method": method, "backbone": {"arch": "MZ-Tiny", "pretrained": None},
        "data": {"dataset": "eurosat", "root": str(data_root), "shots": 2},
        "optim": {"epochs": 2, "lr": 0.01, "batch_size": 2}, "output_dir": str(tmp_path / "run"), "seed": 1})
    result = run_training(cfg)
    assert {"base_acc", "novel_acc", "hm"} <= set(result.metrics) and len(result.history) == 2
    a, card, bb = load_method(result.checkpoint, torch.device("cpu"))
    b, _, _ = load_method(result.checkpoint, torch.device("cpu"))
    assert card["method"]["name"] == method["name"]
    images = torch.randn(2, 3, bb.image_size, bb.image_size)
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images))
    assert Path(result.checkpoint, "prompts.safetensors").stat().st_size < 2_000_000

"""The offline procedural world: deterministic images, CoOp-layout datasets, a reproducible small CLIP."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch

from maple_zoo.backbones import LOCAL_TAGS, load_backbone, state_dict_fingerprint
from maple_zoo.data.datasets import get_dataset, load_splits
from maple_zoo.data.world import (
    MANIFEST,
    WORLD_DATASETS,
    Concept,
    build_world,
    read_manifest,
    render,
    world_dataset,
)
from maple_zoo.errors import MapleZooError
from maple_zoo.world_clip import (
    RECIPES,
    TAG,
    PretrainRecipe,
    Vocabulary,
    encode_text_truncated,
    pretrain,
    read_sidecar,
    sample_pairs,
    weights_file,
    zero_shot_accuracy,
)

# ---------------------------------------------------------------------------------------------- generator


def _draw(seed: int) -> np.ndarray:
    concepts = [Concept(s, c, p) for s, c, p in [("star", "red", "striped"), ("heart", "blue", "outlined"),
                                                  ("ring", "white", "checkered")]]
    images, _ = render(concepts, WORLD_DATASETS[0].style, np.random.default_rng(seed))
    return images


def test_render_is_deterministic_and_seeded():
    assert np.array_equal(_draw(3), _draw(3))
    assert not np.array_equal(_draw(3), _draw(4))
    assert _draw(0).shape == (3, 64, 64, 3) and _draw(0).dtype == np.uint8


def test_pretraining_captions_cover_every_downstream_word():
    words = set()
    for d in WORLD_DATASETS:
        for c in d.classes:
            words |= set(d.info.template.format(c.name).rstrip(".").replace(",", "").split())
    captions = sample_pairs(4000, RECIPES["MZ-World"], np.random.default_rng(0)).captions
    seen = {w for c in captions for w in c.rstrip(".").split()}
    assert words <= seen, words - seen


def test_vocabulary_holds_every_class_prompt_token():
    model = open_clip.create_model("MZ-World-S")
    tokenizer = open_clip.get_tokenizer("MZ-World-S")
    vocab = Vocabulary(tokenizer, model)
    for d in WORLD_DATASETS:
        tokens = tokenizer([d.info.template.format(c.name) for c in d.classes])
        assert set(tokens.unique().tolist()) <= set(vocab.ids.tolist()), d.info.name


def test_truncated_text_encoding_is_exact():
    torch.manual_seed(0)
    model = open_clip.create_model("MZ-World-S").eval()
    tokens = open_clip.get_tokenizer("MZ-World-S")(["a photo of a red circle.", "star."])
    with torch.no_grad():
        assert torch.allclose(encode_text_truncated(model, tokens), model.encode_text(tokens), atol=1e-5)


# ---------------------------------------------------------------------------------------------- datasets on disk


def test_build_world_writes_coop_layout_reproducibly(tmp_path):
    a = build_world(tmp_path / "a", seed=5, scale="small")
    b = build_world(tmp_path / "b", seed=5, scale="small")
    assert read_manifest(a)["digest"] == read_manifest(b)["digest"]  # same seed -> byte-identical files
    for d in WORLD_DATASETS:
        info = get_dataset(d.info.name)
        assert (a / info.folder / info.split_file).is_file()
        splits = load_splits(d.info.name, a)
        names = [c.name for c in d.classes]
        assert splits.classnames == names and len(names) >= 10
        labels = sorted({x.label for x in splits.test})
        assert labels == list(range(len(names)))
        if info.test_only:
            assert not splits.train and info.domain_of and get_dataset(info.domain_of)
            assert names == [c.name for c in world_dataset(info.domain_of).classes]
        else:
            per_class = np.bincount([x.label for x in splits.train])
            assert per_class.min() >= 16
    stamp = (a / MANIFEST).stat().st_mtime_ns
    assert build_world(a, seed=5, scale="small") == a and (a / MANIFEST).stat().st_mtime_ns == stamp  # reused
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.tmp")]


def test_build_world_rejects_bad_input(tmp_path):
    with pytest.raises(MapleZooError, match="scale 'huge'"):
        build_world(tmp_path / "w", scale="huge")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(MapleZooError, match="occupied"):
        build_world(tmp_path / "occupied", scale="small")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MapleZooError, match="file"):
        build_world(tmp_path / "file" / "world", scale="small")


# ---------------------------------------------------------------------------------------------- the small CLIP


def test_pretraining_is_reproducible():
    recipe = PretrainRecipe(arch="MZ-World-S", steps=2, batch_size=16, warmup=1)
    first = state_dict_fingerprint(pretrain(recipe))
    assert first == state_dict_fingerprint(pretrain(recipe))
    other = PretrainRecipe(arch="MZ-World-S", seed=1, steps=2, batch_size=16, warmup=1)
    assert first != state_dict_fingerprint(pretrain(other))


def test_procedural_tags_are_registered():
    for arch in RECIPES:
        assert (arch, TAG) in LOCAL_TAGS


def test_world_backbone_loads_with_its_recorded_fingerprint(world):
    backbone = load_backbone(world.backbone)
    side = read_sidecar(weights_file(world.backbone.cache_dir, world.backbone.arch))
    assert backbone.fingerprint == side["fingerprint"]
    assert backbone.image_size == 64


@pytest.mark.parametrize("name", [d.info.name for d in WORLD_DATASETS])
def test_zero_shot_is_clearly_above_chance_on_both_halves(world, name):
    backbone = load_backbone(world.backbone)
    splits = load_splits(name, world.root)
    info = get_dataset(name)
    acc = zero_shot_accuracy(backbone, splits, splits.classnames, info.template)
    n = len(splits.classnames)
    for half, n_half in (("base", math.ceil(n / 2)), ("novel", n - math.ceil(n / 2))):
        assert acc[half] > 2.0 / n_half, (name, half, acc)


def test_world_report_measures_zero_shot_and_maple_per_seed(world, tmp_path):
    from maple_zoo.progress import Reporter
    from maple_zoo.world_report import world_report

    rows, table = world_report([1], tmp_path, datasets=["world_colors"], arch=world.backbone.arch,
                               reporter=Reporter(quiet=True), root=world.root)
    assert [r["method"].split()[0] for r in rows] == ["zero-shot", "MaPLe"]
    zero_shot, maple = rows
    assert zero_shot["novel_acc"][0] > 100 * 2 / 9  # 9 novel classes: well above chance
    assert maple["base_acc"][0] != zero_shot["base_acc"][0]  # the prompts trained and changed the predictions
    assert table.count("| world_colors |") == 2

"""The optimised forward (truncation, fused attention, last-block pruning) equals the plain one."""

import pytest
import torch
import torch.nn.functional as F

from maple_zoo.backbones import BackboneConfig, load_backbone
from maple_zoo.methods import get_method
from maple_zoo.prompting import PromptedCLIP

NAMES = ["forest", "sea or lake", "a much longer class name with several words", "river", "highway or road"]


@pytest.fixture(scope="module")
def maple():
    bb = load_backbone(BackboneConfig(arch="MZ-Tiny", pretrained=None))
    Maple = get_method("maple")
    m = Maple(PromptedCLIP(bb.model, bb.tokenizer), NAMES, Maple.Options(depth=3), "a photo of a {}.")
    with torch.no_grad():  # move the prompts away from their init so every position matters
        for p in m.trainable_parameters().values():
            p.add_(0.1 * torch.randn_like(p))
    return m, bb


def _step(m, images, labels, fast: bool):
    m.clip.fast = fast
    m.truncate_text = fast
    m.zero_grad()
    logits = m(images)
    F.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in m.trainable_parameters().items()}


def test_optimised_path_gives_the_plain_logits_and_gradients(maple):
    m, bb = maple
    torch.manual_seed(0)
    images = torch.randn(4, 3, bb.image_size, bb.image_size)
    labels = torch.tensor([0, 1, 2, 4])
    fast_logits, fast_grads = _step(m, images, labels, fast=True)
    plain_logits, plain_grads = _step(m, images, labels, fast=False)
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    for name, g in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_the_comparison_detects_a_wrong_pooled_row(maple, monkeypatch):
    """Guard: pooling the row before end-of-text changes the features, so the test above can fail."""
    m, _ = maple
    m.clip.fast, m.truncate_text = True, True
    with torch.no_grad():
        right = m.text_features()
        eot_index = type(m.clip).eot_index
        monkeypatch.setattr(type(m.clip), "eot_index", lambda self, ids: eot_index(self, ids) - 1)
        wrong = m.text_features()
    assert (right - wrong).abs().max() > 1e-3


METHOD_OPTIONS = [
    ("maple", {"depth": 3}),
    ("comma", {"depth": 3, "kp_layers": 2}),  # knowledge preservation reads the last blocks' hidden states
    ("aple", {"depth": 3}),
    ("ivlp", {"depth_text": 3, "depth_vision": 3}),
    ("deep_language", {"depth": 3}),
    ("coop", {}),
    ("coop", {"class_token_position": "middle"}),  # the class token inside the prompt: rows differ earlier
    ("coop", {"csc": True}),  # one context per class: no position is shared
    ("cocoop", {}),  # per-image contexts
    ("vpt", {"depth": 3}),
    ("zeroshot", {}),
]


@pytest.mark.parametrize(("name", "options"), METHOD_OPTIONS, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}"
                                                                   for n, o in METHOD_OPTIONS])
def test_every_method_trains_the_same_on_the_optimised_path(name, options):
    bb = load_backbone(BackboneConfig(arch="MZ-Tiny", pretrained=None))
    cls = get_method(name)
    torch.manual_seed(0)
    m = cls(PromptedCLIP(bb.model, bb.tokenizer), NAMES, cls.Options(**options), "a photo of a {}.")
    with torch.no_grad():
        for p in m.trainable_parameters().values():
            p.add_(0.1 * torch.randn_like(p))
    images = torch.randn(3, 3, bb.image_size, bb.image_size)
    labels = torch.tensor([0, 2, 3])
    results = {}
    for fast in (True, False):
        m.clip.fast = m.truncate_text = fast
        m.zero_grad()
        loss, logits = m.training_loss(images, labels)
        if loss.requires_grad:
            loss.backward()
        grads = {n: p.grad.clone() for n, p in m.trainable_parameters().items() if p.grad is not None}
        results[fast] = (loss.detach(), logits.detach(), grads)
    (fast_loss, fast_logits, fast_grads), (plain_loss, plain_logits, plain_grads) = results[True], results[False]
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == plain_grads.keys()
    for n, g in plain_grads.items():
        torch.testing.assert_close(fast_grads[n], g, atol=1e-6, rtol=1e-4, msg=n)


def test_the_class_prompts_share_their_common_prefix(maple, monkeypatch):
    """MaPLe's prompts "<sot> X X of a <class>." share five positions: they are computed once, not per class."""
    from maple_zoo.prompting import blocks, clip

    m, _ = maple
    m.clip.fast, m.truncate_text = True, True
    seen = []
    shared_forward = blocks.shared_prefix_block_forward

    def spy(block, prefix, suffix, mask, rows=None):
        seen.append((prefix.shape[:2], suffix.shape[0]))
        return shared_forward(block, prefix, suffix, mask, rows)

    monkeypatch.setattr(clip, "shared_prefix_block_forward", spy)
    with torch.no_grad():
        m.text_features()
    assert seen and all(shape == (1, 5) and rows == len(NAMES) for shape, rows in seen)


def test_the_comparison_detects_a_prefix_shared_too_far(maple, monkeypatch):
    """Guard: sharing one position past where the prompts differ changes the features, so the tests can fail."""
    from maple_zoo.prompting import PromptedCLIP as Prompted

    m, _ = maple
    m.clip.fast, m.truncate_text = True, True
    with torch.no_grad():
        right = m.text_features()
        length = Prompted._shared_prefix_length
        monkeypatch.setattr(Prompted, "_shared_prefix_length", staticmethod(lambda *a: length(*a) + 1))
        wrong = m.text_features()
    assert (right - wrong).abs().max() > 1e-3

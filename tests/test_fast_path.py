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

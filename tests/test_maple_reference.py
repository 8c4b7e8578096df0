"""Acceptance: our MaPLe reproduces the official implementation's logits, loss and gradients.

The case file (../shared/reference/cases) holds the official model's outputs for CLIP weights anyone
can regenerate (a seeded random ViT-B-16-quickgelu, rounded through fp16) and 27 prompt tensors moved
away from their init, so a prompt at the wrong position or layer moves the logits by ~1e-2.
"""

import hashlib
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from maple_zoo.methods import get_method
from maple_zoo.prompting import PromptedCLIP

CASE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cases" / "maple_vitb16_j9_eurosat_base.pt"


def _regenerate_clip(case):
    torch.manual_seed(case["clip_seed"])
    model = open_clip.create_model(case["open_clip_model"], pretrained=None)
    sha = hashlib.sha256()
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            half = tensor.to(torch.float16)
            sha.update(key.encode())
            sha.update(half.contiguous().numpy().tobytes())
            tensor.copy_(half.float())
    return model, sha.hexdigest()


@pytest.fixture(scope="module")
def reference():
    if not CASE.is_file():
        pytest.skip(f"reference case not found at {CASE}")
    case = torch.load(CASE, weights_only=True)
    model, sha = _regenerate_clip(case)
    if sha != case["clip_weights_sha256"]:
        pytest.skip("regenerated CLIP weights differ from the case (another torch/open_clip changed the random init)")
    clip = PromptedCLIP(model, open_clip.get_tokenizer(case["open_clip_model"]))
    Maple = get_method("maple")
    options = Maple.Options(n_ctx=case["n_ctx"], depth=case["depth"], ctx_init=case["ctx_init"])
    method = Maple(clip, case["classnames"], options, case["template"])
    method.load_trainable_state(case["prompt_params"])  # official names map one to one
    return case, method


def test_case_maps_all_27_official_tensors(reference):
    case, method = reference
    assert sorted(method.trainable_parameters()) == sorted(case["prompt_params"])
    assert len(case["prompt_params"]) == 27


@pytest.mark.parametrize("truncate", [True, False])
def test_logits_loss_and_gradients_match_official(reference, truncate):
    case, method = reference
    method.truncate_text = truncate
    method.zero_grad()
    logits = method(case["images"])
    torch.testing.assert_close(logits, case["logits"], atol=1e-5, rtol=1e-5)
    loss = F.cross_entropy(logits, case["labels"])
    torch.testing.assert_close(loss, case["train_loss"], atol=1e-5, rtol=1e-5)
    loss.backward()
    params = method.trainable_parameters()
    for name, expected in case["grads"].items():
        got = params[name].grad
        scale = expected.abs().max().clamp_min(1e-12)
        assert (got - expected).abs().max() / scale < 1e-4, name


def test_a_misplaced_prompt_changes_the_logits(reference):
    """The comparison above can fail: moving the deep prompts one layer later breaks the match."""
    case, method = reference
    text, vision = method.prompt_learner()
    text.deep = [None] + list(text.deep[:-1])
    with torch.no_grad():
        logits = method.clip.encode_text(method.token_ids, text)
        from maple_zoo.prompting.clip import cosine_logits

        shifted = cosine_logits(method.clip.encode_image(case["images"], vision), logits, method.clip.logit_scale())
    assert (shifted - case["logits"]).abs().max() > 1e-4

"""The seeing Gemmas' reference models against transformers: tiny random PaliGemma 1/2, Gemma 3 multimodal and
ShieldGemma 2 checkpoints (tests/vision_oracle.py) read from Hugging Face folders in both weight layouts;
vision features, logits on prompts with images longer than the sliding window, greedy continuations and
ShieldGemma 2's probabilities."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import vision_oracle as vo
from export.models.checkpoints import CheckpointError, load_model, read_config
from export.models.generate import generate
from export.models.vision_config import VisionLanguageConfig

ARCHS = ("paligemma", "paligemma2", "gemma3", "shieldgemma2")


def _images(arch: str) -> int:
    return 1 if arch.startswith("paligemma") else 2


@pytest.mark.parametrize("old_layout", [False, True], ids=["model-prefix", "published"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(tiny_vision, arch, old_layout):
    ref, ours = tiny_vision(arch, old_layout)
    assert isinstance(ours.config, VisionLanguageConfig)
    ids, types = vo.prompt(arch, ref, images=_images(arch))
    window = ours.config.text.sliding_window
    assert window is None or len(ids) > window and ours.config.tokens_per_image > window
    pix = vo.pixels(_images(arch), vo.image_size(ref))
    want = vo.hf_logits(ref, ids, types, pix)
    with torch.no_grad():
        got, _ = ours.model(torch.tensor([ids]), torch.arange(len(ids)), None, pix)
    assert (got[0] - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_vision_features_match_transformers(tiny_vision, arch):
    ref, ours = tiny_vision(arch)
    inner = ref.model if isinstance(ref, tf.ShieldGemma2ForImageClassification) else ref
    pix = vo.pixels(2, vo.image_size(ref), seed=11)
    with torch.no_grad():
        tower = inner.model.vision_tower(pix).last_hidden_state
        projected = inner.model.get_image_features(pix).pooler_output
        assert (ours.model.vision_tower(pix) - tower).abs().max().item() < 1e-4
        assert (ours.model.image_features(pix) - projected).abs().max().item() < 1e-4
    assert projected.shape[1] == ours.config.tokens_per_image


@pytest.mark.parametrize("arch", ["paligemma", "paligemma2", "gemma3"])
def test_greedy_tokens_match_transformers_generate(tiny_vision, arch):
    ref, ours = tiny_vision(arch)
    ids, types = vo.prompt(arch, ref, images=_images(arch))
    pix = vo.pixels(_images(arch), vo.image_size(ref))
    want = vo.hf_generate(ref, ids, types, pix, 32)
    got = generate(ours.model, ids, 32, pixels=pix)
    assert got == want


def test_shieldgemma2_probabilities(tiny_vision):
    ref, ours = tiny_vision("shieldgemma2")
    assert ours.config.classifier == (vo.YES, vo.NO)
    batch = [vo.prompt("shieldgemma2", ref, text_len=n, seed=s) for n, s in ((10, 1), (10, 2))]
    ids = torch.tensor([b[0] for b in batch])
    types = torch.tensor([b[1] for b in batch])
    pix = vo.pixels(2, vo.image_size(ref), seed=7)
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=pix, token_type_ids=types).probabilities
        got = ours.model.classify(ids, pix)
    assert (got - want).abs().max().item() < 1e-5


def test_blocks_follow_each_architecture(tiny_vision):
    """Gemma 3: one block per run of image tokens; PaliGemma: the first call is one prefix block."""
    _, g3 = tiny_vision("gemma3")
    img = g3.config.image_token_id
    t = torch.tensor([[2, 5, img, img, 7, img, img, img, 9]])
    assert g3.model.blocks(t, torch.arange(9)).tolist() == [[-1, -1, 0, 0, -1, 1, 1, 1, -1]]
    _, pg = tiny_vision("paligemma")
    assert pg.model.blocks(t, torch.arange(9)).tolist() == [[0] * 9]
    assert pg.model.blocks(t[:, :1], torch.tensor([9])) is None


def test_read_config_and_errors(tiny_vision, tmp_path):
    ref, ours = tiny_vision("gemma3")
    folder = ours.source
    assert read_config(folder) == ours.config
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vision_config"]["vision_use_head"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vision_use_head"):
        load_model(bad)
    cfg["vision_config"]["vision_use_head"] = False
    cfg["mm_tokens_per_image"] = 15
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mm_tokens_per_image 15"):
        load_model(bad)

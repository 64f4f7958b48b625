"""QAT's data-free part and its start: the teacher's generations against transformers' own model (its
softmax for sampled tokens, its greedy generate for the batched KV-cache loop), GPTQ's rounding as the
start (stored as gguf-py reads it, scales held), the sampled-token cache, and RecurrentGemma refused
before any weight is read."""
import json

import gguf
import numpy as np
import pytest
import torch

from export.cli import main
from export.models.checkpoints import load_model
from export.models.checkpoints.gguf_loader import load_gguf
from export.quantize import gptq, qat_data, qat_train
from export.quantize.recipes import RECIPES
from runtime_py.sampling import Sampler, Sampling

from oracle import hf_model, save_hf_folder
from test_gptq import tiny  # noqa: F401 (a tiny Gemma 3 with a tokenizer, calib.txt: a text)
from test_qat import one_thread  # noqa: F401 (autouse: tiny models, one thread)

Q4_0 = gguf.GGMLQuantizationType.Q4_0
BOS = 2


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A tiny Gemma 3 whose final norm is scaled up, so its next-token distribution is far from uniform
    (a sampler drawing from the wrong distribution then fails the comparison)."""
    path = tmp_path_factory.mktemp("sharp") / "hf"
    hf = hf_model("gemma3", 3, vocab_size=384)
    with torch.no_grad():
        hf.model.norm.weight.mul_(6.0)
    hf.save_pretrained(path)
    return hf, load_model(path)


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@pytest.mark.parametrize("top_k", [0, qat_data.TOP_K])
def test_sampled_tokens_follow_the_teachers_softmax(sharp, top_k):
    """4,000 first tokens sampled after BOS: their frequencies are within sampling noise of transformers'
    softmax (restricted to its top-k and renormalised with top-k), far from uniform and from greedy."""
    hf, ours = sharp
    n = 4000
    with torch.no_grad():
        logits = hf(torch.tensor([[BOS]])).logits[0, -1].double()
    if top_k:
        keep = logits.topk(top_k).indices
        logits = torch.full_like(logits, -torch.inf).index_put_((keep,), logits[keep])
    p = torch.softmax(logits, -1).numpy()
    sampler = Sampler(Sampling(temperature=1.0, top_k=top_k, seed=0))
    rows = qat_data.sample_batch(ours.model, torch.full((n, 1), BOS), 2, sampler, greedy=0, top_k=top_k)
    freq = np.bincount(rows[:, 1].numpy(), minlength=len(p)) / n
    assert (freq[p == 0] == 0).all()
    noise = np.sqrt(p * (1 - p) / n).sum()                   # expected |freq - p| summed, about 0.8 of this
    assert _tv(freq, p) < 0.75 * noise
    assert _tv(np.full_like(p, 1 / len(p)), p) > 3 * noise   # the comparison can tell a wrong sampler
    assert p.max() < 0.5                                     # ... and greedy


def test_batched_generation_through_the_cache_equals_transformers_greedy(sharp):
    """Eight different prompts generated together, every token top-1: each row is what transformers'
    generate(do_sample=False) gives for that prompt alone."""
    hf, ours = sharp
    g = torch.Generator().manual_seed(1)
    prompts = torch.cat((torch.full((8, 1), BOS), torch.randint(3, 384, (8, 4), generator=g)), 1)
    rows = qat_data.sample_batch(ours.model, prompts, 24, Sampler(Sampling(seed=0)), greedy=24)
    for prompt, row in zip(prompts, rows):
        want = hf.generate(prompt[None], do_sample=False, max_new_tokens=19, min_new_tokens=19)[0]
        assert torch.equal(row, want), (row.tolist(), want.tolist())


def test_sequences_start_with_bos_then_a_text_opening_then_greedy_tokens(sharp):
    """sample_sequences: BOS and PROMPT_TOKENS tokens of the text at one place, GREEDY top-1 tokens (the
    teacher's argmax given the row so far), and one batch in BOS_ONLY_EVERY from BOS alone."""
    _, ours = sharp
    text = torch.randint(3, 384, (500,), generator=torch.Generator().manual_seed(2))
    rows = qat_data.sample_sequences(ours.model, text, 8, 16, BOS, batch=2)
    assert rows.shape == (8, 16) and (rows[:, 0] == BOS).all()
    P = qat_data.PROMPT_TOKENS
    with torch.no_grad():
        logits = ours.model(rows, torch.arange(16))[0]
    for i, row in enumerate(rows):
        if (i // 2) % qat_data.BOS_ONLY_EVERY == qat_data.BOS_ONLY_EVERY - 1:
            continue
        opening = row[1:1 + P]
        assert any(torch.equal(text[s:s + P], opening) for s in range(len(text) - P)), i
        greedy = logits[i, P:P + qat_data.GREEDY].argmax(-1)
        assert torch.equal(row[1 + P:1 + P + qat_data.GREEDY], greedy), i


def test_without_sampled_tokens_the_steps_draw_the_text_windows_as_before():
    text = torch.arange(1000)
    a = list(qat_data.training_windows(text, None, 0.5, 16, BOS, torch.Generator().manual_seed(0), 5))
    b = list(qat_data.windows(text, 16, BOS, torch.Generator().manual_seed(0), 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 5
    sampled = torch.full((3, 16), 7)
    mixed = list(qat_data.training_windows(text, sampled, 0.5, 16, BOS, torch.Generator().manual_seed(0), 200))
    share = sum(bool((w == 7).all()) for w in mixed) / 200
    assert 0.35 < share < 0.65


def _steps_scales(values: np.ndarray, stored: np.ndarray):
    """gguf-py's reading of Q4_0 bytes: (steps [R, nb, 32], scales [R, nb])."""
    d = stored.reshape(values.shape[0], -1, 18)[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    return values.reshape(values.shape[0], -1, 32) / d[..., None], d


def test_gptq_start_is_stored_exactly_and_training_keeps_its_scales(tiny, tmp_path):
    """With no step taken (lr 0) the checkpoint holds GPTQ's own blocks byte for byte, and gguf-py
    dequantizes them to the loaded weights; after steps with lr > 0 the integers move, the block scales
    stay GPTQ's, and every block is still positive scales times steps -8..7."""
    root, text = tiny
    recipe = RECIPES["int4"]
    loaded = load_model(root / "hf")
    ids = loaded.tokenizer.encode(text)
    train_ids, _ = qat_data.split_tokens(ids, 32)
    want = gptq.gptq_blocks(load_model(root / "hf"), recipe, loaded.tokenizer.decode(train_ids.tolist()), 256)
    for lr, name in ((0.0, "still.gguf"), (3e-3, "moved.gguf")):
        loaded = load_model(root / "hf")
        result = qat_train.train(loaded, ids, recipe, 6, lr=lr, seq_len=32, train_table=True, init="gptq",
                                 calibration_tokens=256, data=qat_train.Data(256))
        assert result.info["init"] == "gptq" and set(result.blocks) == set(want)
        path = qat_train.save(loaded, result, tmp_path / name, recipe)
        ckpt, back = load_gguf(path), load_model(path)
        state = back.model.state_dict()
        moved = 0
        for n, b in want.items():
            qtype, data, shape = ckpt.raw(n)
            data = np.asarray(data)
            values = gguf.quants.dequantize(data, Q4_0).reshape(shape)
            assert qtype == Q4_0 and np.array_equal(values, state[n].numpy()), n
            steps, d = _steps_scales(values, data)
            _, want_d = _steps_scales(b.dequantized(), b.data)
            assert np.array_equal(d, want_d), n
            assert np.array_equal(steps, np.round(steps)) and steps.min() >= -8 and steps.max() <= 7, n
            if lr == 0:
                assert np.array_equal(data, b.data), n
            moved += int((values != b.dequantized()).sum())
        assert (moved == 0) == (lr == 0), moved


def test_sampled_cache_is_written_then_read_back_and_a_wrong_one_refused(tiny, tmp_path, capsys):
    root, _ = tiny
    cache = tmp_path / "sampled.npy"
    argv = ["qat", "--model", str(root / "hf"), "--data", str(root / "calib.txt"), "--steps", "1", "--seq-len", "32",
            "--init", "rtn", "--sampled-tokens", "100", "--sampled-cache", str(cache), "--json"]
    assert main(argv + ["--out", str(tmp_path / "a.gguf")]) == 0
    first = json.loads(capsys.readouterr().out)["sampled"]
    rows = np.load(cache)
    assert rows.shape == (4, 32) and (rows[:, 0] == BOS).all() and not first["read"]
    assert first["tokens_per_s"] > 0
    assert main(argv + ["--out", str(tmp_path / "b.gguf")]) == 0
    assert json.loads(capsys.readouterr().out)["sampled"]["read"]
    np.save(cache, rows[:, :16])
    assert main(argv + ["--out", str(tmp_path / "c.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--sampled-cache {cache}" in err and err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "c.gguf").exists()


@pytest.mark.parametrize("role", ["--model", "--teacher"])
def test_recurrentgemma_is_refused_before_any_weight_is_read(tiny, tmp_path, capsys, monkeypatch, role):
    root, _ = tiny
    save_hf_folder("recurrentgemma", tmp_path / "rg")
    capsys.readouterr()                                  # transformers' own progress output

    def no_loading(*a, **k):
        raise AssertionError("weights were read before the refusal")
    monkeypatch.setattr("export.models.checkpoints.load_model", no_loading)
    model = tmp_path / "rg" if role == "--model" else root / "hf"
    argv = ["qat", "--model", str(model), "--data", str(root / "calib.txt"), "--steps", "1",
            "--out", str(tmp_path / "x.gguf")] + (["--teacher", str(tmp_path / "rg")] if role == "--teacher" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert role in err and "RecurrentGemma" in err and err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()

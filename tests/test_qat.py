"""QAT: fake quantizers against gguf-py's own quantization, a short distillation run on a tiny model,
and the GGUF checkpoint it writes (read back by our loader, integers checked against gguf)."""
import dataclasses
import json
from importlib import resources

import gguf
import numpy as np
import pytest
import torch

from export.cli import main
from export.models.checkpoints import load_model
from export.models.checkpoints.gguf_loader import GGUF_ARCHS, gguf_to_ours, load_gguf
from export.models.checkpoints.gguf_writer import ours_to_gguf
from export.quantize import qat, qat_train
from export.quantize.recipes import RECIPES

from oracle import save_hf_folder

Q = gguf.GGMLQuantizationType
STEPS, SEQ, LR = 60, 64, 3e-4


def _gguf_values(w: torch.Tensor, qtype) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)


@pytest.mark.parametrize("fn, qtype", [(qat.q4_0_values, Q.Q4_0), (qat.q8_0_values, Q.Q8_0)])
def test_fake_quantizers_equal_gguf_quantization(fn, qtype):
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.05, 4.0):
        w = torch.randn(64, 256, generator=g) * scale
        w[0, :32] = 0.0                                  # all-zero block
        w[1, :32] = 1e-30                                # scale underflows float16
        w[2, :2] = torch.tensor([0.5, -0.5]) * scale * 9  # tie for the largest magnitude: the first wins
        w[3, 5] = -w[3].abs().max() * 3                  # negative extreme
        w[4, 32:34] = torch.tensor([-0.5, 0.5]) * scale * 9   # ... the negative one first
        assert np.array_equal(fn(w).numpy(), _gguf_values(w, qtype)), (qtype, scale)


def test_straight_through_gradient_and_finalize_give_grid_values():
    hf = torch.nn.Linear(64, 32, bias=False)
    layer = qat.QATLinear(hf, Q.Q4_0, act=True)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).sum().backward()
    # d/dW sum(x_q @ W_q^T) = column sums of x_q, identically for every output row (STE)
    assert torch.allclose(layer.weight.grad, layer.weight.grad[:1].expand(32, 64))
    assert torch.allclose(x.grad, qat.q4_0_values(layer.weight.detach()).sum(0).expand(3, 64), atol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread only contends (the test machines are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("qat")
    save_hf_folder("gemma3", root / "hf", tokenizer=True)
    text = resources.files("export.data").joinpath("qat_train.txt").read_text(encoding="utf-8")[:40_000]
    (root / "train.txt").write_text(text)
    loaded = load_model(root / "hf")
    ids = loaded.tokenizer.encode(text)
    latent = {}                                          # the latent weights QAT ends with, before finalize
    finalize = qat.finalize

    def spy(model):
        latent.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return finalize(model)
    qat.finalize = spy
    try:
        result = qat_train.train(loaded, ids, RECIPES["int4"], STEPS, lr=LR, seq_len=SEQ)
    finally:
        qat.finalize = finalize
    path = qat_train.save(loaded, result, root / "qat.gguf", RECIPES["int4"])
    return root, loaded, result, latent, path


def test_qat_lowers_held_out_kl_against_post_training_quantization(trained):
    _, _, result, _, _ = trained
    assert result.after["kl"] < 0.9 * result.before["kl"], (result.before, result.after)


def test_checkpoint_weights_are_the_fake_quantized_weights_qat_ended_with(trained):
    _, loaded, result, latent, path = trained
    back = load_model(path)
    ours, theirs = loaded.model.state_dict(), back.model.state_dict()
    assert set(ours) == set(theirs)
    quantized = set(result.types)
    assert "model.embed_tokens.weight" in quantized and len(quantized) == 1 + 7 * loaded.config.num_layers
    for name, w in theirs.items():
        assert torch.equal(w, ours[name]), name
        if name in quantized:                            # gguf's Q4_0 of the latent weight QAT trained
            assert np.array_equal(w.numpy(), _gguf_values(latent[name], Q.Q4_0)), name
        else:
            assert torch.allclose(w, latent[name], atol=1e-6), name


def test_checkpoint_integers_are_gguf_quantization_of_the_final_weights(trained):
    _, loaded, result, _, path = trained
    ckpt = load_gguf(path)
    state = loaded.model.state_dict()
    for name in ckpt.tensor_names:
        qtype, data, shape = ckpt.raw(name)
        if name in result.types:
            assert qtype == Q.Q4_0
            assert np.array_equal(np.asarray(data), gguf.quants.quantize(state[name].numpy(), Q.Q4_0)), name
        else:
            assert qtype == Q.F32 and name.endswith("norm.weight"), name


def test_checkpoint_metadata_and_tokenizer_round_trip(trained):
    root, loaded, _, _, path = trained
    back = load_model(path)
    assert back.config.rms_eps == pytest.approx(loaded.config.rms_eps, rel=1e-6)   # stored as float32
    assert dataclasses.replace(back.config, rms_eps=loaded.config.rms_eps) == loaded.config
    text = (root / "train.txt").read_text()[:2000]
    assert back.tokenizer.encode(text) == loaded.tokenizer.encode(text)


def test_onnx_int4_artifact_carries_the_qat_integers_and_runs_the_simulated_model(trained, tmp_path):
    """The exporter carries every trained Q4_0 tensor over (no re-quantization), and onnxruntime's
    int4 artifact computes what QAT simulated: its logits are closer to the fake-quantized model
    (int8 activations included) than to the same weights with float activations."""
    import runtime_py
    from export.converters.onnx import export_onnx
    root, _, result, _, path = trained
    loaded = load_model(path)
    out = export_onnx(loaded, tmp_path / "onnx", "int4", context_length=64)
    carried = json.loads((out / "manifest.json").read_text())["lossless_import"]
    assert sorted(carried["carried"]) == sorted(result.types) and carried["requantized"] == []
    ids = loaded.tokenizer.encode((root / "train.txt").read_text()[-3000:])[:60]
    art = runtime_py.load(out).logits(ids)
    x, pos = torch.tensor([ids]), torch.arange(len(ids))
    with torch.no_grad():
        weight_only = loaded.model(x, pos)[0][0].numpy()
        simulated = qat.prepare(loaded.model, qat.Scheme.of(RECIPES["int4"]), False)(x, pos)[0][0].numpy()
    assert np.abs(art - simulated).max() < np.abs(art - weight_only).max()
    assert (art.argmax(-1) == simulated.argmax(-1)).mean() >= (art.argmax(-1) == weight_only.argmax(-1)).mean()


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gguf_names_invert_the_loader_table(family):
    from export.models import PRESETS
    from export.models.gemma import build_model
    config = next(c for c in PRESETS.values() if c.family == family)
    with torch.device("meta"):
        names = [n for n, _ in build_model(config).named_parameters()]
    arch = next(a for a in GGUF_ARCHS.values() if a.family == family)
    assert all(gguf_to_ours(ours_to_gguf(n, arch), arch) == n for n in names)


def test_cli_qat_from_a_gguf_checkpoint_copies_its_metadata(trained, tmp_path, capsys):
    root, _, _, _, path = trained
    out = tmp_path / "again.gguf"
    argv = ["qat", "--model", str(path), "--data", str(root / "train.txt"), "--steps", "2", "--seq-len", "32",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == str(out) and summary["steps"] == 2 and out.is_file()
    src, new = load_gguf(path).reader.fields, load_gguf(out).reader.fields
    assert new["gemma_export.qat.source"].contents() == path.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "gemma3.attention.sliding_window_pattern"):
        assert new[key].contents() == src[key].contents(), key
    assert not list(tmp_path.glob(".*partial"))


def test_cli_qat_resumes_from_a_checkpoint_against_the_float_teacher(trained, tmp_path, capsys):
    """From a QAT checkpoint, its own copy is the quantized model (only the int8 activations differ: next to
    nothing to learn); with --teacher the float model is the target again, and the held-out KL the resumed run
    starts from is the one the first run ended with (same text, windows and weights)."""
    root, _, result, _, path = trained
    common = ["qat", "--model", str(path), "--data", str(root / "train.txt"), "--steps", "1", "--seq-len",
              str(SEQ), "--json"]
    assert main(common + ["--out", str(tmp_path / "self.gguf")]) == 0
    alone = json.loads(capsys.readouterr().out)["held_out"]["ptq"]["kl"]
    assert main(common + ["--out", str(tmp_path / "resumed.gguf"), "--teacher", str(root / "hf")]) == 0
    resumed = json.loads(capsys.readouterr().out)
    start = resumed["held_out"]["ptq"]["kl"]
    assert abs(start - result.after["kl"]) < 1e-3 * result.after["kl"], (start, result.after)
    assert alone < 0.1 * start
    assert resumed["teacher"] == str(root / "hf")


def test_cli_qat_teacher_of_another_architecture_is_refused(trained, tmp_path, capsys):
    root = trained[0]
    save_hf_folder("gemma2", tmp_path / "other")
    argv = ["qat", "--model", str(root / "hf"), "--data", str(root / "train.txt"), "--steps", "1",
            "--out", str(tmp_path / "x.gguf"), "--teacher", str(tmp_path / "other")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--teacher {tmp_path / 'other'}" in err and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("extra, named", [
    (["--recipe", "fp16"], "--recipe fp16"),
    (["--recipe", "int3"], "--recipe int3"),
    (["--data", "/no/such/text"], "--data /no/such/text"),
])
def test_cli_qat_bad_input_is_one_clear_line(trained, tmp_path, extra, named, capsys):
    root = trained[0]
    argv = ["qat", "--model", str(root / "hf"), "--data", str(root / "train.txt"), "--steps", "1",
            "--out", str(tmp_path / "x.gguf"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "Traceback" not in err and err.count("\n") == 0
    assert not (tmp_path / "x.gguf").exists()

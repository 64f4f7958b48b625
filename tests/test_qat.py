"""QAT: fake quantizers against gguf-py's own quantization, a short distillation run on a tiny model,
and the GGUF checkpoint it writes (read back by our loader, integers checked against gguf)."""
import dataclasses
import json
from importlib import resources

import gguf
import ml_dtypes
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
STEPS, SEQ, LR = 60, 64, 1e-3


def _gguf_values(w: torch.Tensor, qtype) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)


def _edge_cases(scale: float, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(64, 256, generator=g) * scale
    w[0, :32] = 0.0                                  # all-zero block
    w[1, :32] = 1e-30                                # scale underflows float16
    w[2, :2] = torch.tensor([0.5, -0.5]) * scale * 9  # tie for the largest magnitude
    w[3, 5] = -w[3].abs().max() * 3                  # negative extreme
    w[4, 32:34] = torch.tensor([-0.5, 0.5]) * scale * 9   # ... the negative one first
    w[5, :32] = w[5, :32].abs()                      # all positive
    w[6, :32] = -w[6, :32].abs()                     # all negative
    return w


def test_q8_0_fake_quantizer_equals_gguf_quantization():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.05, 4.0):
        w = _edge_cases(scale, g)
        assert np.array_equal(qat.q8_0_values(w).numpy(), _gguf_values(w, Q.Q8_0)), scale


def test_int4_grid_is_what_gguf_stores_and_litert_reads_back():
    """The int4 grid stored as Q4_0 dequantizes (gguf-py) to the fake-quantized values bit for bit;
    its scales are positive; ai-edge-quantizer's dequantized-weight recovery (what the LiteRT exporter
    runs on these tensors) reads every block back to the same values, with scales it stores unchanged
    (bfloat16 precision); and each weight is within half a step (plus the scale's rounding) of its
    float."""
    from ai_edge_quantizer.algorithms.uniform_quantize import dequantized_weight_recovery as rec
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.05, 4.0):
        w = _edge_cases(scale, g)
        values = qat.q4_values(w)
        stored = qat.q4_encode(w.numpy())
        assert np.array_equal(gguf.quants.dequantize(stored, Q.Q4_0), values.numpy()), scale
        d = stored.reshape(64, -1, 18)[..., :2].copy().view(np.float16).astype(np.float32)
        assert (d > 0).all()
        _, s = rec.get_zp_scale_from_dequantized_symmetric_weights(values.numpy(), 1, 32)   # [64, 8]
        nonzero = (values.reshape(64, -1, 32) != 0).any(-1)          # an all-zero block reads any scale
        assert np.array_equal(s.astype(ml_dtypes.bfloat16).astype(np.float32)[nonzero], s[nonzero])
        ints = np.round(values.numpy().reshape(64, -1, 32) / s[..., None])
        assert ints.min() >= -8 and ints.max() <= 7
        assert np.array_equal(ints * s[..., None], values.numpy().reshape(64, -1, 32)), scale
        b = w.reshape(-1, 32)
        step = torch.maximum(b.amax(-1, keepdim=True) / 7, b.amin(-1, keepdim=True) / -8).clamp(min=2 ** -14)
        assert ((b - values.reshape(-1, 32)).abs() <= step * (0.5 + 2 ** -7)).all(), scale
        assert torch.equal(qat.q4_values(values), values)          # on the grid, it stays


def test_litert_cannot_hold_llama_cpp_q4_0_but_holds_the_qat_grid():
    """llama.cpp's Q4_0 puts a positive extreme at q = -8 under a negative d (+8 |d|): outside the
    [-8, 7] steps of a positive LiteRT scale, so the exporter must not try to carry such a tensor."""
    from export.converters.litert.lossless import recoverable
    from export.models.checkpoints.gguf_blocks import StoredBlocks
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    theirs = StoredBlocks("Q4_0", gguf.quants.quantize(w.numpy(), Q.Q4_0), (8, 64))
    ours = StoredBlocks("Q4_0", qat.q4_encode(w.numpy()), (8, 64))
    assert (theirs.codes_and_scales()[1] < 0).any()
    assert not recoverable(*theirs.codes_and_scales())
    assert recoverable(*ours.codes_and_scales())
    codes = np.full((1, 1, 32), 8, np.uint8)
    codes[0, 0, :2] = 8 + np.array([3, -5])                  # magnitudes 0, 3, 5: read as step 2, 3 / 2
    assert not recoverable(codes, np.ones((1, 1), np.float32))


def test_straight_through_gradient_and_finalize_give_grid_values():
    hf = torch.nn.Linear(64, 32, bias=False)
    layer = qat.QATLinear(hf, Q.Q4_0, act=True)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).sum().backward()
    # d/dW sum(x_q @ W_q^T) = column sums of x_q, identically for every output row (STE)
    assert torch.allclose(layer.weight.grad, layer.weight.grad[:1].expand(32, 64))
    assert torch.allclose(x.grad, qat.q4_values(layer.weight.detach()).sum(0).expand(3, 64), atol=1e-5)


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
        result = qat_train.train(loaded, ids, RECIPES["int4"], STEPS, lr=LR, seq_len=SEQ, init="rtn",
                                 data=qat_train.Data(0))       # the grid rule's scales, the text only
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
        if name in quantized:                            # the int4 grid of the latent weight QAT trained
            assert torch.equal(w, qat.q4_values(latent[name])), name
        else:
            assert torch.allclose(w, latent[name], atol=1e-6), name


def test_checkpoint_stores_the_final_weights_exactly_as_q4_0(trained):
    _, loaded, result, _, path = trained
    ckpt = load_gguf(path)
    state = loaded.model.state_dict()
    for name in ckpt.tensor_names:
        qtype, data, shape = ckpt.raw(name)
        if name in result.types:
            assert qtype == Q.Q4_0
            assert np.array_equal(gguf.quants.dequantize(np.asarray(data), Q.Q4_0).reshape(shape),
                                  state[name].numpy()), name
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


def _int4_weights(path) -> list[np.ndarray]:
    """Every distinct INT4 weight of a .tflite as LiteRT reads it: the signed nibbles (element 2i in
    the low nibble of byte i) times the block's float16 scale."""
    from ai_edge_litert import schema_py_generated as fb
    m = fb.Model.GetRootAs(bytearray(path.read_bytes()), 0)
    out, seen = [], set()
    for sg in range(m.SubgraphsLength()):
        g = m.Subgraphs(sg)
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            if t.Type() != fb.TensorType.INT4 or t.Buffer() in seen:
                continue
            seen.add(t.Buffer())
            rows, cols = t.ShapeAsNumpy()
            packed = m.Buffers(t.Buffer()).DataAsNumpy()
            q = np.empty(packed.size * 2, np.int8)
            q[0::2], q[1::2] = packed & 0x0F, packed >> 4
            q = np.where(q > 7, q - 16, q).reshape(rows, cols)
            details, block = t.Quantization().Details(), fb.BlockwiseQuantization()
            block.Init(details.Bytes, details.Pos)
            scales = m.Buffers(g.Tensors(block.Scales()).Buffer()).DataAsNumpy().tobytes()
            scales = np.frombuffer(scales, np.float16).astype(np.float32).reshape(rows, -1)   # [rows, blocks]
            out.append(q * np.repeat(scales, block.BlockSize(), axis=1))
    return out


def test_litert_int4_artifact_carries_the_qat_integers(trained, tmp_path):
    """Every trained tensor reaches the .tflite unchanged: its int4 weights times its stored block
    scales equal gguf-py's dequantization of the checkpoint bit for bit (ai-edge-quantizer's own
    min/max int4 would give the blocks whose extreme is negative a scale of max|x| / 7, not / 8)."""
    import runtime_py
    from export.converters.litert import export_litert
    _, _, result, _, path = trained
    out = export_litert(load_model(path), tmp_path / "litert", "int4", prefill_lengths=(8,), cache_length=32)
    carried = json.loads((out / "manifest.json").read_text())["lossless_import"]
    assert sorted(carried["carried"]) == sorted(result.types) and carried["requantized"] == []
    weights = _int4_weights(out / "model.tflite")
    ckpt = load_gguf(path)
    for name in result.types:
        _, data, shape = ckpt.raw(name)
        want = gguf.quants.dequantize(np.asarray(data), Q.Q4_0).reshape(shape)
        assert any(w.shape == want.shape and np.array_equal(w, want) for w in weights), name
    assert len(runtime_py.load(out).generate([2, 10, 11], max_new_tokens=3, stop_ids=()).token_ids) == 3


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


def test_cli_qat_resumes_from_a_checkpoint_against_the_float_teacher(trained, tmp_path, capsys, caplog):
    """From a QAT checkpoint, its own copy is the quantized model (only the int8 activations differ: next to
    nothing to learn); with --teacher the float model is the target again, and the held-out KL the resumed run
    starts from is the one the first run ended with (same text, windows and weights)."""
    root, _, result, _, path = trained
    common = ["qat", "--model", str(path), "--data", str(root / "train.txt"), "--steps", "1", "--seq-len",
              str(SEQ), "--json"]
    assert main(common + ["--out", str(tmp_path / "self.gguf"), "--init", "rtn"]) == 0   # the grid rule: idempotent
    alone = json.loads(capsys.readouterr().out)["held_out"]["ptq"]["kl"]
    assert main(common + ["--out", str(tmp_path / "resumed.gguf"), "--teacher", str(root / "hf")]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["init"] == "stored"                  # the default when resuming: the checkpoint's own blocks
    start = resumed["held_out"]["ptq"]["kl"]
    assert abs(start - result.after["kl"]) < 1e-3 * result.after["kl"], (start, result.after)
    assert alone < 0.1 * start
    assert resumed["teacher"] == str(root / "hf")
    assert "Duplicated key" not in caplog.text          # the source's own QAT keys are replaced, not re-added
    fields = gguf.GGUFReader(tmp_path / "resumed.gguf").fields
    assert fields["gemma_export.qat.source"].contents() == path.name


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

"""GPTQ onto the int4 grid both targets store: the grid rule restated here (numpy + ml_dtypes) and
gguf-py's Q4_0 dequantization are the oracles for what is stored; the published objective (a layer's
output error over its calibration inputs) for what GPTQ buys over rounding to nearest; onnxruntime
(MatMulNBits run on an identity matrix) and the .tflite's own int4 tensors for what the artifacts hold."""
import json
from importlib import resources

import gguf
import ml_dtypes
import numpy as np
import onnx
import pytest
import torch

from export.cli import main
from export.converters.litert.lossless import recoverable
from export.models.checkpoints import load_model
from export.quantize import gptq
from export.quantize.recipes import recipe

from oracle import save_hf_folder
from test_lossless_import import _matrices
from test_qat import _int4_weights, one_thread  # noqa: F401 (autouse: tiny models, one thread)

Q4_0 = gguf.GGMLQuantizationType.Q4_0
TOKENS = 256


def _grid_rtn(w: np.ndarray) -> np.ndarray:
    """Round to nearest on the grid, restated: per block of 32, s = max(max / 7, -min / 8) rounded to
    bfloat16 (at least 2^-14), q = clip(round half even(w / s), -8, 7) -> q * s."""
    b = w.reshape(-1, 32).astype(np.float32)
    s = np.maximum(b.max(-1, keepdims=True) / 7, b.min(-1, keepdims=True) / -8)
    s = np.maximum(s, 2.0 ** -14).astype(ml_dtypes.bfloat16).astype(np.float32)
    return (np.clip(np.round(b / s), -8, 7) * s).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    save_hf_folder("gemma3", root / "hf", tokenizer=True)
    text = resources.files("export.data").joinpath("qat_train.txt").read_text(encoding="utf-8")[:20_000]
    (root / "calib.txt").write_text(text)
    return root, text


@pytest.fixture(scope="module")
def blocks(tiny):
    root, text = tiny
    loaded = load_model(root / "hf")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    out = gptq.gptq_blocks(loaded, recipe("int4", "onnx"), text, tokens=TOKENS)
    after = dict(loaded.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)      # the model is left as it was
    return loaded, out


def _scales(b) -> np.ndarray:
    return b.data.reshape(b.shape[0], -1, 18)[..., :2].copy().view(np.float16).astype(np.float32)[..., 0]


def test_every_linear_and_the_table_lie_on_the_grid(blocks):
    """Every stored block is one of the grid's: a positive scale exact at bfloat16 precision (and
    float16, at least 2^-14) times steps -8..7 (Q4_0 codes 0..15 under a positive d, as gguf-py reads
    them), and every block is one LiteRT's dequantized-weight recovery reads back exactly."""
    loaded, out = blocks
    linears = {f"model.layers.{i}.{n}.weight" for i in range(loaded.config.num_layers)
               for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(out) == linears | {gptq.TABLE}
    params = dict(loaded.model.named_parameters())
    for name, b in out.items():
        assert b.kind == "Q4_0" and b.shape == tuple(params[name].shape)
        s = _scales(b)
        assert (s >= 2.0 ** -14).all()
        assert np.array_equal(s.astype(ml_dtypes.bfloat16).astype(np.float32), s)
        values = gguf.quants.dequantize(b.data, Q4_0).reshape(b.shape)
        steps = values.reshape(b.shape[0], -1, 32) / s[..., None]
        assert np.array_equal(steps, np.round(steps)) and steps.min() >= -8 and steps.max() <= 7, name
        assert np.array_equal(values, b.dequantized()), name
        assert recoverable(*b.codes_and_scales()), name


def test_a_block_the_litert_recovery_would_misread_gets_a_unit_step():
    """Steps with magnitudes 0, 2 and 5 read back as a step of 2 (5 / 2 is no integer): the weight
    nearest to one step becomes +-1, and every other block is left alone."""
    q = torch.zeros(2, 64)
    q[0, :3] = torch.tensor([2.0, -5.0, 2.0])
    q[1, :3] = torch.tensor([1.0, -5.0, 2.0])
    s = torch.full((2, 2), 0.01)
    w = torch.randn(2, 64, generator=torch.Generator().manual_seed(4)) * 0.001 + q * 0.01   # within 0.3 steps
    w[0, 7] = 0.0093                                            # the nearest to +1 step in the bad block
    fixed = gptq.recoverable(q, s, w)
    assert fixed[0, 7] == 1 and torch.equal(fixed[0, :7], q[0, :7]) and torch.equal(fixed[0, 8:], q[0, 8:])
    assert torch.equal(fixed[1], q[1])
    codes = (fixed + 8).to(torch.uint8).numpy().reshape(2, 2, 32)
    assert recoverable(codes, s.numpy()) and not recoverable((q + 8).to(torch.uint8).numpy().reshape(2, 2, 32),
                                                            s.numpy())


def test_round_to_nearest_is_the_grid_rule_and_the_scale_search_never_worse():
    """Without the search, rounding to nearest is the grid rule restated; with it, each block's scale
    is still on the grid and its squared error is at most the rule's."""
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(3)) * 0.05
    w[0, :32] = 0.0
    w[1, 5] = 0.9                                                # an outlier the search may clip
    rule = gptq.rtn_blocks(w, search=False)
    assert np.array_equal(gguf.quants.dequantize(rule.data, Q4_0).reshape(w.shape), _grid_rtn(w.numpy()))
    searched = gptq.rtn_blocks(w, search=True)
    s = _scales(searched)
    assert (s > 0).all() and np.array_equal(s.astype(ml_dtypes.bfloat16).astype(np.float32), s)
    err = lambda b: ((gguf.quants.dequantize(b.data, Q4_0).reshape(-1, 32) - w.numpy().reshape(-1, 32)) ** 2).sum(-1)  # noqa: E731
    assert (err(searched) <= err(rule)).all() and err(searched).sum() < err(rule).sum()
    assert recoverable(*searched.codes_and_scales())


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_a_linear_with_correlated_inputs(act_order):
    """The GPTQ objective: ||X W_q^T - X W^T|| over the calibration inputs X is below rounding to nearest's."""
    g = torch.Generator().manual_seed(0)
    # 128 inputs driven by 32 latent factors, plus a little independent noise
    x = torch.randn(2048, 32, generator=g) @ torch.randn(32, 128, generator=g) + 0.1 * torch.randn(2048, 128, generator=g)
    w = torch.randn(64, 128, generator=g) * 0.05
    q, s = gptq.gptq_matrix(w, x.T @ x, act_order=act_order)
    wq = (q * s.repeat_interleave(32, 1)).numpy()
    assert np.array_equal(np.round(q), q) and q.min() >= -8 and q.max() <= 7
    err = np.linalg.norm(x.numpy() @ (wq - w.numpy()).T)
    err_rtn = np.linalg.norm(x.numpy() @ (_grid_rtn(w.numpy()) - w.numpy()).T)
    assert err < 0.6 * err_rtn, (err, err_rtn)


def test_table_rounded_by_the_head_or_to_nearest(tiny, blocks):
    """By default the table is rounded by GPTQ as the LM head over the final norm's outputs (not to
    nearest); table="rtn" without the scale search gives the grid rule; the mixed recipe (int8 table)
    leaves the table to the exporter."""
    root, text = tiny
    loaded, out = blocks
    table = loaded.model.model.embed_tokens.weight.detach()
    assert out.info["table"] == "gptq"
    assert not np.array_equal(out[gptq.TABLE].dequantized(), gptq.rtn_blocks(table, search=True).dequantized())
    rtn = gptq.gptq_blocks(loaded, recipe("int4", "onnx"), text, tokens=TOKENS,
                           options=gptq.Options(table="rtn", scale_search=False))
    assert np.array_equal(rtn[gptq.TABLE].dequantized(), _grid_rtn(table.numpy()))
    mixed = gptq.gptq_blocks(loaded, recipe("mixed", "onnx"), text, tokens=TOKENS)
    assert gptq.TABLE not in mixed and set(mixed) == set(out) - {gptq.TABLE}


def test_quantized_weights_sets_and_restores(blocks):
    loaded, out = blocks
    p = loaded.model.model.layers[0].mlp.down_proj.weight
    orig = p.detach().clone()
    with gptq.quantized_weights(loaded, out):
        assert np.array_equal(p.detach().numpy(),
                              gguf.quants.dequantize(out["model.layers.0.mlp.down_proj.weight"].data, Q4_0)
                              .reshape(p.shape))
    assert torch.equal(p, orig)


def _export(tiny, tmp_path, target, *extra):
    root, _ = tiny
    out = tmp_path / target
    argv = ["--target", target, "--quant", "int4", "--gptq", "--calibration", str(root / "calib.txt"),
            "--calibration-tokens", str(TOKENS), "--model", str(root / "hf"), "--out", str(out), "--no-validate", "--json", *extra]
    assert main(argv) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_onnx_artifact_carries_every_gptq_tensor_bit_for_bit(tiny, blocks, tmp_path, capsys):
    """What onnxruntime multiplies by (MatMulNBits on an identity matrix, float activations) is gguf-py's
    dequantization of the GPTQ blocks, for every linear (q/k/v and gate/up are fused) and the head."""
    out, manifest = _export(tiny, tmp_path, "onnx")
    loaded, want = blocks
    assert sorted(manifest["lossless_import"]["carried"]) == sorted(want)
    assert manifest["lossless_import"]["requantized"] == []
    r = manifest["rounding"]
    assert r["method"] == "gptq" and r["calibration_tokens"] == TOKENS and r["calibration"].endswith("calib.txt")
    assert manifest["lossless_import"]["rounding"] == r
    got = _matrices(onnx.load(str(out / "model.onnx")))
    deq = {n: gguf.quants.dequantize(b.data, Q4_0).reshape(b.shape) for n, b in want.items()}
    for i in range(loaded.config.num_layers):
        p = f"model.layers.{i}."
        n = f"/model/layers.{i}"
        qkv = np.concatenate([deq[p + f"self_attn.{k}_proj.weight"] for k in "qkv"])
        gu = np.concatenate([deq[p + f"mlp.{k}_proj.weight"] for k in ("gate", "up")])
        assert np.array_equal(got[f"{n}/attn/qkv_proj/MatMul_Q4"], qkv), i
        assert np.array_equal(got[f"{n}/attn/o_proj/MatMul_Q4"], deq[p + "self_attn.o_proj.weight"]), i
        assert np.array_equal(got[f"{n}/mlp/gate_up_proj/MatMul_Q4"], gu), i
        assert np.array_equal(got[f"{n}/mlp/down_proj/MatMul_Q4"], deq[p + "mlp.down_proj.weight"]), i
    assert np.array_equal(got["/lm_head/MatMul_Q4"], deq[gptq.TABLE])


def test_litert_artifact_carries_every_gptq_tensor_bit_for_bit(tiny, blocks, tmp_path, capsys):
    """The .tflite's int4 weights times their block scales are gguf-py's dequantization of the GPTQ blocks."""
    out, manifest = _export(tiny, tmp_path, "litert", "--prefill", "8", "--context", "32")
    _, want = blocks
    assert sorted(manifest["lossless_import"]["carried"]) == sorted(want)
    assert manifest["lossless_import"]["requantized"] == [] and manifest["rounding"]["method"] == "gptq"
    weights = _int4_weights(out / "model.tflite")
    for name, b in want.items():
        w = gguf.quants.dequantize(b.data, Q4_0).reshape(b.shape)
        assert any(x.shape == w.shape and np.array_equal(x, w) for x in weights), name


@pytest.mark.parametrize("extra, named", [
    (["--quant", "int4-b128", "--gptq"], "--gptq"),
    (["--quant", "int8", "--gptq"], "--gptq"),
    (["--quant", "int4", "--gptq", "--calibration", "/nonexistent.txt"], "--calibration /nonexistent.txt"),
    (["--quant", "int4", "--no-gptq", "--calibration", "/nonexistent.txt"], "--calibration"),
    (["--quant", "int4", "--gptq", "--calibration-tokens", "3"], "--calibration-tokens 3"),
])
def test_cli_refuses_gptq_it_cannot_do(tiny, tmp_path, capsys, extra, named):
    root, _ = tiny
    out = tmp_path / "x"
    assert main(["--target", "onnx", "--model", str(root / "hf"), "--out", str(out), "--no-validate", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and named in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_gptq_artifacts_pass_the_conversion_check_in_the_pipeline_and_alone(tiny, tmp_path, capsys):
    """The simulation holds the GPTQ integers: inside the export (the blocks it computed) and in a later
    `gemma-export validate` (GPTQ computed again from the manifest's record), while a simulation that
    rounds to nearest instead would not be what the artifact computes."""
    from export.validate import validate
    out, _ = _export(tiny, tmp_path, "onnx")
    capsys.readouterr()
    root, _ = tiny
    argv = ["--target", "onnx", "--quant", "int4", "--gptq", "--calibration", str(root / "calib.txt"),
            "--calibration-tokens", str(TOKENS), "--model", str(root / "hf"), "--out", str(tmp_path / "v"), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["conversion"]["passed"]
    alone = validate(out, str(root / "hf"))
    assert alone["conversion"]["passed"], alone["conversion"]["failures"]
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["lossless_import"]                        # the same artifact, simulated as rounded to nearest
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert validate(out, str(root / "hf"))["conversion"]["prefill"]["relative_error"] > \
        5 * alone["conversion"]["prefill"]["relative_error"]

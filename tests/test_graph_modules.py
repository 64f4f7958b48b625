"""Each hand-built ONNX graph piece (export/converters/onnx) against the torch module it mirrors
(export/models), module by module: the piece alone, built by its own builder into a small ONNX model
with graph inputs and outputs around it, run by onnxruntime on random inputs, and the reference
model's submodule run on the same inputs. The models are tiny random ones of tests/oracle.py's
configurations; fp32 throughout, so the bar is 1e-5 of the reference's largest magnitude."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.converters.onnx.body import Body
from export.converters.onnx.decoder import CausalAttention, lm_head, reset_mask
from export.converters.onnx.embedder import BidirectionalAttention, pooling_head
from export.converters.onnx.graph import FLOAT, INT64, Graph
from export.converters.onnx.griffin import conv1d, recurrent_block, rg_lru
from export.models import EmbeddingHead, LayerType, RecurrentState, build_model, init_cache
from export.models.checkpoints.hf import config_from_hf

from oracle import TINY, hf_config

CAUSAL = [a for a in TINY if a != "embeddinggemma"]
CONTEXT = 64        # positions the RoPE caches of the causal pieces cover
B = 2
CHUNKS = (13, 1, 6)   # three calls, past the tiny sliding window (8)
REL = 1e-5


def _model(arch: str, seed: int = 0):
    """Our reference model for a tiny config, every weight random (norm weights too, so (1 + w) counts)."""
    config = config_from_hf(hf_config(arch).to_dict())
    if config.embedding_head is not None:
        config = config.replace(embedding_head=EmbeddingHead(dense_dims=(96, 48), matryoshka_dims=(48, 32)))
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if "norm" in name else 0.08)
    return model


def _layers(archs, types=tuple(LayerType)):
    """(arch, layer index) of the first layer of each type in `types`, for each architecture."""
    out = []
    for arch in archs:
        kinds = config_from_hf(hf_config(arch).to_dict()).layer_types
        out += [pytest.param(arch, kinds.index(t), id=f"{arch}-{t.value}") for t in dict.fromkeys(kinds) if t in types]
    return out


class Piece:
    """A Graph and Body around one builder; graph outputs are exposed by name, then run."""

    def __init__(self, model):
        self.c = model.config
        self.g = Graph()
        self.body = Body(self.g, self.c, model.state_dict())

    def input(self, name: str, shape: list, elem_type=FLOAT) -> str:
        return self.g.input(name, elem_type, shape)

    def expose(self, value: str, name: str):
        """A graph output `name` [B, T, width] with the value of `value`."""
        self.g.op("Identity", [value], f"expose/{name}", outputs=[name])
        self.g.output(name, FLOAT, [f"{name}_{k}" for k in range(3)])

    def session(self) -> ort.InferenceSession:
        proto = self.g.model()
        onnx.checker.check_model(proto)
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    feeds = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in feeds.items()}
    return dict(zip(names, session.run(names, feeds)))


def _close(actual: np.ndarray, expected: torch.Tensor, what: str, rel: float = REL):
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err < rel, f"{what}: max |diff| is {err:.2e} of max |reference|"


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the body: norms, the residual stream, MLP, embedding, LM head -----------------------------------

@pytest.mark.parametrize("arch", TINY)
@torch.no_grad()
def test_norm_and_residual_add_are_the_models_rmsnorm_and_residual_stream(arch):
    """Body.norm alone, and Body.add_and_norm: the residual add and the next norm."""
    model = _model(arch)
    layer = model.model.layers[0]
    p = Piece(model)
    d = p.c.hidden_size
    p.expose(p.body.norm(p.input("x", [B, 5, d]), "model.layers.0.input_layernorm.weight", "norm"), "y")
    p.body.residual, p.body.pending = p.input("residual", [B, 5, d]), p.input("branch", [B, 5, d])
    p.expose(p.body.add_and_norm("model.layers.0.post_attention_layernorm.weight", "add_norm"), "normed")
    p.expose(p.body.residual, "residual_out")
    x, r, h = _x(B, 5, d) * 3, _x(B, 5, d, seed=1), _x(B, 5, d, seed=2)
    out = _run(p.session(), {"x": x, "residual": r, "branch": h}, ["y", "normed", "residual_out"])
    _close(out["y"], layer.input_layernorm(x), "RMSNorm")
    _close(out["residual_out"], r + h, "residual")
    _close(out["normed"], layer.post_attention_layernorm(r + h), "RMSNorm(residual + branch)")


@pytest.mark.parametrize("arch", TINY)
@torch.no_grad()
def test_mlp_is_the_models_mlp(arch):
    model = _model(arch)
    i = model.config.num_layers - 1
    p = Piece(model)
    x = p.input("x", [B, 5, p.c.hidden_size])
    p.expose(p.body.mlp(i, x), "y")
    x_val = _x(B, 5, p.c.hidden_size)
    _close(_run(p.session(), {"x": x_val}, ["y"])["y"], model.model.layers[i].mlp(x_val), "MLP")


@pytest.mark.parametrize("arch", ["gemma3", "embeddinggemma"])
@torch.no_grad()
def test_head_norm_is_the_models_q_and_k_norms(arch):
    model = _model(arch)
    attn, c = model.model.layers[0].self_attn, model.config
    p = Piece(model)
    for name, heads in (("q_norm", c.num_heads), ("k_norm", c.num_kv_heads)):
        x = p.input(name, [B, 5, heads * c.head_dim])
        p.expose(p.body.head_norm(x, f"model.layers.0.self_attn.{name}.weight", heads, name), f"{name}_out")
    feeds = {"q_norm": _x(B, 5, c.num_heads * c.head_dim), "k_norm": _x(B, 5, c.num_kv_heads * c.head_dim, seed=1)}
    out = _run(p.session(), feeds, ["q_norm_out", "k_norm_out"])
    for name in ("q_norm", "k_norm"):
        x = feeds[name]
        expected = getattr(attn, name)(x.view(B, 5, -1, c.head_dim)).reshape(B, 5, -1)
        _close(out[f"{name}_out"], expected, name)


@pytest.mark.parametrize("arch", CAUSAL)
@torch.no_grad()
def test_embedding_and_lm_head_are_the_models(arch):
    model = _model(arch)
    c = model.config
    p = Piece(model)
    ids, h = p.input("input_ids", [B, 7], INT64), p.input("h", [B, 7, c.hidden_size])
    table = p.body.embed(ids)
    p.expose(p.body.residual, "embedded")
    lm_head(p.body, h, table)
    tokens, h_val = torch.randint(0, c.vocab_size, (B, 7), generator=torch.Generator().manual_seed(0)), _x(B, 7, c.hidden_size)
    session = p.session()
    out = _run(session, {"input_ids": tokens, "h": h_val}, ["embedded", "logits"])
    _close(out["embedded"], model.model.embed(tokens), "embed_tokens * embed_scale")
    _close(out["logits"], model.logits(h_val), "tied LM head")
    last = _run(session, {"input_ids": tokens, "h": h_val, "logits_to_keep": np.array([3])}, ["logits"])["logits"]
    _close(last, model.logits(h_val)[:, -3:], "logits_to_keep 3")


# --- attention ---------------------------------------------------------------------------------------

def _zero_state(c, i: int, batch: int = B) -> dict[str, np.ndarray]:
    """Layer i's past on a first call: window-sized zeros on sliding layers, empty on global ones
    (onnxruntime-genai's contract), zero recurrent states."""
    t = c.layer_types[i]
    if t is LayerType.RECURRENT:
        W = c.recurrent_width
        return {f"conv1d_state_{i}": np.zeros((batch, c.conv1d_width - 1, W), np.float32),
                f"rg_lru_state_{i}": np.zeros((batch, W), np.float32)}
    rows = c.sliding_window if t is LayerType.LOCAL else 0
    return {f"past_key_values.{i}.{kind}": np.zeros((batch, c.num_kv_heads, rows, c.head_dim), np.float32)
            for kind in ("key", "value")}


def _gqa_rows(cache: torch.Tensor, total: int, local: bool, window: int | None) -> torch.Tensor:
    """The reference ring cache ([B, G, S, D], slot = position % S) in GroupQueryAttention's layout:
    positions 0..total-1 on global layers; on window-sized ones the newest min(total, W) positions,
    oldest first, from row 0."""
    if not local:
        return cache[:, :, :total]
    return cache[:, :, torch.arange(max(0, total - window), total) % window]


@pytest.mark.parametrize("arch,i", _layers(CAUSAL, (LayerType.GLOBAL, LayerType.LOCAL)))
@torch.no_grad()
def test_causal_attention_block_is_the_models_attention_with_its_cache(arch, i):
    """Three chunks past the window; each call's past is the previous call's present, as in runtime_py
    (batch 1: GroupQueryAttention takes a multi-token chunk after a past only for one sequence)."""
    model = _model(arch)
    c, t = model.config, model.config.layer_types[i]
    local = t is LayerType.LOCAL
    p = Piece(model)
    x = p.input("x", [1, "T", c.hidden_size])
    mask = p.input("attention_mask", [1, "total"], INT64)
    p.expose(p.body.attention_block(i, x, CausalAttention(p.body, mask, CONTEXT)), "y")
    session, presents = p.session(), [f"present.{i}.key", f"present.{i}.value"]
    cache, past, start = init_cache(c, CONTEXT), list(_zero_state(c, i, batch=1).values()), 0
    for n, T in enumerate(CHUNKS):
        positions = torch.arange(start, start + T)
        x_val = _x(1, T, c.hidden_size, seed=n)
        ropes, masks = model.model.attention_inputs(positions, cache)
        expected, entry = model.model.layers[i].self_attn(x_val, ropes[t], masks[t], positions, cache[i])
        cache = cache[:i] + (entry,) + cache[i + 1:]
        out = _run(session, {"x": x_val, "attention_mask": np.ones((1, start + T), np.int64),
                             f"past_key_values.{i}.key": past[0], f"past_key_values.{i}.value": past[1]},
                   ["y", *presents])
        start += T
        _close(out["y"], expected, f"attention output, chunk {n}")
        for name, ref in zip(presents, entry):
            rows = _gqa_rows(ref, start, local, c.sliding_window)
            _close(out[name][:, :, :rows.shape[2]], rows, f"{name}, chunk {n}")
        past = [out[name] for name in presents]


@pytest.mark.parametrize("arch,i", _layers(CAUSAL))
@torch.no_grad()
def test_decoder_layer_is_the_models_layer(arch, i):
    """The norms and residual adds around the temporal block and the MLP (sandwich norms on Gemma 2+,
    Gemma 1's post_attention_layernorm before the MLP), on a first chunk longer than the window."""
    model = _model(arch)
    c, t, T = model.config, model.config.layer_types[i], 13
    p = Piece(model)
    x = p.input("x", [B, T, c.hidden_size])
    ids, mask = p.input("input_ids", [B, T], INT64), p.input("attention_mask", [B, T], INT64)
    attention = CausalAttention(p.body, mask, CONTEXT)
    reset = reset_mask(p.g, ids, attention.width)
    p.body.residual = x
    p.body.layer(i, attention, lambda i, h: recurrent_block(p.body, i, h, reset))
    p.expose(p.g.op("Add", [p.body.residual, p.body.pending], "layer_out"), "y")
    positions, x_val = torch.arange(T), _x(B, T, c.hidden_size)
    cache = init_cache(c, CONTEXT, batch=B)
    ropes, masks = model.model.attention_inputs(positions, cache)
    expected, _ = model.model.layers[i](x_val, ropes.get(t), masks.get(t), positions, cache[i])
    feeds = {"x": x_val, "input_ids": np.zeros((B, T), np.int64), "attention_mask": np.ones((B, T), np.int64),
             **_zero_state(c, i)}
    _close(_run(p.session(), feeds, ["y"])["y"], expected, f"layer {i} ({t.value})")


# --- RecurrentGemma's recurrent block ----------------------------------------------------------------

def _recurrent_piece() -> tuple[Piece, object]:
    """A piece for layer 0 of the tiny RecurrentGemma, and that layer's RecurrentBlock."""
    model = _model("recurrentgemma")
    return Piece(model), model.model.layers[0].recurrent


def _reset(p: Piece) -> str:
    """The decoder's reset mask, from input_ids' length and a `total` input (tokens so far, new ones included)."""
    return reset_mask(p.g, p.input("input_ids", [B, "T"], INT64), p.input("total", [], INT64))


def _chunks(width: int):
    """(chunk index, positions, random input [B, T, width], the reset mask's feed) for each of CHUNKS."""
    start = 0
    for n, T in enumerate(CHUNKS):
        feed = {"input_ids": np.zeros((B, T), np.int64), "total": np.array(start + T)}
        yield n, torch.arange(start, start + T), _x(B, T, width, seed=n), feed
        start += T


@torch.no_grad()
def test_rg_lru_is_the_models_rglru():
    """From a non-zero state, which the reset at position 0 must ignore, through two more chunks."""
    p, block = _recurrent_piece()
    W = p.c.recurrent_width
    p.expose(rg_lru(p.body, 0, p.input("x", [B, "T", W]), _reset(p)), "y")
    session = p.session()
    h = _x(B, W, seed=9)
    state = h.numpy()
    for n, positions, x, feed in _chunks(W):
        expected, h = block.rg_lru(x, positions, h)
        out = _run(session, {"x": x, "rg_lru_state_0": state, **feed}, ["y", "present_rg_lru_state_0"])
        _close(out["y"], expected, f"RG-LRU output, chunk {n}")
        _close(out["present_rg_lru_state_0"], h, f"RG-LRU state, chunk {n}")
        state = out["present_rg_lru_state_0"]


@torch.no_grad()
def test_conv1d_is_the_models_depthwise_conv1d():
    """Against RecurrentBlock.conv_1d, torch's own nn.Conv1d (zero padding K-1), over the state's past
    inputs and the new ones; the state is the last K-1 inputs."""
    p, block = _recurrent_piece()
    W, K = p.c.recurrent_width, p.c.conv1d_width
    p.expose(conv1d(p.body, 0, p.input("x", [B, "T", W])), "y")
    session = p.session()
    past = _x(B, K - 1, W, seed=9)
    state = past.numpy()
    for n, positions, x, _ in _chunks(W):
        window = torch.cat((past, x), 1)
        expected = block.conv_1d(window.transpose(1, 2))[..., K - 1:K - 1 + len(positions)].transpose(1, 2)
        out = _run(session, {"x": x, "conv1d_state_0": state}, ["y", "present_conv1d_state_0"])
        past = window[:, -(K - 1):]
        _close(out["y"], expected, f"Conv1D output, chunk {n}")
        _close(out["present_conv1d_state_0"], past, f"Conv1D state, chunk {n}")
        state = out["present_conv1d_state_0"]


@torch.no_grad()
def test_recurrent_block_is_the_models_recurrent_block():
    p, block = _recurrent_piece()
    c = p.c
    p.expose(recurrent_block(p.body, 0, p.input("x", [B, "T", c.hidden_size]), _reset(p)), "y")
    session = p.session()
    state = RecurrentState(_x(B, c.recurrent_width, seed=9), _x(B, c.conv1d_width - 1, c.recurrent_width, seed=10))
    names = ["y", "present_rg_lru_state_0", "present_conv1d_state_0"]
    for n, positions, x, feed in _chunks(c.hidden_size):
        out = _run(session, {"x": x, "rg_lru_state_0": state.rg_lru, "conv1d_state_0": state.conv1d, **feed}, names)
        expected, state = block(x, None, None, positions, state)
        _close(out["y"], expected, f"recurrent block output, chunk {n}")
        _close(out["present_rg_lru_state_0"], state.rg_lru, f"RG-LRU state, chunk {n}")
        _close(out["present_conv1d_state_0"], state.conv1d, f"Conv1D state, chunk {n}")


# --- EmbeddingGemma: bidirectional attention and the pooling head ------------------------------------

def _padding_mask(T: int) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, T // 2 + 1:] = 0          # the second sequence is padded
    return mask


@pytest.mark.parametrize("arch,i", _layers(["embeddinggemma"]))
@pytest.mark.parametrize("T", [5, 21])
@torch.no_grad()
def test_bidirectional_attention_block_is_the_models_attention(arch, i, T):
    """Padded keys and, on sliding layers, keys outside the centred window are invisible."""
    model = _model(arch)
    c, t = model.config, model.config.layer_types[i]
    p = Piece(model)
    x = p.input("x", [B, "T", c.hidden_size])
    mask = p.input("attention_mask", [B, "T"], INT64)
    p.expose(p.body.attention_block(i, x, BidirectionalAttention(p.body, mask)), "y")
    positions, x_val, mask_val = torch.arange(T), _x(B, T, c.hidden_size), _padding_mask(T)
    ropes, masks = model.model.attention_inputs(positions, None, mask_val.bool())
    expected, _ = model.model.layers[i].self_attn(x_val, ropes[t], masks[t], positions, None)
    _close(_run(p.session(), {"x": x_val, "attention_mask": mask_val}, ["y"])["y"], expected, f"attention ({t.value})")


@torch.no_grad()
def test_pooling_head_is_the_models_head():
    model = _model("embeddinggemma")
    p = Piece(model)
    h, mask = p.input("h", [B, "T", p.c.hidden_size]), p.input("attention_mask", [B, "T"], INT64)
    pooling_head(p.body, h, mask)
    h_val, mask_val = _x(B, 9, p.c.hidden_size) * 4, _padding_mask(9)
    out = _run(p.session(), {"h": h_val, "attention_mask": mask_val}, ["sentence_embedding"])["sentence_embedding"]
    _close(out, model.head(h_val, mask_val.bool()), "pooling head")

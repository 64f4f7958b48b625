"""Causal Gemma LMs as one ONNX graph with onnxruntime-genai's I/O contract:
input_ids [B, T], attention_mask [B, total] (total = every token so far, new ones included),
past_key_values.{i}.key/value [B, G, P, D] -> logits [B, T, V], present.{i}.key/value.
Global layers grow their cache (an empty past on the first call); sliding-window layers keep a
window-sized ring buffer (GroupQueryAttention with sliding_window_cache): their past holds at least W
rows ([B, G, P >= W, D], zeros on the first call), as onnxruntime-genai's own builder output expects
(GroupQueryAttention rejects less: "KV cache capacity ... must be at least local_window_size"). The past goes
to GroupQueryAttention untouched, so a caller binding one buffer as both past and present (genai's
past_present_share_buffer, runtime_py) has the new rows written in place; zero-padding a shorter past
in the graph copied every sliding cache on every step.
RecurrentGemma adds its recurrent layers' states (griffin.py) and has KV caches on its attention
layers only.
`web=True` (`--target web`, for transformers.js and onnxruntime-web, whose WebGPU and JS GroupQueryAttention
lack sliding_window_cache): every cache starts empty and grows, as transformers.js starts them; sliding layers
keep their window through GroupQueryAttention's local_window_size alone; the logits' row count is the required
scalar input `num_logits_to_keep` (transformers.js feeds it when the graph declares it); a float16 or int8 table is
read by web_table's classes."""
from __future__ import annotations

import numpy as np
import onnx

from runtime_py.contract import LOGITS_TO_KEEP, NUM_LOGITS_TO_KEEP, ONNX_PAST_NAMES, ONNX_PRESENT_NAMES

from ...models.config import GemmaConfig, LayerType
from .body import Body
from .graph import FLOAT, INT64, Graph
from .griffin import recurrent_block
from .web_table import embed_tokens


def build_decoder(model, context_length: int, state=None, packer=None, taps: dict | None = None,
                  web: bool = False, web_table: str | None = None) -> onnx.ModelProto:
    """state: the weights by parameter name (default: the model's own); packer: Graph's (stream.py); taps:
    Body.taps (sparse autoencoders' sites, sae.py); web: the web graph (module docstring); web_table: how it stores
    the table (a web_table.TABLES key; None: float32)."""
    c: GemmaConfig = model.config
    g = Graph(packer)
    body = Body(g, c, model.state_dict() if state is None else state)
    body.taps.update(taps or {})
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
    attention = CausalAttention(body, mask, context_length, sliding_cache=not web)
    reset = reset_mask(g, ids, attention.width) if LayerType.RECURRENT in c.layer_types else None

    table = embed_tokens(body, ids, web_table)
    for i in range(c.num_layers):
        body.layer(i, attention, lambda i, x: recurrent_block(body, i, x, reset))
    lm_head(body, body.final_norm(), table, web)
    return g.model(doc=f"Gemma ({c.family}) causal LM exported by gemma-export")


class CausalAttention:
    """attention(i, q, k, v) for Body.attention_block: RoPE, the KV cache write and the attention core of
    export.models.layers.Attention (Attention.project after the projections and norms, Attention.core)
    as one GroupQueryAttention, with past_key_values.{i}.key/value in and present.{i}.key/value out."""

    def __init__(self, body: Body, mask: str, context_length: int, sliding_cache: bool = True):
        g, c = body.g, body.c
        self.g, self.c, self.sliding_cache = g, c, sliding_cache
        # GroupQueryAttention's view of the mask: seqlens_k = tokens so far - 1, total_sequence_length.
        n = "/model/attn_mask_reformat"
        total = g.op("ReduceSum", [mask, g.const([1])], f"{n}/ReduceSum", keepdims=0)
        self.seqlens_k = g.op("Cast", [g.op("Sub", [total, g.const([1])], f"{n}/Sub")], f"{n}/Sub/Cast",
                              to=onnx.TensorProto.INT32)
        self.width = g.op("Gather", [g.op("Shape", [mask], f"{n}/Shape"), g.const(1)], f"{n}/Gather", axis=0)
        self.total_len = g.op("Cast", [self.width], f"{n}/Gather/Cast", to=onnx.TensorProto.INT32)
        self.ropes = {t: body.rope_cache(t, context_length) for t in dict.fromkeys(c.layer_types)
                      if t is not LayerType.RECURRENT}

    def __call__(self, i: int, q: str, k: str, v: str) -> str:
        g, c = self.g, self.c
        local = c.layer_types[i] is LayerType.LOCAL
        window_cache = local and self.sliding_cache
        pn = f"/model/layers.{i}/attn"
        past = [g.input(name % i, FLOAT,
                        ["batch_size", c.num_kv_heads, "past_sliding_length" if window_cache else "past_sequence_length",
                         c.head_dim]) for name in ONNX_PAST_NAMES]
        present = [name % i for name in ONNX_PRESENT_NAMES]
        for name in present:
            g.output(name, FLOAT, ["batch_size", c.num_kv_heads,
                                   "total_sliding_length" if window_cache else "total_sequence_length", c.head_dim])
        attrs = dict(num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, scale=c.attn_scale, do_rotary=1,
                     rotary_interleaved=0, softcap=float(c.attn_softcap or 0.0),
                     local_window_size=c.sliding_window if local else -1)
        if window_cache:
            attrs["sliding_window_cache"] = 1
        out = g.op("GroupQueryAttention", [q, k, v, *past, self.seqlens_k, self.total_len,
                                           *self.ropes[c.layer_types[i]]],
                   f"{pn}/GroupQueryAttention", domain="com.microsoft", outputs=[None, *present], **attrs)
        return out[0]


def lm_head(body: Body, h: str, table, web: bool = False) -> str:
    """Mirrors GemmaForCausalLM.logits (export.models.gemma): the tied LM head and the final softcap,
    h [B, T, d] -> `logits` [B, T', V]. Optional input `logits_to_keep` [1] (transformers' argument):
    0 (default) = logits at every position, k > 0 = the last k. table: the table's initializer, or a
    web_table class reading its own storage. A prompt needs only its last position's,
    and the tied LM head over the vocabulary (262k rows for Gemma 3) is most of a prefill's cost otherwise.
    web: the required scalar `num_logits_to_keep` instead (transformers.js's name; onnxruntime lists an input
    with a default among the initializers, where transformers.js does not look)."""
    g, c = body.g, body.c
    if web:
        keep = g.op("Reshape", [g.input(NUM_LOGITS_TO_KEEP, INT64, []), g.const([1])], "/lm_head/keep/Reshape")
    else:
        keep = g.input(LOGITS_TO_KEEP, INT64, [1], default=np.array([0], np.int64))
    # Slice from -k (-0 = 0: all). [B, T, H] -> [B, T', H]
    h = g.op("Slice", [h, g.op("Neg", [keep], "/lm_head/keep/Neg"), g.const([2**62]), g.const([1])], "/lm_head/keep")
    # Gemm with transB reads the embedding table in place (no transposed copy).
    flat = g.op("Reshape", [h, g.const([-1, c.hidden_size])], "/lm_head/Reshape")
    logits = g.op("Gemm", [flat, table], "/lm_head/Gemm", transB=1) if isinstance(table, str) else table.head(flat)
    rows = g.op("Shape", [h], "/lm_head/Shape", end=2)                     # [B, T']
    shape = g.op("Concat", [rows, g.const([c.vocab_size])], "/lm_head/Concat", axis=0)
    logits = g.op("Reshape", [logits, shape], "/lm_head/Reshape_back",
                  outputs=["logits" if c.final_softcap is None else None])
    if c.final_softcap is not None:
        cap = g.const(c.final_softcap, np.float32)
        t = g.op("Tanh", [g.op("Div", [logits, cap], "/lm_head/softcap/Div")], "/lm_head/softcap/Tanh")
        logits = g.op("Mul", [t, cap], "/lm_head/softcap/Mul", outputs=["logits"])
    g.output("logits", FLOAT, ["batch_size", "logits_length", c.vocab_size])
    return logits


def reset_mask(g: Graph, ids: str, total: str) -> str:
    """bool [1, T, 1]: True for the new token at position 0, where the RG-LRU's state resets (the
    `positions == 0` of export.models.griffin.RGLRU)."""
    n = "/model/reset"
    T = g.op("Gather", [g.op("Shape", [ids], f"{n}/Shape"), g.const(1)], f"{n}/T", axis=0)
    positions = g.op("Range", [g.op("Sub", [total, T], f"{n}/start"), total, g.const(1)], f"{n}/positions")
    return g.op("Unsqueeze", [g.op("Equal", [positions, g.const(0)], f"{n}/Equal"), g.const([0, 2])], n)


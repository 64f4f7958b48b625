"""EmbeddingGemma as ONNX: input_ids [B, T], attention_mask [B, T] -> sentence_embedding [B, D]
(L2-normalised, full width) and last_hidden_state [B, T, d] (after the final norm), the names
transformers.js reads (runtime_py.contract). Bidirectional attention in plain ops; RoPE through onnxruntime's
RotaryEmbedding; masked mean pooling and the bias-free dense head."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from runtime_py.contract import LAST_HIDDEN_STATE, SENTENCE_EMBEDDING

from ...models.config import GemmaConfig
from ...models.layers import visible
from .body import Body
from .graph import FLOAT, INT64, Graph
from .plain_attention import additive, plain_attention
from .web_table import embed_tokens


def build_embedder(model, state=None, packer=None, web_table: str | None = None) -> onnx.ModelProto:
    """state, packer, web_table: as for decoder.build_decoder (the table is read by the lookup only)."""
    c: GemmaConfig = model.config
    g = Graph(packer)
    body = Body(g, c, model.state_dict() if state is None else state)
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "sequence_length"])
    attention = BidirectionalAttention(body, mask)
    embed_tokens(body, ids, web_table, tied=False)
    for i in range(c.num_layers):
        body.layer(i, attention)
    h = g.op("Identity", [body.final_norm()], "/model/last_hidden_state", outputs=[LAST_HIDDEN_STATE])
    g.output(LAST_HIDDEN_STATE, FLOAT, ["batch_size", "sequence_length", c.hidden_size])
    pooling_head(body, h, mask)
    return g.model(doc="EmbeddingGemma exported by gemma-export")


class BidirectionalAttention:
    """attention(i, q, k, v) for Body.attention_block: RoPE and the attention core of
    export.models.layers.Attention without a cache (as GemmaEmbedder runs it), over the real tokens of
    `mask` [B, T] that the layer type lets a query see (export.models.layers.visible)."""

    def __init__(self, body: Body, mask: str):
        g, c = body.g, body.c
        self.g, self.c = g, c
        # Positions 0..T-1 and, per layer type, an additive bias [B, 1, 1, T, T]: 0 where a query may
        # see a key (a real token that layers.visible allows), -inf-ish elsewhere.
        n = "/model/mask"
        T = g.op("Gather", [g.op("Shape", [mask], f"{n}/Shape"), g.const(1)], f"{n}/T", axis=0)
        pos = g.op("Range", [g.const(0), T, g.const(1)], f"{n}/Range")                             # [T]
        self.positions = g.op("Expand", [g.op("Unsqueeze", [pos, g.const([0])], f"{n}/pos2d"),
                                         g.op("Shape", [mask], f"{n}/mask_shape")], f"{n}/positions")  # [B, T]
        real = g.op("Cast", [g.op("Unsqueeze", [mask, g.const([1, 2, 3])], f"{n}/key_mask")],
                    f"{n}/key_mask/Cast", to=onnx.TensorProto.BOOL)                                # [B,1,1,1,T]
        # The model's rule as a table over offsets query - key = -(P-1)..P-1, read at [T, T] offsets.
        P = c.max_position
        offset = g.op("Add", [g.op("Sub", [g.op("Unsqueeze", [pos, g.const([1])], f"{n}/q"),
                                           g.op("Unsqueeze", [pos, g.const([0])], f"{n}/k")], f"{n}/Sub"),
                              g.const(P - 1)], f"{n}/offset")                                      # [T, T]
        self.bias = {}
        for t in dict.fromkeys(c.layer_types):
            rule = visible(c, t, torch.arange(-(P - 1), P)).numpy()
            allowed = real
            if not rule.all():
                seen = g.op("Gather", [g.init(f"visible_{t.value}", rule), offset], f"{n}/{t.value}/visible")
                allowed = g.op("And", [real, seen], f"{n}/{t.value}/And")
            self.bias[t] = additive(g, allowed, f"{n}/{t.value}/bias")
        self.ropes = {t: body.rope_cache(t, P) for t in dict.fromkeys(c.layer_types)}

    def __call__(self, i: int, q: str, k: str, v: str) -> str:
        t = self.c.layer_types[i]
        return plain_attention(self.g, self.c, f"/model/layers.{i}/attn", q, k, v, self.positions, self.ropes[t],
                               self.bias[t])


def pooling_head(body: Body, h: str, mask: str) -> str:
    """Mirrors GemmaEmbedder.head (export.models.gemma) at full width: masked mean pooling, the bias-free
    dense layers, L2 normalisation. h [B, T, d], mask [B, T] -> `sentence_embedding` [B, D]."""
    g, c = body.g, body.c
    n = "/pooling"
    w = g.op("Unsqueeze", [g.op("Cast", [mask], f"{n}/Cast", to=onnx.TensorProto.FLOAT), g.const([2])], f"{n}/w")
    total = g.op("ReduceSum", [g.op("Mul", [h, w], f"{n}/Mul"), g.const([1])], f"{n}/sum", keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [w, g.const([1])], f"{n}/count", keepdims=0),
                         g.const(1.0, np.float32)], f"{n}/count_min1")
    x = g.op("Div", [total, count], f"{n}/mean")                                                # [B, d]
    for j in range(len(c.embedding_head.dense_dims)):
        x = body.linear(x, [f"dense.{j}.weight"], f"/dense.{j}/MatMul")
    norm = g.op("Max", [g.op("ReduceL2", [x, g.const([-1])], "/normalize/ReduceL2", keepdims=1),
                        g.const(1e-12, np.float32)], "/normalize/Max")
    out = g.op("Div", [x, norm], "/normalize/Div", outputs=[SENTENCE_EMBEDDING])
    g.output(SENTENCE_EMBEDDING, FLOAT, ["batch_size", c.embedding_head.dense_dims[-1]])
    return out

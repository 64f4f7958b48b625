"""EmbeddingGemma as ONNX: input_ids [B, T], attention_mask [B, T] -> embeddings [B, D]
(L2-normalised, full width). Bidirectional attention in plain ops; RoPE through onnxruntime's
RotaryEmbedding; masked mean pooling and the bias-free dense head."""
from __future__ import annotations

import numpy as np
import onnx

from ...models.config import GemmaConfig, LayerType
from .body import Body
from .graph import FLOAT, INT64, Graph


def build_embedder(model) -> onnx.ModelProto:
    c: GemmaConfig = model.config
    g = Graph()
    body = Body(g, c, model.state_dict())
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "sequence_length"])
    H, G, D = c.num_heads, c.num_kv_heads, c.head_dim
    R = H // G

    # Positions 0..T-1 and, per layer type, an additive bias [B, 1, 1, T, T]: 0 where a query may
    # see a key (a real token, within the centred window on sliding layers), -inf-ish elsewhere.
    n = "/model/mask"
    T = g.op("Gather", [g.op("Shape", [ids], f"{n}/Shape"), g.const(1)], f"{n}/T", axis=0)
    pos = g.op("Range", [g.const(0), T, g.const(1)], f"{n}/Range")                                 # [T]
    positions = g.op("Expand", [g.op("Unsqueeze", [pos, g.const([0])], f"{n}/pos2d"),
                                g.op("Shape", [ids], f"{n}/ids_shape")], f"{n}/positions")       # [B, T]
    real = g.op("Cast", [g.op("Unsqueeze", [mask, g.const([1, 2, 3])], f"{n}/key_mask"),
                         ], f"{n}/key_mask/Cast", to=onnx.TensorProto.BOOL)                     # [B,1,1,1,T]
    dist = g.op("Abs", [g.op("Sub", [g.op("Unsqueeze", [pos, g.const([1])], f"{n}/q"),
                                     g.op("Unsqueeze", [pos, g.const([0])], f"{n}/k")], f"{n}/Sub")], f"{n}/Abs")
    bias = {}
    for t in set(c.layer_types):
        allowed = real
        if t is LayerType.LOCAL:
            near = g.op("Less", [dist, g.const(c.sliding_window // 2 + 1)], f"{n}/{t.value}/Less")   # [T, T]
            allowed = g.op("And", [real, near], f"{n}/{t.value}/And")
        bias[t] = g.op("Where", [allowed, g.const(0.0, np.float32), g.const(np.finfo(np.float32).min, np.float32)],
                       f"{n}/{t.value}/bias")
    ropes = {t: body.rope_cache(t, c.max_position) for t in set(c.layer_types)}
    T1 = g.op("Unsqueeze", [T, g.const([0])], f"{n}/T1")
    shape5d = g.op("Concat", [g.const([0, G, R, -1]), T1], f"{n}/scores5d_shape", axis=0)

    def attention(i: int, q: str, k: str, v: str) -> str:
        an = f"/model/layers.{i}/attn"
        t = c.layer_types[i]
        rope = dict(domain="com.microsoft", interleaved=0)
        q = g.op("RotaryEmbedding", [q, positions, *ropes[t]], f"{an}/q_rotary", num_heads=H, **rope)
        k = g.op("RotaryEmbedding", [k, positions, *ropes[t]], f"{an}/k_rotary", num_heads=G, **rope)

        def heads(x, count, name):                                   # [B, T, count*D] -> [B, count, T, D]
            x = g.op("Reshape", [x, g.const([0, 0, count, D])], f"{an}/{name}/Reshape")
            return g.op("Transpose", [x], f"{an}/{name}/Transpose", perm=[0, 2, 1, 3])
        qh = g.op("Reshape", [heads(q, H, "q"), g.const([0, G, -1, D])], f"{an}/q/group")       # [B, G, R*T, D]
        kh, vh = heads(k, G, "k"), heads(v, G, "v")                                             # [B, G, T, D]
        s = g.op("MatMul", [qh, g.op("Transpose", [kh], f"{an}/kT", perm=[0, 1, 3, 2])], f"{an}/scores")
        s = g.op("Mul", [s, g.const(c.attn_scale, np.float32)], f"{an}/scale")                  # [B, G, R*T, T]
        s = g.op("Reshape", [s, shape5d], f"{an}/scores5d")                   # [B, G, R, T, T]
        p = g.op("Softmax", [g.op("Add", [s, bias[t]], f"{an}/mask")], f"{an}/Softmax", axis=-1)
        p = g.op("Reshape", [p, g.const([0, G, -1, 0])], f"{an}/probs4d")                        # [B, G, R*T, T]
        o = g.op("MatMul", [p, vh], f"{an}/context")                                            # [B, G, R*T, D]
        o = g.op("Transpose", [g.op("Reshape", [o, g.const([0, H, -1, D])], f"{an}/heads")],
                 f"{an}/Transpose", perm=[0, 2, 1, 3])                                          # [B, T, H, D]
        return g.op("Reshape", [o, g.const([0, 0, H * D])], f"{an}/merge")

    body.embed(ids)
    for i in range(c.num_layers):
        body.layer(i, attention)
    h = body.final_norm()                                                                       # [B, T, d]

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
    g.op("Div", [x, norm], "/normalize/Div", outputs=["embeddings"])
    g.output("embeddings", FLOAT, ["batch_size", c.embedding_head.dense_dims[-1]])
    return g.model(doc="EmbeddingGemma exported by gemma-export")

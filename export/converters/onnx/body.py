"""The Gemma body as ONNX: fused RMSNorms (weights stored as 1 + w), packed QKV and gate/up
projections, q/k norms, and the residual stream carried through SkipSimplifiedLayerNormalization.
The attention core is supplied by the caller (GroupQueryAttention for causal LMs, plain ops for
the bidirectional embedder), and so is RecurrentGemma's recurrent block (griffin.py).
Each builder names the reference module it mirrors; tests/test_graph_modules.py holds each against it."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ...models.config import GemmaConfig, LayerType
from ...models.layers import rope_params, rope_tables
from .graph import Graph


class Body:
    def __init__(self, g: Graph, config: GemmaConfig, state: dict[str, torch.Tensor]):
        self.g, self.c, self.state = g, config, state
        self.residual: str | None = None
        self.pending: str | None = None     # branch output not yet added to the residual stream
        # (layer, tap name of export.models.layers) -> fn(g, x) -> x: a sparse autoencoder's site (sae.py)
        self.taps: dict[tuple[int, str], Callable[[Graph, str], str]] = {}

    def tap(self, i: int, site: str, x: str) -> str:
        """Mirrors export.models.layers.tap: x through layer i's tap at `site`, if there is one."""
        fn = self.taps.get((i, site))
        return x if fn is None else fn(self.g, x)

    def w(self, name: str) -> np.ndarray:
        return self.state[name].detach().float().numpy()

    def norm_weight(self, name: str) -> str:
        return self.g.init(name, self.w(name) + 1.0)      # Gemma's (1 + w), folded once

    def norm(self, x: str, weight: str, node: str) -> str:
        """Mirrors export.models.layers.RMSNorm (the one whose parameter is `weight`)."""
        return self.g.op("RMSNormalization", [x, self.norm_weight(weight)], node,
                         axis=-1, epsilon=self.c.rms_eps, stash_type=1)

    def add_and_norm(self, weight: str, node: str) -> str:
        """residual += pending (if any), then RMSNorm(residual): DecoderLayer's residual add followed by
        the next RMSNorm (export.models.layers)."""
        if self.pending is None:
            return self.norm(self.residual, weight, node)
        out, self.residual = self.g.op("SkipSimplifiedLayerNormalization",
                                       [self.residual, self.pending, self.norm_weight(weight)], node,
                                       domain="com.microsoft", outputs=[None, "", "", f"{node}/residual"],
                                       epsilon=self.c.rms_eps)[0::3]
        self.pending = None
        return out

    def linear(self, x: str, weights: list[str], node: str, bias: bool = False) -> str:
        """x @ concat(weights).T (+ the concatenated `*.bias`) — one MatMul for packed projections: the
        nn.Linear modules named by `weights`, side by side."""
        parts = [self.w(n) for n in weights]
        w = np.concatenate(parts, axis=0).T                                    # [in, out]
        rows = [(n, p.shape[0]) for n, p in zip(weights, parts)]
        y = self.g.op("MatMul", [x, self.g.init(f"{node}.weight", w, rows_from=rows)], node)
        if not bias:
            return y
        b = np.concatenate([self.w(n.removesuffix(".weight") + ".bias") for n in weights])
        return self.g.op("Add", [y, self.g.init(f"{node}.bias", b)], f"{node}/Add")

    def embed(self, input_ids: str, lookup: Callable[[str], str] | None = None) -> str | None:
        """Mirrors GemmaBackbone.embed (export.models.gemma): embed_tokens(ids) * embed_scale, which
        starts the residual stream. -> the table's initializer (the tied LM head reads it); lookup(ids) -> rows:
        the table as the caller stores it (then None)."""
        table = None if lookup else self.g.init("model.embed_tokens.weight", self.w("model.embed_tokens.weight"))
        x = lookup(input_ids) if lookup else self.g.op("Gather", [table, input_ids], "/model/embed_tokens/Gather")
        self.residual = self.g.op("Mul", [x, self.g.const(self.c.embed_scale, np.float32)], "/model/embed_tokens/scale")
        return table

    def layer(self, i: int, attention: Callable[[int, str, str, str], str],
              recurrent: Callable[[int, str], str] | None = None):
        """Mirrors export.models.layers.DecoderLayer (model.layers.{i}): its norms around the temporal
        block and the MLP; the layer's output is residual + pending. attention(i, q, k, v) -> [B, T, H*D]
        given q [B, T, H*D], k and v [B, T, G*D]; recurrent(i, x) -> [B, T, d]: the temporal block of
        RecurrentGemma's recurrent layers."""
        c, p, n = self.c, f"model.layers.{i}.", f"/model/layers.{i}"
        h = self.add_and_norm(p + "input_layernorm.weight", f"{n}/input_layernorm")
        out = recurrent(i, h) if c.layer_types[i] is LayerType.RECURRENT else self.attention_block(i, h, attention)
        if c.sandwich_norms:
            out = self.norm(out, p + "post_attention_layernorm.weight", f"{n}/post_attention_layernorm")
        self.pending = out
        pre_ffn = "pre_feedforward_layernorm" if c.sandwich_norms else "post_attention_layernorm"
        out = self.mlp(i, self.add_and_norm(p + pre_ffn + ".weight", f"{n}/{pre_ffn}"))
        if c.sandwich_norms:
            out = self.norm(out, p + "post_feedforward_layernorm.weight", f"{n}/post_feedforward_layernorm")
            out = self.tap(i, "post_feedforward_layernorm.output", out)
        self.pending = out
        if (i, "output") in self.taps:      # the layer's output as one tensor (else the next norm adds it)
            self.residual = self.tap(i, "output", self.g.op("Add", [self.residual, out], f"{n}/output"))
            self.pending = None

    def mlp(self, i: int, h: str) -> str:
        """Mirrors export.models.layers.MLP (model.layers.{i}.mlp): h [B, T, d] -> [B, T, d], gate and up
        projections packed into one MatMul."""
        c, p, n = self.c, f"model.layers.{i}.mlp.", f"/model/layers.{i}/mlp"
        gate, up = self.g.op("Split", [self.linear(h, [p + "gate_proj.weight", p + "up_proj.weight"],
                                                   f"{n}/gate_up_proj/MatMul", c.mlp_bias),
                                       self.g.const([c.intermediate_size] * 2)], f"{n}/split", axis=-1, outputs=2)
        act = self.g.op("Gelu", [gate], f"{n}/act_fn", approximate="tanh")
        return self.linear(self.g.op("Mul", [act, up], f"{n}/Mul"), [p + "down_proj.weight"],
                           f"{n}/down_proj/MatMul", c.mlp_bias)

    def attention_block(self, i: int, h: str, attention: Callable[[int, str, str, str], str]) -> str:
        """Mirrors export.models.layers.Attention (model.layers.{i}.self_attn): h [B, T, d] -> [B, T, d].
        Packed QKV projection, per-head q/k norms, attention(i, q, k, v) (RoPE, the cache and the core:
        decoder.CausalAttention or embedder.BidirectionalAttention), o_proj."""
        c, a, n = self.c, f"model.layers.{i}.self_attn.", f"/model/layers.{i}/attn"
        qkv = self.linear(h, [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"], f"{n}/qkv_proj/MatMul")
        q, k, v = self.g.op("Split", [qkv, self.g.const([c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim,
                                                         c.num_kv_heads * c.head_dim])], f"{n}/qkv_split",
                            axis=-1, outputs=3)
        if c.qk_norm:
            q = self.head_norm(q, a + "q_norm.weight", c.num_heads, f"{n}/q_norm")
            k = self.head_norm(k, a + "k_norm.weight", c.num_kv_heads, f"{n}/k_norm")
        z = self.tap(i, "self_attn.o_proj.input", attention(i, q, k, v))
        return self.linear(z, [a + "o_proj.weight"], f"{n}/o_proj/MatMul", c.attn_out_bias)

    def head_norm(self, x: str, weight: str, heads: int, node: str) -> str:
        """Mirrors Attention.q_norm / k_norm (export.models.layers.RMSNorm over each head):
        [B, T, heads*D] -> [B, T*heads, D] -> norm -> back."""
        D = self.c.head_dim
        y = self.g.op("Reshape", [x, self.g.const([0, -1, D])], f"{node}/Reshape")
        y = self.norm(y, weight, node)
        return self.g.op("Reshape", [y, self.g.const([0, -1, heads * D])], f"{node}/Reshape_back")

    def final_norm(self) -> str:
        """The last residual add and GemmaBackbone.norm."""
        return self.add_and_norm("model.norm.weight", "/model/norm")

    def rope_cache(self, layer_type: LayerType, length: int) -> tuple[str, str]:
        """cos/sin caches [length, R/2] for one layer type (R = rotary_dim, D unless RoPE is
        partial), from the reference RoPE tables; row p holds RoPE position p + position_offset."""
        base, scale = rope_params(self.c, layer_type)
        cos, sin = rope_tables(torch.arange(length) + self.c.position_offset, self.c.rotary_dim, base, scale)
        half, name = self.c.rotary_dim // 2, "global" if layer_type is LayerType.GLOBAL else "local"
        return (self.g.init(f"cos_cache_{name}", cos[:, :half].numpy()),
                self.g.init(f"sin_cache_{name}", sin[:, :half].numpy()))

"""The decoder of a vision-language model (export.models.vlm) as ONNX, in onnxruntime-genai's vision-language
layout: `inputs_embeds` [B, T, d] (embedding.onnx's output: the image rows already spliced in) instead of a
lookup, the same caches, mask and `logits` as decoder.build_decoder. It also reads `input_ids`, to tell which
of a prompt's tokens see each other both ways (export.models.vlm.VisionLanguageModel.blocks): on a first call
(empty past) that has them -- any call for PaliGemma, whose prompt is its bidirectional prefix; image tokens for
Gemma 3 -- every layer's attention is recomputed over the call's own tokens in plain ops under that mask
(GroupQueryAttention is causal only), inside an If; GroupQueryAttention still writes the caches."""
from __future__ import annotations

import onnx

from runtime_py.contract import INPUTS_EMBEDS

from ...models.config import LayerType
from ...models.vision_config import PALIGEMMA
from .body import Body
from .decoder import CausalAttention, lm_head
from .graph import FLOAT, INT64, Graph
from .plain_attention import additive, plain_attention
from .quantize import TABLE


def build_vision_decoder(model, context_length: int, state=None, packer=None) -> onnx.ModelProto:
    """state: the language model's weights by parameter name (default: its own); packer: Graph's (stream.py)."""
    vc = model.config
    c = vc.text
    g = Graph(packer)
    body = Body(g, c, model.language_model.state_dict() if state is None else state)
    embeds = g.input(INPUTS_EMBEDS, FLOAT, ["batch_size", "sequence_length", c.hidden_size])
    ids = g.input("input_ids", INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", INT64, ["batch_size", "total_sequence_length"])
    attention = BlockAttention(body, mask, context_length, ids, vc)
    table = g.init(TABLE, body.w(TABLE))
    body.residual = embeds
    for i in range(c.num_layers):
        body.layer(i, attention)
    lm_head(body, body.final_norm(), table)
    return g.model(doc=f"{vc.family} decoder (inputs_embeds) exported by gemma-export")


class BlockAttention(CausalAttention):
    """CausalAttention, and on a first call with a bidirectional block, the plain-op attention of the
    reference under its mask (layers.attention_mask + layers.block_overlay) in place of its output."""

    def __init__(self, body: Body, mask: str, context_length: int, ids: str, vc):
        super().__init__(body, mask, context_length)
        g, c, n = self.g, self.c, "/model/blocks"
        self.vc, self.mask = vc, mask
        T = g.op("Shape", [ids], f"{n}/T", start=1, end=2)
        first = g.op("Equal", [g.op("Reshape", [self.width, g.const([1])], f"{n}/total"), T], f"{n}/first")
        pos = g.op("Range", [g.const(0), g.op("Squeeze", [T], f"{n}/T0"), g.const(1)], f"{n}/Range")   # [T]
        self.pos = pos
        self.positions = g.op("Expand", [g.op("Unsqueeze", [pos, g.const([0])], f"{n}/pos2d"),
                                          g.op("Shape", [ids], f"{n}/ids_shape")], f"{n}/positions")    # [B, T]
        if vc.kind == PALIGEMMA:
            self.blocks = None
            cond = first
        else:       # VisionLanguageModel.blocks: one id per run of image tokens, -1 elsewhere
            is_img = g.op("Equal", [ids, g.const(vc.image_token_id)], f"{n}/is_image")
            prev = g.op("Pad", [g.op("Slice", [is_img, g.const([0]), g.const([-1]), g.const([1])], f"{n}/prev"),
                                g.const([0, 1, 0, 0])], f"{n}/prev_pad")
            start = g.op("And", [is_img, g.op("Not", [prev], f"{n}/not_prev")], f"{n}/start")
            run = g.op("Sub", [g.op("CumSum", [g.op("Cast", [start], f"{n}/start_i", to=onnx.TensorProto.INT64),
                                               g.const(1)], f"{n}/CumSum"), g.const(1)], f"{n}/run")
            self.blocks = g.op("Where", [is_img, run, g.const(-1)], f"{n}/blocks")                      # [B, T]
            any_img = g.op("ReduceMax", [g.op("Cast", [is_img], f"{n}/is_image_i", to=onnx.TensorProto.INT64)],
                           f"{n}/any", keepdims=0)
            cond = g.op("And", [g.op("Squeeze", [first], f"{n}/first0"),
                                g.op("Cast", [any_img], f"{n}/any_b", to=onnx.TensorProto.BOOL)], f"{n}/cond")
        self.cond = cond                                 # one element: If's condition

    def __call__(self, i: int, q: str, k: str, v: str) -> str:
        g, c = self.g, self.c
        out = super().__call__(i, q, k, v)
        n, t = f"/model/layers.{i}/block_attn", c.layer_types[i]
        then = g.branch(f"{n}/then/")
        plain = plain_attention(then, c, f"{n}/then", q, k, v, self.positions, self.ropes[t], self.bias(then, t, n))
        other = g.branch(f"{n}/else/")
        same = other.op("Identity", [out], f"{n}/else/Identity")
        return g.op("If", [self.cond], n, then_branch=then.subgraph([plain], f"{n}/then"),
                    else_branch=other.subgraph([same], f"{n}/else"))

    def bias(self, g: Graph, t: LayerType, n: str) -> str:
        """[B, 1, 1, T, T] over the call's tokens (the past is empty): the real keys of attention_mask that
        layers.attention_mask + block_overlay let each query see."""
        c = self.c
        real = g.op("Cast", [g.op("Unsqueeze", [self.mask, g.const([1])], f"{n}/keys")], f"{n}/keys_b",
                    to=onnx.TensorProto.BOOL)                                                     # [B, 1, T]
        if self.blocks is None:                          # PaliGemma: the call is one prefix block
            allowed = real
        else:
            offset = g.op("Sub", [g.op("Unsqueeze", [self.pos, g.const([1])], f"{n}/q"),
                                  g.op("Unsqueeze", [self.pos, g.const([0])], f"{n}/k")], f"{n}/offset")  # [T, T]
            bq = g.op("Unsqueeze", [self.blocks, g.const([2])], f"{n}/bq")
            bk = g.op("Unsqueeze", [self.blocks, g.const([1])], f"{n}/bk")
            same = g.op("And", [g.op("Equal", [bq, bk], f"{n}/same"),
                                g.op("GreaterOrEqual", [bq, g.const(0)], f"{n}/in_block")], f"{n}/same_block")
            allowed = g.op("Or", [g.op("GreaterOrEqual", [offset, g.const(0)], f"{n}/causal"), same], f"{n}/Or")
            if t is LayerType.LOCAL and c.blocks_in_window:
                allowed = g.op("And", [allowed, g.op("Less", [offset, g.const(c.sliding_window)], f"{n}/window")],
                               f"{n}/windowed")
            allowed = g.op("And", [allowed, real], f"{n}/real")
        return g.op("Unsqueeze", [additive(g, allowed, f"{n}/additive"), g.const([1, 2])], f"{n}/bias")

"""RecurrentGemma's recurrent block as ONNX (mirroring export/models/griffin.py module by module), with
its state as explicit graph inputs/outputs:
  conv1d_state_{i} [B, K-1, W]  ->  present_conv1d_state_{i}   (the Conv1D's last K-1 inputs)
  rg_lru_state_{i} [B, W] fp32   ->  present_rg_lru_state_{i}   (the RG-LRU hidden state)
The Conv1D is one grouped Conv over (past inputs, new inputs); the RG-LRU's gates are one batched
MatMul over both block-diagonal weights, and its linear recurrence an ONNX Scan over time."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from onnx import TensorProto, helper

from runtime_py.contract import CONV1D_STATE, ONNX_PRESENT_PREFIX, RG_LRU_STATE

from .body import Body
from .graph import FLOAT

STATE_INPUTS = (CONV1D_STATE, RG_LRU_STATE)                      # graph order
STATE_OUTPUTS = tuple(ONNX_PRESENT_PREFIX + name for name in STATE_INPUTS)


def state_names(layers: list[int]) -> list[tuple[str, str]]:
    """(input, output) name pairs of every recurrent layer's state, in graph order."""
    return [(i_name.format(i=i), o_name.format(i=i)) for i in layers
            for i_name, o_name in zip(STATE_INPUTS, STATE_OUTPUTS)]


def recurrent_block(body: Body, i: int, x: str, reset: str) -> str:
    """Mirrors export.models.griffin.RecurrentBlock (model.layers.{i}.recurrent) with its RecurrentState
    as graph inputs/outputs: x [B, T, d] (normed) -> [B, T, d]; reset: bool [1, T, 1], True at position 0."""
    p, n = f"model.layers.{i}.recurrent.", f"/model/layers.{i}/recurrent"
    y = body.g.op("Gelu", [body.linear(x, [p + "linear_y.weight"], f"{n}/linear_y/MatMul", bias=True)],
                  f"{n}/linear_y/act", approximate="tanh")
    xs = body.linear(x, [p + "linear_x.weight"], f"{n}/linear_x/MatMul", bias=True)          # [B, T, W]
    out = body.g.op("Mul", [rg_lru(body, i, conv1d(body, i, xs), reset), y], f"{n}/gated_out")
    return body.linear(out, [p + "linear_out.weight"], f"{n}/linear_out/MatMul", bias=True)


def conv1d(body: Body, i: int, xs: str) -> str:
    """Mirrors RecurrentBlock.conv_1d (export.models.griffin; a depthwise nn.Conv1d) over the state's K-1
    past inputs and the T new ones: xs [B, T, W] -> [B, T, W]. State: conv1d_state_{i} [B, K-1, W] ->
    present_conv1d_state_{i} (the last K-1 inputs)."""
    g, c = body.g, body.c
    p, n = f"model.layers.{i}.recurrent.", f"/model/layers.{i}/recurrent"
    W, K = c.recurrent_width, c.conv1d_width
    conv_past = g.input(STATE_INPUTS[0].format(i=i), FLOAT, ["batch_size", K - 1, W])
    window = g.op("Concat", [conv_past, xs], f"{n}/conv_1d/window", axis=1)                  # [B, K-1+T, W]
    g.op("Slice", [window, g.const([-(K - 1)]), g.const([np.iinfo(np.int64).max]), g.const([1])],
         f"{n}/conv_1d/state", outputs=[STATE_OUTPUTS[0].format(i=i)])
    conv = g.op("Conv", [g.op("Transpose", [window], f"{n}/conv_1d/to_channels", perm=[0, 2, 1]),
                         g.init(p + "conv_1d.weight", body.w(p + "conv_1d.weight")),
                         g.init(p + "conv_1d.bias", body.w(p + "conv_1d.bias"))],
                f"{n}/conv_1d/Conv", group=W, kernel_shape=[K])                                # [B, W, T]
    g.output(STATE_OUTPUTS[0].format(i=i), FLOAT, ["batch_size", K - 1, W])
    return g.op("Transpose", [conv], f"{n}/conv_1d/to_time", perm=[0, 2, 1])                  # [B, T, W]


def rg_lru(body: Body, i: int, x: str, reset: str) -> str:
    """Mirrors export.models.griffin.RGLRU (model.layers.{i}.recurrent.rg_lru): x [B, T, W] -> [B, T, W];
    reset: bool [1, T, 1], True at position 0. State: rg_lru_state_{i} [B, W] fp32 ->
    present_rg_lru_state_{i}. Gates: block-diagonal [H, E, E] weights for both, packed to [H, E, 2E];
    the recurrence an ONNX Scan over time."""
    g, c = body.g, body.c
    lru, n = f"model.layers.{i}.recurrent.rg_lru.", f"/model/layers.{i}/recurrent/rg_lru"
    W, H = c.recurrent_width, c.num_heads
    E = W // H
    h_past = g.input(STATE_INPUTS[1].format(i=i), FLOAT, ["batch_size", W])
    w = np.concatenate([body.w(lru + "recurrent_gate_weight"), body.w(lru + "input_gate_weight")], axis=2)
    b = np.concatenate([body.w(lru + "recurrent_gate_bias"), body.w(lru + "input_gate_bias")], axis=1)
    xb = g.op("Reshape", [x, g.const([0, 0, H, 1, E])], f"{n}/blocks")                       # [B, T, H, 1, E]
    gates = g.op("Add", [g.op("MatMul", [xb, g.init(f"{n}/gates.weight", w)], f"{n}/gates/MatMul"),
                         g.init(f"{n}/gates.bias", b[:, None, :])], f"{n}/gates/Add")
    gates = g.op("Sigmoid", [gates], f"{n}/gates/Sigmoid")                                   # [B, T, H, 1, 2E]
    r, gi = (g.op("Reshape", [part, g.const([0, 0, W])], f"{n}/{name}")
             for part, name in zip(g.op("Split", [gates, g.const([E, E])], f"{n}/gates/Split",
                                        axis=-1, outputs=2), ("recurrence_gate", "input_gate")))
    # a = exp(-8 r softplus(c)); -8 softplus(c) is folded into a constant.
    decay = (-8.0 * F.softplus(body.state[lru + "recurrent_param"].detach().float())).numpy()
    a = g.op("Exp", [g.op("Mul", [r, g.init(f"{n}/log_decay", decay)], f"{n}/log_a")], f"{n}/a")
    one, zero = g.const(1.0, np.float32), g.const(0.0, np.float32)
    norm = g.op("Sqrt", [g.op("Sub", [one, g.op("Mul", [a, a], f"{n}/a2")], f"{n}/1-a2")], f"{n}/sqrt")
    norm = g.op("Where", [reset, one, norm], f"{n}/reset_norm")
    u = g.op("Mul", [g.op("Mul", [x, gi], f"{n}/gated"), norm], f"{n}/u")                   # [B, T, W]
    a = g.op("Where", [reset, zero, a], f"{n}/reset_a")

    # h_t = a_t * h_{t-1} + u_t over t, scanning axis 1 of a and u.
    s = f"{n}/scan"
    step = helper.make_graph(
        [helper.make_node("Mul", [f"{s}/a_t", f"{s}/h_prev"], [f"{s}/ah"]),
         helper.make_node("Add", [f"{s}/ah", f"{s}/u_t"], [f"{s}/h"]),
         helper.make_node("Identity", [f"{s}/h"], [f"{s}/y_t"])],
        f"rg_lru_step_{i}",
        [helper.make_tensor_value_info(f"{s}/{v}", TensorProto.FLOAT, None) for v in ("h_prev", "a_t", "u_t")],
        [helper.make_tensor_value_info(f"{s}/{v}", TensorProto.FLOAT, None) for v in ("h", "y_t")])
    _, hs = g.op("Scan", [h_past, a, u], s, num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1],
                 body=step, outputs=[STATE_OUTPUTS[1].format(i=i), None])
    g.output(STATE_OUTPUTS[1].format(i=i), FLOAT, ["batch_size", W])
    return hs

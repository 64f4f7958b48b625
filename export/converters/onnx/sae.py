"""Sparse autoencoders in the ONNX decoder: at each SAE's site (export.models.sae) an optional steering input
`sae_{n}_steer` [d_in] (default zeros: adding it changes nothing) is added to the stream, and the JumpReLU
encoder of what then passes feeds TopK: outputs `sae_{n}_topk_values` / `sae_{n}_topk_indices` [B, T, k].
onnxruntime-genai binds the outputs its genai_config.json names and leaves the others alone, and an optional
input is an overridable initializer it never sees: the folder runs in genai unchanged (tests/test_sae_onnx.py).
The encoder matrix is a Gemm (float32; the model recipe's MatMul passes leave it alone) or its own MatMulNBits
(int8 blocks of 32, int8 activations: export.quantize.recipes.SAE_ENCODERS), whatever the model's recipe."""
from __future__ import annotations

import numpy as np

from runtime_py.contract import SAE_INDICES, SAE_STEER, SAE_VALUES

from ...models.sae import SAE
from ...quantize.recipes import SAE_ENCODERS
from .graph import FLOAT, INT64, Graph


def sae_taps(saes: list[SAE], k: int, encoder: str) -> dict:
    """{(layer, tap name): fn(g, x) -> x} for Body.taps: steering added, then the encoder's top-k emitted."""
    if encoder not in SAE_ENCODERS:
        raise ValueError(f"--sae-encoder {encoder}: choose from {', '.join(SAE_ENCODERS)}")
    taps = {}
    for n, sae in enumerate(saes):
        key = (sae.layer, sae.tap)
        if key in taps:
            raise ValueError(f"{sae.path}: a second SAE at {sae.hook}; one SAE per site")
        taps[key] = lambda g, x, n=n, sae=sae: sae_site(g, x, n, sae, k, SAE_ENCODERS[encoder]["onnx"])
    return taps


def sae_site(g: Graph, x: str, n: int, sae: SAE, k: int, layout) -> str:
    """x [B, T, d_in] -> x + sae_{n}_steer, with the encoder's top-k of that as outputs."""
    d, w, p = sae.d_in, sae.width, f"/sae.{n}"
    steer = g.input(SAE_STEER.format(n=n), FLOAT, [d], default=np.zeros(d, np.float32))
    x = g.op("Add", [x, steer], f"{p}/steer")
    flat = g.op("Reshape", [x, g.const([-1, d])], f"{p}/Reshape")
    if layout is None:
        pre = g.op("Gemm", [flat, g.init(f"sae.{n}.w_enc", sae.w_enc), g.init(f"sae.{n}.b_enc", sae.b_enc)],
                   f"{p}/encoder/Gemm")
    else:
        pre = g.op("Add", [_nbits(g, flat, sae.w_enc, n, *layout), g.init(f"sae.{n}.b_enc", sae.b_enc)],
                   f"{p}/encoder/Add")
    theta = g.init(f"sae.{n}.threshold", sae.threshold)
    acts = g.op("Where", [g.op("Greater", [pre, theta], f"{p}/jump"), pre, g.const(0.0, np.float32)],
                f"{p}/jumprelu")
    shape = g.op("Concat", [g.op("Shape", [x], f"{p}/Shape", end=2), g.const([w])], f"{p}/Concat", axis=0)
    acts = g.op("Reshape", [acts, shape], f"{p}/Reshape_back")
    values, indices = SAE_VALUES.format(n=n), SAE_INDICES.format(n=n)
    g.op("TopK", [acts, g.const([k])], f"{p}/TopK", outputs=[values, indices], axis=-1, largest=1, sorted=1)
    g.output(values, FLOAT, ["batch_size", "sequence_length", k])
    g.output(indices, INT64, ["batch_size", "sequence_length", k])
    return x


def _nbits(g: Graph, x: str, w: np.ndarray, n: int, bits: int, block: int, level: int) -> str:
    """x [M, d] @ w [d, W] as a MatMulNBits of its own, packed by onnxruntime's quantizer."""
    from .quantize import nbits_quantizer
    from .stream import pack
    packed = pack(w, f"sae.{n}.w_enc", f"/sae.{n}/encoder/MatMul", nbits_quantizer(None, bits, block, level)
                  .node_quantizer)
    g.initializers.extend(packed.tensors)
    out = f"/sae.{n}/encoder/MatMulNBits/output_0"
    g.nodes.append(packed.node(x, out))
    return out

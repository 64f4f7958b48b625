"""Sparse autoencoders in the LiteRT artifact: signatures of their own, `sae_prefill_{T}` and `sae_decode`
(runtime_py.contract), beside `prefill_{T}` / `decode`. Each is its plain twin (same tokens, positions and caches
in and out, same weights: one model, one conversion) plus, per SAE n, an input `sae_{n}_steer` [d_in] added to
the stream at the SAE's site (zeros: the twin's outputs) and outputs `sae_{n}_topk_values` float32 /
`sae_{n}_topk_indices` int32 [1, T, k]: the top k of the JumpReLU encoder of what then passes (TOPK_V2).

Why not extra outputs and inputs on prefill/decode: LiteRT-LM takes every signature whose name starts with
`prefill` as a prefill runner, and makes its own buffers for whatever other inputs decode has, which it never
fills (README: checked by running the bundle in litert_lm). The plain signatures never run the encoder.

The encoder matrix is one FULLY_CONNECTED weight per SAE, stored as --sae-encoder says (export.quantize.recipes
.SAE_ENCODERS[encoder]["litert"]) whatever the model's recipe: `sae_ops` names its ops for the quantizer."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from runtime_py.contract import (SAE_DECODE_SIGNATURE, SAE_INDICES, SAE_STEER, SAE_VALUES, sae_prefill_signature)

from ...models.sae import SAE, tapped
from ...quantize.recipes import SAE_ENCODERS
from .graph import scope_regex
from .signatures import SignatureModule, sample_inputs


def _param(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(a, np.float32)), requires_grad=False)


class SaeEncoders(nn.Module):
    """The SAEs' JumpReLU encoders, one copy for every sae_* signature: weight [width, d_in] (W_enc transposed,
    a FULLY_CONNECTED's layout), bias, threshold."""

    def __init__(self, saes: list[SAE]):
        super().__init__()
        self.weight = nn.ParameterList([_param(s.w_enc.T) for s in saes])
        self.bias = nn.ParameterList([_param(s.b_enc) for s in saes])
        self.threshold = nn.ParameterList([_param(s.threshold) for s in saes])

    def forward(self, n: int, x: torch.Tensor) -> torch.Tensor:
        pre = nn.functional.linear(x, self.weight[n], self.bias[n])
        return torch.where(pre > self.threshold[n], pre, torch.zeros_like(pre))


class SaeSignatureModule(SignatureModule):
    """SignatureModule (tokens, input_pos, caches) with `sae_{n}_steer` inputs and the top-k outputs added."""

    def __init__(self, model: nn.Module, encoders: SaeEncoders, saes: list[SAE], k: int, logits: bool = True):
        super().__init__(model, logits)
        self.encoders, self.saes, self.k = encoders, saes, k

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **inputs: torch.Tensor):
        steers = [inputs.pop(SAE_STEER.format(n=n)) for n in range(len(self.saes))]
        found = {}
        with tapped(self.model, self.saes, [functools.partial(self._site, n, v, found) for n, v in enumerate(steers)]):
            out = super().forward(tokens, input_pos, **inputs)
        for n in range(len(self.saes)):
            out[SAE_VALUES.format(n=n)], out[SAE_INDICES.format(n=n)] = found[n]
        return out

    def _site(self, n: int, steer: torch.Tensor, found: dict, x: torch.Tensor) -> torch.Tensor:
        x = x + steer
        values, indices = torch.topk(self.encoders(n, x), self.k, dim=-1)
        found[n] = values, indices.to(torch.int32)
        return x


def check_request(sae, config) -> None:
    """The model is a causal text LM and --sae-encoder names a storage (before any conversion; SaeRequest checked
    --sae-k)."""
    if hasattr(config, "vision") or config.embedding_head is not None:
        raise ValueError("--sae: sparse autoencoders are exported with causal text LMs only")
    if sae.encoder not in SAE_ENCODERS:
        raise ValueError(f"--sae-encoder {sae.encoder}: choose from {', '.join(SAE_ENCODERS)}")


def add_signatures(converter, model, sae, prefill_lengths, cache_length: int, prefill_logits: bool) -> None:
    """sae_prefill_{T} for each prefill length and sae_decode, on litert_torch's `converter`."""
    encoders = SaeEncoders(sae.saes).eval()
    for name, t in [(sae_prefill_signature(t), t) for t in sorted(prefill_lengths)] + [(SAE_DECODE_SIGNATURE, 1)]:
        module = SaeSignatureModule(model, encoders, sae.saes, sae.k, logits=prefill_logits or t == 1).eval()
        steer = {SAE_STEER.format(n=n): torch.zeros(s.d_in) for n, s in enumerate(sae.saes)}
        converter.signature(name, module, sample_kwargs={**sample_inputs(model.config, t, cache_length), **steer})


def signature_names(sae, prefill_lengths) -> list[str]:
    return [sae_prefill_signature(t) for t in sorted(prefill_lengths)] + [SAE_DECODE_SIGNATURE] if sae else []


def sae_ops(tflite, sae) -> list[tuple[str, str, object]]:
    """(scope regex, op name, Layout or None = float32) of the encoders' FULLY_CONNECTED ops in the float .tflite,
    found by their weights' bytes (export.converters.litert.lossless.weight_scopes)."""
    from .lossless import weight_scopes
    lay = SAE_ENCODERS[sae.encoder]["litert"]
    scopes = weight_scopes(tflite, SaeEncoders(sae.saes))
    missing = [n for n in range(len(sae.saes)) if f"weight.{n}" not in scopes]
    if missing:
        raise ValueError(f"{tflite}: no FULLY_CONNECTED op holds the encoder of {sae.saes[missing[0]].path}")
    return [(scope_regex(scope), kind, lay)
            for n in range(len(sae.saes)) for scope, kind in sorted(scopes[f"weight.{n}"])]

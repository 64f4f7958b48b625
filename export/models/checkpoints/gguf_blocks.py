"""GGUF quantized blocks kept for a lossless import: a tensor stored as Q4_0 or Q8_0 (the format of Google's QAT
checkpoints) already is int4 / int8 symmetric quantization in blocks of 32, so a recipe with that
layout carries its integers and scales over exactly instead of re-quantizing the dequantized
floats (which, for 4 bits, rounds a second time).

ggml's layouts (ggml-common.h), per block of 32 consecutive weights along a row:
- Q4_0: fp16 d, then 16 bytes; byte j holds weight j (low nibble) and weight j + 16 (high nibble);
  w = d * (q - 8), q in 0..15.
- Q8_0: fp16 d, then 32 int8 q; w = d * q.
Here both become offset-binary codes (q + 8 / q + 128: the zero point the int4 / int8 kernels of
onnxruntime and LiteRT assume for symmetric weights) and float32 scales."""
from __future__ import annotations

import dataclasses

import numpy as np

BLOCK = 32
# ggml type name -> (bits, bytes per block)
LAYOUTS = {"Q4_0": (4, 2 + BLOCK // 2), "Q8_0": (8, 2 + BLOCK)}


@dataclasses.dataclass(frozen=True)
class StoredBlocks:
    """A checkpoint tensor's quantized blocks as stored: `data` uint8 [rows, blocks * bytes per block]."""
    kind: str                     # a LAYOUTS key
    data: np.ndarray
    shape: tuple[int, ...]        # torch shape [rows, cols]

    @property
    def bits(self) -> int:
        return LAYOUTS[self.kind][0]

    def matches(self, bits: int, block: int | None) -> bool:
        """The recipe's layout (symmetric, `bits`, blocks of `block` along the row) is this one."""
        return bits == self.bits and block == BLOCK

    def codes_and_scales(self) -> tuple[np.ndarray, np.ndarray]:
        """-> codes uint8 [rows, blocks, 32] (offset-binary), scales float32 [rows, blocks]."""
        bits, size = LAYOUTS[self.kind]
        rows, cols = self.shape
        if cols % BLOCK:
            raise ValueError(f"{self.kind} tensor of shape {self.shape}: columns are not whole blocks of {BLOCK}")
        blocks = np.asarray(self.data, np.uint8).reshape(rows, cols // BLOCK, size)   # [R, nb, bytes]
        scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)   # [R, nb]
        q = blocks[..., 2:]
        if bits == 4:
            codes = np.concatenate([q & 0x0F, q >> 4], axis=-1)                          # [R, nb, 32]
        else:
            codes = (q.view(np.int8).astype(np.int16) + 128).astype(np.uint8)             # [R, nb, 32]
        return codes, scales

    def dequantized(self) -> np.ndarray:
        """float32 [rows, cols]: scale * (code - zero point), exact in float32."""
        codes, scales = self.codes_and_scales()
        steps = codes.astype(np.float32) - (1 << (self.bits - 1))
        return (steps * scales[..., None]).reshape(self.shape)


def pack_q4_0(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The inverse of StoredBlocks.codes_and_scales for Q4_0: codes uint8 [rows, blocks, 32] (q + 8),
    scales [rows, blocks] (stored as float16) -> the stored bytes uint8 [rows, blocks * 18]."""
    rows, nb, _ = codes.shape
    d = scales.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)                 # [R, nb, 2]
    nibbles = (codes[..., :BLOCK // 2] & 0x0F) | (codes[..., BLOCK // 2:] << 4)      # [R, nb, 16]
    return np.concatenate([d, nibbles.astype(np.uint8)], axis=-1).reshape(rows, nb * LAYOUTS["Q4_0"][1])

"""Zero scales in a quantized .tflite, made loadable. ai-edge-quantizer gives an all-zero weight row (a padding
token's embedding, which transformers zeroes and a fine-tune can keep) the scale 0, per channel or per block,
and XNNPACK refuses to load a tensor with a zero scale ("unsupported scale value (0.000000) in channel 0"). Such
a row's integers are all 0, so any positive scale dequantizes it to the same zeros: each zero scale is set to
the tensor's smallest positive one, in place (the scale vectors and fp16 scale tensors keep their size), after
checking that its integers are 0. The row still embeds to zeros and its logit is still 0 (the proof:
tests/test_litert_vision.py)."""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from .graph import weight_ops

_INTS = {fb.TensorType.INT8: 8, fb.TensorType.INT4: 4}


def nudge_zero_scales(path: str | Path) -> int:
    """Give every zero scale of the .tflite at `path` a positive value, in place. -> how many were zero."""
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as buf:
        count = _nudge(fb.Model.GetRootAs(buf, 0), buf, str(path))
        buf.flush()
    return count


def _data(model, buf, tensor) -> np.ndarray:
    """The tensor's bytes, a writable view of the map (inline or, past 2 GB layouts, at an offset)."""
    b = model.Buffers(tensor.Buffer())
    return b.DataAsNumpy() if b.DataLength() else np.frombuffer(buf, np.uint8, b.Size(), b.Offset())


def _nudge(model, buf, where: str) -> int:
    count = 0
    for graph, _, _, weight in weight_ops(model):         # each signature's tensors have their own scale vectors
        q = weight.Quantization()
        if q is None or weight.Type() not in _INTS:
            continue
        shape = weight.ShapeAsNumpy()
        if q.DetailsType() == fb.QuantizationDetails.BlockwiseQuantization:
            table, details = q.Details(), fb.BlockwiseQuantization()
            details.Init(table.Bytes, table.Pos)
            scales = _data(model, buf, graph.Tensors(details.Scales())).view(np.float16)
            group = int(details.BlockSize())               # scales [rows, blocks], row-major like the weight
        elif q.ScaleLength():
            if q.ScaleLength() > 1 and q.QuantizedDimension() != 0:
                raise ValueError(f"{where}: tensor {weight.Name().decode()}: per-channel scales along axis "
                                 f"{q.QuantizedDimension()}, expected 0")
            scales = q.ScaleAsNumpy()
            group = int(np.prod(shape)) // len(scales)
        else:
            continue
        zero = np.flatnonzero(scales == 0)
        if not len(zero):
            continue
        ints = _data(model, buf, weight)
        per_byte = 8 // _INTS[weight.Type()]
        for g in zero:
            if ints[g * group // per_byte:(g + 1) * group // per_byte].any():
                raise ValueError(f"{where}: tensor {weight.Name().decode()}: scale 0 on group {g}, whose integers "
                                 f"are not all 0")
        positive = scales[scales > 0]
        scales[zero] = positive.min() if len(positive) else 1.0
        count += len(zero)
        del ints, scales
    return count

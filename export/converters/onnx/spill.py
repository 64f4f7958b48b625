"""Float weights too large for a protobuf message, the float recipes' counterpart of stream.py: under fp32 / fp16
every weight past SPILL_BYTES is written to a scratch file the moment the graph builder makes it, and its
initializer holds only where the bytes are (external data). A 4B Gemma's float32 embedding table (262,208 x 2,560,
2.7 GB) cannot be one TensorProto (protobuf copies and serializes nothing past 2 GiB), nor can a graph holding it.

The float16 pass (quantize.to_fp16, onnxruntime's converter) retypes such an initializer without reading it;
folder.save_model then moves the bytes into the graph's data file (settle), rounding them to float16 with the
converter's own function where the pass retyped the tensor, so that the saved graph is the one the whole-graph
path saves (tests/test_onnx_spill.py)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

SPILL_BYTES = 1 << 30      # a float weight past this goes to disk as it is made (below protobuf's 2 GiB, with room)
HELD_BYTES = 2 << 30       # once the graph holds this much, every weight of MIN_SPILL_BYTES or more goes too
MIN_SPILL_BYTES = 1 << 20
CHUNK_BYTES = 1 << 26      # copied / converted this many bytes at a time


class Spill:
    """Graph(packer=Spill(dir)) under a float recipe: spill() keeps a weight past SPILL_BYTES out of the graph
    (in a scratch file in `dir`, made when first needed), and any weight of MIN_SPILL_BYTES or more once the graph
    holds HELD_BYTES (a 4B decoder's 15.5 GB of float32 are never held at once); take() and matmul() leave every
    weight as it is. A graph that holds less than HELD_BYTES and no weight past SPILL_BYTES is built as before."""

    def __init__(self, scratch_dir: str | os.PathLike):
        self.dir, self.path, self.held = Path(scratch_dir), None, 0

    def take(self, name: str, array) -> bool:
        return False

    def matmul(self, node, weight) -> None:
        return None

    def spill(self, name: str, array) -> onnx.TensorProto | None:
        """The initializer of `array` with its bytes in the scratch file, or None when it stays in the graph."""
        a = np.asarray(array)
        if a.nbytes <= SPILL_BYTES and (self.held + a.nbytes <= HELD_BYTES or a.nbytes < MIN_SPILL_BYTES):
            self.held += a.nbytes
            return None
        if self.path is None:
            fd, path = tempfile.mkstemp(prefix=".spill-", suffix=".bin", dir=self.dir)
            os.close(fd)
            self.path = Path(path)
        with open(self.path, "ab") as f:
            offset = f.tell()
            _write(f, a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1))
        out = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(a.dtype), dims=a.shape)
        _point(out, str(self.path), offset, a.nbytes)
        return out


def _point(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """t's bytes are at `location` [offset, offset + length) (onnx's set_external_data wants them in t first)."""
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        t.external_data.add(key=key, value=str(value))


def _write(f, rows: np.ndarray) -> None:
    """rows [n, k] (a view will do) to `f` in C order, a few rows at a time: no contiguous copy of the whole."""
    step = max(1, CHUNK_BYTES // max(1, rows[:1].nbytes))
    for i in range(0, len(rows), step):
        f.write(np.ascontiguousarray(rows[i:i + step]).tobytes())


@contextlib.contextmanager
def typed_by_dims():
    """onnxruntime's float16 converter reads an initializer's values to learn its shape (make_value_info_from_tensor),
    which a spilled one does not hold: within this block its dims say the same."""
    from onnxruntime.transformers import float16
    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda t: (helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                                     if uses_external_data(t) else original(t))
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def spilled(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers whose bytes are still in a Spill's scratch file (an absolute location)."""
    return [t for t in proto.graph.initializer
            if uses_external_data(t) and os.path.isabs(ExternalDataInfo(t).location)]


def settle(proto: onnx.ModelProto, data: Path) -> None:
    """Move every spilled initializer's bytes to the start of the new file `data` (as float16 where the float16
    pass retyped a float32 tensor) and point the initializer there; the scratch files are removed. onnx.save_model
    then appends the graph's other weights to the same file."""
    from onnxruntime.transformers.float16 import convert_np_to_float16
    tensors = spilled(proto)
    if not tensors:
        return
    scratch = {ExternalDataInfo(t).location for t in tensors}
    with open(data, "xb") as out:
        for t in tensors:
            info, start = ExternalDataInfo(t), out.tell()
            count = int(np.prod(t.dims, dtype=np.int64))
            halve = t.data_type == onnx.TensorProto.FLOAT16 and info.length == 4 * count     # retyped from float32
            raw = np.memmap(info.location, np.uint8, "r", int(info.offset), (int(info.length),))
            for i in range(0, len(raw), CHUNK_BYTES):
                chunk = raw[i:i + CHUNK_BYTES]
                out.write(convert_np_to_float16(chunk.view(np.float32)).tobytes() if halve else chunk.tobytes())
            del raw
            _point(t, data.name, start, out.tell() - start)
    for path in scratch:
        os.unlink(path)

"""LiteRT's CompiledModel API, as runtime_py's LiteRT backends use it.

- One CompiledModel per .tflite runs every signature, with XNNPACK's weight cache: the signatures (prefill_{T},
  decode) share one copy of the packed weights instead of packing them once each; the copy is kept in a file
  per model and mapped by later loads (litert_cache) when the model comes from a file.
- Carried tensors (KV caches, recurrent states) live in TensorBuffers that the caller owns (`State`) and binds to
  every call. A KV cache's buffer is bound as both the input and the output of the call, so the graph's cache
  write updates it in place and nothing is copied between calls (what LiteRT-LM's CPU executor does); a
  recurrent state, which the graph rewrites whole, goes in one buffer and out of another, swapped after the call.
- Every other input and output has one buffer per signature, made on first use; `Signature.read` copies out only
  the rows asked for (the first n rows of the logits).

Depends on ai_edge_litert, numpy and the standard library only (plus runtime_py's leaf modules).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, Environment, Options

from .contract import KV_CACHE_PREFIX, is_cache
from .litert_cache import IN_MEMORY, compile_cached

_environment = None
try:         # TensorBuffer.read's own reader, which fills an array it is given (None: read() and copy)
    from ai_edge_litert import _pywrap_litert_tensor_buffer_wrapper as _tb_wrapper
    _read_into = _tb_wrapper.ReadTensorToBuffer
except (ImportError, AttributeError):
    _read_into = None


def compile_tflite(model_path: str | Path | None = None, content: bytes | None = None, threads: int | None = None,
                   where: str = "model", source: tuple[str | Path, tuple[int, int] | None] | None = None
                   ) -> CompiledModel:
    """A .tflite file (read through the file) or its bytes, compiled for the CPU (XNNPACK, `threads` threads;
    None: LiteRT's default). A model LiteRT cannot load is a ValueError naming `where`. A file's packed weights
    are kept in a cache file (litert_cache) named after `source` = (file, byte span or None), by default the
    file itself (a bundle's section copied to `model_path`: the bundle and the section's span)."""

    def compile_with(weight_cache: str) -> CompiledModel:
        global _environment
        options = Options(cpu_options=CpuOptions(num_threads=int(threads or 0), xnnpack_weight_cache_path=weight_cache))
        with _native_log() as log:
            try:
                if _environment is None:             # one LiteRT environment per process, shared by its models
                    _environment = Environment.create()
                if content is None:
                    return CompiledModel.from_file(str(model_path), environment=_environment, options=options)
                return CompiledModel.from_buffer(bytes(content), environment=_environment, options=options)
            except (ValueError, RuntimeError) as e:
                errors = [line for line in log.lines() if line.startswith("ERROR")]
                said = "; ".join(part.strip(" └") for part in [str(e), *errors[-1:]] for part in part.splitlines())
                raise ValueError(f"{where}: ai_edge_litert cannot load it: {said}") from e

    if content is not None:
        return compile_with(IN_MEMORY)
    return compile_cached(compile_with, *(source or (model_path, None)))


class _Log:
    def __init__(self, file):
        self.file = file

    def lines(self) -> list[str]:
        self.file.seek(0)
        return self.file.read().decode("utf-8", "replace").splitlines()


@contextlib.contextmanager
def _native_log():
    """LiteRT logs its set-up (environment, accelerators, vendor plugins: some twenty lines) on the process's
    stderr; while a model compiles, that goes to a file instead, read back for the error of a failed load."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:              # no stderr to keep clean (fd 2 closed)
        with tempfile.TemporaryFile() as f:
            yield _Log(f)
        return
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield _Log(f)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class Signature:
    """One signature of a CompiledModel: `inputs` / `outputs` ({name: {"shape", "dtype"}}), its own buffers for
    what is not carried, `run(feeds, state)` and `read(name, rows)`."""

    def __init__(self, model: CompiledModel, name: str):
        self.model, self.name = model, name
        self.inputs = {k: _details(v) for k, v in model.get_input_tensor_details(name).items()}
        self.output_names = list(model.get_signature_list()[name]["outputs"])
        self._outputs = None
        self._buffers = {}           # ("in" | "out", name) -> TensorBuffer, made on first use

    @property
    def outputs(self) -> dict:
        """{name: {"shape", "dtype"}} of the outputs, asked of LiteRT on first use: asking allocates the
        signature's tensors (47 MB for the 270M's prefill_512), which a signature never run need not hold."""
        if self._outputs is None:
            self._outputs = {k: _details(v) for k, v in self.model.get_output_tensor_details(self.name).items()}
        return self._outputs

    def _buffer(self, side: str, name: str):
        key = (side, name)
        if key not in self._buffers:
            make = self.model.create_input_buffer_by_name if side == "in" else self.model.create_output_buffer_by_name
            self._buffers[key] = make(self.name, name)
        return self._buffers[key]

    def run(self, feeds: dict[str, np.ndarray], state: "State | None" = None) -> None:
        """Run with `feeds` (every input that is not carried, as arrays of the input's shape and dtype) and the
        carried tensors of `state` (updated in place)."""
        for name, array in feeds.items():
            self._buffer("in", name).write(np.ascontiguousarray(array, self.inputs[name]["dtype"]))
        inputs, outputs = state.maps(self) if state is not None else self.maps(())
        self.model.run_by_name(self.name, inputs, outputs)
        if state is not None:
            state.swap()

    def maps(self, carried_names) -> tuple[dict, dict]:
        """The input and output maps of a call, without the carried tensors (`carried_names`) bound."""
        inputs = {n: self._buffer("in", n) for n in self.inputs if n not in carried_names}
        outputs = {n: self._buffer("out", n) for n in self.output_names if n not in carried_names}
        return inputs, outputs

    def __call__(self, **feeds) -> dict[str, np.ndarray]:
        """Run with `feeds` (nothing carried); -> every output (a signature runner's call)."""
        self.run(feeds)
        return {name: self.read(name) for name in self.output_names}

    def read(self, name: str, rows: int | None = None) -> np.ndarray:
        """Output `name` of the last run: the whole tensor, or its first `rows` rows along the second axis
        ([1, T, ...] -> [rows, ...], the real positions of a padded chunk)."""
        shape, dtype = self.outputs[name]["shape"], self.outputs[name]["dtype"]
        if rows is None:
            return self._buffer("out", name).read(int(np.prod(shape)), dtype).reshape(shape)
        inner = shape[2:]
        return self._buffer("out", name).read(rows * int(np.prod(inner)), dtype).reshape(rows, *inner)

    def read_into(self, name: str, out: np.ndarray) -> None:
        """The first len(out) rows of output `name` ([1, T, ...]) copied into `out` (C-contiguous, the output's
        dtype), with no array in between: a [T, V] read costs T MB more otherwise."""
        buffer = self._buffer("out", name)
        if _read_into is None or not out.flags.c_contiguous or out.dtype != self.outputs[name]["dtype"]:
            out[...] = self.read(name, len(out))
        else:
            _read_into(buffer.capsule, out.reshape(-1), out.dtype.name)


class State:
    """The carried tensors of one sequence (`names`: the decode signature's cache and state inputs), zero at
    first. KV caches: one buffer each, bound as input and output. Recurrent states: two buffers each, the one
    read and the one written, swapped after every call."""

    def __init__(self, signature: Signature, names: list[str]):
        model, sig = signature.model, signature.name
        self.names, self.shapes = list(names), {n: signature.inputs[n] for n in names}
        self._maps = {}          # signature name -> its (inputs, outputs) maps, when nothing is swapped
        self.current = {n: model.create_input_buffer_by_name(sig, n) for n in names}
        self.spare = {n: model.create_input_buffer_by_name(sig, n) for n in names if not _in_place(n)}
        for n, buffer in self.current.items():
            buffer.write(np.zeros(self.shapes[n]["shape"], self.shapes[n]["dtype"]))

    def maps(self, sig: Signature) -> tuple[dict, dict]:
        """`sig`'s input and output maps with this state's buffers bound (kept while no buffer is swapped)."""
        if sig.name in self._maps:
            return self._maps[sig.name]
        inputs, outputs = sig.maps(self.names)
        for n in self.names:
            inputs[n] = self.current[n]
            outputs[n] = self.spare.get(n, self.current[n])
        if not self.spare:
            self._maps[sig.name] = inputs, outputs
        return inputs, outputs

    def swap(self) -> None:
        for n in self.spare:
            self.current[n], self.spare[n] = self.spare[n], self.current[n]

    def read(self, name: str) -> np.ndarray:
        """A copy of carried tensor `name` as it stands."""
        shape, dtype = self.shapes[name]["shape"], self.shapes[name]["dtype"]
        return self.current[name].read(int(np.prod(shape)), dtype).reshape(shape)

    def copy_from(self, other: "State") -> None:
        """Make this state equal to `other` (a fork of the sequence)."""
        for n in self.names:
            self.current[n].write(other.read(n))


def _in_place(name: str) -> bool:
    """KV caches are written in place by the graph (a slice update of the bound buffer); recurrent states are
    recomputed whole from the input, so input and output must not share memory."""
    return name.startswith(KV_CACHE_PREFIX)


def _details(d: dict) -> dict:
    return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"])}


def carried(names) -> list[str]:
    """The carried tensors among a signature's input names, in order."""
    return [n for n in names if is_cache(n)]

"""LiteRT backend: a `.tflite` with signatures `prefill_{T}` (several T) and `decode`, run with ai_edge_litert's
CompiledModel API (runtime_py.litert_compiled), from an artifact folder (model.tflite) or a `.litertlm` bundle
(its TFLite section).

Signature contract (LiteRT-LM's names, gemma-export's LiteRT target): inputs `tokens` int32 [1, T], `input_pos`
int32 [T], `kv_cache_k_{i}` / `kv_cache_v_{i}` [1, G, S_i, D] (RecurrentGemma's recurrent layers: `rg_lru_state_{i}`
[1, W], `conv1d_state_{i}` [1, K-1, W] instead); outputs `logits` [1, T, V] (a prefill signature's may have every
row, none -- `.litertlm` bundles -- or the last one: contract.PREFILL_LOGITS) and the updated caches and states. The
attention mask is computed in the graph; a chunk of n < T tokens runs through `prefill_T` with the tail padded
(tokens 0, input_pos 0) and the graph keeps only the n real tokens. An artifact exported with --sae also has
`sae_prefill_{T}` / `sae_decode`: the same plus steering inputs `sae_{n}_steer` and the SAE outputs
(export.converters.litert.sae); steered sequences and `run` of SAE outputs go through them.

Each stepper owns its caches as TensorBuffers that every call updates in place (litert_compiled.State): a decode
step copies no cache in or out, and reads back only the logits it returns.

Depends on ai_edge_litert, numpy and the standard library only (plus runtime_py's leaf modules).
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .contract import (CONFIG_KEY, DECODE_SIGNATURE, EMBED_PREFIX, INPUT_POS, KV_CACHE_PREFIX, LOGITS,
                       PREFILL_DECODE_SECTION, PREFILL_PREFIX, SAE_DECODE_SIGNATURE, SAE_PREFILL_PREFIX, SAE_STEER,
                       STATE_PREFIXES, TEXT_ENCODER_SECTION, TOKENS, VISION_KEY, is_cache)
from .litert_cache import cache_folder
from .litert_embedding import LiteRTBundleEmbedder, LiteRTEmbedder
from .litert_compiled import Signature, State, carried, compile_tflite
from .litert_verify import Verifier
from .litert_vision import LiteRTVisionBackend, greedy_chunks
from .sampling import check_step

# .litertlm container: magic, u32 version x3, u64 header end at byte 24, flatbuffer header from byte 32.
_MAGIC, _HEADER_BEGIN = b"LITERTLM", 32
_TFLITE, _SP_TOKENIZER, _LLM_METADATA, _TFLITE_WEIGHTS = 3, 4, 5, 7     # AnySectionDataType
_STRING_VALUE = 9                                                     # VData.StringValue


def _is_steer(name: str) -> bool:
    """An SAE's steering input (SAE_STEER, sae_{n}_steer)."""
    head, tail = SAE_STEER.split("{n}")
    return name.startswith(head) and name.endswith(tail) and name[len(head):-len(tail)].isdigit()


class _Signature(Signature):
    """A prefill or decode signature: its token and position inputs (static shapes), filled for each call, and
    an SAE signature's steering inputs (`steers`)."""

    def __init__(self, model, name: str, where: str):
        super().__init__(model, name)
        extra = [k for k in self.inputs if k not in (TOKENS, INPUT_POS) and not is_cache(k) and not _is_steer(k)]
        if extra or not {TOKENS, INPUT_POS} <= set(self.inputs):
            raise ValueError(f"{where}: signature {name!r} has inputs {list(self.inputs)}; runtime_py feeds {TOKENS}, "
                             f"{INPUT_POS}, {KV_CACHE_PREFIX}* and {'*, '.join(STATE_PREFIXES)}* only (the attention "
                             f"mask computed in the graph; SAE signatures also {SAE_STEER})")
        self.length = int(self.inputs[INPUT_POS]["shape"][-1])
        self.tokens = np.zeros(self.inputs[TOKENS]["shape"], self.inputs[TOKENS]["dtype"])
        self.positions = np.zeros(self.inputs[INPUT_POS]["shape"], self.inputs[INPUT_POS]["dtype"])
        self.steers = [k for k in self.inputs if _is_steer(k)]

    def all_rows(self) -> bool:
        """Whether this signature outputs logits for each of its T rows (contract.PREFILL_ALL_ROWS); a prefill
        signature without logits or with the last row's only does not."""
        shape = self.outputs.get(LOGITS, {}).get("shape")
        return shape is not None and len(shape) == 3 and shape[1] == self.length


class _Signatures:
    """One set of signatures a sequence runs through: `prefill` {T: signature}, `decode`, and `feeds` (the SAE
    signatures' steering inputs, fed on every call)."""

    def __init__(self, prefill: dict, decode: _Signature, feeds: dict | None = None):
        self.prefill, self.decode, self.feeds = prefill, decode, feeds or {}
        self.lengths = sorted(prefill)

    def has(self, name: str) -> bool:
        """Every prefill signature outputs `name` for each of its rows (logits: contract.PREFILL_LOGITS)."""
        return all(name in s.output_names and (name != LOGITS or s.all_rows()) for s in self.prefill.values())


class LiteRTBackend:
    """kind "causal": `stepper(max_len)` and `logits(ids)` over a LiteRT model's prefill/decode signatures
    (steered, and the SAE outputs: over its sae_prefill_{T} / sae_decode signatures)."""

    kind = "causal"

    def __init__(self, model_path: str | Path | None = None, *, model_content: bytes | None = None,
                 threads: int | None = None, context_length: int | None = None, name: str | None = None,
                 compiled=None, source: tuple | None = None):
        self.path = str(name or model_path)
        self.model = compiled or compile_tflite(model_path, model_content, threads, self.path, source)
        names = list(self.model.get_signature_list())
        if DECODE_SIGNATURE not in names or not any(n.startswith(PREFILL_PREFIX) for n in names):
            raise ValueError(f"{self.path}: expected signatures {PREFILL_PREFIX}{{T}} and {DECODE_SIGNATURE}, "
                             f"found {names}")
        self.decode = _Signature(self.model, DECODE_SIGNATURE, self.path)
        self.prefill = self._lengths(names, PREFILL_PREFIX)               # T -> signature
        self.caches = carried(self.decode.inputs)
        self.sae = None                                                    # the SAE signatures, if any
        if SAE_DECODE_SIGNATURE in names:
            self.sae = _Signatures(self._lengths(names, SAE_PREFILL_PREFIX),
                                   _Signature(self.model, SAE_DECODE_SIGNATURE, self.path))
        every = [self.decode, *self.prefill.values(), *([self.sae.decode, *self.sae.prefill.values()] if self.sae
                                                         else [])]
        for sig in every:
            missing = [c for c in self.caches
                       if sig.inputs.get(c) != self.decode.inputs[c] or c not in sig.output_names]
            if missing or (sig.length == 1 and LOGITS not in sig.output_names):
                raise ValueError(f"{self.path}: signature {sig.name!r} lacks {missing or [LOGITS]}")
        if self.sae is not None and not self.sae.prefill:
            raise ValueError(f"{self.path}: {SAE_DECODE_SIGNATURE} without {SAE_PREFILL_PREFIX}{{T}} signatures")
        self.plain = _Signatures(self.prefill, self.decode)
        self._prefill_logits = None
        # A prompt's last token goes through decode, as LiteRT-LM runs it: the prefill chunks' logits [1, T, V]
        # (T MB each) are then never read, which would cost as much memory again. False: read from prefill.
        self.hold_last = True
        slots = [int(self.decode.inputs[c]["shape"][2]) for c in self.caches if c.startswith(KV_CACHE_PREFIX)]
        longest = max(slots, default=0)
        self.context_length = min(longest, context_length) if context_length else longest
        if context_length and len(slots) < len(self.caches):
            # Recurrent states (Griffin): the KV caches are all attention-window ring buffers, so the
            # context is what the artifact states, not the longest cache.
            self.context_length = context_length
        self.vocab_size = int(self.decode.outputs[LOGITS]["shape"][-1])
        self.prefill_lengths = sorted(self.prefill)

    @property
    def prefill_logits(self) -> bool:
        """Whether every prefill signature outputs logits for each of its rows (asked when first needed: the
        prefill signatures' output shapes cost their tensors)."""
        if self._prefill_logits is None:
            self._prefill_logits = self.plain.has(LOGITS)
        return self._prefill_logits

    @prefill_logits.setter
    def prefill_logits(self, value: bool) -> None:
        self._prefill_logits = bool(value)

    def _lengths(self, names: list[str], prefix: str) -> dict[int, _Signature]:
        sigs = [_Signature(self.model, n, self.path) for n in names if n.startswith(prefix)]
        return {s.length: s for s in sorted(sigs, key=lambda s: s.length)}

    def signatures(self, extra: dict[str, np.ndarray] | None = None, sae: bool = False) -> _Signatures:
        """The plain signatures, or (steering inputs in `extra`, or `sae`: SAE outputs wanted) the SAE ones with
        their steering inputs filled: `extra`'s vectors, zeros for the others."""
        if not extra and not sae:
            return self.plain
        if self.sae is None:
            raise ValueError(f"{self.path}: no SAE signatures ({SAE_DECODE_SIGNATURE}); export it with --sae")
        inputs = self.sae.decode.inputs
        unknown = [k for k in extra or {} if k not in self.sae.decode.steers]
        if unknown:
            raise ValueError(f"{self.path}: no steering input {unknown[0]!r}")
        feeds = {k: np.zeros(inputs[k]["shape"], inputs[k]["dtype"]) for k in self.sae.decode.steers}
        for k, v in (extra or {}).items():
            if np.shape(v) != tuple(inputs[k]["shape"]):
                raise ValueError(f"{self.path}: steering input {k!r} takes shape {inputs[k]['shape']}, got "
                                 f"{list(np.shape(v))}")
            feeds[k] = np.asarray(v, inputs[k]["dtype"])
        return _Signatures(self.sae.prefill, self.sae.decode, feeds)

    def new_state(self) -> State:
        """The caches of an empty sequence (zeros), in buffers of their own."""
        return State(self.decode, self.caches)

    def run_chunk(self, sig: _Signature, tokens: list[int], start: int, state: State,
                  feeds: dict | None = None) -> _Signature:
        """Run `tokens` (len <= sig.length; the tail is padded) at positions start.. on `state` (updated in place),
        with `feeds` (steering inputs). -> `sig`, whose `logits(n)` reads the run's first n positions' logits."""
        n = len(tokens)
        sig.tokens.reshape(-1)[:n], sig.tokens.reshape(-1)[n:] = tokens, 0
        sig.positions.reshape(-1)[:n], sig.positions.reshape(-1)[n:] = np.arange(start, start + n), 0
        sig.run({TOKENS: sig.tokens, INPUT_POS: sig.positions, **(feeds or {})}, state)
        return sig

    @staticmethod
    def logits_of(sig: _Signature, n: int) -> np.ndarray:
        """The logits of the last run's n real positions: [n, V] float32."""
        return np.asarray(sig.read(LOGITS, n), dtype=np.float32)

    def chunks(self, count: int, lengths: list[int] | None = None) -> list[tuple[int, int]]:
        """How LiteRT-LM cuts `count` prompt tokens into prefill calls (litert_vision.greedy_chunks)."""
        return greedy_chunks(count, lengths or self.prefill_lengths)

    def stepper(self, max_len: int | None = None, extra: dict[str, np.ndarray] | None = None) -> "Stepper":
        """A fresh sequence of at most `max_len` tokens. extra: steering inputs by name, fed on every call."""
        return Stepper(self, max_len or self.context_length, self.signatures(extra))

    def logits(self, ids: list[int], extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits at every position of `ids` from an empty cache: [T, V] float32 (prefill chunks; decode steps
        when the prefill signatures have no logits output). extra: steering inputs by name."""
        (rows,) = self.run([LOGITS], ids, extra=extra)
        return rows

    def run(self, names: list[str], ids: list[int], features: np.ndarray | None = None,
            extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The outputs `names` at every position of `ids`, one sequence from an empty cache: [T, ...] each (the
        SAE outputs: through the SAE signatures). extra: steering inputs by name."""
        if features is not None:
            raise ValueError(f"{self.path} is a text model: it takes no images")
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= self.context_length:
            raise ValueError(f"logits() takes 1..{self.context_length} tokens ({self.path}), got {len(ids)}")
        sigs = self.signatures(extra, sae=any(n not in self.decode.output_names for n in names))
        missing = [n for n in names if n not in sigs.decode.output_names]
        if missing:
            raise ValueError(f"{self.path}: no output {missing[0]!r}")
        outs = {n: sigs.decode.outputs[n] for n in names}
        rows = [np.empty((len(ids), *outs[n]["shape"][2:]), outs[n]["dtype"]) for n in names]
        through_prefill = all(sigs.has(n) for n in names)
        state, pos = self.new_state(), 0
        for t, n in self.chunks(len(ids), sigs.lengths) if through_prefill else [(1, 1)] * len(ids):
            ran = self.run_chunk(sigs.prefill[t] if through_prefill else sigs.decode, ids[pos:pos + n], pos, state,
                                 sigs.feeds)
            for name, out in zip(names, rows):
                ran.read_into(name, out[pos:pos + n])
            pos += n
        return rows


class Stepper:
    """`step(tokens, start) -> last-position logits [V]`, on caches of its own updated in place, through one set
    of signatures (`sigs`: plain, or the SAE ones with their steering inputs)."""

    def __init__(self, backend: LiteRTBackend, max_len: int, sigs: _Signatures | None = None):
        if max_len > backend.context_length:
            raise ValueError(f"max_len {max_len} exceeds the context length {backend.context_length} "
                             f"of {backend.path}")
        self.backend, self.max_len, self.length = backend, int(max_len), 0
        self.sigs = sigs or backend.plain
        self.state = None       # made on the first call

    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        b, sigs = self.backend, self.sigs
        tokens = check_step(tokens, start, self.length, self.max_len, b.path, b.context_length)
        if self.state is None:
            self.state = b.new_state()
        if len(tokens) == 1:
            return self._run(tokens)
        held = b.hold_last or not sigs.has(LOGITS)
        head = tokens[:-1] if held else tokens
        for t, n in b.chunks(len(head), sigs.lengths):
            ran = b.run_chunk(sigs.prefill[t], head[:n], self.length, self.state, sigs.feeds)
            self.length += n
            head = head[n:]
        if held:
            return self._run(tokens[-1:])
        return b.logits_of(ran, n)[-1]          # only the last chunk's rows are read, up to its last real one

    def verifier(self):
        """Multi-token verify calls with rollback on this sequence (runtime_py.speculative; litert_verify.Verifier)."""
        return Verifier(self)

    def _run(self, tokens: list[int]) -> np.ndarray:
        """Run one token through decode; -> its logits [V]."""
        ran = self.backend.run_chunk(self.sigs.decode, tokens, self.length, self.state, self.sigs.feeds)
        self.length += 1
        return self.backend.logits_of(ran, 1)[0]


def open_tflite(model_path: str | Path | None = None, *, model_content: bytes | None = None,
                threads: int | None = None, context_length: int | None = None):
    """The backend a .tflite's signatures call for: LiteRTEmbedder (embed_{T}) or LiteRTBackend."""
    where = str(model_path)
    model = compile_tflite(model_path, model_content, threads, where)
    if any(n.startswith(EMBED_PREFIX) for n in model.get_signature_list()):
        return LiteRTEmbedder(model, where)
    return LiteRTBackend(model_path, threads=threads, context_length=context_length, compiled=model)


# --- .litertlm container -----------------------------------------------------------------------------------

def _u(fmt: str, buf, at: int):
    return struct.unpack_from("<" + fmt, buf, at)[0]


def _field(buf, table: int, slot: int) -> int | None:
    """Position of field `slot` of the flatbuffer table at `table` (None if absent)."""
    vtable = table - _u("i", buf, table)
    at = 4 + 2 * slot
    off = _u("H", buf, vtable + at) if at < _u("H", buf, vtable) else 0
    return table + off if off else None


def _deref(buf, at: int) -> int:
    return at + _u("I", buf, at)


def _vector(buf, at: int | None) -> list[int]:
    """Tables of a vector-of-tables field (none if absent)."""
    v = _deref(buf, at) if at is not None else None
    return [] if v is None else [_deref(buf, v + 4 + 4 * i) for i in range(_u("I", buf, v))]


def _string(buf, at: int) -> str:
    s = _deref(buf, at)
    return bytes(buf[s + 4:s + 4 + _u("I", buf, s)]).decode("utf-8")


def _items(buf, table: int, slot: int) -> dict[str, str]:
    """String-valued KeyValuePairs of a vector field (other value types are skipped)."""
    out = {}
    for kv in _vector(buf, _field(buf, table, slot)):
        key, vtype, value = (_field(buf, kv, i) for i in range(3))
        if key is not None and value is not None and vtype is not None and buf[vtype] == _STRING_VALUE:
            inner = _field(buf, _deref(buf, value), 0)
            if inner is not None:
                out[_string(buf, key)] = _string(buf, inner)
    return out


def _proto_fields(data: bytes) -> dict:
    """{field number: value} of a protobuf message's top-level varint / length-delimited fields (last wins)."""
    def varint(i):
        value = shift = 0
        while data[i] & 0x80:
            value, shift, i = value | (data[i] & 0x7F) << shift, shift + 7, i + 1
        return value | data[i] << shift, i + 1

    out, i = {}, 0
    while i < len(data):
        key, i = varint(i)
        if key & 7 == 0:
            out[key >> 3], i = varint(i)
        elif key & 7 == 2:
            size, i = varint(i)
            out[key >> 3], i = data[i:i + size], i + size
        else:
            i += {1: 8, 5: 4}[key & 7]
    return out


def _header(f, path: Path, size: int) -> tuple[int, dict, list]:
    """A .litertlm file's header: (its end, the system metadata, [(section kind, begin, end, items)])."""
    head = f.read(_HEADER_BEGIN)
    if len(head) < _HEADER_BEGIN or head[:8] != _MAGIC:
        raise ValueError(f"{path}: not a .litertlm file (no {_MAGIC.decode()} magic)")
    end = _u("Q", head, 24)
    if not _HEADER_BEGIN < end <= size:           # sizes are bounded by the file before anything is read
        raise ValueError(f"{path}: damaged .litertlm header (it ends at byte {end}, the file has {size})")
    buf = memoryview(f.read(end - _HEADER_BEGIN))
    try:
        root = _deref(buf, 0)
        system = _items(buf, _deref(buf, _field(buf, root, 0)), 0)
        sections = _vector(buf, _field(buf, _deref(buf, _field(buf, root, 1)), 0))
        spans = [(buf[_field(buf, s, 3)], _u("Q", buf, _field(buf, s, 1)), _u("Q", buf, _field(buf, s, 2)),
                  _items(buf, s, 0)) for s in sections]
    except (struct.error, TypeError, IndexError, UnicodeDecodeError, MemoryError, OverflowError) as e:
        raise ValueError(f"{path}: damaged .litertlm header ({e})") from None
    return end, system, spans


def tflite_section_sizes(path: str | Path) -> dict[str, int]:
    """{section model type: bytes} of a `.litertlm` file's TFLite sections, from its header alone."""
    path = Path(path)
    with open(path, "rb") as f:
        _, _, spans = _header(f, path, path.stat().st_size)
    return {items.get("model_type", PREFILL_DECODE_SECTION): stop - begin
            for kind, begin, stop, items in spans if kind == _TFLITE}


def read_litertlm(path: str | Path, models: bool = True) -> dict:
    """The sections runtime_py uses from a `.litertlm` file: {"tflite": bytes (the prefill/decode model),
    "models": {section model type: bytes} (every TFLite section), "spans": {section model type: (begin, end)}
    (their bytes in the file), "tokenizer": bytes | None, "max_num_tokens": int | None, "system": {key: str}}.
    models=False: the TFLite sections are not read ("tflite" None, "models" {}; section_file reads one)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        end, system, spans = _header(f, path, size)

        def read(begin, stop):
            if not end <= begin <= stop <= size:
                raise ValueError(f"{path}: damaged .litertlm header (a section spans bytes {begin}..{stop}, "
                                 f"the file has {size})")
            f.seek(begin)
            return f.read(stop - begin)

        out = {"tflite": None, "models": {}, "spans": {}, "tokenizer": None, "max_num_tokens": None,
               "system": system}
        for kind, begin, stop, items in spans:
            if kind == _TFLITE:
                section = items.get("model_type", PREFILL_DECODE_SECTION)
                if not end <= begin <= stop <= size:
                    raise ValueError(f"{path}: damaged .litertlm header (a section spans bytes {begin}..{stop}, "
                                     f"the file has {size})")
                out["spans"][section] = (begin, stop)
                if models:
                    out["models"][section] = read(begin, stop)
            elif kind == _TFLITE_WEIGHTS:
                raise ValueError(f"{path}: external TFLite weights sections are not supported by runtime_py")
            elif kind == _SP_TOKENIZER and out["tokenizer"] is None:
                out["tokenizer"] = read(begin, stop)
            elif kind == _LLM_METADATA:
                try:
                    out["max_num_tokens"] = _proto_fields(read(begin, stop)).get(5) or None    # max_num_tokens
                except (KeyError, IndexError) as e:
                    raise ValueError(f"{path}: damaged LlmMetadata section ({e!r})") from e
    out["tflite"] = out["models"].get(PREFILL_DECODE_SECTION)
    if not {PREFILL_DECODE_SECTION, TEXT_ENCODER_SECTION} & set(out["spans"]):
        raise ValueError(f"{path}: no TFLite prefill/decode (or text encoder) model section")
    return out


@contextlib.contextmanager
def section_file(path: str | Path, span: tuple[int, int], folder: Path | None = None):
    """A temporary .tflite file holding bytes span = (begin, end) of `path` (a TFLite section), removed on exit,
    in `folder` (None: the system's temporary folder). LiteRT maps a model it compiles from a file and keeps only
    the pages it reads resident (the packed weights are XNNPACK's own copy); compiled from bytes, the whole section
    stays in the process's memory. The file stays mapped after its removal: in a memory-backed temporary folder
    (tmpfs) every page of it would stay in memory."""
    begin, stop = span
    tmp = tempfile.NamedTemporaryFile(suffix=".tflite", delete=False, dir=folder)
    try:
        with open(path, "rb") as src, tmp:
            src.seek(begin)
            left = stop - begin
            while left:
                chunk = src.read(min(left, 1 << 24))
                if not chunk:
                    raise ValueError(f"{path}: damaged .litertlm (a section ends past the file)")
                tmp.write(chunk)
                left -= len(chunk)
        yield tmp.name
    finally:
        os.unlink(tmp.name)


def open_bundle(path: str | Path, threads: int | None = None) -> tuple[LiteRTBackend, bytes | None, dict]:
    """(backend, SentencePiece model bytes or None, our stored facts {config, context_length, ...} or {}).
    A vision-language bundle (its facts have a `vision` section): a LiteRTVisionBackend over its sections; an
    embedding bundle (a text encoder section): a LiteRTBundleEmbedder."""
    bundle = read_litertlm(path, models=False)
    try:
        facts = json.loads(bundle["system"].get(CONFIG_KEY, "{}"))
    except ValueError as e:
        raise ValueError(f"{path}: its {CONFIG_KEY} metadata is not JSON ({e})") from None
    if not isinstance(facts, dict):
        raise ValueError(f"{path}: its {CONFIG_KEY} metadata is not a JSON object")
    limits = [n for n in (bundle["max_num_tokens"], facts.get("context_length")) if n]
    if isinstance(facts.get(VISION_KEY), dict) or PREFILL_DECODE_SECTION not in bundle["spans"]:
        bundle = read_litertlm(path)                      # the sections' bytes (few: the vision models are small)
    if isinstance(facts.get(VISION_KEY), dict):
        return (LiteRTVisionBackend(bundle["models"], facts[VISION_KEY], threads, min(limits) if limits else None,
                                    str(path)), bundle["tokenizer"], facts)
    if TEXT_ENCODER_SECTION in bundle["models"]:          # EmbeddingGemma: LiteRT-LM's embedding bundle
        models = {section: compile_tflite(None, content, threads, str(path))
                  for section, content in bundle["models"].items()}
        return LiteRTBundleEmbedder(models, str(path)), bundle["tokenizer"], facts
    context = min(limits) if limits else None
    span = bundle["spans"][PREFILL_DECODE_SECTION]
    try:
        folder = cache_folder()                   # on disk beside the packed weights, not in a tmpfs /tmp
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = None
    try:
        with section_file(path, span, folder) as model:    # mapped by LiteRT, which keeps it
            backend = LiteRTBackend(model, threads=threads, context_length=context, name=str(path), source=(path, span))
    except OSError:              # no room or no writable temporary folder: from the section's bytes
        backend = LiteRTBackend(model_content=read_litertlm(path)["tflite"], threads=threads, context_length=context,
                                name=str(path))
    return backend, bundle["tokenizer"], facts

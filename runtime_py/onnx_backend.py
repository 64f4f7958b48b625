"""The ONNX Runtime backend: runs an exported `model.onnx` on the CPU.

Causal LMs follow onnxruntime-genai's decoder contract (described by `genai_config.json`):
inputs `input_ids` [B, T], `attention_mask` [B, total] (total = absolute token count so far, new tokens
included), `past_key_values.{i}.key/value` [B, kv_heads, P, head_dim]; outputs `logits` [B, T, V] and
`present.{i}.key/value`. Global layers grow their cache (P + T); sliding-window layers keep a window-sized
one ([B, kv, max(W, P), D]) which is fed back unchanged. Sliding layers always start from a zero past of
length W: our exporter accepts any P and onnxruntime-genai's builder output requires P >= W.
RecurrentGemma's folders (no genai_config.json; the same description as manifest.json's runtime_config)
have KV caches on `kv_layers` only and fixed-size `states` (input, output pairs such as
rg_lru_state_{i} -> present_rg_lru_state_{i}), zero at the start and fed back like the caches.

Embedding models map `input_ids`, `attention_mask` [B, T] to `sentence_embedding` [B, D] (L2-normalised;
contract.SENTENCE_EMBEDDING). Their graph is `model.onnx`, or the file manifest.json's `model_file` names (a
transformers.js folder keeps it under onnx/).

Depends on onnxruntime, numpy and the standard library only (plus runtime_py's leaf helpers).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import (IMAGE_FEATURES, INPUTS_EMBEDS, LOGITS_TO_KEEP, MODEL_FILE, NUM_LOGITS_TO_KEEP, PIXEL_VALUES,
                       SENTENCE_EMBEDDING)
from .files import inside, read_json
from .onnx_verify import Verifier
from .sampling import check_step

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _dtype(arg, where: str):
    if arg.type not in _DTYPES:
        raise ValueError(f"{where}: {arg.name!r} has unsupported type {arg.type}")
    return _DTYPES[arg.type]


class OnnxBackend:
    """One `model.onnx` in an artifact folder. `kind` is "causal" (stepper/logits) or "embedding" (embed)."""

    def __init__(self, folder: str | Path, threads: int | None = None, spin: bool = True,
                 profile_prefix: str | None = None):
        """`profile_prefix`: run with onnxruntime's profiler on, its trace written under this path prefix
        (`self.session.end_profiling()` returns the file)."""
        self.folder = Path(folder)
        genai_path = self.folder / "genai_config.json"
        self.genai = read_json(genai_path) if genai_path.exists() else None
        manifest_path = self.folder / "manifest.json"
        manifest = read_json(manifest_path) if manifest_path.exists() else {}
        if self.genai is None and manifest:     # models onnxruntime-genai cannot run
            self.genai = manifest.get("runtime_config")
            genai_path = manifest_path if self.genai else genai_path
        decoder = (self.genai or {}).get("model", {}).get("decoder", {})
        if not decoder and manifest.get(MODEL_FILE):
            self.path = inside(self.folder, manifest[MODEL_FILE], f"{manifest_path}: {MODEL_FILE}")
        else:
            self.path = inside(self.folder, decoder.get("filename", "model.onnx"),
                               f"{genai_path}: model.decoder.filename")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file (an ONNX artifact folder holds the model graph "
                                    f"{self.path.name}{' named by genai_config.json' if decoder else ''})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        # onnxruntime plans a memory pattern per set of input shapes; every decode step has a new total length,
        # so each step paid for a fresh plan (README: Benchmarks, what the loop cost) and never reused one.
        options.enable_mem_pattern = False
        # A decode step is hundreds of small operators, each ending in a barrier. Spinning idle threads
        # (onnxruntime's and onnxruntime-genai's default) wake fastest when the process has the cores to itself;
        # when other jobs share the cores, spinning takes the cores the working threads need (README: runtime_py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if profile_prefix:
            options.enable_profiling, options.profile_file_prefix = True, str(profile_prefix)
        self.options = options
        self.session = self._session(self.path)
        self.vision_parts = VisionParts(self, genai_path) if (self.genai or {}).get("model", {}).get("embedding") \
            else None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        if SENTENCE_EMBEDDING in self.outputs:
            self.kind = "embedding"
            self._check_inputs({"input_ids", "attention_mask"})
            self.context_length = (self.genai or {}).get("model", {}).get("context_length")
        else:
            self.kind = "causal"
            self._init_causal(decoder, genai_path)

    def _session(self, path: Path):
        try:
            return ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
        except Exception as e:     # onnxruntime raises its own exception types
            raise ValueError(f"{path}: onnxruntime cannot load it: {e}") from e

    def _init_causal(self, decoder: dict, genai_path: Path) -> None:
        if self.genai is None:
            raise FileNotFoundError(f"{genai_path}: no such file; {self.path} has no 'embeddings' output, and a "
                                    f"causal LM folder needs genai_config.json (layers, heads, sliding window) "
                                    f"or a manifest.json with runtime_config")
        try:
            names_in, names_out = decoder["inputs"], decoder["outputs"]
            layers, self.kv_heads = int(decoder["num_hidden_layers"]), int(decoder["num_key_value_heads"])
            self.head_dim = int(decoder["head_size"])
            self.context_length = int(self.genai["model"]["context_length"])
            self.ids_name, self.logits_name = names_in["input_ids"], names_out["logits"]
            key_in, value_in = names_in["past_key_names"], names_in["past_value_names"]
            key_out, value_out = names_out["present_key_names"], names_out["present_value_names"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{genai_path}: model.decoder lacks a valid field {e}") from e
        self.mask_name = names_in.get("attention_mask")
        self.positions_name = names_in.get("position_ids")
        window = decoder.get("sliding_window") or {}
        self.window = int(window["window_size"]) if window.get("window_size") else None
        sliding = set(window.get("layers", [])) if self.window else set()
        # One entry per cache tensor: (past input name, present output name, kind), kind "sliding" or
        # "global" for KV caches, "state" for fixed-size recurrent states (RecurrentGemma).
        try:
            kv_layers = [int(i) for i in decoder.get("kv_layers", range(layers))]
            states = [(str(a), str(b)) for a, b in decoder.get("states", [])]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{genai_path}: model.decoder's kv_layers/states are malformed ({e})") from e
        self.caches = [(pattern_in % i, pattern_out % i, "sliding" if i in sliding else "global") for i in kv_layers
                       for pattern_in, pattern_out in ((key_in, key_out), (value_in, value_out))]
        self.caches += [(past, present, "state") for past, present in states]
        wanted = {self.ids_name, *(p for p, _, _ in self.caches)}
        if self.vision_parts is not None:
            wanted.add(self.vision_parts.embeds_name)
        self._check_inputs(wanted, optional={self.mask_name, self.positions_name, NUM_LOGITS_TO_KEEP})
        for name in [self.logits_name] + [p for _, p, _ in self.caches]:
            if name not in self.outputs:
                raise ValueError(f"{self.path}: no output {name!r} (genai_config.json names it)")
        self.cache_dtype = _dtype(self.inputs[self.caches[0][0]], str(self.path))
        self.logits_dtype = _dtype(self.outputs[self.logits_name], str(self.path))
        # Optional input (ours): logits at the last k positions only; steps need just the last one's.
        self.optional = {i.name: i for i in self.session.get_overridable_initializers()}
        # A web graph's (`--target web`) is a required scalar, fed 0 (every position) unless a call wants 1.
        self.keep_required = NUM_LOGITS_TO_KEEP in self.inputs
        self.keep_name = NUM_LOGITS_TO_KEEP if self.keep_required else \
            LOGITS_TO_KEEP if LOGITS_TO_KEEP in self.optional else None
        # onnxruntime-genai's flag: past and present may be one buffer (GroupQueryAttention appends in place).
        # Recurrent states are rewritten whole by ops that may not alias their input and output: not shared.
        self.share_buffer = bool((self.genai.get("search") or {}).get("past_present_share_buffer", False)) \
            and not states
        vocab = self.outputs[self.logits_name].shape[-1]
        # Known: steps write logits into a preallocated numpy buffer.
        self.vocab_size = vocab if isinstance(vocab, int) else self.genai["model"].get("vocab_size")

    def _check_inputs(self, required: set, optional: set = frozenset()) -> None:
        missing = sorted(required - set(self.inputs))
        unknown = sorted(set(self.inputs) - required - set(optional))
        if missing or unknown:
            raise ValueError(f"{self.path}: graph inputs do not match the {self.kind} contract"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unexpected {unknown}" if unknown else ""))

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            article = {"causal": "a causal LM", "embedding": "an embedding model"}
            raise ValueError(f"{self.path} is {article[self.kind]}: {what} needs {article[kind]}")

    def empty_past(self) -> dict[str, np.ndarray]:
        """Zero caches for a first call: length W for sliding layers, 0 for global ones ([1, kv, P, D] each);
        recurrent states at their fixed shape (batch 1)."""
        def zeros(past, kind):
            if kind == "state":
                arg = self.inputs[past]
                if not all(isinstance(d, int) for d in arg.shape[1:]):
                    raise ValueError(f"{self.path}: state input {past!r} needs a fixed shape after the batch axis, "
                                     f"has {arg.shape}")
                return np.zeros((1, *arg.shape[1:]), _dtype(arg, str(self.path)))
            return np.zeros((1, self.kv_heads, self.window if kind == "sliding" else 0, self.head_dim),
                            self.cache_dtype)
        return {past: zeros(past, kind) for past, _, kind in self.caches}

    def feed(self, tokens: list[int], start: int, features: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The non-cache inputs for `tokens` at absolute positions start..start+T-1 (batch 1); a vision-language
        decoder also gets inputs_embeds from the embedding graph (with `features`: the rows of the images whose
        placeholders are among `tokens`)."""
        feed = {self.ids_name: np.asarray([tokens], _dtype(self.inputs[self.ids_name], str(self.path)))}
        if self.vision_parts is not None:
            feed[self.vision_parts.embeds_name] = self.vision_parts.embed(feed[self.ids_name], features)
        total = start + len(tokens)
        if self.mask_name:
            feed[self.mask_name] = np.ones((1, total), _dtype(self.inputs[self.mask_name], str(self.path)))
        if self.positions_name:
            feed[self.positions_name] = np.arange(start, total, dtype=np.int64)[None].astype(
                _dtype(self.inputs[self.positions_name], str(self.path)))
        if self.keep_required:
            feed[self.keep_name] = self.keep(0)
        return feed

    def keep(self, k: int) -> np.ndarray:
        """The logits-to-keep value k in the shape the graph declares ([] or [1])."""
        rank = len(self.inputs[self.keep_name].shape) if self.keep_required else 1
        return np.full((1,) * rank, k, np.int64)

    def optional_feed(self, extra: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Optional inputs by name, each in the graph's type for it (float16 in a float16 graph)."""
        out = {}
        for name, value in (extra or {}).items():
            if name not in self.optional:
                raise ValueError(f"{self.path}: no optional input {name!r}")
            out[name] = np.ascontiguousarray(value, _dtype(self.optional[name], str(self.path)))
        return out

    def stepper(self, max_len: int | None = None, prefill_chunk: int = 256,
                features: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None) -> "Stepper":
        """A fresh KV cache for one sequence of at most `max_len` tokens (default: the context length).
        features: image rows (encode_images) for the placeholders of the first call, which then takes the whole
        prompt (an image's tokens see each other only within one call). extra: optional inputs fed on every call
        (a sparse autoencoder's steering vector)."""
        self._require("causal", "stepper()")
        if features is not None and self.vision_parts is None:
            raise ValueError(f"{self.path} is a text model: it takes no images")
        step = Stepper(self, max_len or self.context_length, prefill_chunk, features)
        if extra:
            if self.keep_name is None:
                raise ValueError(f"{self.path}: optional inputs need the logits_to_keep path (run_with_ort_values)")
            step.extra = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self.optional_feed(extra).items()}
        return step

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [N, 3, S, S] (preprocessed) -> image rows [N, tokens_per_image, d] (vision.onnx)."""
        if self.vision_parts is None:
            raise ValueError(f"{self.path} is a text model: it has no vision graph")
        return self.vision_parts.encode(pixels)

    def logits(self, ids: list[int], features: np.ndarray | None = None,
               extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits at every position of `ids`, one call from an empty cache: [T, V] float32. extra: optional
        inputs by name (a sparse autoencoder's steering vector)."""
        (out,) = self.run([self.logits_name], ids, features, extra)
        return out.astype(np.float32, copy=False)                      # [T, V]

    def run(self, names: list[str], ids: list[int], features: np.ndarray | None = None,
            extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The outputs `names` of one call on `ids` from an empty cache (batch row 0 of each)."""
        self._require("causal", "logits()")
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= self.context_length:
            raise ValueError(f"logits() takes 1..{self.context_length} tokens ({self.path}), got {len(ids)}")
        missing = [n for n in names if n not in self.outputs]
        if missing:
            raise ValueError(f"{self.path}: no output {missing[0]!r}")
        outs = self.session.run(names, {**self.feed(ids, 0, features), **self.empty_past(), **self.optional_feed(extra)})
        return [o[0] for o in outs]

    def embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [B, T] -> embeddings [B, D] float32 (L2-normalised by the graph)."""
        self._require("embedding", "embed()")
        feed = {"input_ids": np.asarray(ids, _dtype(self.inputs["input_ids"], str(self.path))),
                "attention_mask": np.asarray(mask, _dtype(self.inputs["attention_mask"], str(self.path)))}
        (out,) = self.session.run([SENTENCE_EMBEDDING], feed)
        return out.astype(np.float32, copy=False)


class Stepper:
    """`step(tokens, start) -> last-position logits [V]` for `generate_tokens`, keeping the KV cache.

    The cache lives in onnxruntime OrtValues. With `past_present_share_buffer` (genai_config.json's search
    options; set by our exporter and by onnxruntime-genai's builder for GroupQueryAttention graphs) each layer's
    cache is one buffer allocated once, bound both as its `past_key_values.*` input and as its `present.*` output,
    so GroupQueryAttention writes the new rows in place: window-sized on sliding layers, `max_len` rows on global
    ones (the first `length` rows are live). Otherwise each call's `present.*` outputs are bound as the next
    call's inputs (no copy through numpy, but the graph copies the cache into its new outputs every step).
    Long inputs are fed in chunks of `prefill_chunk` tokens, which bounds the [T, V] logits buffer of graphs
    without our optional `logits_to_keep` input (with it, only the last position's logits are computed).
    """

    def __init__(self, backend: OnnxBackend, max_len: int, prefill_chunk: int, features: np.ndarray | None = None):
        if max_len > backend.context_length:
            raise ValueError(f"max_len {max_len} exceeds the context length {backend.context_length} "
                             f"of {backend.path}")
        self.backend, self.max_len, self.chunk = backend, int(max_len), max(1, int(prefill_chunk))
        self.features = features                # consumed by the first call
        if backend.vision_parts is not None:    # a prompt's image blocks (and PaliGemma's prefix) need one call
            self.chunk = self.max_len
        self.length = 0             # tokens in the cache
        b = backend
        if b.share_buffer:          # [1, kv, W or max_len, D] each, allocated once
            self.past = {past: ort.OrtValue.ortvalue_from_numpy(np.zeros(
                (1, b.kv_heads, b.window if kind == "sliding" else self.max_len, b.head_dim), b.cache_dtype))
                for past, _, kind in b.caches}
        else:
            self.past = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in b.empty_past().items()}
        # With shared buffers and a known vocabulary only the new tokens and the logits buffer change from one
        # step to the next: one binding is kept and just those are rebound.
        self.binding = self._bind_caches(b.session.io_binding()) if b.share_buffer and b.vocab_size else None
        self._logits: dict[int, np.ndarray] = {}      # T -> [1, T, V] output buffer, reused across steps
        self._feed = None
        self.extra: dict = {}       # optional inputs (OrtValues) for every call, which IOBinding cannot bind
        self._one = self._one_token_buffers() if self.binding is not None and b.vision_parts is None else None

    def _one_token_buffers(self) -> dict[str, np.ndarray]:
        """Buffers for one-token steps (decode), allocated once and bound by address: the token id, the mask
        (all ones: a step binds its first `total` entries), the positions (a step binds its own entry) and the
        logits. A step then writes one id and rebinds the mask's length, with no numpy feed built per token."""
        b = self.backend
        one = {b.ids_name: np.zeros((1, 1), _dtype(b.inputs[b.ids_name], str(b.path))),
               b.logits_name: self._logits.setdefault(1, np.empty((1, 1, b.vocab_size), b.logits_dtype))}
        if b.mask_name:
            one[b.mask_name] = np.ones((1, self.max_len), _dtype(b.inputs[b.mask_name], str(b.path)))
        if b.positions_name:
            one[b.positions_name] = np.arange(self.max_len).astype(_dtype(b.inputs[b.positions_name], str(b.path)))
        if b.keep_required:
            one[b.keep_name] = b.keep(0)
        self._one_bound = False        # other calls rebind ids and logits to their own buffers
        return one

    def _bind_caches(self, binding):
        for past, present, _ in self.backend.caches:
            binding.bind_ortvalue_input(past, self.past[past])
            if self.backend.share_buffer:
                binding.bind_ortvalue_output(present, self.past[past])
            else:
                binding.bind_output(present, "cpu")
        return binding

    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        tokens = check_step(tokens, start, self.length, self.max_len, self.backend.path, self.backend.context_length)
        if len(tokens) == 1 and self._one is not None and self.features is None and not self.extra:
            return self._run_one(tokens[0])
        for i in range(0, len(tokens), self.chunk):
            chunk = tokens[i:i + self.chunk]
            last = (len(chunk) > 1 or self.extra) and self.backend.keep_name
            logits = self._run_last(chunk) if last else self._run(chunk)
        return logits

    def _run_one(self, token: int) -> np.ndarray:
        b, one, binding = self.backend, self._one, self.binding
        ids, logits = one[b.ids_name], one[b.logits_name]
        if not self._one_bound:
            binding.bind_input(b.ids_name, "cpu", 0, ids.dtype.type, ids.shape, ids.ctypes.data)
            binding.bind_output(b.logits_name, "cpu", 0, logits.dtype.type, logits.shape, logits.ctypes.data)
            if b.keep_required:
                binding.bind_cpu_input(b.keep_name, one[b.keep_name])
            self._one_bound = True
        ids[0, 0] = token
        if b.mask_name:
            mask = one[b.mask_name]
            binding.bind_input(b.mask_name, "cpu", 0, mask.dtype.type, (1, self.length + 1), mask.ctypes.data)
        if b.positions_name:
            pos = one[b.positions_name]
            binding.bind_input(b.positions_name, "cpu", 0, pos.dtype.type, (1, 1),
                               pos.ctypes.data + self.length * pos.itemsize)
        b.session.run_with_iobinding(binding)
        self.length += 1
        return logits[0, -1].astype(np.float32)       # [V], a copy: the buffer is reused

    def _run_last(self, tokens: list[int]) -> np.ndarray:
        """A prompt chunk with `logits_to_keep` = 1 (the LM head on the last position only). IOBinding cannot
        bind an optional input (an overridable initializer), so this runs through run_with_ort_values: the
        caches come back in new buffers (one copy per chunk), which the kept binding then points to."""
        b = self.backend
        feed = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in b.feed(tokens, self.length,
                                                                                  self._take_features()).items()}
        feed[b.keep_name] = ort.OrtValue.ortvalue_from_numpy(b.keep(1))
        feed.update(self.extra)
        outs = b.session.run_with_ort_values([b.logits_name] + [p for _, p, _ in b.caches], {**feed, **self.past})
        self.past = {past: value for (past, _, _), value in zip(b.caches, outs[1:])}
        if self.binding is not None:
            self._bind_caches(self.binding)
        self.length += len(tokens)
        return outs[0].numpy()[0, -1].astype(np.float32)     # [V]

    def _run(self, tokens: list[int]) -> np.ndarray:
        return self.run_rows(tokens)[-1].astype(np.float32)       # [V], a copy: the buffer is reused

    def run_rows(self, tokens: list[int]) -> np.ndarray:
        """One call on `tokens` (unchecked; at most one chunk) -> logits at every row [T, V], a view of a buffer
        the next call of this length reuses."""
        b = self.backend
        binding = self.binding or b.session.io_binding()
        self._one_bound = False
        self._feed = b.feed(tokens, self.length, self._take_features())      # kept alive until the next run
        for name, value in self._feed.items():
            binding.bind_cpu_input(name, value)
        logits = None
        if b.vocab_size:                                # write logits [1, T, V] straight into numpy memory
            logits = self._logits.get(len(tokens))
            if logits is None:
                logits = self._logits[len(tokens)] = np.empty((1, len(tokens), b.vocab_size), b.logits_dtype)
            binding.bind_output(b.logits_name, "cpu", element_type=logits.dtype, shape=logits.shape,
                                buffer_ptr=logits.ctypes.data)
        else:
            binding.bind_output(b.logits_name, "cpu")
        if self.binding is None:
            self._bind_caches(binding)
        b.session.run_with_iobinding(binding)
        if self.binding is None:
            outs = binding.get_outputs()                # in binding order: logits, then presents
            logits = outs[0].numpy() if logits is None else logits
            if not b.share_buffer:
                self.past = {past: value for (past, _, _), value in zip(b.caches, outs[1:])}
        self.length += len(tokens)
        return logits[0]

    def verifier(self):
        """Multi-token verify calls with rollback on this cache (runtime_py.speculative; onnx_verify.Verifier)."""
        return Verifier(self)

    def fork(self) -> "Stepper":
        """An independent copy of this sequence's state (its caches copied): continue one prefix several ways,
        e.g. one image's prompt prefix with each ShieldGemma 2 policy."""
        b = self.backend
        twin = Stepper.__new__(Stepper)
        twin.__dict__.update(self.__dict__)
        twin.past = {k: ort.OrtValue.ortvalue_from_numpy(v.numpy().copy()) for k, v in self.past.items()}
        twin._logits, twin._feed = {}, None
        twin.binding = twin._bind_caches(b.session.io_binding()) if self.binding is not None else None
        twin._one = twin._one_token_buffers() if self._one is not None else None
        return twin

    def _take_features(self) -> np.ndarray | None:
        features, self.features = self.features, None
        return features

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """{past input name: shape} of the live cache: [1, kv, W, D] on sliding layers, [1, kv, length, D] on
        global ones (with shared buffers: the first `length` rows of the preallocated [1, kv, max_len, D]);
        recurrent states at their fixed shape."""
        b = self.backend
        if not b.share_buffer:
            return {name: tuple(value.shape()) for name, value in self.past.items()}
        return {past: (1, b.kv_heads, b.window if kind == "sliding" else self.length, b.head_dim)
                for past, _, kind in b.caches}

    def cache_bytes(self) -> int:
        """Bytes of every cache and state tensor held now (what the runtime keeps between steps)."""
        return sum(value.tensor_size_in_bytes() for value in self.past.values())


class VisionParts:
    """vision.onnx and embedding.onnx of a vision-language folder (genai_config.json's `vision` and `embedding`
    sections): images -> rows, and token ids + rows -> the decoder's inputs_embeds."""

    def __init__(self, backend: OnnxBackend, genai_path: Path):
        model = backend.genai["model"]
        try:
            vis, emb = model["vision"], model["embedding"]
            files = {k: inside(backend.folder, sec["filename"], f"{genai_path}: model.{k}.filename")
                     for k, sec in (("vision", vis), ("embedding", emb))}
            self.pixels_name = vis["inputs"][PIXEL_VALUES]
            self.features_name = vis["outputs"][IMAGE_FEATURES]
            self.embed_ids = emb["inputs"]["input_ids"]
            self.embed_features = emb["inputs"][IMAGE_FEATURES]
            self.embeds_name = emb["outputs"][INPUTS_EMBEDS]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{genai_path}: model.vision / model.embedding lack a valid field {e}") from e
        self.vision = backend._session(files["vision"])
        self.embedding = backend._session(files["embedding"])
        shape = {o.name: o for o in self.vision.get_outputs()}[self.features_name].shape   # [N, tokens, d]
        self.tokens_per_image, self.width = shape[-2], shape[-1]
        self.pixels_dtype = _dtype(self.vision.get_inputs()[0], str(files["vision"]))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixel_values must be [N, 3, S, S], got {pixels.shape}")
        (out,) = self.vision.run([self.features_name], {self.pixels_name: pixels.astype(self.pixels_dtype)})
        return out.astype(np.float32, copy=False)

    def embed(self, ids: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        if features is None:
            features = np.zeros((0, self.tokens_per_image, self.width), np.float32)
        (out,) = self.embedding.run([self.embeds_name], {self.embed_ids: ids.astype(np.int64),
                                                         self.embed_features: features.astype(np.float32)})
        return out

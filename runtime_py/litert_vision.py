"""A vision-language LiteRT artifact (a `.litertlm` bundle's five TFLite sections, or the folder of .tflite files
they come from) run as LiteRT-LM 0.18 runs it, so that runtime_py and the engine give the same tokens:

- images: preprocessed as the model's processor does (runtime_py.images; Model.image_features), then handed to
  `vision_encoder` as NHWC in [0, 1] (the normalisation is folded into the encoder) and `vision_adapter`;
- the prompt's rows: the `embedder` for every token, the images' rows in place of the image placeholders (the
  engine writes its end-of-vision row where the prompt has <end_of_image> / <bos>: the same row);
- the decoder's `mask`: what the engine fills it with (the bundle's attention mask type): causal, plus each
  contiguous run of image rows both ways (Gemma 3) or every real row of the chunk both ways (PaliGemma);
- a prompt: in prefill chunks cut as the engine cuts them (greedy, largest first), the logits of its last token
  from the last chunk's `logits` (the last real row's): transformers' prompt exactly, PaliGemma's two-way prefix
  included. LiteRT-LM instead holds the last prompt token back for a first `decode` step (no prefix row sees
  it: PaliGemma's first logits differ from transformers'); `hold_last = True` does what the engine does (the
  default for a bundle whose prefill has no logits).

Each section is a CompiledModel (runtime_py.litert_compiled); a stepper's caches are TensorBuffers updated in place.

Depends on ai_edge_litert and numpy (plus runtime_py's leaf modules)."""
from __future__ import annotations

import numpy as np

from .contract import (ATTENTION_MASK, BIDIRECTIONAL, DECODE_SIGNATURE, EMBEDDINGS, IMAGES, INPUT_POS,
                       LITERT_VISION_FILES, LOGITS, MASK_HIDDEN, MASK_VISIBLE, MM_EMBEDDING, PREFILL_PREFIX, TOKEN_IDS,
                       VISION_BIDIRECTIONAL, signature_length)
from .litert_compiled import Signature, State, carried, compile_tflite
from .sampling import check_step

DECODER, EMBEDDER, ENCODER, ADAPTER, _ = LITERT_VISION_FILES


def greedy_chunks(count: int, lengths: list[int]) -> list[tuple[int, int]]:
    """LiteRT-LM's CPU chunking ("cautious greedy" with greedy cascading): the largest prefill length that fits
    the remaining tokens, repeatedly; a remainder shorter than every length is padded into the smallest.
    -> [(signature length, real tokens)]."""
    out, left = [], count
    while left > 0:
        fits = [t for t in lengths if t <= left]
        t = fits[-1] if fits else lengths[0]
        out.append((t, min(t, left)))
        left -= min(t, left)
    return out


def _runner(models: dict, section: str, threads, where: str):
    """(the section's CompiledModel, its first signature: the one the engine runs)."""
    if section not in models:
        raise ValueError(f"{where}: no {section} model")
    model = compile_tflite(content=models[section], threads=threads, where=f"{where}: its {section} model")
    return model, Signature(model, next(iter(model.get_signature_list())))


class LiteRTVisionBackend:
    """kind "causal": `stepper(max_len, features=None)`, `encode_images(pixels)`."""

    kind = "causal"
    sequence_logits = False          # prefill gives the last row's logits only (`logits` raises)

    def __init__(self, models: dict[str, bytes], vision: dict, threads: int | None = None,
                 context_length: int | None = None, name: str = "model"):
        self.path = name
        try:
            self.image_id = int(vision["image_token_id"])
            self.mean, self.std = (np.asarray(vision[k], np.float32) for k in ("mean", "std"))
            self.blocks = str(vision.get("attention_mask"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{name}: the vision facts lack a valid field ({e})") from None
        self.model = _runner(models, DECODER, threads, name)[0]
        self._embedder = _runner(models, EMBEDDER, threads, name)[1]
        self._encoder = _runner(models, ENCODER, threads, name)[1]
        self._adapter = _runner(models, ADAPTER, threads, name)[1]
        names = list(self.model.get_signature_list())
        self.prefill = {signature_length(n): Signature(self.model, n) for n in names if n.startswith(PREFILL_PREFIX)}
        if DECODE_SIGNATURE not in names or not self.prefill:
            raise ValueError(f"{name}: expected signatures {PREFILL_PREFIX}{{T}} and {DECODE_SIGNATURE}, found {names}")
        self.decode = Signature(self.model, DECODE_SIGNATURE)
        self.caches = carried(self.decode.inputs)
        self.slots = int(self.decode.inputs[ATTENTION_MASK]["shape"][-1])
        self.context_length = min(self.slots, context_length) if context_length else self.slots
        self.vocab_size = int(self.decode.outputs[LOGITS]["shape"][-1])
        self.prefill_lengths = sorted(self.prefill)
        self.hold_last = any(LOGITS not in r.output_names for r in self.prefill.values())

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [N, 3, S, S] (normalised by the processor's mean and std) -> rows [N, tokens_per_image, d]."""
        rows = []
        for image in np.asarray(pixels, np.float32):
            x = (image.transpose(1, 2, 0) * self.std + self.mean)[None]          # back to [0, 1], NHWC
            (features,) = self._encoder(**{IMAGES: x.astype(np.float32)}).values()
            rows.append(self._adapter(soft_tokens=features)[MM_EMBEDDING][0])
        return np.stack(rows).astype(np.float32)

    def rows(self, tokens: list[int], features: np.ndarray | None) -> np.ndarray:
        """[T, d]: the embedder's row of each token, the image placeholders' rows taken from `features` in order."""
        image = [i for i, t in enumerate(tokens) if t == self.image_id]
        flat = None if features is None else np.asarray(features, np.float32).reshape(-1, features.shape[-1])
        if image and (flat is None or len(flat) != len(image)):
            raise ValueError(f"the prompt has {len(image)} image tokens, the images give "
                             f"{0 if flat is None else len(flat)} rows")
        out = [None] * len(tokens)
        for i, row in zip(image, flat if image else ()):
            out[i] = row
        for i, t in enumerate(tokens):
            if out[i] is None:
                out[i] = self._embedder(**{TOKEN_IDS: np.array([[t]], np.int32)})[EMBEDDINGS][0, 0]
        return np.stack(out).astype(np.float32)

    def mask(self, tokens: list[int], start: int, length: int) -> np.ndarray:
        """The engine's mask for a chunk of `tokens` (its real rows) at `start`, padded to `length` rows:
        [1, 1, length, slots], 0 where visible; causal under any other mask type."""
        m = np.full((1, 1, length, self.slots), MASK_HIDDEN, np.float32)
        n = len(tokens)
        for r in range(n):
            m[0, 0, r, :start + r + 1] = MASK_VISIBLE
        if n > 1 and self.blocks == BIDIRECTIONAL:
            m[0, 0, :n, start:start + n] = MASK_VISIBLE
        elif n > 1 and self.blocks == VISION_BIDIRECTIONAL:  # each contiguous run of image rows, both ways
            r = 0
            while r < n:
                e = r
                while e < n and tokens[e] == self.image_id:
                    e += 1
                m[0, 0, r:e, start + r:start + e] = MASK_VISIBLE
                r = max(e, r + 1)
        m[0, 0, n:, 0] = MASK_VISIBLE                        # padded rows (input_pos 0): never read
        return m

    def run(self, sig: Signature, tokens: list[int], rows: np.ndarray, start: int, length: int, state: State):
        """Run a chunk on `state` (updated in place); -> `sig`, whose `read("logits")` is its logits."""
        x = np.zeros((1, length, rows.shape[-1]), np.float32)
        x[0, :len(tokens)] = rows
        pos = np.zeros(length, np.int32)
        pos[:len(tokens)] = np.arange(start, start + len(tokens))
        sig.run({EMBEDDINGS: x, INPUT_POS: pos, ATTENTION_MASK: self.mask(tokens, start, length)}, state)
        return sig

    def new_state(self) -> State:
        """The caches of an empty sequence (zeros), in buffers of their own."""
        return State(self.decode, self.caches)

    def prefill_cost(self, count: int) -> int:
        """What prefilling `count` tokens costs: the chunks run (each costs its whole length, padded or not)."""
        return len(greedy_chunks(count, self.prefill_lengths))

    def stepper(self, max_len: int | None = None, features: np.ndarray | None = None) -> "VisionStepper":
        return VisionStepper(self, max_len or self.context_length, features)

    def logits(self, ids: list[int], features: np.ndarray | None = None) -> np.ndarray:
        raise ValueError(f"{self.path}: a vision-language LiteRT model's prefill signatures give the last row's "
                         f"logits only (as LiteRT-LM needs); only the last prompt position's and the decode steps' "
                         f"exist")


class VisionStepper:
    """`step(tokens, start) -> last logits [V]`; the images' `features` go to the first call's placeholders."""

    def __init__(self, backend: LiteRTVisionBackend, max_len: int, features: np.ndarray | None):
        if max_len > backend.context_length:
            raise ValueError(f"max_len {max_len} exceeds the context length {backend.context_length} of "
                             f"{backend.path}")
        self.backend, self.max_len, self.length, self.features = backend, int(max_len), 0, features
        self.state = None       # made on the first call

    def __call__(self, tokens: list[int], start: int) -> np.ndarray:
        b = self.backend
        tokens = check_step(tokens, start, self.length, self.max_len, b.path, b.context_length)
        features, self.features = self.features, None
        rows = b.rows(tokens, features)
        held = 1 if b.hold_last or len(tokens) == 1 else 0      # through decode
        head, pos = tokens[:len(tokens) - held], 0
        if self.state is None:
            self.state = b.new_state()
        for t, n in greedy_chunks(len(head), b.prefill_lengths):
            ran = b.run(b.prefill[t], head[pos:pos + n], rows[pos:pos + n], self.length, t, self.state)
            self.length += n
            pos += n
        if held:
            ran = b.run(b.decode, tokens[-1:], rows[-1:], self.length, 1, self.state)
            self.length += 1
        return np.asarray(ran.read(LOGITS)[0, -1], np.float32)

    def fork(self) -> "VisionStepper":
        """A copy that continues from here independently (its caches copied into buffers of its own)."""
        other = VisionStepper(self.backend, self.max_len, None)
        other.length = self.length
        if self.state is not None:
            other.state = self.backend.new_state()
            other.state.copy_from(self.state)
        return other

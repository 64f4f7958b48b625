"""`Model`: a loaded artifact (generate, chat, embed, classify, logits) over a backend; `runtime_py.load`
(runtime_py.loader) builds it.

A backend is any object with `kind` ("causal" | "embedding"), `context_length` and
  causal:    `stepper(max_len) -> step(tokens, start) -> last logits [V]`, `logits(ids) -> [T, V]`
  embedding: `embed(ids [B, T], mask [B, T]) -> [B, D]` (L2-normalised)
`Model` adds the tokenizer and the prompt formats on top. Depends on numpy, sentencepiece and the standard
library; it imports no backend (runtime_py.loader picks one).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .contract import SAE_KEY, VISION_KEY
from .prompts import embedding_prompt, shieldgemma_prompt
from .sae import SaeSites, firing
from .sampling import Sampler, Sampling, finish_reason, generate_tokens, token_budget
from .speculative import Speculation, check_speculate, speculative_tokens
from .tokenizer import StreamDecoder, Tokenizer
from .vision_api import VisionFacts, common_prefix, yes_probability


@dataclasses.dataclass
class Timings:
    """Wall-clock seconds of the prompt's forward pass (prefill) and of the decode steps (incl. sampling)."""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


@dataclasses.dataclass
class StepTimes:
    """One greedy run timed call by call (the profiling hook under `Model.time_steps`): `prefill_s` is the
    prompt's step call (its last logits out), `first_token_s` that plus picking the first new token, `decode_s`
    each later step call (one token in, logits out, argmax); `token_ids` the new tokens (1 + len(decode_s))."""
    prompt_tokens: int
    prefill_s: float
    first_token_s: float
    decode_s: list[float]
    token_ids: list[int]


@dataclasses.dataclass
class Generation:
    """text: the new text; token_ids: the new ids (no stop id); prompt_tokens: prompt length in tokens;
    finish_reason: "stop" (a stop id), "length" (max_new_tokens) or "context" (the context was full);
    speculation: what the drafts did (generate(speculate=K) only)."""
    text: str
    token_ids: list[int]
    prompt_tokens: int
    timings: Timings
    finish_reason: str
    speculation: Speculation | None = None


class Model:
    """A loaded artifact: `tokenizer` (None if the folder has no tokenizer.model), `config` (the manifest's
    model config, or one derived from genai_config.json), `kind` ("causal" | "embedding")."""

    def __init__(self, path: Path, backend, tokenizer: Tokenizer | None, config: dict, manifest: dict | None):
        self.path, self.backend, self.tokenizer = path, backend, tokenizer
        self.config, self.manifest, self.kind = config, manifest, backend.kind

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, kind={self.kind!r}, backend={type(self.backend).__name__})"

    def _need(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{self.path} is {'an embedding model' if self.kind == 'embedding' else 'a causal LM'}"
                             f": {what} is not available")

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise FileNotFoundError(f"{self.path / 'tokenizer.model'}: no such file; text needs the tokenizer "
                                    f"(pass token ids instead)")
        return self.tokenizer

    def _ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self._tok().encode(prompt)
        ids = [int(i) for i in prompt]
        vocab = self.config.get("vocab_size") or getattr(self.backend, "vocab_size", None)
        bad = [i for i in ids if i < 0 or (vocab and i >= vocab)]
        if bad:
            raise ValueError(f"token ids out of range [0, {vocab}) for {self.path}: {bad[:5]}")
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    @property
    def vision(self) -> VisionFacts | None:
        """How images become input (the manifest's `vision` section); None for a text-only model."""
        facts = (self.manifest or {}).get(VISION_KEY)
        return VisionFacts(facts, str(self.path / "manifest.json")) if facts else None

    def _vision(self) -> VisionFacts:
        if self.vision is None:
            raise ValueError(f"{self.path} is a text model: it takes no images")
        return self.vision

    def image_features(self, images: list) -> np.ndarray:
        """Images (paths, bytes, PIL images or arrays) -> their rows [N, tokens_per_image, d], each image run
        through the vision graph once."""
        return self.backend.encode_images(self._vision().pixels(images))

    def generate(self, prompt: str | list[int], max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                 stop_ids: Iterable[int] | None = None,
                 on_text: Callable[[str], None] | None = None, images: list | None = None,
                 steer: dict | list | None = None, speculate: int = 0) -> Generation:
        """Continue `prompt` (text: encoded with <bos>; a list of ids: used as is). Stops at a stop id
        (default: the tokenizer's <eos>/<end_of_turn>), after `max_new_tokens`, or when the context is full.
        `on_text` receives the text as it is completed (UTF-8-safe streaming). `images` (a vision-language
        model): paths, bytes, PIL images or arrays, laid out as the model's processor does (Gemma 3: one per
        <start_of_image> in the prompt, or in front of it; PaliGemma: in front, then <bos>, prompt, "\n"); with
        a list of ids, the ids already hold each image's placeholder tokens. `steer` (an artifact exported with
        --sae): {feature id: strength}, or one such dict per SAE; sum(strength * W_dec[feature]) is added at the
        SAE's site at every position. `speculate` K > 0 (greedy; ONNX and `--target litert` folders): exact
        speculative decoding with up to K draft tokens from n-grams of the prompt and the output
        (runtime_py.speculative); the same tokens."""
        self._need("causal", "generate()")
        features = None
        if images:
            if isinstance(prompt, str):
                prompt = self._vision().prompt_ids(self._tok(), prompt, len(images))
            features = self.image_features(images)
        return self._generate(self._ids(prompt), max_new_tokens, sampling, stop_ids, on_text, features,
                              self.sae.steer_inputs(steer) if steer else None, speculate)

    @functools.cached_property
    def sae(self) -> SaeSites:
        """The sparse autoencoders the artifact carries (none unless exported with --sae)."""
        return SaeSites(self.path, (self.manifest or {}).get(SAE_KEY, []))

    def features(self, text: str | list[int], k: int | None = None, steer: dict | list | None = None) -> list[dict]:
        """Which SAE features fire at each position of `text` (encoded with <bos>; or token ids), one call: per
        SAE {"site", "layer", "hook", "positions": [{"indices", "values"} per token, largest first, at most k
        (default: the k exported), zeros left out]}."""
        self._need("causal", "features()")
        sae = self.sae
        if not len(sae):
            raise ValueError(f"{self.path}: no SAE outputs (export it with --sae)")
        outs = self.backend.run(sae.outputs(), self._ids(text), extra=sae.steer_inputs(steer) if steer else None)
        return [{**{key: e[key] for key in ("path", "site", "layer", "hook")},
                 "positions": firing(outs[2 * n], outs[2 * n + 1], k)} for n, e in enumerate(sae.entries)]

    def _generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling, stop_ids, on_text,
                  features: np.ndarray | None = None, extra: dict | None = None, speculate: int = 0) -> Generation:
        sampler = Sampler(sampling, self.config.get("vocab_size") or getattr(self.backend, "vocab_size", None))
        check_speculate(speculate, sampling.temperature == 0.0, getattr(self.backend, "window", None))
        n = token_budget(len(ids), max_new_tokens, self.backend.context_length, self.path)
        if stop_ids is None:
            stop_ids = self.tokenizer.stop_ids if self.tokenizer else [self.config.get("eos_id", 1)]
        more = {**({"features": features} if features is not None else {}), **({"extra": extra} if extra else {})}
        step = self.backend.stepper(len(ids) + n, **more)
        verifier = self._verifier(step) if speculate else None
        timings = Timings(prefill_tokens=len(ids))

        def timed_step(tokens, start):
            t = time.perf_counter()
            out = step(tokens, start)
            if start == 0:
                timings.prefill_s += time.perf_counter() - t
            return out

        decoder = StreamDecoder(self.tokenizer) if self.tokenizer else None
        pieces: list[str] = []

        def emit(piece: str):
            if piece:
                pieces.append(piece)
                if on_text:
                    on_text(piece)

        def on_token(token: int):
            if decoder:
                emit(decoder.push(token))

        t0 = time.perf_counter()
        spec = None
        if verifier:
            out, spec = speculative_tokens(timed_step, verifier, ids, n, speculate, stop_ids, on_token)
        else:
            out = generate_tokens(timed_step, ids, n, sampler, stop_ids, on_token)
        if decoder:
            emit(decoder.flush())
        timings.decode_s = time.perf_counter() - t0 - timings.prefill_s
        timings.decode_tokens = len(out)
        return Generation("".join(pieces), out, len(ids), timings, finish_reason(len(out), n, max_new_tokens), spec)

    def _verifier(self, step):
        if not hasattr(step, "verifier"):
            raise ValueError(f"{self.path}: speculative decoding needs an ONNX or `--target litert` folder (the "
                             f"{type(self.backend).__name__} cannot check several tokens in one call)")
        return step.verifier()

    def time_steps(self, prompt: list[int], decode_steps: int, features: np.ndarray | None = None) -> StepTimes:
        """Greedy-continue `prompt` (token ids) by 1 + `decode_steps` tokens, never stopping early, timing the
        prefill call and every decode call separately (no sampling or detokenization inside the timings).
        features: image rows (image_features) for the prompt's image placeholders."""
        self._need("causal", "time_steps()")
        ids = self._ids(prompt)
        total = len(ids) + int(decode_steps)
        if decode_steps < 0 or total > self.backend.context_length:
            raise ValueError(f"{len(ids)} prompt tokens + {decode_steps} decode steps: must fit {self.path}'s "
                             f"context length {self.backend.context_length}")
        step = self.backend.stepper(total) if features is None else self.backend.stepper(total, features=features)
        t0 = time.perf_counter()
        logits = step(ids, 0)
        t1 = time.perf_counter()
        out = [int(np.argmax(logits))]
        t2 = time.perf_counter()
        times = []
        for pos in range(len(ids), total):          # each step feeds the last new token at position pos
            t = time.perf_counter()
            out.append(int(np.argmax(step(out[-1:], pos))))
            times.append(time.perf_counter() - t)
        return StepTimes(len(ids), t1 - t0, t2 - t0, times, out)

    def chat(self, messages: list[dict], max_new_tokens: int = 64, sampling: Sampling = Sampling(),
             stop_ids: Iterable[int] | None = None, on_text: Callable[[str], None] | None = None,
             speculate: int = 0) -> Generation:
        """The model's reply to `messages` ([{"role": "user"|"assistant"|"system", "content": str}, ...]),
        in Gemma's chat format. A vision-language model's contents may be lists of {"type": "text", "text": ...}
        and {"type": "image", "image": path | bytes | PIL image | array} items. speculate: as in generate()."""
        self._need("causal", "chat()")
        if any(isinstance(m.get("content"), (list, tuple)) for m in messages):
            ids, images = self._vision().chat_ids(self._tok(), messages)
            features = self.image_features(images) if images else None
            return self._generate(ids, max_new_tokens, sampling, stop_ids, on_text, features, speculate=speculate)
        prompt = self._tok().chat_ids(messages)       # the contents cannot forge turn markers
        return self.generate(prompt, max_new_tokens, sampling, stop_ids, on_text, speculate=speculate)

    def classify_image(self, image, policies: list[str] | None = None,
                       custom_policies: dict[str, str] | None = None) -> dict[str, float]:
        """ShieldGemma 2: {policy: P(the image violates it)} (softmax over the Yes/No logits after each policy's
        prompt). policies: names among the built-in "dangerous", "sexual", "violence" and `custom_policies`
        (name -> description); default all. The image is encoded once and the prompts' shared prefix (up to
        and past the image) is run once, each policy continuing a copy of its cache, unless running each
        prompt whole costs the backend less (`prefill_cost`: a LiteRT vision bundle runs whole padded chunks
        of its one prefill length, and a prompt that fits one chunk is cheaper whole than prefix + rest)."""
        self._need("causal", "classify_image()")
        vision = self._vision()
        names, prompts = vision.policy_prompts(self._tok(), policies, custom_policies)
        shared = common_prefix(prompts)
        longest = max(len(p) for p in prompts)
        if longest > self.backend.context_length:
            raise ValueError(f"the ShieldGemma 2 prompt has {longest} tokens; {self.path} takes at most "
                             f"{self.backend.context_length}")
        features = self.image_features([image])
        cost = getattr(self.backend, "prefill_cost", lambda count: count)     # default: per token
        if cost(shared) + sum(cost(len(p) - shared) for p in prompts) > sum(cost(len(p)) for p in prompts):
            lasts = [self.backend.stepper(len(ids), features=features)(ids, 0) for ids in prompts]
        else:
            prefix = self.backend.stepper(longest, features=features)
            logits = prefix(prompts[0][:shared], 0)
            lasts = [prefix.fork()(ids[shared:], shared) if len(ids) > shared else logits for ids in prompts]
        return {name: yes_probability(last, *vision.classifier) for name, last in zip(names, lasts)}

    def logits(self, ids: list[int], steer: dict | list | None = None) -> np.ndarray:
        """Logits at every position of `ids` (one forward pass): [T, V] float32. steer: as in generate()."""
        self._need("causal", "logits()")
        if steer:
            return self.backend.logits(self._ids(ids), extra=self.sae.steer_inputs(steer))
        return self.backend.logits(self._ids(ids))

    def classify(self, text: str, policy: str, response: str | None = None) -> float:
        """ShieldGemma: P(Yes) that `text` (or, with `response`, the response to it) violates `policy`,
        the softmax over the "Yes"/"No" logits after the prompt."""
        self._need("causal", "classify()")
        tok = self._tok()
        ids = tok.encode(shieldgemma_prompt(text, policy, response))
        if len(ids) > self.backend.context_length:
            raise ValueError(f"the ShieldGemma prompt has {len(ids)} tokens; {self.path} takes at most "
                             f"{self.backend.context_length}")
        logits = self.backend.stepper(len(ids))(ids, 0)
        return yes_probability(logits, tok.id_of("Yes"), tok.id_of("No"))

    def embedding_ids(self, text: str, task: str | None = None, title: str | None = None) -> list[int]:
        """The ids embed() feeds for `text`: <bos> prompt+text <eos> (EmbeddingGemma's tokenizer adds both),
        cut to the context length (the model's, or the artifact's longest signature if shorter) with <eos> kept
        last, as LiteRT-LM's EmbeddingEngine truncates."""
        tok = self._tok()
        limit = min([n for n in (self.config.get("max_position"), self.backend.context_length) if n] or [2048])
        return tok.encode(embedding_prompt(task, title) + text)[:limit - 1] + [tok.eos_id]

    def embed(self, texts: str | list[str], dim: int | None = None, task: str | None = None,
              batch_size: int = 32, title: str | None = None) -> np.ndarray:
        """Embeddings of `texts` ([N, D]; [D] for one str), L2-normalised. `dim` truncates to a Matryoshka
        size (then re-normalises); `task` (and a document's `title`) picks EmbeddingGemma's prompt (see
        `embedding_prompt`). A bad `dim` or `task` is refused before anything runs."""
        self._need("embedding", "embed()")
        head = self.config.get("embedding_head") or {}
        width = (head.get("dense_dims") or [None])[-1]
        if dim is not None and width:
            truncate_embeddings(np.zeros((0, width), np.float32), dim, head.get("matryoshka_dims"))
        embedding_prompt(task, title)
        tok, single = self._tok(), isinstance(texts, str)
        texts = [texts] if single else list(texts)
        pad = self.config.get("pad_id", tok.pad_id if tok.pad_id >= 0 else 0)
        seqs = [self.embedding_ids(t, task, title) for t in texts]
        rows = []
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            width = max(len(s) for s in batch)
            ids = np.full((len(batch), width), pad, np.int64)                  # [B, T], right-padded
            mask = np.zeros((len(batch), width), np.int64)
            for r, s in enumerate(batch):
                ids[r, :len(s)], mask[r, :len(s)] = s, 1
            rows.append(self.backend.embed(ids, mask))                       # [B, D]
        emb = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        if dim is not None:
            emb = truncate_embeddings(emb, dim, head.get("matryoshka_dims"))
        return emb[0] if single else emb


def truncate_embeddings(emb: np.ndarray, dim: int, allowed: Iterable[int] | None = None) -> np.ndarray:
    """Matryoshka truncation: the first `dim` components of each row [N, D], re-normalised to unit length."""
    full = emb.shape[-1]
    allowed = sorted({d for d in allowed if d <= full} | {full}, reverse=True) if allowed else None
    if (allowed and dim not in allowed) or not 0 < dim <= full:
        raise ValueError(f"embedding dim {dim} is not supported; choose one of "
                         f"{allowed or f'1..{full}'}")
    out = emb[..., :dim].astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)

"""Probe: what the installed LiteRT-LM engine (litert-lm 0.18.1) does with a vision-language `.litertlm`.

Not part of the package (issue #18 research). It writes a tiny vision bundle from hand-made TFLite models
(converted with litert-torch) whose outputs depend on their inputs, runs it through LiteRT-LM's Python API with
an image, and reads back what every model received. `--suite` runs the experiments behind the #18 report and
checks each finding (tools/litertlm_vision_probe_suite.py).

The models (D = 8 embedding channels, one KV "layer" of [1, 1, S, 16]):
  tf_lite_embedder        token_ids int32 [1, 1] -> embeddings [1, 1, 8] = (id, 1, 0, ...)
  tf_lite_vision_encoder  images f32 [1, H, W, 3] -> features [1, H*W, 4] = (pixel index, r, g, b)
  tf_lite_vision_adapter  soft_tokens [1, H*W, 4] -> mm_embedding [1, H*W (+1), 8] = (index, 2, r, g, b, 0...)
                          (+ with --eoi-row an end-of-image row (256000, 3, 0, ...))
  tf_lite_end_of_vision   (no input) -> embeddings [1, 1, 8] = (256000, 4, 0, ...)
  tf_lite_prefill_decode  prefill_{T}: embeddings [1, T, 8], input_pos [T] (, mask, local_mask [1, 1, T, S])
                          decode: the same with T = 1, and logits [1, 1, V]
The prefill/decode graph writes one record per real row into its cache at the row's position: the first 5
embedding channels it received, the position, the signature length T, the chunk start, the mask row's visible
count / first / last column (and the local mask's), a flag (1 prefill, 2 decode) and the row's index in its chunk.
Decode then prints the records: each step's logits are one-hot on one digit or separator of the record table,
so the reply LiteRT-LM returns is the table of positions 0..p0, p0 being one past the last prefilled position
(the token LiteRT-LM holds back from prefill and feeds to the first decode step).

  nice -n 10 /work/main/.venv/bin/python tools/litertlm_vision_probe.py --model-type generic-vision \\
      --end-of-vision --mask --mask-type vision            # one run, the table printed
  nice -n 10 /work/main/.venv/bin/python tools/litertlm_vision_probe.py --suite   # every experiment, checked
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D = 8                      # embedding channels
R = 16                     # record channels (the cache's last axis)
EOI_ID = 256000            # Gemma 3's <end_of_image>
MODELS = ("prefill_decode", "embedder", "vision_encoder", "vision_adapter", "end_of_vision")
KIND = {1: "text", 2: "image", 3: "eoi-row", 4: "eov"}     # embedding channel 1: who made the row
# record channels: 0..4 the embedding channels received, then
C_POS, C_T, C_START, C_MCOUNT, C_MFIRST, C_MLAST, C_FLAG, C_ROW = 5, 6, 7, 8, 9, 10, 11, 12
C_LCOUNT, C_LFIRST, C_LLAST = 13, 14, 15      # the `local_mask` row's (with --with-tokens: the token in lcount)
# printed fields: (name, record channel, scale, offset, digits)
FIELDS = [("e0", 0, 1, 0, 6), ("e1", 1, 1, 0, 1), ("e2", 2, 100000, 500000, 6), ("e3", 3, 100000, 500000, 6),
          ("e4", 4, 100000, 500000, 6), ("pos", C_POS, 1, 0, 4), ("T", C_T, 1, 0, 3), ("start", C_START, 1, 0, 4),
          ("mcount", C_MCOUNT, 1, 1, 4), ("mfirst", C_MFIRST, 1, 1, 4), ("mlast", C_MLAST, 1, 1, 4),
          ("flag", C_FLAG, 1, 0, 1), ("row", C_ROW, 1, 0, 3),
          ("lcount", C_LCOUNT, 1, 1, 4), ("lfirst", C_LFIRST, 1, 1, 4), ("llast", C_LLAST, 1, 1, 4)]

# google/gemma-3-*-it's chat template, as restated (and tested against transformers) in tests/test_vision_prompts.py:
# LiteRT-LM renders it (its {{ bos_token }} adds nothing beside the metadata's start token) and replaces each
# <start_of_image> it writes for an image item by the image
from runtime_py.vision_prompts import GEMMA3_CHAT_TEMPLATE as GEMMA3_TEMPLATE  # noqa: E402
# PaliGemma's prompt: the image, <bos>, the prefix, "\n" (no turns). LiteRT-LM can only prepend its start token,
# so with --paligemma there is none and the end-of-vision model's row stands where <bos> goes.
from runtime_py.vision_prompts import PALIGEMMA_LITERT_TEMPLATE as PALIGEMMA_TEMPLATE  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Models:
    """What the .tflite models are (one conversion per distinct value, cached in the work folder)."""
    S: int = 4096                       # cache length = context
    prefill: tuple[int, ...] = (8, 32)  # prefill signature lengths
    H: int = 4                          # encoder input height, width
    W: int = 6
    mask: bool = False                  # prefill/decode take `mask` [1, 1, T, S]
    local_mask: bool = False            # ... and `local_mask` [1, 1, T, S]
    eoi_row: bool = False               # the adapter appends an end-of-image row
    decoy: bool = False                 # near-flat decode logits: only greedy sampling prints the table
    tokens: str = ""                    # "prefill" / "both": those signatures also take `tokens` [1, T]

    def key(self) -> str:
        return "_".join(f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else int(v) if isinstance(v, bool) else v}"
                        for k, v in dataclasses.asdict(self).items())


@dataclasses.dataclass(frozen=True)
class Bundle:
    """How the models are bundled (metadata, sections)."""
    model_type: str = "gemma3"          # gemma3 | gemma3n | generic | generic-vision
    mask_type: str | None = None        # executor metadata attention mask type: causal | bidirectional | vision
    window: int = 0                     # executor metadata sliding_window_size
    end_of_vision: bool = False         # add the tf_lite_end_of_vision section
    paligemma: bool = False             # PaliGemma's layout (no start token, PALIGEMMA_TEMPLATE)
    template: bool = True               # a jinja prompt template (GEMMA3_TEMPLATE) in the metadata

    def key(self) -> str:
        return "_".join(f"{k}{v}" for k, v in dataclasses.asdict(self).items())


def _torch_modules(m: Models, V: int, digits: list[int], sep: int, eol: int, eos: int):
    import torch
    from torch import nn

    S, H, W = m.S, m.H, m.W

    def record(emb, input_pos, mask, local_mask, T, flag):
        """[T, R] records of a chunk, and its write matrix [T, S] (real rows only: LiteRT-LM pads a chunk's
        tail with input_pos 0)."""
        start = input_pos[0]
        r = torch.arange(T, dtype=torch.int32)
        real = input_pos == start + r
        cols = torch.arange(S, dtype=torch.float32)

        def stats(mk):
            if mk is None:
                return [torch.full((T, 1), -1.0)] * 3
            vis = (mk[0, 0] > -1.0).float()
            first = torch.where(vis > 0, cols[None, :], torch.full_like(vis, 9998.0)).amin(-1)
            last = torch.where(vis > 0, cols[None, :], torch.full_like(vis, -1.0)).amax(-1)
            return [vis.sum(-1)[:, None], first[:, None], last[:, None]]
        ones = torch.ones(T)
        rec = torch.cat([emb[0, :, :5], input_pos.float()[:, None], (ones * T)[:, None],
                         (ones * start.float())[:, None],
                         *stats(mask), (ones * flag)[:, None], r.float()[:, None], *stats(local_mask)], dim=1)
        write = ((input_pos[:, None] == torch.arange(S, dtype=torch.int32)[None, :]) & real[:, None]).float()
        return rec, write

    def written(cache, rec, write, tokens):
        if tokens is not None:
            rec = torch.cat([rec[:, :C_LCOUNT], tokens[0].float()[:, None], rec[:, C_LCOUNT + 1:]], 1)
        return cache[0, 0] * (1.0 - write.sum(0))[:, None] + write.t() @ rec

    class Prefill(nn.Module):
        def forward(self, embeddings, input_pos, kv_cache_k_0, kv_cache_v_0, mask=None, local_mask=None,
                    tokens=None):
            rec, write = record(embeddings, input_pos, mask, local_mask, embeddings.shape[1], 1.0)
            new = written(kv_cache_k_0, rec, write, tokens)[None, None]
            return {"kv_cache_k_0": new, "kv_cache_v_0": kv_cache_v_0 + 0.0}

    # the printer's tables, one entry per character of a printed row: the field's channel, scale, offset, the
    # power of ten of the digit, or the separator token
    chan, scale, offset, power, septok = [], [], [], [], []
    for n, (_, c, s, o, w) in enumerate(FIELDS):
        for d in range(w):
            chan.append(c), scale.append(s), offset.append(o), power.append(10 ** (w - 1 - d)), septok.append(-1)
        chan.append(0), scale.append(1), offset.append(0), power.append(1)
        septok.append(eol if n == len(FIELDS) - 1 else sep)
    L = len(chan)

    class Decode(nn.Module):
        def __init__(self):
            super().__init__()
            for name, values, dtype in (("chan", chan, torch.int32), ("scale", scale, torch.float32),
                                        ("offset", offset, torch.float32), ("power", power, torch.int32),
                                        ("septok", septok, torch.int32), ("digits", digits, torch.int32)):
                self.register_buffer(name, torch.tensor(values, dtype=dtype))

        def forward(self, embeddings, input_pos, kv_cache_k_0, kv_cache_v_0, mask=None, local_mask=None,
                    tokens=None):
            rec, write = record(embeddings, input_pos, mask, local_mask, 1, 2.0)
            new = written(kv_cache_k_0, rec, write, tokens)
            # print positions 0..p0, p0 = one past the last prefilled position; characters count from p0
            positions = torch.arange(S, dtype=torch.int32)
            p0 = (torch.where(new[:, C_FLAG] == 1.0, positions, torch.full_like(positions, -1)).amax() + 1).reshape(1)
            k = input_pos[0:1] - p0
            row = torch.div(k, L, rounding_mode="floor")
            at = k - row * L
            values = new.index_select(0, row.clamp(0, S - 1))                          # [1, R]
            v = values.gather(1, self.chan.index_select(0, at)[None, :].long())[0]
            v = torch.round(v * self.scale.index_select(0, at) + self.offset.index_select(0, at))
            v = v.clamp(0, 999999).to(torch.int32)
            digit = torch.remainder(torch.div(v, self.power.index_select(0, at), rounding_mode="floor"), 10)
            sept = self.septok.index_select(0, at)
            token = torch.where(sept >= 0, sept, self.digits.index_select(0, digit))
            token = torch.where(row > p0, torch.full_like(token, eos), token)
            vocab = torch.arange(V, dtype=torch.int32)[None, None, :]
            if m.decoy:   # the printed token barely ahead of a decoy and of the whole vocabulary
                decoy = self.digits.index_select(0, (digit + 1) % 10)
                logits = (vocab == token[:, None, None]).float() * 0.2 + (vocab == decoy[:, None, None]).float() * 0.1
            else:
                logits = (vocab == token[:, None, None]).float() * 100.0
            return {"logits": logits, "kv_cache_k_0": new[None, None], "kv_cache_v_0": kv_cache_v_0 + 0.0}

    def row(*values):
        e = torch.zeros(1, 1, D)
        for i, x in enumerate(values):
            e[..., i] = x
        return e

    class Embedder(nn.Module):
        def forward(self, token_ids):
            return {"embeddings": token_ids.float()[..., None] * row(1.0) + row(0.0, 1.0)}

    class Encoder(nn.Module):
        def forward(self, images):
            idx = torch.arange(H * W, dtype=torch.float32)[None, :, None]
            return {"features": torch.cat([idx, images.reshape(1, H * W, 3)], dim=-1)}

    class Adapter(nn.Module):
        def forward(self, soft_tokens):
            f = soft_tokens[0]
            n = f.shape[0]
            rows = torch.cat([f[:, :1], torch.full((n, 1), 2.0), f[:, 1:4], torch.zeros(n, D - 5)], dim=1)
            if m.eoi_row:
                rows = torch.cat([rows, row(float(EOI_ID), 3.0)[0]], dim=0)
            return {"mm_embedding": rows[None]}

    class EndOfVision(nn.Module):
        def forward(self):
            return {"embeddings": row(float(EOI_ID), 4.0)}

    return Prefill, Decode, Embedder, Encoder, Adapter, EndOfVision


def _convert(signatures: list[tuple[str, object, dict]], path: Path):
    import litert_torch

    from export.converters.artifact import stdout_to_stderr
    conv = litert_torch.Converter()
    with stdout_to_stderr():
        for name, module, sample in signatures:
            conv.signature(name, module.eval(), sample_kwargs=sample)
        conv.convert().export(str(path))


def build(m: Models, folder: Path, tokenizer: Path) -> dict[str, Path]:
    """The .tflite models for `m` in `folder` (converted once)."""
    out = {k: folder / f"{k}.tflite" for k in MODELS}
    if all(p.exists() for p in out.values()):
        return out
    import sentencepiece as spm
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    Prefill, Decode, Embedder, Encoder, Adapter, EndOfVision = _torch_modules(
        m, sp.get_piece_size(), [sp.piece_to_id(str(d)) for d in range(10)], sp.piece_to_id(","),
        sp.piece_to_id("\n"), sp.eos_id())

    def lm_sample(T):
        s = {"embeddings": torch.zeros(1, T, D), "input_pos": torch.arange(T, dtype=torch.int32),
             "kv_cache_k_0": torch.zeros(1, 1, m.S, R), "kv_cache_v_0": torch.zeros(1, 1, m.S, R)}
        if m.mask:
            s["mask"] = torch.zeros(1, 1, T, m.S)
        if m.local_mask:
            s["local_mask"] = torch.zeros(1, 1, T, m.S)
        if m.tokens == "both" or (m.tokens == "prefill" and T > 1):
            s["tokens"] = torch.zeros(1, T, dtype=torch.int32)
        return s
    _convert([(f"prefill_{t}", Prefill(), lm_sample(t)) for t in m.prefill] + [("decode", Decode(), lm_sample(1))],
             out["prefill_decode"])
    _convert([("embedder", Embedder(), {"token_ids": torch.zeros(1, 1, dtype=torch.int32)})], out["embedder"])
    _convert([(f"vision_{m.H}", Encoder(), {"images": torch.zeros(1, m.H, m.W, 3)})], out["vision_encoder"])
    _convert([("vision_adapter", Adapter(), {"soft_tokens": torch.zeros(1, m.H * m.W, 4)})], out["vision_adapter"])
    _convert([("end_of_vision", EndOfVision(), {})], out["end_of_vision"])
    return out


def bundle(models: dict[str, Path], m: Models, b: Bundle, out: Path, tokenizer: Path) -> Path:
    """The .litertlm: SentencePiece tokenizer, LlmMetadata, (ExecutorMetadata,) the TFLite sections."""
    import sentencepiece as spm
    from litert_lm_builder import DType, LitertLmFileBuilder, Metadata, TfLiteModelType
    from litert_lm_builder.runtime.proto import executor_metadata_pb2 as ex
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    meta = llm_metadata_pb2.LlmMetadata()
    if not b.paligemma:
        meta.start_token.token_ids.ids.append(sp.bos_id())
    for t in (sp.eos_id(), sp.piece_to_id("<end_of_turn>")):
        meta.stop_tokens.add().token_ids.ids.append(t)
    meta.max_num_tokens = m.S
    if b.template:
        meta.jinja_prompt_template = PALIGEMMA_TEMPLATE if b.paligemma else GEMMA3_TEMPLATE
    if b.model_type in ("gemma3", "gemma3n"):
        t = getattr(meta.llm_model_type, b.model_type)
        t.SetInParent()
        t.start_of_image_token.token_str, t.end_of_image_token.token_str = "<start_of_image>", "<end_of_image>"
        t.image_tensor_height, t.image_tensor_width = m.H, m.W
    else:
        g = meta.llm_model_type.generic_model
        g.SetInParent()
        if b.model_type == "generic-vision":
            g.image_enabled = True
            g.delimiter_regex, g.image_token_regex = "(<start_of_image>)", "<start_of_image>"
            g.image_tensor_height, g.image_tensor_width = m.H, m.W
            g.add_image_end = True
            if not b.paligemma:
                g.start_of_image_token.token_str, g.end_of_image_token.token_str = "<start_of_image>", "<end_of_image>"
                g.image_prefix, g.image_suffix = "\n\n", "\n\n"
    builder = LitertLmFileBuilder()
    builder.add_system_metadata(Metadata(key="Authors", value="gemma-export probe", dtype=DType.STRING))
    meta_file, exec_file = out.with_suffix(".llm_metadata.pb"), out.with_suffix(".executor_metadata.pb")
    meta_file.write_bytes(meta.SerializeToString())
    builder.add_llm_metadata(str(meta_file))
    if b.mask_type:
        em = ex.ExecutorMetadata()
        lm = em.llm_executor_metadata
        for name, typ in (("kv_cache_k_0", ex.StateBuffer.TYPE_GLOBAL_KEY_CACHE),
                          ("kv_cache_v_0", ex.StateBuffer.TYPE_GLOBAL_VALUE_CACHE)):
            s = lm.state_buffers.add()
            s.prefill_input_name = s.prefill_output_name = s.decode_input_name = s.decode_output_name = name
            s.type, s.sequence_axis = typ, 2
        kind = {"causal": ex.ATTENTION_MASK_TYPE_CAUSAL, "bidirectional": ex.ATTENTION_MASK_TYPE_BIDIRECTIONAL,
                "vision": ex.ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL}[b.mask_type]
        lm.attention_mask_settings.attention_mask_type = kind
        lm.attention_mask_settings.local_attention_mask_type = kind
        if b.window:
            lm.attention_mask_settings.sliding_window_size = b.window
        exec_file.write_bytes(em.SerializeToString())
        builder.add_executor_metadata(str(exec_file))
    builder.add_sentencepiece_tokenizer(str(tokenizer))
    builder.add_tflite_model(str(models["prefill_decode"]), TfLiteModelType.PREFILL_DECODE)
    builder.add_tflite_model(str(models["embedder"]), TfLiteModelType.EMBEDDER)
    builder.add_tflite_model(str(models["vision_encoder"]), TfLiteModelType.VISION_ENCODER)
    builder.add_tflite_model(str(models["vision_adapter"]), TfLiteModelType.VISION_ADAPTER)
    if b.end_of_vision:
        builder.add_tflite_model(str(models["end_of_vision"]), TfLiteModelType.END_OF_VISION)
    with open(out, "wb") as f:
        builder.build(f)
    meta_file.unlink()
    exec_file.unlink(missing_ok=True)
    return out


def parse(text: str) -> list[dict]:
    """The printed record table -> one dict per row (the fields' values, scale and offset undone)."""
    rows = []
    for line in text.strip().splitlines():
        parts = line.split(",")
        if len(parts) != len(FIELDS) or not all(p.isdigit() for p in parts):
            rows.append({"unparsed": line})
            continue
        rows.append({name: (int(p) - o) / s if s != 1 else int(p) - o
                     for (name, _, s, o, _), p in zip(FIELDS, parts)})
    return rows


def show(rows: list[dict], sp=None) -> str:
    lines = []
    for r in rows:
        if "unparsed" in r:
            lines.append(f"?? {r['unparsed']!r}")
            continue
        kind = KIND.get(r["e1"], f"e1={r['e1']}")
        what = (f"id {r['e0']:6d} {sp.id_to_piece(int(r['e0']))!r}" if kind == "text" and sp else
                f"#{r['e0']:<4d} rgb=({r['e2']:.3f},{r['e3']:.3f},{r['e4']:.3f})" if kind == "image" else
                f"e0={r['e0']}")
        lines.append(f"pos {r['pos']:4d} T={r['T']:3d} start={r['start']:4d} row={r['row']:3d} flag={r['flag']} "
                     f"mask(n={r['mcount']},{r['mfirst']}..{r['mlast']})"
                     + (f" local(n={r['lcount']},{r['lfirst']}..{r['llast']})" if r["lcount"] >= 0 else "")
                     + f" {kind:7s} {what}")
    return "\n".join(lines)


def tokenizer_path(work: Path) -> Path:
    """The Gemma 3 SentencePiece model of the bundled 270M GGUF, cached in `work`."""
    path = work / "gemma3_tokenizer.model"
    if not path.exists():
        from export.models.checkpoints.default import default_model_path
        from export.models.checkpoints.gguf_loader import open_reader
        from export.models.checkpoints.gguf_tokenizer import sentencepiece_model_from_gguf
        path.write_bytes(sentencepiece_model_from_gguf(open_reader(default_model_path())))
    return path


def test_image(path: Path, H: int, W: int, kind: str = "") -> np.ndarray:
    """Write an H x W image whose values are distinct and known -> its pixels (uint8 RGB, RGBA or grey).
    kind: "" (r, g, b = 7i+3, 11i+100, 13i+200 mod 256, i the row-major index), "b" (another pattern),
    "rgba" (the first with alpha 255 - 9i), "grey" (its red channel, mode L): PNGs; "jpg" (the first pattern
    as a quality-90 JPEG: returns what PIL decodes from it)."""
    from PIL import Image
    i = np.arange(H * W).reshape(H, W)
    if kind == "b":
        img = np.stack([(5 * i + 50) % 256, (3 * i + 7) % 256, (17 * i + 33) % 256], -1)
    else:
        img = np.stack([(7 * i + 3) % 256, (11 * i + 100) % 256, (13 * i + 200) % 256], -1)
    if kind == "rgba":
        img = np.concatenate([img, ((255 - 9 * i) % 256)[..., None]], -1)
    if kind == "grey":
        img = img[..., 0]
    img = img.astype(np.uint8)
    pil = Image.fromarray(img, {3: "RGB", 4: "RGBA"}.get(img.shape[-1], "L") if img.ndim == 3 else "L")
    if kind == "jpg":
        pil.save(path, format="JPEG", quality=90)
        return np.array(Image.open(path).convert("RGB"))
    pil.save(path, format="PNG")
    return img


def engine(model: Path, cache: Path, vision: bool = True):
    import litert_lm
    cache.mkdir(exist_ok=True)
    return litert_lm.Engine(str(model), backend=litert_lm.Backend.CPU(), cache_dir=str(cache),
                            vision_backend=litert_lm.Backend.CPU() if vision else None)


def converse(model: Path, content: list[dict], cache: Path, max_tokens: int, vision: bool = True,
             top_k: int | None = None) -> str:
    """One user message (`content`: LiteRT-LM message items) through Engine -> Conversation -> send_message;
    -> the reply's text."""
    import litert_lm
    eng = engine(model, cache, vision)
    conv = eng.create_conversation(max_output_tokens=max_tokens,
                                   sampler_config=litert_lm.SamplerConfig(top_k=top_k) if top_k else None)
    try:
        return str(conv.send_message({"role": "user", "content": content}).contents)
    finally:
        conv.close()
        eng.close()


class Probe:
    """A probe bundle (models converted once per Models value, cached under `work`) and its runs."""

    def __init__(self, m: Models = Models(), b: Bundle = Bundle(), work: Path | None = None):
        self.m, self.b = m, b
        self.work = Path(work or Path(tempfile.gettempdir()) / "ltprobe")
        self.work.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer_path(self.work)
        self.folder = self.work / m.key()
        self.model = bundle(build(m, self.folder, self.tokenizer), m, b, self.folder / f"{b.key()}.litertlm",
                            self.tokenizer)
        self.cache = self.folder / "cache"

    def image(self, kind: str = "", size: tuple[int, int] | None = None) -> tuple[dict, np.ndarray]:
        """A message item with a test image (default: the encoder's size) and its pixels."""
        H, W = size or (self.m.H, self.m.W)
        path = self.folder / f"image_{H}x{W}{kind}.{'jpg' if kind == 'jpg' else 'png'}"
        return {"type": "image", "path": str(path)}, test_image(path, H, W, kind)

    def send(self, content: list[dict], **kw) -> list[dict]:
        vision = any(item["type"] == "image" for item in content)
        return parse(converse(self.model, content, self.cache, self.m.S, vision=vision, **kw))

    def sp(self):
        import sentencepiece as spm
        return spm.SentencePieceProcessor(model_file=str(self.tokenizer))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="store_true", help="run every experiment and check the findings")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ltprobe"))
    ap.add_argument("--cache-len", type=int, default=4096)
    ap.add_argument("--prefill", default="8,32")
    ap.add_argument("--size", default="4x6", help="encoder input H x W")
    ap.add_argument("--image-size", default=None, help="the images' H x W (default: --size)")
    ap.add_argument("--mask", action="store_true", help="prefill/decode take a mask input")
    ap.add_argument("--local-mask", type=int, default=0, metavar="W",
                    help="... and a local_mask input, with the executor metadata's sliding_window_size W")
    ap.add_argument("--mask-type", choices=["causal", "bidirectional", "vision"], default=None)
    ap.add_argument("--eoi-row", action="store_true", help="the adapter appends an end-of-image row")
    ap.add_argument("--decoy", action="store_true", help="near-flat decode logits: only greedy sampling prints")
    ap.add_argument("--with-tokens", choices=["prefill", "both"], default="",
                    help="those signatures also take `tokens` (recorded in place of lcount)")
    ap.add_argument("--top-k", type=int, default=None, help="the conversation's SamplerConfig(top_k=K)")
    ap.add_argument("--model-type", default="gemma3", choices=["gemma3", "gemma3n", "generic", "generic-vision"])
    ap.add_argument("--end-of-vision", action="store_true", help="add a tf_lite_end_of_vision section")
    ap.add_argument("--paligemma", action="store_true", help="PaliGemma's layout: image, <bos> from the "
                    "end-of-vision model, prefix, \\n; no start token (with generic-vision, --end-of-vision)")
    ap.add_argument("--no-template", action="store_true")
    ap.add_argument("--content", default="image,text:Hi", help="the message's items, comma-separated: "
                    "image[:b|rgba|grey|jpg] or text:WORDS")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.suite:
        from litertlm_vision_probe_suite import run_suite
        sys.exit(run_suite(Path(a.work)))
    H, W = (int(x) for x in a.size.split("x"))
    probe = Probe(Models(S=a.cache_len, prefill=tuple(int(t) for t in a.prefill.split(",")), H=H, W=W,
                         mask=a.mask or bool(a.local_mask), local_mask=bool(a.local_mask), eoi_row=a.eoi_row,
                         decoy=a.decoy, tokens=a.with_tokens),
                  Bundle(model_type=a.model_type, mask_type=a.mask_type, window=a.local_mask,
                         end_of_vision=a.end_of_vision, paligemma=a.paligemma, template=not a.no_template),
                  Path(a.work))
    size = tuple(int(x) for x in a.image_size.split("x")) if a.image_size else None
    content, pixels = [], []
    for item in a.content.split(","):
        if item.startswith("image"):
            message_item, px = probe.image(item.partition(":")[2], size)
            content.append(message_item)
            pixels.append(px.tolist())
        else:
            content.append({"type": "text", "text": item.partition(":")[2]})
    rows = probe.send(content, top_k=a.top_k)
    if a.json:
        print(json.dumps({"rows": rows, "pixels": pixels, "content": content}))
    else:
        print(show(rows, probe.sp()))


if __name__ == "__main__":
    main()

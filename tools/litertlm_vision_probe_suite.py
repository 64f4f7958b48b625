"""The experiments behind the issue #18 report, each with the finding it checks (litertlm_vision_probe.py
--suite). Every check compares what the probe models received inside LiteRT-LM with what was sent (the test
images' pixels, the Gemma 3 tokenizer's ids) or with an independent model of the expected behaviour (the
resize reference below, transformers-style masks), never with the probe itself.
"""
from __future__ import annotations

import ctypes
import json
import time
from pathlib import Path

import numpy as np

from litertlm_vision_probe import Bundle, Models, Probe, engine, parse, show

BOI, EOI, BOS, NL, NL2, NL3 = 255999, 256000, 2, 107, 108, 109
SOFT = 262144          # <image_soft_token> in the reference prompts (LiteRT-LM's rows carry no id)
GEMMA3_BUNDLE = Bundle(model_type="generic-vision", mask_type="vision", end_of_vision=True)


def _cubic(x):
    """Catmull-Rom kernel."""
    x = np.abs(x)
    return np.where(x < 1, 1.5 * x ** 3 - 2.5 * x ** 2 + 1,
                    np.where(x < 2, -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2, 0))


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] resampling weights: pixel centres aligned, the kernel widened by the scale when shrinking,
    edges clamped, rows normalised."""
    s = n_out / n_in
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        c = (o + 0.5) / s
        reach = 2 / min(s, 1) + 1
        for i in range(int(np.floor(c - reach)), int(np.ceil(c + reach)) + 1):
            w[o, min(max(i, 0), n_in - 1)] += _cubic((i + 0.5 - c) * min(s, 1))
        w[o] /= w[o].sum()
    return w


def catmull_rom_linear_light(img: np.ndarray, H: int, W: int) -> np.ndarray:
    """An independent model of stb_image_resize2's STBIR_FILTER_CATMULLROM on STBIR_TYPE_UINT8_SRGB (what the
    LiteRT-LM source calls): sRGB -> linear, separable Catmull-Rom, linear -> sRGB, rounded to uint8."""
    v = img.astype(float) / 255
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    y = np.einsum("pw,owc->opc", _weights(img.shape[1], W), np.einsum("oh,hwc->owc", _weights(img.shape[0], H), lin))
    y = np.clip(y, 0, 1)
    return np.round(np.where(y <= 0.0031308, y * 12.92, 1.055 * y ** (1 / 2.4) - 0.055) * 255)


def _image_rows(rows):
    return [r for r in rows if r.get("e1") == 2]


def _rgb255(rows):
    return np.array([[r["e2"], r["e3"], r["e4"]] for r in _image_rows(rows)]) * 255


def _ids(rows):
    return [r["e0"] if r.get("e1") == 1 else {2: -1, 3: "eoi-row", 4: "eov"}.get(r.get("e1"), "?") for r in rows]


def _as_reference(rows, end_row_id):
    """The engine's rows as a transformers prompt: image rows -> SOFT, the end-of-vision row -> end_row_id."""
    return [r["e0"] if r.get("e1") == 1 else SOFT if r.get("e1") == 2 else end_row_id for r in rows]


def _reference(tokenizer, kind: str, per_image: int, text: str):
    """input_ids and token_type_ids from runtime_py.vision_prompts (equal to transformers' processors,
    tests/test_vision_prompts.py) for one image and `text`."""
    from runtime_py.tokenizer import Tokenizer
    from runtime_py.vision_prompts import (Gemma3ImageTokens, PaliGemmaImageTokens, gemma3_chat_prompt,
                                           paligemma_prompt)
    tok = Tokenizer.from_file(tokenizer)
    if kind == "paligemma":
        return paligemma_prompt(tok, text, 1, PaliGemmaImageTokens(SOFT, per_image))
    return gemma3_chat_prompt(tok, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                              tokens=Gemma3ImageTokens(per_image=per_image))


def _hf_last_visible(types: list[int]) -> list[int]:
    """Per query, the last key transformers' Gemma 3 mask lets it see: itself, or the end of its run of image
    tokens (token type 1)."""
    out = list(range(len(types)))
    for i in range(len(types) - 2, -1, -1):
        if types[i] == 1 and types[i + 1] == 1:
            out[i] = out[i + 1]
    return out


def _runs(ids):
    """Collapse runs of image rows (-1) to ("image", n)."""
    out = []
    for x in ids:
        if x == -1 and out and isinstance(out[-1], tuple):
            out[-1] = ("image", out[-1][1] + 1)
        else:
            out.append(("image", 1) if x == -1 else x)
    return out


def exp_layout(work):
    """Gemma 3's layout with a generic_model (image_enabled, add_image_end) and an end-of-vision section; the
    VISION_BIDIRECTIONAL mask; pixels at the encoder's size arrive unchanged, NHWC, in [0, 1]."""
    p = Probe(Models(mask=True), GEMMA3_BUNDLE, work)
    item, px = p.image()
    rows = p.send([item, {"type": "text", "text": "Hi"}])
    ref = _reference(p.tokenizer, "gemma3", 24, "Hi")
    checks = {
        "ids = transformers' (image rows as soft tokens, end-of-vision row as <end_of_image>)":
            _as_reference(rows, EOI) == ref.input_ids,
        "the masks = transformers' (causal, each image's soft tokens both ways)":
            [r["mlast"] for r in rows] == _hf_last_visible(ref.token_type_ids)
            and all(r["mfirst"] == 0 and r["mcount"] == r["mlast"] + 1 for r in rows),
        "image rows in pixel order": [r["e0"] for r in _image_rows(rows)] == list(range(24)),
        "pixels = png / 255, row-major HWC": float(np.abs(_rgb255(rows) - px.reshape(-1, 3)).max()) < 0.01,
        "last prompt token held back, fed to decode": rows[-1]["flag"] == 2 and rows[-1]["e0"] == NL
        and all(r["flag"] == 1 for r in rows[:-1]),
    }
    return checks, rows, p


def exp_gemma3_type(work):
    """llm_model_type gemma3: its processor emits no image end, so eoi must come from the adapter, inside the
    bidirectional block; an end-of-vision section is ignored."""
    p = Probe(Models(mask=True, eoi_row=True), Bundle(mask_type="vision", end_of_vision=True), work)
    item, _ = p.image()
    rows = p.send([item, {"type": "text", "text": "Hi"}])
    eoi = next(r for r in rows if r.get("e1") == 3)
    checks = {
        "no end-of-vision row": not any(r.get("e1") == 4 for r in rows),
        "tokens": _runs(_ids(rows)) == [BOS, 105, 2364, NL3, BOI, ("image", 24), "eoi-row", NL2, 10979, 106, NL,
                                        105, 4368, NL],
        "image rows see the adapter's eoi row (unlike transformers)": all(
            r["mlast"] == eoi["pos"] for r in _image_rows(rows)),
    }
    return checks, rows, p


def exp_no_metadata_mask(work):
    """Without executor metadata the mask is causal, image rows included."""
    p = Probe(Models(mask=True), Bundle(model_type="generic-vision", end_of_vision=True), work)
    rows = p.send([p.image()[0], {"type": "text", "text": "Hi"}])
    return {"every row causal": all(r["mlast"] == r["pos"] for r in rows)}, rows, p


def _chunks(rows):
    """[(signature length, rows in the chunk)] in order, the decode row left out."""
    out = []
    for r in rows:
        if r["flag"] == 1 and (not out or r["row"] == 0):
            out.append([r["T"], 0])
        out[-1][1] += r["flag"] == 1
    return [tuple(c) for c in out]


def exp_chunk_split(work):
    """On CPU the prompt is cut greedily into the longest prefill signatures that fit (the remainder padded in
    the shortest one covering it), whatever the image: a block split across chunks loses its bidirectionality
    at the boundary (each chunk's mask only reaches its own end). Only a signature longer than the whole prompt
    keeps the block in one chunk."""
    p = Probe(Models(mask=True, H=2, W=3), GEMMA3_BUNDLE, work)          # prefill 8 and 32, a 19-token prompt
    rows = p.send([p.image()[0], {"type": "text", "text": "Hi"}])
    img = _image_rows(rows)
    chunk_end = {r["start"]: max(x["pos"] for x in rows if x["start"] == r["start"]) for r in img}
    q = Probe(Models(mask=True, H=2, W=3, prefill=(32,)), GEMMA3_BUNDLE, work)
    whole = q.send([q.image()[0], {"type": "text", "text": "Hi"}])
    return {"19 tokens with prefill_8 and prefill_32: prefill_8 chunks (the last padded), not one prefill_32":
            _chunks(rows) == [(8, 7), (8, 8), (8, 3)],
            "image rows see only up to their chunk's end": all(
                r["mlast"] == min(chunk_end[r["start"]], img[-1]["pos"]) for r in img),
            "so the first rows miss the rest of the block": img[0]["mlast"] < img[-1]["pos"],
            "prefill_32 alone: one chunk, the whole block": _chunks(whole) == [(32, 18)] and all(
                r["mlast"] == _image_rows(whole)[-1]["pos"] for r in _image_rows(whole)),
            "37 tokens with prefill_8 and prefill_32: 32 + 8": _chunks(exp_layout(work)[1]) == [(32, 31), (8, 5)]}, \
        rows, p


def exp_resize(work):
    """Images of another size are stretched to the metadata's image_tensor size: Catmull-Rom in linear light
    (stb_image_resize2, sRGB uint8), no aspect ratio kept, rounded to uint8, then / 255."""
    from PIL import Image
    p = Probe(Models(mask=True), GEMMA3_BUNDLE, work)
    checks, out = {}, {}
    for size in ((8, 12), (5, 7), (2, 3), (9, 4)):
        item, px = p.image(size=size)
        got = _rgb255(p.send([item])).reshape(p.m.H, p.m.W, 3)
        ref = catmull_rom_linear_light(px, p.m.H, p.m.W)
        bilinear = np.array(Image.fromarray(px).resize((p.m.W, p.m.H), Image.BILINEAR), float)
        out[f"{size}"] = {"vs catmull-rom linear light": float(np.abs(got - ref).max()),
                          "vs PIL bilinear": float(np.abs(got - bilinear).max()),
                          "uint8 levels": float(np.abs(got - np.round(got)).max())}
        checks[f"{size[0]}x{size[1]} -> {p.m.H}x{p.m.W} within 1 level of the reference"] = \
            out[f"{size}"]["vs catmull-rom linear light"] <= 1.01 and out[f"{size}"]["uint8 levels"] < 0.01
    return checks, out, p


def exp_decoders(work):
    """stb_image decoding: RGBA loses its alpha (no compositing), grey is replicated, JPEG within 2 levels of
    PIL's decoder."""
    p = Probe(Models(mask=True, H=8, W=8, S=8192), GEMMA3_BUNDLE, work)
    out = {}
    for kind in ("rgba", "grey", "jpg"):
        item, px = p.image(kind)
        px = px.reshape(64, -1).astype(float)
        got = _rgb255(p.send([item]))
        want = {"rgba": px[:, :3], "grey": np.repeat(px, 3, 1), "jpg": px}[kind]
        out[kind] = float(np.abs(got - want).max())
    checks = {"RGBA: alpha dropped": out["rgba"] < 0.01, "grey replicated": out["grey"] < 0.01,
              "JPEG within 2 levels of PIL": out["jpg"] <= 2.01}
    return checks, out, p


def exp_two_images(work):
    p = Probe(Models(mask=True, H=2, W=3), GEMMA3_BUNDLE, work)
    (a, pa), (b, pb) = p.image(), p.image("b")
    rows = p.send([{"type": "text", "text": "A"}, a, {"type": "text", "text": "B"}, b])
    blocks = []                       # runs of consecutive image rows
    for r in _image_rows(rows):
        if blocks and blocks[-1][-1]["pos"] == r["pos"] - 1:
            blocks[-1].append(r)
        else:
            blocks.append([r])
    checks = {"two blocks of 6 rows": [len(x) for x in blocks] == [6, 6],
              "each block its own image, in order": float(np.abs(
                  _rgb255(rows) - np.concatenate([pa, pb]).reshape(-1, 3)).max()) < 0.01,
              "tokens": _runs(_ids(rows))[:14] == [BOS, 105, 2364, NL, 236776, NL2, BOI, ("image", 6), "eov", NL2,
                                                   236799, NL2, BOI, ("image", 6)]}
    return checks, rows, p


def exp_paligemma(work):
    """PaliGemma: no start token, the end-of-vision row where <bos> goes, BIDIRECTIONAL mask: the prefill chunk
    is bidirectional but the last prompt token ("\\n") is held back for decode, so no prefix row sees it."""
    p = Probe(Models(mask=True, prefill=(64,)), Bundle(model_type="generic-vision", mask_type="bidirectional",
                                                       end_of_vision=True, paligemma=True), work)
    rows = p.send([p.image()[0], {"type": "text", "text": "caption en"}])
    pre = [r for r in rows if r["flag"] == 1]
    ref = _reference(p.tokenizer, "paligemma", 24, "caption en")
    checks = {"ids = transformers' (end-of-vision row as <bos>)": _as_reference(rows, BOS) == ref.input_ids,
              "prefill rows see the whole chunk": all(r["mlast"] == pre[-1]["pos"] for r in pre),
              "no prefix row sees the final \\n": rows[-1]["e0"] == NL and rows[-1]["flag"] == 2}
    return checks, rows, p


def exp_local_mask(work):
    """With sliding_window_size set, 0.18.1 fills `local_mask` [1, 1, T, S] in a ring-buffer layout (the chunk's
    own keys in the last T columns), image rows windowed to +-(W-1); decode's local mask is in position columns."""
    p = Probe(Models(mask=True, local_mask=True), Bundle(model_type="generic-vision", mask_type="vision", window=10,
                                                         end_of_vision=True), work)
    rows = p.send([p.image()[0], {"type": "text", "text": "Hi"}])
    first = rows[0]
    checks = {"chunk keys in the last T columns": first["lfirst"] == p.m.S - first["T"],
              "image row windowed": _image_rows(rows)[0]["lcount"] == 10 + 5,
              "decode local mask = the window in position columns":
                  (rows[-1]["lfirst"], rows[-1]["llast"]) == (rows[-1]["pos"] - 9, rows[-1]["pos"])}
    return checks, rows, p


def exp_sampler(work):
    """With no sampler in the metadata nor the conversation, LiteRT-LM decodes greedily."""
    p = Probe(Models(decoy=True, H=2, W=3), Bundle(), work)
    item = p.image()[0]
    greedy, topk1, topk40 = (p.send([item], top_k=k) for k in (None, 1, 40))
    ok = lambda rows: rows and all("unparsed" not in r for r in rows)   # noqa: E731
    return {"default: greedy": ok(greedy), "top_k=1: greedy": ok(topk1), "top_k=40: sampled": not ok(topk40)}, \
        {"default": len(greedy), "top_k=40 unparsed": sum("unparsed" in r for r in topk40)}, p


def exp_tokens(work):
    """A `tokens` input beside `embeddings` is never written (prefill only: whatever the buffer held) or breaks
    image prompts (on prefill and decode: the engine switches to token lookup)."""
    p = Probe(Models(tokens="prefill", H=2, W=3), Bundle(), work)
    rows = p.send([p.image()[0]])
    q = Probe(Models(tokens="both", H=2, W=3), Bundle(), work)
    try:
        q.send([q.image()[0]])
        failed = False
    except RuntimeError:
        failed = True
    text = [r for r in rows if r["flag"] == 1 and r.get("e1") == 1]
    return {"prefill `tokens` are not the prompt's ids (the embeddings are)": sum(
        r["lcount"] == r["e0"] for r in text) <= 1 and text[0]["e0"] == BOS,
        "tokens on both signatures: image message fails": failed}, rows, p


def c_api():
    """LiteRT-LM's C library as litert_lm loads it, with the entry points its Python wrapper leaves out
    (session checkpoints, conversation clone) declared."""
    from litert_lm._ffi import _get_lib
    lib = _get_lib()
    for name in ("litert_lm_session_save_checkpoint", "litert_lm_session_rewind_to_checkpoint"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.litert_lm_conversation_clone.restype = ctypes.c_void_p
    lib.litert_lm_conversation_clone.argtypes = [ctypes.c_void_p]
    return lib


def session_prefill(lib, session, parts: list) -> int:
    """Prefill a litert_lm Session with text (str) and image (bytes) parts through the C API (the Python
    wrapper's run_prefill takes text only). -> the C status (0: ok)."""
    from litert_lm._ffi import InputDataType
    made, arr = [], (ctypes.c_void_p * len(parts))()
    try:
        for i, part in enumerate(parts):
            kind, data = (InputDataType.TEXT, part.encode()) if isinstance(part, str) else (InputDataType.IMAGE, part)
            arr[i] = lib.litert_lm_input_data_create(kind, data, len(data))
            made.append(arr[i])
        return lib.litert_lm_session_run_prefill(session._ptr, arr, len(parts))
    finally:
        for ptr in made:
            lib.litert_lm_input_data_delete(ptr)


def decode_text(session) -> str:
    return "".join(t for resp in session.run_decode_async() for t in resp.texts)


def exp_session(work):
    """KV-prefix reuse: Session prefill refuses raw image bytes; Session checkpoint / rewind / text scoring
    work on text; Conversation clone works after an image turn. After a rewind, a clone or a previous turn's
    decode, LiteRT-LM feeds some pending tokens to prefill without their embedding (zeros: the embeddings row
    carries the id's int32 bits)."""
    p = Probe(Models(mask=True), GEMMA3_BUNDLE, work)
    lib, item = c_api(), p.image()[0]
    eng, out = engine(p.model, p.cache), {}
    s = eng.create_session(apply_prompt_template=False)
    out["session image bytes status"] = session_prefill(lib, s, ["<start_of_turn>user\n",
                                                                  Path(item["path"]).read_bytes()])
    s.close()
    s = eng.create_session(apply_prompt_template=False)
    s.run_prefill(["<start_of_turn>user\nshared prefix"])
    out["save_checkpoint"] = lib.litert_lm_session_save_checkpoint(s._ptr, b"prefix")
    s.run_prefill([" alpha<end_of_turn>\n<start_of_turn>model\n"])
    out["score '0'"], out["score '1'"] = (round(s.run_text_scoring([t]).scores[0], 2) for t in ("0", "1"))
    try:
        s.run_text_scoring(["0", "1"])
        out["two targets"] = "ok"
    except RuntimeError:
        out["two targets"] = "refused"
    out["rewind"] = lib.litert_lm_session_rewind_to_checkpoint(s._ptr, b"prefix")
    s.run_prefill([" beta<end_of_turn>\n<start_of_turn>model\n"])
    after_rewind = parse(decode_text(s))
    s.close()
    conv = eng.create_conversation(max_output_tokens=p.m.S)
    conv.send_message({"role": "user", "content": [item, {"type": "text", "text": "first"}]}, max_output_tokens=3)
    clone = lib.litert_lm_conversation_clone(conv._ptr)
    turn2 = parse(str(conv.send_message("second A").contents))
    from litert_lm.conversation import Conversation
    twin = Conversation(lib, clone, engine=eng)
    clone_turn2 = parse(str(twin.send_message("second B").contents))
    twin.close(), conv.close(), eng.close()
    zero = lambda rows: [r["pos"] for r in rows if r.get("e1") == 0]   # noqa: E731
    out.update({"zero rows after rewind": zero(after_rewind), "zero rows in turn 2": zero(turn2),
                "zero rows in the clone's turn 2": zero(clone_turn2)})
    checks = {"session refuses raw image bytes": out["session image bytes status"] != 0,
              "checkpoint + rewind ok": out["save_checkpoint"] == 0 and out["rewind"] == 0,
              "scoring one target per call": out["score '0'"] == 0 and out["score '1'"] < -50
              and out["two targets"] == "refused",
              "rewind continues at the checkpoint": after_rewind[5]["pos"] == 5 and after_rewind[4]["e0"] == 17746,
              "clone keeps the image turn": bool(clone) and _image_rows(clone_turn2) == _image_rows(turn2) != [],
              "pending token without its embedding after rewind / decode / clone": bool(
                  zero(after_rewind) and zero(turn2) and zero(clone_turn2))}
    return checks, out, p


def exp_text_only(work):
    p = Probe(Models(mask=True), GEMMA3_BUNDLE, work)
    rows = p.send([{"type": "text", "text": "Hi"}])
    return {"text message, no vision backend": _runs(_ids(rows)) == [BOS, 105, 2364, NL, 10979, 106, NL, 105,
                                                                     4368, NL]}, rows, p


EXPERIMENTS = [exp_layout, exp_gemma3_type, exp_no_metadata_mask, exp_chunk_split, exp_resize, exp_decoders,
               exp_two_images, exp_paligemma, exp_local_mask, exp_sampler, exp_tokens, exp_session, exp_text_only]


def run_suite(work: Path) -> int:
    results, failed = {}, 0
    for exp in EXPERIMENTS:
        t = time.time()
        try:
            checks, evidence, probe = exp(work)
        except Exception as e:       # one experiment's failure is a finding too; the others still run
            checks, evidence, probe = {f"raised {type(e).__name__}: {e}": False}, None, None
        name = exp.__name__[4:]
        print(f"== {name} ({time.time() - t:.0f} s): {exp.__doc__.strip().splitlines()[0] if exp.__doc__ else ''}")
        for check, ok in checks.items():
            print(f"   {'PASS' if ok else 'FAIL'}  {check}")
            failed += not ok
        if isinstance(evidence, list) and probe is not None:
            print("   " + show(evidence, probe.sp()).replace("\n", "\n   "))
        elif evidence is not None:
            print(f"   {json.dumps(evidence)}")
        results[name] = {"checks": checks, "evidence": evidence}
    (work / "suite.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"{failed} check(s) failed; results in {work / 'suite.json'}")
    return 1 if failed else 0

"""Hugging Face fast-tokenizer files (`tokenizer.json` + `tokenizer_config.json`) for a Gemma SentencePiece
BPE model, written from the SentencePiece proto alone (no transformers or tokenizers at export time).

onnxruntime-genai's tokenizer (onnxruntime-extensions) reads these, not `tokenizer.model`. The JSON is what
transformers' SentencePiece -> fast conversion gives for Gemma:

* model: BPE over the SentencePiece vocabulary (piece -> id), `byte_fallback` on, `fuse_unk` on, unk `<unk>`.
  Merges: every split `left + right` of every piece with both halves in the vocabulary; the splits of one
  piece ordered by (id(left), id(right)); then all merges stably sorted by (score of the merged piece,
  len(left), len(right)) descending. SentencePiece BPE merges the adjacent pair whose result scores highest,
  which is what these ranks reproduce; score-0 pieces (Gemma's user-defined whitespace runs) merge first,
  longest left part first, which grows a run greedily from the left like SentencePiece's longest match.
* normalizer: Replace(" " -> "\u2581") (Gemma has no dummy prefix and keeps whitespace as is);
  pre_tokenizer: Split(" ", merged_with_previous) (a no-op after the normalizer, as in transformers);
  decoder: Replace("\u2581" -> " "), ByteFallback, Fuse.
* added_tokens: CONTROL, UNKNOWN and USER_DEFINED pieces (SentencePiece matches the latter whole in the
  text), all `normalized: false`; special = CONTROL, UNKNOWN and the turn / image markers. One departure
  from transformers: the whitespace-run pieces ("\u2581\u2581", ...) are left out. As unnormalized added
  tokens they only ever match a literal "\u2581\u2581" in the text (spaces reach them through the merges
  anyway), which SentencePiece does not do, and onnxruntime-extensions decodes added tokens verbatim, so
  indentation would come back as "\u2581\u2581\u2581\u2581".
* post_processor: TemplateProcessing "<bos> $A" ("<bos> $A <eos>" for EmbeddingGemma, whose tokenizer adds both).

onnxruntime-extensions still differs from SentencePiece on runs of more than 31 spaces and on words of
more than ~100 characters: it runs BPE on chunks of at most 100 characters and merges every occurrence of
the best pair at once. No tokenizer.json can change that.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from runtime_py.contract import END_OF_TURN, START_OF_TURN
from runtime_py.files import write_atomic

_PIECE = sp_pb2.ModelProto.SentencePiece
_SPACE = "\u2581"
# Marked special beside CONTROL/UNKNOWN, as in Gemma's published tokenizers (transformers' GemmaConverter
# names the turn markers; Gemma 3's tokenizer_config adds the image markers).
SPECIAL_PIECES = {START_OF_TURN, END_OF_TURN, "<start_of_image>", "<end_of_image>"}
_ADDED_TYPES = {_PIECE.CONTROL, _PIECE.UNKNOWN, _PIECE.USER_DEFINED}


def _proto(model_proto: bytes) -> sp_pb2.ModelProto:
    m = sp_pb2.ModelProto()
    m.ParseFromString(bytes(model_proto))
    if m.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise ValueError("only SentencePiece BPE models (Gemma's) convert to a BPE tokenizer.json")
    if m.normalizer_spec.add_dummy_prefix or m.normalizer_spec.precompiled_charsmap:
        raise ValueError("the SentencePiece model adds a dummy prefix or normalizes text; Gemma's does neither")
    return m


def _vocab(m: sp_pb2.ModelProto) -> list[tuple[str, float]]:
    """(piece, score) by id; as transformers does for Gemma, the byte piece <0x09> stands for "\\t" when the
    vocabulary has no tab piece (older Gemma tokenizers)."""
    vocab = [(p.piece, p.score) for p in m.pieces]
    if not any(piece == "\t" for piece, _ in vocab):
        vocab = [("\t", 0.0) if piece == "<0x09>" else (piece, s) for piece, s in vocab]
    return vocab


def _merges(vocab: list[tuple[str, float]]) -> list[list[str]]:
    ids: dict[str, int] = {}
    for i, (piece, _) in enumerate(vocab):
        ids.setdefault(piece, i)
    merges = []                                   # (score, len(left), len(right), left, right)
    for piece, score in dict(vocab).items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        local.sort(key=lambda lr: (ids[lr[0]], ids[lr[1]]))
        merges.extend((score, len(a), len(b), a, b) for a, b in local)
    merges.sort(key=lambda t: t[:3], reverse=True)    # stable: ties keep the order built above
    return [[a, b] for _, _, _, a, b in merges]


def _piece(m: sp_pb2.ModelProto, i: int, default: str) -> str:
    return m.pieces[i].piece if 0 <= i < len(m.pieces) else default


def special_pieces(model_proto: bytes) -> dict[str, str]:
    """bos/eos/pad/unk token strings of the model."""
    m = _proto(model_proto)
    t = m.trainer_spec
    return {"bos_token": _piece(m, t.bos_id, "<bos>"), "eos_token": _piece(m, t.eos_id, "<eos>"),
            "pad_token": _piece(m, t.pad_id, "<pad>"), "unk_token": _piece(m, t.unk_id, "<unk>")}


def _added_token(i: int, content: str, special: bool) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def tokenizer_json(model_proto: bytes, extra_tokens: dict[int, str] | None = None, add_eos: bool = False) -> dict:
    """The Hugging Face `tokenizer.json` of a Gemma SentencePiece BPE model; extra_tokens: special tokens past
    its pieces ({id: text}; Gemma 3 4B+'s <image_soft_token> at 262144 is one in its published tokenizer.json);
    add_eos: <eos> after each sequence too (EmbeddingGemma)."""
    m = _proto(model_proto)
    vocab = _vocab(m)
    specials = special_pieces(model_proto)
    bos, unk, eos = specials["bos_token"], specials["unk_token"], specials["eos_token"]
    added = [_added_token(i, vocab[i][0], p.type != _PIECE.USER_DEFINED or p.piece in SPECIAL_PIECES)
             for i, p in enumerate(m.pieces) if p.type in _ADDED_TYPES and p.piece.strip(_SPACE)]
    added += [_added_token(i, text, True) for i, text in sorted((extra_tokens or {}).items()) if i >= len(m.pieces)]
    bos_id = m.trainer_spec.bos_id
    post = None
    if 0 <= bos_id < len(m.pieces):
        def tok(name, type_id):
            return {"SpecialToken": {"id": name, "type_id": type_id}}

        def seq(name, type_id):
            return {"Sequence": {"id": name, "type_id": type_id}}
        end = lambda type_id: [tok(eos, type_id)] if add_eos else []  # noqa: E731
        post = {"type": "TemplateProcessing",
                "single": [tok(bos, 0), seq("A", 0), *end(0)],
                "pair": [tok(bos, 0), seq("A", 0), *end(0), tok(bos, 1), seq("B", 1), *end(1)],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]},
                                   **({eos: {"id": eos, "ids": [m.trainer_spec.eos_id], "tokens": [eos]}}
                                      if add_eos else {})}}
    vocab_map: dict[str, int] = {}
    for i, (piece, _) in enumerate(vocab):
        vocab_map.setdefault(piece, i)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": m.trainer_spec.byte_fallback,
                  "ignore_merges": False, "vocab": vocab_map, "merges": _merges(vocab)},
    }


def tokenizer_config(model_proto: bytes, model_max_length: int | None = None, add_eos: bool = False,
                     chat_template: str | None = None) -> dict:
    """The `tokenizer_config.json` beside it. onnxruntime-genai creates its tokenizer with
    add_special_tokens=false, so `Tokenizer.encode` never prepends <bos> (prompts carry it, as Gemma's chat
    template does); after `update_options(add_special_tokens="true")` onnxruntime-extensions prepends it when
    `add_bos_token` is true (or absent for a GemmaTokenizer, or false with <bos> in the post_processor)."""
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": add_eos,
           **special_pieces(model_proto), "clean_up_tokenization_spaces": False,
           "spaces_between_special_tokens": False}
    if model_max_length is not None:
        cfg["model_max_length"] = int(model_max_length)
    if chat_template:
        cfg["chat_template"] = chat_template
    return cfg


def _write(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_hf_tokenizer(model_proto: bytes, folder: str | os.PathLike, model_max_length: int | None = None,
                       extra_tokens: dict[int, str] | None = None, add_eos: bool = False,
                       chat_template: str | None = None):
    """Write `tokenizer.json` and `tokenizer_config.json` for the model into `folder` (extra_tokens, add_eos:
    see tokenizer_json; chat_template: the Jinja template tokenizer_config.json carries)."""
    folder = Path(folder)
    _write(folder / "tokenizer.json", tokenizer_json(model_proto, extra_tokens, add_eos))
    _write(folder / "tokenizer_config.json", tokenizer_config(model_proto, model_max_length, add_eos, chat_template))

"""Rebuild the SentencePiece model a GGUF file carries, so the runtime can tokenize without the original
`tokenizer.model`.

llama.cpp writes a SentencePiece vocabulary ("tokenizer.ggml.model" = "llama") as three parallel arrays
(tokens, scores, token types) plus the special ids, and changes two things on the way that must be undone
to tokenize exactly as the original model:

* every token the Hugging Face config flags as special becomes a CONTROL token in the GGUF. In Gemma's real
  `tokenizer.model` only <pad>, <eos> and <bos> are CONTROL and <unk> is UNKNOWN; the others
  (<start_of_turn>, <end_of_turn>, <unusedN>, <|fim_prefix|>, ...) are USER_DEFINED, which SentencePiece
  matches whole in the text. So: the special ids keep their SentencePiece types, other CONTROL tokens
  become USER_DEFINED.
* in USER_DEFINED tokens it writes "\u2581" as a real space (Gemma's whitespace runs "\u2581\u2581", ...
  appear as "  ", ...). SentencePiece matches them after replacing spaces by "\u2581", so we spell them back.

Gemma's model is BPE with byte fallback, the identity normalizer, no dummy prefix (GGUF
"tokenizer.ggml.add_space_prefix" = false) and whitespace kept as is; NORMAL pieces keep their GGUF scores
(the original SentencePiece scores, which drive the merge order); the other pieces score 0 as in the
original.
"""
from __future__ import annotations

import gguf
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from ..families import SPECIAL_TOKENS

_T = gguf.GGUFValueType
_INTS = {_T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.UINT32, _T.INT32, _T.UINT64, _T.INT64}
_FLOATS = {_T.FLOAT32, _T.FLOAT64}
_PIECE = sp_pb2.ModelProto.SentencePiece
_SPACE = "\u2581"

# GGUF token types (llama.cpp's llama_token_type) -> SentencePiece piece types, for ids that are not
# bos/eos/pad/unk. An UNKNOWN token other than the unk id cannot stay UNKNOWN (SentencePiece allows one).
_PIECE_TYPES = {1: _PIECE.NORMAL, 2: _PIECE.CONTROL, 3: _PIECE.USER_DEFINED, 4: _PIECE.USER_DEFINED,
                5: _PIECE.UNUSED, 6: _PIECE.BYTE}

_REQUIRED = object()


def _describe(types: list) -> str:
    """A GGUF field's kind, as "UINT32" or "ARRAY of STRING"."""
    names = [t.name for t in types]
    return " of ".join(names) if names else "empty"


def _value(reader: gguf.GGUFReader, key: str, kinds: set, *, array: bool = False, default=_REQUIRED):
    """The value of `key`, checking its kind; `default` when absent, or a ValueError if it is required."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"GGUF field {key!r} is missing: this file carries no usable SentencePiece "
                             f"tokenizer")
        return default
    types = list(field.types)
    if array:
        ok = len(types) == 2 and types[0] == _T.ARRAY and types[1] in kinds
    else:
        ok = len(types) == 1 and types[0] in kinds
    if not ok:
        wanted = " or ".join(sorted(k.name for k in kinds))
        raise ValueError(f"GGUF field {key!r} is {_describe(types)}, expected "
                         f"{'ARRAY of ' if array else ''}{wanted}")
    return field.contents()


def _token_id(reader: gguf.GGUFReader, key: str, vocab_size: int, default=_REQUIRED) -> int:
    """A special token id, checked to lie in the vocabulary."""
    value = _value(reader, key, _INTS, default=default)
    if value is not default and not 0 <= value < vocab_size:
        raise ValueError(f"GGUF field {key!r} = {value} is outside the vocabulary (size {vocab_size})")
    return value


def sentencepiece_model_from_gguf(reader: gguf.GGUFReader) -> bytes:
    """The serialized SentencePiece `ModelProto` equivalent to the GGUF's embedded tokenizer.

    Raises ValueError naming the GGUF field when a tokenizer field is missing, of the wrong kind, or describes
    a vocabulary that is not SentencePiece's.
    """
    model = _value(reader, "tokenizer.ggml.model", {_T.STRING})
    if model != "llama":
        raise ValueError(f"GGUF field 'tokenizer.ggml.model' is {model!r}: only 'llama' (SentencePiece) "
                         f"vocabularies can be rebuilt as a SentencePiece model")
    tokens = _value(reader, "tokenizer.ggml.tokens", {_T.STRING}, array=True)
    if not tokens:
        raise ValueError("GGUF field 'tokenizer.ggml.tokens' is empty")
    scores = _value(reader, "tokenizer.ggml.scores", _FLOATS, array=True)
    types = _value(reader, "tokenizer.ggml.token_type", _INTS, array=True)
    for key, values in (("tokenizer.ggml.scores", scores), ("tokenizer.ggml.token_type", types)):
        if len(values) != len(tokens):
            raise ValueError(f"GGUF field {key!r} has {len(values)} entries for {len(tokens)} tokens")
    n = len(tokens)
    bos = _token_id(reader, SPECIAL_TOKENS["bos_id"][1], n)
    eos = _token_id(reader, SPECIAL_TOKENS["eos_id"][1], n)
    unk = _token_id(reader, "tokenizer.ggml.unknown_token_id", n,
                    default=types.index(2) if 2 in types else _REQUIRED)
    pad = _token_id(reader, SPECIAL_TOKENS["pad_id"][1], n, default=-1)
    # llama.cpp's default for a SentencePiece vocabulary that does not say (older Llama files).
    add_space_prefix = _value(reader, "tokenizer.ggml.add_space_prefix", {_T.BOOL}, default=True)

    special = {bos: _PIECE.CONTROL, eos: _PIECE.CONTROL, pad: _PIECE.CONTROL, unk: _PIECE.UNKNOWN}
    proto = sp_pb2.ModelProto()
    for i, (text, score, gguf_type) in enumerate(zip(tokens, scores, types)):
        piece_type = special.get(i, _PIECE_TYPES.get(gguf_type))
        if piece_type is None:
            raise ValueError(f"GGUF field 'tokenizer.ggml.token_type' gives token {i} ({text!r}) the unknown "
                             f"type {gguf_type}")
        if piece_type == _PIECE.USER_DEFINED:
            text = text.replace(" ", _SPACE)
        proto.pieces.add(piece=text, score=score if piece_type == _PIECE.NORMAL else 0.0, type=piece_type)

    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = n
    spec.byte_fallback = 6 in types
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    spec.max_sentencepiece_length = max(len(t) for t in tokens)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk, bos, eos, pad
    spec.unk_piece, spec.bos_piece, spec.eos_piece = tokens[unk], tokens[bos], tokens[eos]
    if pad >= 0:
        spec.pad_piece = tokens[pad]

    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_space_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()

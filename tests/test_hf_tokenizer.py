"""tokenizer.json / tokenizer_config.json written from Gemma 3's SentencePiece model, against SentencePiece
itself: through Hugging Face tokenizers and through onnxruntime-genai's tokenizer (onnxruntime-extensions)."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from export.converters.hf_tokenizer import tokenizer_config, tokenizer_json, write_hf_tokenizer

MIXED = (
    "The quick brown fox, naïve café résumé. \n"
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)  # 2 spaces\n\n\n"
    "日本語のテキストと中文字符。한국어 😀👩‍👩‍👧❤️ 🫩\n"
    "digits 1234567890 3.14159, tabs\t\t\tand runs of spaces:" + " " * 7 + "|" + " " * 31 + "|\r\n"
    "<start_of_turn>user\nHi <b>there</b><end_of_turn>\n<start_of_turn>model\n"
    "zxqvbnmwkjhg Ꙩ 𓀀 ﬁ ① <unused0>"
)
TEXTS = [MIXED, "", " ", "  leading and trailing  ", "\n\n\n", "a  b   c    d\t \t  \t", "\r\n\r\n x"]
# Beyond what onnxruntime-extensions reproduces (it runs BPE on chunks of at most ~100 characters and merges
# every occurrence of the best pair at once), but Hugging Face tokenizers must: a run of 70 spaces, literal
# "\u2581" (SentencePiece reads it as a space), a 300-character word.
HF_ONLY = [" " * 70 + "x", " \u2581 \u2581\u2581  ", "".join(chr(0x61 + i * 7 % 26) for i in range(300))]
SPECIAL = ("<start_of_turn>", "<end_of_turn>")   # marked special: onnxruntime-genai's decode drops them


@pytest.fixture(scope="module")
def proto(real_tokenizer_proto):
    return real_tokenizer_proto


@pytest.fixture(scope="module")
def sp(proto):
    return spm.SentencePieceProcessor(model_proto=proto)


@pytest.fixture(scope="module")
def tok_json(proto):
    return tokenizer_json(proto)


@pytest.fixture(scope="module")
def folder(proto, tmp_path_factory):
    """What onnxruntime-genai's tokenizer needs: genai_config.json and the tokenizer files, no model.onnx."""
    d = tmp_path_factory.mktemp("og_tokenizer")
    write_hf_tokenizer(proto, d)
    (d / "tokenizer.model").write_bytes(proto)
    (d / "genai_config.json").write_text(json.dumps({"model": {
        "type": "gemma3_text", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "vocab_size": 262144,
        "context_length": 64, "decoder": {"filename": "model.onnx", "head_size": 8, "hidden_size": 8,
                                          "num_attention_heads": 1, "num_hidden_layers": 1,
                                          "num_key_value_heads": 1}}}))
    return d


def test_hf_tokenizers_encode_like_sentencepiece(tok_json, sp):
    import tokenizers
    hf = tokenizers.Tokenizer.from_str(json.dumps(tok_json))
    for text in TEXTS + HF_ONLY:
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.encode(text).ids == [sp.bos_id()] + ids                 # the post_processor adds <bos>
        assert hf.decode(ids, skip_special_tokens=False) == sp.decode(ids)
        if "\u2581" not in text:
            assert sp.decode(ids) == text
    pieces = [sp.id_to_piece(i) for i in sp.encode(MIXED)]
    assert {"<0xF0>", "<start_of_turn>", "<b>", "\t\t\t", "\u2581" * 31, "\n\n\n"} <= set(pieces)


def test_merges_match_transformers_converter(proto, tok_json):
    """The merge list is the one transformers' GemmaConverter derives (ranks from the piece scores)."""
    import importlib
    convert = importlib.import_module("transformers.convert_slow_tokenizer")
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    m = sp_pb2.ModelProto()
    m.ParseFromString(proto)
    scores = [(p.piece, p.score) for p in m.pieces]
    expected = convert.generate_merges({p: i for i, (p, _) in enumerate(scores)}, scores)
    assert tok_json["model"]["merges"] == [list(pair) for pair in expected]


def test_added_tokens_and_config(tok_json, proto):
    added = {t["content"]: t for t in tok_json["added_tokens"]}
    assert all(t["id"] == tok_json["model"]["vocab"][c] and not t["normalized"] for c, t in added.items())
    assert {c for c, t in added.items() if t["special"]} == {
        "<pad>", "<eos>", "<bos>", "<unk>", *SPECIAL, "<start_of_image>", "<end_of_image>"}
    assert not added["<unused0>"]["special"] and not added["\n"]["special"] and not added["\t"]["special"]
    assert "\u2581\u2581" not in added          # whitespace runs come from the merges (see hf_tokenizer.py)
    assert tok_json["model"]["byte_fallback"] and tok_json["model"]["unk_token"] == "<unk>"
    cfg = tokenizer_config(proto, model_max_length=32768)
    assert cfg["tokenizer_class"] == "GemmaTokenizer" and cfg["add_bos_token"] is True
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"], cfg["unk_token"]) == (
        "<bos>", "<eos>", "<pad>", "<unk>")
    assert cfg["model_max_length"] == 32768


def test_onnxruntime_genai_tokenizer(folder, sp):
    import onnxruntime_genai as og
    tok = og.Tokenizer(og.Config(str(folder)))           # no model.onnx needed
    for text in TEXTS:
        ids = sp.encode(text)
        # onnxruntime-genai creates its tokenizer with add_special_tokens=false: no <bos> by default.
        assert [int(i) for i in tok.encode(text)] == ids, text
        expected = text
        for marker in SPECIAL:
            expected = expected.replace(marker, "")
        assert tok.decode(ids) == expected
    tok.update_options(add_special_tokens="true")        # then tokenizer_config's add_bos_token applies
    assert [int(i) for i in tok.encode(MIXED)] == [sp.bos_id()] + sp.encode(MIXED)
    assert tok.bos_token_id == sp.bos_id() and list(tok.eos_token_ids) == [sp.eos_id()]

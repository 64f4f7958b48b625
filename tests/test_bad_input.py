"""A corpus of bad inputs, built here: truncated and lying files of every format we read, hostile paths, absurd
configs and flags. Every case must end with exit 2 and exactly one stderr line naming the culprit, no
traceback, nothing written, and its input files unchanged (hashed before and after)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from export.cli import main

import oracle


def _json_edit(name: str, change):
    """A case maker: copy the tiny folder, change one JSON file (`change(dict) -> new content`)."""
    def make(folder: Path) -> None:
        f = folder / name
        f.write_text(json.dumps(change(json.loads(f.read_text()))))
    return make


def _config(**values):
    return _json_edit("config.json", lambda c: {**c, **values})


def _write(name: str, data: bytes | str):
    def make(folder: Path) -> None:
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return make


def _safetensors(edit):
    """A case maker rewriting model.safetensors: `edit(header dict, body bytes) -> (header, body)`."""
    def make(folder: Path) -> None:
        f = folder / "model.safetensors"
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header, body = edit(json.loads(raw[8:8 + n]), raw[8 + n:])
        head = json.dumps(header).encode()
        f.write_bytes(struct.pack("<Q", len(head)) + head + body)
    return make


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _lying_offsets(header, body):
    k = _first_tensor(header)
    return {**header, k: {**header[k], "data_offsets": [0, 1 << 40]}}, body


def _shards(shard_name: str):
    """A sharded checkpoint whose index names `shard_name` (outside the folder)."""
    def make(folder: Path) -> None:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
            "model.embed_tokens.weight": shard_name}}))
        (folder / "model.safetensors").unlink()
    return make


def _gguf(**hp_changes):
    """A tiny GGUF written as llama.cpp writes it, with config values changed."""
    def make(folder: Path) -> None:
        model = oracle.hf_model("gemma3")
        hp = {**model.config.to_dict(), **hp_changes}
        oracle.write_gguf(folder / "m.gguf", hp, "gemma3", oracle.gguf_tensors(model, "gemma3"))
    return make


def _truncated_gguf(folder: Path) -> None:
    _gguf()(folder)
    data = (folder / "m.gguf").read_bytes()
    (folder / "m.gguf").write_bytes(data[:len(data) // 3])


LITERTLM_HEAD = b"LITERTLM" + bytes(16)          # magic, version; then the header's end (uint64)

# id -> (how the inputs are made from a copy of the tiny Gemma 3 folder, the argv ({d}: that folder), the culprit
# the error line must name)
GEN = ["generate", "--prompt", "Hi", "--model"]
CASES = {
    "zero-heads": (_config(num_attention_heads=0), [*GEN, "{d}"], "num_attention_heads 0"),
    "zero-kv-heads": (_config(num_key_value_heads=0), [*GEN, "{d}"], "num_key_value_heads 0"),
    "string-vocab": (_config(vocab_size="384"), [*GEN, "{d}"], "vocab_size '384'"),
    "negative-hidden": (_config(hidden_size=-64), [*GEN, "{d}"], "hidden_size -64"),
    "million-layers": (_config(num_hidden_layers=5_000_000), [*GEN, "{d}"], "num_hidden_layers 5000000"),
    "layers-not-in-file": (_config(num_hidden_layers=4, layer_types=None), [*GEN, "{d}"], "4 layers"),
    "vocab-not-in-file": (_config(vocab_size=400), [*GEN, "{d}"], "vocab_size 400"),
    "negative-eps": (_config(rms_norm_eps=-1.0), [*GEN, "{d}"], "rms_norm_eps -1.0"),
    "rope-scaling-not-an-object": (_config(rope_parameters=None, rope_scaling=[8.0]), [*GEN, "{d}"], "config.json"),
    "config-is-a-list": (_write("config.json", "[]"), [*GEN, "{d}"], "config.json: expected a JSON object"),
    "config-not-json": (_write("config.json", "{\"vocab_size\": "), [*GEN, "{d}"], "config.json: not readable JSON"),
    "zero-window-pattern": (_config(layer_types=None, sliding_window_pattern=0), [*GEN, "{d}"],
                            "sliding_window_pattern 0"),
    "corrupt-tokenizer": (_write("tokenizer.model", b"\x0a\xff\xff\xff\xff\x0f garbage"), [*GEN, "{d}"],
                          "tokenizer.model: not a SentencePiece model"),
    "tokenizer-beyond-embedding": (_config(vocab_size=300), [*GEN, "{d}"], None),    # set below (embedding rows)
    "truncated-safetensors": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000]), [*GEN, "{d}"], "model.safetensors: not a readable"),
    "lying-safetensors-offsets": (_safetensors(_lying_offsets), [*GEN, "{d}"], "model.safetensors: not a readable"),
    "huge-safetensors-header": (lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 1 << 62) + (d / "model.safetensors").read_bytes()[8:]), [*GEN, "{d}"],
        "model.safetensors: not a readable"),
    "shard-in-another-folder": (_shards("../other/model.safetensors"), [*GEN, "{d}"],
                                "'../other/model.safetensors' lies outside"),
    "shard-absolute": (_shards("/etc/hostname"), [*GEN, "{d}"], "'/etc/hostname' lies outside"),
    "gguf-window-0": (_gguf(sliding_window=0), [*GEN, "{d}/m.gguf"], "gemma3.attention.sliding_window 0"),
    "gguf-zero-heads": (_gguf(num_attention_heads=0), [*GEN, "{d}/m.gguf"], "gemma3.attention.head_count 0"),
    "gguf-truncated": (_truncated_gguf, [*GEN, "{d}/m.gguf"], "m.gguf: not a readable GGUF file"),
    "litertlm-absurd-header": (_write("m.litertlm", LITERTLM_HEAD + struct.pack("<Q", 1 << 62) + bytes(64)),
                               [*GEN, "{d}/m.litertlm"], "m.litertlm: damaged .litertlm header"),
    "litertlm-truncated": (_write("m.litertlm", LITERTLM_HEAD + struct.pack("<Q", 4096) + bytes(64)),
                           [*GEN, "{d}/m.litertlm"], "m.litertlm: damaged .litertlm header"),
    "genai-filename-outside": (_write("genai_config.json", json.dumps(
        {"model": {"decoder": {"filename": "../../../etc/hostname"}}})), [*GEN, "{d}"],
        "'../../../etc/hostname' lies outside"),
    "genai-not-json": (_write("genai_config.json", "{model"), [*GEN, "{d}"], "genai_config.json: not readable JSON"),
    "manifest-bundle-outside": (_write("manifest.json", json.dumps({"target": "litertlm", "bundle": "/tmp/x.litertlm"})),
                                [*GEN, "{d}"], "'/tmp/x.litertlm' lies outside"),
    "negative-max-new-tokens": (None, [*GEN, "{d}", "--max-new-tokens", "-100"], "--max-new-tokens"),
    "top-k-beyond-vocab": (None, [*GEN, "{d}", "--temperature", "1", "--top-k", "100000"], "--top-k 100000"),
    "nan-temperature": (None, [*GEN, "{d}", "--temperature", "nan"], "--temperature"),
    "out-is-someones-folder": (lambda d: (d / "mine").mkdir() or (d / "mine" / "notes.txt").write_text("keep"),
                               ["--target", "onnx", "--model", "{d}", "--out", "{d}/mine"], "--out {d}/mine"),
    "out-is-a-file": (_write("notes.txt", "keep"), ["--target", "onnx", "--model", "{d}", "--out", "{d}/notes.txt"],
                      "--out {d}/notes.txt"),
    "out-is-the-model": (None, ["--target", "onnx", "--model", "{d}", "--out", "{d}", "--force"], "--out {d}"),
    "out-is-a-symlink": (lambda d: (d / "art").symlink_to(d.parent / "other"),
                         ["--target", "onnx", "--model", "{d}", "--out", "{d}/art"], "--out {d}/art: is a symbolic link"),
    "qat-out-not-ours": (_write("notes.gguf", b"GGUF not ours"), ["qat", "--model", "{d}", "--data", "{d}/config.json",
                                                                   "--steps", "1", "--out", "{d}/notes.gguf"],
                         "--out {d}/notes.gguf"),
    "adb-serial-with-slash": (_write("m.litertlm", b"LITERTLM"), ["profile", "{d}/m.litertlm", "--device",
                                                                  "adb:../../x", "--runner", "{d}/config.json"],
                              "adb:../../x"),
}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def tiny_folder(tiny_hf):
    return tiny_hf("gemma3", tokenizer=True).path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_exit_2_one_line_nothing_written_inputs_unchanged(case, tiny_folder, tmp_path, capsys):
    make, argv, culprit = CASES[case]
    d = tmp_path / "in"
    shutil.copytree(tiny_folder, d)
    (tmp_path / "other").mkdir()
    shutil.copy(d / "model.safetensors", tmp_path / "other" / "model.safetensors")   # what a lying index names
    if make is not None:
        make(d)
    if case == "tokenizer-beyond-embedding":              # a folder whose embedding is smaller than the tokenizer
        oracle.hf_model("gemma3").save_pretrained(d)       # (160 rows; tokenizer.model has 384 pieces)
        culprit = "tokenizer.model: the tokenizer has 384 tokens, the embedding only 160 rows"
    before, listing = _hashes(tmp_path), sorted(os.listdir(tmp_path)) + sorted(os.listdir(d))
    argv = [a.format(d=d) for a in argv]
    capsys.readouterr()                                    # what building the inputs printed
    try:
        status = main(argv)
    except SystemExit as e:                                # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert culprit.format(d=d) in err, err
    assert _hashes(tmp_path) == before                                    # inputs unchanged, nothing written
    assert sorted(os.listdir(tmp_path)) + sorted(os.listdir(d)) == listing


def test_the_corpus_covers_every_format_we_read():
    """The README states the corpus size; the formats are all here."""
    names = " ".join(CASES)
    for kind in ("safetensors", "gguf", "litertlm", "genai", "manifest", "tokenizer", "config", "shard", "out"):
        assert kind in names
    assert len(CASES) >= 35

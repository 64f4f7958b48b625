"""EmbeddingGemma's `.litertlm` (--target android) run unchanged by LiteRT-LM's EmbeddingEngine and by runtime_py,
against sentence-transformers' EmbeddingGemma built offline from the same random weights of a tiny model with odd
sizes (conftest.st_reference: its `encode`, its published task prompts, its truncation); texts longer than the
sliding window and than the longest signature; the padded rows proven inert."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

import runtime_py
from export.models.checkpoints import load_model
from export.targets import target
from runtime_py.api import truncate_embeddings
from runtime_py.litert_backend import read_litertlm
from runtime_py.prompts import embedding_prompt

# odd widths: d 42, 3 query heads of 24, FFN 70, a 42 -> 106 -> 42 head; window 8 < every text below
ODD = dict(hidden_size=42, intermediate_size=70, num_attention_heads=3, head_dim=24)
DENSE = (42, 106, 42)
LENGTHS = (13, 37)                                      # encoder_13, encoder_37
TEXTS = ["hello world",                                 # padded into encoder_13
         "the quick brown fox jumps over",              # padded into encoder_37, longer than the window
         "a b c d e f g h i j k l m n o p q"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd_eg(tmp_path_factory, st_reference):
    """(folder, sentence-transformers' model of its weights, the SentencePiece model)."""
    from oracle import save_hf_folder
    path = tmp_path_factory.mktemp("eg") / "hf"
    save_hf_folder("embeddinggemma", path, tokenizer=True, dense=DENSE, **ODD)
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    return path, st_reference(path), sp


@pytest.fixture(scope="module")
def bundles(odd_eg, tmp_path_factory):
    """{recipe: the android bundle's folder}, converted once per recipe."""
    built = {}

    def get(recipe: str) -> Path:
        if recipe not in built:
            out = tmp_path_factory.mktemp(f"android-{recipe}") / "bundle"
            target("android").export(load_model(odd_eg[0]), out, recipe, None, LENGTHS)
            built[recipe] = out
        return built[recipe]
    return get


def engine(bundle: Path):
    import litert_lm
    return litert_lm.EmbeddingEngine(str(bundle / "model.litertlm"))


def test_bundle_layout(bundles):
    """The sections LiteRT-LM's embedding engine reads, the encoder's signatures and I/O as its executor finds them."""
    from ai_edge_litert.interpreter import Interpreter
    from litert_lm_builder.runtime.proto import embedding_metadata_pb2
    b = read_litertlm(bundles("fp32") / "model.litertlm")
    assert set(b["models"]) == {"tf_lite_embedder", "tf_lite_text_encoder"}
    enc = Interpreter(model_content=b["models"]["tf_lite_text_encoder"])
    assert sorted(enc.get_signature_list()) == [f"encoder_{t}" for t in LENGTHS]
    for t in LENGTHS:
        runner = enc.get_signature_runner(f"encoder_{t}")
        ins = {k: (list(v["shape"]), v["dtype"]) for k, v in runner.get_input_details().items()}
        assert ins == {"embeddings": ([1, t, DENSE[0]], np.float32), "input_mask": ([1, t], np.float32)}
        assert [list(v["shape"]) for v in runner.get_output_details().values()] == [[1, DENSE[-1]]]
    emb = Interpreter(model_content=b["models"]["tf_lite_embedder"])
    (sig,) = emb.get_signature_list()
    runner = emb.get_signature_runner(sig)
    assert [list(v["shape"]) for v in runner.get_input_details().values()] == [[1, 1]]
    assert [list(v["shape"]) for v in runner.get_output_details().values()] == [[1, 1, DENSE[0]]]
    # the EmbeddingMetadata section: what the engine inserts around the text
    raw = Path(bundles("fp32") / "model.litertlm").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(bundles("fp32") / "tokenizer.model"))
    want = embedding_metadata_pb2.EmbeddingMetadata()
    want.embedding_model_type.generic_model.SetInParent()
    want.bos_token.token_ids.ids.append(sp.bos_id())
    want.eos_token.token_ids.ids.append(sp.eos_id())
    assert want.SerializeToString() in raw


@pytest.mark.parametrize("recipe,floor", [("fp32", 0.9999), ("int8", 0.99)])
def test_litert_lm_engine_gives_the_reference_vectors(odd_eg, bundles, recipe, floor):
    bundle = bundles(recipe)
    tasks = ("query", "document", None)
    texts = [embedding_prompt(task) + t for task, t in zip(tasks, TEXTS)]
    # sentence-transformers with its own prompts (config_sentence_transformers.json), one text at a time
    want = [odd_eg[1].encode(t, prompt_name=task) for task, t in zip(tasks, TEXTS)]
    assert max(len(odd_eg[2].encode(t)) + 2 for t in texts) > LENGTHS[0] > 8     # both signatures, past the window
    with engine(bundle) as e:
        one = [np.array(e.compute_embedding(t).embedding) for t in texts]
        batch = [np.array(r.embedding) for r in e.compute_embedding_batch(texts)]
        import litert_lm
        short = np.array(e.compute_embedding(texts[1], litert_lm.EmbeddingOptions(output_size=16)).embedding)
    m = runtime_py.load(bundle)
    assert m.kind == "embedding"
    ours = m.embed([t for t in TEXTS], task=None)                  # runtime_py on the same bundle, no prompt
    ours_prompted = np.stack([m.embed(t, task=task) for task, t in zip(tasks, TEXTS)])
    for w, a, b, c in zip(want, one, batch, ours_prompted):
        assert a.shape == w.shape == (DENSE[-1],)
        assert float(a @ w) >= floor and float(b @ w) >= floor and float(c @ w) >= floor
        if recipe == "fp32":
            assert np.abs(a - w).max() < 1e-5 and np.abs(c - w).max() < 1e-5
        assert np.abs(a - c).max() < 1e-4                           # the engine and runtime_py: the same graph
    assert float(ours[2] @ one[2]) > 0.9999                             # task None: the text alone
    # Matryoshka: the engine's output_size (then its L2 norm) is runtime_py's truncate-and-renormalise
    assert np.abs(short - truncate_embeddings(ours_prompted[1:2], 16)[0]).max() < 1e-4


def test_padded_rows_are_inert(odd_eg, bundles):
    """A text of exactly 13 tokens through encoder_13 (no padding) and padded into encoder_37 with garbage in the
    padded rows (the engine leaves its buffer's old rows there): the same vector, the reference's."""
    from ai_edge_litert.interpreter import Interpreter
    sp = odd_eg[2]
    sentence = "the quick brown fox jumps over the lazy dog"
    text = next(t for t in (sentence[:k] for k in range(1, len(sentence))) if len(sp.encode(t)) + 2 == LENGTHS[0])
    b = read_litertlm(bundles("fp32") / "model.litertlm")
    lookup = Interpreter(model_content=b["models"]["tf_lite_embedder"])
    lookup = lookup.get_signature_runner(list(lookup.get_signature_list())[0])
    ids = [sp.bos_id(), *sp.encode(text), sp.eos_id()]
    rows = np.concatenate([next(iter(lookup(token_ids=np.array([[i]], np.int32)).values()))[0] for i in ids])
    enc = Interpreter(model_content=b["models"]["tf_lite_text_encoder"])
    exact = enc.get_signature_runner("encoder_13")(embeddings=rows[None], input_mask=np.ones((1, 13), np.float32))
    garbage = np.random.default_rng(0).normal(0, 1e4, (1, 37, DENSE[0])).astype(np.float32)
    garbage[0, :13] = rows
    garbage[0, 20] = np.nan
    mask = np.zeros((1, 37), np.float32)
    mask[0, :13] = 1
    padded = enc.get_signature_runner("encoder_37")(embeddings=garbage, input_mask=mask)
    exact, padded = (next(iter(x.values()))[0] for x in (exact, padded))
    assert np.isfinite(padded).all() and np.abs(exact - padded).max() < 1e-5
    assert np.abs(exact - odd_eg[1].encode(text)).max() < 1e-5


@pytest.mark.parametrize("flags,culprit", [(["--context", "64"], "--context 64"),
                                           (["--vision-quant", "int8"], "--vision-quant"),
                                           (["--quant", "fp16"], "fp16")])
def test_bad_flags_for_an_embedder(odd_eg, tmp_path, flags, culprit):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "export.cli", "export", "--target", "android", "--model",
                        str(odd_eg[0]), "--out", str(out), *flags], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and culprit in lines[0], r.stderr[-2000:]
    assert not out.exists()


def test_manifest_records_the_bundle(bundles):
    manifest = json.loads((bundles("fp32") / "manifest.json").read_text())
    assert manifest["target"] == "litertlm" and manifest["bundle"] == "model.litertlm"
    assert manifest["kind"] == "embedding_bundle" and manifest["sequence_lengths"] == list(LENGTHS)
    assert set(manifest["tflite"]) == {"embedder.tflite", "text_encoder.tflite"}


def test_a_text_past_the_longest_signature_is_truncated_as_the_engine_does(odd_eg, bundles):
    """LiteRT-LM's TRUNCATE keeps the first tokens and ends with <eos>; runtime_py cuts the same way (its limit:
    the bundle's longest signature, shorter than the model's context), as sentence-transformers does with that
    max_seq_length."""
    import litert_lm
    sp, text = odd_eg[2], "the quick brown fox jumps over the lazy dog " * 3
    assert len(sp.encode(text)) + 2 > LENGTHS[-1]
    with engine(bundles("fp32")) as e:
        got = np.array(e.compute_embedding(text, litert_lm.EmbeddingOptions(
            input_overflow_strategy=litert_lm.InputOverflowStrategy.TRUNCATE)).embedding)
    m = runtime_py.load(bundles("fp32"))
    ids = m.embedding_ids(text)
    assert len(ids) == LENGTHS[-1] and ids[-1] == sp.eos_id() and ids[:-1] == [sp.bos_id(), *sp.encode(text)][:36]
    assert np.abs(m.embed(text) - got).max() < 1e-5
    st, full = odd_eg[1], odd_eg[1].max_seq_length
    st.max_seq_length = LENGTHS[-1]
    try:
        assert st.tokenizer(text, truncation=True, max_length=LENGTHS[-1])["input_ids"] == ids
        assert np.abs(st.encode(text) - got).max() < 1e-5
    finally:
        st.max_seq_length = full


def test_blocks_that_do_not_divide_the_widths_are_refused_before_converting(odd_eg, tmp_path):
    from export.converters.litert.embedding_bundle import check_blocks
    from export.quantize.recipes import recipe
    loaded = load_model(odd_eg[0])
    with pytest.raises(ValueError, match=r"--quant int4: its blocks of 32 .* 42"):
        target("android").export(loaded, tmp_path / "out", "int4")
    assert not (tmp_path / "out").exists()
    check_blocks(loaded.model, recipe("int8", "litert"), "x")                 # per channel: any width


@pytest.mark.parametrize("prefill,want", [(None, [128, 512]), ((32, 128, 512), [32, 128, 512]), ((600,), [512])])
def test_prefill_names_the_encoder_lengths(odd_eg, tmp_path, monkeypatch, prefill, want):
    """--prefill (any lengths, the causal targets' default ones too) sets encoder_{S}; none: 128/512/2048, each
    capped by the model's context (512 for the tiny model)."""
    import export.converters.litert.embedding_bundle as eb
    seen = []

    def stop(loaded, out, r, lengths=None):
        seen.append(eb.encoder_lengths(loaded.config, lengths))
        raise KeyboardInterrupt
    monkeypatch.setattr(eb, "export_embedding_litert", stop)
    with pytest.raises(KeyboardInterrupt):
        target("android").export(load_model(odd_eg[0]), tmp_path / "out", "fp32", None, prefill)
    assert seen == [want]

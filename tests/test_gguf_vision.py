"""`--model text.gguf --mmproj mmproj.gguf` end to end: a tiny random transformers Gemma3ForConditionalGeneration
saved in the published layout with a SentencePiece tokenizer holding Gemma 3's image markers, converted by
llama.cpp's own convert_hf_to_gguf.py (llama-cpp-python 0.3.36's vendored copy) into its text GGUF and its mmproj
GGUF; loaded as one vision-language model, it must compute transformers' logits on a prompt with images and
transformers' greedy continuation, and so must its ONNX export through runtime_py. Bad pairs of files are refused
with one line naming the file."""
import json

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers as tf
from gguf import GGMLQuantizationType as Q

import runtime_py
import vision_oracle as vo
from export.cli import main
from export.models.checkpoints import CheckpointError, load_model, read_config
from export.models.generate import generate
from export.models.vision_config import GEMMA3, VisionLanguageConfig
from llama_cpp_converter import convert
from oracle import hf_model, tiny_tokenizer, write_tiny

MARKERS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")     # Gemma 3's pieces, as published
# 5 sliding layers and a global one (llama.cpp's Gemma 3 pattern), a window shorter than the prompt, the global
# layer's RoPE scaled linearly as in the 4B-27B; a vocabulary larger than the tokenizer (the converter pads it).
TEXT = dict(vocab_size=400, num_hidden_layers=6, sliding_window=8,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
IMAGES = 2
# (our reference refuses an image token without its image, where transformers embeds it as a word: with this seed
# the greedy continuation does not produce the marker, which this tiny vocabulary gives an ordinary id)
SEED = 1


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, HF folder, {outtype: (text GGUF, mmproj GGUF)}), both files by llama.cpp's converter."""
    root = tmp_path_factory.mktemp("gguf-vision")
    proto = tiny_tokenizer(MARKERS)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    ids = dict(zip(("boi_token_index", "eoi_token_index", "image_token_index"), map(sp.piece_to_id, MARKERS)))
    model = vo.gemma3_vlm(tokens_per_image=4, seed=SEED, text=TEXT, ids=ids)
    folder = vo.save_vlm_folder(model, root / "hf", tokenizer=proto)
    files = {o: (convert(folder, root / f"text-{o}.gguf", o), convert(folder, root / f"mmproj-{o}.gguf", o, mmproj=True))
             for o in ("f32", "f16")}
    return model, folder, files


def stored_types(*paths) -> dict[str, Q]:
    return {t.name: t.tensor_type for p in paths for t in gguf.GGUFReader(p).tensors}


def as_stored_f32(model, files):
    """transformers' model with its weights as the F32 files hold them: everything float32 except the projection,
    which the converter always writes as float16 (gguf-py says so)."""
    assert {n: k for n, k in stored_types(*files).items() if k != Q.F32} == {"mm.input_projection.weight": Q.F16}
    ref = tf.Gemma3ForConditionalGeneration(model.config).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = ref.model.multi_modal_projector.mm_input_projection_weight
        w.copy_(w.half().float())
    return ref


def image_prompt(model):
    ids, types = vo.prompt("gemma3", model, text_len=16, images=IMAGES)
    return ids, types, vo.pixels(IMAGES, vo.image_size(model))


def test_config_is_both_files(pair):
    """The decoder is the text GGUF's, the tower, tokens per image and normalisation the mmproj's, the markers the
    tokenizer's pieces: all what transformers' config and the preprocessor say."""
    model, folder, files = pair
    text, mm = files["f32"]
    c = read_config(text, mmproj=mm)
    assert isinstance(c, VisionLanguageConfig) and c.kind == GEMMA3
    assert c.text == read_config(text)
    v, hf = model.config.vision_config, model.config
    assert (c.vision.image_size, c.vision.patch_size, c.vision.hidden_size, c.vision.intermediate_size,
            c.vision.num_layers, c.vision.num_heads) == (v.image_size, v.patch_size, v.hidden_size,
                                                         v.intermediate_size, v.num_hidden_layers, v.num_attention_heads)
    assert c.vision.layer_norm_eps == pytest.approx(v.layer_norm_eps, rel=1e-6)
    assert (c.tokens_per_image, c.image_token_id, c.boi_id, c.eoi_id) == (
        hf.mm_tokens_per_image, hf.image_token_index, hf.boi_token_index, hf.eoi_token_index)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert c.image_mean == pytest.approx(pre["image_mean"]) and c.image_std == pytest.approx(pre["image_std"])
    assert c.image_mean == pytest.approx(vo.IMAGE_MEAN)      # not the default
    # the HF folder itself reads the same normalisation from its preprocessor_config.json
    hf_config = read_config(folder)
    assert hf_config.image_mean == tuple(vo.IMAGE_MEAN) and hf_config.image_std == tuple(vo.IMAGE_STD)
    loaded = load_model(text, mmproj=mm)
    assert loaded.config == c and loaded.mmproj == mm
    sp = spm.SentencePieceProcessor(model_proto=(folder / "tokenizer.model").read_bytes())
    sample = "The quick brown fox? Yes, no, maybe."
    assert loaded.tokenizer.encode(sample, add_bos=False) == sp.encode(sample)


@torch.no_grad()
def test_logits_and_greedy_match_transformers_f32(pair):
    model, _, files = pair
    ours = load_model(files["f32"][0], mmproj=files["f32"][1])
    ref = as_stored_f32(model, files["f32"])
    ids, types, pix = image_prompt(model)
    assert len(ids) > TEXT["sliding_window"]
    want = vo.hf_logits(ref, ids, types, pix)
    got, _ = ours.model(torch.tensor([ids]), torch.arange(len(ids)), None, pix)
    assert (got[0] - want).abs().max().item() < 1e-4
    assert generate(ours.model, ids, 32, pixels=pix) == vo.hf_generate(ref, ids, types, pix, 32)


# Against transformers' own float32 weights, a model read from F16 files differs by the float16 rounding of its
# weights: measured 1.5e-3 of the logits' largest magnitude on this model (2026-11-30); the bound is 10x that.
F16_RELATIVE = 1.5e-2


@torch.no_grad()
def test_logits_match_transformers_f16(pair):
    model, _, files = pair
    text, mm = files["f16"]
    assert Q.F16 in stored_types(text).values() and Q.F16 in stored_types(mm).values()
    ours = load_model(text, mmproj=mm)
    ids, types, pix = image_prompt(model)
    want = vo.hf_logits(model, ids, types, pix)
    got, _ = ours.model(torch.tensor([ids]), torch.arange(len(ids)), None, pix)
    assert 0 < (got[0] - want).abs().max().item() < F16_RELATIVE * want.abs().max().item()
    assert (got[0].argmax(-1) == want.argmax(-1)).float().mean().item() > 0.9


def test_onnx_export_of_the_pair_runs_as_transformers(pair, tmp_path, capsys):
    """`gemma-export export --target onnx --model text.gguf --mmproj mm.gguf`: the folder's manifest names both
    files, its normalisation is the mmproj's, runtime_py computes transformers' logits on the image prompt, and
    `validate` reloads the reference from the manifest alone."""
    model, _, files = pair
    text, mm = files["f32"]
    out = tmp_path / "onnx"
    assert main(["export", "--target", "onnx", "--model", str(text), "--mmproj", str(mm), "--quant", "fp32",
                 "--no-validate", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == summary["source"] == str(text)
    assert manifest["source_mmproj"] == summary["source_mmproj"] == str(mm)
    assert manifest["vision"]["mean"] == pytest.approx(vo.IMAGE_MEAN)
    assert manifest["vision"]["std"] == pytest.approx(vo.IMAGE_STD)
    normalize = next(t["operation"]["attrs"] for t in json.loads((out / "processor_config.json").read_text())
                     ["processor"]["transforms"] if t["operation"]["type"] == "Normalize")
    assert normalize["mean"] == pytest.approx(vo.IMAGE_MEAN) and normalize["std"] == pytest.approx(vo.IMAGE_STD)

    ref = as_stored_f32(model, files["f32"])
    ids, types, pix = image_prompt(model)
    want = vo.hf_logits(ref, ids, types, pix).numpy()
    art = runtime_py.load(out)
    got = art.backend.logits(ids, art.backend.encode_images(pix.numpy()))
    assert np.abs(got - want).max() < 1e-4

    assert main(["validate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == str(text) and report["source_mmproj"] == str(mm) and report["passed"]
    missing = tmp_path / "missing.gguf"
    assert main(["validate", str(out), "--mmproj", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_markers_default_to_gemma3s_without_the_pieces(pair, tmp_path):
    """A text GGUF whose vocabulary lacks the image markers: the ids are Gemma3Config's defaults."""
    _, _, files = pair
    text_model = hf_model("gemma3", hidden_size=vo.GGUF_TEXT["hidden_size"])
    text = write_tiny(tmp_path / "text.gguf", text_model, "gemma3")          # a vocabulary of <t0> ... <t159>
    c = read_config(text, mmproj=files["f32"][1])
    defaults = tf.Gemma3Config()
    assert (c.image_token_id, c.boi_id, c.eoi_id) == (
        defaults.image_token_index, defaults.boi_token_index, defaults.eoi_token_index)


def _refusals(pair, tmp_path):
    model, folder, files = pair
    text, mm = files["f32"]
    gemma2 = write_tiny(tmp_path / "gemma2.gguf", hf_model("gemma2"), "gemma2")
    wide = write_tiny(tmp_path / "wide.gguf", hf_model("gemma3"), "gemma3")      # hidden 64, the projection 48
    return [
        ((folder, mm), str(folder)),                        # --mmproj with a Hugging Face folder
        ((gemma2, mm), str(gemma2)),                        # a text GGUF that is not Gemma 3
        ((wide, mm), str(mm)),                              # the projection's width is not the text model's
        ((text, tmp_path / "missing.gguf"), str(tmp_path / "missing.gguf")),
        ((mm, text), str(mm)),                              # the two files swapped
    ]


def test_bad_pairs_are_refused_with_the_file_named(pair, tmp_path, capsys):
    for (model, mmproj), named in _refusals(pair, tmp_path):
        with pytest.raises(CheckpointError) as e:
            read_config(model, mmproj=mmproj)
        assert named in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(CheckpointError):
            load_model(model, mmproj=mmproj)
        out = tmp_path / "out"
        assert main(["export", "--target", "onnx", "--model", str(model), "--mmproj", str(mmproj), "--no-validate",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and len(err.splitlines()) == 1 and not out.exists()
        assert main(["generate", "--model", str(model), "--mmproj", str(mmproj), "--prompt", "hi"]) == 2
        assert named in capsys.readouterr().err


def test_preprocessor_config_is_checked(pair, tmp_path):
    """A Hugging Face folder's preprocessor_config.json must describe the images the tower takes."""
    _, folder, _ = pair
    bad = tmp_path / "hf"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    for edit, named in ((dict(resample=3), "resample 3 (bicubic)"), (dict(size={"height": 32, "width": 32}), "size"),
                        (dict(image_std=[0.5, 0.0, 0.5]), "image_std"), (dict(image_mean=[0.5]), "image_mean")):
        (bad / "preprocessor_config.json").write_text(json.dumps({**pre, **edit}))
        with pytest.raises(CheckpointError) as e:
            read_config(bad)
        assert named in str(e.value) and "preprocessor_config.json" in str(e.value)
    (bad / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    assert (read_config(bad).image_mean, read_config(bad).image_std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

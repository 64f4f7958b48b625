"""The mmproj reader (Gemma 3 vision: SigLIP tower + projector) against llama.cpp's own converter: a tiny random
transformers Gemma3ForConditionalGeneration, saved as a published-layout HF folder, converted with
convert_hf_to_gguf.py --mmproj (llama-cpp-python 0.3.36's vendored copy) at every --outtype; every tensor read back
must be transformers' own (to the stored type's precision), the facts its config's, and transformers, given
only what we read, must compute the same image features."""
import gguf
import numpy as np
import pytest
import torch
import transformers as tf
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file

from export.models.checkpoints.gguf_mmproj import load_mmproj, tensor_names
from export.models.checkpoints.gguf_writer import _copied_metadata
from export.models.checkpoints.weights import CheckpointError

from llama_cpp_converter import convert
from vision_oracle import GGUF_TEXT, IMAGE_MEAN, IMAGE_STD, gemma3_vlm, published_state_dict, save_vlm_folder

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """(model, {outtype: mmproj path}) for a model pooling 4 x 4 patches into 2 x 2 tokens."""
    root = tmp_path_factory.mktemp("vlm")
    model = gemma3_vlm(tokens_per_image=4)
    folder = save_vlm_folder(model, root / "hf")
    return model, {o: convert(folder, root / f"mmproj-{o}.gguf", o, mmproj=True) for o in OUTTYPES}


ROUNDED = {Q.F32: lambda w: w, Q.F16: lambda w: w.half().float(), Q.BF16: lambda w: w.bfloat16().float()}


def check_tensors(model, path, tensors):
    """Every tensor read equals transformers' rounded to the type the file stores it in (gguf-py tells the type,
    tensor_names names it); Q8_0 within half a step of its block's scale (max |w| / 127, itself float16);
    the soft-embedding norm, stored as 1 + w in float32, within that float32 rounding."""
    ref = {n: t for n, t in published_state_dict(model).items() if not n.startswith("language_model.")}
    assert set(tensors) == set(ref)
    names = tensor_names(model.config.vision_config.num_hidden_layers)
    kinds = {names[t.name]: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    for name, want in ref.items():
        got = tensors[name]
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        if name.endswith("mm_soft_emb_norm.weight"):
            assert kinds[name] == Q.F32
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        elif kinds[name] == Q.Q8_0:
            assert 0 < (got - want).abs().max() <= want.abs().max() / 127 * 0.6, name
        else:
            assert torch.equal(got, ROUNDED[kinds[name]](want)), (name, kinds[name])


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_every_tensor_is_transformers_own(vlm, outtype):
    model, paths = vlm
    tensors, _ = load_mmproj(paths[outtype], text_hidden_size=GGUF_TEXT["hidden_size"])
    check_tensors(model, paths[outtype], tensors)


def test_the_files_hold_every_type_read(vlm):
    """The four conversions between them store F32, F16, BF16 and Q8_0 tensors (the converter picks per tensor)."""
    _, paths = vlm
    kinds = {t.tensor_type for p in paths.values() for t in gguf.GGUFReader(p).tensors}
    assert kinds == {Q.F32, Q.F16, Q.BF16, Q.Q8_0}


def expected_facts(model) -> dict:
    v, c = model.config.vision_config, model.config
    return dict(projector_type="gemma3", image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.hidden_size,
                intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
                num_attention_heads=v.num_attention_heads, num_channels=v.num_channels, hidden_act=v.hidden_act,
                mm_tokens_per_image=c.mm_tokens_per_image, text_hidden_size=c.text_config.hidden_size,
                pool_kernel=model.model.multi_modal_projector.kernel_size)


@torch.no_grad()
def test_facts_rebuild_the_same_image_features(vlm, tmp_path):
    """transformers, given only the facts and tensors we read (saved as a published-layout folder), computes
    the image features of the source model on a random image."""
    model, paths = vlm
    tensors, facts = load_mmproj(paths["f32"])
    for key, value in expected_facts(model).items():
        assert facts[key] == value, key
    assert facts["layer_norm_eps"] == pytest.approx(model.config.vision_config.layer_norm_eps, rel=1e-6)
    assert facts["image_mean"] == pytest.approx(IMAGE_MEAN) and facts["image_std"] == pytest.approx(IMAGE_STD)

    vision = {k: facts[k] for k in ("image_size", "patch_size", "hidden_size", "intermediate_size",
                                    "num_hidden_layers", "num_attention_heads", "num_channels", "hidden_act",
                                    "layer_norm_eps")}
    cfg = tf.Gemma3Config(vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision),
                          text_config=dict(model_type="gemma3_text", **{**GGUF_TEXT, "hidden_size": facts["text_hidden_size"]}),
                          mm_tokens_per_image=facts["mm_tokens_per_image"])
    cfg.save_pretrained(tmp_path)
    text = {n: t for n, t in published_state_dict(model).items() if n.startswith("language_model.")}
    save_file({**tensors, **text}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    rebuilt = tf.Gemma3ForConditionalGeneration.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    want = model.get_image_features(pixels, return_dict=True).pooler_output
    got = rebuilt.get_image_features(pixels, return_dict=True).pooler_output
    assert got.shape == want.shape == (2, facts["mm_tokens_per_image"], facts["text_hidden_size"])
    # the file's projection is float16 (the converter forces it): the features differ by that rounding only
    assert ((got - want).norm() / want.norm()).item() < 2e-3


def test_default_pool_of_four(tmp_path):
    """The converter omits the pool kernel when it is 4 (llama.cpp's default for Gemma 3): 4 x 4 patches -> 1 token."""
    model = gemma3_vlm(tokens_per_image=1, seed=1)
    path = convert(save_vlm_folder(model, tmp_path / "hf"), tmp_path / "mmproj.gguf", "f32", mmproj=True)
    assert "clip.vision.projector.scale_factor" not in gguf.GGUFReader(path).fields
    tensors, facts = load_mmproj(path)
    assert facts["pool_kernel"] == 4 and facts["mm_tokens_per_image"] == 1
    check_tensors(model, path, tensors)


# --- files edited after conversion ------------------------------------------------------------------

def rewrite(src, dst, *, rename=None, drop=(), add=None, meta=None, arch="clip"):
    """A copy of `src` with tensors renamed / dropped / added (float32 arrays, torch shape) and metadata replaced."""
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(None, arch)
    meta = meta or {}
    for key, value, vtype, sub in _copied_metadata(reader):
        if key not in meta:
            w.add_key_value(key, value, *((gguf.GGUFValueType.ARRAY, sub or vtype) if isinstance(value, list)
                                          else (vtype, None)))
    for key, value in meta.items():
        w.add_key_value(key, value, gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.BOOL)
    for t in reader.tensors:
        if t.name not in drop:
            w.add_tensor((rename or {}).get(t.name, t.name), np.array(t.data), raw_dtype=t.tensor_type)
    for name, array in (add or {}).items():
        w.add_tensor(name, np.asarray(array, np.float32))
    w.write_header_to_file(dst)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_older_script_ffn_order_is_undone(vlm, tmp_path):
    """examples/llava/gemma3_convert_encoder_to_gguf.py stored fc1 as ffn_down and fc2 as ffn_up."""
    model, paths = vlm
    swap = {f"v.blk.{i}.{a}.{s}": f"v.blk.{i}.{b}.{s}" for i in range(2) for s in ("weight", "bias")
            for a, b in (("ffn_up", "ffn_down"), ("ffn_down", "ffn_up"))}
    path = rewrite(paths["f32"], tmp_path / "legacy.gguf", rename=swap)
    tensors, _ = load_mmproj(path)
    check_tensors(model, path, tensors)


@pytest.mark.parametrize("edit, named", [
    (dict(arch="gemma3"), "general.architecture 'gemma3'"),                                  # a text GGUF
    (dict(meta={"clip.projector_type": "mlp"}), "projector type 'mlp'"),                   # LLaVA's projector
    (dict(meta={"clip.use_gelu": False}), "clip.use_gelu"),
    (dict(drop=("v.blk.1.attn_k.weight",)), "vision_tower.vision_model.encoder.layers.1.self_attn.k_proj.weight"),
    (dict(drop=("v.blk.0.attn_q.weight",), add={"v.blk.0.attn_q.weight": np.zeros((64, 32))}), "v.blk.0.attn_q.weight"),
    (dict(add={"v.blk.0.attn_qkv.weight": np.zeros((192, 64))}), "v.blk.0.attn_qkv.weight"),  # unknown kind
    (dict(add={"v.blk.2.ln1.weight": np.zeros(64)}), "v.blk.2.ln1.weight"),                    # beyond block_count
    (dict(drop=("mm.input_projection.weight",), add={"mm.input_projection.weight": np.zeros((64, 96))}),
     "mm.input_projection.weight"),                                                             # != projection_dim
])
def test_bad_files_are_named(vlm, tmp_path, edit, named):
    path = rewrite(vlm[1]["f32"], tmp_path / "bad.gguf", **edit)
    with pytest.raises(CheckpointError) as e:
        load_mmproj(path)
    assert named in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_projection_narrower_than_the_text_model_is_named(vlm):
    path = vlm[1]["f32"]
    with pytest.raises(ValueError) as e:
        load_mmproj(path, text_hidden_size=64)
    assert "mm.input_projection.weight" in str(e.value) and str(path) in str(e.value) and "64" in str(e.value)


@pytest.mark.parametrize("content, named", [(None, "no such file"), (b"PK\x03\x04 not a gguf" * 10, "not a readable GGUF")])
def test_missing_or_unreadable_file_is_named(tmp_path, content, named):
    path = tmp_path / "mmproj.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_mmproj(path)
    assert str(path) in str(e.value) and named in str(e.value)

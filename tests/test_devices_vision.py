"""`gemma-export profile` on vision-language artifacts (an ONNX vision folder, a LiteRT vision folder and its
.litertlm bundle; tiny random Gemma 3): the image's encode reported apart from prefill and decode, one encode
per image, in the JSON and the Markdown; the estimate's encoder FLOPs against torch's own count on transformers'
model, the decode bytes (the decoder's only) and the encode scaled by the device's peak."""
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import runtime_py
import vision_oracle as vo
from devices.estimate import calibrate, device, estimate, peak_gflops, weight_bytes
from devices.vision import encoder_flops, image_prompt, text_config
from export.cli import main
from export.converters.artifact import as_plain
from export.converters.litert import export_litert
from export.converters.litert.bundle import BUNDLE, build_litertlm
from export.converters.onnx import export_onnx
from export.data.images import bundled_images
from export.models.checkpoints import load_model
from runtime_py.litert_vision import LiteRTVisionBackend
from runtime_py.onnx_backend import OnnxBackend

RUNS = 2
PROFILE = ["--prompt-lengths", "16,32", "--decode-tokens", "4", "--runs", str(RUNS), "--json"]


@pytest.fixture(scope="module")
def artifacts(tiny_vision, real_tokenizer_proto, tmp_path_factory):
    """{"onnx": folder, "litert": folder of .tflite files, "litertlm": the bundle built from that folder}."""
    root = tmp_path_factory.mktemp("profile_vision")
    _, loaded = tiny_vision("gemma3")
    out = {"onnx": export_onnx(loaded, root / "onnx", "fp32", 128)}
    # LiteRT-LM finds the image markers by their pieces: the real marker ids and the bundled tokenizer
    hf = vo.save_folder(vo.build("gemma3-litert"), root / "hf-litert", tokenizer=real_tokenizer_proto)
    out["litert"] = export_litert(load_model(hf), root / "litert", "fp32", (64,), 128)
    out["litertlm"] = build_litertlm(out["litert"], root / "bundle" / BUNDLE)
    return out


@pytest.fixture(scope="module")
def profiles(artifacts, request):
    """{kind: (the profile's JSON, images encoded in its runs)}, every encode counted where the backends run
    their vision graphs."""
    out = {}
    patch = pytest.MonkeyPatch()
    for kind, path in artifacts.items():
        counted = []
        for cls in (OnnxBackend, LiteRTVisionBackend):
            original = cls.__dict__["encode_images"]
            patch.setattr(cls, "encode_images", lambda self, pixels, f=original: counted.append(len(pixels)) or
                          f(self, pixels))
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            assert main(["profile", str(path), *PROFILE]) == 0
        patch.undo()
        out[kind] = json.loads(text.getvalue()), counted
    return out


@pytest.mark.parametrize("kind", ["onnx", "litert", "litertlm"])
def test_profile_reports_the_image_encode_apart_from_prefill_and_decode(artifacts, profiles, kind):
    r, counted = profiles[kind]
    assert counted == [1] * RUNS                          # the bundled image, encoded once per run
    assert r["settings"]["image"] == bundled_images()[0]["file"].name and r["settings"]["images"] == 1
    m = runtime_py.load(artifacts[kind])
    assert r["image_prompt_tokens"] == len(image_prompt(m)[1]) > m.vision.tokens.per_image
    for run in r["runs"]:
        fields = ("image_preprocess_ms", "image_encode_ms", "image_prefill_tok_s", "image_ttft_ms", "ttft_ms",
                  "decode_tok_s")
        assert all(run[k] > 0 for k in fields) and all(v > 0 for v in run["prefill_tok_s"].values())
        # the image's time to first token holds its preprocessing and encode, and its prefill besides
        assert run["image_ttft_ms"] > run["image_preprocess_ms"] + run["image_encode_ms"]
    for k in ("image_preprocess_ms", "image_encode_ms", "image_prefill_tok_s", "image_ttft_ms"):
        assert r[k] > 0
    base = Path(artifacts[kind])
    md = (base.parent / f"{base.name}.profile-host.md").read_text()
    assert "| image: encode, per image (ms) |" in md
    assert f"| image: prefill, {r['image_prompt_tokens']}-token prompt (tokens/s) |" in md


@pytest.mark.parametrize("kind", ["onnx", "litertlm"])
def test_timed_steps_with_image_rows_continue_as_generate_does(artifacts, kind):
    m = runtime_py.load(artifacts[kind])
    path, ids = image_prompt(m)
    rows = m.image_features([path])
    t = m.time_steps(ids, 3, features=rows)
    assert t.token_ids == m.generate(ids, 4, images=[path], stop_ids=()).token_ids
    assert len(t.decode_s) == 3 and 0 < t.prefill_s <= t.first_token_s


@pytest.mark.parametrize("arch", ["gemma3", "paligemma2"])
def test_encoder_flops_equal_torchs_count_on_transformers_model(tiny_vision, arch):
    ref, loaded = tiny_vision(arch)
    config = json.loads(json.dumps(as_plain(loaded.config)))
    size = vo.image_size(ref)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
        ref.model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))
    assert encoder_flops(config) == counter.get_total_flops()


def test_decode_reads_the_decoders_bytes_only(artifacts):
    onnx = artifacts["onnx"]
    assert weight_bytes(onnx) == sum(p.stat().st_size for p in onnx.iterdir() if p.name.startswith("model.onnx"))
    assert weight_bytes(artifacts["litert"]) == (artifacts["litert"] / "model.tflite").stat().st_size
    # the bundle's decoder section holds the folder's model.tflite as it is
    assert weight_bytes(artifacts["litertlm"]) == (artifacts["litert"] / "model.tflite").stat().st_size


def test_estimate_scales_the_hosts_encode_by_peak_compute(artifacts, profiles):
    host_profile, _ = profiles["onnx"]
    full = json.loads((artifacts["onnx"] / "manifest.json").read_text())["config"]
    config, flops = text_config(full), encoder_flops(full)
    host = {"bandwidth_gbs": 10.0, "gflops": 50.0}
    cal = calibrate(host_profile, config, weight_bytes(artifacts["onnx"]), host, encoder=flops)
    dev = device("pixel-8")
    est = estimate(dev, config, weight_bytes(artifacts["onnx"]), cal, threads=4, encoder=flops)
    want = host_profile["image_encode_ms"] * host["gflops"] / peak_gflops(dev, 4)
    assert est["image_encode_ms"] == pytest.approx(want, rel=2e-3, abs=0.05)
    assert est["image_ttft_ms"] > est["image_encode_ms"]
    no_image = calibrate({k: v for k, v in host_profile.items() if not k.startswith("image_")}, config, 1, host,
                         encoder=flops)
    assert estimate(dev, config, 1, no_image, encoder=flops)["image_encode_ms"] is None


def test_estimate_cli_on_a_vision_bundle_reports_the_encode(artifacts, profiles, tmp_path):
    calibration = tmp_path / "host.json"
    calibration.write_text(json.dumps(profiles["litertlm"][0]))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["profile", str(artifacts["litertlm"]), "--device", "pixel-8", "--estimate", "--calibration",
                     str(calibration), "--out", str(tmp_path / "est"), "--json"]) == 0
    r = json.loads(text.getvalue())
    assert r["image_encode_ms"] > 0 and r["decode_tok_s"] > 0
    assert "image encode" in (tmp_path / "est.md").read_text()

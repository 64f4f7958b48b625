"""What the vision graph's storage costs (`--vision-quant fp32|fp16|int8`), at the real shapes: the SigLIP
So400m/14 tower + projector of Gemma 3 4B (896 px, 256 rows of 2560) and of PaliGemma 2 3B (224 px, 256 rows of
2304), random weights (normal, std 0.02; LayerNorms 1 / 0; no checkpoint is reachable here), each stored three
ways: file size, export time, one image's encode time in onnxruntime (CPU), and the rows' relative RMS error
against the float32 reference module. The errors are those of random weights: a real checkpoint's activations
(outlier channels) may round worse.

    python -m bench.vision_quant [--presets gemma3-4b-vision,paligemma2-3b-224] [--out DIR]

Writes DIR/vision_quant.json (default bench/results/)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUANTS = ("fp32", "fp16", "int8")


def random_vision_model(name: str, seed: int = 0):
    """The preset's VisionLanguageModel with a random tower and projector; its decoder stays on the meta device."""
    from export.models import preset
    from export.models.vlm import VisionLanguageModel
    with torch.device("meta"):
        model = VisionLanguageModel(preset(name))
    g = torch.Generator().manual_seed(seed)
    for part in (model.vision_tower, model.multi_modal_projector):
        part.to_empty(device="cpu")
        for pname, p in part.named_parameters():
            with torch.no_grad():
                if p.dim() == 1:
                    p.fill_(1.0 if pname.endswith("norm1.weight") or pname.endswith("norm2.weight")
                            or pname.endswith("post_layernorm.weight") else 0.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def measure(name: str, folder: Path) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from export.converters.onnx.vision import build_vision
    model = random_vision_model(name)
    S = model.config.vision.image_size
    pixels = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        want = model.image_features(pixels).numpy()
    rows = []
    for quant in QUANTS:
        t0 = time.perf_counter()
        proto = build_vision(model, quant)
        export_s = time.perf_counter() - t0
        path = folder / f"{name}-{quant}.onnx"
        onnx.save_model(proto, str(path), save_as_external_data=proto.ByteSize() > 2 ** 31 - 1)
        del proto
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {"pixel_values": pixels.numpy()})               # warm-up
        times = []
        for _ in range(2):                    # the faster of two (a shared machine's load comes and goes)
            t0 = time.perf_counter()
            (got,) = session.run(None, {"pixel_values": pixels.numpy()})
            times.append(time.perf_counter() - t0)
        encode_s = min(times)
        err = float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))
        size = sum(p.stat().st_size for p in folder.glob(f"{name}-{quant}.onnx*"))
        rows.append({"preset": name, "quant": quant, "image_size": S, "mb": round(size / 1e6, 1),
                     "export_s": round(export_s, 1), "encode_s": round(encode_s, 2), "relative_error": err,
                     "load_average_1min": round(os.getloadavg()[0], 2)})
        print(json.dumps(rows[-1]), flush=True)
        del session
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="gemma3-4b-vision,paligemma2-3b-224")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            rows += measure(name, Path(tmp))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_average": os.getloadavg()},
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "rows": rows}
    out = Path(args.out) / "vision_quant.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

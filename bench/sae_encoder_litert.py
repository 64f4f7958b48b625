"""What `--sae-encoder int8` costs on LiteRT, the encoder alone: a random JumpReLU SAE of Gemma Scope 2's 270M shape
(bench.sae_cost's, resid_post of the middle layer) converted as the SAE signatures hold it (export.converters.litert
.sae: FULLY_CONNECTED + JumpReLU + TOPK_V2), once left float32 and once stored as --sae-encoder int8 stores it (the
same quantizer call), both fed the bundled 270M's float hidden states at that layer over the first 512 tokens of
export/data/validation.txt and run by ai_edge_litert (XNNPACK). Reported: the int8 encoder's top-k agreement with the
float one (mean Jaccard of the index sets per position, share of positions with equal sets), the float one's largest
difference from numpy's JumpReLU on the same states, and the encoder's bytes in each file.

    python -m bench.sae_encoder_litert [--width 16384] [--k 16] [--tokens 512] [--out DIR]

Writes DIR/sae_encoder_litert.json (default bench/results/). Light: no model conversion (the encoder alone)."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .sae_cost import ROOT, random_sae_folder


class _Encoder(torch.nn.Module):
    def __init__(self, encoders, k: int):
        super().__init__()
        self.encoders, self.k = encoders, k

    def forward(self, x):
        from runtime_py.contract import SAE_INDICES, SAE_VALUES
        values, indices = torch.topk(self.encoders(0, x), self.k, dim=-1)
        return {SAE_VALUES.format(n=0): values, SAE_INDICES.format(n=0): indices.to(torch.int32)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    import litert_torch

    from export.converters.litert import save_model
    from export.converters.litert.quantize import quantize_tflite
    from export.converters.litert.sae import SaeEncoders
    from export.models.checkpoints import load_model
    from export.models.sae import SaeRequest, encode, load_sae
    from export.quantize.recipes import recipe
    from runtime_py.contract import SAE_INDICES, SAE_VALUES
    from runtime_py.litert_compiled import Signature, compile_tflite

    loaded = load_model()
    layer = loaded.config.num_layers // 2
    root = Path(tempfile.mkdtemp(prefix="sae-encoder-"))
    sae = load_sae(random_sae_folder(root, loaded, layer, args.width))
    ids = loaded.tokenizer.encode((ROOT / "export" / "data" / "validation.txt").read_text())[:args.tokens]
    seen = []
    owner = loaded.model.model.layers[layer]
    owner.taps["output"] = lambda x: (seen.append(x), x)[1]
    try:
        with torch.no_grad():
            loaded.model(torch.tensor([ids]), torch.arange(len(ids)))
    finally:
        owner.taps.pop("output")
    x = seen[0].float()
    del loaded
    module = _Encoder(SaeEncoders([sae]), args.k).eval()
    edge = litert_torch.convert(module, (torch.zeros_like(x),))
    save_model(edge, root / "fp32.tflite")
    quantize_tflite(root / "fp32.tflite", root / "int8.tflite", recipe("fp32", "litert"),
                    sae=SaeRequest([sae], args.k, "int8"))
    tops = {}
    for name in ("fp32", "int8"):
        model = compile_tflite(root / f"{name}.tflite", threads=2)
        (sig,) = (Signature(model, n) for n in model.get_signature_list())
        out = sig(**{next(iter(sig.inputs)): x.numpy()})
        tops[name] = out[SAE_INDICES.format(n=0)][0]
        if name == "fp32":
            acts = encode(sae, x)[0].double().numpy()
            want = np.take_along_axis(acts, tops[name].astype(np.int64), -1)
            fp32_err = float(np.abs(want - out[SAE_VALUES.format(n=0)][0]).max())
    jac = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(tops["fp32"], tops["int8"])]
    result = {"layer": layer, "width": args.width, "k": args.k, "tokens": len(ids),
              "fp32_vs_numpy_max_abs": fp32_err,
              "file_bytes": {n: (root / f"{n}.tflite").stat().st_size for n in ("fp32", "int8")},
              "int8_topk": {"mean_jaccard": round(float(np.mean(jac)), 4),
                            "equal_sets": round(float(np.mean([j == 1.0 for j in jac])), 4)}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sae_encoder_litert.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

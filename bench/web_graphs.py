"""How to drive a causal ONNX folder's graph one token at a time (tools/web/pages/ort_generate.mjs in the browser,
bench.web_decode.native natively): ours (`--target web`, manifest.json: every cache starts empty) or onnxruntime-genai's
builder output (genai_config.json: its sliding-window layers keep a window-long cache, which onnxruntime-genai's
runtime allocates up front; the others start empty and grow)."""
from __future__ import annotations

from pathlib import Path

import onnx

from runtime_py.files import read_json


def graph_of(folder: Path) -> dict:
    """{maker, file (the graph, relative to the folder), external (its external data files, names beside it),
    caches ({past name: [kv heads, length, head size]} of the first call; None: all empty), bytes (graph + data)}."""
    if (folder / "manifest.json").exists():
        maker, file, caches = "gemma-export", read_json(folder / "manifest.json")["model_file"], None
    elif (folder / "genai_config.json").exists():
        maker, (file, caches) = "onnxruntime-genai", _genai_caches(read_json(folder / "genai_config.json"))
    else:
        raise ValueError(f"{folder}: neither manifest.json (gemma-export) nor genai_config.json (onnxruntime-genai)")
    path = folder / file
    graph = onnx.load(str(path), load_external_data=False)
    external = sorted({e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"})
    return {"maker": maker, "file": file, "external": external, "caches": caches,
            "bytes": path.stat().st_size + sum((path.parent / n).stat().st_size for n in external)}


def _genai_caches(config: dict) -> tuple[str, dict]:
    decoder = config["model"]["decoder"]
    sliding = decoder.get("sliding_window") or {}
    window = sliding.get("window_size", 0) + sliding.get("cache_slack", 0)
    caches = {}
    for layer in range(decoder["num_hidden_layers"]):
        length = window if layer in sliding.get("layers", ()) else 0
        for names in (decoder["inputs"]["past_key_names"], decoder["inputs"]["past_value_names"]):
            caches[names % layer] = [decoder["num_key_value_heads"], length, decoder["head_size"]]
    return decoder["filename"], caches

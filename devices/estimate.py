"""Roofline ESTIMATES of prefill and decode speed on catalogue devices (devices/catalogue.json), from the
artifact's bytes and FLOPs per token -- not measurements.

    decode tok/s  = e_bw    x bandwidth        / bytes read per token (every weight once + the KV cache read)
    prefill tok/s = e_flops x peak CPU FLOP/s  / FLOPs per token (2 per weight + attention over the prompt)

The efficiencies e_bw and e_flops are calibrated on this host: a host profile of the same artifact against
the host's measured copy bandwidth (numpy) and matmul throughput (numpy/BLAS). The error is stated twice: on
the host, the longest prompt's prefill predicted from the calibration at the shortest one; on devices with
published figures (catalogue 'reference'), the same model predicting those figures.
"""
from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path

import numpy as np

from .measure import attended_positions, bandwidth_gb_s, kv_bytes as kv_read
from .vision import decoder_bytes

WEIGHT_SUFFIXES = (".onnx", ".data", ".tflite", ".litertlm")


def catalogue() -> dict:
    return json.loads(resources.files("devices").joinpath("catalogue.json").read_text())["devices"]


def device(name: str) -> dict:
    devices = catalogue()
    if name not in devices:
        raise ValueError(f"--device {name}: not in devices/catalogue.json; known: host, adb[:SERIAL], "
                         f"{', '.join(devices)}")
    return {"id": name, **devices[name]}


def peak_gflops(dev: dict, threads: int) -> float:
    """fp32 peak of the `threads` fastest cores (GFLOP/s)."""
    cores = sorted((c["ghz"] * c["flops_per_cycle"] for c in dev["cpu"] for _ in range(c["count"])), reverse=True)
    return sum(cores[:threads])


def weight_bytes(artifact: str | Path) -> int:
    """Bytes of the model file(s): what decode streams from memory every token (a .litertlm minus the
    tokenizer.model stored in it, counted from the copy beside it; a vision-language artifact's decoder only)."""
    artifact = Path(artifact)
    decoder = decoder_bytes(artifact)
    if decoder is not None:
        return decoder
    files = [artifact] if artifact.is_file() else [p for p in artifact.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    total = sum(p.stat().st_size for p in files)
    tok = (artifact.parent if artifact.is_file() else artifact) / "tokenizer.model"
    if any(p.suffix == ".litertlm" for p in files) and tok.exists():
        total -= tok.stat().st_size
    return total


def per_token(config: dict, weights: int, context: float, kv_bytes: int = 4) -> dict:
    """Bytes read and FLOPs per token at a mean attended context of `context` positions. config: the manifest's
    model config (hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim, layer_types,
    sliding_window, vocab_size)."""
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    h, g, hd = config["num_heads"], config["num_kv_heads"], config["head_dim"]
    linear = len(config["layer_types"]) * (d * hd * (2 * h + 2 * g) + 3 * d * f) + v * d   # q,o,k,v, MLP, LM head
    return {"bytes": weights + kv_read(config, context, kv_bytes),                # every weight + K and V read
            "flops": 2 * linear + attended_positions(config, context) * 4 * h * hd}   # QK^T and PV


def _best_time(fn, seconds: float, at_least: int = 3) -> float:
    best, n, end = float("inf"), 0, time.perf_counter() + seconds
    while n < at_least or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best, n = min(best, time.perf_counter() - t), n + 1
    return best


def measure_host(threads: int | None = None, seconds: float = 0.5) -> dict:
    """This machine's copy bandwidth (GB/s, read + write counted; devices.measure) with `threads` threads (None:
    every core) and fp32 matmul throughput (GFLOP/s, the best of repeated 1024^2 matmuls)."""
    bandwidth = bandwidth_gb_s(threads or os.cpu_count() or 1)["copy"]
    m = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    gflops = 2 * 1024 ** 3 / _best_time(lambda: m @ m, seconds) / 1e9
    return {"bandwidth_gbs": round(bandwidth, 2), "gflops": round(gflops, 2)}


def _err(predicted: float, measured: float) -> float:
    return round(100 * (predicted - measured) / measured, 1)


def calibrate(host_profile: dict, config: dict, weights: int, host: dict, kv_bytes: int = 4,
              encoder: int | None = None) -> dict:
    """Efficiencies from a host profile (devices.host) of the artifact, and the host's own error. encoder: a
    vision-language artifact's FLOPs per image (devices.vision.encoder_flops): e_encode from the measured encode."""
    s = host_profile["settings"]
    prefill = {int(n): v for n, v in host_profile["prefill_tok_s"].items()}
    first, last = min(prefill), max(prefill)
    decode_ctx = first + s["decode_tokens"] / 2
    e_bw = host_profile["decode_tok_s"] * per_token(config, weights, decode_ctx, kv_bytes)["bytes"] / (
        host["bandwidth_gbs"] * 1e9)
    e_flops = prefill[first] * per_token(config, weights, first / 2, kv_bytes)["flops"] / (host["gflops"] * 1e9)
    out = {"host": host, "e_bw": round(e_bw, 4), "e_flops": round(e_flops, 4), "host_check": None}
    if encoder and host_profile.get("image_encode_ms"):
        out["e_encode"] = round(encoder / (host_profile["image_encode_ms"] / 1e3 * host["gflops"] * 1e9), 6)
        out["image_prompt_tokens"] = host_profile.get("image_prompt_tokens")
    if last != first:
        predicted = e_flops * host["gflops"] * 1e9 / per_token(config, weights, last / 2, kv_bytes)["flops"]
        out["host_check"] = {"what": f"prefill at {last} tokens, from the calibration at {first}",
                             "predicted_tok_s": round(predicted, 2), "measured_tok_s": prefill[last],
                             "error_pct": _err(predicted, prefill[last])}
    return out


def estimate(dev: dict, config: dict, weights: int, cal: dict, *, threads: int = 4, prompt: int = 128,
             decode_tokens: int = 128, kv_bytes: int = 4, encoder: int | None = None) -> dict:
    """Estimated prefill / decode tok/s of the artifact on `dev`, and the model's error on its references.
    encoder (a vision-language artifact's FLOPs per image): the image's encode, compute-bound at the efficiency
    the host's measured encode gives (calibrate), and the time to first token of the image's prompt."""
    flops_s, bw = peak_gflops(dev, threads) * 1e9, dev["bandwidth_gbs"] * 1e9
    dec = per_token(config, weights, prompt + decode_tokens / 2, kv_bytes)
    pre = per_token(config, weights, prompt / 2, kv_bytes)
    checks = []
    for ref in dev.get("reference", []):
        # a published model: 2 FLOPs per parameter, its file streamed per token (attention and KV neglected)
        p = cal["e_flops"] * peak_gflops(dev, ref.get("threads", threads)) * 1e9 / (2 * ref["params"])
        d = cal["e_bw"] * bw / ref["bytes"]
        checks.append({"model": ref["model"], "source": ref["source"],
                       "prefill": {"predicted_tok_s": round(p, 1), "published_tok_s": ref["prefill_tok_s"],
                                   "error_pct": _err(p, ref["prefill_tok_s"])},
                       "decode": {"predicted_tok_s": round(d, 1), "published_tok_s": ref["decode_tok_s"],
                                  "error_pct": _err(d, ref["decode_tok_s"])}})
    return {"kind": "ESTIMATE (roofline, not a measurement)", "device": dev["id"], "name": dev["name"],
            "soc": dev["soc"], "threads": threads, "bandwidth_gbs": dev["bandwidth_gbs"],
            "bandwidth_confidence": dev.get("confidence"), "peak_gflops": round(flops_s / 1e9, 1),
            "bytes_per_token": dec["bytes"], "flops_per_token": pre["flops"], "calibration": cal,
            "prefill_tok_s": {str(prompt): round(cal["e_flops"] * flops_s / pre["flops"], 1)},
            "decode_tok_s": round(cal["e_bw"] * bw / dec["bytes"], 1),
            "ttft_ms": round(1e3 * pre["flops"] * prompt / (cal["e_flops"] * flops_s), 1),
            "reference_checks": checks, **_image(config, weights, cal, flops_s, encoder, kv_bytes)}


def _image(config: dict, weights: int, cal: dict, flops_s: float, encoder: int | None, kv_bytes: int) -> dict:
    if not encoder:
        return {}
    if not cal.get("e_encode"):
        return {"image_encode_ms": None, "encoder_flops": encoder}
    encode_s = encoder / (cal["e_encode"] * flops_s)
    n = cal.get("image_prompt_tokens") or 0
    prefill_s = n * per_token(config, weights, n / 2, kv_bytes)["flops"] / (cal["e_flops"] * flops_s)
    return {"encoder_flops": encoder, "image_encode_ms": round(1e3 * encode_s, 1),
            "image_ttft_ms": round(1e3 * (encode_s + prefill_s), 1) if n else None, "image_prompt_tokens": n}


def markdown(e: dict) -> str:
    cal = e["calibration"]
    lines = [f"## {e['kind']}: {e['name']} ({e['soc']}, {e['threads']} threads)", "",
             f"- decode **{e['decode_tok_s']} tok/s** = {cal['e_bw']} x {e['bandwidth_gbs']} GB/s "
             f"({e['bandwidth_confidence']}) / {e['bytes_per_token'] / 1e6:.1f} MB per token",
             *[f"- prefill of {n} tokens **{v} tok/s** = {cal['e_flops']} x {e['peak_gflops']} GFLOP/s / "
               f"{e['flops_per_token'] / 1e9:.3f} GFLOP per token" for n, v in e["prefill_tok_s"].items()],
             f"- time to first token ~{e['ttft_ms']} ms",
             f"- efficiencies calibrated on this host: {cal['host']['bandwidth_gbs']} GB/s copy, "
             f"{cal['host']['gflops']} GFLOP/s matmul"]
    if "image_encode_ms" in e:
        if e["image_encode_ms"] is None:
            lines.append("- image encode: not estimated (the host profile it is calibrated on has no image encode)")
        else:
            lines += [f"- image encode **{e['image_encode_ms']} ms** per image = {e['encoder_flops'] / 1e9:.2f} GFLOP "
                      f"(vision tower + projector) / ({cal['e_encode']} x {e['peak_gflops']} GFLOP/s): compute-bound, "
                      f"its efficiency calibrated on this host's measured encode (no published figure checks it)"]
            if e.get("image_ttft_ms"):
                lines.append(f"- time to first token with the image ~{e['image_ttft_ms']} ms (encode + prefill of the "
                             f"{e['image_prompt_tokens']}-token prompt; preprocessing left out)")
    if cal.get("host_check"):
        c = cal["host_check"]
        lines.append(f"- error on the host: {c['what']}: {c['predicted_tok_s']} vs {c['measured_tok_s']} tok/s "
                     f"measured ({c['error_pct']:+}%)")
    for c in e["reference_checks"]:
        lines.append(f"- error against published figures, {c['model']}: prefill {c['prefill']['predicted_tok_s']} "
                     f"vs {c['prefill']['published_tok_s']} ({c['prefill']['error_pct']:+}%), decode "
                     f"{c['decode']['predicted_tok_s']} vs {c['decode']['published_tok_s']} "
                     f"({c['decode']['error_pct']:+}%) [{c['source']}]")
    return "\n".join(lines)

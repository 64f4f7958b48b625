"""`gemma-export profile ARTIFACT --device host | adb[:SERIAL] | <catalogue device> --estimate`."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from runtime_py.files import read_json

from .host import DECODE_TOKENS, PROMPT_LENGTHS


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure an artifact on this host or a phone over adb, or estimate it "
                                       "for a catalogue device")
    p.add_argument("artifact", help="artifact folder or .litertlm / .tflite file")
    p.add_argument("--device", default="host", help="host (default), adb or adb:SERIAL, or a devices/catalogue.json "
                                                    "entry with --estimate")
    p.add_argument("--estimate", action="store_true", help="roofline estimate for a catalogue device, calibrated "
                                                           "on a host profile")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (host: runtime default; adb: 4)")
    p.add_argument("--no-spin", dest="spin", action="store_false",
                   help="host, ONNX: idle threads sleep instead of spinning (faster when other jobs share the cores)")
    p.add_argument("--runs", type=int, default=3, help="runs; the median is reported (default 3)")
    p.add_argument("--prompt-lengths", default=",".join(map(str, PROMPT_LENGTHS)),
                   help="prompt lengths for prefill, comma-separated (default 128,512)")
    p.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS, help="tokens decoded (default 128)")
    p.add_argument("--runner", default=None, help="adb: the litert_lm_main / benchmark_model binary to push")
    p.add_argument("--backend", default="cpu", help="adb: cpu or gpu")
    p.add_argument("--taskset", default="f0", help="adb: CPU mask to pin the runner to, or none")
    p.add_argument("--calibration", default=None, help="--estimate: a host profile JSON of this artifact "
                                                       "(default: profile it now)")
    p.add_argument("--out", default=None, help="report path without suffix (default: beside the artifact)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _lengths(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--prompt-lengths {text}: expected comma-separated integers") from None


def _progress(i, run) -> None:
    print(f"run {i + 1}: ttft {run['ttft_ms']} ms, prefill {run['prefill_tok_s']} tok/s, decode "
          f"{run['decode_tok_s']} tok/s, peak RSS {run['peak_rss_mb']} MB", file=sys.stderr)


def manifest_of(artifact: Path) -> dict:
    manifest = (artifact if artifact.is_dir() else artifact.parent) / "manifest.json"
    return read_json(manifest) if manifest.exists() else {}


def config_of(artifact: Path) -> dict:
    """The model config an artifact's manifest records (or runtime_py's reading of it); a vision-language model's
    whole config (devices.vision.text_config: its decoder's)."""
    from .vision import text_config
    config = manifest_of(artifact).get("config")
    if isinstance(config, dict) and text_config(config).get("layer_types"):
        return config
    import runtime_py
    return runtime_py.load(artifact).config


def host_estimate(artifact: Path, device_name: str, args, host_profile: dict | None = None) -> dict:
    from .estimate import calibrate, device, estimate, measure_host, weight_bytes
    from .host import profile_host
    from .vision import encoder_flops, text_config
    dev = device(device_name)
    if host_profile is None and args.calibration:
        host_profile = read_json(Path(args.calibration))
        missing = [k for k in ("settings", "prefill_tok_s", "decode_tok_s") if k not in host_profile]
        if missing:
            raise ValueError(f"--calibration {args.calibration}: not a host profile (no {', '.join(missing)})")
    if host_profile is None:
        print(f"calibrating on this host: profiling {artifact} ({args.runs} runs)", file=sys.stderr)
        host_profile = profile_host(artifact, threads=args.threads, runs=args.runs, spin=args.spin,
                                    prompt_lengths=_lengths(args.prompt_lengths), decode_tokens=args.decode_tokens,
                                    on_run=_progress)
    full, weights = config_of(artifact), weight_bytes(artifact)
    config = text_config(full)
    encoder = encoder_flops(full) if config is not full else None
    kv = 2 if manifest_of(artifact).get("recipe") == "fp16" else 4          # bytes per KV cache element
    cal = calibrate(host_profile, config, weights, measure_host(host_profile["settings"].get("threads")), kv,
                    encoder=encoder)
    prompt = min(int(n) for n in host_profile["prefill_tok_s"])
    return estimate(dev, config, weights, cal, threads=args.threads or 4, prompt=prompt,
                    decode_tokens=host_profile["settings"]["decode_tokens"], kv_bytes=kv, encoder=encoder)


def run(args) -> int:
    from .profile import artifact_bytes, markdown, write_report
    artifact = Path(args.artifact)
    if not artifact.exists():
        raise FileNotFoundError(f"{artifact}: no such file or folder")
    name = args.device
    # the device name (a serial the user typed) goes into a file name: only safe characters, never a '/'
    safe = re.sub(r"[^\w.-]", "-", name)
    base = Path(args.out) if args.out else artifact.parent / f"{artifact.name}.profile-{safe}"
    if name == "host":
        from .host import profile_host
        result = profile_host(artifact, threads=args.threads, runs=args.runs, spin=args.spin,
                              prompt_lengths=_lengths(args.prompt_lengths), decode_tokens=args.decode_tokens,
                              on_run=None if args.json else _progress)
    elif name == "adb" or name.startswith("adb:"):
        from .adb import make_plan, profile_adb
        plan = make_plan(artifact, args.runner, serial=name[4:] or None, backend=args.backend, threads=args.threads,
                         taskset=args.taskset, runs=args.runs, prompt_lengths=_lengths(args.prompt_lengths),
                         decode_tokens=args.decode_tokens)
        result = profile_adb(plan, on_run=None if args.json else _progress)
    else:
        from .estimate import device
        device(name)                                  # unknown names fail here, before any work
        if not args.estimate:
            raise ValueError(f"--device {name}: a catalogue device cannot be measured from here; add --estimate "
                             f"for a roofline estimate, or profile the phone with --device adb")
        est = host_estimate(artifact, name, args)
        result = {"artifact": str(artifact), "device": {"name": name, "estimate": True},
                  "artifact_mb": round(artifact_bytes(artifact) / 1e6, 3), **{k: est[k] for k in
                  ("ttft_ms", "prefill_tok_s", "decode_tok_s", "image_encode_ms", "image_ttft_ms") if k in est},
                  "estimate": est}
        from .estimate import markdown as estimate_markdown
        from .profile import with_suffix
        base.parent.mkdir(parents=True, exist_ok=True)
        with_suffix(base, ".json").write_text(json.dumps(result, indent=2) + "\n")
        with_suffix(base, ".md").write_text(estimate_markdown(est) + "\n")
        print(json.dumps(result, indent=2) if args.json else estimate_markdown(est))
        print(f"report: {with_suffix(base, '.md')}", file=sys.stderr)
        return 0
    paths = write_report(result, base)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    print(f"report: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0

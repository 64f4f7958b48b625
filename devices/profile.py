"""Profile results: per-run measurements -> medians under the `--json` keys, written as JSON, a Markdown
report and a PNG chart. Every profiler (host, adb) produces runs in one shape:

    {"ttft_ms": float, "prefill_tok_s": {"128": float, "512": float}, "decode_tok_s": float,
     "peak_rss_mb": float | None, "load_s": float | None}

plus, for a vision-language artifact profiled on the host, the image request's fields (devices.vision.METRICS
and "image_prompt_tokens").
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .vision import METRICS as IMAGE_METRICS

METRICS = ("ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s")
LABELS = {"ttft_ms": "time to first token (ms)", "decode_tok_s": "decode (tokens/s)",
          "peak_rss_mb": "peak RSS (MB)", "load_s": "load (s)", "artifact_mb": "artifact (MB)",
          "image_preprocess_ms": "image: preprocessing (ms)", "image_encode_ms": "image: encode, per image (ms)",
          "image_ttft_ms": "image: time to first token (ms; preprocessing + encode + prefill)"}


def artifact_bytes(path: str | Path) -> int:
    """Bytes of an artifact: a file, or every file in a folder (what ships)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict], *, artifact: str | Path, device: dict, settings: dict) -> dict:
    """The median of each metric over `runs` (prefill per prompt length), plus the runs themselves."""
    if not runs:
        raise ValueError("no profiling runs to summarize")
    lengths = sorted({int(k) for r in runs for k in r["prefill_tok_s"]})
    return {
        "artifact": str(artifact),
        "device": device,
        "settings": settings,
        "ttft_ms": _median(r["ttft_ms"] for r in runs),
        "prefill_tok_s": {str(n): _median(r["prefill_tok_s"].get(str(n)) for r in runs) for n in lengths},
        "decode_tok_s": _median(r["decode_tok_s"] for r in runs),
        "peak_rss_mb": _median(r.get("peak_rss_mb") for r in runs),
        "load_s": _median(r.get("load_s") for r in runs),
        **{k: _median(r[k] for r in runs) for k in IMAGE_METRICS if k in runs[0]},
        **({"image_prompt_tokens": runs[0]["image_prompt_tokens"]} if "image_prompt_tokens" in runs[0] else {}),
        "artifact_mb": round(artifact_bytes(artifact) / 1e6, 3),
        "runs": runs,
    }


def with_suffix(base: Path, suffix: str) -> Path:
    """`base` + suffix (base names carry dots: out/model-android-int4.profile-host)."""
    return base.parent / (base.name + suffix)


def write_report(result: dict, base: str | Path) -> dict[str, Path]:
    """`base`.json, `base`.md and `base`.png (the chart; skipped if matplotlib is missing). -> paths."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": with_suffix(base, ".json"), "md": with_suffix(base, ".md")}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    chart = with_suffix(base, ".png")
    if write_chart(result, chart):
        paths["png"] = chart
    paths["md"].write_text(markdown(result, chart.name if "png" in paths else None))
    return paths


def _fmt(v) -> str:
    return "-" if v is None else f"{v:,.2f}" if isinstance(v, float) else str(v)


def markdown(result: dict, chart: str | None = None) -> str:
    dev, runs = result["device"], result["runs"]
    lines = [f"# Profile of `{result['artifact']}`", "",
             f"Device: **{dev.get('name')}** ({', '.join(f'{k}: {v}' for k, v in dev.items() if k != 'name')})  ",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()), "",
             f"Median of {len(runs)} runs.", "",
             "| metric | median | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |",
             "|---|---|" + "---|" * len(runs)]

    def row(label, median, values):
        lines.append(f"| {label} | {_fmt(median)} | " + " | ".join(_fmt(v) for v in values) + " |")

    row(LABELS["ttft_ms"], result["ttft_ms"], [r["ttft_ms"] for r in runs])
    for n, v in result["prefill_tok_s"].items():
        row(f"prefill, {n}-token prompt (tokens/s)", v, [r["prefill_tok_s"].get(n) for r in runs])
    for key in ("decode_tok_s", "peak_rss_mb", "load_s"):
        row(LABELS[key], result[key], [r.get(key) for r in runs])
    if "image_encode_ms" in result:
        for key in IMAGE_METRICS:
            label = LABELS.get(key) or f"image: prefill, {result['image_prompt_tokens']}-token prompt (tokens/s)"
            row(label, result[key], [r.get(key) for r in runs])
    lines.append(f"| {LABELS['artifact_mb']} | {_fmt(result['artifact_mb'])} |" + " |" * len(runs))
    if chart:
        lines += ["", f"![prefill and decode speed]({chart})"]
    if result.get("estimate"):
        from .estimate import markdown as estimate_markdown
        lines += ["", estimate_markdown(result["estimate"])]
    return "\n".join(lines) + "\n"


def write_chart(result: dict, path: Path) -> bool:
    """Bars of the median prefill speeds and decode speed with each run as a dot. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [f"prefill {n}" for n in result["prefill_tok_s"]] + ["decode"]
    medians = [*result["prefill_tok_s"].values(), result["decode_tok_s"]]
    per_run = [[r["prefill_tok_s"].get(n) for r in result["runs"]] for n in result["prefill_tok_s"]]
    per_run.append([r["decode_tok_s"] for r in result["runs"]])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(names, [m or 0 for m in medians], color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    for i, values in enumerate(per_run):
        values = [v for v in values if v is not None]
        ax.plot([i] * len(values), values, "k.", markersize=5)
    ax.set_ylabel("tokens / s")
    ax.set_yscale("log")
    ax.set_title(f"{Path(result['artifact']).name} on {result['device'].get('name')}", fontsize=9)
    save_chart(fig, path)
    return True


def save_chart(fig, path: Path) -> None:
    """A matplotlib figure as a PNG with no software stamp (the same bytes for the same figures), then closed."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)

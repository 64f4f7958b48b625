"""A sweep's summary: DIR/summary.md (one row per cell: size, fidelity, speed, status) and DIR/pareto.png (artifact
size against top-1 agreement with the float model, each point colored by its host decode speed; the cells no
other cell beats on both size and top-1 joined by a line)."""
from __future__ import annotations

from pathlib import Path

from devices.profile import save_chart
from runtime_py.files import write_atomic


def _figures(r: dict) -> dict:
    """The numbers a row and a point show (None where the cell has none)."""
    v = r.get("validation") or {}
    host = (r.get("profile") or {}).get("host") or {}
    phones = (r.get("profile") or {}).get("adb") or {}
    prefill = host.get("prefill_tok_s") or {}
    return {"mb": r["bytes"] / 1e6 if r.get("bytes") else None, "top1": v.get("top1_agreement"),
            "kl": v.get("kl_divergence"), "ppl": v.get("perplexity"), "passed": v.get("passed"),
            "decode": host.get("decode_tok_s"), "prefill": max(prefill.values(), default=None, key=lambda x: x or 0),
            "phones": {s: p.get("decode_tok_s", p.get("error")) for s, p in phones.items()}}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (smaller or equal size and higher or equal top-1, one strictly),
    by size."""
    front = [i for i, (s, t) in enumerate(points)
             if not any(s2 <= s and t2 >= t and (s2, t2) != (s, t) for s2, t2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(summary: dict) -> str:
    c = summary["counts"]
    lines = [f"# Sweep of `{summary['plan']}`", "",
             f"{len(summary['cells'])} cells: {c['ok']} ok, {c['check_failed']} failed a check, {c['error']} errors; "
             f"{summary['skipped']} reused from an earlier run. Wall time {summary['wall_s']} s; the cells run now "
             f"took {summary['cell_seconds']} s one by one (each cell's own wall time, added).", "",
             "| model | target | recipe | status | MB | top-1 | KL | perplexity | host decode tok/s | "
             "host prefill tok/s | phones decode tok/s | cell s | node |", "|" + "---|" * 13]
    for r in sorted(summary["cells"], key=lambda r: (r["cell"]["model"], r["cell"]["target"], r.get("bytes") or 0)):
        f, cell = _figures(r), r["cell"]
        status = r["status"] + (" (reused)" if r.get("skipped") else "")
        if r.get("error"):
            status += f": {r['error'][:200]}".replace("|", "\\|")
        phones = ", ".join(f"{s} {_num(v, '.1f') if not isinstance(v, str) else v}" for s, v in f["phones"].items())
        lines.append(f"| {cell['model']} | {cell['target']} | {cell['recipe']} | {status} | {_num(f['mb'], '.1f')} | "
                     f"{_num(f['top1'], '.4f')} | {_num(f['kl'], '.2e')} | {_num(f['ppl'], '.3f')} | "
                     f"{_num(f['decode'], '.1f')} | {_num(f['prefill'], '.1f')} | {phones or '-'} | "
                     f"{r['seconds'].get('cell', '-')} | {r.get('node', '-')} |")
    return "\n".join(lines) + "\n\n![size vs top-1](pareto.png)\n"


def chart(summary: dict, path: Path) -> bool:
    """The Pareto chart; False when no cell has both a size and a top-1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(r, _figures(r)) for r in summary["cells"]]
    rows = [(r, f) for r, f in rows if f["mb"] and f["top1"] is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    timed = [(r, f) for r, f in rows if f["decode"] is not None]
    if timed:
        sc = ax.scatter([f["mb"] for _, f in timed], [f["top1"] for _, f in timed], c=[f["decode"] for _, f in timed],
                        cmap="viridis", s=40, zorder=3)
        fig.colorbar(sc, ax=ax, label="host decode (tokens/s)")
    untimed = [(r, f) for r, f in rows if f["decode"] is None]
    if untimed:
        ax.scatter([f["mb"] for _, f in untimed], [f["top1"] for _, f in untimed], facecolors="none",
                   edgecolors="grey", s=40, zorder=3, label="not profiled")
        ax.legend(loc="lower right", fontsize=8)
    points = [(f["mb"], f["top1"]) for _, f in rows]
    front = pareto(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8, zorder=2,
            drawstyle="steps-post", label="Pareto front")
    for r, f in rows:
        c = r["cell"]
        ax.annotate(f"{c['model']} {c['target']} {c['recipe']}", (f["mb"], f["top1"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("top-1 agreement with the float model")
    ax.set_title(f"{Path(summary['plan']).name}: size vs fidelity", fontsize=9)
    save_chart(fig, path)
    return True


def write_reports(summary: dict, out: Path) -> dict[str, str]:
    paths = {"results": str(out / "results.jsonl"), "md": str(out / "summary.md")}
    write_atomic(paths["md"], markdown(summary))
    if chart(summary, out / "pareto.png"):
        paths["png"] = str(out / "pareto.png")
    return paths

"""Medians, ratios ours/peer, the decode roofline, the printed table and the PNG chart."""
from __future__ import annotations

import statistics

from devices.measure import kv_bytes


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summarize(entries, built, samples, lengths, bandwidth: dict, meta: dict, model_config: dict) -> dict:
    """The results table: one row per entry (medians over rounds), the roofline and the ratios."""
    first = str(lengths[0])
    position = lengths[0] + meta["decode_tokens"] // 2          # mean decode position after the first prompt
    gbps = max(bandwidth.values())
    rows = []
    for e in entries:
        b = built[e.key]
        row = {"key": e.key, "label": e.label, "runtime": e.runner, "ours": e.ours, "int4": e.int4, "like": e.like}
        if "error" in b:
            rows.append({**row, "status": f"unavailable: {b['error']}"})
            continue
        good = [s for s in samples.get(e.key, []) if "error" not in s]
        errors = [s["error"] for s in samples.get(e.key, []) if "error" in s]
        row.update({"artifact": b["path"], "artifact_mb": round(b["bytes"] / 1e6, 1), "export_s": b.get("export_s"),
                    "export_peak_rss_mb": b.get("export_peak_rss_mb")})
        if not good:
            rows.append({**row, "status": f"failed: {errors[0] if errors else 'not run'}"})
            continue
        per = {L: {m: _median([s["runs"][L][m] for s in good]) for m in ("ttft_s", "prefill_tok_s", "decode_tok_s")}
               for L in good[0]["runs"]}
        read = b["bytes"] + kv_bytes(model_config, position)
        bound = gbps * 1e9 / read
        decode = per[first]["decode_tok_s"]
        row.update({"status": "ok" if not errors else f"ok ({len(errors)} failed rounds: {errors[0]})",
                    "load_s": _median([s["load_s"] for s in good]),
                    "peak_rss_mb": _median([s["peak_rss_mb"] for s in good]),
                    "decode_tok_s": decode, "by_prompt_length": per,
                    "roofline_decode_tok_s": round(bound, 1), "roofline_fraction": round(decode / bound, 3),
                    "rounds": good})
        rows.append(row)
    ok = [r for r in rows if r.get("decode_tok_s")]
    ours = [r for r in ok if r["ours"] and r["int4"]]
    peers = [r for r in ok if not r["ours"]]
    out = {**meta, "bandwidth_gb_s": bandwidth, "roofline": {
        "bandwidth_gb_s": gbps, "position": position,
        "rule": "decode tok/s bound = bandwidth / (artifact model bytes + K/V bytes read at the mean decode position)"},
        "entries": rows}
    if ours and peers:
        best = max(ours, key=lambda r: r["decode_tok_s"])
        fast = max(peers, key=lambda r: r["decode_tok_s"])
        prefill = {L: max(peers, key=lambda r: r["by_prompt_length"][L]["prefill_tok_s"]) for L in best["by_prompt_length"]}
        out.update({
            "ours_best_int4": best["key"], "fastest_peer_decode": fast["key"],
            "decode_ratio_vs_fastest_peer": round(best["decode_tok_s"] / fast["decode_tok_s"], 3),
            "fastest_peer_prefill": {L: r["key"] for L, r in prefill.items()},
            "prefill_ratio_vs_fastest_peer": round(min(
                best["by_prompt_length"][L]["prefill_tok_s"] / r["by_prompt_length"][L]["prefill_tok_s"]
                for L, r in prefill.items()), 3),
            "ratios_ours_over_peer": {p["key"]: {
                "decode": round(best["decode_tok_s"] / p["decode_tok_s"], 3),
                **{f"prefill_{L}": round(best["by_prompt_length"][L]["prefill_tok_s"]
                                         / p["by_prompt_length"][L]["prefill_tok_s"], 3) for L in best["by_prompt_length"]}}
                for p in peers},
            # each of ours against the peer with the same weight format (block size): decode and prefill ratios
            "like_for_like": {r["key"]: {"peer": r["like"], "decode": round(r["decode_tok_s"] / p["decode_tok_s"], 3),
                                         **{f"prefill_{L}": round(r["by_prompt_length"][L]["prefill_tok_s"]
                                                                  / p["by_prompt_length"][L]["prefill_tok_s"], 3)
                                            for L in r["by_prompt_length"]}}
                              for r in ours for p in peers if p["key"] == r["like"]}})
    return out


def _fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def table(results: dict) -> str:
    """A Markdown table of the results, then the ratios."""
    lens = [str(L) for L in results["prompt_lengths"]]
    head = (["entry", "size MB", "export s", "export RSS MB", "peak RSS MB"]
            + [f"TTFT {L} ms" for L in lens] + [f"prefill {L} tok/s" for L in lens]
            + [f"decode tok/s (after {lens[0]})", "roofline tok/s", "of roofline"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["entries"]:
        if "decode_tok_s" not in r:
            lines.append(f"| {r['label']} | {r['status']} |" + " |" * (len(head) - 2))
            continue
        p = r["by_prompt_length"]
        cells = ([r["label"], _fmt(r["artifact_mb"]), _fmt(r["export_s"]), _fmt(r["export_peak_rss_mb"]),
                  _fmt(r["peak_rss_mb"])] + [_fmt(p[L]["ttft_s"] * 1e3) for L in lens]
                 + [_fmt(p[L]["prefill_tok_s"]) for L in lens]
                 + [_fmt(r["decode_tok_s"], "{:.1f}"), _fmt(r["roofline_decode_tok_s"]),
                    _fmt(r["roofline_fraction"] * 100, "{:.0f} %")])
        lines.append("| " + " | ".join(cells) + " |")
    if "ratios_ours_over_peer" in results:
        lines.append("")
        lines.append(f"ours ({results['ours_best_int4']}) / peer:")
        for k, v in results["ratios_ours_over_peer"].items():
            lines.append(f"  {k:16} " + "  ".join(f"{m} {x:.2f}x" for m, x in v.items()))
        lines.append(f"decode_ratio_vs_fastest_peer {results['decode_ratio_vs_fastest_peer']} "
                     f"({results['fastest_peer_decode']}); prefill_ratio_vs_fastest_peer "
                     f"{results['prefill_ratio_vs_fastest_peer']} ({results['fastest_peer_prefill']})")
        for k, v in results.get("like_for_like", {}).items():
            lines.append(f"like for like: {k} / {v['peer']}: " + "  ".join(
                f"{m} {x:.2f}x" for m, x in v.items() if m != "peer"))
    return "\n".join(lines)


def chart(results: dict, path) -> None:
    """Bars: decode tok/s (with each entry's roofline bound as a tick) and prefill tok/s per prompt length."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["entries"] if "decode_tok_s" in r]
    names = [r["label"] for r in rows]
    lens = [str(L) for L in results["prompt_lengths"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 0.55 * len(rows) + 2.2), sharey=True)
    y = list(range(len(rows)))
    colors = ["tab:green" if r["ours"] else "tab:gray" for r in rows]
    a.barh(y, [r["decode_tok_s"] for r in rows], color=colors)
    a.scatter([r["roofline_decode_tok_s"] for r in rows], y, marker="|", s=300, color="tab:red",
              label="roofline (bandwidth / bytes per token)")
    a.set_xlabel(f"decode tok/s (after a {lens[0]}-token prompt)")
    a.legend(loc="lower right", fontsize=8)
    h = 0.8 / len(lens)
    for i, L in enumerate(lens):
        b.barh([v + (i - (len(lens) - 1) / 2) * h for v in y], [r["by_prompt_length"][L]["prefill_tok_s"] for r in rows],
               height=h, label=f"{L}-token prompt", alpha=0.6 + 0.4 * i / max(1, len(lens) - 1), color=colors)
    b.set_xlabel("prefill tok/s")
    b.legend(loc="lower right", fontsize=8)
    a.set_yticks(y, names)
    a.invert_yaxis()
    m = results["machine"]
    fig.suptitle(f"Gemma 3 270M, {results['threads']} threads, {m['cpu']} ({m['cores']} cores), {results['date']}, "
                 f"median of {results['rounds']} interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MARK = "<!-- bench-table -->"


def into_readme(text: str, results: dict) -> str:
    """README text with the block between the two bench-table marks (or after the single one) replaced by
    the latest table, its date and machine."""
    m = results["machine"]
    load = "/".join(f"{x:.1f}" for x in m.get("load_before", [])) or "not recorded"
    block = (f"{MARK}\nLatest run: {results['date']}, {m['cpu']} ({m['cores']} cores, {m['mem_gb']} GB; load average "
             f"before the run {load} over 1/5/15 min), {results['threads']} threads, median of {results['rounds']} "
             f"interleaved round(s); "
             f"bandwidth {results['roofline']['bandwidth_gb_s']} GB/s.\n\n{_fenced(table(results))}\n{MARK}")
    head, _, rest = text.partition(MARK)
    _, found, tail = rest.partition(MARK)
    return head + block + (tail if found else rest)


def _fenced(table_text: str) -> str:
    """The Markdown table as is, the ratio lines after it in a text block."""
    rows, _, ratios = table_text.partition("\n\n")
    return rows + (f"\n\n```text\n{ratios}\n```" if ratios else "")

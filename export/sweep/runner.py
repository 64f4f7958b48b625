"""`gemma-export sweep`: a plan's cells as Ray tasks, each asking for the CPUs and memory its model needs
(export.sweep.plan), so that Ray places no more cells on a node than it can hold. Without an address Ray starts in
this process (`ray.init()`: a laptop needs nothing else); with one the sweep joins that cluster as it is. Phones
are Ray resources (`adb:SERIAL`, 1 per phone): a node started with `ray start --resources '{"adb:SERIAL": 1}'`
profiles the phone attached to it; a local Ray declares the plan's phones itself.

Results stream into DIR/results.jsonl, one line per cell as it ends (a failed cell records its error; the others
go on). A re-run skips each cell whose latest record is done (exported; its validation passed or failed) for the
same key (export.sweep.plan.Cell.key: the checkpoint's bytes, the cell's options, the tool's version) and whose
artifact still holds the files its manifest hashed (an artifact left on another node is taken on its record).
At the end: DIR/summary.md and DIR/pareto.png (export.sweep.report)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..converters.artifact import sha256
from .cell import run_cell, run_phone, source_digest, tool_version
from .plan import GB, Plan

RESULTS = "results.jsonl"
DONE = ("ok", "check_failed")
LOCAL_OBJECT_STORE = 1 << 30     # a local Ray's object store: artifacts for phones pass through it, nothing else


def read_results(out: Path) -> dict[str, dict]:
    """The latest record of each cell key in DIR/results.jsonl (a torn last line, from a killed run, is ignored)."""
    latest = {}
    path = out / RESULTS
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                latest[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                continue
    return latest


def reusable(record: dict | None) -> bool:
    """A done record whose artifact still holds the files its manifest hashed (or lies on another node)."""
    if record is None or record.get("status") not in DONE:
        return False
    folder = Path(record["artifact"])
    if not folder.exists():
        return record.get("node") != socket.gethostname()
    try:
        return all(sha256(folder / name) == digest for name, digest in record["sha256"].items())
    except OSError:
        return False


def connect(address: str | None, phones) -> bool:
    """Ray started here (True: shut it down at the end) or joined; a Ray this process already runs is used."""
    import ray
    if ray.is_initialized():
        return False
    handler = signal.getsignal(signal.SIGTERM)     # ray.init replaces it; SIGTERM stays the CLI's clean exit
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
            return False
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=LOCAL_OBJECT_STORE,
                 _memory=int(total - LOCAL_OBJECT_STORE), resources={f"adb:{p['serial']}": 1 for p in phones})
        return True
    finally:
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _largest_node() -> tuple[float, float, set]:
    """(CPUs, memory GB) of the largest alive node, and every resource name any node offers."""
    import ray
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return (max((n.get("CPU", 0) for n in nodes), default=0), max((n.get("memory", 0) for n in nodes), default=0) / GB,
            {k for n in nodes for k in n})


class Bar:
    """Progress on stderr: a bar redrawn in place on a terminal, one line per finished cell elsewhere."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream, self.t0 = total, stream or sys.stderr, time.perf_counter()
        self.live = getattr(self.stream, "isatty", lambda: False)()
        self.counts = dict.fromkeys(("ok", "check_failed", "error", "skipped"), 0)

    def update(self, running: int, finished: dict | None = None) -> None:
        if finished is not None:
            self.counts[finished["status"]] += 1
        done = sum(self.counts.values())
        c, elapsed = self.counts, time.perf_counter() - self.t0
        text = (f"{done}/{self.total} cells: {c['ok']} ok, {c['check_failed']} failed a check, {c['error']} errors, "
                f"{c['skipped']} skipped; {running} queued or running; {elapsed:.0f} s")
        if finished is not None and (not self.live or finished.get("error")):     # errors stay above the bar
            why = f": {finished['error']}" if finished.get("error") else ""
            line = f"[{done}/{self.total}] {finished['cell']['name']} {finished['status']}{why}"
            print(f"\r{line}\033[K" if self.live else line, file=self.stream, flush=True)
        if self.live:
            fill = int(30 * done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * fill}{'.' * (30 - fill)}] {text}\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")


def sweep(plan: Plan, out: str | Path, address: str | None = None, stream=None) -> dict:
    """Run (or resume) `plan` into `out`. -> the summary: every cell's latest record, counts, wall time."""
    import ray

    from .report import write_reports
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; the sweep writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0, tool = time.perf_counter(), tool_version()
    previous, digests, results, todo = read_results(out), {}, {}, []
    for cell in plan.cells:
        if cell.source not in digests:
            digests[cell.source] = source_digest(cell.source)
        key = cell.key(digests[cell.source], tool)
        if reusable(previous.get(key)):
            results[key] = {**previous[key], "skipped": True}
        else:
            todo.append((key, cell))
    bar = Bar(len(plan.cells), stream)
    for record in results.values():
        bar.update(0, {**record, "status": "skipped"})
    started = connect(address, plan.phones) if todo else False
    try:
        if todo:
            _Run(plan, out, tool, bar, results)(todo)
    finally:
        bar.close()
        if started:
            ray.shutdown()
    records = [results[k] for k in (c.key(digests[c.source], tool) for c in plan.cells)]
    summary = {"plan": str(plan.path), "out": str(out), "wall_s": round(time.perf_counter() - t0, 1),
               "counts": {s: sum(r["status"] == s for r in records) for s in ("ok", "check_failed", "error")},
               "skipped": sum(bool(r.get("skipped")) for r in records),
               "cell_seconds": round(sum(r["seconds"].get("cell", 0) for r in records if not r.get("skipped")), 1),
               "cells": records}
    summary["reports"] = write_reports(summary, out)
    return summary


class _Run:
    """The cells being run: submitted as Ray tasks, each record streamed into results.jsonl when its cell (and its
    phones) end."""

    def __init__(self, plan: Plan, out: Path, tool: str, bar: Bar, results: dict):
        import ray
        self.plan, self.out, self.tool, self.bar, self.results = plan, out, tool, bar, results
        self.cpus, self.memory, self.offered = _largest_node()
        self.cell_task, self.phone_task = ray.remote(run_cell), ray.remote(run_phone)
        self.pending, self.phones_of = {}, {}     # ObjectRef -> (kind, key, cell, extra); key -> phone refs still out

    def __call__(self, todo) -> None:
        import ray
        for key, cell in todo:
            self.submit(key, cell)
        self.bar.update(len(self.pending))
        try:
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
                if ready:
                    self.collect(ready[0])
                else:
                    self.bar.update(len(self.pending))
        except BaseException:            # Ctrl-C / SIGTERM: a joined cluster would go on running them
            for ref in self.pending:
                ray.cancel(ref, force=True)
            raise

    def submit(self, key: str, cell) -> None:
        if cell.memory_gb > self.memory:
            self.finish(key, cell, {"status": "error", "artifact": str(self.out / cell.name), "seconds": {},
                                    "error": f"asks for {cell.memory_gb:g} GB, the largest node offers "
                                             f"{self.memory:.1f} GB: set memory_gb in the plan to override"})
            return
        d = dataclasses.asdict(cell)
        d["cpus"] = int(min(cell.cpus, self.cpus))
        refs = self.cell_task.options(num_cpus=d["cpus"], memory=int(cell.memory_gb * GB), num_returns=2,
                                      max_retries=0, name=cell.name).remote(d, str(self.out / cell.name), self.tool,
                                                                            bool(self.plan.phones))
        self.pending[refs[0]] = ("cell", key, cell, refs[1])

    def collect(self, ref) -> None:
        import ray
        kind, key, cell, extra = self.pending.pop(ref)
        if kind == "phone":
            record = self.results[key]
            try:
                record["profile"]["adb"][extra] = ray.get(ref)
            except Exception as e:       # noqa: BLE001  (a worker lost: recorded)
                record["profile"]["adb"][extra] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
            self.phones_of[key].remove(ref)
            if not self.phones_of[key]:
                self.finish(key, cell, record)
            return
        record = _get(ref, self.out / cell.name)
        if not self.plan.phones or record["status"] not in DONE or cell.format != "litert":
            self.finish(key, cell, record)
            return
        record["profile"] = {**record.get("profile", {}), "adb": {}}
        self.results[key], self.phones_of[key] = record, []
        for phone in self.plan.phones:
            resource = f"adb:{phone['serial']}"
            if resource not in self.offered:
                record["profile"]["adb"][phone["serial"]] = {
                    "error": f"no Ray node offers the resource {resource} (start the phone's node with "
                             f"--resources '{{\"{resource}\": 1}}')"}
                continue
            phone_ref = self.phone_task.options(num_cpus=0, resources={resource: 1}, max_retries=0).remote(
                dataclasses.asdict(cell), phone, extra)
            self.pending[phone_ref] = ("phone", key, cell, phone["serial"])
            self.phones_of[key].append(phone_ref)
        if not self.phones_of[key]:
            self.finish(key, cell, record)

    def finish(self, key: str, cell, record: dict) -> None:
        record = {"key": key, "cell": {"name": cell.name, **{f: getattr(cell, f) for f in
                  ("model", "source", "recipe", "target", "format", "parameters")}},
                  "requests": {"cpus": min(cell.cpus, self.cpus), "memory_gb": cell.memory_gb}, **record,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.results[key] = record
        with open(self.out / RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.update(len(self.pending), record)


def _get(ref, artifact: Path) -> dict:
    """The cell's record, or an error record when its worker died (killed for memory, a lost node)."""
    import ray
    try:
        return ray.get(ref)
    except Exception as e:               # noqa: BLE001
        return {"status": "error", "artifact": str(artifact), "seconds": {},
                "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}

"""The machine: CPU model, cores, memory, and a memory-bandwidth measurement (numpy copies) for the roofline."""
from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _best(run, repeats: int) -> float:
    run()                                   # the first pass faults the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def bandwidth_gb_s(threads: int, mb: int = 256, repeats: int = 5) -> dict:
    """Memory bandwidth in GB/s, best of `repeats`, `threads` numpy calls over disjoint slices (numpy releases the
    GIL): "copy" counts bytes read + bytes written by np.copyto (STREAM's convention; the write-allocate read is
    not counted), "read" the bytes a float32 dot product streams in (a decode step mostly reads weights)."""
    src = np.ones(mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    cuts = np.linspace(0, len(src), threads + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    with ThreadPoolExecutor(threads) as pool:
        copy = _best(lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts)), repeats)
        read = _best(lambda: list(pool.map(lambda s: np.dot(dst[s], src[s]), parts)), repeats)
    return {"copy": round(2 * src.nbytes / copy / 1e9, 2), "read": round(2 * src.nbytes / read / 1e9, 2)}


def describe(threads: int, load_before: tuple[float, ...] = ()) -> dict:
    """The machine, with the load average (1, 5, 15 min) before the run: other jobs on the cores skew every
    figure, the peers' and ours unevenly."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "mem_gb": mem_total_gb(), "threads": threads,
            "machine": platform.machine(), "kernel": platform.release(),
            "load_before": [round(x, 2) for x in load_before]}


def kv_bytes(config: dict, position: int, bytes_per_value: int = 4) -> int:
    """Bytes of K and V a decode step reads at `position`: each global layer its `position` entries, each
    sliding layer min(position, window). config: our manifest's model config."""
    per = 2 * config["num_kv_heads"] * config["head_dim"] * bytes_per_value
    window = config.get("sliding_window") or position
    return sum(per * (min(position, window) if t == "sliding_attention" else position) for t in config["layer_types"])

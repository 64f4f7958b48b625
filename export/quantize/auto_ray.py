"""`--quant auto`'s sensitivity measurements as Ray tasks (`gemma-export export --quant auto --address ...`): the
units are dealt round-robin to one task per CPU of the cluster (at most one per unit), each task gets the planner
(the float model and the calibration windows) through Ray's object store, recomputes the float streams once and
measures its units exactly as Planner.measure_units does in one process. Each task asks for the memory of two
copies of the float model (the model and the simulated one) plus 1.5 GB for the libraries."""
from __future__ import annotations

import copy

from .auto import Planner

BASE_BYTES = 1.5e9


def _quiet(text: str) -> None:
    """A task's progress goes nowhere: the driver reports the tasks as they end."""


def _units(planner: Planner, indices: list[int]) -> list:
    return planner.measure_units(indices)


def ray_fan_out(progress=None):
    """A Planner.measure fan_out over the Ray this process is connected to (ray.init first)."""
    def fan_out(planner: Planner) -> list:
        import ray
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(cpus, len(planner.units)))
        chunks = [list(range(i, len(planner.units), count)) for i in range(count)]
        shipped = copy.copy(planner)
        shipped.progress = _quiet
        ref = ray.put(shipped)
        params = sum(p.numel() for p in planner.model.parameters())
        task = ray.remote(_units).options(num_cpus=1, memory=int(BASE_BYTES + 8 * params), max_retries=0)
        pending = {task.remote(ref, c): c for c in chunks}
        results = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(ready[0])
            results.update(zip(chunk, ray.get(ready[0])))
            if progress:
                progress(f"sensitivity {len(results)}/{len(planner.units)} (Ray tasks)")
        return [results[k] for k in range(len(planner.units))]
    return fan_out

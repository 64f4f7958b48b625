"""`--quant auto --min-top1 X [--max-mb M]`: the smallest per-weight plan (recipes.CHOICES: int4 in
blocks of 128 or 32, int8, float16) whose simulated artifact agrees with the float model's next token
at least X of the time on calibration text (the bundled training text, never the validation text).

1. Units: the weights one format stores as one matmul (the ONNX body packs q/k/v and gate/up, PACKED)
   get one choice; the tied embedding / LM head table is a unit of its own (int4 or int8 only: a
   float16 table would double the file).
2. Sensitivity, measured: KL(float || model with only this unit at int4 blocks of 32) on calibration
   windows, through the format's simulation (export.quantize.simulate: its weight rounding, its int8
   activations, its rotation). The other choices' KL are scaled from it by the unit's own output error
   on the same text (||simulated(X) - X W^T||^2 over its inputs X): second order, KL grows with the
   squared perturbation of the logits, and one unit's perturbation grows with its output error.
3. Plan: starting from every unit at the smallest choice, the upgrade with the most estimated KL
   saved per byte is taken, one at a time, up to every unit at its largest choice: a path of plans
   of increasing size. The smallest plan on it whose simulated top-1 on the calibration text reaches
   X is found by bisection (top-1 measured, not estimated). With --max-mb the path stops at M: when
   no plan within M reaches X, the request is refused with the best of each.

Sizes are the bytes each format stores per choice (sizes()); the rest of the model (norms) is
counted at float32."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .gptq import default_calibration_text
from .qat_data import windows
from .qat_train import kl_to_teacher
from .recipes import CHOICES, PACKED, Layout, planned
from .simulate import TABLE, Plan, simulate

TABLE_CHOICES = ("int4-b128", "int4", "int8")
MEASURED = "int4"                  # the choice whose KL is measured per unit; the others are scaled from it
SENSITIVITY_TOKENS = 512           # calibration tokens per unit's KL measurement
TOP1_TOKENS = 1024                 # calibration tokens per plan's top-1 measurement
WINDOW = 256
MB = 1e6


@dataclasses.dataclass
class Unit:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    choices: tuple[str, ...]
    kl: dict = dataclasses.field(default_factory=dict)         # choice -> estimated KL of this unit alone
    sizes: dict = dataclasses.field(default_factory=dict)      # choice -> bytes


def _layer_of(u: Unit) -> int:
    """The first decoder layer a unit's weights change (0 for the table: the embedding feeds every layer)."""
    parts = u.names[0].split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] and parts[2].isdigit() else 0


def storable(shape: tuple[int, int], lay: Layout, fmt: str) -> bool:
    """Whether `fmt` stores an [out, in] weight in `lay`: ai-edge-quantizer's blocks must divide the
    input dimension (MatMulNBits pads the last block)."""
    return fmt == "onnx" or lay.block is None or shape[1] % lay.block == 0


def units(model: nn.Module, fmt: str) -> list[Unit]:
    """Every nn.Linear weight, packed as PACKED says, and the tied table, with the choices `fmt` can store."""
    out, seen = [], set()
    mods = dict(model.named_modules())
    for name, mod in mods.items():
        if not isinstance(mod, nn.Linear) or name in seen:
            continue
        parent, _, leaf = name.rpartition(".")
        group = next((g for g in PACKED if leaf in g), (leaf,))
        members = [f"{parent}.{g}" if parent else g for g in group if (f"{parent}.{g}" if parent else g) in mods]
        seen.update(members)
        out.append(Unit(tuple(f"{m}.weight" for m in members), tuple(tuple(mods[m].weight.shape) for m in members),
                        tuple(CHOICES)))
    table = getattr(getattr(model, "model", None), "embed_tokens", None)
    if table is not None and not hasattr(model, "lm_head"):
        out.append(Unit((TABLE,), (tuple(table.weight.shape),), TABLE_CHOICES))
    for u in out:
        u.choices = tuple(c for c in u.choices if all(storable(s, CHOICES[c][fmt], fmt) for s in u.shapes))
    return out


def stored_bytes(shape: tuple[int, int], lay: Layout, fmt: str) -> int:
    """Bytes format `fmt` stores for one [out, in] weight in layout `lay`: integers plus scales
    (MatMulNBits: float32 per block; ai-edge-quantizer: float16 per block, float32 per channel)."""
    rows, cols = shape
    if lay.bits == 16:
        return 2 * rows * cols
    block = lay.block or cols
    blocks = rows * -(-cols // block)
    scale = 4 if fmt == "onnx" or lay.block is None else 2
    return blocks * (block * lay.bits // 8 + scale)


class Planner:
    """The planning of one model for one format on one calibration text (token ids)."""

    def __init__(self, model: nn.Module, fmt: str, ids: list[int], bos: int,
                 progress: Callable[[str], None] | None = None):
        self.model, self.fmt, self.progress = model.eval(), fmt, progress or (lambda s: None)
        self.units = units(model, fmt)
        if not self.units:
            raise ValueError("--quant auto: the model has no linear layers to plan for")
        tokens = torch.tensor(ids)
        count = max(1, TOP1_TOKENS // WINDOW)
        self.batch = torch.cat(list(windows(tokens, min(WINDOW, len(ids)), bos, None, count)))
        self.sens = self.batch[:max(1, SENSITIVITY_TOKENS // WINDOW)]
        self.measured: dict[tuple, float] = {}
        self.ref_top = None
        planned_names = {n for u in self.units for n in u.names}
        self.rest = sum(p.numel() * 4 for n, p in model.named_parameters() if n not in planned_names)
        for u in self.units:
            u.sizes = {c: sum(stored_bytes(s, CHOICES[c][fmt], fmt) for s in u.shapes) for c in u.choices}

    def recipe(self, plan: dict[int, str]):
        return planned({n: plan[i] for i, u in enumerate(self.units) for n in u.names}, self.fmt)

    def mb(self, plan: dict[int, str]) -> float:
        return (self.rest + sum(self.units[i].sizes[c] for i, c in plan.items())) / MB

    def measure(self, fan_out: Callable[["Planner"], list] | None = None) -> None:
        """Each unit's KL alone at MEASURED, scaled to its other choices by its output error (measure_units).
        fan_out(planner) -> measure_units' results for every unit, gathered from tasks elsewhere (auto_ray)."""
        results = fan_out(self) if fan_out is not None else self.measure_units(range(len(self.units)))
        for u, (kl, err) in zip(self.units, results):
            u.kl = {c: kl * err[c] / max(err[MEASURED], 1e-30) for c in dict.fromkeys((*u.choices, MEASURED))}

    @torch.no_grad()
    def measure_units(self, indices) -> list[tuple[float, dict]]:
        """(KL alone at MEASURED, {choice: output error}) of the units at `indices`. A unit of layer i changes
        nothing before it: the float residual stream entering layer i is computed once and only the layers from
        i on run again; the KL is taken over the windows' second halves (the head, vocabulary-wide, is most of
        the cost)."""
        streams = self._streams()
        ref = self._logits_from(self.model, 0, streams)
        inputs = self._inputs()
        t0, out = time.perf_counter(), []
        for k in indices:
            u = self.units[k]
            alone = simulate(self.model, planned(dict.fromkeys(u.names, MEASURED), self.fmt, base="fp32"), self.fmt)
            kl = float(kl_to_teacher(self._logits_from(alone, _layer_of(u), streams), ref))
            # the error at MEASURED too where the format cannot store it (a block that does not divide the unit's
            # input on LiteRT): the KL is measured there in simulation, and the other choices are scaled from it
            out.append((kl, {c: self._output_error(u, c, inputs) for c in dict.fromkeys((*u.choices, MEASURED))}))
            self.progress(f"sensitivity {len(out)}/{len(indices)} ({time.perf_counter() - t0:.0f} s)")
        return out

    def _streams(self) -> dict | None:
        """The float residual stream entering each layer on the sensitivity windows, with the layers'
        rope tables and masks; None for a model without that structure (then every unit runs it all)."""
        bb = getattr(self.model, "model", None)
        if not (hasattr(bb, "attention_inputs") and hasattr(bb, "layers") and hasattr(self.model, "logits")):
            return None
        pos = torch.arange(self.sens.shape[1])
        ropes, masks = bb.attention_inputs(pos)
        x, xs = bb.embed(self.sens), []
        for i, layer in enumerate(bb.layers):
            xs.append(x)
            t = self.model.config.layer_types[i]
            x, _ = layer(x, ropes.get(t), masks.get(t), pos, None)
        return {"x": xs, "ropes": ropes, "masks": masks, "pos": pos}

    def _logits_from(self, model, first: int, streams: dict | None) -> torch.Tensor:
        """`model`'s logits over the second half of each sensitivity window, running its
        layers from `first` on the float stream entering it."""
        half = self.sens.shape[1] // 2
        if streams is None:
            return model(self.sens, torch.arange(self.sens.shape[1]))[0][:, half:]
        bb = model.model
        x = bb.embed(self.sens) if first == 0 else streams["x"][first]
        for i in range(first, len(bb.layers)):
            t = model.config.layer_types[i]
            x, _ = bb.layers[i](x, streams["ropes"].get(t), streams["masks"].get(t), streams["pos"], None)
        return model.logits(bb.norm(x[:, half:]))

    def _inputs(self) -> dict[str, torch.Tensor]:
        """Each planned weight's float inputs on the sensitivity windows (the table's: the final norm's output)."""
        mods, got, hooks = dict(self.model.named_modules()), {}, []
        for u in self.units:
            for n in u.names:
                mod = self.model.model.norm if n == TABLE else mods[n.removesuffix(".weight")]
                hooks.append(mod.register_forward_hook(
                    lambda m, i, o, n=n: got.__setitem__(n, (o if n == TABLE else i[0]).detach().reshape(-1, (
                        o if n == TABLE else i[0]).shape[-1]))))
        try:
            self.model(self.sens, torch.arange(self.sens.shape[1]))
        finally:
            for h in hooks:
                h.remove()
        return got

    def _output_error(self, u: Unit, choice: str, inputs: dict) -> float:
        params = dict(self.model.named_parameters())
        lay = CHOICES[choice][self.fmt]
        plan = Plan(self.fmt, lay.bits, lay.block, lay.activations, lay.hadamard)
        err = 0.0
        for n in u.names:
            w = params[n].float()
            q = plan.weight(w)
            for x in inputs[n].split(128):          # the table's outputs are vocabulary-wide
                err += float((F.linear(plan.inputs(x), q) - F.linear(x, w)).pow(2).sum())
        return err

    def path(self, table: str | None) -> list[dict[int, str]]:
        """Plans of increasing size with the table at `table`: from every body unit at its smallest
        choice, each takes the upgrade with the most estimated KL saved per byte."""
        body = [i for i, u in enumerate(self.units) if u.names != (TABLE,)]
        plan = {i: self.units[i].choices[0] for i in body}
        plan.update({i: table for i, u in enumerate(self.units) if u.names == (TABLE,)})
        out = [dict(plan)]
        while True:
            best = None
            for i in body:
                u = self.units[i]
                for c in u.choices[u.choices.index(plan[i]) + 1:]:
                    gain = (u.kl[plan[i]] - u.kl[c]) / max(u.sizes[c] - u.sizes[plan[i]], 1)
                    if best is None or gain > best[0]:
                        best = (gain, i, c)
            if best is None:
                return out
            plan[best[1]] = best[2]
            out.append(dict(plan))

    def paths(self) -> list[list[dict[int, str]]]:
        """One path per choice of the table, largest table first: the table is a third of a 4-bit
        Gemma's bytes and a single unit, which a path over per-byte gains would reach only at its end."""
        table = next((u for u in self.units if u.names == (TABLE,)), None)
        return [self.path(t) for t in (reversed(table.choices) if table else [None])]

    @torch.no_grad()
    def top1(self, plan: dict[int, str]) -> float:
        """Top-1 agreement with the float model of the plan simulated, on the calibration windows (memoised)."""
        key = tuple(sorted(plan.items()))
        if key not in self.measured:
            sim = simulate(self.model, self.recipe(plan), self.fmt)
            got = sim(self.batch, torch.arange(self.batch.shape[1]))[0].argmax(-1)
            self.measured[key] = float((self.reference_top() == got).float().mean())
            self.progress(f"plan of {self.mb(plan):.1f} MB: calibration top-1 {self.measured[key]:.3f}")
        return self.measured[key]

    @torch.no_grad()
    def artifact_top1(self, logits: Callable[[list[int]], object]) -> float:
        """Top-1 agreement with the float model of a converted artifact on the calibration windows the plans
        were measured on. logits(ids) -> [len(ids), V] (runtime_py's Artifact.logits: this module runs no
        artifact itself)."""
        got = torch.stack([torch.as_tensor(logits(row.tolist())).argmax(-1) for row in self.batch])
        return float((self.reference_top() == got).float().mean())

    @torch.no_grad()
    def reference_top(self) -> torch.Tensor:
        """The float model's next token at every calibration position (computed once)."""
        if self.ref_top is None:
            self.ref_top = self.model(self.batch, torch.arange(self.batch.shape[1]))[0].argmax(-1)
        return self.ref_top

    def smallest(self, path: list[dict], x: float) -> int | None:
        """Index of the first plan on `path` whose top-1 reaches x (bisection: top-1 grows along the
        path), or None when even the last does not."""
        lo, hi = 0, len(path) - 1
        if hi < 0 or self.top1(path[hi]) < x:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if self.top1(path[mid]) >= x:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def search(self, x: float, max_mb: float | None = None) -> dict[int, str] | None:
        """The smallest plan (of at most max_mb) whose calibration top-1 reaches x, over every path;
        None when there is none."""
        best = None
        for path in self.paths():
            cap = self.mb(best) if best is not None else max_mb
            if cap is not None:
                path = [q for q in path if self.mb(q) < cap or (best is None and self.mb(q) <= cap)]
            k = self.smallest(path, x)
            if k is not None:
                best = path[k]
        return best

    def best_within(self, max_mb: float) -> float:
        """The best calibration top-1 among the largest plan of each path that fits in max_mb."""
        tops = [self.top1(fit[-1]) for fit in ([q for q in path if self.mb(q) <= max_mb] for path in self.paths())
                if fit]
        return max(tops, default=float("nan"))


def plan_for(loaded, fmt: str, min_top1: float, max_mb: float | None = None, calibration_text: str | None = None,
             progress: Callable[[str], None] | None = None, fan_out=None) -> tuple[object, dict, "Planner", dict]:
    """-> (the planned recipe for `fmt`, the plan's report for the manifest and the export report, the
    measured Planner, the plan) — the last two for step_up. fan_out: where the sensitivities are measured
    (Planner.measure; default this process)."""
    if loaded.config.embedding_head is not None:
        raise ValueError("--quant auto: plans for a causal LM's top-1 agreement; embedding models are not supported")
    if loaded.tokenizer is None:
        raise ValueError(f"--quant auto: {loaded.source} has no tokenizer to read the calibration text with")
    ids = loaded.tokenizer.encode(default_calibration_text() if calibration_text is None else calibration_text)
    if len(ids) < 2 * WINDOW:
        raise ValueError(f"--calibration: {len(ids)} tokens; --quant auto needs at least {2 * WINDOW}")
    t0 = time.perf_counter()
    p = Planner(loaded.model, fmt, ids, loaded.config.bos_id, progress)
    p.measure(fan_out)
    smallest = min(p.mb(path[0]) for path in p.paths())
    if max_mb is not None and smallest > max_mb:
        raise ValueError(f"--max-mb {max_mb:g}: the smallest plan takes {smallest:.1f} MB")
    plan = p.search(min_top1)
    if max_mb is not None and (plan is None or p.mb(plan) > max_mb):
        need = f"{p.mb(plan):.1f} MB" if plan is not None else "more than every weight at its largest choice"
        raise ValueError(f"--max-mb {max_mb:g} and --min-top1 {min_top1:g} cannot both hold: within {max_mb:g} MB "
                         f"the best plan reaches calibration top-1 {p.best_within(max_mb):.3f}; top-1 {min_top1:g} "
                         f"needs {need}")
    if plan is None:
        largest = max(p.top1(path[-1]) for path in p.paths())
        raise ValueError(f"--min-top1 {min_top1:g}: unreachable by --quant auto; with every weight at its largest "
                         f"choice the calibration top-1 is {largest:.3f}")
    report = plan_report(p, plan, min_top1, max_mb)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return p.recipe(plan), report, p, plan


def plan_report(p: Planner, plan: dict[int, str], min_top1: float, max_mb: float | None) -> dict:
    """What the manifest and the export report say of a plan."""
    counts: dict[str, int] = {}
    for i, c in plan.items():
        counts[c] = counts.get(c, 0) + len(p.units[i].names)
    ranked = sorted(p.units, key=lambda u: -u.kl[MEASURED])
    return {"min_top1": min_top1, "max_mb": max_mb, "calibration_top1": round(p.top1(plan), 4),
            "calibration_tokens": int(p.batch.numel()), "estimated_mb": round(p.mb(plan), 1),
            "weights_per_choice": counts,
            "table": next((c for i, c in plan.items() if p.units[i].names == (TABLE,)), None),
            "most_sensitive": [{"weights": list(u.names), "int4_kl": round(u.kl[MEASURED], 5)} for u in ranked[:5]],
            "plans_measured": len(p.measured)}


def step_up(p: Planner, plan: dict[int, str], artifact_top1: float, min_top1: float,
            max_mb: float | None = None) -> dict[int, str] | None:
    """The plan to convert instead of `plan`, whose artifact reached only `artifact_top1` on the calibration
    windows (Planner.artifact_top1) where its simulation reached p.top1(plan): the smallest plan whose
    simulated top-1 covers that conversion loss, min_top1 + loss (the loss measured, assumed to carry over
    to a nearby plan). None when no larger plan (within max_mb) reaches it."""
    loss = p.top1(plan) - artifact_top1
    nxt = p.search(min(1.0, min_top1 + max(loss, 0.0)), max_mb)
    return nxt if nxt is not None and p.mb(nxt) > p.mb(plan) else None


__all__ = ["plan_for", "plan_report", "step_up", "Planner", "units", "storable", "stored_bytes", "PACKED"]

"""Error-compensating int4 rounding: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers") onto the int4 grid both targets store exactly
(export.quantize.qat: a positive block scale at bfloat16 precision, steps -8..7, blocks of 32 along
the input dimension).

For each linear layer with weight W [out, in] and calibration inputs X (its inputs over the
calibration text, with every earlier layer already quantized), GPTQ minimises ||X W_q^T - X W^T||
one input column at a time: with H = 2 X^T X (damped by 1 % of its mean diagonal) and U the upper
Cholesky factor of H^-1, column j is rounded to the grid and its error, divided by U[j, j], is
spread over the columns not yet rounded (times U[j, j+1:]); updates to columns beyond the current
batch of 128 are applied once per batch (lazy batch updates). A block's scale is chosen from the
block's error-updated weights when the column loop reaches its first column: the grid's rule
(max(max / 7, -min / 8), bfloat16 precision), or with `scale_search` (the default) whichever of that
scale shrunk by 0-25 % (clipping the extremes) rounds the block to nearest with the least squared
error; any positive bfloat16 scale with steps -8..7 is on the grid. With act-order the columns are
visited by decreasing H diagonal and the scales are fixed beforehand from the original weights, so
each block of 32 contiguous input columns still has one scale. The result is integers and scales, handed to the
exporters as Q4_0 `StoredBlocks` (what `LoadedModel.stored` holds), which both carry over bit for
bit: ONNX writes them into MatMulNBits / GatherBlockQuantized, LiteRT reads them back with
ai-edge-quantizer's dequantized-weight recovery from the float weights, which `quantized_weights`
sets to the grid values for the conversion.

Layers are quantized in order, and within a layer the linears in the order they run (q/k/v, which
share an input and one H; o; gate/up; down): each group's H comes from a forward pass of the layer
with the groups before it already quantized. With `int8_activations` (recipes whose kernels quantize
activations: onnxruntime's MatMulNBits per block of 32) the quantized linears' inputs are rounded
likewise in those passes, and H is taken over the rounded inputs. The tied embedding / LM head table
is rounded by GPTQ as the head over the final norm's outputs (`table="gptq"`, the default, with more
damping: HEAD_DAMP), or to nearest (`table="rtn"`); the layers' calibration inputs come from its
lookup rounded to nearest.

Why not a library: none found produces this grid on CPU. torchao 0.18's GPTQ (prototype) rounds
int4 asymmetrically with zero points through mslk (a GPU kernel package) and its int8 per row;
ai-edge-quantizer 0.10's GPTQ runs over a .tflite graph with scales fixed from the float weights
before any update, float32 and without error-updated block scales, calibrated on the float model
(not layer by layer) and for LiteRT only, so the ONNX artifact could not hold the same integers;
GPTQModel / llm-compressor / AutoRound quantize Hugging Face models to their own formats (float16
scales, zero points), not to a scale at bfloat16 precision with steps -8..7."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from importlib import resources
from typing import Callable

import torch
from torch import nn

from ..models.checkpoints import LoadedModel
from ..models.checkpoints.gguf_blocks import StoredBlocks
from . import qat
from .qat import recoverable, to_blocks
from .qat_data import windows
from .recipes import GPTQ_SEQ, GPTQ_TOKENS, Recipe

BLOCK = qat.BLOCK
DAMP = 0.01                 # of the mean diagonal of H, added to its diagonal
# The tied table's H (the head's inputs) also stands in for the embedding lookup, which is best
# rounded to nearest: a larger damping moves its GPTQ towards that.
HEAD_DAMP = 0.3
LAZY = 128                  # columns per lazy batch update; a multiple of BLOCK
DEFAULT_TOKENS = GPTQ_TOKENS
MIN_TOKENS = 2 * BLOCK
SEQ_LEN = GPTQ_SEQ
BATCH = 8                   # calibration windows per forward pass
HEAD_ROWS = 16384           # table rows per GPTQ chunk of the head (rows are independent)
TABLE = qat.TABLE


@dataclasses.dataclass(frozen=True)
class Options:
    act_order: bool = False
    table: str = "gptq"                     # "rtn" or "gptq": how the tied embedding / LM head is rounded
    int8_activations: bool | None = None    # None: as the recipe's kernels do
    sequential: bool = True                 # within a layer, each linear's H after the ones before it are quantized
    scale_search: bool = True               # each block's scale: the best of the grid rule's shrunk by SHRINK, or the rule's


def default_calibration_text() -> str:
    """The bundled training text (never the validation text)."""
    return resources.files("export.data").joinpath("qat_train.txt").read_text(encoding="utf-8")


def check_recipe(recipe: Recipe) -> None:
    """GPTQ rounds int4 blocks of 32, the layout both exporters carry exactly."""
    if recipe.weight_bits != 4 or recipe.block_size != BLOCK:
        raise ValueError(f"--gptq: rounds int4 weights in blocks of {BLOCK} (the layout both exporters carry "
                         f"exactly); --quant {recipe.name} has {recipe.weight_bits}-bit weights in blocks of "
                         f"{recipe.block_size}")


def _inverse_factor(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """H -> the upper Cholesky factor of (H + damping)^-1, in float32 (the damping keeps it well
    conditioned; float64 doubles the time of the largest layers for no measurable gain)."""
    h = h.float().clone()
    dead = h.diagonal() == 0                 # inputs never seen: any value of the weight is as good
    h[dead, dead] = 1
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of small operations: a second thread only adds synchronisation
    (measured 5-8x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def block_scales(b: torch.Tensor, search: bool) -> torch.Tensor:
    """[R, 32] -> [R] scales: the grid rule's, or (search) the one of it times SHRINK (clipping the
    extremes) whose rounding to nearest has the least squared error."""
    best = qat.q4_scale(b)
    if search:
        err = ((qat.q4_round(b, best) * best - b) ** 2).sum(-1, keepdim=True)
        for f in SHRINK[1:]:
            s = qat.grid_scale(best * f)
            e = ((qat.q4_round(b, s) * s - b) ** 2).sum(-1, keepdim=True)
            best, err = torch.where(e < err, s, best), torch.minimum(e, err)
    return best[:, 0]


def _round_columns(w: torch.Tensor, u: torch.Tensor, scales: torch.Tensor | None = None,
                   block_of: torch.Tensor | None = None, search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's column loop over w [R, C] (columns in visiting order; modified in place) with U [C, C].
    scales [R, C / 32] fixed beforehand with block_of[c] the block of visited column c (act-order),
    or None: each block's scale from its error-updated weights when its first column comes."""
    R, C = w.shape
    q = torch.empty(R, C)
    fixed = scales is not None
    if not fixed:
        scales, block_of = torch.empty(R, C // BLOCK), torch.arange(C) // BLOCK
    for i1 in range(0, C, LAZY):
        i2 = min(i1 + LAZY, C)
        w1, err = w[:, i1:i2], torch.empty(R, i2 - i1)
        for i in range(i2 - i1):
            c = i1 + i
            if not fixed and c % BLOCK == 0:
                scales[:, c // BLOCK] = block_scales(w[:, c:c + BLOCK], search)
            s = scales[:, block_of[c]]
            q[:, c] = qat.q4_round(w1[:, i], s)
            err[:, i] = (w1[:, i] - q[:, c] * s) / u[c, c]
            w1[:, i:] -= err[:, i:i + 1] * u[c, c:i2]
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q, scales


def gptq_matrix(w: torch.Tensor, h: torch.Tensor, act_order: bool = False, rows: int | None = None,
                search: bool = False, damp: float = DAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """w [R, C] (C a multiple of 32), h [C, C] = sum of x x^T over the calibration inputs ->
    (q [R, C] float steps in -8..7, s [R, C / 32] scales): w ~ q * s per block of 32 columns.
    rows: process this many rows at a time (rows are independent given H)."""
    R, C = w.shape
    if C % BLOCK:
        raise ValueError(f"GPTQ: {C} input columns are not whole blocks of {BLOCK}")
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else None
    with _one_thread():
        q, s = _gptq_rows(w, _inverse_factor(h[perm][:, perm] if act_order else h, damp), perm, rows or R, search)
    return recoverable(q, s, w), s


def _gptq_rows(w, u, perm, rows, search):
    qs, ss = [], []
    for r in range(0, len(w), rows):
        chunk = w[r:r + rows].float().clone()
        if perm is not None:
            scales = torch.stack([block_scales(chunk[:, k:k + BLOCK], search)               # before any update
                                  for k in range(0, chunk.shape[1], BLOCK)], 1)
            q, s = _round_columns(chunk[:, perm], u, scales, perm // BLOCK)
            q = q[:, torch.argsort(perm)]
        else:
            q, s = _round_columns(chunk, u, search=search)
        qs.append(q)
        ss.append(s)
    return torch.cat(qs), torch.cat(ss)


def rtn_blocks(w: torch.Tensor, search: bool = False) -> StoredBlocks:
    """w [R, C] rounded to nearest on the grid (block scales as `block_scales` picks them)."""
    qs, ss = [], []
    for r in range(0, len(w), HEAD_ROWS):
        b = w[r:r + HEAD_ROWS].float().reshape(-1, BLOCK)
        s = block_scales(b, search)[:, None]
        qs.append(qat.q4_round(b, s).reshape(-1, w.shape[1]))
        ss.append(s.reshape(-1, w.shape[1] // BLOCK))
    return to_blocks(torch.cat(qs), torch.cat(ss))


class GPTQBlocks(dict):
    """{parameter name: StoredBlocks}, with `info`: how they were computed (for the manifest)."""
    info: dict


class _Done(Exception):
    """Raised by a hook once the inputs it waits for are recorded: the rest of the layer is not needed."""


def _record_layers(layers, record: list):
    """Stand-ins for the decoder layers' forward that record their arguments and pass x through."""
    def stub(i, x, rope, mask, positions, cache):
        record.append((i, x, rope, mask, positions))
        return x, cache
    for i, layer in enumerate(layers):
        layer.forward = (lambda i: lambda *a: stub(i, *a))(i)


@contextlib.contextmanager
def _hooks(modules, fn):
    handles = [m.register_forward_pre_hook(lambda m, args, n=n: fn(n, m, args)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Calibration:
    """The calibration windows' hidden states, layer by layer: `xs` are the inputs of the current
    layer (one tensor per batch of windows), `args[i]` the (rope, mask, positions) layer i receives."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]):
        layers = model.model.layers
        record = []
        _record_layers(layers, record)
        try:
            for b in batches:
                model.model(b, torch.arange(b.shape[1]))
        finally:
            for layer in layers:
                del layer.forward
        self.xs = [x for i, x, *_ in record if i == 0]
        self.args = {i: tuple(a) for i, _, *a in record[:len(layers)]}
        self.model = model

    def run(self, i: int) -> list[torch.Tensor]:
        """Layer i over every batch -> its outputs, one per batch."""
        return [self.model.model.layers[i](x, *self.args[i], None)[0] for x in self.xs]


def _linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear) and m.in_features % BLOCK == 0}


def _groups(cal: _Calibration, i: int, linears: dict[str, nn.Linear]) -> list[list[str]]:
    """The layer's linears in the order they run, those reading the same input tensor grouped."""
    calls = []

    def note(name, m, args):
        calls.append((name, args[0]))
    with _hooks(linears, note), torch.no_grad():
        layer = cal.model.model.layers[i]
        layer(cal.xs[0][:1], *cal.args[i], None)
    groups = []
    for k, (name, x) in enumerate(calls):
        if k and x is calls[k - 1][1]:
            groups[-1].append(name)
        elif not any(name in g for g in groups):
            groups.append([name])
    return groups


def _hessians(cal: _Calibration, i: int, modules: dict[str, nn.Linear], act: bool) -> dict[str, torch.Tensor]:
    """sum of x x^T (float64) over the inputs each of `modules` receives in layer i."""
    hs = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in modules.items()}
    seen = set()

    def add(name, m, args):
        x = args[0].reshape(-1, m.in_features)
        if act:
            x = qat.int8_activations(x)
        hs[name] += (x.T @ x).double()
        seen.add(name)
        if len(seen) == len(hs):
            raise _Done
    with _hooks(modules, add):
        for x in cal.xs:
            seen.clear()
            try:
                cal.model.model.layers[i](x, *cal.args[i], None)
            except _Done:
                pass
    return hs


def _int8_inputs(linears: dict[str, nn.Linear], done: set):
    """Hooks rounding the inputs of the linears already quantized (names in `done`) to int8 per block."""
    def fn(name, m, args):
        return (qat.int8_activations(args[0]), *args[1:]) if name in done else None
    return _hooks(linears, fn)


def _set(module: nn.Linear, q: torch.Tensor, s: torch.Tensor) -> None:
    module.weight.data = (q * s.repeat_interleave(BLOCK, 1)).to(module.weight.dtype)


@torch.no_grad()
def gptq_blocks(loaded: LoadedModel, recipe: Recipe, calibration_text: str | None = None,
                tokens: int = DEFAULT_TOKENS, progress: Callable[[dict], None] | None = None,
                options: Options = Options()) -> GPTQBlocks:
    """GPTQ-rounded int4 blocks for every linear of the decoder layers (and the tied table when the
    recipe puts it at int4 in blocks of 32), by parameter name, from `tokens` calibration tokens of
    `calibration_text` (default: the bundled training text) in windows of 512. `loaded.model` is
    left as it was. progress: called after each layer with {"layer", "layers", "seconds"}."""
    check_recipe(recipe)
    model, c = loaded.model, loaded.config
    if c.embedding_head is not None:
        raise ValueError("--gptq: calibrates a causal LM; embedding models are not supported")
    if loaded.tokenizer is None:
        raise ValueError(f"--gptq: {loaded.source} has no tokenizer to read the calibration text with")
    if options.table not in ("rtn", "gptq"):
        raise ValueError(f"GPTQ table rounding {options.table!r}: 'rtn' or 'gptq'")
    ids = loaded.tokenizer.encode(default_calibration_text() if calibration_text is None else calibration_text)
    if len(ids) < MIN_TOKENS or tokens < MIN_TOKENS:
        raise ValueError(f"--calibration: {len(ids)} tokens of text, {tokens} asked; GPTQ needs at least {MIN_TOKENS}")
    seq = min(SEQ_LEN, c.max_position, len(ids), tokens)
    count = max(1, tokens // seq)
    wins = list(windows(torch.tensor(ids), seq, c.bos_id, None, count))
    batches = [torch.cat(wins[k:k + BATCH]) for k in range(0, count, BATCH)]
    act = recipe.activations == "int8" if options.int8_activations is None else options.int8_activations
    table = recipe.embedding_bits == 4 and recipe.embedding_block == BLOCK
    params = dict(model.named_parameters())
    saved = {n: p.data for n, p in params.items()}
    out, t0 = GPTQBlocks(), time.perf_counter()
    try:
        if table:       # the layers see the lookup of the int4 table, rounded to nearest
            nearest = rtn_blocks(saved[TABLE], options.scale_search)
            params[TABLE].data = torch.from_numpy(nearest.dequantized())
            if options.table == "rtn":
                out[TABLE] = nearest
        cal = _Calibration(model, batches)
        layers = model.model.layers
        for i, layer in enumerate(layers):
            linears, done = _linears(layer), set()
            groups = _groups(cal, i, linears)
            with _int8_inputs(linears, done) if act else contextlib.nullcontext():
                for passed in (groups if options.sequential else [sum(groups, [])]):
                    firsts = [g for g in groups if g[0] in passed]
                    hs = _hessians(cal, i, {g[0]: linears[g[0]] for g in firsts}, act)
                    for g in firsts:
                        q, s = gptq_matrix(torch.cat([linears[n].weight for n in g]), hs[g[0]], options.act_order,
                                           search=options.scale_search)
                        r = 0
                        for n in g:
                            rows = linears[n].out_features
                            out[f"model.layers.{i}.{n}.weight"] = to_blocks(q[r:r + rows], s[r:r + rows])
                            _set(linears[n], q[r:r + rows], s[r:r + rows])
                            done.add(n)
                            r += rows
                cal.xs = cal.run(i)
            if progress:
                progress({"layer": i + 1, "layers": len(layers), "seconds": time.perf_counter() - t0})
        if table and options.table == "gptq":
            h = torch.zeros(c.hidden_size, c.hidden_size, dtype=torch.float64)
            for x in cal.xs:
                x = model.model.norm(x).reshape(-1, c.hidden_size)
                x = qat.int8_activations(x) if act else x
                h += (x.T @ x).double()
            out[TABLE] = to_blocks(*gptq_matrix(saved[TABLE], h, options.act_order, HEAD_ROWS,
                                                          options.scale_search, HEAD_DAMP))
    finally:
        for n, p in params.items():
            p.data = saved[n]
    out.info = {"method": "gptq", "calibration_tokens": count * seq, "calibration_windows": count,
                "window": seq, "act_order": options.act_order, "table": options.table if table else None,
                "int8_activations": act, "sequential": options.sequential, "scale_search": options.scale_search,
                "damping": DAMP, **({"head_damping": HEAD_DAMP} if table and options.table == "gptq" else {}),
                "seconds": round(time.perf_counter() - t0, 1)}
    return out


@contextlib.contextmanager
def quantized_weights(loaded: LoadedModel, stored: dict[str, StoredBlocks]):
    """Within the block, the model's parameters named in `stored` hold the blocks' dequantized values
    (what the LiteRT exporter's lossless import needs in the float model); the originals afterwards."""
    params = dict(loaded.model.named_parameters())
    missing = sorted(set(stored) - set(params))
    if missing:
        raise ValueError(f"quantized blocks for parameters the model does not have: {', '.join(missing[:3])}")
    saved = {n: params[n].data for n in stored}
    try:
        for n, b in stored.items():
            params[n].data = torch.from_numpy(b.dequantized()).to(saved[n].dtype)
        yield
    finally:
        for n, t in saved.items():
            params[n].data = t

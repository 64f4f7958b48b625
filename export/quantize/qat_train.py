"""Quantization-aware training, part 2: distillation on a text and the GGUF checkpoint.

The student is the model with fake quantization swapped in (qat.prepare); the teacher is a frozen
float copy of the same model, made once. Loss: KL(teacher || student) over the whole vocabulary at
every position (logit distillation fits the quantized model to the float one, which is what
`validate` measures; plain next-token loss would also move it towards the training text). Windows
of `seq_len` tokens start with BOS and are drawn at random from the first 90% of the text's tokens;
the last 10% are held out to measure KL and top-1 agreement before (post-training quantization) and
after QAT. The checkpoint stores the quantized weights in the GGUF block types QAT simulated, so its
integers are exactly the ones QAT trained (gguf.quants.quantize of the final latent weights)."""
from __future__ import annotations

import copy
import dataclasses
import math
import resource
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..models.checkpoints import LoadedModel
from ..models.checkpoints.gguf_writer import storable, write_gguf
from . import qat
from .recipes import Recipe

QAT_RECIPE_KEY = "gemma_export.qat.recipe"   # GGUF metadata: the recipe trained for; marks a checkpoint as ours
HELD_OUT = 0.1         # fraction of the text's tokens kept for evaluation
EVAL_WINDOWS = 4


@dataclasses.dataclass
class QATResult:
    steps: int
    seconds: float
    losses: list[float]
    before: dict            # held-out {"kl", "top1"} of post-training quantization
    after: dict             # ... and after QAT
    types: dict             # parameter name -> GGUF type of the quantized weights


def split_tokens(ids: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training tokens, held-out tokens) of a tokenized text, checked to be long enough."""
    n_held = max(int(len(ids) * HELD_OUT), seq_len)
    if len(ids) - n_held < 2 * seq_len:
        raise ValueError(f"--data: {len(ids)} tokens are too few for --seq-len {seq_len} "
                         f"(need {2 * seq_len + n_held})")
    t = torch.tensor(ids)
    return t[:-n_held], t[-n_held:]


def windows(tokens: torch.Tensor, seq_len: int, bos: int, gen: torch.Generator | None, count: int):
    """`count` windows [1, seq_len]: BOS then seq_len - 1 consecutive tokens (random starts with a
    generator, else evenly spaced)."""
    last = len(tokens) - (seq_len - 1)
    for i in range(count):
        s = int(torch.randint(last, (1,), generator=gen)) if gen is not None else i * last // count
        yield torch.cat((torch.tensor([bos]), tokens[s:s + seq_len - 1]))[None]


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); logits [B, T, V]."""
    s = F.log_softmax(student_logits.flatten(0, 1), -1)
    t = F.log_softmax(teacher_logits.flatten(0, 1), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


@torch.no_grad()
def evaluate(student, teacher, batches: list[torch.Tensor]) -> dict:
    kl, agree, n = 0.0, 0, 0
    for x in batches:
        pos = torch.arange(x.shape[1])
        s, t = student(x, pos)[0], teacher(x, pos)[0]
        kl += float(kl_to_teacher(s, t)) * x.shape[1]
        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
        n += x.shape[1]
    return {"kl": kl / n, "top1": agree / n}


def _lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to zero."""
    warm = max(1, steps // 10)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def train(loaded: LoadedModel, ids: list[int], recipe: Recipe, steps: int, *, lr: float = 1e-4,
          seq_len: int = 128, train_table: bool = False, seed: int = 0, teacher: torch.nn.Module | None = None,
          progress: Callable[[dict], None] | None = None) -> QATResult:
    """Distil `teacher` (default: a float copy of `loaded.model`) into the fake-quantized `loaded.model`, in
    place; on return the model is plain again with every quantized weight on its quantization grid. A separate
    teacher resumes QAT from a QAT checkpoint (whose own copy would be the quantized model)."""
    scheme = qat.Scheme.of(recipe)
    train_ids, held = split_tokens(ids, seq_len)
    bos = loaded.config.bos_id
    held_batches = list(windows(held, seq_len, bos, None, EVAL_WINDOWS))
    teacher = (teacher or copy.deepcopy(loaded.model)).eval().requires_grad_(False)
    loaded.stored = {}                            # the source's quantized blocks no longer match the weights
    student = qat.prepare(loaded.model, scheme, train_table).train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    before = evaluate(student, teacher, held_batches)
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step, x in enumerate(windows(train_ids, seq_len, bos, gen, steps)):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        pos = torch.arange(x.shape[1])
        with torch.no_grad():
            target = teacher(x, pos)[0]
        loss = kl_to_teacher(student(x, pos)[0], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress({"step": step + 1, "steps": steps, "loss": losses[-1],
                      "s_per_step": (time.perf_counter() - t0) / (step + 1)})
    seconds = time.perf_counter() - t0
    after = evaluate(student.eval(), teacher, held_batches)
    del opt, teacher
    types = qat.finalize(student)
    with torch.no_grad():                         # norms: the value a float32 GGUF round trip gives
        for name, p in student.named_parameters():
            if name not in types:
                p.copy_(storable(name, p))
    return QATResult(steps, seconds, losses, before, after, types)


def save(loaded: LoadedModel, result: QATResult, out: str | Path, recipe: Recipe) -> Path:
    """The trained model as a GGUF checkpoint (metadata and tokenizer from the source)."""
    source, proto = None, None
    if loaded.source.suffix == ".gguf":
        from ..models.checkpoints.gguf_loader import load_gguf
        source = load_gguf(loaded.source).reader
    elif (loaded.source / "tokenizer.model").exists():
        proto = (loaded.source / "tokenizer.model").read_bytes()
    state = dict(loaded.model.state_dict())
    return write_gguf(out, loaded.config, state, result.types, source=source, tokenizer_proto=proto,
                      encoders=qat.ENCODERS,
                      extra={QAT_RECIPE_KEY: recipe.name,
                             "gemma_export.qat.source": loaded.source.name,
                             "gemma_export.qat.steps": str(result.steps)})


def _is_qat_checkpoint(path: Path) -> bool:
    """`path` is a GGUF that `gemma-export qat` wrote (its metadata carries our recipe key)."""
    import gguf
    try:
        return path.is_file() and QAT_RECIPE_KEY in gguf.GGUFReader(path).fields
    except Exception:                     # anything gguf-py cannot read is not ours
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model: str | None, data: str | Path, steps: int, out: str | Path, recipe_name: str = "int4", *,
        lr: float = 1e-4, seq_len: int = 128, train_table: bool = False, teacher: str | None = None,
        progress: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """`gemma-export qat`: load, distil, write the checkpoint; returns a summary. `teacher`: the float model
    to distil (default: `model` itself; give the original when `model` is a QAT checkpoint, to resume).
    An existing `out` is replaced only when `gemma-export qat` wrote it, or with `force`."""
    from ..converters.output import check_out, sweep_stale
    from ..models.checkpoints import load_model, resolve
    from .recipes import RECIPES
    if Path(out).suffix != ".gguf":
        raise ValueError(f"--out {out}: the checkpoint is a GGUF file; name it *.gguf")
    sweep_stale(check_out(out, force=force, reads=(resolve(model), teacher and resolve(teacher), data), file=True,
                          ours=_is_qat_checkpoint))      # and the temporary files of killed runs beside it
    if recipe_name not in RECIPES:
        raise ValueError(f"--recipe {recipe_name}: unknown recipe; known: {', '.join(RECIPES)}")
    recipe = RECIPES[recipe_name]
    qat.Scheme.of(recipe)                          # an unsupported recipe fails before any work
    if steps < 1 or seq_len < 2:
        raise ValueError(f"--steps {steps} / --seq-len {seq_len}: need at least 1 step of 2 tokens")
    data = Path(data)
    if not data.is_file():
        raise ValueError(f"--data {data}: no such file")
    t0 = time.perf_counter()
    loaded = load_model(model)
    if loaded.tokenizer is None:
        raise ValueError(f"--model {loaded.source}: no tokenizer.model; QAT needs one to read --data")
    ids = loaded.tokenizer.encode(data.read_text(encoding="utf-8"))
    teacher_model = None
    if teacher is not None:
        t = load_model(teacher)
        shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in (t.model, loaded.model)]
        if shapes[0] != shapes[1]:      # same parameters (names and shapes); metadata such as float32 eps may differ
            diff = sorted(set(shapes[0].items()) ^ set(shapes[1].items()))[:3]
            raise ValueError(f"--teacher {teacher}: not the architecture of --model {loaded.source} "
                             f"(parameters differ: {', '.join(f'{n} {s}' for n, s in diff)})")
        teacher_model = t.model
    load_s = time.perf_counter() - t0
    result = train(loaded, ids, recipe, steps, lr=lr, seq_len=seq_len, train_table=train_table,
                   teacher=teacher_model, progress=progress)
    path = save(loaded, result, out, recipe)
    return {"checkpoint": str(path), "bytes": path.stat().st_size, "source": str(loaded.source),
            "recipe": recipe.name, "steps": steps, "seq_len": seq_len, "lr": lr, "train_table": train_table,
            "teacher": str(teacher) if teacher is not None else str(loaded.source),
            "data_tokens": len(ids), "load_s": round(load_s, 1), "train_s": round(result.seconds, 1),
            "s_per_step": round(result.seconds / steps, 2), "peak_rss_mb": round(peak_rss_mb()),
            "held_out": {"ptq": result.before, "qat": result.after},
            "loss_first": result.losses[0], "loss_last": result.losses[-1]}

"""A sweep plan (TOML) read and checked whole before any work, and its cells: every model x recipe x target it
names, each with the CPU and memory it asks the scheduler for.

    models = ["gemma3-270m", {path = "ckpt/", name = "mine", recipes = ["int4"], targets = ["onnx"]}]
    recipes = ["fp32", "int8", "int4", "mixed", "auto"]
    targets = ["onnx", "android"]
    context = 2048                    # optional: each target's default otherwise
    prefill = [32, 128]               # optional: LiteRT prefill lengths
    [validate]                        # optional: validation on, with the default bar
    enabled = true
    min_top1 = 0.9                    # --min-top1 / --max-kl
    max_kl = 0.5
    [auto]                            # the `auto` recipe's bar (required with it) and size cap
    min_top1 = 0.9
    max_mb = 300
    [profile]                         # optional: none by default
    host = true                       # on the node that built the artifact
    runs = 1
    threads = 2                       # default: the task's CPUs
    prompt_lengths = [128, 512]
    decode_tokens = 128
    spin = false
    adb = [{serial = "R5CT30", runner = "bin/litert_lm_main"}]   # phones: Ray resource "adb:SERIAL"
    [resources]                       # optional overrides of the estimates below
    cpus = 2
    memory_gb = 8

A model's own `recipes` / `targets` replace the plan's for that model; its `memory_gb` the estimate.

The memory a cell asks for (`estimate_gb`) is the peak RSS of one export process, from the model's parameter
count P (counted on the meta device from its config): 1.5 GB for Python, torch and the runtimes' libraries, plus
per parameter 4 bytes for the float32 reference model, the converter's working set (ONNX, quantized while built:
8 bytes; LiteRT, litert-torch's trace and ai-edge-quantizer's copies: 16), 8 for validation (the simulated recipe
model and the artifact loaded in its runtime) and 8 for `auto`'s planning (its simulated copies). On the bundled
270M (P = 268M) that is 6.9 GB for ONNX and 9.0 GB for android with validation (6.9 GB without), beside the
6.7-6.8 and 8.7 GB measured (README). The 270M's 168M-parameter vocabulary table dominates, and
ai-edge-quantizer's working set grows with its largest tensor, so for larger models the estimate errs high (a 1B
LiteRT conversion measured 5.1-7.4 GB without validation, estimated 21.5): fewer cells share a node, none
oversubscribes it. CPUs: 1 for models under 50M parameters (the tiny test models), 2 under 2B, 4 above, capped
by the largest node; the task runs torch and the profiler with that many threads."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path

GB = 1e9
BASE_GB = 1.5
BYTES_PER_PARAM = {"reference": 4, "onnx": 8, "litert": 16, "validate": 8, "auto": 8}
KEYS = {"models", "recipes", "targets", "context", "prefill", "validate", "auto", "profile", "resources"}
SECTIONS = {"validate": {"enabled", "min_top1", "max_kl"}, "auto": {"min_top1", "max_mb"},
            "profile": {"host", "runs", "threads", "prompt_lengths", "decode_tokens", "spin", "adb"},
            "resources": {"cpus", "memory_gb"}}
MODEL_KEYS = {"path", "name", "recipes", "targets", "memory_gb"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One export -> validate -> profile of the plan."""
    model: str                  # the model's name in the plan (and in the artifact's folder name)
    source: str                 # the path load_model reads
    recipe: str
    target: str
    format: str                 # the target's: onnx | litert
    parameters: int
    options: dict               # context, prefill, validate, auto, profile: what the plan asks of every cell
    cpus: int
    memory_gb: float

    @property
    def name(self) -> str:
        return f"{self.model}-{self.target}-{self.recipe}"

    def key(self, source_digest: str, tool_version: str) -> str:
        """What makes a result reusable: the same inputs (the checkpoint's bytes, the cell and its folder, the
        options) and the same tool; resources are not inputs."""
        blob = json.dumps({"name": self.name, "source": source_digest, "recipe": self.recipe, "target": self.target,
                           "options": self.options, "tool": tool_version}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def estimate_gb(parameters: int, fmt: str, validate: bool, auto: bool) -> float:
    """Peak RSS of one cell's process (module docstring: how)."""
    per = BYTES_PER_PARAM["reference"] + BYTES_PER_PARAM[fmt] + validate * BYTES_PER_PARAM["validate"] + \
        auto * BYTES_PER_PARAM["auto"]
    return round(BASE_GB + parameters * per / GB, 2)


def estimate_cpus(parameters: int) -> int:
    return 1 if parameters < 50e6 else 2 if parameters < 2e9 else 4


@dataclasses.dataclass(frozen=True)
class Plan:
    path: Path
    cells: tuple[Cell, ...]
    phones: tuple[dict, ...]    # {"serial", "runner"}


class _Checker:
    """Type checks that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, why: str):
        raise ValueError(f"{self.path}: {key}: {why}")

    def keys(self, table, known: set, where: str = "") -> None:
        if not isinstance(table, dict):
            self.fail(where, "expected a table")
        for k in table:
            if k not in known:
                self.fail(f"{where}{'.' if where else ''}{k}", f"unknown key; known: {', '.join(sorted(known))}")

    def number(self, key: str, v, lo: float, hi: float = float("inf"), integer: bool = False):
        kind = int if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or not lo <= v <= hi:
            self.fail(key, f"{v!r}: expected {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
        return v

    def strings(self, key: str, v) -> list[str]:
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            self.fail(key, "expected a non-empty list of names")
        if len(set(v)) != len(v):
            self.fail(key, f"{v}: a name is repeated")
        return v

    def lengths(self, key: str, v) -> list[int]:
        if not isinstance(v, list) or not v:
            self.fail(key, "expected a non-empty list of positive integers")
        return [self.number(f"{key}[{i}]", x, 1, integer=True) for i, x in enumerate(v)]

    def flag(self, key: str, v) -> bool:
        if not isinstance(v, bool):
            self.fail(key, f"{v!r}: expected true or false")
        return v


def load_plan(path: str | Path) -> Plan:
    """The plan in `path`, every value checked (ValueError naming the file and the key) before any work."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the plan: {getattr(e, 'strerror', None) or e}") from None
    c = _Checker(path)
    c.keys(raw, KEYS)
    for section, known in SECTIONS.items():
        c.keys(raw.get(section, {}), known, section)
    for key in ("models", "recipes", "targets"):
        if key not in raw:
            c.fail(key, "missing")
    options = _options(c, raw)
    phones = _phones(c, raw.get("profile", {}).get("adb", []))
    res = raw.get("resources", {})
    cpus = c.number("resources.cpus", res["cpus"], 1, integer=True) if "cpus" in res else None
    memory = c.number("resources.memory_gb", res["memory_gb"], 0.1) if "memory_gb" in res else None
    models = raw["models"]
    if not isinstance(models, list) or not models:
        c.fail("models", "expected a non-empty list of model paths or tables")
    recipes, targets = c.strings("recipes", raw["recipes"]), c.strings("targets", raw["targets"])
    cells, names = [], set()
    for i, entry in enumerate(models):
        m = _model(c, f"models[{i}]", entry, recipes, targets, path.parent)
        if m["name"] in names:
            c.fail(f"models[{i}].name", f"{m['name']}: two models have this name (give each a `name`)")
        names.add(m["name"])
        for target in m["targets"]:
            for recipe in m["recipes"]:
                fmt = _check_cell(c, m["key"], recipe, target, options)
                auto = recipe == "auto"
                cells.append(Cell(m["name"], m["source"], recipe, target, fmt, m["parameters"], options,
                                  cpus or estimate_cpus(m["parameters"]),
                                  m.get("memory_gb") or memory or estimate_gb(m["parameters"], fmt,
                                                                              options["validate"]["enabled"], auto)))
    return Plan(path, tuple(cells), phones)


def _options(c: _Checker, raw: dict) -> dict:
    v, a, p = raw.get("validate", {}), raw.get("auto", {}), raw.get("profile", {})
    out = {"context": c.number("context", raw["context"], 1, integer=True) if "context" in raw else None,
           "prefill": c.lengths("prefill", raw["prefill"]) if "prefill" in raw else None,
           "validate": {"enabled": c.flag("validate.enabled", v.get("enabled", True)),
                        **{k: c.number(f"validate.{k}", v[k], 0, 1 if k == "min_top1" else float("inf"))
                           for k in ("min_top1", "max_kl") if k in v}},
           "auto": {**({"min_top1": c.number("auto.min_top1", a["min_top1"], 1e-9, 1)} if "min_top1" in a else {}),
                    **({"max_mb": c.number("auto.max_mb", a["max_mb"], 1e-9)} if "max_mb" in a else {})},
           "profile": {"host": c.flag("profile.host", p.get("host", False)),
                       "runs": c.number("profile.runs", p.get("runs", 1), 1, integer=True),
                       "threads": c.number("profile.threads", p["threads"], 1, integer=True) if "threads" in p else None,
                       "prompt_lengths": c.lengths("profile.prompt_lengths", p.get("prompt_lengths", [128, 512])),
                       "decode_tokens": c.number("profile.decode_tokens", p.get("decode_tokens", 128), 1, integer=True),
                       "spin": c.flag("profile.spin", p.get("spin", True)),
                       "adb": sorted(x["serial"] for x in _phones(c, p.get("adb", [])))}}
    return out


def _phones(c: _Checker, adb) -> tuple[dict, ...]:
    import re
    if not isinstance(adb, list):
        c.fail("profile.adb", "expected a list of {serial, runner} tables")
    out = []
    for i, phone in enumerate(adb):
        key = f"profile.adb[{i}]"
        c.keys(phone, {"serial", "runner"}, key)
        serial, runner = phone.get("serial"), phone.get("runner")
        if not isinstance(serial, str) or not re.fullmatch(r"[\w.:-]+", serial):
            c.fail(f"{key}.serial", f"{serial!r}: not a device serial (letters, digits, '.', ':', '-', '_')")
        if not isinstance(runner, str) or not runner:
            c.fail(f"{key}.runner", "the litert_lm_main / benchmark_model binary to push, as a path on the phone's node")
        out.append({"serial": serial, "runner": runner})
    if len({p["serial"] for p in out}) != len(out):
        c.fail("profile.adb", "a serial is repeated")
    return tuple(out)


def _model(c: _Checker, key: str, entry, recipes, targets, root: Path) -> dict:
    """A model entry: its name, the path to read, its cells' recipes / targets, its parameter count."""
    from export.models.checkpoints import read_config, resolve
    from export.models.checkpoints.default import DEFAULT_MODEL
    from export.models.gemma import count_parameters
    if isinstance(entry, str):
        entry = {"path": entry}
    c.keys(entry, MODEL_KEYS, key)
    given = entry.get("path")
    if not isinstance(given, str) or not given:
        c.fail(f"{key}.path", "expected a checkpoint path (a Hugging Face folder, a .gguf) or " + DEFAULT_MODEL)
    path = given if given == DEFAULT_MODEL else str((root / given) if not Path(given).is_absolute() else given)
    try:
        source = resolve(path)
        parameters = count_parameters(read_config(source))
    except (ValueError, OSError) as e:
        c.fail(f"{key}.path", f"{given}: {str(e).splitlines()[0]}")
    name = entry.get("name") or (source.stem if source.suffix == ".gguf" else source.name)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        c.fail(f"{key}.name", f"{name!r}: letters, digits, '-', '_' and '.' only (it names the artifact folders)")
    out = {"key": key, "name": name, "source": str(source), "parameters": parameters,
           "recipes": c.strings(f"{key}.recipes", entry["recipes"]) if "recipes" in entry else recipes,
           "targets": c.strings(f"{key}.targets", entry["targets"]) if "targets" in entry else targets}
    if "memory_gb" in entry:
        out["memory_gb"] = c.number(f"{key}.memory_gb", entry["memory_gb"], 0.1)
    return out


def _check_cell(c: _Checker, key: str, recipe: str, target: str, options: dict) -> str:
    """The cell's format; a recipe its target cannot build, or `auto` without its bar, fails the plan."""
    from export.quantize.recipes import AUTO
    from export.quantize.recipes import recipe as recipe_for
    from export.targets import target as target_for
    try:
        t = target_for(target)
        recipe_for("int4" if recipe == AUTO else recipe, t.format)
    except ValueError as e:
        c.fail(f"{key}: {target} x {recipe}", str(e))
    if recipe == AUTO and "min_top1" not in options["auto"]:
        c.fail("auto.min_top1", "the `auto` recipe needs the bar it plans for")
    if options["prefill"] and t.format == "onnx":
        c.fail("prefill", f"target {target} builds ONNX, which has no prefill signatures")
    return t.format

"""`gemma-export --target NAME`: load -> quantize + convert (+ bundle) -> validate -> report, one straight
line. The target's profile (export/targets.py) supplies every setting a flag does not override. The artifact
is byte-identical for the same inputs; the report (fidelity figures, timings, and with --profile the host
measurement and the target devices' estimates) goes beside it as `<artifact>.report.json` / `.md`, outside
the artifact. A failed validation keeps the artifact (it is valid output) and exits 1."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import sys
import threading
import time
from pathlib import Path

from runtime_py.files import write_atomic

from .converters.artifact import SOURCE_MMPROJ

SPINNER = "|/-\\"
STEP_UPS = 2            # --quant auto: at most this many larger plans converted after the first misses the bar
VALIDATION_KEYS = ("passed", "failures", "top1_agreement", "kl_divergence", "max_abs_logit_diff",
                   "greedy_match_tokens", "greedy_tokens", "perplexity", "reference_perplexity", "embedding_cosine",
                   "retrieval_top10_overlap",
                   "conversion", "quantization")


class Progress:
    """Numbered steps on stderr; on a terminal the running step shows a spinner and its elapsed time."""

    def __init__(self, steps: list[str], stream=None, quiet: bool = False):
        self.steps, self.stream, self.quiet = steps, stream or sys.stderr, quiet
        self.live = not quiet and getattr(self.stream, "isatty", lambda: False)()
        self.seconds: dict[str, float] = {}

    def note(self, text: str) -> None:
        """A line of progress inside the running step (not on a live terminal line: it would be overwritten)."""
        if not self.quiet and not self.live:
            print(f"      {text}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, detail: str = ""):
        label = f"[{self.steps.index(name) + 1}/{len(self.steps)}] {name}{': ' + detail if detail else ''}"
        t0, done = time.perf_counter(), threading.Event()

        def spin():
            for i in itertools.count():
                if done.wait(0.2):
                    return
                self.stream.write(f"\r{label} {SPINNER[i % 4]} {time.perf_counter() - t0:6.1f} s")
                self.stream.flush()

        spinner = threading.Thread(target=spin, daemon=True) if self.live else None
        if spinner:
            spinner.start()
        elif not self.quiet:
            print(f"{label} ...", file=self.stream, flush=True)
        try:
            yield
        finally:
            done.set()
            if spinner:
                spinner.join()
            self.seconds[name] = round(time.perf_counter() - t0, 2)
            if not self.quiet:
                print(f"{chr(13) if spinner else ''}{label} done in {self.seconds[name]} s" + " " * 8,
                      file=self.stream, flush=True)


def default_out(source: Path, target: str, recipe: str) -> Path:
    name = source.stem if source.suffix == ".gguf" else source.name
    return Path(f"out/{name}-{target}-{recipe}")


def run(args) -> int:
    """The export command (args from export.cli): prints the summary (JSON with --json); 0, or 1 when the
    artifact fails validation."""
    from .converters.output import check_out
    from .models.checkpoints import load_model, read_config, released, resolve
    from .quantize.recipes import recipe as recipe_for
    from .targets import target as target_for

    target = target_for(args.target)
    source, mmproj = resolve(args.model), getattr(args, "mmproj", None)
    # a pair of files that do not fit, or a vision model asked for what it cannot do, is refused before any work
    # (a lone GGUF is a text model: its metadata is not read twice)
    config = read_config(source, mmproj) if mmproj is not None or source.is_dir() else None
    recipe = args.quant or target.default_recipe(config)
    auto = _auto_request(args, recipe)
    # an unsupported combination fails before any work (auto: checked as the int4 recipe it starts from)
    resolved = recipe_for("int4" if auto else recipe, "web" if target.name == "web" else target.format)
    calibration = _gptq_calibration(args, resolved, auto is not None)
    prefill = tuple(args.prefill) if args.prefill else None
    if prefill and target.format == "onnx":
        raise ValueError(f"--prefill: --target {target.name} builds ONNX, which has no prefill signatures")
    steps = ["load", *(["plan"] if auto else []), *(["gptq"] if calibration is not None else []), "convert",
             *(["verify"] if auto else []),
             *(["validate"] if args.validate else []), *(["profile"] if args.profile else []), "report"]
    out = Path(args.out) if args.out else default_out(source, target.name, recipe)
    check_out(out, force=getattr(args, "force", False), reads=(source, mmproj))     # before any work
    _check_vision_request(args, target, config, auto is not None or calibration is not None)
    progress = Progress(steps, quiet=args.json)
    with progress.step("load", str(args.model or "bundled Gemma 3 270M") + (f" + {mmproj}" if mmproj else "")):
        loaded = load_model(args.model, mmproj=mmproj)
        sae = _sae_request(args, loaded.config)
    if not args.quant:          # a GGUF's kind is known now (an embedding model's default recipe is its own)
        recipe, guessed = target.default_recipe(loaded.config), recipe
        if not args.out and recipe != guessed:      # the default folder names the recipe the run builds
            out = default_out(source, target.name, recipe)
            check_out(out, force=getattr(args, "force", False), reads=(source, mmproj))
    quant = "" if recipe == "fp32" else f"quantize {recipe} + "
    plan_report = None
    if auto is not None:
        from .quantize.auto import plan_for
        with progress.step("plan", f"the smallest per-weight plan reaching top-1 {auto['min_top1']:g} on "
                                   f"{auto['calibration'][0]}"):
            resolved, plan_report, planner, plan = plan_for(
                loaded, target.format, auto["min_top1"], auto["max_mb"], auto["calibration"][1],
                progress=progress.note, fan_out=_fan_out(auto["address"], progress.note))
            plan_report["calibration"] = auto["calibration"][0]
        recipe = resolved
    rounded = {}
    if calibration is not None:
        from .quantize.gptq import gptq_blocks
        with progress.step("gptq", f"int4 rounding calibrated on {calibration[0]}"):
            rounded = gptq_blocks(loaded, resolved, calibration[1], **calibration[2])
        # a new LoadedModel around the same model: the caller's (possibly shared) one is left as it was
        loaded = dataclasses.replace(loaded, stored={**loaded.stored, **rounded},
                                     rounding={**rounded.info, "calibration": calibration[0]})
    with progress.step("convert", f"{quant}{target.bundle} -> {out}"), _weights_of(loaded, rounded):
        # the exporter may free the float model once converted (a vision model's LiteRT export does, so that the
        # quantizer runs without it); the validation then reads the checkpoint again. GPTQ's rounded weights are
        # put back into the model afterwards: kept.
        # (--quant auto converts again if its verify step steps up: the model is kept for it)
        convert = functools.partial(target.export, loaded, out, context=args.context, prefill=prefill,
                                    vision_quant=getattr(args, "vision_quant", None),
                                    consume=not rounded and auto is None, **({"sae": sae} if sae else {}))
        convert(recipe)
    if auto is not None:
        with progress.step("verify", "the artifact on the calibration windows its plan was chosen on"):
            plan_report = _verify_plan(planner, plan, plan_report, auto, out, convert, progress.note)
    del convert                 # it holds the model, which `del loaded` below releases
    manifest = json.loads((out / "manifest.json").read_text())
    summary = {"artifact": str(out), "target": target.name, "format": target.format, "bundle": target.bundle,
               "recipe": manifest["recipe"], **({"plan": plan_report} if plan_report else {}), "context": manifest.get("context_length"),
               "prefill": manifest.get("prefill_lengths"), "source": manifest["source"],
               **({SOURCE_MMPROJ: manifest[SOURCE_MMPROJ]} if SOURCE_MMPROJ in manifest else {}),
               "files": {name: f["bytes"] for name, f in manifest["files"].items()},
               "bytes": sum(f["bytes"] for f in manifest["files"].values()),
               "sha256": {name: f["sha256"] for name, f in manifest["files"].items()}, "validation": None,
               **({"rounding": manifest["rounding"]} if "rounding" in manifest else {})}
    if args.validate:
        from .validate import validate
        with progress.step("validate", "artifact vs the simulated recipe and vs the float model"):
            # the model loaded above, not a second copy, unless the export freed it
            report = validate(out, loaded=None if released(loaded.model) else loaded, bar=user_bar(args))
        summary["validation"] = {k: report[k] for k in VALIDATION_KEYS if k in report}
    del loaded
    if args.profile:
        with progress.step("profile", f"this host, {args.runs} runs; estimates for {', '.join(target.devices)}"):
            summary["profile"] = _profile(out, target, args)
    with progress.step("report", f"{out}.report.json / .md"):
        summary["seconds"] = dict(progress.seconds)
        summary["report"] = {"json": f"{out}.report.json", "md": f"{out}.report.md"}
        write_atomic(summary["report"]["json"], json.dumps(summary, indent=2) + "\n")
        write_atomic(summary["report"]["md"], markdown(summary))
    print(json.dumps(summary, indent=2) if args.json else text_summary(summary))
    return 0 if summary["validation"] is None or summary["validation"]["passed"] else 1


def _sae_request(args, config):
    """--sae / --sae-k / --sae-encoder as an export.models.sae.SaeRequest (None without --sae); the SAEs are
    checked against the model before anything is converted."""
    if not getattr(args, "sae", None):
        return None
    from runtime_py.contract import DEFAULT_SAE_K

    from .models.sae import SaeRequest, load_saes
    return SaeRequest(load_saes(args.sae, config), getattr(args, "sae_k", None) or DEFAULT_SAE_K,
                      getattr(args, "sae_encoder", None) or "fp32")


def _check_vision_request(args, target, config, planned: bool) -> None:
    """What a vision-language model can be exported with, and flags only they take, checked before any work."""
    vision = config is not None and hasattr(config, "vision")
    if getattr(args, "vision_quant", None) and not vision:
        raise ValueError(f"--vision-quant: {args.model or 'the bundled model'} is a text model (no vision graph)")
    if vision and planned:
        raise ValueError(f"--quant auto / --gptq: not for vision-language models yet; use a fixed recipe "
                         f"(fp32, fp16, int8, int4, ...)")


def user_bar(args):
    """The quantization bar of --min-top1 / --max-kl."""
    from .quantize.recipes import Bar
    for flag, v in (("--min-top1", args.min_top1), ("--max-kl", args.max_kl)):
        if v is not None and not v >= 0:
            raise ValueError(f"{flag} {v}: must be a number >= 0")
    if args.min_top1 is not None and args.min_top1 > 1:
        raise ValueError(f"--min-top1 {args.min_top1}: top-1 agreement is a fraction between 0 and 1")
    return Bar(min_top1_agreement=args.min_top1, max_kl_divergence=args.max_kl)


def _auto_request(args, recipe: str) -> dict | None:
    """--quant auto's bar, size cap and calibration text, checked before any work; None for other recipes."""
    from .quantize.recipes import AUTO
    max_mb = getattr(args, "max_mb", None)
    if recipe != AUTO:
        for flag, value in (("--max-mb", max_mb), ("--address", getattr(args, "address", None))):
            if value is not None:
                raise ValueError(f"{flag}: only used with --quant auto")
        return None
    if args.min_top1 is None:
        raise ValueError("--quant auto: needs the bar to plan for, --min-top1 X (e.g. 0.9)")
    if not 0 < args.min_top1 <= 1:
        raise ValueError(f"--min-top1 {args.min_top1}: top-1 agreement is a fraction between 0 and 1")
    if max_mb is not None and not max_mb > 0:
        raise ValueError(f"--max-mb {max_mb}: must be a positive number of megabytes")
    if getattr(args, "gptq", None):
        raise ValueError("--gptq: not combined with --quant auto (its int4 weights are rounded to nearest)")
    if getattr(args, "calibration_tokens", None) is not None:
        raise ValueError("--calibration-tokens: only used with --gptq")
    return {"min_top1": args.min_top1, "max_mb": max_mb, "calibration": _calibration_text(args),
            "address": getattr(args, "address", None)}


def _verify_plan(planner, plan: dict, report: dict, auto: dict, out: Path, convert, note) -> dict:
    """--quant auto: the converted artifact's own top-1 on the calibration windows its plan was measured on.
    Where the conversion lost more than the plan's margin over the bar (LiteRT's kernels round unlike its
    simulation), a larger plan covering the measured loss (quantize.auto.step_up) is converted in
    its place, up to STEP_UPS times. -> the final plan's report, with every attempt under "verified"."""
    import runtime_py

    from .quantize.auto import plan_report, step_up
    attempts = []
    while True:
        art = runtime_py.load(out)
        context = (art.manifest or {}).get("context_length") or planner.batch.shape[1]
        if context < planner.batch.shape[1]:
            note(f"not verified: --context {context} is shorter than the calibration windows "
                 f"({planner.batch.shape[1]} tokens)")
            return {**report, "verified": [{"skipped": f"context {context} < {planner.batch.shape[1]} tokens"}]}
        got = planner.artifact_top1(art.logits)
        del art
        attempts.append({"estimated_mb": round(planner.mb(plan), 1), "calibration_top1": round(planner.top1(plan), 4),
                         "artifact_calibration_top1": round(got, 4)})
        note(f"plan of {planner.mb(plan):.1f} MB: the artifact's calibration top-1 {got:.3f} "
             f"(simulated {planner.top1(plan):.3f}, bar {auto['min_top1']:g})")
        if got >= auto["min_top1"] or len(attempts) > STEP_UPS:
            break
        bigger = step_up(planner, plan, got, auto["min_top1"], auto["max_mb"])
        if bigger is None:
            attempts[-1]["step_up"] = "no larger plan covers the conversion's loss" + (
                f" within --max-mb {auto['max_mb']:g}" if auto["max_mb"] is not None else "")
            note(attempts[-1]["step_up"])
            break
        plan = bigger
        note(f"converting the plan of {planner.mb(plan):.1f} MB in its place")
        convert(planner.recipe(plan))
    return {**report, **plan_report(planner, plan, auto["min_top1"], auto["max_mb"]), "verified": attempts}


def _fan_out(address: str | None, note):
    """--address: --quant auto's sensitivity measurements as Ray tasks there (`local`: a Ray started here)."""
    if address is None:
        return None
    from .quantize.auto_ray import ray_fan_out
    from .sweep.runner import connect
    connect(None if address == "local" else address, ())
    return ray_fan_out(note)


def _calibration_text(args) -> tuple[str, str | None]:
    """(what the calibration text is, its text or None for the bundled one)."""
    calibration = getattr(args, "calibration", None)
    if calibration is None:
        return "the bundled training text (export/data/qat_train.txt)", None
    path = Path(calibration)
    if not path.is_file():
        raise ValueError(f"--calibration {calibration}: no such file")
    return str(path), path.read_text(encoding="utf-8")


def _gptq_calibration(args, recipe, auto: bool = False) -> tuple[str, str | None, dict] | None:
    """(what the calibration text is, its text or None for the bundled one, gptq_blocks' keyword
    arguments) when the export rounds with GPTQ (--gptq, or the recipe's default), else None; bad
    input fails here, before any work."""
    gptq = getattr(args, "gptq", None)
    if gptq is None:
        gptq = recipe.rounding == "gptq" and not auto
    calibration, tokens = getattr(args, "calibration", None), getattr(args, "calibration_tokens", None)
    if not gptq:
        if (calibration is not None and not auto) or tokens is not None:
            raise ValueError("--calibration / --calibration-tokens: only used with --gptq or --quant auto")
        return None
    from .quantize.gptq import MIN_TOKENS, check_recipe
    check_recipe(recipe)
    if tokens is not None and tokens < MIN_TOKENS:
        raise ValueError(f"--calibration-tokens {tokens}: GPTQ needs at least {MIN_TOKENS}")
    kwargs = {} if tokens is None else {"tokens": tokens}
    return (*_calibration_text(args), kwargs)


def _weights_of(loaded, rounded: dict):
    """The model holding the rounded weights during the conversion (the LiteRT lossless import reads
    them from the float model), or nothing to do."""
    if not rounded:
        return contextlib.nullcontext()
    from .quantize.gptq import quantized_weights
    return quantized_weights(loaded, rounded)


def _profile(out: Path, target, args) -> dict:
    """A host profile of the artifact (JSON / Markdown / PNG beside it) and estimates for the target's devices."""
    from devices.command import host_estimate
    from devices.host import profile_host
    from devices.profile import write_report
    artifact = next(out.glob("*.litertlm"), out)
    host = profile_host(artifact, threads=args.threads, runs=args.runs)
    paths = write_report(host, out.parent / f"{out.name}.profile-host")
    estimates = [host_estimate(out, name, args, host_profile=host) for name in target.devices]
    return {"host": {k: host[k] for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_s")},
            "host_report": {k: str(p) for k, p in paths.items()}, "estimates": estimates}


def text_summary(s: dict) -> str:
    v = s["validation"]
    lines = [f"artifact  {s['artifact']} ({s['bytes'] / 1e6:.1f} MB: " +
             ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in s["files"].items() if b > 1e5) + ")",
             f"target    {s['target']} ({s['format']}, {s['bundle']}), recipe {s['recipe']}, context {s['context']}"
             + (f", prefill {s['prefill']}" if s["prefill"] else "")]
    if s.get("plan"):
        pl = s["plan"]
        lines.append(f"plan      " + ", ".join(f"{n} {c}" for c, n in pl["weights_per_choice"].items()) +
                     f" weights (table {pl['table']}); calibration top-1 {pl['calibration_top1']:.3f} "
                     f"(bar {pl['min_top1']:g}), {pl['plans_measured']} plans measured in {pl['seconds']:.0f} s")
        tried = [a for a in pl.get("verified", []) if "artifact_calibration_top1" in a]
        if tried:
            lines.append("verify    the artifact's calibration top-1 " + " -> ".join(
                f"{a['artifact_calibration_top1']:.3f} ({a['estimated_mb']:.1f} MB)" for a in tried)
                + ("" if len(tried) == 1 else f": {len(tried) - 1} larger plan(s) converted")
                + (f"; {tried[-1]['step_up']}" if "step_up" in tried[-1] else ""))
    if v is None:
        lines.append("validate  skipped (--no-validate)")
    else:
        lines += validation_lines(v)
    lines += [f"          FAIL {f}" for f in (v or {}).get("failures", [])]
    if s.get("profile"):
        h = s["profile"]["host"]
        lines.append(f"host      ttft {h['ttft_ms']} ms, prefill {h['prefill_tok_s']} tok/s, decode "
                     f"{h['decode_tok_s']} tok/s, peak RSS {h['peak_rss_mb']} MB")
        lines += [f"estimate  {e['name']}: prefill {e['prefill_tok_s']} tok/s, decode {e['decode_tok_s']} tok/s "
                  f"(roofline estimate)" for e in s["profile"]["estimates"]]
    lines.append(f"report    {s['report']['md']}  (steps: " +
                 ", ".join(f"{k} {v} s" for k, v in s["seconds"].items()) + ")")
    return "\n".join(lines)


def validation_lines(v: dict) -> list[str]:
    """The two checks of a validation report, one line each (export.validate)."""
    conv, quant = v["conversion"], v["quantization"]
    verdict = lambda ok: "passed" if ok else "FAILED"  # noqa: E731
    paths = [(p, f) for p, f in conv.items() if isinstance(f, dict) and p not in ("thresholds", "vision")]
    if "embedding_cosine" in v:
        conv_text = f"embedding cosine {paths[0][1]['embedding_cosine']:.6f} to the simulated recipe"
        quant_text = (f"embedding cosine {v['embedding_cosine']:.6f} to the float model, top-10 retrieval overlap "
                      f"{v['retrieval_top10_overlap']:.3f}")
    else:
        conv_text = "; ".join(f"{p} top-1 {f['top1_agreement']:.4f}, KL {f['kl_divergence']:.1e}, rel. error "
                              f"{f['relative_error']:.1e} ({f['positions']} positions)" for p, f in paths) + \
            " vs the simulated recipe"
        if "vision" in conv:
            conv_text += (f"; image rows rel. error {conv['vision']['relative_error']:.1e} (bound "
                          f"{conv['vision']['bound']:g}, {v.get('vision_quant')} vision graph)")
        quant_text = (f"top-1 {v['top1_agreement']:.4f}, KL {v['kl_divergence']:.2e}, perplexity "
                      f"{v['perplexity']:.4f} (float {v['reference_perplexity']:.4f}), greedy "
                      f"{v['greedy_match_tokens']}/{v['greedy_tokens']} vs the float model")
    bar = ", ".join(f"{k} {x}" for k, x in quant["bar"].items())
    return [f"validate  {'PASSED' if v['passed'] else 'FAILED'}",
            f"  conversion    {verdict(conv['passed'])}: {conv_text}",
            f"  quantization  {verdict(quant['passed'])}: {quant_text} (bar: {bar})"]


def markdown(s: dict) -> str:
    lines = [f"# {s['artifact']}", "", "```", text_summary(s), "```", "",
             "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {n} | {b:,} | `{s['sha256'][n][:16]}` |" for n, b in s["files"].items()]
    if s.get("profile"):
        from devices.estimate import markdown as estimate_markdown
        lines += ["", f"Host profile: {s['profile']['host_report'].get('md')}", ""]
        lines += [estimate_markdown(e) + "\n" for e in s["profile"]["estimates"]]
    return "\n".join(lines) + "\n"

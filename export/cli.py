"""The `gemma-export` command line."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

# What library code raises for bad input (a flag, a file, a tensor named in the message); the CLI turns it, and
# adb's refusals (the user's phone setup), into exit 2. CheckpointError and the runner-output errors are ValueErrors;
# OSError: a file the user named that cannot be read or written.
BAD_INPUT = (ValueError, OSError)
EXIT_CODES = """exit status: 0 success; 1 a check failed (validation below its thresholds or bar);
2 bad input (a flag, a file, a checkpoint: one line on stderr names it; nothing is written);
130 / 143 interrupted (Ctrl-C / SIGTERM; partial output is removed)"""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (the culprit named), exit 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def _count(text: str) -> int:
    """A non-negative integer flag value."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
    return value


def _models(args) -> int:
    from .models import PRESETS, count_parameters
    from .models.vision_presets import VISION_PRESETS
    rows = [{"name": n, "family": c.family, "parameters": count_parameters(c), "layers": c.num_layers,
             "hidden_size": c.hidden_size, "context": c.max_position, "sliding_window": c.sliding_window,
             **({"image_size": c.vision.image_size, "tokens_per_image": c.tokens_per_image}
                if n in VISION_PRESETS else {})}
            for n, c in {**PRESETS, **VISION_PRESETS}.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':22} {'family':15} {'parameters':>15} {'layers':>6} {'window':>6} {'context':>8} {'image':>9}")
    for r in rows:
        image = f"{r['image_size']}px/{r['tokens_per_image']}" if "image_size" in r else "-"
        print(f"{r['name']:22} {r['family']:15} {r['parameters']:>15,} {r['layers']:>6} "
              f"{r['sliding_window'] or '-':>6} {r['context']:>8} {image:>9}")
    return 0


def _is_artifact(model: str | None) -> bool:
    p = Path(model) if model else None
    return p is not None and (p.suffix == ".litertlm" or (p / "manifest.json").exists()
                              or (p / "genai_config.json").exists())


def _generate(args) -> int:
    from runtime_py.sampling import Sampling, finish_reason, token_budget
    from runtime_py.tokenizer import StreamDecoder

    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    if _is_artifact(args.model):
        if args.mmproj is not None:
            raise ValueError(f"--mmproj {args.mmproj}: joins a text .gguf --model; {args.model} is an artifact")
        return _generate_artifact(args, sampling)
    if args.speculate:
        raise ValueError(f"--speculate {args.speculate}: needs an ONNX or --target litert artifact as --model")
    from .models.checkpoints import load_model, read_config, resolve
    from .models.generate import generate
    if args.image and args.mmproj is None and not (resolve(args.model).is_dir() and
                                                   hasattr(read_config(args.model), "vision")):
        raise ValueError(f"--image: {args.model or 'the bundled model'} is a text model; it takes no images "
                         f"(a vision-language Hugging Face folder, or a text .gguf with --mmproj, does)")
    t0 = time.perf_counter()
    loaded = load_model(args.model, mmproj=args.mmproj)
    tok = loaded.tokenizer
    if tok is None:
        raise SystemExit(f"error: {loaded.source} has no tokenizer.model")
    if loaded.config.embedding_head is not None:
        raise SystemExit(f"error: {loaded.source} is an embedding model; it does not generate text")
    load_s = time.perf_counter() - t0
    pixels = None
    if args.image:
        prompt, pixels = _image_prompt(loaded, tok, args)
    else:       # chat: the user's text cannot become turn markers (encoded with special pieces off)
        prompt = tok.chat_ids([{"role": "user", "content": args.prompt}]) if args.chat else tok.encode(args.prompt)
    stream = None
    if not args.json:
        sd = StreamDecoder(tok)
        sys.stdout.write(args.prompt if not args.chat else "")
        stream = lambda t: (sys.stdout.write(sd.push(t)), sys.stdout.flush())  # noqa: E731
    t1 = time.perf_counter()
    ids = generate(loaded.model, prompt, args.max_new_tokens, sampling, tok.stop_ids, stream, pixels=pixels)
    gen_s = time.perf_counter() - t1
    out = tok.decode(ids)
    budget = token_budget(len(prompt), args.max_new_tokens, loaded.config.max_position, loaded.source)
    if args.json:
        print(json.dumps({"model": str(loaded.source), "prompt": args.prompt, "text": out, "token_ids": ids,
                          "prompt_tokens": len(prompt), "finish_reason": finish_reason(len(ids), budget,
                                                                                       args.max_new_tokens),
                          "load_s": round(load_s, 3),
                          "generate_s": round(gen_s, 3)}))
    else:
        print(f"\n[{len(ids)} tokens in {gen_s:.2f} s; model loaded in {load_s:.1f} s]", file=sys.stderr)
    return 0


def _image_prompt(loaded, tok, args):
    """(prompt ids, pixels) of --prompt with the --image files, laid out as the checkpoint's processor does."""
    import torch

    from runtime_py.vision_api import VisionFacts
    if not hasattr(loaded.config, "vision"):
        raise ValueError(f"--image: {loaded.source} is a text model; it takes no images")
    facts = VisionFacts(loaded.config.runtime_facts(), str(loaded.source))
    if args.chat:
        items = [{"type": "image", "image": path} for path in args.image] + [{"type": "text", "text": args.prompt}]
        ids, _ = facts.chat_ids(tok, [{"role": "user", "content": items}])
    else:
        ids = facts.prompt_ids(tok, args.prompt, len(args.image))
    return ids, torch.from_numpy(facts.pixels(args.image))


def _export(args) -> int:
    from .pipeline import run
    return run(args)


def _targets(args) -> int:
    from .targets import rows
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'target':8} {'format':7} {'bundle':14} {'recipe':7} {'context':>7} {'prefill':14} runtime")
    for r in table:
        prefill = ",".join(map(str, r["prefill"])) if r["prefill"] else "-"
        print(f"{r['name']:8} {r['format']:7} {r['bundle']:14} {r['recipe']:7} {r['context']:>7} {prefill:14} "
              f"{r['runtime']}")
    return 0


def _serve_web(args) -> int:
    from .serve_web import serve
    return serve(args.artifact, args.port)


def _lengths(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas")
    return values


def _generate_artifact(args, sampling) -> int:
    import runtime_py
    t0 = time.perf_counter()
    m = runtime_py.load(args.model, threads=args.threads)
    load_s = time.perf_counter() - t0
    if m.kind != "causal":
        raise SystemExit(f"error: {args.model} is an embedding model; it does not generate text")
    on_text = None if args.json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    if not args.json and not args.chat:
        sys.stdout.write(args.prompt)
    images = {"images": args.image} if args.image and not args.chat else {}
    if args.chat:
        content = args.prompt if not args.image else \
            [{"type": "image", "image": path} for path in args.image] + [{"type": "text", "text": args.prompt}]
        g = m.chat([{"role": "user", "content": content}], max_new_tokens=args.max_new_tokens, sampling=sampling,
                   on_text=on_text, speculate=args.speculate)
    else:
        g = m.generate(args.prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, on_text=on_text,
                       speculate=args.speculate, **images)
    t = g.timings
    if args.json:
        print(json.dumps({"model": str(args.model), "prompt": args.prompt, "text": g.text, "token_ids": g.token_ids,
                          "prompt_tokens": g.prompt_tokens, "finish_reason": g.finish_reason,
                          "load_s": round(load_s, 3), "prefill_tok_s": round(t.prefill_tok_s, 2),
                          "decode_tok_s": round(t.decode_tok_s, 2),
                          **({"speculation": g.speculation.as_dict()} if g.speculation else {})}))
    else:
        print(f"\n[{len(g.token_ids)} tokens; prefill {t.prefill_tok_s:.1f} tok/s, decode {t.decode_tok_s:.1f} tok/s; "
              f"loaded in {load_s:.1f} s]", file=sys.stderr)
    return 0


def _embed(args) -> int:
    from runtime_py.prompts import embedding_prompt

    from .embed import open_embedder
    embedding_prompt(args.task, args.title)                 # a bad --task / --title is refused before loading
    if args.dim is not None and args.dim < 1:
        raise ValueError(f"--dim {args.dim}: expected a positive width (EmbeddingGemma: 768, 512, 256 or 128)")
    t0 = time.perf_counter()
    m = open_embedder(args.model, _is_artifact(args.model), args.threads)
    load_s = time.perf_counter() - t0
    if m.kind != "embedding":
        raise ValueError(f"{args.model} is a causal LM, not an embedding model; `embed` needs EmbeddingGemma")
    t1 = time.perf_counter()
    emb = m.embed(list(args.text), dim=args.dim, task=args.task, title=args.title)
    embed_s = time.perf_counter() - t1
    if args.json:
        print(json.dumps({"model": str(args.model), "task": args.task, "dim": int(emb.shape[-1]),
                          "prompt": embedding_prompt(args.task, args.title),
                          "tokens": [len(m.embedding_ids(t, args.task, args.title)) for t in args.text],
                          "embeddings": [[float(x) for x in row] for row in emb],
                          "load_s": round(load_s, 3), "embed_s": round(embed_s, 3)}))
    else:
        for row in emb:
            print(" ".join(f"{x:.6g}" for x in row))
        print(f"[{len(emb)} x {emb.shape[-1]} in {embed_s:.2f} s; model loaded in {load_s:.1f} s]", file=sys.stderr)
    return 0


def _validate(args) -> int:
    from .pipeline import user_bar
    from .validate import format_report, validate
    report = validate(args.artifact, args.model, bar=user_bar(args), mmproj=args.mmproj)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def _sweep(args) -> int:
    from .sweep.plan import load_plan
    plan = load_plan(args.plan)                  # a bad plan fails here, before anything is written
    from .sweep.runner import sweep
    address = args.address if args.address != "local" else None
    summary = sweep(plan, args.out or Path(args.plan).with_suffix(""), address)
    c = summary["counts"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{len(summary['cells'])} cells: {c['ok']} ok, {c['check_failed']} failed a check, {c['error']} "
              f"errors, {summary['skipped']} reused; {summary['wall_s']} s. " +
              ", ".join(f"{k} {v}" for k, v in summary["reports"].items()))
    return 0 if c["ok"] == len(summary["cells"]) else 1


def _qat(args) -> int:
    from .quantize.qat_train import Data, run

    def progress(p):
        if "step" in p:
            line = f"step {p['step']}/{p['steps']}  KL {p['loss']:.4f}  {p['s_per_step']:.1f} s/step"
        elif "eval" in p:
            e = p["eval"]
            line = f"eval at step {e['step']}: " + "; ".join(
                f"{k} KL {v['kl']:.4f} top-1 {v['top1']:.3f}" for k, v in e.items() if k != "step")
        elif "sampled" in p:
            line = f"sampled {p['sampled']}/{p['of']} sequences from the teacher, {p['tokens_per_s']:.0f} tok/s"
        else:
            line = f"GPTQ start: layer {p['gptq_layer']}/{p['layers']}, {p['seconds']:.0f} s"
        print(line, file=sys.stderr, flush=True)

    def eval_ids(tokenizer, config):
        from .validate import validation_ids
        return validation_ids(tokenizer, config.sliding_window, config.max_position)
    s = run(args.model, args.data, args.steps, args.out, args.recipe, lr=args.lr, seq_len=args.seq_len,
            train_table=args.train_embedding, teacher=args.teacher, init=args.init,
            calibration_tokens=args.calibration_tokens,
            sampled=Data(args.sampled_tokens, args.sampled_share, args.sampled_cache),
            eval_every=args.eval_every, eval_ids=eval_ids, progress=progress, force=args.force)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        h = s["held_out"]
        print(f"wrote {s['checkpoint']} ({s['bytes'] / 1e6:.1f} MB); held-out KL {h['ptq']['kl']:.4f} -> "
              f"{h['qat']['kl']:.4f}, top-1 {h['ptq']['top1']:.3f} -> {h['qat']['top1']:.3f}")
    return 0


def _bar_flags(p) -> None:
    from .quantize.recipes import FLOOR
    p.add_argument("--min-top1", type=float, default=None,
                   help="fail unless the artifact's top-1 agreement with the float model is at least this "
                        "(default: not checked)")
    p.add_argument("--max-kl", type=float, default=None,
                   help="fail unless the KL divergence from the float model is at most this "
                        f"(default: {FLOOR.max_kl_divergence}, the floor that catches a broken model)")


def _mmproj_flag(p, default: str = "") -> None:
    p.add_argument("--mmproj", default=None, metavar="FILE",
                   help="llama.cpp's mmproj GGUF of Gemma 3's vision tower, joined to the text .gguf --model: "
                        f"together a Gemma 3 vision-language model{default}")


def build_parser() -> argparse.ArgumentParser:
    from .converters.onnx.vision import VISION_QUANT
    from runtime_py.contract import DEFAULT_SAE_K

    from .quantize.recipes import GPTQ_SEQ, GPTQ_TOKENS, SAE_ENCODERS
    from .targets import TARGETS
    p = _Parser(prog="gemma-export", description=__doc__, epilog=EXIT_CODES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list the model presets with parameter counts")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_models)

    g = sub.add_parser("generate", help="generate text with the reference model")
    g.add_argument("--model", default=None, help="HF folder, .gguf file (default: bundled Gemma 3 270M)")
    _mmproj_flag(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_count, default=32, help="at most this many (default 32; generation "
                   "also ends when the context is full)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=_count, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma's chat template")
    g.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="an image for a vision-language model (repeatable, in order; Gemma 3: one per "
                        "<start_of_image> in the prompt, or in front of it; PaliGemma: in front)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for artifacts (default: all)")
    g.add_argument("--speculate", type=_count, default=0, metavar="K",
                   help="greedy; ONNX and --target litert folders: check up to K draft tokens from n-grams of the "
                        "prompt and output in one call (exact speculative decoding: the same tokens; default 0, off)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_generate)

    from runtime_py.prompts import EMBED_TASKS
    b = sub.add_parser("embed", help="EmbeddingGemma vectors of texts, from a checkpoint or an artifact")
    b.add_argument("text", nargs="+", help="texts to embed (one vector each)")
    b.add_argument("--model", required=True,
                   help="EmbeddingGemma: HF folder, .gguf file, ONNX artifact folder or LiteRT artifact")
    b.add_argument("--task", default=None, help=f"prompt: {', '.join(EMBED_TASKS)} (default: the text alone)")
    b.add_argument("--title", default=None, help="--task document: the document's title (default: none)")
    b.add_argument("--dim", type=int, default=None,
                   help="Matryoshka width: truncate, then re-normalise (EmbeddingGemma: 768, 512, 256, 128)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for artifacts (default: all)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_embed)

    v = sub.add_parser("validate", help="compare an artifact with its reference PyTorch model")
    v.add_argument("artifact", help="artifact folder (or .litertlm file)")
    v.add_argument("--model", default=None, help="reference checkpoint (default: the manifest's source)")
    _mmproj_flag(v, " (default: the manifest's, when --model is not given)")
    _bar_flags(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_validate)
    e = sub.add_parser("export", help="export a model to a validated deployable artifact "
                                      "(also: gemma-export --target ...)")
    e.add_argument("--target", required=True, choices=list(TARGETS), help="deployment profile (gemma-export targets)")
    e.add_argument("--model", default=None, help="HF folder, .gguf file (default: bundled Gemma 3 270M)")
    _mmproj_flag(e)
    e.add_argument("--vision-quant", default=None, choices=list(VISION_QUANT),
                   help="a vision-language model's vision graph (ONNX): fp32, fp16 or int8 (default: fp32 beside "
                        "an fp32 decoder, fp16 beside fp16, int8 beside a quantized one)")
    e.add_argument("--out", default=None, help="artifact folder (default: out/<model>-<target>-<quant>)")
    e.add_argument("--force", action="store_true", help="replace --out even if it is not a gemma-export artifact")
    e.add_argument("--quant", default=None, help="quantization recipe (default: the target's); `auto` with "
                                                 "--min-top1 X: the smallest per-weight plan reaching X")
    e.add_argument("--context", type=int, default=None, help="context length (default: the target's)")
    e.add_argument("--prefill", type=_lengths, default=None,
                   help="LiteRT prefill signature lengths, comma-separated (default: the target's)")
    e.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="round int4 weights with GPTQ (error-compensating, calibrated on a text) on the grid both "
                        "formats store exactly, instead of to nearest (default: the recipe's; int4 / mixed, blocks of 32)")
    e.add_argument("--calibration", default=None, metavar="FILE",
                   help="--gptq / --quant auto: UTF-8 calibration text (default: the bundled training text, not "
                        "the validation text)")
    e.add_argument("--max-mb", type=float, default=None, metavar="M",
                   help="--quant auto: the largest artifact weights to plan (refused, with the best of each, when "
                        "--min-top1 cannot be reached within it)")
    e.add_argument("--address", default=None,
                   help="--quant auto: measure the sensitivities as Ray tasks on this cluster (ray://HOST:PORT, "
                        "HOST:PORT, auto; local: a Ray started here)")
    e.add_argument("--calibration-tokens", type=int, default=None, metavar="N",
                   help=f"--gptq: calibration tokens, in windows of {GPTQ_SEQ} (default {GPTQ_TOKENS})")
    e.add_argument("--sae", action="append", default=None, metavar="PATH",
                   help="a Gemma Scope SAE (params.npz, or a Gemma Scope 2 folder) whose top-k features the "
                        "artifact also emits at its site, with a steering input there (ONNX: extra outputs and an "
                        "optional input; LiteRT: sae_prefill_{T} / sae_decode signatures; repeatable)")
    e.add_argument("--sae-k", type=int, default=None, metavar="K", help=f"--sae: features per token (default {DEFAULT_SAE_K})")
    e.add_argument("--sae-encoder", default=None, choices=list(SAE_ENCODERS),
                   help="--sae: the encoder matrix's storage (default fp32)")
    e.add_argument("--no-validate", dest="validate", action="store_false", help="skip the validation step")
    _bar_flags(e)
    e.add_argument("--profile", action="store_true",
                   help="also profile the artifact on this host and estimate it for the target's devices")
    e.add_argument("--runs", type=int, default=3, help="--profile: runs (median reported)")
    e.add_argument("--threads", type=int, default=None, help="--profile: CPU threads")
    e.add_argument("--json", action="store_true", help="print the summary as JSON (progress stays off)")
    e.set_defaults(func=_export)

    t = sub.add_parser("targets", help="list the deployment targets and their default settings")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_targets)

    sw = sub.add_parser("serve-web", help="serve the example chat page (tools/web/chat/) over a --target web folder "
                                          "on 127.0.0.1, with transformers.js and onnxruntime-web from tools/web")
    sw.add_argument("artifact", help="a --target web folder of a causal LM")
    sw.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free one)")
    sw.set_defaults(func=_serve_web)

    from devices.command import add_parser as add_profile
    add_profile(sub)
    from .sae_cli import add_parser as add_features
    add_features(sub)

    w = sub.add_parser("sweep", help="export x validate x profile every model x recipe x target of a TOML plan as "
                                     "Ray tasks (a local Ray by default), resumable")
    w.add_argument("plan", help="the plan (TOML: models, recipes, targets, validate, auto, profile, resources)")
    w.add_argument("--address", default="local", help="a Ray cluster to join (ray://HOST:PORT, HOST:PORT or auto); "
                                                      "default: start Ray in this process")
    w.add_argument("--out", default=None, help="results folder (default: the plan's path without .toml)")
    w.add_argument("--json", action="store_true", help="print the summary (every cell's record) as JSON")
    w.set_defaults(func=_sweep)

    q = sub.add_parser("qat", help="quantization-aware training: distil into fake-quantized weights, save a GGUF")
    q.add_argument("--model", default=None, help="HF folder, .gguf file (default: bundled Gemma 3 270M)")
    q.add_argument("--data", required=True, help="UTF-8 training text (its last 10%% is held out)")
    q.add_argument("--steps", type=int, required=True)
    q.add_argument("--out", required=True, help="checkpoint to write (.gguf)")
    q.add_argument("--force", action="store_true", help="replace --out even if gemma-export qat did not write it")
    q.add_argument("--recipe", default="int4", help="quantization recipe to train for (default int4)")
    q.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per training window (default 128)")
    q.add_argument("--train-embedding", action="store_true",
                   help="also train the embedding / tied LM head (default: frozen at its quantized values)")
    q.add_argument("--teacher", default=None, help="float model to distil (default: --model itself; give the "
                                                   "original model to resume from a QAT checkpoint)")
    q.add_argument("--init", default=None,
                   help="int4 start: gptq (GPTQ rounding on the grid, calibrated on --data; the default), rtn (to "
                        "nearest), stored (the checkpoint's own blocks; the default with --teacher)")
    q.add_argument("--calibration-tokens", type=int, default=None, metavar="N",
                   help="--init gptq: calibration tokens of --data (default 8192)")
    q.add_argument("--sampled-tokens", type=int, default=None, metavar="N",
                   help="tokens generated by the float teacher to train on besides --data (default 16384; "
                        "0: the text only)")
    q.add_argument("--sampled-share", type=float, default=0.5,
                   help="share of the steps drawn from the sampled tokens (default 0.5)")
    q.add_argument("--sampled-cache", default=None, metavar="FILE",
                   help="read the sampled tokens from FILE (.npy) if it exists, else write them to it")
    q.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="every N steps, report held-out and validation-text KL / top-1 (default: only before "
                        "and after)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_qat)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "export")                     # `gemma-export --target X ...` is the export command
    args = build_parser().parse_args(argv)
    from devices.adb import AdbError
    main_thread = threading.current_thread() is threading.main_thread()     # where Python runs signal handlers
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None   # SIGTERM cleans up as Ctrl-C
    try:
        return args.func(args)
    except BAD_INPUT + (AdbError,) as e:     # one clear line; anything else is a bug and surfaces as a traceback
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"error: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; partial output removed",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that every `finally` (staging folders, remote files) runs."""


def _terminated(signum, frame):
    raise Terminated()


def _message(e: BaseException) -> str:
    """One line: the message our code gave, or for a system error the file and what went wrong."""
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e.args[0]) if len(e.args) == 1 else str(e)
    return " ".join(text.split("\n"))


if __name__ == "__main__":
    sys.exit(main())

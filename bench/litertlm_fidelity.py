"""Fidelity of .litertlm bundles inside LiteRT-LM itself: the engine's own log-likelihood of the bundled validation
text (`Session.run_text_scoring` after a prefill of the text before it), bundle by bundle, beside transformers'
fp32 model of the same checkpoint on the same tokens. It compares ours (`--target android`) with litert-torch's
`export_hf` bundles where only the engine can run both (their signatures differ).

    python -m bench.litertlm_fidelity [--bundles ours-android-int4,litertlm-int4,litertlm-int8] [--pieces 24]

Each piece is a paragraph of export/data/validation.txt: its first half is prefilled (no prompt template), its
second half scored. Writes bench/results/litertlm_fidelity.json."""
from __future__ import annotations

import argparse
import json
import math
import time

from export.validate import validation_text
from runtime_py.contract import DEFAULT_CONTEXT

from . import artifacts
from .builders import ROOT
from .runners.litertlm import model_file

OUT = ROOT / "bench" / "results" / "litertlm_fidelity.json"


def pieces(count: int) -> list[tuple[str, str]]:
    """(prefix, continuation) from the first `count` paragraphs of at least 24 words, split at the middle word."""
    out = []
    for para in (p.strip() for p in validation_text().split("\n\n")):
        words = para.split(" ")
        if len(words) >= 24:
            half = len(words) // 2
            out.append((" ".join(words[:half]), " " + " ".join(words[half:])))
        if len(out) == count:
            break
    return out


def engine_scores(bundle: str, split: list[tuple[str, str]], threads: int) -> dict:
    """LiteRT-LM's summed log-likelihood and token count of each continuation, in a fresh session per piece."""
    import litert_lm
    engine = litert_lm.Engine(model_file(bundle), backend=litert_lm.Backend.CPU(thread_count=threads),
                              max_num_tokens=DEFAULT_CONTEXT, cache_dir=str(artifacts.LITERTLM_CACHE))
    rows = []
    try:
        for prefix, rest in split:
            with engine.create_session(apply_prompt_template=False) as session:
                session.run_prefill([prefix])
                r = session.run_text_scoring([rest], store_token_lengths=True)
            rows.append({"loglik": float(r.scores[0]), "tokens": int(r.token_lengths[0]),
                         "prefix_ids": engine.tokenize(prefix), "rest_ids": engine.tokenize(rest)})
        bos = engine.bos_token_id
    finally:
        engine.close()
    return {"rows": rows, "bos": bos}


def reference_scores(rows: list[dict], bos: int) -> list[float]:
    """transformers' fp32 model (bench cache `hf`): summed log-likelihood of each continuation's ids after
    <bos> + the prefix's ids."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(artifacts.ensure("hf")["path"]), torch_dtype=torch.float32)
    model.eval()
    out = []
    with torch.no_grad():
        for r in rows:
            ids = [bos, *r["prefix_ids"], *r["rest_ids"]]
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            first = 1 + len(r["prefix_ids"])
            out.append(float(sum(logp[p - 1, ids[p]] for p in range(first, len(ids)))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.litertlm_fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", default="ours-android-int4,litertlm-int4,litertlm-int8")
    ap.add_argument("--pieces", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    split = pieces(args.pieces)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pieces": len(split), "bundles": {}}
    reference = None
    for key in args.bundles.split(","):
        built = artifacts.ensure(key)
        got = engine_scores(str(built["path"]), split, args.threads)
        rows = got["rows"]
        if reference is None:
            reference = {"ids": [r["rest_ids"] for r in rows], "loglik": reference_scores(rows, got["bos"])}
            n = sum(len(r["rest_ids"]) for r in rows)
            result["transformers_fp32"] = {"tokens": n, "perplexity": math.exp(-sum(reference["loglik"]) / n)}
        # the engine scored the ids the reference scores: the same tokenization, and as many tokens as it has
        same = [r["rest_ids"] for r in rows] == reference["ids"] and all(r["tokens"] == len(r["rest_ids"])
                                                                          for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        nll = -sum(r["loglik"] for r in rows)
        gap = [abs(r["loglik"] - ref) / max(r["tokens"], 1) for r, ref in zip(rows, reference["loglik"])]
        result["bundles"][key] = {"bundle": model_file(str(built["path"])), "tokens_scored": tokens,
                                  "same_tokens_as_reference": same, "perplexity": math.exp(nll / tokens),
                                  "mean_abs_loglik_gap_per_token": sum(gap) / len(gap)}
        print(key, json.dumps(result["bundles"][key]), flush=True)
    print("transformers fp32", json.dumps(result["transformers_fp32"]))
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`gemma-export features [--model M] [--sae PATH ...] [--k K] TEXT [--json]`: which sparse-autoencoder features
fire at each token, on a checkpoint (the reference model with the --sae files) or on an artifact exported with
--sae (runtime_py, the SAEs it carries)."""
from __future__ import annotations

import json
from pathlib import Path

from runtime_py.contract import DEFAULT_SAE_K


def add_parser(sub) -> None:
    f = sub.add_parser("features", help="sparse-autoencoder (Gemma Scope) features per token, on a checkpoint "
                                        "or an artifact exported with --sae")
    f.add_argument("text")
    f.add_argument("--model", default=None, help="HF folder, .gguf file or artifact (default: bundled Gemma 3 270M)")
    f.add_argument("--sae", action="append", default=None, metavar="PATH",
                   help="a Gemma Scope params.npz or Gemma Scope 2 folder (repeatable; a checkpoint needs one, an "
                        "artifact carries its own)")
    f.add_argument("--k", type=int, default=DEFAULT_SAE_K, help=f"features per token, largest first "
                                                                f"(default {DEFAULT_SAE_K})")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=run)


def _reference(args) -> tuple[list[int], list[dict], object]:
    from .models.checkpoints import load_model
    from .models.sae import features, load_saes
    from runtime_py.sae import firing
    if not args.sae:
        raise ValueError("--sae: a checkpoint needs at least one SAE (a params.npz or a Gemma Scope 2 folder)")
    loaded = load_model(args.model)
    saes = load_saes(args.sae, loaded.config)
    if loaded.tokenizer is None:
        raise ValueError(f"--model {loaded.source}: no tokenizer.model to encode the text with")
    ids = loaded.tokenizer.encode(args.text)
    _, acts = features(loaded.model, saes, ids)
    out = []
    for sae, a in zip(saes, acts):
        values, indices = a.topk(min(args.k, sae.width), dim=-1)
        out.append({"path": str(sae.path), "site": sae.site, "layer": sae.layer, "hook": sae.hook,
                    "positions": firing(values.numpy(), indices.numpy())})
    return ids, out, loaded.tokenizer


def run(args) -> int:
    from .cli import _is_artifact
    if args.k < 1:
        raise ValueError(f"--k {args.k}: expected an integer >= 1")
    if _is_artifact(args.model):
        if args.sae:
            raise ValueError(f"--sae: {args.model} is an artifact; it carries the SAEs it was exported with")
        import runtime_py
        m = runtime_py.load(args.model)
        ids, saes, tok = m.tokenizer.encode(args.text), m.features(args.text, k=args.k), m.tokenizer
    else:
        ids, saes, tok = _reference(args)
    pieces = [tok.decode([i]) for i in ids]
    for s in saes:
        for pos, (i, piece) in zip(s["positions"], zip(ids, pieces)):
            pos.update(token_id=i, token=piece)
    if args.json:
        print(json.dumps({"model": str(args.model or "bundled Gemma 3 270M"), "text": args.text, "saes": saes}))
        return 0
    for s in saes:
        print(f"{s['hook']} ({Path(s['path']).name if s.get('path') else s['site']}):")
        for pos in s["positions"]:
            feats = ", ".join(f"{i}:{v:.3g}" for i, v in zip(pos["indices"], pos["values"]))
            print(f"  {pos['token']!r:>16} {feats or '-'}")
    return 0

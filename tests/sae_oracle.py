"""Gemma Scope SAEs for the tests, written in both published layouts, and the JumpReLU encoder restated in numpy
from the published equations (pre = x W_enc + b_enc; f = pre * 1[pre > threshold]), applied to transformers'
own activations: hidden_states[L + 1] for resid_post, forward hooks for the other sites."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HOOKS = {"resid_post": "model.layers.{L}.output", "attn_out": "model.layers.{L}.self_attn.o_proj.input",
         "mlp_out": "model.layers.{L}.post_feedforward_layernorm.output"}


def random_sae(d_in: int, width: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random JumpReLU weights whose thresholds let a few percent of the features fire on activations of
    RMS `scale`."""
    rng = np.random.default_rng(seed)
    w_enc = (rng.standard_normal((d_in, width)) / np.sqrt(d_in) / scale).astype(np.float32)
    return {"w_enc": w_enc, "w_dec": rng.standard_normal((width, d_in)).astype(np.float32) * 0.05 * scale,
            "b_enc": (rng.standard_normal(width) * 0.1).astype(np.float32),
            "b_dec": (rng.standard_normal(d_in) * 0.01).astype(np.float32),
            "threshold": rng.uniform(1.5, 2.5, width).astype(np.float32)}


def write_gemma_scope_2(root: Path, site: str, layer: int, params: dict, **config) -> Path:
    """{root}/{site}/layer_{L}_width_{W}_l0_small/ with params.safetensors and config.json (Gemma Scope 2)."""
    from safetensors.numpy import save_file
    folder = root / site / f"layer_{layer}_width_{params['w_enc'].shape[1]}_l0_small"
    folder.mkdir(parents=True)
    save_file(params, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "hf_hook_point_in": HOOKS[site].format(L=layer), "hf_hook_point_out": HOOKS[site].format(L=layer),
        "width": params["w_enc"].shape[1], "model_name": "google/gemma-3-270m-pt", "architecture": "jump_relu",
        "l0": 20, "affine_connection": False, "type": "sae", **config}))
    return folder


def write_gemma_scope_1(root: Path, kind: str, layer: int, params: dict) -> Path:
    """gemma-scope-2b-pt-{kind}/layer_{L}/width_16k/average_l0_71/params.npz (Gemma Scope 1's keys)."""
    folder = root / f"gemma-scope-2b-pt-{kind}" / f"layer_{layer}" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    names = {"w_enc": "W_enc", "w_dec": "W_dec"}
    np.savez(folder / "params.npz", **{names.get(k, k): v for k, v in params.items()})
    return folder / "params.npz"


def jumprelu(params: dict, x: np.ndarray) -> np.ndarray:
    pre = x.astype(np.float64) @ params["w_enc"].astype(np.float64) + params["b_enc"]
    return np.where(pre > params["threshold"], pre, 0.0)


@torch.no_grad()
def hf_site(ref, site: str, layer: int, tokens: torch.Tensor, add: np.ndarray | None = None):
    """transformers' activations at the site [T, d] and logits [T, V]; `add` (a steering vector) is added there
    by a forward hook first."""
    got = {}
    layers = ref.model.layers
    if site == "resid_post" and add is None:
        out = ref(tokens, output_hidden_states=True)
        return out.hidden_states[layer + 1][0].numpy(), out.logits[0].numpy()
    vec = None if add is None else torch.from_numpy(add)
    if site == "attn_out":
        def pre_hook(module, args):
            z = args[0] if vec is None else args[0] + vec
            got["x"] = z
            return (z,)
        handle = layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook)
    else:
        module = layers[layer] if site == "resid_post" else layers[layer].post_feedforward_layernorm

        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h if vec is None else h + vec
            got["x"] = h
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = module.register_forward_hook(hook)
    try:
        logits = ref(tokens).logits[0].numpy()
    finally:
        handle.remove()
    return got["x"][0].numpy(), logits


def topk_sets(acts: np.ndarray, k: int) -> list[set]:
    """Per position, the ids of the (at most k) largest non-zero activations."""
    out = []
    for row in acts:
        order = np.argsort(-row, kind="stable")[:k]
        out.append({int(i) for i in order if row[i] != 0})
    return out


def check_features(ref, got: list[dict], params: list[dict], sites, ids: list[int], k: int, tol: float = 1e-4) -> None:
    """An artifact's features(ids) (one entry per SAE, sites [(site, layer)] in order) against the numpy JumpReLU on
    transformers' activations `ref`: features fire, the top-k index sets are equal, the values within `tol`."""
    assert [(s["site"], s["layer"]) for s in got] == list(sites)
    for s, p, (site, layer) in zip(got, params, sites):
        x, _ = hf_site(ref, site, layer, torch.tensor([ids]))
        want = jumprelu(p, x)
        assert (want > 0).sum() > 2 * len(ids)          # features fire: the comparison can fail
        assert [set(pos["indices"]) for pos in s["positions"]] == topk_sets(want, k)
        for pos, row in zip(s["positions"], want):
            assert np.abs(np.array(pos["values"]) - row[pos["indices"]]).max(initial=0) < tol


def site_saes(ref, root: Path, sites, width: int) -> tuple[list[dict], list[Path]]:
    """One random Gemma Scope 2 SAE per (site, layer) of `sites`, scaled to transformers' (`ref`) activations there
    on a probe text, written under `root` -> (their params, their folders)."""
    probe = torch.tensor([[2] + list(range(10, 40))])
    params, paths = [], []
    for n, (site, layer) in enumerate(sites):
        x, _ = hf_site(ref, site, layer, probe)
        params.append(random_sae(x.shape[1], width, seed=n, scale=float(np.sqrt((x ** 2).mean()))))
        paths.append(write_gemma_scope_2(root, site, layer, params[-1]))
    return params, paths

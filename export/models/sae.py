"""Gemma Scope sparse autoencoders (JumpReLU) and where they read the model.

Two published forms: Gemma Scope 1 (Gemma 2) `.../layer_{L}/width_{W}/average_l0_{N}/params.npz` with `W_enc`,
`W_dec`, `b_enc`, `b_dec`, `threshold`, its site given by the repository's name (`gemma-scope-*-res|mlp|att`);
Gemma Scope 2 (Gemma 3) folders `{site}/layer_{L}_width_{W}_l0_{size}/` holding `params.safetensors` (`w_enc`,
`w_dec`, `b_enc`, `b_dec`, `threshold`) and `config.json`, whose `hf_hook_point_in` names the site as a
transformers module path. The encoder: pre = x W_enc + b_enc, f = pre * 1[pre > threshold] (no input
centring or normalisation).

The sites, as transformers names them (our reference model keeps those names), each read inside
export.models.layers at the same point: the residual stream after layer L (`model.layers.{L}.output`), the
attention heads before o_proj (`...self_attn.o_proj.input`, Gemma Scope 1's `attn.hook_z`), the MLP's output
after its post-norm (`...post_feedforward_layernorm.output`). Transcoders (and CLTs) read one point and write
another: refused."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch


# site -> (the tap's name in export.models.layers, transformers' module path of that point)
SITES = {
    "resid_post": ("output", "model.layers.{L}.output"),
    "attn_out": ("self_attn.o_proj.input", "model.layers.{L}.self_attn.o_proj.input"),
    "mlp_out": ("post_feedforward_layernorm.output", "model.layers.{L}.post_feedforward_layernorm.output"),
}
GEMMA_SCOPE_1_SITES = {"res": "resid_post", "att": "attn_out", "mlp": "mlp_out"}   # repository name suffixes
KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")


@dataclasses.dataclass
class SAE:
    path: Path
    site: str
    layer: int
    w_enc: np.ndarray          # [d_in, width]
    w_dec: np.ndarray          # [width, d_in]
    b_enc: np.ndarray          # [width]
    b_dec: np.ndarray          # [d_in]
    threshold: np.ndarray      # [width]

    @property
    def width(self) -> int:
        return self.w_enc.shape[1]

    @property
    def d_in(self) -> int:
        return self.w_enc.shape[0]

    @property
    def tap(self) -> str:
        return SITES[self.site][0]

    @property
    def hook(self) -> str:
        return SITES[self.site][1].format(L=self.layer)


def _site_of_hook(hook: str, where: str) -> tuple[str, int]:
    for site, (_, pattern) in SITES.items():
        m = re.fullmatch(re.escape(pattern).replace(r"\{L\}", r"(\d+)"), hook)
        if m:
            return site, int(m.group(1))
    raise ValueError(f"{where}: hf_hook_point_in {hook!r} is not a site gemma-export taps "
                     f"({', '.join(p for _, p in SITES.values())})")


def _gemma_scope_2(folder: Path) -> tuple[dict, str, int]:
    cfg_path, params = folder / "config.json", folder / "params.safetensors"
    if not params.is_file():
        raise ValueError(f"{folder}: a Gemma Scope 2 SAE folder holds params.safetensors and config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: cannot read it ({e})") from e
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise ValueError(f"{cfg_path}: architecture {cfg.get('architecture')!r}; only jump_relu SAEs are supported")
    hook_in, hook_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
    if not isinstance(hook_in, str):
        raise ValueError(f"{cfg_path}: no hf_hook_point_in (the site the SAE reads)")
    if (hook_out and hook_out != hook_in) or cfg.get("affine_connection") or "transcoder" in str(cfg.get("type", "")):
        raise ValueError(f"{cfg_path}: a transcoder (reads {hook_in}, writes {hook_out}); only SAEs are supported")
    site, layer = _site_of_hook(hook_in, str(cfg_path))
    from safetensors.numpy import load_file
    return load_file(str(params)), site, layer


def _gemma_scope_1(path: Path) -> tuple[dict, str, int]:
    layer = next((int(m.group(1)) for p in reversed(path.parts) if (m := re.fullmatch(r"layer_(\d+)", p))), None)
    site = next((GEMMA_SCOPE_1_SITES[m.group(1)] for p in reversed(path.parts)
                 if (m := re.fullmatch(r"gemma-scope-.*-(res|att|mlp)(?:-canonical)?", p))), None)
    if any("transcoder" in p for p in path.parts):
        raise ValueError(f"{path}: a Gemma Scope transcoder; only SAEs are supported")
    if layer is None or site is None:
        raise ValueError(f"{path}: cannot tell the SAE's site and layer; keep Gemma Scope's layout "
                         f"(gemma-scope-<model>-res|att|mlp/layer_<L>/width_<W>/average_l0_<N>/params.npz)")
    with np.load(path) as z:
        return {k.lower(): z[k] for k in z.files}, site, layer


def load_sae(path: str | Path) -> SAE:
    """A Gemma Scope 1 params.npz or a Gemma Scope 2 folder (or its params.safetensors) -> SAE (float32)."""
    path = Path(path)
    if path.name == "params.safetensors":
        path = path.parent
    if path.is_dir():
        arrays, site, layer = _gemma_scope_2(path)
    elif path.suffix == ".npz" and path.is_file():
        arrays, site, layer = _gemma_scope_1(path)
    else:
        raise ValueError(f"{path}: no such SAE (a Gemma Scope params.npz, or a folder with params.safetensors "
                         f"and config.json)")
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing)} (a JumpReLU SAE has {', '.join(KEYS)})")
    sae = SAE(path, site, layer, **{k: np.asarray(arrays[k], np.float32) for k in KEYS})
    d, w = sae.w_enc.shape if sae.w_enc.ndim == 2 else (None, None)
    shapes = {"w_enc": (d, w), "w_dec": (w, d), "b_enc": (w,), "b_dec": (d,), "threshold": (w,)}
    for k, shape in shapes.items():
        if getattr(sae, k).shape != shape:
            raise ValueError(f"{path}: {k} has shape {list(getattr(sae, k).shape)}, expected {list(shape)} "
                             f"(w_enc is [d_in, width])")
    return sae


def site_width(config, site: str) -> tuple[int, str]:
    """(the model's width at `site`, what that width is called)."""
    if site == "attn_out":
        return config.num_heads * config.head_dim, "num_heads * head_dim"
    return config.hidden_size, "hidden_size"


def check_sae(sae: SAE, config) -> None:
    """The SAE fits the model: its layer exists, its d_in is the model's width at its site, its site exists."""
    from .config import GemmaConfig, LayerType
    if not isinstance(config, GemmaConfig) or config.embedding_head is not None:
        raise ValueError(f"{sae.path}: SAEs read a causal text LM; this model is {getattr(config, 'family', '?')} "
                         f"({'an embedding model' if isinstance(config, GemmaConfig) else 'vision-language'})")
    n = config.num_layers
    if not 0 <= sae.layer < n:
        raise ValueError(f"{sae.path}: SAE for layer {sae.layer}, the model has {n} layers")
    if sae.site == "attn_out" and config.layer_types[sae.layer] is LayerType.RECURRENT:
        raise ValueError(f"{sae.path}: an attn_out SAE at layer {sae.layer}, a recurrent layer (no attention)")
    if sae.site == "mlp_out" and not config.sandwich_norms:
        raise ValueError(f"{sae.path}: an mlp_out SAE reads post_feedforward_layernorm, which this model "
                         f"({config.family}) does not have")
    width, name = site_width(config, sae.site)
    if sae.d_in != width:
        raise ValueError(f"{sae.path}: SAE d_in {sae.d_in} != the model's {name} {width} at {sae.hook}")


def load_saes(paths, config) -> list[SAE]:
    saes = [load_sae(p) for p in paths or ()]
    for s in saes:
        check_sae(s, config)
    return saes


def encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """JumpReLU activations [..., width] of x [..., d_in] (fp32)."""
    pre = x.float() @ torch.from_numpy(sae.w_enc) + torch.from_numpy(sae.b_enc)
    return pre * (pre > torch.from_numpy(sae.threshold))


def steering(sae: SAE, steer: dict) -> torch.Tensor:
    """{feature id: strength} -> [d_in]: sum(strength * W_dec[feature]) (the reference's own sum; runtime_py.sae
    builds the artifact's steering input, and the tests compare the two)."""
    w = torch.from_numpy(sae.w_dec).float()
    bad = [f for f in steer if not 0 <= int(f) < w.shape[0]]
    if bad:
        raise ValueError(f"{sae.path}: steering feature {bad[0]} is out of range [0, {w.shape[0]})")
    ids = torch.tensor([int(f) for f in steer], dtype=torch.long)
    return (torch.tensor([float(v) for v in steer.values()]) @ w[ids]) if steer else torch.zeros(w.shape[1])


class Probe:
    """A site's tap: records the SAE's activations of what passes, then adds the steering vector."""

    def __init__(self, sae: SAE, steer: dict | None):
        self.sae, self.acts = sae, []
        self.vector = steering(sae, steer) if steer else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.vector is not None:
            x = x + self.vector.to(x.dtype)
        self.acts.append(encode(self.sae, x))
        return x


def tap_owner(model, sae: SAE):
    """The module of `model` (a GemmaForCausalLM) whose `taps` hold the SAE's site."""
    layer = model.model.layers[sae.layer]
    return layer.self_attn if sae.site == "attn_out" else layer


@contextlib.contextmanager
def tapped(model, saes: list[SAE], fns: list):
    """Within the block, `model` runs fns[n](x) -> x at saes[n]'s site (one SAE per site)."""
    owners = [tap_owner(model, s) for s in saes]
    seen = set()
    for owner, s in zip(owners, saes):
        if s.tap in owner.taps or (id(owner), s.tap) in seen:
            raise ValueError(f"{s.path}: a second SAE at {s.hook}; one SAE per site")
        seen.add((id(owner), s.tap))
    for owner, s, fn in zip(owners, saes, fns):
        owner.taps[s.tap] = fn
    try:
        yield
    finally:
        for owner, s in zip(owners, saes):
            owner.taps.pop(s.tap, None)


@contextlib.contextmanager
def probing(model, saes: list[SAE], steer: list[dict | None] | None = None):
    """Within the block, `model` (a GemmaForCausalLM) runs with each SAE's Probe at its site -> the probes.
    steer: one {feature id: strength} (or None) per SAE."""
    probes = [Probe(s, (steer or [None] * len(saes))[i]) for i, s in enumerate(saes)]
    with tapped(model, saes, probes):
        yield probes


@torch.no_grad()
def features(model, saes: list[SAE], ids: list[int], steer: list[dict | None] | None = None):
    """The reference model on `ids` (one call): -> (logits [T, V], [activations [T, width] per SAE])."""
    tokens = torch.tensor([ids])
    with probing(model, saes, steer) as probes:
        logits, _ = model(tokens, torch.arange(len(ids)))
    return logits[0], [torch.cat(p.acts, dim=1)[0] for p in probes]


@dataclasses.dataclass
class SaeRequest:
    """What `export --sae` asks of an exporter: the SAEs (checked against the model), the top-k each site emits,
    the encoder's storage (export.quantize.recipes.SAE_ENCODERS)."""
    saes: list[SAE]
    k: int
    encoder: str = "fp32"

    def __post_init__(self):
        """k fits every SAE (the encoder's name is the exporters' to check: export.quantize.recipes)."""
        for s in self.saes:
            if not 1 <= self.k <= s.width:
                raise ValueError(f"--sae-k {self.k}: expected 1..{s.width} (the width of {s.path})")

    def write_decoders(self, folder: Path) -> list[dict]:
        """Each SAE's decoder rows (W_dec, float32; steering vectors are built from them) into `folder` as
        runtime_py.contract.SAE_DECODER -> manifest.json's SAE_KEY entries."""
        from runtime_py.contract import SAE_DECODER
        files = [SAE_DECODER.format(n=n) for n in range(len(self.saes))]
        for s, f in zip(self.saes, files):
            np.save(Path(folder) / f, s.w_dec)
        return self.manifest(files)

    def manifest(self, decoder_files: list[str]) -> list[dict]:
        """manifest.json's SAE_KEY entries, in output order n = 0, 1, ..."""
        return [{"path": str(s.path), "site": s.site, "layer": s.layer, "hook": s.hook, "width": s.width,
                 "d_in": s.d_in, "k": self.k, "encoder": self.encoder, "decoder": f}
                for s, f in zip(self.saes, decoder_files)]

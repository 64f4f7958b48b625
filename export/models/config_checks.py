"""What a GemmaConfig value may be: its type, sign and sane bounds, checked before any module is built (a
config.json or GGUF header comes from anyone: a zero head count, a string vocabulary size or a million layers
must fail as one line naming the key, not as a ZeroDivisionError or a build that runs out of memory). The
bounds are far above every published Gemma (largest: 62 layers, 262,144 tokens, hidden 5,376, 131,072
positions) and far below what would exhaust a machine."""
from __future__ import annotations

import math

# field -> (smallest, largest) for integer fields; None allowed where the field is optional
INTS = {
    "vocab_size": (1, 1 << 22), "hidden_size": (1, 1 << 16), "intermediate_size": (1, 1 << 18),
    "num_heads": (1, 1024), "num_kv_heads": (1, 1024), "head_dim": (1, 1 << 12), "num_layers": (1, 1024),
    "sliding_window": (1, 1 << 24), "max_position": (1, 1 << 24), "lru_width": (1, 1 << 16),
    "conv1d_width": (1, 64), "bos_id": (0, (1 << 22) - 1), "eos_id": (0, (1 << 22) - 1), "pad_id": (0, (1 << 22) - 1),
}
# field -> (exclusive lower bound, inclusive upper bound) for float fields
FLOATS = {
    "rope_base": (0.0, math.inf), "rope_local_base": (0.0, math.inf), "rope_scale": (0.0, math.inf),
    "rope_fraction": (0.0, 1.0), "rms_eps": (0.0, 1.0), "query_pre_attn_scalar": (0.0, math.inf),
    "attn_softcap": (0.0, math.inf), "final_softcap": (0.0, math.inf),
}
OPTIONAL = {"sliding_window", "lru_width", "query_pre_attn_scalar", "attn_softcap", "final_softcap"}


def check_value(field: str, value, label: str | None = None):
    """`value` if it is a valid `field` (a key of INTS or FLOATS), else ValueError "LABEL VALUE: must be ...";
    `label` names it as the file does (default: the field)."""
    label = label or field
    if value is None and field in OPTIONAL:
        return value
    if field in INTS:
        lo, hi = INTS[field]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{label} {value!r}: must be an integer between {lo} and {hi}")
        return value
    lo, hi = FLOATS[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value <= hi or math.isinf(value):
        raise ValueError(f"{label} {value!r}: must be a finite number above {lo}" +
                         (f" and at most {hi}" if hi < math.inf else ""))
    return value


def check_config(config) -> None:
    """Every checked field of a GemmaConfig; ids within the vocabulary."""
    for field in (*INTS, *FLOATS):
        value = config.num_layers if field == "num_layers" else getattr(config, field)
        check_value(field, value)
    for field in ("bos_id", "eos_id", "pad_id"):
        if getattr(config, field) >= config.vocab_size:
            raise ValueError(f"{field} {getattr(config, field)}: outside the vocabulary ({config.vocab_size} tokens)")


def check_tensor_layout(config, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The config against what the checkpoint holds, before a module is built: the layer count and the
    embedding's rows (vocabulary) and width. (assign_weights then checks every tensor's shape.)"""
    embed = shapes.get("model.embed_tokens.weight")
    if embed is None:
        raise ValueError(f"{source}: missing tensor model.embed_tokens.weight")
    if tuple(embed) != (config.vocab_size, config.hidden_size):
        raise ValueError(f"{source}: the embedding is {tuple(embed)}, the config says vocab_size {config.vocab_size} "
                         f"x hidden_size {config.hidden_size}")
    layers = {int(n.split(".")[2]) for n in shapes if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
    if layers != set(range(config.num_layers)):
        held = f"layers 0..{max(layers)}" if layers == set(range(len(layers))) else f"{len(layers)} layer indices"
        raise ValueError(f"{source}: the config says {config.num_layers} layers, the tensors hold "
                         f"{held if layers else 'none'}")

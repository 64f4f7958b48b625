"""Putting checkpoint tensors into a reference model: every parameter filled, every tensor used,
every shape checked, and an error that names the tensor and the file when something is off."""
from __future__ import annotations

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the file and tensor."""


def assign_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load `tensors` (keyed by the model's own parameter names) into `model`, which may live on
    the meta device; returns the model with real parameters."""
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {_short(missing)}")
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) {_short(extra)}")
    for name, param in expected.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                  f"the model needs {tuple(param.shape)}")
    state = {k: v.to(dtype) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _short(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more

"""Sparse-autoencoder features and steering on an artifact's outputs (numpy only): which features fire at each
position, and the steering vector sum(strength * W_dec[feature]) from the decoder rows the artifact carries."""
from __future__ import annotations

import numpy as np


def steer_vector(w_dec: np.ndarray, steer: dict, where: str) -> np.ndarray:
    """{feature id: strength} -> [d_in] float32, the sum of the features' decoder rows (w_dec [width, d_in])
    scaled by their strengths."""
    out = np.zeros(w_dec.shape[1], np.float32)
    for feature, strength in steer.items():
        f = int(feature)
        if not 0 <= f < w_dec.shape[0]:
            raise ValueError(f"{where}: steering feature {feature} is out of range [0, {w_dec.shape[0]})")
        out += np.float32(strength) * w_dec[f].astype(np.float32)
    return out


def firing(values: np.ndarray, indices: np.ndarray, k: int | None = None) -> list[dict]:
    """values, indices [T, K] (largest first) -> one {"indices", "values"} per position: the (at most k) features
    with a non-zero activation, largest first."""
    rows = []
    for v, i in zip(np.asarray(values), np.asarray(indices)):
        keep = np.nonzero(v)[0][:k]
        rows.append({"indices": [int(x) for x in i[keep]], "values": [float(x) for x in v[keep]]})
    return rows

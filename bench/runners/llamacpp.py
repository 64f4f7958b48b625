"""llama.cpp (llama-cpp-python) on the bundled GGUF itself (Q4_K_M)."""
from __future__ import annotations

from llama_cpp import Llama

from runtime_py.contract import DEFAULT_CONTEXT


def open(path: str, threads: int):
    llm = Llama(model_path=path, n_ctx=DEFAULT_CONTEXT, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)

    def stream(ids, n):
        llm.reset()         # forget the previous prompt: generate() would otherwise reuse a shared prefix
        yield from llm.generate(list(ids), top_k=1, temp=0.0, reset=True)
    return stream

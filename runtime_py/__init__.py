"""The gemma-export runtime: runs exported artifacts with onnxruntime (later LiteRT), numpy and sentencepiece only.

    import runtime_py
    model = runtime_py.load("out/gemma3-270m-onnx")
    print(model.generate("The capital of France is", max_new_tokens=16).text)
"""
from .api import (EMBED_TASKS, Generation, Model, StepTimes, Timings, embedding_prompt, load, shieldgemma_prompt,
                  truncate_embeddings)
from .sampling import Sampler, Sampling, generate_tokens
from .tokenizer import StreamDecoder, Tokenizer

__all__ = ["load", "Model", "Generation", "Timings", "StepTimes", "Sampling", "Sampler", "generate_tokens", "Tokenizer",
           "StreamDecoder", "embedding_prompt", "shieldgemma_prompt", "truncate_embeddings", "EMBED_TASKS"]

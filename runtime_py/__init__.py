"""The gemma-export runtime: runs exported artifacts (ONNX with onnxruntime, LiteRT with ai_edge_litert) with
numpy and sentencepiece only.

    import runtime_py
    model = runtime_py.load("out/gemma3-270m-onnx")
    print(model.generate("The capital of France is", max_new_tokens=16).text)
"""
from .api import Generation, Model, StepTimes, Timings, truncate_embeddings
from .loader import load
from .prompts import EMBED_TASKS, embedding_prompt, shieldgemma_prompt
from .sampling import Sampler, Sampling, generate_tokens
from .tokenizer import StreamDecoder, Tokenizer

__all__ = ["load", "Model", "Generation", "Timings", "StepTimes", "Sampling", "Sampler", "generate_tokens", "Tokenizer",
           "StreamDecoder", "embedding_prompt", "shieldgemma_prompt", "truncate_embeddings", "EMBED_TASKS"]

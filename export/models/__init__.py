"""Reference PyTorch models of the Gemma family."""
from .cache import AttentionCache, Cache, RecurrentState, init_cache
from .config import EmbeddingHead, GemmaConfig, LayerType, griffin_pattern, layer_pattern
from .gemma import GemmaEmbedder, GemmaForCausalLM, build_model, count_parameters
from .presets import PRESETS, preset

__all__ = ["AttentionCache", "Cache", "RecurrentState", "init_cache", "EmbeddingHead", "GemmaConfig", "LayerType",
           "griffin_pattern", "layer_pattern", "GemmaEmbedder", "GemmaForCausalLM", "build_model", "count_parameters",
           "PRESETS", "preset"]

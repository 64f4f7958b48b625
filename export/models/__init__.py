"""Reference PyTorch models of the Gemma family."""
from .cache import AttentionCache, Cache, init_cache
from .config import EmbeddingHead, GemmaConfig, LayerType, layer_pattern
from .gemma import GemmaEmbedder, GemmaForCausalLM, build_model, count_parameters
from .presets import PRESETS, preset

__all__ = ["AttentionCache", "Cache", "init_cache", "EmbeddingHead", "GemmaConfig", "LayerType",
           "layer_pattern", "GemmaEmbedder", "GemmaForCausalLM", "build_model", "count_parameters",
           "PRESETS", "preset"]

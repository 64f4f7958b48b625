"""SigLIP's vision tower as PaliGemma and Gemma 3 use it (So400m/14, no pooling head): patch embedding,
learned positions, pre-LN encoder blocks, post-layernorm. Mirrors transformers' SiglipVisionModel with
`vision_use_head=False`; parameter names match its checkpoints (`vision_model.*`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vision_config import SiglipConfig


class SiglipEmbeddings(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(c.num_patches, c.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, S, S] (normalised) -> [N, patches, hidden], patches in row-major order."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight


class SiglipAttention(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.heads, self.head_dim = c.num_heads, c.hidden_size // c.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(c.hidden_size, c.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, P, _ = x.shape
        q, k, v = (p(x).view(N, P, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim ** -0.5
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.out_proj(torch.matmul(probs, v).transpose(1, 2).reshape(N, P, -1))


class SiglipMLP(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = SiglipAttention(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = SiglipMLP(c)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(c) for _ in range(c.num_layers))


class SiglipVisionModel(nn.Module):
    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(c)
        self.encoder = SiglipEncoder(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class SiglipVisionTower(nn.Module):
    """The checkpoints' `vision_tower`: pixels [N, 3, S, S] -> features [N, patches, hidden]."""

    def __init__(self, c: SiglipConfig):
        super().__init__()
        self.config = c
        self.vision_model = SiglipVisionModel(c)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixels)

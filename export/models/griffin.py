"""Griffin's recurrent temporal block (RecurrentGemma): a gated branch, a causal depthwise Conv1D
and the Real-Gated Linear Recurrent Unit. Its state (RecurrentState) has the same size at every
sequence length. Parameter names match Hugging Face checkpoints under `temporal_block.`.
Shapes: B batch, T new tokens, W lru width, K conv width, H gate blocks, E = W // H."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import RecurrentState
from .config import GemmaConfig


class RGLRU(nn.Module):
    """h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t), with a_t = exp(-8 r_t softplus(c));
    the input and recurrence gates i_t, r_t are block-diagonal linear maps + sigmoid. At position 0
    the state resets (a = 0, no normalisation). The recurrence runs in float32."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        W, H = config.recurrent_width, config.num_heads
        self.blocks, self.block_width = H, W // H
        self.recurrent_param = nn.Parameter(torch.empty(W))
        self.input_gate_weight = nn.Parameter(torch.empty(H, W // H, W // H))
        self.input_gate_bias = nn.Parameter(torch.empty(H, W // H))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(H, W // H, W // H))
        self.recurrent_gate_bias = nn.Parameter(torch.empty(H, W // H))

    def gate(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """sigmoid(block-diagonal x @ weight + bias): [B, T, W] -> [B, T, W]."""
        B, T, W = x.shape
        xb = x.reshape(B, T, self.blocks, 1, self.block_width)                 # [B, T, H, 1, E]
        y = torch.matmul(xb, weight).reshape(B, T, self.blocks, self.block_width) + bias
        return torch.sigmoid(y.reshape(B, T, W))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, h: torch.Tensor):
        """x [B, T, W]; positions [T]; h [B, W] float32 -> (y [B, T, W]: the state after each token, h after
        the last one)."""
        reset = (positions == 0)[None, :, None]                                # [1, T, 1]
        log_a = -8.0 * self.gate(x, self.recurrent_gate_weight, self.recurrent_gate_bias) \
            * F.softplus(self.recurrent_param)
        a = torch.exp(log_a)
        scale = torch.where(reset, torch.ones_like(a), torch.sqrt(1 - torch.exp(2 * log_a)))
        u = x * self.gate(x, self.input_gate_weight, self.input_gate_bias) * scale.to(x.dtype)
        a = torch.where(reset, torch.zeros_like(a), a)
        a, u = a.float(), u.float()
        ys = []
        for t in range(x.shape[1]):             # the linear scan, in float32
            h = a[:, t] * h + u[:, t]
            ys.append(h)
        return torch.stack(ys, 1).to(x.dtype), h


class RecurrentBlock(nn.Module):
    """linear_out(gelu(linear_y(x)) * RG-LRU(Conv1D(linear_x(x))))."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        d, W, K = config.hidden_size, config.recurrent_width, config.conv1d_width
        self.conv_width = K
        self.linear_y = nn.Linear(d, W)
        self.linear_x = nn.Linear(d, W)
        self.linear_out = nn.Linear(W, d)
        self.conv_1d = nn.Conv1d(W, W, kernel_size=K, groups=W, padding=K - 1)   # weight [W, 1, K]
        self.rg_lru = RGLRU(config)

    def forward(self, x: torch.Tensor, rope, mask, positions: torch.Tensor, state: RecurrentState | None):
        """The DecoderLayer's temporal-block interface (rope and mask unused). x [B, T, d]."""
        B, T, _ = x.shape
        y = F.gelu(self.linear_y(x), approximate="tanh")
        xs = self.linear_x(x)                                                   # [B, T, W]
        K = self.conv_width
        if state is None:
            past = xs.new_zeros(B, K - 1, xs.shape[-1])
            h0 = xs.new_zeros(B, xs.shape[-1], dtype=torch.float32)
        else:
            past, h0 = state.conv1d, state.rg_lru
        window = torch.cat((past, xs), 1)                                       # [B, K-1+T, W]
        w = self.conv_1d.weight[:, 0]                                           # [W, K]
        conv = self.conv_1d.bias + sum(window[:, k:k + T] * w[:, k] for k in range(K))
        out, h = self.rg_lru(conv, positions, h0)
        out = self.linear_out(out * y)
        return out, (None if state is None else RecurrentState(h, window[:, T:]))     # the last K-1 inputs

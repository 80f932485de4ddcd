"""A plain hand-written Transformer++ (Llama recipe) in PyTorch: the floor the generated models are held to.

Pre-norm blocks of causal softmax attention with rotary embeddings (rotate-half) and a SwiGLU MLP,
RMSNorm everywhere, tied embeddings, no biases: the architecture of specs/transformer.nl, written
the way one would by hand with nn.Linear and F.scaled_dot_product_attention. `attention="math"`
materialises the (T, T) score matrix instead of calling the fused kernel, the quadratic-memory
contrast of the peak-memory benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TransformerConfig:
    vocab: int = 256
    dim: int = 128
    layers: int = 2
    heads: int = 4
    expansion: int = 4  # SwiGLU hidden width = expansion · dim, as the shipped specs
    rope_base: float = 10000.0
    max_len: int = 8192
    norm_eps: float = 1e-6
    attention: str = "sdpa"  # "sdpa" (fused kernel) or "math" (explicit (T, T) scores)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, length, dim = x.shape
        heads = self.cfg.heads
        q, k, v = self.qkv(x).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.cfg.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)  # (B, H, T, T)
            mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            y = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, rotate-half pairing: channel j turns with channel j + D/2."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        hidden = cfg.expansion * cfg.dim
        self.gate_up = nn.Linear(cfg.dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        h = h + self.attention(self.attention_norm(h), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class TransformerPP(nn.Module):
    """Token ids (B, T) → logits (B, T, V); `loss(tokens, targets)` as the generated models."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        head_dim = cfg.dim // cfg.heads
        inv_freq = cfg.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(cfg.max_len, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (max_len, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        for name, param in self.named_parameters():
            if param.ndim == 2:
                nn.init.normal_(param, std=0.02 if name == "embed.weight" else param.shape[1] ** -0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        cos, sin = self.cos[:length].to(self.embed.weight.dtype), self.sin[:length].to(self.embed.weight.dtype)
        h = self.embed(tokens)  # (B, T, d)
        for block in self.blocks:
            h = block(h, cos, sin)
        return F.linear(self.final_norm(h), self.embed.weight)  # (B, T, V)

    def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

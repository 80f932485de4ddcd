"""The non-memory layers of the runtime, as functions in the style of torch.nn.functional.

Tensors and plain Python numbers go in, tensors come out; parameters are passed in by the generated
modules, which own them. Every fast function sits beside a plain `_reference` twin written as a
per-step loop, and tests/runtime/test_layers.py holds the two to each other (outputs and gradients).

- `rms_norm`, `l2_normalize`: normalisation over the last dimension.
- `rope_frequencies`, `RotaryTables`, `apply_rope`: rotary position embedding, rotate-half convention.
- `causal_attention`: softmax attention through `scaled_dot_product_attention`, full causal or
  sliding window, with optional persistent memory tokens (Titans) visible to every query.
- `causal_depthwise_conv`: the short causal convolution after the q/k/v projections, with a cache
  so that a stream processed in pieces equals the stream processed at once.
- `swiglu`, `gelu_mlp`, `output_gate`: the feed-forward and gating pieces.
- `newton_schulz`: Muon's quintic orthogonalisation, bit-for-bit the numerics of `torch.optim.Muon`
  at its default bfloat16 compute dtype, batched over leading dimensions.

Everything here compiles under `torch.compile(fullgraph=True)`: branches depend only on shapes and
Python arguments, never on tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of the quintic a·X + b·(XXᵀ)X + c·(XXᵀ)²X


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-6) -> Tensor:
    """Root-mean-square normalisation over the last dimension, then an optional per-channel gain."""
    if weight is not None and weight.dtype != x.dtype:  # autocast: torch's fused kernel wants one dtype
        weight = weight.to(x.dtype)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rms_norm_reference(x: Tensor, weight: Tensor | None, eps: float = 1e-6) -> Tensor:
    """Row-by-row `rms_norm`: x / sqrt(mean(x²) + eps) · weight."""
    rows = x.reshape(-1, x.shape[-1])  # (N, C)
    out = []
    for row in rows:
        normed = row / torch.sqrt((row * row).mean() + eps)
        out.append(normed if weight is None else normed * weight)
    return torch.stack(out).reshape(x.shape)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def gate_precision(x: Tensor) -> Tensor:
    """A gate's logits in at least float32. bfloat16's largest value below 1 is 0.996: a retention
    α = 0.999 (a memory that forgets over about a thousand tokens) rounds to exactly 1 in it and
    the memory never forgets, and η and β lose as much. Gates are few (B, H, T) numbers; the
    memory's coefficients are computed from them in float32 (memory.float32_recurrence)."""
    return x.to(gate_dtype(x.dtype))


def gate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a gate is computed in for data of `dtype`: at least float32 (`gate_precision`)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def constant_gate(x: Tensor, heads: int, value: float) -> Tensor:
    """A constant gate (B, H, T) for the tokens x (B, T, d), in at least float32 (`gate_precision`)."""
    return torch.full((x.shape[0], heads, x.shape[1]), value, dtype=gate_dtype(x.dtype), device=x.device)


def learned_gate(x: Tensor, proj: Tensor, bias: Tensor, bound: float) -> Tensor:
    """A gate learned per token and head: bound · sigmoid(x W + b), (B, T, d) → (B, H, T), in at
    least float32 (`gate_precision`)."""
    return bound * torch.sigmoid(gate_precision(F.linear(x, proj, bias))).transpose(1, 2)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Scale the last dimension to unit L2 norm: x / sqrt(Σ x² + eps).

    eps sits inside the square root rather than clamping the norm, so the map is smooth everywhere
    (a zero vector maps to zero with a finite gradient) at the price of a relative shrink of eps/2
    on unit vectors.
    """
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def l2_normalize_reference(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Row-by-row `l2_normalize`."""
    rows = x.reshape(-1, x.shape[-1])  # (N, C)
    return torch.stack([row / torch.sqrt((row * row).sum() + eps) for row in rows]).reshape(x.shape)


def rope_frequencies(
    head_dim: int,
    max_len: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables for `apply_rope`, each (max_len, head_dim).

    Channel j and channel j + head_dim/2 form one rotating pair with angular frequency
    θ_j = base^(−2j/head_dim), so both halves of a row hold the same angles t·θ_j. The angles are
    computed in float64 and rounded once to `dtype` (default: torch's default dtype), which keeps
    long positions accurate in float32 and bfloat16.
    """
    assert head_dim % 2 == 0, "rotary embedding needs an even head dimension"
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    positions = torch.arange(max_len, device=device, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq)  # (max_len, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class RotaryTables(torch.nn.Module):
    """Cosine and sine tables of `rope_frequencies` for one attention layer, `max_len` rows in
    float64, as non-persistent buffers (not saved with the weights).

    Generated attention keeps its tables in a module because, computed inside a compiled graph,
    they would be fused into every consumer and re-evaluated there. The tables follow the model's
    device but never its dtype: `.bfloat16()` and then `.float()` would otherwise leave them
    rounded to bfloat16 (about 3e-3 off), so every move rebuilds them in float64 where the model
    now lives, and each call rounds them once to the dtype it is asked for.
    """

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = rope_frequencies(head_dim, max_len, base, dtype=torch.float64)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        device = fn(self.cos).device  # where .to / .cuda / to_empty sends the module's tensors
        # computed in float64 on the CPU and rounded once to what the device holds (MPS has no float64)
        cos, sin = rope_frequencies(self.head_dim, self.cos.shape[0], self.base, "cpu", torch.float64)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.cos, self.sin = cos.to(device, dtype), sin.to(device, dtype)
        return self

    def forward(self, length: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The first `length` rows in `dtype`; a fresh pair for this length when the tables are shorter."""
        if length <= self.cos.shape[0]:
            return self.cos[:length].to(dtype), self.sin[:length].to(dtype)
        return rope_frequencies(self.head_dim, length, self.base, self.cos.device, dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.cos.shape[0]}, base={self.base}"


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, offset: int = 0) -> Tensor:
    """Rotate x (B, H, T, D) to positions offset … offset+T−1 with the tables of `rope_frequencies`.

    Rotate-half pairing: channel j rotates with channel j + D/2, i.e. (x_j + i·x_{j+D/2})·e^{i t θ_j}.
    `offset` continues a stream (generation with a cache) and must be a Python int.
    """
    seq_len = x.shape[-2]
    assert offset + seq_len <= cos.shape[0], "sequence runs past the rotary tables; raise max_len"
    cos = cos[offset : offset + seq_len]  # (T, D)
    sin = sin[offset : offset + seq_len]  # (T, D)
    return x * cos + _rotate_half(x) * sin


def causal_attention_mask(
    seq_len: int, window: int = 0, num_persistent: int = 0, device: torch.device | str | None = None
) -> Tensor:
    """Boolean mask (T, P + T), True where query t may attend: every persistent token, and the
    tokens t−window+1 … t (all of 0 … t when window == 0)."""
    query = torch.arange(seq_len, device=device).unsqueeze(1)  # (T, 1)
    key = torch.arange(seq_len, device=device).unsqueeze(0)  # (1, T)
    allowed = key <= query
    if window > 0:
        allowed = allowed & (key > query - window)
    persistent = torch.ones(seq_len, num_persistent, dtype=torch.bool, device=device)
    return torch.cat([persistent, allowed], dim=1)  # (T, P + T)


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int = 0,
    persistent_k: Tensor | None = None,
    persistent_v: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Causal softmax attention over q, k, v (B, H, T, D), through scaled_dot_product_attention.

    window == 0 is full causal attention; window > 0 lets token t see tokens t−window+1 … t.
    persistent_k / persistent_v (H, P, D) are Titans' persistent memory: learned keys and values
    prepended to every sequence and visible to every query, never masked, carrying no position.
    scale defaults to 1/sqrt(D).
    """
    assert window >= 0, "window counts tokens; 0 means unbounded"
    assert (persistent_k is None) == (persistent_v is None), "persistent keys and values come together"
    batch, _, seq_len, _ = q.shape
    if window == 0 and persistent_k is None:
        # The built-in causal flag keeps the fused kernels that skip masked blocks.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    num_persistent = 0
    if persistent_k is not None and persistent_v is not None:
        num_persistent = persistent_k.shape[1]
        k = torch.cat([persistent_k.unsqueeze(0).expand(batch, -1, -1, -1), k], dim=2)  # (B, H, P+T, D)
        v = torch.cat([persistent_v.unsqueeze(0).expand(batch, -1, -1, -1), v], dim=2)  # (B, H, P+T, D)
    mask = causal_attention_mask(seq_len, window, num_persistent, device=q.device)  # (T, P+T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def causal_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int = 0,
    persistent_k: Tensor | None = None,
    persistent_v: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Query-by-query `causal_attention` with an explicit softmax over the visible keys."""
    batch, _, seq_len, head_dim = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    outputs = []
    for t in range(seq_len):
        first = max(0, t - window + 1) if window > 0 else 0
        keys, values = k[:, :, first : t + 1], v[:, :, first : t + 1]  # (B, H, S, D)
        if persistent_k is not None and persistent_v is not None:
            keys = torch.cat([persistent_k.expand(batch, -1, -1, -1), keys], dim=2)
            values = torch.cat([persistent_v.expand(batch, -1, -1, -1), values], dim=2)
        scores = torch.einsum("bhd,bhsd->bhs", q[:, :, t], keys) * scale  # (B, H, S)
        weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        weights = weights / weights.sum(dim=-1, keepdim=True)
        outputs.append(torch.einsum("bhs,bhsd->bhd", weights, values))
    return torch.stack(outputs, dim=2)  # (B, H, T, D)


SHORT_CONV_TOKENS = 64  # at or below this length the taps are summed directly; conv1d wins above it (measured)


def causal_depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, cache: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Causal depthwise 1-D convolution of x (B, T, C) with taps weight (C, W); returns (y, new_cache).

    y_t = bias + Σ_w weight[:, w] · x_{t−W+1+w}: the last tap multiplies the current token. The
    inputs before the sequence are zeros, or `cache` (B, W−1, C), the last W−1 inputs of the
    previous piece of the stream; `new_cache` holds this call's last W−1 inputs, so calling on two
    halves with the cache carried over equals one call on the whole.
    """
    batch, seq_len, channels = x.shape
    width = weight.shape[1]
    if cache is None:
        cache = x.new_zeros(batch, width - 1, channels)
    if seq_len == 0:
        return x, cache  # conv1d rejects inputs shorter than the kernel
    padded = torch.cat([cache, x], dim=1)  # (B, W−1+T, C)
    # (B, W−1, C); a plain -(W−1) breaks at W = 1. A copy, not a view into `padded`: every cache is
    # then laid out alike, whatever the length of the piece it came from, so a compiled chunk body that
    # receives one is specialised on the same strides for the stream's start (`zero_history`) as after
    new_cache = padded[:, padded.shape[1] - (width - 1) :].contiguous()
    if seq_len <= SHORT_CONV_TOKENS or torch.compiler.is_compiling():
        # W shifted multiply-adds. Short pieces (HOPE convolves every 8-token chunk of its generated
        # projections): forward + backward 1.8× faster than conv1d at T = 8, C = 128 on a CPU core.
        # Under torch.compile they fuse into one kernel at any length: 2.1× faster than the
        # compiled conv1d at T = 1024, C = 256 (forward + backward, one CPU core).
        y = padded[:, :seq_len] * weight[:, 0]
        for w in range(1, width):
            y = y + padded[:, w : w + seq_len] * weight[:, w]
        return (y if bias is None else y + bias), new_cache
    y = F.conv1d(padded.transpose(1, 2), weight.unsqueeze(1), bias, groups=channels)  # (B, C, T)
    return y.transpose(1, 2), new_cache


def zero_history(x: Tensor, width: int) -> Tensor:
    """The cache `causal_depthwise_conv` starts a stream from (zeros, (B, W−1, C) for x (B, T ≥ 1, C)),
    made from x so that it requires gradients where x does, as the caches of later pieces do: a
    compiled chunk body is specialised on requires_grad, and a cache of None or of fresh zeros would
    make the first chunk's call (or run of chunks) a graph of its own."""
    return (x[:, :1] * 0).expand(-1, width - 1, -1).contiguous()


def causal_depthwise_conv_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, cache: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token `causal_depthwise_conv`."""
    batch, seq_len, channels = x.shape
    width = weight.shape[1]
    history = x.new_zeros(batch, width - 1, channels) if cache is None else cache
    history = torch.cat([history, x], dim=1)  # (B, W−1+T, C); x_t sits at row t + W − 1
    outputs = []
    for t in range(seq_len):
        y_t = x.new_zeros(batch, channels) if bias is None else bias.expand(batch, channels)
        for w in range(width):
            y_t = y_t + weight[:, w] * history[:, t + w]
        outputs.append(y_t)
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, channels)
    return y, history[:, history.shape[1] - (width - 1) :]


def linear_split(x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
    """x W_iᵀ for each weight (out_i, C), as one matrix product with the weights side by side.

    One wide GEMM runs closer to the machine's peak than several narrow ones, in the forward and
    in both products of the backward; concatenating the weights costs one copy of them per call,
    small next to the product for any batch of tokens. The outputs are views of one buffer.
    """
    return F.linear(x, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """SwiGLU feed-forward: (silu(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ.

    x (..., C), w_gate and w_up (F, C), w_down (C, F); the gate and up products are one GEMM.
    """
    gate, up = linear_split(x, w_gate, w_up)
    return F.linear(F.silu(gate) * up, w_down)


def swiglu_reference(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """Token-by-token `swiglu` with matrix-vector products."""
    rows = x.reshape(-1, x.shape[-1])  # (N, C)
    out = []
    for row in rows:
        gate = w_gate @ row
        out.append(w_down @ (gate * torch.sigmoid(gate) * (w_up @ row)))
    return torch.stack(out).reshape(*x.shape[:-1], w_down.shape[0])


def gelu_mlp(x: Tensor, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor | None) -> Tensor:
    """Two-layer MLP with the exact (erf) GELU: gelu(x W_inᵀ + b_in) W_outᵀ + b_out.

    x (..., C), w_in (F, C), b_in (F,), w_out (C', F), b_out (C',); either bias may be None.
    """
    return F.linear(F.gelu(F.linear(x, w_in, b_in)), w_out, b_out)


def gelu_mlp_reference(
    x: Tensor, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor | None
) -> Tensor:
    """Token-by-token `gelu_mlp`, GELU written through erf."""
    rows = x.reshape(-1, x.shape[-1])  # (N, C)
    out = []
    for row in rows:
        hidden = w_in @ row if b_in is None else w_in @ row + b_in
        hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))
        out.append(w_out @ hidden if b_out is None else w_out @ hidden + b_out)
    return torch.stack(out).reshape(*x.shape[:-1], w_out.shape[0])


def output_gate(y: Tensor, x: Tensor, w_gate: Tensor) -> Tensor:
    """Gate y (..., C_out) by the layer input x (..., C_in): y ⊙ sigmoid(x W_gateᵀ), w_gate (C_out, C_in)."""
    return y * torch.sigmoid(F.linear(x, w_gate))


def output_gate_reference(y: Tensor, x: Tensor, w_gate: Tensor) -> Tensor:
    """Token-by-token `output_gate`."""
    y_rows = y.reshape(-1, y.shape[-1])  # (N, C_out)
    x_rows = x.reshape(-1, x.shape[-1])  # (N, C_in)
    out = [y_row / (1.0 + torch.exp(-(w_gate @ x_row))) for y_row, x_row in zip(y_rows, x_rows)]
    return torch.stack(out).reshape(y.shape)


def newton_schulz(
    g: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    *,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    compute_dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Muon's quintic Newton–Schulz orthogonalisation of g (..., m, n), batched over leading dims.

    X ← X / max(‖X‖_F, eps), then `steps` times X ← a·X + (b·A + c·A²)·X with A = X Xᵀ, working on
    the wide orientation (transposed when m > n so that A is the smaller Gram matrix). The result
    is close to U Vᵀ of the SVD g = U S Vᵀ, with singular values in roughly (0.5, 1.5).

    With the default compute_dtype (bfloat16) this reproduces torch.optim.Muon's orthogonalisation
    bit for bit: the same casts, the same norm, and the same fused multiply-adds, whose single
    rounding in bfloat16 differs visibly from separate products and sums. compute_dtype=None
    iterates in g's own dtype (float64 for exact checks of a differentiable inner loop). The result
    is returned in g's dtype.
    """
    a, b, c = coefficients
    x = g if compute_dtype is None else g.to(compute_dtype)
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT  # (..., n, m)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    rows, cols = x.shape[-2:]
    x = x.reshape(-1, rows, cols)  # (N, rows, cols), rows ≤ cols
    for _ in range(steps):
        gram = x @ x.mT  # (N, rows, rows)
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.baddbmm(x, polynomial, x, beta=a)  # a·X + (b·A + c·A²)·X
    x = x.reshape(*g.shape[:-2], rows, cols)
    if tall:
        x = x.mT
    return x.to(g.dtype)


def newton_schulz_reference(
    g: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    *,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
) -> Tensor:
    """Matrix-by-matrix, step-by-step `newton_schulz` in g's own dtype, with separate products."""
    a, b, c = coefficients
    matrices = g.reshape(-1, *g.shape[-2:])  # (N, m, n)
    out = []
    for matrix in matrices:
        tall = matrix.shape[0] > matrix.shape[1]
        x = matrix.T if tall else matrix
        x = x / torch.clamp(torch.sqrt((x * x).sum()), min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        out.append(x.T if tall else x)
    return torch.stack(out).reshape(g.shape)

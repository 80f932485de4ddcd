"""The reference interpreter: what a checked spec means, executed token by token in eager PyTorch.

This file defines the semantics of a model spec (docs/semantics.md, section numbers below refer to
it). It is written to be read, not to be fast: every in-context level runs through the per-token
reference `memory_level_reference` (one inner gradient per token, taken with autograd at the
state its chunk started with), attention is a loop over query positions with an explicit softmax,
a causal convolution is an explicit sum over its taps, and the CMS surprise is the autograd
gradient of each token's own next-token cross-entropy. The compiled, chunk-parallel code must
agree with it on logits and on the gradients of every parameter (run both in float64).

- `interpret(spec, params, tokens)`: logits (B, T, vocab).
- `interpret_loss(spec, params, tokens)`: mean next-token cross-entropy over positions 0 … T−2.
- `init_params(spec)`: small random parameters with the names and shapes of
  `nldsl.shapes.model_parameters`, for tests.
- `level_config(level, d_in, d_out)`: the runtime's `LevelConfig` of a spec level (§1).
- `learns_in_context(level, seq_len)`: whether a cms level learns in the forward pass (§3.7).

Parameters are looked up by their `state_dict` names (`blocks.0.titans.k_memory_w1`, `embed`,
…) and converted with `.to(dtype)`, so gradients flow back to the caller's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl import spec as S
from nldsl.runtime.memory import LevelConfig, MemoryState
from nldsl.runtime.reference import memory_level_reference
from nldsl.shapes import hidden_width, model_parameters, state_layers

L2_EPS = 1e-6  # l2(x) = x / sqrt(Σx² + L2_EPS) (§3)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,  # the exact erf GELU
    "relu": torch.relu,
    "tanh": torch.tanh,
}


# Public entry points ---------------------------------------------------------------------------

def interpret(
    spec: S.Spec, params: Mapping[str, Tensor], tokens: Tensor, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Run the spec's model on tokens (B, T) and return its logits (B, T, vocab) in `dtype` (§3.1).

    `params` must hold exactly the tensors named by `nldsl.shapes.model_parameters(spec.model)`.
    Every sequence of the batch has its own in-context state; nothing is shared across sequences
    except the parameters.
    """
    model = spec.model
    assert model is not None, f"{spec.path} defines no model"
    assert tokens.dim() == 2, f"tokens must be (B, T), got {tuple(tokens.shape)}"
    expected = model_parameters(model)
    missing, unexpected = expected.keys() - params.keys(), params.keys() - expected.keys()
    assert not missing and not unexpected, f"missing parameters {sorted(missing)}, unexpected {sorted(unexpected)}"
    for name, shape in expected.items():
        assert tuple(params[name].shape) == shape, f"{name}: expected {shape}, got {tuple(params[name].shape)}"

    converted = {name: tensor.to(dtype) for name, tensor in params.items()}
    head = converted["embed"] if model.tie_embeddings else converted["head"]  # E  (vocab, d)
    run = _Run(model, spec.train.seq_len, tokens, converted["final_norm"], head)

    hidden = converted["embed"][tokens]  # (B, T, d)
    if tokens.shape[1] == 0:  # an empty sequence reads and writes nothing
        return run.logits(hidden)
    for index in range(model.layers):
        block = _Scope(converted, f"blocks.{index}.")
        for layer in model.block.sublayers:
            scope = block.child(layer.name)
            x = _rms_norm(hidden, scope["norm"], model.norm_eps) if model.block.norm == "rms" else hidden
            hidden = hidden + _sublayer(run, scope, layer, x)
    return run.logits(hidden)


def interpret_loss(
    spec: S.Spec, params: Mapping[str, Tensor], tokens: Tensor, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The mean next-token cross-entropy of `interpret`'s logits over positions 0 … T−2 (§3.1)."""
    logits = interpret(spec, params, tokens, dtype=dtype)
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1))


def init_params(spec: S.Spec, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Small random parameters with exactly the names and shapes of `model_parameters(spec.model)`.

    Meant for tests, not for training: weights and initial memory states ~ N(0, 1/fan_in), norm
    weights 1 + N(0, 0.1²), gate biases and per-head gate logits ~ N(0, 0.5²), convolution taps
    ~ N(0, 0.5²), persistent tokens ~ N(0, 1), CMS mixing weights 1/n. Deterministic in `seed`.
    """
    assert spec.model is not None, f"{spec.path} defines no model"
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in model_parameters(spec.model).items():
        leaf = name.rsplit(".", 1)[-1]
        normal = torch.randn(shape, generator=generator, dtype=torch.float64)
        if leaf == "mix":
            value = torch.full(shape, 1.0 / shape[0], dtype=torch.float64)
        elif leaf.endswith("norm") or leaf.startswith("gate_norm_"):
            value = 1.0 + 0.1 * normal
        elif leaf.endswith("_bias") or leaf.endswith("_logit") or leaf.startswith("conv_"):
            value = 0.5 * normal
        elif leaf.startswith("persistent_"):
            value = normal
        elif leaf in ("b_in", "b_out"):
            value = 0.1 * normal
        else:
            assert len(shape) >= 2, f"no initialisation rule for {name} {shape}"
            value = normal / math.sqrt(shape[-1])
        params[name] = value.to(dtype)
    return params


def level_config(level: S.LevelSpec, d_in: int, d_out: int) -> LevelConfig:
    """The runtime's `LevelConfig` of an in-context level with keys of width d_in, values d_out (§1)."""
    state = level.state
    config = LevelConfig(
        state=state.kind,
        d_in=d_in,
        d_out=d_out,
        hidden=0 if isinstance(state, S.LinearState) else hidden_width(state.expansion, d_in),
        depth=state.depth if isinstance(state, S.MLPState) else 2,
        activation="silu" if isinstance(state, S.LinearState) else state.activation,
        objective="external" if level.objective == "surprise" else level.objective,
        values=level.values,
        dgd=level.rule == "dgd",
        dgd_layers=level.dgd_layers,
        momentum=level.momentum is not None,
        chunk_size=level.period if isinstance(level.period, int) else 1,  # periods in steps: static levels
        readout=level.readout,
        orthogonalize_steps=0 if level.orthogonalize is None else level.orthogonalize.steps,
        grad_through_writes=level.grad_through_writes,
        decay_before_write=level.retention_order == "before_write",
        clip=level.clip,
    )
    assert config.weight_shapes() == state_layers(state, d_in, d_out), level.name
    return config


def learns_in_context(level: S.LevelSpec, seq_len: int) -> bool:
    """A cms level learns in context when `update = in_context` and its period fits a training sequence.

    Otherwise it is a plain MLP whose weights only the outer optimizer changes (§3.7, §4). The rule
    lives on the spec (`LevelSpec.learns_in_context`), where the checker and the compiler read it too.
    """
    return level.learns_in_context(seq_len)


# Plumbing: parameter scopes and the model-wide pieces a layer may need --------------------------

class _Scope:
    """The parameters under one name prefix: `scope["wq"]` reads `blocks.0.lmm.wq`."""

    def __init__(self, params: Mapping[str, Tensor], prefix: str = ""):
        self.params = params
        self.prefix = prefix

    def __getitem__(self, name: str) -> Tensor:
        key = self.prefix + name
        assert key in self.params, f"the spec needs parameter {key}"
        return self.params[key]

    def child(self, name: str) -> _Scope:
        """The parameters of a nested layer: `scope.child("attention")["wq"]` reads `….attention.wq`."""
        return _Scope(self.params, f"{self.prefix}{name}.")

    def prefixed(self, prefix: str) -> _Scope:
        """The parameters of a cms level: `scope.prefixed("fast_")["lr_proj"]` reads `….fast_lr_proj`."""
        return _Scope(self.params, self.prefix + prefix)

    def weights(self, prefix: str, count: int) -> list[Tensor]:
        """`{prefix}w1 … {prefix}w{count}`: an initial state θ_0 (H, out, in) per weight."""
        return [self[f"{prefix}w{index + 1}"] for index in range(count)]


class _Run:
    """What every layer of one call shares: the tokens, the output head and the training length."""

    def __init__(self, model: S.ModelSpec, seq_len: int, tokens: Tensor, final_norm: Tensor, head: Tensor):
        self.model = model
        self.seq_len = seq_len  # train.seq_len: decides which cms levels learn in context
        self.tokens = tokens  # (B, T)
        self.final_norm = final_norm  # (d,)
        self.head = head  # E  (vocab, d)

    @property
    def eps(self) -> float:
        return self.model.norm_eps

    def logits(self, hidden: Tensor) -> Tensor:
        """norm(h, final_norm) Eᵀ for hidden (..., d)."""
        return _rms_norm(hidden, self.final_norm, self.eps) @ self.head.T

    def surprise(self, offset: int = 0) -> Callable[[Tensor, int], Tensor]:
        """The inner loss of a cms level (§1.3 `surprise`): each token's own next-token cross-entropy.

        The returned function maps the level's prediction (B, 1, 1, d) for token `offset + t` to
        CE(norm(y, final_norm) Eᵀ, token_{offset+t+1}) (B, 1, 1). The last position has no target
        and contributes a zero loss (g = 0).
        """
        length = self.tokens.shape[1]

        def loss(prediction: Tensor, t: int) -> Tensor:
            position = offset + t
            if position + 1 >= length:
                return 0.0 * prediction.sum(-1)
            logits = self.logits(prediction)  # (B, 1, 1, vocab)
            target = self.tokens[:, position + 1]  # (B,)
            return F.cross_entropy(logits.flatten(0, 2), target, reduction="none").view(-1, 1, 1)

        return loss


def _sublayer(run: _Run, scope: _Scope, layer: S.Sublayer, x: Tensor) -> Tensor:
    """One sublayer on its (pre-normed) input x (B, T, d); returns what is added to the residual."""
    if isinstance(layer, S.AttentionSpec):
        return _attention(run, scope, layer, x)
    if isinstance(layer, S.MLPSpec):
        return _mlp(scope, layer, x)
    if isinstance(layer, S.MemorySpec):
        return _memory(run, scope, layer, x)
    if isinstance(layer, S.SelfModSpec):
        return _selfmod(run, scope, layer, x)
    if isinstance(layer, S.CMSSpec):
        return _cms(run, scope, layer, x)
    if isinstance(layer, S.ParallelSpec):
        return _parallel(run, scope, layer, x)
    if isinstance(layer, S.ContextSpec):
        return _memory_as_context(run, scope, layer, x)
    raise AssertionError(f"unknown layer {type(layer).__name__}")


# Small pieces: norms, heads, convolution, rotary embedding, gates -----------------------------

def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """norm(x, w) = x · w / sqrt(mean(x²) + ε) over the last dimension."""
    return x * weight / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _l2(x: Tensor) -> Tensor:
    """l2(x) = x / sqrt(Σx² + 1e-6) over the last dimension."""
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + L2_EPS)


def _split(x: Tensor, heads: int) -> Tensor:
    """(B, T, d) -> (B, H, T, d/H)."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, T, d_h) -> (B, T, H·d_h)."""
    batch, heads, length, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_width)


def _causal_conv(x: Tensor, taps: Tensor) -> Tensor:
    """Depthwise causal convolution over time: y_t = Σ_{j<W} w[:, j] · x_{t−W+1+j}, zeros before t = 0.

    x (B, T, d), taps (d, W).
    """
    width = taps.shape[1]
    output = torch.zeros_like(x)
    for j in range(width):
        lag = width - 1 - j  # tap j reads the input `lag` steps back
        shifted = F.pad(x, (0, 0, lag, 0))[:, : x.shape[1]]  # x_{t−lag}, zero before the start
        output = output + taps[:, j] * shifted
    return output


def _rope(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotary embedding, rotate-half pairing (channel j turns with j + D/2) at the given positions.

    x (B, H, n, D), positions (n,).
    """
    half = x.shape[-1] // 2
    exponents = torch.arange(0, 2 * half, 2, dtype=torch.float64, device=x.device) / (2 * half)
    inverse_frequency = base ** (-exponents)  # (D/2,)
    angles = positions.to(torch.float64)[:, None] * inverse_frequency  # (n, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)  # (n, D)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _gate(scope: _Scope, name: str, gate: S.Gate | None, x: Tensor, heads: int) -> Tensor | None:
    """One scalar per (sequence, head, token) (B, H, T) from the layer input x (B, T, d) (§3.2).

    name is `lr` (η), `retention` (α) or `momentum` (β); an absent gate is None (α = 1, no β).
    """
    if gate is None:
        return None
    batch, length = x.shape[:2]
    if isinstance(gate, S.ConstantGate):
        return torch.full((batch, heads, length), gate.value, dtype=x.dtype, device=x.device)
    if isinstance(gate, S.PerHeadGate):
        logit = scope[f"{name}_logit"]  # (H,)
        value = F.softplus(logit) if name == "lr" else torch.sigmoid(logit)
        return value[None, :, None].expand(batch, heads, length)
    if isinstance(gate, S.LearnedGate):
        logits = torch.einsum("btd,hd->bht", x, scope[f"{name}_proj"]) + scope[f"{name}_bias"][:, None]
        return gate.max * torch.sigmoid(logits)
    raise AssertionError(f"`{name} = generated` is produced by a selfmod projection, not from the input")


def _apply_state(config: LevelConfig, weights: list[Tensor], x: Tensor) -> Tensor:
    """M_θ(x) of §1.2 for inputs x (B, H, n, d_in) and weights (B, H, out, in); returns (B, H, n, d_out)."""
    activation = ACTIVATIONS[config.activation]
    hidden = x
    for index, weight in enumerate(weights):
        hidden = torch.einsum("bhoi,bhni->bhno", weight, hidden)
        if index < len(weights) - 1:
            hidden = activation(hidden)
    return x + hidden if config.state == "residual_mlp" else hidden


def _initial_state(config: LevelConfig, scope: _Scope, prefix: str, level: S.LevelSpec,
                   like: Tensor, heads: int) -> MemoryState:
    """θ_0 for every sequence of `like` (B, …) (the shared `{prefix}w*`, or zeros for `init = zeros`), S = 0."""
    shapes = config.weight_shapes()
    batch, dtype, device = like.shape[0], like.dtype, like.device
    if level.init == "zeros":
        weights = [torch.zeros(batch, heads, out, inp, dtype=dtype, device=device) for out, inp in shapes]
    else:
        weights = [w.unsqueeze(0).expand(batch, *w.shape) for w in scope.weights(prefix, len(shapes))]
    momentum = [torch.zeros_like(w) for w in weights] if config.momentum else None
    return MemoryState(weights, momentum)


# Attention and MLP (§3.3, §3.4) --------------------------------------------------------------

def _attend(
    queries: Tensor, keys: Tensor, values: Tensor, visible: Tensor,
    persistent_keys: Tensor | None, persistent_values: Tensor | None,
) -> Tensor:
    """Softmax attention written as a loop over query positions.

    queries (B, H, n, d_h); keys, values (B, H, m, d_h); visible (n, m) says which keys query i
    may read; persistent keys/values (H, P, d_h) are always visible. Scale 1/sqrt(d_h).
    """
    scale = 1.0 / math.sqrt(queries.shape[-1])
    outputs = []
    for i in range(queries.shape[2]):
        step_keys, step_values = keys[:, :, visible[i]], values[:, :, visible[i]]  # (B, H, m_i, d_h)
        if persistent_keys is not None and persistent_values is not None:
            batch = queries.shape[0]
            step_keys = torch.cat([persistent_keys.expand(batch, -1, -1, -1), step_keys], dim=2)
            step_values = torch.cat([persistent_values.expand(batch, -1, -1, -1), step_values], dim=2)
        scores = torch.einsum("bhd,bhjd->bhj", queries[:, :, i], step_keys) * scale
        weights = torch.softmax(scores, dim=-1)
        outputs.append(torch.einsum("bhj,bhjd->bhd", weights, step_values))
    return torch.stack(outputs, dim=2)  # (B, H, n, d_h)


def _attention_projections(run: _Run, scope: _Scope, layer: S.AttentionSpec, x: Tensor,
                           positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, H, n, d_h) of §3.3: projections, optional per-head RMS norm, then RoPE at `positions`."""
    q, k, v = (_split(x @ scope[w].T, layer.heads) for w in ("wq", "wk", "wv"))
    if layer.qk_norm:
        q, k = _rms_norm(q, scope["q_norm"], run.eps), _rms_norm(k, scope["k_norm"], run.eps)
    if layer.rope:
        q, k = _rope(q, positions, layer.rope_base), _rope(k, positions, layer.rope_base)
    return q, k, v


def _persistent(scope: _Scope, layer: S.AttentionSpec) -> tuple[Tensor | None, Tensor | None]:
    if not layer.persistent:
        return None, None
    return scope["persistent_k"], scope["persistent_v"]  # (H, P, d_h), no rope


def _attention(run: _Run, scope: _Scope, layer: S.AttentionSpec, x: Tensor) -> Tensor:
    """Causal softmax attention (§3.3): query t reads keys j ≤ t (j > t − window if windowed)."""
    positions = torch.arange(x.shape[1], device=x.device)
    q, k, v = _attention_projections(run, scope, layer, x, positions)
    query, key = positions[:, None], positions[None, :]
    visible = key <= query
    if layer.window > 0:
        visible = visible & (key > query - layer.window)
    outputs = _attend(q, k, v, visible, *_persistent(scope, layer))
    return _merge(outputs) @ scope["wo"].T


def _mlp(scope: _Scope, layer: S.MLPSpec, x: Tensor) -> Tensor:
    """swiglu: (silu(x w_gateᵀ) ⊙ x w_upᵀ) w_downᵀ; gelu: gelu(x w_inᵀ + b_in) w_outᵀ + b_out (§3.4)."""
    if layer.activation == "swiglu":
        return (F.silu(x @ scope["w_gate"].T) * (x @ scope["w_up"].T)) @ scope["w_down"].T
    return F.gelu(x @ scope["w_in"].T + scope["b_in"]) @ scope["w_out"].T + scope["b_out"]


# Memory layers (§3.5, §3.6) ------------------------------------------------------------------

def _memory_projection(scope: _Scope, layer: S.MemorySpec, x: Tensor, name: str) -> Tensor:
    """One of q, k, v (B, H, T, d_h) of §3.5 from the stream x (B, T, d)."""
    projected = x @ scope[f"w{name}"].T  # (B, T, d)
    if layer.conv:
        projected = _causal_conv(projected, scope[f"conv_{name}"])
    if layer.activation == "silu":
        projected = F.silu(projected)
    return _normalized(layer, _split(projected, layer.heads), name)


def _normalized(layer: S.MemorySpec | S.SelfModSpec, projected: Tensor, name: str) -> Tensor:
    """l2 on each head of q and k (`qk_norm = l2`) and of v (`value_norm = l2`)."""
    norm = layer.qk_norm if name in ("q", "k") else getattr(layer, "value_norm", "none")
    return _l2(projected) if norm == "l2" else projected


def _memory_output(run: _Run, scope: _Scope, layer: S.MemorySpec | S.SelfModSpec, outputs: Tensor,
                   gate_input: Tensor) -> Tensor:
    """The output path of §3.5: per-head norm, merge, sigmoid gate from gate_input (B, T, d), wo."""
    if layer.output_norm:
        outputs = _rms_norm(outputs, scope["out_norm"], run.eps)  # (B, H, T, d_h)
    merged = _merge(outputs)  # (B, T, d)
    if layer.output_gate:
        merged = merged * torch.sigmoid(gate_input @ scope["w_gate"].T)
    return merged @ scope["wo"].T


def _level_gates(scope: _Scope, level: S.LevelSpec, x: Tensor, heads: int
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """η, α, β (B, H, T) of a level from its layer input x (B, T, d)."""
    lr = _gate(scope, "lr", level.lr, x, heads)
    assert lr is not None
    return lr, _gate(scope, "retention", level.retention, x, heads), _gate(scope, "momentum", level.momentum, x, heads)


def _memory_stream(run: _Run, scope: _Scope, layer: S.MemorySpec, stream: Tensor, state: MemoryState,
                   start: int = 0) -> tuple[Tensor, MemoryState]:
    """§3.5 on the tokens stream[:, start:] (B, n, d), continuing the level from `state`.

    The convolutions read the whole stream, so tokens before `start` are their history. Returns
    the layer output (B, n, d) and the level's final state.
    """
    head_width = stream.shape[-1] // layer.heads
    config = level_config(layer.level, head_width, head_width)
    q, k, v = (_memory_projection(scope, layer, stream, name)[:, :, start:] if name in layer.projected else None
               for name in "qkv")  # (B, H, n, d_h); v None for reconstruction
    x = stream[:, start:]
    lr, retention, momentum = _level_gates(scope, layer.level, x, layer.heads)
    outputs, state = memory_level_reference(config, state, k, v, q, lr, retention, momentum)
    return _memory_output(run, scope, layer, outputs, x), state


def _memory_initial_state(scope: _Scope, layer: S.MemorySpec, x: Tensor) -> MemoryState:
    """θ_0 and S = 0 of a memory layer's level for every sequence of x (B, T, d)."""
    head_width = x.shape[-1] // layer.heads
    config = level_config(layer.level, head_width, head_width)
    return _initial_state(config, scope, "memory_", layer.level, x, layer.heads)


def _memory(run: _Run, scope: _Scope, layer: S.MemorySpec, x: Tensor) -> Tensor:
    """An associative-memory layer (§3.5): one level per head over the whole sequence."""
    state = _memory_initial_state(scope, layer, x)
    return _memory_stream(run, scope, layer, x, state)[0]


def _selfmod(run: _Run, scope: _Scope, layer: S.SelfModSpec, x: Tensor) -> Tensor:
    """Self-modifying Titans (§3.6, Eq. 83–93), one projection chunk at a time.

    For each chunk of the `projections` level, the adaptive projections read their chunk-start
    state on x_h; q, k, v are convolved over the sequence so far and l2-normalised; η and α come
    from their memories' readouts; then every adaptive memory takes one chunk step on (k, v) with
    generated targets and the shared η, α, β. Finally the main memory runs over the whole
    sequence and the output path of §3.5 follows.
    """
    length, width = x.shape[1:]
    heads = layer.heads
    head_width = width // heads
    x_heads = _split(x, heads)  # (B, H, T, d_h)
    memory = layer.memory
    adaptive = layer.adaptive

    projection_config = level_config(layer.projections, head_width, head_width)
    states = {name: _initial_state(projection_config, scope, f"{name}_memory_", layer.projections,
                                   x, heads) for name in adaptive}
    raw = {name: [] if name in adaptive else [_split(x @ scope[f"w{name}"].T, heads)]
           for name in "qkv"}  # chunks of raw q, k, v  (B, H, n, d_h)
    static_lr = None if "eta" in adaptive else _gate(scope, "lr", memory.lr, x, heads)
    static_retention = None if "alpha" in adaptive else _gate(scope, "retention", memory.retention, x, heads)
    momentum = _gate(scope, "momentum", memory.momentum or layer.projections.momentum, x, heads)
    lr_chunks, retention_chunks = [], []  # η, α  (B, H, n)

    period = projection_config.chunk_size
    for start in range(0, length, period):
        end = min(start + period, length)
        readouts = {name: _apply_state(projection_config, states[name].weights, x_heads[:, :, start:end])
                    for name in adaptive}  # chunk-start readout M_□,θ_c(x_h)  (B, H, n, d_h)
        for name in adaptive:
            if name in raw:
                raw[name].append(readouts[name])
        # The convolution runs over the whole sequence: a chunk sees the previous chunk's inputs.
        q, k, v = (_projection_so_far(scope, layer, raw[name], name, end) for name in "qkv")
        lr = _generated_gate(scope, "eta", memory.lr, readouts) if "eta" in adaptive else _slice(static_lr, start, end)
        retention = (_generated_gate(scope, "alpha", memory.retention, readouts) if "alpha" in adaptive
                     else _slice(static_retention, start, end))
        assert lr is not None
        lr_chunks.append(lr)
        retention_chunks.append(retention)
        chunk_momentum = _slice(momentum, start, end) if projection_config.momentum else None
        for name in adaptive:
            states[name] = memory_level_reference(
                projection_config, states[name], k[:, :, start:end], v[:, :, start:end],
                x_heads[:, :, start:end], lr, retention, chunk_momentum,
            )[1]

    memory_config = level_config(memory, head_width, head_width)
    state = _initial_state(memory_config, scope, "memory_", memory, x, heads)
    retention = None if retention_chunks[0] is None else torch.cat(retention_chunks, dim=-1)
    outputs, _ = memory_level_reference(memory_config, state, k, v, q, torch.cat(lr_chunks, dim=-1), retention,
                                        momentum if memory_config.momentum else None)
    return _memory_output(run, scope, layer, outputs, x)


def _generated_gate(scope: _Scope, name: str, gate: S.Gate | None, readouts: dict[str, Tensor]) -> Tensor:
    """η or α (B, H, n) from its memory's readout: max · sigmoid(⟨{name}_readout_h, M(x_h)_t⟩ + {name}_bias_h)."""
    logits = torch.einsum("bhnd,hd->bhn", readouts[name], scope[f"{name}_readout"])
    bound = getattr(gate, "max", 1.0)  # a constant or absent gate has no bound: 1
    return bound * torch.sigmoid(logits + scope[f"{name}_bias"][:, None])


def _slice(gate: Tensor | None, start: int, end: int) -> Tensor | None:
    return None if gate is None else gate[..., start:end]


def _projection_so_far(scope: _Scope, layer: S.SelfModSpec, chunks: list[Tensor], name: str, end: int
                       ) -> Tensor:
    """q, k or v (B, H, end, d_h) of §3.6 for tokens 0 … end−1: conv over the raw stream, then l2 norms."""
    raw = _merge(torch.cat(chunks, dim=2)[:, :, :end])  # (B, end, d)
    if layer.conv:
        raw = _causal_conv(raw, scope[f"conv_{name}"])
    return _normalized(layer, _split(raw, layer.heads), name)


# Continuum Memory System (§3.7) --------------------------------------------------------------

def _cms_level(run: _Run, scope: _Scope, level: S.LevelSpec, x: Tensor) -> Tensor:
    """One CMS level on its input x (B, T, d): a static MLP, or an MLP learning in context."""
    batch, _, width = x.shape
    config = level_config(level, width, width)
    if not learns_in_context(level, run.seq_len):
        weights = [w.unsqueeze(0).expand(batch, *w.shape) for w in
                   scope.weights(f"{level.name}_", len(config.weight_shapes()))]
        return _apply_state(config, weights, x[:, None])[:, 0]
    state = _initial_state(config, scope, f"{level.name}_", level, x, 1)
    return _cms_learning(run, scope, level, config, state, x)[0]


def _cms_learning(run: _Run, scope: _Scope, level: S.LevelSpec, config: LevelConfig, state: MemoryState,
                  x: Tensor, offset: int = 0) -> tuple[Tensor, MemoryState]:
    """An in-context CMS level from `state` over x (B, n, d), the tokens from position `offset` on.

    Keys and queries are the level's input; the inner loss is the surprise (or the reconstruction
    error); the gates read the level's input. Returns the outputs (B, n, d) and the final state.
    """
    lr, retention, momentum = _level_gates(scope.prefixed(f"{level.name}_"), level, x, 1)
    external = run.surprise(offset) if config.objective == "external" else None
    inputs = x[:, None]  # one head  (B, 1, n, d)
    outputs, state = memory_level_reference(config, state, inputs, None, inputs, lr, retention, momentum, external)
    return outputs[:, 0], state


def _cms(run: _Run, scope: _Scope, layer: S.CMSSpec, x: Tensor) -> Tensor:
    """A chain of MLP levels: sequential, independent (mixed) or nested (§3.7)."""
    if layer.variant == "sequential":
        for level in layer.levels:
            x = _cms_level(run, scope, level, x)
        return x
    if layer.variant == "independent":
        mix = scope["mix"]  # (n_levels,)
        return sum(mix[index] * _cms_level(run, scope, level, x) for index, level in enumerate(layer.levels))
    return _nested_cms(run, scope, layer, x)


def _nested_cms(run: _Run, scope: _Scope, layer: S.CMSSpec, x: Tensor) -> Tensor:
    """Nested CMS: one MLP runs with the fastest level's state θ_1, learning in context.

    When the period of a slower level ℓ ends, taking the levels from the fastest to the slowest,
    θ_ℓ ← θ_ℓ + η_ℓ (θ_{ℓ−1} − θ_ℓ) (η_ℓ its constant lr) and every faster level restarts from the
    new θ_ℓ, with its momentum S back at zero. Slower levels that do not learn in context never move.
    """
    length, width = x.shape[1:]
    fastest = layer.levels[0]
    if not learns_in_context(fastest, run.seq_len):
        return _cms_level(run, scope, fastest, x)
    configs = [level_config(level, width, width) for level in layer.levels]
    states = [_initial_state(config, scope, f"{level.name}_", level, x, 1)
              for config, level in zip(configs, layer.levels)]
    slower = [(index, level) for index, level in enumerate(layer.levels)
              if index > 0 and learns_in_context(level, run.seq_len)]
    boundaries = {end for _, level in slower for end in range(level.period, length + 1, level.period)}
    outputs = []
    start = 0
    for end in sorted({*boundaries, length}):
        segment, states[0] = _cms_learning(run, scope, fastest, configs[0], states[0], x[:, start:end], start)
        outputs.append(segment)
        start = end
        for index, level in slower:
            if end % level.period:
                continue
            assert isinstance(level.lr, S.ConstantGate), "the checker allows only a constant lr here"
            eta = level.lr.value  # η_ℓ
            moved = [w + eta * (faster - w) for w, faster in zip(states[index].weights, states[index - 1].weights)]
            for restarted in range(index + 1):
                momentum = [torch.zeros_like(w) for w in moved] if configs[restarted].momentum else None
                states[restarted] = MemoryState(list(moved), momentum)
    return torch.cat(outputs, dim=1)


# Composite layers (§3.8) ---------------------------------------------------------------------

def _parallel(run: _Run, scope: _Scope, layer: S.ParallelSpec, x: Tensor) -> Tensor:
    """Branches on the same x: their sum, or norm(b_0) ⊙ sigmoid(norm(b_1)) for `combine = gate`."""
    branches = [_sublayer(run, scope.child(branch.name), branch, x) for branch in layer.branches]
    if layer.combine == "sum":
        return sum(branches[1:], branches[0])
    first = _rms_norm(branches[0], scope["gate_norm_0"], run.eps)
    second = _rms_norm(branches[1], scope["gate_norm_1"], run.eps)
    return first * torch.sigmoid(second)


def _memory_as_context(run: _Run, scope: _Scope, layer: S.ContextSpec, x: Tensor) -> Tensor:
    """Titans MAC (§3.8), segment by segment with the memory state carried across segments.

    Segment s retrieves r_s from the memory at the segment's start state (the q path over the x
    stream), attends from x_s over [persistent | r_s | x_s], writes the attention output y_s into
    the memory (its q, k, v convolutions run over the whole y stream) and outputs y_s ⊙ m_s.
    """
    length, width = x.shape[1:]
    memory_scope, attention_scope = scope.child("memory"), scope.child("attention")
    memory, attention = layer.memory, layer.attention
    head_width = width // memory.heads
    config = level_config(memory.level, head_width, head_width)
    state = _memory_initial_state(memory_scope, memory, x)
    retrieval_queries = _memory_projection(memory_scope, memory, x, "q")  # over the x stream  (B, H, T, d_h)
    persistent_keys, persistent_values = _persistent(attention_scope, attention)

    attended: list[Tensor] = []  # y_s  (B, S, d)
    outputs = []
    for start in range(0, length, layer.segment):
        end = min(start + layer.segment, length)
        size = end - start
        x_segment = x[:, start:end]
        read = _apply_state(config, state.weights, retrieval_queries[:, :, start:end])  # (B, H, S, d_h)
        retrieved = _memory_output(run, memory_scope, memory, read, x_segment)  # r_s  (B, S, d)

        # r_j and x_j both sit at position j of the segment; the queries are the x half.
        positions = torch.arange(size, device=x.device)
        q, k, v = _attention_projections(run, attention_scope, attention, torch.cat([retrieved, x_segment], dim=1),
                                         torch.cat([positions, positions]))
        causal = positions[None, :] <= positions[:, None]  # (S, S)
        heads_out = _attend(q[:, :, size:], k, v, torch.cat([causal, causal], dim=1),
                            persistent_keys, persistent_values)  # (B, H, S, d_h)
        attended.append(_merge(heads_out) @ attention_scope["wo"].T)  # y_s  (B, S, d)

        memorised, state = _memory_stream(run, memory_scope, memory, torch.cat(attended, dim=1), state, start)
        outputs.append(attended[-1] * memorised)  # y_s ⊙ m_s
    return torch.cat(outputs, dim=1)

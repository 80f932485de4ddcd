"""Memory levels (docs/semantics.md §1): configuration, initial weights and the chunk-parallel fast path.

A level stores per-sequence, per-head weights θ = (W_1, …, W_L) of a linear map, an MLP or a
residual MLP, and learns them in context from (k_t, v_t) pairs with the chunk rule: every inner
gradient of a chunk of C tokens is taken at the state θ_c the chunk started with.

- `LevelConfig`: the static description the code generator fills from a spec.
- `init_memory_weights`, `initial_memory_state`, `zero_momentum`: θ_0 per head, copied to per-sequence state.
- `MemoryState`, `detach_state`: a level's carried state, and a whole state cut from its graph.
- `memory_chunk_step`: one chunk, with no per-token loop. The memory runs forward on the chunk's
  keys at θ_c, the output error g is backpropagated in closed form (activation derivatives written
  out, no autograd.grad, so the outer loss differentiates through it and torch.compile sees one
  graph), and every layer's inner gradient stays factored as u_s = δ_s x_sᵀ. Because gd and
  momentum are linear recurrences with scalar gates, θ_t = A_t θ_c + m_t S_c − Σ_s γ_{t,s} η_s u_s
  (the dual form, §1.5), and the readout applies that to the query path layer by layer as
  attention-like sums γ_{t,s} (x_s·x_t) η_s δ_s. Gate products come from log-cumsums.
- `memory_level`: a whole sequence, any length, chunk by chunk or through the delta kernel.
- `newton_schulz`: Muon's quintic iteration, applied to each chunk's increment when asked.

Dispatch rule of `memory_level`: the exact delta kernel (delta.py) runs the level when its state
is linear (or an mlp of depth 1), it has no momentum, no Newton–Schulz, its objective is not
external, it has no clip unless its error reads no state (then each token's clip factor is known
before the recurrence and scales its η), and either
- chunk_size == 1 (then readout chunk_start is the same as exclusive), or
- the objective is dot with given values and no DGD, and readout is causal or exclusive: the
  inner gradient −v kᵀ (a write of +η v kᵀ) does not depend on the state, so every chunk size gives the same states
  (linear attention with decay) and the kernel can use its own block size.
Every other level loops over ⌈T/C⌉ chunks: a chunk-start level that the fused write accepts
(nldsl/runtime/fused.py, CPU) loops `fused_write`, each call writing its chunk and reading the
next chunk's queries at the new state; the rest loop `memory_chunk_step`, which also hands a
chunk that needs only its end state to the kernel.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl.runtime import chunked, fused
from nldsl.runtime.chunked import chunk_body, run_chunks
from nldsl.runtime.delta import (
    delta_rule_coefficients,
    generalized_delta_chunked,
    log_gate,
    masked_decay_ratios,
)
from nldsl.runtime.layers import LOW_PRECISION, MUON_COEFFICIENTS
from nldsl.runtime.paths import runs_delta_kernel

DELTA_BLOCK = 64  # tokens per block of the delta kernel
# A residual MLP's last layer starts this much smaller than fan-in scale, so the level starts close to
# the identity while its first layer still receives inner gradients (a zero last layer would block
# them). Generated modules initialise with it too (compiler/codegen.py).
RESIDUAL_OUT_SCALE = 0.1
NEWTON_SCHULZ_EPS = 1e-7

# (prediction (B, H, n, d_out), the chunk's error signal (B, n, …)) -> g (B, H, n, d_out)
OutputError = Callable[[Tensor, Tensor | None], Tensor]

# Up to this many tokens the prefix sums over a chunk's gates are masked (n, n) reductions, which
# inductor fuses into the kernels around them; a scan (cumsum, logcumsumexp) is a separate library
# call in the compiled graph, forward and backward. Longer chunks (a CMS level's 4096) scan.
FUSED_SCAN_LENGTH = 64


@dataclass(frozen=True)
class LevelConfig:
    """The static description of one memory level (docs/semantics.md §1)."""

    state: Literal["linear", "mlp", "residual_mlp"]
    d_in: int  # key/query width per head
    d_out: int  # value/output width per head
    hidden: int = 0  # hidden width of mlp / residual_mlp
    depth: int = 2  # weight matrices of an mlp state (>= 1); linear and residual_mlp ignore it
    activation: Literal["silu", "gelu", "relu", "tanh"] = "silu"  # gelu is the exact erf gelu
    objective: Literal["dot", "l2", "reconstruction", "external"] = "l2"
    values: Literal["given", "generated"] = "given"  # generated: v̂ = M_{θ_c}(v)
    dgd: bool = False  # delta gradient descent: u^(l) += W_l^c x_l x_lᵀ
    dgd_layers: Literal["first", "all"] = "first"  # which layers DGD preconditions
    momentum: bool = False  # Titans surprise S_t = β_t S_{t−1} − η_t u_t
    chunk_size: int = 1  # the period C (tokens)
    readout: Literal["causal", "exclusive", "chunk_start"] = "causal"
    orthogonalize_steps: int = 0  # Newton–Schulz steps on each chunk's increment (0 = off)
    grad_through_writes: bool = True  # False detaches every written increment η_t u_t
    decay_before_write: bool = False  # take ∇ℓ at α_t θ_{t−1} (Gated DeltaNet); period 1, linear only
    clip: float | None = None  # scale η_t by min(1, clip/‖∇ℓ_t‖), the norm over all of a head's weights

    def __post_init__(self) -> None:
        assert self.state in ("linear", "mlp", "residual_mlp"), self.state
        assert self.d_in >= 1 and self.d_out >= 1
        assert self.activation in _ACTIVATIONS, self.activation
        assert self.objective in ("dot", "l2", "reconstruction", "external"), self.objective
        assert self.values in ("given", "generated"), self.values
        assert self.dgd_layers in ("first", "all"), self.dgd_layers
        assert self.readout in ("causal", "exclusive", "chunk_start"), self.readout
        assert self.chunk_size >= 1 and self.orthogonalize_steps >= 0
        assert self.clip is None or self.clip > 0, self.clip
        if self.state == "mlp":
            assert self.depth >= 1, "an mlp state needs depth >= 1"
        if self.state == "residual_mlp" or (self.state == "mlp" and self.depth >= 2):
            assert self.hidden >= 1, f"a {self.state} state needs a hidden width"
        if self.state == "residual_mlp":
            assert self.d_in == self.d_out, "a residual mlp needs d_in == d_out"
        if self.values == "generated" or self.objective == "reconstruction":
            assert self.d_in == self.d_out, "the memory reads its own values, so d_in must equal d_out"
        if self.orthogonalize_steps > 0:
            assert self.readout == "chunk_start", "Newton–Schulz changes θ only at chunk ends (§1.5)"
        if self.decay_before_write:
            # the delta kernel's conditions less the clip's (a clipped level takes the chunk step, which
            # decays before the write too: memory_chunk_step)
            assert uses_delta_kernel(self, clipped=False) and self.chunk_size == 1, \
                "decay before write needs a linear level with period 1 and no momentum"

    def weight_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each weight matrix, in the order the memory applies them."""
        if self.state == "linear" or (self.state == "mlp" and self.depth == 1):
            return [(self.d_out, self.d_in)]
        if self.state == "residual_mlp":
            return [(self.hidden, self.d_in), (self.d_out, self.hidden)]
        middle = [(self.hidden, self.hidden)] * (self.depth - 2)
        return [(self.hidden, self.d_in), *middle, (self.d_out, self.hidden)]

    def preconditioned_layers(self) -> range:
        """Indices of the layers DGD preconditions (empty without DGD)."""
        if not self.dgd:
            return range(0)
        return range(1) if self.dgd_layers == "first" else range(len(self.weight_shapes()))


@dataclass
class MemoryState:
    """Per-sequence state of a level, returned by a call and accepted back to continue a stream."""

    weights: list[Tensor]  # θ, each (B, H, out, in)
    momentum: list[Tensor] | None = None  # S, each (B, H, out, in); None without momentum


# lists of tensors only: a saved state reads back with torch.load's default weights_only=True
torch.serialization.add_safe_globals([MemoryState])


def detach_state(value: Any) -> Any:
    """A memory state (as `model(tokens, return_state=True)` returns it, or one block's part of it)
    cut from the graph that made it: to carry state across calls that each take a backward pass."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, MemoryState):
        return MemoryState(detach_state(value.weights), detach_state(value.momentum))
    if isinstance(value, dict):
        return {k: detach_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detach_state(v) for v in value)
    return value


Function = TypeVar("Function", bound=Callable[..., Any])


def float32_recurrence(function: Function) -> Function:
    """Run a memory's recurrence in float32 when the model is cast whole to bfloat16 or float16.

    The gates come in float32 (layers.gate_precision), and their products over a chunk and across
    chunks must stay there: α = 0.999 is exactly 1 in bfloat16. Under autocast (training with
    `precision = bf16`) the products take bfloat16 inputs by themselves and everything else
    promotes to the gates' float32, so nothing is cast here. Without autocast a bfloat16 tensor
    meeting a float32 one in a product is an error, so the floating tensors among the arguments
    (inside lists, dicts and dataclasses such as MemoryState) go to float32, and those of the
    result come back in the model's precision."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        low = _low_precision(args) or _low_precision(tuple(kwargs.values()))
        if low is None or torch.is_autocast_enabled(low[1]):
            return function(*args, **kwargs)
        result = function(*_cast_floats(args, torch.float32), **_cast_floats(kwargs, torch.float32))
        return _cast_floats(result, low[0])

    return run  # type: ignore[return-value]


def _low_precision(value: Any) -> tuple[torch.dtype, str] | None:
    """The (dtype, device type) of the first bfloat16 or float16 tensor in `value`, if any."""
    if isinstance(value, Tensor):
        return (value.dtype, value.device.type) if value.dtype in LOW_PRECISION else None
    if isinstance(value, (list, tuple)):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (getattr(value, f.name) for f in dataclasses.fields(value))
    else:
        return None
    return next((found for item in items if (found := _low_precision(item)) is not None), None)


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """`value` with every floating tensor in it (as `_low_precision` walks it) cast to `dtype`; a
    container none of whose items changes is returned as it is."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        cast = {key: _cast_floats(item, dtype) for key, item in value.items()}
        return value if all(cast[key] is value[key] for key in value) else cast
    if isinstance(value, (list, tuple)):
        items = [_cast_floats(item, dtype) for item in value]
        if all(new is old for new, old in zip(items, value)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a NamedTuple or not
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        cast = {name: _cast_floats(item, dtype) for name, item in fields.items()}
        return value if all(cast[name] is fields[name] for name in fields) else dataclasses.replace(value, **cast)
    return value


def init_memory_weights(
    cfg: LevelConfig,
    heads: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """A fresh θ_0, one independent draw per head, each weight (H, out, in).

    W_l ~ N(0, 1/fan_in), which keeps unit-norm keys at unit scale through the layers. The last
    layer of a residual MLP is RESIDUAL_OUT_SCALE times smaller, so the level starts close to the
    identity map while its first layer still receives inner gradients (a zero last layer would
    block them).
    """
    weights = []
    shapes = cfg.weight_shapes()
    for index, (out_features, in_features) in enumerate(shapes):
        std = 1.0 / math.sqrt(in_features)
        if cfg.state == "residual_mlp" and index == len(shapes) - 1:
            std *= RESIDUAL_OUT_SCALE
        shape = (heads, out_features, in_features)
        weights.append(std * torch.randn(shape, generator=generator, dtype=dtype, device=device))
    return weights


def initial_memory_state(cfg: LevelConfig, weights: list[Tensor], batch_size: int) -> MemoryState:
    """Every sequence starts from the shared θ_0 (a copy per sequence whose gradient the outer loss
    sums into it) and zero S.

    A copy, not an expanded view: a view's zero batch stride would differ from the contiguous state
    every later chunk receives, and a compiled chunk body (or run of chunks) is specialised on
    strides, so each loop would compile its first call as a graph of its own (chunked.py). One
    weight-sized copy per sequence and call costs less than one chunk's write.
    """
    per_sequence = [weight.unsqueeze(0).expand(batch_size, *weight.shape).contiguous() for weight in weights]
    return MemoryState(per_sequence, zero_momentum(cfg, per_sequence))


def zero_momentum(cfg: LevelConfig, weights: list[Tensor]) -> list[Tensor] | None:
    """S = 0 beside the weights θ (None without momentum), computed as 0·θ so that it requires
    gradients where θ does, as the S of every later chunk does: compiled chunk bodies are
    specialised on requires_grad, and a fresh zero tensor would make the first chunk's call (or run
    of chunks) a graph of its own."""
    return [weight * 0 for weight in weights] if cfg.momentum else None


def _silu_derivative(z: Tensor) -> Tensor:
    gate = torch.sigmoid(z)
    return gate * (1.0 + z * (1.0 - gate))


def _gelu_derivative(z: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    density = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + z * density


def _relu_derivative(z: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


def _tanh_derivative(z: Tensor) -> Tensor:
    return 1.0 - torch.tanh(z) ** 2


# Each activation with its derivative written out: the inner gradient is then an ordinary
# expression that autograd differentiates again for the outer loss.
_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "silu": (F.silu, _silu_derivative),
    "gelu": (F.gelu, _gelu_derivative),
    "relu": (torch.relu, _relu_derivative),
    "tanh": (torch.tanh, _tanh_derivative),
}


def apply_weights(weights: Tensor, inputs: Tensor) -> Tensor:
    """inputs @ weightsᵀ (B, H, n, out) for per-sequence weights (B, H, out, in) and inputs (B, H, n, in).

    Computed as (W xᵀ)ᵀ, so that autograd forms the weight's gradient as gᵀx, in the weight's own
    (out, in) layout. From x Wᵀ it comes as (xᵀ g)ᵀ, a transposed view, and the backward then adds
    it to the state's other gradients in a strided, unvectorised loop: that one loop took 2.3 ms of
    a 9 ms CMS chunk step at width 256, and 0.5 ms after this change (profiled with the kernels
    named). MKL's batched GEMM is also slower with a few rows on the left and a transposed weight
    on the right (1.4-2.7x in isolation at these shapes) than with the weight on the left.
    """
    return (weights @ inputs.mT).mT


def memory_forward(
    cfg: LevelConfig, weights: list[Tensor], inputs: Tensor
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """M_θ(inputs) for inputs (B, H, n, d_in) and per-sequence weights (B, H, out, in).

    Returns the output (B, H, n, d_out), the input x_l each layer reads and its pre-activation
    z_l = W_l x_l (without the residual), which the closed-form backward pass needs.
    """
    activation = _ACTIVATIONS[cfg.activation][0]
    layer_inputs, pre_activations = [], []
    hidden = inputs
    for index, weight in enumerate(weights):
        layer_inputs.append(hidden)
        hidden = apply_weights(weight, hidden)  # (B, H, n, out)
        pre_activations.append(hidden)
        if index < len(weights) - 1:
            hidden = activation(hidden)
    output = inputs + hidden if cfg.state == "residual_mlp" else hidden
    return output, layer_inputs, pre_activations


def newton_schulz(matrix: Tensor, steps: int) -> Tensor:
    """Muon's quintic Newton–Schulz iteration on the last two dims, batched over the leading ones.

    Pushes the singular values of matrix / ‖matrix‖_F towards 1. Wide orientation is used inside
    (rows <= cols) so that the Gram matrices are the small ones.
    """
    a, b, c = MUON_COEFFICIENTS
    transposed = matrix.shape[-2] > matrix.shape[-1]
    x = matrix.mT if transposed else matrix
    x = x / (torch.linalg.matrix_norm(x) + NEWTON_SCHULZ_EPS)[..., None, None]
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if transposed else x


def _output_error(
    cfg: LevelConfig,
    prediction: Tensor,
    keys: Tensor,
    target: Tensor | None,
    output_error: OutputError | None,
    error_signal: Tensor | None,
) -> Tensor:
    """g = ∂ℓ/∂M(k) (B, H, n, d_out) of the level's objective (§1.3), at the chunk-start state.

    `target` is the regression target: the given values, or the generated v̂ = M_{θ_c}(v). A
    generated target is a constant of the inner loss by construction of the closed form, yet stays
    attached so that the outer loss differentiates through it."""
    if cfg.objective == "external":
        assert output_error is not None, "objective external needs output_error"
        return output_error(prediction, error_signal)
    if cfg.objective == "reconstruction":
        return prediction - keys
    assert target is not None, f"objective {cfg.objective!r} needs values"
    return -target if cfg.objective == "dot" else prediction - target


def _write_factors(
    cfg: LevelConfig,
    weights: list[Tensor],
    keys: Tensor,
    values: Tensor | None,
    output_error: OutputError | None,
    error_signal: Tensor | None,
) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor | None]:
    """M_{θ_c}(k), and per layer the factors of each token's inner gradient u_s^(l) = δ_{l,s} x_{l,s}ᵀ at θ_c.

    δ_l (B, H, n, out) is backpropagated from g in closed form (Eq. 29), then DGD adds W_l x_l =
    z_l for the preconditioned layers; x_l (B, H, n, in) is what the layer reads on k. The
    prediction is returned too: a chunk-start readout of the keys themselves is this same forward.
    Last, for a clipped level, each token's ‖∇ℓ_s‖² (B, H, n) before the DGD term: a layer's gradient
    δ x ᵀ is an outer product, so its squared Frobenius norm is ‖δ‖²‖x‖², and no weight-sized
    gradient is formed to measure it.
    Generated values v̂ = M_{θ_c}(v) go through the memory stacked with the keys: each weight is
    then one operand of one product per layer, so the outer backward forms one weight-sized
    gradient for both reads instead of one each. (Both reads only matter through the write, so
    stacking never gives a parameter a gradient it would not have had.)
    """
    generated = values is not None and cfg.values == "generated" and cfg.objective in ("dot", "l2")
    n = keys.shape[-2]
    rows = torch.cat([keys, values], dim=-2) if generated else keys  # (B, H, n or 2n, d_in)
    outputs, layer_inputs, pre_activations = memory_forward(cfg, weights, rows)
    if generated:  # split back: the prediction M(k) and the target v̂ = M(v); the layers' key rows
        prediction, target = outputs.split(n, dim=-2)
        layer_inputs = [x.split(n, dim=-2)[0] for x in layer_inputs]
        pre_activations = [z.split(n, dim=-2)[0] for z in pre_activations]
    else:
        prediction, target = outputs, values
    derivative = _ACTIVATIONS[cfg.activation][1]
    delta = _output_error(cfg, prediction, keys, target, output_error, error_signal)
    deltas = [delta]
    for index in range(len(weights) - 2, -1, -1):
        delta = derivative(pre_activations[index]) * (delta @ weights[index + 1])  # (B, H, n, out_l)
        deltas.insert(0, delta)
    squared_norms = None
    if cfg.clip is not None:
        squared_norms = sum(_squared_norm(delta) * _squared_norm(x) for delta, x in zip(deltas, layer_inputs))
    # The DGD term is added after backpropagation: it preconditions a layer's own update and does
    # not flow into the earlier layers' errors.
    for index in cfg.preconditioned_layers():
        deltas[index] = deltas[index] + pre_activations[index]
    return prediction, deltas, layer_inputs, squared_norms


def _squared_norm(rows: Tensor) -> Tensor:
    """‖row‖² along the last dim, summed in at least float32 (bfloat16 rows under autocast)."""
    return rows.to(torch.promote_types(rows.dtype, torch.float32)).square().sum(-1)


def clip_scale(clip: float, squared_norms: Tensor) -> Tensor:
    """ρ = min(1, clip/‖∇ℓ‖) from ‖∇ℓ‖²: a clipped level's per-token factor on η (docs/semantics.md §1.5).

    The clamp comes before the root, so a zero gradient (or one under the bound) gives ρ = 1 with a
    zero derivative rather than the 0·∞ of differentiating a square root at 0."""
    return clip * torch.rsqrt(torch.clamp(squared_norms, min=clip * clip))


class _DualRows(NamedTuple):
    """θ_t = state[t] θ_c + momentum[t] S_c − Σ_s writes[t, s] u_s, one row per token t.

    `writes` is γ_{t,s} η_s: the learning rate is folded into the (n, n) coefficients, so no
    η_s δ_s of the width of a layer is ever formed."""

    state: Tensor  # A_t, the retention product from the chunk start  (B, H, n)
    momentum: Tensor | None  # m_t = Σ_{r≤t} (A_t/A_r) B_r  (B, H, n)
    writes: Tensor  # γ_{t,s} η_s, zero for s > t  (B, H, n, n)


class _MomentumRows(NamedTuple):
    """S_t = state[t] S_c − Σ_s writes[t, s] u_s."""

    state: Tensor  # B_t  (B, H, n)
    writes: Tensor  # (B_t/B_s) η_s, zero for s > t  (B, H, n, n)


def _prefix_sum(values: Tensor) -> Tensor:
    """Σ_{s≤t} values_s along the last dim: torch.cumsum, as one fusable reduction for short chunks."""
    n = values.shape[-1]
    if n > FUSED_SCAN_LENGTH:
        return torch.cumsum(values, dim=-1)
    inclusive = torch.ones(n, n, dtype=torch.bool, device=values.device).tril()
    return torch.where(inclusive, values.unsqueeze(-2), 0.0).sum(-1)


def _suffix_logsumexp(values: Tensor) -> Tensor:
    """log Σ_{r≥s} exp(values_r) along the last dim: a reversed logcumsumexp, fusable for short chunks."""
    n = values.shape[-1]
    if n > FUSED_SCAN_LENGTH:
        return torch.logcumsumexp(values.flip(-1), dim=-1).flip(-1)
    later = torch.ones(n, n, dtype=torch.bool, device=values.device).triu()
    return torch.logsumexp(torch.where(later, values.unsqueeze(-2), float("-inf")), dim=-1)


def _dual_coefficients(
    retention: Tensor | None, momentum_decay: Tensor | None, lr: Tensor, write_lr: Tensor
) -> tuple[_DualRows, _MomentumRows | None]:
    """The chunk's dual-form coefficients (§1.5) from log-cumsums of the gates α and β.

    `write_lr` is the η that scales the writes (lr itself, or lr detached when the level stops
    gradients through its writes); the retention and momentum rows keep their gradients.
    """
    n = lr.shape[-1]
    inclusive = torch.ones(n, n, dtype=torch.bool, device=lr.device).tril()
    per_write = write_lr.unsqueeze(-2)  # η_s along the columns  (B, H, 1, n)
    log_alpha = torch.zeros_like(lr) if retention is None else log_gate(retention)
    log_retained = _prefix_sum(log_alpha)  # log A_t  (B, H, n)
    retained = masked_decay_ratios(log_retained, log_retained, inclusive)  # A_t/A_r
    if momentum_decay is None:
        return _DualRows(log_retained.exp(), None, retained * per_write), None
    log_beta = log_gate(momentum_decay)
    log_carried = _prefix_sum(log_beta)  # log B_t  (B, H, n)
    carried = masked_decay_ratios(log_carried, log_carried, inclusive) * per_write  # (B_r/B_s) η_s
    momentum_scale = (retained @ log_carried.exp().unsqueeze(-1)).squeeze(-1)  # m_t  (B, H, n)
    rows = _DualRows(log_retained.exp(), momentum_scale, retained @ carried)
    return rows, _MomentumRows(log_carried.exp(), carried)


def _last_row_coefficients(
    retention: Tensor | None, momentum_decay: Tensor | None, lr: Tensor, write_lr: Tensor
) -> tuple[_DualRows, _MomentumRows | None]:
    """Only the chunk's last row of `_dual_coefficients`, each (B, H, 1, …), in O(n) instead of O(n²).

    A chunk-start readout needs nothing but the chunk-end state, and a CMS level with a long period
    (4096 tokens) would otherwise build (n, n) coefficient matrices to use one row of them. The
    double sum γ_{n,s} = Σ_{r≥s} (A_n/A_r)(B_r/B_s) is a reversed log-cumsum-exp, so no ratio of
    products is ever formed outside the log domain (B_s underflows over long chunks).
    """
    log_alpha = torch.zeros_like(lr) if retention is None else log_gate(retention)
    log_retained = _prefix_sum(log_alpha)  # log A_t  (B, H, n)
    last_retained = log_retained[..., -1:]  # log A_n  (B, H, 1)
    if momentum_decay is None:
        writes = (last_retained - log_retained).exp() * write_lr  # (A_n/A_s) η_s  (B, H, n)
        return _DualRows(last_retained.exp(), None, writes.unsqueeze(-2)), None
    log_beta = log_gate(momentum_decay)
    log_carried = _prefix_sum(log_beta)  # log B_t  (B, H, n)
    last_carried = log_carried[..., -1:]  # log B_n
    carried_over_retained = log_carried - log_retained  # log (B_r/A_r)
    suffix = _suffix_logsumexp(carried_over_retained)  # log Σ_{r≥s} B_r/A_r
    writes = (last_retained - log_carried + suffix).exp() * write_lr  # γ_{n,s} η_s
    momentum_scale = (last_retained + suffix[..., :1]).exp()  # m_n = Σ_r (A_n/A_r) B_r
    momentum_writes = (last_carried - log_carried).exp() * write_lr  # (B_n/B_s) η_s
    rows = _DualRows(last_retained.exp(), momentum_scale, writes.unsqueeze(-2))
    return rows, _MomentumRows(last_carried.exp(), momentum_writes.unsqueeze(-2))


def _rows_before(rows: _DualRows) -> _DualRows:
    """The coefficients of θ_{t−1}: the row above, and θ_c itself (1, 0, no writes) for the first token."""
    momentum = None if rows.momentum is None else F.pad(rows.momentum[..., :-1], (1, 0))
    state = F.pad(rows.state[..., :-1], (1, 0), value=1.0)
    return _DualRows(state, momentum, F.pad(rows.writes[..., :-1, :], (0, 0, 1, 0)))


def _dual_readout(
    cfg: LevelConfig,
    state: MemoryState,
    rows: _DualRows,
    deltas: list[Tensor],
    write_inputs: list[Tensor],
    queries: Tensor,
) -> Tensor:
    """y_t = M_{θ_t}(q_t) (B, H, n, d_out) with θ_t given by `rows`, layer by layer on the query path.

    Each layer's θ_t x_t = A_t W^c x_t + m_t S^c x_t − Σ_s γ_{t,s} η_s δ_s (x_s·x_t), where x_t is the
    query path's input to that layer, already computed through the updated earlier layers.
    """
    activation = _ACTIVATIONS[cfg.activation][0]
    hidden = queries
    for index, weight in enumerate(state.weights):
        mixed = rows.state.unsqueeze(-1) * apply_weights(weight, hidden)  # (B, H, n, out)
        if rows.momentum is not None:
            assert state.momentum is not None
            mixed = mixed + rows.momentum.unsqueeze(-1) * apply_weights(state.momentum[index], hidden)
        scores = rows.writes * (hidden @ write_inputs[index].mT)  # γ_{t,s} η_s (x_t·x_s)  (B, H, n, n)
        hidden = mixed - scores @ deltas[index]
        if index < len(state.weights) - 1:
            hidden = activation(hidden)
    return queries + hidden if cfg.state == "residual_mlp" else hidden


def _weighted_outer_sums(weights: list[Tensor], errors: Tensor, inputs: Tensor) -> list[Tensor]:
    """[Σ_s w_s δ_s x_sᵀ (B, H, out, in) for each w (B, H, n)], for δ (B, H, n, out), x (B, H, n, in).

    The per-token weights scale whichever factor is narrower (a CMS level's hidden layer is 4×
    wider than its input), so the elementwise work is the smaller of n·out and n·in. Several
    weightings (θ's and S's writes under momentum) share one product: their scaled copies of that
    factor side by side, the sums split from its result. At a chunk's sizes a batched product costs
    its call more than its arithmetic, and the outer backward then runs two products for it, not
    two per weighting.
    """
    if errors.shape[-1] <= inputs.shape[-1]:
        scaled = _side_by_side([w.unsqueeze(-1) * errors for w in weights])  # (B, H, n, k·out)
        return list((scaled.mT @ inputs).split(errors.shape[-1], dim=-2))
    scaled = _side_by_side([w.unsqueeze(-1) * inputs for w in weights])  # (B, H, n, k·in)
    return list((errors.mT @ scaled).split(inputs.shape[-1], dim=-1))


def _side_by_side(tensors: list[Tensor]) -> Tensor:
    """torch.cat along the last dim, without the copy a single tensor would cost in eager mode."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=-1)


def _chunk_end_state(
    cfg: LevelConfig,
    state: MemoryState,
    rows: _DualRows,
    momentum_rows: _MomentumRows | None,
    deltas: list[Tensor],
    write_inputs: list[Tensor],
    retains: bool = True,
) -> MemoryState:
    """θ and S after the chunk's last token, with Newton–Schulz on the increment when configured.

    `retains` False: the level has no retention gate, so A_n is exactly 1 and θ is not multiplied by
    it (the same numbers), which saves a pass over the state forward and another backward every
    chunk: specs/hope.nl's fast CMS level (128 × 512 weights rewritten every 16 tokens), timed alone,
    took 0.918× as long (docs/results/performance.md, the item of 2026-12-07, 20:23–21:01).
    """
    retained = rows.state[..., -1, None, None]  # A_n  (B, H, 1, 1)
    # The minus signs sit on the per-token weights, not on the weight-sized increments: the outer
    # backward then feeds the state's gradient to the products as it is, with no negated copy.
    write_weights = [-rows.writes[..., -1, :]]  # −γ_{n,s} η_s  (B, H, n)
    previous_momentum, momentum_scale = state.momentum, rows.momentum
    if momentum_rows is not None:
        assert previous_momentum is not None and momentum_scale is not None
        write_weights.append(-momentum_rows.writes[..., -1, :])  # −(B_n/B_s) η_s  (B, H, n)
    weights, momentum = [], []
    for index, weight in enumerate(state.weights):
        # −Σ_s γ_{n,s} η_s δ_s x_sᵀ (B, H, out, in), and S's own writes under momentum
        increment, *momentum_increment = _weighted_outer_sums(write_weights, deltas[index], write_inputs[index])
        if momentum_rows is not None:
            assert previous_momentum is not None and momentum_scale is not None
            previous = previous_momentum[index]
            increment = increment + momentum_scale[..., -1, None, None] * previous
            momentum.append(momentum_rows.state[..., -1, None, None] * previous + momentum_increment[0])
        if cfg.orthogonalize_steps > 0:
            increment = newton_schulz(increment, cfg.orthogonalize_steps)
        weights.append((retained * weight if retains else weight) + increment)
    return MemoryState(weights, momentum if momentum_rows is not None else None)


@chunk_body
def memory_chunk_step(
    cfg: LevelConfig,
    state: MemoryState,
    keys: Tensor,
    values: Tensor | None,
    queries: Tensor | None,
    lr: Tensor,
    retention: Tensor | None,
    momentum_decay: Tensor | None,
    output_error: OutputError | None = None,
    error_signal: Tensor | None = None,
) -> tuple[Tensor | None, MemoryState]:
    """Run one chunk of n <= chunk_size tokens; returns the outputs (B, H, n, d_out) and the new state.

    keys, queries: (B, H, n, d_in); values: (B, H, n, d_out), or None for reconstruction and
    external objectives. lr (η), retention (α, None = 1) and momentum_decay (β, required iff
    cfg.momentum): (B, H, n). For objective external, output_error(prediction, error_signal)
    returns g (B, H, n, d_out) for the memory's prediction M_{θ_c}(k); error_signal (B, n, …) is
    the chunk's share of what the error needs per token (the CMS: next-token targets), passed as a
    tensor rather than a position so that one compiled chunk step serves every chunk. queries None skips the readout
    (the outputs are then None): a caller that only writes pays for no query pass.
    """
    n = keys.shape[-2]
    assert 1 <= n <= cfg.chunk_size, f"a chunk holds 1..{cfg.chunk_size} tokens, got {n}"
    assert (momentum_decay is not None) == cfg.momentum, "momentum_decay is required iff cfg.momentum"
    assert (state.momentum is not None) == cfg.momentum, "the state carries S iff cfg.momentum"
    if cfg.decay_before_write and retention is not None:
        # Gated DeltaNet (a chunk of one token, LevelConfig): the write and its gradient read α_t θ_{t−1},
        # as the delta kernel does; what the chunk rule below would apply after the write is done.
        # An exclusive or chunk_start readout reads θ_{t−1} itself, before the decay.
        decayed = MemoryState([w * retention[..., None] for w in state.weights], state.momentum)
        if queries is not None and cfg.readout != "causal":
            outputs = memory_forward(cfg, state.weights, queries)[0]
            return outputs, memory_chunk_step(cfg, decayed, keys, values, None, lr, None, momentum_decay,
                                              output_error, error_signal)[1]
        state, retention = decayed, None

    if (queries is None or cfg.readout == "chunk_start") and fused.applies(cfg, keys, values):
        assert values is not None  # fused.applies checks it
        return _fused_chunk_step(cfg, state, keys, values, queries, lr, retention, momentum_decay)
    prediction, deltas, write_inputs, squared_norms = _write_factors(
        cfg, state.weights, keys, values, output_error, error_signal)
    if cfg.clip is not None:
        assert squared_norms is not None
        lr = lr * clip_scale(cfg.clip, squared_norms.to(lr.dtype))  # each token's write scaled by its ρ_s
    write_lr = lr
    if not cfg.grad_through_writes:
        deltas = [error.detach() for error in deltas]
        write_inputs = [inputs.detach() for inputs in write_inputs]
        write_lr = lr.detach()
    # Only the causal and exclusive readouts read rows other than the chunk's last.
    coefficients = _last_row_coefficients if cfg.readout == "chunk_start" or queries is None else _dual_coefficients
    rows, momentum_rows = coefficients(retention, momentum_decay, lr, write_lr)

    outputs = None
    if queries is not None and cfg.readout == "chunk_start":
        # Reading the keys themselves at θ_c (a CMS level reads and writes its input) is the
        # forward the inner gradient already ran.
        outputs = prediction if queries is keys else memory_forward(cfg, state.weights, queries)[0]
    elif queries is not None:
        readout_rows = rows if cfg.readout == "causal" else _rows_before(rows)
        outputs = _dual_readout(cfg, state, readout_rows, deltas, write_inputs, queries)
    return outputs, _chunk_end_state(cfg, state, rows, momentum_rows, deltas, write_inputs, retention is not None)


def _fused_chunk_step(
    cfg: LevelConfig,
    state: MemoryState,
    keys: Tensor,
    values: Tensor,
    queries: Tensor | None,
    lr: Tensor,
    retention: Tensor | None,
    momentum_decay: Tensor | None,
) -> tuple[Tensor | None, MemoryState]:
    """`memory_chunk_step` of a level that only needs the chunk-end state: its write in one kernel (fused.py).

    A chunk-start readout reads θ_c here, as the PyTorch step does.
    """
    outputs = None if queries is None else memory_forward(cfg, state.weights, queries)[0]
    return outputs, fused_write(cfg, state, keys, values, lr, retention, momentum_decay)[0]


@chunk_body
def fused_write(
    cfg: LevelConfig,
    state: MemoryState,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    retention: Tensor | None,
    momentum_decay: Tensor | None,
    next_inputs: Tensor | None = None,
) -> tuple[MemoryState, Tensor | None]:
    """The chunk-end state through the fused kernel, from the same gate coefficients as the PyTorch step.

    keys, values (B, H, n, ·) and the gates (B, H, n) may serve A stacked memories (state (B, A·H, …),
    `fused.chunk_end_state`); next_inputs (B, H, n', d_in) are read at the new state (None: no read).
    A chunk body of its own where `memory_level` runs a chunk-start level with it: each call writes
    its chunk and reads the next chunk's queries, whose reading is that chunk's output.
    """
    rows, momentum_rows = _last_row_coefficients(retention, momentum_decay, lr, lr)
    momentum_scale = momentum_carry = momentum_writes = None
    if momentum_rows is not None:
        assert rows.momentum is not None
        momentum_scale, momentum_carry = rows.momentum[..., -1], momentum_rows.state[..., -1]  # m_n, B_n (B, H)
        momentum_writes = -momentum_rows.writes[..., -1, :]  # −(B_n/B_s) η_s  (B, H, n)
    return fused.chunk_end_state(
        cfg, state, keys, values, rows.state[..., -1], momentum_scale, momentum_carry,
        -rows.writes[..., -1, :], momentum_writes, next_inputs)


def uses_delta_kernel(cfg: LevelConfig, *, clipped: bool | None = None) -> bool:
    """Whether `memory_level` runs this level through the exact delta kernel (module docstring; the
    rule, shared with the checker, is `paths.runs_delta_kernel`). `clipped` stands in for whether the
    level has a clip (LevelConfig asks about the level without one)."""
    clipped = cfg.clip is not None if clipped is None else clipped
    return runs_delta_kernel(len(cfg.weight_shapes()) == 1, cfg.state, cfg.momentum, cfg.orthogonalize_steps,
                             cfg.objective, cfg.values, cfg.dgd, cfg.chunk_size, cfg.readout, clipped)


@float32_recurrence
def memory_level(
    cfg: LevelConfig,
    state: MemoryState,
    keys: Tensor,
    values: Tensor | None,
    queries: Tensor,
    lr: Tensor,
    retention: Tensor | None,
    momentum_decay: Tensor | None,
    output_error: OutputError | None = None,
    error_signal: Tensor | None = None,
    *,
    allow_delta_kernel: bool = True,
) -> tuple[Tensor, MemoryState]:
    """Run a level over a whole sequence of any length T; returns outputs (B, H, T, d_out) and the state.

    Inputs as in `memory_chunk_step`, with T tokens instead of n (error_signal (B, T, …) is split
    with the chunks along its dim 1). The last chunk may be shorter
    than chunk_size. allow_delta_kernel=False forces the chunk loop (the kernel is exact, so this
    only matters for tests and benchmarks).
    """
    length = keys.shape[-2]
    if allow_delta_kernel and uses_delta_kernel(cfg):
        if cfg.clip is not None:  # a dot objective on given values: ‖∇ℓ_t‖ = ‖v_t‖‖k_t‖ reads no state
            assert values is not None
            lr = lr * clip_scale(cfg.clip, (_squared_norm(values) * _squared_norm(keys)).to(lr.dtype))
        a, x = delta_rule_coefficients(cfg.objective, cfg.values == "generated", cfg.dgd, keys, values, lr)
        if cfg.decay_before_write and retention is not None:
            a = a * retention.unsqueeze(-1)  # every state-dependent term reads α_t S_{t−1}
        outputs, final = generalized_delta_chunked(
            queries, keys, a, x, retention, state.weights[0],
            block=DELTA_BLOCK,
            readout="causal" if cfg.readout == "causal" else "exclusive",
            detach_writes=not cfg.grad_through_writes,
        )
        return outputs, MemoryState([final], None)

    size = cfg.chunk_size
    key_chunks = split_chunks(keys, size, -2, length)
    # The same chunk objects when the level reads its own keys, so each step reuses that forward.
    query_chunks = key_chunks if queries is keys else split_chunks(queries, size, -2, length)
    # only where the bodies are compiled (eager autograd skips a dead write by itself), with
    # gradients on and outside a whole-graph trace
    split_last = (cfg.readout == "chunk_start" and chunked.enabled() and torch.is_grad_enabled()
                  and not torch.compiler.is_compiling())
    pipelined = cfg.readout == "chunk_start" and fused.applies(cfg, keys, values)
    # The next chunk's queries (None after the last): the pipelined kernel reads them, the plain step
    # only looks for the None to find the last chunk (split_last). Other loops carry None in every
    # piece, so that their last piece is laid out as the others and a compiled run of chunks ending
    # with it is the same graph (chunked.run_chunks).
    next_queries = [*query_chunks[1:], None] if pipelined or split_last else [None] * len(query_chunks)
    # each chunk's inputs, then `next_queries`: tensors only, so that a compiled run of chunks serves
    # any of them
    pieces = list(zip(
        key_chunks, split_chunks(values, size, -2, length), query_chunks, split_chunks(lr, size, -1, length),
        split_chunks(retention, size, -1, length), split_chunks(momentum_decay, size, -1, length),
        split_chunks(error_signal, size, 1, length), next_queries,
    ))
    if pipelined:
        # Each kernel call writes its chunk and reads the next chunk's queries at the new state.
        def pipelined_step(carry: tuple[MemoryState, Tensor], piece: tuple) -> tuple[Tensor, tuple]:
            k, v, _, eta, alpha, beta, _, following = piece
            state, reading = carry
            new_state, next_reading = fused_write(cfg, state, k, v, eta, alpha, beta, following)
            return reading, (new_state, next_reading)

        first_reading = memory_forward(cfg, state.weights, query_chunks[0])[0]
        # the last call only writes (its reading came with the carry): a node of its own, also where
        # chunks are grouped (run_chunks `last_apart`), so that a dropped end state costs no backward
        readings, (state, _) = run_chunks(pipelined_step, (state, first_reading), pieces, last_apart=split_last)
        return torch.cat(readings, dim=-2), state

    def step(state: MemoryState, piece: tuple) -> tuple[Tensor | None, MemoryState]:
        k, v, q, eta, alpha, beta, signal, following = piece
        if split_last and q is not None and following is None:  # the last chunk (its queries exist)
            # The last chunk's end state is often dead for the loss (a training step drops the
            # returned state), but a compiled chunk body is one autograd node whose backward runs
            # through all its outputs, the write included. Reading θ_c outside the body and writing
            # without a readout keeps the two apart: an unused state costs no backward pass.
            out = memory_forward(cfg, state.weights, q)[0]
            return out, memory_chunk_step(cfg, state, k, v, None, eta, alpha, beta, output_error, signal)[1]
        return memory_chunk_step(cfg, state, k, v, q, eta, alpha, beta, output_error, signal)

    # where chunks are grouped, the last one stays out of the compiled runs of them, for the same reason
    chunk_outputs, state = run_chunks(step, state, pieces, last_apart=split_last)
    return torch.cat(chunk_outputs, dim=-2), state


def split_chunks(tensor: Tensor | None, size: int, dim: int, length: int) -> list:
    """`tensor` cut along `dim` into chunks of `size` (the last may be shorter); Nones for None.

    torch.split rather than slicing in the chunk loop: the backward of one split is one
    concatenation, whereas the backward of every slice writes its gradient into a zero tensor of
    the full length, O(T²/C) memory traffic per tensor (17% of a HOPE training step in eager).
    """
    if tensor is None:
        return [None] * (-(-length // size))
    return list(tensor.split(size, dim=dim))

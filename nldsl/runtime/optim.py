"""Optimizers as nested levels: the runtime that executes `optimizer` sections of a spec.

In Nested Learning an optimizer is itself a stack of associative memories whose context flow is the
gradient stream (Nested Learning §4). `OptimizerConfig` describes one as levels plus an update expression,
and `NestedOptimizer` runs it as an ordinary `torch.optim.Optimizer`. Everything below is per
parameter tensor p with gradient G at outer step t = 1, 2, …

Flows. `gradients` is X_t = G_t + λ_c p_{t−1} (λ_c = `coupled_weight_decay`, the L2 penalty that
torch.optim.SGD calls weight_decay; 0 by default); `squared_gradients` is X_t ⊙ X_t; a level name is
that level's output (its readout) at the same step, so levels run in dependency order.

Levels, with η = `lr`, α = `retention`, X_t the flow (summed over the period, see below):

- linear + dot (momentum, Eq. 33–34): GD on −⟨m, X⟩ with retention,
      m_t = α m_{t−1} + η X_t.
- linear + l2 (delta momentum, Eq. 48–49): GD with retention on ℓ(m) = ½‖m X̂ᵀ‖²_F − ⟨m, X⟩, with the
  key X̂ = X / ‖X‖_F,
      m_t = m_{t−1} (α I − η X̂ᵀ X̂) + η X_t.
  The flow is read as a (rows × cols) matrix: a 2-D tensor as is, a k-D tensor as (shape[0], rest),
  a 1-D tensor or scalar as 1 × n. For a linear layer's gradient G = δ xᵀ this is X̂ᵀX̂ = x̂ x̂ᵀ, the
  DGD preconditioner with the layer input as normalised key (Eq. 57). The Frobenius normalisation
  bounds the spectrum of X̂ᵀX̂ by 1, so with η ≤ α the decay factor has eigenvalues in [α − η, α] and
  the memory cannot grow from its decay term. The product is formed through whichever Gram matrix is
  smaller, (m X̂ᵀ) X̂ at O(rows²·cols) or m (X̂ᵀ X̂) at O(rows·cols²); a 1-D tensor therefore costs O(n),
  α m − η ⟨m, x̂⟩ x̂ + η x, and the n × n matrix is never built.
- mlp (deep momentum, DMGD, Eq. 50): an element-wise residual MLP φ: R → R shared by all entries
  of p, φ(x) = x + Σ_j w_out[j] tanh(w_in[j] x) with hidden width H = `hidden`. Its weights
  θ = (w_in, w_out) are the level's state, initialised to w_in = 2^s for s evenly spaced over [−1, 1]
  (distinct features: equal ones would get equal gradients and stay equal) and w_out = 0 (so φ is
  exactly the identity at step 0). φ has no biases, so it is odd for every θ: φ(0) = 0 and
  φ(−x) = −φ(x). With biases it could learn φ(0) ≠ 0 and add that constant to every entry of every
  update, a drift common to the whole tensor that no momentum of the gradients should produce; odd,
  it turns a gradient symmetric about zero into an update symmetric about zero. Over the N
  entries of X, the inner objective is
      l2:  L(θ; X) = ½ mean_i (φ(X_i) − X_i)²        dot:  L(θ; X) = −mean_i φ(X_i) X_i,
  one GD step with retention per write, θ_t = α θ_{t−1} − η ∇_θ L(θ_{t−1}; X_t), and the output is
  φ_{θ_t}(X_t). The gradient is written in closed form (see `mlp_memory_gradient`); it costs
  O(N·H) time and memory per write.

Outputs (in this order): `nesterov` outputs α m_t + η X_t instead of m_t (torch's Nesterov form);
`bias_correction` divides by 1 − α^w, w the number of writes so far (Adam); `orthogonalize_steps`
> 0 replaces the output of a parameter of two or more dimensions by Newton–Schulz_k(output), each
matrix of its last two dimensions on its own (Muon, Eq. 42–44, 52; the `layers.newton_schulz`
iteration, bit for bit torch.optim.Muon's in bfloat16): a weight matrix, and each matrix of a
stack, such as a cms level's (1, out, in) weights or a memory's per-head initial states (heads,
out, in); vectors pass through unchanged. A level with η = 1 − α is an exponential moving average and is written with
`lerp` (m + η (X − m)), the rounding torch's Muon uses, so float32 runs agree with it bit for bit;
torch's Adam orders its second-moment update and step differently, so float32 runs agree with it to
rounding (about 2e-6 relative), and float64 runs agree with both to 1e-16. `init = "first_flow"`
makes the first write store m_1 = X_1 (the first momentum buffer of torch.optim.SGD, which skips dampening once).

Clock (Eq. 71). A level with period P > 1 adds its flow into an accumulator every step and writes
once, with the sum of the P flows since its last write, when t ≡ 0 (mod P); between writes its
output is the output of its last write (zero before the first). `readout = "exclusive"` reads the
output of the previous write even at a writing step (read before write), as Algorithm 1 does for
M3's slow memory. The clock is a tensor and every choice is a `torch.where`, so a step has no
data-dependent Python control flow and compiles to one graph; the price is that a slow level
computes its write (Newton–Schulz included) every step and keeps it only when its clock fires.

Update. p_t = p_{t−1} (1 − lr·λ) − lr·s·u, where λ is the decoupled `weight_decay` (AdamW), u is the
update expression evaluated on the level outputs, and s = √max(1, rows/cols) (a stack's matrices'
rows and columns) for parameters of two or more dimensions when
`lr_scale = "muon"` (torch.optim.Muon's "original" adjustment), else 1. `matrices_only` sends every
parameter that is not 2-D to the `fallback` optimizer, in its own param group with the weight decay of
the group it came from (so a group of norms and biases with weight_decay 0 stays undecayed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from nldsl.runtime.layers import newton_schulz
from nldsl.spec import M3_SLOW_PERIOD, RESERVED_OPTIMIZER_LEVEL_NAMES
from nldsl.spec import OPTIMIZER_FLOWS as FLOW_SOURCES

EXPRESSION_ARITY = {"level": 1, "const": 1, "add": 2, "sub": 2, "mul": 2, "div": 2, "pow": 2, "sqrt": 1, "abs": 1,
                    "sign": 1, "neg": 1}
ORTHOGONALIZE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "param": None}
# an update's functions (nldsl.spec.UPDATE_FUNCTIONS) on a level's output, and on a constant part
TENSOR_FUNCTIONS = {"sqrt": torch.sqrt, "abs": torch.abs, "sign": torch.sign}
NUMBER_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "sign": lambda x: float((x > 0) - (x < 0))}


@dataclass(frozen=True)
class OptimizerLevelConfig:
    """One level of an optimizer: a memory of a flow derived from the gradient stream."""

    name: str
    flow: str  # "gradients" | "squared_gradients" | the name of another level (its output stream)
    state: Literal["linear", "mlp"] = "linear"  # mlp = deep momentum (DMGD): an element-wise MLP memory
    hidden: int = 8  # hidden width H of the mlp state
    objective: Literal["dot", "l2"] = "dot"
    lr: float = 1.0  # η: inner learning rate (what the flow is scaled by when written)
    retention: float = 1.0  # α: decay of the old state
    period: int = 1  # in steps: the level sums its flow over `period` steps and writes when its clock fires
    orthogonalize_steps: int = 0  # Newton–Schulz on each matrix of the level's output (Muon), not on vectors
    orthogonalize_dtype: Literal["bfloat16", "float32", "param"] = "bfloat16"  # "param": the param's dtype
    nesterov: bool = False  # output α·m_t + η·x_t instead of m_t (torch's nesterov form)
    bias_correction: bool = False  # divide the output by (1 − α^w), w = writes so far (Adam)
    init: Literal["zeros", "first_flow"] = "zeros"  # first_flow: m_1 = X_1 (torch.optim.SGD's buffer)
    readout: Literal["causal", "exclusive"] = "causal"  # exclusive: read the previous write's output

    def __post_init__(self) -> None:
        # The checker reports each of these at the spec's line (semantics.check_optimizer_flows, the
        # schema of spec.OptimizerLevelSpec); here they guard configs built in Python.
        if not self.name.isidentifier() or self.name in RESERVED_OPTIMIZER_LEVEL_NAMES:
            raise ValueError(f"level name {self.name!r} must be an identifier other than a flow or 'step'")
        if self.state not in ("linear", "mlp"):
            raise ValueError(f"level {self.name!r}: unknown state {self.state!r}")
        if self.objective not in ("dot", "l2"):
            raise ValueError(f"level {self.name!r}: unknown objective {self.objective!r}")
        if self.period < 1 or self.hidden < 1 or self.orthogonalize_steps < 0:
            raise ValueError(f"level {self.name!r}: period and hidden must be ≥ 1, orthogonalize_steps ≥ 0")
        if self.orthogonalize_dtype not in ORTHOGONALIZE_DTYPES:
            raise ValueError(f"level {self.name!r}: unknown orthogonalize_dtype {self.orthogonalize_dtype!r}")
        if self.init not in ("zeros", "first_flow") or self.readout not in ("causal", "exclusive"):
            raise ValueError(f"level {self.name!r}: unknown init {self.init!r} or readout {self.readout!r}")
        if self.state == "mlp" and (self.nesterov or self.bias_correction or self.init != "zeros"):
            raise ValueError(f"level {self.name!r}: nesterov, bias_correction and init apply to linear states")
        if self.bias_correction and not 0.0 <= self.retention < 1.0:
            raise ValueError(f"level {self.name!r}: bias_correction needs retention in [0, 1)")
        if self.bias_correction and self.init == "first_flow" and self.retention > 0:  # it undoes a zero start
            raise ValueError(f"level {self.name!r}: bias_correction assumes init 'zeros', not 'first_flow'")

    @property
    def is_moving_average(self) -> bool:
        """η = 1 − α: the write is an exponential moving average, computed with lerp as torch does."""
        return self.lr == 1.0 - self.retention

    @property
    def keeps_output(self) -> bool:
        """Whether the level stores its last output (it is read between or before writes)."""
        return self.period > 1 or self.readout == "exclusive"


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer as nested levels plus the update expression over their outputs.

    The update is a small tree of tuples: ("level", name) | ("const", float) | ("add", a, b)
    | ("sub", a, b) | ("mul", a, b) | ("div", a, b) | ("pow", a, ("const", p)) | ("sqrt", a) | ("abs", a)
    | ("sign", a) | ("neg", a).
    """

    lr: float
    levels: tuple[OptimizerLevelConfig, ...]
    update: tuple
    weight_decay: float = 0.0  # decoupled (AdamW-style): p ← p (1 − lr·wd)
    coupled_weight_decay: float = 0.0  # L2 penalty added to the gradient flow (torch.optim.SGD's)
    lr_scale: Literal["none", "muon"] = "none"  # "muon": lr·max(1, rows/cols)^0.5 for matrices (and stacks)
    matrices_only: bool = False  # apply this optimizer only to 2-D params; others use `fallback`
    fallback: OptimizerConfig | None = None

    def __post_init__(self) -> None:
        names = [level.name for level in self.levels]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"optimizer levels need distinct names, got {names}")
        for level in self.levels:
            if level.flow not in FLOW_SOURCES and level.flow not in names:
                raise ValueError(f"level {level.name!r} reads unknown flow {level.flow!r}")
        self.level_order()  # raises on a cycle
        read = set(_expression_levels(self.update, set(names)))
        read |= {level.flow for level in self.levels}
        unread = [name for name in names if name not in read]
        if unread:
            raise ValueError(f"levels {unread} are never read by the update or another level")
        if self.lr_scale not in ("none", "muon"):
            raise ValueError(f"unknown lr_scale {self.lr_scale!r}")
        if self.fallback is not None and self.fallback.matrices_only:
            raise ValueError("a fallback optimizer cannot itself be matrices_only")

    def level_order(self) -> tuple[OptimizerLevelConfig, ...]:
        """The levels in dependency order (a level runs after the level whose output it reads)."""
        ordered: list[OptimizerLevelConfig] = []
        done: set[str] = set(FLOW_SOURCES)
        pending = list(self.levels)
        while pending:
            ready = [level for level in pending if level.flow in done]
            if not ready:
                raise ValueError(f"levels {[level.name for level in pending]} read each other in a cycle")
            ordered.extend(ready)
            done.update(level.name for level in ready)
            pending = [level for level in pending if level.name not in done]
        return tuple(ordered)


def _expression_levels(node: Any, names: set[str]) -> list[str]:
    """The level names an update expression reads; raises ValueError on a malformed tree."""
    if not isinstance(node, tuple) or not node or node[0] not in EXPRESSION_ARITY:
        raise ValueError(f"malformed update expression {node!r}")
    op, args = node[0], node[1:]
    if len(args) != EXPRESSION_ARITY[op]:
        raise ValueError(f"{op!r} takes {EXPRESSION_ARITY[op]} operand(s), got {node!r}")
    if op == "level":
        if args[0] not in names:
            raise ValueError(f"update reads unknown level {args[0]!r}")
        return [args[0]]
    if op == "const":
        if not isinstance(args[0], (int, float)):
            raise ValueError(f"constant must be a number, got {node!r}")
        return []
    return [name for arg in args for name in _expression_levels(arg, names)]


def evaluate_update(node: tuple, outputs: dict[str, Tensor]) -> Tensor | float:
    """Evaluate an update expression on the level outputs (static tree, traced away by compile)."""
    op = node[0]
    if op == "level":
        return outputs[node[1]]
    if op == "const":
        return float(node[1])
    if op in TENSOR_FUNCTIONS:
        value = evaluate_update(node[1], outputs)
        return (TENSOR_FUNCTIONS if isinstance(value, Tensor) else NUMBER_FUNCTIONS)[op](value)
    if op == "neg":
        return -evaluate_update(node[1], outputs)
    left, right = evaluate_update(node[1], outputs), evaluate_update(node[2], outputs)
    if op == "pow":  # the exponent is a number (the checker's rule); math.pow never turns complex
        return left ** right if isinstance(left, Tensor) else math.pow(left, right)
    if op == "add":
        return left + right
    if op == "sub":
        return left - right
    if op == "mul":
        return left * right
    return left / right


def _as_matrix(tensor: Tensor) -> Tensor:
    """View a tensor as the (rows × cols) matrix the delta rule reads: 1-D and scalars as 1 × n."""
    rows = tensor.shape[0] if tensor.ndim >= 2 else 1
    return tensor.reshape(rows, -1)


def delta_rule_write(memory: Tensor, flow: Tensor, retention: float, lr: float) -> Tensor:
    """Delta momentum: m (α I − η X̂ᵀX̂) + η X with X̂ = X / ‖X‖_F, through the smaller Gram matrix."""
    m, x = _as_matrix(memory), _as_matrix(flow)  # (rows, cols)
    key = x / x.norm().clamp(min=torch.finfo(x.dtype).tiny)  # X̂; a zero flow leaves the key at zero
    if m.shape[0] <= m.shape[1]:
        decay = (m @ key.T) @ key  # (rows, rows) then (rows, cols)
    else:
        decay = m @ (key.T @ key)  # (cols, cols)
    return (retention * m - lr * decay + lr * x).reshape(memory.shape)


def delta_rule_write_reference(memory: Tensor, flow: Tensor, retention: float, lr: float) -> Tensor:
    """Plain reference for `delta_rule_write`: builds the (cols × cols) decay matrix explicitly."""
    m, x = _as_matrix(memory), _as_matrix(flow)
    key = x / x.norm()
    decay = retention * torch.eye(x.shape[1], dtype=x.dtype, device=x.device) - lr * key.T @ key  # (cols, cols)
    return (m @ decay + lr * x).reshape(memory.shape)


def mlp_memory_init(hidden: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """DMGD state at step 0: (w_in, w_out), each (H,), making φ exactly the identity."""
    w_in = 2.0 ** torch.linspace(-1.0, 1.0, hidden, dtype=like.dtype, device=like.device)
    w_out = torch.zeros(hidden, dtype=like.dtype, device=like.device)
    return w_in, w_out


def mlp_memory_forward(w_in: Tensor, w_out: Tensor, x: Tensor) -> Tensor:
    """φ(x) = x + Σ_j w_out[j] tanh(w_in[j] x), applied to every entry of x."""
    features = torch.tanh(x.unsqueeze(-1) * w_in)  # (*x.shape, H)
    return x + features @ w_out


def mlp_memory_gradient(w_in: Tensor, w_out: Tensor, x: Tensor, objective: str) -> tuple[Tensor, Tensor]:
    """∇_θ L(θ; x) of the DMGD inner objective in closed form (no autograd in the step).

    With e_i = ∂L/∂φ(x_i) (l2: (φ(x_i) − x_i)/N, dot: −x_i/N) and h_ij = tanh(w_in[j] x_i):
    ∇w_out[j] = Σ_i e_i h_ij, ∇w_in[j] = Σ_i e_i w_out[j] (1 − h_ij²) x_i.
    """
    flat = x.reshape(-1)  # (N,)
    features = torch.tanh(flat.unsqueeze(-1) * w_in)  # (N, H)
    if objective == "l2":
        error = (features @ w_out) / flat.numel()  # φ(x) − x
    else:
        error = -flat / flat.numel()
    grad_w_out = error @ features  # (H,)
    through_tanh = error.unsqueeze(-1) * w_out * (1 - features * features)  # (N, H)
    return flat @ through_tanh, grad_w_out


def mlp_memory_gradient_reference(w_in: Tensor, w_out: Tensor, x: Tensor, objective: str) -> tuple[Tensor, Tensor]:
    """Plain reference for `mlp_memory_gradient`: autograd through the inner objective, entry by entry."""
    weights = [w.detach().clone().requires_grad_(True) for w in (w_in, w_out)]
    loss = x.new_zeros(())
    with torch.enable_grad():
        for value in x.reshape(-1):
            phi = value + sum(weights[1][j] * torch.tanh(weights[0][j] * value) for j in range(len(w_in)))
            loss = loss + (0.5 * (phi - value) ** 2 if objective == "l2" else -phi * value)
        loss = loss / x.numel()
        grads = torch.autograd.grad(loss, weights)
    return grads[0], grads[1]


class NestedOptimizer(torch.optim.Optimizer):
    """Runs an `OptimizerConfig` on parameters, like any torch optimizer.

    Param groups carry "lr", "weight_decay" and "coupled_weight_decay" (so LR schedulers work) and a
    "role": "main" for the config, "fallback" for the parameters `matrices_only` routes to
    `config.fallback`. A fallback group takes the fallback's lr (a user group may set "fallback_lr") and
    the weight decays of the group it was split from, or the fallback's where that group sets none.
    All state is plain tensors, created at construction: "step" (int64, on the parameter's device)
    and per level "<name>.memory" (linear) or "<name>.w_in"/".w_out" (mlp), plus
    "<name>.accumulated" (period > 1) and "<name>.output" (a stored readout).

    `step` compiles with `torch.compile(optimizer.step, fullgraph=True)`. Compile it before attaching
    an LR scheduler (the scheduler wraps `step` in a function dynamo does not trace), and give the lr
    as a 0-dim tensor so that schedule changes do not recompile; each group keeps its own copy.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], config: OptimizerConfig):
        self.config = config
        self._level_orders = {"main": config.level_order()}
        if config.fallback is not None:
            self._level_orders["fallback"] = config.fallback.level_order()
        defaults = {
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "coupled_weight_decay": config.coupled_weight_decay,
            "role": "main",
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; with `matrices_only`, its non-matrix parameters form a fallback group."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        groups = [{**param_group, "params": params}]
        if self.config.matrices_only and "role" not in param_group:
            fallback = self.config.fallback
            others = [p for p in params if p.ndim != 2]
            if others and fallback is None:
                raise ValueError("a matrices_only optimizer without fallback got parameters that are not 2-D")
            main = {key: value for key, value in param_group.items() if key != "fallback_lr"}
            groups = [{**main, "params": [p for p in params if p.ndim == 2]}]
            if others:
                # The group's own decay wins over the fallback's: the caller chose it for these very
                # parameters (compiler/optimizers.parameter_groups gives norms and biases 0).
                groups.append(
                    {
                        "params": others,
                        "lr": param_group.get("fallback_lr", fallback.lr),
                        "weight_decay": param_group.get("weight_decay", fallback.weight_decay),
                        "coupled_weight_decay": param_group.get(
                            "coupled_weight_decay", fallback.coupled_weight_decay
                        ),
                        "role": "fallback",
                    }
                )
        for group in groups:
            if isinstance(group.setdefault("lr", self.config.lr), Tensor):
                group["lr"] = group["lr"].clone()  # schedulers fill_ it: groups must not share one tensor
            if group["params"]:
                super().add_param_group(group)
                config = self._group_config(self.param_groups[-1])
                for p in group["params"]:
                    self._init_state(p, config)

    def _group_config(self, group: dict[str, Any]) -> OptimizerConfig:
        return self.config.fallback if group["role"] == "fallback" else self.config

    def _init_state(self, p: Tensor, config: OptimizerConfig) -> None:
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.int64, device=p.device)
        for level in config.levels:
            if level.state == "linear":
                state[f"{level.name}.memory"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:
                state[f"{level.name}.w_in"], state[f"{level.name}.w_out"] = mlp_memory_init(level.hidden, p)
            if level.period > 1:
                state[f"{level.name}.accumulated"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if level.keeps_output:
                state[f"{level.name}.output"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then keep each step counter on its parameter's device. A state whose
        entries are not the ones this optimizer keeps (another optimizer's, or one saved by an earlier
        layout of a level's state) is refused rather than half used: torch would load it as it is."""
        expected = {p: set(state) for p, state in self.state.items()}
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            if p in expected and set(state) != expected[p]:
                raise ValueError(f"the saved state of a parameter holds {sorted(state)} where this optimizer keeps "
                                 f"{sorted(expected[p])}: it was saved by another optimizer, or by an nldsl "
                                 "version whose levels kept other state")
            state["step"] = state["step"].to(device=p.device, dtype=torch.int64)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One outer step: run every level in dependency order, then apply the update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            config = self._group_config(group)
            for p in group["params"]:
                if p.grad is not None:
                    self._step_parameter(p, p.grad, group, config)
        return loss

    def _step_parameter(self, p: Tensor, grad: Tensor, group: dict[str, Any], config: OptimizerConfig) -> None:
        state = self.state[p]
        state["step"].add_(1)
        step = state["step"]
        if group["coupled_weight_decay"] != 0:
            grad = grad.add(p, alpha=group["coupled_weight_decay"])
        outputs: dict[str, Tensor] = {"gradients": grad}
        for level in self._level_orders[group["role"]]:
            if level.flow == "squared_gradients" and "squared_gradients" not in outputs:
                outputs["squared_gradients"] = grad * grad
            outputs[level.name] = _run_level(level, outputs[level.flow], state, step, p.ndim)
        update = evaluate_update(config.update, outputs)
        lr, weight_decay = group["lr"], group["weight_decay"]
        scale = math.sqrt(max(1.0, p.shape[-2] / p.shape[-1])) if config.lr_scale == "muon" and p.ndim >= 2 else 1.0
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        if isinstance(lr, Tensor):
            p.sub_(update * (lr * scale))
        else:
            p.add_(update, alpha=-lr * scale)


def _run_level(level: OptimizerLevelConfig, flow: Tensor, state: dict[str, Tensor], step: Tensor, ndim: int) -> Tensor:
    """Advance one level by one outer step (updating its state in place) and return its readout."""
    name = level.name
    fires = None
    if level.period > 1:
        accumulated = state[f"{name}.accumulated"]
        flow = accumulated + flow  # the sum of the flows since the last write
        fires = step % level.period == 0
        accumulated.copy_(torch.where(fires, torch.zeros_like(flow), flow))
    writes = (step // level.period).clamp(min=1)

    if level.state == "linear":
        memory = state[f"{name}.memory"]
        if level.objective == "dot" and fires is None and level.is_moving_average:
            written = memory.lerp_(flow, level.lr)  # m + η (X − m), torch's EMA rounding
        elif level.objective == "dot" and fires is None:
            written = memory.mul_(level.retention).add_(flow, alpha=level.lr)  # every step: write in place
        elif level.objective == "dot":
            written = level.retention * memory + level.lr * flow
        else:
            written = delta_rule_write(memory, flow, level.retention, level.lr)
        if level.init == "first_flow":
            written = torch.where(writes == 1, flow, written)
        output = written
        if level.nesterov and level.is_moving_average:
            output = flow.lerp(written, level.retention)
        elif level.nesterov:
            output = level.retention * written + level.lr * flow
        if level.bias_correction:
            exponent = writes.to(torch.promote_types(flow.dtype, torch.float32))
            output = output / (1 - level.retention**exponent)
        _commit(memory, written, fires)
    else:
        weights = [state[f"{name}.{part}"] for part in ("w_in", "w_out")]
        gradients = mlp_memory_gradient(*weights, flow, level.objective)
        new_weights = [level.retention * w - level.lr * g for w, g in zip(weights, gradients)]
        output = mlp_memory_forward(*new_weights, flow)
        for weight, new_weight in zip(weights, new_weights):
            _commit(weight, new_weight, fires)

    if level.orthogonalize_steps > 0 and ndim >= 2:  # a stack's matrices each on their own
        compute_dtype = ORTHOGONALIZE_DTYPES[level.orthogonalize_dtype]
        output = newton_schulz(output, level.orthogonalize_steps, compute_dtype=compute_dtype)
    if not level.keeps_output:
        return output
    stored = state[f"{name}.output"]
    previous = stored.clone() if level.readout == "exclusive" else None
    _commit(stored, output, fires)
    return previous if previous is not None else stored  # nothing writes it again before the next step


def _commit(target: Tensor, value: Tensor, fires: Tensor | None) -> None:
    """Store a written value into a state tensor, only where the level's clock fires (if it has one)."""
    if value is not target:
        target.copy_(value if fires is None else torch.where(fires, value, target))


class DecoupledSGD(torch.optim.SGD):
    """torch.optim.SGD whose "weight_decay" is decoupled (AdamW's λ, the language's `weight_decay`):
    p_t = p_{t−1} (1 − lr·λ) − lr·m_t, with m_t torch's momentum of the gradient alone.

    torch.optim.SGD's own weight_decay adds λ p to the gradient, so the decay passes through the
    momentum and, in the steady state, shrinks p by lr·λ / (1 − μ) per step instead of lr·λ. Here the
    decay is one `_foreach_mul_` per group, then torch's step (fused or foreach, whichever the group
    asks for) runs with its coupled term off, so with λ = 0 this is torch.optim.SGD bit for bit.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # the gradient at p_{t−1}: taken before the decay
        decays = [group["weight_decay"] for group in self.param_groups]
        for group, decay in zip(self.param_groups, decays):
            stepped = [p for p in group["params"] if p.grad is not None]
            if decay != 0 and stepped:
                torch._foreach_mul_(stepped, 1 - group["lr"] * decay)
            group["weight_decay"] = 0.0  # torch's step would read it as its coupled L2 term
            self._start_late_momentum(group, stepped)
        try:
            super().step()
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        return loss

    def _start_late_momentum(self, group: dict[str, Any], stepped: list[Tensor]) -> None:
        """Give a parameter whose first gradient comes after the others' a zero momentum buffer.

        torch's fused SGD kernel takes a group's buffers all present or all absent (torch 2.13: a
        mix fails with "expected Tensor as element …"). A mix happens when a parameter gets no
        gradient in the first steps: a cms level on the continuum clock (its period passes seq_len)
        gets its first at its first tick. With dampening 0 the step makes a zero buffer μ·0 + X_1 =
        X_1, bit for bit the buffer torch's other (foreach, per-tensor) paths start such a parameter
        from."""
        if not group["fused"] or not group["momentum"] or group["dampening"]:
            return  # torch's other paths start a late buffer themselves
        buffers = [self.state[p].get("momentum_buffer") for p in stepped]
        if any(buffer is not None for buffer in buffers):
            for p, buffer in zip(stepped, buffers):
                if buffer is None:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)


def sgd_momentum(
    lr: float,
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> OptimizerConfig:
    """torch.optim.SGD as one level: m_t = μ m_{t−1} + (1 − dampening) X_t, m_1 = X_1.

    `weight_decay` is coupled (added to the gradient), as in torch.optim.SGD; the language's `sgd(…)`
    decays decoupled instead (`DecoupledSGD`).
    """
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov momentum needs momentum > 0 and zero dampening")
    if momentum == 0:  # torch applies the gradient itself, ignoring dampening
        level = OptimizerLevelConfig("momentum", "gradients", retention=0.0, lr=1.0)
    else:
        level = OptimizerLevelConfig(
            "momentum",
            "gradients",
            retention=momentum,
            lr=1.0 - dampening,
            nesterov=nesterov,
            init="first_flow",
        )
    return OptimizerConfig(lr, (level,), ("level", "momentum"), coupled_weight_decay=weight_decay)


def delta_momentum(
    lr: float,
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> OptimizerConfig:
    """Delta momentum (Eq. 48–49): m_t = m_{t−1}(μ I − η X̂ᵀX̂) + η X_t with η = 1 − dampening.

    Like `sgd_momentum` with an L2 inner objective; `weight_decay` is decoupled.
    """
    level = OptimizerLevelConfig(
        "momentum", "gradients", objective="l2", retention=momentum, lr=1.0 - dampening, nesterov=nesterov
    )
    return OptimizerConfig(lr, (level,), ("level", "momentum"), weight_decay=weight_decay)


def dmgd(
    lr: float,
    momentum: float = 0.9,
    inner_lr: float = 1.0,
    hidden: int = 8,
    objective: Literal["dot", "l2"] = "dot",
    weight_decay: float = 0.0,
) -> OptimizerConfig:
    """Deep momentum gradient descent (Eq. 50): p ← p − lr·φ_t(G_t) with an element-wise MLP memory φ.

    `momentum` is the retention α of the MLP weights, `inner_lr` their inner learning rate η.
    """
    level = OptimizerLevelConfig(
        "momentum",
        "gradients",
        state="mlp",
        hidden=hidden,
        objective=objective,
        lr=inner_lr,
        retention=momentum,
    )
    return OptimizerConfig(lr, (level,), ("level", "momentum"), weight_decay=weight_decay)


def muon(
    lr: float = 1e-3,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.1,
    ns_steps: int = 5,
    fallback: OptimizerConfig | None = None,
) -> OptimizerConfig:
    """torch.optim.Muon(adjust_lr_fn="original"): an EMA momentum level orthogonalised by Newton–Schulz.

    Only 2-D parameters are Muon's; the others go to `fallback` (an error if there are any and it is None).
    """
    level = OptimizerLevelConfig(
        "momentum",
        "gradients",
        retention=momentum,
        lr=1.0 - momentum,
        nesterov=nesterov,
        orthogonalize_steps=ns_steps,
    )
    return OptimizerConfig(
        lr,
        (level,),
        ("level", "momentum"),
        weight_decay=weight_decay,
        lr_scale="muon",
        matrices_only=True,
        fallback=fallback,
    )


def adamw(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> OptimizerConfig:
    """torch.optim.AdamW: two bias-corrected EMA levels (Appendix B) and m̂ / (√v̂ + ε)."""
    beta1, beta2 = betas
    first = OptimizerLevelConfig("first_moment", "gradients", retention=beta1, lr=1 - beta1, bias_correction=True)
    second = OptimizerLevelConfig(
        "second_moment", "squared_gradients", retention=beta2, lr=1 - beta2, bias_correction=True
    )
    update = ("div", ("level", "first_moment"), ("add", ("sqrt", ("level", "second_moment")), ("const", eps)))
    return OptimizerConfig(lr, (first, second), update, weight_decay=weight_decay)


def m3(
    lr: float = 1e-3,
    betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
    alpha: float = 1.0,
    eps: float = 1e-8,
    ns_steps: int = 5,
    frequency: int = M3_SLOW_PERIOD,
    weight_decay: float = 0.0,
    decay: bool = False,
    slow_readout: Literal["causal", "exclusive"] = "exclusive",
    orthogonalize_dtype: Literal["bfloat16", "float32", "param"] = "bfloat16",
    fallback: OptimizerConfig | None = None,
) -> OptimizerConfig:
    """Multi-scale momentum Muon (Algorithm 1): p ← p − lr (O1 + α O2) / (√V + ε).

    As printed (`decay=False`): M1 ← M1 + β1 g, V ← V + β2 g², and every `frequency` steps
    M2 ← M2 + β3 Σ g over the gradients since its last write; O1 = NS(M1), O2 = NS(M2). With
    `decay=True` each memory is an EMA with its β as retention: M1 ← β1 M1 + (1 − β1) g,
    V ← β2 V + (1 − β2) g², M2 ← β3 M2 + (1 − β3) Σ g. The paper's slow sum runs over f + 1
    gradients and overlaps the previous one; here each gradient enters it exactly once.
    `slow_readout="exclusive"` (default) uses a new O2 from the step after its write, as Algorithm 1
    does; "causal" uses it at the writing step. With a `fallback`, only 2-D parameters use M3;
    without, other parameters skip Newton–Schulz (O1 = M1, O2 = M2).
    """
    beta1, beta2, beta3 = betas

    def write(beta: float) -> dict[str, float]:
        return {"retention": beta, "lr": 1 - beta} if decay else {"retention": 1.0, "lr": beta}

    fast = OptimizerLevelConfig(
        "fast_momentum",
        "gradients",
        orthogonalize_steps=ns_steps,
        orthogonalize_dtype=orthogonalize_dtype,
        **write(beta1),
    )
    slow = OptimizerLevelConfig(
        "slow_momentum",
        "gradients",
        period=frequency,
        orthogonalize_steps=ns_steps,
        orthogonalize_dtype=orthogonalize_dtype,
        readout=slow_readout,
        **write(beta3),
    )
    second = OptimizerLevelConfig("second_moment", "squared_gradients", **write(beta2))
    mixed = ("add", ("level", "fast_momentum"), ("mul", ("const", alpha), ("level", "slow_momentum")))
    update = ("div", mixed, ("add", ("sqrt", ("level", "second_moment")), ("const", eps)))
    return OptimizerConfig(
        lr,
        (fast, slow, second),
        update,
        weight_decay=weight_decay,
        matrices_only=fallback is not None,
        fallback=fallback,
    )

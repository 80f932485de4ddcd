"""Random `optimizer` sections, as a user writes them, against a per-step reference.

Each drawn section goes through the checker. One it refuses must be refused with diagnostics, never
an exception; one it accepts is built by `build_optimizer` and stepped on parameters of every shape
a model has (matrices wide and tall, a stack of matrices, vectors, a single entry) with random
gradients, in float64, and must follow the reference below after every step. The reference is
written from the equations of nldsl/runtime/optim.py's docstring, one write at a time: the delta
rule with its decay matrix built whole, DMGD's inner gradient by autograd, the clock as Python
branches, AdamW for what `matrices_only` hands on. A run saved after a random step and resumed in a
fresh optimizer must end where the uninterrupted run ends, bit for bit.

Newton–Schulz runs in the parameter's dtype on both sides (`orthogonalize_dtype = "param"`): in
bfloat16 a difference of rounding before the iteration can flip a rounding inside it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nldsl.compiler import optimizers as CO

from nldsl.checker import check_text
from nldsl.runtime.layers import newton_schulz
from nldsl.runtime.optim import OptimizerConfig, OptimizerLevelConfig

SECTIONS = int(os.environ.get("NLDSL_OPTIMIZER_SECTIONS", "150"))
STEPS = 13  # every period drawn (up to 6) writes at least twice
SHAPES = {"wide": (3, 5), "tall": (6, 2), "stack": (2, 3, 4), "vector": (5,), "single": (1,), "embedding": (7, 3)}
MATCH = 1e-9  # float64, relative to the reference parameter's norm: the same algebra in another order
LINEAR_ONLY = {"nesterov", "bias_correction", "init"}  # on an mlp state mostly left out: E0601 refuses them
NUMBERS = ["0", "0.1", "0.5", "0.9", "1.0", "0.99", "1e-3", "2"]


@st.composite
def update_expressions(draw, names: list[str], depth: int = 0) -> str:
    """An `update` over the levels: sums, products, quotients, powers, sqrt/abs/sign, negation."""
    if depth == 2:
        return draw(st.sampled_from(names + NUMBERS))
    kind = draw(st.sampled_from(["level", "level", "binary", "function", "negate", "power"]))
    if kind == "level":
        return draw(st.sampled_from(names))
    inner = update_expressions(names, depth + 1)
    if kind == "binary":
        return f"({draw(inner)} {draw(st.sampled_from(['+', '-', '*', '/']))} {draw(inner)})"
    if kind == "function":
        return f"{draw(st.sampled_from(['sqrt', 'abs', 'sign']))}({draw(inner)})"
    if kind == "negate":
        return f"-{draw(inner)}"
    return f"{draw(inner)} ** {draw(st.sampled_from(['2', '0.5', '3', '-1']))}"


LEVEL_OPTIONS = [
    ("objective", ["dot", "l2"]), ("lr", ["0", "0.1", "0.5", "1.0", "0.1 * 9"]),
    ("retention", ["0", "0.5", "0.9", "1.0"]), ("period", ["1", "2", "3", "4", "6"]),
    ("orthogonalize", ["newton_schulz(steps = 1)", "newton_schulz(steps = 5)"]),
    ("nesterov", ["true", "false"]), ("bias_correction", ["true", "false"]),
    ("readout", ["causal", "exclusive"]), ("init", ["zeros", "first_flow"]),
]


@st.composite
def optimizer_sections(draw) -> str:
    """A spec with an `optimizer` section of 1–3 levels, each option written or left to its default."""
    names = ["a", "b", "c"][:draw(st.integers(1, 3))]
    lines = ["optimizer drawn {", f"  lr = {draw(st.sampled_from(['1e-3', '0.01', '0.1']))}"]
    if draw(st.booleans()):
        lines.append(f"  weight_decay = {draw(st.sampled_from(['0', '0.1', '0.5']))}")
    if draw(st.booleans()):
        lines.append(f"  lr_scale = {draw(st.sampled_from(['none', 'muon']))}")
    if draw(st.integers(0, 3)) == 0:
        lines.append("  matrices_only = true")
    for index, name in enumerate(names):
        lines += [f"  level {name} {{",
                  f"    flow = {draw(st.sampled_from(['gradients', 'squared_gradients', *names[:index]]))}"]
        mlp = draw(st.integers(0, 3)) == 0
        if mlp:
            lines.append("    state = mlp")
            if draw(st.booleans()):
                lines.append(f"    hidden = {draw(st.integers(1, 6))}")
        for key, values in LEVEL_OPTIONS:
            if draw(st.integers(0, 2)) == 0 and not (mlp and key in LINEAR_ONLY and draw(st.integers(0, 3))):
                lines.append(f"    {key} = {draw(st.sampled_from(values))}")
        lines.append("  }")
    update = draw(update_expressions(names))
    read = set(re.findall(r"\b[abc]\b", update)) | {flow.split()[-1] for flow in lines if "flow = " in flow}
    update += "".join(f" + {name}" for name in names if name not in read)  # mostly no E0506 (never read)
    lines += [f"  update = {update}", "}", "train { optimizer = drawn }"]
    return "\n".join(lines) + "\n"


# The reference ------------------------------------------------------------------------------------

def reference_update(node: tuple, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    op, args = node[0], node[1:]
    if op == "level":
        return outputs[args[0]]
    if op == "const":
        return torch.tensor(float(args[0]), dtype=torch.float64)
    values = [reference_update(arg, outputs) for arg in args]
    if op in ("sqrt", "abs", "sign"):
        return getattr(torch, op)(values[0])
    if op == "neg":
        return -values[0]
    a, b = values
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "pow": a ** b}[op]


def phi(w_in: torch.Tensor, w_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """DMGD's memory, one hidden unit at a time: x + Σ_j w_out[j] tanh(w_in[j] x)."""
    return x + sum(w_out[j] * torch.tanh(w_in[j] * x) for j in range(len(w_in)))


class ReferenceLevel:
    """One level of one parameter: a write when its clock fires, its last output in between."""

    def __init__(self, level: OptimizerLevelConfig, like: torch.Tensor):
        self.level, self.writes = level, 0
        self.summed, self.last = torch.zeros_like(like), torch.zeros_like(like)
        self.memory = torch.zeros_like(like)
        hidden = level.hidden
        self.w_in = torch.tensor([2.0 ** (-1 + 2 * j / (hidden - 1)) if hidden > 1 else 0.5 for j in range(hidden)],
                                 dtype=like.dtype)
        self.w_out = torch.zeros(hidden, dtype=like.dtype)

    def step(self, t: int, flow: torch.Tensor, ndim: int) -> torch.Tensor:
        level = self.level
        if level.period > 1:
            self.summed = self.summed + flow
            if t % level.period:
                return self.last
            flow, self.summed = self.summed, torch.zeros_like(self.summed)
        self.writes += 1
        alpha, eta = level.retention, level.lr
        if level.state == "mlp":
            weights = [self.w_in.clone().requires_grad_(True), self.w_out.clone().requires_grad_(True)]
            with torch.enable_grad():
                mapped = phi(*weights, flow)
                loss = 0.5 * ((mapped - flow) ** 2).mean() if level.objective == "l2" else -(mapped * flow).mean()
                grad_in, grad_out = torch.autograd.grad(loss, weights)
            self.w_in, self.w_out = alpha * self.w_in - eta * grad_in, alpha * self.w_out - eta * grad_out
            output = phi(self.w_in, self.w_out, flow)
        else:
            if level.init == "first_flow" and self.writes == 1:
                written = flow.clone()
            elif level.objective == "dot":
                written = alpha * self.memory + eta * flow
            else:  # m (α I − η X̂ᵀX̂) + η X on the (rows × cols) reading, X̂ = X / ‖X‖_F (0 for a zero flow)
                rows = flow.shape[0] if flow.ndim >= 2 else 1
                x, m = flow.reshape(rows, -1), self.memory.reshape(rows, -1)
                key = x / x.norm() if x.norm() > 0 else torch.zeros_like(x)
                decay = alpha * torch.eye(x.shape[1], dtype=x.dtype) - eta * key.T @ key
                written = (m @ decay + eta * x).reshape(flow.shape)
            self.memory = written
            output = alpha * written + eta * flow if level.nesterov else written
            if level.bias_correction:
                output = output / (1 - alpha ** self.writes)
        if level.orthogonalize_steps and ndim >= 2:
            output = newton_schulz(output, level.orthogonalize_steps, compute_dtype=torch.float64)
        previous, self.last = self.last, output
        return previous if level.readout == "exclusive" else output


class ReferenceParameter:
    """A parameter stepped by an optimizer section: its levels in dependency order, then the update."""

    def __init__(self, p: torch.Tensor, config: OptimizerConfig, weight_decay: float):
        self.p, self.config, self.weight_decay, self.t = p.clone(), config, weight_decay, 0
        self.levels = {level.name: ReferenceLevel(level, p) for level in config.levels}

    def step(self, grad: torch.Tensor) -> None:
        self.t += 1
        outputs = {"gradients": grad, "squared_gradients": grad * grad}
        pending = list(self.config.levels)
        while pending:
            level = next(level for level in pending if level.flow in outputs)
            outputs[level.name] = self.levels[level.name].step(self.t, outputs[level.flow], self.p.ndim)
            pending.remove(level)
        scale = 1.0
        if self.config.lr_scale == "muon" and self.p.ndim >= 2:
            scale = math.sqrt(max(1.0, self.p.shape[-2] / self.p.shape[-1]))
        lr = self.config.lr
        self.p = self.p * (1 - lr * self.weight_decay) - lr * scale * reference_update(self.config.update, outputs)


class ReferenceAdamW:
    """What `matrices_only` hands every parameter that is not a matrix: AdamW with torch's defaults."""

    def __init__(self, p: torch.Tensor, lr: float, weight_decay: float):
        self.p, self.lr, self.weight_decay, self.t = p.clone(), lr, weight_decay, 0
        self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)

    def step(self, grad: torch.Tensor) -> None:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad * grad
        corrected = (self.m / (1 - 0.9 ** self.t)) / ((self.v / (1 - 0.999 ** self.t)).sqrt() + 1e-8)
        self.p = self.p * (1 - self.lr * self.weight_decay) - self.lr * corrected


def agrees(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Within MATCH, or NaN and infinity in the same entries with the finite ones within MATCH (an
    update may divide by a level that is still zero: the checker's W0712 says so)."""
    if not torch.equal(actual.isnan(), expected.isnan()) or not torch.equal(actual.isinf(), expected.isinf()):
        return False
    finite = expected.isfinite()
    if not torch.equal(actual[~finite & ~expected.isnan()], expected[~finite & ~expected.isnan()]):
        return False
    a, e = actual[finite], expected[finite]
    return bool((a - e).norm() <= MATCH * max(e.norm().item(), 1e-12))


@pytest.fixture(autouse=True)
def _newton_schulz_in_the_parameters_dtype(monkeypatch):
    built = CO.level_config
    monkeypatch.setattr(CO, "level_config",
                        lambda level: dataclasses.replace(built(level), orthogonalize_dtype="param"))


@settings(max_examples=SECTIONS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(text=optimizer_sections(), seed=st.integers(0, 2**16), cut=st.integers(1, STEPS - 1))
def test_a_random_optimizer_section_steps_as_its_reference_and_resumes_exactly(text: str, seed: int,
                                                                               cut: int) -> None:
    result = check_text(text, "drawn.nl")  # a section it refuses gets diagnostics, never an exception
    assume(not any(d.severity == "error" for d in result.diagnostics))
    section = result.spec.train.optimizer
    generator = torch.Generator().manual_seed(seed)
    params = {name: torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
              for name, shape in SHAPES.items()}
    grads = [{name: 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
              for name, shape in SHAPES.items()} for _ in range(STEPS)]
    optimizer = CO.build_optimizer(list(params.items()), section)
    config = CO.optimizer_config(section)
    references = {}
    for name, p in params.items():
        decay = section.weight_decay if p.ndim >= 2 else 0.0  # norms, biases and gates are never decayed
        references[name] = (ReferenceAdamW(p.detach(), section.lr, decay) if section.matrices_only and p.ndim != 2
                            else ReferenceParameter(p.detach(), config, decay))

    def run(optimizer, params, steps) -> None:
        for t in steps:
            for name, p in params.items():
                p.grad = grads[t][name].clone()
            optimizer.step()

    saved = None
    for t in range(STEPS):
        run(optimizer, params, [t])
        for name, p in params.items():
            references[name].step(grads[t][name])
            assert agrees(p.detach(), references[name].p), f"step {t + 1}, parameter {name}:\n{text}"
        if t + 1 == cut:
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            saved = buffer.getvalue(), {name: p.detach().clone() for name, p in params.items()}

    resumed_params = {name: torch.nn.Parameter(value) for name, value in saved[1].items()}
    resumed = CO.build_optimizer(list(resumed_params.items()), section)
    resumed.load_state_dict(torch.load(io.BytesIO(saved[0]), weights_only=True))
    run(resumed, resumed_params, range(cut, STEPS))
    for name, p in params.items():
        assert torch.equal(resumed_params[name].detach().nan_to_num(nan=7.0), p.detach().nan_to_num(nan=7.0)), \
            f"resumed after step {cut}, parameter {name}:\n{text}"

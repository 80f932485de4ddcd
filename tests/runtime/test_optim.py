"""Tests for nldsl.runtime.optim: optimizers as nested levels against torch's optimizers and by hand.

Everything runs in float64 on odd shapes, except one float32 Muon check. The torch comparisons
check the parameters after each of 10 steps; the hand checks write the expected equations out in
the test. The compiled checks are marked slow.
"""

import copy
import math

import pytest
import torch

from nldsl.runtime.layers import MUON_COEFFICIENTS
from nldsl.runtime.optim import (
    NestedOptimizer,
    OptimizerConfig,
    OptimizerLevelConfig,
    adamw,
    delta_momentum,
    delta_rule_write,
    delta_rule_write_reference,
    dmgd,
    m3,
    mlp_memory_forward,
    mlp_memory_gradient,
    mlp_memory_gradient_reference,
    mlp_memory_init,
    muon,
    sgd_momentum,
)

STEPS = 10
TORCH_MATCH = {"rtol": 1e-12, "atol": 1e-14}  # float64, same algebra in another operation order
BITWISE = {"rtol": 0.0, "atol": 0.0}  # Muon: the same bfloat16 Newton–Schulz, operation for operation
HAND = {"rtol": 1e-12, "atol": 1e-14}  # float64, expected values written out in the test
NEWTON_SCHULZ_HAND = {"rtol": 1e-10, "atol": 1e-12}  # float64 iteration vs its scalar recurrence
REFERENCE = {"rtol": 1e-12, "atol": 1e-13}  # float64, fast op vs plain reference
COMPILED = {"rtol": 1e-12, "atol": 1e-14}  # float64, torch.compile vs eager
ODD_SHAPES = [(7, 5), (3, 7), (9,), (2, 3, 5), (1, 1)]


def make_model(seed: int = 0) -> torch.nn.Module:
    """Two linear layers (a tall and a wide weight, two biases), float64."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()


def train(model, optimizer, steps: int = STEPS, seed: int = 1) -> list[list[torch.Tensor]]:
    """Run `steps` regression steps on fresh random batches; return the parameters after each."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        x = torch.randn(11, 5, generator=generator, dtype=torch.float64)
        y = torch.randn(11, 3, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def assert_histories_close(ours, theirs, tolerance):
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        for p, q in zip(mine, reference, strict=True):
            torch.testing.assert_close(p, q, **tolerance, msg=lambda m, step=step: f"step {step + 1}: {m}")


def step_with_gradients(param: torch.Tensor, config: OptimizerConfig, grads) -> list[torch.Tensor]:
    """Apply one optimizer step per given gradient to `param`; return the parameter after each."""
    optimizer = NestedOptimizer([param], config)
    history = []
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        history.append(param.detach().clone())
    return history


@pytest.mark.parametrize(
    "momentum, dampening, nesterov, weight_decay",
    [(0.9, 0.0, False, 0.0), (0.9, 0.3, False, 0.01), (0.8, 0.0, True, 0.01), (0.0, 0.5, False, 0.02)],
)
def test_sgd_momentum_matches_torch_sgd(momentum, dampening, nesterov, weight_decay):
    model, reference = make_model(), make_model()
    ours = NestedOptimizer(model.parameters(), sgd_momentum(0.1, momentum, dampening, nesterov, weight_decay))
    theirs = torch.optim.SGD(reference.parameters(), 0.1, momentum, dampening, weight_decay, nesterov)
    assert_histories_close(train(model, ours), train(reference, theirs), TORCH_MATCH)


@pytest.mark.parametrize("betas, eps, weight_decay", [((0.9, 0.999), 1e-8, 0.01), ((0.5, 0.8), 1e-3, 0.3)])
def test_adamw_matches_torch_adamw(betas, eps, weight_decay):
    model, reference = make_model(), make_model()
    ours = NestedOptimizer(model.parameters(), adamw(0.01, betas, eps, weight_decay))
    theirs = torch.optim.AdamW(reference.parameters(), 0.01, betas, eps, weight_decay)
    assert_histories_close(train(model, ours), train(reference, theirs), TORCH_MATCH)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_with_adamw_fallback_matches_torch_muon_and_adamw(nesterov):
    model, reference = make_model(), make_model()
    config = muon(0.02, 0.9, nesterov, 0.1, fallback=adamw(0.003, (0.8, 0.95), 1e-8, 0.05))
    ours = NestedOptimizer(model.parameters(), config)
    matrices = [p for p in reference.parameters() if p.ndim == 2]
    vectors = [p for p in reference.parameters() if p.ndim != 2]
    torch_muon = torch.optim.Muon(matrices, 0.02, 0.1, 0.9, nesterov, adjust_lr_fn="original")
    torch_adamw = torch.optim.AdamW(vectors, 0.003, (0.8, 0.95), 1e-8, 0.05)

    class Both:
        def zero_grad(self):
            torch_muon.zero_grad()
            torch_adamw.zero_grad()

        def step(self):
            torch_muon.step()
            torch_adamw.step()

    assert [group["role"] for group in ours.param_groups] == ["main", "fallback"]
    ours_history, theirs_history = train(model, ours), train(reference, Both())
    for mine, reference_params in zip(ours_history, theirs_history):
        for p, q in zip(mine, reference_params):
            torch.testing.assert_close(p, q, **(BITWISE if p.ndim == 2 else TORCH_MATCH))


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_float32_matches_torch_muon_bit_for_bit(nesterov):
    # float32 leaves only 16 bits between the momentum and its bfloat16 copy, so the EMA must round
    # exactly as torch's lerp does for the two to stay equal over 10 steps.
    torch.manual_seed(0)
    ours = [torch.randn(shape, requires_grad=True) for shape in [(97, 49), (49, 97)]]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    optimizer = NestedOptimizer(ours, muon(0.02, 0.95, nesterov, 0.1))
    reference = torch.optim.Muon(theirs, 0.02, 0.1, 0.95, nesterov, adjust_lr_fn="original")
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=generator) * 1e-2
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, **BITWISE)


def test_matrices_only_without_fallback_rejects_vectors():
    with pytest.raises(ValueError, match="not 2-D"):
        NestedOptimizer(make_model().parameters(), muon(0.02))
    NestedOptimizer([p for p in make_model().parameters() if p.ndim == 2], muon(0.02))


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("retention, lr", [(0.9, 1.0), (1.0, 0.3)])
def test_delta_rule_write_matches_explicit_decay_matrix(shape, retention, lr):
    generator = torch.Generator().manual_seed(sum(shape))
    memory = torch.randn(shape, generator=generator, dtype=torch.float64)
    flow = torch.randn(shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        delta_rule_write(memory, flow, retention, lr),
        delta_rule_write_reference(memory, flow, retention, lr),
        **REFERENCE,
    )


def test_delta_rule_write_with_zero_flow_only_decays():
    memory = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(delta_rule_write(memory, torch.zeros_like(memory), 0.9, 1.0), 0.9 * memory)


@pytest.mark.parametrize("shape", [(3, 5), (7,)])
def test_delta_momentum_two_steps_by_hand(shape):
    generator = torch.Generator().manual_seed(3)
    p0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    g1, g2 = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2))
    lr, alpha, eta = 0.1, 0.9, 0.7  # outer lr, retention α, inner lr η = 1 − dampening
    history = step_with_gradients(p0.clone(), delta_momentum(lr, alpha, dampening=1 - eta), [g1, g2])

    # m_1 = m_0 (α I − η K_1ᵀK_1) + η g_1 = η g_1 since m_0 = 0; p_1 = p_0 − lr m_1
    m1 = eta * g1
    # m_2 = m_1 (α I − η K_2ᵀK_2) + η g_2, K_2 = g_2 / ‖g_2‖_F read as a (rows × cols) matrix
    key = g2.reshape(shape[0] if len(shape) == 2 else 1, -1) / g2.norm()
    decay = alpha * torch.eye(key.shape[1], dtype=torch.float64) - eta * key.T @ key
    m2 = (m1.reshape(key.shape) @ decay).reshape(shape) + eta * g2
    torch.testing.assert_close(history[0], p0 - lr * m1, **HAND)
    torch.testing.assert_close(history[1], p0 - lr * m1 - lr * m2, **HAND)


@pytest.mark.parametrize("objective", ["dot", "l2"])
@pytest.mark.parametrize("shape", [(3, 5), (7,)])
def test_mlp_memory_gradient_matches_autograd(objective, shape):
    generator = torch.Generator().manual_seed(5)
    hidden = 3
    weights = [torch.randn(hidden, generator=generator, dtype=torch.float64) for _ in range(3)]
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    fast = mlp_memory_gradient(*weights, x, objective)
    reference = mlp_memory_gradient_reference(*weights, x, objective)
    for mine, theirs in zip(fast, reference, strict=True):
        torch.testing.assert_close(mine, theirs, **REFERENCE)


def test_mlp_memory_starts_as_the_identity():
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(mlp_memory_forward(*mlp_memory_init(8, x), x), x, **BITWISE)


def test_dmgd_one_step_by_hand_dot_objective():
    generator = torch.Generator().manual_seed(7)
    p0 = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    g = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    lr, alpha, eta = 0.1, 0.9, 0.5
    (p1,) = step_with_gradients(p0.clone(), dmgd(lr, alpha, eta, hidden=3, objective="dot"), [g])

    # θ_0: w_in = 1, b_in = (−1, 0, 1), w_out = 0. L = −mean φ(g) g with
    # φ(x) = x + Σ_j w_out_j tanh(w_in_j x + b_in_j), so ∂L/∂w_out_j = −mean(g tanh(g + b_j)),
    # and ∂L/∂w_in = ∂L/∂b_in = 0 because w_out = 0.
    b = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    w_out = eta * torch.stack([(g * torch.tanh(g + b_j)).mean() for b_j in b])  # α·0 − η ∂L/∂w_out
    w_in, b_in = alpha * torch.ones(3, dtype=torch.float64), alpha * b
    phi = g + sum(w_out[j] * torch.tanh(w_in[j] * g + b_in[j]) for j in range(3))
    torch.testing.assert_close(p1, p0 - lr * phi, **HAND)


def test_dmgd_l2_objective_keeps_the_identity():
    # At θ_0 φ is the identity, so ½ mean (φ(g) − g)² = 0 has zero gradient: φ stays the identity.
    generator = torch.Generator().manual_seed(8)
    p0 = torch.randn(7, generator=generator, dtype=torch.float64)
    grads = [torch.randn(7, generator=generator, dtype=torch.float64) for _ in range(3)]
    history = step_with_gradients(p0.clone(), dmgd(0.1, 0.9, 0.5, objective="l2"), grads)
    torch.testing.assert_close(history[-1], p0 - 0.1 * sum(grads), **HAND)


def newton_schulz_scale(steps: int, rows: int) -> float:
    """Newton–Schulz on c·Q with orthonormal rows: every singular value follows s ← a s + b s³ + c s⁵."""
    a, b, c = MUON_COEFFICIENTS
    s = 1 / math.sqrt(rows)  # Q / ‖Q‖_F
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("slow_readout", ["exclusive", "causal"])
def test_m3_three_steps_by_hand(decay, slow_readout):
    rows, cols = 3, 5
    generator = torch.Generator().manual_seed(9)
    orthonormal_rows = torch.linalg.qr(torch.randn(cols, rows, generator=generator, dtype=torch.float64))[0].T
    g = 0.7 * orthonormal_rows  # (rows, cols); NS(c·g) = s_T Q for every c > 0
    p0 = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    lr, (beta1, beta2, beta3), alpha, eps, frequency = 0.1, (0.9, 0.99, 0.8), 0.5, 1e-8, 2
    config = m3(
        lr,
        (beta1, beta2, beta3),
        alpha,
        eps,
        5,
        frequency,
        decay=decay,
        slow_readout=slow_readout,
        orthogonalize_dtype="param",
    )
    history = step_with_gradients(p0.clone(), config, [g, g, g])

    # Algorithm 1 with the same gradient every step: M1_t, V_t are multiples of g and g²; the slow
    # memory writes M2 = β3 (g_1 + g_2) (decay: (1 − β3)(g_1 + g_2)) at t = 2, so O2 = NS(M2) = s Q is
    # used from t = 3 (exclusive, as Algorithm 1) or from t = 2 (causal); before that O2 = 0.
    s = newton_schulz_scale(5, rows)
    second_moment = [1 - beta2**t if decay else beta2 * t for t in (1, 2, 3)]  # V_t / g²
    slow_visible = [False, slow_readout == "causal", True]
    expected, p = [], p0
    for v, visible in zip(second_moment, slow_visible):
        mixed = s * orthonormal_rows * (1 + (alpha if visible else 0.0))  # O1 + α O2
        p = p - lr * mixed / (math.sqrt(v) * g.abs() + eps)
        expected.append(p)
    for t in range(3):
        torch.testing.assert_close(history[t], expected[t], **NEWTON_SCHULZ_HAND)


def test_m3_slow_level_writes_only_every_frequency_steps():
    generator = torch.Generator().manual_seed(10)
    param = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    beta3, frequency = 0.8, 3
    optimizer = NestedOptimizer([param], m3(0.01, (0.9, 0.99, beta3), frequency=frequency))
    grads, slow = [], []
    for _ in range(7):
        grads.append(torch.randn(3, 5, generator=generator, dtype=torch.float64))
        param.grad = grads[-1].clone()
        optimizer.step()
        slow.append(optimizer.state[param]["slow_momentum.memory"].clone())
    zero = torch.zeros(3, 5, dtype=torch.float64)
    # As printed: M2 ← M2 + β3 Σ g over the gradients since the last write, at t = 3 and t = 6 only.
    expected = [zero, zero, beta3 * sum(grads[:3])]
    expected += [expected[-1]] * 2 + [expected[-1] + beta3 * sum(grads[3:6])]
    expected += [expected[-1]]
    for t in range(7):
        torch.testing.assert_close(slow[t], expected[t], **HAND)


@pytest.mark.parametrize("readout", ["causal", "exclusive"])
def test_period_sums_the_flow_and_holds_the_output(readout):
    period = 3
    level = OptimizerLevelConfig("slow", "gradients", period=period, readout=readout)  # m_t = m + Σ g
    config = OptimizerConfig(1.0, (level,), ("level", "slow"))
    grads = [torch.full((7,), float(t), dtype=torch.float64) for t in range(1, 8)]
    history = step_with_gradients(torch.zeros(7, dtype=torch.float64), config, grads)
    # The level writes m_3 = 1 + 2 + 3 = 6 and m_6 = 6 + 4 + 5 + 6 = 21; p moves by −(readout) each step.
    readouts = [0, 0, 6, 6, 6, 21, 21] if readout == "causal" else [0, 0, 0, 6, 6, 6, 21]
    expected = -torch.tensor(readouts, dtype=torch.float64).cumsum(0)
    torch.testing.assert_close(torch.stack(history)[:, 0], expected, **BITWISE)


def test_levels_run_in_dependency_order():
    # "outer" is listed first but reads "inner"'s output: inner_t = ½ inner + g, outer_t = ½ outer + inner_t.
    outer = OptimizerLevelConfig("outer", "inner", retention=0.5)
    inner = OptimizerLevelConfig("inner", "gradients", retention=0.5)
    config = OptimizerConfig(1.0, (outer, inner), ("level", "outer"))
    assert [level.name for level in config.level_order()] == ["inner", "outer"]
    g1, g2 = torch.ones(3, dtype=torch.float64), 2 * torch.ones(3, dtype=torch.float64)
    history = step_with_gradients(torch.zeros(3, dtype=torch.float64), config, [g1, g2])
    inner1, inner2 = g1, 0.5 * g1 + g2
    outer1, outer2 = inner1, 0.5 * inner1 + inner2
    torch.testing.assert_close(history[1], -outer1 - outer2, **HAND)


def test_update_expression_and_squared_gradients():
    # p ← p − lr (m − 2) / sqrt(v) with m = g and v = g² (retention 0): every entry moves by −lr (1 − 2/|g|).
    levels = (
        OptimizerLevelConfig("m", "gradients", retention=0.0),
        OptimizerLevelConfig("v", "squared_gradients", retention=0.0),
    )
    update = ("div", ("sub", ("level", "m"), ("const", 2.0)), ("sqrt", ("level", "v")))
    g = torch.tensor([1.0, 4.0, -2.0], dtype=torch.float64)
    (p1,) = step_with_gradients(torch.zeros(3, dtype=torch.float64), OptimizerConfig(0.5, levels, update), [g])
    torch.testing.assert_close(p1, -0.5 * (g - 2) / g.abs(), **HAND)


@pytest.mark.parametrize(
    "config",
    [
        m3(0.01, frequency=3, orthogonalize_dtype="param", fallback=adamw(0.003)),
        dmgd(0.01, hidden=3),
        sgd_momentum(0.05, 0.9, nesterov=True, weight_decay=0.01),
        delta_momentum(0.05, weight_decay=0.01),
    ],
    ids=["m3", "dmgd", "sgd", "delta"],
)
def test_state_dict_round_trip_resumes_exactly(config):
    model = make_model()
    optimizer = NestedOptimizer(model.parameters(), config)
    train(model, optimizer, steps=4, seed=1)  # stops in the middle of M3's slow period
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert all(isinstance(v, torch.Tensor) for state in saved_state["state"].values() for v in state.values())
    uninterrupted = train(model, optimizer, steps=5, seed=2)

    resumed_model = make_model(seed=123)
    resumed_model.load_state_dict(saved_model)
    resumed = NestedOptimizer(resumed_model.parameters(), config)
    resumed.load_state_dict(saved_state)
    assert_histories_close(train(resumed_model, resumed, steps=5, seed=2), uninterrupted, BITWISE)


def test_lr_scheduler_scales_main_and_fallback_groups():
    param, bias = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    config = OptimizerConfig(
        0.1,
        (OptimizerLevelConfig("plain", "gradients", retention=0.0),),  # p ← p − lr g
        ("level", "plain"),
        matrices_only=True,
        fallback=sgd_momentum(0.4, momentum=0.0),
    )
    optimizer = NestedOptimizer([param, bias], config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    for epoch in range(3):
        before = param.clone(), bias.clone()
        param.grad, bias.grad = torch.ones_like(param), torch.ones_like(bias)
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(before[0] - param, torch.full_like(param, 0.1 * 0.5**epoch), **HAND)
        torch.testing.assert_close(before[1] - bias, torch.full_like(bias, 0.4 * 0.5**epoch), **HAND)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1 / 8, 0.4 / 8])


def test_tensor_lr_matches_float_lr():
    model, reference = make_model(), make_model()
    ours = NestedOptimizer(model.parameters(), adamw(0.01))
    ours.param_groups[0]["lr"] = torch.tensor(0.01, dtype=torch.float64)
    theirs = NestedOptimizer(reference.parameters(), adamw(0.01))
    assert_histories_close(train(model, ours), train(reference, theirs), TORCH_MATCH)


def test_closure_is_evaluated_with_gradients():
    model = make_model()
    optimizer = NestedOptimizer(model.parameters(), sgd_momentum(0.1))
    x, y = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = optimizer.step(closure)
    assert first.item() > optimizer.step(closure).item()


@pytest.mark.parametrize(
    "levels, update, message",
    [
        ((OptimizerLevelConfig("a", "b"), OptimizerLevelConfig("b", "a")), ("level", "a"), "cycle"),
        ((OptimizerLevelConfig("a", "gradients"),), ("level", "b"), "unknown level"),
        ((OptimizerLevelConfig("a", "c"),), ("level", "a"), "unknown flow"),
        (
            (OptimizerLevelConfig("a", "gradients"), OptimizerLevelConfig("b", "gradients")),
            ("level", "a"),
            "never",
        ),
        ((OptimizerLevelConfig("a", "gradients"),), ("add", ("level", "a")), "operand"),
        ((OptimizerLevelConfig("a", "gradients"),), ("pow", ("level", "a")), "malformed"),
    ],
)
def test_config_rejects_malformed_optimizers(levels, update, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(0.1, levels, update)


def test_level_config_rejects_inconsistent_options():
    with pytest.raises(ValueError, match="linear"):
        OptimizerLevelConfig("deep", "gradients", state="mlp", nesterov=True)
    with pytest.raises(ValueError, match="period"):
        OptimizerLevelConfig("slow", "gradients", period=0)
    with pytest.raises(ValueError, match="identifier"):
        OptimizerLevelConfig("gradients", "gradients")


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        m3(0.01, frequency=3, orthogonalize_dtype="param", fallback=adamw(0.003)),
        muon(0.02, fallback=adamw(0.003)),
        dmgd(0.01, hidden=3),
        delta_momentum(0.05),
        sgd_momentum(0.05, 0.9, nesterov=True, weight_decay=0.01),
    ],
    ids=["m3", "muon", "dmgd", "delta", "sgd"],
)
def test_step_compiles_to_one_graph_and_matches_eager(config):
    torch._dynamo.reset()
    model, reference = make_model(), make_model()
    compiled = NestedOptimizer(model.parameters(), config)
    compiled.step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    eager = NestedOptimizer(reference.parameters(), config)
    assert_histories_close(train(model, compiled, steps=5), train(reference, eager, steps=5), COMPILED)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # compiled before attaching
def test_compiled_step_follows_a_tensor_lr_schedule_without_recompiling():
    torch._dynamo.reset()
    model, reference = make_model(), make_model()
    compiled = NestedOptimizer(model.parameters(), adamw(torch.tensor(0.01, dtype=torch.float64)))
    compiled_step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    eager = NestedOptimizer(reference.parameters(), adamw(0.01))
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch) for opt in (compiled, eager)]

    class Scheduled:
        def __init__(self, optimizer, step, schedule):
            self.optimizer, self.step_fn, self.schedule = optimizer, step, schedule

        def zero_grad(self):
            self.optimizer.zero_grad()

        def step(self):
            self.step_fn()
            self.schedule.step()

    with torch._dynamo.config.patch(error_on_recompile=True):
        ours = train(model, Scheduled(compiled, compiled_step, schedules[0]), steps=5)
    theirs = train(reference, Scheduled(eager, eager.step, schedules[1]), steps=5)
    assert_histories_close(ours, theirs, COMPILED)
    assert compiled.param_groups[0]["lr"].item() == pytest.approx(0.01 / 32)

"""Tests for nldsl.runtime.optim: optimizers as nested levels against torch's optimizers and by hand.

Everything runs in float64 on odd shapes, except one float32 Muon check. The torch comparisons
check the parameters after each of 10 steps; the hand checks write the expected equations out in
the test. The compiled checks are marked slow.
"""

import ast
import copy
import inspect
import math
import textwrap

import pytest
import torch
from nldsl.compiler.optimizers import build_optimizer

from nldsl import spec as S
from nldsl.checker import check_text
from nldsl.runtime import optim as O
from nldsl.runtime.layers import MUON_COEFFICIENTS
from nldsl.runtime.optim import (
    DecoupledSGD,
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
    weights = [torch.randn(hidden, generator=generator, dtype=torch.float64) for _ in range(2)]  # w_in, w_out
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

    # θ_0: w_in = (1/2, 1, 2), w_out = 0. L = −mean φ(g) g with φ(x) = x + Σ_j w_out_j tanh(w_in_j x),
    # so ∂L/∂w_out_j = −mean(g tanh(w_in_j g)), and ∂L/∂w_in = 0 because w_out = 0.
    a = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w_out = eta * torch.stack([(g * torch.tanh(a_j * g)).mean() for a_j in a])  # α·0 − η ∂L/∂w_out
    w_in = alpha * a
    phi = g + sum(w_out[j] * torch.tanh(w_in[j] * g) for j in range(3))
    torch.testing.assert_close(p1, p0 - lr * phi, **HAND)


def test_dmgd_gives_no_mean_drift_on_symmetric_zero_mean_gradients():
    # Each gradient holds every value with both signs (zero mean, symmetric). φ has no biases, so it is
    # odd whatever it learns and every update sums to zero: the mean of p stays where it started. With
    # biases φ learned φ(0) ≠ 0 and moved every entry the same way, step after step.
    generator = torch.Generator().manual_seed(9)
    p0 = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    param = p0.clone()
    optimizer = NestedOptimizer([param], dmgd(0.5, 0.99, 1.0))  # the settings of specs/optimizers/dmgd.nl
    for _ in range(50):
        half = torch.randn(3, 8, generator=generator, dtype=torch.float64)
        param.grad = torch.cat([half, -half])[torch.randperm(6, generator=generator)]
        optimizer.step()
    w_in, w_out = optimizer.state[param]["momentum.w_in"], optimizer.state[param]["momentum.w_out"]
    assert w_out.abs().min() > 0.1  # φ has learned far from the identity
    assert mlp_memory_forward(w_in, w_out, torch.zeros(1, dtype=torch.float64)).item() == 0.0
    assert (param - p0).abs().mean() > 1.0  # p moved...
    assert abs(param.mean() - p0.mean()) < 1e-12  # ...with no drift of its mean


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


def test_update_powers_abs_and_sign_evaluate_on_tensors_and_numbers():
    from nldsl.runtime.optim import evaluate_update

    t = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64)
    m = ("level", "m")
    torch.testing.assert_close(evaluate_update(("pow", m, ("const", 3.0)), {"m": t}), t ** 3, **HAND)
    torch.testing.assert_close(evaluate_update(("pow", ("abs", m), ("const", 0.5)), {"m": t}), t.abs().sqrt(), **HAND)
    assert evaluate_update(("sign", m), {"m": t}).tolist() == [-1.0, 0.0, 1.0]
    assert evaluate_update(("sign", ("const", -2.0)), {}) == -1.0 and evaluate_update(("sign", ("const", 0.0)), {}) == 0
    assert evaluate_update(("pow", ("const", 2.0), ("const", 3.0)), {}) == 8.0
    assert evaluate_update(("abs", ("const", -2.5)), {}) == 2.5


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



def test_a_state_of_another_layout_is_refused_not_half_loaded():
    """A DMGD state saved with the biases of an earlier φ (w_in, b_in, w_out), or another
    optimizer's state, would load silently through torch and be half used; it is refused."""
    model = make_model()
    optimizer = NestedOptimizer(model.parameters(), dmgd(0.01, hidden=3))
    train(model, optimizer, steps=1, seed=1)
    saved = copy.deepcopy(optimizer.state_dict())
    for state in saved["state"].values():
        state["deep_momentum.b_in"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="b_in"):
        NestedOptimizer(make_model().parameters(), dmgd(0.01, hidden=3)).load_state_dict(saved)
    other = NestedOptimizer(make_model().parameters(), delta_momentum(0.05))
    with pytest.raises(ValueError, match="another optimizer"):
        other.load_state_dict(copy.deepcopy(optimizer.state_dict()))

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
    ours = NestedOptimizer(model.parameters(), adamw(0.05))  # the group's tensor lr, not this one, must act
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
        ((OptimizerLevelConfig("a", "gradients"),), ("exp", ("level", "a")), "malformed"),
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


# Every rule the runtime enforces on an optimizer is a checker diagnostic at a spec line ----------
#
# One case per rule: how the runtime meets it (a constructor that must raise ValueError) and the
# smallest spec that breaks it with the code the checker must report there; a rule that no spec can
# break says why instead. `test_every_runtime_rule_has_a_case` finds the rules by their `raise`
# statements, so a new runtime rule without a checker diagnostic fails here.

def _level(**options):
    return lambda: OptimizerLevelConfig(**{"name": "m", "flow": "gradients", **options})


def _optimizer(*levels, update=("level", "a"), **options):
    return lambda: OptimizerConfig(0.1, tuple(OptimizerLevelConfig(*level) for level in levels), update, **options)


RUNTIME_RULES = [  # (id, runtime, spec, code or why no spec can break it)
    ("reserved_step", _level(name="step"), "optimizer o { level step { } }", "E0208"),
    ("reserved_gradients", _level(name="gradients"), "optimizer o { level gradients { } }", "E0208"),
    ("reserved_squared", _level(name="squared_gradients"), "optimizer o { level squared_gradients { } }", "E0208"),
    ("state", _level(state="deep"), "optimizer o { level m { state = deep } }", "E0303"),
    ("objective", _level(objective="l1"), "optimizer o { level m { objective = l1 } }", "E0303"),
    ("period", _level(period=0), "optimizer o { level m { period = 0 } }", "E0302"),
    ("hidden", _level(state="mlp", hidden=0), "optimizer o { level m { state = mlp; hidden = 0 } }", "E0302"),
    ("newton_schulz", _level(orthogonalize_steps=-1),
     "optimizer o { level m { orthogonalize = newton_schulz(steps = 0) } }", "E0302"),
    ("orthogonalize_dtype", _level(orthogonalize_dtype="float16"), None,
     "not a spec attribute: the compiler keeps the default"),
    ("init", _level(init="ones"), "optimizer o { level m { init = ones } }", "E0303"),
    ("readout", _level(readout="chunk_start"), "optimizer o { level m { readout = chunk_start } }", "E0303"),
    ("mlp_nesterov", _level(state="mlp", nesterov=True),
     "optimizer o { level m { state = mlp; nesterov = true } }", "E0601"),
    ("mlp_bias_correction", _level(state="mlp", retention=0.9, bias_correction=True),
     "optimizer o { level m { state = mlp; retention = 0.9; bias_correction = true } }", "E0601"),
    ("mlp_init", _level(state="mlp", init="first_flow"),
     "optimizer o { level m { state = mlp; init = first_flow } }", "E0601"),
    ("bias_correction_retention", _level(bias_correction=True),
     "optimizer o { level m { bias_correction = true } }", "E0601"),
    ("bias_correction_first_flow", _level(retention=0.9, bias_correction=True, init="first_flow"),
     "optimizer o { level m { retention = 0.9; bias_correction = true; init = first_flow } }", "E0601"),
    ("no_levels", _optimizer(update=("const", 1.0)), "optimizer o { update = 1 }", "E0401"),
    ("same_names", _optimizer(("a", "gradients"), ("a", "gradients")),
     "optimizer o { level a { } level a { } update = a }", "E0202"),
    ("unknown_flow", _optimizer(("a", "velocity")), "optimizer o { level a { flow = velocity } }", "E0505"),
    ("cycle", _optimizer(("a", "b"), ("b", "a")),
     "optimizer o { level a { flow = b } level b { flow = a } update = a }", "E0504"),
    ("never_read", _optimizer(("a", "gradients"), ("b", "gradients")),
     "optimizer o { level a { } level b { } update = a }", "E0506"),
    ("lr_scale", _optimizer(("a", "gradients"), lr_scale="adam"),
     "optimizer o { lr_scale = adam; level a { } }", "E0303"),
    ("fallback", _optimizer(("a", "gradients"), matrices_only=True, fallback=muon()), None,
     "the compiler builds every fallback, as adamw"),
    ("unknown_level", _optimizer(("a", "gradients"), update=("add", ("level", "a"), ("level", "velocity"))),
     "optimizer o { level a { } update = a + velocity }", "E0201"),
    ("malformed", _optimizer(("a", "gradients"), update=("exp", ("level", "a"))), None,
     "the checker builds the update tree from the grammar's operators"),
    ("arity", _optimizer(("a", "gradients"), update=("add", ("level", "a"))), None,
     "the checker builds the update tree from the grammar's operators"),
    ("constant", _optimizer(("a", "gradients"), update=("add", ("level", "a"), ("const", "1"))), None,
     "the checker evaluates constants to numbers (E0301 otherwise)"),
]
RULE_FUNCTIONS = (OptimizerLevelConfig.__post_init__, OptimizerConfig.__post_init__, OptimizerConfig.level_order,
                  O._expression_levels)


def _raised_at(runtime) -> int:
    """The line of `nldsl/runtime/optim.py` whose `raise` rejects what `runtime` builds."""
    with pytest.raises(ValueError) as info:
        runtime()
    frame = info.tb
    while frame.tb_next is not None:
        frame = frame.tb_next
    assert frame.tb_frame.f_code.co_filename == O.__file__
    return frame.tb_lineno


def test_every_runtime_rule_has_a_case():
    rules = set()
    for function in RULE_FUNCTIONS:
        lines, first = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
        rules |= {first + node.lineno - 1 for node in ast.walk(tree) if isinstance(node, ast.Raise)}
    covered = {_raised_at(runtime) for _, runtime, _, _ in RUNTIME_RULES}
    assert sorted(rules - covered) == [], "runtime rules (lines of nldsl/runtime/optim.py) without a case"


@pytest.mark.parametrize("runtime, spec, code", [case[1:] for case in RUNTIME_RULES if case[2] is not None],
                         ids=[case[0] for case in RUNTIME_RULES if case[2] is not None])
def test_every_runtime_rule_is_a_checker_diagnostic(runtime, spec, code):
    _raised_at(runtime)
    result = check_text(spec, "rule.nl")
    assert not result.ok and code in {d.code for d in result.diagnostics}, [d.message for d in result.diagnostics]
    assert all(d.span is not None and d.span.path == "rule.nl" for d in result.diagnostics)  # at a spec line


def test_rules_no_spec_can_break_concern_values_the_checker_never_writes():
    assert "orthogonalize_dtype" not in S.OptimizerLevelSpec.model_fields
    assert "fallback" not in S.OptimizerSpec.model_fields


@pytest.mark.parametrize("overrides", [
    ["m.state=mlp"],  # meets the written `nesterov = true`
    ["v.state=mlp"],  # meets the written `bias_correction = true`
    ["v.retention=1"],  # meets the written `bias_correction = true`
    ["m.nesterov=false", "m.state=mlp", "m.init=first_flow"],
])
def test_overrides_that_break_a_runtime_rule_are_checker_diagnostics(overrides):
    text = """
optimizer o {
  level m { retention = 0.9; nesterov = true }
  level v { flow = squared_gradients; lr = 0.001; retention = 0.999; bias_correction = true }
  update = m / (sqrt(v) + 1e-8)
}
train { optimizer = o }
"""
    assert check_text(text, "override.nl").ok
    broken = check_text(text, "override.nl", [f"train.optimizer.{override}" for override in overrides])
    assert [d.code for d in broken.diagnostics] == ["E0601"], [d.message for d in broken.diagnostics]


# Weight decay under matrices_only, and the builtin sgd's ---------------------------------------

def test_matrices_only_fallback_groups_keep_the_weight_decay_of_their_group():
    matrix, cube = torch.ones(4, 4, dtype=torch.float64), torch.ones(2, 2, 2, dtype=torch.float64)
    norm, bias = torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    config = muon(0.1, weight_decay=0.2, fallback=adamw(0.1, weight_decay=0.3))
    groups = [{"params": [matrix, cube], "weight_decay": 0.5}, {"params": [norm], "weight_decay": 0.0}, [bias]]
    optimizer = NestedOptimizer([g if isinstance(g, dict) else {"params": g} for g in groups], config)
    decays = [(group["role"], group["weight_decay"], len(group["params"])) for group in optimizer.param_groups]
    # the group's own decay for both of its parts; a group without one: the config's and the fallback's
    assert decays == [("main", 0.5, 1), ("fallback", 0.5, 1), ("fallback", 0.0, 1), ("fallback", 0.3, 1)]
    for _ in range(10):
        for p in (matrix, cube, norm, bias):
            p.grad = torch.zeros_like(p)  # no gradient step: only weight decay moves a parameter
        optimizer.step()
    torch.testing.assert_close(matrix, torch.full_like(matrix, (1 - 0.1 * 0.5) ** 10), **HAND)
    torch.testing.assert_close(cube, torch.full_like(cube, (1 - 0.1 * 0.5) ** 10), **HAND)
    torch.testing.assert_close(norm, torch.ones_like(norm), **BITWISE)
    torch.testing.assert_close(bias, torch.full_like(bias, (1 - 0.1 * 0.3) ** 10), **HAND)


@pytest.mark.parametrize("builtin", ["muon(lr = 0.02, weight_decay = 0.1)", "m3(lr = 0.02, weight_decay = 0.1)"])
def test_builtin_matrices_only_optimizers_decay_weights_of_two_or_more_dimensions_only(builtin):
    spec = check_text(f"train {{ optimizer = {builtin} }}").spec.train.optimizer
    named = [("w", torch.nn.Parameter(torch.ones(4, 4, dtype=torch.float64))),
             ("state", torch.nn.Parameter(torch.ones(2, 2, 2, dtype=torch.float64))),
             ("norm.weight", torch.nn.Parameter(torch.ones(4, dtype=torch.float64))),
             ("bias", torch.nn.Parameter(torch.ones(3, dtype=torch.float64)))]
    optimizer = build_optimizer(named, spec)
    for _ in range(10):
        for _, p in named:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    decayed = (1 - 0.02 * 0.1) ** 10
    for name, p in named:
        expected = decayed if p.ndim >= 2 else 1.0
        torch.testing.assert_close(p.detach(), torch.full_like(p, expected), **HAND, msg=name)


def decoupled_sgd_reference(params, grads_per_step, lr, momentum, weight_decay):
    """Written out: m_t = μ m_{t−1} + g_t (m_1 = g_1), p_t = p_{t−1} (1 − lr λ) − lr m_t, per parameter."""
    params = [p.clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    history = []
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            buffers[i] = momentum * buffers[i] + g
            decay = weight_decay if p.ndim >= 2 else 0.0  # norms and biases never decay
            params[i] = p * (1 - lr * decay) - lr * buffers[i]
        history.append([p.clone() for p in params])
    return history


@pytest.mark.parametrize("fused", [True, False])
def test_builtin_sgd_weight_decay_is_decoupled(fused):
    spec = check_text("train { optimizer = sgd(lr = 0.1, momentum = 0.9, weight_decay = 0.05) }").spec.train.optimizer
    generator = torch.Generator().manual_seed(4)
    named = [("w", torch.nn.Parameter(torch.randn(5, 3, generator=generator, dtype=torch.float64))),
             ("b", torch.nn.Parameter(torch.randn(3, generator=generator, dtype=torch.float64)))]
    start = [p.detach().clone() for _, p in named]
    optimizer = build_optimizer(named, spec)
    assert isinstance(optimizer, DecoupledSGD)
    for group in optimizer.param_groups:
        group["fused"] = fused  # torch reads the flag at every step
    grads_per_step = [[torch.randn(p.shape, generator=generator, dtype=torch.float64) for _, p in named]
                      for _ in range(STEPS)]
    ours = []
    for grads in grads_per_step:
        for (_, p), g in zip(named, grads):
            p.grad = g.clone()
        optimizer.step()
        ours.append([p.detach().clone() for _, p in named])
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.0]  # λ, kept after steps
    assert_histories_close(ours, decoupled_sgd_reference(start, grads_per_step, 0.1, 0.9, 0.05), HAND)


def test_builtin_sgd_without_weight_decay_is_torch_sgd_bit_for_bit():
    model, reference = make_model(), make_model()
    spec = check_text("train { optimizer = sgd(lr = 0.1, momentum = 0.9) }").spec.train.optimizer
    ours = build_optimizer(model.named_parameters(), spec)
    theirs = torch.optim.SGD(reference.parameters(), 0.1, 0.9, fused=True)
    assert_histories_close(train(model, ours), train(reference, theirs), BITWISE)


@pytest.mark.parametrize("fused", [True, False])
def test_builtin_sgd_steps_a_parameter_whose_first_gradient_comes_late(fused):
    """A cms level on the continuum clock gets its first gradient after the others have momentum
    buffers: torch's fused kernel refused that mix (a resume audit of random specs found it, training
    with `sgd(…, momentum = 0.9)`). Each parameter's momentum still starts at its first gradient, as
    torch's per-tensor SGD starts it: bit for bit without the fused kernel, to its rounding (float64)
    with it."""
    spec = check_text("train { optimizer = sgd(lr = 0.1, momentum = 0.9) }").spec.train.optimizer
    generator = torch.Generator().manual_seed(5)
    start = [torch.randn(4, 3, generator=generator, dtype=torch.float64),
             torch.randn(2, 3, generator=generator, dtype=torch.float64)]  # matrices: one parameter group
    named = [(name, torch.nn.Parameter(p.clone())) for name, p in zip(["early", "late"], start)]
    reference = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer = build_optimizer(named, spec)
    [group] = optimizer.param_groups
    group["fused"] = fused
    theirs = torch.optim.SGD(reference, 0.1, 0.9, foreach=False)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in start]
        for params in ([p for _, p in named], reference):
            for index, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if index == 1 and step < 2 else g.clone()  # `late`: none in the first two steps
        optimizer.step()
        theirs.step()
        for (_, p), q in zip(named, reference):
            torch.testing.assert_close(p, q, **({"rtol": 1e-15, "atol": 1e-15} if fused else BITWISE))


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


# Mutation-audit checks: bias correction on a slow level, Nesterov off the EMA form, builtin m3 wiring ----

def test_bias_correction_on_a_slow_level_counts_writes_not_steps():
    # O1: a level with period p writes at t = p, 2p, …; its correction is 1 − α^w with w the writes so far.
    period, retention, lr = 3, 0.9, 0.1
    level = OptimizerLevelConfig("m", "gradients", retention=retention, lr=lr, period=period, bias_correction=True)
    config = OptimizerConfig(1.0, (level,), ("level", "m"))
    generator = torch.Generator().manual_seed(21)
    grads = [torch.randn(5, generator=generator, dtype=torch.float64) for _ in range(7)]
    history = step_with_gradients(torch.zeros(5, dtype=torch.float64), config, grads)
    zero = torch.zeros(5, dtype=torch.float64)
    memory, accumulated, output, param = zero, zero, zero, zero
    writes, expected = 0, []
    for t, grad in enumerate(grads, start=1):
        accumulated = accumulated + grad
        if t % period == 0:  # writes at t = 3 and t = 6, with the sum of the flows since the last write
            writes += 1
            memory = retention * memory + lr * accumulated
            accumulated = zero
            output = memory / (1 - retention**writes)
        param = param - output  # between writes (and before the first) the output is held
        expected.append(param)
    assert writes == 2
    for t in range(7):
        torch.testing.assert_close(history[t], expected[t], **HAND, msg=lambda m, t=t: f"step {t + 1}: {m}")


def test_nesterov_on_a_level_that_is_not_a_moving_average():
    # O3: η ≠ 1 − α, so the output is α m_t + η X_t, with m_t = α m_{t−1} + η X_t.
    retention, lr = 0.9, 0.5
    level = OptimizerLevelConfig("m", "gradients", retention=retention, lr=lr, nesterov=True)
    assert not level.is_moving_average
    config = OptimizerConfig(1.0, (level,), ("level", "m"))
    g1 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g2 = torch.tensor([3.0, 0.25, -1.0], dtype=torch.float64)
    g3 = torch.tensor([-0.5, 1.5, 2.0], dtype=torch.float64)
    history = step_with_gradients(torch.zeros(3, dtype=torch.float64), config, [g1, g2, g3])
    m1 = 0.5 * g1
    m2 = 0.9 * m1 + 0.5 * g2
    m3_ = 0.9 * m2 + 0.5 * g3
    outputs = [0.9 * m1 + 0.5 * g1, 0.9 * m2 + 0.5 * g2, 0.9 * m3_ + 0.5 * g3]
    expected = [-outputs[0], -outputs[0] - outputs[1], -outputs[0] - outputs[1] - outputs[2]]
    for t in range(3):
        torch.testing.assert_close(history[t], expected[t], **HAND, msg=lambda m, t=t: f"step {t + 1}: {m}")


def test_builtin_m3_puts_momentum_in_beta1_and_beta3_and_beta2_in_the_second_moment():
    # O15 (docs §3.6): `momentum` is β1 and β3, `beta2` is β2; Algorithm 1 as printed: M ← M + β X
    # (retention 1, lr β), M2 written every 10 steps; p ← p − lr (NS(M1) + NS(M2)) / (√V + ε).
    from nldsl.compiler.optimizers import builtin_config

    text = "train { optimizer = m3(lr = 0.02, momentum = 0.7, beta2 = 0.95, eps = 0.001, weight_decay = 0.1) }"
    config = builtin_config(check_text(text).spec.train.optimizer)
    assert config is not None
    assert (config.lr, config.weight_decay, config.matrices_only) == (0.02, 0.1, True)
    levels = {level.name: level for level in config.levels}
    assert set(levels) == {"fast_momentum", "slow_momentum", "second_moment"}
    fast, slow, second = levels["fast_momentum"], levels["slow_momentum"], levels["second_moment"]
    assert (fast.flow, fast.retention, fast.lr, fast.period) == ("gradients", 1.0, 0.7, 1)  # β1 = momentum
    assert (slow.flow, slow.retention, slow.lr, slow.period) == ("gradients", 1.0, 0.7, 10)  # β3 = momentum
    assert (second.flow, second.retention, second.lr, second.period) == ("squared_gradients", 1.0, 0.95, 1)  # β2
    assert fast.orthogonalize_steps > 0 and slow.orthogonalize_steps > 0 and second.orthogonalize_steps == 0
    for level in (fast, slow, second):
        assert not level.nesterov and not level.bias_correction and level.init == "zeros"
    # the update, on numbers: (O1 + 1·O2) / (√V + ε) with ε = eps
    outputs = {"fast_momentum": torch.tensor([2.0], dtype=torch.float64),
               "slow_momentum": torch.tensor([3.0], dtype=torch.float64),
               "second_moment": torch.tensor([16.0], dtype=torch.float64)}
    torch.testing.assert_close(O.evaluate_update(config.update, outputs),
                               torch.tensor([5.0 / (4.0 + 0.001)], dtype=torch.float64), **HAND)
    # the other tensors: AdamW with β1 = 0.9, β2 = beta2, the same eps
    fallback = {level.name: level for level in config.fallback.levels}
    assert (fallback["first_moment"].retention, fallback["second_moment"].retention) == (0.9, 0.95)
    assert (config.fallback.lr, config.fallback.weight_decay) == (0.02, 0.1)


# From a mutation audit of the optimizer runtime (9 of 46 mutants survived the tests above) ------------

def test_first_flow_on_a_slow_level_stores_the_first_written_sum():
    # init = first_flow counts writes, not steps: a level with period 3 writes first at t = 3, and that
    # write stores m = X_1 + X_2 + X_3 (not α·0 + η·ΣX). Kills `torch.where(step == 1, …)` (optim.py:449).
    level = OptimizerLevelConfig("m", "gradients", retention=0.9, lr=0.5, period=3, init="first_flow")
    config = OptimizerConfig(1.0, (level,), ("level", "m"))
    grads = [torch.full((4,), float(t), dtype=torch.float64) for t in (1, 2, 3, 4, 5, 6)]
    history = step_with_gradients(torch.zeros(4, dtype=torch.float64), config, grads)
    m3 = 1.0 + 2.0 + 3.0  # first write: the flow itself
    m6 = 0.9 * m3 + 0.5 * (4.0 + 5.0 + 6.0)  # second write: α m + η ΣX
    readouts = [0.0, 0.0, m3, m3, m3, m6]
    expected = -torch.tensor(readouts, dtype=torch.float64).cumsum(0)
    torch.testing.assert_close(torch.stack(history)[:, 0], expected, **HAND)


def test_orthogonalize_takes_each_matrix_of_a_stack_and_leaves_vectors_unchanged():
    # Newton–Schulz applies to each matrix of the last two dimensions (a cms level's (1, out, in)
    # weights, a memory's (heads, out, in) initial states), as to a 2-D parameter; a 1-D output
    # passes through. With retention 0 and lr 1 the output is the gradient itself, so p_1 = −NS(g).
    from nldsl.runtime.layers import newton_schulz
    level = OptimizerLevelConfig("m", "gradients", retention=0.0, lr=1.0, orthogonalize_steps=5)
    config = OptimizerConfig(1.0, (level,), ("level", "m"))
    generator = torch.Generator().manual_seed(3)
    g = torch.randn(5, generator=generator, dtype=torch.float64)
    (p1,) = step_with_gradients(torch.zeros(5, dtype=torch.float64), config, [g])
    torch.testing.assert_close(p1, -g, rtol=0.0, atol=0.0)
    for shape in [(3, 6), (2, 3, 4), (1, 6, 3)]:
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        (p1,) = step_with_gradients(torch.zeros(shape, dtype=torch.float64), config, [g])
        each = torch.stack([newton_schulz(m, 5) for m in g.reshape(-1, *shape[-2:])]).reshape(shape)
        torch.testing.assert_close(p1, -each, rtol=0.0, atol=0.0)
        assert not torch.allclose(p1, -g)


def test_muon_lr_scale_reads_a_stacks_matrices():
    """`lr_scale = muon` scales a (heads, rows, cols) stack by √max(1, rows/cols), as a matrix."""
    config = OptimizerConfig(1.0, (OptimizerLevelConfig("m", "gradients", retention=0.0, lr=1.0),), ("level", "m"),
                             lr_scale="muon")
    g = torch.ones(2, 8, 2, dtype=torch.float64)
    (p1,) = step_with_gradients(torch.zeros(2, 8, 2, dtype=torch.float64), config, [g])
    torch.testing.assert_close(p1, -2.0 * g)  # √(8 / 2)


def test_matrices_only_section_hands_the_rest_to_adamw_at_its_lr_and_weight_decay():
    # docs §3.6: an `optimizer` section with matrices_only = true trains the other tensors with AdamW at
    # the section's lr and weight_decay. Through build_optimizer the group's decay wins (parameter_groups
    # always sets one), so only the config shows it. Kills `O.adamw(lr=opt.lr)` (compiler/optimizers.py:31).
    from nldsl.compiler.optimizers import optimizer_config

    text = ("optimizer mo {\n  lr = 0.02\n  weight_decay = 0.3\n  matrices_only = true\n"
            "  level m { flow = gradients }\n  update = m\n}\ntrain { optimizer = mo }\n")
    result = check_text(text)
    assert result.ok, [d.message for d in result.diagnostics]
    config = optimizer_config(result.spec.train.optimizer)
    assert config.fallback is not None
    assert (config.fallback.lr, config.fallback.weight_decay) == (0.02, 0.3)


def test_builtin_muon_maps_momentum_to_its_level_and_gives_the_rest_adamw_with_beta1_0_9():
    # docs §3.6: muon's `momentum` is Muon's; the other tensors take AdamW with β1 = 0.9, `beta2`, `eps`,
    # the same lr and weight_decay. Kills `betas=(opt.momentum, opt.beta2)` (compiler/optimizers.py:41).
    from nldsl.compiler.optimizers import builtin_config

    text = "train { optimizer = muon(lr = 0.02, momentum = 0.7, beta2 = 0.95, eps = 0.001, weight_decay = 0.1) }"
    config = builtin_config(check_text(text).spec.train.optimizer)
    assert config is not None and config.matrices_only and config.lr_scale == "muon"
    (level,) = config.levels
    assert (level.retention, level.lr, level.nesterov, level.orthogonalize_steps) == (0.7, 1 - 0.7, True, 5)
    assert (config.lr, config.weight_decay) == (0.02, 0.1)
    fallback = {level.name: level for level in config.fallback.levels}
    assert (fallback["first_moment"].retention, fallback["second_moment"].retention) == (0.9, 0.95)
    assert (config.fallback.lr, config.fallback.weight_decay) == (0.02, 0.1)
    assert config.fallback.update[2][2] == ("const", 0.001)  # m̂ / (√v̂ + ε)


def test_builtin_adamw_takes_momentum_as_beta1():
    # docs §3.6: `momentum` is β1 of adamw. Kills `betas=(0.9, optimizer.beta2)` (compiler/optimizers.py:79),
    # which the default momentum = 0.9 hides.
    from nldsl.compiler.optimizers import build_optimizer

    text = "train { optimizer = adamw(lr = 0.01, momentum = 0.5, beta2 = 0.9, eps = 0.001, weight_decay = 0.1) }"
    spec = check_text(text).spec.train.optimizer
    named = [("w", torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))),
             ("b", torch.nn.Parameter(torch.ones(2, dtype=torch.float64)))]
    optimizer = build_optimizer(named, spec)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["betas"], g["eps"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ((0.5, 0.9), 0.001, 0.01, 0.1), ((0.5, 0.9), 0.001, 0.01, 0.0)]


def test_update_pow_of_a_negative_number_keeps_its_sign():
    # ("pow", number, number) is math.pow: (−2)³ = −8. Kills `math.pow(abs(left), right)` (optim.py:220).
    from nldsl.runtime.optim import evaluate_update

    assert evaluate_update(("pow", ("neg", ("const", 2.0)), ("const", 3.0)), {}) == -8.0
    assert evaluate_update(("pow", ("const", -2.0), ("const", 2.0)), {}) == 4.0
    t = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    assert evaluate_update(("pow", ("level", "m"), ("const", 3.0)), {"m": t}).tolist() == [-8.0, 27.0]


def test_a_loaded_step_counter_is_int64_and_keeps_counting_past_float32_precision():
    # load_state_dict keeps "step" an int64 (the class docstring): a float32 counter stops at 2**24, and
    # the clock and bias correction read it. Kills `.to(…, dtype=torch.float32)` (optim.py:389).

    param = torch.zeros(3, dtype=torch.float64)
    optimizer = NestedOptimizer([param], adamw(0.01))
    param.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0]["step"] = torch.tensor(2**24, dtype=torch.int64)
    restored = NestedOptimizer([param], adamw(0.01))
    restored.load_state_dict(saved)
    assert restored.state[param]["step"].dtype == torch.int64
    restored.step()
    assert restored.state[param]["step"].item() == 2**24 + 1


def test_m3_reads_its_slow_memory_exclusively_by_default_and_so_does_the_builtin():
    # Algorithm 1: a new O2 is used from the step after its write. Kills `slow_readout = "causal"` as
    # m3's default (optim.py:639), which the builtin `m3(…)` takes.
    from nldsl.compiler.optimizers import builtin_config

    assert {level.name: level.readout for level in m3().levels}["slow_momentum"] == "exclusive"
    config = builtin_config(check_text("train { optimizer = m3(lr = 0.02) }").spec.train.optimizer)
    assert {level.name: level.readout for level in config.levels}["slow_momentum"] == "exclusive"
    # behaviour: at its first write (t = 10) the slow memory does not move p yet
    param = torch.zeros(3, dtype=torch.float64)  # 1-D: no Newton–Schulz, O = M
    optimizer = NestedOptimizer([param], m3(1.0, betas=(0.0, 1.0, 1.0), eps=0.0))  # M1 = 0, V = Σ g², M2 = Σ g
    for _ in range(10):  # t = 1 … 10
        param.grad = torch.ones(3, dtype=torch.float64)
        optimizer.step()
    torch.testing.assert_close(param, torch.zeros(3, dtype=torch.float64), rtol=0.0, atol=0.0)
    param.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()  # t = 11: O2 = 10, V = 11
    torch.testing.assert_close(param, torch.full((3,), -10 / 11**0.5, dtype=torch.float64), **HAND)

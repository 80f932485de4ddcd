"""Independent textbook checks of the runtime's math primitives, at the edges a mutation audit found untested.

Each test states the expected value from first principles (float64), not from a twin of the code
under test, so a change shared by a fast path and its reference is still caught.
"""

import math

import pytest
import torch

from nldsl.runtime.clock import ContinuumClock, clock_prefix
from nldsl.runtime.delta import generalized_delta_chunked
from nldsl.runtime.layers import RotaryTables, constant_gate, learned_gate, newton_schulz
from nldsl.runtime.memory import LevelConfig, MemoryState, init_memory_weights, memory_level


def test_memory_weights_are_drawn_at_fan_in_scale() -> None:
    # W_l ~ N(0, 1/fan_in) (memory.init_memory_weights docstring): a wide-in, narrow-out layer and
    # its transpose must get different scales.
    cfg = LevelConfig(state="mlp", d_in=64, d_out=4, hidden=4, depth=2)
    weights = init_memory_weights(cfg, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (first, second) = weights  # (H, 4, 64), (H, 4, 4)
    assert first.std().item() == pytest.approx(1 / math.sqrt(64), rel=0.05)
    assert second.std().item() == pytest.approx(1 / math.sqrt(4), rel=0.05)



B, H, DK, DV = 2, 2, 4, 3


def _draw(seed: int, length: int):
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(B, H, length, DK, generator=g, dtype=torch.float64), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(B, H, length, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, length, DV, generator=g, dtype=torch.float64)
    lr = 0.1 + 0.8 * torch.rand(B, H, length, generator=g, dtype=torch.float64)
    alpha = 0.3 + 0.7 * torch.rand(B, H, length, generator=g, dtype=torch.float64)
    s0 = 0.3 * torch.randn(B, H, DV, DK, generator=g, dtype=torch.float64)
    return q, k, v, lr, alpha, s0


@pytest.mark.parametrize("readout", ["causal", "exclusive", "chunk_start"])
@pytest.mark.parametrize("kernel", [True, False])
def test_decay_before_write_is_the_gated_delta_rule(kernel: bool, readout: str) -> None:
    # Gated DeltaNet (Yang et al. 2024): S_t = α_t S_{t−1} (I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ, o_t = S_t q_t
    # (causal), S_{t−1} q_t (exclusive, and chunk_start at period 1). Both routes: the chunk loop
    # (kernel=False) applied α after the write, 0.18 off (a mutation audit), then read exclusive and
    # chunk_start at the decayed state, 0.645 off (a review).
    length = 7
    q, k, v, lr, alpha, s0 = _draw(1, length)
    cfg = LevelConfig(state="linear", d_in=DK, d_out=DV, objective="l2", decay_before_write=True, readout=readout)
    out, final = memory_level(cfg, MemoryState([s0]), k, v, q, lr, alpha, None, allow_delta_kernel=kernel)
    state, expected = s0, []
    eye = torch.eye(DK, dtype=torch.float64)
    for t in range(length):
        kt, vt, eta, a = k[..., t, :], v[..., t, :], lr[..., t, None, None], alpha[..., t, None, None]
        before = state
        state = (a * state @ (eye - eta * kt.unsqueeze(-1) * kt.unsqueeze(-2))
                 + eta * vt.unsqueeze(-1) * kt.unsqueeze(-2))
        read = state if readout == "causal" else before
        expected.append((read @ q[..., t, :].unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(out, torch.stack(expected, dim=-2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final.weights[0], state, rtol=1e-10, atol=1e-10)




def test_delta_kernel_solves_in_float32_for_bfloat16_inputs() -> None:
    # DeltaNet S_t = S_{t−1}(I − β k kᵀ) + β v kᵀ in bfloat16 must run on the CPU (whose triangular
    # solver has no bfloat16 kernel) and stay within bfloat16 rounding of the float64 recurrence.
    length = 9
    q, k, v, lr, _, s0 = _draw(2, length)
    a, x = -lr.unsqueeze(-1) * k, lr.unsqueeze(-1) * v
    state, expected = s0, []
    for t in range(length):
        write = (state @ a[..., t, :].unsqueeze(-1)).squeeze(-1) + x[..., t, :]  # r_t = S a_t + x_t
        state = state + write.unsqueeze(-1) * k[..., t, :].unsqueeze(-2)
        expected.append((state @ q[..., t, :].unsqueeze(-1)).squeeze(-1))
    low = [t.bfloat16() for t in (q, k, a, x, s0)]
    out, final = generalized_delta_chunked(*low[:4], None, low[4], block=4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), torch.stack(expected, dim=-2), rtol=0.05, atol=0.05)
    torch.testing.assert_close(final.double(), state, rtol=0.05, atol=0.05)


def test_gates_are_float32_for_bfloat16_data_and_scaled_by_their_bound() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, generator=g).bfloat16()
    assert constant_gate(x, 3, 0.999).dtype == torch.float32
    assert bool((constant_gate(x, 3, 0.999) < 1).all())  # 0.999 is exactly 1 in bfloat16
    proj, bias = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    gate = learned_gate(x, proj.bfloat16(), bias.bfloat16(), 0.5)
    assert gate.dtype == torch.float32 and gate.shape == (2, 3, 5)
    expected = 0.5 * torch.sigmoid(x.double() @ proj.bfloat16().double().T + bias.bfloat16().double()).transpose(1, 2)
    torch.testing.assert_close(gate.double(), expected, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("kernel", [True, False])
def test_tiny_and_zero_retention_forget_exactly(kernel: bool) -> None:
    # Linear attention with decay: S_t = α_t S_{t−1} + η_t v_t k_tᵀ, o_t = S_t q_t. Gates as small as 1e-7 (or 0)
    # are legal and must be used as they are, not clamped to some larger floor.
    length = 6
    q, k, v, lr, alpha, s0 = _draw(4, length)
    alpha = alpha.clone()
    alpha[..., 2], alpha[..., 4] = 1e-7, 0.0
    cfg = LevelConfig(state="linear", d_in=DK, d_out=DV, objective="dot", chunk_size=3)
    out, final = memory_level(cfg, MemoryState([s0]), k, v, q, lr, alpha, None, allow_delta_kernel=kernel)
    state, expected = s0, []
    for t in range(length):
        write = lr[..., t, None, None] * v[..., t, :].unsqueeze(-1) * k[..., t, :].unsqueeze(-2)
        state = alpha[..., t, None, None] * state + write
        expected.append((state @ q[..., t, :].unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(out, torch.stack(expected, dim=-2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(final.weights[0], state, rtol=1e-9, atol=1e-9)




def test_a_clock_prefix_matches_the_whole_weight_name_not_a_start_of_it() -> None:
    # A level `slow_w2x` beside a clocked level `slow`: its weights `slow_w2x_w1` start like `slow_w2`.
    assert clock_prefix("blocks.0.cms.slow_w2", {"cms.slow_": 8}) == "cms.slow_"
    assert clock_prefix("blocks.0.cms.slow_w2x_w1", {"cms.slow_": 8}) is None
    assert clock_prefix("blocks.0.cms.slow_w1_bias", {"cms.slow_": 8}) is None


def test_a_clock_prefix_passes_over_nested_wrappers() -> None:
    # DistributedDataParallel around a torch.compile'd model: `module._orig_mod.blocks…`.
    assert clock_prefix("module._orig_mod.blocks.0.cms.slow_w1", {"cms.slow_": 8}) == "cms.slow_"




def test_a_clock_ticked_without_a_step_counts_its_own_steps() -> None:
    # Period 3: the summed gradient of steps 0-2 is released at step 2, that of steps 3-5 at step 5.
    p = torch.nn.Parameter(torch.zeros(2))
    clock = ContinuumClock([("blocks.0.cms.slow_w1", p)], {"cms.slow_": 3})
    released = []
    for step in range(6):
        p.grad = torch.full((2,), float(step + 1))
        clock.tick()
        released.append(None if p.grad is None else p.grad[0].item())
    assert released == [None, None, 6.0, None, None, 15.0]
    assert clock.steps_done == 6




def test_rotary_tables_start_at_position_zero() -> None:
    # Row t holds cos/sin(t·θ_j), θ_j = base^(−2j/D), both halves alike: row 0 is cos 1, sin 0.
    cos, sin = RotaryTables(8, 16, 10000.0)(5, torch.float64)
    frequencies = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = torch.arange(5, dtype=torch.float64)[:, None] * frequencies
    angles = torch.cat([angles, angles], dim=-1)
    torch.testing.assert_close(cos, angles.cos())
    torch.testing.assert_close(sin, angles.sin())




def test_newton_schulz_is_scale_invariant_down_to_small_gradients() -> None:
    # X / ‖X‖_F makes the iteration depend on the direction of g only; eps only guards g = 0, so a
    # gradient of norm 1e-4 is orthogonalised like the same gradient at norm 1.
    g = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = g / torch.linalg.matrix_norm(g)[..., None, None]
    torch.testing.assert_close(newton_schulz(1e-4 * g, compute_dtype=None), newton_schulz(g, compute_dtype=None))
    assert newton_schulz(torch.zeros(2, 3), compute_dtype=None).abs().sum() == 0

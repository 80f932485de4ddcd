"""The exact block-parallel delta kernel (nldsl/runtime/delta.py).

Against the per-token reference of the generalized recurrence, and against textbook DeltaNet,
Gated DeltaNet and causal linear attention loops written here independently, at odd lengths,
outputs and gradients. The objective table of `delta_rule_coefficients` is checked by running
linear levels of period 1 both through the kernel and through the chunk loop of memory.py.
"""

import pytest
import torch
import torch.nn.functional as F

from nldsl.runtime.delta import generalized_delta_chunked
from nldsl.runtime.memory import LevelConfig, MemoryState, memory_level
from nldsl.runtime.reference import generalized_delta_reference

OUTPUT_RTOL = 1e-9  # outputs and final states, kernel vs loop, float64
GRAD_RTOL = 1e-9  # gradients w.r.t. every input, kernel vs loop, float64
BATCH, HEADS, D_IN, D_OUT = 2, 3, 5, 4


def relative_error(actual: torch.Tensor | None, expected: torch.Tensor | None) -> float:
    """‖actual − expected‖ / ‖expected‖, where a missing gradient counts as zeros."""
    if actual is None and expected is None:
        return 0.0
    actual = torch.zeros_like(expected) if actual is None else actual
    expected = torch.zeros_like(actual) if expected is None else expected
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def draw(length: int, seed: int, d_out: int = D_OUT) -> dict[str, torch.Tensor]:
    """Unit-norm q, k; values; β ∈ (0, 1); α ∈ (0.5, 1); an initial state. All leaves need grad."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(BATCH, HEADS, length, generator=generator, dtype=torch.float64)

    tensors = {
        "q": F.normalize(normal(BATCH, HEADS, length, D_IN), dim=-1),
        "k": F.normalize(normal(BATCH, HEADS, length, D_IN), dim=-1),
        "v": normal(BATCH, HEADS, length, d_out),
        "beta": uniform(0.05, 0.95),
        "alpha": uniform(0.5, 1.0),
        "noise": 0.1 * normal(BATCH, HEADS, length, D_IN),
        "state": 0.5 * normal(BATCH, HEADS, d_out, D_IN),
    }
    return {name: tensor.requires_grad_() for name, tensor in tensors.items()}


def check_against(run, expected_run, leaves: list[torch.Tensor]) -> None:
    """Compare outputs, final state, and gradients of a fixed random projection of both."""
    results = []
    for function in (run, expected_run):
        outputs, final = function()
        projection = torch.Generator().manual_seed(99)
        loss = sum((p * torch.randn(p.shape, generator=projection, dtype=p.dtype)).sum()
                   for p in (outputs, final))
        results.append((outputs, final, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (outputs, final, gradients), (expected_outputs, expected_final, expected_gradients) = results
    assert relative_error(outputs, expected_outputs) <= OUTPUT_RTOL
    assert relative_error(final, expected_final) <= OUTPUT_RTOL
    for index, (actual, wanted) in enumerate(zip(gradients, expected_gradients)):
        assert relative_error(actual, wanted) <= GRAD_RTOL, f"gradient of leaf {index}"


@pytest.mark.parametrize("length", [1, 63, 100])
@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("readout", ["causal", "exclusive"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("detach_writes", [False, True])
def test_kernel_matches_reference(
    length: int, block: int, readout: str, decay: bool, detach_writes: bool
) -> None:
    t = draw(length, seed=length + block)

    def arguments():
        a = -t["beta"].unsqueeze(-1) * t["k"] + t["noise"]  # a general a_t, not tied to k_t
        x = t["beta"].unsqueeze(-1) * t["v"]
        return t["q"], t["k"], a, x, t["alpha"] if decay else None, t["state"]

    options = {"readout": readout, "detach_writes": detach_writes}
    check_against(
        lambda: generalized_delta_chunked(*arguments(), block=block, **options),
        lambda: generalized_delta_reference(*arguments(), **options),
        list(t.values()),
    )


def deltanet_loop(q, k, v, beta, state, alpha=None):
    """Gated DeltaNet, S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t (α = 1: DeltaNet)."""
    outputs = []
    for t in range(q.shape[-2]):
        k_t, v_t, q_t, beta_t = k[:, :, t], v[:, :, t], q[:, :, t], beta[:, :, t, None]
        decayed = state if alpha is None else alpha[:, :, t, None, None] * state
        prediction = torch.einsum("bhoi,bhi->bho", decayed, k_t)
        state = decayed + torch.einsum("bho,bhi->bhoi", beta_t * (v_t - prediction), k_t)
        outputs.append(torch.einsum("bhoi,bhi->bho", state, q_t))
    return torch.stack(outputs, dim=-2), state


@pytest.mark.parametrize("length", [63, 100])
@pytest.mark.parametrize("gated", [False, True])
def test_kernel_is_deltanet(length: int, gated: bool) -> None:
    t = draw(length, seed=length)
    alpha = t["alpha"] if gated else None

    def kernel():
        beta = t["beta"].unsqueeze(-1)
        # Gated DeltaNet takes its delta at the decayed state α S, so its a_t carries α_t.
        a = -beta * t["k"] if alpha is None else -(alpha.unsqueeze(-1) * beta) * t["k"]
        return generalized_delta_chunked(t["q"], t["k"], a, beta * t["v"], alpha, t["state"], block=16)

    check_against(
        kernel,
        lambda: deltanet_loop(t["q"], t["k"], t["v"], t["beta"], t["state"], alpha),
        list(t.values()),
    )


@pytest.mark.parametrize("length", [63, 100])
def test_l2_level_of_period_one_is_deltanet(length: int) -> None:
    """A linear l2 level with period 1 and learning rate β is DeltaNet (docs/semantics.md §1)."""
    t = draw(length, seed=length + 1, d_out=D_IN)
    cfg = LevelConfig("linear", D_IN, D_IN, objective="l2", chunk_size=1)

    def level():
        outputs, final = memory_level(cfg, MemoryState([t["state"]]), t["k"], t["v"], t["q"], t["beta"], None, None)
        return outputs, final.weights[0]

    check_against(
        level,
        lambda: deltanet_loop(t["q"], t["k"], t["v"], t["beta"], t["state"]),
        list(t.values()),
    )


def linear_attention_loop(q, k, v):
    """Causal linear attention o_t = Σ_{s≤t} (q_t·k_s) v_s."""
    outputs = []
    for t in range(q.shape[-2]):
        scores = torch.einsum("bhd,bhsd->bhs", q[:, :, t], k[:, :, : t + 1])
        outputs.append(torch.einsum("bhs,bhso->bho", scores, v[:, :, : t + 1]))
    return torch.stack(outputs, dim=-2)


@pytest.mark.parametrize("length", [63, 100])
def test_dot_level_is_linear_attention(length: int) -> None:
    """Linear memory, dot objective, gd from zero, any period: causal linear attention."""
    t = draw(length, seed=length + 2)
    ones = torch.ones(BATCH, HEADS, length, dtype=torch.float64)
    empty = torch.zeros(BATCH, HEADS, D_OUT, D_IN, dtype=torch.float64)
    expected = linear_attention_loop(t["q"], t["k"], t["v"])
    kernel_outputs, _ = generalized_delta_chunked(
        t["q"], t["k"], torch.zeros_like(t["k"]), t["v"], None, empty, block=16
    )
    assert relative_error(kernel_outputs, expected) <= OUTPUT_RTOL
    for allow_delta_kernel in (True, False):
        cfg = LevelConfig("linear", D_IN, D_OUT, objective="dot", chunk_size=8)
        outputs, _ = memory_level(cfg, MemoryState([empty]), t["k"], t["v"], t["q"], ones, None, None,
                                  allow_delta_kernel=allow_delta_kernel)
        assert relative_error(outputs, expected) <= OUTPUT_RTOL


@pytest.mark.parametrize("objective", ["dot", "l2", "reconstruction"])
@pytest.mark.parametrize("values", ["given", "generated"])
@pytest.mark.parametrize("dgd", [False, True])
@pytest.mark.parametrize("readout", ["causal", "exclusive", "chunk_start"])
def test_coefficients_match_chunk_rule(objective: str, values: str, dgd: bool, readout: str) -> None:
    """The kernel with delta_rule_coefficients equals the chunk loop of memory.py at period 1."""
    t = draw(23, seed=3, d_out=D_IN)
    cfg = LevelConfig("linear", D_IN, D_IN, objective=objective, values=values, dgd=dgd, readout=readout)
    value_input = None if objective == "reconstruction" else t["v"]

    def run(allow_delta_kernel: bool):
        def level():
            lr = 0.5 * t["beta"]
            outputs, final = memory_level(cfg, MemoryState([t["state"]]), t["k"], value_input, t["q"], lr,
                                          t["alpha"], None, allow_delta_kernel=allow_delta_kernel)
            return outputs, final.weights[0]
        return level

    check_against(run(True), run(False), list(t.values()))


def test_a_sigmoid_gate_that_underflows_to_zero_passes_back_what_the_reference_does() -> None:
    """A retention gate exactly 0 has no log: the kernel's gradient for it is 0 where the reference's
    is the state it scales (log_gate). Every gate a spec makes is a constant or max · sigmoid(z), and
    where that is 0 so is its derivative, so what reaches z agrees; the gate's own gradient does not."""
    t = draw(40, seed=5)
    logits = torch.randn(BATCH, HEADS, 40, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logits[..., ::7] = -1e4  # sigmoid underflows to exactly 0 at these tokens
    logits.requires_grad_()

    def run(function):
        alpha = torch.sigmoid(logits)
        alpha.retain_grad()
        beta = t["beta"].unsqueeze(-1)
        outputs, final = function(t["q"], t["k"], -beta * t["k"], beta * t["v"], alpha, t["state"])
        projection = torch.Generator().manual_seed(99)
        loss = sum((p * torch.randn(p.shape, generator=projection, dtype=p.dtype)).sum() for p in (outputs, final))
        logits.grad = None
        loss.backward()
        return alpha, logits.grad.clone(), alpha.grad.clone()

    alpha, kernel_logits, kernel_alpha = run(lambda *a: generalized_delta_chunked(*a, block=16))
    _, reference_logits, reference_alpha = run(generalized_delta_reference)
    zero = alpha == 0
    assert zero.sum() == BATCH * HEADS * 6
    assert relative_error(kernel_logits, reference_logits) <= GRAD_RTOL
    assert relative_error(kernel_alpha[~zero], reference_alpha[~zero]) <= GRAD_RTOL
    assert (kernel_alpha[zero] == 0).all() and (reference_alpha[zero] != 0).all()

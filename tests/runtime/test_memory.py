"""The chunk-parallel memory level (nldsl/runtime/memory.py) against the per-token reference.

Outputs, final states and gradients w.r.t. every input (initial weights and momentum, keys, values,
queries, gates, the external target) agree in float64 over a seeded grid of states, objectives,
values, DGD, momentum, readouts, chunk sizes, lengths that are not multiples of the chunk,
retention, gradients through writes, Newton–Schulz and clips, plus hypothesis property tests over
random combinations, and over random widths, depths, batch, heads, chunk sizes and lengths
(NLDSL_MEMORY_SHAPES, 150). Also: streaming, literal paper special cases, and torch.compile (slow).
"""

import dataclasses
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nldsl.runtime.memory import (
    LevelConfig,
    MemoryState,
    apply_weights,
    init_memory_weights,
    initial_memory_state,
    memory_chunk_step,
    memory_level,
    newton_schulz,
    uses_delta_kernel,
)
from nldsl.runtime.reference import memory_level_reference, newton_schulz_reference

OUTPUT_RTOL = 1e-6  # outputs and final states, fast path vs reference, float64
GRAD_RTOL = 1e-6  # gradients w.r.t. every input, fast path vs reference, float64
# Without Newton–Schulz (whose normalising ε the two paths place differently) they agree to ~1e-15:
# a tolerance of 1e-6 would not notice a path that silently computed in float32 (~1e-7).
EXACT_RTOL = 1e-10
STREAM_RTOL = 1e-12  # one shot vs two halves: the same arithmetic, only regrouped
COMPILE_RTOL = 1e-10  # torch.compile vs eager, float64
BATCH, HEADS, WIDTH, HIDDEN = 2, 2, 4, 6
RANDOM_SHAPES = int(os.environ.get("NLDSL_MEMORY_SHAPES", "150"))


@dataclasses.dataclass
class LevelInputs:
    """One seeded draw of everything a level reads, as leaves that require grad."""

    state: MemoryState
    keys: torch.Tensor  # (B, H, T, d_in)
    values: torch.Tensor | None  # (B, H, T, d_out)
    queries: torch.Tensor  # (B, H, T, d_in)
    lr: torch.Tensor  # η  (B, H, T)
    retention: torch.Tensor | None  # α  (B, H, T)
    momentum_decay: torch.Tensor | None  # β  (B, H, T)
    target: torch.Tensor  # what the external objective regresses to  (B, H, T, d_out)

    def arguments(self) -> tuple:
        """The positional arguments of memory_level after the config."""
        gates = (self.lr, self.retention, self.momentum_decay)
        return (self.state, self.keys, self.values, self.queries, *gates)

    def leaves(self) -> list[torch.Tensor]:
        candidates = [*self.state.weights, *(self.state.momentum or []), self.keys, self.values,
                      self.queries, self.lr, self.retention, self.momentum_decay, self.target]
        return [leaf for leaf in candidates if leaf is not None]

    def error_signal(self) -> torch.Tensor:
        """The target with tokens on dim 1 (B, T, H, d_out), as memory_level splits an error signal."""
        return self.target.transpose(1, 2)

    @staticmethod
    def output_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """g of ½‖M(k) − target‖², in closed form, for the fast path; target is a chunk of error_signal."""
        return prediction - target.transpose(1, 2)

    def external_loss(self, prediction: torch.Tensor, t: int) -> torch.Tensor:
        """½‖M(k_t) − target_t‖² as a loss, for the reference."""
        return 0.5 * ((prediction - self.target[..., t : t + 1, :]) ** 2).sum(-1)


def make_inputs(cfg: LevelConfig, length: int, *, learned_retention: bool, seed: int,
                sizes: tuple[int, int] = (BATCH, HEADS)) -> LevelInputs:
    """Unit-norm keys and queries (as HOPE normalises them), gates in their ranges, distinct sequences;
    `sizes` is (batch, heads)."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads = sizes

    def normal(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(shape, generator=generator, dtype=torch.float64)

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = torch.rand(batch, heads, length, generator=generator, dtype=torch.float64)
        return (low + (high - low) * draw).requires_grad_()

    shared = init_memory_weights(cfg, heads, generator=generator, dtype=torch.float64)
    weights = [(w + normal(batch, *w.shape, scale=0.1)).requires_grad_() for w in shared]
    momentum = [normal(*w.shape, scale=0.05).requires_grad_() for w in weights] if cfg.momentum else None
    keys = F.normalize(normal(batch, heads, length, cfg.d_in), dim=-1).requires_grad_()
    queries = F.normalize(normal(batch, heads, length, cfg.d_in), dim=-1).requires_grad_()
    values = None
    if cfg.objective in ("dot", "l2"):
        values = normal(batch, heads, length, cfg.d_out).requires_grad_()
    return LevelInputs(
        state=MemoryState(weights, momentum),
        keys=keys,
        values=values,
        queries=queries,
        lr=uniform(0.05, 0.5),
        retention=uniform(0.5, 1.0) if learned_retention else None,
        momentum_decay=uniform(0.2, 0.9) if cfg.momentum else None,
        target=normal(batch, heads, length, cfg.d_out).requires_grad_(),
    )


def outputs_and_gradients(
    run: Callable, inputs: LevelInputs
) -> tuple[torch.Tensor, MemoryState, list[torch.Tensor | None]]:
    """Run a level, then differentiate a fixed random projection of its outputs and final state."""
    outputs, final = run(*inputs.arguments())
    projection = torch.Generator().manual_seed(1234)
    produced = [outputs, *final.weights, *(final.momentum or [])]
    loss = sum((p * torch.randn(p.shape, generator=projection, dtype=p.dtype)).sum() for p in produced)
    gradients = torch.autograd.grad(loss, inputs.leaves(), allow_unused=True)
    return outputs, final, list(gradients)


def relative_error(actual: torch.Tensor | None, expected: torch.Tensor | None, floor: float = 1e-30) -> float:
    """‖actual − expected‖ / max(‖expected‖, floor), where a missing gradient counts as zeros."""
    if actual is None and expected is None:
        return 0.0
    actual = torch.zeros_like(expected) if actual is None else actual
    expected = torch.zeros_like(actual) if expected is None else expected
    return ((actual - expected).norm() / expected.norm().clamp_min(floor)).item()


def assert_matches_reference(
    cfg: LevelConfig, length: int, *, learned_retention: bool = True, seed: int = 0,
    allow_delta_kernel: bool = True, sizes: tuple[int, int] = (BATCH, HEADS), slack: float = 0.0,
    floor: float = 1e-30,
) -> None:
    """The fast path against the reference: outputs, final state and every input gradient. `slack`
    raises the tolerance to what the inputs' own conditioning allows, and a result whose norm is under
    `floor` is compared at that norm (test_random_shapes)."""
    inputs = make_inputs(cfg, length, learned_retention=learned_retention, seed=seed, sizes=sizes)

    def fast(*arguments):
        return memory_level(cfg, *arguments, inputs.output_error, inputs.error_signal(),
                            allow_delta_kernel=allow_delta_kernel)

    def reference(*arguments):
        return memory_level_reference(cfg, *arguments, inputs.external_loss)

    outputs, final, gradients = outputs_and_gradients(fast, inputs)
    expected_outputs, expected_final, expected_gradients = outputs_and_gradients(reference, inputs)
    assert outputs.shape == (*sizes, length, cfg.d_out)
    output_rtol, grad_rtol = (OUTPUT_RTOL, GRAD_RTOL) if cfg.orthogonalize_steps else (EXACT_RTOL, EXACT_RTOL)
    output_rtol, grad_rtol = max(output_rtol, slack), max(grad_rtol, slack)
    assert relative_error(outputs, expected_outputs, floor) <= output_rtol
    produced = [*final.weights, *(final.momentum or [])]
    expected = [*expected_final.weights, *(expected_final.momentum or [])]
    assert len(produced) == len(expected)
    for index, (actual, wanted) in enumerate(zip(produced, expected)):
        assert relative_error(actual, wanted, floor) <= output_rtol, f"final state tensor {index}"
    for index, (actual, wanted) in enumerate(zip(gradients, expected_gradients)):
        assert relative_error(actual, wanted, floor) <= grad_rtol, f"gradient of leaf {index}"
    assert any(g is not None and g.abs().sum() > 0 for g in expected_gradients)


def level(state: str, **options) -> LevelConfig:
    """A small level of the given state kind: mlp2/mlp3 name an mlp of that depth."""
    shape = {"linear": ("linear", 1), "mlp2": ("mlp", 2), "mlp3": ("mlp", 3), "residual": ("residual_mlp", 2)}
    kind, depth = shape[state]
    options.setdefault("d_in", WIDTH)
    options.setdefault("d_out", WIDTH)
    return LevelConfig(kind, hidden=HIDDEN, depth=depth, **options)


STATES = ["linear", "mlp2", "mlp3", "residual"]
ACTIVATION_CYCLE = ["silu", "gelu", "tanh", "relu"]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("objective", ["dot", "l2", "reconstruction", "external"])
def test_objectives(state: str, objective: str) -> None:
    activation = ACTIVATION_CYCLE[(STATES.index(state) + len(objective)) % 4]
    cfg = level(state, objective=objective, activation=activation, chunk_size=3)
    assert_matches_reference(cfg, 13, seed=STATES.index(state))


@pytest.mark.parametrize("state", ["mlp3", "residual", "linear"])
@pytest.mark.parametrize("dgd", ["off", "first", "all"])
@pytest.mark.parametrize("values", ["given", "generated"])
def test_dgd_and_generated_values(state: str, dgd: str, values: str) -> None:
    dgd_options = {"off": {}, "first": {"dgd": True}, "all": {"dgd": True, "dgd_layers": "all"}}[dgd]
    for objective in ("l2", "dot"):
        cfg = level(state, objective=objective, values=values, chunk_size=3, **dgd_options)
        assert_matches_reference(cfg, 7)


@pytest.mark.parametrize("readout", ["causal", "exclusive", "chunk_start"])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_readout_momentum_chunks(readout: str, momentum: bool, chunk_size: int) -> None:
    cfg = level("residual", dgd=True, momentum=momentum, readout=readout, chunk_size=chunk_size)
    assert_matches_reference(cfg, 13, seed=chunk_size)


@pytest.mark.parametrize("readout", ["causal", "exclusive", "chunk_start"])
@pytest.mark.parametrize("momentum", [False, True])
def test_chunks_longer_than_the_fused_scan(readout: str, momentum: bool) -> None:
    """Chunks past FUSED_SCAN_LENGTH take torch's cumsum and logcumsumexp (as a CMS level with a long
    period does): no other test ran them against the per-token reference, and a scan that left out
    each token's own gate went unnoticed."""
    from nldsl.runtime.memory import FUSED_SCAN_LENGTH

    for state, chunk_size in (("linear", FUSED_SCAN_LENGTH + 6), ("residual", FUSED_SCAN_LENGTH + 36)):
        cfg = level(state, dgd=True, momentum=momentum, readout=readout, chunk_size=chunk_size)
        assert_matches_reference(cfg, 2 * chunk_size + 11, seed=chunk_size)


@pytest.mark.parametrize("length", [1, 7, 13])
@pytest.mark.parametrize("learned_retention", [False, True])
def test_lengths_and_retention(length: int, learned_retention: bool) -> None:
    cfg = level("mlp2", momentum=True, chunk_size=3)
    assert_matches_reference(cfg, length, learned_retention=learned_retention)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("readout", ["causal", "exclusive"])
def test_no_gradient_through_writes(state: str, readout: str) -> None:
    cfg = level(state, dgd=True, momentum=True, readout=readout, chunk_size=3, grad_through_writes=False)
    assert_matches_reference(cfg, 7)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
@pytest.mark.parametrize("momentum", [False, True])
def test_newton_schulz_on_chunk_increments(chunk_size: int, momentum: bool) -> None:
    cfg = level("residual", readout="chunk_start", orthogonalize_steps=3, chunk_size=chunk_size,
                momentum=momentum, dgd=True)
    assert_matches_reference(cfg, 13)


@pytest.mark.parametrize("objective", ["dot", "l2"])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_rectangular_linear_memory(objective: str, chunk_size: int) -> None:
    cfg = level("linear", objective=objective, chunk_size=chunk_size, d_in=3, d_out=5, dgd=True)
    assert_matches_reference(cfg, 7)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    state=st.sampled_from(STATES),
    activation=st.sampled_from(ACTIVATION_CYCLE),
    objective=st.sampled_from(["dot", "l2", "reconstruction", "external"]),
    generated=st.booleans(),
    dgd=st.sampled_from(["off", "first", "all"]),
    momentum=st.booleans(),
    readout=st.sampled_from(["causal", "exclusive", "chunk_start"]),
    orthogonalize=st.booleans(),
    chunk_size=st.sampled_from([1, 3, 8]),
    length=st.sampled_from([1, 7, 13]),
    learned_retention=st.booleans(),
    grad_through_writes=st.booleans(),
    clip=st.sampled_from([None, None, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_random_levels(state, activation, objective, generated, dgd, momentum, readout, orthogonalize,
                       chunk_size, length, learned_retention, grad_through_writes, clip, seed) -> None:
    cfg = level(
        state,
        activation=activation,
        objective=objective,
        values="generated" if generated else "given",
        dgd=dgd != "off",
        dgd_layers="all" if dgd == "all" else "first",
        momentum=momentum,
        readout="chunk_start" if orthogonalize else readout,
        orthogonalize_steps=2 if orthogonalize else 0,
        chunk_size=chunk_size,
        grad_through_writes=grad_through_writes,
        clip=clip,
    )
    assert_matches_reference(cfg, length, learned_retention=learned_retention, seed=seed)


@st.composite
def level_shapes(draw) -> tuple[LevelConfig, int, tuple[int, int], bool, bool, int]:
    """A level of random widths and depth (mlp up to 4 matrices), options and chunk, with the batch,
    heads and length (1–50 tokens, up to 20 a chunk) drawn too; None where the config refuses them."""
    kind = draw(st.sampled_from(["linear", "mlp", "residual_mlp"]))
    objective = draw(st.sampled_from(["dot", "l2", "reconstruction", "external"]))
    values = draw(st.sampled_from(["given", "generated"]))
    d_in = draw(st.integers(1, 9))
    square = kind == "residual_mlp" or values == "generated" or objective == "reconstruction"
    readout = draw(st.sampled_from(["causal", "exclusive", "chunk_start"]))
    try:
        cfg = LevelConfig(
            kind, d_in=d_in, d_out=d_in if square else draw(st.integers(1, 9)), hidden=draw(st.integers(1, 12)),
            depth=draw(st.integers(1, 4)) if kind == "mlp" else 2, activation=draw(st.sampled_from(ACTIVATION_CYCLE)),
            objective=objective, values=values, dgd=draw(st.booleans()),
            dgd_layers=draw(st.sampled_from(["first", "all"])), momentum=draw(st.booleans()),
            chunk_size=draw(st.sampled_from([1, 1, 1, 2, 3, 5, 8, 16, 20])), readout=readout,
            orthogonalize_steps=draw(st.sampled_from([0, 0, 2])) if readout == "chunk_start" else 0,
            grad_through_writes=draw(st.booleans()), decay_before_write=draw(st.sampled_from([False, False, True])),
            clip=draw(st.sampled_from([None, None, None, 0.3, 2.0])))
    except AssertionError:  # a combination the level refuses (as the checker would)
        cfg = None
    sizes = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return cfg, draw(st.integers(1, 50)), sizes, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=RANDOM_SHAPES, deadline=None, derandomize=True)
@given(level_shapes())
def test_random_shapes(case) -> None:
    """test_random_levels at random widths, depths, batch, heads, chunk sizes and lengths, with or
    without the delta kernel: the fixed small shapes above leave most of these sizes untried."""
    cfg, length, sizes, learned_retention, delta_kernel, seed = case
    assume(cfg is not None)

    def reference_run(shake: float) -> list[torch.Tensor]:
        inputs = make_inputs(cfg, length, learned_retention=learned_retention, seed=seed, sizes=sizes)
        with torch.no_grad():
            for leaf in inputs.leaves():
                leaf.mul_(1 + shake * torch.randn(leaf.shape, generator=torch.Generator().manual_seed(1),
                                                  dtype=leaf.dtype))
            outputs, final = memory_level_reference(cfg, *inputs.arguments(), inputs.external_loss)
        return [outputs, *final.weights]

    exact, shaken = reference_run(0.0), reference_run(1e-14)
    # Some draws have inner dynamics that blow up (a `dot` objective on generated values amplifies itself,
    # one-wide keys at that): both paths overflow alike, and nothing is left to compare. Those are passed over.
    assume(all(bool(t.isfinite().all()) and t.abs().max() < 1e3 for t in exact))
    # Others are chaotic: inputs moved by 1e-14 move the reference's own results by up to 1e-6 (an audit,
    # a 4-matrix mlp reconstructing its inputs), so the fast path is held to what rounding alone does there.
    # And a one-wide linear state can cancel down to 1e-20 and less, where both paths keep only rounding of
    # the O(1) terms that cancelled (1e-16 and less apart in the audit): results under 1e-3 are compared
    # at 1e-3, the inputs being O(1)
    floor = 1e-3
    sensitivity = max(relative_error(moved, result, floor) for moved, result in zip(shaken, exact))
    assert_matches_reference(cfg, length, learned_retention=learned_retention, seed=seed,
                             allow_delta_kernel=delta_kernel, sizes=sizes, slack=1e3 * sensitivity, floor=floor)


def test_chunk_step_equals_level_on_one_chunk() -> None:
    cfg = level("residual", dgd=True, momentum=True, chunk_size=8)
    inputs = make_inputs(cfg, 8, learned_retention=True, seed=3)
    step_outputs, step_state = memory_chunk_step(cfg, *inputs.arguments())
    level_outputs, level_state = memory_level(cfg, *inputs.arguments())
    torch.testing.assert_close(step_outputs, level_outputs, rtol=0, atol=0)
    assert step_state.momentum is not None and level_state.momentum is not None
    stepped, leveled = step_state.weights + step_state.momentum, level_state.weights + level_state.momentum
    for actual, expected in zip(stepped, leveled):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_external_error_sees_its_chunk_of_the_signal() -> None:
    cfg = level("mlp2", objective="external", chunk_size=3)
    inputs = make_inputs(cfg, 7, learned_retention=False, seed=0)
    positions = torch.arange(7).expand(BATCH, 7)  # (B, T): each token's position as its signal
    seen = []

    def output_error(prediction, signal):
        seen.append((signal[0].tolist(), prediction.shape[-2]))
        return torch.zeros_like(prediction)

    memory_level(cfg, *inputs.arguments(), output_error, positions)
    assert seen == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6], 1)]


@pytest.mark.parametrize(
    ("cfg", "split"),
    [
        (level("residual", dgd=True, momentum=True, chunk_size=4), 8),
        (level("mlp3", readout="chunk_start", orthogonalize_steps=2, chunk_size=3), 6),
        (level("linear", dgd=True, chunk_size=1), 5),  # the delta kernel: any split
        (level("linear", objective="dot", chunk_size=4), 5),  # state-free error: any split
    ],
)
def test_streaming_in_two_halves_equals_one_shot(cfg: LevelConfig, split: int) -> None:
    inputs = make_inputs(cfg, 13, learned_retention=True, seed=7)
    state, keys, values, queries, lr, retention, momentum_decay = inputs.arguments()

    def part(tensor, begin, end):
        return None if tensor is None else tensor[:, :, begin:end]

    whole_outputs, whole_state = memory_level(cfg, *inputs.arguments())
    halves = []
    for begin, end in ((0, split), (split, 13)):
        outputs, state = memory_level(
            cfg, state, part(keys, begin, end), part(values, begin, end), part(queries, begin, end),
            part(lr, begin, end), part(retention, begin, end), part(momentum_decay, begin, end),
        )
        halves.append(outputs)
    assert relative_error(torch.cat(halves, dim=-2), whole_outputs) <= STREAM_RTOL
    for actual, expected in zip(state.weights + (state.momentum or []),
                                whole_state.weights + (whole_state.momentum or [])):
        assert relative_error(actual, expected) <= STREAM_RTOL


def test_dgd_linear_level_is_paper_eq_88() -> None:
    """Period 1, l2, DGD: M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t ∇L, the k kᵀ term counted twice."""
    cfg = level("linear", dgd=True, chunk_size=1)
    inputs = make_inputs(cfg, 13, learned_retention=True, seed=5)
    outputs, final = memory_level(cfg, *inputs.arguments())
    memory = inputs.state.weights[0]
    expected = []
    for t in range(13):
        k, v, q = inputs.keys[:, :, t], inputs.values[:, :, t], inputs.queries[:, :, t]
        eta, alpha = inputs.lr[:, :, t, None, None], inputs.retention[:, :, t, None, None]
        outer = k.unsqueeze(-1) * k.unsqueeze(-2)  # k kᵀ  (B, H, d, d)
        loss_gradient = ((memory @ k.unsqueeze(-1)).squeeze(-1) - v).unsqueeze(-1) * k.unsqueeze(-2)
        memory = memory @ (alpha * torch.eye(WIDTH, dtype=torch.float64) - eta * outer) - eta * loss_gradient
        expected.append((memory @ q.unsqueeze(-1)).squeeze(-1))
    assert relative_error(outputs, torch.stack(expected, dim=-2)) <= EXACT_RTOL
    assert relative_error(final.weights[0], memory) <= EXACT_RTOL


def test_dispatch_rule() -> None:
    assert uses_delta_kernel(level("linear", chunk_size=1))
    assert uses_delta_kernel(level("linear", objective="reconstruction", dgd=True, chunk_size=1))
    assert uses_delta_kernel(level("linear", objective="dot", chunk_size=16))
    assert uses_delta_kernel(level("linear", readout="chunk_start", chunk_size=1))
    assert not uses_delta_kernel(level("linear", objective="dot", dgd=True, chunk_size=16))
    assert not uses_delta_kernel(level("linear", objective="dot", readout="chunk_start", chunk_size=16))
    assert not uses_delta_kernel(level("linear", momentum=True, chunk_size=1))
    assert not uses_delta_kernel(level("linear", objective="external", chunk_size=1))
    assert not uses_delta_kernel(level("mlp2", chunk_size=1))
    assert not uses_delta_kernel(level("residual", chunk_size=1))
    assert not uses_delta_kernel(level("linear", chunk_size=1, clip=1.0))  # ρ_t reads the state's error
    # a state-free error (dot on given values) knows each token's clip factor before the recurrence
    assert uses_delta_kernel(level("linear", objective="dot", chunk_size=16, clip=1.0))
    assert not uses_delta_kernel(level("linear", objective="dot", dgd=True, chunk_size=1, clip=1.0))


def test_newton_schulz_matches_reference_and_orthogonalizes() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in ((3, 5, 8), (3, 8, 5), (2, 6, 6)):
        matrices = torch.randn(shape, generator=generator, dtype=torch.float64)
        fast = newton_schulz(matrices, 5)
        expected = torch.stack([newton_schulz_reference(m, 5) for m in matrices])
        assert relative_error(fast, expected) <= OUTPUT_RTOL
        singular_values = torch.linalg.svdvals(fast)
        assert singular_values.min() > 0.6 and singular_values.max() < 1.3


def test_newton_schulz_grows_a_low_rank_increments_rounding_noise_as_the_checker_says() -> None:
    """W0708's numbers (nldsl/semantics.py): on a float32 rank-1 increment the singular values that
    should stay 0 are rounding noise times the quintic's slope at 0 per step: small after Muon's 5
    steps, as large as the kept one from 15."""
    from nldsl.runtime.layers import MUON_COEFFICIENTS
    from nldsl.semantics import NEWTON_SCHULZ_SLOPE, NOISY_NEWTON_SCHULZ_STEPS

    assert NEWTON_SCHULZ_SLOPE == MUON_COEFFICIENTS[0]
    generator = torch.Generator().manual_seed(0)
    increment = torch.randn(32, 1, generator=generator) @ torch.randn(1, 32, generator=generator)

    def noise(steps: int) -> float:
        return torch.linalg.svdvals(newton_schulz(increment, steps).double())[1].item()

    assert noise(5) < 1e-4 and noise(NOISY_NEWTON_SCHULZ_STEPS) < 5e-3
    assert noise(12) > 2e-2 and noise(15) > 0.5


def test_initial_state_shapes_and_scale() -> None:
    cfg = level("residual", momentum=True)
    weights = init_memory_weights(cfg, HEADS, generator=torch.Generator().manual_seed(0))
    assert [tuple(w.shape) for w in weights] == [(HEADS, HIDDEN, WIDTH), (HEADS, WIDTH, HIDDEN)]
    assert weights[1].std() < 0.5 * weights[0].std()
    state = initial_memory_state(cfg, weights, BATCH)
    assert state.weights[0].shape == (BATCH, HEADS, HIDDEN, WIDTH)
    assert state.momentum is not None and all(m.abs().sum() == 0 for m in state.momentum)


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(AssertionError):
        level("residual", d_out=WIDTH + 1)
    with pytest.raises(AssertionError):
        level("linear", d_out=WIDTH + 1, values="generated")
    with pytest.raises(AssertionError):
        level("mlp2", orthogonalize_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [level("residual", dgd=True, momentum=True, chunk_size=4), level("linear", dgd=True, chunk_size=1),
     level("residual", dgd=True, momentum=True, chunk_size=4, clip=0.5)],
    ids=["residual_dgd_momentum", "linear_delta_kernel", "residual_clipped"],
)
def test_compiled_level_matches_eager(cfg: LevelConfig) -> None:
    inputs = make_inputs(cfg, 7, learned_retention=True, seed=11)

    def run(*arguments):
        return memory_level(cfg, *arguments)

    # dynamic=False, as chunk bodies compile (runtime/chunked.py): every case compiles this same code
    # object, so by default dynamo would make the config's changing ints (chunk_size) symbolic from the
    # third case on, and inductor (2.13) then fails on a Mod of them (ValueError "Exponent must be
    # non-negative"), with or without a clip
    compiled = torch.compile(run, fullgraph=True, dynamic=False)
    outputs, final, gradients = outputs_and_gradients(compiled, inputs)
    expected_outputs, expected_final, expected_gradients = outputs_and_gradients(run, inputs)
    assert relative_error(outputs, expected_outputs) <= COMPILE_RTOL
    for actual, expected in zip(final.weights, expected_final.weights):
        assert relative_error(actual, expected) <= COMPILE_RTOL
    for actual, expected in zip(gradients, expected_gradients):
        assert relative_error(actual, expected) <= COMPILE_RTOL


def test_last_row_coefficients_equal_the_last_row_of_the_full_ones_over_a_long_chunk() -> None:
    # 300 tokens of β ≈ 0.05: B_t underflows far below the smallest double, the log domain must hold.
    from nldsl.runtime.memory import _dual_coefficients, _last_row_coefficients

    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 300)
    retention = 0.9 + 0.1 * torch.rand(shape, generator=generator, dtype=torch.float64)
    momentum = 0.02 + 0.06 * torch.rand(shape, generator=generator, dtype=torch.float64)
    lr = torch.rand(shape, generator=generator, dtype=torch.float64)
    for beta in (None, momentum):
        full, full_momentum = _dual_coefficients(retention, beta, lr, lr)
        last, last_momentum = _last_row_coefficients(retention, beta, lr, lr)
        torch.testing.assert_close(last.state[..., -1], full.state[..., -1], rtol=1e-12, atol=0)
        torch.testing.assert_close(last.writes[..., -1, :], full.writes[..., -1, :], rtol=1e-10, atol=1e-300)
        assert torch.isfinite(last.writes).all()
        if beta is not None:
            assert last.momentum is not None and full.momentum is not None
            assert last_momentum is not None and full_momentum is not None
            torch.testing.assert_close(last.momentum[..., -1], full.momentum[..., -1], rtol=1e-10, atol=0)
            torch.testing.assert_close(last_momentum.writes[..., -1, :], full_momentum.writes[..., -1, :],
                                       rtol=1e-10, atol=1e-300)


def test_apply_weights_gives_the_weight_gradient_in_the_weight_layout() -> None:
    # A transposed weight gradient made the compiled backward add the state's gradients in a
    # strided scalar loop (memory.apply_weights says how much that cost).
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(2, 3, 7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 7, 5, generator=generator, dtype=torch.float64)
    outputs = apply_weights(weights, inputs)
    torch.testing.assert_close(outputs, inputs @ weights.mT, rtol=1e-12, atol=0)
    weights_grad, inputs_grad = torch.autograd.grad(outputs, (weights, inputs), grad)
    assert weights_grad.is_contiguous()
    torch.testing.assert_close(weights_grad, grad.mT @ inputs, rtol=1e-12, atol=0)
    torch.testing.assert_close(inputs_grad, grad @ weights, rtol=1e-12, atol=0)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("objective", ["l2", "external"])
@pytest.mark.parametrize("momentum", [False, True])
def test_clipped_levels_match_the_reference(state: str, objective: str, momentum: bool, monkeypatch) -> None:
    """A clip that binds on some tokens and not on others (the gradient norms of these inputs spread
    around 1, as the recorded factors show), through DGD and generated values where the objective has
    them, with momentum or not."""
    from nldsl.runtime import memory

    options = dict(objective=objective, momentum=momentum, chunk_size=3, dgd=True)
    if objective == "l2":
        options["values"] = "generated" if state == "residual" else "given"
    cfg = level(state, **options, clip=1.0)
    factors, real = [], memory.clip_scale

    def recording(clip, squared_norms):
        result = real(clip, squared_norms)
        factors.append(result.detach().flatten())
        return result

    monkeypatch.setattr(memory, "clip_scale", recording)
    assert_matches_reference(cfg, 13)
    bound = torch.cat(factors) < 1 - 1e-9  # (an unbound factor is clip·rsqrt(clip²), 1 to rounding)
    assert bound.any() and not bound.all()
    assert_matches_reference(cfg, 13, allow_delta_kernel=False, learned_retention=False, seed=5)


def clipped_rule_by_hand(keys, values, queries, lr, memory, clip):
    """The delta rule with each token's gradient clipped to norm `clip`, a linear memory at period 1:
    G_t = (W k_t − v_t) k_tᵀ, W ← W − η_t min(1, clip/‖G_t‖_F) G_t, y_t = W q_t (after the write)."""
    outputs = []
    for t in range(keys.shape[-2]):
        k, v, q = keys[..., t, :], values[..., t, :], queries[..., t, :]
        error = torch.einsum("bhoi,bhi->bho", memory, k) - v
        gradient = error.unsqueeze(-1) * k.unsqueeze(-2)  # (B, H, out, in)
        norm = gradient.flatten(-2).norm(dim=-1)
        scale = torch.where(norm > clip, clip / norm, torch.ones_like(norm))
        memory = memory - (lr[..., t] * scale)[..., None, None] * gradient
        outputs.append(torch.einsum("bhoi,bhi->bho", memory, q))
    return torch.stack(outputs, dim=-2), memory


@pytest.mark.parametrize("clip", [0.3, 1.0, 1e9])
def test_a_clip_is_the_delta_rule_with_clipped_gradients(clip: float) -> None:
    """Against the textbook rule written in the test; a clip of 1e9 never binds and gives the
    unclipped level exactly, a small one changes the result."""
    cfg = level("linear", chunk_size=1, clip=clip)
    inputs = make_inputs(cfg, 11, learned_retention=False, seed=2)
    with torch.no_grad():
        outputs, final = memory_level(cfg, *inputs.arguments())
        expected, memory = clipped_rule_by_hand(inputs.keys, inputs.values, inputs.queries, inputs.lr,
                                                inputs.state.weights[0], clip)
        unclipped, _ = memory_level(dataclasses.replace(cfg, clip=None), *inputs.arguments())
    assert relative_error(outputs, expected) <= EXACT_RTOL
    assert relative_error(final.weights[0], memory) <= EXACT_RTOL
    assert (relative_error(outputs, unclipped) <= EXACT_RTOL) == (clip == 1e9)


def test_a_clip_keeps_an_unstable_memory_finite() -> None:
    """η = 3 with unit keys overshoots each write (|1 − η‖k‖²| > 1), so the delta rule's error grows
    geometrically and overflows; with each gradient clipped, every write is at most η·clip and the
    state grows at most linearly."""
    cfg = level("linear", chunk_size=4)
    inputs = make_inputs(cfg, 400, learned_retention=False, seed=0)
    lr = torch.full_like(inputs.lr, 3.0)
    arguments = (inputs.state, inputs.keys, inputs.values, inputs.queries, lr, None, None)
    with torch.no_grad():
        unstable = memory_level(cfg, *arguments, allow_delta_kernel=False)[1].weights[0]
        clipped = memory_level(dataclasses.replace(cfg, clip=1.0), *arguments)[1].weights[0]
    assert not unstable.isfinite().all() or unstable.abs().max() > 1e30
    start = inputs.state.weights[0].detach()
    assert (clipped - start).flatten(-2).norm(dim=-1).max() <= 3.0 * 1.0 * 400


@pytest.mark.parametrize("objective", ["l2", "dot"])
def test_a_clipped_gated_delta_rule_decays_before_its_write(objective: str) -> None:
    """Gated DeltaNet (retention before the write) with a clip: the l2 error reads the decayed state,
    so the level leaves the delta kernel for the chunk step, which decays first too; a dot objective
    stays in the kernel. Both against the reference, which clips at the decayed state."""
    cfg = level("linear", objective=objective, chunk_size=1, decay_before_write=True, clip=0.5)
    assert uses_delta_kernel(cfg) == (objective == "dot")
    assert_matches_reference(cfg, 13)


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_a_clipped_hebbian_level_runs_the_delta_kernel_exactly(chunk_size: int) -> None:
    """Linear attention with a clip: −v kᵀ reads no state, so each token's factor is known beforehand
    and the delta kernel runs it; the chunk loop and the reference agree with it."""
    cfg = level("linear", objective="dot", chunk_size=chunk_size, clip=0.5)
    assert uses_delta_kernel(cfg)
    assert_matches_reference(cfg, 13)
    assert_matches_reference(cfg, 13, allow_delta_kernel=False)

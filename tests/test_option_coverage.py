"""Compiled module vs reference interpreter (float64, outputs + every parameter gradient, rel err <= 1e-6)
and two-call streaming vs one call, for language options that neither tests/test_compiler.py's nor
tests/test_wide_specs.py's random generators produce (found by a coverage audit): retention before
the write on cms and selfmod levels, detached selfmod writes, nesting, tiny widths and lengths,
chunks past the fused scan, the fused write read at chunk start, and calls longer than training's."""

from __future__ import annotations

import pytest
import torch

from nldsl import loader
from nldsl.checker import check_text
from nldsl.interpreter import interpret
from nldsl.runtime.chunked import compile_loss

RTOL = 1e-6
LENGTH = 13  # a multiple of no period or segment below


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def checked(block: str, *, dim: int = 8, layers: int = 1, seq_len: int = 16, extra: str = ""):
    text = (f"model m {{\n  vocab = 13\n  dim = {dim}\n  layers = {layers}\n{extra}  block {{\n{block}\n  }}\n}}\n"
            f"train {{ seq_len = {seq_len} }}\n")
    result = check_text(text, "coverage.nl")
    errors = [f"{d.code} {d.message}" for d in result.diagnostics if d.severity == "error"]
    assert not errors, errors
    return result.spec


def perturbed(spec, seed: int = 0):
    module = loader.build_module(spec)
    torch.manual_seed(seed)
    model = module.build(dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def tokens_for(spec, length: int = LENGTH, batch: int = 2, seed: int = 0):
    return torch.randint(0, spec.model.vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_matches_interpreter(spec, length: int = LENGTH, batch: int = 2, seed: int = 0) -> None:
    model = perturbed(spec, seed)
    tokens = tokens_for(spec, length, batch, seed)
    params = dict(model.named_parameters())
    compiled, reference = model(tokens), interpret(spec, params, tokens)
    error = ((compiled - reference).norm() / reference.norm()).item()
    assert error <= RTOL, f"outputs differ: {error:.2e}"
    probe = torch.randn(compiled.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    ga = torch.autograd.grad((compiled * probe).sum(), list(params.values()), allow_unused=True)
    gb = torch.autograd.grad((reference * probe).sum(), list(params.values()), allow_unused=True)
    for name, a, b in zip(params, ga, gb):
        a = torch.zeros_like(params[name]) if a is None else a  # a stacked unused memory reads as zero
        b = torch.zeros_like(params[name]) if b is None else b
        scale = b.norm().item()
        error = (a - b).norm().item() / scale if scale > 0 else (a - b).norm().item()
        assert error <= RTOL, f"{name}: gradient relative error {error:.2e}"


def assert_streams(spec, cut: int, length: int = LENGTH) -> None:
    model = perturbed(spec, 3)
    tokens = tokens_for(spec, length, 2, 3)
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    with torch.no_grad():
        whole = model(tokens, targets)
        first, state = model(tokens[:, :cut], targets[:, :cut], return_state=True)
        second = model(tokens[:, cut:], targets[:, cut:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-9, atol=1e-9)


def mem(level: str, extra: str = "heads = 2") -> str:
    return f"memory {{ {extra} level {{ {level} }} }}"


# name: (block, stream cut on a chunk boundary of every level, or None: not streamable at all cuts)
CASES = {
    # retention_order = before_write on cms levels (the generators put it only on memory/context levels)
    "cms_sequential_before_write": ("cms { variant = sequential level a { state = linear period = 1 "
                                    "retention = learned(max = 1.0) retention_order = before_write lr = 0.05 "
                                    "objective = reconstruction } level b { period = 2 } }", 6),
    "cms_independent_before_write": ("cms { variant = independent level a { state = linear init = zeros period = 1 "
                                     "retention = per_head(0.9) retention_order = before_write lr = 0.05 "
                                     "objective = reconstruction } level b { period = 3 } }", 6),
    "selfmod_memory_before_write": ("selfmod { heads = 2 conv = 0 adaptive = [k, v] level memory { state = linear "
                                    "period = 1 retention = 0.9 retention_order = before_write } "
                                    "level projections { period = 2 readout = chunk_start } }", 4),
    "context_before_write": ("context c { segment = 3 memory { heads = 2 conv = 0 level { period = 1 "
                             "retention = learned(max = 1.0) retention_order = before_write init = zeros } } "
                             "attention { heads = 2 } }", 6),
    # grad_through_writes = false on a selfmod (never generated there)
    "selfmod_memory_detached": ("selfmod { heads = 2 conv = 0 adaptive = [k, v, eta, alpha] level memory { "
                                "period = 3 grad_through_writes = false momentum = 0.5 } "
                                "level projections { period = 2 readout = chunk_start } }", 6),
    "selfmod_projections_detached": ("selfmod { heads = 2 conv = 0 adaptive = [q, k, v, eta, alpha] level memory { "
                                     "period = 3 } level projections { period = 2 readout = chunk_start "
                                     "grad_through_writes = false } }", 6),
    # selfmod settings never generated
    # (static keys and given values: from zeros, M_k's zero keys or targets of their own would never write, E0601)
    "selfmod_linear_zero_states": ("selfmod { heads = 2 conv = 0 adaptive = [alpha] level memory { state = linear "
                                   "init = zeros values = given period = 3 lr = 0.1 } level projections { period = 2 "
                                   "readout = chunk_start state = linear init = zeros values = given } }", 6),
    "selfmod_projections_given_dgd_all": ("selfmod { heads = 2 conv = 2 adaptive = [k, v, eta] level memory { "
                                          "period = 2 } level projections { period = 3 readout = chunk_start "
                                          "values = given objective = l2 rule = dgd dgd_layers = all } }", 6),
    "selfmod_generated_retention_max": ("selfmod { heads = 2 conv = 0 adaptive = [k, alpha, eta] level memory { "
                                        "period = 2 retention = generated(max = 0.9) lr = generated } }", 6),
    "selfmod_q_only": ("selfmod { heads = 2 conv = 2 adaptive = [q] level memory { period = 2 } "
                       "level projections { period = 3 readout = chunk_start } }", 6),
    "selfmod_heads_equal_dim": ("selfmod { heads = 8 conv = 0 level memory { period = 2 momentum = 0.5 } "
                                "level projections { period = 3 readout = chunk_start } }", 6),
    # context with the memory switches and attention options the generators leave at defaults
    "context_switches": ("context c { segment = 6 memory { heads = 2 conv = 3 activation = none qk_norm = none "
                         "value_norm = l2 output_norm = false output_gate = false level { period = 3 state = mlp "
                         "momentum = 0.5 } } attention { heads = 2 qk_norm = true rope = false persistent = 1 } }", 6),
    "context_segment_one": ("context c { segment = 1 memory { heads = 2 conv = 2 level { period = 1 "
                            "retention = 0.9 } } attention { heads = 2 persistent = 2 } }", 5),
    "context_segment_past_length": ("context c { segment = 20 memory { heads = 2 conv = 2 level { period = 5 "
                                    "state = mlp readout = chunk_start orthogonalize = newton_schulz(2) "
                                    "momentum = 0.5 } } attention { heads = 2 } }", None),
    # nesting the generators never produce
    "parallel_holding_context": ("parallel p { combine = sum context c { segment = 4 memory { heads = 2 conv = 0 "
                                 "level { period = 2 } } attention { heads = 2 } } mlp { } }", 8),
    "parallel_in_parallel": ("parallel p { combine = sum parallel q { combine = gate memory r { heads = 2 level { "
                             "period = 1 momentum = 0.5 } } memory { heads = 2 level { period = 2 } } } mlp { } }", 4),
    "parallel_gate_cms_selfmod": ("parallel p { combine = gate cms c { level a { period = 2 } } selfmod s { "
                                  "heads = 2 conv = 0 level memory { period = 2 } } }", 6),
    # states and gates past the generators' ranges
    "deep_mlp_relu": (mem("state = mlp(depth = 5, expansion = 1.5, activation = relu) period = 3 "
                          "readout = chunk_start rule = dgd dgd_layers = all momentum = 0.5"), 6),
    "head_width_one_newton_schulz": (mem("state = mlp(expansion = 0.1) period = 3 readout = chunk_start "
                                         "orthogonalize = newton_schulz(2) rule = dgd dgd_layers = all "
                                         "lr = learned(max = 0.1) momentum = 0.5", "heads = 8"), 6),
    "learned_gates_below_one": (mem("state = linear lr = learned(max = 0.5) period = 4 "
                                    "retention = learned(max = 0.5) momentum = learned(max = 0.3)"), 8),
    "zero_lr_delta_before_write": (mem("state = linear lr = 0 period = 1 retention = learned() "
                                       "retention_order = before_write"), 5),
    "zero_lr_mlp_momentum": (mem("state = mlp objective = l2 lr = 0 period = 4 momentum = 0.5"), 8),
    "cms_relu_residual_and_depth4": ("cms { level a { state = residual_mlp(expansion = 2, activation = relu) "
                                     "period = 2 retention = 0.9 } level b { state = mlp(depth = 4, "
                                     "activation = gelu) period = 4 } }", 8),
    "nested_four_levels": ("cms { variant = nested level a { period = 1 momentum = 0.5 retention = 0.9 "
                           "orthogonalize = newton_schulz(2) rule = dgd dgd_layers = all } level b { period = 2 "
                           "lr = 0.5 } level c { period = 4 lr = 0.25 } level d { period = 8 lr = 1.0 } }", 8),
    # a clip on the levels the fused write runs (the projections: the clip then scales the kernel's
    # writes) and on a nested cms (the generators put one on a selfmod's main memory only)
    "selfmod_projections_clipped": ("selfmod { heads = 2 conv = 0 adaptive = [k, v, eta, alpha] level memory { "
                                    "period = 3 momentum = 0.5 clip = 0.3 } level projections { period = 2 "
                                    "readout = chunk_start clip = 0.2 } }", 6),
    "gated_delta_clipped": (mem("state = linear period = 1 retention = learned(max = 1.0) "
                                "retention_order = before_write clip = 0.3"), 5),
    "nested_clipped": ("cms { variant = nested level a { period = 2 momentum = 0.5 clip = 0.2 } level b { "
                       "period = 4 lr = 0.5 } }", 8),
    "cms_clock_and_in_context_mixed": ("cms { variant = independent level a { period = 2 } level b { "
                                       "period = steps(2) update = outer } level c { period = 64 } }", 4),
    # the fused C++ memory write read at chunk start (memory.py's pipelined path): a two-matrix state with
    # the l2 objective, no Newton-Schulz; the generators give such levels Newton-Schulz or another objective
    "fused_mlp_chunk_start": (mem("state = mlp objective = l2 readout = chunk_start period = 3 momentum = 0.5 "
                                  "retention = learned() rule = dgd"), 6),
    "fused_residual_generated_chunk_start": (mem("state = residual_mlp objective = l2 values = generated "
                                                 "readout = chunk_start period = 3 lr = learned(max = 0.2)"), 6),
    "two_unnamed_of_each_kind": ("memory { heads = 2 level { period = 2 } }\n memory { heads = 2 level { period = 3 "
                                 "state = mlp } }\n cms { level { period = 2 } }\n cms { level { period = 2 } "
                                 "level { period = 4 } }", 12),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_uncovered_option_matches_interpreter(case: str) -> None:
    assert_matches_interpreter(checked(CASES[case][0]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_uncovered_option_streams_in_two_calls(case: str) -> None:
    if CASES[case][1] is None:
        pytest.skip("no cut falls on a segment boundary inside the sequence")
    assert_streams(checked(CASES[case][0]), CASES[case][1])


def test_model_norm_eps_matches_interpreter() -> None:
    spec = checked("memory { heads = 2 level { period = 2 } }\n mlp { }", extra="  norm_eps = 0.1\n")
    assert_matches_interpreter(spec)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_tiny_widths_match_interpreter(dim: int) -> None:
    block = ("memory { heads = 1 level { state = mlp(expansion = 1.5) period = 3 readout = chunk_start "
             "orthogonalize = newton_schulz(2) momentum = 0.5 rule = dgd } }\n"
             "selfmod { heads = 1 conv = 2 adaptive = [q, k, v, eta, alpha] level memory { period = 2 } }\n"
             "context c { segment = 4 memory { heads = 1 level { period = 2 } } attention { heads = 1 rope = false "
             "persistent = 1 } }")
    spec = checked(block, dim=dim)
    model = perturbed(spec)
    tokens = tokens_for(spec, 11)
    params = dict(model.named_parameters())
    compiled, reference = model(tokens), interpret(spec, params, tokens)
    assert ((compiled - reference).norm() / reference.norm()).item() <= RTOL


@pytest.mark.parametrize("length", [1, 2, 3])
def test_lengths_shorter_than_every_period(length: int) -> None:
    block = CASES["nested_four_levels"][0] + "\n" + CASES["context_switches"][0]
    assert_matches_interpreter(checked(block), length=length, batch=3)


@pytest.mark.parametrize("case", ["context_switches", "selfmod_memory_detached", "cms_sequential_before_write",
                                  "parallel_holding_context"])
def test_recomputed_stretches_equal_the_plain_loop(case: str) -> None:
    spec = checked(CASES[case][0])
    model = perturbed(spec)
    tokens = tokens_for(spec, 29)
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    params = list(model.parameters())

    def run(loss):
        value = loss(tokens, targets)
        return [value.detach(), *torch.autograd.grad(value, params, allow_unused=True)]

    plain = run(model.loss)
    for stretch in (1, 3):
        for a, b in zip(run(compile_loss(model.loss, False, recompute=stretch)), plain):
            assert (a is None) == (b is None)
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("level", [
    "state = linear objective = l2 period = 70 retention = learned()",
    "state = linear objective = dot readout = chunk_start period = 70 retention = learned() momentum = 0.5",
    "state = residual_mlp objective = l2 readout = exclusive period = 70 retention = learned() momentum = 0.5",
])
def test_chunks_longer_than_the_fused_scan_length(level: str) -> None:
    """Periods past memory.FUSED_SCAN_LENGTH (64) take torch.cumsum / logcumsumexp; the generators stop at 8."""
    spec = checked(f"memory {{ heads = 2 level {{ {level} }} }}", seq_len=128)
    assert_matches_interpreter(spec, length=75)
    assert_streams(spec, cut=70, length=75)


# A selfmod whose memory level detaches its writes, and whose projection memories' one write of a
# training sequence is never read (chunk_start at a period of seq_len, or longer): W0706 says M_k,
# M_v and M_η get no gradient, and the compiled module passes their θ_0 in detached. A longer call
# reads the projection memories' writes through M_α (or M_q), which carry k, v and η to the loss.
LONG_CALLS = {
    "alpha_adaptive": ("selfmod { heads = 2 conv = 2 adaptive = [k, v, eta, alpha] level memory { period = 2 "
                       "grad_through_writes = false } level projections { period = 16 readout = chunk_start } }",
                       16, ("k", "v", "eta")),
    "q_adaptive": ("selfmod { heads = 2 conv = 2 adaptive = [q, k, alpha] level memory { period = 2 "
                   "grad_through_writes = false } level projections { period = 32 readout = chunk_start } }",
                   32, ("k",)),
}


@pytest.mark.parametrize("case", sorted(LONG_CALLS))
def test_detached_projection_memories_learn_in_a_call_longer_than_their_period(case: str) -> None:
    block, period, unreached = LONG_CALLS[case]
    spec = checked(block)
    assert_matches_interpreter(spec, length=period + 3)
    model = perturbed(spec)
    for length, reached in ((period, False), (period + 1, True)):
        loss = model(tokens_for(spec, length)).square().sum()
        weights = [p for name, p in model.named_parameters()
                   if any(name.endswith(f"{n}_memory_w1") for n in unreached)]
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        assert all((g is not None and bool(g.norm() > 0)) is reached for g in grads), (length, grads)

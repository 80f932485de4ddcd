"""Compiled against interpreted on a wider family of random specs than tests/test_compiler.py's.

That test's generator keeps to the common settings at short lengths (5–11 tokens, two heads, dim 8).
This one reaches what it leaves out: Newton–Schulz on linear, MLP and residual states with and
without momentum, `retention_order = before_write`, learned gates with their own `init`, periods up
to 8 at lengths 13–40 (never a multiple of every period), one to four heads, dims 8–16, three
layers, selfmods with their own projection settings, three-level nested CMS and outer levels on
`steps(…)`, three-branch parallels and attention windows.

Both generators' specs also stream: cut at a multiple of every chunk with the state carried, a call
pair equals one call (`test_random_spec_streams_in_two_calls`; the shipped specs' cases are in
tests/test_compiler.py). And at any cut they are causal, give a prefix's outputs on the prefix alone,
and keep the sequences of a batch apart (`test_a_random_spec_is_causal_prefix_consistent_and_batch_independent`).

Three things are set aside here, each for a reason measured when it was added:
- specs whose in-context states diverge. Their outputs can stay finite behind an output norm while
  the states reach 1e57–1e98 in float64; there the two executions' gradients, both exact in exact
  arithmetic, differ by rounding multiplied beyond any tolerance (finite differences side with the
  interpreter), and in float32 such a state has long overflowed. A spec counts as diverged when a
  state entry passes `DIVERGED` or a gradient's norm passes `UNSTABLE_GRADIENT`;
- specs that are chaotic on the test's tokens: where parameters nudged by 1e-15 move the outputs
  past 1e-9 (`test_compiler.amplifies_rounding`, which names the one a run without derandomize found);
- gradients that are a vanishing share of the whole: η on a level with `orthogonalize` reaches the
  loss only through Newton–Schulz's ε (docs/semantics.md §1.5), about 1e-6 of an ordinary
  gradient, and a mixing weight at its symmetric point can be 1e-9. Each gradient is compared
  relative to its own norm, or to `FLOOR` of all gradients' norm where that is larger. An adaptive
  projection memory that nothing reads (W0706) has a zero gradient in the compiled module, which
  stacks the memories, and none in the interpreter: both read as zero.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_compiler import FLOOR, GRAD_RTOL, OUTPUT_RTOL, amplifies_rounding, perturbed_model, random_specs

from nldsl import spec as S
from nldsl.checker import check_text
from nldsl.interpreter import interpret
from nldsl.runtime.blocks import _tensors
from nldsl.semantics import context_segments, in_context_periods, walk_layers

WIDE_SPECS = int(os.environ.get("NLDSL_WIDE_SPECS", "60"))
DIVERGED = 1e4  # largest state entry of a spec that has not diverged
UNSTABLE_GRADIENT = 1e6  # largest gradient norm of one that is not on its way

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def gate(draw, name: str, allow_none: bool, lrs: tuple[float, ...] = (0.05, 0.1)) -> str:
    kind = draw(st.sampled_from(["constant", "per_head", "learned", "learned_init"] + (["none"] if allow_none else [])))
    if kind == "none":
        return ""
    if name == "lr":
        value = draw(st.sampled_from(lrs))
    elif name == "retention":
        value = draw(st.sampled_from([0.9, 0.95, 1.0, 0.0, 0.5] if kind == "constant" else [0.9, 0.95]))
    else:
        value = draw(st.sampled_from([0.5, 0.9] + ([0.0] if kind == "constant" else [])))
    if kind == "constant":
        return f"{name} = {value}"
    if kind == "per_head":
        return f"{name} = per_head({value})"
    bound = 2 * value if name == "lr" else min(1.0, 2 * value)
    init = f", init = {value}" if kind == "learned_init" else ""
    return f"{name} = learned(max = {bound}{init})"


def state(draw) -> str:
    kind = draw(st.sampled_from(["linear", "mlp", "residual_mlp"]))
    activation = draw(st.sampled_from(["silu", "gelu", "relu", "tanh"]))
    if kind == "mlp":
        return (f"mlp(depth = {draw(st.integers(1, 3))}, expansion = {draw(st.sampled_from([1, 2, 0.5]))}, "
                f"activation = {activation})")
    if kind == "residual_mlp":
        return f"residual_mlp(expansion = {draw(st.sampled_from([1, 2]))}, activation = {activation})"
    return "linear"


def rule(draw) -> str:
    return f"rule = {draw(st.sampled_from(['gd', 'dgd']))} dgd_layers = {draw(st.sampled_from(['first', 'all']))}"


def newton_schulz(draw) -> str:
    return f"orthogonalize = newton_schulz({draw(st.integers(1, 5))})"


@st.composite
def memory_level(draw) -> str:
    mode = draw(st.sampled_from(["free", "orthogonal", "before_write"]))
    kind = "linear" if mode == "before_write" else state(draw)
    if mode == "before_write":  # Gated DeltaNet's order: a linear state decayed before each write
        lines = [draw(st.sampled_from(["retention = learned(max = 1.0)", "retention = 0.9", "retention = per_head(0.9)",
                                       "retention = learned(max = 1.0, init = 0.9)"])),
                 "retention_order = before_write", "period = 1"]
    else:
        lines = [gate(draw, "retention", True), gate(draw, "momentum", True), f"period = {draw(st.integers(1, 8))}"]
    readout = "chunk_start" if mode == "orthogonal" else draw(st.sampled_from(["causal", "exclusive", "chunk_start"]))
    objective = draw(st.sampled_from(["dot", "l2", "reconstruction"]))
    values = draw(st.sampled_from(["given", "generated"]))
    lines += [f"state = {kind}", f"objective = {objective}", f"values = {values}",
              rule(draw), gate(draw, "lr", False),
              f"grad_through_writes = {draw(st.sampled_from(['true', 'true', 'false']))}",
              f"readout = {readout}"]
    if mode == "orthogonal":
        lines.append(newton_schulz(draw))
    # from zeros, a level whose targets are its own predictions never writes (E0601)
    if kind == "linear" and (values == "given" or objective == "reconstruction") and draw(st.booleans()):
        lines.append("init = zeros")
    return "level {\n      " + "\n      ".join(line for line in lines if line) + "\n    }"


def switches(draw, *names: str) -> str:
    values = {"conv": [0, 2, 3, 4], "activation": ["silu", "none"], "qk_norm": ["l2", "none"],
              "value_norm": ["l2", "none"], "output_norm": ["true", "false"], "output_gate": ["true", "false"]}
    return "\n".join(f"    {name} = {draw(st.sampled_from(values[name]))}" for name in names)


@st.composite
def selfmod(draw) -> str:
    adaptive = draw(st.lists(st.sampled_from(["q", "k", "v", "eta", "alpha"]), unique=True, max_size=5))
    readout = draw(st.sampled_from(["causal", "exclusive", "chunk_start"]))
    memory = [f"state = {state(draw)}", f"period = {draw(st.integers(1, 8))}", f"readout = {readout}",
              rule(draw), f"objective = {draw(st.sampled_from(['l2', 'l2', 'dot', 'reconstruction']))}",
              f"values = {draw(st.sampled_from(['given', 'generated', 'generated']))}",
              f"lr = generated(max = {draw(st.sampled_from([0.1, 0.2]))})" if "eta" in adaptive
              else gate(draw, "lr", False),
              "retention = generated" if "alpha" in adaptive else gate(draw, "retention", True),
              gate(draw, "momentum", True)]
    if readout == "chunk_start" and draw(st.booleans()):
        memory.append(newton_schulz(draw))
    projections = [f"period = {draw(st.integers(1, 8))}", "readout = chunk_start"]
    optional = [f"state = {state(draw)}", f"rule = {draw(st.sampled_from(['gd', 'dgd']))}",
                draw(st.sampled_from(["momentum = none", "momentum = 0.5", "momentum = learned(max = 0.9)"])),
                newton_schulz(draw), f"objective = {draw(st.sampled_from(['l2', 'dot', 'reconstruction']))}"]
    projections += [line for line in optional if draw(st.booleans())]
    projections_section = f"    level projections {{ {' '.join(projections)} }}\n" if draw(st.integers(0, 4)) else ""
    return (f"selfmod {{\n    heads = {draw(st.sampled_from([1, 2, 4]))}\n    adaptive = [{', '.join(adaptive)}]\n"
            f"{switches(draw, 'conv', 'qk_norm', 'value_norm', 'output_norm', 'output_gate')}\n"
            f"    level memory {{ {' '.join(line for line in memory if line)} }}\n{projections_section}  }}")


@st.composite
def cms(draw) -> str:
    variant = draw(st.sampled_from(["sequential", "independent", "nested"]))
    count = draw(st.integers(2, 3)) if variant == "nested" else draw(st.integers(1, 3))
    period = draw(st.integers(1, 5))
    levels = []
    first_state = ""
    for index in range(count):
        update = "in_context" if variant == "nested" else draw(st.sampled_from(["in_context"] * 3 + ["outer"]))
        clocked = update == "outer" and draw(st.booleans())
        parts = [f"period = steps({draw(st.integers(1, 3))})" if clocked else f"period = {period}",
                 f"update = {update}"]
        if variant == "nested" and index > 0:  # a slower nested level only moves toward the fastest one
            parts.append(f"state = {first_state} lr = {draw(st.sampled_from([0.5, 0.25, 1.0]))}")
        else:
            first_state = draw(st.sampled_from(["mlp(expansion = 2)", "residual_mlp(expansion = 1)", "mlp(depth = 1)",
                                                "mlp(depth = 3, expansion = 1, activation = tanh)", "linear"]))
            parts += [f"state = {first_state}", f"objective = {draw(st.sampled_from(['surprise', 'reconstruction']))}",
                      gate(draw, "lr", False, (0.01, 0.05)), gate(draw, "momentum", True), rule(draw),
                      f"grad_through_writes = {draw(st.sampled_from(['true', 'false']))}"]
            if draw(st.booleans()):
                parts.append(gate(draw, "retention", True))
            if draw(st.integers(0, 3)) == 0:
                parts.append(newton_schulz(draw))
        if first_state == "linear" and update == "in_context" and draw(st.booleans()):
            parts.append("init = zeros")
        levels.append(f"level l{index} {{ {' '.join(part for part in parts if part)} }}")
        period *= draw(st.integers(1, 3 if variant == "nested" else 2))
    return f"cms {{\n    variant = {variant}\n    " + "\n    ".join(levels) + "\n  }"


def attention(draw, dim: int) -> str:
    heads = draw(st.sampled_from([1, 2, 4]))
    rope = draw(st.sampled_from(["true", "false"])) if (dim // heads) % 2 == 0 else "false"
    return (f"attention {{ heads = {heads} window = {draw(st.sampled_from([0, 1, 3, 5, 7]))} "
            f"persistent = {draw(st.integers(0, 3))} qk_norm = {draw(st.sampled_from(['true', 'false']))} "
            f"rope = {rope} rope_base = {draw(st.sampled_from([10000, 500]))} }}")


@st.composite
def sublayer(draw, dim: int, nested: bool = False) -> str:
    kinds = ["memory"] * 3 + ["selfmod"] * 2 + ["cms"] * 2 + ["attention", "mlp"]
    kinds += [] if nested else ["parallel", "context"]
    kind = draw(st.sampled_from(kinds))
    if kind == "memory":
        return (f"memory {{\n    heads = {draw(st.sampled_from([1, 2, 4]))}\n"
                f"{switches(draw, 'conv', 'activation', 'qk_norm', 'value_norm', 'output_norm', 'output_gate')}\n"
                f"    {draw(memory_level())}\n  }}")
    if kind == "selfmod":
        return draw(selfmod())
    if kind == "cms":
        return draw(cms())
    if kind == "attention":
        return attention(draw, dim)
    if kind == "mlp":
        return (f"mlp {{ activation = {draw(st.sampled_from(['swiglu', 'gelu']))} "
                f"expansion = {draw(st.sampled_from(['2', '8 / 3', '1']))} }}")
    if kind == "parallel":
        combine = draw(st.sampled_from(["sum", "gate"]))
        branches = []
        for index in range(2 if combine == "gate" else draw(st.integers(2, 3))):
            kind_of_branch, rest = draw(sublayer(dim, nested=True)).split(" ", 1)
            branches.append(f"{kind_of_branch} branch{index} {rest}")
        return f"parallel {{\n    combine = {combine}\n  " + "\n  ".join(branches) + "\n  }"
    level = draw(memory_level())
    period = int(level.split("period = ")[1].split()[0])
    heads = draw(st.sampled_from([1, 2, 4]))
    rope = draw(st.sampled_from(["true", "false"])) if (dim // heads) % 2 == 0 else "false"
    return (f"context {{\n    segment = {period * draw(st.integers(1, 3))}\n"  # attention spans its segment
            f"    memory {{ heads = {draw(st.sampled_from([1, 2, 4]))} conv = {draw(st.sampled_from([0, 2]))}\n"
            f"    {level} }}\n"
            f"    attention {{ heads = {heads} rope = {rope} persistent = {draw(st.integers(0, 2))} }}\n  }}")


@st.composite
def wide_specs(draw) -> str:
    dim = draw(st.sampled_from([8, 12, 16]))
    named = []
    for index, layer in enumerate(draw(st.lists(sublayer(dim), min_size=1, max_size=2))):
        kind, rest = layer.split(" ", 1)
        named.append(f"{kind} layer{index} {rest}")
    return (f"model random {{\n  vocab = {draw(st.sampled_from([13, 29]))}\n  dim = {dim}\n"
            f"  layers = {draw(st.sampled_from([1, 1, 2, 3]))}\n"
            f"  tie_embeddings = {draw(st.sampled_from(['true', 'false']))}\n"
            f"  block {{\n  norm = {draw(st.sampled_from(['rms', 'rms', 'none']))}\n  " + "\n  ".join(named)
            + f"\n  }}\n}}\ntrain {{ seq_len = {draw(st.sampled_from([6, 16, 64]))} }}\n")


@settings(max_examples=WIDE_SPECS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(text=wide_specs(), length=st.integers(13, 40))
def test_wide_random_spec_matches_interpreter(text: str, length: int) -> None:
    result = check_text(text, "random.nl")
    assume(not any(d.severity == "error" for d in result.diagnostics))  # the generator can pair what E0601 refuses
    spec = result.spec
    model = perturbed_model(spec, 0)
    tokens = torch.randint(0, spec.model.vocab, (2, length), generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    compiled, carried = model(tokens, return_state=True)
    assume(all(entry.abs().max() <= DIVERGED for entry in _tensors(carried) if entry.is_floating_point()))
    assume(not amplifies_rounding(model, tokens))
    reference = interpret(spec, params, tokens)
    error = ((compiled - reference).norm() / reference.norm()).item()
    assert error <= OUTPUT_RTOL, f"outputs differ: relative error {error:.2e}\n{text}"
    probe = torch.randn(compiled.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = [torch.autograd.grad((out * probe).sum(), list(params.values()), allow_unused=True)
             for out in (compiled, reference)]
    pairs = [(name, torch.zeros_like(p) if a is None else a, torch.zeros_like(p) if b is None else b)
             for (name, p), a, b in zip(params.items(), *grads)]
    total = math.sqrt(sum(b.norm().item() ** 2 for _, _, b in pairs))
    assume(max(b.norm().item() for _, _, b in pairs) <= UNSTABLE_GRADIENT)
    for name, a, b in pairs:
        error = (a - b).norm().item() / max(b.norm().item(), FLOOR * total, 1e-300)
        assert error <= GRAD_RTOL, f"{name}: gradient relative error {error:.2e}\n{text}"


STREAMED_SPECS = int(os.environ.get("NLDSL_STREAMED_SPECS", "80"))
LONGEST_STREAM_UNIT = 24  # a cut must fall on a multiple of every chunk: past this the sequence grows long


def stream_unit(spec) -> int | None:
    """The shortest call after which a carried state continues the sequence exactly: the lcm of every
    in-context period and every context segment; None where attention outside a context makes no cut
    exact (it keeps no cache across calls, docs/runtime.md)."""
    layers = [layer for _, layer in walk_layers(spec.model.block.sublayers, "block")]
    in_contexts = {id(layer.attention) for layer in layers if isinstance(layer, S.ContextSpec)}
    if any(isinstance(layer, S.AttentionSpec) and id(layer) not in in_contexts for layer in layers):
        return None
    return math.lcm(*in_context_periods(spec.model, spec.train.seq_len), *context_segments(spec.model))


@settings(max_examples=STREAMED_SPECS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(text=st.one_of(random_specs(), wide_specs()), data=st.data())
def test_random_spec_streams_in_two_calls(text: str, data) -> None:
    """Cut at a multiple of every chunk, with the state carried (and an empty call between), a random
    spec's outputs and final state equal one call's, for both generators' specs."""
    result = check_text(text, "random.nl")
    assume(not any(d.severity == "error" for d in result.diagnostics))
    spec = result.spec
    unit = stream_unit(spec)
    assume(unit is not None and unit <= LONGEST_STREAM_UNIT)
    cut = unit * data.draw(st.integers(1, LONGEST_STREAM_UNIT // unit), label="chunks before the cut")
    length = cut + data.draw(st.integers(1, 20), label="tokens after it")
    model = perturbed_model(spec, 3)
    tokens = torch.randint(0, spec.model.vocab, (2, length), generator=torch.Generator().manual_seed(3))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    with torch.no_grad():
        whole, final = model(tokens, targets, return_state=True)
        assume(all(entry.abs().max() <= DIVERGED for entry in _tensors(final)
                   if entry.is_floating_point() and entry.numel()))
        # Newton–Schulz can amplify rounding in a state more than in the outputs: a run without derandomize
        # (45,215 examples) failed on three specs whose final states, 1.1e-9 to 1.7e-9 apart after the cut,
        # moved by more under NUDGE (2.8e-9, 5.1e-9 and 6.5e-9)
        assume(not amplifies_rounding(model, tokens, state=True))
        first, state = model(tokens[:, :cut], targets[:, :cut], return_state=True)
        _, state = model(tokens[:, :0], targets[:, :0], state=state, return_state=True)
        second, carried = model(tokens[:, cut:], targets[:, cut:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-9, atol=1e-9)
    for entry, expected in zip(_tensors(carried), _tensors(final), strict=True):
        torch.testing.assert_close(entry, expected, rtol=1e-9, atol=1e-9)


CAUSAL_SPECS = int(os.environ.get("NLDSL_CAUSAL_SPECS", "80"))


@settings(max_examples=CAUSAL_SPECS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(text=st.one_of(random_specs(), wide_specs()), length=st.integers(4, 40), data=st.data())
def test_a_random_spec_is_causal_prefix_consistent_and_batch_independent(text: str, length: int, data) -> None:
    """For both generators' specs, at a random cut that need not fall on any chunk's end: tokens past
    the cut leave the outputs before it unchanged, a call on the tokens before the cut gives those
    outputs (a short last chunk reads as the same chunk cut by a longer call), each sequence of a
    batch gives alone what it gives in the batch, and a second call gives the first one's outputs
    (a call leaves no trace in the model)."""
    result = check_text(text, "random.nl")
    assume(not any(d.severity == "error" for d in result.diagnostics))
    spec = result.spec
    model = perturbed_model(spec, 5)
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="token seed"))
    tokens = torch.randint(0, spec.model.vocab, (3, length), generator=generator)
    cut = data.draw(st.integers(1, length - 1), label="cut")
    with torch.no_grad():
        whole, final = model(tokens, return_state=True)
        assume(torch.isfinite(whole).all())
        assume(all(entry.abs().max() <= DIVERGED for entry in _tensors(final)
                   if entry.is_floating_point() and entry.numel()))
        assume(not amplifies_rounding(model, tokens))
        changed = tokens.clone()
        changed[:, cut:] = (changed[:, cut:] + torch.randint(1, spec.model.vocab, changed[:, cut:].shape,
                                                             generator=generator)) % spec.model.vocab
        later_changed = model(changed)
        prefix = model(tokens[:, :cut])
        alone = torch.cat([model(tokens[b:b + 1]) for b in range(len(tokens))])
        again = model(tokens)
    same = {"rtol": 1e-9, "atol": 1e-9 * whole.abs().max().item()}
    torch.testing.assert_close(later_changed[:, :cut], whole[:, :cut], **same, msg=lambda m: f"not causal: {m}")
    torch.testing.assert_close(prefix, whole[:, :cut], **same, msg=lambda m: f"the prefix differs: {m}")
    torch.testing.assert_close(alone, whole, **same, msg=lambda m: f"sequences of a batch interact: {m}")
    torch.testing.assert_close(again, whole, **same, msg=lambda m: f"a second call differs: {m}")


def test_a_chaotic_spec_is_told_from_a_calm_one() -> None:
    """`amplifies_rounding` on the spec a run of this test without derandomize found: a selfmod whose projection
    memories Newton–Schulz normalises every token (length 31: 1e-4 between the executions, states about 1), and on
    the same spec without Newton–Schulz, which still must match the interpreter."""
    text = CHAOTIC_SPEC
    for spec_text, chaotic in ((text, True), (text.replace(" orthogonalize = newton_schulz(1)", ""), False)):
        spec = check_text(spec_text, "random.nl").spec
        model = perturbed_model(spec, 0)
        tokens = torch.randint(0, spec.model.vocab, (2, 31), generator=torch.Generator().manual_seed(0))
        assert amplifies_rounding(model, tokens) == chaotic
        assert not amplifies_rounding(model, tokens[:, :8])  # the chaotic one too: it takes tokens to grow
    reference = interpret(spec, dict(model.named_parameters()), tokens)
    assert ((model(tokens) - reference).norm() / reference.norm()).item() <= OUTPUT_RTOL


CHAOTIC_SPEC = """\
model random {
  vocab = 29
  dim = 8
  layers = 2
  tie_embeddings = true
  block {
  norm = rms
  parallel layer0 {
    combine = sum
  selfmod branch0 {
    heads = 1
    adaptive = [q, k, eta]
    conv = 0
    qk_norm = l2
    value_norm = l2
    output_norm = true
    output_gate = true
    level memory {
      state = linear period = 1 readout = causal rule = gd dgd_layers = first objective = l2
      values = given lr = generated(max = 0.1) retention = 0.9 momentum = per_head(0.5)
    }
    level projections {
      period = 1 readout = chunk_start state = mlp(depth = 2, expansion = 1, activation = gelu)
      rule = gd orthogonalize = newton_schulz(1)
    }
  }
  memory branch1 {
    heads = 1
    conv = 0
    activation = silu
    qk_norm = l2
    value_norm = l2
    output_norm = true
    output_gate = true
    level {
      retention = learned(max = 1.0)
      retention_order = before_write
      period = 1
      state = linear
      objective = dot
      values = given
      rule = gd dgd_layers = first
      lr = 0.05
      grad_through_writes = true
      readout = causal
    }
  }
  }
  }
}
train { seq_len = 6 }
"""

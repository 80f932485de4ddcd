"""The compiled code against the reference interpreter: two executions of one meaning.

Every shipped spec (shrunk to a tiny size with several chunks per level) and at least 200
hypothesis-generated random valid specs are run both ways in float64; outputs and every parameter
gradient must agree. Also: streaming in two halves equals one shot, generated modules are
deterministic, ruff-clean and match their golden files, and nothing from a spec reaches the
generated code unvalidated.
"""

from __future__ import annotations

import ast as pyast
import inspect
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ruff_check_generated
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nldsl.compiler import compile_spec
from test_interpreter import shrunk

from nldsl import loader
from nldsl.checker import check_file, check_text
from nldsl.interpreter import init_params, interpret
from nldsl.runtime.blocks import _tensors
from nldsl.runtime.memory import memory_level as run_memory_level

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted(p for p in (REPO / "specs").rglob("*.nl"))
GOLDEN = REPO / "tests" / "golden" / "compiled"
OUTPUT_RTOL = 1e-6  # float64: compiled and interpreted outputs, relative to the output's norm
GRAD_RTOL = 1e-6  # float64: every parameter gradient, relative to its norm …
# … or to this share of all gradients' norm where that is larger: a gradient that is a vanishing share
# of the whole is made of rounding (test_a_vanishing_gradient_is_compared_at_the_floor)
FLOOR = 1e-6
RANDOM_SPECS = int(os.environ.get("NLDSL_RANDOM_SPECS", "200"))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def model_specs() -> list[Path]:
    return [p for p in SPECS if check_file(p).spec.model is not None]


def perturbed_model(spec, seed: int):
    """The compiled model in float64 with every parameter moved off its (often symmetric) init."""
    module = loader.build_module(spec)
    torch.manual_seed(seed)
    model = module.build(dtype=torch.float64)
    model.module = module
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def both_executions(spec, length: int, seed: int = 0, batch: int = 2):
    """The outputs' relative difference and each parameter's (name, compiled, interpreted) gradient of
    a probe of the outputs (None where a parameter gets none), in float64 on perturbed weights."""
    model = perturbed_model(spec, seed)
    tokens = torch.randint(0, spec.model.vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    params = dict(model.named_parameters())
    compiled = model(tokens)
    reference = interpret(spec, params, tokens)
    error = ((compiled - reference).norm() / reference.norm()).item()
    probe = torch.randn(compiled.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    grads_compiled = torch.autograd.grad((compiled * probe).sum(), list(params.values()), allow_unused=True)
    grads_reference = torch.autograd.grad((reference * probe).sum(), list(params.values()), allow_unused=True)
    return error, list(zip(params, grads_compiled, grads_reference))


def assert_matches_interpreter(spec, length: int, seed: int = 0, batch: int = 2) -> None:
    error, gradients = both_executions(spec, length, seed, batch)
    assert error <= OUTPUT_RTOL, f"outputs differ: relative error {error:.2e}"
    total = math.sqrt(sum(b.norm().item() ** 2 for _, _, b in gradients if b is not None))
    for name, a, b in gradients:
        assert (a is None) == (b is None), f"{name}: gradient present in only one execution"
        if a is None:
            continue
        scale = max(b.norm().item(), FLOOR * total)
        error = (a - b).norm().item() / scale if scale > 0 else (a - b).norm().item()
        assert error <= GRAD_RTOL, f"{name}: gradient relative error {error:.2e}"


@pytest.mark.parametrize("path", model_specs(), ids=lambda p: p.stem)
def test_shipped_spec_matches_interpreter(path: Path) -> None:
    spec = shrunk(check_file(path).spec)
    assert_matches_interpreter(spec, length=13)



@pytest.mark.parametrize("seq_len", [8, 64], ids=["past-the-table", "inside-the-table"])
def test_rotary_table_serves_any_length(seq_len: int) -> None:
    """Attention rotates with a table of train.seq_len rows held by the module (not saved with the
    weights); a longer sequence gets a fresh table, and both agree with the interpreter."""
    spec = shrunk(check_file(REPO / "specs" / "transformer.nl", [f"train.seq_len={seq_len}"]).spec)
    model = perturbed_model(spec, seed=2)
    assert model.blocks[0].attention.rotary.cos.shape[0] == seq_len
    assert not any("rope" in name for name in model.state_dict())
    assert_matches_interpreter(spec, length=13, seed=2)

# Random valid specs ------------------------------------------------------------------------------

@st.composite
def gates(draw, name: str, allow_none: bool) -> str:
    choices = ["constant", "per_head", "learned"] + (["none"] if allow_none else [])
    kind = draw(st.sampled_from(choices))
    if kind == "none":
        return ""
    value = {"lr": 0.05, "retention": 0.9, "momentum": 0.5}[name]  # small enough that no random spec diverges
    text = {"constant": f"{value}", "per_head": f"per_head({value})",
            "learned": f"learned(max = {min(1.0, 2 * value)})"}[kind]
    return f"{name} = {text}"


@st.composite
def states(draw, square: bool = True) -> str:
    kind = draw(st.sampled_from(["linear", "mlp", "residual_mlp"]))
    if kind == "mlp":
        return f"mlp(depth = {draw(st.integers(1, 3))}, expansion = {draw(st.sampled_from([1, 2]))}, " \
               f"activation = {draw(st.sampled_from(['silu', 'gelu', 'tanh']))})"
    if kind == "residual_mlp":
        return f"residual_mlp(expansion = {draw(st.sampled_from([1, 2]))})"
    return "linear"


@st.composite
def memory_level(draw) -> str:
    state = draw(states())
    objective = draw(st.sampled_from(["dot", "l2", "reconstruction"]))
    values = draw(st.sampled_from(["given", "generated"]))
    lines = [f"state = {state}", f"objective = {objective}", f"values = {values}",
             f"rule = {draw(st.sampled_from(['gd', 'dgd']))}",
             f"dgd_layers = {draw(st.sampled_from(['first', 'all']))}",
             draw(gates("lr", False)), draw(gates("retention", True)), draw(gates("momentum", True)),
             f"period = {draw(st.integers(1, 4))}",
             f"grad_through_writes = {draw(st.sampled_from(['true', 'false']))}",
             draw(st.sampled_from(["", "", "clip = 0.5"]))]
    readout = draw(st.sampled_from(["causal", "exclusive", "chunk_start"]))
    if readout == "chunk_start" and state != "linear" and draw(st.booleans()):
        lines.append("orthogonalize = newton_schulz(3)")
    lines.append(f"readout = {readout}")
    # from zeros, a level whose targets are its own predictions never writes (E0601)
    if state == "linear" and (values == "given" or objective == "reconstruction") and draw(st.booleans()):
        lines.append("init = zeros")
    return "level {\n      " + "\n      ".join(line for line in lines if line) + "\n    }"


@st.composite
def sublayers(draw, depth: int = 0) -> str:
    kinds = ["memory", "memory", "selfmod", "cms", "attention", "mlp"] + (["parallel", "context"] if depth == 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "memory":
        return (f"memory {{\n    heads = 2\n    conv = {draw(st.sampled_from([0, 2, 3]))}\n"
                f"    activation = {draw(st.sampled_from(['silu', 'none']))}\n"
                f"    qk_norm = {draw(st.sampled_from(['l2', 'none']))}\n"
                f"    value_norm = {draw(st.sampled_from(['l2', 'none']))}\n"
                f"    output_norm = {draw(st.sampled_from(['true', 'false']))}\n"
                f"    output_gate = {draw(st.sampled_from(['true', 'false']))}\n    {draw(memory_level())}\n  }}")
    if kind == "selfmod":
        adaptive = draw(st.lists(st.sampled_from(["q", "k", "v", "eta", "alpha"]), unique=True, max_size=5))
        memory_lines = [f"period = {draw(st.integers(1, 4))}",
                        f"readout = {draw(st.sampled_from(['causal', 'exclusive']))}",
                        f"rule = {draw(st.sampled_from(['gd', 'dgd']))}",
                        "lr = generated(max = 0.1)" if "eta" in adaptive else "lr = learned(max = 0.1)",
                        "retention = generated" if "alpha" in adaptive else draw(gates("retention", True)),
                        draw(gates("momentum", True)), draw(st.sampled_from(["", "", "clip = 0.5"]))]
        return (f"selfmod {{\n    heads = 2\n    adaptive = [{', '.join(adaptive)}]\n"
                f"    conv = {draw(st.sampled_from([0, 2]))}\n"
                f"    level memory {{ {' '.join(memory_lines)} }}\n"
                f"    level projections {{ period = {draw(st.integers(1, 3))} readout = chunk_start }}\n  }}")
    if kind == "cms":
        variant = draw(st.sampled_from(["sequential", "independent", "nested"]))
        count = draw(st.integers(1, 3))
        levels = []
        period = draw(st.integers(1, 3))
        for index in range(count):
            choices = ["in_context"] if variant == "nested" else ["in_context", "in_context", "outer"]
            update = draw(st.sampled_from(choices))
            objective = draw(st.sampled_from(["surprise", "reconstruction"]))
            if variant != "nested" or index == 0:
                state = draw(st.sampled_from(["mlp(expansion = 2)", "residual_mlp(expansion = 1)", "mlp(depth = 1)",
                                              "linear"]))
            extra = ""
            if state == "linear" and update == "in_context" and period <= 6 and draw(st.booleans()):
                extra = "init = zeros "  # within seq_len = 6 it learns in context, from zero
            if variant != "nested" or index == 0:
                extra += f"{draw(gates('lr', False))} {draw(gates('momentum', True))}"
                if update == "in_context":
                    extra += f" {draw(st.sampled_from(['', '', 'clip = 0.5']))}"
            else:
                extra += "lr = 0.5"  # a slower nested level moves half way to the faster one
            levels.append(f"level l{index} {{ state = {state} objective = {objective} period = {period} "
                          f"update = {update} {extra} }}")
            period *= draw(st.integers(1, 2))
        if variant == "nested":
            levels[0] = levels[0].replace("update = outer", "update = in_context")
        return f"cms {{\n    variant = {variant}\n    " + "\n    ".join(levels) + "\n  }"
    if kind == "attention":
        return (f"attention {{ heads = 2 window = {draw(st.sampled_from([0, 2, 5]))} "
                f"persistent = {draw(st.integers(0, 2))} qk_norm = {draw(st.sampled_from(['true', 'false']))} "
                f"rope = {draw(st.sampled_from(['true', 'false']))} }}")
    if kind == "mlp":
        return f"mlp {{ activation = {draw(st.sampled_from(['swiglu', 'gelu']))} expansion = 2 }}"
    if kind == "parallel":
        first = draw(sublayers(depth=1))
        second = draw(sublayers(depth=1))
        first = first.split(" ", 1)[0] + " left " + first.split(" ", 1)[1]
        second = second.split(" ", 1)[0] + " right " + second.split(" ", 1)[1]
        return f"parallel {{\n    combine = {draw(st.sampled_from(['sum', 'gate']))}\n  {first}\n  {second}\n  }}"
    period = draw(st.integers(1, 3))
    segment = period * draw(st.integers(1, 3))
    level = draw(memory_level()).replace("period = ", "period_unused = ")
    level = "\n".join(line for line in level.splitlines() if "period_unused" not in line)
    level = level.replace("level {", f"level {{\n      period = {period}")
    return (f"context {{\n    segment = {segment}\n    memory {{ heads = 2 conv = 0 {level} }}\n"
            f"    attention {{ heads = 2 persistent = {draw(st.integers(0, 2))} }}\n  }}")


@st.composite
def random_specs(draw) -> str:
    layers = draw(st.lists(sublayers(), min_size=1, max_size=2))
    named = []
    for index, layer in enumerate(layers):
        kind, rest = layer.split(" ", 1)
        named.append(f"{kind} layer{index} {rest}")
    block = "\n  ".join(named)
    return (f"model random {{\n  vocab = 13\n  dim = 8\n  layers = {draw(st.integers(1, 2))}\n"
            f"  block {{\n  {block}\n  }}\n}}\ntrain {{ seq_len = {draw(st.sampled_from([6, 64]))} }}\n")


# A state entry past this magnitude marks a recurrence that diverges on the test's tokens (below; the
# wide-spec test sets aside its own diverging specs the same way, tests/test_wide_specs.py).
DIVERGED_STATE = 1e8
# Every parameter moved by this much, relative (float64's rounding), must move the outputs by less than
# CHAOTIC_RESPONSE, relative: past it, rounding alone carries the outputs towards the tolerances.
NUDGE = 1e-15
CHAOTIC_RESPONSE = 1e-9


def amplifies_rounding(model: torch.nn.Module, tokens: torch.Tensor, state: bool = False) -> bool:
    """Whether the model's outputs on `tokens` (and with `state`, any tensor of its final state) move
    by more than CHAOTIC_RESPONSE when its parameters move by NUDGE.

    Some specs are chaotic on a few dozen tokens. A self-modifying projection memory whose writes
    Newton–Schulz normalises (period 1) takes a step of fixed size every token along a direction its
    own state sets, so a difference of 1e-15 grows some tenfold every two or three tokens. On the one
    a run of the wide-spec test without derandomize found, at the last of 31 tokens the interpreter
    against itself with parameters nudged by 1e-15 differed by 6.3e-5 and the compiled model against
    the interpreter by 1.0e-4, with the states bounded (about 1) and the two agreeing within 3e-13
    over the first 13 tokens. Two float orders of such a spec need not agree to any tolerance,
    so the comparison sets it aside."""
    generator = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        before = model(tokens, return_state=True)
        # through functional_call: the parameters themselves are not touched, so a graph the caller built
        # on them (its outputs, for a backward afterwards) stays valid
        nudged = {name: p * (1 + NUDGE * torch.randn(p.shape, dtype=p.dtype, generator=generator))
                  for name, p in model.named_parameters() if p.is_floating_point()}
        after = torch.func.functional_call(model, nudged, (tokens,), {"return_state": True})
    pairs = [(after[0], before[0])]
    if state:
        pairs += [(a, b) for a, b in zip(_tensors(after[1]), _tensors(before[1]), strict=True)
                  if b.is_floating_point() and b.numel()]
    return not all(((a - b).norm() <= CHAOTIC_RESPONSE * b.norm()).item() for a, b in pairs)


def diverges(spec, length: int, seed: int = 0, batch: int = 2) -> bool:
    """Whether the in-context state of `assert_matches_interpreter`'s model blows up on its tokens, or
    its outputs amplify rounding (`amplifies_rounding`).

    The generator draws specs the checker warns may grow without bound (W0707: a dot objective on
    generated values adds η M(v) kᵀ, a step along what the memory already outputs). Run long enough,
    such a memory's weights pass 1e40 and then overflow, and two float orders of one divergent
    recurrence need not agree: the outputs turn NaN in both executions alike, or stay finite behind an
    output norm while the gradients, taken through a state of 1e43, differ by their own size (both
    found at lengths 11 and 13 by a run of 5,089 examples drawn without derandomize, outputs agreeing to 2e-15
    up to the overflow). Such an example says nothing about the compiler, so it is drawn again."""
    model = perturbed_model(spec, seed)
    tokens = torch.randint(0, spec.model.vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outputs, state = model(tokens, return_state=True)
    leaves = [outputs, *_tensors(state)]
    return any(not torch.isfinite(t).all() or (t.is_floating_point() and t.abs().max() > DIVERGED_STATE)
               for t in leaves if t.numel()) or amplifies_rounding(model, tokens)


@settings(max_examples=RANDOM_SPECS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=random_specs(), length=st.sampled_from([5, 7, 9, 11]))
def test_random_spec_matches_interpreter(text: str, length: int) -> None:
    result = check_text(text, "random.nl")
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert not errors, "generator produced an invalid spec:\n" + text + "\n" + "\n".join(d.message for d in errors)
    assume(not diverges(result.spec, length))
    assert_matches_interpreter(result.spec, length=length)


VANISHING_SPEC = """model vanishing {
  vocab = 13
  dim = 8
  layers = 2
  block {
    parallel layer0 {
      combine = COMBINE
      mlp left { activation = swiglu  expansion = 2 }
      cms right {
        variant = independent
        level l0 {
          state = linear  objective = surprise  period = 3  init = zeros
          lr = learned(max = 0.1)  momentum = learned(max = 1.0)
        }
      }
    }
  }
}
"""


def test_a_vanishing_gradient_is_compared_at_the_floor() -> None:
    """A run of the random-spec test without derandomize failed 4 of some 15,100 examples, all on this
    pattern: an independent cms's mixing weight read through `combine = gate`, which RMS-normalises
    the branch, so that the weight reaches the loss only through the norm's ε. Here its gradient is
    2e-12 to 5e-12 of all gradients' norm, and the two executions' differ by up to 2.4e-6 of it
    (length 11): rounding, 6e-18 of the whole. So each gradient is compared at `FLOOR` of the whole
    where its own norm is smaller. With `combine = sum` the same weight's gradient is 1e-3 of the
    whole, and the two agree to 9e-15 of it."""
    for combine, vanishes in (("gate", True), ("sum", False)):
        spec = check_text(VANISHING_SPEC.replace("COMBINE", combine), "vanishing.nl").spec
        _, gradients = both_executions(spec, length=11)
        total = math.sqrt(sum(b.norm().item() ** 2 for _, _, b in gradients if b is not None))
        mix = [b.norm().item() / total for name, _, b in gradients if name.endswith("right.mix")]
        assert len(mix) == 2 and all(share < 1e-8 if vanishes else share >= FLOOR for share in mix), mix
        assert_matches_interpreter(spec, length=11)


def test_a_diverging_memory_is_told_from_a_bounded_one() -> None:
    """`diverges` on the two examples the long run found (W0707 specs), and on the same spec with l2."""
    text = """model random {
  vocab = 13
  dim = 8
  layers = 2
  block {
  memory layer0 {
    heads = 2
    conv = 0
    activation = silu
    qk_norm = l2
    value_norm = l2
    output_norm = true
    output_gate = true
    level {
      state = linear
      objective = dot
      values = given
      rule = gd
      dgd_layers = first
      lr = 0.05
      retention = 0.9
      momentum = 0.5
      period = 1
      grad_through_writes = true
      readout = causal
    }
  }
  memory layer1 {
    heads = 2
    conv = 2
    activation = none
    qk_norm = l2
    value_norm = none
    output_norm = true
    output_gate = false
    level {
      state = mlp(depth = 3, expansion = 2, activation = silu)
      objective = dot
      values = generated
      rule = gd
      dgd_layers = first
      lr = 0.05
      retention = learned(max = 1.0)
      momentum = per_head(0.5)
      period = 1
      grad_through_writes = true
      readout = causal
    }
  }
  }
}
train { seq_len = 6 }
"""
    spec = check_text(text, "random.nl").spec
    assert diverges(spec, 13) and not diverges(spec, 5)
    bounded = check_text(text.replace("objective = dot\n      values = generated", "objective = l2"), "random.nl").spec
    assert not diverges(bounded, 13)
    assert_matches_interpreter(bounded, length=13)


# Streaming ----------------------------------------------------------------------------------------

STREAMABLE = ["titans_lmm", "deltanet", "gated_deltanet", "linear_attention", "hope"]


@pytest.mark.parametrize("name", STREAMABLE)
def test_two_halves_with_carried_state_equal_one_shot(name: str) -> None:
    spec = shrunk(check_file(REPO / "specs" / f"{name}.nl").spec)
    model = perturbed_model(spec, seed=3)
    tokens = torch.randint(0, spec.model.vocab, (2, 32), generator=torch.Generator().manual_seed(3))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    whole = model(tokens, targets)
    first, state = model(tokens[:, :16], targets[:, :16], return_state=True)
    empty, state = model(tokens[:, :0], targets[:, :0], state=state, return_state=True)  # leaves it as it was
    second = model(tokens[:, 16:], targets[:, 16:], state=state)
    assert empty.shape == (2, 0, spec.model.vocab)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-9, atol=1e-9)


def test_a_reconstruction_memory_makes_no_value_projection() -> None:
    # ½‖M(k) − k‖² reads no values: a W_v (and its conv) would be parameters without a gradient
    spec = check_text("""
model m {
  vocab = 32
  dim = 16
  layers = 1
  block { memory lmm { heads = 2; conv = 3; value_norm = l2; level { objective = reconstruction; period = 3 } } }
}
""").spec
    model = perturbed_model(spec, seed=5)
    assert not {"blocks.0.lmm.wv", "blocks.0.lmm.conv_v"} & set(dict(model.named_parameters()))
    assert_matches_interpreter(spec, length=10)
    tokens = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(5))
    model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    first, state = model(tokens[:, :6], return_state=True)  # a cut at a chunk boundary
    torch.testing.assert_close(torch.cat([first, model(tokens[:, 6:], state=state)], dim=1), model(tokens),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", model_specs(), ids=lambda p: p.stem)
def test_an_empty_sequence_gives_empty_logits_and_the_initial_state(path: Path) -> None:
    spec = shrunk(check_file(path).spec)
    model = perturbed_model(spec, seed=4)
    tokens = torch.zeros(3, 0, dtype=torch.long)
    logits, state = model(tokens, return_state=True)
    assert logits.shape == (3, 0, spec.model.vocab)
    assert interpret(spec, init_params(spec), tokens).shape == (3, 0, spec.model.vocab)
    one = torch.randint(0, spec.model.vocab, (3, 5), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(one, state=state), model(one), rtol=0, atol=0)


# The generated text -------------------------------------------------------------------------------

def generated(path: Path) -> str:
    result = check_file(path)
    return compile_spec(result.spec, result.sources[result.spec.path].text)


@pytest.mark.parametrize("path", model_specs(), ids=lambda p: p.stem)
def test_generated_module_is_deterministic_and_golden(path: Path, update_golden: bool) -> None:
    relative = path.relative_to(REPO / "specs")
    source = generated(Path("specs") / relative)
    assert source == generated(Path("specs") / relative)
    golden = GOLDEN / relative.with_suffix(".py")
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(source, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run pytest --update-golden"
    assert source == golden.read_text(encoding="utf-8"), \
        f"the generated module for {relative} changed; review it and run pytest --update-golden"


def test_every_compiled_golden_has_a_spec(update_golden: bool) -> None:
    expected = {GOLDEN / path.relative_to(REPO / "specs").with_suffix(".py") for path in model_specs()}
    stale = sorted(path for path in GOLDEN.rglob("*.py") if path not in expected)
    if update_golden:
        for path in stale:
            path.unlink()
        stale = []
    assert not stale, f"golden modules without a spec: {[p.name for p in stale]}; rerun with --update-golden"


LONG = "a" + "_abcdefghij" * 6  # a 67-character name
ODD_SPEC = f"""\
# A spec comment far longer than a line of the module may be: it goes on and on, past the limit of 120 characters.
# {"averylongword" * 12}
model m {{
  vocab = 64
  dim = 16
  layers = 1
  block {{
    attention att{LONG} {{ heads = 2  rope = true }}
    memory mem{LONG} {{ heads = 2  level lvl{LONG} {{ state = mlp  period = 8  momentum = learned() }} }}
    mlp mlp{LONG} {{ }}
    cms cms{LONG} {{
      level fast{LONG} {{ period = 4 }}
      level outer{LONG} {{ period = steps(2)  update = outer }}
    }}
    cms nested{LONG} {{
      variant = nested
      level f{LONG} {{ period = 2 }}
      level s{LONG} {{ period = 4 }}
    }}
    parallel par{LONG} {{
      attention pa{LONG} {{ heads = 2 }}
      mlp pm{LONG} {{ }}
    }}
  }}
}}
train {{ seq_len = 32  batch = 2 }}
"""


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_generated_modules_are_ruff_clean(tmp_path: Path) -> None:
    """Where a user keeps a generated module (outside nldsl's checkout, so nldsl's imports sort with
    torch's), for every shipped spec and for one of long names, long comments, many overrides and a
    nested cms."""
    out = tmp_path / "modules"
    out.mkdir()
    for path in model_specs():
        (out / f"{path.stem}.py").write_text(generated(Path("specs") / path.relative_to(REPO / "specs")))
    odd = check_text(ODD_SPEC, str(tmp_path / f"odd{LONG}.nl"), [f"train.steps={n}" for n in range(200, 210)])
    assert odd.ok, odd.diagnostics
    module = compile_spec(odd.spec, ODD_SPEC, [f"train.steps={n}" for n in range(200, 210)])
    (out / "odd.py").write_text(module)
    assert "BLOCK_STATE = (  # what a block's state holds\n    'att" in module, "long layer names: one to a line"
    deep = tmp_path / ("e" * 130) / "transformer.nl"  # a path no line can hold: never split, marked
    deep.parent.mkdir()
    deep.write_text((REPO / "specs" / "transformer.nl").read_text())
    module = compile_spec(check_file(deep).spec, "")
    (out / "deep.py").write_text(module)
    assert f" -o <this file> \\\n#         {deep}  # noqa: E501\n" in module, module[:600]
    detached = ["model.block.titans.memory.grad_through_writes=false",  # θ_0 of M_k, M_v, M_eta detached
                "model.block.titans.projections.grad_through_writes=false"]
    module = compile_spec(check_file(REPO / "specs/hope.nl", detached).spec, "", detached)
    assert "their θ_0 enter detached and stay as initialised" in module
    (out / "detached.py").write_text(module)
    result = ruff_check_generated(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_spec_path_never_declares_the_modules_encoding(tmp_path: Path) -> None:
    """Python reads `coding=…` in a file's first two lines as its encoding (PEP 263): a spec path
    such as `recoding=fast.nl` there made the written module impossible to import."""
    for name in ("recoding=fast.nl", "ascii coding:ascii.nl", "coding=latin-1/tränsformer.nl"):
        spec = tmp_path / name
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text((REPO / "specs" / "transformer.nl").read_text())
        module = tmp_path / "module.py"
        module.write_text(compile_spec(check_file(spec).spec, ""), encoding="utf-8")
        code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('m', sys.argv[1]); "
                "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.SPEC_PATH)")
        done = subprocess.run([sys.executable, "-c", code, str(module)], capture_output=True, text=True,
                              encoding="utf-8")
        assert done.returncode == 0 and done.stdout.strip() == str(spec), done.stderr


def test_compile_to_stdout_writes_utf8_whatever_the_console_encoding(tmp_path: Path) -> None:
    for target in ([], ["-o", "-"]):
        done = subprocess.run([sys.executable, "-m", "nldsl", "compile", str(REPO / "specs" / "hope.nl"), *target],
                              capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode("utf-8") == generated(REPO / "specs" / "hope.nl")
    assert not (Path.cwd() / "-").exists()


def test_the_modules_training_step_clips_as_the_spec_says(tmp_path: Path) -> None:
    for clip in (0.0, 0.25):
        result = check_file(REPO / "specs" / "transformer.nl", ["dim=16", f"train.clip={clip}"])
        namespace: dict = {}
        exec(compile(compile_spec(result.spec, ""), "<module>", "exec"), namespace)
        assert namespace["TRAIN_CLIP"] == clip
        assert inspect.signature(namespace["training_step"]).parameters["clip"].default == clip
        assert namespace["__all__"] == ["Model", "build", "training_step"]


def test_generated_module_runs_with_only_torch_and_the_runtime(tmp_path: Path) -> None:
    source = generated(Path("specs") / "titans_lmm.nl")
    (tmp_path / "model.py").write_text(source)
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import model; "
            "m = model.build(); x = torch.randint(0, 256, (1, 9)); "
            "assert m(x).shape == (1, 9, 256); "
            "assert not any(n.startswith('nldsl.') and n.split('.')[1] not in ('runtime',) and n != 'nldsl' "
            "for n in sys.modules), sorted(n for n in sys.modules if n.startswith('nldsl'))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=tmp_path)


def test_a_standalone_generated_module_steps_its_slow_levels_on_the_continuum_clock(tmp_path: Path) -> None:
    """`nldsl compile` output used on its own: its training_step ticks the continuum clock, so a CMS
    level slower than a sequence moves only every CLOCK_STEPS calls, with their gradients summed
    (before, it was stepped every call). Uses only torch and the runtime."""
    result = check_file(REPO / "specs" / "hope_attention.nl", ["dim=16", "model.layers=1", "train.seq_len=32",
                                                              "train.batch=2"])
    (tmp_path / "model.py").write_text(compile_spec(result.spec, ""))
    code = """if True:
        import sys, torch; sys.path.insert(0, sys.argv[1]); import model
        torch.manual_seed(0)
        m = model.build(dtype=torch.float64)
        levels = {prefix: ([p for n, p in m.named_parameters() if n.startswith("blocks.0." + prefix)], every)
                  for prefix, every in model.CLOCK_STEPS.items()}
        assert any(every > 1 for _, every in levels.values())
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        x = torch.randint(0, 256, (2, 32))
        before = {prefix: [p.detach().clone() for p in slow] for prefix, (slow, _) in levels.items()}
        for call in range(1, 2 * max(every for _, every in levels.values()) + 1):
            model.training_step(m, optimizer, x, x.roll(-1, 1))
            for prefix, (slow, every) in levels.items():
                moved = any(not torch.equal(p, b) for p, b in zip(slow, before[prefix]))
                assert moved == (call % every == 0), (prefix, call, every)
                before[prefix] = [p.detach().clone() for p in slow]
        assert not any(n.startswith("nldsl.") and n.split(".")[1] != "runtime" for n in sys.modules)
    """
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=tmp_path)


INJECTIONS = {
    "path": ('model m { dim = 8 block { mlp { } } }', 'evil\n__import__("os").system("echo pwned")\n#.nl'),
    "comment": ('# """\n# __import__("os")\nmodel m { dim = 8 block { mlp { } } }', "c.nl"),
    "string": ('model m { dim = 8 block { mlp { activation = "swiglu\\"); import os; (\\"" } } }', "s.nl"),
    "name": ('model m { dim = 8 block { mlp import { } } }', "n.nl"),
    "number": ('model m { dim = 8 block { attention { heads = 2 rope_base = 1e400 } } }', "x.nl"),
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_spec_text_cannot_inject_code(case: str) -> None:
    text, path = INJECTIONS[case]
    result = check_text(text, path)
    if not result.ok:
        return  # rejected by the checker: nothing reaches the compiler
    source = compile_spec(result.spec, text)
    tree = pyast.parse(source)
    imported = {alias.name for node in pyast.walk(tree) if isinstance(node, (pyast.Import, pyast.ImportFrom))
                for alias in node.names}
    assert imported <= {"annotations", "math", "torch", "torch.nn.functional", "Tensor", "nn", "blocks", "layers",
                        "memory"}, imported
    calls = {node.func.id for node in pyast.walk(tree) if isinstance(node, pyast.Call)
             and isinstance(node.func, pyast.Name)}
    assert "__import__" not in calls and "eval" not in calls and "exec" not in calls


def test_keywords_and_module_attributes_are_rejected_as_layer_names() -> None:
    for name in ("import", "class", "forward", "training", "_private"):
        result = check_text(f"model m {{ dim = 8 block {{ mlp {name} {{ }} }} }}", "k.nl")
        assert not result.ok and any(d.code == "E0208" for d in result.diagnostics), name


# Literature special cases at the level of a whole spec ----------------------------------------

def test_gated_deltanet_spec_is_the_gated_delta_rule() -> None:
    """specs/gated_deltanet.nl's memory computes S_t = α_t S_{t−1}(I − β_t k kᵀ) + β_t v kᵀ exactly."""
    spec = check_file(REPO / "specs" / "gated_deltanet.nl").spec
    model = perturbed_model(spec.model_copy(update={"model": spec.model.model_copy(update={"layers": 1})}), seed=5)
    layer = model.blocks[0].gated_deltanet
    x = torch.randn(2, 19, spec.model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    q, k, v, _ = layer.project(x, {})
    beta, alpha, _ = layer.gates(x)
    state = torch.zeros(2, q.shape[1], q.shape[-1], q.shape[-1], dtype=torch.float64)
    outputs = []
    eye = torch.eye(q.shape[-1], dtype=torch.float64)
    for t in range(x.shape[1]):
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]  # (B, H, D)
        a, b = alpha[:, :, t, None, None], beta[:, :, t, None, None]
        state = a * state @ (eye - b * kt.unsqueeze(-1) * kt.unsqueeze(-2)) + b * vt.unsqueeze(-1) * kt.unsqueeze(-2)
        outputs.append((state @ qt.unsqueeze(-1)).squeeze(-1))
    textbook = torch.stack(outputs, dim=2)
    config = next(value for name, value in vars(model.module).items() if name.startswith("LEVEL_"))
    compiled, _ = run_memory_level(config, layer.initial_state(x), k, v, q, beta, alpha, None)
    torch.testing.assert_close(compiled, textbook, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("level", [
    "state = linear; objective = l2; lr = 0.1; retention = 0; period = 4",  # the exact delta kernel
    "state = mlp; objective = l2; lr = 0.1; retention = 0; momentum = 0.5; period = 4",  # the dual form
    "state = mlp; objective = dot; lr = 0.1; retention = 0; period = 4; readout = chunk_start",  # its last row
])
def test_a_retention_of_zero_forgets_instead_of_giving_nan(level: str) -> None:
    """α = 0 is in range (forget everything before each write); its log must not reach the prefix
    sums as −inf, whose differences are NaN."""
    text = ("model {\n  dim = 16\n  block {\n    memory {\n      heads = 2\n"
            f"      level {{ {level} }}\n    }}\n  }}\n}}\n")
    result = check_text(text, "forget.nl")
    assert not [d for d in result.diagnostics if d.severity == "error"]
    assert_matches_interpreter(result.spec, length=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_gate_makes_every_product_that_holds_it_exactly_zero(dtype) -> None:
    """A product of gates with a 0 among them is 0, not the smallest normal number: the log-domain
    ratios A_t/A_r that span a zero gate underflow to exactly 0, and those that do not stay exact."""
    from nldsl.runtime.delta import log_gate

    gates = torch.tensor([0.5, 0.0, 0.7, 0.9], dtype=dtype)
    log_products = torch.cumsum(log_gate(gates), dim=0)  # log A_t
    ratios = (log_products.unsqueeze(-1) - log_products).exp()  # A_t/A_r
    assert log_products.exp()[1:].eq(0).all() and log_products.exp()[0] == 0.5
    assert ratios[2:, :1].eq(0).all()  # spans the zero gate of token 1
    torch.testing.assert_close(ratios[3, 1:], torch.tensor([0.63, 0.9, 1.0], dtype=dtype))


def test_a_wiped_relu_memory_reads_its_kink_as_the_interpreter_does() -> None:
    """`retention = 0` wipes the state before each write, so with momentum a relu MLP memory's
    pre-activations are exactly 0 in places. When a zero gate's log was the smallest normal
    number's, the compiled dual form left 1e-308 of the wiped state there, relu's derivative read 1
    instead of 0, and the outputs differed from token 2 on (9.3e-6 here; 0.38 in the selfmod spec a
    run of the wide-spec test without derandomize found)."""
    text = """model wiped {
  vocab = 13
  dim = 16
  block {
    memory {
      heads = 4
      conv = 0
      qk_norm = none
      output_gate = false
      level {
        state = mlp(depth = 3, expansion = 2, activation = relu)
        objective = reconstruction  rule = dgd  dgd_layers = all  readout = chunk_start
        lr = learned(max = 0.2)  retention = 0  momentum = learned(max = 1.0, init = 0.9)
      }
    }
  }
}
"""
    assert_matches_interpreter(check_text(text, "wiped.nl").spec, length=12)


@pytest.mark.parametrize("cms", [
    # spec names are case-sensitive; the generated constants are upper-case and must still differ
    "variant = sequential; level a { period = 2 } level A { period = 4; objective = reconstruction }",
    "variant = nested; level a { period = 2 } level A { period = 4; lr = 0.5 }",
    # a linear level that starts each sequence from zero (no θ_0 parameter)
    "variant = independent; level a { state = linear; init = zeros; period = 2 } level b { period = 4 }",
    "variant = nested; level a { state = linear; period = 2 } "
    "level b { state = linear; init = zeros; period = 4; lr = 0.5 }",
])
def test_cms_levels_run_with_their_own_config_and_initial_state(cms: str) -> None:
    text = f"model {{\n  vocab = 13\n  dim = 16\n  block {{\n    cms {{ {cms} }}\n  }}\n}}\ntrain {{ seq_len = 16 }}\n"
    result = check_text(text, "levels.nl")
    assert not [d for d in result.diagnostics if d.severity == "error"]
    assert_matches_interpreter(result.spec, length=11)


NEWTON_SCHULZ_LEVEL = """model ns {
  vocab = 13
  dim = 8
  layers = 1
  block {
    memory layer0 { heads = 2 conv = 0 level {
      state = linear  objective = reconstruction  values = generated  lr = 0.05
      retention = learned(max = 1.0)  init = zeros  period = 1  readout = chunk_start
      orthogonalize = newton_schulz(6)
    } }
  }
}
train { seq_len = 6 }
"""


@pytest.mark.parametrize("length", [5, 7, 9, 11])
def test_newton_schulz_levels_agree_with_the_interpreter_past_its_rounding_noise(length: int) -> None:
    # The interpreter orthogonalises the increment it sums, not θ_t − A θ_c: that difference holds
    # rounding noise of θ's size in every direction, which six steps multiply by up to 3.4445^6
    # (the outputs then differed by 3e-9 at length 7; float64 rounding is 1e-16)
    spec = check_text(NEWTON_SCHULZ_LEVEL, "ns.nl").spec
    model = perturbed_model(spec, seed=0)
    tokens = torch.randint(0, 13, (2, length), generator=torch.Generator().manual_seed(0))
    compiled, reference = model(tokens), interpret(spec, dict(model.named_parameters()), tokens)
    assert ((compiled - reference).norm() / reference.norm()).item() <= 1e-10


def test_a_cms_level_is_initialised_the_same_whatever_its_name():
    """Init rules picked by a parameter's prefix (`b_`, `gate_norm`, `conv_`, `persistent_`) name a
    layer's own parameters; a level called `b_fast` had its weights zeroed, and never learned."""
    levels = ["fast", "b_fast", "gate_norm_x", "conv_x", "persistent_z"]
    text = ("model m {\n  dim = 32\n  layers = 1\n  block {\n    cms {\n      variant = independent\n"
            + "".join(f"      level {name} {{ period = 4  lr = learned() }}\n" for name in levels)
            + "    }\n  }\n}\n")
    result = check_text(text, "names.nl")
    assert result.ok, result.diagnostics
    source = compile_spec(result.spec, text)
    lines = [line.strip() for line in source.splitlines() if line.strip().startswith("nn.init.")]

    def init_of(level: str) -> list[str]:
        return [line.replace(f"self.{level}_", "self.LEVEL_") for line in lines if f"self.{level}_" in line]

    assert init_of("fast") and all(init_of(name) == init_of("fast") for name in levels), {
        name: init_of(name) for name in levels}
    torch.manual_seed(0)
    model = loader.build_model(loader.compile_module(result), result.spec, None, None)
    assert model.blocks[0].cms.b_fast_w1.abs().max() > 0, "not zeroed"


def test_the_banners_command_ends_the_options_before_a_path_that_starts_with_a_dash(tmp_path: Path) -> None:
    spec = tmp_path / "-x.nl"
    spec.write_text((REPO / "specs" / "transformer.nl").read_text())
    result = check_text(spec.read_text(), "-x.nl")
    assert "#     nldsl compile -o <this file> -- -x.nl\n" in compile_spec(result.spec, "")
    assert "#     nldsl compile -o <this file> x.nl\n" in compile_spec(check_text(spec.read_text(), "x.nl").spec, "")

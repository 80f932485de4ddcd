"""`cms { variant = nested }` (docs/semantics.md §3.7) in the generated model.

Nested CMS of 1, 2 and 3 levels, with levels that learn in context and levels on the continuum
clock (`update = outer`, or a period longer than train.seq_len) mixed, run at T = 11 (a multiple
of no period). Against the reference interpreter in float64, outputs and every parameter
gradient; streamed in calls split at a chunk boundary of every level, against one call (§1.8),
outputs, carried state and gradients; with recomputed stretches (`train.recompute`) and compiled
chunk bodies (`train.compile = chunks`), against eager; as one whole torch.compile graph. And the
checker's diagnostics for slower nested levels.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import pytest
import torch
import torch._dynamo
from test_compiler import assert_matches_interpreter, perturbed_model
from test_recompute import assert_same
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl import spec as S
from nldsl.checker import check_text
from nldsl.interpreter import learns_in_context
from nldsl.runtime.chunked import compile_loss, compiled_chunks, recomputed_chunks
from nldsl.runtime.memory import MemoryState

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

LENGTH = 11  # a multiple of no period below: every level ends the sequence inside a chunk


@dataclass(frozen=True)
class Case:
    levels: str  # the cms section's levels
    seq_len: int  # train.seq_len: which levels learn in context
    # where a stream is cut: chunk boundaries of the fastest level (a call may be shorter than a slower
    # level's period: the carried position times its moves)
    splits: tuple[int, ...]
    layers: int = 1


CASES = {
    # one level
    "one_in_context": Case("level fast { state = mlp(expansion = 2) period = 2 lr = learned(max = 0.1) "
                           "momentum = 0.5 }", seq_len=8, splits=(4, 6)),
    "one_clock": Case("level fast { state = mlp(depth = 1) period = 8 lr = 0.05 }", seq_len=4, splits=(5,)),
    "one_outer": Case("level fast { state = mlp(depth = 1) update = outer period = steps(2) }", seq_len=8,
                      splits=(3,)),
    # two levels
    "two_in_context": Case("level fast { state = residual_mlp(expansion = 1) period = 2 momentum = 0.5 "
                           "retention = 0.95 } level slow { state = residual_mlp(expansion = 1) period = 4 "
                           "lr = 0.5 }", seq_len=8, splits=(2, 6, 8), layers=2),
    "two_slow_clock": Case("level fast { state = mlp(depth = 1) objective = reconstruction period = 2 lr = 0.05 } "
                           "level slow { state = mlp(depth = 1) period = 8 lr = 0.5 }", seq_len=4, splits=(6,)),
    "two_clock": Case("level fast { state = mlp(expansion = 2) period = 8 } level slow { state = mlp(expansion = 2) "
                      "period = 16 lr = 0.5 }", seq_len=4, splits=(3,)),
    "two_fast_outer": Case("level fast { state = mlp(depth = 1) update = outer period = 2 } "
                           "level slow { state = mlp(depth = 1) period = 4 lr = 0.5 }", seq_len=8, splits=(4,)),
    # three levels
    "three_in_context": Case("level a { state = mlp(depth = 1) period = 2 lr = learned(max = 0.2) } "
                             "level b { state = mlp(depth = 1) period = 4 lr = 0.5 } "
                             "level c { state = mlp(depth = 1) period = 8 lr = 0.3 }", seq_len=8, splits=(2, 6)),
    "three_mixed": Case("level a { state = mlp(expansion = 2) period = 2 momentum = 0.5 } "
                        "level b { state = mlp(expansion = 2) period = 4 lr = 0.5 } "
                        "level c { state = mlp(expansion = 2) period = 8 lr = 0.5 }", seq_len=6, splits=(4, 8)),
    "three_slow_clock": Case("level a { state = residual_mlp(expansion = 2) objective = reconstruction period = 2 "
                             "lr = learned(max = 0.1) } level b { state = residual_mlp(expansion = 2) period = 6 "
                             "lr = 0.5 } level c { state = residual_mlp(expansion = 2) period = 12 lr = 0.5 }",
                             seq_len=4, splits=(2, 6), layers=2),
}


def nested_spec(case: str) -> S.Spec:
    spec = CASES[case]
    text = (f"model nested {{\n  vocab = 13\n  dim = 8\n  layers = {spec.layers}\n  block {{\n"
            f"    cms c {{\n      variant = nested\n      {spec.levels}\n    }}\n  }}\n}}\n"
            f"train {{ seq_len = {spec.seq_len} }}\n")
    result = check_text(text, f"{case}.nl")
    assert result.ok, [f"{d.code} {d.message}" for d in result.diagnostics]
    assert result.spec is not None
    return result.spec


def nested_layer(spec: S.Spec) -> S.CMSSpec:
    assert spec.model is not None
    [layer] = spec.model.block.sublayers
    assert isinstance(layer, S.CMSSpec) and layer.variant == "nested"
    return layer


def batch(vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (2, LENGTH), generator=torch.Generator().manual_seed(seed))
    return tokens, torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)


def tensors(value: object) -> list[torch.Tensor]:
    """Every tensor of a carried state, in a fixed order (None entries hold none)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, MemoryState):
        return tensors(value.weights) + tensors(value.momentum)
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors(item)]
    assert value is None or isinstance(value, int), type(value)  # an int: the stream's position
    return []


def test_the_cases_mix_levels_that_learn_in_context_with_clock_levels() -> None:
    """What the cases below cover: 1–3 levels, in-context and clock levels mixed, T a multiple of no period."""
    kinds = set()
    for case in CASES:
        spec = nested_spec(case)
        levels = nested_layer(spec).levels
        learning = tuple(learns_in_context(level, spec.train.seq_len) for level in levels)
        kinds.add((len(levels), learning))
        assert all(LENGTH % level.period for level in levels if isinstance(level.period, int)), case
        assert any(isinstance(level.period, int) and not learning[index] and level.period < LENGTH
                   for index, level in enumerate(levels)) or all(learning) or case in ("one_outer",), \
            f"{case}: a clock level should have a period inside the sequence, where it could wrongly move"
    assert {(1, (True,)), (1, (False,)), (2, (True, True)), (2, (True, False)), (2, (False, False)),
            (3, (True, True, True)), (3, (True, True, False)), (3, (True, False, False))} <= kinds


@pytest.mark.parametrize("case", sorted(CASES))
def test_nested_cms_matches_the_interpreter(case: str) -> None:
    assert_matches_interpreter(nested_spec(case), length=LENGTH, seed=1)


@pytest.mark.parametrize("case", ["three_in_context", "three_mixed"])
def test_every_faster_level_restarts_from_a_slower_one_that_moved(case: str) -> None:
    """Past twice the slowest period (T = 19): at T = 11 the middle level never moved again after the
    slowest one did, so a restart that reset only the fastest level from it went unnoticed."""
    assert_matches_interpreter(nested_spec(case), length=19, seed=5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_calls_with_the_carried_state_equal_one_call(case: str) -> None:
    """Cut at chunk boundaries of every level that learns in context, the calls continue the one call:
    logits, the final state and the gradients of every parameter through the carried states."""
    spec = nested_spec(case)
    layer = nested_layer(spec)
    model = perturbed_model(spec, seed=2)
    tokens, targets = batch(spec.model.vocab, seed=2)
    whole, whole_state = model(tokens, targets, return_state=True)
    pieces, state = [], None
    bounds = (0, *CASES[case].splits, LENGTH)
    for start, end in itertools.pairwise(bounds):
        logits, state = model(tokens[:, start:end], targets[:, start:end], state=state, return_state=True)
        pieces.append(logits)
    streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(streamed, whole, rtol=1e-10, atol=1e-12)

    for block_state, whole_block in zip(state, whole_state, strict=True):
        carried = block_state["c"]
        assert list(carried) == ["_position", *(level.name for level in layer.levels)]
        assert carried["_position"] == whole_block["c"]["_position"]  # the stream's tokens so far
        fastest_learns = learns_in_context(layer.levels[0], spec.train.seq_len)
        for level in layer.levels:
            # a level carries a state exactly when it moves in context (the fastest decides whether any does)
            moves = fastest_learns and learns_in_context(level, spec.train.seq_len)
            assert isinstance(carried[level.name], MemoryState) if moves else carried[level.name] is None, level.name
    for got, want in zip(tensors(state), tensors(whole_state), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    probe = torch.randn(whole.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    parameters = list(model.parameters())
    streamed_grads = torch.autograd.grad((streamed * probe).sum(), parameters, allow_unused=True)
    whole_grads = torch.autograd.grad((whole * probe).sum(), parameters, allow_unused=True)
    for name, got, want in zip([n for n, _ in model.named_parameters()], streamed_grads, whole_grads):
        assert (got is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)


def test_a_carried_state_without_its_stream_position_is_refused() -> None:
    """Without `_position` the slower levels would time their writes from token 0 again, silently."""
    spec = nested_spec("three_mixed")
    model = perturbed_model(spec, seed=2)
    tokens, targets = batch(spec.model.vocab, seed=2)
    _, state = model(tokens, targets, return_state=True)
    state[0]["c"].pop("_position")
    with pytest.raises(ValueError, match=re.escape("the state of block 0 has no `[0].c._position`")):
        model(tokens, targets, state=state)


def loss_grads_and_state(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> list:
    """The loss, its gradient for every parameter (None where unused) and the carried state's tensors."""
    logits, state = model(tokens, targets, return_state=True)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return [loss.detach(), *grads, *(t.detach() for t in tensors(state))]


@pytest.mark.parametrize("case", sorted(CASES))
def test_recomputed_stretches_equal_the_plain_loop(case: str) -> None:
    spec = nested_spec(case)
    model = perturbed_model(spec, seed=4)
    tokens, targets = batch(spec.model.vocab, seed=4)
    plain = loss_grads_and_state(model, tokens, targets)
    for stretch in (1, 2, 4):  # the fastest level's 6 chunks: stretches that do and do not divide them
        with recomputed_chunks(stretch):
            assert_same(loss_grads_and_state(model, tokens, targets), plain, rtol=1e-12)
    recomputed = compile_loss(model.loss, False, recompute=3)(tokens, targets)
    torch.testing.assert_close(recomputed, plain[0], rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["three_mixed", "three_slow_clock", "two_in_context", "one_clock"])
def test_compiled_chunk_bodies_equal_eager(case: str) -> None:
    """`train.compile = chunks`, alone and with recomputed stretches: the same loss, gradients and state,
    and a second step compiles nothing new."""
    torch._dynamo.reset()
    spec = nested_spec(case)
    model = perturbed_model(spec, seed=5)
    tokens, targets = batch(spec.model.vocab, seed=5)
    eager = loss_grads_and_state(model, tokens, targets)
    counter = CompileCounterWithBackend("aot_eager")
    with compiled_chunks(backend=counter):
        assert_same(loss_grads_and_state(model, tokens, targets), eager, rtol=1e-9)
    frames = counter.frame_count
    learns = learns_in_context(nested_layer(spec).levels[0], spec.train.seq_len)
    assert (frames > 0) == learns, "the fastest level's chunk step is the one chunk body"
    with compiled_chunks(backend=counter), recomputed_chunks(2):
        assert_same(loss_grads_and_state(model, tokens, targets), eager, rtol=1e-9)
    assert counter.frame_count == frames, "a recomputed stretch compiled a new graph"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["three_mixed", "one_clock"])
def test_whole_model_compiles_as_one_graph(case: str) -> None:
    """torch.compile(fullgraph=True) of a call that takes and returns the nested state: one graph per
    kind of call, equal to eager."""
    torch._dynamo.reset()
    spec = nested_spec(case)
    model = perturbed_model(spec, seed=6)
    tokens, targets = batch(spec.model.vocab, seed=6)
    _, state = model(tokens, targets, return_state=True)
    counter = CompileCounterWithBackend("aot_eager")

    def call(tokens: torch.Tensor, targets: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        return model(tokens, targets, state=state, return_state=True)

    compiled = torch.compile(call, fullgraph=True, backend=counter)
    for _ in range(2):
        logits, carried = compiled(tokens, targets, state)
        eager_logits, eager_carried = call(tokens, targets, state)
        torch.testing.assert_close(logits, eager_logits, rtol=1e-10, atol=1e-12)
        for got, want in zip(tensors(carried), tensors(eager_carried), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert counter.frame_count == 1


# The checker ---------------------------------------------------------------------------------------

SLOWER_LEVEL = """model m {{
  dim = 8
  block {{
    cms {{
      variant = nested
      level fast {{ period = 2 }}
      level slow {{
        period = 4
        {setting}
      }}
    }}
  }}
}}
"""


@pytest.mark.parametrize("setting, blamed, message", [
    ("update = outer", "update = outer", "runs no MLP of its own"),
    ("lr = learned(max = 0.1)", "lr = learned(max = 0.1)", "with a constant `lr` only"),
    ("retention = 0.9", "retention = 0.9", "with a constant `lr` only"),
    ("momentum = 0.5", "momentum = 0.5", "with a constant `lr` only"),
])
def test_a_slower_nested_level_is_refused_for_what_it_sets(setting: str, blamed: str, message: str) -> None:
    """Each refusal names its own reason and points at the attribute that causes it."""
    text = SLOWER_LEVEL.format(setting=f"lr = 0.5\n        {setting}" if "lr =" not in setting else setting)
    result = check_text(text, "slower.nl")
    [diagnostic] = [d for d in result.diagnostics if d.severity == "error"]
    assert diagnostic.code == "E0601" and message in diagnostic.message, diagnostic.message
    assert diagnostic.span is not None and text.splitlines()[diagnostic.span.line - 1].strip() == blamed


ONE_SEQUENCE_SLOWER = """\
model m {
  dim = 16
  vocab = 32
  block {
    cms { variant = nested
      level fast { state = mlp(expansion = 1) period = 4 }
      level slow { state = mlp(expansion = 1) period = 8 lr = 0.5 } }
  }
}
train { seq_len = 8 }
"""


@pytest.mark.parametrize("length", [8, 16])
def test_a_slower_level_at_a_period_of_one_sequence_is_unread_in_training(length: int, tmp_path) -> None:
    """What W0704 says of it: it moves after the sequence's last token, so a training sequence gives
    its start no gradient; a longer call (a stream) reads the move."""
    result = check_text(ONE_SEQUENCE_SLOWER, "slower.nl")
    assert [(d.code, d.span.line) for d in result.diagnostics] == [("W0704", 7)]
    path = tmp_path / "slower.nl"
    path.write_text(ONE_SEQUENCE_SLOWER)
    import warnings

    import nldsl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load(path)
    torch.manual_seed(0)
    model(torch.randint(0, 32, (2, length))).sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if ".slow_w" in name]
    assert len(grads) == 2
    if length == 8:
        assert all(g is None or not g.any() for g in grads)
    else:
        assert all(g is not None and g.abs().max() > 0 for g in grads)

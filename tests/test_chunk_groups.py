"""`train.chunks_per_call = K` (nldsl/runtime/chunked.py): under `compile = chunks` each run of K
chunks of a chunk loop is one compiled graph. It must give the eager model's loss and gradients,
reuse its graphs across steps, really make fewer calls, and compose with `train.recompute`; the
checker refuses it without `compile = chunks` and warns where it has nothing to group.

Graphs are built by a counting backend over AOT autograd on shrunk specs (as tests/test_chunked.py);
one shrunk HOPE also runs through inductor against eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from test_chunked import CHUNK_LOOPS, batch
from test_compile import MODEL_SPECS, REPO, tiny_model
from test_interpreter import COVERAGE, model_text
from test_recompute import coverage_model
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl.checker import check_file, check_text
from nldsl.runtime import chunked
from nldsl.runtime.chunked import compile_loss, compiled_chunks, recomputed_chunks, run_chunks

pytestmark = pytest.mark.slow


class CallCounter(CompileCounterWithBackend):
    """Counts the compiled graphs (frame_count) and how often their forward runs (calls)."""

    def __init__(self) -> None:
        super().__init__("aot_eager")
        self.calls = 0

    def __call__(self, gm, example_inputs, **kwargs):
        compiled = super().__call__(gm, example_inputs, **kwargs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        return run


def loss_and_grads(model: torch.nn.Module, loss, tokens: torch.Tensor, targets: torch.Tensor):
    parameters = [p for p in model.parameters() if p.requires_grad]
    value = loss(tokens, targets)
    return value, torch.autograd.grad(value, parameters, allow_unused=True)


def assert_same(actual, expected) -> None:
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(actual[1], expected[1]):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_grouped_chunk_bodies_match_eager_and_compile_once(path: Path) -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(path)
    counter = CallCounter()
    counts = []
    for seed in range(3):  # new data each step, same shapes: every graph must be reused
        tokens, targets = batch(spec.model.vocab, seed)
        eager = loss_and_grads(model, model.loss, tokens, targets)
        with compiled_chunks(backend=counter, group=3):
            grouped = loss_and_grads(model, model.loss, tokens, targets)
        assert_same(grouped, eager)
        counts.append(counter.frame_count)
    assert counts[0] == counts[-1], f"graphs per step {counts}: a run of chunks recompiled on new data"
    assert (counts[0] > 0) == (path.stem in CHUNK_LOOPS)


@pytest.mark.parametrize("name", ["hope", "titans_lmm"])
def test_grouping_makes_fewer_calls(name: str) -> None:
    """K chunks per call: a loop of n chunks makes ceil(n / K) calls, so a step makes fewer (a
    fallback to one chunk per call would pass the equality test above)."""
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / f"{name}.nl")
    tokens, targets = batch(spec.model.vocab, 0, length=40)
    calls = {}
    for group in (1, 4):
        counter = CallCounter()
        with compiled_chunks(backend=counter, group=group):
            model.loss(tokens, targets)
        calls[group] = counter.calls
    assert 0 < calls[4] * 2 < calls[1], calls


def test_grouping_composes_with_recomputed_stretches() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "hope.nl")
    tokens, targets = batch(spec.model.vocab, 3, length=29)
    eager = loss_and_grads(model, model.loss, tokens, targets)
    counter = CallCounter()
    with compiled_chunks(backend=counter, group=2), recomputed_chunks(3):
        both = loss_and_grads(model, model.loss, tokens, targets)
    assert_same(both, eager)
    assert counter.calls > 0


@pytest.mark.parametrize("case", sorted(COVERAGE))
def test_grouped_coverage_models_match_eager(case: str) -> None:
    """Every layer kind (tests/test_interpreter.py's coverage specs). The nested cms's step reads the
    chunk's position in Python, so its loop runs one chunk per call (`run_chunks(groupable=False)`):
    as many calls grouped as not; every other case with a chunk loop makes fewer."""
    torch._dynamo.reset()
    model, vocab = coverage_model(case)
    tokens, targets = batch(vocab, 1, length=40)
    eager = loss_and_grads(model, model.loss, tokens, targets)
    calls = {}
    for group in (1, 4):
        counter = CallCounter()
        with compiled_chunks(backend=counter, group=group):
            result = loss_and_grads(model, model.loss, tokens, targets)
        assert_same(result, eager)
        calls[group] = counter.calls
    if case == "nested_cms":
        assert calls[1] == calls[4] > 0
    elif calls[1]:
        assert calls[4] < calls[1], calls


def test_run_chunks_groups_a_plain_fold() -> None:
    torch._dynamo.reset()
    counter = CallCounter()

    def step(carry: torch.Tensor, piece: tuple[torch.Tensor, torch.Tensor]):
        x, scale = piece
        carry = carry * scale + x
        return carry.sum(), carry

    pieces = [(torch.full((3,), float(i)), torch.tensor(0.5)) for i in range(7)]
    expected = chunked._fold(step, torch.zeros(3), pieces)
    with compiled_chunks(backend=counter, group=3):
        outputs, carry = run_chunks(step, torch.zeros(3), pieces)
    torch.testing.assert_close(carry, expected[1])
    torch.testing.assert_close(torch.stack(outputs), torch.stack(expected[0]))
    assert counter.calls == 3  # 3 + 3 + 1
    assert counter.frame_count == 2  # runs of 3 and of 1


def test_inductor_grouped_hope_matches_eager() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "hope.nl")
    tokens, targets = batch(spec.model.vocab, 7, length=21)
    eager = loss_and_grads(model, model.loss, tokens, targets)
    grouped = loss_and_grads(model, compile_loss(model.loss, "chunks", chunks_per_call=2), tokens, targets)
    torch.testing.assert_close(grouped[0], eager[0], rtol=1e-4, atol=1e-5)  # float32: fused kernels reorder sums
    for actual, expected in zip(grouped[1], eager[1]):
        if expected is not None:
            torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-5)
    assert not chunked.enabled() and chunked._group == 1, "the mode ends with the call"


# The checker --------------------------------------------------------------------------------------

def test_chunks_per_call_acts_under_compile_chunks_only() -> None:
    """Elsewhere it has no effect: a warning, not an error, since `nldsl train --no-compile` sets
    compile = false on a spec that groups, and must still run it."""
    for mode in ("true", "false"):
        result = check_file(REPO / "specs" / "hope.nl", ["train.chunks_per_call=4", f"train.compile={mode}"])
        assert result.ok
        [warning] = [d for d in result.diagnostics if d.code == "W0706"]
        assert warning.message.startswith(f"`chunks_per_call = 4` has no effect with `compile = {mode}`")
    assert check_file(REPO / "specs" / "hope.nl", ["train.chunks_per_call=4"]).diagnostics == []
    assert not check_file(REPO / "specs" / "hope.nl", ["train.chunks_per_call=0"]).ok


def test_chunks_per_call_warns_where_it_groups_nothing() -> None:
    def warnings(name: str, text: str | None = None) -> list[str]:
        result = (check_text(text) if text is not None else
                  check_file(REPO / "specs" / f"{name}.nl", ["train.chunks_per_call=2", "train.compile=chunks"]))
        assert result.ok
        return [d.message for d in result.diagnostics if d.code == "W0706"]

    assert warnings("hope") == [] and warnings("titans_lmm") == []
    [attention] = warnings("transformer")
    assert attention.startswith("`chunks_per_call = 2` has no effect")
    train = "train {\n  seq_len = 32\n  compile = chunks\n  chunks_per_call = 2\n}"
    text = model_text(COVERAGE["nested_cms"], train=train)
    [nested] = warnings("", text)
    assert "a nested cms runs one chunk per call" in nested

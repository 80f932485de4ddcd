"""`train.chunks_per_call = K` (nldsl/runtime/chunked.py): under `compile = chunks` each run of K
chunks of a chunk loop is one compiled graph. It must give the eager model's loss and gradients,
reuse its graphs across steps, really make fewer calls, and compose with `train.recompute`; the
checker warns where it has no effect: without `compile = chunks` or with nothing to group (W0706).

Graphs are built by a counting backend over AOT autograd on shrunk specs (as tests/test_chunked.py);
one shrunk HOPE also runs through inductor against eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from functorch.compile import make_boxed_func
from test_chunked import CHUNK_LOOPS, batch
from test_compile import MODEL_SPECS, REPO, tiny_model
from test_interpreter import COVERAGE, model_text
from test_nested_cms import nested_spec
from test_recompute import coverage_model
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl import loader
from nldsl.checker import check_file, check_text
from nldsl.runtime import blocks, chunked, fused
from nldsl.runtime.chunked import compile_loss, compiled_chunks, recomputed_chunks, run_chunks
from nldsl.runtime.memory import LevelConfig, init_memory_weights, initial_memory_state, memory_level

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
    as many calls grouped as not; every other case with a chunk loop makes fewer. K = 2: the memory
    of the mac case loops over 2 chunks a segment, and a loop shorter than K runs one chunk per call."""
    torch._dynamo.reset()
    model, vocab = coverage_model(case)
    tokens, targets = batch(vocab, 1, length=40)
    eager = loss_and_grads(model, model.loss, tokens, targets)
    calls = {}
    for group in (1, 2):
        counter = CallCounter()
        with compiled_chunks(backend=counter, group=group):
            result = loss_and_grads(model, model.loss, tokens, targets)
        assert_same(result, eager)
        calls[group] = counter.calls
    if case == "nested_cms":
        assert calls[1] == calls[2] > 0
    elif calls[1]:
        assert calls[2] < calls[1], calls


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
    assert counter.calls == 2  # 3 + 3 compiled; the one left over runs as it is (no chunk body in this step)
    assert counter.frame_count == 1  # one graph: no second one for a shorter run


@pytest.mark.parametrize("last", ["shorter", "none_entry"])
def test_a_last_piece_laid_out_unlike_the_others_runs_on_its_own(last: str) -> None:
    """A loop of 6 pieces in runs of 3 whose last piece is a shorter chunk, or holds None where the
    others hold a tensor (the last chunk's next input): a run ending with it would be a second graph
    of 3 chunks. It runs on its own instead, so the loop compiles one graph; the results are the
    plain fold's."""
    torch._dynamo.reset()
    counter = CallCounter()

    def step(carry: torch.Tensor, piece: tuple[torch.Tensor, torch.Tensor | None]):
        x, following = piece
        carry = torch.tanh(carry * 0.5 + x.sum())
        return carry.sum() + (0.0 if following is None else following.sum()), carry

    pieces = [(torch.full((3,), 0.1 * i), torch.full((3,), 0.2 * i)) for i in range(6)]
    pieces[-1] = (torch.full((2,), 0.5), pieces[-1][1]) if last == "shorter" else (pieces[-1][0], None)
    expected = chunked._fold(step, torch.zeros(3), pieces)
    with compiled_chunks(backend=counter, group=3):
        outputs, carry = run_chunks(step, torch.zeros(3), pieces)
    torch.testing.assert_close(carry, expected[1])
    torch.testing.assert_close(torch.stack(outputs), torch.stack(expected[0]))
    assert counter.frame_count == 1, "a second graph of 3 chunks for the run that ends the loop"
    assert counter.calls == 1  # one run of 3; the two left over and the last run as they are


@pytest.mark.parametrize(("readout", "grad"), [("causal", True), ("chunk_start", False)])
def test_a_loop_of_whole_runs_compiles_one_graph(readout: str, grad: bool) -> None:
    """A memory level of 4 chunks in runs of 2: the plain chunk step carries the next chunk's queries
    only where it needs them (a chunk-start level in training), so a causal level, or a chunk-start
    level read without gradients, lays out its last piece as the others and compiles one graph for
    both runs."""
    torch._dynamo.reset()
    cfg = LevelConfig("residual_mlp", d_in=4, d_out=4, hidden=8, chunk_size=3, readout=readout, objective="l2")
    generator = torch.Generator().manual_seed(0)
    weights = [w.requires_grad_(grad) for w in init_memory_weights(cfg, 2, generator=generator)]
    keys, values, queries = (torch.randn(2, 2, 12, 4, generator=generator) for _ in range(3))
    lr = 0.1 + 0.5 * torch.rand(2, 2, 12, generator=generator)
    counter = CallCounter()
    with torch.set_grad_enabled(grad), fused.fused_writes(False):
        expected, _ = memory_level(cfg, initial_memory_state(cfg, weights, 2), keys, values, queries, lr, None, None)
        with compiled_chunks(backend=counter, group=2):
            outputs, _ = memory_level(cfg, initial_memory_state(cfg, weights, 2), keys, values, queries, lr,
                                      None, None)
    torch.testing.assert_close(outputs, expected)
    assert (counter.frame_count, counter.calls) == (1, 2)


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("name", ["hope", "titans_lmm"])
def test_a_loops_first_chunk_needs_no_graph_of_its_own(name: str, group: int) -> None:
    """The state a loop starts from is laid out as the state later chunks receive: θ_0 copied per
    sequence (not an expanded view, batch stride 0), S = 0 requiring gradients as later S do, conv
    caches of zeros rather than None, one tensor each. Otherwise each loop compiles its first chunk
    (or run of chunks) as a graph of its own. Compiled chunk code may recompile for another level
    or chunk shape, never for these; and a run of chunks never for a last piece laid out unlike
    the others (it runs on its own)."""
    torch._dynamo.reset()
    torch._dynamo.utils.guard_failures.clear()
    model, spec = tiny_model(REPO / "specs" / f"{name}.nl")
    counter = CallCounter()
    for seed in range(2):
        tokens, targets = batch(spec.model.vocab, seed, length=48)
        with compiled_chunks(backend=counter, group=group):
            loss_and_grads(model, model.loss, tokens, targets)
    assert counter.calls > 0
    layout = ("stride mismatch", "requires_grad mismatch", "is None", " is ")  # (" is ": aliasing)
    carried = ("carry", "state", "stacked", "caches")  # what a loop carries from chunk to chunk
    for code, reasons in torch._dynamo.utils.guard_failures.items():
        for reason in reasons:
            about_carry = any(name in reason for name in carried)
            assert not (about_carry and any(word in reason for word in layout)), f"{code.co_name} recompiled: {reason}"
            if code.co_name.startswith("chunks_of_"):
                assert "NoneType" not in reason, f"{code.co_name} recompiled: {reason}"
    if name == "titans_lmm":
        assert counter.frame_count == 1  # its one loop: one graph (two before the initial state's layout matched)


def test_the_plain_projection_loop_of_whole_runs_runs_no_chunk_on_its_own(monkeypatch) -> None:
    """HOPE's self-modifying projections without the fused write (a GPU, autocast): the plain chunk
    step reads no next chunk, so its pieces carry None in every one, and a loop of whole runs of K
    chunks runs every chunk inside them. With the next chunk's x in every piece but the last, that
    last piece ran on its own and the run before it was cut up: one more graph (the chunk body's,
    compiled one chunk per call) and K − 1 more calls."""
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "hope.nl")
    alone = []
    plain = blocks.projection_chunk_step

    def counted(*args, **kwargs):
        if not torch.compiler.is_compiling():
            alone.append(args[2].shape[-2])  # a chunk run on its own, outside a compiled run of chunks
        return plain(*args, **kwargs)

    monkeypatch.setattr(blocks, "projection_chunk_step", counted)
    tokens, targets = batch(spec.model.vocab, 0, length=48)  # whole runs of 3 chunks in every loop
    with fused.fused_writes(False), compiled_chunks(backend=CallCounter(), group=3):
        loss_and_grads(model, model.loss, tokens, targets)
    assert alone == []


def test_a_nested_cms_restart_needs_no_graph_of_its_own() -> None:
    """Where a slower nested CMS level moves, the fast level restarts from it with S = 0: made as
    0·θ (memory.zero_momentum), it requires gradients as the S of every other chunk does, so the
    chunk after a restart reuses the chunk body's graph (a fresh zero tensor would recompile it)."""
    torch._dynamo.reset()
    torch._dynamo.utils.guard_failures.clear()
    spec = nested_spec("two_in_context")  # fast: momentum, period 2; slow: period 4
    torch.manual_seed(0)
    model = loader.build_module(spec).build()
    tokens = torch.randint(0, 13, (2, 12), generator=torch.Generator().manual_seed(0))  # moves at 4, 8, 12
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    counter = CallCounter()
    with compiled_chunks(backend=counter):
        loss_and_grads(model, model.loss, tokens, targets)
    assert counter.calls > 0
    reasons = [reason for code, found in torch._dynamo.utils.guard_failures.items()
               if code.co_name == "memory_chunk_step" for reason in found]
    assert not [reason for reason in reasons if "requires_grad mismatch" in reason], reasons


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


class PassCounter:
    """An AOT-autograd backend that counts how often its forward and its backward graphs run."""

    def __init__(self) -> None:
        self.forward = self.backward = 0
        self.backend = aot_autograd(fw_compiler=self.counting("forward"), bw_compiler=self.counting("backward"))

    def counting(self, kind: str):
        def compiler(gm, example_inputs):
            def run(*args):
                setattr(self, kind, getattr(self, kind) + 1)
                return gm(*args)

            return make_boxed_func(run)

        return compiler

    def __call__(self, gm, example_inputs, **kwargs):
        return self.backend(gm, example_inputs, **kwargs)


@pytest.mark.parametrize("kernel", [False, True], ids=["pytorch_step", "fused_pipelined"])
@pytest.mark.parametrize("group", [1, 3])
def test_a_chunk_start_levels_dropped_end_state_runs_no_backward(group: int, kernel: bool) -> None:
    """A chunk-start level's last chunk only writes in training (memory_level `split_last`, and the
    fused kernel's pipelined loop, whose last call reads nothing), and a training step drops that
    state: its write must be an autograd node of its own that the backward pass never runs, grouped
    or not. Inside a compiled run of chunks it would be part of one node whose backward runs through
    it (zero gradients, a wasted chunk of backward work per level and step)."""
    if kernel and not fused.available():
        pytest.skip("the fused write kernel cannot be built here")
    torch._dynamo.reset()
    cfg = LevelConfig("residual_mlp", d_in=4, d_out=4, hidden=8, chunk_size=3, readout="chunk_start")
    generator = torch.Generator().manual_seed(0)
    weights = [w.requires_grad_() for w in init_memory_weights(cfg, 2, generator=generator)]
    keys, values, queries = (torch.randn(2, 2, 11, 4, generator=generator).requires_grad_() for _ in range(3))
    lr = (0.1 + 0.5 * torch.rand(2, 2, 11, generator=generator)).requires_grad_()
    leaves = [*weights, keys, values, queries, lr]

    def run(compiled: PassCounter | None, keep_state: bool):
        with fused.fused_writes(kernel), compiled_chunks(compiled is not None, backend=compiled, group=group):
            outputs, final = memory_level(cfg, initial_memory_state(cfg, weights, 2), keys, values, queries, lr,
                                          None, None)
        loss = (outputs * torch.linspace(-1, 1, 4)).sum() + (sum(w.sum() for w in final.weights) if keep_state else 0)
        return loss, torch.autograd.grad(loss, leaves)

    for keep_state in (False, True):
        counter = PassCounter()
        assert_same(run(counter, keep_state), run(None, keep_state))
        if keep_state:
            assert counter.backward == counter.forward, (counter.forward, counter.backward)
        else:  # 4 chunks: 4 bodies (K = 1), or a run of 3 and the last chunk's write alone (K = 3)
            assert counter.forward == (4 if group == 1 else 2), counter.forward
            assert counter.backward == counter.forward - 1, "the dropped end state's write ran backward"


@pytest.mark.parametrize(("count", "recompute", "calls"), [
    (7, 0, 2),  # runs of 3 and 3, then the last piece alone
    (8, 4, 2),  # stretches of 4: a run of 3, one left over | a run of 3, then the last piece alone
])
def test_last_apart_keeps_only_the_loops_last_piece_out_of_the_compiled_runs(count: int, recompute: int,
                                                                             calls: int) -> None:
    """`run_chunks(last_apart=True)` under grouping: the loop's last piece runs eagerly (here a plain
    step: no compiled call), in a recomputed stretch only in the stretch that holds it; the results
    and gradients are the plain fold's."""
    torch._dynamo.reset()

    def step(carry: torch.Tensor, piece: tuple[torch.Tensor]):
        carry = torch.tanh(carry * 0.5 + piece[0])
        return carry.sum(), carry

    def fold(run):
        start = torch.linspace(-1, 1, 3).requires_grad_()
        pieces = [(torch.full((3,), 0.1 * i),) for i in range(count)]
        outputs, carry = run(step, start, pieces)
        value = torch.stack(outputs).sum() + carry.pow(2).sum()
        return value, torch.autograd.grad(value, [start])

    counter = CallCounter()

    def grouped(step, start, pieces):
        with compiled_chunks(backend=counter, group=3), recomputed_chunks(recompute):
            result = run_chunks(step, start, pieces, last_apart=True)
        assert counter.calls == calls, counter.calls  # the forward's, before the backward reruns any
        return result

    assert_same(fold(grouped), fold(chunked._fold))


def test_closures_of_one_code_object_get_their_own_graphs() -> None:
    """`_folds` keeps one compiled fold per step's code object: two closures of one code that capture
    different constants or functions must not share a graph (dynamo guards the closure's cells)."""
    torch._dynamo.reset()

    def make(scale: float, activation):
        def step(carry: torch.Tensor, piece: torch.Tensor):
            carry = activation(carry * scale + piece)
            return carry.sum(), carry

        return step

    pieces = [torch.full((3,), 0.25 * i) for i in range(5)]
    counter = CallCounter()
    for step in (make(0.5, torch.tanh), make(2.0, torch.tanh), make(0.5, torch.sigmoid), make(0.5, torch.tanh)):
        expected = chunked._fold(step, torch.ones(3), pieces)
        with compiled_chunks(backend=counter, group=2):
            outputs, carry = run_chunks(step, torch.ones(3), pieces)
        torch.testing.assert_close(carry, expected[1])
        torch.testing.assert_close(torch.stack(outputs), torch.stack(expected[0]))
    assert len([key for key in chunked._folds if key[1] == id(counter)]) == 1  # one fold, several graphs


def test_the_device_type_is_read_from_a_top_level_tensor_or_a_nested_one() -> None:
    """A chunk body's tensors sit among its arguments; a fold's inside its carry and pieces."""
    meta = torch.empty(1, device="meta")
    assert chunked._device_type((None, {"x": [meta]}, (torch.zeros(1),))) == "meta"
    assert chunked._device_type((object(), torch.zeros(1), meta)) == "cpu"
    assert chunked._device_type((None, 3)) == "cpu"


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
    # a spec that leaves `compile` out compiles one whole graph (the default, true)
    text = model_text(COVERAGE["nested_cms"], train="train {\n  seq_len = 32\n  chunks_per_call = 2\n}")
    [warning] = [d for d in check_text(text).diagnostics if d.code == "W0706"]
    assert warning.message.startswith("`chunks_per_call = 2` has no effect with `compile = true`")
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
    # the other cms variants' loops are grouped (each level is a memory_level loop)
    assert warnings("", model_text(COVERAGE["independent_cms"], train=train)) == []

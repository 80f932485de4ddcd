"""`train.compile = blocks` (nldsl/runtime/chunked.py `compiled_blocks`): each block is one compiled
graph, the same graph for every block of a model, reused across steps, and the loss and gradients
are the eager model's.

Graph counts use a counting backend over AOT autograd (forward and backward graphs are built) on the
shrunk shipped specs (two blocks each); one model also runs through inductor against eager.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_compile import MODEL_SPECS, REPO, tiny_model
from test_compiler import DIVERGED_STATE, FLOOR, amplifies_rounding, perturbed_model, random_specs
from test_wide_specs import wide_specs
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl import loader
from nldsl import semantics as SEM
from nldsl.checker import check_text
from nldsl.runtime import chunked
from nldsl.runtime.blocks import _tensors
from nldsl.runtime.chunked import block_compiler, compile_loss, compiled_blocks

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def batch(vocab: int, seed: int, length: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))
    return tokens, torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)


def assert_same_loss_and_grads(model, loss_function, tokens, targets, rtol: float = 1e-4) -> None:
    parameters = [p for p in model.parameters() if p.requires_grad]
    eager = model.loss(tokens, targets)
    eager_grads = torch.autograd.grad(eager, parameters, allow_unused=True)
    compiled = loss_function(tokens, targets)
    compiled_grads = torch.autograd.grad(compiled, parameters, allow_unused=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for actual, expected in zip(compiled_grads, eager_grads):
        assert (actual is None) == (expected is None)
        if actual is not None:
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_every_block_runs_one_graph_and_matches_eager(path: Path) -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(path)
    assert spec.model.layers >= 2, "one graph for several blocks needs several blocks"
    counter = CompileCounterWithBackend("aot_eager")
    call = block_compiler(backend=counter)

    def loss_function(tokens, targets):
        with compiled_blocks(call):
            return model.loss(tokens, targets)

    counts = []
    for seed in range(3):  # new data each step, same shapes: the block graph must be reused
        assert_same_loss_and_grads(model, loss_function, *batch(spec.model.vocab, seed))
        counts.append(counter.frame_count)
    assert counts == [1, 1, 1], f"block graphs per step {counts}: a graph per block, a break or a recompile"


def test_inductor_block_compiled_loss_matches_eager_and_the_mode_ends_with_the_call() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "titans_mag.nl")
    loss_function = compile_loss(model.loss, "blocks")
    for seed in range(2):
        assert_same_loss_and_grads(model, loss_function, *batch(spec.model.vocab, seed), rtol=1e-3)
    assert chunked._block_call is None, "the compiled call is set for the loss's call only"
    with pytest.raises(ValueError, match="recompute needs"):
        compile_loss(model.loss, "blocks", recompute=2)


def test_block_graphs_run_under_bf16_autocast() -> None:
    """`precision = bf16`: the training loop enters autocast around the loss, outside the block graphs."""
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "titans_mag.nl")
    tokens, targets = batch(spec.model.vocab, 5)
    counter = CompileCounterWithBackend("aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model.loss(tokens, targets)
        with compiled_blocks(block_compiler(backend=counter)):
            compiled = model.loss(tokens, targets)
    assert counter.frame_count == 1
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)  # the same bf16 products, in one graph


def test_a_carried_state_runs_through_the_block_graph_and_an_edited_one_is_named() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "titans_lmm.nl")
    tokens, _ = batch(spec.model.vocab, 3, length=20)
    counter = CompileCounterWithBackend("aot_eager")
    call = block_compiler(backend=counter)
    with torch.no_grad():
        _, state = model(tokens[:, :9], return_state=True)
        expected = model(tokens[:, 9:], state=state)
        with compiled_blocks(call):
            _, compiled_state = model(tokens[:, :9], return_state=True)
            continued = model(tokens[:, 9:], state=compiled_state)
    torch.testing.assert_close(continued, expected, rtol=1e-5, atol=1e-6)
    assert counter.frame_count >= 1
    edited = [dict(block) for block in state]
    edited[0][next(iter(edited[0]))] = None  # a part the model's own state holds, replaced by None
    with torch.no_grad(), compiled_blocks(call), pytest.raises(ValueError, match="the state of block 0 holds None"):
        model(tokens[:, 9:], state=edited)


KEYS_READ_BY_THE_STATE_ONLY = """model keys {
  vocab = 13
  dim = 8
  layers = 2
  block {
    memory {
      heads = 2
      conv = 2
      level { state = linear objective = reconstruction period = 2 grad_through_writes = false }
    }
  }
}
"""


def test_a_weight_only_the_state_reads_gets_no_gradient_as_in_eager() -> None:
    """The key projection reaches the loss only through writes cut from the graph, but the
    convolution's cache in the block's state reads it: a block graph that returned that cache with
    its graph gave the projection a zero gradient (which AdamW's decay acts on) where eager gives
    none. Kept with `state_graph = True`, the state's graph reaches the weights it read."""
    torch._dynamo.reset()
    spec = check_text(KEYS_READ_BY_THE_STATE_ONLY, "keys.nl").spec
    torch.manual_seed(0)
    model = loader.build_module(spec).build()
    tokens, targets = batch(spec.model.vocab, 0)
    keys = model.blocks[0].memory.wk
    assert torch.autograd.grad(model.loss(tokens, targets), keys, allow_unused=True) == (None,)
    call = block_compiler(backend=CompileCounterWithBackend("aot_eager"))

    def loss_function(tokens, targets):
        with compiled_blocks(call):
            return model.loss(tokens, targets)

    assert_same_loss_and_grads(model, loss_function, tokens, targets)
    with compiled_blocks(call, state_graph=True):
        _, state = model(tokens, return_state=True)
    (cache_gradient,) = torch.autograd.grad(state[0]["memory"]["conv_k"].sum(), keys)
    assert cache_gradient.abs().sum() > 0


BLOCKED_SPECS = int(os.environ.get("NLDSL_BLOCKED_SPECS", "8"))


@settings(max_examples=BLOCKED_SPECS, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(text=st.one_of(random_specs(), wide_specs()), layers=st.sampled_from([2, 3]), length=st.integers(5, 16))
def test_a_random_spec_runs_one_block_graph_with_the_eager_loss_and_gradients(text: str, layers: int,
                                                                             length: int) -> None:
    """Both random generators' specs, made 2 or 3 blocks deep: one graph for every block and both
    steps, and the loss and every gradient (None where eager's is None) of eager, in float64."""
    result = check_text(re.sub(r"(?m)^  layers = \d+", f"  layers = {layers}", text), "random.nl")
    assume(not any(d.severity == "error" for d in result.diagnostics))
    spec = result.spec
    model = perturbed_model(spec, 0)
    steps = [batch(spec.model.vocab, seed, length) for seed in range(2)]
    with torch.no_grad():
        outputs, state = model(steps[0][0], return_state=True)
    assume(torch.isfinite(outputs).all() and not amplifies_rounding(model, steps[0][0]))
    assume(all(t.abs().max() <= DIVERGED_STATE for t in _tensors(state) if t.is_floating_point() and t.numel()))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    call = block_compiler(backend=counter)
    parameters = [p for p in model.parameters() if p.requires_grad]
    for tokens, targets in steps:
        eager = model.loss(tokens, targets)
        expected = torch.autograd.grad(eager, parameters, allow_unused=True)
        with compiled_blocks(call):
            compiled = model.loss(tokens, targets)
        actual = torch.autograd.grad(compiled, parameters, allow_unused=True)
        assert abs(compiled.item() - eager.item()) <= 1e-9 * abs(eager.item()), text
        total = math.sqrt(sum(g.norm().item() ** 2 for g in expected if g is not None))
        for got, want in zip(actual, expected, strict=True):
            assert (got is None) == (want is None), text
            if want is not None:
                assert (got - want).norm().item() <= 1e-9 * max(want.norm().item(), FLOOR * total, 1e-300), text
    assert counter.frame_count == 1, f"{counter.frame_count} block graphs: a graph per block, a break or a recompile"


def test_each_model_keeps_its_own_recompile_limit(monkeypatch) -> None:
    """One shared compiled function would pile every model's block graphs onto one recompile limit:
    with a limit of one graph, the second model would fail to compile."""
    torch._dynamo.reset()
    monkeypatch.setattr(chunked, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    inductor = chunked.block_compiler  # minutes for three models here: the backend is swapped
    monkeypatch.setattr(chunked, "block_compiler",
                        lambda fullgraph=True: inductor(backend="eager", fullgraph=fullgraph))
    for name in ("transformer", "linear_attention", "titans_mag"):
        model, spec = tiny_model(REPO / "specs" / f"{name}.nl")
        assert torch.isfinite(compile_loss(model.loss, "blocks")(*batch(spec.model.vocab, 0)))


def test_the_checker_names_per_block_compilation_for_a_deep_whole_graph() -> None:
    text = "model tiny {\n  dim = 64\n  layers = 16\n  block {\n    mlp { }\n  }\n}\n"

    def deep(*overrides: str) -> list:
        return [d for d in check_text(text, "deep.nl", list(overrides)).diagnostics if d.code == "W0717"]

    (warning,) = deep()
    assert warning.severity == "warning" and warning.span.line == 3  # `layers = 16`
    assert "all 16 blocks into one graph" in warning.message and "`compile = blocks`" in warning.help
    assert not deep(f"model.layers={SEM.DEEP_MODEL_LAYERS - 1}")
    assert not deep("train.compile=blocks") and not deep("train.compile=chunks") and not deep("train.compile=false")
    # a deep model whose chunk loops W0714 already counts gets that warning alone
    looping = text.replace("mlp { }", "memory {\n      level { state = mlp(depth = 2)  period = 16 }\n    }")
    codes = {d.code for d in check_text(looping, "deep.nl", []).diagnostics}
    assert "W0714" in codes and "W0717" not in codes
    assert "W0717" not in {d.code for d in check_text(text, "deep.nl", ["model.dim=-1"]).diagnostics}  # errors first


def test_the_checker_counts_one_block_for_w0714_and_refuses_recompute() -> None:
    text = ("model tiny {\n  dim = 64\n  layers = 4\n  block {\n    memory {\n"
            "      level { state = mlp(depth = 2)  period = 16 }\n    }\n  }\n}\ntrain { seq_len = 256 }\n")

    def codes(*overrides: str) -> dict[str, list]:
        found: dict[str, list] = {}
        for d in check_text(text, "deep.nl", list(overrides)).diagnostics:
            found.setdefault(d.code, []).append(d)
        return found

    whole = codes()["W0714"][0]  # 4 blocks × 16 chunk steps in one graph
    assert "64 chunk steps" in whole.message and "`compile = blocks` (one block's graph, 16 chunk steps" in whole.help
    assert "W0714" not in codes("train.compile=blocks")  # one block's graph: 16 chunk steps
    long = codes("train.compile=blocks", "train.seq_len=1024")["W0714"][0]
    assert long.message.startswith("`compile = blocks` unrolls a block's chunk loops")
    assert "64 chunk steps" in long.message
    assert "compile = blocks" not in long.help  # it is the mode already
    refused = codes("train.compile=blocks", "train.recompute=2")["E0601"][0]
    assert "a block graph would trace" in refused.help
    spec = check_text(text, "deep.nl", ["train.compile=blocks"]).spec
    assert spec.train.compile == "blocks"
    assert loader.build_module(spec).build() is not None

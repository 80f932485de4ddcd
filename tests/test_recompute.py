"""`train.recompute = N` (nldsl/runtime/chunked.py): every chunk loop runs in stretches of N chunks under
`torch.utils.checkpoint`, so the backward pass keeps one state per stretch and reruns the chunks.

The outputs, the carried state and every gradient must be those of the plain loop (float64, to
rounding), eager and with the chunk bodies compiled; what the backward pass keeps must shrink; the
checker must refuse the one mode it cannot serve.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from test_compile import REPO, tiny_model
from test_interpreter import COVERAGE, COVERAGE_TRAIN, model_text
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl import loader
from nldsl.checker import check_text
from nldsl.runtime.chunked import compile_loss, compiled_chunks, recomputed_chunks, run_chunks
from nldsl.runtime.memory import LevelConfig, init_memory_weights, initial_memory_state, memory_level


def batch(vocab: int, length: int = 29) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(3))
    return tokens, torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)


def loss_and_grads(model: torch.nn.Module, loss, tokens, targets) -> list[torch.Tensor | None]:
    parameters = [p for p in model.parameters() if p.requires_grad]
    value = loss(tokens, targets)
    return [value.detach(), *torch.autograd.grad(value, parameters, allow_unused=True)]


def assert_same(actual: list, expected: list, rtol: float) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * 1e-3)


def coverage_model(case: str) -> tuple[torch.nn.Module, int]:
    result = check_text(model_text(COVERAGE[case], train=COVERAGE_TRAIN))
    assert result.ok and result.spec is not None and result.spec.model is not None
    torch.manual_seed(0)
    return loader.build_module(result.spec).build(), result.spec.model.vocab


SHIPPED = ["hope", "titans_lmm", "titans_mac"]
CASES = [*SHIPPED, "nested_cms", "independent_cms", "hope_with_q", "mag"]


def build_case(case: str) -> tuple[torch.nn.Module, int]:
    if case in SHIPPED:
        model, spec = tiny_model(REPO / "specs" / f"{case}.nl")
        return model, spec.model.vocab
    return coverage_model(case)


@pytest.mark.parametrize("case", CASES)
def test_recomputed_loss_and_gradients_equal_the_plain_loop(case: str) -> None:
    model, vocab = build_case(case)
    model = model.double()
    tokens, targets = batch(vocab)
    plain = loss_and_grads(model, model.loss, tokens, targets)
    for stretch in (1, 2, 5):  # 29 tokens: a last stretch shorter than the others, and a last chunk too
        recomputed = loss_and_grads(model, compile_loss(model.loss, False, recompute=stretch), tokens, targets)
        assert_same(recomputed, plain, rtol=1e-12)


def test_memory_level_outputs_state_and_gradients_under_recomputation() -> None:
    cfg = LevelConfig(state="residual_mlp", d_in=8, d_out=8, hidden=16, values="generated", dgd=True,
                      momentum=True, chunk_size=4, readout="chunk_start")
    generator = torch.Generator().manual_seed(0)
    weights = [w.double().requires_grad_() for w in init_memory_weights(cfg, 2, generator=generator)]
    keys = torch.randn(3, 2, 23, 8, dtype=torch.float64, generator=generator).requires_grad_()
    values = torch.randn(3, 2, 23, 8, dtype=torch.float64, generator=generator).requires_grad_()
    gates = [torch.rand(3, 2, 23, dtype=torch.float64, generator=generator).requires_grad_() for _ in range(3)]

    def run() -> list[torch.Tensor]:
        state = initial_memory_state(cfg, weights, 3)
        out, final = memory_level(cfg, state, keys, values, keys, 0.1 * gates[0], gates[1], gates[2])
        loss = out.square().sum() + sum(w.square().sum() for w in final.weights + final.momentum)
        leaves = [*weights, keys, values, *gates]
        return [out.detach(), *(t.detach() for t in final.weights + final.momentum),
                *torch.autograd.grad(loss, leaves)]

    plain = run()
    with recomputed_chunks(2):
        recomputed = run()
    assert_same(recomputed, plain, rtol=1e-12)


def saved_bytes(loss, tokens, targets) -> int:
    """Bytes the autograd graph of one loss holds for its backward pass (outside recomputed stretches)."""
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss(tokens, targets).backward()
    return total[0]


def test_recomputation_keeps_less_for_the_backward_pass() -> None:
    model, vocab = build_case("hope")
    tokens, targets = batch(vocab, length=96)
    plain = saved_bytes(model.loss, tokens, targets)
    recomputed = saved_bytes(compile_loss(model.loss, False, recompute=8), tokens, targets)
    assert recomputed < 0.5 * plain, (recomputed, plain)


@pytest.mark.slow
def test_recomputed_stretches_rerun_the_compiled_chunk_bodies() -> None:
    """With the chunk bodies compiled, the backward pass reruns each stretch through the same graphs
    (a rerun through the eager bodies would save different tensors) and compiles nothing new."""
    torch._dynamo.reset()
    model, vocab = build_case("hope")
    tokens, targets = batch(vocab)
    eager = loss_and_grads(model, model.loss, tokens, targets)
    counter = CompileCounterWithBackend("aot_eager")

    def chunk_compiled(*args):
        with compiled_chunks(backend=counter), recomputed_chunks(3):
            return model.loss(*args)

    first = loss_and_grads(model, chunk_compiled, tokens, targets)
    frames = counter.frame_count
    second = loss_and_grads(model, chunk_compiled, tokens, targets)
    assert frames > 0 and counter.frame_count == frames, "a recomputed stretch compiled a new graph"
    assert_same(first, eager, rtol=1e-4)
    assert_same(second, first, rtol=0)


def test_run_chunks_is_the_plain_fold_without_gradients() -> None:
    def step(carry: int, piece: int) -> tuple[int, int]:
        return carry + piece, carry + piece

    with recomputed_chunks(2), torch.no_grad():
        assert run_chunks(step, 0, range(5)) == ([0, 1, 3, 6, 10], 10)


def test_the_checker_refuses_recompute_with_one_whole_graph() -> None:
    text = model_text(COVERAGE["nested_cms"], train="train {\n  seq_len = 32\n  recompute = 4\n}")
    result = check_text(text)
    assert not result.ok
    [diagnostic] = [d for d in result.diagnostics if d.severity == "error"]
    assert diagnostic.code == "E0601" and "recompute" in diagnostic.message
    assert diagnostic.span is not None and text.splitlines()[diagnostic.span.line - 1].strip() == "recompute = 4"
    assert check_text(text.replace("recompute = 4", "recompute = 4\n  compile = chunks")).ok
    assert check_text(text, overrides=["train.compile=false"]).ok
    negative = check_text(text.replace("recompute = 4", "recompute = -1\n  compile = chunks"))
    assert not negative.ok


def test_compile_loss_refuses_recompute_with_one_whole_graph() -> None:
    with pytest.raises(ValueError, match="recompute"):
        compile_loss(lambda *args: None, True, recompute=2)

"""`train.compile = chunks` (nldsl/runtime/chunked.py): each chunk body compiles as one graph, once per
shape, is reused across steps, and gives the eager model's loss and gradients.

Graph counts use a counting backend over AOT autograd (forward and backward graphs are built) on
shrunk specs; one shrunk HOPE also runs through inductor against eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from test_compile import MODEL_SPECS, REPO, tiny_model
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl.runtime import chunked
from nldsl.runtime.chunked import compile_loss, compiled_chunks

pytestmark = pytest.mark.slow

# Specs whose layers loop over chunks (memory levels, self-modifying projections, in-context CMS);
# the others run no chunk body at all.
CHUNK_LOOPS = {"hope", "hope_attention", "titans_lmm", "titans_mac", "titans_mag", "titans_mal"}


def batch(vocab: int, seed: int, length: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))
    return tokens, torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_chunk_bodies_compile_once_and_match_eager(path: Path) -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(path)
    parameters = [p for p in model.parameters() if p.requires_grad]
    counter = CompileCounterWithBackend("aot_eager")
    counts = []
    for seed in range(3):  # new data each step, same shapes: every graph must be reused
        tokens, targets = batch(spec.model.vocab, seed)
        eager = model.loss(tokens, targets)
        eager_grads = torch.autograd.grad(eager, parameters, allow_unused=True)
        with compiled_chunks(backend=counter):
            chunked_loss = model.loss(tokens, targets)
        chunked_grads = torch.autograd.grad(chunked_loss, parameters, allow_unused=True)
        torch.testing.assert_close(chunked_loss, eager, rtol=1e-5, atol=1e-6)
        for actual, expected in zip(chunked_grads, eager_grads):
            assert (actual is None) == (expected is None)
            if actual is not None:
                torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
        counts.append(counter.frame_count)
    assert counts[0] == counts[-1], f"graphs per step {counts}: a body recompiled on new data"
    if path.stem in CHUNK_LOOPS:
        assert counts[0] > 0, "no chunk body was compiled"
    else:
        assert counts[0] == 0


def test_inductor_chunk_compiled_hope_matches_eager() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "hope.nl")
    tokens, targets = batch(spec.model.vocab, 7, length=21)
    eager = model.loss(tokens, targets)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()), allow_unused=True)
    loss = compile_loss(model.loss, "chunks")
    compiled = loss(tokens, targets)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)  # float32: fused kernels reorder sums
    for actual, expected in zip(compiled_grads, eager_grads):
        if expected is not None:
            torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-5)
    assert not chunked.enabled(), "the mode ends with the call"


def test_compile_loss_modes() -> None:
    def loss(x: torch.Tensor) -> torch.Tensor:
        assert chunked.enabled() == inside[0]
        return x.sum()

    inside = [False]
    assert compile_loss(loss, False) is loss
    inside[0] = True
    assert compile_loss(loss, "chunks")(torch.ones(2)).item() == 2.0
    assert not chunked.enabled()


def test_the_fused_kernel_is_built_for_a_model_that_may_run_on_the_cpu_only(monkeypatch) -> None:
    """It never runs on a GPU: building it there (some 20 s) was time a GPU session lost."""
    from nldsl.runtime import fused

    built = []
    monkeypatch.setattr(fused, "available", lambda: built.append(1) or True)
    model, _ = tiny_model(REPO / "specs/titans_lmm.nl")
    chunked.compile_loss(model.loss, True)
    assert built == [1]
    model.to("meta")  # a model on no CPU, as a CUDA one
    chunked.compile_loss(model.loss, True)
    assert built == [1]
    chunked.compile_loss(lambda tokens: tokens, True)  # not a model's loss: it may run anywhere
    assert built == [1, 1]
    # recomputed stretches rerun their chunks inside compiled_chunks of their own, forward and backward
    chunked._fold_as((True, "eager", 1), lambda carry, piece: (piece, carry), 0, [1, 2], True)
    assert built == [1, 1]

    class OnNoCpu(torch.nn.Module):  # per-chunk compilation of a model all off the CPU
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))

        def loss(self, tokens):
            return chunked.enabled()

    assert chunked.compile_loss(OnNoCpu().loss, "chunks")(None) is True
    assert built == [1, 1]

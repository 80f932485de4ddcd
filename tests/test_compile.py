"""torch.compile on every shipped spec: one graph (fullgraph=True), no recompiles across steps.

Dynamo's tracing decides both properties; it is checked with a counting backend over AOT
autograd (forward and backward graphs are built) on shrunk specs, so the test stays affordable on
two CPU cores. One spec also runs through inductor and is compared with eager.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from test_interpreter import shrunk
from torch._dynamo.testing import CompileCounterWithBackend

from nldsl import loader
from nldsl.checker import check_file

REPO = Path(__file__).resolve().parents[1]
MODEL_SPECS = [p for p in sorted((REPO / "specs").rglob("*.nl")) if check_file(p).spec.model is not None]

pytestmark = pytest.mark.slow


def tiny_model(path: Path):
    spec = shrunk(check_file(path).spec)
    torch.manual_seed(0)
    return loader.build_module(spec).build(), spec


@pytest.mark.parametrize("path", MODEL_SPECS, ids=lambda p: p.stem)
def test_forward_and_backward_compile_as_one_graph_without_recompiles(path: Path) -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(path)
    counter = CompileCounterWithBackend("aot_eager")
    loss = torch.compile(model.loss, fullgraph=True, backend=counter)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # new data each step, same shapes: the graph must be reused
        tokens = torch.randint(0, spec.model.vocab, (2, 13), generator=generator)
        targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
        value = loss(tokens, targets)
        value.backward()
        assert torch.isfinite(value)
    assert counter.frame_count == 1, f"{counter.frame_count} graphs: a graph break or a recompile"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_inductor_compiled_step_matches_eager() -> None:
    torch._dynamo.reset()
    model, spec = tiny_model(REPO / "specs" / "titans_lmm.nl")
    tokens = torch.randint(0, spec.model.vocab, (2, 13), generator=torch.Generator().manual_seed(1))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    eager = model.loss(tokens, targets)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model.loss, fullgraph=True)(tokens, targets)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)  # float32: fused kernels reorder sums
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)

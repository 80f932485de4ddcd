"""Chunk-wise compilation (`train.compile = chunks`): chunk loops stay in Python, each chunk body is one compiled graph.

Compiling a whole model (`compile = true`) unrolls every chunk loop of every level into one graph,
so compile time grows with T / C: HOPE at T = 256 (136 chunk steps) had not finished compiling
after 40 minutes on one CPU core. Under `compiled_chunks()` the functions marked `chunk_body` —
`memory_chunk_step` and the self-modifying projections' chunk step — are instead compiled with
`fullgraph=True` the first time they meet a new shape (a sequence's last, shorter chunk is a
second shape; another batch size or grad mode another) and that graph runs every chunk after it,
so compile time no longer depends on T. What it costs: one compiled call per chunk (guard checks
and the autograd function's bookkeeping) and no fusion across chunk boundaries or with the layers
around the loops, which run eagerly.

Inside a whole-model `torch.compile` the bodies are plain functions that dynamo traces inline, so
both modes can be nested without compiling anything twice.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

# Distinct graphs one chunk body may need: levels (configs) × chunk shapes × batch sizes × grad
# modes. Dynamo's default of 8 per function would fail a fullgraph compile on a HOPE model.
RECOMPILE_LIMIT = 64

_enabled = False
_backend: Any = "inductor"


def chunk_body(fn: F) -> F:
    """Mark a chunk body: compiled per shape under `compiled_chunks()`, a plain call otherwise."""
    compiled: dict[int, Callable[..., Any]] = {}  # per backend (tests count graphs with their own)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _enabled or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        key = id(_backend)
        if key not in compiled:
            compiled[key] = torch.compile(fn, fullgraph=True, dynamic=False, backend=_backend)
        return compiled[key](*args, **kwargs)

    return run  # type: ignore[return-value]


def enabled() -> bool:
    """Whether chunk bodies are being compiled now."""
    return _enabled


@contextlib.contextmanager
def compiled_chunks(enable: bool = True, backend: Any = "inductor") -> Iterator[None]:
    """Compile every `chunk_body` called inside this block (module docstring) with `backend`."""
    global _enabled, _backend
    previous = _enabled, _backend
    limit = torch._dynamo.config.recompile_limit
    _enabled, _backend = enable, backend
    if enable:
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    try:
        yield
    finally:
        _enabled, _backend = previous
        torch._dynamo.config.recompile_limit = limit


def compile_loss(loss: Callable[..., Any], mode: bool | str, *, fullgraph: bool = True) -> Callable[..., Any]:
    """`loss` as `train.compile` asks: eager (false), one whole graph (true) or per chunk body ("chunks")."""
    if mode == "chunks":
        @functools.wraps(loss)
        def chunk_compiled(*args: Any, **kwargs: Any) -> Any:
            with compiled_chunks():
                return loss(*args, **kwargs)

        return chunk_compiled
    return torch.compile(loss, fullgraph=fullgraph) if mode else loss

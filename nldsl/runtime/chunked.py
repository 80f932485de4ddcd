"""Chunk-wise compilation (`train.compile = chunks`): chunk loops stay in Python, each chunk body is one compiled graph.

Compiling a whole model (`compile = true`) unrolls every chunk loop of every level into one graph,
so compile time grows with T / C: HOPE at T = 256 (136 chunk steps) had not finished compiling
after 40 minutes on one CPU core. Under `compiled_chunks()` the functions marked `chunk_body` —
`memory_chunk_step`, `memory.fused_write` and the self-modifying projections' chunk steps
(`blocks.projection_chunk_step`, `blocks.fused_projection_chunk_step`) — are instead compiled with
`fullgraph=True` the first time they meet a new shape (a sequence's last, shorter chunk is a
second shape; another batch size or grad mode another) and that graph runs every chunk after it,
so compile time no longer depends on T. What it costs: one compiled call per chunk (guard checks
and the autograd function's bookkeeping) and no fusion across chunk boundaries or with the layers
around the loops, which run eagerly.

Inside a whole-model `torch.compile` the bodies are plain functions that dynamo traces inline, so
both modes can be nested without compiling anything twice.

Block-wise compilation (`train.compile = blocks`, `compiled_blocks`) sits between the two: each
block is one compiled graph, its chunk loops unrolled as in a whole graph, and every block of the
model runs that same graph, so compile time grows with a block's chunk steps but not with depth.

Several chunks per call (`train.chunks_per_call = K`): `run_chunks` then folds each run of K chunks
inside one compiled graph (the loop unrolled K times), so the per-call costs are paid once per K
chunks and inductor sees K chunk bodies at once. For HOPE at width 128, T 2048 the per-call costs
were about 0.3 ms a call, and K = 8 made its step 1.18–1.20× faster (2026-12-05; 1.10× in a later
run); at the shipped spec's size K = 4 gained nothing measurable and made a first run with empty
compile caches 1.7× longer (docs/compiler.md has the measurements). A loop whose step reads the
chunk's position in Python (nested CMS: when a slower level moves) compiles one chunk at a time, as
before, since a graph would be specialised to each position. A chunk-start level's last chunk runs
on its own in training (`run_chunks` `last_apart`), and so does any loop's last chunk where it is
laid out unlike the others (a shorter chunk, no next chunk to read), so that a loop compiles one
graph of K chunks, not a second one for the run that ends it.

Recomputation (`train.recompute = N`): every chunk loop goes through `run_chunks`, which under
`recomputed_chunks(N)` runs each stretch of N chunks inside `torch.utils.checkpoint`. The backward
pass then keeps one state per stretch instead of one per chunk and runs the stretch's chunks again
when it reaches them: an in-context level's per-sequence state (a HOPE CMS level holds a d × 4d
MLP per sequence) is what fills memory at long T or large width, and this divides it by about N
for one more forward pass of the chunk loops. Outputs and gradients are the same (tested).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FunctionType
from typing import Any, TypeVar

import torch
from torch.utils._pytree import tree_flatten, tree_leaves
from torch.utils.checkpoint import checkpoint

from nldsl.runtime import fused

F = TypeVar("F", bound=Callable[..., Any])
Carry = TypeVar("Carry")

# Distinct graphs one chunk body may need: levels (configs) × chunk shapes × batch sizes × grad
# modes, and for a level read at `chunk_start` one more, the last chunk's body without a readout
# (memory.memory_level). Dynamo's default of 8 per function would fail a fullgraph compile on a
# HOPE model.
RECOMPILE_LIMIT = 64

# Inductor options for chunk bodies compiled for the CPU. A chunk body is a few dozen small kernels
# and library calls, run once per chunk, so the wrapper that calls them is a real share of its time:
# the C++ wrapper made HOPE's and titans_lmm's chunk-compiled steps 5.6% and 6.8% faster than the
# Python wrapper (interleaved in one process, T 2048, B 2), for no more compile time (commit 21f5bac,
# which measured it together with the two changes docs/compiler.md names beside it). On a GPU the
# bodies keep inductor's defaults: it was not measured there.
CPU_INDUCTOR_OPTIONS: dict[str, Any] = {"cpp_wrapper": True}

_enabled = False
_backend: Any = "inductor"
_recompute = 0  # chunks per recomputed stretch; 0 = every chunk's state is kept for the backward
_group = 1  # chunks per compiled call (train.chunks_per_call)
# the compiled folds of K chunks, one per (step's code, backend, device type): each has a code object of
# its own, so that dynamo keeps each loop's graphs (and their recompile limit) apart
_folds: dict[tuple[CodeType, int, str], Callable[..., Any]] = {}


def chunk_body(fn: F) -> F:
    """Mark a chunk body: compiled per shape under `compiled_chunks()`, a plain call otherwise."""
    # per backend (tests count graphs with their own) and device type (the options differ)
    compiled: dict[tuple[int, str], Callable[..., Any]] = {}

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _enabled or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        device = _device_type(args)
        key = (id(_backend), device)
        if key not in compiled:
            compiled[key] = _compiled(fn, device)
        return compiled[key](*args, **kwargs)

    return run  # type: ignore[return-value]


def _device_type(args: tuple) -> str:
    """The device type of the first tensor in `args` (every chunk body and chunk takes one)."""
    # a chunk body's arguments hold one at the top: looked up there first, since this runs on every
    # call (flattening them all took some 13 µs a call against 1 µs, 14 ms of a HOPE step's 1,100 calls)
    found = next((arg.device.type for arg in args if isinstance(arg, torch.Tensor)), None)
    return found or next((arg.device.type for arg in tree_leaves(args) if isinstance(arg, torch.Tensor)), "cpu")


def _compiled(fn: Callable[..., Any], device: str) -> Callable[..., Any]:
    options = CPU_INDUCTOR_OPTIONS if _backend == "inductor" and device == "cpu" else None
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=_backend, options=options)


def enabled() -> bool:
    """Whether chunk bodies are being compiled now."""
    return _enabled


@contextlib.contextmanager
def compiled_chunks(enable: bool = True, backend: Any = "inductor", cpu: bool = True, group: int = 1) -> Iterator[None]:
    """Compile every `chunk_body` called inside this block (module docstring) with `backend`.
    `cpu`: the model may run on the CPU, the only device of the fused write kernel, which is then
    built first (a GPU model leaves it unbuilt: it never runs there). `group`: chunks per compiled
    call in the loops that allow it (`run_chunks`)."""
    global _enabled, _backend, _group
    assert group >= 1, group
    previous = _enabled, _backend, _group
    limit = torch._dynamo.config.recompile_limit
    _enabled, _backend, _group = enable, backend, group
    if enable:
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        if cpu:
            fused.available()  # build the fused write kernel now: a trace could not
    try:
        yield
    finally:
        _enabled, _backend, _group = previous
        torch._dynamo.config.recompile_limit = limit


def block_compiler(backend: Any = "inductor", fullgraph: bool = True) -> Callable[..., Any]:
    """A compiled `block(h, ctx, state)` call for `compiled_blocks` (`train.compile = blocks`).

    Its function has a code object of its own: dynamo keeps graphs, and counts recompiles, per code
    object, so one shared function would pile every model's block graphs of a process onto one
    recompile limit and fail a fullgraph compile at the ninth. A model's blocks are one generated
    class whose parameters dynamo takes as inputs, so they all share the first block's graph."""
    return torch.compile(_with_own_code(_call_block, "compiled_block"), fullgraph=fullgraph, backend=backend)


def _call_block(block: Any, h: Any, ctx: Any, state: Any, cut: Callable[[Any], Any] | None) -> Any:
    out, new_state = block(h, ctx, state)
    return out, (new_state if cut is None else cut(new_state))


_block_call: Callable[..., Any] | None = None  # set by compiled_blocks
_block_state_graph = False  # set by compiled_blocks


@contextlib.contextmanager
def compiled_blocks(call: Callable[..., Any], state_graph: bool = False) -> Iterator[None]:
    """Run every model block called inside this `with` (`blocks.run_block`) through `call`, a
    `block_compiler()` function: each block of the model is then one compiled graph, the same
    graph for all of them, and the embedding, the final norm and the loss run eagerly.

    What it buys over one whole graph (`compile = true`): compile time that does not grow with
    depth (the whole graph's grows by some 1.5 s a block on the CPU, docs/compiler.md). What it
    costs: one compiled call per block, and nothing fuses across blocks.

    state_graph: whether the state a block returns keeps its graph. A loss discards it (the
    default), and then the block graph cuts it inside: a state that stayed an output of the graph
    would have its backward run with zero gradients, which gives a zero gradient, where eager
    gives none, to a weight that only the state reads (a key projection behind a convolution's
    cache, with `grad_through_writes = false`), and AdamW would then decay that weight."""
    global _block_call, _block_state_graph
    previous, limit = (_block_call, _block_state_graph), torch._dynamo.config.recompile_limit
    _block_call, _block_state_graph = call, state_graph
    # every block graph of the model (shapes × grad modes × a carried state or not) is one function's
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    try:
        yield
    finally:
        _block_call, _block_state_graph = previous
        torch._dynamo.config.recompile_limit = limit


def call_block(block: Any, h: Any, ctx: Any, state: Any, cut: Callable[[Any], Any]) -> Any:
    """`block(h, ctx, state)`, through the compiled call under `compiled_blocks`, which applies
    `cut` (detaching a state) to the state the block returns unless `compiled_blocks` keeps its graph."""
    if _block_call is None or torch.compiler.is_compiling():
        return block(h, ctx, state)
    return _block_call(block, h, ctx, state, None if _block_state_graph else cut)


@contextlib.contextmanager
def recomputed_chunks(chunks: int) -> Iterator[None]:
    """Run every `run_chunks` loop inside this block in recomputed stretches of `chunks` (0 = off)."""
    global _recompute
    assert chunks >= 0, chunks
    previous = _recompute
    _recompute = chunks
    try:
        yield
    finally:
        _recompute = previous


def run_chunks(step: Callable[[Carry, Any], tuple[Any, Carry]], carry: Carry,
               pieces: Iterable[Any], *, groupable: bool = True, last_apart: bool = False) -> tuple[list[Any], Carry]:
    """Fold `step(carry, piece) -> (output, carry)` over the chunks; returns the outputs and the last carry.

    The one loop every chunk-wise level runs. Under `recomputed_chunks(N)`, with gradients on and
    outside a whole-graph compile, each stretch of N chunks is one `torch.utils.checkpoint` region
    (module docstring); otherwise it is the plain loop. `groupable`: the step's Python reads nothing
    of a piece but its tensors (and constants the same in every piece; whether an entry is None may
    differ, as for the last chunk's next input), so that one compiled graph of several chunks serves
    every run of them (`compiled_chunks(group=K)`, K > 1). A last piece laid out unlike the first (a
    None there, a shorter chunk) runs on its own, as with `last_apart`, rather than making the run
    that holds it a second graph of K chunks. `last_apart`: where
    chunks are grouped, the last piece runs on its own, its chunk bodies compiled one per call as
    with K = 1, so that what its step keeps outside them stays outside every graph (memory_level: a
    chunk-start level's last write, whose end state a training step drops, is then an autograd node
    of its own that the backward pass never runs; inside a run of chunks it would be part of one
    node whose backward runs through it).
    """
    pieces = list(pieces)
    stretch = _recompute
    if stretch == 0 or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return _fold_chunks(step, carry, pieces, groupable, last_apart)
    outputs: list[Any] = []
    for start in range(0, len(pieces), stretch):
        # The backward pass reruns the stretch with the same chunk bodies (compiled or not) that saved
        # its tensors, so the mode travels with the call. The chunk steps draw no random numbers, so
        # the RNG state need not be saved and restored.
        part, carry = checkpoint(_fold_as, (_enabled, _backend, _group), step, carry, pieces[start:start + stretch],
                                 groupable, last_apart and start + stretch >= len(pieces),
                                 use_reentrant=False, preserve_rng_state=False)
        outputs.extend(part)
    return outputs, carry


def _fold_as(mode: tuple[bool, Any, int], step: Callable[[Carry, Any], tuple[Any, Carry]], carry: Carry,
             pieces: list[Any], groupable: bool, last_apart: bool = False) -> tuple[list[Any], Carry]:
    enable, backend, group = mode
    # the kernel was built, where it can run, by the outer block
    with compiled_chunks(enable, backend, cpu=False, group=group):
        return _fold_chunks(step, carry, pieces, groupable, last_apart)


def _fold_chunks(step: Callable[[Carry, Any], tuple[Any, Carry]], carry: Carry, pieces: list[Any],
                 groupable: bool, last_apart: bool = False) -> tuple[list[Any], Carry]:
    """`_fold`, in compiled calls of `_group` chunks each where the loop allows it (`run_chunks`).

    The chunks left over from whole runs of `_group` (and the last, with `last_apart` or where it is laid
    out unlike the first) run one at a time, their bodies compiled as with K = 1: a shorter run, or
    one ending with a differently laid out piece, would be one more graph of several chunks, whose
    compilation costs more than the few calls it saves."""
    if not (_enabled and _group > 1 and groupable) or torch.compiler.is_compiling() or not pieces:
        return _fold(step, carry, pieces)
    # a last piece laid out unlike the others (a shorter last chunk, a None for the next chunk's input)
    # would make the run that holds it a second graph of K chunks: it runs on its own instead
    apart = last_apart or _layout(pieces[-1]) != _layout(pieces[0])
    whole = (len(pieces) - (1 if apart else 0)) // _group * _group
    outputs: list[Any] = []
    if whole:
        fold = _fold_of(step, _device_type((carry, pieces[0])))
        for start in range(0, whole, _group):
            part, carry = fold(step, carry, pieces[start:start + _group])
            outputs.extend(part)
    part, carry = _fold(step, carry, pieces[whole:])
    outputs.extend(part)
    return outputs, carry


def _layout(piece: Any) -> tuple:
    """What a compiled run of chunks is specialised on in a piece: its structure (which entries are
    None) and its tensors' shapes, dtypes and whether they require gradients."""
    leaves, structure = tree_flatten(piece)
    return structure, tuple((leaf.shape, leaf.dtype, leaf.requires_grad) if isinstance(leaf, torch.Tensor)
                            else type(leaf) for leaf in leaves)


def _fold_of(step: Callable[..., Any], device: str) -> Callable[..., Any]:
    """The compiled fold for `step`'s code (`_folds`)."""
    key = (step.__code__, id(_backend), device)
    if key not in _folds:
        _folds[key] = _compiled(_with_own_code(_fold, f"chunks_of_{step.__code__.co_name}"), device)
    return _folds[key]


def _with_own_code(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`function` with a code object of its own, named `name` (what tracebacks and profiles show):
    dynamo keeps graphs, and counts recompiles, per code object."""
    # (co_qualname exists from Python 3.11; the project supports 3.10, where replace() refuses it)
    names = {"co_name": name, **({"co_qualname": name} if sys.version_info >= (3, 11) else {})}
    copy = FunctionType(function.__code__.replace(**names), function.__globals__, name)
    copy.__qualname__ = name
    return copy


def _fold(step: Callable[[Carry, Any], tuple[Any, Carry]], carry: Carry, pieces: list[Any]) -> tuple[list[Any], Carry]:
    outputs = []
    for piece in pieces:
        output, carry = step(carry, piece)
        outputs.append(output)
    return outputs, carry


def compile_loss(loss: Callable[..., Any], mode: bool | str, *, fullgraph: bool = True,
                 recompute: int = 0, chunks_per_call: int = 1) -> Callable[..., Any]:
    """`loss` as `train.compile`, `train.recompute` and `train.chunks_per_call` ask.

    mode: eager (false), one whole graph (true), per block ("blocks": `compiled_blocks`) or per
    chunk body ("chunks"). recompute: chunks per recomputed stretch (0 = off); the checker allows it
    with eager and per-chunk compilation only, since a whole graph or a block's graph would trace the
    checkpoints into itself. chunks_per_call: chunks per compiled call under mode "chunks"; the other
    modes compile no chunk body to group (the checker warns, W0706: `nldsl train --no-compile` runs
    a grouping spec eagerly).
    """
    cpu = _may_run_on_cpu(loss)
    if mode not in (False, "chunks"):
        if recompute:
            raise ValueError(f"train.recompute needs train.compile = chunks or false, not {mode}")
        if mode and cpu:
            fused.available()  # build the fused write kernel before the trace, which could not
        if mode == "blocks":
            call = block_compiler(fullgraph=fullgraph)

            @functools.wraps(loss)
            def block_wise(*args: Any, **kwargs: Any) -> Any:
                with compiled_blocks(call):
                    return loss(*args, **kwargs)

            return block_wise
        return torch.compile(loss, fullgraph=fullgraph) if mode else loss
    if mode is False and not recompute:
        return loss

    @functools.wraps(loss)
    def chunk_wise(*args: Any, **kwargs: Any) -> Any:
        with compiled_chunks(mode == "chunks", cpu=cpu, group=chunks_per_call), recomputed_chunks(recompute):
            return loss(*args, **kwargs)

    return chunk_wise


def _may_run_on_cpu(loss: Callable[..., Any]) -> bool:
    """False only for a model's bound `loss` whose parameters are all off the CPU (a GPU model, where
    the fused write kernel never runs, so building it, some 30 s (docs/compiler.md), would be wasted)."""
    model = getattr(loss, "__self__", None)
    if not isinstance(model, torch.nn.Module):
        return True
    return any(p.device.type == "cpu" for p in model.parameters())

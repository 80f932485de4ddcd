"""Composite layers the generated modules call: CMS chains, self-modifying projections, MAC.

Each function here is the chunk-parallel implementation of one paragraph of docs/semantics.md §3;
the reference interpreter (nldsl/interpreter.py) executes the same paragraphs token by token.
Everything is torch.compile friendly: Python loops run over chunks (unrolled when compiled),
never over tokens, and no autograd.grad is used (inner gradients are closed forms in memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl.runtime import fused
from nldsl.runtime.chunked import call_block, chunk_body, run_chunks
from nldsl.runtime.layers import causal_depthwise_conv, gate_precision, l2_normalize, zero_history
from nldsl.runtime.memory import (
    LevelConfig,
    MemoryState,
    detach_state,
    float32_recurrence,
    fused_write,
    initial_memory_state,
    memory_chunk_step,
    memory_forward,
    memory_level,
    split_chunks,
    zero_momentum,
)

# The model's inputs --------------------------------------------------------------------------

def checked_inputs(tokens: Tensor, targets: Tensor | None, state: list | None, vocab: int,
                   layers: int, weights: Tensor | None = None,
                   block_state: tuple[str, ...] | None = None) -> tuple[Tensor, Tensor | None]:
    """The call's tokens and targets as int64, after checking what a caller can get wrong.

    A mistake (float or 1-D tokens, ids outside the vocabulary, targets of another shape, a state
    of another layout or batch, another model's (its blocks hold other layers than `block_state`),
    on another device than the model's `weights` or wholly in another precision) is a TypeError or
    ValueError that names it, raised before any layer runs; without this it surfaces as an index
    error deep in an embedding or a chunk step.
    The checks run wherever the forward runs eagerly (chunk-compiled training steps included: one
    min/max over the batch); a whole-graph compiled call skips them, as the range check would be a
    graph break there.
    """
    if not torch.compiler.is_compiling():
        _check_ids("tokens", tokens, vocab, lowest=0)
        if targets is not None:
            _check_ids("targets", targets, vocab, lowest=-1)
            if targets.shape != tokens.shape:
                raise ValueError(f"targets must have the tokens' shape {tuple(tokens.shape)}; "
                                 f"got {tuple(targets.shape)}")
        if state is not None:
            _check_state(state, layers, tokens.shape[0], weights, block_state)
    return tokens.long(), (None if targets is None else targets.long())


# the integer types a range check and an embedding read (torch has no min/max of uint16/32/64 on the CPU)
ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_ids(name: str, ids: object, vocab: int, lowest: int) -> None:
    """`ids` must be a (B, T) integer tensor with values in [lowest, vocab)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, time); got {type(ids).__name__}")
    if ids.dtype not in ID_DTYPES or ids.dim() != 2:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in ID_DTYPES)
        kinds = "" if ids.dtype in ID_DTYPES else f" (ids are {names})"
        raise TypeError(f"{name} must be a 2-D integer tensor (batch, time); got a {ids.dim()}-D "
                        f"{str(ids.dtype).removeprefix('torch.')} tensor of shape {tuple(ids.shape)}{kinds}")
    if ids.is_meta:
        raise ValueError(f"{name} are on the meta device, which holds shapes but no values: give real ids")
    if ids.numel():
        low, high = torch.stack(torch.aminmax(ids)).tolist()
        if low < lowest or high >= vocab:
            wrong = low if low < lowest else high
            none = " (−1 marks a position without a target)" if lowest < 0 else ""
            raise ValueError(f"{name} must lie in [{lowest}, {vocab}){none}: the vocabulary has {vocab} "
                             f"ids; got {wrong}")


def check_training_step(model: torch.nn.Module, optimizer: object) -> None:
    """What a generated `training_step` needs from its caller: gradients on (a step under
    `torch.no_grad()` has no backward), and an optimizer that steps this model's parameters (one
    made for another model would return losses while this one never changed)."""
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError("training_step runs a backward pass: call it outside torch.no_grad() and "
                           "torch.inference_mode()")
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer over the model's parameters; got "
                        f"{_describe(optimizer)}")
    stepped = {id(param) for group in groups for param in group.get("params", ())}
    if not any(id(param) in stepped for param in model.parameters()):
        raise ValueError("the optimizer holds none of this model's parameters (it was made for another model, or "
                         "before the model was rebuilt): build it from model.parameters()")


def _check_state(state: object, layers: int, batch: int, weights: Tensor | None = None,
                 block_state: tuple[str, ...] | None = None) -> None:
    """A state passed back must be one dict per block, each empty (a fresh start, as a call on no
    tokens returns it) or holding this model's layers `block_state`, for this batch (each
    sequence has its own), on the device of the model's `weights` and not wholly in another
    precision (a model moved or cast since)."""
    if not isinstance(state, (list, tuple)) or len(state) != layers or not all(
            isinstance(part, dict) for part in state):
        raise TypeError(f"state must be the list of {layers} per-block dicts that a call with "
                        f"return_state=True returned; got {_describe(state)}")
    if block_state is not None:
        # a block reads its layers' entries by name and starts afresh where one is missing, so
        # another model's state would otherwise be passed over without a word
        wrong = next((part for part in state if part and set(part) != set(block_state)), None)
        if wrong is not None:
            raise ValueError(f"state holds blocks of the layers {', '.join(map(repr, wrong))}, and this model's "
                             f"blocks have {', '.join(map(repr, block_state))}: a state continues only the "
                             "model it came from")
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        _leave_inference_mode(state)
        _watch_carried_graph(state)
    for path, tensor in _named_tensors(state, ""):  # every one: a single tensor of batch 1 would broadcast
        if tensor.dim() == 0 or tensor.shape[0] != batch:
            held = "a 0-d tensor" if tensor.dim() == 0 else f"a batch of {tensor.shape[0]}"
            raise ValueError(f"state {path} holds {held}, and the tokens have a batch of {batch}: each sequence "
                             "carries its own state, as a call with return_state=True returned it")
    if weights is None:
        return
    floating = [tensor for tensor in _tensors(state) if tensor.is_floating_point()]
    elsewhere = next((tensor for tensor in floating if tensor.device != weights.device), None)
    # A state made under autocast mixes bfloat16 and the model's precision, and continues with or
    # without it; one wholly in another precision, outside autocast, comes from a model cast since.
    autocast = torch.is_autocast_enabled(weights.device.type)
    if elsewhere is None and (autocast or not floating or any(tensor.dtype == weights.dtype for tensor in floating)):
        return
    tensor = elsewhere if elsewhere is not None else floating[0]
    raise ValueError(f"state holds {str(tensor.dtype).removeprefix('torch.')} tensors on {tensor.device}, and the "
                     f"model is {str(weights.dtype).removeprefix('torch.')} on {weights.device}: a state continues "
                     "only the model it came from, as it is (cast or move the state with the model)")


STALE_STATE = ("the state carried into this call holds the autograd graph of an earlier call, and that graph "
               "can no longer be differentiated: {why}. Detach the state between optimizer steps, "
               "`state = nldsl.runtime.evaluate.detach_state(state)` (gradients then stop at this call's start, "
               "as in truncated backpropagation through time)")


def _watch_carried_graph(state: list) -> None:
    """A state carried without detaching still holds its call's graph. Once that call's backward ran
    (which frees the graph) or the optimizer stepped the weights it read, the next backward pass
    fails inside it with torch's "backward through the graph a second time" or "modified by an
    inplace operation", which name neither the state nor the mend. A pre-hook on the nodes that
    made the state's tensors looks at the graph below when a backward pass is about to run one of
    them, and names both; a backward that stops at the state (`autograd.grad` of its tensors) runs
    none of them, and is not looked at. Each tensor is watched once, however many calls it is
    passed to."""
    fresh = [tensor for tensor in _tensors(state) if tensor.grad_fn is not None
             and not getattr(tensor, "_nldsl_watched", False)]
    roots = list({id(tensor.grad_fn): tensor.grad_fn for tensor in fresh}.values())
    checked: list[int] = []  # the backward passes (graph tasks) that looked already

    def look(grad_outputs: Any) -> None:
        task = getattr(torch._C, "_current_graph_task_id", lambda: -1)()  # private: one look per state without it
        if task not in checked:
            checked.append(task)
            _check_graph(roots)

    for tensor in fresh:
        tensor._nldsl_watched = True
    for node in roots:
        node.register_prehook(look)


_SAVED_NAMES: dict[type, list[str]] = {}  # an autograd node class -> its `_saved_…` attributes


def _check_graph(roots: list, limit: int = 512) -> None:
    """Raise STALE_STATE where a saved tensor of the graph below `roots` (breadth first, up to `limit`
    nodes) was freed or changed in place since it was saved. The first nodes of a state's graph
    can be intact after a backward that never needed them (the last write of the state), so the
    search goes on until it meets one the backward ran, a few dozen nodes down."""
    queue, seen = list(roots), set()
    while queue and len(seen) < limit:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names = _SAVED_NAMES.setdefault(type(node), [n for n in dir(type(node)) if n.startswith("_saved_")])
        for name in names:
            try:
                getattr(node, name)
            except RuntimeError as error:
                why = ("its backward pass has run, which frees it" if "second time" in str(error) else
                       "a tensor it saved has changed since (an optimizer step changes the weights in place)")
                raise RuntimeError(STALE_STATE.format(why=why)) from None
        queue.extend(next_node for next_node, _ in node.next_functions)


def _leave_inference_mode(state: list) -> None:
    """A state made under torch.inference_mode() holds tensors that no call recording gradients may
    use (torch refuses to save them for the backward, deep in a layer). Continued outside it, each is
    replaced, in the caller's dicts and MemoryStates, by a copy with the same values: like a
    detached state, a constant of the call. A state with none is left as it is, at no cost."""
    def normal(value: object) -> object:
        if isinstance(value, Tensor):
            return value.clone() if value.is_inference() else value
        if isinstance(value, MemoryState):
            value.weights = [normal(tensor) for tensor in value.weights]
            if value.momentum is not None:
                value.momentum = [normal(tensor) for tensor in value.momentum]
            return value
        if isinstance(value, dict):
            for key in value:
                value[key] = normal(value[key])
            return value
        if isinstance(value, list):
            value[:] = [normal(item) for item in value]
            return value
        if isinstance(value, tuple):  # rebuilt, and put back by the container that holds it
            return tuple(normal(item) for item in value)
        return value

    if any(tensor.is_inference() for tensor in _tensors(state)):
        normal(state)


def _tensors(value: object):
    """Every tensor inside a state (dicts, lists and MemoryState, its momentum too), depth first."""
    return (tensor for _, tensor in _named_tensors(value, ""))


def run_block(block: Any, h: Tensor, ctx: Any, state: dict, index: int) -> tuple[Tensor, dict]:
    """One block of the model's forward. A carried state made by the same spec at another width (or
    with other heads) holds tensors of other shapes, which fail deep in a layer with torch's shape
    error: when the block fails on a carried state and runs on a fresh one, the error names the
    state's first tensor whose shape differs from the fresh state's. Eager and per-block compiled
    calls only (`chunked.call_block`; a whole compiled graph runs the block as it is)."""
    if torch.compiler.is_compiling() or not state:
        return call_block(block, h, ctx, state, detach_state)
    try:
        out, new_state = call_block(block, h, ctx, state, detach_state)
    except (RuntimeError, AssertionError) as error:  # a runtime's check of the state's parts asserts
        mismatch = _state_mismatch(block, h, ctx, state)
        if mismatch is None:
            raise
        raise ValueError(f"the state of block {index} does not fit this model: {mismatch}; a state continues only "
                         "the model it came from (the same spec, with the same overrides)") from error
    # A layer starts a part afresh where the carried state has none (a key missing, or None), and
    # passes over a key it does not read: a state edited so would run on without a word. A block's
    # state has the same parts after every call (whatever the number of tokens), so the carried
    # state must have the parts the call returns.
    difference = _first_part_difference(state, new_state, f"[{index}]")
    if difference is not None:
        raise ValueError(f"the state of block {index} {difference}; a state continues only as a call with "
                         "return_state=True returned it (an empty dict starts a block afresh)")
    return out, new_state


def _first_part_difference(carried: object, made: object, path: str) -> str | None:
    """Where `carried` lacks a part `made` has or holds one it has not, by dict keys and None."""
    if isinstance(made, dict) and isinstance(carried, dict):
        for key in made:
            if key not in carried:
                return f"has no `{path}.{key}`, which this model's state holds"
            found = _first_part_difference(carried[key], made[key], f"{path}.{key}")
            if found is not None:
                return found
        extra = next((key for key in carried if key not in made), None)
        return None if extra is None else f"holds `{path}.{extra}`, which this model's state has not"
    if (carried is None) != (made is None):
        return (f"holds None at `{path}`, where this model's state has a part" if carried is None else
                f"holds a part at `{path}`, where this model's state has None")
    return None


def _state_mismatch(block: Any, h: Tensor, ctx: Any, state: dict) -> str | None:
    """Where `state` differs in shape from the state the block makes from scratch, if it runs so."""
    try:
        with torch.no_grad():
            _, fresh = block(h.detach(), ctx, {})
    except (RuntimeError, AssertionError):
        return None  # the block fails without the state too: the state is not the cause
    made = dict(_named_tensors(fresh, ""))
    carried = dict(_named_tensors(state, ""))
    for name, tensor in carried.items():
        expected = made.get(name)
        if expected is not None and expected.shape[1:] != tensor.shape[1:]:  # dim 0: the batch, checked before
            return (f"`{name}` holds a tensor of shape {tuple(tensor.shape)}, where this model's is "
                    f"{tuple(tensor.shape[:1]) + tuple(expected.shape[1:])}")
    # a memory with momentum carries S beside θ, one without does not (the same layers otherwise)
    extra = next((name for name in carried if name not in made), None)
    if extra is not None:
        return f"it holds `{extra}`, which this model's state has not"
    missing = next((name for name in made if name not in carried), None)
    return None if missing is None else f"it has no `{missing}`, which this model's state holds"


def non_finite_part(state: object) -> str | None:
    """The first tensor of a state (as a call with return_state=True returns it) that holds NaN or an
    infinity, named as it is reached from the state (`state[1].lmm.memory.weights[0]`), or None."""
    for path, tensor in _named_tensors(state, "state"):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return path
    return None


def _named_tensors(value: object, path: str):
    """(path, tensor) for every tensor inside a state: `lmm.memory.weights[0]`."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _named_tensors(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            yield from _named_tensors(item, f"{path}[{position}]")
    elif isinstance(value, MemoryState):
        yield from _named_tensors(value.weights, f"{path}.weights")
        if value.momentum is not None:
            yield from _named_tensors(value.momentum, f"{path}.momentum")
    elif value is not None and not isinstance(value, int):
        # a state holds tensors, memory states, None (a level without that part) and a nested CMS's
        # `_position` (the tokens it has streamed, an int)
        raise TypeError(f"state {path} holds a {type(value).__name__}, where a call with return_state=True "
                        "returns tensors: a state continues only the model it came from, as it returned it")


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} " + ", ".join(
            sorted({type(item).__name__ for item in value}) or ["items"])
    return f"a {type(value).__name__}"


# Next-token surprise (the CMS driver) ---------------------------------------------------------

def surprise_error(prediction: Tensor, targets: Tensor, final_norm: Tensor, unembed: Tensor,
                   eps: float) -> Tensor:
    """g_t = ∂ CE(norm(y_t) Eᵀ, target_t) / ∂ y_t in closed form, per token (not averaged).

    prediction (B, 1, n, d) is the level's output y; targets (B, n) are next tokens, −1 where a
    position has no target (g = 0 there). Backpropagates through the unembedding E (V, d) and the
    final RMSNorm by hand: with r = (mean(y²) + ε)^(−1/2) and ŷ = w ⊙ y r,
    ∂ŷ→y: g = r (w ⊙ ĝ) − y r³ mean(ĝ ⊙ w ⊙ y).
    """
    y = prediction.squeeze(1)  # (B, n, d)
    r = torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)  # (B, n, 1)
    normed = y * r * final_norm  # (B, n, d)
    probabilities = torch.softmax(normed @ unembed.T, dim=-1)  # (B, n, V)
    valid = targets >= 0
    one_hot = F.one_hot(targets.clamp(min=0), probabilities.shape[-1]).to(probabilities.dtype)
    logit_error = (probabilities - one_hot) * valid.unsqueeze(-1).to(probabilities.dtype)  # (B, n, V)
    normed_error = logit_error @ unembed  # (B, n, d)
    weighted = normed_error * final_norm
    g = r * weighted - y * r.pow(3) * (weighted * y).mean(-1, keepdim=True)
    return g.unsqueeze(1)  # (B, 1, n, d)


@dataclass(frozen=True)
class HeadContext:
    """What the next-token surprise needs from the model: targets and the output head."""

    targets: Tensor  # (B, T) next tokens, −1 where unknown
    final_norm: Tensor  # (d,)
    unembed: Tensor  # (V, d)
    eps: float

    def output_error(self, prediction: Tensor, targets: Tensor | None) -> Tensor:
        """The CMS levels' `OutputError`: their error signal is the chunk's targets (B, n)."""
        assert targets is not None, "the next-token surprise needs the chunk's targets"
        return surprise_error(prediction, targets, self.final_norm, self.unembed, self.eps)


# CMS --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CMSLevel:
    """One level of a CMS chain as compiled: its memory config and whether it learns in context."""

    config: LevelConfig  # one "head" of width d, readout chunk_start
    in_context: bool  # False: a plain MLP stepped by the outer optimizer (continuum clock)


def static_mlp(config: LevelConfig, weights: list[Tensor], x: Tensor) -> Tensor:
    """A level that does not learn in context: M_θ(x) with θ = its parameters (1, out, in)."""
    per_sequence = [w.unsqueeze(0) for w in weights]  # (1, 1, out, in): broadcast over the batch
    out, _, _ = memory_forward(config, per_sequence, x.unsqueeze(1))
    return out.squeeze(1)  # (B, T, d)


@float32_recurrence
def cms_level(level: CMSLevel, weights: list[Tensor], x: Tensor, gates: tuple[Tensor | None, ...],
              head: HeadContext, state: MemoryState | None = None) -> tuple[Tensor, MemoryState | None]:
    """One CMS level over a whole sequence (Eq. 71): read at chunk start, update at chunk ends."""
    if not level.in_context:
        return static_mlp(level.config, weights, x), None
    if state is None:
        state = initial_memory_state(level.config, weights, x.shape[0])
    inputs = x.unsqueeze(1)  # (B, 1, T, d): one head
    lr, retention, momentum = gates
    external = level.config.objective == "external"
    error, signal = (head.output_error, head.targets) if external else (None, None)
    out, state = memory_level(level.config, state, inputs, None, inputs, lr, retention, momentum, error, signal)
    return out.squeeze(1), state


@float32_recurrence
def nested_cms(levels: tuple[CMSLevel, ...], slow_lrs: tuple[float, ...], weights: list[list[Tensor]], x: Tensor,
               gates: tuple[Tensor | None, ...], head: HeadContext, state: list[MemoryState | None] | None = None,
               position: int = 0) -> tuple[Tensor, list[MemoryState | None], int]:
    """Nested CMS (Eq. 72, docs/semantics.md §3.7): the fastest level runs and learns in context;
    when the period (its chunk size) of a slower level that learns in context ends, that level moves
    toward the faster level's state, θ_ℓ ← θ_ℓ + η_ℓ (θ_{ℓ−1} − θ_ℓ), and every faster level restarts
    from it. Slower levels on the continuum clock never move here.

    `state` holds one entry per level as returned by a previous call (None: start from the
    parameters); the fastest level's carries θ_1 and its momentum, a slower one's its θ_ℓ.
    `position` counts the tokens of the stream before this call (modulo the slowest moving period), so
    that a slower level moves when the stream, not the call, passes a multiple of its period: a
    stream of calls shorter than a period still moves it. Returns the outputs (B, T, d), that list
    (None for levels that do not learn in context) and the position after the call, so that two
    calls split at a chunk boundary of every level equal one call (§1.8).
    """
    fast = levels[0].config
    state = state or [None] * len(levels)
    batch, length, _ = x.shape
    moving = [index for index in range(1, len(levels)) if levels[index].in_context]
    # Only the moving levels read the position, so it counts modulo the slowest of them (every
    # period divides the next slower one, E0502) and stays 0 without them: a whole-graph compiled
    # call with a state specialises on it, and fewer values mean fewer recompilations.
    cycle = max([1] + [levels[index].config.chunk_size for index in moving])  # (no `default=`: dynamo)
    if not levels[0].in_context:  # a plain MLP with its parameters, and no level moves (§3.7)
        return static_mlp(fast, weights[0], x), [None] * len(levels), 0
    after = (position + length) % cycle
    states = [(initial_memory_state(level.config, w, batch) if carried is None else carried).weights
              for level, w, carried in zip(levels, weights, state)]
    current = MemoryState(states[0], zero_momentum(fast, states[0])) if state[0] is None else state[0]
    inputs = x.unsqueeze(1)  # (B, 1, T, d)
    lr, retention, momentum = gates
    external = fast.objective == "external"
    error, signal = (head.output_error, head.targets) if external else (None, None)
    chunk = fast.chunk_size
    pieces = zip(split_chunks(inputs, chunk, -2, length), split_chunks(lr, chunk, -1, length),
                 split_chunks(retention, chunk, -1, length), split_chunks(momentum, chunk, -1, length),
                 split_chunks(signal, chunk, 1, length))

    def step(carry: tuple[MemoryState, list[list[Tensor]]], indexed: tuple) -> tuple[Tensor, tuple]:
        current, states = carry[0], list(carry[1])  # a new list: a recomputed stretch reruns from the old
        index, (piece, eta, alpha, beta, targets) = indexed
        end = position + index * chunk + piece.shape[-2]  # tokens of the stream after this chunk
        start = end - piece.shape[-2]
        out, current = memory_chunk_step(fast, current, piece, None, piece, eta, alpha, beta, error, targets)
        states[0] = current.weights
        restart = None
        for level in moving:
            period = levels[level].config.chunk_size
            if end // period > start // period:  # the chunk reached a multiple of the level's period
                faster, slower, rate = states[level - 1], states[level], slow_lrs[level]
                states[level] = [s + rate * (f - s) for f, s in zip(faster, slower)]
                restart = level
        if restart is not None:  # every faster level restarts from the level that just moved
            for level in range(restart):
                states[level] = states[restart]
            current = MemoryState(states[0], zero_momentum(fast, states[0]))
        return out, (current, states)

    # one chunk per compiled call: the step reads the chunk's position (when a slower level moves)
    outputs, (current, states) = run_chunks(step, (current, states), enumerate(pieces), groupable=False)
    carried: list[MemoryState | None] = [current]
    carried += [MemoryState(states[index]) if levels[index].in_context else None for index in range(1, len(levels))]
    return torch.cat(outputs, dim=2).squeeze(1), carried, after


# Self-modifying projections (HOPE) --------------------------------------------------------------

@dataclass(frozen=True)
class SelfModConfig:
    adaptive: tuple[str, ...]  # subset of ("q", "k", "v", "eta", "alpha"), in this order
    heads: int
    head_dim: int
    conv: int  # causal conv width on q, k, v (0 = none)
    qk_norm: bool
    value_norm: bool
    eta_max: float
    alpha_max: float
    projections: LevelConfig  # chunk_size C_p, readout chunk_start, values generated


def detached_if(cut: bool, *weights: Tensor) -> list[Tensor]:
    """A projection memory's θ_0, out of the graph where the call reads no write that carries its
    gradient (generated code: `short`, a call no longer than the projections' period)."""
    return [weight.detach() for weight in weights] if cut else list(weights)


def split_heads(x: Tensor, heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, H, T, d_h)


def merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, T, d)


@float32_recurrence
def self_modifying_projections(
    config: SelfModConfig,
    x_heads: Tensor,
    memories: dict[str, MemoryState],
    static: dict[str, Tensor],
    conv_weights: dict[str, Tensor],
    readouts: dict[str, tuple[Tensor, Tensor]],
    static_gates: dict[str, Tensor | None],
    caches: dict[str, Tensor | None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, MemoryState], dict[str, Tensor | None]]:
    """Eq. 83–85, 90: q, k, v, η, α from in-context memories read at each chunk's start.

    Loops `projection_chunk_step` over chunks of the projections' period. x_heads (B, H, T, d_h).
    `static` holds the non-adaptive q/k/v already projected (B, H, T, d_h); `static_gates` the
    non-adaptive lr/retention and the momentum gate (B, H, T) or None; `readouts[name] = (vector
    (H, d_h), bias (H,))` turns M_eta / M_alpha outputs into gates.
    Returns the full-sequence q, k, v (B, H, T, d_h) and lr, retention (B, H, T), the memories'
    final states and the convolution histories (to continue a stream).

    Where the fused write applies (nldsl/runtime/fused.py), `fused_projection_chunk_step` runs each
    chunk instead: its kernel writes the memories and reads the next chunk at the new state in one
    call, so a chunk's read arrives with the carry.
    """
    cfg = config.projections
    length = x_heads.shape[2]
    caches = dict(caches or {name: None for name in "qkv"})
    if config.conv and length:  # the stream's start: every chunk then receives caches laid out alike
        # (one tensor each: graphs are specialised on which arguments alias)
        first = merge_heads(x_heads[:, :, :1])  # (B, 1, H·d_h)
        caches = {name: zero_history(first, config.conv) if cache is None else cache for name, cache in caches.items()}
    pieces: dict[str, list[Tensor]] = {name: [] for name in ("q", "k", "v", "lr", "retention")}
    size = cfg.chunk_size
    static_chunks = {name: split_chunks(tensor, size, -2, length) for name, tensor in static.items()}
    gate_chunks = {name: split_chunks(static_gates.get(name), size, -1, length)
                   for name in ("lr", "retention", "momentum")}
    adaptive = config.adaptive
    stacked = _stack_states([memories[name] for name in adaptive]) if adaptive else None
    x_chunks = split_chunks(x_heads, size, -2, length)
    use_fused = stacked is not None and fused.applies(cfg, x_heads, values=x_heads)  # v always exists here

    # each chunk's inputs, x (B, H, n, d_h) and its share of `static` and `static_gates`, then the next
    # chunk's x (None after the last), which only the fused step reads: the plain step's pieces carry
    # None in every piece, so that its last piece is laid out as the others and a compiled run of
    # chunks ending with it is the same graph (chunked.run_chunks). Tensors only, so that a compiled
    # run of chunks serves any of them
    pieces_in = [(x_chunk, {name: chunks[index] for name, chunks in static_chunks.items()},
                  {name: chunks[index] for name, chunks in gate_chunks.items()},
                  x_chunks[index + 1] if use_fused and index + 1 < len(x_chunks) else None)
                 for index, x_chunk in enumerate(x_chunks)]

    def step(carry: tuple, piece: tuple) -> tuple[dict[str, Tensor | None], tuple]:
        x_chunk, static_chunk, gate_chunk, _ = piece
        chunk, stacked, caches = projection_chunk_step(config, carry[0], x_chunk, static_chunk, gate_chunk,
                                                       conv_weights, readouts, carry[1])
        return chunk, (stacked, caches)

    def fused_step(carry: tuple, piece: tuple) -> tuple[dict[str, Tensor | None], tuple]:
        _, static_chunk, gate_chunk, following = piece
        chunk, stacked, caches, read = fused_projection_chunk_step(
            config, carry[0], carry[2], static_chunk, gate_chunk, conv_weights, readouts, carry[1], following)
        return chunk, (stacked, caches, read)

    if use_fused:
        assert stacked is not None
        first_read = memory_forward(cfg, stacked.weights, _tile_heads(x_chunks[0], len(adaptive)))[0]
        chunks, (stacked, caches, _) = run_chunks(fused_step, (stacked, caches, first_read), pieces_in)
    else:
        chunks, (stacked, caches) = run_chunks(step, (stacked, caches), pieces_in)
    for chunk in chunks:
        for name in pieces:
            if chunk.get(name) is not None:
                pieces[name].append(chunk[name])
    if stacked is not None:
        memories = {**memories, **_unstack_state(stacked, adaptive, config.heads)}
    outputs = {name: torch.cat(parts, dim=-2 if name in "qkv" else -1) for name, parts in pieces.items() if parts}
    return outputs, memories, caches


@chunk_body
def projection_chunk_step(
    config: SelfModConfig,
    stacked: MemoryState | None,
    x_chunk: Tensor,
    static: dict[str, Tensor],
    static_gates: dict[str, Tensor | None],
    conv_weights: dict[str, Tensor],
    readouts: dict[str, tuple[Tensor, Tensor]],
    caches: dict[str, Tensor | None],
) -> tuple[dict[str, Tensor | None], MemoryState | None, dict[str, Tensor | None]]:
    """One chunk of `self_modifying_projections`: read q, k, v, η, α at the chunk start, then step.

    x_chunk (B, H, n, d_h); `static` and `static_gates` hold this chunk's share of the arguments
    of the same names; `stacked` is the adaptive memories as one level of A·H heads (they read the
    same chunk and step on the same keys, values and gates, so every product is one batched call).
    Returns the chunk's q, k, v, lr, retention, the stepped memories and the conv histories.
    """
    cfg = config.projections
    adaptive = config.adaptive
    read_all = None
    if stacked is not None:
        read_all = memory_forward(cfg, stacked.weights, _tile_heads(x_chunk, len(adaptive)))[0]  # (B, A·H, n, d_h)
    chunk, caches = _projections_from_reads(config, read_all, static, static_gates, conv_weights, readouts, caches)
    if stacked is not None:
        count = len(adaptive)
        momentum = static_gates["momentum"] if cfg.momentum else None
        _, stacked = memory_chunk_step(  # no readout: read_all above is the chunk-start reading
            cfg, stacked, _tile_heads(chunk["k"], count), _tile_heads(chunk["v"], count), None,
            _tile_heads(chunk["lr"], count), _tile_heads(chunk["retention"], count), _tile_heads(momentum, count))
    return chunk, stacked, caches


@chunk_body
def fused_projection_chunk_step(
    config: SelfModConfig,
    stacked: MemoryState,
    read_all: Tensor,
    static: dict[str, Tensor],
    static_gates: dict[str, Tensor | None],
    conv_weights: dict[str, Tensor],
    readouts: dict[str, tuple[Tensor, Tensor]],
    caches: dict[str, Tensor | None],
    following: Tensor | None,
) -> tuple[dict[str, Tensor | None], MemoryState, dict[str, Tensor | None], Tensor | None]:
    """`projection_chunk_step` with the memories' write in the fused kernel (nldsl/runtime/fused.py).

    read_all (B, A·H, n, d_h) is this chunk's chunk-start reading, which the previous chunk's kernel
    call returned; `following` (B, H, n', d_h) is the next chunk's input x, read at the new state by
    this call (None for the last chunk). The memories share their keys, values and gates, so the
    kernel takes them once per head rather than tiled A times.
    """
    cfg = config.projections
    chunk, caches = _projections_from_reads(config, read_all, static, static_gates, conv_weights, readouts, caches)
    momentum = static_gates["momentum"] if cfg.momentum else None
    stacked, read_next = fused_write(cfg, stacked, chunk["k"], chunk["v"], chunk["lr"], chunk["retention"],
                                     momentum, following)
    return chunk, stacked, caches, read_next


def _projections_from_reads(
    config: SelfModConfig,
    read_all: Tensor | None,
    static: dict[str, Tensor],
    static_gates: dict[str, Tensor | None],
    conv_weights: dict[str, Tensor],
    readouts: dict[str, tuple[Tensor, Tensor]],
    caches: dict[str, Tensor | None],
) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """A chunk's q, k, v (B, H, n, d_h), lr and retention (B, H, n) from the memories' chunk-start reading.

    read_all (B, A·H, n, d_h) holds the adaptive memories' outputs side by side (None: none is
    adaptive); the others come from `static` and `static_gates`. Returns them and the conv histories.
    """
    caches = dict(caches)
    read: dict[str, Tensor] = {}
    if read_all is not None:
        read = dict(zip(config.adaptive, read_all.split(config.heads, dim=1)))
    chunk: dict[str, Tensor | None] = {}
    for name in "qkv":
        raw = read[name] if name in read else static[name]
        if config.conv:
            convolved, caches[name] = causal_depthwise_conv(merge_heads(raw), conv_weights[name], None, caches[name])
            raw = split_heads(convolved, config.heads)
        if (config.qk_norm and name in "qk") or (config.value_norm and name == "v"):
            raw = l2_normalize(raw)
        chunk[name] = raw
    for name, gate, bound in (("eta", "lr", config.eta_max), ("alpha", "retention", config.alpha_max)):
        if name in read:
            vector, bias = readouts[name]
            logits = (read[name] * vector.unsqueeze(1)).sum(-1) + bias.unsqueeze(-1)  # (B, H, n)
            chunk[gate] = bound * torch.sigmoid(gate_precision(logits))
        else:
            chunk[gate] = static_gates[gate]
    return chunk, caches


def _tile_heads(tensor: Tensor | None, count: int) -> Tensor | None:
    """(B, H, …) → (B, count·H, …): the same inputs for each of `count` stacked memories."""
    return None if tensor is None else torch.cat([tensor] * count, dim=1)


def _stack_states(states: list[MemoryState]) -> MemoryState:
    """Memories of one config as one level, their heads side by side: weights (B, A·H, out, in)."""
    weights = [torch.cat(layer, dim=1) for layer in zip(*(state.weights for state in states))]
    if states[0].momentum is None:
        return MemoryState(weights, None)
    momentum = [torch.cat(layer, dim=1) for layer in zip(*(state.momentum or [] for state in states))]
    return MemoryState(weights, momentum)


def _unstack_state(stacked: MemoryState, names: tuple[str, ...], heads: int) -> dict[str, MemoryState]:
    """The inverse of `_stack_states`, by name."""
    weights = [w.split(heads, dim=1) for w in stacked.weights]
    momentum = None if stacked.momentum is None else [m.split(heads, dim=1) for m in stacked.momentum]
    return {
        name: MemoryState([w[index] for w in weights], None if momentum is None else [m[index] for m in momentum])
        for index, name in enumerate(names)
    }


# Memory as context (Titans MAC) ---------------------------------------------------------------

def segment_attention(q: Tensor, k_retrieved: Tensor, v_retrieved: Tensor, k_segment: Tensor,
                      v_segment: Tensor, persistent_k: Tensor | None = None,
                      persistent_v: Tensor | None = None) -> Tensor:
    """Queries of a segment (B, H, S, D) over [persistent | retrieved | segment] keys and values:
    query i sees every persistent token and the retrieved and segment tokens j ≤ i."""
    batch, heads, length, _ = q.shape
    keys = [k_retrieved, k_segment]
    values = [v_retrieved, v_segment]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    masks = [causal, causal]
    if persistent_k is not None and persistent_v is not None:
        count = persistent_k.shape[1]
        keys.insert(0, persistent_k.unsqueeze(0).expand(batch, heads, count, -1))
        values.insert(0, persistent_v.unsqueeze(0).expand(batch, heads, count, -1))
        masks.insert(0, torch.ones(length, count, dtype=torch.bool, device=q.device))
    return F.scaled_dot_product_attention(q, torch.cat(keys, dim=2), torch.cat(values, dim=2),
                                          attn_mask=torch.cat(masks, dim=1))


def memory_as_context(
    x: Tensor,
    segment: int,
    read: Callable[[Tensor, dict], Tensor],
    attend: Callable[[Tensor, Tensor], Tensor],
    write: Callable[[Tensor, dict], tuple[Tensor, dict]],
    state: dict,
) -> tuple[Tensor, dict]:
    """Titans MAC (docs/semantics.md §3.8): per segment, retrieve with the state the segment
    started with, attend over [persistent | retrieved | segment], write the attention output into
    the memory and gate it with the memory's reading of it: out = y ⊙ M(y)."""
    outputs = []
    for piece in x.split(segment, dim=1):  # (B, S, d); one split, not a slice per segment (split_chunks says why)
        retrieved = read(piece, state)  # (B, S, d)
        attended = attend(piece, retrieved)  # (B, S, d)
        memory_out, written = write(attended, state)
        state = {**state, **written}  # the write stream's state; the read stream keeps its own history
        outputs.append(attended * memory_out)
    return torch.cat(outputs, dim=1), state


__all__ = [
    "CMSLevel", "HeadContext", "SelfModConfig", "checked_inputs", "cms_level", "memory_as_context", "merge_heads",
    "nested_cms", "segment_attention", "self_modifying_projections", "split_heads", "static_mlp",
    "surprise_error",
]

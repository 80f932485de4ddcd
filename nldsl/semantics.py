"""Semantic checks on a typed spec: combinations, frequencies, periods and dataflow.

The schema (spec.py) already guarantees types and ranges; these checks need several values at
once: whether a readout fits an update rule, whether periods of nested levels nest, whether every
level is read and every flow comes from somewhere. Unsupported combinations are rejected here,
so that everything that passes `nldsl check` compiles and runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from . import spec as S
from .diagnostics import Diagnostic, listing
from .source import Span
from .update_checks import divisions_by_zero, level_refs, roots_of_negative_values

FLOW_SOURCES = S.OPTIMIZER_FLOWS
# Newton–Schulz on an in-context level's chunk increment (rank ≤ its period): the quintic's slope at 0,
# Muon's a (nldsl.runtime.layers.MUON_COEFFICIENTS), multiplies the singular values that should be 0,
# i.e. float32 rounding noise, at every step. On a rank-1 32 × 32 increment the largest of them is
# 2e-5 after 5 steps, 8e-4 after 8, 1e-2 after 10, 0.1 after 12 and about 1 (the kept ones' size)
# from 15: past 8 steps the write is visibly noise (W0708).
NEWTON_SCHULZ_SLOPE = 3.4445
NOISY_NEWTON_SCHULZ_STEPS = 8


def walk_layers(layers: tuple[Any, ...], path: str) -> Iterator[tuple[str, Any]]:
    """Every sublayer, nested ones (parallel branches, MAC parts) included, with its spec path."""
    for layer in layers:
        layer_path = f"{path}.{layer.name}"
        yield layer_path, layer
        if isinstance(layer, S.ParallelSpec):
            yield from walk_layers(layer.branches, layer_path)
        elif isinstance(layer, S.ContextSpec):
            yield f"{layer_path}.memory", layer.memory
            yield f"{layer_path}.attention", layer.attention


def in_context_levels(model: S.ModelSpec, seq_len: int) -> Iterator[tuple[str, Any, str, S.LevelSpec]]:
    """(layer path, layer, level name, level) of every level that learns in the forward pass: those
    the model reads, less the cms levels that are plain MLPs on the continuum clock."""
    for layer_path, layer in walk_layers(model.block.sublayers, "block"):
        for name, level in read_levels_of(layer, seq_len):
            if not isinstance(layer, S.CMSSpec) or level.learns_in_context(seq_len):
                yield layer_path, layer, name, level


def in_context_periods(model: S.ModelSpec, seq_len: int) -> set[int]:
    """The chunk sizes of the levels that learn in the forward pass (a nested cms's slower levels
    count their periods from the stream's start, so only its fastest level's chunks are cut by a
    call's end)."""
    return {level.period for _, layer, name, level in in_context_levels(model, seq_len)
            if isinstance(level.period, int)
            and not (isinstance(layer, S.CMSSpec) and layer.variant == "nested"
                     and name != read_levels_of(layer, seq_len)[0][0])}


def context_segments(model: S.ModelSpec) -> set[int]:
    """The segment lengths of the memory-as-context layers: a call that ends inside a segment cuts it
    short, as one ending inside a chunk does (each segment retrieves from the memory at its start)."""
    layers = walk_layers(model.block.sublayers, "block")
    return {layer.segment for _, layer in layers if isinstance(layer, S.ContextSpec)}


# What a level uses only while it learns in context: a cms level on the continuum clock (an MLP
# stepped by the outer optimizer) ignores them. Its `lr` stays in use: `nldsl stream` steps it with it.
_IN_CONTEXT_ONLY = ("objective", "values", "rule", "dgd_layers", "retention", "momentum", "orthogonalize",
                    "clip", "readout", "grad_through_writes", "retention_order")


def _unused_level_settings(level: S.LevelSpec) -> Iterator[tuple[str, str]]:
    """(setting, why) for each setting a level's other settings make inert, when it is not the default.

    Each reason is read off the runtime: generated targets exist only for the dot and l2 objectives
    (runtime/memory.py `_write_factors`, runtime/delta.py); DGD's layers are chosen only under
    `rule = dgd` and a linear state has one layer (`LevelConfig.preconditioned_layers`); decaying
    before the write needs a retention gate to decay with (`memory_sequence`)."""
    default = S.LevelSpec.model_fields
    if level.values != default["values"].default and level.objective not in ("dot", "l2"):
        yield "values", (f"the `{level.objective}` objective has no value targets to generate "
                         "(only `dot` and `l2` regress on values)")
    if level.dgd_layers != default["dgd_layers"].default:
        if level.rule != "dgd":
            yield "dgd_layers", "it chooses the layers of DGD, and the level uses `rule = gd`"
        elif isinstance(level.state, S.LinearState) or (isinstance(level.state, S.MLPState) and level.state.depth == 1):
            yield "dgd_layers", "the state has a single weight matrix, which DGD always preconditions"
    if level.retention_order == "before_write" and level.retention is None:
        yield "retention_order", "without `retention` there is no decay to apply before the write"
    # Newton–Schulz starts from Δ/‖Δ‖, so a factor common to a chunk's whole increment is lost
    # (`_chunk_end_state`): an η that is one number (per head) scales every write of every chunk, and
    # with a period of 1 and no momentum an increment is a single write η_t u_t
    if level.orthogonalize is not None:
        if isinstance(level.lr, (S.ConstantGate, S.PerHeadGate)):
            one = "one number" if isinstance(level.lr, S.ConstantGate) else "one number per head"
            yield "lr", (f"newton_schulz normalises each chunk's increment, and an η that is {one} only scales "
                         "it, so the iteration alone sets the write's size (singular values near 1)")
        elif level.period == 1 and level.momentum is None:
            yield "lr", ("with period 1 and no momentum each chunk's increment is one token's write η_t u_t, and "
                         "newton_schulz normalises it, so the iteration alone sets the write's size")
        # a clip scales a token's η (docs/semantics.md §1.5): within a chunk it weighs the writes against
        # each other, but a lone write's scale is normalised away like η's
        if level.clip is not None and level.period == 1 and level.momentum is None:
            yield "clip", ("with period 1 and no momentum each chunk's increment is one token's write, and "
                           "newton_schulz normalises it, so a clip, which only scales the write, changes nothing")


# What a slower level of a nested cms never reads: the fastest level's values of these apply.
# (`retention` and `momentum` there are errors, E0601.)
_FASTEST_LEVEL_SETTINGS = ("objective", "values", "rule", "dgd_layers", "orthogonalize", "clip",
                           "grad_through_writes", "retention_order")


def levels_of(layer: Any) -> list[tuple[str, S.LevelSpec]]:
    """The in-context levels a layer owns, by their name inside the layer."""
    if isinstance(layer, S.MemorySpec):
        return [(layer.level.name, layer.level)]
    if isinstance(layer, S.SelfModSpec):
        return [("memory", layer.memory), ("projections", layer.projections)]
    if isinstance(layer, S.CMSSpec):
        return [(level.name, level) for level in layer.levels]
    return []


def runs_chunk_loop(layer: Any, level: S.LevelSpec, seq_len: int) -> bool:
    """Whether a level of `layer` runs a chunk loop in training (what `train.recompute` reruns): a
    cms level learning in context and a selfmod's levels do; a memory's level (a context's too, which
    `walk_layers` gives as its memory) does unless it runs through the exact delta kernel
    (paths.runs_delta_kernel, the runtime's rule)."""
    from nldsl.runtime.paths import runs_delta_kernel

    if isinstance(layer, S.CMSSpec):
        return level.learns_in_context(seq_len)
    if not isinstance(layer, S.MemorySpec):
        return True
    state = level.state
    single = isinstance(state, S.LinearState) or (isinstance(state, S.MLPState) and state.depth == 1)
    chunk = level.period if isinstance(level.period, int) else 1
    return not runs_delta_kernel(single, state.kind, level.momentum is not None,
                                 level.orthogonalize.steps if level.orthogonalize else 0,
                                 "external" if level.objective == "surprise" else level.objective, level.values,
                                 level.rule == "dgd", chunk, level.readout, level.clip is not None)


# W0714: a whole-graph compile unrolling this many chunk steps (or more) per sequence is flagged. One
# Titans memory layer of 64 chunk steps (width 256, T 1024, chunks of 16: bench/peers.py's titans_layer)
# spent 658 s compiling and running its first step from a cold compile cache on a 2-core CPU
# (2026-12-06); specs/hope.nl's 136 had not compiled after 40 minutes (docs/compiler.md).
UNROLLED_CHUNK_STEPS_WARNING = 64


# W0717: a whole-graph compile of this many blocks (or more) is flagged, where W0714 does not already
# speak of the compile. The graph grows by some 1.5 s of compile time a block on the CPU:
# specs/transformer.nl (no chunk loops) took 37.9 s to its first step at 16 layers and 99.9 s at 64,
# against 16.2 s and 15.1 s with `compile = blocks` (2-core CPU, 2026-12-06; docs/compiler.md).
DEEP_MODEL_LAYERS = 16


# W0716: float32 weights past this many bytes are flagged. Almost no one device holds a model this
# large, and every rank of a data-parallel run holds all of it, so such a spec is almost always a typo
# in a width (`dim = 10000000000000`). `nldsl train` measures the device itself before it builds the model
# (nldsl/loader.py build_model); this warning is the machine-independent one `nldsl check` can give.
MODEL_WEIGHTS_WARNING_BYTES = 2**40


def check_model_size(model: S.ModelSpec, spans: dict[str, Span]) -> list[Diagnostic]:
    """W0716: a model whose float32 weights alone pass MODEL_WEIGHTS_WARNING_BYTES."""
    from . import shapes

    count = shapes.parameter_count(model)
    if count * 4 <= MODEL_WEIGHTS_WARNING_BYTES:
        return []
    return [Diagnostic(
        "W0716", f"the model has {count:,} parameters, {count * 4 / 2**40:.3g} TiB of float32 weights: more than "
        "almost any one device holds (`nldsl train` refuses weights past its device's memory)",
        _span(spans, "model.dim", "model"),
        "check the widths (dim, expansion, vocab) and layers for a typo", "warning", origin="model")]


def chunk_loops(model: S.ModelSpec, seq_len: int) -> list[tuple[Any, S.LevelSpec]]:
    """(layer, level) for every level of a block that runs a chunk loop in training (`runs_chunk_loop`)."""
    return [(layer, level) for _, layer in walk_layers(model.block.sublayers, "block")
            for _, level in read_levels_of(layer, seq_len) if runs_chunk_loop(layer, level, seq_len)]


def unrolled_chunk_steps(model: S.ModelSpec, seq_len: int, loops: list[tuple[Any, S.LevelSpec]],
                         blocks: int | None = None) -> int:
    """The chunk steps a training sequence runs through `blocks` blocks (default: all of them): what
    `compile = true` unrolls into one graph, and `compile = blocks` into a block's graph with blocks = 1
    (each of a block's `loops`, ceil(seq_len / period) steps, once per block)."""
    per_block = sum(math.ceil(seq_len / (level.period if isinstance(level.period, int) else 1)) for _, level in loops)
    return (model.layers if blocks is None else blocks) * per_block


def check_chunk_options(model: S.ModelSpec, train: S.TrainSpec, spans: dict[str, Span]) -> list[Diagnostic]:
    """W0706: `train.recompute` reruns chunk loops and `train.chunks_per_call` runs several chunks per
    compiled call, and a model whose levels run none (attention and MLPs only, cms levels on the
    continuum clock, memories on the exact delta kernel) has nothing for them to act on. A nested
    cms's loop runs one chunk per call whatever `chunks_per_call` says (its step reads the chunk's
    position, nldsl/runtime/chunked.py), so it counts for `recompute` only; and `chunks_per_call`
    acts under `compile = chunks` only. W0714: `compile = true` (or `blocks`, counting one block) with
    many chunk steps to unroll."""
    looping = chunk_loops(model, train.seq_len)
    loops = [layer for layer, _ in looping]
    found = []
    if train.recompute and not loops:
        found.append(Diagnostic(
            "W0706", f"`recompute = {train.recompute}` has no effect: it reruns chunk loops in the backward pass, "
            "and no level of this model runs one (levels on the exact delta kernel, as linear attention and "
            "DeltaNet, run none)", _span(spans, "train.recompute"), "remove `recompute`", "warning",
            origin="train.recompute"))
    if train.chunks_per_call > 1 and train.compile != "chunks":
        # a warning, not an error: `nldsl train --no-compile` sets compile = false on a spec that groups
        found.append(Diagnostic(
            "W0706", f"`chunks_per_call = {train.chunks_per_call}` has no effect with `compile = "
            f"{str(train.compile).lower()}`: it sets how many chunk bodies one compiled call runs, and only "
            "`compile = chunks` compiles chunk bodies", _span(spans, "train.chunks_per_call"),
            "write `compile = chunks` beside it, or remove it", "warning", origin="train.chunks_per_call"))
    elif train.chunks_per_call > 1 and all(isinstance(layer, S.CMSSpec) and layer.variant == "nested"
                                           for layer in loops):
        found.append(Diagnostic(
            "W0706", f"`chunks_per_call = {train.chunks_per_call}` has no effect: it runs several chunks of a chunk "
            "loop per compiled call, and no level of this model runs a loop it can group (levels on the exact "
            "delta kernel run none; a nested cms runs one chunk per call, since its step reads the chunk's "
            "position)", _span(spans, "train.chunks_per_call"), "remove `chunks_per_call`", "warning",
            origin="train.chunks_per_call"))
    if train.compile is True or train.compile == "blocks":
        per_block = train.compile == "blocks"
        one_block = unrolled_chunk_steps(model, train.seq_len, looping, blocks=1)
        steps = one_block if per_block else unrolled_chunk_steps(model, train.seq_len, looping)
        if steps >= UNROLLED_CHUNK_STEPS_WARNING:
            # where one block's loops are short enough, compiling a block and reusing it is the smaller step
            blocks_help = (f"write `compile = blocks` (one block's graph, {one_block} chunk steps, reused by "
                           "every block), `compile = chunks` (each chunk body compiles once, whatever the "
                           "length), or train with `--no-compile`")
            advice = (blocks_help if not per_block and one_block < UNROLLED_CHUNK_STEPS_WARNING else
                      "write `compile = chunks` (each chunk body compiles once, whatever the length), or train "
                      "with `--no-compile`")
            what = ("`compile = blocks` unrolls a block's chunk loops into its graph" if per_block else
                    "`compile = true` unrolls every chunk loop into one graph")
            found.append(Diagnostic(
                "W0714", f"{what}: {steps} chunk steps at seq_len {train.seq_len}, and the first step's "
                f"compilation grows with them (one Titans memory layer of {UNROLLED_CHUNK_STEPS_WARNING} chunk "
                "steps took 11 minutes on a 2-core CPU)",
                _span(spans, "train.compile", "train.seq_len", "train", "model.layers", "model"),
                advice, "warning", origin="train.compile"))
    return found


def check_compile_depth(model: S.ModelSpec, train: S.TrainSpec, spans: dict[str, Span],
                        chunk_warning: bool) -> list[Diagnostic]:
    """W0717: `compile = true` on a model of DEEP_MODEL_LAYERS blocks or more puts every block into one
    graph, where `compile = blocks` compiles one and reuses it. `chunk_warning`: W0714 already warns
    of this spec's compile time (and names `blocks` where it helps), so nothing is added."""
    if train.compile is not True or model.layers < DEEP_MODEL_LAYERS or chunk_warning:
        return []
    return [Diagnostic(
        "W0717", f"`compile = true` compiles all {model.layers} blocks into one graph, and the first step's "
        "compilation grows with the depth (specs/transformer.nl took 37.9 s at 16 layers and 99.9 s at 64 on a "
        "2-core CPU)", _span(spans, "model.layers", "train.compile", "model"),
        "write `compile = blocks` in `train` or pass `--set train.compile=blocks` (one block's graph, reused "
        "by every block: 16.2 s and 15.1 s there), or train with `--no-compile`", "warning", origin="train.compile")]


def check_run_length(layers: list[tuple[str, Any]], train: S.TrainSpec, spans: dict[str, Span]) -> list[Diagnostic]:
    """W0711: a level whose updates come less often than once in the whole run keeps its start for
    all of it: a cms level on the continuum clock stepped every N > train.steps outer steps, and a
    level of the optimizer `train` uses whose period passes train.steps."""
    out: list[Diagnostic] = []
    for path, layer in layers:
        if not isinstance(layer, S.CMSSpec):
            continue
        inert = layer.inert_levels(train.seq_len)
        for level in layer.levels:
            if level.learns_in_context(train.seq_len) or level.name in inert or (
                    layer.variant == "nested" and level is not layer.levels[0]):
                continue
            steps = train.clock_steps(level)
            if steps > train.steps:
                lp = f"{path}.{level.name}"
                how = ("its `steps(n)` period" if isinstance(level.period, S.Steps) else
                       f"its period of {level.period:,} tokens over the {train.batch * train.seq_len:,} tokens of a "
                       "step (batch × seq_len)")
                out.append(Diagnostic(
                    "W0711", f"level `{level.name}` is stepped every {steps:,} outer steps ({how}), more than "
                    f"train.steps = {train.steps}: it keeps its initial weights for the whole run",
                    _span(spans, f"{lp}.period", lp, path), "lower its period or raise train.steps", "warning",
                    origin=f"{lp}.period"))
    optimizer = train.optimizer
    if getattr(optimizer, "kind", None) == "m3" and S.M3_SLOW_PERIOD > train.steps:
        out.append(Diagnostic(
            "W0711", f"the built-in `m3` writes its slow momentum every {S.M3_SLOW_PERIOD} steps, more than "
            f"train.steps = {train.steps}: it never does in the run, so m3 steps with its fast momentum only",
            _span(spans, "train.optimizer", "train.steps"), f"raise train.steps to {S.M3_SLOW_PERIOD} or more, or "
            "use `adamw` or `muon` for so short a run", "warning", origin="train.optimizer"))
    if isinstance(optimizer, S.OptimizerSpec):
        for level in optimizer.levels:
            if level.period > train.steps:
                lp = f"{optimizer.name}.{level.name}"
                used = f"train.optimizer.{lp}"  # the section as train uses it: with its --set overrides
                out.append(Diagnostic(
                    "W0711", f"optimizer level `{level.name}` updates every {level.period} steps, more than "
                    f"train.steps = {train.steps}: it never updates in the run, so what reads it keeps its start",
                    _span(spans, f"{used}.period", f"{lp}.period", lp, "train.optimizer"),
                    "lower its period or raise train.steps",
                    "warning", origin=f"{lp}.period"))
    return out


def gate_range_errors(gate_name: str, gate: Any) -> list[tuple[str, str | None]]:
    """(message, help) of E0302 for a `retention` or `momentum` gate outside its range: both multiply
    the state (or the momentum) every token. A rule on the gate alone, so that the checker also asks
    it of a level whose other settings failed (Converter.level)."""
    high_closed = gate_name == "retention"
    value = gate.value if isinstance(gate, S.ConstantGate) else gate.init if isinstance(
        gate, (S.PerHeadGate, S.LearnedGate)) and gate.init is not None else None
    bound = gate.max if isinstance(gate, (S.LearnedGate, S.GeneratedGate)) else 1.0
    if value is not None and not (0 <= value <= 1 if high_closed else 0 <= value < 1):
        return [(f"`{gate_name}` must lie in [0, 1{']' if high_closed else ')'}, got {value:g}",
                 "it multiplies the state (or the momentum) every token")]
    if bound > 1:
        return [(f"`{gate_name}` cannot exceed 1, but its `max` is {bound:g}", None)]
    return []


def read_levels_of(layer: Any, seq_len: int) -> list[tuple[str, S.LevelSpec]]:
    """The levels of `levels_of` that the model reads: not the `projections` level of a selfmod with
    no adaptive projection (it has no projection memories, W0703), nor a slower nested cms level
    that never moves (W0706)."""
    inert = layer.inert_levels(seq_len) if isinstance(layer, S.CMSSpec) else ()
    return [(name, level) for name, level in levels_of(layer)
            if name not in inert
            and not (isinstance(layer, S.SelfModSpec) and name == "projections" and not layer.adaptive)]


def _dgd_growth(layer: Any, level: S.LevelSpec, dim: int | None) -> tuple[float, float] | None:
    """(η, 1 − η·dim) where a cms level's dgd decay can exceed −1 along its input: the input is
    RMS-normalised, so ‖x‖² = dim, and (αI − η x xᵀ) scales the component along x by α − η‖x‖²,
    which a token seen again multiplies again (on repeated text a width-256 level at η = 0.01
    reached NaN by token 758, one of width 192 stayed finite over 1024). η is the gate's bound
    where it has one, else its initial value (a `per_head` gate is unbounded)."""
    if dim is None or not isinstance(layer, S.CMSSpec) or level.rule != "dgd":
        return None
    if layer.variant == "nested" and level is not layer.levels[0]:
        return None  # a slower nested level has no rule of its own (it moves toward the faster one)
    eta = gate_bound(level.lr)
    if eta * dim <= 2:
        return None
    return eta, 1 - eta * dim


def gate_bound(gate: Any) -> float:
    """The largest value a gate takes where it has a bound (`max` of a learned or generated gate),
    else its value (constant) or initial value (`per_head`, which is unbounded)."""
    if isinstance(gate, S.ConstantGate):
        return gate.value
    if isinstance(gate, S.PerHeadGate):
        return gate.init
    return gate.max


def _delta_overshoot(layer: Any, level: S.LevelSpec) -> tuple[float, float, int, float] | None:
    """(η, β, c, c·η/(1 − β)) where a `memory` layer's delta-rule write can grow its state along its
    keys (W0718). With l2-normalised keys (‖k‖ = 1), a linear state and the l2 objective, a write
    scales the state's component along its key by α − c·η, c = 1 for gd and 2 for dgd (whose decay
    adds a second η k kᵀ, docs/semantics.md §1.4): past −1 once c·η > 1 + α, so past 2 at α = 1.
    With momentum the measured boundary is c·η/(1 − β) = 2 (keys that change each token make the
    buffer's old steps land along new keys). η is the gate's bound (`gate_bound`), β the momentum's
    start (`gate_start`): a learned β can approach its bound, 1 by default, where no η is safe."""
    if not (isinstance(layer, S.MemorySpec) and layer.qk_norm == "l2" and isinstance(level.state, S.LinearState)
            and level.objective == "l2" and level.values == "given" and level.update == "in_context"
            and isinstance(level.period, int) and level.orthogonalize is None):
        return None
    eta = gate_bound(level.lr)
    beta = gate_start("momentum", level.momentum) or 0.0
    if beta >= 1:
        return None  # a momentum of 1 or more is an error (E0302), reported instead
    c = 2 if level.rule == "dgd" else 1
    step = c * eta / (1 - beta)
    # "passes 2" as written: 0.2/(1 − 0.9) is 2.0000000000000004 in floats, and is 2
    return (eta, beta, c, step) if step > 2 * (1 + 1e-9) else None


# Where a learned gate starts, as a fraction of its `max` (docs/semantics.md §2): a moderate
# learning rate, a retention close to 1 (forgetting is learned, not imposed), Titans-like momentum.
# Here, beside the checks that read them; the compiler (compiler/lower.py) starts the gates from them.
LEARNED_GATE_START = {"lr": 0.5, "retention": 0.999, "momentum": 0.9}
# Gates generated by the self-modifying memories M_eta / M_alpha start here (their readout
# vectors start at zero, so the gate is the same for every token until it learns otherwise).
GENERATED_GATE_START = {"lr": 0.1, "retention": 0.999}
# W0713: a selfmod's main memory whose initial step η/(1 − β) reaches this diverges in its first
# forward. Measured on specs/hope.nl (its first forward at a random init, seeds 0–1, bytes of
# json/decoder.py), varying the memory level's lr = generated(max = M) (η starts at M/10), a constant
# momentum β and the period C, e.g.
#   nldsl check specs/hope.nl --set dim=64 --set "model.block.titans.memory.lr=generated(max=1)" \
#     --set model.block.titans.memory.momentum=0.95      (the loss of the first forward: NaN)
# M ∈ {1, 0.5, 0.3, 0.2, 0.1, 0.05}, β ∈ {0, 0.5, 0.8, 0.9, 0.95, the spec's learned 0.81}, C ∈ {4, 8,
# 16, 32}, dim 64 and 128, seq_len 256 and 1024: η/(1 − β) ≤ 0.3 never gave NaN; 0.4–0.5 gave NaN in
# most runs (dim 64 at every C ≥ 8, seq_len 1024 at every C; not at dim 128 for 0.4, nor at C = 4 for
# 0.5 with β = 0.8); ≥ 0.6 gave NaN in every run. The period barely matters: η·C/(1 − β) = 9.6 (M 0.3,
# β 0.9, C 32) stayed finite where 4 (M 1, β 0.9, C 4) did not. The projections level (period 8) stayed
# finite even at η/(1 − β) = 2, so only the `memory` level is held to it.
SELFMOD_STEP_LIMIT = 0.4
SELFMOD_STEP_SAFE = 0.3
# W0719: a `memory` layer's MLP memory whose initial step η/(1 − β) reaches this diverged in its
# first forward in every measured run. Measured on specs/titans_lmm.nl (its first forward at a random
# init, seeds 0–1, the bytes of json/decoder.py): at 0.8, 1 and 2, each with dim 64, 128 and 256 (4
# heads), the states mlp(depth = 2, expansion = 2), mlp(depth = 3, expansion = 4) and residual_mlp,
# periods 1, 16 and 64, gd and dgd, β 0 and 0.81, seq_len 256 and 1024: NaN in all 1,296 runs, e.g.
#   nldsl check specs/titans_lmm.nl --set model.block.lmm.level.lr=0.8 --set model.block.lmm.level.momentum=0
# Below it the first NaN depended on the shape, the period and the length, with no safe value for
# all: at 256 tokens from 0.74 (dim 64, depth 2, period 1, β 0.81) down to 0.05 (dim 256,
# mlp(depth = 3, expansion = 4), period 64, β 0.81); at period 1 some shapes were NaN at 0.45; over
# 1,024 tokens at period 64 some were NaN at 0.025 (a chunk sums its tokens' gradients at one state).
# So the warning flags only what diverged everywhere.
MLP_MEMORY_STEP_LIMIT = 0.8


def gate_start(name: str, gate: Any) -> float | None:
    """The value a level's `lr`, `retention` or `momentum` gate has at initialisation (None: no gate)."""
    if gate is None:
        return None
    if isinstance(gate, S.ConstantGate):
        return gate.value
    if isinstance(gate, S.PerHeadGate):
        return gate.init
    if isinstance(gate, S.LearnedGate):
        return gate.init if gate.init is not None else LEARNED_GATE_START[name] * gate.max
    if isinstance(gate, S.GeneratedGate):
        return GENERATED_GATE_START[name] * gate.max
    raise AssertionError(gate)


def _selfmod_step(layer: Any, name: str, level: S.LevelSpec) -> tuple[float, float, float] | None:
    """(η, β, η/(1 − β)) at init where a selfmod's main memory starts with a step that diverges
    (SELFMOD_STEP_LIMIT, measured above); None otherwise."""
    if not isinstance(layer, S.SelfModSpec) or name != "memory":
        return None
    return _starting_step(level, SELFMOD_STEP_LIMIT)


def _mlp_memory_step(layer: Any, level: S.LevelSpec) -> tuple[float, float, float] | None:
    """(η, β, η/(1 − β)) at init where a `memory` layer's MLP memory starts with a step that diverged
    in every measured run (MLP_MEMORY_STEP_LIMIT, measured above); None otherwise, and for what was
    not measured: other objectives, generated values, Newton–Schulz, unnormalised keys."""
    if not (isinstance(layer, S.MemorySpec) and layer.qk_norm == "l2"
            and isinstance(level.state, (S.MLPState, S.ResidualMLPState)) and level.objective == "l2"
            and level.values == "given" and level.update == "in_context" and level.orthogonalize is None):
        return None
    return _starting_step(level, MLP_MEMORY_STEP_LIMIT)


def _starting_step(level: S.LevelSpec, limit: float) -> tuple[float, float, float] | None:
    """(η, β, η/(1 − β)) from the level's starting gates where that step reaches `limit`; None otherwise,
    and where there is no step to form (a momentum of 1 or more is an error, E0302, reported instead)."""
    eta = gate_start("lr", level.lr)
    beta = gate_start("momentum", level.momentum) or 0.0
    if eta is None or beta >= 1:
        return None
    step = eta / (1 - beta)
    # "reaches 0.4" as written: 0.12/(1 − 0.7) is 0.3999999999999999 in floats, and is 0.4
    return (eta, beta, step) if step >= limit * (1 - 1e-9) else None


def _round_down(value: float) -> float:
    """`value` rounded down to two significant digits (a bound the hint's number keeps)."""
    exponent = math.floor(math.log10(value)) - 1
    return math.floor(value / 10 ** exponent) * 10 ** exponent


def _span(spans: dict[str, Span], *paths: str) -> Span | None:
    for path in paths:
        if path in spans:
            return spans[path]
    return None


def _cut_off_by_detached_writes(layer: Any, path: str, spans: dict[str, Span], seq_len: int
                                ) -> tuple[str, str, str] | None:
    """What `grad_through_writes = false`, written on a layer's memory level, leaves without a gradient:
    the parameters whose only way to the loss is a detached write (the keys, the values, the learning
    rate); None when the layer keeps them all. Returns (the message, help, the setting's path).

    A selfmod's projection memories are written with the same k, v and η (and retention α), so
    while those writes are differentiable, k, v and η also reach the loss through the memories
    whose outputs do: q's (the readout) and α's (the retention, never detached)."""
    if isinstance(layer, S.SelfModSpec):
        setting = f"{path}.memory.grad_through_writes"
        if layer.memory.grad_through_writes or setting not in spans:
            return None
        if not layer.kv_eta_cut_off(seq_len):
            return None  # the projections' writes carry k, v and η into q or α
        adaptive = set(layer.adaptive)
        carried = [name for name in layer.adaptive if name in ("q", "alpha")]
        lost = [f"M_{name}" if name in adaptive else f"W_{name}" for name in ("k", "v")]
        if "eta" in adaptive:
            lost.append("M_eta")
        elif isinstance(layer.memory.lr, S.LearnedGate | S.PerHeadGate):
            lost.append("the learned `lr`")
        if layer.conv:
            lost.append("the convolutions of k and v")
        into = listing([f"M_{name}" for name in carried]) if carried else ""
        if not adaptive:
            why, help = "", "remove `grad_through_writes = false`, or accept them fixed at their initial weights"
        elif not carried:
            why = " (the projection memories' writes only make k, v and η again)"
            help = "remove `grad_through_writes = false`, or accept them fixed at their initial weights"
        elif not layer.projections.grad_through_writes:
            why = " (and the projection memories' writes, detached too)"
            help = ("remove `grad_through_writes = false` here or on the `projections` level, whose own writes "
                    f"would carry k, v and η into {into}")
        else:
            why = (" (nothing reads the projection memories' writes in training: their period "
                   f"{layer.projections.period} is not shorter than train.seq_len = {seq_len})")
            help = (f"remove `grad_through_writes = false`, or give the `projections` level a period under "
                    f"{seq_len}, so that its writes carry k, v and η into {into}")
        return (f"{listing(lost)} get no gradient: k, v and η reach the loss only through the memory's writes, "
                f"which `grad_through_writes = false` cuts off{why}", help, setting)
    if isinstance(layer, S.MemorySpec):
        setting = f"{path}.{layer.level.name}.grad_through_writes"
        level = layer.level
        if level.grad_through_writes or level.update != "in_context" or setting not in spans:
            return None
        lost = [f"W_{name}" for name in layer.projected if name != "q"]
        if layer.conv:
            lost.append("their convolutions" if len(lost) > 1 else "its convolution")
        if isinstance(level.lr, S.LearnedGate | S.PerHeadGate):
            lost.append("the learned `lr`")
        several = len(lost) > 1
        return (f"{listing(lost)} {'get' if several else 'gets'} no gradient: "
                f"{'they reach' if several else 'it reaches'} the loss only through the memory's writes, which "
                "`grad_through_writes = false` cuts off",
                "remove `grad_through_writes = false` (Titans and DeltaNet learn these projections through the "
                "writes), or accept them fixed at their initial weights", setting)
    return None


def hidden_width_settings(layer: Any, path: str, dim: int) -> Iterator[tuple[str, float, int]]:
    """(spec path, expansion, input width) of every hidden width a layer's own settings make: an `mlp`
    layer's, and each level's `mlp(depth ≥ 2)` or `residual_mlp` state, whose input is a head's width."""
    if isinstance(layer, S.MLPSpec):
        yield f"{path}.expansion", layer.expansion, dim
        return
    width = dim // layer.heads if isinstance(layer, (S.MemorySpec, S.SelfModSpec)) else dim
    for name, level in levels_of(layer):
        state = level.state
        if isinstance(state, S.ResidualMLPState) or (isinstance(state, S.MLPState) and state.depth > 1):
            yield f"{path}.{name}.state", state.expansion, width


def _zero_start_never_writes(layer: Any, name: str, level: S.LevelSpec, spans: dict[str, Span],
                             projections_prefix: str) -> tuple[str, str] | None:
    """Why a linear level that starts at zero (`init = zeros`) would stay at zero, and what to change;
    None where it writes.

    A write is δ kᵀ with δ = M(k) − target, and M(k) = 0 at the start: the level moves only with a
    nonzero key and a nonzero target. Its own prediction as target (`values = generated`, Eq. 83) is
    M(v) = 0. A selfmod's projection memories write with the keys M_k generates (zero from a zero M_k)
    and regress onto the values M_v generates (likewise); measured, their states were still exactly zero
    after 16 tokens in each such case. Projection settings copied from `level memory` are named there."""
    copied_projections = isinstance(layer, S.SelfModSpec) and not any(p.startswith(projections_prefix) for p in spans)
    if name == "projections":
        # copied: `memory` reports it; without adaptive projections nothing reads them (W0703)
        stuck = None if copied_projections or not layer.adaptive else _zero_projections(layer)
        return None if stuck is None else (stuck, "use `init = learned` on the projections level")
    why = ("the memory's prediction M(k) and its target M(v) both start at zero, so every inner gradient is zero "
           "and the state stays zero" if level.values == "generated" and level.objective in ("l2", "dot") else None)
    help = "use `init = learned`, or `values = given`"
    if copied_projections and layer.adaptive:  # the copy starts at zero as this level does
        stuck = _zero_projections(layer)
        if stuck is not None:
            copied = f"the projection memories copy this level's settings, `init = zeros` among them, and {stuck}"
            help = ("use `init = learned`, or give the selfmod a `level projections` of its own (its projection "
                    "memories then start from learned weights)")
            return (copied if why is None else f"{why}; {copied}"), help
    return None if why is None else (why, help)


def _zero_projections(layer: S.SelfModSpec) -> str | None:
    """Why a selfmod's projection memories, starting at zero, never write (None where they do)."""
    projections = layer.projections
    if "k" in layer.adaptive:
        return ("M_k starts at zero, so every key it generates is zero, and every projection memory's write "
                "δ kᵀ is zero with it")
    if projections.objective not in ("l2", "dot"):
        return None  # reconstruction: the target is the static key
    if projections.values == "generated":
        return "each projection memory predicts M(k) = 0 and regresses onto its own M(v) = 0"
    if "v" in layer.adaptive:
        return "each projection memory predicts M(k) = 0 and regresses onto the values of M_v, which starts at zero"
    return None


def check_layer(layer: Any, path: str, spans: dict[str, Span], seq_len: int,
                dim: int | None = None) -> list[Diagnostic]:
    """The checks that need a whole layer: combinations of its levels' options, periods (and, given
    the model's width `dim`, what a cms level's RMS-normalised input does to its dgd decay)."""
    out: list[Diagnostic] = []

    def error(code: str, message: str, help: str | None, *paths: str) -> None:
        out.append(Diagnostic(code, message, _span(spans, *paths, path), help, origin=paths[0] if paths else path))

    def warning(code: str, message: str, help: str | None, *paths: str) -> None:
        out.append(Diagnostic(code, message, _span(spans, *paths, path), help, "warning",
                              origin=paths[0] if paths else path))

    context = layer.kind
    for name, level in levels_of(layer):
        lp = f"{path}.{name}"
        if isinstance(layer, S.MemorySpec):
            lp = f"{path}.{name}"
        outer_cms = context == "cms" and not level.learns_in_context(seq_len)  # its in-context settings: W0705
        if level.orthogonalize is not None and level.readout != "chunk_start":
            # (on a level the outer optimizer steps the pair has no effect, but the runtime's level
            # config still refuses it: remove it rather than add to it)
            error("E0601", "newton_schulz changes the state only at chunk ends, so it needs "
                  "`readout = chunk_start`",
                  "remove `orthogonalize` and `readout`: a level the outer optimizer steps uses neither"
                  if outer_cms else "add `readout = chunk_start` or remove `orthogonalize`",
                  f"{lp}.orthogonalize", f"{lp}.readout")
        if level.retention_order == "before_write" and (
                not isinstance(level.state, S.LinearState) or level.period != 1 or level.momentum is not None
                or level.orthogonalize is not None or level.objective in ("surprise",)):
            has = [what for what, wrong in (
                ("an MLP state", not isinstance(level.state, S.LinearState)), (f"`period = {level.period}`",
                                                                              level.period != 1),
                ("momentum", level.momentum is not None), ("`orthogonalize`", level.orthogonalize is not None),
                ("`objective = surprise` (a cms level's default)", level.objective == "surprise")) if wrong]
            error("E0601", "`retention_order = before_write` (Gated DeltaNet) needs a linear state, `period = 1`, "
                  "no momentum, no `orthogonalize` and an objective with keys of its own (not `surprise`); this "
                  f"level has {listing(has)}", "remove it, or make the level a linear period-1 memory"
                  + (" with `objective = reconstruction`" if level.objective == "surprise" else ""),
                  f"{lp}.retention_order")
        if level.retention_order == "before_write" and (
                (isinstance(layer, S.SelfModSpec) and name == "projections")
                or (isinstance(layer, S.CMSSpec) and layer.variant == "nested")):
            where = "a selfmod's projection memories" if context == "selfmod" else "a nested cms"
            error("E0601", f"`retention_order = before_write` is not available to {where}: they run the "
                  "chunk step, which decays with the write (Gated DeltaNet's order is on the delta-rule path "
                  "of a memory or a sequential or independent cms level)", "remove `retention_order`",
                  f"{lp}.retention_order")
        if level.init == "zeros" and not isinstance(level.state, S.LinearState):
            error("E0601", "`init = zeros` needs a linear state (an all-zero MLP never learns)",
                  "use `init = learned`", f"{lp}.init")
        elif context != "cms" and level.init == "zeros":
            never_writes = _zero_start_never_writes(layer, name, level, spans, f"{path}.projections.")
            if never_writes is not None:
                why, help = never_writes
                error("E0601", f"`init = zeros` never writes here: {why}", help, f"{lp}.init", f"{lp}.values")
        if context == "cms" and level.init == "zeros" and not level.learns_in_context(seq_len):
            why = ("it is stepped by the outer optimizer" if level.update == "outer" else
                   f"its period {level.period} is longer than train.seq_len = {seq_len}")
            error("E0601", f"`init = zeros` leaves level `{name}` nothing to learn: {why}, and zero "
                  "weights have no parameter to step", "use `init = learned`", f"{lp}.init")
        if level.objective == "surprise" and context != "cms":
            error("E0601", "`objective = surprise` (the next-token loss) is only available to cms levels",
                  "use `l2` or `dot` for memories with keys and values", f"{lp}.objective")
        if context == "cms" and level.objective in ("dot", "l2"):
            error("E0601", f"a cms level has no value stream for `objective = {level.objective}`",
                  "use `surprise` (default) or `reconstruction`", f"{lp}.objective")
        if context == "cms" and level.readout != "chunk_start" and not outer_cms:
            error("E0601", "cms levels change only at chunk ends (Eq. 71): use `readout = chunk_start`",
                  None, f"{lp}.readout")
        if context != "cms" and level.update == "outer":
            error("E0601", "`update = outer` is for cms levels; memories learn in context",
                  "remove `update`, or make this block a `cms` level", f"{lp}.update")
        if isinstance(level.period, S.Steps) and level.update != "outer":
            error("E0601", "a period in steps needs `update = outer`; in-context levels count tokens",
                  "write `period = 16` (tokens) or add `update = outer`", f"{lp}.period")
        for gate_name in ("retention", "momentum"):
            for message, help in gate_range_errors(gate_name, getattr(level, gate_name)):
                error("E0302", message, help, f"{lp}.{gate_name}")
        for gate_name in ("lr", "retention", "momentum"):
            gate = getattr(level, gate_name)
            # softplus (lr) and sigmoid (the others) of a logit reach 0 and 1 only at ±∞: the logit would
            # start clamped where the gate's gradient is ~1e-8, a gate that could not learn
            # (a momentum of 1 or more is out of its range, above)
            squashed_end = gate_name == "retention" and isinstance(gate, S.PerHeadGate) and gate.init == 1
            edge = S.SIGMOID_START_EDGE
            near_end = gate_name != "lr" and isinstance(gate, S.PerHeadGate) and (
                0 < gate.init < edge or 1 - edge < gate.init < 1)  # a sigmoid's logit past ±13.8
            if near_end:
                error("E0302", f"`{gate_name} = per_head({gate.init!r})` starts where its sigmoid is flat, at a "
                      f"logit past {'−' if gate.init < 0.5 else '+'}13.8, so it could not learn",
                      f"start it within [{edge:g}, 1 − {edge:g}]", f"{lp}.{gate_name}")
            elif isinstance(gate, S.PerHeadGate) and (gate.init == 0 or squashed_end):
                error("E0302", f"`{gate_name} = per_head({gate.init:g})` starts where its "
                      f"{'softplus' if gate_name == 'lr' else 'sigmoid'} is flat, at a logit of "
                      f"{'−' if gate.init == 0 else '+'}∞, so it could not learn",
                      f"start it inside {'(0, ∞)' if gate_name == 'lr' else '(0, 1)'}, e.g. per_head("
                      f"{'0.01' if gate.init == 0 else '0.999'}), or use a constant gate", f"{lp}.{gate_name}")
            if isinstance(gate, S.LearnedGate) and gate.init is not None and gate.init >= gate.max:
                error("E0302", f"`{gate_name}` starts at {gate.init:g}, which is not below its `max` {gate.max:g}",
                      "a learned gate is max · sigmoid(…): choose init < max", f"{lp}.{gate_name}")
            elif isinstance(gate, S.LearnedGate) and gate.init is not None and not (
                    S.SIGMOID_START_EDGE <= gate.init / gate.max <= 1 - S.SIGMOID_START_EDGE):
                edge = S.SIGMOID_START_EDGE
                error("E0302", f"`{gate_name}` starts at {gate.init!r}, {gate.init / gate.max!r} of its `max`: "
                      f"max · sigmoid(…) starts there only past a logit of ±13.8, where it could not learn",
                      f"start it within [{edge:g}, 1 − {edge:g}] of max, from {edge * gate.max:.3g} to "
                      f"{(1 - edge) * gate.max:.7g}", f"{lp}.{gate_name}")
        generated = [g for g in ("lr", "retention", "momentum")
                     if isinstance(getattr(level, g), S.GeneratedGate)]
        if isinstance(layer, S.SelfModSpec) and name == "projections":
            generated = []  # the projection memories use the memory level's gates (Eq. 88)
        for gate in generated:
            source = {"lr": "eta", "retention": "alpha", "momentum": None}[gate]
            if not isinstance(layer, S.SelfModSpec) or source is None or source not in layer.adaptive:
                error("E0505", f"`{gate} = generated` needs an in-context memory to generate it",
                      f"list `{source}` in the selfmod's `adaptive`" if source and isinstance(layer, S.SelfModSpec)
                      else "use `learned(…)` or a constant", f"{lp}.{gate}")
        if level.update == "in_context" and isinstance(level.period, int):
            slow = level.period == 1 and (not isinstance(level.state, S.LinearState) or level.momentum is not None
                                          or level.clip is not None)
            # a level the checker rejects is not also warned of (its speed follows from the rejected setting)
            rejected = any(d.severity == "error" and (d.origin == lp or (d.origin or "").startswith(f"{lp}."))
                           for d in out)
            if slow and not rejected and not (isinstance(level.state, S.LinearState) and level.objective == "dot"
                                              and level.values == "given" and level.rule == "gd"):
                warning("W0701", "`period = 1` on this level runs token by token (no chunk-parallel "
                        "form exists for it); training will be slow",
                        "use a period of 8–64 (the chunk rule), or a linear state without momentum or `clip`",
                        f"{lp}.period", lp)  # the level's header where its period is the default
            if context != "cms" and level.period > seq_len:
                warning("W0704", f"period {level.period} is longer than a training sequence "
                        f"({seq_len} tokens): this memory never updates within a sequence",
                        "lower the period or raise `train.seq_len`", f"{lp}.period")
            elif context != "cms" and level.period == seq_len and level.readout == "chunk_start":
                # the one write lands at the sequence's end; chunk_start reads only earlier chunks' writes
                warning("W0704", f"period {level.period} is a whole training sequence and `readout = chunk_start` "
                        "reads only earlier chunks' writes: this memory's one write lands at the end of the "
                        "sequence, where nothing in the training sequence reads it",
                        "lower the period or raise `train.seq_len`", f"{lp}.period")
            elif context == "cms" and level.period == seq_len and isinstance(layer, S.CMSSpec) and (
                    layer.variant == "nested" and name != layer.levels[0].name):
                # a slower nested level moves when its period ends, and the faster levels restart from it
                # after the last token: training never reads the move, so no gradient reaches its start
                # (a stream carried across calls does read it; S.CMSSpec.inert_levels keeps it)
                if layer.levels[0].learns_in_context(seq_len):
                    warning("W0704", f"period {level.period} is a whole training sequence: nested level "
                            f"`{level.name}` moves only at the end of its period, after the sequence's last token, "
                            f"so no training sequence reads its move and its start `{level.name}_w*` gets no "
                            "gradient (a stream carried across calls does read it)",
                            f"use a period below train.seq_len ({seq_len}), or raise `train.seq_len`", f"{lp}.period")
            elif context == "cms" and level.period == seq_len:
                # a cms level reads the weights of its last write, as chunk_start does; one slower than a
                # sequence goes on the continuum clock instead (learns_in_context)
                warning("W0704", f"period {level.period} is a whole training sequence: a cms level reads the "
                        "weights of its last write, and its one write lands at the end of the sequence, where "
                        "nothing in the training sequence reads it",
                        f"use a period below train.seq_len ({seq_len}), or one above it (the level is then "
                        "stepped by the outer optimizer on the continuum clock)", f"{lp}.period")
    if isinstance(layer, S.CMSSpec) and layer.variant != "nested":
        for level in layer.levels:
            lp = f"{path}.{level.name}"
            outer = level.update == "outer"
            if not outer and not (isinstance(level.period, int) and level.period > seq_len):
                continue
            # `momentum = none` unsets an inherited gate: it asks for nothing, so it is not unused
            unused = [name for name in _IN_CONTEXT_ONLY
                      if f"{lp}.{name}" in spans and getattr(level, name) is not None]
            if unused:
                why = ("`update = outer`" if outer else
                       f"its period {level.period} is longer than a training sequence ({seq_len} tokens)")
                warning("W0705", f"level `{level.name}` is a plain MLP stepped by the outer optimizer ({why}), "
                        f"so {', '.join(f'`{name}`' for name in unused)} "
                        f"{'has' if len(unused) == 1 else 'have'} no effect",
                        "remove them, or let the level learn in context: `update = in_context` and a period "
                        f"below train.seq_len ({seq_len})", *(f"{lp}.{name}" for name in unused))
    if isinstance(layer, S.SelfModSpec):
        for source, gate_name in (("eta", "lr"), ("alpha", "retention")):
            if source in layer.adaptive and not isinstance(getattr(layer.memory, gate_name), S.GeneratedGate):
                error("E0601", f"`{source}` is adaptive, so `{gate_name}` comes from M_{source}: set "
                      f"`{gate_name} = generated` on the memory level, or remove `{source}` from `adaptive`",
                      None, f"{path}.memory.{gate_name}", f"{path}.adaptive")
        if len(set(layer.adaptive)) != len(layer.adaptive):
            error("E0202", "a projection is listed twice in `adaptive`", None, f"{path}.adaptive")
        if layer.projections.readout != "chunk_start":
            error("E0601", "the self-modifying projections generate their own keys and values, so they "
                  "must read the state their chunk started with", "set `readout = chunk_start` "
                  "(Eq. 90)", f"{path}.projections.readout", f"{path}.projections")
        user_set = any(p.startswith(f"{path}.projections.") for p in spans)
        if not layer.adaptive and user_set:
            warning("W0703", "level `projections` is never read: `adaptive` is empty",
                    "list the adaptive projections, e.g. `adaptive = [k, v, eta, alpha]`", f"{path}.projections")
    if isinstance(layer, S.CMSSpec) and layer.variant == "nested":
        periods = [(lv.name, lv.period) for lv in layer.levels]
        for (inner, p_inner), (outer, p_outer) in itertools.pairwise(periods):
            if not isinstance(p_inner, int) or not isinstance(p_outer, int):
                continue
            if p_inner > p_outer:
                error("E0501", f"level `{inner}` (period {p_inner}) is nested inside `{outer}` "
                      f"(period {p_outer}) but updates less often", "list nested cms levels from the "
                      "fastest to the slowest", f"{path}.{outer}.period", f"{path}.{outer}")
            elif p_outer % p_inner:
                error("E0502", f"period {p_outer} of `{outer}` is not a multiple of period {p_inner} of "
                      f"the level nested inside it (`{inner}`)", f"use a multiple of {p_inner}, "
                      f"e.g. {p_inner * max(1, round(p_outer / p_inner))}", f"{path}.{outer}.period")
    if isinstance(layer, S.SelfModSpec) and layer.projections.momentum is not None and layer.memory.momentum is None:
        error("E0601", "the projection memories learn with the memory level's gates (Eq. 88), and the memory "
              "level has no `momentum`", "set `momentum` on the memory level too, or remove it from `projections`",
              f"{path}.projections.momentum", f"{path}.projections")
    if isinstance(layer, S.CMSSpec) and layer.variant == "nested":
        for level in layer.levels[1:]:
            if level.state != layer.levels[0].state:
                error("E0503", f"nested level `{level.name}` must have the same state as `{layer.levels[0].name}`: "
                      "it holds the initial state the faster level restarts from", None,
                      f"{path}.{level.name}.state", f"{path}.{level.name}")
            lp = f"{path}.{level.name}"
            gated = [name for name in ("lr", "retention", "momentum") if getattr(level, name) is not None
                     and not (name == "lr" and isinstance(level.lr, S.ConstantGate))]
            if gated:
                error("E0601", f"the slower nested level `{level.name}` moves its state toward the faster "
                      "level with a constant `lr` only", "use `lr = 0.5` (a constant) and no retention or "
                      "momentum on slower nested levels", *(f"{lp}.{name}" for name in gated), lp)
            if level.update != "in_context":
                error("E0601", f"the slower nested level `{level.name}` runs no MLP of its own: its state is only "
                      "the start the faster level restarts from when it moves in context, so `update = outer` "
                      "would leave it unused", "remove `update = outer` from slower nested levels",
                      f"{lp}.update", lp)
    if isinstance(layer, S.ParallelSpec) and layer.combine == "gate" and len(layer.branches) != 2:
        error("E0601", f"`combine = gate` gates one branch by another, so it needs two branches, "
              f"not {len(layer.branches)}", "use `combine = sum`", f"{path}.combine")
    if isinstance(layer, S.ContextSpec) and isinstance(layer.memory.level.period, int) \
            and layer.segment % layer.memory.level.period:
        error("E0502", f"the memory's period {layer.memory.level.period} does not divide the segment "
              f"({layer.segment} tokens)", "make the segment a multiple of the memory's period",
              f"{path}.segment", f"{path}.memory.{layer.memory.level.name}.period")
    if isinstance(layer, S.ContextSpec) and layer.attention.window:
        error("E0601", "memory-as-context attends within its segment: leave `window` unset",
              "set the attention span with `segment`", f"{path}.attention.window")
    if isinstance(layer, S.ContextSpec) and layer.segment >= seq_len:
        # one segment per sequence: the retrieval r_s is read at the segment's start state (§3.6)
        warning("W0704", f"segment {layer.segment} is {'a whole' if layer.segment == seq_len else 'longer than a'} "
                f"training sequence ({seq_len} tokens): each sequence is one segment, so the retrieval attention "
                "reads (r_s) always comes from the state the sequence starts with, and training never shows the "
                "model a retrieval of earlier segments",
                f"use a segment below train.seq_len ({seq_len}), e.g. {max(1, seq_len // 4)}, or raise "
                "`train.seq_len`", f"{path}.segment")
    if not any(d.severity == "error" for d in out):  # next to a rejected combination they are noise
        for name, level in read_levels_of(layer, seq_len):
            if context == "cms" and not level.learns_in_context(seq_len):
                continue  # stepped by the outer optimizer: W0705 covers every in-context setting
            lp = f"{path}.{name}"
            if level.objective == "dot" and level.values == "generated":
                warning("W0707", f"level `{name}` can grow without bound: with `objective = dot` and `values = "
                        "generated` each write adds η M(v) kᵀ, a step along what the memory already outputs",
                        "use `objective = l2` (the delta rule), or `values = given`", f"{lp}.values",
                        f"{lp}.objective", lp)
            if level.orthogonalize is not None and level.orthogonalize.steps > NOISY_NEWTON_SCHULZ_STEPS:
                steps = level.orthogonalize.steps
                warning("W0708", f"newton_schulz({steps}) on level `{name}` turns rounding noise into "
                        f"its write: a chunk's increment has rank at most its period ({level.period}), and each "
                        f"step multiplies the rest of its singular values, rounding noise, by up to "
                        f"{NEWTON_SCHULZ_SLOPE:g}",
                        f"use at most {NOISY_NEWTON_SCHULZ_STEPS} steps (Muon uses 5)", f"{lp}.orthogonalize")
            growth = _dgd_growth(layer, level, dim)
            if growth is not None:
                eta, factor = growth
                warning("W0709", f"dgd on level `{name}` grows its state along repeated inputs: the decay "
                        f"(αI − η x xᵀ) scales a state's component along its RMS-normalised input (‖x‖² = dim "
                        f"= {dim}) by α − η‖x‖², down to 1 − {eta:g}·{dim} = {factor:.3g}, past −1"
                        .replace("= -", "= −"),
                        f"keep η·dim under 1 + α, so under 2 (`lr` at most {_round_down(2 / dim):g} at this "
                        "width) and lower with a retention α < 1, or use `rule = gd`", f"{lp}.lr", f"{lp}.rule", lp)
            overshoot = _delta_overshoot(layer, level)
            if overshoot is not None:
                eta, beta, c, step = overshoot
                base = f"{c}·η" if c > 1 else "η"
                value = f"{c}·{eta:g}" if c > 1 else f"{eta:g}"
                step_text = (f"{base}/(1 − β) = {value}/(1 − {beta:g}) = {step:.3g}" if beta
                             else f"{base} = {value}" + (f" = {step:.3g}" if c > 1 else ""))
                rule = " (dgd's decay adds a second η k kᵀ)" if c > 1 else ""
                momentum = "" if not beta else (" at this momentum" if isinstance(level.momentum, S.ConstantGate)
                                                else " at the momentum's starting value")
                warning("W0718", f"level `{name}` grows its state along its keys: a write scales the state's "
                        f"component along its l2-normalised key by α − {base}{rule}, and {step_text} passes 2, "
                        "past which that component grows each time its key comes back",
                        f"keep {base}{'/(1 − β)' if beta else ''} at most 2: `lr` at most "
                        f"{_round_down(2 * (1 - beta) / c * (1 + 1e-9)):g}{momentum}",
                        f"{lp}.lr", f"{lp}.momentum", lp)
            mlp_start = _mlp_memory_step(layer, level)
            if mlp_start is not None:
                eta, beta, step = mlp_start
                step_text = f"η/(1 − β) = {eta:g}/(1 − {beta:g}) = {step:.3g}" if beta else f"η = {eta:g}"
                warning("W0719", f"the MLP memory of level `{name}` starts with a step {step_text}: in measured "
                        f"runs of specs/titans_lmm.nl an MLP memory's first forward was NaN in every run from "
                        f"{MLP_MEMORY_STEP_LIMIT:g}, and in some far below it (at 0.025 over 1,024 tokens at "
                        "period 64)",
                        f"lower the level's `lr`{' or its `momentum`' if beta else ''} well below "
                        f"η{'/(1 − β)' if beta else ''} = {MLP_MEMORY_STEP_LIMIT:g} (specs/titans_lmm.nl's "
                        "memory starts at 0.013; a learned lr starts at half its `max`, a learned momentum "
                        "at 0.9 of its bound)",
                        f"{lp}.lr", f"{lp}.momentum", lp)
            start = _selfmod_step(layer, name, level)
            if start is not None:
                eta, beta, step = start
                bound = ""
                if level.lr.kind == "generated":
                    bound = (f"; `lr = generated(max = M)` starts η at M/{1 / GENERATED_GATE_START['lr']:g}, so "
                             f"max = {_round_down(SELFMOD_STEP_SAFE * (1 - beta) / GENERATED_GATE_START['lr']):g} "
                             "or less at this momentum")
                warning("W0713", f"selfmod level `{name}` starts with a step η/(1 − β) = {eta:g}/(1 − {beta:g}) "
                        f"= {step:.3g}: in measured runs of specs/hope.nl the first forward's loss was NaN in most "
                        f"runs at {SELFMOD_STEP_LIMIT:g}–0.5 and in every run from 0.6, never at "
                        f"{SELFMOD_STEP_SAFE:g} or below",
                        f"lower the level's `lr` or its `momentum` so that η/(1 − β) stays at or below "
                        f"{SELFMOD_STEP_SAFE:g}{bound}", f"{lp}.lr", f"{lp}.momentum", lp)
            for setting, why in _unused_level_settings(level):
                if f"{lp}.{setting}" in spans:  # written in the spec (a default or a copy is not the user's)
                    warning("W0706", f"`{setting}` has no effect on level `{name}`: {why}",
                            f"remove `{setting}`", f"{lp}.{setting}")
        if isinstance(layer, S.CMSSpec) and layer.variant == "nested":
            fastest = layer.levels[0]
            for level in layer.levels[1:]:
                # a slower level keeps only a state that moves toward the faster one's (runtime/blocks.py
                # `nested_cms`): the fastest level's objective, rule and gates do all the learning
                for setting in _FASTEST_LEVEL_SETTINGS:
                    written = f"{path}.{level.name}.{setting}" in spans
                    if written and getattr(level, setting) != getattr(fastest, setting):
                        warning("W0706", f"`{setting}` has no effect on nested level `{level.name}`: only the "
                                f"fastest level `{fastest.name}` runs and learns; a slower one moves toward it with "
                                "its `lr` each period", f"remove `{setting}`, or set it on `{fastest.name}`",
                                f"{path}.{level.name}.{setting}")
            inert = layer.inert_levels(seq_len)
            for level in layer.levels[1:]:
                if level.name not in inert:
                    continue
                if not fastest.learns_in_context(seq_len):
                    why = (f"the fastest level `{fastest.name}` does not learn in context (an outer level, or a "
                           f"period past train.seq_len = {seq_len}), so the chain runs as that level's static MLP")
                    help = f"remove the level, or let `{fastest.name}` learn in context"
                else:
                    why = (f"its period {level.period} is longer than train.seq_len = {seq_len}, so it never "
                           "moves within a sequence, and the faster levels restart only from a level that moves")
                    help = ("remove the level, or give it a period that fits a training sequence; a level slower "
                            "than a sequence belongs in a `sequential` or `independent` cms, where the continuum "
                            "clock steps it")
                warning("W0706", f"nested level `{level.name}` has no effect: {why}", help,
                        f"{path}.{level.name}.period", f"{path}.{level.name}")
        cut_off = _cut_off_by_detached_writes(layer, path, spans, seq_len)
        if cut_off is not None:
            message, help, setting = cut_off
            warning("W0706", message, help, setting)
        if isinstance(layer, S.SelfModSpec) and layer.memory.objective == "reconstruction" and (
                not layer.adaptive or layer.projections.objective == "reconstruction"):
            why = ("no projection is adaptive" if not layer.adaptive else
                   "the projection memories' objective is `reconstruction` too")
            maker = "M_v" if "v" in layer.adaptive else "W_v"
            made_by = f"{maker} and the convolution of v get" if layer.conv else f"{maker} gets"
            warning("W0706", f"nothing reads this selfmod's values: the memory level's objective `reconstruction` "
                    f"writes its keys as targets, and {why}, so {made_by} no gradient",
                    "use `objective = l2` on the memory level (Titans and HOPE write values)",
                    f"{path}.memory.objective", f"{path}.memory")
        if isinstance(layer, S.MemorySpec) and "v" not in layer.projected and f"{path}.value_norm" in spans:
            warning("W0706", "`value_norm` has no effect: the `reconstruction` objective ½‖M(k) − k‖² reads no "
                    "values, so the layer makes none", "remove `value_norm`", f"{path}.value_norm")
        for setting, expansion, width in hidden_width_settings(layer, path, dim) if dim else ():
            # width 0: more heads than the model's width, which the model's shape check reports
            if width >= 1 and expansion * width < 1:  # shapes.hidden_width keeps at least one unit
                warning("W0715", f"expansion {expansion:g} × input width {width} = {expansion * width:.3g}: the "
                        "hidden width rounds up to 1, a memory or MLP of one hidden unit",
                        f"use an expansion of at least 1/{width} = {1 / width:.3g} for the width meant"
                        + ("" if isinstance(layer, S.MLPSpec) else ", or a `linear` state"), setting)
        if isinstance(layer, S.AttentionSpec) and not layer.rope and f"{path}.rope_base" in spans:
            warning("W0706", "`rope_base` has no effect: `rope = false` turns rotary embeddings off",
                    "remove `rope_base`, or set `rope = true`", f"{path}.rope_base")
    return out


def _optimizer_level_options(level: S.OptimizerLevelSpec, lp: str, spans: dict[str, Span],
                             header: Span) -> Iterator[Diagnostic]:
    """The rules of the runtime's `OptimizerLevelConfig` that the schema cannot state on one field,
    each at the line of the option that breaks it (tests/runtime/test_optim.py keeps the two in step)."""
    def at(*attributes: str) -> Span:
        return _span(spans, *(f"{lp}.{a}" for a in attributes), lp) or header

    if level.name in S.RESERVED_OPTIMIZER_LEVEL_NAMES:
        why = ("the optimizer's step counter" if level.name not in FLOW_SOURCES
               else "a gradient stream, which `flow` and `update` would then read in its place")
        yield Diagnostic("E0208", f"`{level.name}` cannot name an optimizer level: it is {why}", at(),
                         f"choose another name, e.g. `{level.name}_memory`")
    if level.state == "mlp":
        for option, setting, what in (
                ("nesterov", level.nesterov, "reads α m_t + η X_t off a momentum buffer m"),
                ("bias_correction", level.bias_correction, "divides a momentum buffer by 1 − α^w"),
                ("init", level.init == "first_flow", "stores the first flow in a momentum buffer")):
            shown = f"init = {level.init}" if option == "init" else option
            if setting:
                yield Diagnostic("E0601", f"`{shown}` {what}, and level `{level.name}` has `state = mlp`, which "
                                 "keeps none (its state is the weights of φ)", at(option, "state"),
                                 f"remove `{shown}`, or use `state = linear`")
    if level.state == "linear" and f"{lp}.hidden" in spans:
        yield Diagnostic("W0706", f"`hidden` has no effect on level `{level.name}`: it is the width of an `mlp` "
                         "state's φ, and this level's state is `linear` (a momentum buffer)", at("hidden"),
                         "remove `hidden`, or write `state = mlp`", "warning")
    if level.lr == 0 and level.state == "linear" and level.init == "zeros" and f"{lp}.lr" in spans:
        yield Diagnostic("W0706", f"`lr = 0` makes level `{level.name}` write nothing: its state starts at zero "
                         "and stays there, so its output is 0 at every step", at("lr"),
                         "give the level an `lr` above 0 (momentum writes with `lr = 1`, an average with "
                         "`lr = 1 - retention`)", "warning")
    if level.retention == 0 and level.state == "linear":
        # 1 − 0^w = 1 from the first write on; and with nothing kept, α m + η X is the write η X itself
        inert = [("bias_correction", level.bias_correction, "divides by 1 − α^w, which is 1 with `retention = 0`"),
                 ("nesterov", level.nesterov and level.objective == "dot" and level.init == "zeros",
                  "outputs α m + η X, which is the write η X itself with `retention = 0`")]
        for option, setting, why in inert:
            if setting and f"{lp}.{option}" in spans:
                yield Diagnostic("W0706", f"`{option}` has no effect on level `{level.name}`: it {why}", at(option),
                                 f"remove `{option}`, or give the level a retention above 0", "warning")
    if level.bias_correction and level.init == "first_flow" and level.state == "linear" \
            and 0 < level.retention < 1:
        # 1 − α^w undoes the pull towards a zero start; a buffer that starts at X_1 has none to undo
        yield Diagnostic("E0601", f"`bias_correction` divides level `{level.name}` by 1 − α^w, which undoes a "
                         "start at zero, and `init = first_flow` starts it at the first flow: its first output "
                         f"would be that flow over 1 − α, {1 / (1 - level.retention):.3g}× too large",
                         at("bias_correction", "init"),
                         "remove `bias_correction` (a buffer that starts at its first flow is not biased "
                         "towards 0), or `init = first_flow`")
    if level.bias_correction and not level.retention < 1:
        yield Diagnostic("E0601", f"`bias_correction` divides by 1 − α^w, which is 0 with `retention = "
                         f"{level.retention:g}`", at("retention", "bias_correction"),
                         "use a retention below 1 (Adam's β, e.g. 0.9), or remove `bias_correction`")


def check_optimizer_flows(opt: S.OptimizerSpec, update: Any, header: Span, spans: dict[str, Span],
                          path: str) -> list[Diagnostic]:
    """An optimizer's levels: their options fit together, flows come from somewhere, no cycles,
    every level is read. Everything the runtime would reject is reported here, so that an optimizer
    that passes the checker builds."""
    out: list[Diagnostic] = []
    names = {level.name for level in opt.levels}
    source_of: dict[str, str] = {}  # each level learns from one flow: a level name, or a gradient stream
    for level in opt.levels:
        lp = f"{path}.{level.name}"
        out.extend(_optimizer_level_options(level, lp, spans, header))
        if level.flow in FLOW_SOURCES:
            continue
        if level.flow not in names:
            from .diagnostics import did_you_mean
            out.append(Diagnostic("E0505", f"level `{level.name}` learns from `{level.flow}`, which is "
                                  "neither a gradient stream nor a level", spans.get(f"{lp}.flow", header),
                                  did_you_mean(level.flow, [*names, *FLOW_SOURCES])
                                  or f"use one of: {', '.join([*FLOW_SOURCES, *sorted(names)])}"))
            continue
        source_of[level.name] = level.flow
        source = next(lv for lv in opt.levels if lv.name == level.flow)
        if level.period < source.period:
            out.append(Diagnostic("E0501", f"level `{level.name}` (period {level.period}) reads `{source.name}` "
                                  f"(period {source.period}) but updates more often than its source",
                                  spans.get(f"{lp}.period", spans.get(lp, header)),
                                  f"give `{level.name}` a period that is a multiple of {source.period}"))
        elif level.period % source.period:
            out.append(Diagnostic("E0502", f"period {level.period} of `{level.name}` is not a multiple of "
                                  f"period {source.period} of its source `{source.name}`",
                                  spans.get(f"{lp}.period", spans.get(lp, header)),
                                  f"use a multiple of {source.period}"))
    for cycle in _flow_cycles(source_of, [level.name for level in opt.levels]):
        first = min(cycle)
        cycle = cycle[cycle.index(first):] + cycle[:cycle.index(first)]  # start at a stable level
        out.append(Diagnostic("E0504", f"levels {' → '.join(f'`{c}`' for c in [*cycle, cycle[0]])} "
                              "learn from each other in a cycle", spans.get(f"{path}.{first}.flow", header),
                              "one of them must learn from the gradients"))
        break
    if update is None:  # it failed to convert: the levels' own checks only
        return out
    read: set[str] = set()
    for name, span in level_refs(update):
        if name not in names:
            from .diagnostics import did_you_mean_among
            levels = sorted(names)
            listing = f"its levels: {', '.join(f'`{n}`' for n in levels)}"
            hint = did_you_mean_among(name, levels, listing)
            if name in FLOW_SOURCES or name == "step":  # what a user reaches for: say how to get it
                hint = (f"the update reads levels only: a level that passes the {name.replace('_', ' ')} through "
                        f"reads it (`level g {{ flow = {name}  retention = 0 }}`); {listing}"
                        if name in FLOW_SOURCES else
                        f"the step counter is not readable: Adam's bias correction is the level option "
                        f"`bias_correction = true`; {listing}")
            out.append(Diagnostic("E0201", f"the update reads `{name}`, which is not a level of this optimizer",
                                  span or header, hint))
        read.add(name)
    read |= {level.flow for level in opt.levels}
    # an update set by an override is why a level written in the spec goes unread: say so there
    update_span = spans.get(f"{path}.update")
    overridden = update_span is not None and update_span.path.startswith("<")
    misread = any(name not in names for name, _ in level_refs(update))
    for level in opt.levels:
        if level.name not in read and not misread:  # (an update that misnames one reads it once mended)
            out.append(Diagnostic("E0506", f"level `{level.name}` is never read",
                                  spans.get(f"{path}.{level.name}", header),
                                  "use it in `update`, or remove it", notes=(
                                      f"`update` comes from {update_span.path}, which does not read it",)
                                  if overridden else ()))
    if not misread and not any(d.severity == "error" for d in out):  # beside a broken level: noise
        roots = list(roots_of_negative_values(opt, update, header))
        out.extend(roots or divisions_by_zero(opt, update, header))  # a root that is NaN comes first
    return out


def _flow_cycles(source_of: dict[str, str], order: list[str]) -> Iterator[list[str]]:
    """Cycles of levels that learn from each other (each level has one source, so follow it)."""
    for start in order:  # in file order, so that messages do not vary between runs
        path: list[str] = []
        node = start
        while node in source_of and node not in path:
            path.append(node)
            node = source_of[node]
        if node in path:
            yield list(reversed(path[path.index(node):]))

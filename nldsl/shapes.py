"""Parameter shapes of every layer: the contract between the level graph, the generated code
and the reference interpreter.

`layer_parameters(layer, dim)` lists each learned tensor of a layer by its name inside the layer
(the generated `nn.Module` registers exactly these names; the interpreter reads them back from
its `state_dict`). Shapes follow torch's `nn.Linear` convention: `(out_features, in_features)`.
Initial states of in-context levels are per head: `(heads, out, in)`.
"""

from __future__ import annotations

import math
from typing import Any

from . import spec as S

Shapes = dict[str, tuple[int, ...]]


def hidden_width(expansion: float, width: int) -> int:
    return max(1, round(expansion * width))


def state_layers(state: Any, d_in: int, d_out: int) -> list[tuple[int, int]]:
    """(out, in) of each weight of a memory state, in the order they are applied."""
    if isinstance(state, S.LinearState):
        return [(d_out, d_in)]
    if isinstance(state, S.ResidualMLPState):
        hidden = hidden_width(state.expansion, d_in)
        return [(hidden, d_in), (d_out, hidden)]
    assert isinstance(state, S.MLPState)
    hidden = hidden_width(state.expansion, d_in)
    if state.depth == 1:
        return [(d_out, d_in)]
    return [(hidden, d_in)] + [(hidden, hidden)] * (state.depth - 2) + [(d_out, hidden)]


def level_state(prefix: str, level: S.LevelSpec, d_in: int, d_out: int, heads: int) -> Shapes:
    """The initial state θ_0 of a level (meta-learned unless `init = zeros`)."""
    if level.init == "zeros":
        return {}
    return {f"{prefix}w{i + 1}": (heads, out, inp)
            for i, (out, inp) in enumerate(state_layers(level.state, d_in, d_out))}


def gate_parameters(name: str, gate: Any, dim: int, heads: int) -> Shapes:
    """Parameters of one gate: per-token gates read the layer input, per-head gates are a vector."""
    if isinstance(gate, S.LearnedGate):
        return {f"{name}_proj": (heads, dim), f"{name}_bias": (heads,)}
    if isinstance(gate, S.PerHeadGate):
        return {f"{name}_logit": (heads,)}
    return {}


def level_gates(level: S.LevelSpec, dim: int, heads: int) -> Shapes:
    shapes: Shapes = {}
    for gate_name in ("lr", "retention", "momentum"):
        gate = getattr(level, gate_name)
        if gate is not None:
            shapes.update(gate_parameters(gate_name, gate, dim, heads))
    return shapes


def layer_parameters(layer: Any, dim: int) -> Shapes:
    """Every learned tensor of one sublayer, by name (without the pre-norm, see `block_parameters`)."""
    if isinstance(layer, S.AttentionSpec):
        head_dim = dim // layer.heads
        shapes: Shapes = {"wq": (dim, dim), "wk": (dim, dim), "wv": (dim, dim), "wo": (dim, dim)}
        if layer.persistent:
            shapes["persistent_k"] = (layer.heads, layer.persistent, head_dim)
            shapes["persistent_v"] = (layer.heads, layer.persistent, head_dim)
        if layer.qk_norm:
            shapes["q_norm"] = (head_dim,)
            shapes["k_norm"] = (head_dim,)
        return shapes
    if isinstance(layer, S.MLPSpec):
        hidden = hidden_width(layer.expansion, dim)
        if layer.activation == "swiglu":
            return {"w_gate": (hidden, dim), "w_up": (hidden, dim), "w_down": (dim, hidden)}
        return {"w_in": (hidden, dim), "b_in": (hidden,), "w_out": (dim, hidden), "b_out": (dim,)}
    if isinstance(layer, S.MemorySpec):
        head_dim = dim // layer.heads
        shapes = {f"w{x}": (dim, dim) for x in layer.projected}
        if layer.conv:
            shapes.update({f"conv_{x}": (dim, layer.conv) for x in layer.projected})
        shapes.update(level_gates(layer.level, dim, layer.heads))
        shapes.update(level_state("memory_", layer.level, head_dim, head_dim, layer.heads))
        shapes.update(_output_parameters(layer, dim))
        return shapes
    if isinstance(layer, S.SelfModSpec):
        head_dim = dim // layer.heads
        shapes = {}
        for name in ("q", "k", "v"):
            if name in layer.adaptive:
                shapes.update(level_state(f"{name}_memory_", layer.projections, head_dim, head_dim, layer.heads))
            else:
                shapes[f"w{name}"] = (dim, dim)
        for name, gate_name in (("eta", "lr"), ("alpha", "retention")):
            gate = getattr(layer.memory, gate_name)
            if name in layer.adaptive:
                shapes.update(level_state(f"{name}_memory_", layer.projections, head_dim, head_dim, layer.heads))
                shapes[f"{name}_readout"] = (layer.heads, head_dim)
                shapes[f"{name}_bias"] = (layer.heads,)
            elif gate is not None:
                shapes.update(gate_parameters(gate_name, gate, dim, layer.heads))
        if layer.memory.momentum is not None:
            shapes.update(gate_parameters("momentum", layer.memory.momentum, dim, layer.heads))
        if layer.conv:
            shapes.update({f"conv_{x}": (dim, layer.conv) for x in "qkv"})
        shapes.update(level_state("memory_", layer.memory, head_dim, head_dim, layer.heads))
        shapes.update(_output_parameters(layer, dim))
        return shapes
    if isinstance(layer, S.CMSSpec):
        shapes = {}
        for level in layer.levels:
            shapes.update(level_state(f"{level.name}_", level, dim, dim, 1))
            if level.update == "in_context":
                shapes.update({f"{level.name}_{k}": v for k, v in level_gates(level, dim, 1).items()})
        if layer.variant == "independent":
            shapes["mix"] = (len(layer.levels),)
        return shapes
    if isinstance(layer, S.ParallelSpec):
        shapes = {}
        for branch in layer.branches:
            shapes.update({f"{branch.name}.{k}": v for k, v in layer_parameters(branch, dim).items()})
        if layer.combine == "gate":
            shapes["gate_norm_0"] = (dim,)
            shapes["gate_norm_1"] = (dim,)
        return shapes
    if isinstance(layer, S.ContextSpec):
        shapes = {f"memory.{k}": v for k, v in layer_parameters(layer.memory, dim).items()}
        shapes.update({f"attention.{k}": v for k, v in layer_parameters(layer.attention, dim).items()})
        return shapes
    raise AssertionError(f"unknown layer {type(layer).__name__}")


def _output_parameters(layer: Any, dim: int) -> Shapes:
    shapes: Shapes = {}
    if layer.output_norm:
        shapes["out_norm"] = (dim // layer.heads,)
    if layer.output_gate:
        shapes["w_gate"] = (dim, dim)
    shapes["wo"] = (dim, dim)
    return shapes


def block_parameters(block: S.BlockSpec, dim: int) -> Shapes:
    shapes: Shapes = {}
    for layer in block.sublayers:
        if block.norm == "rms":
            shapes[f"{layer.name}.norm"] = (dim,)
        shapes.update({f"{layer.name}.{k}": v for k, v in layer_parameters(layer, dim).items()})
    return shapes


def model_parameters(model: S.ModelSpec) -> Shapes:
    """All parameters of a model by their `state_dict` name."""
    shapes: Shapes = {"embed": (model.vocab, model.dim)}
    per_block = block_parameters(model.block, model.dim)
    for index in range(model.layers):
        shapes.update({f"blocks.{index}.{k}": v for k, v in per_block.items()})
    shapes["final_norm"] = (model.dim,)
    if not model.tie_embeddings:
        shapes["head"] = (model.vocab, model.dim)
    return shapes


def count(shapes: Shapes) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def parameter_count(model: S.ModelSpec) -> int:
    """How many parameters the model builds: what `nldsl check` and `nldsl graph` show, W0716 and
    the loader's memory check read."""
    return count(model_parameters(model))


def human_count(count: int) -> str:
    """A parameter count for people, to three significant digits: 950, 34.5k, 1.09M, 2.5B."""
    if count < 1000:
        return str(count)
    for scale, unit in ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T")):
        text = f"{count / scale:.3g}"
        if float(text) < 1000:
            return f"{text}{unit}"
    return f"{count / 1e12:,.0f}T"

"""Lowering: the decisions that turn a checked spec into runtime configurations.

Kept apart from text generation (codegen.py) so that each decision has one home: how a
`LevelSpec` becomes a `LevelConfig`, which CMS levels learn in context, where gates start.
"""

from __future__ import annotations

import math
from typing import Any

from nldsl import shapes
from nldsl import spec as S
from nldsl.semantics import gate_start  # where gates start: one home, beside the checks that read it


def level_config(level: S.LevelSpec, d_in: int, d_out: int) -> dict[str, Any]:
    """Keyword arguments of `nldsl.runtime.memory.LevelConfig` for a level."""
    state = level.state
    layers = shapes.state_layers(state, d_in, d_out)
    config: dict[str, Any] = {
        "state": state.kind,
        "d_in": d_in,
        "d_out": d_out,
        "hidden": layers[0][0] if len(layers) > 1 else 0,
        "depth": state.depth if isinstance(state, S.MLPState) else (2 if len(layers) > 1 else 1),
        "activation": getattr(state, "activation", "silu"),
        "objective": "external" if level.objective == "surprise" else level.objective,
        "values": level.values,
        "dgd": level.rule == "dgd",
        "dgd_layers": level.dgd_layers,
        "momentum": level.momentum is not None,
        "chunk_size": level.period if isinstance(level.period, int) else 1,
        "readout": level.readout,
        "orthogonalize_steps": level.orthogonalize.steps if level.orthogonalize else 0,
        "grad_through_writes": level.grad_through_writes,
    }
    if level.retention_order == "before_write":
        config["decay_before_write"] = True
    if level.clip is not None:  # written only when set, like decay_before_write: most levels have neither
        config["clip"] = level.clip
    return config


def period_value(level: S.LevelSpec) -> int:
    """The period as written: tokens, or outer steps for `steps(n)`."""
    return level.period if isinstance(level.period, int) else level.period.count


def learns_in_context(level: S.LevelSpec, train: S.TrainSpec) -> bool:
    """A CMS level learns in the forward pass unless it is an outer level or its period is longer
    than a training sequence (then the continuum clock steps it; docs/semantics.md §3.7, §4)."""
    return level.learns_in_context(train.seq_len)


def clock_steps(level: S.LevelSpec, train: S.TrainSpec) -> int:
    """Outer steps between two updates of a level driven by the continuum clock."""
    return train.clock_steps(level)


def logit(p: float) -> float:
    # the checker refuses a start past the edge (E0302), where the gate could not learn
    p = min(max(p, S.SIGMOID_START_EDGE), 1 - S.SIGMOID_START_EDGE)
    return math.log(p / (1 - p))


def softplus_inverse(y: float) -> float:
    y = max(y, 1e-8)
    return y + math.log(-math.expm1(-y)) if y < 20 else y


def bias_for(name: str, gate: Any) -> float:
    """The bias (or per-head logit) that makes a gate start at `gate_start`."""
    start = gate_start(name, gate)
    if isinstance(gate, S.PerHeadGate):
        return softplus_inverse(start) if name == "lr" else logit(start)
    bound = gate.max
    return logit(start / bound)

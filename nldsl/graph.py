"""The level graph: a model as nested optimization problems, as a networkx graph.

Nodes are modules (embedding, layers, head), in-context levels, the outer level (the training
optimizer) and the optimizer's own levels. The `optimizer` sections a file defines but `train` does
not use are drawn too, each as an outer level of its own (`optimizers.NAME`, its levels
`optimizers.NAME.LEVEL`, apart from the training optimizer's `optimizer.LEVEL`); a file without a
model whose `train` uses none of them (an optimizer library) is drawn as those alone. The `level`
definitions of a file without a model (a library of levels) are drawn as they are written, each a
node `levels.NAME` with no edges, its state's widths in d (the width where it is used). Each node
carries its update period, state shape, parameter count and, for levels, objective, rule and gates.
Edges are typed:

- `data`: the forward dataflow between modules (a DAG);
- `flow`: a context flow into a level's update, labelled with what it carries ((k, v), surprise, …);
- `read`: a level's output read back by the layer that owns it;
- `meta`: a slower level learns a faster level's initial state (nesting).

A block that repeats is drawn once with its repeat count. `to_json` is deterministic (golden
tests compare it byte for byte).
"""

from __future__ import annotations

import json
import math
from typing import Any

import networkx as nx

from . import shapes
from . import spec as S

OUTER = "outer"


class LevelGraph:
    """A `networkx.MultiDiGraph` with helpers; `graph.nx` is the raw graph."""

    def __init__(self, spec: S.Spec, levels: tuple[S.LevelSpec, ...] = ()):
        self.spec = spec
        self.definitions = levels if spec.model is None else ()  # a model's file draws the levels it uses
        self.nx = nx.MultiDiGraph(name=spec.path)
        self._build()

    # construction ----------------------------------------------------------------------------

    def add_node(self, node_id: str, **attrs: Any) -> None:
        self.nx.add_node(node_id, **attrs)

    def add_edge(self, source: str, target: str, kind: str, label: str = "") -> None:
        self.nx.add_edge(source, target, key=f"{kind}:{label}", kind=kind, label=label)

    def _build(self) -> None:
        spec = self.spec
        train = spec.train
        tokens_per_step = train.batch * train.seq_len
        # a file without a model trains nothing: its steps have no size, whatever TrainSpec's defaults say
        self.nx.graph["step_has_tokens"] = spec.model is not None
        trained = train.optimizer if isinstance(train.optimizer, S.OptimizerSpec) else None
        unused = [opt for opt in spec.optimizers if trained is None or opt.name != trained.name]
        # A file without a model trains nothing, so a builtin `train.optimizer` (TrainSpec's default,
        # in an optimizer library) says nothing about it: its own optimizers replace it.
        if spec.model is not None or trained is not None or not (unused or self.definitions):
            self.add_node(OUTER, kind="outer", label=f"outer level ({_optimizer_name(train.optimizer)})",
                          period="1 step", period_tokens=tokens_per_step, frequency=1.0 / tokens_per_step, params=0)
        if spec.model is not None:
            self._model(spec.model)
        if trained is not None:
            self._optimizer(trained, OUTER, "optimizer")
        elif spec.model is not None and train.optimizer.kind in ("muon", "m3"):
            from .compiler.optimizers import builtin_config  # imports torch: only for these builtins

            self._optimizer(builtin_config(train.optimizer), OUTER, "optimizer")  # the levels it runs as
        for opt in unused:
            node_id = f"optimizers.{opt.name}"
            label = f"outer level ({opt.name})" if spec.model is None else f"optimizer {opt.name} (not used by train)"
            self.add_node(node_id, kind="outer", label=label, optimizer=opt.name, period="1 step",
                          period_tokens=tokens_per_step, frequency=1.0 / tokens_per_step, params=0)
            self._optimizer(opt, node_id, node_id)
        for level in self.definitions:
            self._definition(level)

    def _definition(self, level: S.LevelSpec) -> None:
        """A `level` definition of a file without a model, as written: no width, so no parameter
        count, and its state's shape in d, the input width where it is used (a memory's head width,
        a cms's model width)."""
        if isinstance(level.period, S.Steps):
            count = level.period.count
            period = f"{count} step{'s' if count != 1 else ''}"
            period_tokens = count * self.spec.train.batch * self.spec.train.seq_len
        else:
            period, period_tokens = f"{level.period} token{'s' if level.period != 1 else ''}", level.period
        rule = _rule_text(level)
        self.add_node(
            f"levels.{level.name}", kind="level", label=level.name, definition=True, period=period,
            period_tokens=period_tokens, frequency=1.0 / period_tokens, state=_symbolic_state_text(level.state),
            params=None, objective=level.objective, values=level.values, rule=rule, readout=level.readout,
            update=level.update, gates=_gates_text(level), init=level.init,
            grad_through_writes=level.grad_through_writes, repeat=1, inert=None,
        )

    def _model(self, model: S.ModelSpec) -> None:
        dim = model.dim
        self.add_node("embedding", kind="module", module="embedding", label="embedding",
                      shape=f"{model.vocab}×{dim}", params=model.vocab * dim, period="outer", repeat=1)
        previous = "embedding"
        for layer in model.block.sublayers:
            node = self._layer(layer, f"block.{layer.name}", dim, model.layers)
            self.add_edge(previous, node, "data", f"x ({dim})")
            previous = node
        head_params = dim + (0 if model.tie_embeddings else model.vocab * dim)
        self.add_node("head", kind="module", module="head", label="norm + head" +
                      (" (tied)" if model.tie_embeddings else ""), shape=f"{dim}→{model.vocab}",
                      params=head_params, period="outer", repeat=1)
        self.add_edge(previous, "head", "data", f"x ({dim})")
        for node_id, attrs in list(self.nx.nodes(data=True)):
            if attrs.get("kind") == "level" and attrs.get("objective") == "surprise":
                self.add_edge("head", node_id, "flow", "next-token surprise δ")

    def _layer(self, layer: Any, node_id: str, dim: int, repeat: int) -> str:
        params = shapes.count(shapes.layer_parameters(layer, dim))
        self.add_node(node_id, kind="module", module=layer.kind, label=f"{layer.kind} {layer.name}"
                      if layer.name != layer.kind else layer.kind, params=params * repeat,
                      params_per_block=params, repeat=repeat, period="outer",
                      **_layer_details(layer, dim))
        if isinstance(layer, S.MemorySpec):
            head_dim = dim // layer.heads
            self._level(f"{node_id}.{layer.level.name}", layer.level, head_dim, layer.heads, repeat,
                        inert=self._past_sequence(layer.level))
            self.add_edge(node_id, f"{node_id}.{layer.level.name}", "flow", "(k, v)")
            self.add_edge(f"{node_id}.{layer.level.name}", node_id, "read", "M(q)")
        elif isinstance(layer, S.SelfModSpec):
            head_dim = dim // layer.heads
            memory = f"{node_id}.memory"
            self._level(memory, layer.memory, head_dim, layer.heads, repeat, inert=self._past_sequence(layer.memory))
            values = "(k, v̂ = M(v))" if layer.memory.values == "generated" else "(k, v)"
            self.add_edge(node_id, memory, "flow", values)
            self.add_edge(memory, node_id, "read", "M(q)")
            # the projection memories learn with the memory level's η, α (and β where the projections
            # level asks for momentum), not with gates of their own (Eq. 88, docs/semantics.md §3.6)
            shared = layer.memory.momentum if layer.projections.momentum is not None else None
            projections = layer.projections.model_copy(update={
                "lr": layer.memory.lr, "retention": layer.memory.retention, "momentum": shared})
            for name in layer.adaptive:
                projection = f"{node_id}.M_{name}"
                self._level(projection, projections, head_dim, layer.heads, repeat, role=f"M_{name}",
                            inert=self._past_sequence(projections))
                target = f"v̂_{name}" if projections.values == "generated" else "v"
                self.add_edge(node_id, projection, "flow", f"(k, {target})")
                self.add_edge(projection, node_id, "read", {"k": "k", "v": "v", "q": "q",
                                                            "eta": "η", "alpha": "α"}[name])
        elif isinstance(layer, S.CMSSpec):
            seq_len = self.spec.train.seq_len
            previous = None
            for index, level in enumerate(layer.levels):
                level_id = f"{node_id}.{level.name}"
                # a nested chain runs only its fastest level's MLP; a slower one moves toward the level
                # just faster than it (docs/semantics.md §3.7)
                follows = layer.levels[index - 1].name if layer.variant == "nested" and index else None
                on_clock = not level.learns_in_context(seq_len) and follows is None
                inert = None  # as W0706 says of a slower nested level
                if level.name in layer.inert_levels(seq_len):
                    inert = (f"never moves: the fastest level `{layer.levels[0].name}` does not learn in context, "
                             "so the chain runs as its MLP" if not layer.levels[0].learns_in_context(seq_len) else
                             f"never moves within a sequence: its period passes train.seq_len = {seq_len}")
                self._level(level_id, level, dim, 1, repeat, on_clock=on_clock, follows=follows, inert=inert)
                if not on_clock and follows is None and level.objective == "reconstruction":
                    self.add_edge(node_id, level_id, "flow", "x")
                if follows is None:
                    self.add_edge(level_id, node_id, "read", "MLP(x)")
                if layer.variant == "nested" and previous is not None and inert is None:  # a level that moves
                    self.add_edge(level_id, previous, "meta", "initial state")
                previous = level_id
        elif isinstance(layer, S.ParallelSpec):
            # gate: norm(b_0) ⊙ sigmoid(norm(b_1)), so the two branches play different parts
            roles = ["value", "sigmoid gate"] if layer.combine == "gate" else ["sum"] * len(layer.branches)
            for branch, role in zip(layer.branches, roles, strict=True):
                child = self._layer(branch, f"{node_id}.{branch.name}", dim, repeat)
                self.add_edge(node_id, child, "data", "x")
                self.add_edge(child, node_id, "data", role)
        elif isinstance(layer, S.ContextSpec):
            memory = self._layer(layer.memory, f"{node_id}.memory", dim, repeat)
            attention = self._layer(layer.attention, f"{node_id}.attention", dim, repeat)
            self.add_edge(node_id, memory, "data", "segment queries")
            self.add_edge(memory, attention, "data", "retrieved tokens")
            self.add_edge(attention, memory, "flow", "attention output y")
            self.add_edge(attention, node_id, "data", "y ⊗ M(y)")
        return node_id

    def _past_sequence(self, level: S.LevelSpec) -> str | None:
        """Why a memory level never writes in training (W0704), or None."""
        seq_len = self.spec.train.seq_len
        if isinstance(level.period, int) and level.period > seq_len:
            return f"never updates within a sequence: its period passes train.seq_len = {seq_len}"
        return None

    def _level(self, node_id: str, level: S.LevelSpec, d_in: int, heads: int, repeat: int,
               role: str | None = None, on_clock: bool = False, follows: str | None = None,
               inert: str | None = None) -> None:
        """A level's node. `on_clock`: a cms level slower than a training sequence, a plain MLP that
        the outer optimizer steps on the continuum clock; `follows`: a slower level of a nested
        chain, which moves toward the level `follows` instead of running (docs/semantics.md §3.7);
        `inert`: why the level never changes in training, as the checker's warning says."""
        layers = shapes.state_layers(level.state, d_in, d_in)
        state_params = sum(o * i for o, i in layers) * heads
        period_tokens = level.period if isinstance(level.period, int) else None
        outer = level.update == "outer" or on_clock
        objective, rule, readout, gates = level.objective, _rule_text(level), level.readout, _gates_text(level)
        if outer:
            tokens_per_step = self.spec.train.batch * self.spec.train.seq_len
            steps = level.period.count if isinstance(level.period, S.Steps) else \
                max(1, math.ceil(level.period / tokens_per_step))
            period = f"{steps} step{'s' if steps != 1 else ''}"
            period_tokens = steps * tokens_per_step
            # its in-context settings have no effect (W0705): the outer optimizer steps its weights
            objective, readout, gates = "the model's loss", None, ""
            rule = "outer optimizer" + (f", gradients summed over {steps} steps" if steps > 1 else "")
        else:
            period = f"{level.period} token{'s' if level.period != 1 else ''}"
        if follows is not None:
            objective, readout = f"none: moves toward `{follows}`", None
            rule = f"θ ← θ + η (θ_{follows} − θ) each period"
        self.add_node(
            node_id, kind="level", label=role or node_id.rsplit(".", 1)[-1], period=period,
            period_tokens=period_tokens, frequency=1.0 / period_tokens if period_tokens else 0.0,
            state=_state_text(level.state, d_in, heads), params=state_params * repeat,
            objective=objective, values=level.values, rule=rule, readout=readout,
            update="outer" if outer else level.update, gates=gates, init=level.init,
            grad_through_writes=level.grad_through_writes, repeat=repeat, inert=inert,
        )
        # nothing reads a slower nested level that never moves, so nothing learns its θ₀ (an inert memory
        # that never writes is still read, and its θ₀ trained)
        if level.init == "learned" and not (inert and follows):
            self.add_edge(OUTER, node_id, "meta", "steps every clock tick" if outer else "meta-learns θ₀")

    def _optimizer(self, opt: Any, outer: str, prefix: str) -> None:
        """The levels of `opt` as nodes `PREFIX.LEVEL`, fed by and read by its outer level `outer`.
        `opt` is an `optimizer` section, or the runtime configuration a builtin (muon, m3) runs as."""
        for level in opt.levels:
            node_id = f"{prefix}.{level.name}"
            period_tokens = level.period * self.spec.train.batch * self.spec.train.seq_len
            steps = level.orthogonalize.steps if isinstance(getattr(level, "orthogonalize", None), S.NewtonSchulz) \
                else getattr(level, "orthogonalize_steps", 0)
            self.add_node(node_id, kind="optimizer_level", label=level.name,
                          period=f"{level.period} step{'s' if level.period != 1 else ''}",
                          period_tokens=period_tokens, frequency=1.0 / period_tokens, state=level.state,
                          objective=level.objective, rule="gd" + (f"+NS{steps}" if steps else "")
                          + ("+bias correction" if level.bias_correction else "")
                          + ("+nesterov" if getattr(level, "nesterov", False) else ""),
                          gates=f"η={level.lr:g}, α={level.retention:g}", params=0, repeat=1,
                          readout=getattr(level, "readout", "causal"), init=getattr(level, "init", "zeros"))
        for level in opt.levels:
            node_id = f"{prefix}.{level.name}"
            if level.flow in S.OPTIMIZER_FLOWS:
                self.add_edge(outer, node_id, "flow", level.flow.replace("_", " "))
            else:
                self.add_edge(f"{prefix}.{level.flow}", node_id, "flow", "output")
        for name in sorted(_update_reads(opt.update)):
            self.add_edge(f"{prefix}.{name}", outer, "read", "update")
        self.nx.nodes[outer]["update"] = update_text(opt.update)

    # queries ---------------------------------------------------------------------------------

    def levels(self) -> list[str]:
        return [n for n, a in self.nx.nodes(data=True) if a["kind"] in ("level", "optimizer_level")]

    def frequency_groups(self) -> list[tuple[str, list[str]]]:
        """Nodes grouped by update period, slowest group first, by tokens between updates: a level
        stepped every N > 1 outer steps (the continuum clock, an optimizer level's period) is slower
        than the outer level, which is slower than every in-context level (or as slow, and then first)."""
        step_tokens = self.spec.train.batch * self.spec.train.seq_len
        groups: dict[str, list[str]] = {}
        order: dict[str, tuple[float, bool]] = {}
        for node, attrs in self.nx.nodes(data=True):
            if attrs["kind"] in ("module", "outer", "optimizer_level") or attrs.get("update") == "outer":
                # modules and whatever the outer optimizer steps every step share the outer group
                every_step = attrs["kind"] in ("module", "outer") or attrs.get("period") == "1 step"
                key = "outer" if every_step else attrs["period"]
            else:
                key = attrs["period"]
            tokens = step_tokens if key == "outer" else attrs["period_tokens"]
            groups.setdefault(key, []).append(node)
            order[key] = (1.0 / tokens, key != "outer")
        return [(key, sorted(groups[key])) for key in sorted(groups, key=lambda k: (order[k], k))]

    def to_dict(self) -> dict:
        # a file without a model trains nothing: its optimizer levels' periods are steps, not tokens
        sized = () if self.nx.graph.get("step_has_tokens", True) else ("period_tokens", "frequency")
        nodes = [{"id": n, **{k: v for k, v in _plain(a).items() if k not in sized}}
                 for n, a in sorted(self.nx.nodes(data=True))]
        edges = sorted(({"source": u, "target": v, "kind": a["kind"], "label": a["label"]}
                        for u, v, a in self.nx.edges(data=True)),
                       key=lambda e: (e["source"], e["target"], e["kind"], e["label"]))
        return {"spec": self.spec.path, "sha256": self.spec.sha256, "nodes": nodes, "edges": edges,
                "frequency_groups": [{"period": k, "nodes": v} for k, v in self.frequency_groups()],
                "total_params": self.total_params()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    def total_params(self) -> int:
        model = self.spec.model
        return shapes.parameter_count(model) if model is not None else 0


def build_graph(spec: S.Spec, levels: tuple[S.LevelSpec, ...] = ()) -> LevelGraph:
    """The graph of `spec`; `levels`: the file's `level` definitions (CheckResult.levels), drawn
    when it has no model."""
    return LevelGraph(spec, levels)


def _plain(attrs: dict) -> dict:
    return {k: attrs[k] for k in sorted(attrs)}


def _optimizer_name(optimizer: Any) -> str:
    if isinstance(optimizer, S.OptimizerSpec):
        return optimizer.name or "optimizer"
    return optimizer.kind


def _state_text(state: Any, d_in: int, heads: int) -> str:
    layers = shapes.state_layers(state, d_in, d_in)
    dims = " → ".join([str(layers[0][1])] + [str(out) for out, _ in layers])
    prefix = f"{heads}×" if heads > 1 else ""
    return f"{prefix}{state.kind}[{dims}]"


def _symbolic_state_text(state: Any) -> str:
    """A state's shape in d, its input width: `mlp[d → 2d → d]` (a definition has no width of its own)."""
    if isinstance(state, S.LinearState) or (isinstance(state, S.MLPState) and state.depth == 1):
        return f"{state.kind}[d → d]"
    hidden = f"{state.expansion:g}d"
    depth = state.depth if isinstance(state, S.MLPState) else 2
    return f"{state.kind}[{' → '.join(['d', *[hidden] * (depth - 1), 'd'])}]"


def _rule_text(level: S.LevelSpec) -> str:
    """The inner rule as a node shows it: gd or dgd, with momentum, Newton–Schulz and a clip added."""
    return (level.rule + ("+momentum" if level.momentum is not None else "")
            + (f"+NS{level.orthogonalize.steps}" if level.orthogonalize else "")
            + (f"+clip {level.clip:g}" if level.clip is not None else ""))


def _gates_text(level: S.LevelSpec) -> str:
    parts = []
    for symbol, name in (("η", "lr"), ("α", "retention"), ("β", "momentum")):
        gate = getattr(level, name)
        if gate is None:
            continue
        if isinstance(gate, S.ConstantGate):
            parts.append(f"{symbol}={gate.value:g}")
        elif isinstance(gate, S.PerHeadGate):
            parts.append(f"{symbol}: per head")
        elif isinstance(gate, S.LearnedGate):
            parts.append(f"{symbol}: per token")
        else:
            parts.append(f"{symbol}: generated")
    return ", ".join(parts)


def _layer_details(layer: Any, dim: int) -> dict[str, Any]:
    if isinstance(layer, S.AttentionSpec):
        return {"heads": layer.heads, "window": layer.window, "rope": layer.rope,
                "persistent": layer.persistent}
    if isinstance(layer, (S.MemorySpec, S.SelfModSpec)):
        return {"heads": layer.heads, "conv": layer.conv, "qk_norm": layer.qk_norm}
    if isinstance(layer, S.MLPSpec):
        return {"activation": layer.activation, "hidden": shapes.hidden_width(layer.expansion, dim)}
    if isinstance(layer, S.CMSSpec):
        return {"variant": layer.variant}
    if isinstance(layer, S.ParallelSpec):
        return {"combine": layer.combine}
    if isinstance(layer, S.ContextSpec):
        return {"segment": layer.segment}
    return {}


_BINARY = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2)}  # symbol, precedence
_NEGATION, _POWER = 3, 4  # precedences: `-a ** 2` is −(a²), `(-a) ** 2` keeps its brackets


def update_text(tree: Any, outer: int = 0) -> str:
    """An optimizer's update expression as the spec would write it (`m / (sqrt(v) + 1e-08)`), with
    the brackets its precedence needs; the graph shows it on the optimizer's outer node."""
    kind = tree[0] if isinstance(tree, tuple) and tree else None
    if kind == "level":
        return str(tree[1])
    if isinstance(tree, S.NamedConstant):
        return tree.name
    if kind == "const":  # a named constant below zero is one node: `-(-2)`, `(-2) ** 2` keep their brackets
        # the shortest text that reads back as the same float (`:g` showed 1/3 as 0.333333)
        text = repr(float(tree[1])).removesuffix(".0")
        return f"({text})" if tree[1] < 0 and outer >= _NEGATION else text
    if kind in S.UPDATE_FUNCTIONS:
        return f"{kind}({update_text(tree[1])})"
    if kind == "neg":
        text = f"-{update_text(tree[1], _NEGATION)}"
        return f"({text})" if outer > _NEGATION else text
    if kind == "pow":  # right-associative, and its exponent is a number
        text = f"{update_text(tree[1], _POWER + 1)} ** {update_text(tree[2], _NEGATION)}"
        return f"({text})" if outer > _POWER else text
    if kind in _BINARY:
        symbol, precedence = _BINARY[kind]
        # the right operand of − and / binds tighter: `a − (b − c)` keeps its brackets
        right = precedence + (1 if kind in ("sub", "div") else 0)
        text = f"{update_text(tree[1], precedence)} {symbol} {update_text(tree[2], right)}"
        return f"({text})" if precedence < outer else text
    return str(tree)


def _update_reads(tree: Any) -> set[str]:
    if isinstance(tree, tuple) and tree and tree[0] == "level":
        return {tree[1]}
    if isinstance(tree, tuple):
        out: set[str] = set()
        for item in tree[1:]:
            out |= _update_reads(item)
        return out
    return set()

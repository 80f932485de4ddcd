"""Code generation: a checked spec → one readable, self-contained PyTorch module.

The module reads like a hand-written nanoGPT for that model: one `nn.Module` class per layer of
the block with its parameters declared by name and shape (the names of nldsl/shapes.py), a
`Block`, a `Model` with `forward`, `loss` and `reset_parameters`, and a `training_step`. Constants
of the spec are baked in as literals; the heavy lifting (chunk-parallel memory levels, CMS,
self-modifying projections) is imported from `nldsl.runtime`.

Safety: only validated values reach the text. Names are identifiers the checker accepted (and
not Python keywords), numbers are printed with `repr` of Python ints and floats, option values
come from closed sets, and free text (the spec path, its comments) only appears inside `#`
comments with non-printable characters escaped, or as `repr` string literals.
"""

from __future__ import annotations

import io
import math
import shlex
import textwrap
import tokenize
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from nldsl import __version__, shapes
from nldsl import spec as S

from . import lower

# What a generated training_step leaves to its caller, as its docstring says.
CALLERS_PART = ("The optimizer and its lr schedule, bf16 autocast and `train.compile` are the caller's",
                "(`nldsl train` applies the spec's; docs/compiler.md).")


class Writer:
    """Accumulates lines with indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, text: str = "") -> None:
        self.lines.append(("    " * self.depth + text) if text else "")

    @contextmanager
    def indent(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"

    def statement(self, head: str, arguments: list[str], tail: str = ")", width: int = 116) -> None:
        """`head` + comma-separated arguments + `tail`, continued on indented lines when too long."""
        line = head + ", ".join(arguments) + tail
        if len(line) + 4 * self.depth <= width:
            self(line)
            return
        self(head.rstrip())
        with self.indent():
            current = ""
            for argument in arguments:
                candidate = f"{current} {argument}," if current else f"{argument},"
                if current and len(candidate) + 4 * self.depth > width:
                    self(current)
                    current = f"{argument},"
                else:
                    current = candidate
            self(current)
        self(tail.strip() if tail.strip() else ")")


def comment_lines(text: str, indent: str = "# ", width: int = 116) -> list[str]:
    """A comment (already made safe) as `#` lines of at most `width` characters: spec text and
    names can be any length, and the module stays ruff-clean. A word is never split (a path or a URL
    must stay whole to be used): a line that one word alone makes longer than 120 is marked as such
    for ruff (E501)."""
    if not text.strip():
        return [indent.rstrip()]
    lines = [indent + line for line in textwrap.wrap(text, width - len(indent), break_long_words=False,
                                                      break_on_hyphens=False)]
    return [line if len(line) <= 120 else line + "  # noqa: E501" for line in lines]


def fit_width(source: str, width: int = 120) -> str:
    """Keep the module ruff-clean (E501) whatever the names of the spec: a line past `width` with a
    trailing comment gets the comment on its own line(s) above it, and a code line still past it
    (a statement of several very long names) is marked `# noqa: E501`. The comments are found by
    tokenizing, so a `#` inside a string is never taken for one; lines inside a multi-line string
    are left as they are."""
    lines = source.splitlines()
    comments: dict[int, int] = {}  # line index -> column of its trailing comment
    in_string: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0] - 1] = token.start[1]
        elif token.type == tokenize.STRING and token.end[0] > token.start[0]:
            in_string.update(range(token.start[0] - 1, token.end[0]))
    out: list[str] = []
    for index, line in enumerate(lines):
        if len(line) <= width or index in in_string or line.endswith("# noqa: E501"):
            out.append(line)  # short, inside a string, or a long word's line already marked
            continue
        indent = line[:len(line) - len(line.lstrip())]
        column = comments.get(index)
        if column is not None and line.rstrip().endswith("\\"):
            out.append(line)  # a command's ` \` continuation (the banner's): rewrapped it would break
            continue
        if column is not None:
            comment = line[column:].removeprefix("#").strip()
            out.extend(comment_lines(comment, indent + "# ", width))
            line = line[:column].rstrip()
            if not line.strip():
                continue
        out.append(line if len(line) <= width else line + "  # noqa: E501")
    return "\n".join(out) + "\n"


def safe_comment(text: str) -> str:
    """Free text for a `#` comment: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text.replace("\n", " "))


def literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float, str)):
        return repr(value)
    raise TypeError(f"unexpected literal {value!r}")


def wrap_call(func: str, arguments: list[str], indent: int = 4, width: int = 100) -> str:
    """`func(a, b, …)` on one line, or one argument group per line when that would be too long."""
    one_line = f"{func}({', '.join(arguments)})"
    if len(one_line) <= width:
        return one_line
    lines, current = [], ""
    for argument in arguments:
        candidate = f"{current} {argument}," if current else f"{argument},"
        if current and len(candidate) + indent > width:
            lines.append(current)
            current = f"{argument},"
        else:
            current = candidate
    lines.append(current)
    pad = " " * indent
    return f"{func}(\n" + "\n".join(pad + line for line in lines) + "\n" + " " * (indent - 4) + ")"


def config_literal(kwargs: dict[str, Any], indent: int = 4) -> str:
    return wrap_call("M.LevelConfig", [f"{k}={literal(v)}" for k, v in kwargs.items()], indent)


class Generator:
    """Emits the module for one spec."""

    def __init__(self, spec: S.Spec, source_text: str, overrides: Sequence[str] = ()):
        assert spec.model is not None
        self.spec = spec
        self.overrides = tuple(overrides)
        self.model = spec.model
        self.train = spec.train
        self.source_text = source_text
        self.out = Writer()
        self.constants: list[tuple[str, str, str]] = []  # (NAME, literal, comment)
        self.classes: list[list[str]] = []
        self.class_index = 0
        self.clock_levels: list[tuple[str, int]] = []  # (parameter prefix inside a block, steps)
        self.scope: list[str] = []  # names of the enclosing `parallel` layers of the layer being generated

    @property
    def uses_memory(self) -> bool:
        return any(c[1].startswith(("M.", "R.CMSLevel", "R.SelfModConfig")) for c in self.constants)

    # top level -----------------------------------------------------------------------------

    def generate(self) -> str:
        block = self.model.block
        layer_classes = [self.layer_class(layer, with_norm=block.norm == "rms") for layer in block.sublayers]
        self.block_class(block, layer_classes)
        self.model_class()
        w = Writer()
        self.header(w)
        w("SPEC_PATH = " + repr(self.spec.path))
        w("SPEC_SHA256 = " + repr(self.spec.sha256))
        w("NLDSL_VERSION = " + repr(__version__))
        w(f"VOCAB = {self.model.vocab}")
        w(f"DIM = {self.model.dim}")
        w(f"LAYERS = {self.model.layers}")
        names = tuple(layer.name for layer in self.model.block.sublayers)
        line = f"BLOCK_STATE = {names!r}  # what a block's state holds"
        if len(line) <= 116:
            w(line)
        else:  # long or many layer names: one to a line
            w("BLOCK_STATE = (  # what a block's state holds")
            with w.indent():
                for name in names:
                    w(f"{name!r},")
            w(")")
        w(f"NORM_EPS = {self.model.norm_eps!r}")
        w(f"TRAIN_SEQ_LEN = {self.train.seq_len}  # train.seq_len compiled for: it decided which CMS levels learn in "
          "context (§3.7)")
        w(f"TRAIN_CLIP = {self.train.clip!r}  # train.clip: training_step's gradient-norm clip (0 = off)")
        for name, value, comment in self.constants:
            w()
            for line in comment_lines(comment) if comment else []:
                w(line)
            w(f"{name} = {value}")
        clocks = ", ".join(f"{name!r}: {steps}" for name, steps in self.clock_levels)
        w()
        w("# Parameters stepped by the continuum clock: name prefix inside a block -> outer steps between updates.")
        w(f"CLOCK_STEPS = {{{clocks}}}")
        for lines in self.classes:
            w()
            w()
            w.lines.extend(lines)
        w()
        w()
        self.footer(w)
        return fit_width(w.text())

    def header(self, w: Writer) -> None:
        # Lines 1 and 2 hold nothing of the spec: Python reads an encoding declaration (PEP 263) in
        # either, and a spec path such as `coding=latin-1/x.nl` would change how the module is read.
        w(f"# Generated by nldsl {__version__}: the model of one spec as a readable PyTorch module.")
        w("# Do not edit it: edit the spec and run the command below again.")
        for line in comment_lines(f"spec: {safe_comment(self.spec.path)}"):
            w(line)
        # The spec's path comes last: a path too long for a line then ends the command, where the
        # ruff marker for a long line is a shell comment, instead of breaking a ` \` continuation.
        parts = [safe_comment(shlex.quote(part)) for part in
                 ["nldsl", "compile", *(f"--set={o}" for o in self.overrides), "-o"]]
        line = "#    "
        path = safe_comment(shlex.quote(self.spec.path))
        # a path that starts with `-` would read as an option: `--` ends them (the command still runs)
        for part in [*parts, "<this file>", *(["--"] if path.startswith("-") else []), path]:
            if len(line) > 5 and len(line) + 1 + len(part) + 2 > 116:  # continued as a shell reads it
                w(line + " \\")
                line = "#        "
            line += " " + part
        w(line if len(line) <= 120 else line + "  # noqa: E501")
        w(f"# spec sha256: {self.spec.sha256}")
        comments = _leading_comments(self.source_text)
        if comments:
            w("#")
            w("# The spec says:")
            for line in comments:
                for part in comment_lines(safe_comment(line), indent="#   "):
                    w(part)
        w("#")
        w("# In nldsl's comments below, `Eq. N` cites the Nested Learning paper and a bare `§N` is a section")
        w("# of nldsl's docs/semantics.md.")
        w('"""' + "The model of a nldsl spec: `Model`, `build()` and `training_step()`." + '"""')
        w()
        w("from __future__ import annotations")
        w()
        # One block, sorted as isort sorts third-party imports: where the module is used, nldsl is
        # installed like torch (only inside nldsl's own checkout is it first-party).
        w("import torch")
        w("import torch.nn.functional as F")
        w("from nldsl.runtime import blocks as R")
        w("from nldsl.runtime import layers as L")
        if self.uses_memory:
            w("from nldsl.runtime import memory as M")
        if self.clock_levels:
            w("from nldsl.runtime.clock import ContinuumClock, watch_clock")
        w("from torch import Tensor, nn")
        w()

    def footer(self, w: Writer) -> None:
        w("def build(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Model:")
        with w.indent():
            w('"""A freshly initialised model."""')
            w("return Model().to(device=device, dtype=dtype)")
        w()
        w()
        clocked = bool(self.clock_levels)
        if clocked:
            w("def continuum_clock(model: Model) -> ContinuumClock:")
            with w.indent():
                w('"""The clock of the levels in CLOCK_STEPS, kept on the model from its first call (§4)."""')
                w("if '_continuum_clock' not in model.__dict__:")
                with w.indent():
                    w("model._continuum_clock = ContinuumClock(list(model.named_parameters()), CLOCK_STEPS)")
                w("return model._continuum_clock")
            w()
            w()
        w("def training_step(model: Model, optimizer: torch.optim.Optimizer, tokens: Tensor, targets: Tensor,")
        w("                  clip: float = TRAIN_CLIP" + (", clock: ContinuumClock | None = None" if clocked else "")
          + ") -> Tensor:")
        with w.indent():
            if clocked:
                w('"""One outer step: loss, backward through every inner update, clip, the continuum clock, step.')
                w()
                w("The levels of CLOCK_STEPS take an outer step every N calls, with the gradients of those calls")
                w("summed (§4); `clock` keeps that count and those sums, by default `continuum_clock(model)`.")
                w("Returns the loss.")
                w()
                for line in CALLERS_PART:
                    w(line)
                w('"""')
            else:
                w('"""One outer step: loss, backward through every inner update, clip, step. Returns the loss.')
                w()
                for line in CALLERS_PART:
                    w(line)
                w('"""')
            w("R.check_training_step(model, optimizer)")
            w("loss = model.loss(tokens, targets)")
            w("optimizer.zero_grad(set_to_none=True)")
            w("loss.backward()")
            w("if clip > 0:")
            with w.indent():
                w("torch.nn.utils.clip_grad_norm_(model.parameters(), clip)")
            if clocked:
                w("(clock if clock is not None else continuum_clock(model)).tick()")
            w("optimizer.step()")
            w("return loss.detach()")
        w()
        w()
        exported = ["Model", "build", *(["continuum_clock"] if clocked else []), "training_step"]
        w(f"__all__ = {exported!r}")

    def constant(self, name: str, value: str, comment: str = "") -> str:
        # Spec names are case-sensitive but constants are upper-cased: levels `a` and `A` would
        # share one name and the later definition would silently win, so number the repeats.
        taken = {existing for existing, _, _ in self.constants}
        unique, repeat = name, 2
        while unique in taken:
            unique, repeat = f"{name}_{repeat}", repeat + 1
        self.constants.append((unique, value, safe_comment(comment)))
        return unique

    def new_class(self, kind: str) -> tuple[str, Writer]:
        name = f"{kind}{self.class_index}"
        self.class_index += 1
        w = Writer()
        return name, w

    # parameters ------------------------------------------------------------------------------

    def declare(self, w: Writer, layer: Any, with_norm: bool, skip_prefixes: tuple[str, ...] = ()) -> None:
        dim = self.model.dim
        if with_norm:
            w(f"self.norm = nn.Parameter(torch.empty({dim}))  # pre-norm weight")
        for name, shape in shapes.layer_parameters(layer, dim).items():
            if "." in name or name.startswith(skip_prefixes):
                continue
            dims = ", ".join(str(s) for s in shape)
            w(f"self.{name} = nn.Parameter(torch.empty({dims}))  "
              f"# {_shape_comment(name, shape, isinstance(layer, S.CMSSpec))}")

    def init_lines(self, w: Writer, layer: Any, with_norm: bool) -> None:
        """`reset_parameters`: explicit initialisation of every parameter of the layer."""
        dim = self.model.dim
        out_scale = 1.0 / math.sqrt(2 * self.model.layers)
        if with_norm:
            w("nn.init.ones_(self.norm)")
        gates = _gate_owners(layer)
        # a cms level's parameters are named after the level (`b_fast_w1`): the prefixes below name a
        # layer's own parameters, never a level's, whatever the spec calls it
        levels = tuple(f"{level.name}_" for level in layer.levels) if isinstance(layer, S.CMSSpec) else ()
        for name, shape in shapes.layer_parameters(layer, dim).items():
            if "." in name:
                continue
            target = f"self.{name}"
            own = not name.startswith(levels) if levels else True
            if name in ("norm", "q_norm", "k_norm", "out_norm") or (own and name.startswith("gate_norm")):
                w(f"nn.init.ones_({target})")
            elif name in gates:
                gate_name, gate, part = gates[name]
                if part in ("bias", "logit"):
                    value = lower.bias_for(gate_name, gate)
                    w(f"nn.init.constant_({target}, {value!r})  # {gate_name} starts at "
                      f"{lower.gate_start(gate_name, gate):g}")
                elif part == "readout":
                    w(f"nn.init.zeros_({target})  # the generated gate starts the same for every token")
                else:
                    w(f"nn.init.normal_({target}, std={0.02!r})")
            elif own and name.startswith("conv_"):
                w(f"nn.init.normal_({target}, std={0.02!r})")
                w("with torch.no_grad():")
                with w.indent():
                    w(f"{target}[:, -1] += 1.0  # start as the identity: the conv passes the current token")
            elif name == "mix":
                w(f"nn.init.constant_({target}, {1.0 / shape[0]!r})")
            elif own and name.startswith("persistent_"):
                w(f"nn.init.normal_({target}, std={0.02!r})")
            elif own and name.startswith("b_"):
                w(f"nn.init.zeros_({target})")
            elif len(shape) == 3:  # an initial memory state θ_0 (heads, out, in)
                std = 1.0 / math.sqrt(shape[2])
                if _is_last_residual_layer(layer, name):
                    w(f"nn.init.normal_({target}, std=M.RESIDUAL_OUT_SCALE * {std!r})  # M(x) ≈ x at first")
                else:
                    w(f"nn.init.normal_({target}, std={std!r})  # θ_0 ~ N(0, 1/fan_in)")
            elif len(shape) == 2:
                std = 1.0 / math.sqrt(shape[1])
                if name in ("wo", "w_down", "w_out"):
                    std *= out_scale
                    w(f"nn.init.normal_({target}, std={std!r})  # output projection, scaled by 1/sqrt(2·layers)")
                else:
                    w(f"nn.init.normal_({target}, std={std!r})")
            else:
                w(f"nn.init.zeros_({target})")

    # gates -----------------------------------------------------------------------------------

    def gate_expr(self, gate_name: str, gate: Any, source: str, heads: int, prefix: str = "") -> str | None:
        """An expression for a gate of shape (B, H, T) computed from `source` (B, T, d)."""
        if gate is None or isinstance(gate, S.GeneratedGate):
            return None
        p = f"self.{prefix}{gate_name}"
        # in at least float32 (L.gate_precision): α = 0.999 is exactly 1 in bfloat16
        if isinstance(gate, S.ConstantGate):
            return f"L.constant_gate({source}, heads={heads}, value={gate.value!r})"
        if isinstance(gate, S.PerHeadGate):
            squash = "F.softplus" if gate_name == "lr" else "torch.sigmoid"
            return (f"{squash}(L.gate_precision({p}_logit)).view(1, {heads}, 1).expand({source}.shape[0], {heads}, "
                    f"{source}.shape[1])")
        assert isinstance(gate, S.LearnedGate)
        return f"L.learned_gate({source}, {p}_proj, {p}_bias, bound={gate.max!r})"

    # layers ----------------------------------------------------------------------------------

    def layer_class(self, layer: Any, with_norm: bool) -> str:
        handler = {
            "attention": self.attention_class, "mlp": self.mlp_class, "memory": self.memory_class,
            "selfmod": self.selfmod_class, "cms": self.cms_class, "parallel": self.parallel_class,
            "context": self.context_class,
        }[layer.kind]
        return handler(layer, with_norm)

    def begin(self, w: Writer, name: str, layer: Any, doc: str) -> None:
        w(f"class {name}(nn.Module):")
        w.depth += 1
        w(f'"""`{layer.kind} {layer.name}`: {doc}"""')
        w()

    def finish(self, w: Writer, layer: Any, with_norm: bool, children: list[tuple[str, str]] = ()) -> None:
        w()
        w("def reset_parameters(self) -> None:")
        with w.indent():
            before = len(w.lines)
            self.init_lines(w, layer, with_norm)
            for child, _ in children:
                w(f"self.{child}.reset_parameters()")
            if len(w.lines) == before:
                w("pass")
        w.depth -= 1
        self.classes.append(w.lines)

    def init_header(self, w: Writer) -> None:
        w("def __init__(self) -> None:")
        w.depth += 1
        w("super().__init__()")

    def attention_class(self, layer: S.AttentionSpec, with_norm: bool, in_context: bool = False) -> str:
        """`in_context`: the attention of a `context` (Titans MAC), which also gets `attend`."""
        name, w = self.new_class("Attention")
        dim, heads = self.model.dim, layer.heads
        head_dim = dim // heads
        what = f"{'sliding-window (' + str(layer.window) + ' tokens)' if layer.window else 'full'} causal attention"
        self.begin(w, name, layer, f"{what}, {heads} heads (§3.3).")
        self.init_header(w)
        self.declare(w, layer, with_norm)
        if layer.rope:
            # Tables held by the module, not computed in the graph (L.RotaryTables says why).
            w(f"self.rotary = L.RotaryTables({head_dim}, TRAIN_SEQ_LEN, {layer.rope_base!r})"
              "  # (TRAIN_SEQ_LEN, D) float64, not saved")
        w.depth -= 1
        w()
        w("def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:")
        with w.indent():
            w("q, k, v = L.linear_split(x, self.wq, self.wk, self.wv)  # (B, T, d) each, from one product")
            w(f"q, k, v = R.split_heads(q, {heads}), R.split_heads(k, {heads}), R.split_heads(v, {heads})"
              f"  # (B, H, T, {head_dim})")
            if layer.qk_norm:
                w("q, k = L.rms_norm(q, self.q_norm, NORM_EPS), L.rms_norm(k, self.k_norm, NORM_EPS)")
            w("return q, k, v")
        if layer.rope:
            w()
            w("def rope(self, *xs: Tensor) -> tuple[Tensor, ...]:")
            with w.indent():
                w('"""Rotate each of xs (B, H, T, D), all of one length, with one table."""')
                w("cos, sin = self.rotary(xs[0].shape[2], xs[0].dtype)")
                w("return tuple(L.apply_rope(x, cos, sin) for x in xs)")
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("q, k, v = self.qkv(x)")
            if layer.rope:
                w("q, k = self.rope(q, k)")
            persistent = ", persistent_k=self.persistent_k, persistent_v=self.persistent_v" if layer.persistent else ""
            w(f"# o: (B, H, T, {head_dim})")
            w(f"o = L.causal_attention(q, k, v, window={layer.window}{persistent})")
            w("return F.linear(R.merge_heads(o), self.wo), {}")
        if in_context:
            self.attend_method(w, layer)
        self.finish(w, layer, with_norm)
        return name

    def attend_method(self, w: Writer, layer: S.AttentionSpec) -> None:
        w()
        w("def attend(self, x: Tensor, retrieved: Tensor) -> Tensor:")
        with w.indent():
            w('"""Memory as context: queries of a segment over [persistent | retrieved | segment] (§3.8)."""')
            w("q, k_x, v_x = self.qkv(x)")
            w("_, k_r, v_r = self.qkv(retrieved)")
            if layer.rope:
                w("q, k_x, k_r = self.rope(q, k_x, k_r)")
            persistent = ", self.persistent_k, self.persistent_v" if layer.persistent else ""
            w(f"o = R.segment_attention(q, k_r, v_r, k_x, v_x{persistent})")
            w("return F.linear(R.merge_heads(o), self.wo)")

    def mlp_class(self, layer: S.MLPSpec, with_norm: bool) -> str:
        name, w = self.new_class("MLP")
        hidden = shapes.hidden_width(layer.expansion, self.model.dim)
        self.begin(w, name, layer, f"{layer.activation} feed-forward, hidden width {hidden} (§3.4).")
        self.init_header(w)
        self.declare(w, layer, with_norm)
        w.depth -= 1
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            if layer.activation == "swiglu":
                w("return L.swiglu(x, self.w_gate, self.w_up, self.w_down), {}")
            else:
                w("return L.gelu_mlp(x, self.w_in, self.b_in, self.w_out, self.b_out), {}")
        self.finish(w, layer, with_norm)
        return name

    def memory_state_expr(self, config_name: str, level: S.LevelSpec, prefix: str, like: str, heads: int,
                          d: int, batch: str | None = None, detached: bool | str = False) -> str:
        """A fresh per-sequence state: θ_0 expanded over the batch (or zeros); `detached`: θ_0 out of
        the graph, for a memory that no gradient reaches (a name: where that local is true)."""
        batch = batch or f"{like}.shape[0]"
        if level.init == "zeros":
            momentum = f"[{like}.new_zeros({batch}, {heads}, {d}, {d})]" if level.momentum else "None"
            return f"M.MemoryState([{like}.new_zeros({batch}, {heads}, {d}, {d})], {momentum})"
        count = len(shapes.state_layers(level.state, d, d))
        if isinstance(detached, str):
            weights = f"*R.detached_if({detached}, " + ", ".join(f"self.{prefix}w{i + 1}" for i in range(count)) + ")"
        else:
            weights = ", ".join(f"self.{prefix}w{i + 1}" + (".detach()" if detached else "") for i in range(count))
        return f"M.initial_memory_state({config_name}, [{weights}], {batch})"

    def memory_state_lines(self, w: Writer, target: str, config_name: str, level: S.LevelSpec, prefix: str,
                           heads: int, d: int, key: str, detached: bool | str = False) -> None:
        """`target = state.get(key) or <a fresh state>`, wrapped when long."""
        expr = self.memory_state_expr(config_name, level, prefix, "x", heads, d, batch="batch", detached=detached)
        line = f"{target} = state.get({key!r}) or {expr}"
        if len(line) + 4 * w.depth <= 116:
            w(line)
            return
        w(f"{target} = state.get({key!r})")
        w(f"if {target} is None:")
        with w.indent():
            if expr.startswith("M.initial_memory_state(") and len(expr) + len(target) + 4 * w.depth > 112:
                config, rest = expr[len("M.initial_memory_state("):-1].split(", ", 1)
                weights, batch = rest.rsplit(", ", 1)
                w.statement(f"{target} = M.initial_memory_state(", [config, weights, batch])
            else:
                w(f"{target} = {expr}")

    def memory_class(self, layer: S.MemorySpec, with_norm: bool, in_context: bool = False) -> str:
        """`in_context`: the memory of a `context` (Titans MAC), which also gets `read`."""
        name, w = self.new_class("Memory")
        dim, heads = self.model.dim, layer.heads
        head_dim = dim // heads
        level = layer.level
        config = self.constant(f"LEVEL_{name.upper()}", config_literal(lower.level_config(level, head_dim, head_dim)),
                               f"`{layer.name}`: its memory level (docs/semantics.md §1)")
        self.begin(w, name, layer, f"associative memory, {heads} heads, one level per head (§3.5).")
        self.init_header(w)
        self.declare(w, layer, with_norm)
        w.depth -= 1
        w()
        made = layer.projected  # "qk" for reconstruction, whose objective reads no values
        names = ", ".join(made)
        values = "Tensor" if "v" in made else "None"
        w(f"def project(self, x: Tensor, state: dict) -> tuple[Tensor, Tensor, {values}, dict]:")
        with w.indent():
            # Separate products, not one fused one (L.linear_split): k and v may feed only writes that
            # nothing reads (a stop-gradient level, a chunk-start readout of one chunk), and a fused
            # product would give W_k and W_v zero gradients where they have none (weight decay would
            # then shrink them).
            w(f"{names} = {', '.join(f'F.linear(x, self.w{x})' for x in made)}  # (B, T, d)")
            w("caches = {}")
            if layer.conv:
                for x in made:
                    w(f"{x}, caches['conv_{x}'] = L.causal_depthwise_conv({x}, self.conv_{x}, None, "
                      f"state.get('conv_{x}'))")
            if layer.activation == "silu":
                w(f"{names} = {', '.join(f'F.silu({x})' for x in made)}")
            w(f"{names} = {', '.join(f'R.split_heads({x}, {heads})' for x in made)}  # (B, H, T, {head_dim})")
            if layer.qk_norm == "l2":
                w("q, k = L.l2_normalize(q), L.l2_normalize(k)")
            if layer.value_norm == "l2" and "v" in made:
                w("v = L.l2_normalize(v)")
            w(f"return q, k, {'v' if 'v' in made else 'None'}, caches")
        w()
        w("def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:")
        with w.indent():
            w('"""lr (η), retention (α) and momentum (β, the momentum decay), each (B, H, T) or None."""')
            for gate_name in ("lr", "retention", "momentum"):
                expr = self.gate_expr(gate_name, getattr(level, gate_name), "x", heads)
                w(f"{gate_name} = {expr or 'None'}")
            w("return lr, retention, momentum")
        self.output_method(w, layer)
        w()
        w("def initial_state(self, x: Tensor) -> M.MemoryState:")
        with w.indent():
            w(f"return {self.memory_state_expr(config, level, 'memory_', 'x', heads, head_dim)}")
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("state = state or {}")
            w("q, k, v, caches = self.project(x, state)")
            w("lr, retention, momentum = self.gates(x)")
            w("memory = state.get('memory') or self.initial_state(x)")
            w(f"# o: (B, H, T, {head_dim})")
            w(f"o, memory = M.memory_level({config}, memory, k, v, q, lr, retention, momentum)")
            w("return self.output(o, x), {'memory': memory, **caches}")
        if in_context:
            w()
            w("def read(self, x: Tensor, state: dict) -> Tensor:")
            with w.indent():
                w('"""Memory as context: read with the current state without writing the memory (§3.8).')
                w()
                w("The read's own convolution caches go into `state` under `read_`.")
                w('"""')
                w("caches = {key[5:]: value for key, value in state.items() if key.startswith('read_')}")
                w("q, _, _, caches = self.project(x, caches)")
                w("state.update({'read_' + key: value for key, value in caches.items()})")
                w("memory = state.get('memory') or self.initial_state(x)")
                w(f"o, _, _ = M.memory_forward({config}, memory.weights, q)")
                w("return self.output(o, x)")
        self.finish(w, layer, with_norm)
        return name

    def output_method(self, w: Writer, layer: Any) -> None:
        w()
        w("def output(self, o: Tensor, x: Tensor) -> Tensor:")
        with w.indent():
            w('"""Per-head norm, output gate sigmoid(x W_g), output projection."""')
            if layer.output_norm:
                w("o = L.rms_norm(o, self.out_norm, NORM_EPS)")
            w("y = R.merge_heads(o)  # (B, T, d)")
            if layer.output_gate:
                w("y = L.output_gate(y, x, self.w_gate)")
            w("return F.linear(y, self.wo)")

    def selfmod_class(self, layer: S.SelfModSpec, with_norm: bool) -> str:
        name, w = self.new_class("SelfMod")
        dim, heads = self.model.dim, layer.heads
        head_dim = dim // heads
        memory_config = self.constant(
            f"MEMORY_{name.upper()}", config_literal(lower.level_config(layer.memory, head_dim, head_dim)),
            f"`{layer.name}`: the main memory, read with q (Eq. 94; readout {layer.memory.readout}: "
            f"{_READOUT_STATE[layer.memory.readout]})")
        projections = self.constant(
            f"PROJECTIONS_{name.upper()}", config_literal(lower.level_config(layer.projections, head_dim, head_dim)),
            f"`{layer.name}`: the in-context projection memories "
            f"{', '.join(f'M_{n}' for n in layer.adaptive) or 'none'} (Eq. 83-85, 90)")
        eta_max = layer.memory.lr.max if isinstance(layer.memory.lr, S.GeneratedGate) else 1.0
        alpha = layer.memory.retention
        alpha_max = alpha.max if isinstance(alpha, S.GeneratedGate) else 1.0
        adaptive = tuple(n for n in ("q", "k", "v", "eta", "alpha") if n in layer.adaptive)
        selfmod = self.constant(f"SELFMOD_{name.upper()}", wrap_call("R.SelfModConfig", [
            f"adaptive={adaptive!r}", f"heads={heads}", f"head_dim={head_dim}", f"conv={layer.conv}",
            f"qk_norm={layer.qk_norm == 'l2'}", f"value_norm={layer.value_norm == 'l2'}", f"eta_max={eta_max!r}",
            f"alpha_max={alpha_max!r}", f"projections={projections}"]))
        self.begin(w, name, layer, f"self-modifying Titans, {heads} heads (Eq. 83-93, §3.6).")
        self.init_header(w)
        self.declare(w, layer, with_norm)
        w.depth -= 1
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("state = state or {}")
            w("batch = x.shape[0]")
            w(f"x_heads = R.split_heads(x, {heads})  # (B, H, T, {head_dim})")
            static = [n for n in "qkv" if n not in layer.adaptive]
            w("static = {" + ", ".join(f"'{n}': R.split_heads(F.linear(x, self.w{n}), {heads})" for n in static) + "}")
            w("memories = {}  # the in-context projection memories M_□ and their per-sequence states")
            unreached = {"k", "v", "eta"} & set(layer.adaptive) if layer.kv_eta_cut_off(self.train.seq_len) else set()
            detached: bool | str = True
            longest = layer.longest_call_reading_no_projection_write()
            if unreached and not layer.kv_eta_cut_off(longest + 1):
                # a call longer than training's can read the projection memories' own writes, which
                # carry k, v and η to the loss through M_q or M_α: there they get their gradient
                detached = "short"
            if unreached:
                # stacked with the others, they would get gradients of zero, which weight decay follows
                within = f"in a call of up to {longest} tokens " if detached == "short" else ""
                w(f"# {', '.join(f'M_{n}' for n in layer.adaptive if n in unreached)}: no gradient reaches them "
                  f"{within}(k, v and η reach the loss only through detached writes, W0706), so their θ_0 enter "
                  "detached and stay as initialised")
            if detached == "short":
                w(f"short = x.shape[1] <= {longest}  # a longer call reads the projection memories' writes")
            for n in ("q", "k", "v", "eta", "alpha"):
                if n in layer.adaptive:
                    self.memory_state_lines(w, f"memories[{n!r}]", projections, layer.projections, f"{n}_memory_",
                                            heads, head_dim, n, detached=n in unreached and detached)
            lr_expr = None if "eta" in layer.adaptive else self.gate_expr("lr", layer.memory.lr, "x", heads)
            retention = layer.memory.retention
            ret_expr = None if "alpha" in layer.adaptive else self.gate_expr("retention", retention, "x", heads)
            mom_expr = self.gate_expr("momentum", layer.memory.momentum, "x", heads)
            w("static_gates = {")
            with w.indent():
                w(f"'lr': {lr_expr or 'None'},")
                w(f"'retention': {ret_expr or 'None'},")
                w(f"'momentum': {mom_expr or 'None'},")
            w("}")
            readouts = [f"'{n}': (self.{n}_readout, self.{n}_bias)" for n in ("eta", "alpha") if n in layer.adaptive]
            w("readouts = {" + ", ".join(readouts) + "}")
            convs = [f"'{n}': self.conv_{n}" for n in "qkv"] if layer.conv else []
            w("convs = {" + ", ".join(convs) + "}")
            w("caches = {n: state.get('conv_' + n) for n in 'qkv'}")
            w(f"p, memories, caches = R.self_modifying_projections({selfmod}, x_heads, memories, static, convs,")
            w("                                                      readouts, static_gates, caches)")
            self.memory_state_lines(w, "memory", memory_config, layer.memory, "memory_", heads, head_dim, "memory")
            w.statement("o, memory = M.memory_level(", [memory_config, "memory", "p['k']", "p['v']", "p['q']",
                                                         "p['lr']", "p.get('retention')", "static_gates['momentum']"])
            w("new_state = {'memory': memory, **memories, **{'conv_' + n: c for n, c in caches.items()}}")
            w("return self.output(o, x), new_state")
        self.output_method(w, layer)
        self.finish(w, layer, with_norm)
        return name

    def cms_class(self, layer: S.CMSSpec, with_norm: bool) -> str:
        name, w = self.new_class("CMS")
        dim = self.model.dim
        levels = []
        for level in layer.levels:
            in_context = lower.learns_in_context(level, self.train)
            # a slower nested level that never moves is read by nothing (docs/semantics.md §3.7): no
            # clock steps it, so streaming and the clock never ask for its gradient
            read = level.name not in layer.inert_levels(self.train.seq_len)
            if not in_context and read:
                # the full path inside the block: cms layers of one name may sit in different branches
                path = ".".join([*self.scope, layer.name, level.name])
                self.clock_levels.append((f"{path}_", lower.clock_steps(level, self.train)))
            cfg = self.constant(
                f"CMS_{name.upper()}_{level.name.upper()}",
                wrap_call("R.CMSLevel", [config_literal(lower.level_config(level, dim, dim), indent=8),
                                         f"in_context={in_context}"]),
                f"`{layer.name}.{level.name}`: period {lower.period_value(level)} "
                + ("tokens" if isinstance(level.period, int) else "outer steps")
                + (", learns in context" if in_context else ", stepped by the continuum clock" if read
                   else ", read by nothing: it never moves within a training sequence (W0706)"))
            levels.append((level, cfg, in_context))
        self.begin(w, name, layer, f"Continuum Memory System, {layer.variant}, {len(layer.levels)} levels (§3.7).")
        self.init_header(w)
        self.declare(w, layer, with_norm)
        w.depth -= 1
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("state = state or {}")
            w("new_state = {}")
            if layer.variant == "nested":
                weights = ", ".join(self.weights_list(level, dim) for level, _, _ in levels)
                fast = levels[0][0]
                gates = self.cms_gates(fast, "x")
                slow = tuple(float(lv.lr.value) if isinstance(lv.lr, S.ConstantGate) else 0.0 for lv, _, _ in levels)
                names = tuple(lv.name for lv, _, _ in levels)
                w(f"# η, α, β of `{fast.name}`: the one MLP that runs is the fastest level's")
                w(f"gates = {gates}")
                # `_position` (no level name starts with `_`, E0208): the stream's tokens so far, which
                # time the slower levels' moves across calls
                w.statement("h, carried, new_state['_position'] = R.nested_cms(", [
                    f"({', '.join(c for _, c, _ in levels)},)", repr(slow), f"[{weights}]", "x", "gates", "ctx",
                    "[" + ", ".join(f"state.get({n!r})" for n in names) + "]", "state.get('_position', 0)"])
                w(f"new_state.update(zip({names!r}, carried, strict=True))")
            elif layer.variant == "sequential":
                w("h = x")
                for level, cfg, _ in levels:
                    w(f"gates = {self.cms_gates(level, 'h')}  # η, α, β of `{level.name}`")
                    w.statement(f"h, new_state[{level.name!r}] = R.cms_level(", [
                        cfg, self.weights_list(level, dim), "h", "gates", "ctx", f"state.get({level.name!r})"])
            else:
                w("h = 0")
                for index, (level, cfg, _) in enumerate(levels):
                    w(f"gates = {self.cms_gates(level, 'x')}  # η, α, β of `{level.name}`")
                    w.statement(f"y, new_state[{level.name!r}] = R.cms_level(", [
                        cfg, self.weights_list(level, dim), "x", "gates", "ctx", f"state.get({level.name!r})"])
                    w(f"h = h + self.mix[{index}] * y")
            w("return h, new_state")
        self.finish(w, layer, with_norm)
        return name

    def weights_list(self, level: S.LevelSpec, dim: int) -> str:
        """θ_0 of a cms level: its parameters, or zeros for `init = zeros` (linear, learns in context)."""
        layers = shapes.state_layers(level.state, dim, dim)
        if level.init == "zeros":
            return "[" + ", ".join(f"x.new_zeros(1, {out}, {inp})" for out, inp in layers) + "]"
        return "[" + ", ".join(f"self.{level.name}_w{i + 1}" for i in range(len(layers))) + "]"

    def cms_gates(self, level: S.LevelSpec, source: str) -> str:
        if not lower.learns_in_context(level, self.train):
            return "(None, None, None)"
        exprs = [self.gate_expr(g, getattr(level, g), source, 1, prefix=f"{level.name}_")
                 for g in ("lr", "retention", "momentum")]
        return "(" + ", ".join(e or "None" for e in exprs) + ")"

    def parallel_class(self, layer: S.ParallelSpec, with_norm: bool) -> str:
        self.scope.append(layer.name)
        children = [(branch.name, self.layer_class(branch, with_norm=False)) for branch in layer.branches]
        self.scope.pop()
        name, w = self.new_class("Parallel")
        self.begin(w, name, layer, f"{len(children)} branches combined by {layer.combine} (§3.8).")
        self.init_header(w)
        if with_norm:
            w(f"self.norm = nn.Parameter(torch.empty({self.model.dim}))  # pre-norm weight")
        for child, cls in children:
            w(f"self.{child} = {cls}()")
        if layer.combine == "gate":
            w(f"self.gate_norm_0 = nn.Parameter(torch.empty({self.model.dim}))")
            w(f"self.gate_norm_1 = nn.Parameter(torch.empty({self.model.dim}))")
        w.depth -= 1
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("state = state or {}")
            w("new_state = {}")
            for index, (child, _) in enumerate(children):
                w(f"b{index}, new_state[{child!r}] = self.{child}(x, ctx, state.get({child!r}))")
            if layer.combine == "gate":
                w("out = L.rms_norm(b0, self.gate_norm_0, NORM_EPS) * torch.sigmoid(L.rms_norm(b1, self.gate_norm_1, "
                  "NORM_EPS))")
            else:
                w("out = " + " + ".join(f"b{i}" for i in range(len(children))))
            w("return out, new_state")
        self.finish(w, layer, with_norm, children)
        return name

    def context_class(self, layer: S.ContextSpec, with_norm: bool) -> str:
        memory_cls = self.memory_class(layer.memory, with_norm=False, in_context=True)
        attention_cls = self.attention_class(layer.attention, with_norm=False, in_context=True)
        name, w = self.new_class("Context")
        self.begin(w, name, layer, f"memory as context (Titans MAC), segments of {layer.segment} tokens (§3.8).")
        self.init_header(w)
        if with_norm:
            w(f"self.norm = nn.Parameter(torch.empty({self.model.dim}))  # pre-norm weight")
        w(f"self.memory = {memory_cls}()")
        w(f"self.attention = {attention_cls}()")
        w.depth -= 1
        w()
        w("def forward(self, x: Tensor, ctx: R.HeadContext, state: dict | None = None) -> tuple[Tensor, dict]:")
        with w.indent():
            w("memory_state = dict((state or {}).get('memory') or {})")
            w("out, memory_state = R.memory_as_context(")
            w(f"    x, {layer.segment}, self.memory.read, self.attention.attend,")
            w("    lambda y, st: self.memory(y, ctx, st), memory_state)")
            w("return out, {'memory': memory_state}")
        self.finish(w, layer, with_norm, [("memory", memory_cls), ("attention", attention_cls)])
        return name

    # block and model -------------------------------------------------------------------------

    def block_class(self, block: S.BlockSpec, classes: list[str]) -> None:
        w = Writer()
        w("class Block(nn.Module):")
        with w.indent():
            w('"""One block: each layer adds `layer(norm(x))` to the residual stream (§3.1)."""')
            w()
            w("def __init__(self) -> None:")
            with w.indent():
                w("super().__init__()")
                for layer, cls in zip(block.sublayers, classes):
                    w(f"self.{layer.name} = {cls}()")
            w()
            w("def forward(self, h: Tensor, ctx: R.HeadContext, state: dict) -> tuple[Tensor, dict]:  # h: (B, T, d)")
            with w.indent():
                w("new_state = {}")
                for layer in block.sublayers:
                    x = f"L.rms_norm(h, self.{layer.name}.norm, NORM_EPS)" if block.norm == "rms" else "h"
                    w(f"x = {x}")
                    w(f"out, new_state[{layer.name!r}] = self.{layer.name}(x, ctx, state.get({layer.name!r}))")
                    w("h = h + out")
                w("return h, new_state")
            w()
            w("def reset_parameters(self) -> None:")
            with w.indent():
                for layer in block.sublayers:
                    w(f"self.{layer.name}.reset_parameters()")
        self.classes.append(w.lines)

    def model_class(self) -> None:
        model = self.model
        w = Writer()
        w("class Model(nn.Module):")
        with w.indent():
            title = safe_comment(model.name or "model")
            w(f'"""{title}: {model.layers} × Block, width {model.dim}, vocabulary {model.vocab}."""')
            w()
            w("def __init__(self) -> None:")
            with w.indent():
                w("super().__init__()")
                w("self.embed = nn.Parameter(torch.empty(VOCAB, DIM))  # (V, d)")
                w("self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))")
                w("self.final_norm = nn.Parameter(torch.empty(DIM))")
                if not model.tie_embeddings:
                    w("self.head = nn.Parameter(torch.empty(VOCAB, DIM))  # (V, d)")
                w("self.reset_parameters()")
                if self.clock_levels:  # a loop of its own that steps the clocked levels every call is warned
                    w("watch_clock(self, CLOCK_STEPS)")
            w()
            if self.clock_levels:  # a copy (deepcopy, an unpickled model) is built without __init__
                w("def __setstate__(self, state: dict) -> None:")
                with w.indent():
                    w('"""A copy (`copy.deepcopy`, `torch.load` of a pickled model) is watched as the model is."""')
                    w("super().__setstate__(state)")
                    w("watch_clock(self, CLOCK_STEPS)")
                w()
            w("def reset_parameters(self) -> None:")
            with w.indent():
                w("nn.init.normal_(self.embed, std=0.02)")
                w("nn.init.ones_(self.final_norm)")
                if not model.tie_embeddings:
                    w("nn.init.normal_(self.head, std=0.02)")
                w("for block in self.blocks:")
                with w.indent():
                    w("block.reset_parameters()")
            w()
            w("def forward(self, tokens: Tensor, targets: Tensor | None = None, state: list | None = None,")
            w("            return_state: bool = False) -> Tensor | tuple[Tensor, list]:")
            with w.indent():
                w('"""Logits (B, T, V) for tokens (B, T); `targets` are next tokens (−1 = none) for the')
                w("surprise of in-context CMS levels (default: the tokens shifted by one). `state` continues")
                w('a stream: pass the state returned by a previous call with `return_state=True`."""')
                unembed = "self.embed" if model.tie_embeddings else "self.head"
                w("tokens, targets = R.checked_inputs(tokens, targets, state, VOCAB, LAYERS, self.embed, BLOCK_STATE)")
                w("states = state if state is not None else [{} for _ in range(LAYERS)]")
                w("if tokens.shape[1] == 0:  # nothing to read or write: every level's state stays as it was")
                with w.indent():
                    w(f"logits = F.linear(F.embedding(tokens, self.embed), {unembed})  # (B, 0, V)")
                    w("return (logits, states) if return_state else logits")
                w("if targets is None:")
                with w.indent():
                    w("targets = F.pad(tokens[:, 1:], (0, 1), value=-1)")
                w(f"ctx = R.HeadContext(targets, self.final_norm, {unembed}, NORM_EPS)")
                w("h = F.embedding(tokens, self.embed)  # (B, T, d)")
                w("new_states = []")
                w("for index, block in enumerate(self.blocks):")
                with w.indent():
                    w("h, block_state = R.run_block(block, h, ctx, states[index], index)")
                    w("new_states.append(block_state)")
                w(f"logits = F.linear(L.rms_norm(h, self.final_norm, NORM_EPS), {unembed})  # (B, T, V)")
                w("return (logits, new_states) if return_state else logits")
            w()
            w("def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:")
            with w.indent():
                w('"""Mean next-token cross-entropy over the positions that have a target; targets (B, T) with −1')
                w("where there is none. A batch without any target has loss 0 (an empty mean would be NaN).\"\"\"")
                w("if targets is None:")
                with w.indent():
                    w('raise TypeError("loss needs targets (B, T): the next token at each position, -1 where none")')
                w("logits = self(tokens, targets)")
                w("logits = logits.flatten(0, 1)")
                w("if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in at least float32")
                with w.indent():
                    w("logits = logits.float()")
                w("targets = targets.flatten().long()")
                w('total = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")')
                w("return total / (targets >= 0).sum().clamp(min=1)")
        self.classes.append(w.lines)


def generate(spec: S.Spec, source_text: str = "", overrides: Sequence[str] = ()) -> str:
    return Generator(spec, source_text, overrides).generate()


def _leading_comments(text: str) -> list[str]:
    """The comment block at the top of the spec (its description)."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            out.append(stripped[1:].strip())
        elif stripped:
            break
    return out


# Which state token t reads, per `readout` (docs/semantics.md §1.6); Eq. 94 writes M_{t−1}
_READOUT_STATE = {"causal": "θ_t, after its own write", "exclusive": "θ_{t−1}, before its own write",
                  "chunk_start": "its chunk's start state"}


def _shape_comment(name: str, shape: tuple[int, ...], cms: bool = False) -> str:
    dims = ", ".join(str(s) for s in shape)
    if name.startswith("persistent_"):
        return f"persistent tokens per head: (H, P, D) = ({dims})"
    if len(shape) == 3 and cms:  # a CMS level: one MLP over the whole width, no heads
        return f"θ_0: (1, out, in) = ({dims})"
    if len(shape) == 3:
        return f"θ_0 per head: (H, out, in) = ({dims})"
    return f"({dims})"


def _gate_owners(layer: Any) -> dict[str, tuple[str, Any, str]]:
    """Parameter name -> (gate name, gate spec, part) for every gate parameter of a layer."""
    owners: dict[str, tuple[str, Any, str]] = {}

    def add(prefix: str, level: S.LevelSpec) -> None:
        for gate_name in ("lr", "retention", "momentum"):
            gate = getattr(level, gate_name)
            if gate is not None:
                owners[f"{prefix}{gate_name}_proj"] = (gate_name, gate, "proj")
                owners[f"{prefix}{gate_name}_bias"] = (gate_name, gate, "bias")
                owners[f"{prefix}{gate_name}_logit"] = (gate_name, gate, "logit")

    if isinstance(layer, S.MemorySpec):
        add("", layer.level)
    elif isinstance(layer, S.SelfModSpec):
        add("", layer.memory)
        for name, gate_name in (("eta", "lr"), ("alpha", "retention")):
            gate = getattr(layer.memory, gate_name)
            owners[f"{name}_readout"] = (gate_name, gate, "readout")
            owners[f"{name}_bias"] = (gate_name, gate, "bias")
    elif isinstance(layer, S.CMSSpec):
        for level in layer.levels:
            add(f"{level.name}_", level)
    return owners


def _is_last_residual_layer(layer: Any, name: str) -> bool:
    levels: list[tuple[str, S.LevelSpec]] = []
    if isinstance(layer, S.MemorySpec):
        levels = [("memory_", layer.level)]
    elif isinstance(layer, S.SelfModSpec):
        levels = [("memory_", layer.memory)] + [(f"{n}_memory_", layer.projections) for n in layer.adaptive]
    elif isinstance(layer, S.CMSSpec):
        levels = [(f"{lv.name}_", lv) for lv in layer.levels]
    for prefix, level in levels:
        if isinstance(level.state, S.ResidualMLPState) and name == f"{prefix}w2":
            return True
    return False

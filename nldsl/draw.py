"""Drawing the level graph: DOT text made in Python, rendered by graphviz's `dot` binary.

`to_dot` turns a `LevelGraph` into DOT text, laid out left to right:
- update frequencies become nested clusters, slowest outermost: the outer level's cluster (every
  step) holds the modules and the training optimizer, the groups stepped every N > 1 steps (the
  continuum clock, an optimizer level's period) enclose it, and each faster group of levels sits
  inside the fastest slower group whose period is a multiple of its own (beside it otherwise), so
  a level is drawn inside every slower level it is nested in;
- the model's modules stand in one column in forward order (embedding at the bottom, head at the
  top, one repeated block drawn once with its repeat count); their levels sit to the right;
- modules are plain boxes, levels rounded boxes listing period, state shape, parameter count,
  objective, rule and gates, and an optimizer's outer level shows its update u as the spec writes it;
- each edge kind has its own style (data solid black, flow coloured, read dashed, meta dotted);
  the title names the spec and its parameter count, with a legend of edge kinds beneath.
Every label is an HTML-like label built from escaped text (names and paths come from users), and
nodes and edges are written in sorted order, so a spec always gives the same bytes (golden tests).

`render` writes `.dot` text, or runs `dot` for `.svg`, `.png` and `.pdf`; every problem comes
back as a one-line message, never as an exception.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import networkx as nx

from .files import first_line
from .graph import OUTER, LevelGraph
from .shapes import human_count

FONT = "Helvetica"
RENDERED_SUFFIXES = (".svg", ".png", ".pdf")
SUPPORTED_SUFFIXES = (".dot", *RENDERED_SUFFIXES)
DRAWN_BY = "drawn by `nldsl graph`."  # ends the DOT text's first line: a fallback may replace such a file
DOT_TIMEOUT_S = 120
INSTALL_HINT = "install graphviz (`apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`)"

# Clusters darken as their levels get faster; past the last shade the palette starts again.
CLUSTER_FILLS = ("#f6f6f6", "#eaf2fb", "#dce9f7", "#cde0f3", "#bdd6ee", "#aecbe9")
CLUSTER_BORDERS = ("#9a9a9a", "#7fa6cf", "#6b95c4", "#5784b9", "#4373ad", "#2f62a2")
MODULE_FILL = "#ffffff"
LEVEL_FILL = "#fffbe6"
OUTER_FILL = "#eeeeee"
MUTED = "#666666"

EDGE_STYLES = {
    "data": 'color="#000000", fontcolor="#000000", style=solid, penwidth=1.3',
    "flow": 'color="#d95f02", fontcolor="#a84a02", style=solid',
    "read": 'color="#1f78b4", fontcolor="#1f78b4", style=dashed',
    "meta": 'color="#7b3294", fontcolor="#7b3294", style=dotted, penwidth=1.3',
}
UNKNOWN_EDGE_STYLE = 'color="#999999", fontcolor="#999999", style=solid'
LEGEND = (  # colour, a stroke drawn in text (HTML), what the edge kind means
    ("#000000", "━━━", "data: the forward pass"),
    ("#d95f02", "━━━", "flow: the context a level compresses"),
    ("#1f78b4", "<B>– – –</B>", "read: a level's output, read back"),
    ("#7b3294", "∙∙∙∙∙", "meta: who learns a level's initial state"),
)

MODULE_DETAILS = (  # node attribute, how a module's label shows it (absent, 0 and "none" are left out)
    ("shape", "{}"),
    ("heads", "{} heads"),
    ("window", "window {}"),
    ("persistent", "{} persistent tokens"),
    ("conv", "conv {}"),
    ("qk_norm", "qk-norm {}"),
    ("activation", "{}"),
    ("hidden", "hidden {}"),
    ("variant", "{}"),
    ("combine", "combine: {}"),
    ("segment", "segment {}"),
)


def to_dot(graph: LevelGraph) -> str:
    """The level graph as DOT text: nested frequency clusters, styled edges, a title and a legend."""
    g = graph.nx
    spine = _spine(g)
    lines = [
        f"// Level graph of {_clean(graph.spec.path)}, {DRAWN_BY}",
        "digraph level_graph {",
        f'  graph [rankdir=LR, newrank=true, nodesep=0.25, ranksep=0.45, fontname="{FONT}", fontsize=16,',
        f"         labelloc=t, labeljust=l, label=<{_title(graph, '    ')}>];",
        f'  node [fontname="{FONT}", fontsize=10, margin="0.08,0.04"];',
        f'  edge [fontname="{FONT}", fontsize=9, arrowsize=0.7];',
    ]
    groups = graph.frequency_groups()
    lines += _cluster(g, groups, _enclosing(graph, groups), spine, 0, 0, "  ")
    for source, target, kind, label in sorted((u, v, a["kind"], a["label"]) for u, v, a in g.edges(data=True)):
        attrs = [EDGE_STYLES.get(kind, UNKNOWN_EDGE_STYLE)]
        if _returns_to_owner(g, source, target):
            # laid out owner → part, like the edges feeding the part, so parts sit beside their owner
            source, target = target, source
            attrs.append("dir=back")
        if label:
            # the column's edges are vertical; an external label keeps their text off the line
            placement = "xlabel" if source in spine and target in spine else "label"
            attrs.append(f"{placement}=<{_html(label)}>")
        lines.append(f"  {_id(source)} -> {_id(target)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot: str, out: Path) -> str | None:
    """Write `dot` to `out` by suffix: `.dot` text, or `.svg`/`.png`/`.pdf` drawn by graphviz's `dot`.

    Returns None on success, otherwise a one-line message for the user. When `dot` is not
    installed, the DOT text goes next to `out` (same name, `.dot` suffix) and the message says so.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = f"`{out.suffix}`" if out.suffix else "a file without a suffix"
        return (f"cannot draw {out}: {shown} is not a supported output; "
                f"use one of {', '.join(SUPPORTED_SUFFIXES)} (or .json for the graph's data)")
    if suffix == ".dot":
        return _write(out, dot.encode("utf-8"))
    executable = shutil.which("dot")
    if executable is None:
        fallback = out.with_suffix(".dot")
        if fallback.exists() and not _drawn_here(fallback):
            return (f"graphviz's `dot` program is not on PATH, so {out} was not drawn, and {fallback} is not "
                    f"a graph `nldsl graph` wrote, so it was left as it is: {INSTALL_HINT}, or write the "
                    "DOT text elsewhere with `-o NAME.dot`")
        problem = _write(fallback, dot.encode("utf-8"))
        if problem:
            return f"graphviz's `dot` program is not on PATH, and {problem}; {INSTALL_HINT}"
        return (f"graphviz's `dot` program is not on PATH, so {out} was not drawn; wrote {fallback} instead: "
                f"{INSTALL_HINT}, then rerun or run `dot -T{suffix[1:]} {fallback} -o {out}`")
    try:
        done = subprocess.run([executable, f"-T{suffix[1:]}"], input=dot.encode("utf-8"),
                              capture_output=True, timeout=DOT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"graphviz's `dot` took more than {DOT_TIMEOUT_S} s to draw {out}; try `-o {out.with_suffix('.dot')}`"
    except OSError as error:
        return f"could not run graphviz's `dot` ({executable}): {error.strerror or error}"
    if done.returncode != 0 or not done.stdout:
        errors = [line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        return f"graphviz's `dot` failed to draw {out}: {errors[0] if errors else f'exit status {done.returncode}'}"
    return _write(out, done.stdout)


# Clusters and nodes.

def _spine(g: nx.MultiDiGraph) -> set[str]:
    """The model's own modules (embedding, the block's layers, head): one column in forward order."""
    return {node for node, attrs in g.nodes(data=True)
            if attrs["kind"] == "module" and node.rpartition(".")[0] not in g}


def _enclosing(graph: LevelGraph, groups: list[tuple[str, list[str]]]) -> list[int | None]:
    """For each frequency group (slowest first), the group whose cluster encloses it. The groups
    slower than the outer level enclose one another and the outer level's, slowest outermost. An
    in-context group sits in the fastest slower in-context group whose period is a multiple of its
    own, so that nesting says "updates at every k-th of these"; a group no such period divides (16
    and 24 tokens) sits beside it, in the outer level's cluster, where every in-context level restarts
    with each sequence."""
    step_tokens = graph.spec.train.batch * graph.spec.train.seq_len
    keys = [key for key, _ in groups]
    outer = keys.index(OUTER) if OUTER in keys else None
    tokens = [step_tokens if key == OUTER else graph.nx.nodes[nodes[0]]["period_tokens"] for key, nodes in groups]
    enclosing: list[int | None] = []
    for index in range(len(groups)):
        if outer is None or index <= outer:
            enclosing.append(index - 1 if index else None)
            continue
        multiples = [j for j in range(outer + 1, index) if tokens[j] % tokens[index] == 0]
        enclosing.append(multiples[-1] if multiples else outer)
    return enclosing


def _cluster(g: nx.MultiDiGraph, groups: list[tuple[str, list[str]]], enclosing: list[int | None],
             spine: set[str], index: int, depth: int, indent: str) -> list[str]:
    """Group `index`'s cluster at nesting `depth`: its own nodes and, inside, the clusters it encloses."""
    key, nodes = groups[index]
    fill = CLUSTER_FILLS[depth % len(CLUSTER_FILLS)]
    border = CLUSTER_BORDERS[depth % len(CLUSTER_BORDERS)]
    inner = indent + "  "
    has_outer = any(attrs["kind"] == "outer" for _, attrs in g.nodes(data=True))
    lines = [
        f"{indent}subgraph cluster_{index} {{",
        f'{inner}graph [style="rounded,filled", fillcolor="{fill}", color="{border}", penwidth=1.2,',
        f'{inner}       fontsize=12, fontcolor="{border}", labeljust=l, margin=12,',
        f"{inner}       label=<<B>{_html(_period_title(key, has_outer))}</B>>];",
    ]
    lines += [f"{inner}{_id(node)} {_node(g, node, inner)};" for node in nodes]
    column = [node for node in nodes if node in spine]
    if len(column) > 1:
        lines.append(f"{inner}{{rank=same; {'; '.join(_id(node) for node in column)}}}")
    for inside in (j for j, outside in enumerate(enclosing) if outside == index):
        lines += _cluster(g, groups, enclosing, spine, inside, depth + 1, inner)
    lines.append(f"{indent}}}")
    return lines


def _period_title(key: str, has_outer: bool) -> str:
    """A frequency group's key ("outer", "16 tokens", "1 step") as a cluster title; the outer group of a
    graph with no outer level (the training optimizer's, or an optimizer's of a library) is named by
    its period alone: a file of level definitions whose levels update every step."""
    if key == OUTER:
        return "every step (outer)" if has_outer else "every step"
    count, _, unit = key.partition(" ")
    return f"every {unit.removesuffix('s')}" if count == "1" else f"every {key}"


def _returns_to_owner(g: nx.MultiDiGraph, source: str, target: str) -> bool:
    """An edge from a part (a level, a branch) back to the module or optimizer that owns it."""
    return source.startswith(target + ".") or (target == OUTER and g.nodes[source]["kind"] == "optimizer_level")


def _node(g: nx.MultiDiGraph, node: str, indent: str) -> str:
    """A node's attributes; its label's table rows go one to a line, so golden diffs stay readable."""
    attrs = g.nodes[node]
    kind = attrs["kind"]
    if kind == "outer":
        rows = _outer_rows(attrs, g.graph.get("step_has_tokens", True))
        style, fill = '"rounded,filled,bold"', OUTER_FILL
    elif kind in ("level", "optimizer_level"):
        owner = node.rpartition(".")[0]
        owner_attrs = g.nodes[owner] if owner in g else {}
        if attrs.get("definition"):  # a level definition of a file without a model
            context = "level definition, d: the width where it is used"
        elif owner_attrs.get("kind") == "outer":  # an optimizer the file defines but does not train with
            context = f"in the optimizer {owner_attrs.get('optimizer', '')}".rstrip()
        else:  # a layer, or the training optimizer (whose levels hang off the outer level directly)
            context = f"in {owner_attrs.get('label', 'the optimizer')}"
        style, fill, rows = '"rounded,filled"', LEVEL_FILL, _level_rows(attrs, context)
    else:
        parts = any(other.startswith(node + ".") for other in g.nodes)
        style, fill, rows = "filled", MODULE_FILL, _module_rows(attrs, parts)
    return f'[shape=box, style={style}, fillcolor="{fill}", label=<{_table(rows, indent)}>]'


def _table(rows: list[str], indent: str, padding: int = 1) -> str:
    """An HTML-like table without borders; each row is the inside of one `<TR>`."""
    lines = "".join(f"\n{indent}  <TR>{row}</TR>" for row in rows)
    return f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="{padding}">{lines}\n{indent}</TABLE>'


def _module_rows(attrs: dict[str, Any], parts: bool) -> list[str]:
    """Title, details and parameters; a module drawn with parts (levels, branches) counts theirs too,
    which the row says, so that nobody adds the parts' counts to it."""
    title = f"<B>{_html(str(attrs.get('label', '')))}</B>"
    if attrs.get("repeat", 1) > 1:
        title += f' <FONT COLOR="{MUTED}">×{attrs["repeat"]} blocks</FONT>'
    details = [template.format(_detail(attrs[name])) for name, template in MODULE_DETAILS
               if attrs.get(name) not in (None, 0, "none")]
    if attrs.get("rope"):
        details.append("RoPE")
    counted = _params_text(attrs) + (", parts included" if parts and attrs.get("params") else "")
    rows = [title, *([_small(" · ".join(details))] if details else []), _small(counted)]
    return [f"<TD>{row}</TD>" for row in rows]


def _outer_rows(attrs: dict[str, Any], step_has_tokens: bool) -> list[str]:
    sized = attrs.get("period_tokens") and step_has_tokens
    period = f"{attrs['period']} = {attrs['period_tokens']:,} tokens" if sized else str(attrs.get("period", ""))
    update = [f"<TD>{_small('update u = ' + attrs['update'])}</TD>"] if attrs.get("update") else []
    return [f"<TD><B>{_html(str(attrs.get('label', '')))}</B></TD>", f"<TD>{_small(period)}</TD>", *update]


def _level_rows(attrs: dict[str, Any], context: str) -> list[str]:
    """Two columns: the level's name and owner (`context`) across both, then one row per fact; a
    level definition, which has no width, has no parameter count."""
    repeat = attrs.get("repeat", 1)
    context += f", ×{repeat} blocks" if repeat > 1 else ""
    facts = [("period", attrs.get("period")), ("state", attrs.get("state"))]
    if attrs["kind"] == "level":
        generated = ", v̂ = M(v)" if attrs.get("values") == "generated" else ""
        facts += [("params", _params_text(attrs) if attrs.get("params") is not None else None),
                  ("objective", f"{attrs.get('objective')}{generated}"),
                  ("rule", f"{attrs.get('rule')}" + (f", readout {attrs['readout']}" if attrs.get("readout") else ""))]
    else:  # an optimizer level: its readout where it is not the default
        readout = f", readout {attrs['readout']}" if attrs.get("readout", "causal") != "causal" else ""
        facts += [("objective", attrs.get("objective")), ("rule", f"{attrs.get('rule')}{readout}")]
    facts.append(("gates", attrs.get("gates")))
    notes = [note for note, applies in (
        (str(attrs.get("inert")), attrs.get("inert") is not None),
        ("updated by the outer optimizer", attrs.get("update") == "outer"),
        ("starts at zero", attrs.get("init") == "zeros" and attrs["kind"] == "level"),
        ("starts at its first flow", attrs.get("init") == "first_flow"),
        ("no gradient through writes", attrs.get("grad_through_writes") is False),
    ) if applies]
    facts.append(("note", "; ".join(notes)))
    rows = [f'<TD ALIGN="LEFT" COLSPAN="2"><B>{_html(str(attrs.get("label", "")))}</B> '
            f'<FONT POINT-SIZE="9" COLOR="{MUTED}">{_html(context)}</FONT></TD>']
    rows += [f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="{MUTED}">{name}</FONT></TD>'
             f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{_html(str(value))}</FONT></TD>'
             for name, value in facts if value not in (None, "")]
    return rows


def _params_text(attrs: dict[str, Any]) -> str:
    params = attrs.get("params") or 0
    return f"{human_count(params)} params" if params else "no params"


def _detail(value: Any) -> str:
    return value.replace("_", "-") if isinstance(value, str) else str(value)


def _small(text: str) -> str:
    return f'<FONT POINT-SIZE="9" COLOR="{MUTED}">{_html(text)}</FONT>'


# Title and legend.

def _title(graph: LevelGraph, indent: str) -> str:
    """The spec's path and parameter count, with the legend of edge kinds beneath."""
    model = graph.spec.model
    if model is None:
        summary = "no model"
    else:
        total = graph.total_params()
        summary = (f"model {model.name}, " if model.name else "") + f"{human_count(total)} parameters ({total:,})"
    heading = (f"<B>{_html(graph.spec.path)}</B>"
               f'<FONT POINT-SIZE="12" COLOR="{MUTED}">  level graph · {_html(summary)}</FONT>')
    cells = "".join(f'<TD ALIGN="LEFT"><FONT COLOR="{color}" POINT-SIZE="11">{stroke}</FONT>'
                    f'<FONT POINT-SIZE="10"> {_html(text)}</FONT></TD>' for color, stroke, text in LEGEND)
    legend = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="8" CELLPADDING="0"><TR>{cells}</TR></TABLE>'
    return _table([f'<TD ALIGN="LEFT">{heading}</TD>', f'<TD ALIGN="LEFT">{legend}</TD>'], indent, padding=2)


# Escaping and writing.

def _clean(text: str) -> str:
    """Characters graphviz cannot take (controls, lone surrogates, non-characters) become U+FFFD."""
    return "".join(" " if ch in "\t\n\r" else "\ufffd" if _unusable(ch) else ch for ch in text)


def _unusable(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF)


def _html(text: str) -> str:
    """Text for an HTML-like label: the XML special characters as entities."""
    return (_clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _id(node: str) -> str:
    """A node name as a quoted DOT identifier (in DOT, only `"` and `\\` need a backslash)."""
    return '"' + _clean(node).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _drawn_here(path: Path) -> bool:
    """Whether `path` begins as `to_dot`'s text does, so a fallback may replace it (a rerun's)."""
    first = first_line(path)
    return first is not None and first.startswith(b"// Level graph of ") and \
        first.rstrip().endswith(DRAWN_BY.encode("utf-8"))


def _write(path: Path, data: bytes) -> str | None:
    try:
        path.write_bytes(data)
    except OSError as error:
        return f"cannot write {path}: {error.strerror or error}"
    return None

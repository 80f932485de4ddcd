"""Tests for nldsl.draw: golden DOT for every shipped spec, nested frequency clusters, edge styles,
labels, escaping of user text, and `render` (real graphviz output, missing `dot`, bad outputs).

Regenerate the golden files with `pytest tests/test_draw.py --update-golden`. Tests that run
graphviz's `dot` are skipped where it is not installed (CI installs it).
"""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nldsl.checker import check_file, check_text
from nldsl.cli import main
from nldsl.draw import EDGE_STYLES, SUPPORTED_SUFFIXES, human_count, render, to_dot
from nldsl.graph import build_graph, update_text

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "dot"
SPECS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "specs").rglob("*.nl"))
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz's `dot` is not installed")

ODD_PATH = 'odd "specs"/<b>&amp; ünïcode ∂θ₀ \\ \'quoted\'.nl'
ODD_LABEL = '<script>"x" & \'y\' → ∂ \\'
ODD_NODE = 'block."weird"\\name'

SMALL_SPEC = """
level fast_memory {
  state = linear
  period = 4
}

optimizer two_moments {
  lr = 1e-3
  level momentum { retention = 0.9 }
  level second_moment { flow = squared_gradients  retention = 0.999  lr = 0.001 }
  update = momentum / (sqrt(second_moment) + 1e-8)
}

model small {
  vocab = 32
  dim = 16
  layers = 3
  block {
    memory lmm { heads = 2  level from fast_memory { } }
    cms {
      level fast { period = 8 }
      level slow { period = 32 }
    }
  }
}

train {
  optimizer = two_moments
  batch = 2
  seq_len = 32
}
"""


def updating(request: pytest.FixtureRequest) -> bool:
    """`--update-golden` (registered in tests/conftest.py)."""
    return bool(request.config.getoption("--update-golden", default=False))


def checked_graph(text: str, path: str = "small.nl"):
    result = check_text(text, path)
    assert result.ok, [d.message for d in result.diagnostics]
    return build_graph(result.spec)


def shipped_graph(spec: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # paths in titles stay relative, as a user types them
    result = check_file(spec)
    assert result.ok, f"{spec} does not check: {[d.message for d in result.diagnostics]}"
    return build_graph(result.spec)


def clusters_of(dot: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Read our own DOT back: (cluster title, nesting depth) in order, and each node's cluster title."""
    clusters: list[tuple[str, int]] = []
    stack: list[str] = []
    node_cluster: dict[str, str] = {}
    pending = False
    for line in dot.splitlines():
        stripped = line.strip()
        if stripped.startswith("subgraph cluster_"):
            pending = True
        elif pending and "label=<<B>" in stripped:
            title = re.search(r"label=<<B>(.*?)</B>>", stripped).group(1)
            clusters.append((title, len(stack)))
            stack.append(title)
            pending = False
        elif stripped == "}" and stack:
            stack.pop()
        elif (match := re.match(r'"((?:[^"\\]|\\.)*)" \[shape=', stripped)) and stack:
            node_cluster[match.group(1)] = stack[-1]
    return clusters, node_cluster


def declaration(dot: str, node: str) -> str:
    """A node's declaration, from its name to the end of its (multi-line) label."""
    return re.search(rf'^\s*"{re.escape(node)}" \[.*?>\];$', dot, re.M | re.S).group(0)


def edge_lines(dot: str) -> list[str]:
    return [line for line in dot.splitlines() if re.match(r'\s*"(?:[^"\\]|\\.)*" -> "', line)]


# Golden files.

@pytest.mark.parametrize("spec", SPECS)
def test_golden_dot(spec, request, monkeypatch):
    dot = to_dot(shipped_graph(spec, monkeypatch))
    golden = GOLDEN / Path(spec).relative_to("specs").with_suffix(".dot")
    if updating(request):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(dot, encoding="utf-8")
    assert golden.exists(), f"no golden file for {spec}; run `pytest tests/test_draw.py --update-golden`"
    assert dot == golden.read_text(encoding="utf-8"), \
        f"the drawing of {spec} changed; check it, then run `pytest tests/test_draw.py --update-golden`"


def test_every_golden_file_has_a_spec(request):
    expected = {(GOLDEN / Path(spec).relative_to("specs").with_suffix(".dot")) for spec in SPECS}
    stale = sorted(path for path in GOLDEN.rglob("*.dot") if path not in expected)
    if updating(request):
        for path in stale:
            path.unlink()
        stale = []
    assert not stale, f"golden files without a spec: {[p.name for p in stale]}; rerun with --update-golden"


def test_output_is_deterministic(monkeypatch):
    first = to_dot(shipped_graph("specs/hope.nl", monkeypatch))
    assert to_dot(shipped_graph("specs/hope.nl", monkeypatch)) == first
    assert "\r" not in first and first.endswith("}\n")


# Structure: nested clusters, nodes, edges, title.

def test_frequency_groups_are_nested_clusters_slowest_outermost(monkeypatch):
    graph = shipped_graph("specs/hope.nl", monkeypatch)
    clusters, node_cluster = clusters_of(to_dot(graph))
    # the 4096-token level is longer than a sequence: the outer optimizer steps it every 4096 / (8 × 256)
    # steps, so it is slower than the outer level and encloses it
    assert clusters == [("every 2 steps", 0), ("every step (outer)", 1), ("every 64 tokens", 2),
                        ("every 16 tokens", 3), ("every 8 tokens", 4)]
    for (_, nodes), (title, _) in zip(graph.frequency_groups(), clusters):
        assert set(nodes) == {node for node, where in node_cluster.items() if where == title}
    assert node_cluster["embedding"] == node_cluster["head"] == node_cluster["outer"] == "every step (outer)"
    assert node_cluster["block.titans.M_k"] == "every 8 tokens"


def test_a_faster_group_nests_only_in_a_group_whose_period_it_divides():
    # 24 tokens is not a multiple of 16: drawn inside it, level b would read as updated at every
    # k-th update of a; they sit side by side in 48's cluster, which both divide, and 8 sits in 16's
    levels = "level a { period = 16 } level b { period = 24 } level c { period = 8 } level d { period = 40 }"
    graph = checked_graph(f"model m {{\n  dim = 16\n  layers = 1\n  block {{ cms {{ variant = independent\n"
                          f"    {levels} }} }}\n}}\ntrain {{ seq_len = 80 }}\n")
    clusters, node_cluster = clusters_of(to_dot(graph))
    assert clusters == [("every step (outer)", 0), ("every 40 tokens", 1), ("every 24 tokens", 1),
                        ("every 16 tokens", 1), ("every 8 tokens", 2)]
    assert node_cluster["block.cms.c"] == "every 8 tokens" and node_cluster["block.cms.b"] == "every 24 tokens"


def test_cluster_titles_name_steps_and_single_units():
    graph = checked_graph(SMALL_SPEC)
    clusters, _ = clusters_of(to_dot(graph))
    assert [title for title, _ in clusters] == ["every step (outer)", "every 32 tokens", "every 8 tokens",
                                                "every 4 tokens"]
    text = SMALL_SPEC.replace("level slow { period = 32 }", "level slow { period = steps(2)  update = outer }")
    clusters, _ = clusters_of(to_dot(checked_graph(text)))
    assert "every 2 steps" in [title for title, _ in clusters]


def test_modules_are_boxes_and_levels_rounded_boxes(monkeypatch):
    dot = to_dot(shipped_graph("specs/hope.nl", monkeypatch))
    declarations = {m.group(1): m.group(2) for m in re.finditer(r'^\s*"([^"]+)" \[(shape=box, style=[^,]+)', dot, re.M)}
    assert declarations["embedding"] == "shape=box, style=filled"
    assert declarations["block.cms"] == "shape=box, style=filled"
    assert declarations["block.titans.memory"] == 'shape=box, style="rounded'
    assert declarations["block.cms.slow"] == 'shape=box, style="rounded'


def test_level_label_shows_period_state_params_objective_rule_gates(monkeypatch):
    dot = to_dot(shipped_graph("specs/hope.nl", monkeypatch))
    memory = declaration(dot, "block.titans.memory")
    for fact in ("16 tokens", "4×residual_mlp[32 → 64 → 32]", "32.8k params", "l2, v̂ = M(v)",
                 "dgd+momentum, readout causal", "η: generated, α: generated, β: per token", "×2 blocks"):
        assert fact in memory, fact
    head = declaration(dot, "head")
    assert "norm + head (tied)" in head and "128 params" in head
    # a clip joins the rule (the shipped specs set none)
    clipped = build_graph(check_file(ROOT / "specs/hope.nl", ["model.block.titans.memory.clip=0.5"]).spec)
    assert "dgd+momentum+clip 0.5, readout causal" in declaration(to_dot(clipped), "block.titans.memory")


def test_every_edge_is_drawn_once_in_the_style_of_its_kind(monkeypatch):
    graph = shipped_graph("specs/hope.nl", monkeypatch)
    edges = edge_lines(to_dot(graph))
    assert len(edges) == graph.nx.number_of_edges()
    for kind, style in EDGE_STYLES.items():
        expected = sum(1 for _, _, attrs in graph.nx.edges(data=True) if attrs["kind"] == kind)
        assert sum(1 for line in edges if style in line) == expected, kind
    meta = [line for line in edges if EDGE_STYLES["meta"] in line]
    assert meta and all(("meta-learns θ₀" in line or "steps every clock tick" in line) and "style=dotted" in line
                        for line in meta)
    assert all("style=dashed" in line for line in edges if EDGE_STYLES["read"] in line)
    assert any("(k, v̂ = M(v))" in line for line in edges if EDGE_STYLES["flow"] in line)


def test_nested_cms_meta_edge_says_initial_state():
    text = SMALL_SPEC.replace("cms {", "cms {\n      variant = nested").replace(
        "level slow { period = 32 }", "level slow { period = 32  lr = 0.5 }")
    edges = edge_lines(to_dot(checked_graph(text)))
    assert any('"block.cms.slow" -> "block.cms.fast"' in line and "initial state" in line for line in edges)


def test_parts_are_laid_out_beside_their_owner(monkeypatch):
    edges = edge_lines(to_dot(shipped_graph("specs/hope.nl", monkeypatch)))
    read = next(line for line in edges if "label=<M(q)>" in line)
    assert read.lstrip().startswith('"block.titans" -> "block.titans.memory"') and "dir=back" in read


def test_title_names_the_spec_and_its_parameter_count(monkeypatch):
    graph = shipped_graph("specs/hope.nl", monkeypatch)
    dot = to_dot(graph)
    total = graph.total_params()
    assert "<B>specs/hope.nl</B>" in dot
    assert f"{human_count(total)} parameters ({total:,})" in dot
    for kind in EDGE_STYLES:
        assert f"{kind}: " in dot  # the legend


def test_optimizer_levels_and_a_file_without_a_model():
    dot = to_dot(checked_graph(SMALL_SPEC))
    assert "outer level (two_moments)" in dot and "second_moment" in dot and "in the optimizer" in dot
    no_model = to_dot(checked_graph("train { steps = 3 }", "no_model.nl"))
    assert "no model" in no_model and '"outer" [' in no_model


@pytest.mark.parametrize("spec", [spec for spec in SPECS if spec.startswith("specs/optimizers/")])
def test_an_optimizer_library_draws_its_own_optimizers(spec, monkeypatch):
    graph = shipped_graph(spec, monkeypatch)
    (optimizer,) = graph.spec.optimizers
    outer = f"optimizers.{optimizer.name}"
    levels = {f"{outer}.{level.name}" for level in optimizer.levels}
    assert set(graph.nx.nodes) == {outer, *levels}  # not train's default optimizer, which trains nothing here
    assert graph.nx.nodes[outer]["label"] == f"outer level ({optimizer.name})"
    assert {v for u, v, a in graph.nx.edges(data=True) if a["kind"] == "flow"} == levels
    dot = to_dot(graph)
    assert "outer level (adamw)" not in dot or optimizer.name == "adamw"
    for level in optimizer.levels:
        assert f"<B>{level.name}</B>" in dot and f"in the optimizer {optimizer.name}" in dot


def test_a_model_spec_that_trains_with_an_imported_optimizer_draws_it_as_the_outer_level(monkeypatch):
    graph = shipped_graph("specs/transformer_muon.nl", monkeypatch)
    assert graph.nx.nodes["outer"]["label"] == "outer level (muon)"
    assert [n for n in graph.nx.nodes if n.startswith("optimizer")] == ["optimizer.momentum"]
    assert "in the optimizer</FONT>" in declaration(to_dot(graph), "optimizer.momentum")


def test_optimizers_a_model_file_defines_but_does_not_train_with_are_drawn_apart():
    text = SMALL_SPEC.replace("optimizer two_moments {", """optimizer momentum {
  level fast { retention = 0.9 }
}

optimizer two_moments {""")
    graph = checked_graph(text)
    assert graph.nx.nodes["outer"]["label"] == "outer level (two_moments)"  # the one train uses, as before
    assert {"optimizer.momentum", "optimizer.second_moment", "optimizers.momentum",
            "optimizers.momentum.fast"} <= set(graph.nx.nodes)  # a level and an optimizer may share a name
    assert graph.nx.nodes["optimizers.momentum"]["label"] == "optimizer momentum (not used by train)"
    builtin = checked_graph(SMALL_SPEC.replace("optimizer = two_moments", "optimizer = sgd(0.1)"))
    assert builtin.nx.nodes["outer"]["label"] == "outer level (sgd)"
    assert {"optimizers.two_moments.momentum", "optimizers.two_moments.second_moment"} <= set(builtin.nx.nodes)
    assert "optimizer.momentum" not in builtin.nx.nodes


@pytest.mark.parametrize(("count", "text"), [
    (0, "0"), (999, "999"), (1000, "1k"), (34_499, "34.5k"), (262_144, "262k"), (999_499, "999k"),
    (999_500, "1M"), (1_086_680, "1.09M"), (1_200_000, "1.2M"), (2_500_000_000, "2.5B"),
])
def test_human_count(count, text):
    assert human_count(count) == text


# Escaping user text.

def odd_graph():
    graph = checked_graph(SMALL_SPEC, ODD_PATH)
    graph.nx.nodes["block.cms.fast"]["label"] = ODD_LABEL
    graph.nx.add_node(ODD_NODE, kind="module", label=ODD_LABEL, params=7, period="outer", repeat=1)
    graph.add_edge("block.cms", ODD_NODE, "data", ODD_LABEL)
    return graph


def test_labels_and_names_are_escaped():
    dot = to_dot(odd_graph())
    body = dot.split("\n", 1)[1]  # below the first line's comment, which shows the path as written
    assert "<script>" not in body and "<b>" not in body
    assert "&lt;script&gt;&quot;x&quot; &amp; 'y' → ∂ \\" in dot
    assert "odd &quot;specs&quot;/&lt;b&gt;&amp;amp; ünïcode ∂θ₀ \\ 'quoted'.nl" in dot
    assert '"block.\\"weird\\"\\\\name" [shape=box' in dot
    assert dot.splitlines()[1] == "digraph level_graph {"  # the path in the first line's comment stays on it


def test_control_characters_cannot_break_the_dot_text():
    graph = checked_graph(SMALL_SPEC, "two\nlines\x07\x7f.nl")
    dot = to_dot(graph)
    assert dot.startswith("// Level graph of two lines\ufffd\ufffd.nl,")
    assert "\x07" not in dot and "\x7f" not in dot


@needs_dot
def test_escaped_text_survives_graphviz_exactly(tmp_path):
    out = tmp_path / "odd.svg"
    assert render(to_dot(odd_graph()), out) is None
    texts = "".join(ET.parse(out).getroot().itertext())
    assert ODD_LABEL in texts.replace("\xa0", " ")
    assert "ünïcode ∂θ₀" in texts


# Rendering.

@needs_dot
def test_render_svg_with_graphviz(tmp_path, monkeypatch):
    graph = shipped_graph("specs/hope.nl", monkeypatch)
    out = tmp_path / "hope.svg"
    assert render(to_dot(graph), out) is None
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    texts = set(root.itertext())
    for level in graph.levels():
        assert graph.nx.nodes[level]["label"] in texts, level
    assert "every 2 steps" in texts


@needs_dot
@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_render_binary_formats(tmp_path, suffix):
    out = tmp_path / f"small{suffix}"
    assert render(to_dot(checked_graph(SMALL_SPEC)), out) is None
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF"}[suffix]
    assert out.read_bytes().startswith(magic)


@needs_dot
def test_graphviz_failure_is_one_line(tmp_path):
    message = render("digraph { this is not dot", tmp_path / "broken.svg")
    assert message is not None and "\n" not in message and "failed to draw" in message
    assert not (tmp_path / "broken.svg").exists()


def test_render_dot_writes_the_text(tmp_path):
    dot = to_dot(checked_graph(SMALL_SPEC))
    assert render(dot, tmp_path / "graph.dot") is None
    assert (tmp_path / "graph.dot").read_text(encoding="utf-8") == dot


def test_missing_dot_writes_the_dot_file_and_says_how_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    dot = to_dot(checked_graph(SMALL_SPEC))
    message = render(dot, tmp_path / "graph.svg")
    assert message is not None and "\n" not in message
    assert "apt-get install graphviz" in message and "graph.dot" in message
    assert (tmp_path / "graph.dot").read_text(encoding="utf-8") == dot
    assert not (tmp_path / "graph.svg").exists()


def test_missing_dot_never_replaces_a_dot_file_it_did_not_write(tmp_path, monkeypatch):
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    dot = to_dot(checked_graph(SMALL_SPEC))
    mine = tmp_path / "graph.dot"
    mine.write_text("digraph mine { a -> b }\n", encoding="utf-8")
    message = render(dot, tmp_path / "graph.svg")
    assert message is not None and "left as it is" in message and "-o NAME.dot" in message
    assert mine.read_text(encoding="utf-8") == "digraph mine { a -> b }\n"
    # a fallback nldsl wrote before (a rerun without graphviz) is replaced by the new graph
    mine.write_text(dot.replace("->", "-> "), encoding="utf-8")
    assert "wrote" in render(dot, tmp_path / "graph.svg")
    assert mine.read_text(encoding="utf-8") == dot


@pytest.mark.parametrize("name", ["graph.jpg", "graph", "graph.SVGZ"])
def test_unknown_suffix_lists_the_supported_ones(tmp_path, name):
    message = render("digraph {}", tmp_path / name)
    assert message is not None and all(suffix in message for suffix in SUPPORTED_SUFFIXES)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_message(tmp_path, monkeypatch):
    missing = tmp_path / "missing_dir"
    message = render("digraph {}", missing / "graph.dot")
    assert message is not None and message.startswith("cannot write") and "\n" not in message
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot`, and the fallback .dot cannot be written either
    message = render("digraph {}", missing / "graph.svg")
    assert message is not None and "cannot write" in message and "apt-get install graphviz" in message


@needs_dot
def test_unwritable_rendered_output_is_a_message(tmp_path):
    message = render("digraph {}", tmp_path / "missing_dir" / "graph.svg")
    assert message is not None and message.startswith("cannot write") and "\n" not in message


def test_uppercase_suffix_is_accepted(tmp_path):
    assert render("digraph {}\n", tmp_path / "graph.DOT") is None


def test_cli_graph_writes_dot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "hope.dot"
    assert main(["graph", "specs/hope.nl", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == to_dot(shipped_graph("specs/hope.nl", monkeypatch))
    assert "wrote" in capsys.readouterr().out


def test_levels_stepped_by_the_outer_optimizer_and_nested_followers_are_drawn_as_what_they_do():
    """A cms level slower than a sequence is an MLP the outer optimizer steps on the continuum
    clock, and a slower level of a nested chain only moves toward the faster one: neither learns
    from the surprise nor is read as an MLP of its own (docs/semantics.md §3.7, §4)."""
    text = SMALL_SPEC.replace("level slow { period = 32 }", "level slow { period = 256 }")
    graph = checked_graph(text)
    slow = graph.nx.nodes["block.cms.slow"]
    assert (slow["period"], slow["update"], slow["objective"]) == ("4 steps", "outer", "the model's loss")
    assert slow["rule"] == "outer optimizer, gradients summed over 4 steps"
    assert not graph.nx.has_edge("head", "block.cms.slow")  # no surprise flow
    nested = checked_graph(SMALL_SPEC.replace("cms {", "cms {\n      variant = nested").replace(
        "level slow { period = 32 }", "level slow { period = 32  lr = 0.5 }"))
    follower = nested.nx.nodes["block.cms.slow"]
    assert follower["objective"] == "none: moves toward `fast`" and "θ_fast" in follower["rule"]
    assert not nested.nx.has_edge("block.cms.slow", "block.cms")  # only the fastest level's MLP is read
    assert nested.nx.has_edge("block.cms.fast", "block.cms") and nested.nx.has_edge("head", "block.cms.fast")
    m3 = [title for title, _ in clusters_of(to_dot(build_graph(check_file(ROOT / "specs/optimizers/m3.nl").spec)))[0]]
    assert m3[:2] == ["every 16 steps", "every step (outer)"]  # M3's slow level writes every f = 16 outer steps
    frequencies = {node: attrs["frequency"] for node, attrs in graph.nx.nodes(data=True) if attrs.get("frequency")}
    assert frequencies["outer"] == 1 / (2 * 32) > frequencies["block.cms.slow"] == 1 / (4 * 2 * 32)  # per token


def test_what_never_changes_in_training_is_drawn_as_such_and_projections_show_the_gates_they_use():
    """The checker's W0704 and W0706 cases in the graph: a memory whose period passes a sequence and
    the slower levels of a nested chain that never move carry a note; a selfmod's projection memories
    learn with the memory level's gates (Eq. 88), not with their own."""
    long_memory = checked_graph(SMALL_SPEC.replace("  period = 4\n", "  period = 64\n"))
    notes = {node: attrs.get("inert") for node, attrs in long_memory.nx.nodes(data=True) if attrs.get("inert")}
    assert notes == {"block.lmm.level": "never updates within a sequence: its period passes train.seq_len = 32"}
    # still read, so its θ₀ is still learned by the outer optimizer (unlike a nested level that never moves)
    assert any(a["label"] == "meta-learns θ₀" for _, _, a in long_memory.nx.in_edges("block.lmm.level", data=True))
    nested = checked_graph(SMALL_SPEC.replace("cms {", "cms {\n      variant = nested").replace(
        "level slow { period = 32 }", "level slow { period = 64  lr = 0.5 }"))
    assert "never moves within a sequence" in nested.nx.nodes["block.cms.slow"]["inert"]
    assert "never moves within a sequence" in to_dot(nested)
    # nothing reads it: no θ₀ learned by the outer optimizer, no initial state given to a faster level
    assert not [edge for edge in nested.nx.edges("block.cms.slow") if nested.nx.edges[edge]["kind"] == "meta"]
    assert not [edge for edge in nested.nx.in_edges("block.cms.slow") if nested.nx.edges[edge]["kind"] == "meta"]
    still = checked_graph(SMALL_SPEC.replace("cms {", "cms {\n      variant = nested").replace(
        "level fast { period = 8 }", "level fast { period = 64 }").replace(
        "level slow { period = 32 }", "level slow { period = 128  lr = 0.5 }"))
    assert still.nx.nodes["block.cms.slow"]["inert"].startswith("never moves: the fastest level `fast`")
    selfmod_text = ("model m {\n  dim = 16\n  block {\n    selfmod s {\n      adaptive = [k]\n"
                    "      level memory { period = 8  lr = 0.05  momentum = 0.9 }\n"
                    "      level projections { period = 4  readout = chunk_start  lr = 0.7  values = given }\n"
                    "    }\n  }\n}\ntrain { seq_len = 32 }\n")
    selfmod = checked_graph(selfmod_text)
    projection = selfmod.nx.nodes["block.s.M_k"]
    assert projection["gates"] == "η=0.05" and "momentum" not in projection["rule"]  # no momentum asked for
    with_momentum = checked_graph(selfmod_text.replace("values = given", "values = given  momentum = 0.5"))
    assert with_momentum.nx.nodes["block.s.M_k"]["gates"] == "η=0.05, β=0.9"  # the memory level's β, not 0.5
    slow_projections = checked_graph(selfmod_text.replace("period = 4", "period = 64"))
    assert slow_projections.nx.nodes["block.s.M_k"]["inert"].startswith("never updates within a sequence")
    flows = [a["label"] for _, _, a in selfmod.nx.in_edges("block.s.M_k", data=True) if a["kind"] == "flow"]
    assert flows == ["(k, v)"]  # `values = given`: the projection regresses on v itself


def test_a_builtin_that_runs_as_levels_draws_them():
    """`train.optimizer = m3` runs as three levels (Algorithm 1) and `muon` as one orthogonalised
    momentum: the graph shows them as an `optimizer` section's levels would be shown."""
    m3 = checked_graph(SMALL_SPEC.replace("optimizer = two_moments", "optimizer = m3"))
    levels = {node: (a["period"], a["rule"]) for node, a in m3.nx.nodes(data=True)
              if a["kind"] == "optimizer_level" and node.startswith("optimizer.")}  # the file's own are drawn apart
    assert m3.nx.nodes["optimizers.two_moments.second_moment"]["rule"] == "gd"
    adam_like = checked_graph(SMALL_SPEC.replace("flow = squared_gradients", "flow = squared_gradients  "
                                                                             "bias_correction = true"))
    assert adam_like.nx.nodes["optimizer.second_moment"]["rule"] == "gd+bias correction"
    assert levels == {"optimizer.fast_momentum": ("1 step", "gd+NS5"),
                      "optimizer.slow_momentum": ("10 steps", "gd+NS5"), "optimizer.second_moment": ("1 step", "gd")}
    assert [title for title, _ in clusters_of(to_dot(m3))[0]][:2] == ["every 10 steps", "every step (outer)"]
    assert m3.nx.has_edge("outer", "optimizer.second_moment") and m3.nx.has_edge("optimizer.slow_momentum", "outer")
    muon = checked_graph(SMALL_SPEC.replace("optimizer = two_moments", "optimizer = muon"))
    assert [n for n in muon.nx.nodes if n.startswith("optimizer.")] == ["optimizer.momentum"]
    adamw = checked_graph(SMALL_SPEC.replace("optimizer = two_moments", "optimizer = adamw"))
    assert not [n for n in adamw.nx.nodes if n.startswith("optimizer.")]  # torch's own, drawn as the outer level


def test_an_optimizers_outer_node_shows_its_update_as_the_spec_writes_it():

    result = check_file(ROOT / "specs" / "optimizers" / "m3.nl")
    graph = build_graph(result.spec)
    assert graph.nx.nodes["optimizers.m3"]["update"] == "(fast + 0.5 * slow) / (sqrt(second_moment) + 1e-08)"
    assert "update u = (fast + 0.5 * slow) / (sqrt(second_moment) + 1e-08)" in to_dot(graph)
    level = ("level", "a"), ("level", "b"), ("level", "c")
    assert "readout exclusive" in to_dot(graph), "m3's slow level reads the previous write"
    muon = build_graph(check_file(ROOT / "specs" / "optimizers" / "muon.nl").spec)
    assert any(a.get("rule", "").endswith("+nesterov") for _, a in muon.nx.nodes(data=True))
    assert update_text(("sub", level[0], ("sub", level[1], level[2]))) == "a - (b - c)"
    assert update_text(("sub", ("sub", level[0], level[1]), level[2])) == "a - b - c"
    assert update_text(("div", level[0], ("mul", level[1], level[2]))) == "a / (b * c)"
    assert update_text(("mul", ("add", level[0], level[1]), ("neg", level[2]))) == "(a + b) * -c"


@pytest.mark.parametrize("update", [
    "-m ** 2 + v", "(-m) ** 2 * v", "(m ** 2) ** 3 - v", "m ** 2 ** 3 / v", "m * v ** -0.5", "-(m - v) * v",
    "-(-m) / v", "sign(0.9 * m + (1 - 0.9) * v)", "abs(m) / (sqrt(abs(v)) + 1e-08)", "m - (v - m) / -v",
    "(m + v) ** 2", "(-2) ** 3 * m + v",
])
def test_update_text_reads_back_as_the_same_update(update):
    """The graph's text of an update is spec text with the same meaning: checked again it gives the same tree."""
    def tree(text: str):
        template = "optimizer o {\n  level m { }\n  level v { flow = squared_gradients }\n  update = UPDATE\n}\n"
        result = check_text(template.replace("UPDATE", text), "o.nl")
        assert result.ok, text
        return result.spec.optimizers[0].update

    assert tree(update_text(tree(update))) == tree(update)


def test_a_negative_constant_keeps_its_brackets_as_a_base():
    # a named constant below zero is one node, not a negation: `-2 ** 3` would read as −(2³)
    assert update_text(("pow", ("const", -2.0), ("const", 3.0))) == "(-2) ** 3"
    assert update_text(("mul", ("level", "m"), ("const", -2.0))) == "m * -2"
    assert update_text(("neg", ("const", -2.0))) == "-(-2)"  # not `--2`
    assert update_text(("pow", ("level", "m"), ("const", 1 / 3))) == "m ** 0.3333333333333333"  # exact, not 0.333333
    assert update_text(("add", ("level", "m"), ("const", 1e-8))) == "m + 1e-08"


def test_a_gated_parallel_names_the_part_each_branch_plays(monkeypatch):
    # combine = gate is norm(b_0) ⊙ sigmoid(norm(b_1)); both edges read "gate" before (a newcomer's audit)
    graph = shipped_graph("specs/titans_mag.nl", monkeypatch)
    labels = {source: data["label"] for source, target, data in graph.nx.edges(data=True)
              if target == "block.mag" and source.startswith("block.mag.")}
    assert labels == {"block.mag.swa": "value", "block.mag.lmm": "sigmoid gate"}


def test_a_module_drawn_with_parts_says_its_count_includes_theirs(monkeypatch):
    # selfmod's 267k include its memories' θ₀, drawn beside it with their own counts: a reader adding
    # them up counted twice (a known gap of the last notes)
    dot = to_dot(shipped_graph("specs/hope.nl", monkeypatch))
    assert "parts included" in declaration(dot, "block.titans") and "parts included" in declaration(dot, "block.cms")
    assert "parts included" not in declaration(dot, "embedding")
    mag = to_dot(shipped_graph("specs/titans_mag.nl", monkeypatch))
    assert "parts included" in declaration(mag, "block.mag") and "parts included" not in declaration(mag, "block.mlp")


# From a mutation audit of the graph and its drawing ---------------------------------------------------

def test_a_level_on_the_continuum_clock_waits_whole_steps_rounded_up():
    """3,000 tokens at 2,048 tokens a step: the level is stepped every 2 steps, not every step."""
    graph = checked_graph("model m {\n  dim = 16\n  layers = 1\n  block { cms { level slow { period = 3000 } } }\n}\n"
                          "train { seq_len = 1024\n  batch = 2 }\n")
    assert graph.nx.nodes["block.cms.slow"]["period"] == "2 steps"


def test_an_in_context_level_as_slow_as_the_outer_step_is_drawn_inside_it():
    graph = checked_graph("model m {\n  dim = 16\n  layers = 1\n  block { cms { level a { period = 16 } } }\n}\n"
                          "train { seq_len = 16\n  batch = 1 }\n")
    assert [key for key, _ in graph.frequency_groups()] == ["outer", "16 tokens"]


def test_a_layer_whose_name_starts_another_is_not_drawn_as_its_part():
    dot = to_dot(checked_graph("model m {\n  dim = 16\n  layers = 1\n  block { mlp ab { }\n  mlp a { } }\n}\n"))
    [edge] = [line for line in dot.splitlines() if line.strip().startswith('"block.ab" -> "block.a"')]
    assert "dir=back" not in edge
    assert not [line for line in dot.splitlines() if line.strip().startswith('"block.a" -> "block.ab"')]


def test_a_negative_exponent_in_an_update_is_written_without_brackets():
    assert update_text(("pow", ("level", "m"), ("neg", ("const", 2.0)))) == "m ** -2"

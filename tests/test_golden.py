"""Golden files for two pipeline stages of every shipped spec: the AST and the level graph.

tests/golden/ast/NAME.json is `ast.Module.to_dict()` of specs/NAME.nl (spans included) and
tests/golden/graph/NAME.json is `LevelGraph.to_json()`; specs in subfolders keep their folder
(specs/optimizers/m3.nl -> tests/golden/graph/optimizers/m3.json). A change in the parser, the
checker or the graph shows up here as a diff; when it is intended, regenerate with

    python -m pytest tests/test_golden.py --update-golden

and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from conftest import REPO_ROOT, shipped_spec_paths

from nldsl.graph import build_graph

GOLDEN_DIR = Path(__file__).parent / "golden"
STAGES = ("ast", "graph")
MAX_DIFF_LINES = 60


def golden_path(stage: str, spec: str) -> Path:
    return GOLDEN_DIR / stage / Path(spec).relative_to("specs").with_suffix(".json")


def compare_with_golden(actual: str, golden: Path, update: bool) -> None:
    """Fail with a readable diff unless `actual` equals the golden file (or rewrite it on update)."""
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
        return
    shown = golden.relative_to(REPO_ROOT)
    assert golden.exists(), f"no golden file {shown}: run `python -m pytest tests/test_golden.py --update-golden`"
    expected = golden.read_text(encoding="utf-8")
    if actual != expected:
        diff = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(), f"{shown} (golden)",
                                         f"{shown} (now)", lineterm=""))
        if len(diff) > MAX_DIFF_LINES:
            diff = [*diff[:MAX_DIFF_LINES], f"... {len(diff) - MAX_DIFF_LINES} more diff lines"]
        raise AssertionError(f"output differs from {shown}; if the change is intended, run "
                             "`python -m pytest tests/test_golden.py --update-golden` and review the diff\n"
                             + "\n".join(diff))


def test_golden_ast(shipped_spec, checked_spec, update_golden):
    result = checked_spec(shipped_spec)
    assert result.module is not None, f"{shipped_spec} does not parse"
    text = json.dumps(result.module.to_dict(), indent=2, ensure_ascii=False) + "\n"
    compare_with_golden(text, golden_path("ast", shipped_spec), update_golden)


def test_golden_graph(shipped_spec, checked_spec, update_golden):
    result = checked_spec(shipped_spec)
    assert result.ok, f"{shipped_spec} does not check: {[d.message for d in result.diagnostics]}"
    compare_with_golden(build_graph(result.spec).to_json(), golden_path("graph", shipped_spec), update_golden)


def test_every_golden_file_has_a_spec(update_golden):
    expected = {golden_path(stage, spec) for stage in STAGES for spec in shipped_spec_paths()}
    stale = sorted(path for stage in STAGES for path in (GOLDEN_DIR / stage).rglob("*.json")
                   if path not in expected)
    if update_golden:
        for path in stale:
            path.unlink()
        return
    assert not stale, f"golden files without a spec: {[str(p.relative_to(GOLDEN_DIR)) for p in stale]}; " \
                      "run `python -m pytest tests/test_golden.py --update-golden`"


def test_golden_ast_keeps_every_span():
    """The AST golden files are only useful if spans are in them: a node without one is a bug."""
    for spec in shipped_spec_paths():
        path = golden_path("ast", spec)
        if not path.exists():
            continue
        stack = [json.loads(path.read_text(encoding="utf-8"))]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if "node" in node:
                    assert len(node.get("span", ())) == 4, f"{path.name}: a {node['node']} has no span"
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)

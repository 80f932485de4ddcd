"""docs/language.md is executable: its examples check, its tables match nldsl/spec.py.

Fences in the reference:
- ```nl            a complete spec: it checks with no diagnostics at all;
- ```nl fragment   a piece of a spec: it parses, alone or inside `model { … }`;
- ```nl error E0601 / ```nl warning W0701: a complete spec that reports that code;
- ```sh            every `nldsl check FILE --set …` line checks clean.
Imports in examples resolve against specs/, so they can reuse the shipped specs.

Every field of every spec class appears in backticks, and each class's attribute table (the
first table after the heading that names the class) lists exactly its fields with their defaults.
"""

from __future__ import annotations

import inspect
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from nldsl import spec as S
from nldsl.checker import LEVEL_DEFAULTS, check_file, check_text
from nldsl.diagnostics import render_text
from nldsl.parser import parse
from nldsl.source import SourceFile

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "language.md"
SPECS = ROOT / "specs"
TEXT = DOC.read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
SPEC_CLASSES = [cls for _, cls in inspect.getmembers(S, inspect.isclass)
                if issubclass(cls, S.Strict) and cls.__module__ == S.__name__ and cls not in (S.Strict, S.Kinded)]
SECTION_FIELDS = ("kind", "name")  # given by the section header or the call's name, not by an attribute


def fences(language: str) -> list[tuple[str, str, int]]:
    """(info after the language, body, line number) of every fence in that language."""
    return [(m.group(2).strip(), m.group(3), TEXT.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(TEXT) if m.group(1) == language]


def nl_blocks(kind: str) -> list[tuple[str, str, int]]:
    return [(info, body, line) for info, body, line in fences("nl") if (info.split() or [""])[0] == kind]


def table_after(heading_text: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after the heading containing `heading_text`."""
    lines = TEXT.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("#") and heading_text in line]
    assert starts, f"no heading mentions {heading_text}"
    rows = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table after the heading that mentions {heading_text}"
    return rows


def first_code(cell: str) -> str | None:
    found = re.search(r"`([^`]*)`", cell)
    return found.group(1) if found else None


def render(value: Any) -> str:
    """A default value as the reference writes it."""
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return "[" + ", ".join(render(item) for item in value) + "]"
    if isinstance(value, S.ConstantGate):
        return render(value.value)
    if isinstance(value, S.Kinded):
        given = [name for name in type(value).model_fields if name in value.model_fields_set and name != "kind"]
        arguments = ", ".join(f"{name} = {render(getattr(value, name))}" for name in given)
        return f"{value.kind}({arguments})" if arguments else value.kind
    if isinstance(value, BaseModel):
        return "{ }"
    raise AssertionError(f"no rendering for {value!r}")


def same_default(documented: str, value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(documented) == value
        except ValueError:
            return False
    return documented == render(value)


# Fields the schema requires but the checker fills in when a spec leaves them out, with what it
# fills them from (checker.py: a selfmod without `level projections` copies `level memory`).
FILLED_BY_THE_CHECKER = {"SelfModSpec.projections": "memory"}


def default_of(cls: type[BaseModel], name: str) -> Any:
    info = cls.model_fields[name]
    return info.default_factory() if info.default_factory is not None else info.default


@pytest.mark.parametrize("body", [pytest.param(body, id=f"line{line}") for _, body, line in nl_blocks("")])
def test_complete_example_checks_clean(body):
    result = check_text(body, str(DOC), base_dir=SPECS)
    assert result.ok and not result.diagnostics, render_text(result.diagnostics, result.sources)


@pytest.mark.parametrize("info,body", [pytest.param(info, body, id=f"line{line}")
                                       for info, body, line in nl_blocks("error") + nl_blocks("warning")])
def test_diagnostic_example_reports_its_code(info, body):
    severity, code = info.split()
    result = check_text(body, str(DOC), base_dir=SPECS)
    assert (code, severity) in {(d.code, d.severity) for d in result.diagnostics}, \
        render_text(result.diagnostics, result.sources)


@pytest.mark.parametrize("body", [pytest.param(body, id=f"line{line}") for _, body, line in nl_blocks("fragment")])
def test_fragment_parses(body):
    alone = parse(SourceFile.from_text(str(DOC), body))
    inside = parse(SourceFile.from_text(str(DOC), "model {\n" + body + "\n}\n"))
    assert (alone[0] is not None and not alone[1]) or (inside[0] is not None and not inside[1])


def test_every_nl_fence_is_classified():
    for info, _, line in fences("nl"):
        assert (info.split() or [""])[0] in ("", "fragment", "error", "warning"), f"line {line}: ```nl {info}"


@pytest.mark.parametrize("command", [pytest.param(line, id=line) for _, body, _ in fences("sh")
                                     for line in body.splitlines() if line.startswith("nldsl check ")])
def test_override_example_checks_clean(command):
    words = shlex.split(command.split("#")[0])[2:]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    files = [w for i, w in enumerate(words) if w != "--set" and (i == 0 or words[i - 1] != "--set")]
    for file in files:
        result = check_file(ROOT / file, overrides)
        assert result.ok and not result.diagnostics, render_text(result.diagnostics, result.sources)


def test_every_field_is_named():
    missing = {f"{cls.__name__}.{name}" for cls in SPEC_CLASSES for name in cls.model_fields
               if f"`{name}`" not in TEXT}
    assert not missing


def test_every_option_is_named():
    options = set()
    for cls in SPEC_CLASSES:
        for name, info in cls.model_fields.items():
            for arg in _flatten(info.annotation):
                if typing.get_origin(arg) is typing.Literal and name != "kind":
                    options.update(str(choice) for choice in typing.get_args(arg))
    options |= set(S.KINDED_VALUES) | set(S.SUBLAYER_SPECS)
    assert not {option for option in options if f"`{option}" not in TEXT}


@pytest.mark.parametrize("cls", [c for c in SPEC_CLASSES if set(c.model_fields) - set(SECTION_FIELDS)],
                         ids=lambda cls: cls.__name__)
def test_attribute_table_matches_the_class(cls):
    rows = table_after(f"`{cls.__name__}`")
    header, body = rows[0], rows[2:]
    default_column = next(i for i, cell in enumerate(header) if cell.lower() == "default")
    documented = {first_code(row[0]): first_code(row[default_column]) for row in body}
    fields = [name for name in cls.model_fields if name not in SECTION_FIELDS]
    assert set(documented) == set(fields)
    wrong = {name: (documented[name], render(default_of(cls, name))) for name in fields
             if not same_default(documented[name] or "", default_of(cls, name))
             and documented[name] != FILLED_BY_THE_CHECKER.get(f"{cls.__name__}.{name}")}
    assert not wrong, "documented default vs spec.py"


def test_context_defaults_table():
    rows = table_after("Context defaults")[2:]
    documented = {(first_code(row[0]), first_code(row[1])): first_code(row[2]) for row in rows}
    expected = {(f"{parent}.{name}" if name else parent, key): value
                for (parent, name), values in LEVEL_DEFAULTS.items() for key, value in values.items()}
    assert set(documented) == set(expected)
    assert not {key for key, value in expected.items() if not same_default(documented[key] or "", value)}


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, tuple):
        return [leaf for arg in typing.get_args(annotation) if arg is not Ellipsis for leaf in _flatten(arg)]
    return [annotation]


FREE_LAYOUT = "# `;` and newlines are interchangeable"  # the example of §1 shows layouts fmt rewrites


@pytest.mark.parametrize("doc", ["README.md", "docs/language.md"])
def test_examples_are_in_the_layout_fmt_writes(doc):
    # a newcomer formatting an example saw it change (an audit)
    from nldsl.fmt import format_source

    text = (ROOT / doc).read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        body = match.group(3)
        if match.group(1) != "nl" or body.startswith(FREE_LAYOUT):
            continue
        formatted, _ = format_source(body)
        line = text[:match.start()].count("\n") + 1
        assert formatted in (None, body), f"{doc}:{line}: `nldsl fmt` would change this example"


def test_diagnostics_table_lists_every_code_with_its_title():
    from nldsl.error_codes import CODES
    rows = table_after("Diagnostics")[2:]
    assert {first_code(row[0]) or row[0]: row[1] for row in rows} == {code: e.title for code, e in CODES.items()}


def test_every_command_line_flag_is_named_in_the_docs():
    """A flag of any command (`--baseline`, `--fsdp`, …) is named in the README or a page of docs/."""
    import argparse

    from nldsl.cli import build_parser
    pages = "\n".join(path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    flags: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(flag for flag in action.option_strings if flag.startswith("--") and flag != "--help")
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
    walk(build_parser())
    assert flags and not {flag for flag in flags if not re.search(re.escape(flag) + r"\b", pages)}

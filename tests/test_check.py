"""The checker against invalid specs that carry their expected diagnostics inline, and the catalog.

Each `tests/invalid/*.nl` is named after the code it is about (`E0203_unknown_attribute.nl`) and
says what the checker must report in `#!` comments:

    perod = 16             #! E0203 unknown attribute `perod`     on this line
    #! E0101:7 unexpected number                                  on the next line that is not
    dim 64                                                        an annotation; column 7
    #! elsewhere E0105 is not valid UTF-8                         not on a line of this file
    #! set train.steps=0                                          check with `--set train.steps=0`

The text after the code is a substring of the message. The set of (line, code) pairs reported
must equal the annotated set exactly: a missing diagnostic, an extra one (a cascade) or a moved
one fails. `tests/invalid/lib/` holds files the invalid specs import.

The catalog (`nldsl/error_codes.py`) is checked against the source: every code the package emits
has an entry and every entry is emitted; each entry's example produces its code (and nothing
else) and its fixed version checks without a single diagnostic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from nldsl.checker import check_file, check_text
from nldsl.diagnostics import Diagnostic
from nldsl.error_codes import CODES, explain

INVALID_DIR = Path(__file__).parent / "invalid"
INVALID_SPECS = sorted(INVALID_DIR.glob("*.nl"))
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "nldsl"

ANNOTATION = re.compile(r"#!\s*(?P<body>.*?)\s*$")
EXPECTATION = re.compile(r"(?P<elsewhere>elsewhere\s+)?(?P<code>[EW]\d{4})(?::(?P<column>\d+))?\s*(?P<text>.*)")
CODE_IN_SOURCE = re.compile(r"""["']([EW]\d{4})["']""")


@dataclass(frozen=True)
class Expected:
    line: int | None  # None: the diagnostic has no line in this file (no span, an override, an import)
    code: str
    column: int | None
    text: str  # a substring of the message
    written_at: int  # the line of the annotation, for failure messages


def read_annotations(path: Path) -> tuple[list[Expected], list[str]]:
    """The expected diagnostics and the `--set` overrides written in a file's `#!` comments."""
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    expected: list[Expected] = []
    overrides: list[str] = []
    pending: list[tuple[int, str]] = []  # standalone annotations waiting for the line they precede
    for number, line in enumerate(lines, start=1):
        match = ANNOTATION.search(line)
        standalone = match is not None and not line[: match.start()].strip()
        if match is None or not standalone:
            for written_at, body in pending:
                expected.append(_expectation(body, number, written_at, path))
            pending.clear()
        if match is None:
            continue
        body = match["body"]
        if body.startswith("set "):
            overrides.append(body.removeprefix("set ").strip())
        elif body.startswith("elsewhere "):
            expected.append(_expectation(body, None, number, path))
        elif standalone:
            pending.append((number, body))
        else:
            expected.append(_expectation(body, number, number, path))
    assert not pending, f"{path.name}: annotations at the end of the file point at no line"
    return expected, overrides


def _expectation(body: str, line: int | None, written_at: int, path: Path) -> Expected:
    match = EXPECTATION.fullmatch(body)
    assert match, f"{path.name}:{written_at}: cannot read the annotation `#! {body}`"
    column = int(match["column"]) if match["column"] else None
    return Expected(line, match["code"], column, match["text"], written_at)


def _where(diagnostic: Diagnostic, path: Path) -> int | None:
    span = diagnostic.span
    return span.line if span is not None and span.path == str(path) else None


def _describe(diagnostics: list[Diagnostic], path: Path) -> str:
    return "\n".join(f"  line {_where(d, path)}: {d.code} {d.message}" for d in diagnostics) or "  (nothing)"


def test_invalid_specs_exist():
    assert INVALID_SPECS, f"no invalid specs found in {INVALID_DIR}"


@pytest.mark.parametrize("path", INVALID_SPECS, ids=lambda p: p.stem)
def test_invalid_spec(path: Path):
    expected, overrides = read_annotations(path)
    assert expected, f"{path.name} has no `#!` annotations"
    assert path.name[:5] in {e.code for e in expected}, f"{path.name} is named after a code it does not expect"
    result = check_file(path, overrides)
    report = f"{path.name}: reported\n{_describe(result.diagnostics, path)}"
    reported = {(_where(d, path), d.code) for d in result.diagnostics}
    assert reported == {(e.line, e.code) for e in expected}, report
    for e in expected:
        candidates = [d for d in result.diagnostics if (_where(d, path), d.code) == (e.line, e.code)]
        assert any(e.text in d.message for d in candidates), \
            f"annotation at line {e.written_at}: no {e.code} message contains {e.text!r}\n{report}"
        if e.column is not None:
            assert any(d.span is not None and d.span.column == e.column for d in candidates), \
                f"annotation at line {e.written_at}: no {e.code} at column {e.column}\n{report}"
    assert not result.ok or all(d.severity == "warning" for d in result.diagnostics)


def test_every_code_has_an_invalid_spec():
    covered = {path.name[:5] for path in INVALID_SPECS}
    assert sorted(set(CODES) - covered) == []


def _emitted_codes() -> set[str]:
    codes: set[str] = set()
    for source in PACKAGE_DIR.rglob("*.py"):
        if source.name != "error_codes.py":
            codes.update(CODE_IN_SOURCE.findall(source.read_text(encoding="utf-8")))
    return codes


def test_catalog_matches_the_codes_the_package_emits():
    emitted = _emitted_codes()
    assert sorted(emitted - set(CODES)) == [], "codes emitted without a catalog entry"
    assert sorted(set(CODES) - emitted) == [], "catalog entries that nothing emits"


@pytest.mark.parametrize("code", sorted(CODES))
def test_catalog_entry(code: str, tmp_path: Path):
    entry = CODES[code]
    assert entry.code == code
    assert entry.title == entry.title.lower() and not entry.title.endswith(".")
    assert entry.explanation.strip()
    changed = (entry.example, entry.overrides, entry.encoding) != (entry.fixed, entry.fixed_overrides, "utf-8")
    assert changed, "the fixed version must differ from the example"
    example = tmp_path / "example.nl"
    example.write_bytes(entry.example.encode(entry.encoding))
    result = check_file(example, entry.overrides)
    assert {d.code for d in result.diagnostics} == {code}, _describe(result.diagnostics, example)
    assert all(d.severity == entry.severity for d in result.diagnostics)
    example.write_bytes(entry.fixed.encode("utf-8"))
    fixed = check_file(example, entry.fixed_overrides)
    assert fixed.ok and fixed.diagnostics == [], _describe(fixed.diagnostics, example)


def test_explain_shows_the_explanation_and_both_versions():
    text = explain("e0203")
    entry = CODES["E0203"]
    assert text.startswith("error[E0203]: unknown attribute")
    assert "perod = 16" in text and "period = 16" in text
    assert all(line.startswith("    ") for line in text.split("rejected by")[1].splitlines()[2:6])
    assert explain("W0702").startswith("warning[W0702]")
    assert "--set widht=128" in explain("E0206")
    assert entry.title in text


def test_explain_unknown_code():
    with pytest.raises(KeyError):
        explain("E9999")


# Checks that need files written on the fly --------------------------------------------------

def _import_chain(directory: Path, length: int) -> Path:
    """`chain{length}.nl` imports `chain{length-1}.nl` … down to `chain0.nl`; returns the top file."""
    (directory / "chain0.nl").write_text("const _depth = 0\n", encoding="utf-8")
    for index in range(1, length + 1):
        (directory / f"chain{index}.nl").write_text(
            f'import "chain{index - 1}.nl" as below\nconst _depth = below._depth + 1\n', encoding="utf-8")
    return directory / f"chain{length}.nl"


def test_imports_nested_to_the_documented_depth_check(tmp_path: Path):
    from nldsl.checker import MAX_IMPORT_DEPTH

    result = check_file(_import_chain(tmp_path, MAX_IMPORT_DEPTH))
    assert result.ok and result.diagnostics == [], _describe(result.diagnostics, tmp_path)


def test_imports_nested_too_deep_are_not_a_cycle(tmp_path: Path):
    from nldsl.checker import MAX_IMPORT_DEPTH

    result = check_file(_import_chain(tmp_path, MAX_IMPORT_DEPTH + 1))
    assert [(d.code, d.message) for d in result.diagnostics] == [
        ("E0205", f"imports nested more than {MAX_IMPORT_DEPTH} deep")]


@pytest.mark.parametrize("order", ["import first", "definition first"])
def test_a_name_brought_by_an_imports_own_import_clashes_whatever_the_order(tmp_path: Path, order: str):
    (tmp_path / "b.nl").write_text("const x = 3\n")
    (tmp_path / "a.nl").write_text('import "b.nl"\nconst y = 1\n')
    (tmp_path / "c.nl").write_text('import "b.nl"\n')
    lines = ['import "a.nl"', "const x = 1"]
    (tmp_path / "t.nl").write_text("\n".join(lines if order == "import first" else lines[::-1]) + "\n")
    result = check_file(tmp_path / "t.nl")
    errors = [(d.code, d.message) for d in result.diagnostics if d.severity == "error"]
    assert len(errors) == 1 and errors[0][0] == "E0202"
    assert errors[0][1].startswith("`x` is defined twice (also in `") and errors[0][1].endswith("/b.nl`)")  # its file
    # one file reached along two paths (a.nl and c.nl both import b.nl) defines its names once
    (tmp_path / "diamond.nl").write_text('import "a.nl"\nimport "c.nl"\nconst w = x + y\n')
    assert check_file(tmp_path / "diamond.nl").ok


# Checks of single behaviours on small specs ---------------------------------------------------

UNNAMED_PARTS = """
model {
  dim = 32
  block {
    mlp { }
    attention { }
    mlp { }
    cms {
      level { period = 16 }
      level { period = 64 }
    }
  }
}
optimizer momentum_and_sign {
  level { retention = 0.9 }
  level last { flow = level1 }
  update = last
}
train { optimizer = momentum_and_sign }
"""


def _messages(result) -> list[tuple[str, str, str | None]]:
    return [(d.code, d.message, d.help) for d in result.diagnostics]


def test_overrides_reach_unnamed_layers_and_levels_by_their_documented_names():
    result = check_text(UNNAMED_PARTS, overrides=[
        "model.block.mlp_2.expansion=2", "model.block.cms.level2.period=32", "train.optimizer.level1.retention=0.5"])
    assert result.ok, _messages(result)
    sublayers = result.spec.model.block.sublayers
    assert [(layer.name, getattr(layer, "expansion", None)) for layer in sublayers] == [
        ("mlp", 4.0), ("attention", None), ("mlp_2", 2.0), ("cms", None)]
    assert [level.period for level in sublayers[3].levels] == [16, 32]
    assert [level.retention for level in result.spec.train.optimizer.levels] == [0.5, 1.0]


def test_ambiguous_override_lists_the_names_to_choose_from():
    result = check_text(UNNAMED_PARTS, overrides=["train.optimizer.level.retention=0.5"])
    assert _messages(result) == [(
        "E0206", "override path `train.optimizer.level.retention`: `level` is ambiguous",
        "several `level` sections are here; name one of them: `level1`, `last`")]


@pytest.mark.parametrize("override", ["dim=32}", "dim=32 heads=3"])
def test_override_with_text_after_its_value_gets_override_help(override: str):
    result = check_text("const dim = 64\nmodel { dim = dim; block { mlp { } } }\n", overrides=[override])
    [(code, message, help)] = _messages(result)
    assert code == "E0101" and message.startswith("in override: unexpected")
    assert "a section" not in help and "give each override its own `--set`" in help


def test_list_given_to_a_single_option_says_so():
    spec = "model { dim = 64; block { memory { level { period = 16; objective = [l2] } } } }\n"
    [(code, message, help)] = _messages(check_text(spec))
    assert (code, message) == ("E0303", "`[l2]` is not a valid `objective`")
    assert help.startswith("`objective` is one option, not a list")


def test_sections_nested_too_deep_get_help_about_sections_not_expressions():
    deep = "parallel { combine = sum mlp { } " * 70 + "mlp { }" + " }" * 70
    result = check_text(f"model {{ dim = 8 block {{ {deep} }} }}\n", "deep.nl")
    [diagnostic] = result.diagnostics
    assert diagnostic.code == "E0104" and "sections" in diagnostic.help and "expression" not in diagnostic.help


def test_python_keyword_overrides_are_written_as_the_spec_language_writes_them():
    from nldsl.loader import override_strings

    assert override_strings(dim=64, train__steps=True, name='a "b"', adaptive=["k", "v"], gates=(1, 0.5),
                            momentum=None) == [
        "dim=64", "train.steps=true", 'name="a \\"b\\""', 'adaptive=["k", "v"]', "gates=[1, 0.5]", "momentum=none"]
    result = check_text(UNNAMED_PARTS, overrides=override_strings(model__block__cms__level2__period=32))
    assert result.ok, _messages(result)


@pytest.mark.parametrize(("target", "reason"), [
    ("a\0b.nl", "the path holds a NUL character"), ("folder", "it is a folder"),
    ("loop.nl", ""),  # Python 3.11 fails to resolve it, later versions to read it
    ("/dev/zero", "it is not a regular file"), ("missing.nl", "no such file")])
def test_an_import_that_cannot_be_read_is_a_diagnostic_not_a_crash(tmp_path, target, reason):
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop.nl").symlink_to(tmp_path / "loop2.nl")
    (tmp_path / "loop2.nl").symlink_to(tmp_path / "loop.nl")
    result = check_text(f'import "{target}"\nmodel {{ dim = 8; block {{ mlp {{ }} }} }}\n', base_dir=tmp_path)
    [(code, message, _)] = _messages(result)
    assert code == "E0205" and message.startswith(f"cannot import `{target}`: {reason}")


def test_an_endless_or_huge_spec_file_is_refused_before_it_fills_the_memory():
    from nldsl.checker import check_file

    [diagnostic] = check_file("/dev/zero").diagnostics
    assert diagnostic.code == "E0105" and "larger than 16,777,216 bytes" in diagnostic.message


def test_the_spec_hash_does_not_depend_on_the_working_folder(tmp_path, monkeypatch):
    from nldsl.checker import check_file

    (tmp_path / "specs").mkdir()
    (tmp_path / "z.nl").write_text("const width = 16\n")
    (tmp_path / "specs/a.nl").write_text("block b { mlp { } }\n")
    (tmp_path / "specs/root.nl").write_text(
        'import "a.nl"\nimport "../z.nl"\nmodel { dim = width; block from b { } }\ntrain { steps = 1 }\n')
    monkeypatch.chdir(tmp_path)
    from_above = check_file("specs/root.nl").spec.sha256
    monkeypatch.chdir(tmp_path / "specs")
    assert check_file("root.nl").spec.sha256 == from_above


def test_control_characters_of_a_spec_are_escaped_in_diagnostics_and_the_caret_still_fits():
    from nldsl.diagnostics import render_text

    result = check_text('model { dim = 8; block { mlp { expansion = "\x1b[31mX\x07" } } }\n', path="esc.nl")
    text = render_text(result.diagnostics, result.sources)
    assert "\x1b" not in text and "\x07" not in text and 'got "\\x1b[31mX\\x07"' in text
    source_line, caret_line = [line for line in text.splitlines() if line.startswith(("1 |", "  |"))][-2:]
    start = caret_line.index("^")
    assert source_line[start:start + caret_line.count("^")] == '"\\x1b[31mX\\x07"'


@pytest.mark.parametrize("digits", ["１６", "١٦"])
def test_numbers_take_ascii_digits_only(digits):
    [(code, message, _)] = _messages(check_text(f"model {{ dim = {digits}; block {{ mlp {{ }} }} }}\n"))
    assert code == "E0102" and message == f"unexpected character `{digits[0]}`"


def test_an_overridden_constant_reaches_the_constants_other_files_compute_from_it(tmp_path):
    from nldsl.checker import check_file

    (tmp_path / "base.nl").write_text("const dim = 64\n")
    (tmp_path / "mid.nl").write_text('import "base.nl"\nconst heads = dim / 16\n'
                                     "block blk { attention { heads = heads } mlp { } }\n")
    (tmp_path / "root.nl").write_text('import "mid.nl"\nmodel { dim = dim; block from blk { } }\n')
    result = check_file(tmp_path / "root.nl", ["dim=32"])
    assert result.ok, _messages(result)
    assert result.spec.model.dim == 32 and result.spec.model.block.sublayers[0].heads == 2


@pytest.mark.parametrize("layers", ["mlp { } attention mlp { heads = 2 }", "attention mlp { heads = 2 } mlp { }"])
def test_an_unnamed_layer_avoids_the_names_written_in_its_block_in_any_order(layers):
    result = check_text(f"model {{ dim = 8; block {{ {layers} }} }}\n",
                        overrides=["model.block.mlp.heads=4", "model.block.mlp_2.expansion=2"])
    assert result.ok, _messages(result)
    by_name = {layer.name: layer for layer in result.spec.model.block.sublayers}
    assert by_name["mlp"].kind == "attention" and by_name["mlp"].heads == 4
    assert by_name["mlp_2"].kind == "mlp" and by_name["mlp_2"].expansion == 2


def test_a_long_flat_chain_of_operators_is_told_apart_from_nested_groups():
    chain = check_text("const _x = " + " + ".join(["1"] * 70) + "\n")
    groups = check_text("const _x = " + "(" * 70 + "1" + ")" * 70 + "\n")
    [(code, message, help)] = _messages(chain)
    assert code == "E0104" and "each operator of a chain" in message and help.startswith("split the chain")
    [(code, message, help)] = _messages(groups)
    assert code == "E0104" and "chain" not in message and help == "flatten the expression with named constants"


@pytest.mark.parametrize("text", ["const a = 1\n@\n", "model { dim = 8 }\n$x\n"])
def test_a_character_the_language_lacks_is_said_so_rather_than_guessing_what_may_follow(text):
    [(code, message, help)] = _messages(check_text(text))
    assert code == "E0102" and message.startswith("unexpected character")
    assert help.startswith("the language has no such character")


def test_an_override_of_an_imported_constant_reads_names_in_the_root_file(tmp_path):
    from nldsl.checker import check_file

    (tmp_path / "base.nl").write_text("const dim = 64\n")
    (tmp_path / "root.nl").write_text('import "base.nl"\nconst width = 48\nmodel { dim = dim; block { mlp { } } }\n')
    result = check_file(tmp_path / "root.nl", ["dim=width"])
    assert result.ok and not result.diagnostics, _messages(result)
    assert result.spec.model.dim == 48
    assert check_file(tmp_path / "root.nl", ["dim=dim // 2"]).spec.model.dim == 32

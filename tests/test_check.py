"""The checker against invalid specs that carry their expected diagnostics inline, and the catalog.

Each `tests/invalid/*.nl` is named after the code it is about (`E0203_unknown_attribute.nl`) and
says what the checker must report in `#!` comments:

    perod = 16             #! E0203 unknown attribute `perod`     on this line
    #! E0101:7 unexpected number                                  on the next line that is not
    dim 64                                                        an annotation; column 7
    #! elsewhere E0201 unknown name                               not on a line of this file
    #! set train.steps=0                                          check with `--set train.steps=0`

The text after the code is a substring of the message. The set of (line, code) pairs reported
must equal the annotated set exactly: a missing diagnostic, an extra one (a cascade) or a moved
one fails. `tests/invalid/lib/` holds files the invalid specs import.

The catalog (`nldsl/error_codes.py`) is checked against the source: every code the package emits
has an entry and every entry is emitted; each entry's example produces its code (and nothing
else) and its fixed version checks without a single diagnostic.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nldsl.checker import check_file, check_text
from nldsl.diagnostics import Diagnostic, SpecWarning
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
    assert errors[0][1].startswith("`x` is defined twice")
    assert "/b.nl`" in errors[0][1], "the file that defines it"
    if order == "definition first":  # the import is the second definition: the first is this file's own
        assert errors[0][1].startswith("`x` is defined twice: in this file and in `") and errors[0][1].endswith(
            "/b.nl`, which `a.nl` imports")
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


def test_sections_that_inherit_twice_per_line_are_refused_in_bounded_time():
    # each line inherits two copies of the line before: 15 lines of 60 bytes expand into 2^15
    # sections, which took seconds per line added before the expansion was counted
    lines = "".join(f"parallel p{i} {{ parallel a from p{i - 1} {{ }} parallel b from p{i - 1} {{ }} }}\n"
                    for i in range(1, 16))
    text = (f"parallel p0 {{ mlp {{ }} mlp {{ }} }}\n{lines}"
            "model m { dim = 8\n block { parallel from p15 { } } }\n")
    started = time.perf_counter()
    result = check_text(text, "doubling.nl")
    assert time.perf_counter() - started < 2
    [diagnostic] = [d for d in result.diagnostics if d.code == "E0104"]
    assert "expand into more than 10,000" in diagnostic.message and 2 <= diagnostic.span.line <= 16  # a `from`


def test_hints_name_what_is_there():
    """The help of three errors a newcomer meets: a misspelt attribute in an override path, an
    invalid option (its did-you-mean and the valid ones), an update reading a level that is not there."""
    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    [path] = check_file(hope, ["train.optimzer.lr=1"]).diagnostics
    assert path.code == "E0206" and path.help == "did you mean `optimizer`?"
    [option] = check_text("model m {\n  dim = 16\n  block { selfmod { adaptive = [k, beta]\n"
                          "    level memory { } level projections { readout = chunk_start } } }\n}\n",
                          "a.nl").diagnostics
    assert option.help == "did you mean `eta`? expected one of: k, v, q, eta, alpha"
    text = ("optimizer o {\n  level m { }\n  level v { flow = squared_gradients }\n  update = m / sqrt(vv)\n}\n"
            "model m {\n  dim = 16\n  block { mlp { } }\n}\ntrain { optimizer = o }\n")
    [update] = [d for d in check_text(text, "o.nl").diagnostics if d.code == "E0201"]
    assert update.help == "did you mean `v`? its levels: `m`, `v`"
    # the unknown name is the one mistake: the levels it leaves unread are not reported besides (E0506)
    assert [d.code for d in check_text(text.replace("m / sqrt(vv)", "gradients"), "o.nl").diagnostics
            if d.severity == "error"] == ["E0201"]
    for reads, hint in (("gradients", "a level that passes the gradients through reads it (`level g { flow = "
                                      "gradients  retention = 0 }`)"),
                        ("step", "the step counter is not readable: Adam's bias correction is the level option")):
        [update] = [d for d in check_text(text.replace("m / sqrt(vv)", f"m + {reads}"), "o.nl").diagnostics
                    if d.code == "E0201"]
        assert hint in update.help, update.help


def test_heads_that_do_not_divide_because_of_an_override_name_it():
    result = check_file(PACKAGE_DIR.parent / "specs/hope.nl", ["heads=10"])
    [diagnostic] = [d for d in result.diagnostics if d.code == "E0503"]
    assert diagnostic.span.path.endswith("hope.nl") and "the value comes from `--set heads=10`" in diagnostic.help


def test_a_width_that_heads_do_not_divide_because_of_an_override_names_it():
    """The error points at the layer's `heads`, so the help says where the width came from."""
    transformer = PACKAGE_DIR.parent / "specs/transformer.nl"
    for overrides, note in ((["dim=30"], "(the width comes from `--set dim=30`)"),
                            (["model.dim=30"], "(the width comes from `--set model.dim=30`)"),
                            (["dim=36", "heads=12"],
                             "(the value comes from `--set heads=12`; the width comes from `--set dim=36`)")):
        [diagnostic] = [d for d in check_file(transformer, overrides).diagnostics if d.code == "E0503"]
        assert diagnostic.span.path.endswith("transformer.nl") and diagnostic.help.endswith(note), diagnostic.help
    [diagnostic] = check_file(transformer, ["model.block.attention.heads=7"]).diagnostics
    assert diagnostic.span.path == "<--set 1>" and "comes from" not in diagnostic.help, "the error is at the --set"


def test_python_keyword_overrides_are_written_as_the_spec_language_writes_them():
    from nldsl.loader import override_strings

    assert override_strings(dim=64, train__steps=True, name='a "b"', adaptive=["k", "v"], gates=(1, 0.5),
                            momentum=None) == [
        "dim=64", "train.steps=true", 'name="a \\"b\\""', 'adaptive=["k", "v"]', "gates=[1, 0.5]", "momentum=none"]
    result = check_text(UNNAMED_PARTS, overrides=override_strings(model__block__cms__level2__period=32))
    assert result.ok, _messages(result)


def test_a_problem_in_an_imported_level_names_the_section_that_uses_it(tmp_path):
    (tmp_path / "lib.nl").write_text("level mem {\n  state = linear\n  rule = dgdx\n}\n")
    (tmp_path / "main.nl").write_text('import "lib.nl" as lib\nmodel m {\n  dim = 16\n  block {\n'
                                      "    memory a {\n      level from lib.mem { }\n    }\n  }\n}\n")
    [error] = _errors(check_file(tmp_path / "main.nl"))
    assert (error.code, error.span.path, error.span.line) == ("E0303", str(tmp_path / "lib.nl"), 3)
    assert error.notes == (f"used by `model.block.a.level` at {tmp_path / 'main.nl'}:6",)
    assert not _errors(check_file(tmp_path / "lib.nl"))[0].notes, "checked alone, nothing imports it"


def test_a_problem_in_an_imported_optimizer_names_the_train_section_that_uses_it(tmp_path):
    (tmp_path / "opt.nl").write_text("optimizer mine {\n  level m { retention = 0.9 }\n  level v { }\n"
                                     "  update = m / vv\n}\n")
    (tmp_path / "main.nl").write_text('import "opt.nl" as opt\nmodel { dim = 16\n  block { mlp { } } }\n'
                                      "train {\n  optimizer = opt.mine\n}\n")
    [error] = _errors(check_file(tmp_path / "main.nl"))
    assert (error.code, error.span.path, error.span.line) == ("E0201", str(tmp_path / "opt.nl"), 4)
    assert error.notes == (f"used by `train.optimizer` at {tmp_path / 'main.nl'}:5",)
    # HOPE's memory, its projections and their templates all inherit Titans' level: the note names
    # the first, the line that imports it, and counts the rest
    for name in ("hope.nl", "titans_lmm.nl"):
        (tmp_path / name).write_text((PACKAGE_DIR.parent / "specs" / name).read_text())
    lmm = tmp_path / "titans_lmm.nl"
    lmm.write_text(lmm.read_text().replace("  objective = l2", "  objective = l3"))
    [error] = _errors(check_file(tmp_path / "hope.nl"))
    assert error.notes == (f"used by `hope_memory` at {tmp_path / 'hope.nl'}:17 (and 4 more sections)",)


def test_a_problem_of_how_a_level_is_used_names_the_use_that_has_it(tmp_path):
    # `objective = dot` is fine in a memory and wrong in a cms level: the note named the first use,
    # a memory that is fine (a newcomer's audit); a definition in the same file had no note at all
    definition = "level dotmem {\n  state = linear\n  objective = dot\n}\n"
    uses = ("model m {\n  dim = 16\n  block {\n    memory a { level from DEF { } }\n    cms {\n"
            "      level c from DEF { period = 4 }\n      level d from DEF { period = 8 }\n    }\n  }\n}\n")
    (tmp_path / "lib.nl").write_text(definition)
    (tmp_path / "main.nl").write_text('import "lib.nl" as lib\n' + uses.replace("DEF", "lib.dotmem"))
    (tmp_path / "same.nl").write_text(definition + uses.replace("DEF", "dotmem"))
    for name, line in (("main.nl", 7), ("same.nl", 10)):
        [error] = _errors(check_file(tmp_path / name))
        assert (error.code, error.span.line) == ("E0601", 3) and "no value stream" in error.message
        assert error.notes == (f"found where `model.block.cms.c` at {tmp_path / name}:{line} uses it (and 1 more use)",)
    # a problem every use has names the first use, as before
    (tmp_path / "all.nl").write_text(definition.replace("linear", "linearr") + uses.replace("DEF", "dotmem"))
    [error] = _errors(check_file(tmp_path / "all.nl"))
    assert error.notes == (f"used by `model.block.a.level` at {tmp_path / 'all.nl'}:8 (and 2 more sections)",)


def test_an_override_of_an_aliased_import_says_why_it_cannot_reach_it(tmp_path):
    (tmp_path / "lib.nl").write_text("const width = 16\n")
    (tmp_path / "main.nl").write_text('import "lib.nl" as lib\nmodel m {\n  dim = lib.width\n  block { mlp { } }\n}\n')
    [error] = _errors(check_file(tmp_path / "main.nl", ["lib.width=32"]))
    assert error.code == "E0206" and error.help.startswith("`lib` is a file imported with `as`, whose constants")
    [error] = _errors(check_file(tmp_path / "main.nl", ["lib.depth=32"]))
    assert error.help == "an override sets a constant or a path starting `model.…`, `train.…`"


def test_attributes_separated_by_commas_are_told_the_separators():
    text = "model m {\n  dim = 16\n  block { memory { level { period = 4, lr = 0.1 } } }\n}\n"
    [error] = check_text(text).diagnostics
    assert (error.code, error.message, error.span.line, error.span.column) == ("E0101", "unexpected `,`", 3, 38)
    assert error.help.endswith("; attributes are separated by a new line or `;`, not `,`")
    [error] = check_text("const x = [1, 2\nmodel m { dim = 16 }\n").diagnostics
    assert error.help == "expected `,` or `]`", "a comma that may follow is not the mistake"


@pytest.mark.parametrize("gate, ok", [("lr = per_head(0)", False), ("retention = per_head(1.0)", False),
                                      ("momentum = per_head(0)", False), ("retention = per_head(0)", False),
                                      ("lr = per_head(0.01)", True), ("retention = per_head(0.999)", True)])
def test_a_per_head_gate_may_not_start_where_its_logit_is_infinite(gate, ok):
    # per_head(0) for lr gave a logit clamped at −18.4, whose gradient is ~1e-8: a gate that never learned
    result = check_text(f"model m {{\n  dim = 16\n  block {{ memory {{ heads = 2; level {{ {gate} }} }} }}\n}}\n")
    assert [(d.code, d.span.line) for d in _errors(result)] == ([] if ok else [("E0302", 3)])
    if not ok:
        assert "could not learn" in _errors(result)[0].message


def test_a_keyword_of_nldsl_load_is_named_as_the_keyword_not_as_a_set():
    from nldsl.loader import override_strings

    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    result = check_file(hope, override_strings(["train.steps=5"], train__stepz=3, heads=7))
    by_code = {d.code: d for d in result.diagnostics}
    assert by_code["E0203"].span.path == "<keyword train__stepz>", "the keyword, not `<--set 2>`"
    assert by_code["E0503"].help.endswith("(the value comes from `heads=7`)")
    [vocab] = [d for d in check_file(hope, override_strings(train__tokenizer=_Raw("bpe(512)"))).diagnostics
               if d.code == "E0508"]
    assert vocab.help == "add the keyword model__vocab=512"
    [vocab] = [d for d in check_file(hope, ["train.tokenizer=bpe(512)"]).diagnostics if d.code == "E0508"]
    assert vocab.span.path == "<--set 1>" and vocab.help == "add --set model.vocab=512", "a --set stays a --set"


def test_a_value_a_keyword_sets_is_not_said_to_come_from_another_keyword():
    """The hint 'the value comes from …' is for a spec line that reads an overridden constant, not
    for a value the keyword itself gives; and a keyword may set an inert projection gate (W0706)."""
    from nldsl.loader import override_strings

    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    result = check_file(hope, override_strings(heads=8, model__dim=_Raw("heads - 8")))
    [error] = [d for d in result.diagnostics if d.code == "E0302"]
    assert error.span.path == "<keyword model__dim>" and error.help is None, error
    result = check_file(hope, override_strings(model__block__titans__projections__lr=0.5))
    assert [d.span.path for d in result.diagnostics if d.code == "W0706"] == [
        "<keyword model__block__titans__projections__lr>"]


def test_w0709_is_not_given_for_a_slower_nested_level_which_has_no_rule_of_its_own():
    text = ("model m {\n  dim = 256\n  block {\n    cms {\n      variant = nested\n"
            "      level fast { period = 4  rule = dgd  lr = 0.005 }\n      level slow { period = 16 }\n"
            "    }\n  }\n}\n")
    assert "W0709" not in {d.code for d in check_text(text, "nested.nl").diagnostics}
    wide = text.replace("lr = 0.005", "lr = 0.01")
    assert "W0709" in {d.code for d in check_text(wide, "nested.nl").diagnostics}, "the fastest level is checked"


def test_the_in_context_periods_of_a_nested_cms_are_its_fastest_levels():
    from nldsl.semantics import in_context_periods

    text = ("model m {\n  dim = 16\n  block {\n    memory { level { period = 8 } }\n    cms {\n"
            "      variant = nested\n      level fast { period = 4 }\n      level slow { period = 16 }\n"
            "    }\n  }\n}\ntrain { seq_len = 64 }\n")
    result = check_text(text, "nested.nl")
    assert result.ok, _messages(result)
    assert in_context_periods(result.spec.model, result.spec.train.seq_len) == {4, 8}


UPDATE_TEXT = "optimizer o {\n  level m { }\n  level v { flow = squared_gradients }\n  update = UPDATE\n}\n"


def update_of(update: str):
    """An `update` as the checker reads it, or its diagnostics (code, message, column) when it is refused."""
    result = check_text(UPDATE_TEXT.replace("UPDATE", update), "o.nl")
    if result.ok:
        return result.spec.optimizers[0].update
    return [(d.code, d.message, d.span.column) for d in result.diagnostics if d.severity == "error"]


def test_update_powers_abs_and_sign():
    m, v = ("level", "m"), ("level", "v")
    assert update_of("sign(m) * abs(v) ** 0.5") == ("mul", ("sign", m), ("pow", ("abs", v), ("const", 0.5)))
    assert update_of("-m ** 2 * v") == ("mul", ("neg", ("pow", m, ("const", 2.0))), v)  # ** binds tighter than -
    assert update_of("m * v ** -(1 / 2)") == ("mul", m, ("pow", v, ("const", -0.5)))  # a constant exponent folds
    assert update_of("m / (v ** 2 + 2 ** -3)") == ("div", m, ("add", ("pow", v, ("const", 2.0)),
                                                              ("pow", ("const", 2.0), ("const", -3.0))))
    # a constant part is checked whatever function it passes through
    assert update_of("m * v / sign(1 - 1)") == [("E0304", "division by zero", 20)]
    assert update_of("m * v / abs(0 - 0)") == [("E0304", "division by zero", 20)]
    assert update_of("m * v * abs(-2)") == ("mul", ("mul", m, v), ("abs", ("neg", ("const", 2.0))))  # not a root
    assert update_of("m * v * sqrt(abs(-4))")[0] == "mul"  # |−4| = 4 has a root
    assert update_of("m * v * sqrt(sign(-2))") == [("E0304", "the square root of -1 has no real value", 25)]


@pytest.mark.parametrize("update, code, message, column", [
    ("m ** v", "E0301", "the exponent of `**` in an update is a number or a constant, and `v` is not a constant", 17),
    ("m * v ** gradients", "E0301", "the exponent of `**` in an update is a number or a constant, and `gradients` "
                                    "is not a constant", 21),
    ("m * v ** (m + 1)", "E0301", "the exponent of `**` in an update is a number or a constant, not a level", 21),
    ("m * v * (-2) ** 0.5", "E0304", "(-2) ** 0.5 has no real value", 20),
    # a constant part past a float, which the optimizer step would compute as inf (an audit)
    ("m * v * (10 ** 200 * 10 ** 200)", "E0304", "this constant part of the update is inf in floating point", 21),
    ("m * v * (10 ** 200 * 10 ** 200 / 10 ** 300)", "E0304",
     "this constant part of the update is inf in floating point", 21),
    ("m * v * 0 ** -1", "E0304", "division by zero", 20),
    ("m * v * 10 ** 400", "E0304", "10 ** 400 overflows", 20),
    ("sign(m, v)", "E0301", "`sign(…)` takes one expression", 12),
    ("exp(m)", "E0301", "an update is built from level names, numbers, + - * /, ** with a number as exponent, "
                       "sqrt(…), abs(…) and sign(…)", 12),
])
def test_update_powers_and_functions_that_are_refused(update, code, message, column):
    assert update_of(update) == [(code, message, column)]


def test_a_level_an_overridden_update_leaves_unread_names_the_override():
    text = ("optimizer o {\n  level m { }\n  level v { flow = squared_gradients }\n  update = m / sqrt(v)\n}\n"
            "model x {\n  dim = 16\n  block { mlp { } }\n}\ntrain { optimizer = o }\n")
    [unread] = [d for d in check_text(text, "o.nl", ["train.optimizer.update=m"]).diagnostics if d.code == "E0506"]
    assert unread.span.line == 3 and unread.notes == ("`update` comes from <--set 1>, which does not read it",)
    [unread] = [d for d in check_text(text.replace("m / sqrt(v)", "m"), "o.nl").diagnostics if d.code == "E0506"]
    assert unread.notes == (), "the spec's own update: nothing to add"


def _errors(result) -> list[Diagnostic]:
    return [d for d in result.diagnostics if d.severity == "error"]


class _Raw:
    """A value whose repr is spec text (a call), as an object the keyword writer passes on as is."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


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


def test_constants_chain_in_any_order_without_a_depth_limit():
    """Constants are evaluated in dependency order, so a chain longer than expressions may nest
    checks whichever end of it is written first (a cycle is still E0507)."""
    chain = ["const c0 = 8"] + [f"const c{i} = c{i - 1} + 1" for i in range(1, 100)]
    for lines in (chain, chain[::-1]):
        result = check_text("\n".join(lines) + "\nmodel { dim = c99; block { mlp { } } }\n")
        assert result.ok, _messages(result)
        assert result.spec.model.dim == 107


@pytest.mark.parametrize(("value", "word"), [("0x40", "0x40"), ("64_", "64_"), ("6__4", "6__4"), ("1e", "1e"),
                                             ("1.2.3", "1.2.3")])
def test_a_malformed_number_is_pointed_at_not_the_token_after_it(value, word):
    result = check_text(f"model {{\n  dim = {value}\n  layers = 2\n  block {{ mlp {{ }} }}\n}}\n")
    [diagnostic] = result.diagnostics
    assert (diagnostic.code, diagnostic.message) == ("E0102", f"malformed number `{word}`")
    assert (diagnostic.span.line, diagnostic.span.column, diagnostic.span.end_column) == (2, 9, 9 + len(word))


@pytest.mark.parametrize("text", ["model {\n  dim = 64  # width\r  layers = 3\n  block { mlp { } }\n}\n",
                                  "# a title\rmodel {\r  dim = 64\r  block { mlp { } }\r}\r"])
def test_a_carriage_return_alone_is_refused_rather_than_hiding_what_follows_it(text):
    [(code, message, help)] = _messages(check_text(text))
    assert (code, message) == ("E0102", "a carriage return (U+000D) without a line feed after it")
    assert "line ends" in help
    assert check_text(text.replace("\r", "\r\n")).ok  # CRLF line ends are fine


@pytest.mark.parametrize(("text", "word", "meant"), [
    ("modle tiny {\n  dim = 8\n  block { mlp { } }\n}\n", "modle", "model"),
    ("model {\n  dim = 8\n  block { mpl { } }\n}\n", "mpl", "mlp"),
    ("model {\n  dim = 8\n  block { mpl fast { } }\n}\n", "mpl", "mlp"),
    ('improt "base.nl"\nmodel { dim = 8; block { mlp { } } }\n', "improt", "import"),
])
def test_a_misspelt_keyword_is_named_with_the_keyword_meant_and_no_cascade(text, word, meant):
    [(code, message, help)] = _messages(check_text(text))
    assert (code, message) == ("E0101", f"unexpected name `{word}`")
    assert help.startswith(f"did you mean `{meant}`?")


def test_a_key_without_its_equals_sign_is_not_taken_for_a_misspelt_section():
    [(code, message, help)] = _messages(check_text("model {\n  dim = 8\n  block { mlp { activation swiglu } }\n}\n"))
    assert (code, message, help) == ("E0101", "unexpected name `swiglu`", "expected `=`")


def test_an_attribute_left_without_a_value_is_named():
    text = "model {\n  dim =   # width\n  layers = 2\n  block { mlp { } }\n}\n"
    [(code, message, help)] = _messages(check_text(text))
    assert (code, message, help) == ("E0101", "`dim` has no value", "write the value of `dim` after its `=`")


def test_an_error_in_a_value_taken_from_a_set_constant_names_the_override():
    spec = "const dim = 64\nmodel { dim = dim; block { mlp { } } }\n"
    [(code, _, help)] = _messages(check_text(spec, overrides=["dim=0"]))
    assert code == "E0302" and help == "the value comes from `--set dim=0`"
    [(code, _, help)] = _messages(check_text(spec, overrides=['dim="64"']))
    assert code == "E0301" and help == 'got "64"; the value comes from `--set dim="64"`'


def test_an_unnamed_level_skips_a_level_name_written_after_it():
    spec = "model { dim = 8; block { cms { level { period = 16 } level level1 { period = 32 } } } }\n"
    result = check_text(spec, overrides=["model.block.cms.level2.period=8"])
    assert result.ok, _messages(result)
    assert [(level.name, level.period) for level in result.spec.model.block.sublayers[0].levels] == [
        ("level2", 8), ("level1", 32)]


def test_small_front_end_messages():
    import math

    from nldsl.checker import check_bytes
    from nldsl.diagnostics import render_text

    [(code, message, _)] = _messages(check_bytes(b"model {\n  dim = 8 # caf\xe9\n}\n", "latin.nl"))
    assert (code, message) == ("E0105", "`latin.nl` is not valid UTF-8 (byte 23: line 2, byte 16 of the line)")
    [latin] = check_bytes(b"model {\n  dim = 8 # \xc3\xa9\xe9\n}\n", "latin.nl").diagnostics
    assert (latin.span.line, latin.span.column) == (2, 14), "the span counts characters, the message bytes"
    [(code, message, _)] = _messages(check_text('import ""\nmodel { dim = 8; block { mlp { } } }\n'))
    assert (code, message) == ("E0205", "cannot import an empty path")
    [(code, message, _)] = _messages(check_text("model { dim = 8; block { mlp { } } }\ntrain { clip = 1e-400 }\n"))
    assert (code, message) == ("E0304", "`1e-400` is too small: it rounds to 0 in double precision")
    for zero in ("-0.0", "0.0 * -1", "-1 * 0.0"):
        result = check_text(f"model {{ dim = 8; block {{ mlp {{ }} }} }}\ntrain {{ clip = {zero} }}\n")
        assert result.ok and math.copysign(1, result.spec.train.clip) == 1  # no `-0` in the graph or banner
    wide = check_text('const _s = "日本語" ; const _t = 1 @\n')  # the caret counts wide characters twice
    source_line, caret = render_text(wide.diagnostics, wide.sources).splitlines()[3:5]
    assert source_line.endswith("1 @") and caret.index("^") == len(source_line) - 1 + 3
    long = check_text("const _x = " + "1 + " * 5000 + "@\n")  # a long line is cut around the span
    snippet = render_text(long.diagnostics, long.sources).splitlines()[3]
    assert len(snippet) < 200 and snippet.split("| ", 1)[1].startswith("…")


@pytest.mark.parametrize("spec, level", [
    ("titans_lmm", "model.block.lmm.level"),
    ("linear_attention", "model.block.linear_attention.level"),
    ("titans_mac", "model.block.mac.lmm.level"),
    ("titans_lmm", "model.block.lmm.level!reconstruction"),
])
def test_w0706_names_exactly_the_parameters_detached_writes_leave_without_gradient(spec, level):
    """`grad_through_writes = false` on a memory layer's level cuts off W_k, W_v, their convolutions
    and a learned `lr`: the warning lists what the model's backward then leaves without a gradient."""
    import torch

    import nldsl

    level, _, objective = level.partition("!")
    overrides = {f"{level}.grad_through_writes": False, "model.dim": 32, "model.layers": 1}
    if objective:
        overrides[f"{level}.objective"] = objective
    path = PACKAGE_DIR.parent / f"specs/{spec}.nl"
    [warning] = [d for d in check_file(path, [f"{k}={str(v).lower()}" for k, v in overrides.items()]).diagnostics
                 if d.code == "W0706"]
    model = nldsl.load(path, **overrides)
    model(torch.randint(0, 256, (2, 20))).logsumexp(-1).mean().backward()
    without = {name.rsplit(".", 1)[1] for name, p in model.named_parameters() if p.grad is None}
    named = {"W_k": "wk", "W_v": "wv", "convolution": "conv_k", "learned `lr`": "lr_proj"}
    listed = {param for phrase, param in named.items() if phrase in warning.message}
    expected = {p for p in without if p not in ("conv_v", "lr_bias")}
    assert listed == expected, (warning.message, without)
    assert ("conv_v" in without) == ("W_v" in warning.message and "convolution" in warning.message)
    if objective:
        assert warning.message.startswith("W_k, its convolution and the learned `lr` get no gradient: they reach")


def test_a_selfmod_without_adaptive_projections_gets_no_warning_about_its_projection_memories():
    """`adaptive = []` makes no projection memory: W0707 named a level `projections` that the
    model does not have (only the memory level's own warning is true)."""
    text = ("model { dim = 16; block { selfmod { heads = 2; adaptive = []\n"
            "level memory { period = 8; state = linear; objective = dot } } } }\n")
    found = [(d.code, d.message.split(":")[0]) for d in check_text(text, "s.nl").diagnostics]
    assert ("W0707", "level `memory` can grow without bound") in found
    assert not [message for code, message in found if code == "W0707" and "projections" in message], found


SELFMOD_CUTS = {  # overrides beside the memory level's `grad_through_writes = false` → W0706 expected
    "projections detached too": (["projections.grad_through_writes=false"], True),
    "no projection memory reaches the loss": (["adaptive=[k,v,eta]", "memory.retention=0.9"], True),
    "static v and lr": (["adaptive=[k,alpha]", "memory.lr=learned(max=0.02)", "projections.grad_through_writes=false"],
                        True),
    "no adaptive projection": (["adaptive=[]", "memory.lr=learned(max=0.02)", "memory.retention=0.9",
                                "memory.values=given"], True),
    # projection memories slower than a training sequence never write, so they carry nothing either;
    # at a period of seq_len they write once, at the end, for a next chunk that never comes
    "projections that never write": (["adaptive=[q,k,v]", "memory.lr=learned(max=0.02)", "memory.retention=0.9",
                                      "projections.period=512"], True),
    "projections whose writes nothing reads": (["projections.period=256"], True),
    # the projections' own writes carry k, v and η into M_alpha, whose α (the retention) reaches the loss
    "projections' writes differentiable": ([], False),
}


@pytest.mark.parametrize("case", SELFMOD_CUTS)
def test_w0706_on_a_selfmod_names_exactly_what_the_reference_leaves_without_gradient(case):
    """A selfmod's projection memories are written with the same k, v and η: detaching the main
    memory's writes cuts those off only when the projections' writes cannot carry them to the loss
    (the warning used to claim that M_k, M_v, M_eta and M_alpha got no gradient whenever the main
    memory's writes were detached; the reference interpreter gives all four one)."""
    import torch

    import nldsl
    from nldsl.interpreter import interpret

    extra, warns = SELFMOD_CUTS[case]
    overrides = ["dim=32", "model.layers=1", "model.block.titans.memory.grad_through_writes=false",
                 *(f"model.block.titans.{item}" for item in extra)]
    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    result = check_file(hope, overrides)
    warnings = [d for d in result.diagnostics if d.code == "W0706"]
    assert len(warnings) == warns and result.ok, result.diagnostics
    torch.manual_seed(0)
    with pytest.warns(SpecWarning) if warns else contextlib.nullcontext():
        model = nldsl.load(hope, overrides, dtype=torch.float64)
    params = dict(model.named_parameters())
    with torch.no_grad():  # off the init, where zero-initialised readouts pass no gradient to their memories
        for param in params.values():
            param.add_(0.05 * torch.randn_like(param))
    logits = interpret(result.spec, params, torch.randint(0, 256, (2, 20)))
    grads = torch.autograd.grad(logits.logsumexp(-1).mean(), list(params.values()), allow_unused=True)
    without = {name.rsplit(".", 1)[1] for name, grad in zip(params, grads, strict=True) if grad is None}
    named = {"M_k": {"k_memory_w1", "k_memory_w2"}, "M_v": {"v_memory_w1", "v_memory_w2"},
             "M_eta": {"eta_memory_w1", "eta_memory_w2", "eta_readout", "eta_bias"}, "W_k": {"wk"}, "W_v": {"wv"},
             "the learned `lr`": {"lr_proj", "lr_bias"}, "the convolutions of k and v": {"conv_k", "conv_v"}}
    listed = set().union(*(names for phrase, names in named.items() if warnings and phrase in warnings[0].message))
    assert listed == without, (warnings, without)
    # the generated module leaves the same ones without gradient: none gets a gradient of zeros, which
    # weight decay would follow (the projection memories are stacked into one batched level)
    model(torch.randint(0, 256, (2, 20))).logsumexp(-1).mean().backward()
    assert {name.rsplit(".", 1)[1] for name, param in params.items() if param.grad is None} == without
    if warns:
        assert warnings[0].span.path == "<--set 3>"
    if case == "projections whose writes nothing reads":
        assert "their period 256 is not shorter than train.seq_len = 256" in warnings[0].message
        assert warnings[0].help.startswith("remove `grad_through_writes = false`, or give the `projections` "
                                           "level a period under 256")


def test_an_override_given_twice_warns_that_the_first_has_no_effect():
    """The last override of a key counts; the one before is never checked, so it is named (W0706)."""
    from nldsl.loader import override_strings

    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    result = check_file(hope, ["train.steps=5", "train.steps=oops", "train.steps=6"])
    assert result.ok and result.spec.train.steps == 6, "the invalid value is not the one used"
    shadowed = [d for d in result.diagnostics if d.code == "W0706"]
    assert [d.span.path for d in shadowed] == ["<--set 1>", "<--set 2>"]
    assert shadowed[0].message == ("this override has no effect: `--set train.steps=6` sets `train.steps` "
                                   "again later, and the last one counts")
    [keyword] = [d for d in check_file(hope, override_strings(["dim=64"], dim=128)).diagnostics if d.code == "W0706"]
    assert keyword.span.path == "<--set 1>" and "`dim=128` sets `dim` again" in keyword.message
    assert "W0706" not in {d.code for d in check_file(hope, ["train.steps=5", "dim=64"]).diagnostics}
    # a section's whole value replaces what an earlier override set inside it; a later one refines it
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    result = check_file(titans, ["train.optimizer.lr=0.05", "train.optimizer=muon(lr = 0.02)"])
    assert result.spec.train.optimizer.kind == "muon" and result.spec.train.optimizer.lr == 0.02
    [whole] = [d for d in result.diagnostics if d.code == "W0706"]
    assert whole.span.path == "<--set 1>" and whole.message == (
        "this override has no effect: `--set train.optimizer=muon(lr = 0.02)` sets `train.optimizer` whole later, "
        "and the last one counts")
    result = check_file(titans, ["train.optimizer=muon(lr = 0.02)", "train.optimizer.lr=0.05"])
    assert result.spec.train.optimizer.lr == 0.05 and "W0706" not in {d.code for d in result.diagnostics}


def test_an_override_path_into_an_attributes_value_says_to_set_the_whole_value():
    """resolved.json and a resume's mismatch name `…lr.max`; an override sets `lr` whole, and the
    help writes it from the spec's call with the argument replaced or added."""
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    [error] = check_file(titans, ["model.block.lmm.level.lr.max=0.1"]).diagnostics
    assert error.message == "override path `model.block.lmm.level.lr.max`: `lr` is an attribute, not a section"
    assert error.help == ("an override sets the whole value: write "
                          "`--set model.block.lmm.level.lr=learned(max = 0.1)`")
    written = error.help.split("`")[1].removeprefix("--set ")
    assert check_file(titans, [written]).ok, "the written override checks"
    [added] = check_file(titans, ["model.block.lmm.level.retention.max=0.5"]).diagnostics
    assert added.help.endswith("`--set model.block.lmm.level.retention=learned(max = 0.5)`")
    # a positional argument is the field it fills: replaced, not written a second time by name
    transformer = PACKAGE_DIR.parent / "specs/transformer.nl"
    [positional] = [d for d in check_file(transformer, ["train.tokenizer=bpe(512)", "model.vocab=512",
                                                        "train.tokenizer.vocab=300"]).diagnostics if d.code == "E0206"]
    assert positional.help.endswith("`--set train.tokenizer=bpe(vocab = 300)`")
    [plain] = check_file(titans, ["model.block.lmm.level.period.x=3"]).diagnostics
    assert plain.help == "an override sets the whole value: write `--set model.block.lmm.level.period=VALUE`"


def test_an_override_that_reads_its_own_constant_reads_the_files_value_in_the_root_as_in_an_import():
    """`--set dim=dim*2` doubled an imported `dim` but was a cycle (E0507) for the root file's own."""
    text = "const dim = 32\nconst width = dim * 2\nmodel { dim = width  layers = 1  block { mlp { } } }\n"
    for overrides, dim in ((["dim=dim*2"], 128), (["dim=width"], 128), (["dim=64", "width=dim*3"], 192),
                           (["width=dim*3"], 96)):
        result = check_text(text, "solo.nl", overrides)
        assert result.ok and result.spec.model.dim == dim, (overrides, result.diagnostics)
    for overrides in (["width=dim*3", "dim=width"], ["dim=width", "width=dim*3"]):  # they read each other
        assert "E0507" in {d.code for d in check_text(text, "solo.nl", overrides).diagnostics}, overrides
    # a later override that is no `key=value` does not replace the one before it
    assert [d.code for d in check_text(text, "solo.nl", ["dim=32", "dim"]).diagnostics] == ["E0206"]


def test_two_imports_defining_one_name_say_which_file_defined_it_first(tmp_path: Path):
    """The note named the second file twice (the caret's import), never the first."""
    (tmp_path / "w1.nl").write_text("const width = 8\n")
    (tmp_path / "w2.nl").write_text("const width = 9\n")
    (tmp_path / "two.nl").write_text('import "w1.nl"\nimport "w2.nl"\n')
    [error] = check_file(tmp_path / "two.nl").diagnostics
    assert error.code == "E0202" and error.span.line == 2
    assert re.fullmatch(r"`width` is defined twice: in `\S*w1\.nl` and in `\S*w2\.nl`", error.message), error.message


def test_an_override_of_a_constant_nothing_reads_has_no_effect_and_says_so():
    """An override marked its constant used: the W0702 of an unread constant went, and nothing said
    the override did nothing (also when a path override replaces the constant's only reader)."""
    text = "const mine = 3\nmodel { dim = 32  layers = 1  block { mlp { } } }\n"
    assert [d.code for d in check_text(text, "unused.nl").diagnostics] == ["W0702"]
    [warning] = check_text(text, "unused.nl", ["mine=4"]).diagnostics
    assert (warning.code, warning.span.path) == ("W0706", "<--set 1>")
    assert warning.message == "this override has no effect: nothing reads the constant `mine`"
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    [dead] = check_file(titans, ["model.dim=64", "dim=32"]).diagnostics
    assert (dead.code, dead.span.path) == ("W0706", "<--set 2>") and "`dim`" in dead.message
    assert not check_file(titans, ["dim=64"]).diagnostics, "a constant the model reads"


def test_a_constant_only_an_overridden_value_reads_is_no_unused_constant():
    """The file uses `dim` and `wide`; an override that replaces their reader is the user's choice, not
    the file's unused constant (W0702 pointed at the file for `--set model.dim=64` on every shipped spec)."""
    text = "const dim = 32\nconst wide = dim * 2\nmodel { dim = wide  layers = 1  block { mlp { } } }\n"
    assert check_text(text, "w.nl").diagnostics == []
    assert check_text(text, "w.nl", ["model.dim=64"]).diagnostics == []
    assert check_text(text, "w.nl", ["wide=64"]).diagnostics == []
    assert check_text(text, overrides=["model.dim=64"]).diagnostics == [], "a file named <string> too"
    # a library (no model, no train): its constants are for the files that import it
    assert check_text("const dim = 64\nconst width = 4\nlevel fast { period = width }\n", "lib.nl").diagnostics == []
    assert not check_file(PACKAGE_DIR.parent / "specs/hope.nl", ["model.dim=64"]).diagnostics
    # an override's value replaced by a later override is no use by the file
    unread = check_text("const dim = 32\nmodel { dim = 64  layers = 1  block { mlp { } } }\n", "w.nl",
                        ["model.dim=dim", "model.dim=32"]).diagnostics
    assert [d.code for d in unread] == ["W0706", "W0702"], unread


def test_a_derived_section_merges_nested_sections_of_the_same_kind_and_name_at_any_depth():
    """`cms c { level fast { … } }` over an inherited cms with a level `fast` refines that level; it
    was appended, and the cms then had two levels called `fast` (E0202)."""
    text = ("block base {\n  cms c {\n    level fast { period = 4 }\n    level slow { period = 8 }\n  }\n"
            "  mlp m { expansion = 2 }\n}\n"
            "block b from base {\n  cms c {\n    level fast { period = 2 }\n    level extra { period = 16 }\n"
            "  }\n}\nmodel { dim = 32  layers = 1  block from b { } }\n")
    result = check_text(text, "merge.nl")
    assert result.ok, result.diagnostics
    cms, mlp = result.spec.model.block.sublayers
    assert [(level.name, level.period) for level in cms.levels] == [("fast", 2), ("slow", 8), ("extra", 16)]
    assert mlp.expansion == 2, "an inherited section the derived one does not name is kept as it is"
    twice = text.replace("level extra { period = 16 }", "level fast { period = 16 }")
    assert "E0202" in {d.code for d in check_text(twice, "merge.nl").diagnostics}, "twice in one section"


def test_a_model_of_an_imported_file_is_named_as_not_importable_and_a_choice_reads_as_a_list():
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    [error] = check_text(f'import "{titans}" as t\nmodel from t.titans_lmm {{ }}\n', "m.nl").diagnostics
    assert error.message.endswith("defines no section `titans_lmm` that can be imported: its `model titans_lmm` "
                                  "is the file's own")
    assert error.help == "inherit from the sections it is made of (its `block`, `level` …)"
    [wrong] = check_file(titans, ["train.compile=3"]).diagnostics
    assert wrong.message == "`compile` expects true, false or one of chunks, blocks"


def test_a_constant_that_hides_an_option_is_named_as_the_cause():
    text = "const l2 = 5\nmodel { dim = 32  layers = 1  block { memory { level { objective = l2 } } } }\n"
    [error] = check_text(text, "shadow.nl").diagnostics
    assert error.message == ("`5` is not a valid `objective`: `l2` here is the constant `l2`, which hides the "
                             "option `l2`") and error.help == "rename the constant `l2`"
    wrong = check_text(text.replace("objective = l2", "objective = ll2"), "shadow.nl").diagnostics
    assert "hides" not in wrong[0].message, "only a name that is an option"


def test_an_update_dividing_by_a_constant_that_is_zero_but_for_rounding_is_refused():
    """1 − 0.9 − 0.1 computes to −2.8e−17: a division by it scaled every step by −3.6e16."""
    [(code, message, column)] = update_of("m * v / (1 - 0.9 - 0.1)")
    assert (code, column) == ("E0304", 20)  # at the bracketed divisor
    assert message == ("division by zero: this constant part is 0 up to floating-point rounding (it computes "
                       "to -2.78e-17)")
    assert update_of("m * v / (1 - 0.999999)")[0] == "div", "a small denominator that is no rounding noise"
    assert update_of("m * v / (0.3 - 0.1 * 3 + 1)")[0] == "div", "noise inside a sum that is not 0"


def test_a_learned_gate_that_would_start_where_its_sigmoid_is_flat_is_refused():
    """The logit was clamped to ±13.8 without a word: init = 0.9999999 started at 0.999999, ten
    times the forgetting written, and the comment of the generated code said it started at 1."""
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    [error] = check_file(titans, ["model.block.lmm.level.retention=learned(init = 0.9999999)"]).diagnostics
    assert error.code == "E0302" and error.message.startswith("`retention` starts at 0.9999999, 0.9999999 of its")
    [tiny] = check_file(titans, ["model.block.lmm.level.lr=learned(max = 0.005, init = 5e-324)"]).diagnostics
    assert tiny.code == "E0302" and tiny.help.endswith("from 5e-09 to 0.004999995")
    assert check_file(titans, ["model.block.lmm.level.retention=learned(init = 0.999)"]).ok
    [flat] = check_file(titans, ["model.block.lmm.level.retention=per_head(0.9999999)"]).diagnostics
    assert flat.code == "E0302" and "at a logit past +13.8" in flat.message  # per_head's sigmoid as well
    assert check_file(titans, ["model.block.lmm.level.momentum=per_head(0.5)"]).ok


def test_a_constant_divided_by_a_difference_that_is_zero_but_for_rounding_is_refused():
    """As in an optimizer's update (E0304): `1 / (1 - 0.9 - 0.1)` was −3.6e16 in a constant."""
    model = "model {{ dim = 32  layers = 1  block {{ mlp {{ expansion = {} }} }} }}\n"
    [error] = check_text("const y = 1 / (1 - 0.9 - 0.1)\n" + model.format("y"), "c.nl").diagnostics
    assert (error.code, error.span.column) == ("E0304", 15) and "0 up to floating-point rounding" in error.message
    assert check_text("const y = 8 / (1 - 0.5)\n" + model.format("y"), "c.nl").ok
    # rounding noise a few ulps wide (13 terms of 0.81 less 10.53 leave 5.3e-15) is still noise
    many = "const y = 1 / (" + " + ".join(["0.81"] * 13) + " - 10.53)\n"
    [error] = check_text(many + model.format("y"), "c.nl").diagnostics
    assert error.code == "E0304" and "0 up to floating-point rounding" in error.message
    big = "const y = 2 ** 60 / (2 ** 60 - (2 ** 60 - 1))\n"  # integers are exact: 2 ** 60, far too wide, but no E0304
    assert "E0304" not in {d.code for d in check_text(big + model.format("y"), "c.nl").diagnostics}


def test_an_optimizer_missing_its_update_is_reported_beside_its_values_errors():
    text = """optimizer mine {
  lr = -0.05
  level m { flow = gradients }
  level v { flow = squared_gradients }
}
"""
    codes = sorted((d.code, d.span.line) for d in check_text(text, "o.nl").diagnostics)
    assert codes == [("E0302", 2), ("E0401", 1)], codes
    single = check_text("optimizer mine {\n  lr = -0.05\n  level m { }\n}\n", "o.nl").diagnostics
    assert [d.code for d in single] == ["E0302"], "one level is the update"


def test_an_optimizer_section_called_with_arguments_says_it_is_named_not_called():
    section = "optimizer mymom {\n  level m { retention = 0.9 }\n}\n"
    model = "model { dim = 32\n  block { mlp { } } }\n"
    [error] = check_text(section + model + "train { optimizer = mymom(lr = 0.1) }\n", "o.nl").diagnostics
    assert (error.code, error.span.line) == ("E0303", 6), error
    assert error.message == "`mymom` is an `optimizer` section: it is named, not called"
    assert "`optimizer = mymom`" in error.help and "--set train.optimizer.lr" in error.help
    # a section that shadows a built-in's name leaves the built-in's call as it was
    shadowing = section.replace("mymom", "adamw") + model + "train { optimizer = adamw(lr = 0.1) }\n"
    assert [d.code for d in check_text(shadowing, "o.nl").diagnostics if d.severity == "error"] == []


def test_optimizer_section_slips_get_help_that_fits_an_optimizer():
    [colon] = check_text("optimizer o {\n  level m { retention: 0.9 }\n}\n", "o.nl").diagnostics
    assert (colon.code, colon.span.line, colon.help) == (
        "E0102", 2, "a value is given with `=`: write `retention = …`")
    [section] = check_text("model m {\n  block:\n}\n", "o.nl").diagnostics
    assert section.help == "a section is written `block { … }`"
    [argument] = check_text("optimizer o { level m { lr = learned(max: 0.1) } }\n", "o.nl").diagnostics
    assert argument.help == "a value is given with `=`: write `max = …`"
    [unnamed] = check_text("optimizer {\n  level m { }\n}\n", "o.nl").diagnostics
    assert unnamed.code == "E0401" and unnamed.help.endswith("used as `train { optimizer = NAME }`")
    [nested] = check_text("model { dim = 32\n  optimizer o { level m { } }\n  block { mlp { } } }\n",
                          "o.nl").diagnostics
    assert nested.message == "an `optimizer` section cannot appear in a `model`"
    assert nested.help.endswith("(it is written at the top level of a file)")


# Each rule's boundary, on both sides (from a mutation audit: a `>` turned `>=` went unnoticed) --------

def _boundary_model(layer: str, dim: int = 64, seq_len: int | None = None) -> str:
    train = f"train {{ seq_len = {seq_len} }}\n" if seq_len else ""
    return f"model m {{\n  dim = {dim}\n  block {{\n    {layer}\n  }}\n}}\n{train}"


@pytest.mark.parametrize(("layer", "dim", "seq_len", "expected"), [
    # W0709: dgd's decay α − η·dim past −1; exactly −1 is not past it
    ("cms { level fast { period = 4\n rule = dgd\n lr = 0.0078125 } }", 256, None, []),
    ("cms { level fast { period = 4\n rule = dgd\n lr = 0.008 } }", 256, None, [("W0709", 6)]),
    # … and only the fastest nested level runs dgd (a slower one's rule is inert, W0706)
    ("cms { variant = nested\n level fast { period = 4 }\n level slow { period = 16\n rule = dgd\n lr = 0.5 } }",
     256, None, [("W0706", 7)]),
    # W0718: a delta-rule write's factor α − c·η along a normalised key past −1; exactly −1 is not past it
    ("memory { level { lr = 2 } }", 64, None, []),
    ("memory { level { lr = 2.01 } }", 64, None, [("W0718", 4)]),
    ("memory { level { rule = dgd\n lr = 1 } }", 64, None, []),
    ("memory { level { rule = dgd\n lr = 1.01 } }", 64, None, [("W0718", 5)]),
    ("memory { level { period = 8\n lr = 0.2\n momentum = 0.9 } }", 64, None, []),
    ("memory { level { period = 8\n lr = 0.21\n momentum = 0.9 } }", 64, None, [("W0718", 5)]),
    # … with a learned momentum, at the β it starts from (0.9 of its bound: 0.81 here, so η up to 0.38)
    ("memory { level { period = 8\n lr = 0.38\n momentum = learned(max = 0.9) } }", 64, None, []),
    ("memory { level { period = 8\n lr = 0.39\n momentum = learned(max = 0.9) } }", 64, None, [("W0718", 5)]),
    # … only where the factor is α − c·η: normalised keys, a linear state, given values, no Newton–Schulz
    ("memory { qk_norm = none\n level { lr = 2.5 } }", 64, None, []),
    ("memory { level { values = generated\n lr = 2.5 } }", 64, None, []),
    ("memory { level { period = 8\n state = mlp(depth = 2)\n lr = 2.5 } }", 64, None, [("W0719", 6)]),  # not W0718
    ("memory { level { period = 8\n readout = chunk_start\n orthogonalize = newton_schulz\n"
     " lr = learned(max = 2.5)\n momentum = 0.9 } }", 64, None, []),
    # W0719: an MLP memory's starting step η/(1 − β) at 0.8, where every measured first forward was NaN
    ("memory { level { period = 16\n state = mlp(depth = 2)\n lr = 0.79 } }", 64, None, []),
    ("memory { level { period = 16\n state = mlp(depth = 2)\n lr = 0.8 } }", 64, None, [("W0719", 6)]),
    ("memory { level { period = 16\n state = residual_mlp\n lr = 0.39\n momentum = 0.5 } }", 64, None, []),
    ("memory { level { period = 16\n state = residual_mlp\n lr = 0.4\n momentum = 0.5 } }", 64, None,
     [("W0719", 6)]),
    # … a learned lr at its start, half its bound
    ("memory { level { period = 16\n state = mlp(depth = 3)\n lr = learned(max = 1.58) } }", 64, None, []),
    ("memory { level { period = 16\n state = mlp(depth = 3)\n lr = learned(max = 1.6) } }", 64, None,
     [("W0719", 6)]),
    # … only where it was measured: normalised keys, the l2 objective, given values, no Newton–Schulz
    ("memory { qk_norm = none\n level { period = 16\n state = mlp(depth = 2)\n lr = 1 } }", 64, None, []),
    ("memory { level { period = 16\n state = mlp(depth = 2)\n objective = dot\n lr = 1 } }", 64, None, []),
    ("memory { level { period = 16\n state = mlp(depth = 2)\n values = generated\n lr = 1 } }", 64, None, []),
    ("memory { level { period = 16\n state = mlp(depth = 2)\n readout = chunk_start\n orthogonalize = newton_schulz\n"
     " lr = learned(max = 2) } }", 64, None, []),
    # W0704: a memory's period longer than a sequence; as long, with a causal readout, it still learns
    ("memory { level { period = 128 } }", 64, 128, []),
    ("memory { level { period = 129 } }", 64, 128, [("W0704", 4)]),
    ("memory { level { period = 128\n readout = chunk_start } }", 64, 128, [("W0704", 4)]),
    ("memory { level { period = 64\n readout = chunk_start } }", 64, 128, []),
    # … and an in-context cms level, which reads the weights of its last write, as chunk_start does
    ("cms { level slow { period = 128 } }", 64, 128, [("W0704", 4)]),
    ("cms { level slow { period = 64 } }", 64, 128, []),
    ("cms { level slow { period = 128\n update = outer } }", 64, 128, []),
    # … and a slower nested level, which moves after the sequence's last token (a stream reads the move)
    ("cms { variant = nested\n level a { period = 64 }\n level b { period = 128 } }", 64, 128, [("W0704", 6)]),
    ("cms { variant = nested\n level a { period = 32 }\n level b { period = 64 } }", 64, 128, []),
    # W0705: a cms level slower than a sequence is a plain MLP
    ("cms { level a { period = 128\n objective = reconstruction } }", 64, 128, [("W0704", 4)]),  # not W0705
    ("cms { level a { period = 129\n objective = reconstruction } }", 64, 128, [("W0705", 5)]),
    # … whose in-context-only settings get that warning, not the in-context rules' errors (E0601)
    ("cms { level a { period = 129\n readout = causal } }", 64, 128, [("W0705", 5)]),
    # (with orthogonalize the runtime's level config still refuses the pair: an error that says to remove it)
    ("cms { level a { period = 129\n readout = causal\n orthogonalize = newton_schulz } }", 64, 128,
     [("E0601", 6), ("W0705", 6)]),
    ("cms { level a { period = 64\n readout = causal } }", 64, 128, [("E0601", 5)]),
    # W0701: token by token only at period 1
    ("memory { level { period = 2\n momentum = 0.9 } }", 64, None, []),
    ("memory { level { period = 1\n momentum = 0.9 } }", 64, None, [("W0701", 4)]),
    ("memory {\n level {\n momentum = 0.9 } }", 64, None, [("W0701", 5)]),  # period 1 by default: the level
    # … and at a linear level's period 1 with a clip (its factors read the state), but not linear attention's
    ("memory { level { period = 1\n clip = 1 } }", 64, None, [("W0701", 4)]),
    ("memory { level { period = 1\n clip = 1\n objective = dot } }", 64, None, []),
    ("memory { level { period = 2\n clip = 1 } }", 64, None, []),
    # a clip is bounded below, and inert where newton_schulz normalises a lone write (W0706)
    ("memory { level { period = 2\n clip = 0 } }", 64, None, [("E0302", 5)]),
    ("memory { level { state = mlp\n period = 1\n readout = chunk_start\n orthogonalize = newton_schulz\n "
     "lr = learned()\n clip = 1 } }", 64, None, [("W0701", 5), ("W0706", 8), ("W0706", 9)]),  # η inert too
    # and on a cms level the outer optimizer steps, like the other in-context settings (W0705)
    ("cms { level a { period = 129\n clip = 1 } }", 64, 128, [("W0705", 5)]),
    # momentum lies in [0, 1)
    ("memory { level { period = 16\n momentum = 1 } }", 64, None, [("E0302", 5)]),
    # nested periods may be equal
    ("cms { variant = nested\n level a { period = 16 }\n level b { period = 16 } }", 64, None, []),
    # a layer with an error gets no warnings beside it (W0708's 12 steps here)
    ("memory { level { period = 16\n orthogonalize = newton_schulz(steps = 12) } }", 64, None, [("E0601", 5)]),
    # attention's default 4 heads divide 36
    ("attention { rope = false }", 36, None, []),
])
def test_rule_boundaries(layer, dim, seq_len, expected):
    result = check_text(_boundary_model(layer, dim, seq_len), "b.nl")
    # the compile-time warning (W0714, tests/invalid) follows from the periods, not from these rules
    found = [(d.code, d.span.line) for d in result.diagnostics if d.code != "W0714"]
    assert found == expected, _messages(result)


def test_boundary_messages():
    [start] = check_text(_boundary_model("memory { level { period = 16\n lr = learned(init = 0.1, max = 0.1) } }"),
                         "b.nl").diagnostics
    assert (start.code, start.message) == ("E0302", "`lr` starts at 0.1, which is not below its `max` 0.1")
    [large] = check_text(_boundary_model("mlp { }") + "train { steps = 10000000000000000000 }\n", "b.nl").diagnostics
    assert (large.code, large.span.line, large.message) == ("E0304", 7, "this number is too large")
    assert large.help == "a spec's numbers lie within ±2**63 (about 9.2e18)"
    [key] = check_text(_boundary_model("mlp { }"), "b.nl", ["train.3steps=2"]).diagnostics
    assert (key.code, key.message) == ("E0206", "override key `train.3steps` is not a dotted name")


# The parser's recovery and limits (from a mutation audit of the front end) ---------------------------

def _syntax(text: str) -> list[tuple[str, str, int, int]]:
    from nldsl.parser import parse
    from nldsl.source import SourceFile

    _module, diagnostics = parse(SourceFile.from_text("x.nl", text))
    return [(d.code, d.message, d.span.line, d.span.column) for d in diagnostics]


def test_a_syntax_error_reports_its_first_problem_without_cascades():
    # the rest of a line after an error, and the next line's start, are not reported again
    assert _syntax("model {\n  dim = (3\n  layers = 4\n}\n") == [("E0101", "unexpected name `layers`", 3, 3)]
    assert _syntax("modle { dim = 3 3 }\n") == [("E0101", "unexpected name `modle`", 1, 1)]
    # the `{` never closed is the outermost open one, not the last that was closed
    assert _syntax("model {\n  block {\n    mlp { }\n  }\n") == [
        ("E0103", "unexpected end of file: the `{` at line 1, column 7 is never closed", 1, 7)]


def test_nesting_and_number_limits():
    def nested(depth: int) -> str:
        return "const a = " + "(" * depth + "1" + ")" * depth + "\n"

    assert _syntax(nested(62)) == [] and [code for code, *_ in _syntax(nested(65))] == ["E0104"]
    model = "model {\n  dim = a\n  block { mlp { } }\n}\n"
    [huge] = check_text("const a = " + "9" * 4500 + "\n" + model, "x.nl").diagnostics
    assert (huge.code, huge.message) == ("E0304", "this number is too large"), "not Python's 4300-digit ValueError"
    assert check_text("const a = " + "0" * 4001 + "16\n" + model, "x.nl").ok, "leading zeros add no value"


@pytest.mark.parametrize(("train", "expected"), [
    # an error elsewhere in train: the layer checks still read the file's seq_len (32: no W0704 at 256)
    ("train { seq_len = 32; steps = 0 }", [("E0302", 7)]),
    ("train { seq_len = 32\n optimizer = sgdd }", [("E0201", 8)]),
    # seq_len left at its default (256): the warning that reads it stands
    ("train { steps = 0 }", [("W0704", 4), ("E0302", 7)]),
    # seq_len itself invalid: no warning that would read a seq_len nobody wrote
    ("train { seq_len = 0; steps = 0 }", [("E0302", 7), ("E0302", 7)]),
])
def test_a_train_section_with_errors_keeps_its_seq_len_for_the_layer_checks(train, expected):
    """From a researcher's audit: any error in `train` made the layer checks read the default
    seq_len, so a file with seq_len 32 got a W0704 for a period of 256."""
    text = "model m {\n  dim = 64\n  block {\n    cms { level fast { period = 8 } level slow { period = 256 } }\n" \
           f"  }}\n}}\n{train}\n"
    result = check_text(text, "t.nl")
    assert [(d.code, d.span.line) for d in result.diagnostics] == expected, _messages(result)


OVERRIDDEN = "const width = 32\nconst dim = width\nconst heads = 2\n" \
             "model m {\n  dim = dim\n  block { attention { heads = heads } }\n}\n"


@pytest.mark.parametrize(("overrides", "dim", "heads"), [
    # an override that reads its own name reads the file's value, and every other override in place,
    # whichever order they are written in (a researcher's audit: the second read dim as 32, heads 3)
    (["dim=dim*2", "heads=heads+dim/32"], 64, 4),
    (["heads=heads+dim/32", "dim=dim*2"], 64, 4),
    (["width=64", "dim=dim*2"], 128, 2),  # the file's dim reads the overridden width
    (["dim=dim*2", "width=64"], 128, 2),
    (["dim=64", "heads=heads+dim/32"], 64, 4),
])
def test_overrides_that_read_their_own_name_see_the_other_overrides(overrides, dim, heads):
    result = check_text(OVERRIDDEN, "o.nl", overrides)
    assert result.spec is not None, _messages(result)
    model = result.spec.model
    assert (model.dim, model.block.sublayers[0].heads) == (dim, heads)


def test_a_string_spells_a_kinded_option_as_it_spells_any_other():
    """docs/language.md: a string may spell an option (`objective = "l2"` is `objective = l2`); a
    researcher's audit found `lr = "learned"` and `state = "mlp"` refused (and so `nldsl.load(…,
    train__optimizer="sgd")`, whose keyword strings are quoted)."""
    def spec(level: str, overrides=()):
        text = f"model m {{\n  dim = 64\n  block {{ memory {{ level {{ {level} }} }} }}\n}}\n"
        result = check_text(text, "s.nl", list(overrides))
        assert result.ok, _messages(result)
        return result.spec

    quoted = spec('objective = "l2"; lr = "learned"; state = "mlp"; period = 8',
                  ['train.optimizer="sgd"'])
    bare = spec("objective = l2; lr = learned; state = mlp; period = 8", ["train.optimizer=sgd"])
    assert quoted.model == bare.model and quoted.train.optimizer == bare.train.optimizer
    [error] = check_text('model m {\n  dim = 64\n  block { memory { level { lr = "learnt" } } }\n}\n',
                         "s.nl").diagnostics
    assert error.code == "E0301"


def test_a_value_out_of_range_names_the_constant_it_comes_from():
    """The error points at the use (`dim = dim`); the help names the `const` line that wrote the value
    (a researcher's audit: `const dim = -8` was reported only where it is used)."""
    text = "const width = -8\nconst _unused = 1\nmodel m {\n  dim = width\n  block { mlp { } }\n}\n"
    [error] = check_text(text, "c.nl").diagnostics
    assert (error.code, error.span.line) == ("E0302", 4)
    assert error.help == "the value comes from `const width` at c.nl:1"
    [error] = check_text(text, "c.nl", ["width=-4"]).diagnostics
    assert error.help == "the value comes from `--set width=-4`", "an override is named as before"


@pytest.mark.parametrize(("text", "help"), [
    ("model m {\n  dim = 64\n  steps = 10\n  block { mlp { } }\n}\n",
     "`steps` belongs in the `train` section: `train { steps = … }`"),
    ("model m {\n  dim = 64\n  block { mlp { } }\n}\ntrain { dim = 32 }\n", "`dim` belongs in the `model` section"),
    ("model m {\n  dim = 64\n  block { mlp { } }\n}\ntrain { weight_decay = 0.1 }\n",
     "`weight_decay` is an argument of the optimizer: `optimizer = adamw(weight_decay = …)`, or "
     "`--set train.optimizer.weight_decay=…`"),
])
def test_a_setting_in_the_wrong_section_says_where_it_belongs(text, help):
    [error] = check_text(text, "w.nl").diagnostics
    assert (error.code, error.help) == ("E0203", help)


def test_a_gate_out_of_range_is_reported_beside_the_levels_other_errors():
    """A level whose `period` fails is not built, so the layer rules never ran on it: its retention
    of 1.5 showed only once the period was fixed (a researcher's audit)."""
    text = _boundary_model("memory { level { period = 0\n retention = 1.5\n momentum = learned(max = 2) } }")
    assert [(d.code, d.span.line, d.message) for d in check_text(text, "g.nl").diagnostics] == [
        ("E0302", 4, "`period` should be greater than or equal to 1"),
        ("E0302", 5, "`retention` must lie in [0, 1], got 1.5"),
        ("E0302", 6, "`momentum` cannot exceed 1, but its `max` is 2")]


def test_an_override_of_a_section_says_to_set_one_of_its_attributes():
    """`--set model.block.lmm.level=linear` said `memory` has no attribute `level` (a researcher's audit)."""
    titans = PACKAGE_DIR.parent / "specs/titans_lmm.nl"
    [error] = check_file(titans, ["model.block.lmm.level=linear"]).diagnostics
    assert (error.code, error.message, error.help) == (
        "E0206", "override path `model.block.lmm.level`: `level` is a section, not an attribute",
        "an override sets one attribute of it, e.g. `--set model.block.lmm.level.state=linear`")
    [error] = check_file(titans, ["model.block.lmm=3"]).diagnostics
    assert error.help.endswith("`--set model.block.lmm.ATTRIBUTE=…`")
    assert check_file(titans, ["model.block.lmm.level.state=linear"]).ok


def test_an_optimizers_flows_are_checked_beside_an_update_that_fails():
    """An update that did not convert (`m ** n`) hid the levels' own errors: a cycle and a misnamed
    flow showed only once it was mended (a researcher's audit). Names the update reads wait for it."""
    text = ("optimizer bad {\n  lr = 1e-3\n  level m { flow = n; retention = 0.9 }\n"
            "  level n { flow = m; retention = 0.9 }\n  level g { flow = gradient }\n"
            "  update = m / (sqrt(vv) + 1e-8) + m ** n\n}\n"
            "model { dim = 32; block { mlp { } } }\ntrain { optimizer = bad }\n")
    assert [(d.code, d.span.line) for d in check_text(text, "o.nl").diagnostics] == [
        ("E0504", 3), ("E0505", 5), ("E0301", 6)]
    periods = ("optimizer slow {\n  level m { flow = gradients; period = 4 }\n"
               "  level n { flow = m; period = 6 }\n  update = m + n\n}\n"
               "model { dim = 32; block { mlp { } } }\ntrain { optimizer = slow }\n")
    [error] = check_text(periods, "p.nl").diagnostics
    assert (error.code, error.help) == ("E0502", "use a multiple of 4")


def test_unsetting_an_inherited_gate_on_an_outer_level_is_no_unused_setting():
    """W0705 said `momentum = none` had no effect: it is how an inherited gate is unset, and leaving
    it out inherits 0.9 (an optimizer researcher's audit)."""
    text = ("level base { period = 8; momentum = 0.9 }\nmodel m {\n  dim = 16\n  block {\n    cms {\n"
            "      level fast from base { }\n      level slow from base { period = steps(2); update = outer; "
            "momentum = none }\n    }\n  }\n}\n")
    assert check_text(text, "n.nl").diagnostics == []
    kept = text.replace("momentum = none", "momentum = 0.5")
    assert [d.code for d in check_text(kept, "n.nl").diagnostics] == ["W0705"]


@pytest.mark.parametrize(("train", "line"), [
    ("train { optimizer = adamw(lr = 0.5, weight_decay = 5) }", 5),
    ("optimizer decaying {\n  lr = 1\n  weight_decay = 3\n  level m { flow = gradients }\n}\n"
     "train { optimizer = decaying }", 7),
])
def test_a_weight_decay_that_would_flip_the_weights_sign_is_refused(train, line):
    """lr × weight_decay > 1 made p ← p (1 − lr·λ) flip every weight's sign and double it each step
    (p: 1 → −2 → 4 → −8), with no diagnostic (an optimizer researcher's audit)."""
    text = f"model m {{\n  dim = 32\n  block {{ mlp {{ }} }}\n}}\n{train}\n"
    [error] = check_text(text, "d.nl").diagnostics
    assert (error.code, error.span.line) == ("E0302", line) and "flip every weight's sign" in error.message
    assert check_text(text.replace("= 5", "= 2").replace("= 3", "= 1"), "d.nl").ok  # lr·λ ≤ 1


@pytest.mark.parametrize(("optimizer", "code", "help"), [
    ("train { optimizer = sgd_momentum }", "E0201",
     "`sgd_momentum` is the optimizer section of specs/optimizers/sgd_momentum.nl: import that file (`import "
     "\"…/optimizers/sgd_momentum.nl\" as opt`, its path from this file) and write `optimizer = opt.sgd_momentum`"),
    ("optimizer o {\n  level m { retention = 0.9 }\n  update = m / (rsqrt(m) + 1)\n}\ntrain { optimizer = o }",
     "E0301", "write it as `x ** -0.5`; an update is built from level names, numbers, + - * /, ** with a number as "
              "exponent, sqrt(…), abs(…) and sign(…)"),
    ("const m = 2\noptimizer o {\n  level m { retention = 0.9 }\n  update = m * 1\n}\ntrain { optimizer = o }",
     "E0202", "rename the constant `m` or the level"),
    ("optimizer o {\n  momentum = 0.9\n  level m { retention = 0.9 }\n}\ntrain { optimizer = o }", "E0203",
     "an `optimizer` section builds `momentum` from levels: e.g. `level momentum { flow = gradients; retention = "
     "0.9 }` with `update = momentum` (specs/optimizers/adamw.nl writes Adam's two moments so), or use the "
     "built-in `adamw(…)`"),
])
def test_an_optimizer_researchers_mistakes_get_a_way_out(optimizer, code, help):
    """From an optimizer researcher's audit: each of these named no fix (the constant one reported only
    that the level `m` was never read)."""
    text = f"model m {{\n  dim = 32\n  block {{ mlp {{ }} }}\n}}\n{optimizer}\n".replace("model m {", "model {")
    [error] = check_text(text, "o.nl").diagnostics
    assert (error.code, error.help) == (code, help)


def test_every_wrong_argument_of_a_call_is_reported():
    text = "model m {\n  dim = 32\n  block { mlp { } }\n}\ntrain { optimizer = adamw(lr = 0.1, bogus = 1, wd = 2) }\n"
    assert [(d.code, d.message) for d in check_text(text, "a.nl").diagnostics] == [
        ("E0305", "`adamw` has no argument `bogus`"), ("E0305", "`adamw` has no argument `wd`")]


def test_an_outer_cms_level_with_settings_w0705_calls_inert_still_builds(tmp_path):
    """W0705 says these settings have no effect, so the model must build with them (a review found
    that `orthogonalize` without `readout = chunk_start` passed the check and then failed to build)."""
    import warnings

    import torch

    import nldsl

    text = ("model m {\n  dim = 32\n  block { cms { level fast { period = 8 } level slow { period = steps(2)\n"
            "    update = outer\n    readout = {readout}\n    orthogonalize = newton_schulz } } }\n}\n"
            "train {{ seq_len = 16; batch = 2; steps = 4 }}\n")
    for readout, codes in (("chunk_start", ["W0705"]), ("causal", ["E0601", "W0705"])):
        spec = text.replace("{readout}", readout).replace("{{", "{").replace("}}", "}")
        result = check_text(spec, "o.nl")
        assert [d.code for d in result.diagnostics] == codes, _messages(result)
        if result.ok:
            path = tmp_path / "o.nl"
            path.write_text(spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert nldsl.load(path)(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 256)


def test_w0711_names_each_level_that_never_updates_where_its_period_was_written():
    """W0711, with the review's mends: the built-in m3's slow momentum, a token period's arithmetic,
    and a --set's own line when an override wrote the period or the weight decay."""
    base = "model m {\n  dim = 32\n  block { mlp { } }\n}\n"
    [m3] = check_text(base + "train { optimizer = m3; steps = 9; warmup = 20 }\n", "m.nl").diagnostics
    assert m3.code == "W0711" and m3.message.startswith("the built-in `m3` writes its slow momentum every 10 steps")
    assert [d.code for d in check_text(base + "train { optimizer = m3; steps = 10 }\n", "m.nl").diagnostics] == []
    hope = PACKAGE_DIR.parent / "specs/hope.nl"
    [slow] = check_file(hope, ["train.steps=10", "train.batch=2", "train.seq_len=32"]).diagnostics
    assert slow.message.startswith("level `slow` is stepped every 64 outer steps (its period of 4,096 tokens over "
                                   "the 64 tokens of a step (batch × seq_len)), more than train.steps = 10")
    section = ("optimizer slowopt {\n  lr = 0.01\n  level s { flow = gradients; period = 5 }\n}\n"
               + base + "train { optimizer = slowopt; steps = 40 }\n")
    assert check_text(section, "s.nl").diagnostics == []
    [late] = check_text(section, "s.nl", ["train.optimizer.s.period=60"]).diagnostics
    assert (late.code, late.span.path) == ("W0711", "<--set 1>")
    [decay] = check_file(hope, ["train.optimizer.weight_decay=500"]).diagnostics
    assert (decay.code, decay.span.path) == ("E0302", "<--set 1>")

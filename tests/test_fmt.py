"""The formatter: one canonical layout, every comment kept in order, meaning kept, idempotence,
and the `nldsl fmt` command (rewrite, `--check`, syntax errors, unreadable files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nldsl.checker import check_text
from nldsl.cli import main
from nldsl.fmt import format_file, format_source
from nldsl.parser import SECTION_KINDS, parse
from nldsl.source import SourceFile

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("specs/**/*.nl"))
SPEC_IDS = [str(p.relative_to(ROOT / "specs")) for p in SPECS]
SPEC_FIELDS_NOT_COMPARED = {"path", "sha256"}


def fmt(text: str) -> str:
    formatted, diagnostics = format_source(text)
    assert formatted is not None, diagnostics
    return formatted


def parsed(text: str):
    module, diagnostics = parse(SourceFile.from_text("<test>", text))
    assert module is not None, diagnostics
    return module


def without_spans(value):
    if isinstance(value, dict):
        return {k: without_spans(v) for k, v in value.items() if k != "span"}
    if isinstance(value, list):
        return [without_spans(v) for v in value]
    return value


def tree(text: str) -> dict:
    """The syntax tree, comments included, spans left out."""
    shape = without_spans(parsed(text).to_dict())
    for comment in shape["comments"]:
        comment["text"] = comment["text"].rstrip()  # the parser keeps the `\r` of a CRLF line end
    return shape


def comment_texts(text: str) -> list[str]:
    return [c.text.rstrip() for c in parsed(text).comments]


def meaning(text: str, path: Path) -> dict:
    result = check_text(text, path=str(path), base_dir=path.parent)
    assert result.ok, result.diagnostics
    return result.spec.model_dump(exclude=SPEC_FIELDS_NOT_COMPARED)


CARELESS_TITANS = """\
# a Titans-like spec written carelessly: every comment must survive
const dim = 2 ** 7   # 128
const heads = (dim // 32) ; const scale = -(-0.5) * 2  # 1.0
level titans_memory { state = mlp(depth=2, expansion=2)    # MLP
  objective = l2; rule = gd
  # the learned rates
  lr = learned(max = 0.1,) ;retention = learned()
  momentum = learned(max = 1 - 0.1) # β


  period = 4 ** 2 # C
}
block titans_block
{
  memory lmm { heads = heads ; conv = 4
    qk_norm = l2
    level from titans_memory { } # inherited
    # before the brace
  }
  mlp { activation = swiglu }   # one line
}
model titans_lmm { vocab = 256 ; dim = dim ; layers = 2
  block from titans_block { } }
train { optimizer = adamw(lr = 3e-3, weight_decay = 0.1 * scale)
  steps = 2_00 ; batch = 8 ; seq_len = 256 }
# the end
"""

CARELESS_TITANS_FORMATTED = """\
# a Titans-like spec written carelessly: every comment must survive
const dim = 2 ** 7               # 128
const heads = (dim // 32)
const scale = -(-0.5) * 2        # 1.0

level titans_memory {
  state = mlp(depth = 2, expansion = 2)  # MLP
  objective = l2
  rule = gd
  # the learned rates
  lr = learned(max = 0.1)
  retention = learned()
  momentum = learned(max = 1 - 0.1)  # β

  period = 4 ** 2                # C
}

block titans_block {
  memory lmm {
    heads = heads
    conv = 4
    qk_norm = l2
    level from titans_memory { }  # inherited
    # before the brace
  }
  mlp { activation = swiglu }    # one line
}

model titans_lmm {
  vocab = 256
  dim = dim
  layers = 2
  block from titans_block { }
}

train {
  optimizer = adamw(lr = 3e-3, weight_decay = 0.1 * scale)
  steps = 2_00
  batch = 8
  seq_len = 256
}
# the end
"""

# Parse but need not check: layouts and comment positions the shipped specs never use.
TRICKY = {
    "careless_titans": CARELESS_TITANS,
    "comments_everywhere": """\


# header

import "a.nl"   as   a  # on an import
import "b\\"q\\\\.nl"
const   x=-3;const y = 2**-x ** 2 # power
model m from a.base { vocab = 256 ; dim = x   # dim
  # before an empty section

  block b { }   # after an empty section
  level l # inside a header
    from q {  # after a brace
    lr = adamw(3e-4, weight_decay=0.1, betas = [0.9, 0.99,],) # after a call
    adaptive = [k,  # inside a list
      # on its own line inside a list
      v]  # after a list
    # before a closing brace
  }
  level e { # inside an otherwise empty section
  }
  level f {
    # alone in a section
  }

}
train { steps = 1 } # after a one-line section
# at the end

# at the very end""",
    "nested_sections": """\
model m{block{selfmod s{level a from b.c{period=1;level memory{x=[]}}};cms{level{ }}}}
""",
    "expressions": """\
const a = ((1))
const b = - - 2 ** - 3 ** 4
const c = 1_000 * 3e-4 / .5 // 2. % 1E+3 - 7
const d = f() + g(1,) + h(2, k = -1) + m.n.o(p.q)
const e = ["", "\\t\\n", "\\\\q", "η", true, false, [[]]]
""",
    "only_comments": "# one\n\n\n# two\n",
    "empty": "",
    "crlf": "const a = 1  # one\r\nconst b = 2\r\n",
}


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_is_stable(path: Path):
    once = fmt(path.read_text(encoding="utf-8"))
    assert fmt(once) == once


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_keeps_meaning(path: Path):
    text = path.read_text(encoding="utf-8")
    assert meaning(fmt(text), path) == meaning(text, path)


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_keeps_comments_in_order(path: Path):
    text = path.read_text(encoding="utf-8")
    assert comment_texts(fmt(text)) == comment_texts(text)


@pytest.mark.parametrize("name", TRICKY)
def test_tricky_input_is_stable_and_keeps_tree_and_comments(name: str):
    text = TRICKY[name]
    once = fmt(text)
    assert fmt(once) == once
    assert tree(once) == tree(text)  # comments included, in order
    assert comment_texts(once) == comment_texts(text)


@pytest.mark.parametrize(("written", "canonical"), [
    # a section written on one line stays on one: `; ` after attributes, a space after sections
    ("train {steps=3 seq_len = 8;}\n", "train { steps = 3; seq_len = 8 }\n"),
    ("block { memory a { heads = 2 level from m { period=4 } } mlp { } }\n",
     "block { memory a { heads = 2; level from m { period = 4 } } mlp { } }\n"),
    # written over lines, or wider than ONE_LINE_WIDTH, it is one member per line
    ("train { steps = 3\n seq_len = 8 }\n", "train {\n  steps = 3\n  seq_len = 8\n}\n"),
    ("level a { x = " + "1 + " * 30 + "1 }\n", "level a {\n  x = " + "1 + " * 30 + "1\n}\n"),
])
def test_one_line_sections(written: str, canonical: str):
    assert fmt(written) == canonical and fmt(canonical) == canonical


@pytest.mark.parametrize("depth", [0, 1])
def test_a_one_line_section_stays_while_it_fits_the_width_indent_included(depth: int):
    from nldsl.fmt import INDENT, ONE_LINE_WIDTH

    for width, kept in ((ONE_LINE_WIDTH, True), (ONE_LINE_WIDTH + 1, False)):
        line = f"level {'x' * (width - len(INDENT * depth) - len('level  { a = 1 }'))} {{ a = 1 }}"
        assert len(INDENT * depth + line) == width
        text = f"{line}\n" if depth == 0 else f"block {{\n{INDENT}{line}\n}}\n"
        assert (fmt(text) == text) == kept, (width, depth)


def test_careless_spec_gets_the_canonical_layout():
    assert fmt(CARELESS_TITANS) == CARELESS_TITANS_FORMATTED


def test_careless_spec_keeps_meaning(tmp_path: Path):
    path = tmp_path / "careless.nl"
    assert meaning(fmt(CARELESS_TITANS), path) == meaning(CARELESS_TITANS, path)


@pytest.mark.parametrize(("written", "canonical"), [
    ("1+2*3", "1 + 2 * 3"),
    ("-3", "-3"),
    ("- - x", "--x"),
    ("a-(-b)", "a - (-b)"),
    ("2**-3**4", "2 ** -3 ** 4"),
    ("-a**b", "-a ** b"),
    ("((a))", "((a))"),
    ("a//b%c", "a // b % c"),
    ("3e-4", "3e-4"),
    ("1_000", "1_000"),
    (".5", ".5"),
    ("2.", "2."),
    ('"a\\"b\\\\c"', '"a\\"b\\\\c"'),
    ('"\t"', '"\\t"'),
    ("f()", "f()"),
    ("f(1,2,)", "f(1, 2)"),
    ("f(2,k=1)", "f(2, k = 1)"),
    ("m.n(x.y)", "m.n(x.y)"),
    ("[ ]", "[]"),
    ("[1 ,[2,3],]", "[1, [2, 3]]"),
    ("true", "true"),
])
def test_expression_layout(written: str, canonical: str):
    assert fmt(f"const x = {written}") == f"const x = {canonical}\n"


@pytest.mark.parametrize(("written", "code", "message"), [
    ('"optimizers\\muon.nl"', "E0102", "unknown escape `\\m` in a string"),
    ('"\\q"', "E0102", "unknown escape `\\q` in a string"),
    ("f(k=1,2)", "E0305", "a positional argument follows a keyword argument"),
])
def test_input_fmt_would_change_the_meaning_of_is_refused(written: str, code: str, message: str):
    formatted, diagnostics = format_source(f"const x = {written}\n")
    assert formatted is None
    assert [(d.code, d.message) for d in diagnostics] == [(code, message)]


@pytest.mark.parametrize(("written", "canonical"), [
    # a trailing comment follows the last statement that ended on its line
    ("level a { x = 1 } # c\n", "level a { x = 1 }                # c\n"),
    ("level a { x = 1\n  y = 2 } # c\n", "level a {\n  x = 1\n  y = 2                          # c\n}\n"),
    ("level a { x = 1\n} # c\n", "level a {\n  x = 1\n}                                # c\n"),
    ("level a { } # c\n", "level a { }                      # c\n"),
    ("level a { # c\n}\n", "level a {                        # c\n}\n"),
    # a comment alone on its line leads the next statement, or stays inside before `}`
    ("level a {\n# c\nx = 1 }\n", "level a {\n  # c\n  x = 1\n}\n"),
    ("level a { x = 1\n    # c\n}\n", "level a {\n  x = 1\n  # c\n}\n"),
    ("level a {\n# c\n}\n", "level a {\n  # c\n}\n"),
    # written inside a statement that is now printed on one line: moved before it
    ("const x = [1, # one\n2, # two\n3] # three\n", "# one\n# two\nconst x = [1, 2, 3]              # three\n"),
    ("level a # c\nfrom b { }\n", "# c\nlevel a from b { }\n"),
    # one run of trailing comments: column 34, or two spaces past the longest code
    ("const a = 1 # a\nconst bb = 2 # b\n",
     "const a = 1                      # a\nconst bb = 2                     # b\n"),
    ("const a = 1 # a\nconst long_name = [1, 2, 3, 4, 5, 6, 7, 8] # b\nconst c = 3\nconst d = 4 # d\n",
     "const a = 1                                 # a\n"
     "const long_name = [1, 2, 3, 4, 5, 6, 7, 8]  # b\n"
     "const c = 3\n"
     "const d = 4                      # d\n"),
])
def test_comment_placement(written: str, canonical: str):
    assert fmt(written) == canonical


@pytest.mark.parametrize(("written", "canonical"), [
    # one blank line between top-level items; runs of imports and of consts keep the author's
    ('import "a.nl"\nimport "b.nl"\n\n\nimport "c.nl"\nconst a = 1\nconst b = 2\nlevel x { }\nlevel y { }\n',
     'import "a.nl"\nimport "b.nl"\n\nimport "c.nl"\n\nconst a = 1\nconst b = 2\n\nlevel x { }\n\nlevel y { }\n'),
    # the blank line goes before the comments that lead an item
    ("level x { }\n# about y\nlevel y { }\n", "level x { }\n\n# about y\nlevel y { }\n"),
    # inside a section: at most one, none after `{` or before `}`
    ("level x {\n\n  a = 1\n\n\n\n  b = 2\n\n}\n", "level x {\n  a = 1\n\n  b = 2\n}\n"),
    # at the start of the file none, at the end as written (at most one)
    ("\n\n# top\n\n\nconst a = 1\n\n\n# bottom\n", "# top\n\nconst a = 1\n\n# bottom\n"),
    ("const a = 1;;\n;\nconst b = 2", "const a = 1\n\nconst b = 2\n"),
])
def test_blank_lines(written: str, canonical: str):
    assert fmt(written) == canonical


def test_syntax_error_gives_diagnostics_and_no_text():
    formatted, diagnostics = format_source("level a { x = }\n", "bad.nl")
    assert formatted is None
    assert [d.code for d in diagnostics] == ["E0101"]
    assert diagnostics[0].span.path == "bad.nl"


def test_empty_input_stays_empty():
    assert fmt("") == ""
    assert fmt(" \n\n;\n") == ""


# Files and the command line ------------------------------------------------------------------

def test_format_file_rewrites_unless_checking(tmp_path: Path):
    path = tmp_path / "spec.nl"
    path.write_text("const a=1\n", encoding="utf-8")
    outcome = format_file(path, check=True)
    assert (outcome.changed, outcome.diagnostics) == (True, [])
    assert path.read_text(encoding="utf-8") == "const a=1\n"
    assert format_file(path).changed
    assert path.read_text(encoding="utf-8") == "const a = 1\n"
    assert not format_file(path).changed


@pytest.mark.parametrize(("data", "formatted"), [
    (b"\xef\xbb\xbfconst a = 1\n", None), (b"const a = 1\r\nconst b = 2\r\n", None),
    (b"\xef\xbb\xbfconst a=1\r\n\r\n\r\nconst b = 2\r\n", b"\xef\xbb\xbfconst a = 1\r\n\r\nconst b = 2\r\n"),
    (b"const a = 1\r\nconst b=2\n", b"const a = 1\r\nconst b = 2\r\n"),  # mixed: the first line's end
    (b"const a = 1\nconst b = 2\r\n", b"const a = 1\nconst b = 2\n"),
])
def test_fmt_keeps_the_files_byte_order_mark_and_line_ends(tmp_path: Path, data: bytes, formatted: bytes | None):
    """As editors and other formatters do: a file already in the canonical layout, but with a BOM
    or CRLF line ends, is left alone (`fmt --check` passes it), and a file that changes keeps them."""
    path = tmp_path / "spec.nl"
    path.write_bytes(data)
    assert format_file(path).changed is (formatted is not None)
    assert path.read_bytes() == (formatted or data)
    assert not format_file(path, check=True).changed


def test_fmt_check_exit_status(tmp_path: Path, capsys):
    messy = tmp_path / "messy.nl"
    messy.write_text("level a { x = 1\ny = 2 }\n", encoding="utf-8")
    tidy = tmp_path / "tidy.nl"
    tidy.write_text("level a {\n  x = 1\n  y = 2\n}\n", encoding="utf-8")
    assert main(["fmt", "--check", str(messy)]) == 1
    assert "would reformat" in capsys.readouterr().out
    assert messy.read_text(encoding="utf-8") == "level a { x = 1\ny = 2 }\n"
    assert main(["fmt", "--check", str(tidy)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["fmt", str(messy)]) == 0
    assert "reformatted" in capsys.readouterr().out
    assert messy.read_text(encoding="utf-8") == tidy.read_text(encoding="utf-8")
    assert main(["fmt", "--check", str(messy), str(tidy)]) == 0


def test_fmt_syntax_error_reports_and_leaves_file_alone(tmp_path: Path, capsys):
    path = tmp_path / "bad.nl"
    text = "level a {\n  x = = 1\n}\n"
    path.write_text(text, encoding="utf-8")
    assert main(["fmt", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error[E0101]" in err and "bad.nl:2:" in err and "x = = 1" in err
    assert path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(("name", "data", "message"), [
    ("latin1.nl", b"const a = 1  # caf\xe9\n", "is not valid UTF-8"),
    ("missing.nl", None, "cannot read"),
])
def test_fmt_unreadable_file_is_a_diagnostic(tmp_path: Path, capsys, name: str, data: bytes | None, message: str):
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    assert main(["fmt", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error[E0105]" in err and message in err and "Traceback" not in err
    if data is not None:
        assert path.read_bytes() == data


# Random specs from the grammar ----------------------------------------------------------------

NAMES = ("a", "dim", "lr_2", "heads", "x")
NUMBERS = ("0", "7", "1_000", "3e-4", "2.5", ".5", "2.", "1E+3")
STRINGS = ('""', '"x"', '"a\\"b"', '"tab\\t"', '"\\\\"', '"η"', '"\\\\q"')
OPERATORS = ("+", "-", "*", "/", "//", "%", "**")
# Between any two tokens: spaces, line breaks, `;` and comments are all insignificant.
SEPARATORS = (" ", "  ", "\t", "\n", "\n\n\n", " ; ", ";\n", "  # note\n", "\n# own line η\n\n", " #\n")


def references(draw) -> list[str]:
    tokens = [draw(st.sampled_from(NAMES))]
    if draw(st.booleans()):
        tokens += [".", draw(st.sampled_from(NAMES))]
    return tokens


def separated(draw, parts: list[list[str]], trailing_comma: bool) -> list[str]:
    tokens: list[str] = []
    for index, part in enumerate(parts):
        if index:
            tokens.append(",")
        tokens += part
    if parts and trailing_comma:
        tokens.append(",")
    return tokens


@st.composite
def expressions(draw, depth: int = 0) -> list[str]:
    shape = draw(st.sampled_from(("atom", "atom", "binary", "negate", "group", "call", "list")))
    if depth >= 3 or shape == "atom":
        atom = draw(st.sampled_from(("number", "string", "bool", "reference")))
        if atom == "number":
            return [draw(st.sampled_from(NUMBERS))]
        if atom == "string":
            return [draw(st.sampled_from(STRINGS))]
        if atom == "bool":
            return [draw(st.sampled_from(("true", "false")))]
        return references(draw)
    inner = expressions(depth + 1)
    if shape == "binary":
        return [*draw(inner), draw(st.sampled_from(OPERATORS)), *draw(inner)]
    if shape == "negate":
        return ["-", *draw(inner)]
    if shape == "group":
        return ["(", *draw(inner), ")"]
    if shape == "list":
        items = draw(st.lists(inner, max_size=3))
        return ["[", *separated(draw, items, draw(st.booleans())), "]"]
    keyword = st.tuples(st.sampled_from(NAMES), inner).map(lambda kv: [kv[0], "=", *kv[1]])
    positional = draw(st.lists(inner, max_size=2))
    keywords = draw(st.lists(keyword, max_size=2))  # after the positional ones, as the language requires
    return [*references(draw), "(", *separated(draw, positional + keywords, draw(st.booleans())), ")"]


@st.composite
def sections(draw, depth: int = 0) -> list[str]:
    tokens = [draw(st.sampled_from(SECTION_KINDS))]
    if draw(st.booleans()):
        tokens.append(draw(st.sampled_from(NAMES + SECTION_KINDS)))
    if draw(st.booleans()):
        tokens += ["from", *references(draw)]
    tokens.append("{")
    for _ in range(draw(st.integers(0, 3))):
        if depth < 2 and draw(st.integers(0, 3)) == 0:
            tokens += draw(sections(depth + 1))
        else:
            tokens += [draw(st.sampled_from(NAMES + SECTION_KINDS)), "=", *draw(expressions())]
    return [*tokens, "}"]


@st.composite
def items(draw) -> list[str]:
    kind = draw(st.sampled_from(("import", "const", "section", "section")))
    if kind == "import":
        alias = ["as", draw(st.sampled_from(NAMES))] if draw(st.booleans()) else []
        return ["import", draw(st.sampled_from(STRINGS)), *alias]
    if kind == "const":
        return ["const", draw(st.sampled_from(NAMES)), "=", *draw(expressions())]
    return draw(sections())


@st.composite
def spec_texts(draw) -> str:
    tokens = [token for item in draw(st.lists(items(), max_size=4)) for token in item]
    separators = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens) + 1, max_size=len(tokens) + 1))
    return "".join(separator + token for separator, token in zip(separators, [*tokens, ""]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_texts())
def test_random_specs_round_trip(text: str):
    once = fmt(text)
    assert tree(once) == tree(text)
    assert fmt(once) == once


def test_a_write_that_fails_part_way_leaves_the_spec_as_it_was(tmp_path: Path, monkeypatch):
    # a full disk or a file-size limit had left the spec cut short mid-line
    import nldsl.files

    spec = tmp_path / "careless.nl"
    written = "model   {  dim = 32 ; layers = 1 ; block { mlp { } } }\n"
    spec.write_text(written)
    spec.chmod(0o640)

    def disk_full(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nldsl.files, "write_file", disk_full)
    outcome = format_file(spec)
    assert outcome.diagnostics and "no space left on device" in outcome.diagnostics[0].message
    assert spec.read_text() == written and [p.name for p in tmp_path.iterdir()] == ["careless.nl"]
    monkeypatch.undo()
    assert format_file(spec).changed and spec.read_text() != written
    assert spec.stat().st_mode & 0o777 == 0o640  # the rewritten spec keeps its permissions


def test_formatting_through_a_symbolic_link_rewrites_the_file_it_names(tmp_path: Path):
    real = tmp_path / "real.nl"
    real.write_text("model   {  dim = 32 ; layers = 1 ; block { mlp { } } }\n")
    link = tmp_path / "link.nl"
    link.symlink_to(real)
    assert format_file(link).changed
    assert link.is_symlink()  # the link stays a link, and the file it names holds the new layout
    assert not format_file(real).changed and real.read_text().startswith("model {")


def test_an_atomic_write_names_the_users_file_not_its_temporary(tmp_path):
    from nldsl.files import write_atomic

    (tmp_path / "resolved.json").mkdir()  # a folder where the file goes
    with pytest.raises(IsADirectoryError) as error:
        write_atomic(tmp_path / "resolved.json", b"{}")
    assert error.value.filename == str(tmp_path / "resolved.json")
    assert [p.name for p in tmp_path.iterdir()] == ["resolved.json"]  # no temporary left behind


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full, a device that is always full")
def test_a_write_that_fails_for_want_of_space_names_its_file(tmp_path, monkeypatch):
    """A write's or an fsync's OSError has no file name: a resumed run that could not rewrite its
    metrics.jsonl on a full disk said only `error: No space left on device`."""
    import nldsl.files
    from nldsl.files import write_atomic, write_file

    for write in (write_file, write_atomic):  # write_atomic writes a device through
        with pytest.raises(OSError) as error:
            write(Path("/dev/full"), b"x" * 100)
        assert (error.value.errno, error.value.filename) == (28, "/dev/full"), write

    target = tmp_path / "metrics.jsonl"
    target.write_text("kept\n")
    real_open = open
    monkeypatch.setattr(nldsl.files, "open", lambda path, mode: _Unwritable(real_open(path, mode)), raising=False)
    with pytest.raises(OSError) as error:
        write_atomic(target, b"new\n")
    assert error.value.filename == str(target), "the user's file, not the temporary"
    assert target.read_text() == "kept\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


class _Unwritable:
    """A file object whose writes fail as a full disk's do: with an OSError naming no file."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        raise OSError(28, "No space left on device")


def test_trailing_comments_align_with_their_own_depth_not_a_deeper_line():
    text = "level x {\n  a = 1  # c\n  level y {  # d\n    " + "b" * 40 + " = 2  # e\n  }\n}\n"
    formatted, diagnostics = format_source(text)
    assert not diagnostics
    assert formatted == ("level x {\n"
                         "  a = 1                          # c\n"
                         "  level y {                      # d\n"
                         "    bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb = 2  # e\n"
                         "  }\n"
                         "}\n")

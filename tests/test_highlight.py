"""The Pygments lexer: round-trips every shipped spec without errors, gives each construct its
token kind, follows the grammar's keywords, and is found by name and by file name."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import lark
import pytest
from pygments.lexers import find_lexer_class_for_filename, get_lexer_by_name
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String, Whitespace

from nldsl.highlight import NestedLearningLexer
from nldsl.parser import grammar_text

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("specs/**/*.nl"))
SPEC_IDS = [str(p.relative_to(ROOT / "specs")) for p in SPECS]
REGISTERED = any(e.value == "nldsl.highlight:NestedLearningLexer" for e in entry_points(group="pygments.lexers"))
NOT_INSTALLED = "the `pygments.lexers` entry point is registered by installing nldsl (pip install -e .)"


def tokens(text: str) -> list[tuple]:
    return list(NestedLearningLexer().get_tokens(text))


def visible(text: str) -> list[tuple]:
    return [(kind, value) for kind, value in tokens(text) if kind not in Whitespace]


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_shipped_spec_lexes_without_errors_and_round_trips(path: Path):
    text = path.read_text(encoding="utf-8")
    lexed = tokens(text)
    assert "".join(value for _, value in lexed) == text
    assert [value for kind, value in lexed if kind in Error] == []


def test_snippet_token_kinds():
    snippet = """\
import "titans_lmm.nl" as titans
const dim = 2 ** -7  # width
level memory from titans.titans_memory {
  lr = learned(max = 0.1)
  flag = true
  s = "a\\"b"
}
train { optimizer = adamw(1_000, [x.y]) }
"""
    assert visible(snippet) == [
        (Keyword.Namespace, "import"), (String.Double, '"'), (String.Double, "titans_lmm.nl"),
        (String.Double, '"'), (Keyword.Namespace, "as"), (Name.Namespace, "titans"),
        (Keyword.Namespace, "const"), (Name.Constant, "dim"), (Operator, "="), (Number.Integer, "2"),
        (Operator, "**"), (Operator, "-"), (Number.Integer, "7"), (Comment.Single, "# width"),
        (Keyword.Declaration, "level"), (Name.Class, "memory"), (Keyword.Namespace, "from"),
        (Name.Class, "titans.titans_memory"), (Punctuation, "{"),
        (Name.Attribute, "lr"), (Operator, "="), (Name.Function, "learned"), (Punctuation, "("),
        (Name.Attribute, "max"), (Operator, "="), (Number.Float, "0.1"), (Punctuation, ")"),
        (Name.Attribute, "flag"), (Operator, "="), (Keyword.Constant, "true"),
        (Name.Attribute, "s"), (Operator, "="), (String.Double, '"'), (String.Double, "a"),
        (String.Escape, '\\"'), (String.Double, "b"), (String.Double, '"'),
        (Punctuation, "}"),
        (Keyword.Declaration, "train"), (Punctuation, "{"), (Name.Attribute, "optimizer"), (Operator, "="),
        (Name.Function, "adamw"), (Punctuation, "("), (Number.Integer, "1_000"), (Punctuation, ","),
        (Punctuation, "["), (Name, "x"), (Punctuation, "."), (Name, "y"), (Punctuation, "]"),
        (Punctuation, ")"), (Punctuation, "}"),
    ]


@pytest.mark.parametrize(("number", "kind"), [
    ("7", Number.Integer), ("1_000", Number.Integer), ("3e-4", Number.Float), ("2.5", Number.Float),
    (".5", Number.Float), ("2.", Number.Float), ("1E+3", Number.Float),
])
def test_numbers(number: str, kind):
    assert visible(f"const a = {number}")[-1] == (kind, number)


def test_bad_characters_are_errors_but_text_is_kept():
    text = 'const a = $ + "open\n'
    lexed = tokens(text)
    assert "".join(value for _, value in lexed) == text
    assert [value for kind, value in lexed if kind in Error] == ["$", "\n"]


def test_keywords_follow_the_grammar():
    grammar = lark.Lark(grammar_text(), parser="lalr")
    keywords = {t.pattern.value for t in grammar.terminals
                if t.pattern.type == "str" and t.pattern.value.isidentifier()}
    assert keywords  # the grammar spells its keywords as string terminals
    for keyword in sorted(keywords):
        (kind, value), *_ = visible(f"{keyword} ")
        assert value == keyword and kind in Keyword, keyword


@pytest.mark.skipif(not REGISTERED, reason=NOT_INSTALLED)
@pytest.mark.parametrize("alias", ["nl", "nldsl"])
def test_found_by_name(alias: str):
    assert isinstance(get_lexer_by_name(alias), NestedLearningLexer)


@pytest.mark.skipif(not REGISTERED, reason=NOT_INSTALLED)
def test_found_by_file_name_before_newlisp():
    assert find_lexer_class_for_filename("hope.nl") is NestedLearningLexer
    text = (ROOT / "specs" / "hope.nl").read_text(encoding="utf-8")
    assert find_lexer_class_for_filename("hope.nl", text) is NestedLearningLexer


def test_a_spec_is_recognised_by_a_section_header_also_when_indented():
    assert NestedLearningLexer.analyse_text("# a spec\nmodel m {\n}\n") > 0
    assert NestedLearningLexer.analyse_text("// x\n  model m {\n}\n") > 0
    assert NestedLearningLexer.analyse_text("def model(m):\n    return m\n") == 0

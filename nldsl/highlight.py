"""A Pygments lexer for `.nl` files, for documentation and terminals (`pygmentize -l nl spec.nl`).

The keywords come from the parser's list of the grammar's keyword terminals, so a keyword added
to the grammar is highlighted without touching this file. Token kinds:
- section kinds (`model`, `level`, …) are Keyword.Declaration and the section's name Name.Class;
- `import`, `as`, `const`, `from` are Keyword.Namespace; `true`/`false` Keyword.Constant;
- a name followed by `=` is Name.Attribute (attribute keys and keyword arguments), a name
  followed by `(` is Name.Function, the name a `const` declares is Name.Constant;
- numbers, strings with their escapes, comments, operators and punctuation as usual.
Registered under the alias `nl` through the `pygments.lexers` entry point in pyproject.toml.
"""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

from .parser import KEYWORDS, SECTION_KINDS

NAMESPACE_KEYWORDS = tuple(k for k in KEYWORDS if k in ("import", "as", "const", "from"))
CONSTANT_KEYWORDS = tuple(k for k in KEYWORDS if k in ("true", "false"))
OTHER_KEYWORDS = tuple(k for k in KEYWORDS if k not in (*SECTION_KINDS, *NAMESPACE_KEYWORDS, *CONSTANT_KEYWORDS))
KEYWORD_TOKENS = (
    (SECTION_KINDS, Keyword.Declaration),
    (NAMESPACE_KEYWORDS, Keyword.Namespace),
    (CONSTANT_KEYWORDS, Keyword.Constant),
    (OTHER_KEYWORDS, Keyword),  # none today; a keyword the grammar gains later lands here
)

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
SPACE = r"[ \t\f\r\n]"  # newlines are insignificant in the language
SECTION_KIND = "(" + "|".join(SECTION_KINDS) + r")\b"
SECTION_HEADER = re.compile(rf"^[ \t]*{SECTION_KIND}[^\n#]*\{{", re.MULTILINE)


class NestedLearningLexer(RegexLexer):
    """Highlights nldsl specs: sections, attributes, constants, calls and expressions."""

    name = "nldsl"
    aliases = ["nl", "nldsl"]  # noqa: RUF012 (Pygments reads plain class attributes)
    filenames = ["*.nl"]  # noqa: RUF012
    mimetypes = ["text/x-nldsl"]  # noqa: RUF012
    priority = 0.5  # newLISP claims `*.nl` too; with no text to look at, a spec is the better bet

    tokens = {  # noqa: RUF012
        "root": [
            (rf"{SPACE}+", Whitespace),
            (r"#[^\r\n]*", Comment.Single),
            (r'"', String.Double, "string"),
            (rf"(const)({SPACE}+)({NAME})", bygroups(Keyword.Namespace, Whitespace, Name.Constant)),
            (rf"(as)({SPACE}+)({NAME})", bygroups(Keyword.Namespace, Whitespace, Name.Namespace)),
            (rf"(from)({SPACE}+)({NAME}(?:\.{NAME})*)", bygroups(Keyword.Namespace, Whitespace, Name.Class)),
            # before the keywords: a section kind is also a valid attribute key (`optimizer = …`)
            (rf"({NAME})({SPACE}*)(=)", bygroups(Name.Attribute, Whitespace, Operator)),
            (rf"{SECTION_KIND}({SPACE}+)(?!from\b)({NAME})(?={SPACE}*(?:from\b|\{{))",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            *[(words(group, suffix=r"\b"), token) for group, token in KEYWORD_TOKENS if group],
            (r"([0-9]+(_[0-9]+)*\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+(_[0-9]+)*[eE][+-]?[0-9]+", Number.Float),
            (r"[0-9]+(_[0-9]+)*", Number.Integer),
            (rf"{NAME}(?={SPACE}*\()", Name.Function),
            (NAME, Name),
            (r"\*\*|//|[-+*/%=]", Operator),
            (r"[{}()\[\],.;]", Punctuation),
        ],
        "string": [
            (r'[^"\\\n]+', String.Double),
            (r"\\.", String.Escape),
            (r'"', String.Double, "#pop"),
            (r"\n", Error, "#pop"),  # strings end on their line; the checker says so in words
        ],
    }

    @staticmethod
    def analyse_text(text: str) -> float:
        """How much `text` looks like a spec: a section header at the start of a line."""
        return 0.5 if SECTION_HEADER.search(text) else 0.0

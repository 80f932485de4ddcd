"""Parsing: `.nl` text → `ast.Module`, or syntax diagnostics that say what was expected in words.

The grammar lives in `grammar/nl.lark` (installed as `nldsl.grammar`). Syntax errors are
recovered from by skipping the offending token, so several can be reported in one run; a
cascade of errors on the same line is reported once.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
import string
from importlib import resources

import lark
from lark import Token, Tree

from . import ast
from .diagnostics import Diagnostic, DiagnosticBag, closest
from .source import SourceFile, Span

KEYWORDS = ("import", "as", "const", "from", "true", "false", "model", "block", "level", "memory",
            "selfmod", "attention", "mlp", "cms", "parallel", "context", "optimizer", "train")
# Keywords that can never be names. The contextual lexer reads them as names where only a name
# fits (`const true = 0`), so the builder rejects them there; section kinds may name sections and keys.
RESERVED_WORDS = frozenset({"import", "as", "const", "from", "true", "false"})
SECTION_KINDS = ("model", "block", "level", "memory", "selfmod", "attention", "mlp", "cms",
                 "parallel", "context", "optimizer", "train")

# How a syntax error describes each terminal: never an internal token name.
TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "EQUALS": "`=`",
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "COMMA": "`,`", "DOT": "`.`", "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`",
    "DSLASH": "`//`", "PERCENT": "`%`", "POWER": "`**`", "$END": "the end of the file",
    **{kw.upper(): f"`{kw}`" for kw in KEYWORDS},
}

MAX_SYNTAX_ERRORS = 20
MAX_NESTING = 64  # sections and expressions; the tree is built (and later walked) recursively


def grammar_text() -> str:
    """The grammar, found through the package (works from a checkout and from a wheel)."""
    return resources.files("nldsl.grammar").joinpath("nl.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                     maybe_placeholders=True)


OPERATORS = frozenset({"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT", "POWER"})
VALUE_STARTS = frozenset({"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS"})
# How "the next item of a file" reads in a hint; the checker spots it in an override's diagnostics
SECTION_EXPECTED = "a section (`model`, `block`, `level`, …)"


def describe_expected(expected: set[str] | frozenset[str]) -> str:
    """Say in words what the parser would have accepted, grouping families of terminals."""
    expected = set(expected)
    words: list[str] = []
    kinds = {k.upper() for k in SECTION_KINDS} & expected
    if len(kinds) >= 3:
        expected -= kinds
        words.append(SECTION_EXPECTED)
    if VALUE_STARTS - {"TRUE", "FALSE"} <= expected:
        expected -= VALUE_STARTS
        words.append("a value")
    if OPERATORS <= expected:
        expected -= OPERATORS
        words.append("an operator")
    words.extend(sorted(TERMINAL_NAMES.get(name, name.lower()) for name in expected))
    if not words:
        return "nothing more"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type in ("NAME", "NUMBER", "STRING"):
        return f"{token.type.lower()} `{token.value}`"
    return f"`{token.value}`"


def parse(source: SourceFile) -> tuple[ast.Module | None, list[Diagnostic]]:
    """Parse a whole file. Returns the module (None if there were syntax errors) and diagnostics.

    After a syntax error the offending line (and the line before it, when the error sits at the
    start of a line: the previous line was probably left unfinished) is blanked out and the file
    is parsed again, so independent errors further down are reported in the same run. An
    unexpected end of file after a first error is a cascade and is not reported.
    """
    bag = DiagnosticBag()
    text = source.text
    for _ in range(MAX_SYNTAX_ERRORS):
        try:
            tree = _lark().parse(text)
        except lark.exceptions.UnexpectedInput as error:
            misspelt = _misspelt_keyword(source, text, error) or _word_after_value(source, text, error)
            diagnostic = misspelt[0] if misspelt else (
                _malformed_number(source, text, error) or _syntax_diagnostic(source, error, text))
            if bag.items and (diagnostic.code == "E0103" or diagnostic.span is None
                              or diagnostic.span.line <= bag.items[-1].span.line):  # type: ignore[union-attr]
                break
            bag.items.append(diagnostic)
            if diagnostic.span is None or diagnostic.code == "E0103":
                break
            if misspelt and misspelt[1] is not None:  # read on as if the keyword were right (or the word gone)
                start, end, word = misspelt[1]
                text = text[:start] + word + text[end:]
            else:
                text = _blank_lines(source, text, diagnostic.span)
            continue
        if bag.items:
            break
        found = _too_deep(tree)
        if found is not None:
            deep, chain = found
            start = getattr(deep.meta, "start_pos", 0)
            sections = deep.data == "section" or any(
                isinstance(child, Tree) and child.data == "section" for child in deep.children)
            help = ("nest fewer sections: name a block or level at the top of the file and inherit it with "
                    "`from`" if sections else "flatten the expression with named constants")
            what = f"nested more than {MAX_NESTING} levels deep"
            if chain:  # a long flat chain `1 + 1 + …` nests one level per operator
                what += " (each operator of a chain such as `a + b + c` is a level)"
                help = "split the chain into named constants, e.g. `const first = …` for its first half"
            return None, [Diagnostic("E0104", what, source.span(start, start + 1), help)]
        comment_nodes = tuple(ast.Comment(_span(source, tok), str(tok)) for tok in _comments(source))
        builder = _Builder(source)
        module = builder.module(tree, comment_nodes)
        if builder.problems:  # well-formed for the grammar, but with a part that has no meaning
            return None, builder.problems
        return module, []
    return None, bag.sorted()


def _too_deep(tree: Tree) -> tuple[Tree, bool] | None:
    """The first node nested deeper than `MAX_NESTING`, found without recursion, and whether most of
    the levels above it are operators (a long chain `1 + 1 + …` rather than nested groups or sections)."""
    stack = [(tree, 0, 0)]
    while stack:
        node, depth, operators = stack.pop()
        if depth > MAX_NESTING:
            return node, 2 * operators > depth
        operators += node.data == "binary"
        stack.extend((child, depth + 1, operators) for child in node.children if isinstance(child, Tree))
    return None


def _blank_lines(source: SourceFile, text: str, span: Span) -> str:
    first = span.line
    if span.column == 1 or not source.line_text(span.line)[: span.column - 1].strip():
        first = max(1, span.line - 1)
    start = source.line_starts[first - 1]
    end = source.line_starts[span.line] if span.line < len(source.line_starts) else len(text)
    return text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]


def _comments(source: SourceFile) -> list[Token]:
    """Comments, found by lexing (the parser ignores them; the formatter keeps them)."""
    return [tok for tok in _lark().lex(source.text, dont_ignore=True) if tok.type == "COMMENT"]


# Every character some token of the grammar (grammar/nl.lark) can hold outside strings and comments.
LANGUAGE_CHARACTERS = frozenset(string.ascii_letters + string.digits + '_"=(){}[],.+-*/%#;' + " \t\f\r\n")


# What follows a section kind: an optional name, an optional `from BASE`, then `{`
SECTION_OPENING = re.compile(r"(?:[A-Za-z_]\w*\s+)?(?:from\s+[A-Za-z_][\w.]*\s*)?\{")

# `key =` at the end of a line (a comment after it aside), then a name: what precedes an `=` that the
# parser did not expect when a value was left out and the next attribute's key was read as it
UNFINISHED_ATTRIBUTE = re.compile(r"([A-Za-z_]\w*)\s*(=)[ \t\f]*(#[^\n]*)?\r?\n\s*[A-Za-z_]\w*\s*$")


def _syntax_diagnostic(source: SourceFile, error: lark.exceptions.UnexpectedInput, text: str) -> Diagnostic:
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        pos = error.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        span = source.span(pos, pos + 1)
        if char == '"':
            return Diagnostic("E0102", "unterminated string", span,
                              "strings are written on one line between double quotes")
        if char == "\r":  # CRLF is a line end; a CR alone is not, and the lexer must not read past it
            return Diagnostic("E0102", "a carriage return (U+000D) without a line feed after it", span,
                              "the file has classic Mac line ends or a stray CR: save it with `\\n` (or `\\r\\n`) "
                              "line ends")
        shown = repr(char)[1:-1] if char.isprintable() and char.strip() else f"U+{ord(char):04X}"
        before = re.split(r"[{;(,]", text[text.rfind("\n", 0, pos) + 1:pos])[-1].strip()
        if char == ":" and re.fullmatch(r"[A-Za-z_]\w*", before):  # `retention: 0.9`, as in YAML
            return Diagnostic("E0102", "unexpected character `:`", span,
                              f"a section is written `{before} {{ … }}`" if before in SECTION_KINDS else
                              f"a value is given with `=`: write `{before} = …`")
        if char not in LANGUAGE_CHARACTERS:
            # The lexer's `allowed` is the parser state's before it reduced what precedes, so it can
            # list tokens that cannot follow here; for a character no token has, say that instead.
            return Diagnostic("E0102", f"unexpected character `{shown}`", span,
                              "the language has no such character: names are ASCII letters, digits and `_`, "
                              "numbers ASCII digits, comments start with `#`")
        return Diagnostic("E0102", f"unexpected character `{shown}`", span,
                          f"expected {describe_expected(error.allowed or set())}")
    if isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        expected = {e for e in error.expected if not e.startswith("__")}
        if token.type == "$END":
            return _unexpected_end(source, text, expected)
        span = _span(source, token)
        hint = f"expected {describe_expected(expected)}"
        unfinished = UNFINISHED_ATTRIBUTE.search(text[:token.start_pos])
        if token.type == "EQUALS" and unfinished:  # `dim =` ⏎ `layers = 2` read `dim = layers`, then `= 2`
            return Diagnostic("E0101", f"`{unfinished[1]}` has no value",
                              source.span(unfinished.start(2), unfinished.end(2)),
                              f"write the value of `{unfinished[1]}` after its `=`")
        if token.type == "EQUALS" and "LBRACE" in expected:
            hint += "; a section is written `kind name { ... }`"
        if token.value == "," and "RBRACE" in expected:  # `{ period = 4, lr = 0.1 }`: commas are for arguments
            hint += "; attributes are separated by a new line or `;`, not `,`"
        return Diagnostic("E0101", f"unexpected {_token_text(token)}", span, hint)
    if isinstance(error, lark.exceptions.UnexpectedEOF):
        return _unexpected_end(source, text, set(error.expected))
    return Diagnostic("E0101", "syntax error", source.span(0, 0))


# `key = value word` on one line, up to the token after `word`: the word was read as the next key
_VALUE_THEN_WORD = re.compile(r"([A-Za-z_]\w*)[ \t]*=[ \t]*([^=;{}\n]*?[^\s=;{}])[ \t]+([A-Za-z_]\w*)\s*$")


def _word_after_value(source: SourceFile, text: str, error: lark.exceptions.UnexpectedInput
                      ) -> tuple[Diagnostic, tuple[int, int, str]] | None:
    """`period = 16 tokens`: a word after a value on its line reads as the key of another attribute,
    so the parser stops at what follows it (`}`, or the next line's key) for want of its `=`; point
    at the word instead, which is what to remove (a unit, a note that wants a `#`), and read on
    without it."""
    if not isinstance(error, lark.exceptions.UnexpectedToken) or "EQUALS" not in error.expected:
        return None
    token, start = error.token, error.token.start_pos or 0
    before = len(text[:start].rstrip())  # the word may end the line before the token (the next key)
    line_start = text.rfind("\n", 0, before) + 1
    code = text[line_start:before].split("#", 1)[0].rstrip()  # a comment's words are no stray word
    if '"' in code:  # a string may hold `=` and words: nothing to read off the line
        return None
    found = _VALUE_THEN_WORD.search(code)
    if found is None or found[3] in KEYWORDS or found[1] in KEYWORDS:
        return None
    # the word is a stray one where what follows ends the section or begins the next attribute on a
    # later line; a value after it (`retention 0.9`, or `seq_len` ⏎ `64`) is its `=` left out instead
    next_line = "\n" in text[line_start + found.end(3):start]
    if not (token.type == "RBRACE" or (next_line and token.type == "NAME")):
        return None
    word_start, word_end = line_start + found.start(3), line_start + found.end(3)
    diagnostic = Diagnostic(
        "E0101", f"unexpected name `{found[3]}` after the value of `{found[1]}`", source.span(word_start, word_end),
        f"a value takes no word after it (no unit: a period counts tokens, a size elements); remove `{found[3]}`, "
        "put a comment after `#`, or begin the next attribute on a new line or after `;`")
    return diagnostic, (word_start, word_end, " " * len(found[3]))


def _unexpected_end(source: SourceFile, text: str, expected: set[str]) -> Diagnostic:
    """E0103 at the end of the file, naming the `{` left open when that is why (in a long spec the
    end of the file is far from the section that lacks its `}`)."""
    end = len(source.text)
    opened = _unclosed_brace(text) if "RBRACE" in expected else None  # not when a value is what is missing
    if opened is None:
        return Diagnostic("E0103", "unexpected end of file", source.span(end, end),
                          f"expected {describe_expected(expected)}")
    line, column = source.position(opened)
    return Diagnostic("E0103", f"unexpected end of file: the `{{` at line {line}, column {column} is never closed",
                      source.span(opened, opened + 1), "close the section with `}`")


def _unclosed_brace(text: str) -> int | None:
    """The offset of the `{` that lacks its `}` (strings and comments skipped), or None.

    Counting alone blames the outermost section, whose `}` the others' borrowed; the indentation
    says better: a `}` that starts a line less indented than the line of the `{` it would close
    belongs to an enclosing section, and that `{` is the one left open."""
    def indent(offset: int) -> int:
        start = text.rfind("\n", 0, offset) + 1
        return len(text[start:offset]) - len(text[start:offset].lstrip(" \t"))

    opened: list[int] = []
    left_open: list[int] = []
    at = 0
    while at < len(text):
        char = text[at]
        if char == "#":
            newline = text.find("\n", at)
            at = len(text) if newline < 0 else newline
        elif char == '"':
            at += 1
            while at < len(text) and text[at] not in '"\n':
                at += 2 if text[at] == "\\" else 1
        elif char == "{":
            opened.append(at)
        elif char == "}" and opened:
            starts_line = not text[text.rfind("\n", 0, at) + 1:at].strip()
            while starts_line and len(opened) > 1 and indent(opened[-1]) > indent(at):
                left_open.append(opened.pop())
            opened.pop()
        at += 1
    return (left_open or opened[-1:] or [None])[0]


def _misspelt_keyword(source: SourceFile, text: str, error: lark.exceptions.UnexpectedInput
                      ) -> tuple[Diagnostic, tuple[int, int, str] | None] | None:
    """A name where a keyword belongs that is close to one (`modle`, `improt`), or a name close to a
    section kind before what opens a section (`mpl { }`, `mpl fast { }`, read as an attribute key
    until `=` is missing): the diagnostic points at the word and suggests the keyword. When the two
    are equally long, also the correction that lets parsing go on without a cascade of errors."""
    if not isinstance(error, lark.exceptions.UnexpectedToken) or error.token.type == "$END":
        return None
    token, expected = error.token, set(error.expected)
    start = end = None
    candidates: list[str] = []
    if token.type == "NAME":
        candidates = [kw for kw in KEYWORDS if kw.upper() in expected]
        start, end = token.start_pos or 0, token.end_pos or 0
    opens_section = SECTION_OPENING.match(text, token.start_pos or 0)  # `{`, `name {`, `from base {`, `name from …`
    if not (start is not None and candidates) and "EQUALS" in expected and opens_section:
        # the name before this token was read as an attribute key, but a section follows: a section
        # kind was probably meant (`mpl { }`); a key with its `=` left out (`activation swiglu`) is not
        words = list(re.finditer(r"[A-Za-z_]\w*", text[:token.start_pos]))
        if not words or text[words[-1].end():token.start_pos].strip():
            return None
        start, end, candidates = words[-1].start(), words[-1].end(), list(SECTION_KINDS)
    if start is None:
        return None
    word = text[start:end]
    if word in KEYWORDS:
        return None
    keyword_meant = closest(word, candidates)
    if keyword_meant is None:
        return None
    hint = f"did you mean `{keyword_meant}`?" + (
        " A section is written `kind name { ... }`" if keyword_meant in SECTION_KINDS else "")
    diagnostic = Diagnostic("E0101", f"unexpected name `{word}`", source.span(start, end), hint)
    return diagnostic, (start, end, keyword_meant) if len(keyword_meant) == len(word) else None


def _malformed_number(source: SourceFile, text: str, error: lark.exceptions.UnexpectedInput) -> Diagnostic | None:
    """A number with letters, digits or `_` stuck to it (`0x40`, `64_`, `1e`, `1.2.3`), at or before the
    error. The lexer splits `0x40` into `0` and the name `x40`, which parses as the start of the next
    attribute, so the syntax error lands a token or a line later; the number is what to point at."""
    tokens: list[Token] = []
    try:
        for token in _lark().lex(text, dont_ignore=True):
            tokens.append(token)
            if (token.start_pos or 0) > error.pos_in_stream:
                break
    except lark.exceptions.UnexpectedInput:
        pass  # a character no token takes: the tokens before it are all there is to look at
    for index, token in enumerate(tokens[:-1]):
        if token.type != "NUMBER":
            continue
        end = index + 1
        while end < len(tokens) and tokens[end].start_pos == tokens[end - 1].end_pos \
                and tokens[end].type in ("NAME", "NUMBER", "DOT"):
            end += 1
        if end > index + 1 and (token.start_pos or 0) <= error.pos_in_stream:
            word = text[token.start_pos:tokens[end - 1].end_pos]
            return Diagnostic("E0102", f"malformed number `{word}`",
                              source.span(token.start_pos or 0, tokens[end - 1].end_pos or 0),
                              "numbers are decimal: digits, `_` only between two digits, an optional fraction "
                              "and exponent (`1_000`, `0.5`, `3e-4`)")
    return None


def _span(source: SourceFile, item: Token | Tree) -> Span:
    if isinstance(item, Token):
        start, end = item.start_pos or 0, item.end_pos or 0
    else:
        start, end = item.meta.start_pos, item.meta.end_pos
    return source.span(start, end)


class _Builder:
    """Turns lark's parse tree into `ast` nodes with spans."""

    def __init__(self, source: SourceFile):
        self.source = source
        # What the grammar accepts but the language does not (a positional argument after a keyword
        # one, an unknown string escape): reported instead of guessing what was meant.
        self.problems: list[Diagnostic] = []

    def span(self, item: Token | Tree) -> Span:
        return _span(self.source, item)

    def module(self, tree: Tree, comments: tuple[ast.Comment, ...]) -> ast.Module:
        items = tuple(self.item(child) for child in tree.children)
        return ast.Module(self.source.span(0, len(self.source.text)), items, comments)

    def item(self, tree: Tree) -> ast.Import | ast.Const | ast.Section:
        if tree.data == "import_stmt":
            _, path, _, alias = tree.children
            return ast.Import(self.span(tree), self.unquote(path), self.name(alias, "an import") if alias else None)
        if tree.data == "const_stmt":
            _, name, _, value = tree.children
            return ast.Const(self.span(tree), self.name(name, "a constant"), self.span(name), self.expr(value))
        return self.section(tree)

    def section(self, tree: Tree) -> ast.Section:
        kind_tree, name_tree, _from, base, _lbrace, *members, _rbrace = tree.children
        kind_token = kind_tree.children[0]
        name = name_span = None
        if name_tree is not None:
            name_token = name_tree.children[0]
            if isinstance(name_token, Tree):  # a keyword used as a name: `level memory { }`
                name_token = name_token.children[0]
            name, name_span = str(name_token), self.span(name_token)
            if not keyword.iskeyword(name):  # a layer named `import` or `from` is E0208, with Python's keywords
                self.name(name_token, "a section")
        return ast.Section(
            self.span(tree), str(kind_token), self.span(kind_token), name, name_span,
            self.reference(base) if base is not None else None,
            tuple(self.member(m) for m in members),
        )

    def member(self, tree: Tree) -> ast.Attribute | ast.Section:
        if tree.data == "attribute":
            key_tree, _, value = tree.children
            key_token = key_tree.children[0]
            if isinstance(key_token, Tree):
                key_token = key_token.children[0]
            return ast.Attribute(self.span(tree), self.name(key_token, "an attribute"), self.span(key_token),
                                 self.expr(value))
        return self.section(tree)

    def reference(self, tree: Tree) -> ast.Ref:
        parts = tuple(str(t) for t in tree.children if isinstance(t, Token) and t.type == "NAME")
        return ast.Ref(self.span(tree), parts)

    def expr(self, tree: Tree | Token) -> ast.Expr:
        data = tree.data
        span = self.span(tree)
        if data == "number":
            text = str(tree.children[0])
            return ast.Number(span, _number(text), text)
        if data == "string":
            return ast.String(span, self.unquote(tree.children[0]))
        if data == "true":
            return ast.Bool(span, True)
        if data == "false":
            return ast.Bool(span, False)
        if data == "reference":
            return self.reference(tree)
        if data == "group":
            return ast.Group(span, self.expr(tree.children[1]))
        if data == "negate":
            return ast.Negate(span, self.expr(tree.children[1]))
        if data == "binary":
            left, op, right = tree.children
            return ast.Binary(span, str(op), self.expr(left), self.expr(right))
        if data == "list":
            items = tuple(self.expr(c) for c in tree.children if isinstance(c, Tree))
            return ast.List(span, items)
        if data == "call":
            func, _, arguments, _ = tree.children
            args: list[ast.Expr] = []
            kwargs: list[ast.KeywordArg] = []
            for arg in arguments.children if arguments is not None else ():
                if not isinstance(arg, Tree):
                    continue
                if arg.data == "keyword_argument":
                    name, _, value = arg.children
                    kwargs.append(ast.KeywordArg(self.span(arg), self.name(name, "an argument"), self.expr(value)))
                else:
                    if kwargs:  # the tree keeps positional and keyword arguments apart: the order would be lost
                        self.problems.append(Diagnostic(
                            "E0305", "a positional argument follows a keyword argument", self.span(arg),
                            f"give it by name, or move it before `{kwargs[0].name} = …`"))
                    args.append(self.expr(arg))
            return ast.Call(span, self.reference(func), tuple(args), tuple(kwargs))
        raise AssertionError(f"unhandled grammar rule {data}")

    def name(self, token: Token, what: str) -> str:
        """The text of a name token; a reserved word read as a name is reported."""
        text = str(token)
        if text in RESERVED_WORDS:
            self.problems.append(Diagnostic("E0101", f"`{text}` is a keyword: it cannot name {what}",
                                            self.span(token), "choose another name"))
        return text

    def unquote(self, token: Token) -> str:
        """The text of a string literal; an unknown escape is reported, not silently dropped."""
        text = str(token)
        body = text[1:-1]
        out, i = [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                escaped = body[i + 1]
                if escaped in STRING_ESCAPES:
                    out.append(STRING_ESCAPES[escaped])
                else:
                    start = (token.start_pos or 0) + 1 + i
                    self.problems.append(Diagnostic(
                        "E0102", f"unknown escape `\\{escaped}` in a string", self.source.span(start, start + 2),
                        "strings know the escapes \\n, \\t, \\\" and \\\\; write a backslash as `\\\\` "
                        "(or use `/` in paths)"))
                    out.append(escaped)
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)


def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    if any(c in clean for c in ".eE"):
        return float(clean)
    clean = clean.lstrip("0") or "0"  # leading zeros add digits, not value
    if len(clean) > 4000:  # beyond Python's int-from-text limit; the checker rejects it as too large
        return math.inf
    return int(clean)


STRING_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}

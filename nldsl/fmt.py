"""The formatter behind `nldsl fmt`: one canonical layout for every `.nl` file, comments kept.

The layout is printed from the syntax tree, so two files that parse to the same tree (spans
aside) come out identical, save for where the author left blank lines:
- 2-space indent, one attribute per line `key = value`, one member per line; a section opens
  with `kind name from base {` and closes with `}` on its own line; a section with no members
  and no comments inside is `kind name { }`; a section the author wrote on one line stays on one
  (`level fast { period = 16 }`, `train { steps = 3; seq_len = 8 }`: `; ` after attributes)
  while it fits in ONE_LINE_WIDTH columns;
- one blank line between top-level items, except inside a run of imports or a run of consts,
  which keep at most one blank line where the author put one; inside a section at most one
  blank line between members, none after `{` or before `}`;
- expressions on one line: numbers exactly as written, strings re-escaped, spaces around binary
  operators and around `=` of keyword arguments, `[a, b]`, parentheses as written, `;` and
  trailing commas dropped; the file ends with one newline.

Comments (the parser hands them over with spans) are attached to the printed lines:
- a comment alone on its line goes on its own line before the statement that follows it, at that
  statement's indent; one before a closing `}` stays inside the block; one after the last item
  stays at the end of the file;
- a comment after code stays at the end of the line of the last statement that ended there
  (a `}` only when nothing else ended on that line); when a section written on one line is
  expanded (it was too wide), it therefore follows its last attribute;
- a comment written inside a statement that spans lines (a list broken over lines) moves to its
  own line before that statement, since the statement is now printed on one line.
Trailing comments on consecutive lines of one block line up in one column: column 34 (the
column the shipped specs use), or two spaces after the longest code of the run when that is
further right; a blank line, a line without a trailing comment or a change of indent starts a
new run.
"""

from __future__ import annotations

import bisect
from codecs import BOM_UTF8 as BOM
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import ast
from .checker import decode, read_spec_bytes, shown_undecoded
from .diagnostics import Diagnostic
from .files import write_atomic
from .parser import parse
from .source import SourceFile

INDENT = "  "
ONE_LINE_WIDTH = 100  # a section written on one line stays on one line up to this width (indent included)
COMMENT_COLUMN = 33  # trailing comments start at least this many characters into the line
COMMENT_GAP = 2  # and at least this many spaces after the longest code of their run
INSIGNIFICANT = " \t\f\r;"  # what may surround code without being code

Role = Literal["plain", "open", "close", "comment"]


@dataclass
class FormatOutcome:
    """What formatting one file did: whether it changed (or would), and any diagnostics."""

    changed: bool
    diagnostics: list[Diagnostic]
    sources: dict[str, SourceFile]  # for rendering the diagnostics


def format_source(text: str, path: str = "<string>") -> tuple[str | None, list[Diagnostic]]:
    """Format `.nl` text. Returns (formatted text, []) or (None, syntax diagnostics)."""
    source = SourceFile.from_text(path, text)
    module, diagnostics = parse(source)
    if module is None:
        return None, diagnostics
    return _Printer(source, module).render(), []


def format_file(path: str | Path, check: bool = False) -> FormatOutcome:
    """Format a file in place (or only report, with `check`). Bad input gives diagnostics, not tracebacks."""
    path = Path(path)
    display = str(path)
    try:
        data = read_spec_bytes(path)
    except OSError as error:
        return FormatOutcome(False, [_io_error("read", display, error)], {})
    text, problem = decode(data, display)
    if problem is not None:
        return FormatOutcome(False, [problem], {display: shown_undecoded(data, display)})
    assert text is not None
    sources = {display: SourceFile.from_text(display, text)}
    formatted, diagnostics = format_source(text, display)
    if formatted is None:
        return FormatOutcome(False, diagnostics, sources)
    encoded = _as_written(formatted, data)
    changed = encoded != data
    if changed and not check:
        try:
            write_atomic(path, encoded)  # a failed write leaves the spec as it was, never cut short
        except OSError as error:
            return FormatOutcome(False, [_io_error("write", display, error)], sources)
    return FormatOutcome(changed, [], sources)


def _as_written(formatted: str, data: bytes) -> bytes:
    """The formatted text in the file's own conventions, as editors keep them: its byte-order mark,
    and CRLF line ends where its first line ends so (a file of mixed line ends takes its first's)."""
    first_end = data.find(b"\n")
    if first_end > 0 and data[first_end - 1:first_end] == b"\r":
        formatted = formatted.replace("\n", "\r\n")  # a spec's strings and comments hold no newline
    return (BOM if data.startswith(BOM) else b"") + formatted.encode("utf-8")


def _io_error(verb: str, display: str, error: OSError) -> Diagnostic:
    reason = (error.strerror or str(error)).lower()
    return Diagnostic("E0105", f"cannot {verb} `{display}`: {reason}", None, "check the path and its permissions")


# Expressions ---------------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def quote(value: str) -> str:
    """A string literal that parses back to `value`."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def expression(expr: ast.Expr) -> str:
    """An expression on one line. The tree came from the parser, so no parentheses need adding."""
    match expr:
        case ast.Number():
            return expr.text
        case ast.String():
            return quote(expr.value)
        case ast.Bool():
            return "true" if expr.value else "false"
        case ast.Ref():
            return expr.dotted
        case ast.Call():
            arguments = [expression(a) for a in expr.args]
            arguments += [f"{k.name} = {expression(k.value)}" for k in expr.kwargs]
            return f"{expr.func.dotted}({', '.join(arguments)})"
        case ast.List():
            return "[" + ", ".join(expression(item) for item in expr.items) + "]"
        case ast.Binary():
            return f"{expression(expr.left)} {expr.op} {expression(expr.right)}"
        case ast.Negate():
            return "-" + expression(expr.operand)
        case ast.Group():
            return f"({expression(expr.expr)})"
    raise AssertionError(f"unhandled expression {type(expr).__name__}")


# Printing ------------------------------------------------------------------------------------

@dataclass
class _CodeLine:
    """One printed line of code and the stretch of source it was printed from."""

    depth: int
    code: str
    start: int  # source offsets
    end: int
    role: Role = "plain"  # "open" ends with `{`, "close" is a lone `}`
    leading: list[ast.Comment] = field(default_factory=list)
    trailing: ast.Comment | None = None


@dataclass
class _OutputLine:
    depth: int
    text: str
    trailing: str | None
    blank_before: bool  # the author left a blank line here (or the layout asks for one)
    role: Role


class _Printer:
    """Prints one module: code lines from the tree, then comments attached, then the layout."""

    def __init__(self, source: SourceFile, module: ast.Module):
        self.source = source
        self.module = module
        self.comment_starts = [c.span.start for c in module.comments]
        self.lines: list[_CodeLine] = []

    def render(self) -> str:
        item_starts = []
        for item in self.module.items:
            item_starts.append(len(self.lines))
            self.item(item)
        end_of_file = self.attach_comments()
        output, first_output = self.output_lines(end_of_file)
        for index in range(1, len(self.module.items)):
            if not _grouped(self.module.items[index - 1], self.module.items[index]):
                output[first_output[item_starts[index]]].blank_before = True
        return _layout(output)

    def item(self, item: ast.Import | ast.Const | ast.Section) -> None:
        if isinstance(item, ast.Import):
            alias = f" as {item.alias}" if item.alias else ""
            self.statement(0, f"import {quote(item.path)}{alias}", item)
        elif isinstance(item, ast.Const):
            self.statement(0, f"const {item.name} = {expression(item.value)}", item)
        else:
            self.section(item, 0)

    def statement(self, depth: int, code: str, node: ast.Node) -> None:
        self.lines.append(_CodeLine(depth, code, node.span.start, node.span.end))

    def section(self, section: ast.Section, depth: int) -> None:
        header = _header(section)
        opening = self.opening_brace(section)
        closing = section.span.end - 1
        if not section.members and not self.has_comment(opening, closing):
            self.statement(depth, header + " { }", section)
            return
        one_line = self.one_line(section)
        if one_line is not None and len(INDENT * depth + one_line) <= ONE_LINE_WIDTH:
            self.statement(depth, one_line, section)
            return
        self.lines.append(_CodeLine(depth, header + " {", section.span.start, opening + 1, "open"))
        for member in section.members:
            if isinstance(member, ast.Attribute):
                self.statement(depth + 1, f"{member.key} = {expression(member.value)}", member)
            else:
                self.section(member, depth + 1)
        self.lines.append(_CodeLine(depth, "}", closing, closing + 1, "close"))

    def one_line(self, section: ast.Section) -> str | None:
        """The section on one line, when the author wrote it on one (`level fast { period = 16 }`):
        `; ` after each attribute, a space after each section. None when it spans lines."""
        if self.source.position(section.span.start)[0] != self.source.position(section.span.end - 1)[0]:
            return None  # (a comment runs to the end of its line, so none can be inside)
        header = _header(section)
        if not section.members:
            return f"{header} {{ }}"
        parts = []
        for member in section.members:
            if isinstance(member, ast.Attribute):
                parts.append(f"{member.key} = {expression(member.value)};")
            else:
                parts.append(self.one_line(member) or "")
        body = " ".join(parts).removesuffix(";")
        return f"{header} {{ {body} }}"

    def opening_brace(self, section: ast.Section) -> int:
        """The offset of a section's `{` (the tree does not keep it): past spaces, `;` and comments."""
        text = self.source.text
        at = section.header_span.end
        while text[at] != "{":
            at = text.index("\n", at) if text[at] == "#" else at + 1
        return at

    def has_comment(self, start: int, end: int) -> bool:
        return bisect.bisect_left(self.comment_starts, start) < bisect.bisect_left(self.comment_starts, end)

    def attach_comments(self) -> list[ast.Comment]:
        """Give every comment to a code line (leading or trailing); return those left for the end."""
        ends = [line.end for line in self.lines]  # increasing: the lines never overlap
        end_lines = [self.source.position(end)[0] for end in ends]
        end_of_file = []
        for comment in self.module.comments:
            at = comment.span.start
            following = bisect.bisect_right(ends, at)  # the first line that ends after the comment
            if following < len(self.lines) and self.lines[following].start <= at:
                self.lines[following].leading.append(comment)  # written inside a statement
            elif self.after_code(at):
                owner = self.trailing_owner(end_lines, comment.span.line)
                assert owner.trailing is None, "one comment per source line"
                owner.trailing = comment
            elif following < len(self.lines):
                self.lines[following].leading.append(comment)
            else:
                end_of_file.append(comment)
        return end_of_file

    def trailing_owner(self, end_lines: list[int], line: int) -> _CodeLine:
        """The last statement that ended on `line`; a `}` only when nothing else did."""
        candidates = self.lines[bisect.bisect_left(end_lines, line): bisect.bisect_right(end_lines, line)]
        statements = [c for c in candidates if c.role != "close"]
        return (statements or candidates)[-1]

    def after_code(self, offset: int) -> bool:
        line, _ = self.source.position(offset)
        return bool(self.source.text[self.source.line_starts[line - 1]: offset].strip(INSIGNIFICANT))

    def blank_before(self, offset: int) -> bool:
        """Whether the author left a blank line right before the line that starts at `offset`."""
        line, _ = self.source.position(offset)
        if line == 1 or self.after_code(offset):
            return False
        return not self.source.line_text(line - 1).strip(INSIGNIFICANT)

    def output_lines(self, end_of_file: list[ast.Comment]) -> tuple[list[_OutputLine], list[int]]:
        """Flatten code lines and their comments; also where each code line's block begins."""
        output: list[_OutputLine] = []
        first_output = []
        for line in self.lines:
            first_output.append(len(output))
            blank = self.blank_before(line.start)
            comment_depth = line.depth + 1 if line.role == "close" else line.depth
            for comment in line.leading:
                if comment.span.start >= line.start:  # moved out of the statement: the blank goes first
                    comment_blank, blank = blank, False
                else:
                    comment_blank = self.blank_before(comment.span.start)
                output.append(_OutputLine(comment_depth, _text(comment), None, comment_blank, "comment"))
            trailing = _text(line.trailing) if line.trailing else None
            output.append(_OutputLine(line.depth, line.code, trailing, blank, line.role))
        for comment in end_of_file:
            output.append(_OutputLine(0, _text(comment), None, self.blank_before(comment.span.start), "comment"))
        return output, first_output


def _header(section: ast.Section) -> str:
    """`kind name from base`, as much of it as the section has."""
    header = [section.kind]
    if section.name is not None:
        header.append(section.name)
    if section.base is not None:
        header += ["from", section.base.dotted]
    return " ".join(header)


def _text(comment: ast.Comment) -> str:
    return comment.text.rstrip()


def _grouped(previous: ast.Node, current: ast.Node) -> bool:
    return type(previous) is type(current) and isinstance(current, (ast.Import, ast.Const))


def _layout(output: list[_OutputLine]) -> str:
    """Blank lines where kept or asked for, indents, trailing comments aligned per run."""
    rows: list[_OutputLine | None] = []  # None is a blank line
    for line in output:
        previous = rows[-1] if rows else None
        if line.blank_before and previous is not None and previous.role != "open" and line.role != "close":
            rows.append(None)
        rows.append(line)
    column = [0] * len(rows)
    start = 0
    while start < len(rows):
        end = start + 1
        first = rows[start]
        if first is not None and first.trailing is not None:
            while end < len(rows) and _continues_run(rows[end], first):
                end += 1
            width = max(len(INDENT * r.depth + r.text) for r in rows[start:end] if r is not None)
            column[start:end] = [max(COMMENT_COLUMN, width + COMMENT_GAP)] * (end - start)
        start = end
    text = []
    for row, at in zip(rows, column):
        if row is None:
            text.append("")
            continue
        code = INDENT * row.depth + row.text
        text.append(code if row.trailing is None else code.ljust(at) + row.trailing)
    return "".join(line + "\n" for line in text)


def _continues_run(row: _OutputLine | None, first: _OutputLine) -> bool:
    return row is not None and row.trailing is not None and row.depth == first.depth

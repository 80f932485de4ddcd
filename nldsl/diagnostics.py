"""Diagnostics: what nldsl says about a spec, rendered rustc-style or as JSON.

    error[E0203]: unknown attribute `perod` in `level`
      --> specs/hope.nl:12:5
       |
    12 |     perod = 16
       |     ^^^^^
       = help: did you mean `period`?

Every problem a user can cause is a `Diagnostic` with a stable code (see `error_codes.py` and
`nldsl explain CODE`); library entry points raise `SpecError` carrying all of them at once.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .source import SourceFile, Span

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    code: str  # stable identifier, e.g. "E0203"
    message: str  # lowercase, no trailing period
    span: Span | None = None
    help: str | None = None
    severity: Severity = "error"
    notes: tuple[str, ...] = ()
    # the spec path whose check found it (`model.block.cms.fast.objective`), where the problem comes
    # from a combination: an inherited attribute is then shown with the section that uses it
    origin: str | None = field(default=None, compare=False)

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0, self.code)
        return (self.span.path, self.span.line, self.span.column, self.code)

    def to_dict(self) -> dict:
        out: dict = {"code": self.code, "severity": self.severity, "message": self.message}
        if self.span is not None:
            out["file"] = self.span.path
            out.update(self.span.to_dict())
        if self.help:
            out["help"] = self.help
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def listing(items: Sequence[str], last: str = "and") -> str:
    """`a`, `a and b`, `a, b and c` (with `last` = "or": `a, b or c`)."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


class SpecWarning(UserWarning):
    """A spec's warning (what `nldsl check` warns of), issued by `nldsl.load` through `warnings`."""


class SpecError(Exception):
    """Raised by library entry points when a spec (or an override) has errors."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: dict[str, SourceFile] | None = None):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        self.sources = sources or {}
        super().__init__(render_text(self.diagnostics, self.sources))


@dataclass
class DiagnosticBag:
    """Collects diagnostics during one run so that all of them are reported together."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, span: Span | None = None, help: str | None = None,
              notes: tuple[str, ...] = ()) -> None:
        self.items.append(Diagnostic(code, message, span, help, "error", notes))

    def warning(self, code: str, message: str, span: Span | None = None, help: str | None = None) -> None:
        self.items.append(Diagnostic(code, message, span, help, "warning"))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        unique = dict.fromkeys(self.items)  # the same problem found twice is reported once
        return sorted(unique, key=Diagnostic.sort_key)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The known name closest to `name`, if any is close enough to suggest."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help:` line suggesting the closest known name, if any is close enough."""
    match = closest(name, candidates)
    return f"did you mean `{match}`?" if match else None


def did_you_mean_among(name: str, candidates: Sequence[str], listing: str) -> str:
    """The closest known name when one is close enough, then `listing` (what the valid names are)."""
    guess = did_you_mean(name, candidates)
    return f"{guess} {listing}" if guess else listing


# Control characters but newline and tab, and DEL and the C1 controls: a spec's text or a model's
# bytes may hold a terminal escape sequence, which must not reach a terminal as one.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with each control character written as a `\\xNN` escape."""
    return _CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


SNIPPET_CONTEXT = 60  # characters of a long line shown on each side of what a diagnostic points at


def _shown(before: str, marked: str, after: str) -> tuple[str, str, str]:
    """A source line cut into the text before a span, the span and the text after it, as printed:
    tabs expanded, control characters escaped, and a long line cut to `SNIPPET_CONTEXT` characters
    around the span (a long span to twice that), with `…` where text was left out."""
    before, marked, after = (terminal_safe(part.expandtabs(4)) for part in (before, marked, after))
    if len(before) > SNIPPET_CONTEXT:
        before = "…" + before[-SNIPPET_CONTEXT:]
    if len(marked) > 2 * SNIPPET_CONTEXT:
        marked, after = marked[: 2 * SNIPPET_CONTEXT] + "…", ""
    if len(after) > SNIPPET_CONTEXT:
        after = after[:SNIPPET_CONTEXT] + "…"
    return before, marked, after


def _columns(text: str) -> int:
    """How many terminal columns `text` takes: East Asian wide characters two, combining marks none."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def render_text(diagnostics: Sequence[Diagnostic], sources: dict[str, SourceFile],
                color: bool = False) -> str:
    """Render diagnostics in the rustc layout: header, location, source line, caret, help. Control
    characters from the spec (in its lines, names or strings) are escaped, so the caret still
    points at the span and nothing the spec holds acts on the terminal."""

    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    blocks = []
    for d in diagnostics:
        kind = paint(f"{d.severity}[{d.code}]", "1;31" if d.severity == "error" else "1;33")
        header = terminal_safe(d.message).replace("\n", "\\x0a")  # one line, even with a newline from a path
        lines = [f"{kind}: {header}"]
        source = sources.get(d.span.path) if d.span else None
        if d.span is not None:
            width = len(str(d.span.line))
            pad = " " * width
            lines.append(terminal_safe(f"{pad}--> {d.span}"))
            text = source.line_text(d.span.line) if source else ""
            if source is not None:
                end = d.span.end_column - 1 if d.span.end_line == d.span.line else len(text)
                before, marked, after = _shown(text[: d.span.column - 1], text[d.span.column - 1: end], text[end:])
                lines.append(f"{pad} |")
                lines.append(f"{d.span.line} | {before}{marked}{after}")
                lines.append(f"{pad} | {' ' * _columns(before)}{paint('^' * max(1, _columns(marked)), '1;31')}")
            for note in d.notes:
                lines.append(f"{pad} = note: {terminal_safe(note)}")
            if d.help:
                lines.append(f"{pad} = help: {terminal_safe(d.help)}")
        else:
            lines.extend(f"  = note: {terminal_safe(note)}" for note in d.notes)
            if d.help:
                lines.append(f"  = help: {terminal_safe(d.help)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def json_entries(diagnostics: Sequence[Diagnostic], file: str | None = None) -> list[dict]:
    """Diagnostics as JSON objects; `file`, the spec checked, is each entry's `spec` and the `file`
    of those without a span (an unreadable file's E0105), so a tool reading several specs' output
    can tell whose they are (an entry's own `file` may be an import or a `<--set N>`)."""
    entries = [d.to_dict() for d in diagnostics]
    if file is not None:
        for entry in entries:
            entry.setdefault("file", file)
            entry["spec"] = file
    return entries


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps(json_entries(diagnostics), indent=2)


def summary(diagnostics: Sequence[Diagnostic]) -> str:
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)

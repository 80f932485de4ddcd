"""Source text and spans: every AST node and diagnostic points back at `file:line:col`."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    """A region of one source file. Lines and columns are 1-based; `end_*` is exclusive."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    start: int = field(default=0, compare=False)  # character offsets, for slicing the source
    end: int = field(default=0, compare=False)

    def to_dict(self) -> dict:
        return {"line": self.line, "column": self.column, "end_line": self.end_line,
                "end_column": self.end_column}

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SourceFile:
    """The text of one `.nl` file with a line index for offset → (line, column)."""

    path: str
    text: str
    line_starts: tuple[int, ...] = ()

    @classmethod
    def from_text(cls, path: str, text: str) -> SourceFile:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")
        return cls(path, text, tuple(starts))

    def position(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def span(self, start: int, end: int) -> Span:
        line, column = self.position(start)
        end_line, end_column = self.position(max(start, end))
        return Span(self.path, line, column, end_line, end_column, start, max(start, end))

    def line_text(self, line: int) -> str:
        if line < 1 or line > len(self.line_starts):
            return ""
        start = self.line_starts[line - 1]
        end = self.line_starts[line] - 1 if line < len(self.line_starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

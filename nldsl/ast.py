"""The syntax tree of a `.nl` file, exactly as written, with a source span on every node.

The tree is deliberately untyped about meaning (a section is a kind, a name and members);
`checker.py` gives it meaning. `to_dict()` makes the deterministic JSON used by golden tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

from .source import Span


@dataclass(frozen=True)
class Node:
    span: Span

    def to_dict(self) -> dict:
        out: dict = {"node": type(self).__name__}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "span":
                out["span"] = [value.line, value.column, value.end_line, value.end_column]
            elif f.name.endswith("_span"):
                continue
            else:
                out[f.name] = _plain(value)
        return out


def _plain(value):
    if isinstance(value, Node):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# Expressions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Number(Node):
    value: int | float
    text: str  # as written (the formatter keeps `3e-4` rather than `0.0003`)


@dataclass(frozen=True)
class String(Node):
    value: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class Ref(Node):
    parts: tuple[str, ...]  # `titans.memory` -> ("titans", "memory")

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class KeywordArg(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Node):
    func: Ref
    args: tuple[Expr, ...]
    kwargs: tuple[KeywordArg, ...]


@dataclass(frozen=True)
class List(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Binary(Node):
    op: str  # + - * / // % **
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Negate(Node):
    operand: Expr


@dataclass(frozen=True)
class Group(Node):
    expr: Expr  # parentheses as written


Expr = Union[Number, String, Bool, Ref, Call, List, Binary, Negate, Group]  # noqa: UP007 (runtime alias)


# Statements ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attribute(Node):
    key: str
    key_span: Span
    value: Expr


@dataclass(frozen=True)
class Section(Node):
    kind: str  # model, block, level, memory, selfmod, attention, mlp, cms, parallel, context, optimizer, train
    kind_span: Span
    name: str | None
    name_span: Span | None
    base: Ref | None  # `from BASE`
    members: tuple[Attribute | Section, ...]

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        return tuple(m for m in self.members if isinstance(m, Attribute))

    @property
    def sections(self) -> tuple[Section, ...]:
        return tuple(m for m in self.members if isinstance(m, Section))

    @property
    def header_span(self) -> Span:
        """From the kind keyword to the name (or base), for pointing at a section as a whole."""
        last = self.base.span if self.base else self.name_span or self.kind_span
        return Span(self.span.path, self.kind_span.line, self.kind_span.column, last.end_line,
                    last.end_column, self.kind_span.start, last.end)


@dataclass(frozen=True)
class Import(Node):
    path: str
    alias: str | None


@dataclass(frozen=True)
class Const(Node):
    name: str
    name_span: Span
    value: Expr


@dataclass(frozen=True)
class Comment(Node):
    text: str  # including the leading '#'


@dataclass(frozen=True)
class Module(Node):
    items: tuple[Import | Const | Section, ...]
    comments: tuple[Comment, ...]

    @property
    def imports(self) -> tuple[Import, ...]:
        return tuple(i for i in self.items if isinstance(i, Import))

    @property
    def consts(self) -> tuple[Const, ...]:
        return tuple(i for i in self.items if isinstance(i, Const))

    @property
    def sections(self) -> tuple[Section, ...]:
        return tuple(i for i in self.items if isinstance(i, Section))

"""Checking: parsed `.nl` files → a frozen `spec.Spec`, or every diagnostic at once.

The work, in order:
1. load the root file and its imports (each parsed once; import cycles are errors);
2. evaluate named constants (arithmetic, references to other constants, cycle detection);
3. expand `from BASE` inheritance into plain section trees, remembering which file each
   attribute came from (an inherited attribute is evaluated where it was written);
4. apply `--set` overrides to constants and to attribute paths (`train.steps=200`);
5. convert each section to its `spec` model attribute by attribute, so that a bad value points at
   its own span, with context defaults (a level inside `cms` defaults to an MLP read at chunk start);
6. semantic checks: dimensions, periods, frequency ordering, dataflow (`semantics.py`).
Every problem becomes a `Diagnostic`; nothing a user writes may raise.
"""

from __future__ import annotations

import errno
import functools
import graphlib
import hashlib
import keyword
import math
import re
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import pydantic
from pydantic import TypeAdapter

from . import ast
from . import spec as S
from .diagnostics import Diagnostic, DiagnosticBag, did_you_mean, did_you_mean_among, listing
from .parser import MAX_NESTING, SECTION_EXPECTED, parse
from .source import SourceFile, Span
from .update_checks import constant_value

MAX_IMPORT_DEPTH = 16  # files in a chain of imports, not counting the root
ROUNDING = 2.0 ** -52  # float64's machine epsilon: one unit in the last place of 1.0
NUMBER_RANGE = "a spec's numbers lie within ±2**63 (about 9.2e18)"
M3_WARMUP = 20  # the warm-up the built-in m3 was measured to need (W0710, docs/language.md)
# An optimizer's `update`: the grammar its errors name (S.UPDATE_FUNCTIONS: its functions).
UPDATE_GRAMMAR = "level names, numbers, + - * /, ** with a number as exponent, sqrt(…), abs(…) and sign(…)"
MAX_EXPANDED_SECTIONS = 10_000  # sections expanded through `from`: a real model has tens; bounds a check's time

# Layer names become attribute names of generated nn.Modules: Python keywords, the methods and
# attributes of torch.nn.Module (listed here so that checking never imports torch) and the
# parameter names a layer module declares next to its children are reserved.
RESERVED_LAYER_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset({
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile",
    "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia",
    "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
    "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
    "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad", "norm", "gate_norm_0", "gate_norm_1", "reset_parameters",
})


# Values produced by evaluating expressions ---------------------------------------------------

@dataclass(frozen=True)
class Symbol:
    """A bare name that is not a constant: an option (`l2`), a section, or a typo."""

    name: str
    span: Span


@dataclass(frozen=True)
class CallValue:
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any, Span], ...]
    span: Span


@dataclass(frozen=True)
class ExprValue:
    """An expression kept unevaluated (the optimizer `update`), with its namespace."""

    expr: ast.Expr


class EvalError(Exception):
    def __init__(self, code: str, message: str, span: Span, help: str | None = None):
        super().__init__(message)
        self.diagnostic: Diagnostic | None = Diagnostic(code, message, span, help)


class ReportedError(EvalError):
    """A use of a constant whose definition failed, or of an import that failed: that error is
    reported once, where it happened."""

    def __init__(self, name: str, span: Span):
        super().__init__("E0304", f"constant `{name}` has no value", span)
        self.diagnostic = None


# Namespaces and expanded sections ------------------------------------------------------------

@dataclass
class Namespace:
    path: str
    module: ast.Module
    consts: dict[str, ast.Const] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, ast.Section] = field(default_factory=dict)
    aliases: dict[str, Namespace] = field(default_factory=dict)
    merged: list[Namespace] = field(default_factory=list)  # imports without `as`
    failed_aliases: set[str] = field(default_factory=set)  # `as` names of imports that failed (reported)
    evaluating: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    # names read by the file's own values that an override replaced: used as the file is written, so no
    # unused-constant warning (W0702) for them, though no longer evaluated (W0706 still asks `used`)
    read_by_replaced: set[str] = field(default_factory=set)

    def note_replaced(self, value: ast.Expr) -> None:
        self.read_by_replaced.update(name.split(".")[0] for name in _names_in(value))

    def lookup_section(self, name: str) -> tuple[ast.Section, Namespace] | None:
        if name in self.sections:
            return self.sections[name], self
        for ns in self.merged:
            found = ns.lookup_section(name)
            if found:
                return found
        return None

    def lookup_const(self, name: str) -> tuple[ast.Const, Namespace] | None:
        if name in self.consts:
            return self.consts[name], self
        for ns in self.merged:
            found = ns.lookup_const(name)
            if found:
                return found
        return None

    def definer(self, name: str) -> Namespace | None:
        """The file that defines `name` as a constant or section, here or through imports without `as`."""
        found = self.lookup_const(name) or self.lookup_section(name)
        return found[1] if found else None

    def defined_names(self) -> set[str]:
        """Constants and sections defined here or through imports without `as` (not aliases)."""
        names = set(self.consts) | set(self.sections)
        for ns in self.merged:
            names |= ns.defined_names()
        return names

    def all_names(self) -> set[str]:
        names = set(self.consts) | set(self.sections) | set(self.aliases)
        for ns in self.merged:
            names |= ns.all_names()
        return names


@dataclass
class Attr:
    key: str
    value: ast.Expr
    span: Span  # the whole attribute
    key_span: Span
    ns: Namespace
    origin: str  # "file:line", "--set key=value" or a keyword of nldsl.load, "key=value"


class Override(str):
    """An override's `key=value` text, and how the user wrote it: diagnostics name a keyword of
    `nldsl.load` as the keyword (`<keyword dim>`, `dim='abc'`), not as a `--set` the user never typed.
    A plain str is a command line's `--set`."""

    origin: str | None = None  # None: `--set TEXT`
    label: str | None = None  # the file name its diagnostics show; None: `<--set N>`

    def __new__(cls, text: str, origin: str | None = None, label: str | None = None) -> Override:
        override = super().__new__(cls, text)
        override.origin, override.label = origin, label
        return override


@dataclass
class Tree:
    """A section after inheritance: attributes by key, child sections in order."""

    kind: str
    name: str | None
    span: Span
    header: Span
    attrs: dict[str, Attr] = field(default_factory=dict)
    children: list[Tree] = field(default_factory=list)
    incomplete: bool = False  # its `from` failed (reported): what it lacks is not reported again

    def child_label(self) -> str:
        return self.name or self.kind


@dataclass
class CheckResult:
    spec: S.Spec | None
    diagnostics: list[Diagnostic]
    sources: dict[str, SourceFile]
    module: ast.Module | None = None
    provenance: dict[str, str] = field(default_factory=dict)  # spec path -> where its value came from
    spans: dict[str, Span] = field(default_factory=dict)  # spec path -> span of its section or value
    overrides: tuple[str, ...] = ()  # the `--set` texts it was checked with (a generated banner names them)
    levels: tuple[S.LevelSpec, ...] = ()  # the file's own `level` definitions (`nldsl graph` draws a library's)

    @property
    def ok(self) -> bool:
        return self.spec is not None and not any(d.severity == "error" for d in self.diagnostics)


# Entry points --------------------------------------------------------------------------------

def held_to_training(result: CheckResult) -> CheckResult:
    """`result` with what `nldsl check` and `nldsl train` also hold a spec to: nldsl's own data path
    reads text with the spec's tokenizer, so the default byte tokenizer needs model.vocab = 256
    (E0508). The checker itself does not ask it (Checker.check_vocabulary): a model used from Python
    with token ids of its own may set any vocabulary."""
    spec = result.spec
    if (not result.ok or spec.model is None or "train.tokenizer" in result.spans
            or spec.train.tokenizer.kind != "bytes" or spec.model.vocab == 256):
        return result
    span = result.spans.get("model.vocab")
    problem = Diagnostic(
        "E0508", f"model.vocab is {spec.model.vocab}, but `nldsl train` reads text with the default tokenizer "
        "`bytes`, which has 256 tokens", span,
        ("use --set model.vocab=256" if span is not None and span.path.startswith("<--set") else "set `vocab = 256`")
        + (f", or name a tokenizer with that many tokens (`train {{ tokenizer = bpe(vocab = {spec.model.vocab}) }}`)"
           if S.BPE_VOCAB_RANGE[0] <= spec.model.vocab <= S.BPE_VOCAB_RANGE[1] else "")
        + "; from Python, a model fed token ids of its own may keep any vocabulary")
    return replace(result, spec=None, diagnostics=[*result.diagnostics, problem])


def check_file(path: str | Path, overrides: Sequence[str] = ()) -> CheckResult:
    """Check a spec file (and its imports), with optional `key=value` overrides."""
    path = Path(path)
    display = str(path)
    try:
        data = read_spec_bytes(path)
    except OSError as error:
        reason = error.strerror or str(error)
        return CheckResult(None, [Diagnostic("E0105", f"cannot read `{display}`: {reason[:1].lower() + reason[1:]}",
                                             None, "check the path")], {})
    return check_bytes(data, display, overrides, base_dir=path.parent)


MAX_SPEC_BYTES = 16 * 2**20


def read_spec_bytes(path: Path) -> bytes:
    """A spec file's bytes; a file past MAX_SPEC_BYTES (or an endless device such as /dev/zero) is an
    OSError rather than a read that fills the memory. Pipes (`<(…)`) read as files do."""
    with open(path, "rb") as file:
        data = file.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_SPEC_BYTES:,} bytes, which no spec is")
    return data


def check_text(text: str, path: str = "<string>", overrides: Sequence[str] = (),
               base_dir: Path | None = None) -> CheckResult:
    return check_bytes(text.encode("utf-8", "surrogatepass"), path, overrides, base_dir)


def check_bytes(data: bytes, path: str, overrides: Sequence[str] = (),
                base_dir: Path | None = None) -> CheckResult:
    checker = Checker(base_dir or Path.cwd())
    return checker.run(data, path, overrides)


def decode(data: bytes, path: str) -> tuple[str | None, Diagnostic | None]:
    """A spec's text, or E0105 at its first byte that is not UTF-8 (its span points into
    `shown_undecoded(data, path)`, the text with that byte replaced, which callers give the renderer)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1  # in bytes: the text cannot be decoded
        before = _without_bom(data[:error.start].decode("utf-8"))  # all valid before the first bad byte
        at = len(before) - before.rfind("\n")  # in characters, as every other span's column
        span = Span(path, line, at, line, at + 1, len(before), len(before) + 1)
        return None, Diagnostic("E0105", f"`{path}` is not valid UTF-8 (byte {error.start}: line {line}, byte {column} "
                                f"of the line)", span, "save the spec as UTF-8 text")
    return _without_bom(text), None


def shown_undecoded(data: bytes, path: str) -> SourceFile:
    """A file that is not UTF-8 as the renderer shows it: what does not decode as U+FFFD (one for each
    maximal invalid sequence, as Python's `errors="replace"` does)."""
    return SourceFile.from_text(path, _without_bom(data.decode("utf-8", errors="replace")))


def _without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _dependency_order(consts: dict[str, ast.Const]) -> list[str]:
    """The constants ordered so that each comes after the constants of its file it reads, those of
    a cycle in the order they are written. Evaluated in this order, a constant finds what it reads
    already computed, so the recursion of `Checker.const_value` is only as deep as a cycle is long,
    whatever order the constants are written in; a cycle is reported there (E0507)."""
    reads = nx.DiGraph()
    reads.add_nodes_from(consts)
    reads.add_edges_from((name, read) for name, const in consts.items()
                         for read in _names_in(const.value) if read in consts)
    position = {name: index for index, name in enumerate(consts)}
    groups = nx.condensation(reads)  # one node per cycle (or lone constant), edges from reader to read
    order: list[str] = []
    for group in reversed(list(nx.lexicographical_topological_sort(groups, key=lambda g: min(
            position[name] for name in groups.nodes[g]["members"])))):
        order.extend(sorted(groups.nodes[group]["members"], key=position.__getitem__))
    return order


# The checker ---------------------------------------------------------------------------------

class Checker:
    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.bag = DiagnosticBag()
        self.sources: dict[str, SourceFile] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.loading: list[str] = []
        self.provenance: dict[str, str] = {}
        self.level_definitions: list[S.LevelSpec] = []  # the root file's `level NAME { … }` (CheckResult.levels)
        self.overridden: set[tuple[int, str]] = set()  # (id of the defining namespace, constant) set by --set
        self.override_origins: set[str] = set()  # each override's origin ("--set dim=32", "dim=32")
        self.override_paths: set[str] = set()  # the file names its diagnostics show ("<--set 1>")
        self.spans: dict[str, Span] = {}
        # (attribute span, spec path of its section) for each attribute written in another file than
        # the section that uses it: a problem there is noted with the line that imports it.
        self.inherited_attrs: list[tuple[Span, str]] = []
        self.optimizer_overrides: list[tuple[list[str], Attr]] = []  # `--set train.optimizer.X=…`
        # Chains of constants and of `from` are followed recursively, so their depth is bounded like
        # the nesting of sections; the one chain that is too deep is reported, not every link of it.
        # Each stack holds where its chain started, reported as the place to shorten it.
        self.constant_uses: list[Span] = []
        self.inheriting: list[Span] = []
        self.too_deep_reported = False
        # Sections inheriting from two copies of one that does the same double at each line: a
        # kilobyte of `from` could expand into millions of sections, so the expansion is counted
        self.expanded = 0

    # 1. loading ------------------------------------------------------------------------------

    def run(self, data: bytes, path: str, overrides: Sequence[str]) -> CheckResult:
        text, problem = decode(data, path)
        if problem:
            return CheckResult(None, [problem], {path: shown_undecoded(data, path)})
        assert text is not None
        self.loading.append(str((self.base_dir / Path(path).name).resolve()))  # imports compare resolved paths
        ns = self.load_text(text, path, self.base_dir)
        self.loading.pop()
        root_module = ns.module if ns else None
        spec = None
        if ns is not None:
            const_overrides, path_overrides = self.parse_overrides(overrides, ns)
            every = list({id(n): n for n in [*self.namespaces.values(), ns]}.values())  # one entry per file
            for name in _override_order(const_overrides, ns):
                value, attr_span, origin = const_overrides[name]
                found = ns.lookup_const(name)
                owner = found[1] if found else ns
                if owner is not ns or _reads_itself(value, name, ns, set(const_overrides) - {name}):
                    # `--set dim=dim*2` (or `dim=width`, width = dim * 2) reads the file's `dim`, in the
                    # root file as in an imported one, rather than the override itself (a cycle); the
                    # other overrides it reads are in place (_override_order), and no value computed
                    # before them stays cached
                    for namespace in every:
                        namespace.values.clear()
                    value = self.folded_in_root(value, ns)
                if name in owner.consts:
                    owner.note_replaced(owner.consts[name].value)
                owner.consts[name] = ast.Const(attr_span, name, attr_span, value)
                if owner is not ns:  # a root constant's override is checked for a reader below (W0706)
                    owner.used.add(name)
                self.provenance[name] = origin
                self.overridden.add((id(owner), name))
            if const_overrides:
                # Every file's constants are evaluated again: one computed in another file from the
                # overridden constant (`heads = dim / 16` importing `dim`) follows it too. A problem
                # found twice is reported once (the bag drops repeats).
                for namespace in every:
                    namespace.values.clear()
                for namespace in every:
                    self.evaluate_constants(namespace)
            self.evaluate_constants(ns)
            spec = self.build_spec(ns, text, path_overrides, overrides)
            self.note_use_sites(path)
        diagnostics = self.bag.sorted()
        if any(d.severity == "error" for d in diagnostics):
            spec = None
        return CheckResult(spec, diagnostics, self.sources, root_module, self.provenance, self.spans,
                           tuple(str(override) for override in overrides),
                           tuple(self.level_definitions) if spec is not None else ())

    def note_use_sites(self, root: str) -> None:
        """A problem in an attribute a section inherits (`level fast from lib.mem`, or from a section
        of the same file) points at the line that wrote it; a note names the section of the root file
        that uses it, which the user may not see from that line alone (one definition can serve
        several sections). A problem of a combination (a cms level with `objective = dot`) names the
        use whose check found it; any other names the first use."""
        def use_of(path: str) -> str | None:
            parts = path.split(".")
            while parts and (".".join(parts) not in self.spans or self.spans[".".join(parts)].path != root):
                parts.pop()  # up to the nearest section the root file writes
            return ".".join(parts) or None

        found_as_is = list(self.bag.items)  # before any gets its note
        for index, diagnostic in enumerate(found_as_is):
            span = diagnostic.span
            if span is None or diagnostic.notes:
                continue
            users = {use: self.spans[use] for attr_span, path in self.inherited_attrs
                     if _inside(span, attr_span) and (use := use_of(path)) is not None}
            if not users:
                continue
            # the same problem found by several uses is one diagnostic per use until the bag drops repeats
            origins = {same.origin or "" for same in found_as_is if same == diagnostic}
            found = sorted({max(matches, key=len) for origin in origins
                            if (matches := [use for use in users if origin == use or origin.startswith(use + ".")])},
                           key=lambda use: (users[use].line, users[use].column))
            if found and len(found) < len(users):
                header = users[found[0]]
                more = f" (and {len(found) - 1} more use{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
                note = f"found where `{found[0]}` at {header.path}:{header.line} uses it{more}"
            else:  # the first in the file is where it is imported; the rest inherit from it
                (first, header), *rest = sorted(users.items(), key=lambda item: (item[1].line, item[1].column))
                more = f" (and {len(rest)} more section{'s' if len(rest) > 1 else ''})" if rest else ""
                note = f"used by `{first}` at {header.path}:{header.line}{more}"
            self.bag.items[index] = replace(diagnostic, notes=(note,))

    def folded_in_root(self, value: ast.Expr, root: Namespace) -> ast.Expr:
        """An override's value read where the user wrote it, the root file: `--set dim=width` sets a
        constant of an imported file from the root's `width`. A value the root cannot fold (a name
        only the imported file knows) is left for the imported file's scope, as before."""
        if not _names_in(value):
            return value
        try:
            folded = self.evaluate(value, root)
        except EvalError:
            return value
        if isinstance(folded, bool):
            return ast.Bool(value.span, folded)
        if isinstance(folded, (int, float)):
            return ast.Number(value.span, folded, repr(folded))
        if isinstance(folded, str):  # a bare name folds to a Symbol, which stays in the imported file's scope
            return ast.String(value.span, folded)
        return value

    def load_text(self, text: str, path: str, base_dir: Path) -> Namespace | None:
        source = SourceFile.from_text(path, text)
        self.sources[path] = source
        module, diagnostics = parse(source)
        self.bag.extend(diagnostics)
        if module is None:
            return None
        ns = Namespace(path, module)
        self.namespaces[path] = ns
        for item in module.items:
            if isinstance(item, ast.Import):
                self.load_import(ns, item, base_dir)
            elif isinstance(item, ast.Const):
                self.declare(ns, item.name, item.name_span, item.span)
                ns.consts[item.name] = item
            elif item.name is not None and item.kind not in ("model", "train"):
                self.declare(ns, item.name, item.name_span or item.span, item.span)
                ns.sections[item.name] = item
        return ns

    def declare(self, ns: Namespace, name: str, span: Span, _whole: Span) -> None:
        if name in ns.consts or name in ns.sections or name in ns.aliases:
            self.bag.error("E0202", f"`{name}` is defined twice", span,
                           "rename one of the definitions")
            return
        # A name of an import without `as` that is already loaded: the same clash as the one
        # `load_import` reports when the import comes second (language.md §2.1: whatever the order).
        for imported in ns.merged:
            definer = imported.definer(name)
            if definer is not None:
                self.bag.error("E0202", f"`{name}` is defined twice (also in `{definer.path}`)", span,
                               f"rename it, or import `{imported.path}` with a name: "
                               f"`import \"…\" as name`")
                return

    def load_import(self, ns: Namespace, item: ast.Import, base_dir: Path) -> None:
        imported = self.import_namespace(item, base_dir)
        if imported is None:  # reported; uses of its alias would only repeat that
            if item.alias:
                ns.failed_aliases.add(item.alias)
            return
        if item.alias:
            if item.alias in ns.aliases or item.alias in ns.consts or item.alias in ns.sections:
                self.bag.error("E0202", f"`{item.alias}` is defined twice", item.span)
            ns.aliases[item.alias] = imported
        else:
            # every name the file brings, its own and those of its own imports without `as`; one
            # file reached along two paths (both import it) defines its names once
            for name in sorted(imported.defined_names()):
                here, there = ns.definer(name), imported.definer(name)
                if here is not None and here is not there:
                    # `here` defines it first (this file, or one imported before `item`), `there` again
                    first = "this file" if here is ns else f"`{here.path}`"
                    through = "" if there is imported else f", which `{item.path}` imports"
                    self.bag.error("E0202", f"`{name}` is defined twice: in {first} and in `{there.path}`{through}",
                                   item.span, f"import it with a name: `import \"{item.path}\" as name`")
            ns.merged.append(imported)

    def import_namespace(self, item: ast.Import, base_dir: Path) -> Namespace | None:
        """The namespace of an imported file, loaded once; None after a diagnostic."""
        if not item.path.strip():
            self.bag.error("E0205", "cannot import an empty path", item.span,
                           'name a spec file, e.g. `import "titans_lmm.nl"`')
            return None
        try:
            target = (base_dir / item.path).resolve()
        except (OSError, RuntimeError, ValueError) as error:  # a NUL in the path, a loop of symbolic links
            reason = "the path holds a NUL character" if "null" in str(error) else f"cannot resolve it ({error})"
            self.bag.error("E0205", f"cannot import `{item.path}`: {reason}", item.span)
            return None
        key = str(target)
        if key in self.loading:
            self.bag.error("E0205", f"import cycle through `{item.path}`", item.span,
                           "a file cannot import itself, directly or through other files")
            return None
        if len(self.loading) > MAX_IMPORT_DEPTH:  # `loading` holds the root and each file importing
            self.bag.error("E0205", f"imports nested more than {MAX_IMPORT_DEPTH} deep", item.span,
                           "import the files this one needs from a file nearer the root")
            return None
        imported = self.namespaces.get(key)
        if imported is not None:
            return imported
        try:
            if target.exists() and not target.is_file():  # a folder, or a device such as /dev/zero
                what = "a folder" if target.is_dir() else "not a regular file"
                self.bag.error("E0205", f"cannot import `{item.path}`: it is {what}", item.span,
                               "import a spec file")
                return None
            data = read_spec_bytes(target)
        except OSError as error:
            missing = isinstance(error, FileNotFoundError)
            self.bag.error("E0205", f"cannot import `{item.path}`: "
                           + ("no such file" if missing else error.strerror or str(error)), item.span,
                           f"paths are relative to the importing file ({base_dir})" if missing else None)
            return None
        text, problem = decode(data, item.path)
        if problem:
            self.bag.error("E0205", f"cannot import `{item.path}`: {problem.message}", item.span)
            return None
        assert text is not None
        self.loading.append(key)
        imported = self.load_text(text, _display_path(target), target.parent)
        self.loading.pop()
        if imported is None:
            self.bag.error("E0205", f"`{item.path}` has errors", item.span)
            return None
        self.namespaces[key] = imported
        self.evaluate_constants(imported)
        return imported

    # 2. constants ----------------------------------------------------------------------------

    def evaluate_constants(self, ns: Namespace) -> None:
        for name in _dependency_order(ns.consts):
            if name not in ns.values:
                try:
                    self.const_value(ns, name, ns.consts[name].name_span)
                except EvalError as error:
                    if error.diagnostic is not None:
                        self.bag.items.append(error.diagnostic)
                    ns.values[name] = None

    def const_value(self, ns: Namespace, name: str, use_span: Span) -> Any:
        if name in ns.values:
            if ns.values[name] is None:
                raise ReportedError(name, use_span)
            return ns.values[name]
        if name in ns.evaluating:
            raise EvalError("E0507", f"constant `{name}` depends on itself", use_span,
                            "break the cycle between these constants")
        if len(self.constant_uses) >= MAX_NESTING:
            if self.too_deep_reported:
                raise ReportedError(name, use_span)
            self.too_deep_reported = True
            # constants are evaluated in dependency order (`_dependency_order`): only a cycle recurses this deep
            raise EvalError("E0507", f"this constant depends on itself through a cycle of more than {MAX_NESTING} "
                            "constants", self.constant_uses[0], "break the cycle between these constants")
        ns.evaluating.add(name)
        self.constant_uses.append(use_span)
        try:
            value = self.evaluate(ns.consts[name].value, ns)
        finally:
            ns.evaluating.discard(name)
            self.constant_uses.pop()
        if isinstance(value, Symbol) and not ns.lookup_section(value.name):
            close = did_you_mean(value.name, [c for c in ns.all_names() if c != name])
            if close:  # `const e = dimm`: a misspelt constant, not an attempt to name an option
                raise EvalError("E0201", f"unknown name `{value.name}`", value.span, close)
        if isinstance(value, (Symbol, CallValue)):
            what = f"the name `{value.name}`" if isinstance(value, Symbol) else "a call"
            raise EvalError("E0301", f"constant `{name}` must be a number, string, boolean or list, not {what}",
                            ns.consts[name].value.span)
        ns.values[name] = value
        return value

    def evaluate(self, expr: ast.Expr, ns: Namespace) -> Any:
        """Constant-fold an expression; bare names that are not constants become `Symbol`s."""
        if isinstance(expr, ast.Number):
            if abs(expr.value) > 2**63 or not math.isfinite(expr.value):
                raise EvalError("E0304", "this number is too large", expr.span, NUMBER_RANGE)
            if expr.value == 0 and re.search(r"[1-9]", re.split(r"[eE]", expr.text)[0]):
                raise EvalError("E0304", f"`{expr.text}` is too small: it rounds to 0 in double precision", expr.span)
            return expr.value
        if isinstance(expr, (ast.String, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Group):
            return self.evaluate(expr.expr, ns)
        if isinstance(expr, ast.List):
            return [self.evaluate(item, ns) for item in expr.items]
        if isinstance(expr, ast.Ref):
            return self.resolve_ref(expr, ns)
        if isinstance(expr, ast.Call):
            args = tuple(self.evaluate(a, ns) for a in expr.args)
            kwargs = tuple((k.name, self.evaluate(k.value, ns), k.span) for k in expr.kwargs)
            seen: set[str] = set()
            for k in expr.kwargs:
                if k.name in seen:
                    raise EvalError("E0305", f"argument `{k.name}` is given twice", k.span)
                seen.add(k.name)
            return CallValue(expr.func.dotted, args, kwargs, expr.span)
        if isinstance(expr, ast.Negate):
            value = self.number(self.evaluate(expr.operand, ns), expr.operand.span)
            return -value + 0  # `-0.0` is 0.0: a sign on zero would pass `≥ 0` and show as `-0`
        if isinstance(expr, ast.Binary):
            left = self.number(self.evaluate(expr.left, ns), expr.left.span)
            right = self.number(self.evaluate(expr.right, ns), expr.right.span)
            divisor = expr.right
            while isinstance(divisor, ast.Group):
                divisor = divisor.expr
            if expr.op in ("/", "//", "%") and isinstance(divisor, ast.Binary) and divisor.op in ("+", "-"):
                terms = (self.number(self.evaluate(divisor.left, ns), divisor.left.span),
                         self.number(self.evaluate(divisor.right, ns), divisor.right.span))
                if isinstance(right, float) and _rounding_noise(right, *terms):  # integers are exact
                    # `1 / (1 - 0.9 - 0.1)`: 0 but for rounding, as in an optimizer's update
                    raise EvalError("E0304", f"division by zero: this is 0 up to floating-point rounding (it "
                                    f"computes to {right:.3g})", expr.right.span)
            return _arithmetic(expr, left, right) + 0  # no negative zero from `0.0 * -1` either
        raise AssertionError(type(expr))

    def number(self, value: Any, span: Span) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, Symbol):
                raise EvalError("E0201", f"unknown name `{value.name}`", span,
                                "arithmetic needs numbers or named constants")
            raise EvalError("E0301", "arithmetic needs numbers", span)
        return value

    def resolve_ref(self, ref: ast.Ref, ns: Namespace) -> Any:
        head, *rest = ref.parts
        if head in ns.failed_aliases and head not in ns.consts:
            raise ReportedError(head, ref.span)
        if head in ns.aliases:
            target = ns.aliases[head]
            ns.used.add(head)
            if not rest:
                raise EvalError("E0201", f"`{head}` is an imported file, not a value", ref.span,
                                f"write `{head}.NAME`")
            if len(rest) > 1:
                raise EvalError("E0201", f"unknown name `{ref.dotted}`", ref.span)
            found = target.lookup_const(rest[0])
            if found:
                return self.const_value(found[1], rest[0], ref.span)
            if target.lookup_section(rest[0]):
                return Symbol(ref.dotted, ref.span)
            raise EvalError("E0201", f"`{target.path}` defines no `{rest[0]}`", ref.span,
                            did_you_mean(rest[0], target.all_names()))
        if rest:
            raise EvalError("E0201", f"unknown name `{head}`", ref.span,
                            did_you_mean(head, ns.aliases) or "only imported files have dotted names")
        found = ns.lookup_const(head)
        if found:
            ns.used.add(head)
            return self.const_value(found[1], head, ref.span)
        return Symbol(head, ref.span)

    # 3. overrides ----------------------------------------------------------------------------

    def overrides_read(self, attr: Attr) -> list[str]:
        """The `--set` overrides of the constants an attribute's value names, where the name is the
        overridden constant itself (not another file's constant of the same name)."""
        return sorted({self.provenance[name] for name in _names_in(attr.value)
                       if self.provenance.get(name) in self.override_origins
                       and (id(attr.ns.definer(name)), name) in self.overridden})

    def origin_of(self, attr: Attr) -> str:
        """Where an attribute's value came from: its line, and the overrides of the constants it
        names (`dim = dim` under `--set dim=32` reads "hope.nl:37 with --set dim=32")."""
        overridden = self.overrides_read(attr)
        return attr.origin + (" with " + ", ".join(overridden) if overridden else "")

    def parse_overrides(self, overrides: Sequence[str], ns: Namespace
                        ) -> tuple[dict[str, tuple[ast.Expr, Span, str]], list[tuple[list[str], Attr]]]:
        consts: dict[str, tuple[ast.Expr, Span, str]] = {}
        paths: list[tuple[list[str], Attr]] = []
        keys = [text.partition("=")[0].strip() for text in overrides]
        for index, text in enumerate(overrides):
            origin = getattr(text, "origin", None) or f"--set {text}"
            path = getattr(text, "label", None) or f"<--set {index + 1}>"
            self.override_origins.add(origin)
            self.override_paths.add(path)
            key, sep, value_text = text.partition("=")
            key = key.strip()
            source = SourceFile.from_text(path, f"{key} = {value_text.strip()}")
            self.sources[path] = source
            # the last override of a path counts, and one of a section's whole value replaces what an
            # earlier one set inside it: an override replaced so would otherwise vanish unchecked
            replaced_by = next((j for j in range(len(overrides) - 1, index, -1) if sep and key and (
                keys[j] == key or key.startswith(keys[j] + ".")) and overrides[j].partition("=")[2].strip()), None)
            if replaced_by is not None:
                later = overrides[replaced_by]
                shown = getattr(later, "origin", None) or f"--set {later}"
                what = "again" if keys[replaced_by] == key else "whole"
                # a flag's override (--no-compile) is applied after every --set, wherever it was typed
                flag = (getattr(later, "origin", None) or "").startswith("--")
                when = f"{what}, after every --set" if flag else f"{what} later, and the last one counts"
                self.bag.warning("W0706", f"this override has no effect: `{shown}` sets `{keys[replaced_by]}` "
                                 f"{when}", source.span(0, len(source.text)), "remove this one")
                continue
            if not sep or not key or not value_text.strip():
                source = SourceFile.from_text(path, str(text))  # shown as typed: there is no key = value to show
                self.sources[path] = source
                what = f"override `{text}`" if str(text).strip() else "an empty override"
                self.bag.error("E0206", f"{what} is not `key=value`", source.span(0, len(source.text)),
                               "write e.g. `--set train.steps=200` or `--set dim=128`" if path.startswith("<--set")
                               else "write e.g. 'train.steps=200' or 'dim=128'")
                continue
            parts = key.split(".")
            if not all(p.isidentifier() for p in parts):
                self.bag.error("E0206", f"override key `{key}` is not a dotted name", source.span(0, len(key)))
                continue
            wrapped = SourceFile.from_text(path, f"const __value = {value_text.strip()}")
            module, diagnostics = parse(wrapped)
            if module is None:
                for d in diagnostics:
                    span = d.span
                    if span is not None:  # shift past the `const __value = ` prefix
                        delta = len("const __value = ") - len(f"{key} = ")
                        span = source.span(max(0, span.start - delta), max(0, span.end - delta))
                    help = d.help
                    if help and SECTION_EXPECTED in help:  # the value was complete: what follows is no next item
                        help = ("the value ends before this: an override sets one value, e.g. "
                                "`--set train.steps=200`; give each override its own `--set`")
                    self.bag.items.append(Diagnostic(d.code, f"in override: {d.message}", span, help))
                continue
            if len(module.items) != 1:  # `dim=1 const x = 2`: the rest would be dropped without a word
                self.bag.error("E0206", f"override `{text}` has more than one value", source.span(0, len(source.text)),
                               "an override sets one value, e.g. `--set train.steps=200`")
                continue
            value = module.consts[0].value
            value = _shift(value, source, len("const __value = ") - len(f"{key} = "))
            key_span = source.span(0, len(key))
            whole = source.span(0, len(source.text))
            if len(parts) == 1 and ns.lookup_const(key):
                consts[key] = (value, whole, origin)
            elif len(parts) == 1:
                candidates = [c for c in (*ns.consts, "train", "model") if c != key]
                self.bag.error("E0206", f"unknown override `{key}`", key_span,
                               _as_path(key, path.startswith("<keyword")) or did_you_mean(key, candidates)
                               or "override a named constant or a path like `train.steps`")
            else:
                paths.append((parts, Attr(parts[-1], value, whole, key_span, ns, origin)))
        return consts, paths

    def apply_path_override(self, roots: dict[str, Tree], parts: list[str], attr: Attr,
                            shown: str | None = None) -> None:
        """Set `attr` on the section `parts[:-1]` names; `shown` is the path as the user wrote it."""
        shown = shown or ".".join(parts)
        node = roots.get(parts[0])
        if node is None:
            if len(parts) == 2 and parts[0] in attr.ns.aliases and parts[1] in attr.ns.aliases[parts[0]].consts:
                help = (f"`{parts[0]}` is a file imported with `as`, whose constants an override does not reach: "
                        f"import it without `as` to override `{parts[1]}` by name, or set the attribute it gives "
                        "by its path (`model.…`, or `train.optimizer.LEVEL.…` for an optimizer's)")
            else:
                starts = ", ".join(f"`{root}.…`" for root in sorted({*roots, "train"}))
                help = did_you_mean(parts[0], roots) or f"an override sets a constant or a path starting {starts}"
            self.bag.error("E0206", f"unknown override `{shown}`", attr.key_span, help)
            return
        for part in parts[1:-1]:
            named = _child_names(node)
            labels = [label for label, _child in named]
            matches = [c for label, c in named if label == part] or \
                      [c for c in node.children if c.name == part] or \
                      [c for c in node.children if c.kind == part]
            if len(matches) > 1:
                self.bag.error("E0206", f"override path `{shown}`: `{part}` is ambiguous", attr.key_span,
                               f"several `{part}` sections are here; name one of them: "
                               + ", ".join(f"`{label}`" for label, c in named if c in matches))
                return
            if not matches:
                # a misspelt attribute that names a section (`train.optimzer.lr` for `train.optimizer.lr`)
                # is suggested too: it is what the path goes through
                if part in node.attrs:  # `lr.max`: a path into an attribute's value (as resolved.json lists it)
                    self.bag.error("E0206", f"override path `{shown}`: `{part}` is an attribute, not a section",
                                   attr.key_span, self.whole_value_help(node.attrs[part], parts, part, attr))
                    return
                self.bag.error("E0206", f"override path `{shown}`: `{part}` does not exist", attr.key_span,
                               did_you_mean(part, [*labels, *node.attrs])
                               or f"sections here: {', '.join(labels) or 'none'}")
                return
            node = matches[0]
        sections = [(label, child) for label, child in _child_names(node)
                    if parts[-1] in (label, child.name, child.kind)]
        if sections and parts[-1] not in node.attrs:  # `model.block.lmm.level=linear`
            flag = "--set " if attr.span.path.startswith("<--set") else ""
            label, child = sections[0]
            given = self.sources[attr.span.path].text.partition("=")[2].strip()
            state_kinds = _kinds_of(S.LevelSpec.model_fields["state"].annotation)  # `…level=linear` meant a state
            a_state = given.strip('"').partition("(")[0].strip() in state_kinds
            example = f"state={given}" if child.kind == "level" and a_state else "ATTRIBUTE=…"
            path = [*parts[:-1], label, example]
            written = ("__".join(path) if attr.span.path.startswith("<keyword")  # nldsl.load(…, a__b=…)
                       else flag + ".".join(path))
            self.bag.error("E0206", f"override path `{shown}`: `{parts[-1]}` is a section, not an attribute",
                           attr.key_span, f"an override sets one attribute of it, e.g. `{written}`")
            return
        replaced = node.attrs.get(parts[-1])
        if replaced is not None and replaced.span.path not in self.override_paths:  # the file's, not an override's
            replaced.ns.note_replaced(replaced.value)
        node.attrs[parts[-1]] = attr

    def whole_value_help(self, current: Attr, parts: list[str], part: str, attr: Attr) -> str:
        """An override sets an attribute's whole value: the help writes it, from the attribute's
        current call with the one argument the path named replaced (or added)."""
        prefix = ".".join(parts[: parts.index(part) + 1])
        flag = "--set " if attr.span.path.startswith("<--set") else ""
        value = current.value
        if isinstance(value, ast.Call) and parts[-2] == part:
            def text(expr: ast.Expr) -> str:
                return self.sources[expr.span.path].text[expr.span.start:expr.span.end]

            given = self.sources[attr.span.path].text.partition("=")[2].strip()
            # a positional argument is named as the call's field it fills (`bpe(512)`: vocab), so the
            # one the path names is replaced wherever it was written; positions no field names stay
            kinded = S.KINDED_VALUES.get(value.func.dotted)
            named = kinded.POSITIONAL if kinded is not None else ()
            arguments = [text(arg) for arg in value.args[len(named):]]
            keywords = {name: text(arg) for name, arg in zip(named, value.args)}
            keywords |= {k.name: text(k.value) for k in value.kwargs}
            keywords[parts[-1]] = given
            if arguments:  # positions the help cannot name: it would write the argument twice
                return f"an override sets the whole value: write `{flag}{prefix}=VALUE`"
            arguments = [f"{name} = {written}" for name, written in keywords.items()]
            return (f"an override sets the whole value: write `{flag}{prefix}={value.func.dotted}("
                    f"{', '.join(arguments)})`")
        return f"an override sets the whole value: write `{flag}{prefix}=VALUE`"

    # 4. inheritance --------------------------------------------------------------------------

    def expand(self, section: ast.Section, ns: Namespace, chain: tuple[str, ...] = ()) -> Tree:
        tree = Tree(section.kind, section.name, section.span, section.header_span)
        self.expanded += 1
        if self.expanded > MAX_EXPANDED_SECTIONS:
            if self.expanded == MAX_EXPANDED_SECTIONS + 1:
                self.bag.error("E0104", f"the sections expand into more than {MAX_EXPANDED_SECTIONS:,} through `from`",
                               self.inheriting[0] if self.inheriting else section.header_span,
                               "inherit from fewer copies of sections that themselves inherit twice or more")
            tree.incomplete = True
            return tree
        if section.base is not None:
            base = self.find_section(section.base, ns)
            tree.incomplete = True  # until the base is inherited
            if base is not None:
                base_section, base_ns = base
                key = f"{base_ns.path}:{base_section.name}"
                if key in chain:
                    self.bag.error("E0404", f"`{section.base.dotted}` inherits from itself", section.base.span)
                    return tree  # the members are already in the expansion that closed the loop
                elif len(chain) >= MAX_NESTING:
                    if not self.too_deep_reported:
                        self.too_deep_reported = True
                        self.bag.error("E0104", f"`from` chains more than {MAX_NESTING} sections deep",
                                       self.inheriting[0], "inherit from a section nearer the start of the chain")
                    return tree
                elif base_section.kind != section.kind:
                    self.bag.error("E0404", f"{_article(section.kind)} `{section.kind}` cannot inherit from the "
                                   f"`{base_section.kind}` `{section.base.dotted}`", section.base.span,
                                   "`from` needs a section of the same kind")
                else:
                    self.inheriting.append(section.base.span)
                    try:
                        inherited = self.expand(base_section, base_ns, (*chain, key))
                    finally:
                        self.inheriting.pop()
                    tree.attrs.update(inherited.attrs)
                    tree.children = list(inherited.children)
                    tree.incomplete = inherited.incomplete
        for member in section.members:
            if isinstance(member, ast.Attribute):
                if member.key in tree.attrs and tree.attrs[member.key].span.path == section.span.path \
                        and _inside(tree.attrs[member.key].span, section.span):
                    self.bag.error("E0403", f"attribute `{member.key}` is set twice", member.key_span,
                                   "remove one of them")
                tree.attrs[member.key] = Attr(member.key, member.value, member.span, member.key_span, ns,
                                              f"{member.span.path}:{member.span.line}")
            else:
                child = self.expand(member, ns, chain)
                same = [i for i, c in enumerate(tree.children)
                        if c.kind == child.kind and c.name == child.name and child.name is not None]
                if same and not _inside(tree.children[same[0]].span, section.span):
                    _merge_into(tree.children[same[0]], child)  # override an inherited child section
                elif same:
                    self.bag.error("E0202", f"`{child.kind} {child.name}` is defined twice here",
                                   child.header, "rename one of them")
                else:
                    tree.children.append(child)
        return tree

    def find_section(self, ref: ast.Ref, ns: Namespace) -> tuple[ast.Section, Namespace] | None:
        head, *rest = ref.parts
        if head in ns.failed_aliases and rest:
            return None  # its import failed, and that was reported
        if head in ns.aliases and len(rest) == 1:
            found = ns.aliases[head].lookup_section(rest[0])
            if found:
                ns.used.add(head)
                return found
            imported = ns.aliases[head]
            whole = next((item.kind for item in imported.module.items if isinstance(item, ast.Section)
                          and item.kind in ("model", "train") and item.name == rest[0]), None)
            self.bag.error("E0201", f"`{imported.path}` defines no section `{rest[0]}`"
                           + (f" that can be imported: its `{whole} {rest[0]}` is the file's own" if whole else ""),
                           ref.span, "inherit from the sections it is made of (its `block`, `level` …)" if whole
                           else did_you_mean(rest[0], imported.sections))
            return None
        if not rest:
            found = ns.lookup_section(head)
            if found:
                return found
        self.bag.error("E0201", f"unknown section `{ref.dotted}`", ref.span,
                       did_you_mean(ref.dotted, list(ns.sections) + [f"{a}.{n}" for a, t in ns.aliases.items()
                                                                   for n in t.sections]))
        return None

    # 5. conversion ---------------------------------------------------------------------------

    def build_spec(self, ns: Namespace, text: str, path_overrides: list[tuple[list[str], Attr]],
                   overrides: Sequence[str]) -> S.Spec | None:
        module = ns.module
        roots: dict[str, Tree] = {}
        definitions: list[Tree] = []
        for section in module.sections:
            if section.kind in ("model", "train"):
                if section.kind in roots:
                    self.bag.error("E0402", f"a file has at most one `{section.kind}` section",
                                   section.header_span, "merge them or move one to another file")
                    continue
                roots[section.kind] = self.expand(section, ns)
            elif section.name is None:
                self.bag.error("E0401", f"a top-level `{section.kind}` needs a name", section.header_span,
                               f"write `{section.kind} NAME {{ … }}` so it can be used "
                               + ("as `train { optimizer = NAME }`" if section.kind == "optimizer"
                                  else "with `from NAME`"))
            else:
                definitions.append(self.expand(section, ns))
        self.optimizer_overrides = [(parts[2:], attr) for parts, attr in path_overrides
                                    if parts[:2] == ["train", "optimizer"] and len(parts) > 2]
        for parts, attr in path_overrides:
            if parts[0] == "train" and "train" not in roots:  # training has defaults: `--set` may still set it
                roots["train"] = Tree("train", None, attr.span, attr.key_span)
            if parts[:2] == ["train", "optimizer"] and len(parts) > 2:
                continue  # applied where the optimizer is converted (Converter.train_optimizer)
            self.apply_path_override(roots, parts, attr)
        converter = Converter(self)
        optimizers = []
        for tree in definitions:  # check every definition on its own (dimension checks need a model)
            result = converter.section(tree, parent=None, path=tree.name or tree.kind)
            if isinstance(result, S.OptimizerSpec):
                optimizers.append(result)
            elif isinstance(result, S.LevelSpec):
                self.level_definitions.append(result)
        converter.layers.clear()  # definitions were checked above; check layers as the model uses them
        model = converter.model(roots["model"]) if "model" in roots else None
        train = converter.train(roots["train"]) if "train" in roots else S.TrainSpec()
        compile_time: list[Diagnostic] = []
        from .semantics import check_layer
        # a train section with errors: its seq_len where that is known, else no layer check that reads it
        seq_len = train.seq_len if train is not None else converter.seq_len_of_failed_train
        for path, layer in converter.layers:
            found = check_layer(layer, path, self.spans, seq_len or S.TrainSpec().seq_len,
                                model.dim if model is not None else None)
            self.bag.extend(found if seq_len else [d for d in found if d.severity == "error"])
        if model is not None and train is not None:
            self.check_vocabulary(model, train)
            from .semantics import check_chunk_options
            options = check_chunk_options(model, train, self.spans)
            self.bag.extend(d for d in options if d.code != "W0714")
            compile_time = [d for d in options if d.code == "W0714"]  # added below, on a spec without errors
            from .semantics import check_compile_depth
            compile_time.extend(check_compile_depth(model, train, self.spans, chunk_warning=bool(compile_time)))
        if train is not None:
            self.check_m3_warmup(train)
            from .semantics import check_run_length
            self.bag.extend(check_run_length(converter.layers, train, self.spans))
        self.check_imported_definitions(ns)
        # a file without a model or train section is a library: its constants are for the files
        # that import it, so one its own definitions do not read is no unused constant
        library = not any(section.kind in ("model", "train") for section in module.sections)
        for name, value in ns.consts.items():
            if self.bag.has_errors:
                break  # unused-constant warnings are noise while errors cut checking short
            if name in ns.used:
                continue
            if (id(ns), name) in self.overridden:  # `value` is the override's, at its --set
                self.bag.warning("W0706", f"this override has no effect: nothing reads the constant `{name}`",
                                 value.span, "override what reads it instead, or remove the override")
            elif not name.startswith("_") and name not in ns.read_by_replaced and not library:
                self.bag.warning("W0702", f"constant `{name}` is never used", value.name_span,
                                 "remove it, or prefix its name with `_`")
        if not self.bag.has_errors:  # a spec with errors is not also warned of its compile time: it does not compile
            self.bag.extend(compile_time)
            if model is not None:  # nor of its size: its shapes may not be counted
                from .semantics import check_model_size
                self.bag.extend(check_model_size(model, self.spans))
        if self.bag.has_errors or train is None:
            return None
        # The hash names what the model is: the file, every file it imports (a resume or a stream
        # state must not take an edited import for the same spec) and the overrides.
        # Sorted by their text, not their paths: a display path depends on the working folder.
        imported = sorted(source.text for path, source in self.sources.items() if path != ns.path)
        digest_source = (text + "".join(f"\n#--import\n{imported_text}" for imported_text in imported)
                         + "".join(f"\n#--set {o}" for o in overrides))
        try:
            spec = S.Spec(path=ns.path, sha256=hashlib.sha256(digest_source.encode()).hexdigest(),
                          model=model, train=train, optimizers=tuple(optimizers))
        except pydantic.ValidationError as error:  # a checker gap: report, never raise
            self.bag.error("E0301", f"invalid spec: {error.errors()[0]['msg'].lower()}", None)
            return None
        return spec

    def check_imported_definitions(self, root: Namespace) -> None:
        """Every named definition of every imported file is checked on its own, as `nldsl check` on
        that file checks it, whether or not the root uses it: a library's broken level is reported
        at its own line, once, rather than waiting for the first spec that uses it (language.md
        §2.1). The `model` and `train` sections of an imported file are not importable, so not
        checked. A problem a use of the definition already found (same code and place, the message
        perhaps worded for the use's context) is not reported again; what the definitions' checks
        record about spec paths is dropped, since the root's paths name its own sections."""
        imported = [ns for ns in {id(n): n for n in self.namespaces.values()}.values() if ns is not root]
        if not imported:
            return
        bag, spans, provenance = self.bag, dict(self.spans), dict(self.provenance)
        inherited, seen = list(self.inherited_attrs), {(d.code, d.span) for d in bag.items}
        self.bag = DiagnosticBag()
        try:
            converter = Converter(self)
            for ns in imported:
                for section in ns.sections.values():
                    tree = self.expand(section, ns)
                    converter.section(tree, parent=None, path=tree.name or tree.kind)
            found = self.bag.items
        finally:
            self.bag, self.spans, self.provenance, self.inherited_attrs = bag, spans, provenance, inherited
        bag.extend(d for d in found if (d.code, d.span) not in seen)

    def check_m3_warmup(self, train: S.TrainSpec) -> None:
        """W0710: the built-in `m3` with a warm-up shorter than the default (docs/language.md measures
        what a short one does)."""
        optimizer = train.optimizer
        if getattr(optimizer, "kind", None) != "m3" or train.warmup >= M3_WARMUP:
            return
        span = self.spans.get("train.warmup") or self.spans.get("train.optimizer")
        self.bag.warning("W0710", f"`m3` with `warmup = {train.warmup}`: its first steps divide NS(M1) by the root of "
                         "a handful of squared gradients, so an entry whose gradients were tiny takes a huge step",
                         span, f"keep train.warmup at {M3_WARMUP} (the default) or more")

    def check_vocabulary(self, model: S.ModelSpec, train: S.TrainSpec) -> None:
        """E0508: the embedding needs one row per token of the tokenizer the spec trains with. Only a
        tokenizer the spec (or --set) names is held to it: a model used from Python with its own
        token ids may set any vocabulary under the default byte tokenizer, and `nldsl train` still
        refuses that pairing with a message of its own."""
        span = self.spans.get("train.tokenizer")
        tokenizer = train.tokenizer
        vocab = 256 if tokenizer.kind == "bytes" else tokenizer.vocab
        if span is None or model.vocab == vocab:
            return
        written = "bytes" if tokenizer.kind == "bytes" else f"bpe({vocab})"
        where = self.spans.get("model.vocab")
        origin = f" (set at {where.path}:{where.line})" if where is not None else " (the default)"
        self.bag.error("E0508", f"the tokenizer `{written}` has {vocab} tokens but model.vocab is "
                                f"{model.vocab}{origin}", span,
                       (f"add --set model.vocab={vocab}" if span.path.startswith("<--set")
                        else f"add the keyword model__vocab={vocab}")
                       if span.path in self.override_paths else
                       f"set `vocab = {vocab}` in the model")


@functools.cache
def _adapter(model: type[pydantic.BaseModel], name: str) -> TypeAdapter:
    info = model.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = typing.Annotated[(annotation, *info.metadata)]
    if info.discriminator:  # kept apart from metadata: without it a union reports every member's errors
        annotation = typing.Annotated[annotation, pydantic.Field(discriminator=info.discriminator)]
    return TypeAdapter(annotation)


# Context defaults: what a level means depends on where it sits -------------------------------

LEVEL_DEFAULTS: dict[tuple[str, str | None], dict[str, Any]] = {
    ("cms", None): {"state": S.MLPState(), "objective": "surprise", "readout": "chunk_start",
                    "lr": S.ConstantGate(value=0.01)},
    ("selfmod", "memory"): {"state": S.ResidualMLPState(), "values": "generated", "rule": "dgd",
                            "lr": S.GeneratedGate(), "retention": S.GeneratedGate()},
    ("selfmod", "projections"): {"state": S.ResidualMLPState(), "values": "generated", "rule": "dgd",
                                 "lr": S.GeneratedGate(), "retention": S.GeneratedGate(),
                                 "readout": "chunk_start"},
    ("memory", None): {},
}


class Converter:
    """Turns expanded section trees into spec models, one attribute at a time."""

    def __init__(self, checker: Checker):
        self.checker = checker
        self.bag = checker.bag
        self.layers: list[tuple[str, Any]] = []  # (spec path, layer) of every cleanly converted layer
        # the `--set` that gave the model its width, for errors at the layers that must fit it
        self.width_given: list[str] = []
        # train.seq_len where the train section failed to convert but its seq_len is known (written
        # and valid, or left at its default): the layer checks that read it still see the right one
        self.seq_len_of_failed_train: int | None = None
        self.last_fields: dict[str, Any] = {}

    # generic attribute handling ----------------------------------------------------------

    def fields(self, tree: Tree, model: type[pydantic.BaseModel], path: str, *,
               skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
               context: str | None = None) -> dict[str, Any] | None:
        """Validate the attributes of `tree` against `model`'s fields; None if any failed."""
        allowed = [n for n in model.model_fields if n not in skip and n not in ("kind", "name")]
        values: dict[str, Any] = dict(defaults or {})
        ok = True
        self.checker.spans[path] = tree.header
        for key, attr in tree.attrs.items():
            if not _inside(attr.span, tree.span):  # written in the section it inherits from (`from`)
                self.checker.inherited_attrs.append((attr.span, path))
            if key not in allowed:
                where = context or f"`{tree.kind}`"
                self.bag.error("E0203", f"unknown attribute `{key}` in {where}", attr.key_span,
                               _belongs_elsewhere(model, key) or did_you_mean(key, allowed)
                               or f"{where} takes: {', '.join(allowed)}")
                ok = False
                continue
            try:
                if key == "update" and model is S.OptimizerSpec:
                    value = self.expression(attr.value, attr)
                else:
                    value = self.validate(model, key, self.checker.evaluate(attr.value, attr.ns), attr)
            except EvalError as error:
                if error.diagnostic is not None:
                    self.bag.items.append(error.diagnostic)
                ok = False
                continue
            if value is _INVALID:
                ok = False
                continue
            values[key] = value
            self.checker.provenance[f"{path}.{key}"] = self.checker.origin_of(attr)
            self.checker.spans[f"{path}.{key}"] = attr.span
        self.last_fields = values  # what did validate, also where something did not
        return values if ok else None

    def validate(self, model: type[pydantic.BaseModel], key: str, raw: Any, attr: Attr) -> Any:
        prepared = self.prepare(raw, model.model_fields[key].annotation, attr)
        if isinstance(prepared, _WrongArguments):  # reported; the call's other arguments are checked too
            try:
                _adapter(model, key).validate_python(prepared.rest, strict=True)
            except pydantic.ValidationError as error:
                self.report_validation(error, key, raw, attr, model, arguments_only=True)
            return _INVALID
        if prepared is _INVALID:
            return _INVALID
        try:
            # strict: `dim = "64"` or `dim = true` are mistakes, not values to coerce
            return _adapter(model, key).validate_python(prepared, strict=True)
        except pydantic.ValidationError as error:
            self.report_validation(error, key, raw, attr, model)
            return _INVALID

    def prepare(self, raw: Any, annotation: Any, attr: Attr) -> Any:
        """Map evaluated values onto what pydantic expects (kinded calls become dicts)."""
        kinds = _kinds_of(annotation)
        if isinstance(raw, CallValue):
            cls = S.KINDED_VALUES.get(raw.name)
            if cls is None or (kinds and raw.name not in kinds):
                choices = sorted(kinds) if kinds else []
                self.bag.error("E0303", f"unknown value `{raw.name}(…)` for `{attr.key}`", raw.span,
                               did_you_mean(raw.name, choices)
                               or (f"expected one of: {', '.join(choices)}" if choices else
                                   f"`{attr.key}` takes a plain value, not a call"))
                return _INVALID
            data: dict[str, Any] = {"kind": raw.name}
            if len(raw.args) > len(cls.POSITIONAL):
                self.bag.error("E0305", f"`{raw.name}` takes at most {len(cls.POSITIONAL)} positional "
                               f"argument{'s' if len(cls.POSITIONAL) != 1 else ''}", raw.span,
                               f"name the arguments: {', '.join(n for n in cls.model_fields if n != 'kind')}")
                return _INVALID
            data.update(zip(cls.POSITIONAL, raw.args))
            bad = False  # every wrong argument of the call is reported, not only the first
            for name, value, span in raw.kwargs:
                if name not in cls.model_fields or name == "kind":
                    fields = [n for n in cls.model_fields if n != "kind"]
                    self.bag.error("E0305", f"`{raw.name}` has no argument `{name}`", span,
                                   did_you_mean(name, fields) or f"arguments: {', '.join(fields) or 'none'}")
                    bad = True
                    continue
                if name in data:  # `mlp(3, depth = 2)`: one of the two values would be dropped
                    self.bag.error("E0305", f"argument `{name}` is given twice", span,
                                   f"the positional argument already gives `{name}`: give it once, "
                                   "by position or by name")
                    bad = True
                    continue
                if isinstance(value, Symbol):
                    value = value.name
                data[name] = value
            return _WrongArguments(data) if bad else data
        if isinstance(raw, Symbol):
            if raw.name == "none" and type(None) in _flatten(annotation):
                return None  # unset an optional value (e.g. one inherited with `from`)
            if raw.name in kinds and raw.name in S.KINDED_VALUES:
                return {"kind": raw.name}
            return raw.name
        if isinstance(raw, str) and raw in kinds and raw in S.KINDED_VALUES:
            return {"kind": raw}  # a string spells an option: `lr = "learned"` is `lr = learned`
        if kinds and "constant" in kinds and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return {"kind": "constant", "value": raw}
        if isinstance(raw, list):
            return tuple(r.name if isinstance(r, Symbol) else r for r in raw)
        return raw

    def set_by_override(self, attr: Attr) -> str | None:
        """Where a value written in the spec takes a constant from the command line: the error points
        at the spec's line, and this says which `--set` gave it its value."""
        overrides = self.checker.overrides_read(attr)
        if attr.origin in self.checker.override_origins:
            return None
        if overrides:
            return f"the value comes from `{'`, `'.join(overrides)}`"
        # a constant defined elsewhere in the file (or an import) is where the value is written
        defined = [(name, found[0].span) for name in sorted(_names_in(attr.value))
                   if (found := attr.ns.lookup_const(name)) is not None and found[0].span is not None]
        if not defined:
            return None
        return "the value comes from " + ", ".join(f"`const {name}` at {span.path}:{span.line}"
                                                   for name, span in defined)

    def given_by(self, attr: Attr) -> list[str]:
        """The `--set` overrides an attribute's value comes from: the override of the attribute itself,
        or those of the constants it names."""
        if attr.origin in self.checker.override_origins:
            return [attr.origin]
        return self.checker.overrides_read(attr)

    def report_validation(self, error: pydantic.ValidationError, key: str, raw: Any, attr: Attr,
                          model: type[pydantic.BaseModel], arguments_only: bool = False) -> None:
        """The validation error of a value, or of each argument of a call (`adamw(lr = -1, beta2 = 2)`
        has two); `arguments_only`: only those of the arguments written (the call also has a wrong
        one, which may be the missing argument misspelled)."""
        errors = error.errors()
        if isinstance(raw, CallValue):  # in a union, report on the member the call names
            member = S.KINDED_VALUES.get(raw.name)
            tags = {raw.name, member.__name__ if member else raw.name}
            members = [e for e in errors if e["loc"] and str(e["loc"][0]) in tags]
            written = {name for name, _value, _span in raw.kwargs} | set(
                member.POSITIONAL[:len(raw.args)] if member is not None else ())
            by_argument = [e for e in members if len(e["loc"]) >= 2 and str(e["loc"][-1]) in written]
            if arguments_only or len(by_argument) > 1:
                for each in by_argument:
                    self.report_error(each, key, raw, attr, model)
                return
            errors = members or errors
        if arguments_only:
            return
        self.report_error(errors[0], key, raw, attr, model)

    def report_error(self, first: Any, key: str, raw: Any, attr: Attr, model: type[pydantic.BaseModel]) -> None:
        """One pydantic error as a diagnostic at the value, or at the call's argument it names."""
        kind = first["type"]
        loc = [str(x) for x in first["loc"]]
        span = attr.value.span
        if isinstance(raw, CallValue) and len(loc) >= 2:
            for name, _value, arg_span in raw.kwargs:
                if name == loc[-1]:
                    span = arg_span
        if isinstance(raw, list) and loc and loc[0].isdigit() and isinstance(attr.value, ast.List):
            index = int(loc[0])
            if index < len(attr.value.items):
                span = attr.value.items[index].span
        call = S.KINDED_VALUES.get(raw.name) if isinstance(raw, CallValue) else None
        field_name = loc[-1] if call is not None and loc and loc[-1] in call.model_fields else key
        if call is not None and field_name != key and kind != "missing":
            model, key, raw = call, field_name, _argument(raw, field_name)  # describe the argument at fault
        message = first["msg"]
        annotation = model.model_fields[key].annotation
        takes_list = typing.get_origin(annotation) is tuple
        if takes_list and not isinstance(raw, list) and kind != "missing":  # `adaptive = k`
            example = _spell(raw) if isinstance(raw, Symbol) else ", ".join(_literal_choices(annotation)[:2])
            self.bag.error("E0301", f"`{key}` expects a list of {_describe(model, key).removeprefix('one of ')}",
                           span, f"write it in brackets: `{key} = [{example}]`")
            return
        if kind in ("literal_error", "enum"):
            expected = _literal_choices(annotation)
            in_list = isinstance(raw, list) and loc and loc[0].isdigit()
            got = raw[int(loc[0])] if in_list else raw
            if isinstance(got, list):  # `objective = [l2]`, or `[[k], v]` for a list of options
                self.bag.error("E0303", f"`{_spell(got)}` is not a valid `{key}`", span,
                               f"{'each item of' if in_list else ''} `{key}` is one option, not a list: "
                               f"expected one of: {', '.join(expected)}".lstrip())
                return
            shown = got if isinstance(got, str) else _spell(got)  # a string may spell an option
            written = attr.value.dotted if isinstance(attr.value, ast.Ref) and not in_list else None
            if written in expected:  # `const l2 = 5` … `objective = l2`: the constant hides the option
                self.bag.error("E0303", f"`{shown}` is not a valid `{key}`: `{written}` here is the constant "
                               f"`{written}`, which hides the option `{written}`", span,
                               f"rename the constant `{written}`")
                return
            self.bag.error("E0303", f"`{shown}` is not a valid `{key}`", span,
                           did_you_mean_among(shown, expected, f"expected one of: {', '.join(expected)}"))
            return
        if kind == "union_tag_invalid":
            tags = sorted(_kinds_of(annotation))
            self.bag.error("E0303", f"`{_spell(raw)}` is not a valid `{key}`", span,
                           f"expected one of: {', '.join(tags)}")
            return
        if isinstance(raw, Symbol) and kind not in ("missing",):
            consts = attr.ns.all_names()
            self.bag.error("E0201", f"unknown name `{raw.name}`", span,
                           did_you_mean(raw.name, consts) or f"`{key}` expects {_describe(model, key)}")
            return
        if kind.startswith(("greater", "less")):
            limit = next(iter(first.get("ctx", {}).values()), None)
            if isinstance(limit, float):  # pydantic writes 1e-12 as 0.000000000001
                message = re.sub(r"\b0\.0{4,}\d+\b", f"{limit:g}", message)
            self.bag.error("E0302", f"`{field_name}` {message.lower().replace('input ', '')}", span,
                           self.set_by_override(attr))
            return
        if kind == "missing":
            self.bag.error("E0305", f"`{getattr(raw, 'name', key)}` needs the argument `{field_name}`", span)
            return
        if kind == "value_error":
            self.bag.error("E0302", message.lower().removeprefix("value error, "), span, self.set_by_override(attr))
            return
        from_set = self.set_by_override(attr)
        self.bag.error("E0301", f"`{field_name}` expects {_describe(model, key)}", span,
                       f"got {_show(raw)}" + (f"; {from_set}" if from_set else ""))

    def expression(self, expr: ast.Expr, attr: Attr) -> Any:
        """An optimizer `update` expression as a tuple tree (names are checked later)."""
        ops = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
        if isinstance(expr, ast.Group):
            return self.expression(expr.expr, attr)
        if isinstance(expr, ast.Number):
            return ("const", float(self.checker.evaluate(expr, attr.ns)))
        if isinstance(expr, ast.Ref):
            found = attr.ns.lookup_const(expr.dotted) if len(expr.parts) == 1 else None
            if found:
                attr.ns.used.add(expr.dotted)
                value = self.checker.const_value(found[1], expr.dotted, expr.span)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return S.NamedConstant(float(value), expr.dotted)
            return ("level", expr.dotted, expr.span)
        if isinstance(expr, ast.Negate):
            return ("neg", self.expression(expr.operand, attr))
        if isinstance(expr, ast.Binary) and expr.op in ops:
            left, right = self.expression(expr.left, attr), self.expression(expr.right, attr)
            # a constant part that has no value would turn every step into NaN: caught here, as in constants
            if expr.op == "/" and constant_value(right) == 0:
                raise EvalError("E0304", "division by zero", expr.right.span)
            if expr.op == "/" and _cancels_to_rounding(right):  # `1 - 0.9 - 0.1`: 0 but for rounding
                raise EvalError("E0304", f"division by zero: this constant part is 0 up to floating-point "
                                f"rounding (it computes to {constant_value(right):.3g})", expr.right.span)
            tree = (ops[expr.op], left, right)
            value = constant_value(tree)  # in floats, as the optimizer step computes it
            if value is not None and not math.isfinite(value):
                raise EvalError("E0304", f"this constant part of the update is {value} in floating point", expr.span)
            return tree
        if isinstance(expr, ast.Binary) and expr.op == "**":
            return self.power(expr, attr)
        if isinstance(expr, ast.Call) and expr.func.dotted in S.UPDATE_FUNCTIONS and len(expr.args) == 1 \
                and not expr.kwargs:
            argument = self.expression(expr.args[0], attr)
            value = constant_value(argument)
            if expr.func.dotted == "sqrt" and value is not None and value < 0:
                raise EvalError("E0304", f"the square root of {value:g} has no real value", expr.args[0].span)
            return (expr.func.dotted, argument)
        if isinstance(expr, ast.Call) and expr.func.dotted in S.UPDATE_FUNCTIONS:
            raise EvalError("E0301", f"`{expr.func.dotted}(…)` takes one expression", expr.span)
        spelled = {"rsqrt": "x ** -0.5", "square": "x * x"}  # functions an update writes another way
        if isinstance(expr, ast.Call) and expr.func.dotted in spelled:
            raise EvalError("E0301", f"`{expr.func.dotted}(…)` is not an update function", expr.span,
                            f"write it as `{spelled[expr.func.dotted]}`; an update is built from {UPDATE_GRAMMAR}")
        raise EvalError("E0301", f"an update is built from {UPDATE_GRAMMAR}", expr.span)

    def power(self, expr: ast.Binary, attr: Attr) -> Any:
        """`base ** exponent` in an update: the exponent is a number, so the power stays element-wise and
        its constant part can be checked here (a root of a negative number or a power past floats)."""
        base = self.expression(expr.left, attr)
        written = self.expression(expr.right, attr)
        exponent = constant_value(written)
        if exponent is None:
            named = f", and `{written[1]}` is not a constant" if written[0] == "level" else ", not a level"
            raise EvalError("E0301", f"the exponent of `**` in an update is a number or a constant{named}",
                            expr.right.span, "write a level's square as `m * m` or `m ** 2`")
        constant_base = constant_value(base)
        if constant_base is not None:  # raises where the power has no finite value
            _constant_power(constant_base, exponent, expr.span)
        return ("pow", base, ("const", exponent))

    def missing(self, tree: Tree, message: str, help: str | None = None) -> None:
        """Report a part the section needs, unless it lost its base (then that was the error)."""
        if not tree.incomplete:
            self.bag.error("E0401", message, tree.header, help)

    def children(self, tree: Tree, allowed: dict[str, tuple[int, int | None]], context: str) -> bool:
        """Check which child sections `tree` has: kind -> (min, max) count."""
        ok = True
        counts: dict[str, int] = {}
        for child in tree.children:
            if child.kind not in allowed:
                kinds = ", ".join(f"`{k}`" for k in allowed) or "none"
                top_level = " (it is written at the top level of a file)" if child.kind == "optimizer" else ""
                self.bag.error("E0204", f"{_article(child.kind)} `{child.kind}` section cannot appear in {context}",
                               child.header, f"{context} may contain: {kinds}{top_level}")
                ok = False
                continue
            counts[child.kind] = counts.get(child.kind, 0) + 1
        for kind, (low, high) in allowed.items():
            count = counts.get(kind, 0)
            if count < low:
                self.missing(tree, f"{context} needs {'a' if low == 1 else low} `{kind}` section"
                             f"{'s' if low > 1 else ''}", f"add `{kind} {{ … }}` inside it")
                ok = False
            if high is not None and count > high:
                extra = [c for c in tree.children if c.kind == kind][high]
                self.bag.error("E0402", f"{context} has more than {high} `{kind}` section"
                               f"{'s' if high > 1 else ''}", extra.header)
                ok = False
        return ok

    # sections ----------------------------------------------------------------------------

    def section(self, tree: Tree, parent: str | None, path: str, dim: int | None = None) -> Any:
        handler = {
            "model": lambda: self.model(tree), "train": lambda: self.train(tree),
            "block": lambda: self.block(tree, path, dim), "optimizer": lambda: self.optimizer(tree, path),
            "level": lambda: self.level(tree, parent, path),
        }.get(tree.kind)
        if handler is not None:
            return handler()
        return self.sublayer(tree, path, dim)

    def model(self, tree: Tree) -> S.ModelSpec | None:
        values = self.fields(tree, S.ModelSpec, "model", skip=("block",))
        self.children(tree, {"block": (1, 1)}, "a `model`")
        blocks = [c for c in tree.children if c.kind == "block"]
        dim = values.get("dim") if values else None
        if "dim" in tree.attrs:
            attr = tree.attrs["dim"]
            self.width_given = self.given_by(attr)
        if values is not None and dim is None:
            self.missing(tree, "the model needs a `dim`", "add `dim = 128` (the model width)")
        block = self.block(blocks[0], "model.block", dim) if blocks else None
        if values is None or block is None or dim is None:
            return None
        return S.ModelSpec(name=tree.name, block=block, **values)

    def block(self, tree: Tree, path: str, dim: int | None) -> S.BlockSpec | None:
        values = self.fields(tree, S.BlockSpec, path, skip=("sublayers",))
        sublayer_kinds = {k: (0, None) for k in S.SUBLAYER_SPECS}
        ok = self.children(tree, sublayer_kinds, "a `block`")
        if not tree.children:
            self.missing(tree, "a block needs at least one layer", "add e.g. `attention { }` and `mlp { }`")
            return None
        sublayers = self.sublayers(tree.children, path, dim)
        if values is None or sublayers is None or not ok:
            return None
        return S.BlockSpec(name=tree.name, sublayers=tuple(sublayers), **values)

    def sublayers(self, trees: list[Tree], path: str, dim: int | None) -> list[Any] | None:
        out: list[Any] = []
        names: dict[str, Tree] = {}
        explicit = explicit_names(trees)
        ok = True
        for child in trees:
            if child.kind not in S.SUBLAYER_SPECS:
                continue
            name = child.name if child.name is not None else unnamed_layer_name(child.kind, names.keys() | explicit)
            if child.name is not None and name in names:
                self.bag.error("E0202", f"two layers here are called `{name}`", child.header,
                               "give each layer its own name")
                ok = False
            names[name] = child
            if (child.name is not None and child.name in RESERVED_LAYER_NAMES) or name.startswith("_"):
                self.bag.error("E0208", f"`{name}` cannot name a layer: the compiled module uses it", child.header,
                               "choose another name (layer names become attribute names of the generated "
                               "module: no Python keywords, no leading underscore, no nn.Module methods)")
                ok = False
                continue
            result = self.sublayer(child, f"{path}.{name}", dim, name)
            if result is None:
                ok = False
            else:
                out.append(result)
        return out if ok else None

    def sublayer(self, tree: Tree, path: str, dim: int | None, name: str | None = None) -> Any:
        name = name or tree.name or tree.kind
        kind = tree.kind
        if kind == "attention":
            values = self.fields(tree, S.AttentionSpec, path)
            self.children(tree, {}, "`attention`")
            self.check_heads(values, dim, tree, path, need_even=(values or {}).get("rope", True))
            if values is None:
                return None
            return self.built(path, S.AttentionSpec(name=name, **values))
        if kind == "mlp":
            values = self.fields(tree, S.MLPSpec, path)
            self.children(tree, {}, "`mlp`")
            return self.built(path, S.MLPSpec(name=name, **values)) if values is not None else None
        if kind == "memory":
            values = self.fields(tree, S.MemorySpec, path, skip=("level",))
            ok = self.children(tree, {"level": (1, 1)}, "a `memory`")
            levels = [c for c in tree.children if c.kind == "level"]
            level = self.level(levels[0], "memory", f"{path}.{levels[0].name or 'level'}") if levels else None
            self.check_heads(values, dim, tree, path)
            if values is None or level is None or not ok:
                return None
            return self.built(path, S.MemorySpec(name=name, level=level, **values))
        if kind == "selfmod":
            values = self.fields(tree, S.SelfModSpec, path, skip=("memory", "projections"))
            ok = self.children(tree, {"level": (1, 2)}, "a `selfmod`")
            levels = {c.name: c for c in tree.children if c.kind == "level"}
            for child in tree.children:
                if child.kind == "level" and child.name not in ("memory", "projections"):
                    self.bag.error("E0204", f"a `selfmod` has levels `memory` and `projections`, "
                                   f"not `{child.name or '(unnamed)'}`", child.header,
                                   did_you_mean(child.name or "", ["memory", "projections"])
                                   or "name them `level memory { … }` and `level projections { … }`")
                    ok = False
            if "memory" not in levels:
                self.missing(tree, "a `selfmod` needs `level memory { … }` (the main memory)")
                return None
            adaptive = (values or {}).get("adaptive", S.SelfModSpec.model_fields["adaptive"].default)
            # η and α default to `generated` only when M_eta / M_alpha exist to generate them
            unset = tuple(gate for source, gate in (("eta", "lr"), ("alpha", "retention")) if source not in adaptive)
            memory = self.level(levels["memory"], "selfmod", f"{path}.memory", "memory", unset_defaults=unset)
            projections_tree = levels.get("projections")
            if projections_tree is None:  # by default the projections share the main memory's settings
                projections_tree = Tree("level", "projections", levels["memory"].span, levels["memory"].header,
                                        dict(levels["memory"].attrs))
                projections_tree.attrs.pop("readout", None)
                # the projections' chunk step decays with the write (semantics.py, E0601)
                projections_tree.attrs.pop("retention_order", None)
            projections = self.level(projections_tree, "selfmod", f"{path}.projections", "projections")
            if "projections" in levels and memory is not None and projections is not None and adaptive:
                self.unused_projection_gates(levels["projections"], memory, projections)
            if "projections" not in levels:  # copied settings are not the user's: semantics.py warns on those
                for key in [k for k in self.checker.spans if k.startswith(f"{path}.projections.")]:
                    del self.checker.spans[key]
            self.check_heads(values, dim, tree, path)
            if values is None or memory is None or projections is None or not ok:
                return None
            return self.built(path, S.SelfModSpec(name=name, memory=memory, projections=projections, **values))
        if kind == "cms":
            values = self.fields(tree, S.CMSSpec, path, skip=("levels",))
            ok = self.children(tree, {"level": (1, None)}, "a `cms`")
            levels = []
            seen: set[str] = set()
            level_trees = [c for c in tree.children if c.kind == "level"]
            for level_name, child in zip(level_path_names(level_trees), level_trees, strict=True):
                if level_name in seen:
                    self.bag.error("E0202", f"two cms levels are called `{level_name}`", child.header)
                    ok = False
                seen.add(level_name)
                level = self.level(child, "cms", f"{path}.{level_name}", level_name)
                ok = ok and level is not None
                levels.append(level)
            if values is None or not ok:
                return None
            return self.built(path, S.CMSSpec(name=name, levels=tuple(levels), **values))
        if kind == "parallel":
            values = self.fields(tree, S.ParallelSpec, path, skip=("branches",))
            branch_kinds = {k: (0, None) for k in S.SUBLAYER_SPECS}
            ok = self.children(tree, branch_kinds, "a `parallel`")
            if len(tree.children) < 2:
                self.missing(tree, "a `parallel` needs at least two branches")
                return None
            branches = self.sublayers(tree.children, path, dim)
            if values is None or branches is None or not ok:
                return None
            return self.built(path, S.ParallelSpec(name=name, branches=tuple(branches), **values))
        if kind == "context":
            values = self.fields(tree, S.ContextSpec, path, skip=("memory", "attention"))
            ok = self.children(tree, {"memory": (1, 1), "attention": (1, 1)}, "a `context`")
            memory_tree = next((c for c in tree.children if c.kind == "memory"), None)
            attention_tree = next((c for c in tree.children if c.kind == "attention"), None)
            memory = self.sublayer(memory_tree, f"{path}.memory", dim, "memory") if memory_tree else None
            attention = self.sublayer(attention_tree, f"{path}.attention", dim, "attention") \
                if attention_tree else None
            if values is None or memory is None or attention is None or not ok:
                return None
            return self.built(path, S.ContextSpec(name=name, memory=memory, attention=attention, **values))
        if kind == "level":
            self.bag.error("E0204", "a `level` belongs inside `memory`, `selfmod`, `cms` or `optimizer`",
                           tree.header)
            return None
        self.bag.error("E0204", f"{_article(kind)} `{kind}` section cannot appear here", tree.header)
        return None

    def level(self, tree: Tree, parent: str | None, path: str, name: str | None = None,
              unset_defaults: tuple[str, ...] = ()) -> Any:
        name = name or tree.name or "level"
        if parent == "optimizer":
            values = self.fields(tree, S.OptimizerLevelSpec, path, context="an optimizer level")
            self.children(tree, {}, "a `level`")
            if values is None:
                return None
            if isinstance(values.get("flow"), str) is False and "flow" in values:
                return None
            return S.OptimizerLevelSpec(name=name, **values)
        if name.startswith("_"):  # `self.__fast_w1` would be renamed by Python (name mangling)
            self.bag.error("E0208", f"`{name}` cannot name a level: the compiled module uses it", tree.header,
                           "choose a name without a leading underscore (a level's weights become attribute "
                           "names of the generated module)")
            return None
        defaults = dict(LEVEL_DEFAULTS.get((parent or "", name), LEVEL_DEFAULTS.get((parent or "", None), {})))
        for gate in unset_defaults:
            defaults.pop(gate, None)
        values = self.fields(tree, S.LevelSpec, path, defaults=defaults,
                             context="a level")
        self.children(tree, {}, "a `level`")
        if values is None:
            # the range of a written gate needs no other setting: report it beside the failed ones
            from .semantics import gate_range_errors
            for gate_name in ("retention", "momentum"):
                if gate_name in tree.attrs and (gate := self.last_fields.get(gate_name)) is not None:
                    for message, help in gate_range_errors(gate_name, gate):
                        self.bag.error("E0302", message, tree.attrs[gate_name].value.span, help)
            return None
        try:
            return S.LevelSpec(name=name, **values)
        except pydantic.ValidationError as error:
            self.bag.error("E0302", error.errors()[0]["msg"].lower(), tree.header)
            return None

    def optimizer(self, tree: Tree, path: str) -> S.OptimizerSpec | None:
        values = self.fields(tree, S.OptimizerSpec, path, skip=("levels",))
        ok = self.children(tree, {"level": (1, None)}, "an `optimizer`")
        levels = []
        seen: set[str] = set()
        level_trees = [c for c in tree.children if c.kind == "level"]
        for level_name, child in zip(level_path_names(level_trees), level_trees, strict=True):
            if level_name in seen:
                self.bag.error("E0202", f"two optimizer levels are called `{level_name}`", child.header)
                ok = False
            seen.add(level_name)
            level = self.level(child, "optimizer", f"{path}.{level_name}", level_name)
            ok = ok and level is not None
            levels.append(level)
        update_attr = tree.attrs.get("update")
        hidden = sorted(name for name in (_names_in(update_attr.value) if update_attr is not None else ())
                        if name in seen and update_attr.ns.lookup_const(name) is not None)
        for name in hidden:  # the update reads the constant: the level would go unread (E0506) for no clear reason
            self.bag.error("E0202", f"`{name}` in `update` is the constant `{name}`, which hides the level `{name}`",
                           update_attr.value.span, f"rename the constant `{name}` or the level")
        if hidden:
            return None
        if "update" not in tree.attrs and len(level_trees) > 1:  # reported beside the values' errors
            self.missing(tree, "an optimizer with several levels needs an `update`",
                         "e.g. `update = momentum / (sqrt(second_moment) + 1e-8)`")
            return None
        from .semantics import check_optimizer_flows
        if values is None or not ok:
            if ok:  # the levels converted: their flows are checked beside the errors of the other values
                levels_only = S.OptimizerSpec.model_construct(name=tree.name, levels=tuple(levels))
                self.bag.extend(check_optimizer_flows(levels_only, None, tree.header, self.checker.spans, path))
            return None
        if "update" not in values:  # a single level is the step direction
            values["update"] = ("level", levels[0].name, tree.header)
        update = values["update"]
        values["update"] = _strip_spans(update)
        out = S.OptimizerSpec(name=tree.name, levels=tuple(levels), **values)
        decay = tree.attrs.get("weight_decay")  # as written, by the file or a --set
        if self.decay_flips(out, decay.span if decay is not None else tree.header):
            return None
        self.bag.extend(check_optimizer_flows(out, update, tree.header, self.checker.spans, path))
        return out

    def train(self, tree: Tree) -> S.TrainSpec | None:
        optimizer_attr = tree.attrs.pop("optimizer", None)
        values = self.fields(tree, S.TrainSpec, "train")
        self.seq_len_of_failed_train = self.last_fields.get(  # read only where this returns None
            "seq_len", None if "seq_len" in tree.attrs else S.TrainSpec().seq_len)
        self.children(tree, {}, "`train`")
        if optimizer_attr is None and self.checker.optimizer_overrides:
            # `--set train.optimizer.lr=…` on a spec that keeps the default optimizer: override that
            first_override = self.checker.optimizer_overrides[0][1]
            optimizer = self.builtin_optimizer(_default_optimizer_call(tree.header), first_override)
            if optimizer is None or values is None:
                return None
            values["optimizer"] = optimizer
        if optimizer_attr is not None:
            tree.attrs["optimizer"] = optimizer_attr
            optimizer = self.train_optimizer(optimizer_attr)
            if optimizer is None or values is None:
                return None
            values["optimizer"] = optimizer
            self.checker.provenance["train.optimizer"] = optimizer_attr.origin
        if values is None:
            return None
        compile_mode = values.get("compile", S.TrainSpec.model_fields["compile"].default)
        if values.get("recompute", 0) and (compile_mode is True or compile_mode == "blocks"):
            attr = tree.attrs["recompute"]
            self.bag.error("E0601", "`recompute` needs `compile = chunks` or `compile = false`", attr.span,
                           f"{'one whole graph' if compile_mode is True else 'a block graph'} would trace every "
                           "recomputed stretch into itself; write "
                           "`compile = chunks` (each chunk body compiled once) or `compile = false` beside it, "
                           "or train with `--no-compile`")
            return None
        return S.TrainSpec(**values)

    def train_optimizer(self, attr: Attr) -> Any:
        expr = attr.value
        called = _named_section(expr.func.parts, attr.ns) if isinstance(expr, ast.Call) else None
        if called is not None and called[0].kind == "optimizer" and expr.func.dotted not in S.BUILTIN_OPTIMIZERS:
            name = expr.func.dotted
            self.bag.error("E0303", f"`{name}` is an `optimizer` section: it is named, not called", expr.span,
                           f"write `optimizer = {name}` and set its attributes in the section, or inherit "
                           f"(`optimizer tuned from {name} {{ lr = … }}`, then `optimizer = tuned`), or override "
                           "one with `--set train.optimizer.lr=…`")
            return None
        if isinstance(expr, ast.Ref):
            head = expr.parts[0]
            found = _named_section(expr.parts, attr.ns)
            if found is not None and found[0].kind == "optimizer":
                attr.ns.used.add(head)
                tree = self.checker.expand(found[0], found[1])
                if tree.span.path != attr.span.path:  # a problem in the imported section notes this use
                    self.checker.spans["train.optimizer"] = attr.span
                    self.checker.inherited_attrs.append((tree.span, "train.optimizer"))
                for parts, override in self.checker.optimizer_overrides:
                    self.checker.apply_path_override({"optimizer": tree}, ["optimizer", *parts], override,
                                                     shown=".".join(["train", "optimizer", *parts]))
                return self.optimizer(tree, f"train.optimizer.{tree.name}")
            if expr.dotted in S.BUILTIN_OPTIMIZERS:
                return self.builtin_optimizer(CallValue(expr.dotted, (), (), expr.span), attr)
            if head in attr.ns.failed_aliases and len(expr.parts) > 1:
                return None  # its import failed, and that was reported
            usage = "use `adamw(lr = …)`, `muon(…)`, `sgd(…)`, `m3(…)` or an `optimizer` section"
            if found is not None:  # a section of another kind: suggesting its own name would not help
                attr.ns.used.add(head)
                self.bag.error("E0301", f"`{expr.dotted}` is a {found[0].kind}, not an optimizer", expr.span,
                               usage)
                return None
            optimizer_sections = [name for name, section in attr.ns.sections.items() if section.kind == "optimizer"]
            shipped = Path(__file__).resolve().parents[1] / "specs" / "optimizers" / f"{expr.dotted}.nl"
            # a shipped optimizer spec is a file to import, not a name nldsl knows
            hint = (f"`{expr.dotted}` is the optimizer section of specs/optimizers/{expr.dotted}.nl: import that "
                    f"file (`import \"…/optimizers/{expr.dotted}.nl\" as opt`, its path from this file) and write "
                    f"`optimizer = opt.{expr.dotted}`"
                    if shipped.is_file() and "." not in expr.dotted else None)
            self.bag.error("E0201", f"unknown optimizer `{expr.dotted}`", expr.span,
                           hint or did_you_mean(expr.dotted, [*S.BUILTIN_OPTIMIZERS, *optimizer_sections]) or usage)
            return None
        try:
            raw = self.checker.evaluate(expr, attr.ns)
        except EvalError as error:
            if error.diagnostic is not None:
                self.bag.items.append(error.diagnostic)
            return None
        return self.builtin_optimizer(raw, attr)

    def builtin_optimizer(self, raw: Any, attr: Attr) -> Any:
        """A built-in optimizer call (`adamw(lr = 3e-3)`) with the `--set train.optimizer.ARG=…`
        overrides applied to its arguments, validated; None after a diagnostic."""
        if isinstance(raw, CallValue):
            cls = S.KINDED_VALUES.get(raw.name)
            positional = cls.POSITIONAL if cls is not None else ()
            args, kwargs = list(raw.args), list(raw.kwargs)
            for parts, override in self.checker.optimizer_overrides:
                if len(parts) > 1:
                    self.bag.error("E0206", f"`{raw.name}(…)` is a built-in optimizer: it has no section `{parts[0]}`",
                                   override.key_span, "override one of its arguments, e.g. `--set "
                                   "train.optimizer.lr=0.01`, or train with an `optimizer` section")
                    return None
                try:
                    value = self.checker.evaluate(override.value, override.ns)
                except EvalError as error:
                    if error.diagnostic is not None:
                        self.bag.items.append(error.diagnostic)
                    return None
                name = parts[0]
                self.checker.provenance[f"train.optimizer.{name}"] = override.origin
                if name in positional and positional.index(name) < len(args):
                    args[positional.index(name)] = value  # `adamw(3e-3)`: the positional lr
                else:
                    kwargs = [kwarg for kwarg in kwargs if kwarg[0] != name] + [(name, value, override.value.span)]
            raw = CallValue(raw.name, tuple(args), tuple(kwargs), raw.span)
        value = self.validate(S.TrainSpec, "optimizer", raw, attr)
        if value is _INVALID:
            return None
        # the argument that makes the product too large, where it was written (a --set's own line)
        written = {name: span for name, _value, span in raw.kwargs} if isinstance(raw, CallValue) else {}
        if self.decay_flips(value, written.get("weight_decay", attr.value.span)):
            return None
        for name in ("beta2", "eps"):
            if value.kind == "sgd" and name in written:
                self.bag.warning("W0706", f"`{name}` has no effect on `sgd`: it is a setting of Adam's second "
                                 "moment, which SGD with momentum keeps none of", written[name],
                                 f"remove `{name}`, or use `adamw(…)`")
        return value

    def decay_flips(self, optimizer: Any, span: Span | None) -> bool:
        """E0302 where lr · weight_decay > 1: the decoupled decay p ← p (1 − lr·λ) then flips every
        weight's sign each step (and grows it past 2), which no schedule below lr undoes."""
        product = optimizer.lr * optimizer.weight_decay
        if product <= 1:
            return False
        self.bag.error("E0302", f"lr × weight_decay is {optimizer.lr:g} × {optimizer.weight_decay:g} = {product:g}, "
                       "above 1: the decoupled decay p ← p (1 − lr·weight_decay) would flip every weight's sign "
                       "each step", span, "keep lr × weight_decay well below 1 (AdamW's usual weight_decay is "
                       "0.01–0.1 at an lr of 1e-4–1e-2)")
        return True

    def unused_projection_gates(self, tree: Tree, memory: S.LevelSpec, projections: S.LevelSpec) -> None:
        """Warn about gates written on a selfmod's `level projections` that differ from the memory
        level's: the projection memories learn with the memory level's η, α and β (Eq. 88;
        compiler/codegen.py `selfmod_class`, interpreter.py), so their values are never read (a
        `momentum` there only switches the projections' momentum buffer on, and `momentum = none`
        off, which is a setting with an effect). Inherited ones are not
        the user's to remove, and a copy of the memory level's value misleads no one."""
        for gate in ("lr", "retention", "momentum"):
            attr = tree.attrs.get(gate)
            if attr is None or not (attr.origin in self.checker.override_origins or _inside(attr.span, tree.span)) \
                    or getattr(projections, gate) == getattr(memory, gate) \
                    or (gate == "momentum" and None in (memory.momentum, projections.momentum)):
                # a memory level without momentum: E0601 says what to do; `none` turns theirs off
                continue
            what = (f"`{gate}` has no effect on level `projections`" if gate != "momentum" else
                    "the value of `momentum` has no effect on level `projections` (writing it gives them a "
                    "momentum buffer)")
            self.bag.warning("W0706", f"{what}: the projection memories learn with the `{gate}` of "
                             "`level memory` (Eq. 88)", attr.span,
                             "write the same value as on `level memory`, or set it there" if gate == "momentum"
                             else f"remove it, or set `{gate}` on `level memory`")

    def built(self, path: str, layer: Any) -> Any:
        """Remember a layer that converted cleanly, for the semantic checks that follow."""
        self.layers.append((path, layer))
        return layer

    def check_heads(self, values: dict[str, Any] | None, dim: int | None, tree: Tree, path: str,
                    need_even: bool = False) -> None:
        heads = (values or {}).get("heads", 4)
        if dim is None or (values is None and "heads" in tree.attrs):
            return
        span = tree.attrs["heads"].span if "heads" in tree.attrs else tree.header
        given = [f"{what} comes from `{'`, `'.join(origins)}`" for what, origins in (
            # an error at an override's own text needs no note that it comes from there
            ("the value", self.checker.overrides_read(tree.attrs["heads"]) if "heads" in tree.attrs else []),
            ("the width", self.width_given)) if origins]
        given_note = f" ({'; '.join(given)})" if given else ""
        if dim % heads:
            self.bag.error("E0503", f"{heads} heads do not divide the model width {dim}", span,
                           f"choose heads among: {', '.join(str(h) for h in _divisors(dim)[:8])}" + given_note)
        elif need_even and (dim // heads) % 2:
            self.bag.error("E0503", f"rotary embeddings need an even head width, got {dim // heads}", span,
                           "change `heads`, or set `rope = false`" + given_note)


# Helpers -------------------------------------------------------------------------------------

class _Invalid:
    pass


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _named_section(parts: Sequence[str], ns: Namespace) -> tuple[ast.Section, Namespace] | None:
    """The section a name (`mine`, `alias.mine`) refers to, if any."""
    if parts[0] in ns.aliases and len(parts) == 2:
        return ns.aliases[parts[0]].lookup_section(parts[1])
    return ns.lookup_section(parts[0]) if len(parts) == 1 else None


def _default_optimizer_call(span: Span) -> CallValue:
    """`train`'s default optimizer (S.TrainSpec) as the call that writes it, for overrides of its arguments."""
    default = S.TrainSpec.model_fields["optimizer"].default_factory()
    arguments = default.model_dump(exclude={"kind"}, exclude_defaults=True)
    return CallValue(default.kind, (), tuple((name, value, span) for name, value in arguments.items()), span)


_INVALID = _Invalid()


@dataclass
class _WrongArguments:
    """A call with an unknown or doubled argument (already reported), and the arguments that are
    left, for their own checks."""

    rest: dict[str, Any]


def _arithmetic(expr: ast.Binary, left: int | float, right: int | float) -> int | float:
    op = expr.op
    try:
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            if right == 0:
                raise ZeroDivisionError
            if isinstance(left, int) and isinstance(right, int) and left % right == 0:
                result = left // right  # `dim / heads` stays an integer when it divides
            else:
                result = left / right
        elif op == "//":
            result = left // right
        elif op == "%":
            result = left % right
        else:
            if isinstance(left, int) and isinstance(right, int) and right >= 0 and \
                    abs(left) > 1 and right * math.log2(abs(left)) > 64:
                raise OverflowError
            result = left ** right
            if isinstance(result, complex):
                raise EvalError("E0304", "this power has no real value", expr.span)
    except ZeroDivisionError:
        raise EvalError("E0304", "division by zero", expr.right.span) from None
    except OverflowError:
        raise EvalError("E0304", "this number is too large", expr.span, NUMBER_RANGE) from None
    if isinstance(result, int) and abs(result) > 2**63:
        raise EvalError("E0304", "this number is too large", expr.span, NUMBER_RANGE)
    if isinstance(result, float) and not math.isfinite(result):
        raise EvalError("E0304", "this number is not finite", expr.span)
    return result


def _argument(call: CallValue, name: str) -> Any:
    """The value a call gives to one of its arguments, by keyword or by position."""
    for key, value, _span in call.kwargs:
        if key == name:
            return value
    return dict(zip(S.KINDED_VALUES[call.name].POSITIONAL, call.args)).get(name)


def _kinds_of(annotation: Any) -> set[str]:
    """The call names a field accepts (its kinded union members)."""
    kinds: set[str] = set()
    for arg in _flatten(annotation):
        if isinstance(arg, type) and issubclass(arg, S.Kinded):
            kind_field = arg.model_fields["kind"]
            literal_args = typing.get_args(kind_field.annotation)
            kinds.update(a for a in literal_args if isinstance(a, str))
    return kinds


def _literal_choices(annotation: Any) -> list[str]:
    choices: list[str] = []
    for arg in _flatten(annotation):
        if typing.get_origin(arg) is typing.Literal:
            choices.extend(str(a) for a in typing.get_args(arg))
    return choices


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None), tuple):
        out = []
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                out.extend(_flatten(arg))
        return out
    return [annotation]


def _describe(model: type[pydantic.BaseModel], key: str) -> str:
    annotation = model.model_fields[key].annotation
    parts = []
    for arg in _flatten(annotation):
        if arg is bool:
            parts.extend(["true", "false"])
        elif arg is int:
            parts.append("an integer")
        elif arg is float:
            parts.append("a number")
        elif arg is str:
            parts.append("a name")
        elif typing.get_origin(arg) is typing.Literal:
            options = typing.get_args(arg)
            parts.append(str(options[0]) if len(options) == 1 else "one of " + ", ".join(map(str, options)))
        elif isinstance(arg, type) and issubclass(arg, S.Kinded):
            takes = set(arg.model_fields) - {"kind"}  # `linear` takes no arguments: no `(…)` to write
            parts.extend(f"`{kind}(…)`" if takes else f"`{kind}`" for kind in sorted(_kinds_of(arg)))
        elif arg is type(None):
            continue
    parts = list(dict.fromkeys(parts))
    return listing(parts, "or") if parts else "a value"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Symbol):
        return f"`{value.name}`"
    if isinstance(value, CallValue):
        return f"`{value.name}(…)`"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return f"the list `{_spell(value)}`"
    return f"`{value}`"


def _spell(value: Any) -> str:
    """An evaluated value as a spec would write it (`true`, `[k, v]`, `mlp(2, expansion = 4)`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, CallValue):
        arguments = [_spell(a) for a in value.args] + [f"{name} = {_spell(v)}" for name, v, _span in value.kwargs]
        return f"{value.name}({', '.join(arguments)})"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(_spell(item) for item in value)}]"
    return str(value)


def _cancels_to_rounding(tree: Any) -> bool:
    """Whether a constant sum or difference is rounding noise: not 0, yet within a few units of the
    last place of its operands (1 − 0.9 − 0.1 = −2.8e−17), so a division by it is a division by 0."""
    if tree[0] not in ("add", "sub"):
        return False
    value, left, right = constant_value(tree), constant_value(tree[1]), constant_value(tree[2])
    if value is None or left is None or right is None:
        return False
    return _rounding_noise(value, left, right)


def _rounding_noise(value: float, left: float, right: float) -> bool:
    """A sum or difference of `left` and `right` that is not 0 yet within 8 units in the last place
    of its operands: 0 but for floating-point rounding."""
    return value != 0 and abs(value) <= 8 * ROUNDING * (abs(left) + abs(right))


def _constant_power(base: float, exponent: float, span: Span) -> float:
    """base ** exponent of an update's constant part, or E0304 where it has no finite real value."""
    shown = f"({base:g}) ** {exponent:g}" if base < 0 else f"{base:g} ** {exponent:g}"  # −2 ** 0.5 is −(2 ** 0.5)
    if base < 0 and not exponent.is_integer():
        raise EvalError("E0304", f"{shown} has no real value", span)
    if base == 0 and exponent < 0:
        raise EvalError("E0304", "division by zero", span)
    try:
        return math.pow(base, exponent)
    except OverflowError:
        raise EvalError("E0304", f"{shown} overflows", span) from None


def explicit_names(trees: Sequence[Tree]) -> set[str]:
    """The names written on sections: an unnamed layer's name avoids them wherever they stand, so
    that naming does not depend on the order of the layers."""
    return {tree.name for tree in trees if tree.name is not None}


def unnamed_layer_name(kind: str, taken: Collection[str]) -> str:
    """The spec-path name of an unnamed layer (language.md §2.3): its kind, then KIND_2, KIND_3 …
    skipping every name in `taken` (the names written in the same block and those already given)."""
    if kind not in taken:
        return kind
    index = 2
    while f"{kind}_{index}" in taken:
        index += 1
    return f"{kind}_{index}"


def level_path_names(levels: Sequence[Tree]) -> list[str]:
    """The spec-path names of a cms's or optimizer's levels: a level's own, else `levelN` for the
    N-th level, or the next free number when a name written on another level is `levelN`."""
    names: list[str] = []
    taken = explicit_names(levels)
    for index, level in enumerate(levels):
        name, number = level.name, index + 1
        while name is None:
            name = f"level{number}" if f"level{number}" not in taken else None
            number += 1
        taken.add(name)
        names.append(name)
    return names


def _merge_into(inherited: Tree, child: Tree) -> None:
    """A nested section merged into the inherited one of its kind and name: its attributes replace,
    and its own nested sections merge the same way at any depth (`cms c { level fast { … } }`
    refines the inherited cms's level `fast`), or are appended."""
    inherited.attrs.update(child.attrs)
    for grandchild in child.children:
        same = [c for c in inherited.children
                if grandchild.name is not None and c.kind == grandchild.kind and c.name == grandchild.name]
        if same:
            _merge_into(same[0], grandchild)
        else:
            inherited.children.append(grandchild)
    inherited.span, inherited.header = child.span, child.header


def _child_names(tree: Tree) -> list[tuple[str, Tree]]:
    """The nested sections of `tree` under the names the spec paths give them (language.md §2.3):
    a second unnamed layer of a kind is `KIND_2`, an unnamed cms or optimizer level `levelN`.
    The same names as `Converter.sublayers`, `Converter.sublayer` (cms) and `Converter.optimizer`
    give them: both use `unnamed_layer_name` and `level_path_names`."""
    if tree.kind in ("block", "parallel"):
        named: list[tuple[str, Tree]] = []
        taken: set[str] = explicit_names(tree.children)
        for child in tree.children:
            name = child.name if child.name is not None else unnamed_layer_name(child.kind, taken)
            taken.add(name)
            named.append((name, child))
        return named
    if tree.kind in ("cms", "optimizer"):
        levels = [c for c in tree.children if c.kind == "level"]
        return list(zip(level_path_names(levels), levels, strict=True))
    return [(child.child_label(), child) for child in tree.children]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _inside(inner: Span, outer: Span) -> bool:
    return inner.path == outer.path and outer.start <= inner.start and inner.end <= outer.end


def _as_path(key: str, keyword: bool) -> str | None:
    """The help for a single-word override that names an attribute of `train` or `model`
    (`seq_len`, or `train_seq_len` with one underscore): the path that sets it, as the override
    is written (`train.seq_len`, or the keyword `train__seq_len` of `nldsl.load`)."""
    for section, spec in (("train", S.TrainSpec), ("model", S.ModelSpec)):
        field = key.removeprefix(f"{section}_") if key.startswith(f"{section}_") else key
        if field in spec.model_fields and field not in ("kind", "name"):
            shown = f"{section}__{field}" if keyword else f"{section}.{field}"
            return f"`{field}` is an attribute of `{section}`: set it as `{shown}`"
    return None


def _strip_spans(tree: Any) -> Any:
    if isinstance(tree, tuple) and tree and tree[0] == "level":
        return ("level", tree[1])
    if isinstance(tree, tuple) and tree and tree[0] != "const":  # a const is a leaf (a NamedConstant keeps its name)
        return tuple(_strip_spans(t) if isinstance(t, tuple) else t for t in tree)
    return tree


def _shift(expr: Any, source: SourceFile, delta: int) -> Any:
    """Re-anchor the spans of an override value parsed behind a prefix onto the override text."""
    import dataclasses

    if isinstance(expr, ast.Node):
        changes = {}
        for f in dataclasses.fields(expr):
            value = getattr(expr, f.name)
            if isinstance(value, Span):
                changes[f.name] = source.span(max(0, value.start - delta), max(0, value.end - delta))
            elif isinstance(value, (ast.Node, tuple)):
                changes[f.name] = _shift(value, source, delta)
        return dataclasses.replace(expr, **changes)
    if isinstance(expr, tuple):
        return tuple(_shift(e, source, delta) for e in expr)
    return expr


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _reads_itself(value: ast.Expr, name: str, ns: Namespace, overridden: set[str]) -> bool:
    """Whether an override's `value` for the constant `name` reads `name` through the file's own
    definitions: then it reads the file's value. A path through another overridden constant
    follows that override, not the file, so two overrides that read each other stay a cycle
    (E0507) whatever their order."""
    return name in _names_reached(value, ns, overridden)


def _names_reached(value: ast.Expr, ns: Namespace, stops: set[str]) -> set[str]:
    """The constant names `value` reads, and those their definitions in the file read in turn,
    except through a name of `stops` (an overridden constant: its file definition is not read)."""
    seen: set[str] = set()
    todo = list(_names_in(value))
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        found = ns.lookup_const(current) if current not in stops else None
        if found is not None:
            todo.extend(_names_in(found[0].value))
    return seen


def _belongs_elsewhere(model: type[pydantic.BaseModel], key: str) -> str | None:
    """Where a setting written in `model` or `train` belongs when it is the other's, or an optimizer's
    argument (`train { lr = 0.01 }`), or a built-in optimizer's argument an optimizer section builds."""
    if model is S.ModelSpec and key in S.TrainSpec.model_fields:
        return f"`{key}` belongs in the `train` section: `train {{ {key} = … }}`"
    if model is S.TrainSpec and key in S.ModelSpec.model_fields and key != "name":
        return f"`{key}` belongs in the `model` section"
    if model is S.OptimizerSpec and key in ("momentum", "beta1", "beta2", "betas", "eps"):
        return (f"an `optimizer` section builds `{key}` from levels: e.g. `level momentum {{ flow = gradients; "
                "retention = 0.9 }` with `update = momentum` (specs/optimizers/adamw.nl writes Adam's two moments "
                "so), or use the built-in `adamw(…)`")
    if model is S.TrainSpec and key in S.BuiltinOptimizer.model_fields and key != "kind":
        return (f"`{key}` is an argument of the optimizer: `optimizer = adamw({key} = …)`, or "
                f"`--set train.optimizer.{key}=…`")
    return None


def _override_order(overrides: dict[str, Any], ns: Namespace) -> list[str]:
    """The constants' overrides in an order where each comes after the other overrides it reads,
    through the file's definitions and its own name's (`--set heads=heads+dim/32` after `--set
    dim=dim*2`, whichever is written first): an override that reads its own name is evaluated when
    it is set, so those it reads must be set before. Overrides that read each other (a cycle,
    reported as such where it matters) keep the order they were given in."""
    graph = {name: _names_reached(value, ns, others) & others
             for name, (value, *_rest) in overrides.items() for others in [set(overrides) - {name}]}
    try:
        return list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return list(overrides)


def _names_in(expr: ast.Expr) -> set[str]:
    """The constant names an expression reads (dotted for an imported file's constants)."""
    if isinstance(expr, ast.Ref):
        return {expr.dotted}
    if isinstance(expr, ast.Binary):
        return _names_in(expr.left) | _names_in(expr.right)
    if isinstance(expr, ast.Negate):
        return _names_in(expr.operand)
    if isinstance(expr, ast.Group):
        return _names_in(expr.expr)
    if isinstance(expr, ast.List):
        return set().union(*(_names_in(item) for item in expr.items))
    if isinstance(expr, ast.Call):
        return set().union(*(_names_in(arg) for arg in expr.args),
                           *(_names_in(keyword.value) for keyword in expr.kwargs))
    return set()

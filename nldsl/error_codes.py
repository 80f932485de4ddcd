"""The catalog of diagnostic codes: what each one means, why nldsl rejects it and how to fix it.

`nldsl explain CODE` prints an entry. Every entry carries a short spec that produces its code and
the corrected spec, and the tests run the checker on both (tests/test_check.py), so the catalog
cannot drift from the checker. Codes are grouped by the stage that finds them:

    E01xx  reading and syntax              E04xx  the shape of sections
    E02xx  names, imports and overrides    E05xx  frequencies, periods and dataflow
    E03xx  values                          E06xx  combinations the semantics does not define
    W07xx  warnings: the spec is valid but probably not what was meant
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str  # "E0203"
    title: str  # a short lowercase phrase, the gist of every message with this code
    explanation: str  # paragraphs separated by blank lines
    example: str  # a small spec that produces this code
    fixed: str  # the same spec, corrected: checks without any diagnostic
    overrides: tuple[str, ...] = ()  # `--set` values the example is checked with
    fixed_overrides: tuple[str, ...] = ()  # and the corrected ones
    encoding: str = "utf-8"  # how the example file is saved (E0105 needs bytes that are not UTF-8)

    @property
    def severity(self) -> str:
        return "warning" if self.code.startswith("W") else "error"


def explain(code: str) -> str:
    """The catalog entry for `code` as terminal text: title, explanation, example, fix.

    Raises KeyError for a code that is not in the catalog (the CLI turns that into a message).
    """
    entry = CODES[code.upper()]
    command = "nldsl check example.nl" + "".join(f" --set {o}" for o in entry.overrides)
    fixed_command = "nldsl check example.nl" + "".join(f" --set {o}" for o in entry.fixed_overrides)
    saved = f" (saved as {entry.encoding})" if entry.encoding != "utf-8" else ""
    parts = [
        f"{entry.severity}[{entry.code}]: {entry.title}",
        _wrap(entry.explanation),
        f"Example{saved}, rejected by `{command}`:" if entry.severity == "error"
        else f"Example{saved}, flagged by `{command}`:",
        textwrap.indent(entry.example.rstrip("\n"), "    "),
        f"Fixed (`{fixed_command}` reports nothing):",
        textwrap.indent(entry.fixed.rstrip("\n"), "    "),
    ]
    return "\n\n".join(parts)


def _wrap(text: str, width: int = 88) -> str:
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(textwrap.fill(p, width, break_on_hyphens=False) for p in paragraphs)


def _entry(code: str, title: str, explanation: str, example: str, fixed: str, **options) -> ErrorCode:
    return ErrorCode(code, title, textwrap.dedent(explanation).strip(), textwrap.dedent(example).lstrip("\n"),
                     textwrap.dedent(fixed).lstrip("\n"), **options)


_TOO_DEEP = "(" * 70 + "64" + ")" * 70

_ENTRIES = (
    # E01xx: reading and syntax ---------------------------------------------------------------
    _entry(
        "E0101", "unexpected token",
        """
        The parser met a word or symbol that cannot continue the text before it. The message
        names what it found and the help line lists what it would have accepted at that point,
        in words (`=`, a value, a section, ...).

        The most common causes are a missing `=` between an attribute and its value, a value
        written twice, a keyword used where a name is expected, and a section written like an
        attribute (`mlp = { ... }` instead of `mlp { ... }`).

        After a syntax error nldsl blanks the offending line and parses the rest of the file
        again, so independent mistakes further down are reported in the same run; fix the first
        one first if the later ones look odd.
        """,
        """
        model tiny {
          dim 64
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0102", "unexpected character",
        """
        The file contains a character that is not part of the language: nldsl reads names,
        numbers, strings in double quotes, `# comments`, the brackets `{ } ( ) [ ]` and the
        operators `= , . + - * / // % **`. Anything else (a colon, a dollar sign, a tab-like
        control character, a typographic quote) stops the lexer. A string that is not closed on
        its own line is reported with the same code.

        Attributes are written `key = value`, not `key: value` as in YAML; strings use straight
        double quotes. An invisible character is shown by its code point (`U+00A0`).
        """,
        """
        model tiny {
          dim: 64
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0103", "unexpected end of file",
        """
        The file ends in the middle of something: a section whose closing `}` is missing, or an
        attribute without its value. For a missing `}` the error points at the `{` left open:
        where the braces that follow were borrowed by enclosing sections, the one whose `}`
        would start a line less indented than its own line; otherwise the innermost. For a
        missing value it points at the end of the file.
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0104", "nesting too deep",
        """
        Sections or expressions are nested more than 64 levels deep, or a chain of `from`
        (a section inheriting from one that inherits from another, …) is longer than 64, or
        the sections expand through `from` into more than 10,000 (each line of sections that
        inherit from two copies of the line before doubles the count).
        Constants defined through other constants may chain without limit, in any order. No
        real spec comes close: a model is a handful of sections deep and an arithmetic
        expression a few operators long. The limit keeps the checker (which walks the tree
        recursively) from running out of stack on machine-generated or corrupted input, so that
        it answers with a diagnostic instead of crashing.

        Flatten the expression: give intermediate values names with `const`, and drop redundant
        parentheses. Shorten a chain of `from` by starting from a section nearer its start.
        """,
        f"""
        const width = {_TOO_DEEP}
        model tiny {{
          dim = width
          block {{ mlp {{ }} }}
        }}
        """,
        """
        const width = 64
        model tiny {
          dim = width
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0105", "cannot read the file",
        """
        The spec (or a file given on the command line) could not be read, or its bytes are not
        UTF-8 text. nldsl reads every spec as UTF-8 so that paper symbols in comments (η, α, β,
        θ) mean the same thing on every machine; a byte-order mark at the start is accepted.

        Check the path, or re-save the file as UTF-8. Files written by some Windows editors are
        Latin-1 or UTF-16; `iconv -f latin1 -t utf-8` converts the former. The example below
        only differs from its fix in how it is saved.
        """,
        """
        # Modèle minimal à deux couches
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
        """
        # Modèle minimal à deux couches
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
        encoding="latin-1",
    ),
    # E02xx: names, imports and overrides -------------------------------------------------------
    _entry(
        "E0201", "unknown name",
        """
        A name was used that is neither a named constant, an option of the attribute it is
        given to, a section defined in this file, nor something exported by an imported file.
        The help line suggests the closest known name when there is one.

        Names are resolved in the file where they are written: a section inherited with `from`
        evaluates its attributes in its own file, so it sees that file's constants, not the
        importer's. Names from a file imported `as lib` are written `lib.name`.

        The same code covers an unknown optimizer in `train.optimizer`, an unknown base section
        in `from`, and an optimizer `update` that reads a level the optimizer does not have.
        """,
        """
        const width = 64
        model tiny {
          dim = widht
          block { mlp { } }
        }
        """,
        """
        const width = 64
        model tiny {
          dim = width
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0202", "defined twice",
        """
        Two definitions in the same scope have the same name: two constants, two named sections,
        a constant and a section, an import alias that clashes, two layers of a block, two levels
        of a `cms` or of an optimizer, or a projection listed twice in a selfmod's `adaptive`.
        nldsl does not let the later one silently win, because which one a `from` or a `--set`
        would reach would then depend on the order of the file.

        Rename one of them. To reuse a section with changes, inherit from it:
        `level slow from fast { period = 64 }`. An import without `as` merges the other file's
        names into this one; if they clash, import it with a name instead.
        """,
        """
        const dim = 64
        const dim = 128
        model tiny {
          dim = dim
          block { mlp { } }
        }
        """,
        """
        const dim = 128
        model tiny {
          dim = dim
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0203", "unknown attribute",
        """
        A section sets an attribute that its kind does not have. Every section kind has a fixed
        set of attributes (the fields of its class in `nldsl/spec.py`), and a misspelt one
        would otherwise be ignored without a word: a level with `perod = 16` would silently keep
        its default period of 1 and train token by token.

        The help line suggests the nearest attribute, or lists every attribute of the section.
        Some attributes belong to another section than one might expect: `heads` is set on the
        `memory` layer, not on its `level`; `seq_len` and `batch` belong to `train`.

        An override such as `--set train.stepz=5` reaches the same check.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { perod = 16 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0204", "section in the wrong place",
        """
        A section appears inside a section that cannot contain it. The hierarchy is fixed:
        a `model` holds one `block`; a block holds layers (`attention`, `memory`, `selfmod`,
        `mlp`, `cms`, `parallel`, `context`); levels live inside `memory` (one), `selfmod`
        (`memory` and `projections`), `cms` (one or more) and `optimizer` sections.

        A level is an associative memory with its own state, objective and update rule (Nested
        Learning §2); it only has a meaning inside the layer that feeds it keys and values. To
        add an in-context memory to a block, wrap the level in a `memory` layer.
        """,
        """
        model tiny {
          dim = 64
          block {
            level { period = 16 }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0205", "cannot import",
        """
        An `import` failed: the file does not exist, is not UTF-8, does not parse (its syntax
        errors are reported too, in that file), or the imports form a cycle (a file importing
        itself, directly or through other files; the cycle is reported where it closes).

        Import paths are relative to the file that contains the `import`, not to the current
        directory, so a spec checks the same from anywhere. Imports are for sharing levels,
        blocks and optimizers between specs: `import "titans_lmm.nl" as titans`, then
        `level memory from titans.titans_memory { period = 8 }`.
        """,
        """
        import "shared_levels.nl" as shared
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0206", "bad override",
        """
        A `--set KEY=VALUE` on the command line cannot be applied. KEY is either a named constant
        of the spec (`--set dim=256`) or a path of sections and an attribute (`--set
        train.steps=50`, `--set model.block.lmm.heads=8`, where a layer is named by its name or
        its kind). The override is rejected when it is not `key=value`, when the constant or a
        section on the path does not exist or is ambiguous, or when its value does not parse (the
        syntax error is then reported with its own code, prefixed by `in override`).

        Overrides go through the same checks as the file: a bad value gets the usual value
        error. The spec's hash includes the overrides, so a run records exactly what it trained.
        """,
        """
        const width = 64
        model tiny {
          dim = width
          block { mlp { } }
        }
        """,
        """
        const width = 64
        model tiny {
          dim = width
          block { mlp { } }
        }
        """,
        overrides=("widht=128",),
        fixed_overrides=("width=128",),
    ),
    _entry(
        "E0208", "reserved name",
        """
        Layer names become attribute names of the generated PyTorch modules (`self.NAME`), so a
        layer cannot be called by a Python keyword (`import`, `class`, `lambda` …), by a name
        starting with an underscore, or by a method or attribute of `torch.nn.Module`
        (`forward`, `training`, `parameters`, `to`, `eval` …), nor by the names a layer module
        uses for its own parameters next to its children (`norm`, `gate_norm_0`, `gate_norm_1`).

        An optimizer level cannot be called `gradients` or `squared_gradients`, the gradient
        streams that `flow` and `update` name, nor `step`, the optimizer's step counter.

        Rejecting them here means that no name from a spec can change what the generated code
        does: everything that passes the checker compiles to valid, unsurprising Python.
        """,
        """
        model tiny {
          dim = 64
          block { mlp forward { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp feed_forward { } }
        }
        """,
    ),
    # E03xx: values -------------------------------------------------------------------------
    _entry(
        "E0301", "wrong type of value",
        """
        The value has the wrong type for its attribute: a string where a number is expected, a
        fraction for an integer, a list for a single value, or a constant whose value is a call
        or an option name (constants hold numbers, strings, booleans and lists). The help line
        shows what was given.

        Counts (`dim`, `heads`, `layers`, `period`) are integers: `dim = 2 ** 7` and
        `dim = width / 2` are fine when the result is whole, but `layers = 2.5` is not. An
        optimizer's `update` is an expression of its levels, numbers, `+ - * /`, `**` with a
        number as exponent, `sqrt(...)`, `abs(...)` and `sign(...)` only.
        """,
        """
        model tiny {
          dim = 64
          layers = 2.5
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          layers = 2
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0302", "value out of range",
        """
        The value has the right type but lies outside the range its attribute allows: a
        period of 0, a negative learning rate, a retention above 1, a width of 0, more than 8
        layers in an MLP state, a gate that would start within 1e-6 of 0 or of its bound (its
        sigmoid's logit past ±13.8, where it could not learn).

        The ranges follow the meaning of the symbols: periods C count tokens (C >= 1); gates
        are non-negative; a retention α is a fraction of the old state kept, so α ∈ [0, 1] and
        α = 1 means no decay; a momentum decay β lies in [0, 1). The help line or the field
        descriptions in `nldsl/spec.py` give every range.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 0 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0303", "not a valid option",
        """
        The attribute takes one of a fixed set of options (`objective = dot | l2 | surprise |
        reconstruction`, `rule = gd | dgd`, `readout = causal | exclusive | chunk_start`, ...),
        or a value written as a call (`state = mlp(depth = 2)`, `lr = learned(max = 0.1)`), and
        the name given is none of them. The help line suggests the nearest option or lists all
        of them.

        Each option is a paper concept: `dot` is the Hebbian objective −⟨M(k), v⟩, `l2` the
        delta rule ½‖M(k) − v‖², `dgd` the delta gradient descent of Eq. 88. Options are written
        as bare names: `objective = l2`.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { objective = l1 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { objective = l2 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0304", "no value can be computed",
        """
        Constant arithmetic failed: a division by zero, a power without a real value, a number
        too large to be a sensible setting (beyond 2⁶³, or not finite as a float), a literal so
        small that it rounds to 0 (`1e-400`), or a literal too long to read. Arithmetic is
        evaluated in floating point when the spec is checked, so a mistake here would otherwise
        surface as a crash far away; a divisor that is 0 up to floating-point rounding (`1 - 0.9 -
        0.1`, which computes to -2.8e-17) is a division by zero too, in a constant as in an
        optimizer's `update`. So is an `update` that takes a square root or a fractional power of
        a level that goes negative (`sqrt(m)` of a momentum of the gradients, NaN wherever m < 0):
        only a linear `dot` level of `squared_gradients` (or of such a level), without
        Newton–Schulz, stays non-negative; a difference of non-negative parts (`sqrt(v - m * m)`,
        a variance) is left to the writer, and `nldsl train` stops at the first update it makes
        non-finite.

        A constant whose definition fails is reported once, where it fails; its uses are not
        reported again.
        """,
        """
        model tiny {
          dim = 64
          vocab = 2 ** 80
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          vocab = 2 ** 8
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0305", "bad call arguments",
        """
        A value written as a call has an argument it does not take, an argument given twice,
        too many positional arguments, or lacks a required one. Call values are small records:
        `mlp(depth, expansion, activation)`, `residual_mlp(expansion, activation)`,
        `learned(max, init)`, `per_head(init)`, `newton_schulz(steps)`, `steps(count)`,
        `adamw(lr, weight_decay, ...)`. The first positional argument is the one named first;
        naming arguments is clearer and always allowed.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { state = mlp(depht = 2)  period = 16 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16 }
            }
          }
        }
        """,
    ),
    # E04xx: the shape of sections --------------------------------------------------------------
    _entry(
        "E0401", "something required is missing",
        """
        A section lacks a part it cannot do without: a model without `dim`, a block without
        layers, a `memory` without its `level`, a `selfmod` without `level memory`, a `cms`
        without levels, a `parallel` with fewer than two branches, an optimizer with several
        levels but no `update`, or a top-level section without a name (it could never be used
        with `from`).

        Defaults exist for everything that has a sensible one (the field defaults in
        `nldsl/spec.py`); what remains required has none: the model width, for instance, sets
        every shape downstream.
        """,
        """
        model tiny {
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0402", "too many sections",
        """
        A section appears more often than allowed: a file has at most one `model` and one
        `train` section, a model exactly one `block` (repeat it with `layers = N`), a `memory`
        layer one `level`, a `selfmod` at most two levels, a `context` one `memory` and one
        `attention`.

        To stack different blocks, put several layers in one block; to run layers side by side,
        use `parallel`.
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
          block { attention { } }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            attention { }
            mlp { }
          }
        }
        """,
    ),
    _entry(
        "E0403", "attribute set twice",
        """
        The same attribute is written twice in one section. Setting an attribute again in a
        section that inherits it with `from` is the way to override it and is allowed; twice in
        the same section is almost always a leftover from editing, and which value was meant
        cannot be guessed.
        """,
        """
        model tiny {
          dim = 64
          dim = 128
          block { mlp { } }
        }
        """,
        """
        model tiny {
          dim = 128
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "E0404", "bad inheritance",
        """
        A `from BASE` cannot be followed: the base has a different kind (a `level` can only
        inherit from a `level`, a `block` from a `block`), or the chain of bases loops back to
        the section itself.

        Inheritance copies the base's attributes and child sections, then applies the section's
        own on top: `level fast from slow { period = 16 }` is `slow` with another period.
        """,
        """
        mlp wide { expansion = 8 }
        model tiny {
          dim = 64
          block {
            attention from wide { }
          }
        }
        """,
        """
        mlp wide { expansion = 8 }
        model tiny {
          dim = 64
          block {
            mlp from wide { }
          }
        }
        """,
    ),
    # E05xx: frequencies, periods and dataflow --------------------------------------------------
    _entry(
        "E0501", "levels out of frequency order",
        """
        A level nested inside another updates less often than the level around it, or an
        optimizer level writes more often than the level it reads from. Nested Learning orders
        levels by update frequency: fast levels sit inside slow ones, and a slower level learns
        from what the faster one accumulated (Eq. 71-72). With the order reversed the slow level
        would have to react to updates that have not happened yet.

        List the levels of a nested `cms` from the fastest (smallest period) to the slowest.
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              variant = nested
              level slow { period = 64 }
              level fast { period = 16 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              variant = nested
              level fast { period = 16 }
              level slow { period = 64 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0502", "periods that do not nest",
        """
        A period is not a multiple of the period it must nest in: a nested `cms` level whose
        period is not a multiple of the faster level inside it, an optimizer level reading a
        level with a period that does not divide its own, or a memory-as-context segment that is
        not a multiple of the memory's chunk size.

        Chunks of nested levels must line up: a slower level restarts or reads the faster one
        at the end of the faster level's chunks (Eq. 72), and a MAC segment must start on a
        chunk boundary of its memory. With 16 and 24 the boundaries drift apart; with 16 and 32
        (or 48) every slow chunk ends on a fast one.
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              variant = nested
              level fast { period = 16 }
              level slow { period = 24 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              variant = nested
              level fast { period = 16 }
              level slow { period = 32 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0503", "heads do not fit the width",
        """
        The number of heads does not divide the model width, so the heads cannot all have the
        same width; or, with rotary position embeddings, the head width is odd (RoPE rotates
        pairs of channels). Each head of a memory layer is its own level with a d/h-wide key,
        value and state, so the split has to be exact. The help line lists head counts that work.
        """,
        """
        model tiny {
          dim = 64
          block {
            attention { heads = 6 }
            mlp { }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            attention { heads = 4 }
            mlp { }
          }
        }
        """,
    ),
    _entry(
        "E0504", "levels learn from each other in a cycle",
        """
        In an optimizer, each level's `flow` is the stream it compresses: the gradients, the
        squared gradients, or another level's output. Levels whose flows form a cycle have no
        first level to compute: every one of them waits for another. In Nested Learning the
        flows form a hierarchy that starts at the gradient stream (momentum is a memory of
        gradients, Eq. 33-34; a second momentum may compress the first). Make one level of the
        cycle learn from `gradients`.
        """,
        """
        optimizer looped {
          level first { flow = second }
          level second { flow = first }
          update = first
        }
        """,
        """
        optimizer looped {
          level first { flow = gradients }
          level second { flow = first }
          update = second
        }
        """,
    ),
    _entry(
        "E0505", "a flow or gate has no source",
        """
        Something is fed from a stream that does not exist: an optimizer level whose `flow` is
        neither `gradients`, `squared_gradients` nor another level of the optimizer, or a gate
        (`lr`, `retention`) marked `generated` where no in-context memory generates it.

        Generated gates are the self-modifying Titans' η_t = M_η(x_t) and α_t = M_α(x_t)
        (Eq. 84): they exist only in a `selfmod` layer that lists `eta` (for `lr`) or `alpha`
        (for `retention`) in `adaptive`. Elsewhere use `learned(max = ...)` for a gate computed
        from the input, `per_head(...)` for a learned constant, or a number.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { lr = generated  period = 16 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { lr = learned(max = 0.1)  period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "E0506", "a level is never read",
        """
        An optimizer level is written but nothing reads it: it is not used in `update` and no
        other level learns from it. It would cost memory and time and change nothing, which
        usually means the `update` expression forgot it. Use it, or remove the level. An update
        that reads a name no level has is that error alone (E0201): the levels it leaves unread are
        reported once its names are mended.
        """,
        """
        optimizer adam_like {
          level momentum { retention = 0.9 }
          level second_moment { flow = squared_gradients  retention = 0.999 }
          update = momentum
        }
        """,
        """
        optimizer adam_like {
          level momentum { retention = 0.9 }
          level second_moment { flow = squared_gradients  retention = 0.999 }
          update = momentum / (sqrt(second_moment) + 1e-8)
        }
        """,
    ),
    _entry(
        "E0507", "a constant depends on itself",
        """
        A named constant is defined in terms of itself, directly or through other constants, so
        it has no value. Constants are evaluated once, in dependency order, before anything
        else; give one of the constants in the cycle a plain value. An override that reads the
        constant it sets (`--set dim=dim*2`) reads the file's value and is no cycle; two
        overrides that read each other but not themselves (`--set a=b --set b=a`) are, while two
        that also read their own names (`--set a=a+b --set b=b+a`) are applied in the order given
        (docs/language.md §6).
        """,
        """
        const dim = heads * 16
        const heads = dim / 16
        model tiny {
          dim = dim
          block { attention { heads = heads } }
        }
        """,
        """
        const heads = 4
        const dim = heads * 16
        model tiny {
          dim = dim
          block { attention { heads = heads } }
        }
        """,
    ),
    _entry(
        "E0508", "vocabularies differ",
        """
        The model's embedding and output layer have one row per token id, `model.vocab` of them,
        and the tokenizer the spec trains with (`train.tokenizer`) produces ids below its own
        vocabulary: 256 for `bytes`, N for `bpe(N)`. When the two differ, training would either
        index past the embedding or never use some of its rows, so a named tokenizer must match
        the model. A spec without a `tokenizer` setting trains with `bytes`: `nldsl check` and
        `nldsl train` then ask for its 256, while `nldsl.load` lets a model fed token ids of its
        own from Python keep any vocabulary.
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        train {
          tokenizer = bpe(1024)
        }
        """,
        """
        model tiny {
          vocab = 1024
          dim = 64
          block { mlp { } }
        }
        train {
          tokenizer = bpe(1024)
        }
        """,
    ),
    # E06xx: combinations the semantics does not define ------------------------------------------
    _entry(
        "E0601", "unsupported combination",
        """
        Each option is valid on its own but this combination has no defined meaning
        (docs/semantics.md), so nldsl refuses it instead of guessing. Among them:

        Newton-Schulz orthogonalization replaces a whole chunk's increment, so the state changes
        only at chunk ends and the level must read `readout = chunk_start`. `init = zeros` needs
        a linear state (an all-zero MLP has zero gradients and never learns), and a linear state
        that starts at zero moves only with a nonzero key and a nonzero target: it is refused
        with `values = generated` under `l2` or `dot` (the target M(v) starts at zero too), and
        on a selfmod's projection memories when M_k generates their keys or M_v their values
        (copied from `level memory`, it is named there). The `surprise`
        objective (the model's next-token loss) exists only for `cms` levels, and `cms` levels
        have no value stream for `dot` or `l2`; they change only at chunk ends (Eq. 71). The
        self-modifying projections generate their own values, so they read the state their
        chunk started with (Eq. 90). `update = outer` and periods in `steps(...)` are for cms
        levels. Slower nested cms levels move toward the faster one with a constant `lr` only.
        A gated `parallel` needs exactly two branches; memory-as-context sets its span with
        `segment`, not `window`. `train.recompute` reruns chunk loops in the backward pass, so it
        needs `compile = chunks` or `compile = false`: one whole graph (or, with `compile =
        blocks`, a block's graph) would trace every rerun into itself.

        An optimizer level with `state = mlp` keeps the weights of its MLP, not a momentum
        buffer, so `nesterov`, `bias_correction` and `init = first_flow` (which act on that
        buffer) do not apply to it; `bias_correction` divides by 1 - α^w, which is zero with
        `retention = 1`, and which undoes a start at zero, so it does not go with
        `init = first_flow` (a buffer that starts at its first flow).
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level {
                period = 16
                orthogonalize = newton_schulz(steps = 5)
              }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level {
                period = 16
                orthogonalize = newton_schulz(steps = 5)
                readout = chunk_start
              }
            }
          }
        }
        """,
    ),
    # W07xx: warnings -----------------------------------------------------------------------
    _entry(
        "W0701", "a level that runs token by token",
        """
        A level with `period = 1` updates after every token. For most levels this has no
        chunk-parallel form: a deep (MLP) state or a momentum term makes each token's gradient
        depend on the previous token's update, so training runs a Python-speed loop over the
        sequence. A linear state without momentum (linear attention, DeltaNet) has fast exact
        forms and is not flagged, unless it sets a `clip`: each token's clip factor then reads
        the state the previous token left (except under linear attention's Hebbian rule, whose
        gradient reads no state).

        The chunk rule is the usual remedy (Titans §3.2, Nested Learning Eq. 90): with period
        C every gradient in a chunk is taken at the chunk's start state, so the C updates are
        computed in parallel; the shipped specs use chunks of 8 to 16 tokens. The spec is valid;
        keep `period = 1` when the exact online recurrence is the point.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { state = mlp(depth = 2) }
            }
          }
        }
        train { compile = chunks }  # one graph would unroll all 256 tokens (W0714)
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16 }
            }
          }
        }
        train { compile = chunks }
        """,
    ),
    _entry(
        "W0702", "a constant is never used",
        """
        A named constant of the checked file is defined but never used. Usually a value meant to
        be used was written as a literal somewhere instead, so changing the constant (or
        overriding it with `--set`) would silently do nothing. Use it, remove it, or prefix its
        name with `_` to keep it as documentation. The warning is held back while the file has
        errors, and a file without a `model` or `train` section (a library of definitions) gets
        none: its constants are for the files that import it. A constant read only by a value an
        override replaced (`--set model.dim=64` over `dim = dim`) counts as used.
        """,
        """
        const width = 128
        model tiny {
          dim = 64
          block { mlp { } }
        }
        """,
        """
        const width = 128
        model tiny {
          dim = width
          block { mlp { } }
        }
        """,
    ),
    _entry(
        "W0703", "self-modifying projections that are never read",
        """
        A `selfmod` configures its `projections` level but lists no projection in `adaptive`,
        so no in-context memory generates k, v, η or α (Eq. 84-85) and the settings have no
        effect: the layer is a Titans memory with static projections. Either list the adaptive
        projections (HOPE uses `[k, v, eta, alpha]`) or drop the `projections` level.
        """,
        """
        model tiny {
          dim = 64
          block {
            selfmod {
              adaptive = []
              level memory { lr = 0.1  retention = 1.0  period = 16 }
              level projections { lr = 0.1  retention = 1.0  period = 8 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            selfmod {
              adaptive = []
              level memory { lr = 0.1  retention = 1.0  period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "W0704", "a memory period longer than a training sequence",
        """
        An in-context memory's period (its chunk size C, in tokens) is longer than a training
        sequence, so during training it never completes a chunk and never updates: it acts as
        a fixed map from its initial state. Its state is per sequence, so unlike a slow `cms`
        level it does not carry updates across sequences either (the continuum clock applies to
        cms levels). With `readout = chunk_start` a period of exactly one sequence is the same:
        a chunk reads only the writes of earlier chunks, and the one write comes at the end. So is
        an in-context `cms` level at a period of one sequence (it reads the weights of its last
        write; one slower than a sequence goes on the continuum clock instead), and a slower level
        of a `nested` cms at a period of one sequence: it moves after the sequence's last token,
        so training never reads the move and its start gets no gradient (a stream carried across
        calls does read it). So is a `context` (memory as context) segment of a whole sequence
        or more: each sequence is one segment, whose retrieval reads the state the sequence
        starts with, so training never shows attention a retrieval of earlier segments. Lower
        the period (or the segment) or raise `train.seq_len`.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 512 }
            }
          }
        }
        train { seq_len = 256 }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              level { period = 64 }
            }
          }
        }
        train { seq_len = 256 }
        """,
    ),
    _entry(
        "W0705", "in-context settings on a level the outer optimizer steps",
        """
        A `cms` level with `update = outer`, or whose period is longer than a training sequence,
        is a plain MLP whose weights the outer optimizer steps on the continuum clock
        (docs/semantics.md §4). It never takes an inner step, so what shapes one (`rule`,
        `retention`, `momentum`, `objective`, `orthogonalize`, …) has no effect. Its `lr` is still
        used: `nldsl stream` steps the level with it. Remove those settings, or let the level learn
        in context with `update = in_context` and a period of at most `train.seq_len`.
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 16 }
              level slow { period = steps(4)  update = outer  momentum = 0.9 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 16 }
              level slow { period = steps(4)  update = outer }
            }
          }
        }
        """,
    ),
    _entry(
        "W0706", "a setting that has no effect",
        """
        Another setting makes this one inert, so removing it changes nothing: `values =
        generated` with an objective that has no value targets (`surprise`, `reconstruction`);
        `dgd_layers` with `rule = gd`, or on a state with a single weight matrix;
        `retention_order = before_write` without a `retention` to decay with; `rope_base` with
        `rope = false`; `value_norm` on a `memory` whose objective is `reconstruction` (it makes no
        values); `lr`, `retention` or a `momentum` value on a selfmod's `level projections`,
        whose memories learn with the gates of `level memory` (Eq. 88); the objective, rule and
        other update settings of a slower level of a nested `cms`, where only the fastest level runs
        and learns; `grad_through_writes = false` on a selfmod's memory level when the projection memories'
        own writes cannot carry k, v and η to the loss either (they are detached too or never
        read in training, or neither q nor α is adaptive): M_k, M_v and M_η (or W_k, W_v and a
        learned `lr`) and the convolutions of k and v are then left without gradient, while M_α
        keeps its through the retention; and
        on a `memory` layer's level, which leaves W_k, W_v, their convolutions and a
        learned `lr` without gradient for the same reason; a selfmod whose memory level learns by
        `reconstruction` while no projection is adaptive or the projection memories reconstruct
        too, so that nothing reads its values; a
        slower nested level that never moves in context (its period is longer than
        `train.seq_len`, or the fastest level does not learn in context), since the faster levels
        restart only from a level that moves; `lr` on a level with `orthogonalize`, when η is a
        constant or `per_head`, or the level has period 1 and no momentum: Newton–Schulz
        normalises each chunk's increment, which such an η only scales (docs/semantics.md §1.5); an
        optimizer level's `hidden` on a `linear` state (it is the width of an `mlp` state's φ); an
        optimizer level with `lr = 0` on a `linear` state that starts at zero (it writes nothing, so
        its output is 0 at every step); `bias_correction` or `nesterov` on a linear level with
        `retention = 0` (1 − 0^w is 1, and α m + η X is the write itself); `beta2` or `eps` on
        `sgd(…)`, which keeps no second moment; `train.recompute` on a model whose levels run no chunk
        loop (none learns in context, or each runs on the exact delta kernel, as linear
        attention and DeltaNet do): it reruns chunk loops, and there are none;
        `train.chunks_per_call` above 1 on such a model, on one whose only chunk loops are nested
        `cms` ones, which run one chunk per compiled call (their step reads the chunk's position),
        or without `compile = chunks`, the only mode that compiles chunk bodies (a warning rather
        than an error, since `nldsl train --no-compile` sets `compile = false`);
        an override that a later override of the same key replaces (its value is never checked), or
        one inside a section whose whole value a later override sets, and one of a constant
        nothing reads. The
        warning names the setting and what makes it inert. Remove the setting, or change the one
        that makes it inert.
        """,
        """
        model tiny {
          dim = 64
          block {
            attention { rope = false  rope_base = 500000 }
            mlp { }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            attention { rope = true  rope_base = 500000 }
            mlp { }
          }
        }
        """,
    ),
    _entry(
        "W0707", "an inner objective that grows the memory without bound",
        """
        With `objective = dot` and `values = generated` the target a level writes toward is its own
        reading M(v), and the Hebbian write θ ← θ + η M(v) kᵀ steps along what the memory already
        outputs: nothing pulls it back, so M grows geometrically wherever kᵀv > 0, and at the
        default learning rate its outputs can overflow within a short sequence. The delta rule
        (`objective = l2`) writes toward the target instead of along it; `values = given` gives the
        Hebbian write a target that does not grow with M.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory { level { objective = dot  values = generated } }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory { level { objective = l2  values = generated } }
          }
        }
        """,
    ),
    _entry(
        "W0708", "newton-schulz steps that turn an increment's rounding noise into its write",
        """
        `orthogonalize = newton_schulz(n)` on an in-context level orthogonalises each chunk's
        increment. That increment is a sum of at most `period` outer products, so most of its
        singular values are 0 up to rounding, and every step of Muon's quintic iteration multiplies
        those by up to 3.4445 while it pushes the real ones toward 1. In float32, on a rank-1
        32 × 32 increment, the largest of them is 2e-5 after 5 steps, 1e-2 after 10 and about 1
        (as large as the real ones) from 15: the write becomes noise. Muon takes 5 steps; more
        than 8 is warned about.
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 16  orthogonalize = newton_schulz(steps = 15) }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 16  orthogonalize = newton_schulz(steps = 5) }
            }
          }
        }
        """,
    ),
    _entry(
        "W0709", "delta gradient descent that grows the state on a wide input",
        """
        `rule = dgd` adds the decay θ(αI − η x xᵀ) to each write (Eq. 57/88). It scales the state's
        component along the input x by α − η‖x‖². Eq. 57 assumes normalised keys, but a `cms`
        level's input is RMS-normalised, so ‖x‖² is the model width: once η·dim passes 2 the factor
        passes −1, and a token seen again multiplies that component again, with a flipped sign each
        time. On repeated text a width-256 level at the cms default η = 0.01 (η·dim = 2.56) reached
        NaN by token 758, and one of width 192 (η·dim = 1.92) stayed finite over 1024 tokens.
        η is the gate's bound where it has one (`max`), else its value or initial value. With a
        retention α < 1 the factor passes −1 earlier, at η·dim > 1 + α; the warning takes α = 1. Inner
        learning rates are not scaled by width: lower `lr` as the model widens, or use `rule = gd`.
        """,
        """
        model wide {
          dim = 256
          block {
            cms {
              level { period = 16  rule = dgd }
            }
          }
        }
        """,
        """
        model wide {
          dim = 256
          block {
            cms {
              level { period = 16  rule = dgd  lr = 0.0078 }
            }
          }
        }
        """,
    ),
    _entry(
        "W0710", "a warm-up too short for m3",
        """
        The built-in `m3` (Algorithm 1 as printed) divides NS(M1) entry by entry by the root of the
        squared gradients summed so far, without bias correction: in its first steps that is a
        handful of them, so an entry whose gradients were tiny takes a huge step. The learning-rate
        warm-up holds those steps back. Measured (docs/language.md, `m3`): on specs/transformer.nl at
        dim 64 the validation loss after 80 steps averaged 4.32 over three seeds with the default
        `warmup = 20`, 5.42 with 5 and 5.61 with 0; on specs/titans_mal.nl the loss was NaN by step
        5 with `warmup = 2` for each of three seeds, which all trained with 20. The
        warning is given below 20. Raise `train.warmup`, or use `specs/optimizers/m3.nl`, whose
        second moment is bias-corrected.
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        train {
          optimizer = m3
          warmup = 5
        }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        train {
          optimizer = m3
          warmup = 20
        }
        """,
    ),
    _entry(
        "W0711", "a level that never updates in the run",
        """
        A level updates less often than once in the whole training run, so it keeps its start for
        all of it: a `cms` level on the continuum clock (an outer level, or one whose period is
        longer than a training sequence) is stepped every N outer steps, N being its `steps(n)` or
        its period in tokens over the `batch × seq_len` tokens of a step (rounded up), and here N
        is more than `train.steps`; or a level of the optimizer `train` uses has a `period` longer
        than `train.steps`, so its output never moves and whatever reads it keeps its start. Lower
        the period, or raise `train.steps`.
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 8 }
              level slow { period = steps(500); update = outer }
            }
          }
        }
        train { steps = 200 }
        """,
        """
        model tiny {
          dim = 64
          block {
            cms {
              level fast { period = 8 }
              level slow { period = steps(50); update = outer }  # every 50 of the 200 steps
            }
          }
        }
        train {
          steps = 200
          seq_len = 128
        }
        """,
    ),
    _entry(
        "W0712", "an update that can divide by zero",
        """
        An optimizer's `update` divides by an expression of its levels (or raises one to a negative
        power) with nothing to keep it off 0, as in `m / sqrt(v)`. A level is 0 before its first
        write, and in the entries of a parameter whose gradient has been 0 all along, such as the
        row of an embedding that no token of the batch used: the step is then 0/0 = NaN there, and
        `nldsl train` stops at the update that made the weights not finite. Add an ε to the divisor,
        as Adam does: `m / (sqrt(v) + 1e-8)`. A sum with a positive constant and a part that cannot
        go negative (`sqrt(v) + 1e-8`, `abs(m) + 1`) counts as kept off 0.
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        optimizer rms {
          lr = 1e-3
          level v { flow = squared_gradients; retention = 0.99; lr = 0.01 }
          level m { flow = gradients; retention = 0.9; lr = 0.1 }
          update = m / sqrt(v)
        }
        train { optimizer = rms }
        """,
        """
        model tiny {
          dim = 64
          block { mlp { } }
        }
        optimizer rms_with_eps {
          lr = 1e-3
          level m { flow = gradients; retention = 0.9; lr = 0.1 }
          level v { flow = squared_gradients; retention = 0.99; lr = 0.01 }
          update = m / (sqrt(v) + 1e-8)  # ε keeps the divisor off 0
        }
        train { optimizer = rms_with_eps }
        """,
    ),
    _entry(
        "W0713", "a self-modifying memory whose first step diverges",
        """
        A selfmod's `memory` level takes its in-context steps with a momentum β: at a steady
        gradient the step it builds up is η/(1 − β) times the gradient, with η the `lr` gate's
        starting value (`generated(max = M)` starts at M/10, its readout vector being zero; a
        `learned` gate at half its bound) and β the momentum's (`learned` starts at 0.9 of its bound).
        Measured on specs/hope.nl (the first forward at a random init, dims 64 and 128, seq_len 256
        and 1024, periods 4 to 32, two seeds): η/(1 − β) at or below 0.3 never gave a NaN loss, 0.4
        to 0.5 did in most runs, 0.6 and above in every run. The period barely mattered (η·C/(1 − β)
        does not predict it), and the `projections` level stayed finite even at 2. The default
        `lr = generated(max = 1)` with `momentum = 0.95` is 2: lower the bound or the momentum.
        """,
        """
        model tiny {
          dim = 64
          block {
            selfmod {
              level memory { period = 16  momentum = 0.95 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            selfmod {
              level memory { period = 16  momentum = 0.95  lr = generated(max = 0.15) }
            }
          }
        }
        """,
    ),
    _entry(
        "W0714", "a whole-graph compile that unrolls many chunk steps",
        """
        `train.compile = true` compiles the training step as one graph, and every chunk loop of
        every in-context level is unrolled into it: a level with period C runs ceil(seq_len / C)
        chunk steps per block. Compilation time grows with that count. On a 2-core CPU one Titans
        memory layer of 64 chunk steps (width 256, seq_len 1024, period 16) took 11 minutes to
        compile its first step, and specs/hope.nl's 136 had not compiled after 40 minutes. The
        checker flags 64 chunk steps or more. `compile = blocks` compiles one block's graph, which
        every block then reuses, so its count is one block's (and the help names it where that
        count is below 64). `compile = chunks` compiles each chunk body once, whatever the length,
        and is the usual choice for long sequences; the whole graph runs faster once compiled
        where the chunk steps are few (docs/compiler.md).
        """,
        """
        model tiny {
          dim = 64
          layers = 1
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16 }
            }
          }
        }
        train { seq_len = 1024 }
        """,
        """
        model tiny {
          dim = 64
          layers = 1
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16 }
            }
          }
        }
        train { seq_len = 1024  compile = chunks }
        """,
    ),
    _entry(
        "W0715", "a hidden width that rounds up to one unit",
        """
        A hidden width is `expansion` times the width it reads, rounded: an `mlp` layer's reads the
        model's `dim`, a level's `mlp(depth ≥ 2)` or `residual_mlp` state a head's width (`dim /
        heads`; a `cms` level's, `dim`). Below one unit the product rounds up to 1, the least a
        weight can have, so the layer is built with a width the spec does not say: a memory or an MLP
        of one hidden unit, more than `expansion` asked for. The warning gives the product; raise
        `expansion` to 1/width or more for the width meant, or use a `linear` state.
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              heads = 4
              level { state = mlp(depth = 2, expansion = 0.01)  period = 16 }
            }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          block {
            memory {
              heads = 4
              level { state = mlp(depth = 2, expansion = 0.5)  period = 16 }
            }
          }
        }
        """,
    ),
    _entry(
        "W0717", "a whole-graph compile of many blocks",
        """
        `train.compile = true` compiles the training step as one graph, and every block of the model
        is in it, so the first step's compilation grows with the depth: some 1.5 s a block on a
        2-core CPU. specs/transformer.nl, which has no chunk loops, took 37.9 s to its first step at
        16 layers and 99.9 s at 64. `compile = blocks` compiles one block, which every block then
        reuses (the blocks of a model are one generated class), so its compile time follows one
        block: 16.2 s and 15.1 s there. Its steps cost a few percent more than the whole graph's,
        since nothing fuses across blocks (docs/compiler.md, "Per-block compilation"). The checker
        flags 16 blocks or more; where W0714 already warns of the compile, this warning is not
        added.
        """,
        """
        model tiny {
          dim = 64
          layers = 16
          block {
            mlp { }
          }
        }
        """,
        """
        model tiny {
          dim = 64
          layers = 16
          block {
            mlp { }
          }
        }
        train { compile = blocks }
        """,
    ),
    _entry(
        "W0716", "a model too large for any one device",
        """
        The model's float32 weights alone pass 1 TiB. Almost no one device holds that, and every rank
        of a data-parallel run holds the whole model, so a spec this large is almost always a typo in
        a width or a count (`dim = 10000000000000`). The spec is still valid: `nldsl check`, `graph`
        and `compile` work on it, and `nldsl train` refuses a model whose weights pass its device's
        memory before allocating anything, naming that memory. The warning gives the parameter count;
        it is the count `nldsl graph` shows. A spec with errors is not also checked for size.
        """,
        """
        model tiny {
          dim = 10000000
          block {
            mlp { }
          }
        }
        """,
        """
        model tiny {
          dim = 1024
          block {
            mlp { }
          }
        }
        """,
    ),
    _entry(
        "W0718", "a delta-rule write that grows the state along its keys",
        """
        With l2-normalised keys (`qk_norm = l2`, the default, so ‖k‖ = 1), a linear state and the l2
        objective, a write θ(αI − η k kᵀ) + η v kᵀ scales the state's component along its key by
        α − η, or α − 2η with `rule = dgd`, whose decay adds a second η k kᵀ (docs/semantics.md
        §1.4). Once η passes 1 + α, so 2 at α = 1, the factor passes −1: the component grows, with a
        flipped sign, each time a key comes back near it, and an output norm hides the growth until
        the state overflows. Measured on specs/deltanet.nl at a random initialisation (its forward
        pass on 1,024 tokens of json/decoder.py, seeds 0 and 1, `--set model.block.deltanet.level.lr=…`),
        the largest state entry: 6–7 at η = 1.9, 2,500–4,200 at 2.1, 7e28–1e30 at 2.5, NaN at 3; with
        dgd, 3 at η = 0.9 and 1e8–1e10 at 1.1. With momentum β a key's steps add up to η/(1 − β), and
        keys that change each token let the buffer's steps land on later keys: the measured boundary
        is η/(1 − β) = 2 (β = 0.5: 6 at η = 1, 6e17–3e18 at 1.5; β = 0.9: 4 at 0.1, 11–16 at 0.2,
        2e18–4e18 at 0.5). η is the gate's bound (`max`), else its value or initial value; β is the
        momentum's value or initial value (a learned β can approach its bound, 1 by default, where no
        η is safe); the warning takes α = 1. A period C > 1 sums a chunk's k kᵀ, whose largest
        eigenvalue lies between 1 and C, so a chunked level can grow at a lower η than flagged here
        (period 16: 3 at η = 0.2, 3e3–4e4 at 0.5): the warning names what grows at every period. It
        covers `memory` layers, Titans MAC's memory among them; a selfmod's memory is held to W0713.
        """,
        """
        model delta {
          dim = 64
          block {
            memory {
              level { lr = 2.5 }
            }
          }
        }
        """,
        """
        model delta {
          dim = 64
          block {
            memory {
              level { lr = 1 }
            }
          }
        }
        """,
    ),
    _entry(
        "W0719", "an mlp memory whose first step diverges",
        """
        A `memory` layer whose state is an MLP (`mlp(…)` or `residual_mlp`) takes its in-context
        steps on the l2 objective with the `lr` gate's η and, with momentum β, builds them up to
        η/(1 − β) times the gradient. Unlike a linear state's (W0718), the factor a step scales the
        memory by depends on the memory's own weights, so no bound follows from the spec alone; this
        one is measured. On specs/titans_lmm.nl (the first forward at a random init, seeds 0 and 1,
        the bytes of json/decoder.py, `--set model.block.lmm.level.lr=…`), η/(1 − β) at 0.8, 1 and 2
        gave a NaN loss in all 1,296 runs: dims 64, 128 and 256 at 4 heads; `mlp(depth = 2, expansion
        = 2)`, `mlp(depth = 3, expansion = 4)` and `residual_mlp`; periods 1, 16 and 64; gd and dgd;
        β 0 and 0.81; seq_len 256 and 1024. Below 0.8 the first NaN depended on the shape, the period
        and the length, and no one value was safe for all: at 256 tokens it came from 0.74 (dim 64,
        depth 2, period 1, β 0.81) down to 0.05 (dim 256, `mlp(depth = 3, expansion = 4)`, period 64,
        β 0.81); at period 1 some shapes were NaN at 0.45; over 1,024 tokens at period 64 some were NaN
        at 0.025, a state growing from under 7 to over 1e20 within two chunks (a chunk sums its
        tokens' gradients at one state). So the warning flags only what diverged everywhere, and a run's NaN-loss error
        names `lr` as the usual cause for the rest. specs/titans_lmm.nl's memory starts at 0.013. η is
        the gate's starting value (a `learned` lr starts at half its `max`), β the momentum's (a
        `learned` one at 0.9 of its bound). It covers normalised keys, given values and no
        Newton–Schulz, what was measured; a linear state is held to W0718, a selfmod's memory to W0713.
        """,
        """
        model titans {
          dim = 64
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16  lr = 1 }
            }
          }
        }
        """,
        """
        model titans {
          dim = 64
          block {
            memory {
              level { state = mlp(depth = 2)  period = 16  lr = 0.02 }
            }
          }
        }
        """,
    ),
)

CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _ENTRIES}

"""What an optimizer's `update` expression can compute, read off its tree without running it.

The tree is the checker's (`("level", name, span)`, `("const", x)`, `(op, a, b)`, `(function, a)`,
`("neg", a)`). Each part has a sign known in every entry: POSITIVE (≥ 0), NEGATIVE (≤ 0) or
EITHER; where signs do not settle it, `bounds` reads sizes (`sign(m) + 2` is at least 1). From
them: a square root or fractional power of a part that goes negative is NaN there (E0304), and a
divisor that can be 0 makes the step inf or 0/0 (W0712). A difference of two
level expressions (`v - m * m`, a variance) counts as ≥ 0, trusted to its writer: its sign comes
from the levels' own arithmetic (v and m averaging the same steps), which no sign rule sees.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from . import spec as S
from .diagnostics import Diagnostic
from .runtime.arguments import FLOAT32_TINY  # below it a positive ε is 0 in float32
from .source import Span

POSITIVE, NEGATIVE, EITHER = "+", "-", "?"
FLIPPED = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE, EITHER: EITHER}
EPSILON = 1e-8  # the ε a help suggests (Adam's)


def constant_value(tree: Any) -> float | None:
    """The value of an update subtree that reads no level (None if it reads one), in floats as the
    optimizer step computes it."""
    if tree[0] == "const":
        return tree[1]
    if tree[0] == "level":
        return None
    values = [constant_value(operand) for operand in tree[1:]]
    if any(value is None for value in values):
        return None
    if tree[0] == "neg":
        return -values[0]
    if tree[0] == "sqrt":
        return math.sqrt(values[0])  # a negative one was rejected when its node was built
    if tree[0] == "abs":
        return abs(values[0])
    if tree[0] == "sign":
        return float((values[0] > 0) - (values[0] < 0))
    left, right = values
    if tree[0] == "pow":
        return math.pow(left, right)  # checked by the checker's `_constant_power` when its node was built
    if tree[0] == "div":
        return left / right  # a zero divisor was rejected when its node was built
    return {"add": left + right, "sub": left - right, "mul": left * right}[tree[0]]


def nonnegative_levels(opt: S.OptimizerSpec) -> set[str]:
    """The levels whose output is ≥ 0 in every entry: a linear `dot` momentum (its writes η X and its
    decay α are ≥ 0, an EMA's lerp too) of a flow that is ≥ 0 (`squared_gradients`, or such a level),
    not orthogonalised. A `gradients` flow, the delta rule's (αI − η X̂X̂ᵀ) and an `mlp` state's φ take
    both signs."""
    found: set[str] = set()
    grown = True
    while grown:  # flows have no cycles here, so this settles within one pass per level
        grown = False
        for level in opt.levels:
            if level.name not in found and level.state == "linear" and level.objective == "dot" \
                    and level.orthogonalize is None and level.flow in ("squared_gradients", *found):
                found.add(level.name)
                grown = True
    return found


def sign(tree: Any, nonnegative: set[str], trust: bool = True) -> str:
    """The sign an update expression has in every entry; `trust`: a difference of levels counts as
    ≥ 0 (under a root its writer means it to be; as a divisor it is one that can cross 0)."""
    kind, value = tree[0], constant_value(tree)
    if value is not None:  # `2 * eps`, `1 / 1e8`: a number, whatever its spelling
        return POSITIVE if value >= 0 else NEGATIVE
    if kind == "level":
        return POSITIVE if tree[1] in nonnegative else EITHER
    if kind in ("sqrt", "abs"):
        return POSITIVE
    if kind == "sign":
        return sign(tree[1], nonnegative, trust)
    if kind == "pow":
        exponent = tree[2][1]
        if exponent != int(exponent):
            return POSITIVE  # where it has a value (a negative base is caught as a root, E0304)
        return POSITIVE if int(exponent) % 2 == 0 else sign(tree[1], nonnegative, trust)
    if kind in ("mul", "div"):
        return _product_sign(tree, nonnegative, trust)
    return _sum_sign(tree, nonnegative, trust)  # add, sub, neg


def _chain(tree: Any, same: str, inverse: str, unary: str | None = None,
           inverted: bool = False) -> Iterator[tuple[Any, bool]]:
    """The operands of a chain of an operation and its inverse (`+` and `-` with negations, `*` and
    `/`), each with whether it is inverted (subtracted, or a divisor)."""
    if tree[0] in (same, inverse):
        yield from _chain(tree[1], same, inverse, unary, inverted)
        yield from _chain(tree[2], same, inverse, unary, inverted != (tree[0] == inverse))
    elif tree[0] == unary:
        yield from _chain(tree[1], same, inverse, unary, not inverted)
    else:
        yield tree, inverted


def _terms(tree: Any) -> Iterator[tuple[Any, bool]]:
    """The terms of a sum, each with whether it is subtracted."""
    return _chain(tree, "add", "sub", "neg")


def _factors(tree: Any) -> Iterator[tuple[Any, bool]]:
    """The factors of a product, each with whether it divides."""
    return _chain(tree, "mul", "div")


def _constant(tree: Any) -> float:
    """A sum's constant terms added up (a term that reads no level is one, however written)."""
    values = [(constant_value(term), negated) for term, negated in _terms(tree)]
    return sum(-value if negated else value for value, negated in values if value is not None)


def _constant_and_signs(tree: Any, nonnegative: set[str], trust: bool = True) -> tuple[float, list[str]]:
    """A sum's constant terms added up, and the signs of its other terms as they count."""
    signs = [FLIPPED[sign(term, nonnegative, trust)] if negated else sign(term, nonnegative, trust)
             for term, negated in _terms(tree) if constant_value(term) is None]
    return _constant(tree), signs


def _sum_sign(tree: Any, nonnegative: set[str], trust: bool = True) -> str:
    """A sum's sign from its terms'; with `trust`, a difference of non-negative level expressions
    (`v - m * m`) counts as ≥ 0, as its writer means it, and combines with the rest as such
    (`-(v - m * m)` is ≤ 0)."""
    if tree[0] == "neg":
        return FLIPPED[sign(tree[1], nonnegative, trust)]
    if trust and _is_difference(tree, nonnegative):
        return POSITIVE if _constant(tree) >= 0 else EITHER
    constant, signs = _constant_and_signs(tree, nonnegative, trust)
    if all(s == POSITIVE for s in signs) and constant >= 0:
        return POSITIVE
    if all(s == NEGATIVE for s in signs) and constant <= 0:
        return NEGATIVE
    low, high = bounds(tree, nonnegative)  # `sign(m) + 1` is ≥ 0 by the sizes of its terms
    return POSITIVE if low >= 0 else NEGATIVE if high <= 0 else EITHER


def _is_difference(tree: Any, nonnegative: set[str]) -> bool:
    """Whether a sum subtracts a non-negative level expression from another (`v - m * m`, a variance;
    `v - m` is none: m takes both signs)."""
    if tree[0] not in ("add", "sub"):
        return False
    with_levels = [(term, negated) for term, negated in _terms(tree) if any(level_refs(term))]
    return (any(negated for _, negated in with_levels) and any(not negated for _, negated in with_levels)
            and all(sign(term, nonnegative, trust=False) == POSITIVE for term, _ in with_levels))


def _product_sign(tree: Any, nonnegative: set[str], trust: bool = True) -> str:
    """A product's sign from its factors' (a quotient's is a product's): a factor that appears an even
    number of times is a square, and `sign(x) * x` is |x|."""
    counts = Counter(bare(factor) for factor, _ in _factors(tree))
    odd = {factor for factor, count in counts.items() if count % 2}
    for factor in list(odd):
        if factor[0] == "sign" and factor in odd and factor[1] in odd:
            odd -= {factor, factor[1]}
    signs = [sign(factor, nonnegative, trust) for factor in odd]
    if EITHER in signs:
        return EITHER
    return NEGATIVE if signs.count(NEGATIVE) % 2 else POSITIVE


def bare(tree: Any) -> Any:
    """An update expression without its levels' spans (two `m`s are the same value)."""
    if isinstance(tree, tuple) and tree and tree[0] == "level":
        return tree[:2]
    return tuple(bare(part) for part in tree) if isinstance(tree, tuple) else tree


def may_be_zero(tree: Any, nonnegative: set[str], trust: bool = False) -> bool:
    """Whether an update expression can be 0 in some entry: a level is 0 before its first write and
    wherever the gradients it remembers have been 0; a sum is kept off 0 by its constants when its
    other terms cannot cross them (`sqrt(v) + 1e-8`; under a root, a trusted difference too:
    `sqrt(v - m * m + 1e-8)`)."""
    kind, value = tree[0], constant_value(tree)
    if value is not None:
        return value == 0
    if kind == "level":
        return True
    if kind in ("sqrt", "abs", "sign"):
        return may_be_zero(tree[1], nonnegative, trust or kind == "sqrt")
    if kind == "pow":  # a negative power of 0 is inf, not 0 (the division it is, W0712, is found on its own)
        return tree[2][1] > 0 and may_be_zero(tree[1], nonnegative, trust or tree[2][1] != int(tree[2][1]))
    if kind in ("mul", "div"):
        return any(may_be_zero(factor, nonnegative, trust) for factor, divides in _factors(tree) if not divides)
    if trust and _is_difference(tree, nonnegative):  # trusted ≥ 0: kept off 0 by a positive constant beside it
        return _constant(tree) <= 0
    constant, signs = _constant_and_signs(tree, nonnegative, trust)
    low, high = bounds(tree, nonnegative)  # `sign(g) + 2` is at least 1, whatever g's sign
    return not ((constant > 0 and all(s == POSITIVE for s in signs))
                or (constant < 0 and all(s == NEGATIVE for s in signs)) or low > 0 or high < 0)


def bounds(tree: Any, nonnegative: set[str]) -> tuple[float, float]:
    """An interval that holds every entry of an update expression: sizes where signs do not settle it,
    from the parts whose size is known (numbers, and `sign(…)` in [−1, 1]); a level's entries are
    unbounded (≥ 0 where its sign is)."""
    kind, value = tree[0], constant_value(tree)
    if value is not None:
        return value, value
    if kind == "sign":
        low, high = bounds(tree[1], nonnegative)
        return float(low > 0) - float(low < 0), float(high > 0) - float(high < 0)
    if kind in ("add", "sub"):
        (a, b), (c, d) = bounds(tree[1], nonnegative), bounds(tree[2], nonnegative)
        return (a + c, b + d) if kind == "add" else (a - d, b - c)
    if kind == "neg":
        low, high = bounds(tree[1], nonnegative)
        return -high, -low
    if kind == "mul":  # the corners' products, with 0 · ∞ read as 0 (a bounded factor of 0 keeps it 0)
        (a, b), (c, d) = bounds(tree[1], nonnegative), bounds(tree[2], nonnegative)
        corners = [x * y if x and y else 0.0 for x in (a, b) for y in (c, d)]
        return min(corners), max(corners)
    if sign(tree, nonnegative, trust=False) == POSITIVE:
        return 0.0, math.inf
    return -math.inf, math.inf


def _zero_part(tree: Any, nonnegative: set[str]) -> Any:
    """The part of a product that can be 0 (a factor, through other factors), or the expression."""
    if tree[0] in ("mul", "div"):
        for factor, divides in _factors(tree):
            if not divides and any(level_refs(factor)) and may_be_zero(factor, nonnegative):
                return _zero_part(factor, nonnegative)
    return tree


def subtrees(tree: Any) -> Iterator[Any]:
    if isinstance(tree, tuple) and tree and isinstance(tree[0], str):
        yield tree
        for part in tree[1:]:
            yield from subtrees(part)


def level_refs(tree: Any) -> Iterator[tuple[str, Span | None]]:
    if isinstance(tree, tuple) and tree and tree[0] == "level":
        yield tree[1], tree[2] if len(tree) > 2 else None
    elif isinstance(tree, tuple):
        for item in tree[1:]:
            yield from level_refs(item)


def roots_of_negative_values(opt: S.OptimizerSpec, update: Any, header: Span) -> Iterator[Diagnostic]:
    """E0304 where the update takes a square root (or a fractional power) of a part that goes
    negative: `sqrt(m)` of a momentum of the gradients is NaN in every entry where m < 0, about half
    of them at the first step; `sqrt(-v)` wherever v > 0."""
    from .graph import update_text

    nonnegative = nonnegative_levels(opt)
    yield from negative_variances(opt, update, header)
    for tree in subtrees(update):
        if tree[0] == "sqrt":
            argument, spelled = tree[1], "the square root"
        elif tree[0] == "pow" and tree[2][1] != int(tree[2][1]):
            argument, spelled = tree[1], f"the power {tree[2][1]:g}"
        else:
            continue
        argument_sign = sign(argument, nonnegative)
        levels = list(level_refs(argument))
        if argument_sign == POSITIVE or not levels:
            continue
        shown, span = update_text(argument), levels[0][1] or header
        if argument_sign == NEGATIVE:
            yield Diagnostic("E0304", f"{spelled} of `{shown}` has no real value (NaN in the step) wherever it is "
                             "not 0: it is ≤ 0 in every entry (a minus sign in front of something ≥ 0)", span,
                             "take it of something ≥ 0, such as a level of squared gradients, or `abs(…)`")
            continue
        signed = [(name, at) for name, at in levels if name not in nonnegative]
        as_if_nonnegative = sign(argument, {name for name, _ in levels})
        if not signed or as_if_nonnegative == EITHER:
            # ≥ 0 levels and constants (`v - 1`), or a sign the levels' own would not settle
            # (`abs(m) - 1e-8`): the writer knows what the levels hold
            continue
        name, at = signed[0]
        level = next(level for level in opt.levels if level.name == name)
        why, help = (
            ("it remembers the gradients, which take both signs", "take it of a level of `squared_gradients` "
             "(Adam's second moment: `level v { flow = squared_gradients }`), or of `abs(…)`")
            if level.flow == "gradients" else
            ("Newton–Schulz gives its output both signs",
             f"remove `orthogonalize` from `{name}`, or take it of `abs(…)`")
            if level.orthogonalize is not None else
            ("its φ can flip a sign", f"use `state = linear` on `{name}`, or take it of `abs(…)`")
            if level.state == "mlp" else
            ("the delta rule's decay (αI − η X̂X̂ᵀ) can flip a sign", f"use `objective = dot` on `{name}`, or take it "
             "of `abs(…)`") if level.objective == "l2" else
            (f"it remembers level `{level.flow}`, which takes both signs", f"take it of `abs(…)`, or make "
             f"`{level.flow}` a level of squared gradients"))
        where = f"`{name}` < 0" if as_if_nonnegative == POSITIVE else f"`{shown}` < 0, that is where `{name}` > 0"
        yield Diagnostic("E0304", f"{spelled} of `{shown}` has no real value (NaN in the step) wherever {where}, "
                         f"and level `{name}` takes both signs: {why}",
                         at or header, help)


VARIANCE_STEPS = 100  # steps over which a variance's weights are compared (a violation shows by step 2)
ROUNDING = 1e-9  # Σ a² / b this close to 1 leaves v − m² at 0 for equal gradients, and rounding below it


def negative_variances(opt: S.OptimizerSpec, update: Any, header: Span) -> Iterator[Diagnostic]:
    """E0304 for a variance `v - m * m` under a root whose levels' weights let it go negative. With m
    the gradients averaged with weights a_k and v their squares with weights b_k, Cauchy–Schwarz gives
    m² ≤ (Σ a_k² / b_k) v, with equality for gradients proportional to a_k / b_k. So v − m² < 0 for
    some gradients once Σ a_k² / b_k > 1: a corrected m beside an uncorrected v (1 / (1 − β₂) at step
    1), two retentions, weights that sum past 1. With both bias-corrected Σ = 1 at every step: v − m²
    is 0 at the first step for any gradient, and the corrections round it below 0 (measured: 86% of
    the entries NaN at step 1 in float64): also E0304, unless a positive constant inside the root
    keeps it off 0. (One plain moving average of both has Σ = 1 − α^t < 1.) Only the
    plain case is read (linear `dot` levels written every step, straight from the two gradient
    streams, no Nesterov or Newton–Schulz, the same readout); any other variance stays trusted to
    its writer."""
    from .graph import update_text

    levels = {level.name: level for level in opt.levels}
    reported: set[tuple[str, str]] = set()
    for root in subtrees(update):
        if not (root[0] == "sqrt" or (root[0] == "pow" and root[2][1] != int(root[2][1]))):
            continue
        for tree in _outside_abs(root[1]):  # `abs(v - m * m)` is the mend, ≥ 0 whatever its levels
            pair = _variance_pair(tree, levels)
            if pair is None or pair in reported:
                continue
            second, first = levels[pair[0]], levels[pair[1]]
            step, zero = _first_step_past(first, second, 1 + ROUNDING), False
            if step is None and (first.bias_correction or second.bias_correction) \
                    and not _kept_off_zero(root[1], tree, opt) and _first_step_past(first, second, 1 - ROUNDING) == 1:
                # Σ = 1 at the first step: its v − m² is 0 for any gradient, and a bias correction
                # rounds it apart (a plain average's Σ = 1 − α^t keeps it above 0 but for equal gradients)
                step, zero = 1, True
            if step is None:
                continue
            reported.add(pair)
            shown, span = update_text(tree), next((at for _, at in level_refs(tree) if at is not None), header)
            mend = f"take the root of `abs({shown})`"
            if zero:
                why = ("both levels are bias-corrected, so their weights sum to 1" if first.bias_correction
                       and second.bias_correction else f"`{first.name}`'s weight squared equals `{second.name}`'s "
                       "at step 1")
                yield Diagnostic("E0304", f"`{shown}` is 0 at step 1 for any gradient ({why}), and the bias "
                                 "correction rounds it below 0, where its root is NaN", span,
                                 f"{mend}, or add an ε inside the root, `sqrt({shown} + 1e-8)`")
                continue
            reasons = [f"`{first.name}` is bias-corrected and `{second.name}` is not"
                       ] if first.bias_correction and not second.bias_correction else []
            for option in ("retention", "lr", "init"):
                if getattr(first, option) != getattr(second, option):
                    reasons.append(f"their {option}s differ ({getattr(first, option)} and {getattr(second, option)})")
            if not reasons:  # one set of weights, summing past 1: a momentum (lr 1), not an average
                reasons.append(f"the weights they give the gradients add up to more than 1 by step {step} (lr "
                               f"{first.lr:g} with retention {first.retention:g} sums rather than averages: an "
                               "average writes with lr = 1 − retention)")
            yield Diagnostic("E0304", f"`{shown}` goes negative from step {step} on some gradients, so "
                             f"its root is NaN there: {'; '.join(reasons)}, so `{first.name}`² can exceed "
                             f"`{second.name}`", span,
                             f"give `{first.name}` and `{second.name}` the same retention, lr and init, and "
                             f"bias-correct neither (or `{second.name}` alone), so that `{shown}` is a variance, "
                             f"≥ 0 but for rounding; or {mend}")


def _outside_abs(tree: Any) -> Iterator[Any]:
    """`subtrees`, not entering `abs(…)`."""
    if isinstance(tree, tuple) and tree and isinstance(tree[0], str):
        yield tree
        if tree[0] != "abs":
            for part in tree[1:]:
                yield from _outside_abs(part)


def _kept_off_zero(argument: Any, variance: Any, opt: S.OptimizerSpec) -> bool:
    """Whether a root's argument stays above 0 where its variance is 0: `v - m * m + 1e-8`, or
    `(v - m * m + 1e-8) * 0.5`, with an ε float32 keeps (a positive constant part, whatever the
    brackets; one that cancels, `+ 1e-8 - 1e-8`, or that float32 rounds to 0, keeps nothing)."""
    rest = _mended(argument, {id(variance): ("const", 0.0)})
    value = constant_value(rest)
    if value is not None:
        return value >= FLOAT32_TINY
    low, _ = bounds(rest, nonnegative_levels(opt))
    return low >= FLOAT32_TINY


def _variance_pair(tree: Any, levels: dict[str, S.OptimizerLevelSpec]) -> tuple[str, str] | None:
    """(v, m) where `tree` is `v - m * m` or `v - m ** 2` with v a plain level of the squared gradients
    and m one of the gradients."""
    if tree[0] != "sub" or tree[1][0] != "level":
        return None
    right = bare(tree[2])
    if right[0] == "mul" and right[1] == right[2] and right[1][0] == "level":
        m = right[1][1]
    elif right[0] == "pow" and right[2][1] == 2 and right[1][0] == "level":
        m = right[1][1]
    else:
        return None
    v = tree[1][1]
    plain = [levels.get(v), levels.get(m)]
    if any(level is None or level.state != "linear" or level.objective != "dot" or level.period != 1
           or level.nesterov or level.orthogonalize is not None for level in plain):
        return None
    if (levels[v].flow, levels[m].flow) != ("squared_gradients", "gradients") or \
            levels[v].readout != levels[m].readout:
        return None
    return v, m


def _weights(level: S.OptimizerLevelSpec, t: int) -> list[float]:
    """The weight of each step's flow (1 … t) in a plain linear level's output at step t."""
    weights = [level.lr * level.retention ** (t - k) for k in range(1, t + 1)]
    if level.init == "first_flow":
        weights[0] = level.retention ** (t - 1)
    if level.bias_correction:
        weights = [w / (1 - level.retention ** t) for w in weights]
    return weights


def _first_step_past(first: S.OptimizerLevelSpec, second: S.OptimizerLevelSpec, bound: float) -> int | None:
    """The first step at which Σ a_k² / b_k > `bound` (m's weights a, v's b; a weight of m where v has
    none is past any bound), or None within VARIANCE_STEPS."""
    for t in range(1, VARIANCE_STEPS + 1):
        total = 0.0
        for a, b in zip(_weights(first, t), _weights(second, t)):
            if a == 0:
                continue
            if b == 0:
                return t
            total += a * a / b
        if total > bound:
            return t
    return None


def divisions_by_zero(opt: S.OptimizerSpec, update: Any, header: Span) -> Iterator[Diagnostic]:
    """W0712 where the update divides by levels with nothing to keep the divisor off 0 (`m / sqrt(v)`,
    or `m * v ** -0.5`): 0/0 is NaN in the entries of a parameter whose gradient has been 0, such as an
    embedding row no token used, and x/0 is inf before a slower level's first write. One warning, at
    the first such divisor; its help mends them all."""
    from .graph import update_text

    nonnegative = nonnegative_levels(opt)
    mends: dict[int, Any] = {}
    first = None
    for tree in subtrees(update):
        if tree[0] == "div":
            divisor = tree[2]
        elif tree[0] == "pow" and tree[2][1] < 0:
            divisor = tree[1]
        else:
            continue
        if id(divisor) in mends or not any(level_refs(divisor)) or not may_be_zero(divisor, nonnegative):
            continue
        divisor_sign = sign(divisor, nonnegative, trust=False)
        mends[id(divisor)] = (("add", divisor, ("const", EPSILON)) if divisor_sign == POSITIVE else
                              ("sub", divisor, ("const", EPSILON)) if divisor_sign == NEGATIVE else
                              ("add", ("abs", divisor), ("const", EPSILON)))
        if first is None:
            first = divisor, divisor_sign
    if first is None:
        return
    divisor, divisor_sign = first
    [(name, span), *_] = level_refs(_zero_part(divisor, nonnegative))
    mended = update_text(_mended(update, mends))
    level = next(level for level in opt.levels if level.name == name)
    # before its first write an ε alone is the divisor: an ε keeps the step finite, not small
    later = (f"; but level `{name}` is 0 until its first write at step {level.period}, and until then the step "
             f"divides by ε alone: give `{name}` `period = 1`" if level.period > 1 else "")
    if divisor_sign == EITHER:  # no ε keeps a divisor that takes both signs off 0: one that is ≥ 0 first
        yield Diagnostic("W0712", f"the update divides by `{update_text(divisor)}`, which takes both signs, so it "
                         "crosses 0 in some entries (and a level is 0 before its first write): the step is then "
                         "inf or NaN there", span or header,
                         f"divide by something ≥ 0 plus an ε, e.g. `{mended}`, or by `sqrt(v) + 1e-8` of a level "
                         f"of squared gradients{later}", "warning")
        return
    yield Diagnostic("W0712", f"the update divides by `{update_text(divisor)}`, which is 0 wherever level `{name}` "
                     "is (before its first write, and in the entries of a parameter whose gradient has been 0, such "
                     "as an embedding row no token used): the step is then inf or 0/0 = NaN there", span or header,
                     f"add an ε, e.g. `{mended}` (Adam's ε){later}", "warning")


def _mended(tree: Any, mends: dict[int, Any]) -> Any:
    """`tree` with each part whose id is in `mends` replaced by its mend."""
    if id(tree) in mends:
        return mends[id(tree)]
    if isinstance(tree, tuple) and tree and isinstance(tree[0], str) and tree[0] not in ("level", "const"):
        return (tree[0], *(_mended(item, mends) for item in tree[1:]))
    return tree

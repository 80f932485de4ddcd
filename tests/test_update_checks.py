"""Edges of nldsl/update_checks.py and of the parser's word-after-a-value hint that no test pinned
before a mutation round of their final versions (with the stream's slow-level scaling, whose edge
is in tests/test_data_edges.py: 92 mutants, 6 equivalent); each test fails with one of the 32 that
survived the suite."""
from __future__ import annotations

import pytest

from nldsl import update_checks as U
from nldsl.checker import check_text

MODEL = "model m {\n  dim = 32\n  vocab = 256\n  block { mlp { } }\n}\n"
LEVELS = ("  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
          "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }\n"
          "  level g { flow = gradients  retention = 0 }\n"
          "  level s { flow = v  retention = 0.5  lr = 0.5 }")


def _diags(update: str):
    text = MODEL + f"optimizer o {{\n  lr = 1e-3\n{LEVELS}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"
    return list(check_text(text, "o.nl").diagnostics)


@pytest.mark.parametrize("update", [
    "sqrt(v * 0) + m + g + s",                 # a 0 constant is >= 0 (mutant: const `> 0`)
    "sqrt(sign(m) * m) + v + g + s",           # sign(m) * m is |m| (mutant: sign pairing dropped)
    "sqrt((-v) * (-s)) + m + g",               # two factors <= 0: >= 0 (mutant: `% 2` dropped)
    "m / ((sqrt(v) + 1) * -2) + g + s",        # -2 is not 0 (mutant: const `<= 0` may be 0)
    "m / v ** 0 + g + s",                      # v ** 0 is 1 (mutant: `>= 0`)
])
def test_quiet(update):
    assert [d.code for d in _diags(update)] == []


def test_a_fractional_power_is_nonnegative():  # mutant: fractional pow takes its base's sign
    assert [d.code for d in _diags("sqrt(-((abs(m) - 1e-8) ** 0.5)) + v + g + s")] == ["E0304"]
    assert U.sign(("pow", ("level", "m"), ("const", 0.5)), set()) == U.POSITIVE


def test_w0712_of_a_negative_power_names_its_base():  # mutant: pow with exponent < 0 may be 0
    [d] = _diags("m / v ** -1 + g + s")
    assert "divides by `v`," in d.message and "(v + 1e-08) ** (-1)" in d.help


def test_w0712_of_a_quotient_divisor_names_the_inner_divisor():  # mutant: a divisor inside a divisor
    [d] = _diags("m / (2 / v) + g + s")
    assert "divides by `v`," in d.message


def test_a_variance_with_no_eps_can_be_zero():  # mutant: difference constant `< 0`
    assert [d.code for d in _diags("m / (v - m * m) + g + s")] == ["W0712"]
    assert [d.code for d in _diags("m / sqrt(v - m * m) + g + s")] == ["W0712"]


def test_w0712_names_a_multiplied_level_not_a_divided_one():  # mutant: _zero_part ignores `divides`
    [d] = _diags("m / (1 / v * s) + g")
    assert "wherever level `s` is" in d.message


def test_a_root_of_a_negative_constant_times_a_level_does_not_crash():  # mutant: `not levels` dropped
    from types import SimpleNamespace
    opt = SimpleNamespace(levels=[])
    assert list(U.roots_of_negative_values(opt, ("sqrt", ("neg", ("const", 1.0))), None)) == []
    assert list(U.roots_of_negative_values(opt, ("sqrt", ("const", -1.0)), None)) == []


def test_e0304_says_where_the_root_is_nan():  # mutant: `where` condition flipped
    [d] = _diags("sqrt(m) + v + g + s")
    assert "wherever `m` < 0," in d.message
    [d] = _diags("sqrt(-m) + v + g + s")
    assert "wherever `-m` < 0, that is where `m` > 0" in d.message


def test_w0712_names_the_first_divisor():  # mutant: last divisor reported
    [d] = _diags("m / sqrt(v) + g / sqrt(s)")
    assert "divides by `sqrt(v)`" in d.message and "level `v`" in d.message


def test_w0712_mends_a_nonpositive_divisor_by_subtracting_eps():  # mutant: NEGATIVE mend dropped
    [d] = _diags("m / (0 - sqrt(v)) + g + s")
    assert "m / (0 - sqrt(v) - 1e-08) + g + s" in d.help


def test_a_negative_constant_is_not_zero():  # mutant: const `<= 0` may be 0
    assert U.may_be_zero(("const", -2.0), set()) is False
    assert U.may_be_zero(("mul", ("level", "v"), ("const", -2.0)), set()) is True


# _word_after_value (nldsl/parser.py)

LEVEL = "model m {\n  dim = 32\n  block { memory { level { %s } } }\n}\n"


def _parse_diags(body: str):
    return [(d.message, d.span.line, d.span.column) for d in check_text(LEVEL % body, "x.nl").diagnostics]


@pytest.mark.parametrize("body", [
    'period = "a = 1 b" c\n  ',      # mutant: a string's `=` and words are not read off the line
    "period\n  = 16 tokens\n  ",     # mutant: a value with no key on its line is no `key = value word`
    "period = 16 level foo\n  ",    # mutant: `}` where `{` (not `=`) is expected: no word hint
    "period = 16 from\n  ",         # mutant: a keyword is no stray word
])
def test_no_word_hint(body):
    assert not any("after the value of" in message for message, _, _ in _parse_diags(body))


def test_the_word_hint_names_the_last_key_on_the_line():  # mutant: `$` dropped, `=` in a value
    [(message, line, column)] = _parse_diags("period = 16 lr = 0.1 tokens\n  ")
    assert message == "unexpected name `tokens` after the value of `lr`" and (line, column) == (3, 49)


def test_the_word_hint_for_a_word_then_a_key_on_the_same_line():  # mutant: next_line dropped
    assert _parse_diags("period = 16 tokens lr = 0.1 ")[0][0] == "unexpected name `lr`"


def test_a_second_word_is_pointed_at_where_it_stands():  # mutant: the word removed, not blanked
    assert _parse_diags("period = 16 tokens\n  lr = 0.1 foo\n  ") == [
        ("unexpected name `tokens` after the value of `period`", 3, 40),
        ("unexpected name `foo` after the value of `lr`", 4, 12)]


def test_no_word_hint_after_a_keyword_key():  # mutant: a keyword as the key
    text = "model m {\n  dim = 32\n  block { mlp { } }\n}\ntrain { optimizer = adam foo\n}\n"
    assert not any("after the value of" in d.message for d in check_text(text, "x.nl").diagnostics)


# Trust of differences, and constants however written

@pytest.mark.parametrize("update", [
    "m / (v - s) + g",          # mutant: as a divisor a difference is not trusted
    "m / ((v - s) * 2) + g",    # mutant: trust passed through a product
    "m / -(v - s) + g",         # mutant: trust passed through a negation
])
def test_an_untrusted_difference_divisor_takes_both_signs(update):
    [d] = _diags(update)
    assert d.code == "W0712" and "takes both signs" in d.message


@pytest.mark.parametrize("update,codes", [
    ("m / (v - s + 1e-8) + g", ["W0712"]),                   # mutant: no trust outside a root
    ("m / sqrt((v - m * m + 1e-8) * 2) + g + s", []),        # mutant: trust through a product under a root
    ("m / (v - m * m + 1e-8) ** 0.5 + g + s", []),           # mutant: a fractional power trusts as a root
    ("m / (sqrt(v) + 1 - 2 * 1e-8) + g + s", []),            # mutant: a folded constant term is no signed term
])
def test_trust_codes(update, codes):
    assert [d.code for d in _diags(update)] == codes


def test_a_difference_of_a_trusted_difference_is_not_trusted_again():  # mutant: parts' signs taken with trust
    m, v, s = ("level", "m"), ("level", "v"), ("level", "s")
    tree = ("sub", v, ("mul", s, ("sub", v, ("mul", m, m))))  # v - s * (v - m * m)
    assert U.sign(tree, {"v", "s"}) == U.EITHER


def test_w0712_help_keeps_named_constants():
    """The mended update reads the spec's constants, so pasting it back leaves none unused (W0702)."""
    text = ("const beta2 = 0.999\nconst scale = 0.5\n" + MODEL + "optimizer o {\n"
            "  level v { flow = squared_gradients; retention = beta2; lr = 0.01 }\n"
            "  level m { flow = gradients; retention = 0.9; lr = 0.1 }\n"
            "  update = scale * m / sqrt(v)\n}\ntrain { optimizer = o }\n")
    [warning] = check_text(text, "o.nl").diagnostics
    assert warning.code == "W0712" and "`scale * m / (sqrt(v) + 1e-08)`" in warning.help
    mended = text.replace("scale * m / sqrt(v)", "scale * m / (sqrt(v) + 1e-08)")
    assert list(check_text(mended, "o.nl").diagnostics) == []


def test_a_named_constant_survives_copies_and_pickles():
    import copy
    import pickle

    from nldsl.spec import NamedConstant

    node = NamedConstant(0.5, "scale")
    for twin in (copy.deepcopy(node), pickle.loads(pickle.dumps(node))):
        assert twin == ("const", 0.5) and twin.name == "scale"


@pytest.mark.parametrize(("update", "codes"), [
    ("m / (sign(m) + 2) + v + g + s", []),              # a divisor of at least 1 (sizes, not signs)
    ("m / (2 - sign(m) * 0.5) + v + g + s", []),
    ("m / (sign(m) + 1) + v + g + s", ["W0712"]),       # 0 where m < 0
    ("m / (sign(m) + 1 + 1e-8) + v + g + s", []),
    ("sqrt(sign(m) + 1) * m + v + g + s", []),          # ≥ 0 by the sizes of its terms
    ("sqrt(sign(m) + 0.5) * m + v + g + s", ["E0304"]),  # −0.5 where m < 0
    ("sqrt(-sign(v) - 1) * m + g + s", ["E0304"]),
])
def test_sizes_settle_what_signs_do_not(update, codes):
    assert [d.code for d in _diags(update)] == codes


def test_bounds_of_products_and_signs():
    m, v = ("level", "m"), ("level", "v")
    assert U.bounds(("mul", ("sign", m), ("const", -3.0)), set()) == (-3.0, 3.0)
    assert U.bounds(("sign", v), {"v"}) == (0.0, 1.0)          # the sign of a level ≥ 0
    assert U.bounds(("mul", m, ("const", 0.0)), set()) == (0.0, 0.0)
    assert U.bounds(("sub", ("const", 1.0), ("sqrt", v)), {"v"}) == (-U.math.inf, 1.0)


def _variance(m_options: str, v_options: str) -> list[tuple[str, str]]:
    text = MODEL + ("optimizer o {\n  lr = 1e-3\n"
                    f"  level m {{ flow = gradients  {m_options} }}\n"
                    f"  level s {{ flow = squared_gradients  {v_options} }}\n"
                    "  update = m / (sqrt(s - m * m) + 1e-8)\n}\ntrain { optimizer = o }\n")
    return [(d.code, d.message) for d in check_text(text, "o.nl").diagnostics]


EMA = "retention = 0.9  lr = 0.1"


@pytest.mark.parametrize(("m_options", "v_options"), [
    (EMA, EMA),                                                    # one average of both: Σ = 1 − α^t
    (EMA, f"{EMA}  bias_correction = true"),                       # v alone corrected: larger v
    ("retention = 0.9  lr = 0.05", EMA),                           # m's weights the smaller
    (f"{EMA}  init = first_flow", f"{EMA}  init = first_flow"),
    (f"{EMA}  period = 2", EMA),                                   # not read: trusted to its writer
])
def test_variances_that_stay_nonnegative_are_accepted(m_options, v_options):
    assert _variance(m_options, v_options) == []


@pytest.mark.parametrize(("m_options", "v_options", "step", "why"), [
    (f"{EMA}  bias_correction = true", EMA, 1, "`m` is bias-corrected and `s` is not"),
    (EMA, "retention = 0.99  lr = 0.01", 2, "their retentions differ (0.9 and 0.99)"),
    ("retention = 0.999  lr = 0.001", EMA, 90, "their retentions differ"),
    ("retention = 0.9  lr = 1", "retention = 0.9  lr = 1", 2, "add up to more than 1 by step 2"),
    (f"{EMA}  init = first_flow", EMA, 1, "their inits differ"),
])
def test_variances_that_go_negative_are_e0304(m_options, v_options, step, why):
    """AdaBelief-like `sqrt(s - m * m)` whose levels weigh the gradients so that m² can exceed s:
    NaN in the step from the step named (Cauchy–Schwarz on the levels' weights)."""
    [(code, message)] = _variance(m_options, v_options)
    assert code == "E0304" and f"from step {step} " in message and why in message


def test_a_variance_of_two_bias_corrected_levels_is_0_at_step_1_and_rounds_below():
    """Both corrected, Σ a²/b = 1: v − m² is 0 at step 1 for any gradient, and the corrections round it
    below 0 (86% of the entries NaN at step 1 in float64, a review's probe); an ε inside the root keeps
    it off 0 (the help said to bias-correct both)."""
    corrected = f"{EMA}  bias_correction = true"
    [(code, message)] = _variance(corrected, corrected)
    assert code == "E0304" and "is 0 at step 1 for any gradient" in message
    text = MODEL + ("optimizer o {\n  lr = 1e-3\n"
                    f"  level m {{ flow = gradients  {corrected} }}\n"
                    f"  level s {{ flow = squared_gradients  {corrected} }}\n"
                    "  update = m / (sqrt(s - m * m + 1e-8) + 1e-8)\n}\ntrain { optimizer = o }\n")
    assert list(check_text(text, "o.nl").diagnostics) == []

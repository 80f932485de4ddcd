"""The update checks and the parser's word-after-a-value hint, after a second review: each test
failed before its fix (a crash on a zero factor, a trusted difference that hid a signed factor,
messages that said false things, a hint inside a comment or on a missing `=`)."""

from __future__ import annotations

import pytest

from nldsl.checker import check_text

MODEL = "model mm {\n  dim = 32\n  vocab = 256\n  block { mlp { } }\n}\n"
LEVELS = ("  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
          "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }\n"
          "  level g { flow = gradients  retention = 0 }\n"
          "  level s { flow = v  retention = 0.5  lr = 0.5 }")


def _diags(update: str, consts: str = ""):
    optimizer = f"optimizer o {{\n  lr = 1e-3\n{LEVELS}\n  update = {update}\n}}\n"
    text = consts + MODEL + optimizer + "train { optimizer = o }\n"
    return check_text(text, "o.nl").diagnostics


def _codes(update: str, consts: str = "") -> list[str]:
    return [d.code for d in _diags(update, consts)]


# A zero factor before a level in a divisor (it crashed the checker)
@pytest.mark.parametrize(("update", "consts"), [
    ("m / (0 * v) + g + s", ""),
    ("m / ((1 - 1) * v) + g + s", ""),
    ("m * (0 * v) ** -1 + g + s", ""),
    ("m / (off * v) + g + s", "const off = 0\n"),
])
def test_a_zero_constant_factor_first_in_a_divisor_does_not_crash(update, consts):
    assert _codes(update, consts) == ["W0712"]


# A difference of levels counts as ≥ 0 where it stands, and no further
@pytest.mark.parametrize("update", [
    "sqrt(m * (v - m * m)) + g + s",   # m takes both signs, whatever v - m*m is
    "sqrt(m * (v - s)) + g",
    "sqrt(-(v - m * m)) + g + s",      # a variance negated is <= 0
])
def test_a_trusted_difference_inside_a_root_does_not_hide_a_signed_factor(update):
    assert "E0304" in _codes(update)


def test_a_trusted_difference_inside_a_divisor_does_not_hide_a_signed_factor():
    # g * (v - s) takes both signs (g does), so g * (v - s) + 1e-8 crosses 0
    assert _codes("m / (g * (v - s) + 1e-8)") == ["W0712"]


# Messages that say what is true
def test_e0304_of_a_negated_abs_does_not_call_a_gradient_level_squared_gradients():
    [d] = _diags("sqrt(-abs(m)) + v + g + s")
    assert d.code == "E0304" and "remembers squared gradients" not in d.message, d.message


def test_w0712_of_a_nonpositive_divisor_does_not_say_it_takes_both_signs():
    [d] = _diags("m / (0 - sqrt(v)) + g + s")   # 0 - sqrt(v) <= 0
    assert d.code == "W0712" and "takes both signs" not in d.message, d.message


def test_w0712_help_for_a_division_chain_silences_the_warning():
    """`m / sqrt(v) / sqrt(s)`: the help mends only the outer division (`the same mend serves the others`)."""
    [d] = _diags("m / sqrt(v) / sqrt(s) + g")
    suggestion = d.help.split("`")[1]
    assert _codes(suggestion + " + g") == [], d.help


def test_a_root_of_abs_minus_eps_is_treated_as_a_root_of_v_minus_eps():
    """abs(m) - 1e-8 and v - 1e-8 are both >= -1e-8 with the same NaN entries; one is an *error*
    (E0304 blaming `m < 0`, which is not why), the other clean."""
    assert _codes("sqrt(abs(m) - 1e-8) + v + g + s") == _codes("sqrt(v - 1e-8) + m + g + s")


# The parser's word-after-a-value hint
def _parse_diags(text: str):
    return check_text(text, "p.nl").diagnostics


def test_the_word_hint_names_the_word_before_a_comment_not_one_inside_it():
    [d, *rest] = _parse_diags("model m {\n  dim = 32 elements # width\n  vocab = 256\n  block { mlp { } }\n}\n")
    assert "`elements`" in d.message and "width" not in d.message, d.message
    assert rest == [], [r.message for r in rest]


def test_the_word_hint_does_not_fire_on_a_missing_equals_whose_value_is_on_the_next_line():
    text = MODEL + "train { steps = 100 seq_len\n  64 }\n"
    [d, *_] = _parse_diags(text)
    assert "after the value of" not in d.message, d.message


# From an optimizer researcher's session: 32 optimizers of the literature written as sections

OPT_MODEL = "model { dim = 32\n block { mlp { } } }\n"
M = "level m { lr = 0.1; retention = 0.9 }"
V = "level v { flow = squared_gradients; lr = 0.001; retention = 0.999 }"
FAST_SLOW = "level fast { lr = 0.5; retention = 0.5 }\n level slow { lr = 0.01; retention = 0.99 }"


def _optimizer_diags(levels: str, update: str, pre: str = ""):
    text = pre + OPT_MODEL + f"optimizer o {{\n{levels}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"
    return check_text(text, "o.nl").diagnostics


@pytest.mark.parametrize(("eps", "pre"), [("2 * 1e-8", ""), ("1 / 1e8", ""), ("1e-4 ** 2", ""), ("sqrt(1e-16)", ""),
                                          ("eps / 10", "const eps = 1e-8\n")])
def test_an_epsilon_written_as_arithmetic_keeps_the_divisor_off_zero(eps, pre):
    assert _optimizer_diags(M + "\n " + V, f"m / (sqrt(v) + {eps})", pre) == []


@pytest.mark.parametrize(("levels", "update"), [(FAST_SLOW, "sqrt(fast - slow)"), (M + "\n " + V, "sqrt(v - m)")])
def test_a_difference_is_trusted_only_of_non_negative_parts(levels, update):
    """`v - m * m` may be a variance; `fast - slow` and `v - m` are no such thing (m takes both signs)."""
    assert [d.code for d in _optimizer_diags(levels, update)] == ["E0304"]


def test_the_root_help_names_what_makes_a_level_of_squared_gradients_signed():
    levels = M + "\n level v { flow = squared_gradients; lr = 0.1; retention = 0.9; objective = l2 }"
    [error] = [d for d in _optimizer_diags(levels, "m / (sqrt(v) + 1e-8)") if d.code == "E0304"]
    assert error.help.startswith("use `objective = dot` on `v`"), error.help


def test_a_divisor_that_is_a_difference_of_levels_takes_both_signs():
    [warning] = [d for d in _optimizer_diags(M + "\n " + FAST_SLOW, "m / (fast - slow)") if d.code == "W0712"]
    assert "takes both signs" in warning.message and "abs(fast - slow) + 1e-08" in warning.help


def test_the_epsilon_help_says_when_the_level_is_written_only_every_few_steps():
    """An ε keeps the step finite, not small, until a slower level's first write."""
    levels = M + "\n level v { flow = squared_gradients; lr = 0.1; retention = 0.9; period = 4 }"
    [warning] = _optimizer_diags(levels, "m / sqrt(v)")
    assert "level `v` is 0 until its first write at step 4" in warning.help, warning.help
    [warning] = _optimizer_diags(M + "\n " + V, "m / sqrt(v)")
    assert "until its first write" not in warning.help


@pytest.mark.parametrize("option", ["bias_correction = true", "nesterov = true"])
def test_momentum_options_with_zero_retention_have_no_effect(option):
    assert [d.code for d in _optimizer_diags(f"level m {{ retention = 0; {option} }}", "m")] == ["W0706"]
    assert _optimizer_diags(f"level m {{ retention = 0.5; {option} }}", "m") == []

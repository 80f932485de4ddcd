"""The update checks (nldsl/update_checks.py) on updates from the literature and their edges, and the
other checks and messages of the same change, from a review and a mutation round of it: the
`test_bug_*` tests failed before their fix; each other test fails with a mutant its comment names."""

from __future__ import annotations

import pytest

from nldsl.checker import check_text

MODEL = "model m {\n  dim = 32\n  vocab = 256\n  block { mlp { } }\n}\n"
LEVELS = ("  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
          "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }\n"
          "  level g { flow = gradients  retention = 0 }\n"
          "  level s { flow = v  retention = 0.5  lr = 0.5 }")


def _spec(update: str, levels: str = LEVELS) -> str:
    return MODEL + f"optimizer o {{\n  lr = 1e-3\n{levels}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"


def _diags(update: str, levels: str = LEVELS):
    return [d for d in check_text(_spec(update, levels), "o.nl").diagnostics]


def _codes(update: str, levels: str = LEVELS) -> list[str]:
    return [d.code for d in _diags(update, levels)]


# Bugs the review found

@pytest.mark.parametrize("update", [
    "sqrt(2 * m * m) + v + g + s",           # 2 m² >= 0: E0304 is an *error*, blocks a legit spec
    "sqrt(m * v * m) + g + s",               # m v m >= 0
    "m / (1e-8 + sqrt(v) + sqrt(s)) + g",    # eps first: kept off 0, W0712 (order-dependent)
    "m / (sqrt(v) + 1e-8 + m * m) + g + s",  # > 0
    "m / sqrt(v - m * m + 1e-8) + g + s",    # a variance + ε in the root: trusted ≥ 0 by both checks
])
def test_bug_false_positives_of_the_sign_analysis(update):
    assert _codes(update) == []


@pytest.mark.parametrize("update", ["sqrt(-v) + m + g + s", "(-v) ** 0.5 + m + g + s", "sqrt(0 - v) + m + g + s",
                                    "sqrt(-m) + v + g + s"])
def test_bug_a_root_of_a_negated_level_is_nan_yet_passes(update):
    """sqrt(-v) is NaN wherever v > 0; `_subtracts` exempts every negation."""
    assert "E0304" in _codes(update)


def test_bug_w0712_names_the_level_that_is_zero():
    """(abs(g) + 1) is >= 1; the divisor is 0 where v is, but the message blames g."""
    [d] = _diags("m / ((abs(g) + 1) * v) + s")
    assert d.code == "W0712" and "level `v`" in d.message, d.message


def test_bug_w0712_help_for_a_signed_divisor_silences_the_warning():
    """For `m / (g + 1e-8)` the help suggests `m / (g + 1e-08 + 1e-08)`, which is warned about again."""
    [d] = _diags("m / (g + 1e-8) + v + s")
    suggestion = d.help.split("`")[1]
    assert _codes(suggestion + " + v + s") == [], d.help


def test_bug_a_missing_equals_is_not_called_a_word_after_a_value():
    """`retention 0.9` lacks its `=`; the new parser hint says to remove `retention`."""
    text = _spec("m", "  level m { flow = gradients retention 0.9 }")
    [d] = check_text(text, "o.nl").diagnostics
    assert "after the value of" not in d.message, d.message


# What the mutants broke

@pytest.mark.parametrize("update", [
    "m / (2 * (sqrt(v) + 1e-8)) + g + s",        # _may_be_zero const `== 0` -> `!= 0`
    "m / ((sqrt(v) + 1e-8) / 2) + g + s",        # _may_be_zero div -> True
    "m * v ** 0 + g + s",                        # pow `< 0` -> `<= 0` in _divisions_by_zero
    "sqrt(m ** 2) + v + g + s",                  # _sign even power `% 2 == 0` -> `== 1`
    "m / ((v - m * m) ** 0.5 + 1e-8) + g + s",   # _sign fractional power -> sign of base
    "sqrt(2 * (v - m * m)) + g + s",             # _subtracts not recursive
    "m / (-2 * sqrt(v) - 1e-8) + g + s",         # _sign const -> always "+"
])
def test_quiet_updates(update):
    assert _codes(update) == []


@pytest.mark.parametrize(("update", "code"), [
    ("m / v ** 2 + g + s", "W0712"),                        # _may_be_zero pow -> False
    ("m / (0 - sqrt(v)) + g + s", "W0712"),                 # drop `value != 0`
    ("sqrt(m ** 3) + v + g + s", "E0304"),                  # _sign odd power
    ("sqrt(m * g) + v + s", "E0304"),                       # mul: drop the "?" case
    ("m / (1e-8 + -2 * sqrt(v)) + g + s", "W0712"),         # mul: known signs always "+"
    ("m / (1e-8 - sqrt(v)) + g + s", "W0712"),              # sub: no flip of the right sign
])
def test_flagged_updates(update, code):
    assert _codes(update) == [code]


def test_w0712_once_names_first_level_and_mends_the_whole_division():
    """mutants: `return` -> `continue` (two warnings); names[0] -> names[-1]; mended without ε."""
    [d] = _diags("m / sqrt(v) + m / sqrt(s) + g")
    assert d.code == "W0712"
    [d] = _diags("m / (sqrt(v) * sqrt(s)) + g")
    assert "level `v`" in d.message and "`m / (sqrt(v) * sqrt(s) + 1e-08)" in d.help, (d.message, d.help)


def test_a_chain_written_before_its_source_stays_nonnegative():
    """mutant: `_nonnegative_levels` stops after one pass (grown = False)."""
    levels = "  level s { flow = v  retention = 0.5 }\n  level v { flow = squared_gradients }"
    assert _codes("sqrt(s) + v", levels) == []


def test_no_sign_check_beside_a_broken_level():
    """mutant: the sign checks run beside an error (E0501) and add E0304 noise."""
    levels = ("  level m { flow = gradients  period = 2 }\n  level n { flow = m  period = 1 }\n"
              "  level v { flow = squared_gradients }")
    codes = _codes("sqrt(n) + v", levels)
    assert "E0501" in codes and "E0304" not in codes, codes


def test_lr_zero_on_an_mlp_level_is_not_w0706():
    """mutant: drop `level.state == "linear"` in the lr = 0 warning (φ has weights of its own)."""
    levels = "  level d { flow = gradients  state = mlp  lr = 0 }\n  level v { flow = squared_gradients }"
    codes = _codes("d + v", levels)
    assert "W0706" not in codes, codes


# The selfmod projection memories at the boundary of `short` (compiled vs interpreter)

def _selfmod_model(block: str, seq_len: int = 16):
    import torch

    from nldsl import loader
    spec = check_text(f"model m {{\n  vocab = 13\n  dim = 8\n  layers = 1\n  block {{\n{block}\n  }}\n}}\n"
                      f"train {{ seq_len = {seq_len} }}\n", "k.nl").spec
    torch.manual_seed(0)
    model = loader.build_module(spec).build(dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return spec, model


def test_a_call_of_exactly_the_period_keeps_theta0_detached():
    """mutant: codegen `short = x.shape[1] <= longest` -> `<`: at length == period (chunk_start) the
    unreached θ_0 must enter detached (grad None), not as a zero gradient that weight decay follows."""
    import torch
    block = ("selfmod { heads = 2 conv = 2 adaptive = [k, v, eta, alpha] level memory { period = 2 "
             "grad_through_writes = false } level projections { period = 16 readout = chunk_start } }")
    _spec_checked, model = _selfmod_model(block)
    tokens = torch.randint(0, 13, (2, 16), generator=torch.Generator().manual_seed(0))
    weights = [p for name, p in model.named_parameters() if name.endswith("k_memory_w1")]
    assert weights
    grads = torch.autograd.grad(model(tokens).square().sum(), weights, allow_unused=True)
    assert all(g is None for g in grads), grads



# nldsl train: the update check

def _train(tmp_path, update: str, steps: int = 4) -> int:
    from nldsl.cli import main
    text = tmp_path / "text.txt"
    text.write_text("".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(600)))
    spec = tmp_path / "ratio.nl"
    spec.write_text("optimizer ratio {\n  lr = 1e-3\n  level fast { }\n  level slow { period = 4 }\n"
                    f"  update = {update}\n}}\nmodel m {{\n  dim = 16\n  tie_embeddings = false\n"
                    "  block { mlp { } }\n}\n"
                    f"train {{ optimizer = ratio  steps = {steps}  batch = 2  seq_len = 16  warmup = 0 }}\n")
    return main(["train", str(spec), "--data", str(text), "--run-dir", str(tmp_path / "run"), "--no-compile",
                 "--no-progress"])


def test_an_update_that_breaks_only_some_weights_is_named(tmp_path, capsys):
    """mutant: train.check_the_update `if all(finite)` -> `if any(finite)`: 0/0 only in the entries
    whose gradient is 0 (embedding rows of bytes the batch lacks) leaves most weights finite."""
    assert _train(tmp_path, "fast / abs(fast) + slow") == 1
    err = capsys.readouterr().err
    assert "the optimizer's update of step 1 made weights not finite (" in err, err


# fmt and stream --baseline

def test_fmt_keeps_crlf_when_the_first_line_is_empty(tmp_path):
    """mutant: fmt._as_written `first_end > 0` -> `> 1` (a CRLF file that opens with an empty line)."""
    from nldsl.fmt import format_file
    path = tmp_path / "a.nl"
    path.write_bytes(b"\r\nmodel m {\r\n  dim    = 32\r\n  block { mlp { } }\r\n}\r\n")
    format_file(path)
    data = path.read_bytes()
    assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n"), data


def test_stream_baseline_verdict_follows_the_numbers(capsys):
    """mutants: commands._print_baseline verdict `change < 0` -> `> 0`, and the change's sign."""
    from nldsl.runtime.commands import _print_baseline
    from nldsl.runtime.evaluate import Segment
    _print_baseline([Segment(0, 100, 50.0, 100, 80.0)], True)   # carried 50 nats < fresh 80 nats
    line = capsys.readouterr().out
    carried = float(line.split("stream: ")[1].split(" with")[0])
    fresh = float(line.split(", ")[1].split(" ")[0])
    assert carried < fresh and "saves" in line, line
    _print_baseline([Segment(0, 100, 80.0, 100, 50.0)], True)
    assert "costs" in capsys.readouterr().out


def test_a_negative_named_constant_keeps_its_sign():
    """mutant: semantics._sign of a constant always "+" (k * sqrt(v) - 1e-8 <= -1e-8 is kept off 0)."""
    text = MODEL.replace("model m {", "const k = -2\nmodel m {") + (
        "optimizer o {\n  lr = 1e-3\n  level m { flow = gradients }\n  level v { flow = squared_gradients }\n"
        "  update = m / (k * sqrt(v) - 1e-8)\n}\ntrain { optimizer = o }\n")
    assert check_text(text, "o.nl").diagnostics == []


@pytest.mark.parametrize("update", ["sqrt(v * -1) + m + g + s", "sqrt(-1 * v) + m + g + s"])
def test_bug_a_root_of_a_level_times_a_negative_constant_passes(update):
    """semantics.py says `a negative constant: the update's conversion reports it`; nothing does."""
    assert "E0304" in _codes(update)

"""Checks that catch what would otherwise run to no purpose or into NaN, and messages that say how
to mend them: an optimizer's settings that do nothing (W0706), a level that writes nothing (W0706),
a root of a level that goes negative (E0304), an update that can divide by zero (W0712), a delta-rule
write that grows the memory (W0718), an MLP memory whose first forward is NaN (W0719), every wrong
argument of a call, Gated DeltaNet's order on a level that cannot take it, section overrides, and a
word after a value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compiler.optimizers import build_optimizer
from nldsl import spec as S
from nldsl.checker import check_text

REPO = Path(__file__).resolve().parents[1]

MODEL = "model m {\n  dim = 32\n  vocab = 256\n  block { mlp { } }\n}\n"


def _optimizer(levels: str, update: str) -> str:
    return MODEL + f"optimizer o {{\n  lr = 1e-3\n{levels}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"


def _found(text: str, overrides=()) -> list[tuple[str, int]]:
    return [(d.code, d.span.line) for d in check_text(text, "o.nl", list(overrides)).diagnostics]


ADAM_LEVELS = ("  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
               "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }")


@pytest.mark.parametrize("update", ["m / (sqrt(v) + 1e-8)", "m / (v ** 0.5 + 1e-8)", "sqrt(m * m)", "sqrt(abs(m))",
                                    "m ** 2", "m ** 3", "sqrt(v - m * m)", "sqrt(-(-v))", "(m * m) ** 0.25",
                                    "sqrt(sign(v))", "sqrt(2 * v / 3)"])
def test_roots_of_levels_that_cannot_go_negative_are_accepted(update):
    """Adam's `sqrt(v)`, a square, an abs, and an argument that subtracts (`v − m²` is ≥ 0 by the
    levels' arithmetic when they average the same steps, which no sign rule can see)."""
    assert _found(_optimizer(ADAM_LEVELS, f"{update} + m + v")) == []


@pytest.mark.parametrize(("update", "name"), [("m / sqrt(m)", "m"), ("m ** 0.5", "m"), ("sqrt(v * m)", "m"),
                                              ("sqrt(v + m)", "m"), ("(2 * m) ** 1.5", "m"), ("sqrt(sign(m))", "m")])
def test_a_root_of_a_momentum_of_the_gradients_is_e0304_at_the_level(update, name):
    text = _optimizer(ADAM_LEVELS, f"{update} + v")
    [error] = check_text(text, "o.nl").diagnostics
    assert (error.code, error.span.line) == ("E0304", 10), error
    assert text.splitlines()[9][error.span.column - 1:].startswith(name)
    assert "it remembers the gradients" in error.message and "abs(" in error.help


def test_the_sign_of_a_level_follows_its_flow_rule_and_newton_schulz():
    """A momentum of a non-negative level stays non-negative; the delta rule, an mlp state and
    Newton–Schulz give a level of squared gradients both signs, and the message says which."""
    chained = "  level v { flow = squared_gradients }\n  level s { flow = v  retention = 0.5 }"
    assert _found(_optimizer(chained, "sqrt(s)")) == []
    for option, why in [("objective = l2", "delta rule"), ("state = mlp", "φ can flip"),
                        ("orthogonalize = newton_schulz(5)", "Newton–Schulz")]:
        text = _optimizer(f"  level v {{ flow = squared_gradients  {option} }}", "sqrt(v)")
        [error] = check_text(text, "o.nl").diagnostics
        assert error.code == "E0304" and why in error.message, (option, error)
        follower = _optimizer(f"  level v {{ flow = squared_gradients  {option} }}\n  level s {{ flow = v }}",
                              "sqrt(s)")
        [error] = check_text(follower, "o.nl").diagnostics
        assert error.code == "E0304" and "remembers level `v`" in error.message, (option, error)


def test_a_root_of_a_signed_level_really_is_nan_at_the_first_step():
    """What E0304 prevents: the runtime's step of `m / sqrt(m)` on a momentum of the gradients turns
    every entry whose gradient is negative into NaN."""
    from nldsl.runtime import optim as O
    levels = (O.OptimizerLevelConfig("m", "gradients", retention=0.9, lr=0.1),)
    param = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = O.NestedOptimizer([param], O.OptimizerConfig(lr=1e-3, levels=levels, update=(
        "div", ("level", "m"), ("sqrt", ("level", "m")))))
    param.grad = torch.tensor([[1.0, -1.0] * 2] * 4)
    optimizer.step()
    assert torch.isnan(param[:, 1::2]).all() and torch.isfinite(param[:, ::2]).all()


@pytest.mark.parametrize(("lr", "warned"), [("1.9", False), ("2.5", True)])
def test_a_delta_rule_write_w0718_flags_really_grows_the_state(tmp_path, lr, warned):
    """What W0718 says, on the model the checked spec builds: past η = 2 a delta-rule write to
    l2-normalised keys grows the memory with the tokens (random tokens of a small vocabulary, so
    that keys come back), below it the memory stays bounded."""
    import warnings

    import nldsl
    from nldsl.diagnostics import SpecWarning

    spec = tmp_path / "delta.nl"
    spec.write_text(f"model delta {{\n  vocab = 64\n  dim = 32\n  layers = 1\n  block {{\n    memory {{\n"
                    f"      heads = 2\n      level {{ lr = {lr} }}\n    }}\n  }}\n}}\n")
    largest = []
    for seed in (0, 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(seed)
            model = nldsl.load(spec)
        assert any(isinstance(w.message, SpecWarning) and "W0718" in str(w.message) for w in caught) == warned
        tokens = torch.randint(0, 64, (2, 256), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            _, state = model(tokens, return_state=True)
        largest.append(max(w.abs().max().item() for w in state[0]["memory"]["memory"].weights))
    # measured: 6.2 and 9.5 at η = 1.9; 3.7e5 and 1.7e5 at η = 2.5
    assert (min(largest) > 1e4) if warned else (max(largest) < 100), largest


@pytest.mark.parametrize(("lr", "warned"), [("0.025", False), ("0.8", True)])
def test_an_mlp_memory_w0719_flags_really_diverges_in_its_first_forward(lr, warned):
    """What W0719 says, on specs/titans_lmm.nl at width 64 without momentum: from a starting step of
    0.8 its first forward is NaN (every measured shape's was), and well below it, at 0.025, finite."""
    import json.decoder
    import warnings

    import nldsl
    from nldsl.diagnostics import SpecWarning

    text = Path(json.decoder.__file__).read_bytes()[:256]
    tokens = torch.tensor(list(text)).unsqueeze(0)
    for seed in (0, 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(seed)
            model = nldsl.load(REPO / "specs" / "titans_lmm.nl", dim=64, model__block__lmm__level__lr=float(lr),
                               model__block__lmm__level__momentum=0)  # so that the step η/(1 − β) is η
        assert any(isinstance(w.message, SpecWarning) and "W0719" in str(w.message) for w in caught) == warned
        with torch.no_grad():
            assert torch.isfinite(model(tokens)).all().item() != warned, seed


ZERO_START_CASES = [  # (layer, refused): the layer as written, with `init = zeros` where it is refused
    ("memory m { heads = 2 level { state = linear values = generated objective = l2 period = 2 } }", True),
    ("memory m { heads = 2 level { state = linear values = generated objective = dot period = 2 } }", True),
    ("memory m { heads = 2 level { state = linear objective = l2 period = 2 } }", False),  # given values
    ("memory m { heads = 2 level { state = linear values = generated objective = reconstruction period = 2 } }",
     False),
    ("selfmod m { heads = 2 adaptive = [k, v] level memory { state = linear values = given period = 2 } "
     "level projections { state = linear values = given period = 2 } }", True),  # M_k's keys
    ("selfmod m { heads = 2 adaptive = [v, eta] level memory { state = linear values = given period = 2 } "
     "level projections { state = linear values = given period = 2 } }", True),  # M_v's values
    ("selfmod m { heads = 2 adaptive = [eta] level memory { state = linear values = given period = 2 } "
     "level projections { state = linear values = given period = 2 } }", False),  # static keys and values
    ("selfmod m { heads = 2 adaptive = [v] level memory { state = linear values = given period = 2 } "
     "level projections { state = linear objective = reconstruction period = 2 } }", False),
]


@pytest.mark.parametrize(("layer", "refused"), ZERO_START_CASES)
def test_init_zeros_is_refused_exactly_where_the_zero_state_never_writes(layer, refused):
    """E0601 on `init = zeros` where the state would stay exactly zero, and not where it writes: each
    case is built from its spec with learned starts, then run from zero starts (the checker's
    refusal bypassed by editing the checked spec), and its zero-started states read after 16 tokens."""
    from nldsl import loader

    def text(zeros: bool) -> str:
        written = layer.replace("state = linear", "state = linear init = zeros") if zeros else layer
        return f"model t {{\n  vocab = 256\n  dim = 16\n  block {{\n    {written}\n  }}\n}}\n"

    zero_starts = check_text(text(True), "z.nl")
    assert [d.code for d in zero_starts.diagnostics if d.severity == "error"] == (["E0601"] if refused else [])
    spec = check_text(text(False), "z.nl").spec
    sublayer = spec.model.block.sublayers[0]
    if isinstance(sublayer, S.MemorySpec):
        sublayer = sublayer.model_copy(update={"level": sublayer.level.model_copy(update={"init": "zeros"})})
    else:
        sublayer = sublayer.model_copy(update={name: getattr(sublayer, name).model_copy(update={"init": "zeros"})
                                               for name in ("memory", "projections")})
    block = spec.model.block.model_copy(update={"sublayers": (sublayer,)})
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"block": block})})
    torch.manual_seed(0)
    model = loader.build_module(spec).build()
    with torch.no_grad():
        _, state = model(torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0)),
                         return_state=True)
    levels = [part for part in state[0]["m"].values() if hasattr(part, "weights")]
    assert levels and all(part.weights[0].abs().max().item() == 0 for part in levels) == refused


def test_hidden_on_a_linear_level_and_lr_zero_are_w0706():
    text = _optimizer("  level m { flow = gradients  hidden = 4 }\n  level z { flow = gradients  lr = 0 }", "m + z")
    assert _found(text) == [("W0706", 8), ("W0706", 9)]
    result = check_text(text, "o.nl")
    assert "`hidden` has no effect on level `m`" in result.diagnostics[0].message
    assert "output is 0 at every step" in result.diagnostics[1].message
    # an mlp state reads `hidden`; a level that starts at its first flow still moves with lr = 0
    quiet = _optimizer("  level m { flow = gradients  state = mlp  hidden = 4 }\n"
                       "  level z { flow = gradients  lr = 0  init = first_flow  retention = 0.5 }", "m + z")
    assert _found(quiet) == []


def test_a_level_that_writes_nothing_really_outputs_zero():
    """What the lr = 0 warning says, on the optimizer the checked spec builds."""
    spec = check_text(_optimizer("  level z { flow = gradients  lr = 0 }", "z"), "o.nl").spec
    param = torch.nn.Parameter(torch.ones(3, 3))
    optimizer = build_optimizer([("w", param)], spec.train.optimizer)
    for _ in range(3):
        param.grad = torch.randn(3, 3)
        optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3, 3))


def test_adams_second_moment_settings_on_sgd_are_w0706_where_written():
    text = MODEL + "train { optimizer = sgd(lr = 0.1, beta2 = 0.9, eps = 1e-6) }\n"
    assert _found(text) == [("W0706", 6), ("W0706", 6)]
    [override] = check_text(MODEL + "train { optimizer = sgd(lr = 0.1) }\n", "o.nl", ["train.optimizer.eps=1e-3"]
                            ).diagnostics
    assert (override.code, override.span.path) == ("W0706", "<--set 1>")
    for kind in ("adamw", "muon", "m3"):  # their second moment (muon's and m3's AdamW fallback) reads both
        assert _found(MODEL + f"train {{ optimizer = {kind}(lr = 0.01, beta2 = 0.9, eps = 1e-6)  steps = 100 }}\n"
                      ) == [], kind


@pytest.mark.parametrize(("call", "expected"), [
    ("adamw(lr = -1, beta2 = 2)", [("E0302", "lr"), ("E0302", "beta2")]),
    ("adamw(-1, beta2 = 2)", [("E0302", "adamw(-1"), ("E0302", "beta2")]),
    ("adamw(lr = -1, fo = 2, beta2 = 2)", [("E0302", "lr"), ("E0305", "fo"), ("E0302", "beta2")]),
    ("sgd(0.1, lr = 0.2, momentum = 1)", [("E0305", "lr = 0.2"), ("E0302", "momentum")]),
])
def test_every_wrong_argument_of_a_call_is_reported_also_beside_an_unknown_one(call, expected):
    """Range errors of a call's arguments are reported together, and do not wait for an unknown or
    doubled argument beside them to be mended."""
    text = MODEL + f"train {{ optimizer = {call} }}\n"
    line = text.splitlines()[5]
    found = [(d.code, line[d.span.column - 1:]) for d in check_text(text, "o.nl").diagnostics]
    assert [code for code, _ in found] == [code for code, _ in expected], found
    assert all(at.startswith(start) for (_, at), (_, start) in zip(found, expected, strict=True)), found


def test_a_misspelled_argument_and_a_wrong_one_beside_it_are_both_reported():
    """A state's `mlp(depht = 2, expansion = -1)`: the misspelling, and the range error of the
    argument spelled right, but no word of a missing argument."""
    text = MODEL.replace("block { mlp { } }", "block { memory { level { state = mlp(depht = 2, expansion = -1) } } }")
    assert [d.code for d in check_text(text, "o.nl").diagnostics] == ["E0305", "E0302"]


@pytest.mark.parametrize(("level", "named"), [
    ("state = linear period = 1 retention = 0.9", "`objective = surprise` (a cms level's default)"),
    ("state = mlp period = 2 retention = 0.9 objective = reconstruction momentum = 0.5",
     "an MLP state, `period = 2` and momentum"),
])
def test_before_write_names_what_the_level_has_that_it_cannot_take(level, named):
    """A cms level that meets the state, period and momentum rules still cannot decay before a
    `surprise` write: the message says which of the rules this level breaks."""
    text = f"model m {{\n  dim = 32\n  block {{ cms {{ level a {{ {level} retention_order = before_write }} }} }}\n}}\n"
    [error] = check_text(text, "o.nl").diagnostics
    assert error.code == "E0601" and error.message.endswith(f"this level has {named}"), error.message



def test_before_write_on_a_cms_level_that_reconstructs_checks():
    text = ("model m {\n  dim = 32\n  block { cms { level a { state = linear period = 1 retention = 0.9 "
            "objective = reconstruction retention_order = before_write } } }\n}\n"
            "train { compile = chunks }\n")  # a token-by-token loop unrolled whole would be W0714
    assert check_text(text, "o.nl").diagnostics == []


@pytest.mark.parametrize("update", ["m / sqrt(v)", "m * v ** -0.5", "m / (sqrt(v) * 2)", "m / (v + 0)",
                                    "m / (sqrt(v) - 1e-8)", "m / (m + 1)", "m / sqrt(v + m * m)", "m / abs(m)"])
def test_an_update_that_can_divide_by_zero_is_w0712_at_its_level(update):
    text = _optimizer(ADAM_LEVELS, update if "v" in update else f"{update} + v")
    found = check_text(text, "o.nl").diagnostics
    assert [d.code for d in found] == ["W0712"], found
    assert "ε" in found[0].help and found[0].span.line == 10


@pytest.mark.parametrize("update", ["m / (sqrt(v) + 1e-8)", "m * (v + 1e-8) ** -0.5", "m / (1 + sqrt(v))",
                                    "m / (abs(m) + 1) + v", "m / (-1 - v)", "m / 2 + v", "m / (v * v + 1e-8)"])
def test_a_divisor_kept_off_zero_by_a_constant_is_quiet(update):
    assert check_text(_optimizer(ADAM_LEVELS, update), "o.nl").diagnostics == []


def test_a_section_override_suggests_a_state_only_for_a_state_value():
    """`--set …fast=none` is not a state: the help names no `state=none` override, which would fail too;
    and a state without arguments is shown without `(…)`."""
    from pathlib import Path

    from nldsl.checker import check_file
    hope = Path(__file__).resolve().parent.parent / "specs" / "hope.nl"
    [error] = check_file(hope, ["model.block.cms.fast=none"]).diagnostics
    assert error.help.endswith("`--set model.block.cms.fast.ATTRIBUTE=…`"), error.help
    [error] = check_file(hope, ["model.block.cms.fast=mlp(depth = 2)"]).diagnostics
    assert error.help.endswith("`--set model.block.cms.fast.state=mlp(depth = 2)`"), error.help
    [error] = check_file(hope, ["model.block.cms.fast.state=none"]).diagnostics
    assert error.help == "`state` expects `linear`, `mlp(…)` or `residual_mlp(…)`", error.help


@pytest.mark.parametrize("text", ["model m {\n  dim = 32\n  block { memory { level { period = 16 tokens } } }\n}\n",
                                  "model m {\n  dim = 32\n  block { memory { level { period = 16 tokens\n"
                                  "  lr = 0.1 } } }\n}\n"])
def test_a_word_after_a_value_is_named_where_it_stands(text):
    """`period = 16 tokens` reads `tokens` as the next attribute's key: the error points at the word,
    not at the `}` or the next line's key that lacks its `=`."""
    [error] = check_text(text, "u.nl").diagnostics
    assert (error.code, error.span.line, error.span.column) == ("E0101", 3, 40), error
    assert error.message == "unexpected name `tokens` after the value of `period`"
    assert "remove `tokens`" in error.help


def test_attributes_on_one_line_still_parse():
    assert check_text("model m {\n  dim = 32 layers = 2\n  block { mlp { } }\n}\n", "u.nl").diagnostics == []


@pytest.mark.parametrize(("retention", "expected"), [(0.9, [("E0601", 9)]), (0.0, [("W0706", 9)])])
def test_bias_correction_does_not_go_with_a_first_flow_start(retention, expected):
    """1 − α^w undoes a zero start: on a buffer that starts at its first flow it makes the first output
    1/(1 − α) times that flow; at retention 0 it divides by 1 and only does nothing."""
    levels = (f"  level m {{ flow = gradients  retention = {retention}  lr = 0.1  init = first_flow\n"
              "            bias_correction = true }")
    assert _found(_optimizer(levels, "m")) == expected

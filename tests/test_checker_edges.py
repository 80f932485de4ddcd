"""Edges of the checker and the semantic checks that no test pinned before a mutation round on
nldsl/checker.py and nldsl/semantics.py (77 mutants, 4 equivalent): each test here fails with one
of the 29 that survived the suite (its comment names the rule)."""

from __future__ import annotations

import pytest

from nldsl import spec as S
from nldsl.checker import check_file, check_text


def _model(layer: str, dim: int = 64, train: str = "") -> str:
    return f"model m {{\n  dim = {dim}\n  block {{\n    {layer}\n  }}\n}}\n{train}"


def _codes(text: str, overrides=()) -> list[tuple[str, int | None]]:
    return [(d.code, d.span.line if d.span is not None else None) for d in _diags(text, overrides)]


def _diags(text: str, overrides=()):
    # the compile-time warning (W0714) follows from the periods; tests/invalid and test_check pin it
    return [d for d in check_text(text, "k.nl", list(overrides)).diagnostics if d.code != "W0714"]


def test_w0709_reads_a_per_head_lr_by_its_initial_value():
    # semantics._dgd_growth: a per_head gate's η is its init
    text = _model("cms { level fast { period = 4\n rule = dgd\n lr = per_head(0.01) } }", dim=256)
    assert _codes(text) == [("W0709", 6)]
    small = _model("cms { level fast { period = 4\n rule = dgd\n lr = per_head(0.005) } }", dim=256)
    assert _codes(small) == []


def test_w0701_exempts_only_the_linear_dot_given_gd_level_with_momentum():
    # semantics.check_layer: the chunk-parallel exemption needs `values = given`
    level = "memory { level { state = linear\n period = 1\n momentum = 0.9\n objective = dot\n values = %s } }"
    assert _codes(_model(level % "given")) == []
    assert _codes(_model(level % "generated")) == [("W0701", 5), ("W0707", 8)]


def test_a_constant_retention_on_a_slower_nested_level_is_refused():
    # semantics.check_layer: only a constant `lr` is allowed on a slower nested level, not a constant gate
    text = _model("cms { variant = nested\n level a { period = 4 }\n level b { period = 16\n retention = 0.9 } }")
    [error] = _diags(text)
    assert (error.code, error.span.line) == ("E0601", 7)
    assert "constant `lr` only" in error.message


def test_dgd_layers_on_a_one_matrix_mlp_state_has_no_effect():
    # semantics._unused_level_settings: an mlp(depth = 1) state has a single weight matrix
    text = _model("cms { level a { period = 4\n rule = dgd\n state = mlp(depth = 1)\n dgd_layers = all } }")
    [warning] = _diags(text)
    assert (warning.code, warning.span.line) == ("W0706", 7)
    assert "single weight matrix" in warning.message
    deep = _model("cms { level a { period = 4\n rule = dgd\n state = mlp(depth = 2)\n dgd_layers = all } }")
    assert _codes(deep) == []


def test_before_write_is_refused_beside_the_surprise_objective():
    # semantics.check_layer: Gated DeltaNet's order is not for a `surprise` level, even a linear period-1 one
    level = ("cms { level a { period = 1\n state = linear\n retention_order = before_write\n retention = 0.9\n"
             " objective = %s } }")
    [error] = _diags(_model(level % "surprise"))
    assert (error.code, error.span.line) == ("E0601", 6)
    assert error.message.startswith("`retention_order = before_write` (Gated DeltaNet) needs")
    assert _codes(_model(level % "reconstruction")) == []


def test_init_zeros_on_a_cms_level_that_learns_in_context_is_allowed():
    # semantics.check_layer: `init = zeros` is refused only on a cms level the outer optimizer steps
    assert _codes(_model("cms { level a { period = 4\n state = linear\n init = zeros } }")) == []
    [error] = _diags(_model("cms { level a { period = 4\n state = linear\n init = zeros\n update = outer } }"))
    assert (error.code, error.span.line) == ("E0601", 6) and "nothing to learn" in error.message


def test_a_per_head_gate_exactly_at_the_sigmoid_edge_may_start_there():
    # semantics.check_layer: 1 − 1e-6 itself is inside [1e-6, 1 − 1e-6]
    assert _codes(_model("memory { level { period = 16\n retention = per_head(0.999999) } }")) == []
    [error] = _diags(_model("memory { level { period = 16\n retention = per_head(0.9999991) } }"))
    assert (error.code, error.span.line) == ("E0302", 5)


def test_a_learned_gate_exactly_at_the_sigmoid_edge_of_its_max_may_start_there():
    # semantics.check_layer: init / max == 1e-6 is inside the allowed range
    assert _codes(_model("memory { level { period = 16\n lr = learned(init = 1e-7, max = 0.1) } }")) == []
    [error] = _diags(_model("memory { level { period = 16\n lr = learned(init = 9e-8, max = 0.1) } }"))
    assert (error.code, error.span.line) == ("E0302", 5)


def test_detached_writes_name_the_convolutions_of_two_projections_in_the_plural():
    # semantics._cut_off_by_detached_writes: W_k and W_v bring "their convolutions"
    [two] = _diags(_model("memory { conv = 4\n level { period = 16\n grad_through_writes = false } }"))
    assert two.code == "W0706" and two.message.startswith("W_k, W_v and their convolutions get no gradient")
    [one] = _diags(_model("memory { conv = 4\n level { period = 16\n objective = reconstruction\n"
                          " grad_through_writes = false } }"))
    assert one.code == "W0706" and one.message.startswith("W_k and its convolution get no gradient")


def test_detached_selfmod_writes_name_a_per_head_lr_as_learned():
    # semantics._cut_off_by_detached_writes: a per_head `lr` is learned too
    from pathlib import Path

    from nldsl.checker import check_file

    hope = Path("specs/hope.nl")
    overrides = ["dim=32", "model.layers=1", "model.block.titans.memory.grad_through_writes=false",
                 "model.block.titans.adaptive=[k,alpha]", "model.block.titans.memory.lr=per_head(0.01)",
                 "model.block.titans.projections.grad_through_writes=false"]
    warnings = [d for d in check_file(hope, overrides).diagnostics if d.code == "W0706"]
    assert len(warnings) == 1 and "the learned `lr`" in warnings[0].message, warnings


def test_the_byte_tokenizer_written_out_fits_the_default_vocabulary():
    # checker.check_vocabulary: `tokenizer = bytes` has 256 tokens, model.vocab's default
    text = _model("mlp { }", train="train {\n  tokenizer = bytes\n}\n")
    assert _codes(text) == []
    [error] = _diags(text, ["model.vocab=300"])
    assert (error.code, error.span.line) == ("E0508", 8)
    assert error.message == "the tokenizer `bytes` has 256 tokens but model.vocab is 300 (set at <--set 1>:1)"


def test_the_heads_help_lists_the_first_eight_divisors_of_the_width():
    # checker.check_heads: the help names eight divisors of the width
    [error] = _diags("model m {\n  dim = 36\n  block { attention { heads = 5 } }\n}\n")
    assert (error.code, error.span.line) == ("E0503", 3)
    assert error.help == "choose heads among: 1, 2, 3, 4, 6, 9, 12, 18"


def test_a_number_of_exactly_two_to_the_63_is_within_the_documented_range():
    # checker.evaluate: "a spec's numbers lie within ±2**63", the bound included
    def seed(value: str):
        return _codes(_model("mlp { }", train=f"train {{ seed = {value} }}\n"))

    assert seed("9223372036854775808") == []
    assert seed("9223372036854775809") == [("E0304", 7)]


def test_a_third_block_is_not_the_one_reported_as_too_many():
    # checker.children: E0402 points at the first section past the limit, not the last
    text = ("model m {\n  dim = 64\n  block { mlp { } }\n  block { mlp { } }\n  block { mlp { } }\n}\n")
    [error] = _diags(text)
    assert (error.code, error.span.line, error.message) == ("E0402", 4, "a `model` has more than 1 `block` section")


def test_recompute_under_the_default_compile_is_refused():
    # checker.train: `compile` defaults to a whole graph, which `recompute` cannot use
    [error] = _diags(_model("mlp { }", train="train { recompute = 2 }\n"))
    assert (error.code, error.span.line) == ("E0601", 7) and "compile = chunks" in error.message
    assert _codes(_model("mlp { }", train="train { recompute = 2\n compile = chunks }\n")) == [("W0706", 7)]
    memory = "memory { level { period = 8 } }"
    assert _codes(_model(memory, train="train { recompute = 2\n compile = chunks }\n")) == []


def test_a_zero_written_with_an_exponent_is_zero_not_a_number_too_small():
    # checker.evaluate: only the mantissa's digits say a number rounded to 0
    [error] = _diags(_model("mlp { expansion = 0e5 }"))
    assert (error.code, error.message) == ("E0302", "`expansion` should be greater than 0")
    [tiny] = _diags(_model("mlp { expansion = 1e-400 }"))
    assert tiny.code == "E0304" and "rounds to 0" in tiny.message


def test_an_invalid_heads_value_is_not_also_checked_against_the_width_with_the_default():
    # checker.check_heads: a `heads` that failed to convert is reported once, not as 4 heads too
    [error] = _diags("model m {\n  dim = 6\n  block { attention { heads = 2.5 } }\n}\n")
    assert (error.code, error.message) == ("E0301", "`heads` expects an integer")


def test_a_constant_cycle_one_past_the_nesting_limit_is_called_a_long_cycle():
    # checker.const_value: 64 constants in a cycle are named at the use that closes it, 65 as a long cycle
    from nldsl.parser import MAX_NESTING

    def cycle(n: int):
        text = "".join(f"const c{i} = c{(i + 1) % n}\n" for i in range(n))
        return [(d.code, d.span.line, d.message)
                for d in check_text(text + "model m {\n  dim = c0\n  block { mlp { } }\n}\n", "k.nl").diagnostics]

    assert cycle(MAX_NESTING) == [("E0507", MAX_NESTING, "constant `c0` depends on itself")]
    assert cycle(MAX_NESTING + 1) == [
        ("E0507", 1, f"this constant depends on itself through a cycle of more than {MAX_NESTING} constants")]


def test_a_divisor_exactly_eight_units_in_the_last_place_from_zero_is_rounding_noise():
    # checker._rounding_noise: (1 + 2**-49) − (1 − 2**-49) is 16·2**-52 = 8 ulps of the operands' sum 2,
    # the bound included (`<`, a factor 4)
    def divided(divisor: str):
        text = f"const x = 1 / ({divisor})\nmodel m {{\n  dim = 64\n  block {{ mlp {{ expansion = x }} }}\n}}\n"
        return [d.code for d in check_text(text, "k.nl").diagnostics]

    assert divided("1.0000000000000018 - 0.9999999999999982") == ["E0304"]
    assert divided("1.000000000000002 - 0.9999999999999982") == ["E0302"]  # just past the bound: a real (huge) value


def test_a_constant_named_like_a_failed_import_alias_is_still_read(tmp_path):
    # checker.resolve_ref: a failed alias silences only uses that are not a constant of that name
    from nldsl.checker import check_file

    (tmp_path / "bad.nl").write_text("const y = \n", encoding="utf-8")
    root = tmp_path / "root.nl"
    root.write_text('import "bad.nl" as lib\nconst lib = 5\nmodel m {\n  dim = 64\n'
                    '  block { attention { heads = lib } }\n}\n', encoding="utf-8")
    found = [(d.code, d.message) for d in check_file(root).diagnostics if d.span is not None
             and d.span.path == str(root)]
    assert ("E0503", "5 heads do not divide the model width 64") in found, found



def test_a_parallel_with_one_branch_is_refused():
    # checker.sublayer: a `parallel` needs two branches
    [error] = _diags("model m {\n  dim = 64\n  block { parallel { mlp { } } }\n}\n")
    assert (error.code, error.message) == ("E0401", "a `parallel` needs at least two branches")


def test_a_layer_name_with_a_leading_underscore_is_refused():
    # checker.sublayers: `_x` would be a private attribute of the generated module
    [error] = _diags("model m {\n  dim = 64\n  block { mlp _x { } }\n}\n")
    assert (error.code, error.span.line) == ("E0208", 3)


def test_zero_to_the_power_zero_in_an_update_is_one_not_a_division_by_zero():
    # checker._constant_power: only a negative power of 0 divides by zero
    def update(text: str):
        spec = ("optimizer o {\n  lr = 0.01\n  level m { flow = gradients }\n  update = " + text + "\n}\n"
                "model m {\n  dim = 64\n  block { mlp { } }\n}\ntrain { optimizer = o }\n")
        return [(d.code, d.span.line, d.message) for d in check_text(spec, "k.nl").diagnostics]

    assert update("m * 0 ** 0") == []
    assert update("m * 0 ** -1") == [("E0304", 4, "division by zero")]


def test_a_constant_naming_a_section_is_told_it_is_a_name_not_a_misspelling():
    # checker.const_value: a section's name is no unknown name
    [error] = _diags("level fast { period = 4 }\nconst x = fast\nmodel m {\n  dim = 64\n"
                     "  block { mlp { expansion = x } }\n}\n")
    assert (error.code, error.span.line) == ("E0301", 2)
    assert error.message == "constant `x` must be a number, string, boolean or list, not the name `fast`"


def test_projection_gates_of_a_selfmod_without_adaptive_projections_get_only_w0703():
    # checker.sublayer: with `adaptive = []` there are no projection memories whose gates W0706 could name
    text = ("model m { dim = 16; block { selfmod { heads = 2; adaptive = []\n"
            "level memory { period = 8; state = linear; objective = l2 }\nlevel projections { lr = 0.5 } } } }\n")
    assert [d.code for d in _diags(text)] == ["W0701", "W0703"]


def test_a_selfmods_copied_projections_level_drops_gated_deltanets_order():
    # checker.sublayer: projections copied from `level memory` leave out `retention_order`
    text = ("model m { dim = 16; block { selfmod { heads = 2; adaptive = []\n"
            "level memory { period = 1; state = linear; objective = l2; retention = 0.9; "
            "retention_order = before_write } } } }\n")
    assert _codes(text) == []


def test_a_context_segment_of_a_whole_sequence_is_w0704():
    """One segment per training sequence: MAC's retrieval r_s only ever reads the sequence's start
    state (a language-breadth audit)."""
    context = ("context {{ segment = {}\n memory {{ heads = 2; level {{ state = linear; period = 4 }} }}\n"
               " attention {{ heads = 2 }} }}")
    for segment, expected in ((40, [("W0704", 4)]), (32, [("W0704", 4)]), (16, [])):
        text = _model(context.format(segment), dim=16, train="train { seq_len = 32 }\n")
        assert _codes(text) == expected, segment


def test_a_rejected_gate_is_not_also_warned_of_as_slow():
    """`momentum = generated` outside a selfmod is E0505; W0701 (token by token, from that momentum)
    beside it was noise (a language-breadth audit)."""
    assert _codes(_model("memory { level { momentum = generated } }", dim=16)) == [("E0505", 4)]
    assert _codes(_model("memory { level { momentum = 0.9 } }", dim=16)) == [("W0701", 4)]


def test_a_set_replaced_by_a_flag_says_the_flag_counts_after_every_set():
    """`--no-compile --set train.compile=maybe`: the warning said --no-compile came later, where it was
    typed first (a flag's override is applied after every --set)."""
    from nldsl.checker import Override

    overrides = ["train.compile=maybe", Override("train.compile=false", origin="--no-compile", label="<--no-compile>")]
    [warning] = check_text(_model("mlp { }"), "k.nl", overrides).diagnostics
    assert warning.code == "W0706" and warning.message.endswith(
        "`--no-compile` sets `train.compile` again, after every --set")
    [later] = check_text(_model("mlp { }"), "k.nl", ["train.steps=3", "train.steps=4"]).diagnostics
    assert later.message.endswith("sets `train.steps` again later, and the last one counts")


def test_the_checkers_chunk_loop_rule_is_the_runtimes(shipped_spec):
    """check_chunk_options's W0706 reads which memory levels run the exact delta kernel from the spec; the
    runtime decides from the lowered LevelConfig: the two agree on every level of every shipped spec
    (linear attention, DeltaNet and Gated DeltaNet run no chunk loop, so recompute does nothing)."""
    from nldsl.compiler import lower

    from nldsl import semantics
    from nldsl.runtime.memory import LevelConfig, uses_delta_kernel

    spec = check_file(shipped_spec).spec
    if spec.model is None:  # an optimizer library
        return
    for _, layer in semantics.walk_layers(spec.model.block.sublayers, "block"):
        if isinstance(layer, S.MemorySpec):
            for _, level in semantics.read_levels_of(layer, spec.train.seq_len):
                kernel = uses_delta_kernel(LevelConfig(**lower.level_config(level, 8, 8)))
                assert semantics.runs_chunk_loop(layer, level, spec.train.seq_len) == (not kernel), level


@pytest.mark.parametrize(("spec", "warned"), [("deltanet", True), ("linear_attention", True), ("titans_lmm", False)])
def test_recompute_on_a_model_of_delta_kernel_levels_is_w0706(spec, warned):
    result = check_file(f"specs/{spec}.nl", ["train.recompute=2", "train.compile=chunks"])
    assert [d.code for d in result.diagnostics if d.code == "W0706"] == (["W0706"] if warned else [])

"""Gaps the checker had: definitions of an imported file that the spec does not use went
unchecked, a selfmod level whose step η_max·C/(1 − β) diverges at init gave no warning, and an
`expansion` whose hidden width rounds up to one unit was built without a word, and a model too
large for any one device (a typo in a width) passed `nldsl check` in silence."""

from __future__ import annotations

from pathlib import Path

from nldsl.checker import check_file

LIBRARY = """\
level good {
  period = 4
}

level bad {
  period = 4
  colour = 3
}
"""


def _codes(path: Path, overrides=()) -> list[tuple[str, str, int | None]]:
    result = check_file(path, list(overrides))
    return [(d.code, Path(d.span.path).name if d.span else "", d.span.line if d.span else None)
            for d in result.diagnostics]


def _main(tmp_path: Path, use: str, imports: str = 'import "other.nl" as o') -> Path:
    (tmp_path / "other.nl").write_text(LIBRARY)
    main = tmp_path / "main.nl"
    main.write_text(f"{imports}\n\nmodel {{\n  dim = 64\n  block {{\n    memory lmm {{\n"
                    f"      level from {use} {{ }}\n    }}\n  }}\n}}\n")
    return main


def test_an_unused_imported_definition_with_an_error_is_reported_at_its_own_line(tmp_path):
    main = _main(tmp_path, "o.good")
    result = check_file(main)
    assert not result.ok
    assert _codes(main) == [("E0203", "other.nl", 7)]
    assert "`colour`" in result.diagnostics[0].message


def test_an_import_without_as_is_checked_the_same_way(tmp_path):
    main = _main(tmp_path, "good", imports='import "other.nl"')
    assert _codes(main) == [("E0203", "other.nl", 7)]


def test_an_error_in_a_used_imported_definition_is_reported_once_with_its_use(tmp_path):
    main = _main(tmp_path, "o.bad")
    [error] = check_file(main).diagnostics
    assert (error.code, Path(error.span.path).name, error.span.line) == ("E0203", "other.nl", 7)
    assert error.notes and "main.nl:7" in error.notes[0]


def test_a_file_imported_twice_reports_its_error_once(tmp_path):
    (tmp_path / "middle.nl").write_text('import "other.nl" as o\n\nlevel mine from o.good { }\n')
    main = _main(tmp_path, "m.mine", imports='import "other.nl" as o\nimport "middle.nl" as m')
    assert _codes(main) == [("E0203", "other.nl", 7)]


def test_a_clean_library_adds_nothing_and_the_imported_model_is_not_checked(tmp_path):
    # `model` and `train` of an imported file are not importable: an error there is that file's own
    (tmp_path / "other.nl").write_text("level good {\n  period = 16\n}\n\nmodel {\n  dim = -1\n}\n")
    main = tmp_path / "main.nl"
    main.write_text('import "other.nl" as o\n\nmodel {\n  dim = 64\n  block {\n    memory lmm {\n'
                    "      level from o.good { }\n    }\n  }\n}\n")
    assert _codes(main) == []


def test_the_shipped_specs_that_import_stay_clean():
    specs = Path(__file__).resolve().parent.parent / "specs"
    for name in ("hope.nl", "titans_mac.nl", "titans_mag.nl", "titans_mal.nl", "gated_deltanet.nl",
                 "transformer_muon.nl"):
        assert [d for d in check_file(specs / name).diagnostics if d.severity == "error"] == [], name


SPECS = Path(__file__).resolve().parent.parent / "specs"
MEMORY = "model.block.titans.memory"


def _selfmod(memory: str) -> str:
    return (f"model tiny {{\n  dim = 64\n  block {{\n    selfmod {{\n      level memory {{\n{memory}\n"
            "      }\n    }\n  }\n}\n")


def _w0713(text: str) -> list:
    from nldsl.checker import check_text
    return [d for d in check_text(text, "k.nl").diagnostics if d.code == "W0713"]


def test_w0713_a_selfmod_memory_with_momentum_at_the_default_lr_bound():
    # lr = generated(max = 1) starts η at 0.1: with β = 0.95, η/(1 − β) = 2 (hope.nl's first forward: NaN)
    [warning] = _w0713(_selfmod("period = 16\nmomentum = 0.95"))
    assert warning.severity == "warning" and warning.span.line == 7
    assert "0.1/(1 − 0.95) = 2" in warning.message and "measured" in warning.message
    assert "max = 0.15 or less" in warning.help


def test_w0713_stays_quiet_below_the_measured_threshold():
    assert _w0713(_selfmod("period = 16\nmomentum = 0.95\nlr = generated(max = 0.15)")) == []  # 0.3
    assert _w0713(_selfmod("period = 16\nmomentum = 0.5")) == []  # 0.2
    assert _w0713(_selfmod("period = 16")) == []  # no momentum: 0.1


def test_w0713_reads_a_learned_momentum_at_its_start_and_points_at_the_written_lr():
    # learned(max = 0.9) starts at 0.81: η 0.1 gives 0.53; the lr line is where to act
    [warning] = _w0713(_selfmod("period = 16\nlr = generated(max = 1)\nmomentum = learned(max = 0.9)"))
    assert warning.span.line == 7 and "= 0.526" in warning.message


def test_w0713_on_hope_follows_the_overrides_and_not_the_shipped_spec():
    assert [d for d in check_file(SPECS / "hope.nl").diagnostics if d.code == "W0713"] == []
    overrides = ["dim=64", f"{MEMORY}.lr=generated(max=1)", f"{MEMORY}.momentum=0.95"]
    assert [d.code for d in check_file(SPECS / "hope.nl", overrides).diagnostics] == ["W0713"]
    # the projections level stayed finite at this step (measured): not held to it
    projections = ["dim=64", "model.block.titans.projections.lr=generated(max=1)",
                   "model.block.titans.projections.momentum=0.95"]
    assert "W0713" not in {d.code for d in check_file(SPECS / "hope.nl", projections).diagnostics}


def test_no_shipped_spec_gets_w0713():
    for path in sorted(SPECS.glob("**/*.nl")):
        assert "W0713" not in {d.code for d in check_file(path).diagnostics}, path


def _w0715(text: str, overrides=()) -> list[tuple[int, str]]:
    from nldsl.checker import check_text
    return [(d.span.line, d.message.split(":")[0]) for d in check_text(text, "k.nl", list(overrides)).diagnostics
            if d.code == "W0715"]


WIDTHS = """\
model tiny {
  dim = 64
  block {
    cms { level fast { period = 16  state = mlp(2, expansion = 0.001) } }
    parallel { mlp a { expansion = 0.001 }  attention b { } }
    context { memory { heads = 2  level { state = mlp(3, expansion = 0.03125) } }  attention { } }
    selfmod { heads = 4  level memory { state = mlp(depth = 1, expansion = 0.001) }
              level projections { state = residual_mlp(0.01) } }
  }
}
"""


def test_w0715_names_each_hidden_width_below_one_unit_with_the_width_it_reads():
    # a head's width for selfmod and memory levels, the model's for cms levels and mlp layers; a
    # depth-1 mlp state has no hidden width, and 0.03125 × 32 is exactly one unit
    assert _w0715(WIDTHS) == [(4, "expansion 0.001 × input width 64 = 0.064"),
                              (5, "expansion 0.001 × input width 64 = 0.064"),
                              (8, "expansion 0.01 × input width 16 = 0.16")]


def test_w0715_follows_the_width_an_override_sets():
    spec = "model tiny {\n  dim = 64\n  block {\n    mlp { expansion = 0.05 }\n  }\n}\n"
    assert _w0715(spec) == []
    assert _w0715(spec, ["model.dim=16"]) == [(4, "expansion 0.05 × input width 16 = 0.8")]


def test_more_heads_than_the_width_is_the_shape_error_not_a_crash_of_w0715():
    # a head's width dim // heads is 0 there: W0715 has nothing to divide by, E0503 says what is wrong
    from nldsl.checker import check_text
    spec = "model tiny {\n  dim = 8\n  block {\n    memory { heads = 16  level { state = mlp(2) } }\n  }\n}\n"
    codes = [d.code for d in check_text(spec, "k.nl").diagnostics]
    assert "E0503" in codes and "W0715" not in codes, codes


def test_no_shipped_spec_gets_w0715():
    for path in sorted(SPECS.glob("**/*.nl")):
        assert "W0715" not in {d.code for d in check_file(path).diagnostics}, path


def _w0716(text: str, overrides=()) -> list[tuple[int, str]]:
    from nldsl.checker import check_text
    return [(d.span.line, d.message) for d in check_text(text, "k.nl", list(overrides)).diagnostics
            if d.code == "W0716"]


MLP_MODEL = "model tiny {\n  dim = 64\n  block {\n    mlp { }\n  }\n}\n"


def test_w0716_flags_a_width_typo_at_the_model_dim_with_the_parameter_count_nldsl_graph_shows():
    from nldsl.checker import check_text
    from nldsl.graph import build_graph
    typo = MLP_MODEL.replace("dim = 64", "dim = 10000000")
    total = build_graph(check_text(typo, "k.nl").spec).total_params()
    assert _w0716(typo) == [(2, f"the model has {total:,} parameters, {total * 4 / 2**40:.3g} TiB of float32 "
                                "weights: more than almost any one device holds (`nldsl train` refuses weights past "
                                "its device's memory)")]
    # set by an override, the warning points at the override
    spans = [d.span for d in check_text(MLP_MODEL, "k.nl", ["model.dim=10000000"]).diagnostics if d.code == "W0716"]
    assert [(span.path, span.line) for span in spans] == [("<--set 1>", 1)]


def test_w0716_starts_where_float32_weights_pass_one_tib():
    from nldsl import shapes
    from nldsl.checker import check_text

    def weights(dim: int) -> int:
        return 4 * shapes.count(shapes.model_parameters(check_text(MLP_MODEL, "k.nl", [f"model.dim={dim}"]).spec.model))

    low, high = 64, 10_000_000  # weights(low) ≤ 1 TiB < weights(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if weights(middle) <= 2**40 else (low, middle)
    assert _w0716(MLP_MODEL, [f"model.dim={low}"]) == []
    assert len(_w0716(MLP_MODEL, [f"model.dim={high}"])) == 1


def test_no_shipped_spec_gets_w0716():
    for path in sorted(SPECS.glob("**/*.nl")):
        assert "W0716" not in {d.code for d in check_file(path).diagnostics}, path


def test_w0716_waits_for_a_spec_without_errors():
    # a spec with errors may have shapes that cannot be counted; its errors come first
    from nldsl.checker import check_text
    broken = MLP_MODEL.replace("dim = 64", "dim = 10000000\n  colour = 3")
    codes = {d.code for d in check_text(broken, "k.nl").diagnostics}
    assert "E0203" in codes and "W0716" not in codes, codes

"""Review of 7c26037 (a mutation round): what tests/test_checker_gaps.py left open about checking
every definition of an imported file, and about W0713's starting step η/(1 − β)."""

from __future__ import annotations

from pathlib import Path

from nldsl.checker import check_file, check_text


def _where(result) -> list[tuple[str, str, int | None]]:
    return [(d.code, Path(d.span.path).name if d.span else "", d.span.line if d.span else None)
            for d in result.diagnostics]


MODEL = "model {\n  dim = 64\n  block {\n    memory lmm {\n      level from o.good { }\n    }\n  }\n}\n"


def test_every_imported_file_is_checked_not_only_the_first(tmp_path):
    (tmp_path / "one.nl").write_text("level good {\n  period = 4\n}\n\nlevel bad {\n  colour = 1\n}\n")
    (tmp_path / "two.nl").write_text("level other {\n  period = 4\n}\n\nlevel worse {\n  shade = 2\n}\n")
    main = tmp_path / "main.nl"
    main.write_text('import "one.nl" as o\nimport "two.nl" as t\n\n' + MODEL)
    assert sorted(_where(check_file(main))) == [("E0203", "one.nl", 6), ("E0203", "two.nl", 6)]


def test_an_imported_error_is_reported_beside_the_root_files_own(tmp_path):
    # errors in the root do not cut the imported definitions' check short: `nldsl check` reports every problem
    (tmp_path / "other.nl").write_text("level good {\n  period = 4\n}\n\nlevel bad {\n  colour = 1\n}\n")
    main = tmp_path / "main.nl"
    main.write_text('import "other.nl" as o\n\n' + MODEL.replace("dim = 64", "dim = -1"))
    found = _where(check_file(main))
    assert ("E0203", "other.nl", 6) in found and any(name == "main.nl" for _, name, _ in found)


def test_the_imported_check_leaves_the_root_files_own_paths_alone(tmp_path):
    # the root and the imported file both define `level good`: spans, provenance and the "used by" notes
    # of the result stay the root's (the imported file's check records its paths under the same names)
    (tmp_path / "other.nl").write_text("level base {\n  period = 0\n}\n\nlevel good from base {\n  lr = 0.2\n}\n")
    main = tmp_path / "main.nl"
    main.write_text('import "other.nl" as o\n\nlevel good {\n  period = 4\n  lr = 0.1\n}\n\n'
                    "model {\n  dim = 64\n  block {\n    memory lmm {\n      level from good { }\n    }\n  }\n}\n")
    result = check_file(main)
    [error] = result.diagnostics
    assert (error.code, Path(error.span.path).name, error.span.line) == ("E0302", "other.nl", 2)
    assert error.notes == ()  # no section of main.nl uses other.nl's base
    assert Path(result.spans["good.lr"].path).name == "main.nl" and result.spans["good.lr"].line == 5
    assert result.provenance["good.lr"].split(":")[0].endswith("main.nl")


def _selfmod(memory: str, adaptive: str = "") -> str:
    return (f"model tiny {{\n  dim = 64\n  block {{\n    selfmod {{\n{adaptive}      level memory {{\n{memory}\n"
            "      }\n    }\n  }\n}\n")


def _w0713(text: str) -> list:
    return [d for d in check_text(text, "k.nl").diagnostics if d.code == "W0713"]


STATIC = "      adaptive = [k, v]\n"  # no M_eta: `lr` may be a constant, learned or per_head


def test_w0713_fires_at_exactly_the_measured_threshold():
    [warning] = _w0713(_selfmod("period = 16\nmomentum = 0.75"))  # 0.1/(1 − 0.75) = 0.4
    assert "= 0.4:" in warning.message
    # 0.12/(1 − 0.7) is 0.4 too, though 0.3999999999999999 in floats
    assert len(_w0713(_selfmod("period = 16\nmomentum = 0.7\nlr = generated(max = 1.2)"))) == 1
    assert _w0713(_selfmod("period = 16\nmomentum = 0.7\nlr = generated(max = 1.1)")) == []  # 0.367


def test_w0713_reads_every_kind_of_lr_gate_at_its_start():
    assert len(_w0713(_selfmod("period = 16\nlr = 0.5", STATIC))) == 1  # a constant: 0.5
    assert len(_w0713(_selfmod("period = 16\nlr = learned(max = 1)", STATIC))) == 1  # half its bound: 0.5
    assert _w0713(_selfmod("period = 16\nlr = learned(max = 1, init = 0.05)", STATIC)) == []  # its init: 0.05
    # per_head(0.2) starts at 0.2, per_head(0.5) momentum at 0.5: 0.4
    [warning] = _w0713(_selfmod("period = 16\nlr = per_head(0.2)\nmomentum = per_head(0.5)", STATIC))
    assert "0.2/(1 − 0.5) = 0.4" in warning.message
    assert _w0713(_selfmod("period = 16\nlr = per_head(0.1)\nmomentum = per_head(0.5)", STATIC)) == []


def test_w0713_reads_a_learned_momentum_init_and_no_momentum_as_zero():
    [warning] = _w0713(_selfmod("period = 16\nmomentum = learned(max = 0.95, init = 0.9)"))  # 0.1/0.1 = 1
    assert "0.1/(1 − 0.9) = 1" in warning.message
    assert _w0713(_selfmod("period = 16\nlr = generated(max = 3)")) == []  # no momentum: 0.3


def test_w0713_holds_only_a_selfmods_memory():
    text = ("model tiny {\n  dim = 64\n  block {\n    memory lmm {\n"
            "      level memory { period = 16  lr = 0.5  momentum = 0.9 }\n    }\n  }\n}\n")
    assert _w0713(text) == []


def test_w0713_help_gives_a_bound_only_for_a_generated_lr_and_rounds_it_down():
    [learned] = _w0713(_selfmod("period = 16\nlr = learned(max = 1)", STATIC))
    assert "generated(max" not in learned.help
    # learned(max = 0.99) starts β at 0.891: 0.3 · 0.109 / 0.1 = 0.327, kept at two digits rounded down
    [generated] = _w0713(_selfmod("period = 16\nmomentum = learned(max = 0.99)"))
    assert "max = 0.32 or less" in generated.help
    assert _w0713(_selfmod("period = 16\nmomentum = learned(max = 0.99)\nlr = generated(max = 0.32)")) == []

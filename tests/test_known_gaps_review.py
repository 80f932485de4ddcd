"""A review of the three gaps test_known_gaps.py closes: what it found (a checkpoint named from
inside its run folder went unchecked, a resolved.json without a model was an internal error, a
checkpoint written before a spec value existed was named as another spec's, a `copy.copy` re-armed
the original's warning) and tests that kill the mutants of its round that survived."""

from __future__ import annotations

import copy
import gc
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_api_loops import _tokens
from test_commands import CLOCK_SPEC, tiny_text, train_tiny
from test_known_gaps import _clocked_hope, _run_with_checkpoint_of

from nldsl.cli import main
from nldsl.runtime import checkpoint as C
from nldsl.runtime import clock
from nldsl.runtime.clock import ClockWarning

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

OUTER_LEVEL = "    level outer { period = steps(3); update = outer }\n"


# The clock watch of copies -----------------------------------------------------------------------

def _warnings_of_own_loop(model, steps: int = 2) -> int:
    """The ClockWarnings a loop of its own (no clock) raises."""
    x = _tokens()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            model.loss(x[:, :-1], x[:, 1:]).backward()
            optimizer.step()
    return sum(issubclass(w.category, ClockWarning) for w in caught)


def test_the_watch_forgets_the_parameters_of_copies_that_are_gone():
    """Each copy adds its clocked parameters; without the weakref's callback they stayed forever."""
    model = _clocked_hope()
    gc.collect()
    before = len(clock._WATCHED)
    copies = [copy.deepcopy(model) for _ in range(3)]
    assert len(clock._WATCHED) > before
    del copies
    gc.collect()
    assert len(clock._WATCHED) == before
    twin = copy.deepcopy(model)  # a copy made after (ids of the dead ones may come back) is watched
    assert _warnings_of_own_loop(twin) == 1


def test_a_shallow_copy_does_not_warn_the_original_twice():
    """`copy.copy` shares the original's weights: its __setstate__ re-armed their warning."""
    model = _clocked_hope()
    assert _warnings_of_own_loop(model) == 1
    shallow = copy.copy(model)
    assert all(a is b for a, b in zip(shallow.parameters(), model.parameters(), strict=True))
    assert _warnings_of_own_loop(model) == 0


# A checkpoint of another spec in a run folder ----------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of CLOCK_SPEC and of variants: a wider model, one cms level fewer, one more."""
    text = tiny_text(tmp_path_factory.mktemp("data"))
    assert OUTER_LEVEL in CLOCK_SPEC
    variants = {"base": CLOCK_SPEC, "wider": CLOCK_SPEC.replace("dim = 16", "dim = 24"),
                "fewer": CLOCK_SPEC.replace(OUTER_LEVEL, ""),
                "extra": CLOCK_SPEC.replace(OUTER_LEVEL, OUTER_LEVEL + "    level extra { period = 96 }\n")}
    return {name: train_tiny(tmp_path_factory.mktemp(name), spec, text) for name, spec in variants.items()}


def _eval(target) -> int:
    return main(["eval", str(target), "--batches", "1", "--no-progress"])


def test_a_checkpoint_named_from_inside_its_run_folder_is_checked(runs, tmp_path, capsys, monkeypatch):
    """`nldsl eval step-N` in RUN/checkpoints (or `eval .` in the checkpoint) read the other spec's
    checkpoint silently: its relative path has no parent named checkpoints."""
    checkpoint = _run_with_checkpoint_of(runs, "wider", tmp_path / "run")
    monkeypatch.chdir(checkpoint.parent)
    assert _eval(checkpoint.name) == 1
    assert "do not fit the run's model" in capsys.readouterr().err
    monkeypatch.chdir(checkpoint)
    assert _eval(".") == 1
    assert "model.dim is 24 in the checkpoint but 16 in the run" in capsys.readouterr().err


def test_a_checkpoint_elsewhere_in_a_run_folder_is_read_alone(runs, tmp_path, capsys):
    """Only RUN/checkpoints/step-N is the run's: one copied to RUN/other/ is read with its own spec."""
    shutil.copytree(runs["base"], tmp_path / "run")
    shutil.copytree(C.latest_checkpoint(runs["wider"]), tmp_path / "run" / "other" / "step-000004")
    assert _eval(tmp_path / "run" / "other" / "step-000004") == 0
    assert capsys.readouterr().err == ""


def test_the_message_names_the_checkpoints_spec_first_and_the_runs_second(runs, tmp_path, capsys):
    _run_with_checkpoint_of(runs, "wider", tmp_path / "run")
    assert _eval(tmp_path / "run") == 1
    ours, theirs = json.loads((runs["base"] / "resolved.json").read_text()), \
        json.loads((runs["wider"] / "resolved.json").read_text())
    assert (f": {theirs['spec_path']} (sha256 {theirs['spec_sha256'][:12]}…) vs the run's {ours['spec_path']} "
            f"(sha256 {ours['spec_sha256'][:12]}…); ") in capsys.readouterr().err


def test_a_level_only_the_run_or_only_the_checkpoint_has_is_the_difference(runs, tmp_path, capsys):
    """A value the run has and the checkpoint lacks (a cms level fewer) was not looked for; one the
    checkpoint alone has is named by the checkpoint's spec (the run has no such level)."""
    _run_with_checkpoint_of(runs, "fewer", tmp_path / "fewer")
    assert _eval(tmp_path / "fewer") == 1
    assert 'model.block.cms.outer.name is absent in the checkpoint but "outer" in the run' in capsys.readouterr().err
    _run_with_checkpoint_of(runs, "extra", tmp_path / "extra")
    assert _eval(tmp_path / "extra") == 1
    assert 'model.block.cms.extra.name is "extra" in the checkpoint but absent in the run' in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["no model", "a wrong value"])
def test_a_damaged_resolved_json_leaves_the_checkpoint_readable(runs, tmp_path, capsys, damage):
    """`"model": null` was an internal error; a spec that does not validate must not stop the read."""
    _run_with_checkpoint_of(runs, "wider", tmp_path / "run")
    resolved = tmp_path / "run" / "resolved.json"
    run = json.loads(resolved.read_text())
    if damage == "no model":
        run["spec"]["model"] = None
    else:
        run["spec"]["model"]["dim"] = "sixteen"
    resolved.write_text(json.dumps(run))
    assert _eval(tmp_path / "run") == 0
    captured = capsys.readouterr()
    assert "loss" in captured.out and captured.err == ""


def test_a_checkpoint_written_before_a_spec_value_existed_is_the_runs_own(runs, tmp_path, capsys):
    """A checkpoint of an earlier nldsl lacks a value a later one added with its default, which a
    resume with the later one writes into resolved.json: it was named as another spec's."""
    shutil.copytree(runs["base"], tmp_path / "run")
    checkpoint = C.latest_checkpoint(tmp_path / "run")
    record = json.loads((checkpoint / C.RECORD_FILE).read_text())
    level = record["spec"]["model"]["block"]["sublayers"][0]["level"]
    assert level.pop("grad_through_writes") is True  # the default
    record[C.RECORD_DIGEST] = C.record_digest(record)
    (checkpoint / C.RECORD_FILE).write_text(json.dumps(record))
    assert _eval(tmp_path / "run") == 0
    assert capsys.readouterr().err == ""


# `nldsl graph` of level definitions --------------------------------------------------------------

LEVELS = """\
level big { period = 8192 }
level res { state = residual_mlp(expansion = 1.5); period = steps(2); update = outer }
level once { period = steps(1); update = outer }
level ortho { state = mlp; period = 16; readout = chunk_start; orthogonalize = newton_schulz(steps = 3) }
level gen { values = generated; period = 1; grad_through_writes = false }
"""


def _node(dot: str, name: str) -> str:
    start = dot.index(f'"levels.{name}" [')
    return dot[start:dot.index("</TABLE>", start)]


def test_graph_of_level_definitions_draws_each_as_written(tmp_path, capsys):
    spec = tmp_path / "levels.nl"
    spec.write_text(LEVELS)
    assert main(["graph", str(spec)]) == 0
    dot = capsys.readouterr().out
    # frequency clusters, slowest first: 2 steps are 2 × 8 × 256 = 4096 tokens (train's defaults)
    assert [dot.index(f'"levels.{name}" [') for name in ("big", "res", "once", "ortho", "gen")] == \
        sorted(dot.index(f'"levels.{name}" [') for name in ("big", "res", "once", "ortho", "gen"))
    assert ">1 step<" in _node(dot, "once") and ">2 steps<" in _node(dot, "res")
    assert ">1 token<" in _node(dot, "gen") and "v̂ = M(v)" in _node(dot, "gen")
    assert "no gradient through writes" in _node(dot, "gen")
    assert ">residual_mlp[d → 1.5d → d]<" in _node(dot, "res")
    assert "updated by the outer optimizer" in _node(dot, "res")
    assert ">gd+NS3, readout chunk_start<" in _node(dot, "ortho")
    assert ">mlp[d → 4d → d]<" in _node(dot, "ortho")


def test_a_level_definition_stepped_every_step_is_not_titled_outer_without_an_outer_level(tmp_path, capsys):
    """The cluster of levels updated every outer step is "every step (outer)" in a model's graph,
    which has the outer level; a file of level definitions has none, so it is "every step"."""
    spec = tmp_path / "levels.nl"
    spec.write_text(LEVELS)
    assert main(["graph", str(spec)]) == 0
    dot = capsys.readouterr().out
    assert "<B>every step</B>" in dot and "(outer)" not in dot
    assert main(["graph", str(Path(__file__).parents[1] / "specs" / "titans_lmm.nl")]) == 0
    assert "<B>every step (outer)</B>" in capsys.readouterr().out

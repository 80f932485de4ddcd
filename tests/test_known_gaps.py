"""Three gaps a review found, each test failing before its change: copies of a model lost the clock
watch, `nldsl eval` read a checkpoint copied in from another run's spec without a word, and
`nldsl graph` refused a file of `level` definitions."""

from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_api_loops import HOPE, _load, _tokens
from test_commands import CLOCK_SPEC, tiny_text, train_tiny

from nldsl.cli import main
from nldsl.runtime import checkpoint as C
from nldsl.runtime.clock import ClockWarning

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# 1. The clock watch of a copy ---------------------------------------------------------------------

def _clocked_hope():
    model = _load(HOPE, train__seq_len=64, train__batch=1)
    assert model.module.CLOCK_STEPS == {"cms.slow_": 64}
    return model


def _unpickled(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _own_loop(model, steps: int = 3) -> list[warnings.WarningMessage]:
    """`loss.backward(); optimizer.step()` with no clock: the ClockWarnings it raised."""
    x = _tokens()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.warns(ClockWarning, match=r"level `cms.slow` is on the continuum clock") as caught:
        for _ in range(steps):
            optimizer.zero_grad()
            model.loss(x[:, :-1], x[:, 1:]).backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, ClockWarning)]


@pytest.mark.parametrize("make_copy", [copy.deepcopy, _unpickled], ids=["deepcopy", "torch.load"])
def test_a_copy_of_a_clocked_model_is_watched_once_and_the_original_still_is(make_copy):
    """A deepcopy or an unpickled model stepped its slow level at every call without a word."""
    model = _clocked_hope()
    twin = make_copy(model)
    assert twin is not model and all(a is not b for a, b in zip(twin.parameters(), model.parameters(), strict=True))
    assert len(_own_loop(twin)) == 1  # the copy's own warning, once: not one per watch
    assert len(_own_loop(model)) == 1  # the original is still watched


@pytest.mark.parametrize("make_copy", [copy.deepcopy, _unpickled], ids=["deepcopy", "torch.load"])
def test_training_step_on_a_copy_is_not_warned(make_copy):
    """The copy's continuum clock (carried from the original, which stepped once) ticks the copy's
    own weights: no ClockWarning (pyproject makes one an error)."""
    model, x = _clocked_hope(), _tokens()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.module.training_step(model, optimizer, x[:, :-1], x[:, 1:])
    twin = make_copy(model)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    slow = dict(twin.named_parameters())["blocks.0.cms.slow_w1"]
    before = slow.detach().clone()
    for _ in range(3):
        twin.module.training_step(twin, optimizer, x[:, :-1], x[:, 1:])
    assert torch.equal(slow.detach(), before)  # its first step is the 64th call's


# 2. A checkpoint of another spec in a run folder --------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of CLOCK_SPEC and of variants: a wider model, another cms period, more steps."""
    text = tiny_text(tmp_path_factory.mktemp("data"))
    variants = {"base": CLOCK_SPEC, "wider": CLOCK_SPEC.replace("dim = 16", "dim = 24"),
                "period": CLOCK_SPEC.replace("level slow { period = 48 }", "level slow { period = 96 }"),
                "longer": CLOCK_SPEC.replace("steps = 4", "steps = 5")}
    return {name: train_tiny(tmp_path_factory.mktemp(name), spec, text) for name, spec in variants.items()}


def _run_with_checkpoint_of(runs: dict[str, Path], other: str, to: Path) -> Path:
    """A copy of the base run whose latest checkpoint is the one of run `other`, copied in."""
    shutil.copytree(runs["base"], to)
    foreign = C.latest_checkpoint(runs[other])
    shutil.copytree(foreign, to / C.CHECKPOINTS / "step-000099")
    (to / C.CHECKPOINTS / C.LATEST).write_text("step-000099\n")
    return to / C.CHECKPOINTS / "step-000099"


def _spec_path(run: Path) -> str:
    return json.loads((run / "resolved.json").read_text())["spec_path"]


@pytest.mark.parametrize("by_path", [False, True], ids=["run folder", "checkpoint folder"])
def test_a_checkpoint_of_another_model_in_a_run_folder_is_refused(runs, tmp_path, capsys, by_path):
    """It was evaluated silently, with its own spec, under the run's name."""
    checkpoint = _run_with_checkpoint_of(runs, "wider", tmp_path / "run")
    target = checkpoint if by_path else tmp_path / "run"
    assert main(["eval", str(target), "--batches", "1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    err = captured.err
    assert err.startswith(f"error: the checkpoint {checkpoint} was written by another spec than the run ")
    assert _spec_path(runs["wider"]) in err and _spec_path(runs["base"]) in err
    assert "model.dim is 24 in the checkpoint but 16 in the run" in err and "do not fit the run's model" in err
    assert main(["generate", str(target), "--tokens", "1"]) == 1
    assert "written by another spec" in capsys.readouterr().err


def test_a_checkpoint_of_another_spec_whose_weights_fit_is_read_with_a_warning(runs, tmp_path, capsys):
    _run_with_checkpoint_of(runs, "period", tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), "--batches", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "loss" in captured.out
    assert captured.err.startswith("warning: the checkpoint ") and captured.err.count("\n") == 1
    assert _spec_path(runs["period"]) in captured.err and _spec_path(runs["base"]) in captured.err
    assert "model.block.cms.slow.period is 96 in the checkpoint but 48 in the run" in captured.err
    assert "read with the spec it recorded" in captured.err


def test_a_runs_own_checkpoints_and_train_values_a_resume_may_change_say_nothing(runs, tmp_path, capsys):
    assert main(["eval", str(runs["base"]), "--batches", "1", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    _run_with_checkpoint_of(runs, "longer", tmp_path / "run")  # train.steps, as `--resume --set` changes it
    assert main(["eval", str(tmp_path / "run"), "--batches", "1", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


# 3. `nldsl graph` of a file of level definitions ---------------------------------------------------

LEVELS = """\
# A library of levels.
const chunk = 16

level deep_memory {
  state = mlp(depth = 3, expansion = 2)
  objective = l2
  lr = learned(max = 0.005)
  momentum = learned(max = 0.9)
  period = chunk
}

level slow_mlp {
  period = 4096
  init = zeros
}
"""


def test_graph_draws_a_file_of_level_definitions(tmp_path, capsys):
    """It was refused: "defines no `model` or `optimizer` section, so there is nothing to draw"."""
    spec = tmp_path / "levels.nl"
    spec.write_text(LEVELS)
    assert main(["graph", str(spec)]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith(f"// Level graph of {spec}")
    assert '"levels.deep_memory" [shape=box' in dot and '"levels.slow_mlp" [shape=box' in dot
    assert "level definition, d: the width where it is used" in dot
    assert ">mlp[d → 2d → 2d → d]<" in dot and ">linear[d → d]<" in dot
    assert "η: per token, β: per token" in dot and "gd+momentum" in dot and "starts at zero" in dot
    assert "label=<<B>every 16 tokens</B>>" in dot and "label=<<B>every 4096 tokens</B>>" in dot
    assert "outer level" not in dot and "params" not in dot and " -> " not in dot  # no width, no count, no edges
    assert main(["graph", str(spec), "--set", "chunk=32", "--format", "json"]) == 0
    graph = json.loads(capsys.readouterr().out)
    assert [node["id"] for node in graph["nodes"]] == ["levels.deep_memory", "levels.slow_mlp"]
    assert graph["nodes"][0]["period"] == "32 tokens" and graph["edges"] == []


def test_graph_of_levels_beside_optimizers_and_of_blocks_alone(tmp_path, capsys):
    both = tmp_path / "both.nl"
    both.write_text(LEVELS + (Path(__file__).parent.parent / "specs/optimizers/adamw.nl").read_text())
    assert main(["graph", str(both)]) == 0
    dot = capsys.readouterr().out
    assert '"levels.slow_mlp"' in dot and '"optimizers.adamw"' in dot
    blocks = tmp_path / "blocks.nl"
    blocks.write_text("block b {\n  mlp { }\n}\n")
    assert main(["graph", str(blocks)]) == 1
    err = capsys.readouterr().err
    assert "defines no `model`, `optimizer` or `level` section, so there is nothing to draw" in err
    assert "a `block` is drawn where a model uses it" in err and err.count("\n") == 1

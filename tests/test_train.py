"""`nldsl train`: the run folder, the schedule, the continuum clock, exact resume, and the one-line errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from conftest import shipped_spec_paths
from nldsl.compiler.optimizers import build_optimizer
from test_interpreter import COVERAGE, COVERAGE_TRAIN, model_text

from nldsl import loader
from nldsl.checker import check_file, check_text
from nldsl.cli import main
from nldsl.runtime import checkpoint as C
from nldsl.runtime import data as D
from nldsl.runtime import memory as M
from nldsl.runtime import train as T
from nldsl.runtime.interrupt import ReportedInterrupt, deferred_interrupt
from nldsl.semantics import in_context_levels, runs_chunk_loop
from nldsl.spec import BuiltinOptimizer

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "dim=32", "--set", "model.layers=1", "--set", "train.seq_len=32", "--set", "train.batch=4",
        "--set", "train.steps=6"]
CLOCK_SPEC = """\
# A tiny model whose CMS has an in-context level and two levels on the continuum clock.
block tiny_block {
  attention { heads = 2 }
  cms {
    level fast { period = 8 }
    level slow { period = 48 }
    level outer { period = steps(3); update = outer }
  }
}

model tiny {
  vocab = 256
  dim = 16
  layers = 1
  block from tiny_block { }
}

train {
  optimizer = sgd(lr = 0.1, momentum = 0.0)
  steps = 6
  batch = 2
  seq_len = 16
  warmup = 0
  schedule = constant
  clip = 0
}
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(600)))
    return path


@pytest.fixture()
def clock_spec(tmp_path) -> Path:
    path = tmp_path / "clock.nl"
    path.write_text(CLOCK_SPEC)
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in metrics(run_dir) if "loss" in entry}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def test_the_schedule_warms_up_then_decays_to_the_floor():
    plan = loader.check(REPO / "specs/transformer.nl", ["train.steps=100", "train.warmup=10"]).spec.train
    factors = [T.learning_rate_factor(step, plan) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(plan.min_lr_ratio)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    linear = plan.model_copy(update={"schedule": "linear", "warmup": 0})
    assert T.learning_rate_factor(49, linear) == pytest.approx(1 - (1 - plan.min_lr_ratio) * 49 / 99)
    constant = plan.model_copy(update={"schedule": "constant", "warmup": 0})
    assert {T.learning_rate_factor(s, constant) for s in range(100)} == {1.0}



@pytest.mark.parametrize("text", ["adamw(lr = 0.01, weight_decay = 0.1)", "sgd(lr = 0.1, momentum = 0.9)"])
def test_builtin_optimizers_take_torch_fused_kernels_with_the_same_steps(text):
    spec = check_text(f"train {{ optimizer = {text} }}").spec.train.optimizer
    assert isinstance(spec, BuiltinOptimizer)
    torch.manual_seed(0)
    named = [("w", torch.nn.Parameter(torch.randn(8, 6, dtype=torch.float64))),
             ("b", torch.nn.Parameter(torch.randn(6, dtype=torch.float64)))]
    fused = build_optimizer(named, spec)
    assert all(group["fused"] for group in fused.param_groups)
    copies = [(name, torch.nn.Parameter(p.detach().clone())) for name, p in named]
    plain = build_optimizer(copies, spec)
    for group in plain.param_groups:
        group["fused"] = False  # the per-tensor loop: torch reads the flag at every step
    for _ in range(5):
        grads = [torch.randn_like(p) for _, p in named]
        for (_, p), (_, c), g in zip(named, copies, grads):
            p.grad, c.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for (_, p), (_, c) in zip(named, copies):
        torch.testing.assert_close(p, c, rtol=1e-12, atol=1e-12)

def test_the_clock_sums_gradients_and_releases_them_only_when_it_fires():
    slow = torch.nn.Parameter(torch.zeros(3))
    fast = torch.nn.Parameter(torch.zeros(3))
    named = [("blocks.0.cms.slow_w1", slow), ("blocks.0.mlp.w_up", fast), ("embed", torch.nn.Parameter(torch.zeros(1)))]
    clock = T.ContinuumClock(named, {"cms.slow_": 3, "cms.fast_": 1})
    assert [name for name, _, _ in clock.members] == ["blocks.0.cms.slow_w1"]
    released = []
    for step in range(6):
        slow.grad = torch.full((3,), float(step + 1))
        fast.grad = torch.ones(3)
        clock.tick(step)
        released.append(None if slow.grad is None else slow.grad[0].item())
        assert torch.equal(fast.grad, torch.ones(3))
    assert released == [None, None, 1 + 2 + 3, None, None, 4 + 5 + 6]


def test_a_clock_level_takes_only_its_own_weights_not_those_of_a_level_named_after_it():
    from nldsl.runtime.clock import clock_prefix

    clocks = {"cms.slow_": 8, "cms.slow_fast_": 16}
    assert clock_prefix("blocks.0.cms.slow_w1", clocks) == "cms.slow_"
    assert clock_prefix("_orig_mod.blocks.0.cms.slow_w1", clocks) == "cms.slow_"  # a torch.compile'd model
    assert clock_prefix("blocks.0.cms.slow_fast_w2", clocks) == "cms.slow_fast_"
    assert clock_prefix("blocks.1.par.cms.slow_w1", {"par.cms.slow_": 4}) == "par.cms.slow_"  # in a parallel
    assert clock_prefix("blocks.1.par.cms.slow_w1", clocks) is None  # not the top-level `cms` clock
    assert clock_prefix("blocks.0.cms.slow_fast_w2", {"cms.slow_": 8}) is None
    assert clock_prefix("blocks.0.cms.fast_w1", clocks) is None
    assert clock_prefix("blocks.0.xcms.slow_w1", clocks) is None


def test_resolved_values_say_where_every_value_came_from():
    path = REPO / "specs/titans_lmm.nl"
    lines = path.read_text().splitlines()

    def line_of(text: str) -> str:
        return f"{path}:{next(i for i, line in enumerate(lines, 1) if line.strip().startswith(text))}"

    result = loader.check(path, ["dim=32", "train.steps=7"])
    values = T.resolved_values(result.spec.model_dump(mode="json"), dict(result.provenance))
    assert values["train.steps"] == {"value": 7, "from": "--set train.steps=7"}
    assert values["model.dim"]["value"] == 32
    assert values["model.block.lmm.level.period"]["from"] == line_of("period =")
    assert values["train.optimizer.lr"]["from"] == line_of("optimizer =")
    assert values["train.clip"] == {"value": 1.0, "from": "default"}


def test_train_writes_a_complete_run_folder(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.log_every=2",
                   "--data", str(text_file), "--run-dir", str(run_dir), "--no-compile", "--no-progress", "--sample"])
    out = capsys.readouterr().out
    assert status == 0
    assert (run_dir / "spec.nl").read_text() == (REPO / "specs/transformer.nl").read_text()
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["values"]["train.batch"] == {"value": 4, "from": "--set train.batch=4"}
    assert resolved["spec"]["model"]["dim"] == 32
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"]["kind"] == "files" and split["by"] == "position"
    entries = metrics(run_dir)
    assert [e["step"] for e in entries if "loss" in e] == [2, 4, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(entries[-2])
    assert {"eval_loss", "eval_perplexity", "eval_bpb"} <= set(entries[-1])
    checkpoint = run_dir / "checkpoints" / "step-000006"
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "training.safetensors", "record.json"}
    record = json.loads((checkpoint / "record.json").read_text())
    overrides = [a for a in TINY if a != "--set"] + ["train.log_every=2", "train.compile=false"]  # --no-compile
    assert record["overrides"] == overrides
    assert resolved["values"]["train.compile"] == {"value": False, "from": "--no-compile"}
    expected = loader.check(REPO / "specs/transformer.nl", overrides).spec.sha256
    assert record["spec_sha256"] == expected
    assert "bits per byte" in out and "sample (temperature 0.8" in out and "first step" in out
    assert out.count("bits per byte") == 1, "the last step's validation line is not repeated in the summary"
    assert (run_dir / "graph.svg").exists() or "graphviz" in out.lower()


def test_train_shows_the_specs_warnings_before_it_starts(tmp_path, text_file, capsys):
    """`nldsl train` says what `nldsl check` would warn of, first: here a --set that --no-compile
    shadows, whose invalid value was otherwise accepted without a word."""
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=1",
                   "--set", "train.compile=maybe", "--data", str(text_file), "--run-dir", str(tmp_path / "run"),
                   "--no-compile", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 0
    assert err.startswith("warning[W0706]: this override has no effect: "), err
    assert ("warning[W0706]: this override has no effect: `--no-compile` sets `train.compile` again, after every "
            "--set") in err
    assert "warning[W0706]: this override has no effect: `--set train.steps=1` sets `train.steps` again later" in err


def test_train_on_the_default_corpus_needs_no_data(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2",
                   "--run-dir", str(run_dir), "--no-compile", "--no-progress"])
    assert status == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"]["kind"] == "default" and split["by"] == "document"
    assert "default corpus" in capsys.readouterr().out


def test_a_closed_stdout_pipe_stops_training_with_a_clear_error(tmp_path):
    """`nldsl train … | head -3`: the reader exits, the next line printed fails; exit 1, never a silent 0."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "nldsl", "train", str(REPO / "specs/titans_lmm.nl"), *TINY,
               "--set", "train.steps=200", "--set", "train.eval_every=4", "--set", "train.checkpoint_every=0",
               "--run-dir", str(run_dir), "--no-compile", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = [process.stdout.readline() for _ in range(3)]  # run folder, data, model: then the steps
    assert first[0].startswith("run folder:") and first[2].startswith("model:")
    process.stdout.close()  # as `head` does
    err = process.stderr.read()
    assert process.wait(timeout=300) == 1, err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "the output was closed (its reader exited) after" in line and "continue with --resume" in line
    assert "Traceback" not in err and "Exception ignored" not in err
    assert list((run_dir / "checkpoints").glob("step-*"))


@pytest.mark.parametrize(("line", "said"), [
    ("data:", "before the first step: nothing was trained, and the run folder {run_dir} was removed"),
    ("step 6: validation", "after the last step; the run finished and its checkpoint is {run_dir}"),
    ("first step:", "after training; the run and its checkpoints are in {run_dir}"),
])
def test_a_closed_stdout_outside_the_steps_says_what_was_kept(tmp_path, monkeypatch, capsys, line, said):
    real_say = T._say

    def closed_at_that_line(context, message, error=False):
        if message.startswith(line):
            raise BrokenPipeError(32, "Broken pipe")
        real_say(context, message, error)

    monkeypatch.setattr(T, "_say", closed_at_that_line)
    monkeypatch.setattr(T, "_discard_stdout", lambda: None)  # pytest's capture is no pipe
    run_dir = tmp_path / "run"
    assert main(["train", str(REPO / "specs/titans_lmm.nl"), *TINY, "--run-dir", str(run_dir), "--no-compile",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: the output was closed (its reader exited) " + said.format(run_dir=run_dir) in err
    assert run_dir.exists() == (line != "data:")


@pytest.mark.parametrize(("stop", "done", "checkpoints", "rerun"), [
    (KeyboardInterrupt, 4, [3, 4], [5, 6]),  # Ctrl-C: the 4 steps done are checkpointed on the way out
    (RuntimeError, 4, [3], [4, 5, 6]),  # a crash: the run goes back to its last checkpoint, step 4's metrics dropped
    ("sigint during update", 5, [3, 5], [6]),  # Ctrl-C inside step 5's update: step 5 finishes and is kept
    ("sigterm during update", 5, [3, 5], [6]),  # a scheduler's SIGTERM acts as Ctrl-C does
    ("sigint during checkpoint", 3, [3], [4, 5, 6]),  # Ctrl-C inside step 3's save: the save finishes, once
    (BrokenPipeError, 4, [3, 4], [5, 6]),  # stdout's reader exited: saved as after Ctrl-C, then a clear error
    # the reader exited as step 5's line was printed, after its update: the weights saved are step 5's and
    # called so (they were saved as step 4, and the resumed run applied step 5 twice)
    ("pipe closed at step 5's line", 5, [3, 5], [6]),
])
def test_an_interrupted_or_crashed_run_resumes_exactly(tmp_path, text_file, monkeypatch, stop, done, checkpoints,
                                                       rerun):
    spec = REPO / "specs/titans_lmm.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=6", "train.log_every=1",
                 "train.checkpoint_every=3", "train.eval_every=0"]

    def run(run_dir: Path, resume: bool = False) -> T.TrainResult:
        options = T.TrainOptions(data=[str(text_file)], run_dir=run_dir, resume=resume, compile=False, progress=False)
        return T.train(loader.check(spec, overrides), overrides, options)

    whole = run(tmp_path / "whole")
    real = D.batch_at

    def stopped_at_step_5(text, seed, step, *args, **kwargs):
        if step == 4:
            raise stop
        return real(text, seed, step, *args, **kwargs)

    real_tick = T.ContinuumClock.tick

    def signalled_in_step_5s_update(clock, step):
        if step == 4:  # arrives between the loss and the optimizer step
            os.kill(os.getpid(), signal.SIGTERM if stop == "sigterm during update" else signal.SIGINT)
        return real_tick(clock, step)

    real_save, saves = T.C.save_checkpoint, []

    def signalled_in_step_3s_save(run_dir, step, *args, **kwargs):
        saves.append(step)
        if step == 3:  # a save cut here (under torchrun, where no save follows) left `latest` and pruning apart
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(run_dir, step, *args, **kwargs)

    real_say = T._say

    def closed_at_step_5s_line(context, message, error=False):
        if message.startswith("step 5/"):
            raise BrokenPipeError(32, "Broken pipe")
        real_say(context, message, error)

    if stop in ("sigint during update", "sigterm during update"):
        monkeypatch.setattr(T.ContinuumClock, "tick", signalled_in_step_5s_update)
    elif stop == "pipe closed at step 5's line":
        monkeypatch.setattr(T, "_say", closed_at_step_5s_line)
    elif stop == "sigint during checkpoint":
        monkeypatch.setattr(T.C, "save_checkpoint", signalled_in_step_3s_save)
    else:
        monkeypatch.setattr(D, "batch_at", stopped_at_step_5)
    discarded = []  # pytest's capture is no pipe to point at the null device (the subprocess test does that)
    monkeypatch.setattr(T, "_discard_stdout", lambda: discarded.append(True))
    expected = {"sigint during update": KeyboardInterrupt, "sigint during checkpoint": KeyboardInterrupt,
                "sigterm during update": KeyboardInterrupt, BrokenPipeError: T.UserError,
                "pipe closed at step 5's line": T.UserError}.get(stop, stop)
    with pytest.raises(expected) as raised:
        run(tmp_path / "cut")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the default SIGTERM is back after the run"
    if stop == "sigterm during update":
        assert raised.value.args == (signal.SIGTERM,), "the exit status is 143"
    if stop == "sigint during checkpoint":
        assert saves == [3], "the save ran whole; nothing was left to save again on the way out"
    if stop is BrokenPipeError:
        assert discarded and "the output was closed (its reader exited) after 4 step(s)" in str(raised.value)
        assert "step-000004 (step 4; continue with --resume)" in str(raised.value)
    assert sorted(losses(tmp_path / "cut")) == list(range(1, done + 1))
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "cut/checkpoints").glob("step-*")) == checkpoints
    monkeypatch.setattr(D, "batch_at", real)
    monkeypatch.setattr(T.ContinuumClock, "tick", real_tick)
    monkeypatch.setattr(T.C, "save_checkpoint", real_save)
    monkeypatch.setattr(T, "_say", real_say)
    if stop == "pipe closed at step 5's line":
        assert "after 5 step(s)" in str(raised.value) and "step-000005 (step 5;" in str(raised.value)
    resumed = run(tmp_path / "cut", resume=True)
    assert sorted(resumed.losses) == rerun
    logged = [(e["step"], e["loss"]) for e in metrics(tmp_path / "cut") if "loss" in e]
    assert logged == [(e["step"], e["loss"]) for e in metrics(tmp_path / "whole") if "loss" in e]
    assert dict(logged) == whole.losses and [step for step, _ in logged] == [1, 2, 3, 4, 5, 6]
    for name, tensor in weights(whole.checkpoint).items():
        assert torch.equal(tensor, weights(resumed.checkpoint)[name]), name


def test_ctrl_c_inside_an_update_waits_for_the_update_to_finish():
    done, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # delivered here, held until the block ends
            done.append("the rest of the update")
    assert done == ["the rest of the update"]
    assert signal.getsignal(signal.SIGINT) is before  # the usual handler is back


def test_a_process_that_ignores_ctrl_c_goes_on_ignoring_it_inside_an_update(monkeypatch):
    # a job started in the background (`&` in a script) inherits SIGINT ignored: an update must not
    # turn a Ctrl-C meant for others into a stop for this run
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    except KeyboardInterrupt:
        pytest.fail("an ignored Ctrl-C stopped the update")
    finally:
        signal.signal(signal.SIGINT, before)


def test_clock_levels_are_stepped_only_when_their_clock_fires(tmp_path, clock_spec, text_file):
    overrides = ["train.checkpoint_every=1", "train.keep_checkpoints=10", "train.eval_every=0"]
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "run", compile=False, progress=False)
    result = loader.check(clock_spec, overrides)
    assert loader.compile_module(result).CLOCK_STEPS == {"cms.slow_": 2, "cms.outer_": 3}
    T.train(result, overrides, options)
    torch.manual_seed(0)
    before = {n: p.detach() for n, p in loader.compile_module(result).build().named_parameters()}
    changed: dict[str, list[int]] = {"fast": [], "slow": [], "outer": []}
    for step in range(1, 7):
        after = weights(tmp_path / "run" / "checkpoints" / f"step-{step:06d}")
        for level in changed:
            name = f"blocks.0.cms.{level}_w1"
            if not torch.equal(after[name], before[name]):
                changed[level].append(step)
        before = after
    assert changed == {"fast": [1, 2, 3, 4, 5, 6], "slow": [2, 4, 6], "outer": [3, 6]}


def test_a_run_with_clock_levels_resumed_between_their_ticks_equals_one_run(tmp_path, clock_spec, text_file):
    """Resumed after step 1, the 2- and 3-step levels are mid-period: their summed gradients and the
    clock's count come back from the checkpoint, so the rest equals the uninterrupted run bit for bit."""
    overrides = ["train.checkpoint_every=1", "train.keep_checkpoints=10", "train.eval_every=0"]
    result = loader.check(clock_spec, overrides)

    def run(folder: Path, resume: bool = False) -> T.TrainResult:
        options = T.TrainOptions(data=[str(text_file)], run_dir=folder, resume=resume, compile=False, progress=False)
        return T.train(result, overrides, options)

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut")
    checkpoints = tmp_path / "cut" / "checkpoints"
    (checkpoints / "latest").write_text("step-000001\n")  # as if killed after step 1
    for step in range(2, 7):
        shutil.rmtree(checkpoints / f"step-{step:06d}")
    resumed = run(tmp_path / "cut", resume=True)
    assert {step: loss for step, loss in losses(tmp_path / "cut").items() if step > 1} == \
        {step: loss for step, loss in losses(tmp_path / "whole").items() if step > 1}
    whole_weights, resumed_weights = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert all(torch.equal(tensor, resumed_weights[name]) for name, tensor in whole_weights.items())


def test_sgd_momentum_trains_a_level_on_the_continuum_clock(tmp_path, text_file, capsys):
    """A cms level whose period passes seq_len is stepped by the outer optimizer on the continuum
    clock, so its weights get their first gradient after the others' (at its first tick). torch's
    fused SGD refused that mix of momentum buffers with an internal error; found by a resume audit
    of random specs trained with `sgd(…, momentum = 0.9)`."""
    spec = tmp_path / "late.nl"
    spec.write_text("model late {\n  vocab = 256\n  dim = 16\n  layers = 1\n  block {\n    cms {\n"
                    "      level fast { period = 2 }\n      level slow { period = 10 }\n    }\n  }\n}\n"
                    "train { optimizer = sgd(lr = 0.01, momentum = 0.9)  steps = 3  batch = 1  seq_len = 6  "
                    "eval_every = 0  log_every = 1 }\n")
    status = main(["train", str(spec), "--data", str(text_file), "--run-dir", str(tmp_path / "run"), "--no-compile",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert status == 0 and "internal error" not in err, err
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]


def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, text_file, monkeypatch,
                                                                              capsys):
    real = F.cross_entropy
    calls = []

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    run_dir = tmp_path / "run"
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.checkpoint_every=1",
                   "--set", "train.log_every=1", "--data", str(text_file), "--run-dir", str(run_dir), "--no-compile",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1
    assert "at step 3" in err and "step-000002" in err and "Traceback" not in err
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert not (run_dir / "checkpoints" / "step-000003").exists()
    assert max(losses(run_dir)) == 2


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    common = ["--data", str(text_file), "--run-dir", str(run_dir), "--no-compile", "--no-progress"]
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2", *common]) == 0
    capsys.readouterr()
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2", *common,
                 "--set", "train.seed=7", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "written by another spec" in err and "train.seed is 0 in the checkpoint but 7 now" in err
    assert "only train.steps" in err and "leaves out" not in err, "every --set of the run is given"
    # a resume without the run's --set flags: the message names them
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=2", *common, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "model.dim is 32 in the checkpoint but 128 now" in err
    assert ("(the run was trained with --set dim=32 --set model.layers=1 --set train.seq_len=32 --set "
            "train.batch=4, which this command leaves out: give them again)") in err
    # the text differs in a value that may not change and an override in one that may: the message
    # names the value, not the overrides (which differ only in the allowed train.steps)
    edited = tmp_path / "edited" / "transformer.nl"
    edited.parent.mkdir()
    edited.write_text((REPO / "specs/transformer.nl").read_text().replace("heads = 4", "heads = 2"))
    assert main(["train", str(edited), *TINY, "--set", "train.steps=3", *common, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "model.block.attention.heads is 4 in the checkpoint but 2 now" in err and "overrides" not in err
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2", *common]) == 1
    assert "--resume" in capsys.readouterr().err
    commented = tmp_path / "transformer.nl"  # the same spec with a comment more: the same values
    commented.write_text("# a note\n" + (REPO / "specs/transformer.nl").read_text(), encoding="utf-8")
    assert main(["train", str(commented), *TINY, "--set", "train.steps=2", *common, "--resume"]) == 0
    assert "resolve to the same values" in capsys.readouterr().out
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--run-dir", str(tmp_path / "nowhere"),
                 "--resume", "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_refuses_a_validation_split_that_changed(tmp_path, text_file, capsys):
    data = tmp_path / "text.txt"
    data.write_text(text_file.read_text())
    common = ["--data", str(data), "--run-dir", str(tmp_path / "run"), "--no-compile", "--no-progress"]
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2", *common]) == 0
    with data.open("a") as file:  # the training part stays as it was; the validation part grows
        file.write("x\n")
    capsys.readouterr()
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=3", *common,
                 "--resume"]) == 1
    assert "the validation text differs from the one" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-000002"]


def test_the_run_folders_spec_resumes_a_spec_with_imports(tmp_path, text_file, capsys):
    specs = tmp_path / "specs"
    (specs / "lib").mkdir(parents=True)
    (specs / "lib" / "blocks.nl").write_text("block tiny_block {\n  attention { heads = 2 }\n  mlp { }\n}\n")
    (specs / "tiny.nl").write_text('import "lib/blocks.nl" as lib\nmodel tiny {\n  dim = 32\n  layers = 1\n'
                                   "  block from lib.tiny_block { }\n}\n")
    run_dir = tmp_path / "run"
    common = ["--set", "train.seq_len=32", "--set", "train.batch=4", "--data", str(text_file), "--run-dir",
              str(run_dir), "--no-compile", "--no-progress"]
    assert main(["train", str(specs / "tiny.nl"), "--set", "train.steps=2", *common]) == 0
    assert (run_dir / "lib" / "blocks.nl").read_text() == (specs / "lib" / "blocks.nl").read_text()
    (specs / "lib" / "blocks.nl").write_text("block tiny_block {\n  mlp { }\n}\n")  # the original moves on
    capsys.readouterr()
    assert main(["train", str(run_dir / "spec.nl"), "--set", "train.steps=3", *common, "--resume"]) == 0, \
        capsys.readouterr().err
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert "outside the spec's folder" not in capsys.readouterr().err
    # an import from outside the spec's folder has no place in the run folder: training says so
    (specs / "sub").mkdir()
    (specs / "sub" / "tiny.nl").write_text((specs / "tiny.nl").read_text().replace('"lib/', '"../lib/'))
    common[common.index(str(run_dir))] = str(tmp_path / "outside")
    assert main(["train", str(specs / "sub" / "tiny.nl"), "--set", "train.steps=1", *common]) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "lib/blocks.nl is imported from outside the spec's folder" in err, err


def test_a_resume_reads_the_runs_files_with_the_encoding_it_recorded(tmp_path, text_file, capsys):
    data = tmp_path / "latin.txt"
    data.write_bytes(text_file.read_text().replace("function", "fonctión").encode("latin-1"))
    common = ["--run-dir", str(tmp_path / "run"), "--no-compile", "--no-progress", "--set", "train.seq_len=32",
              "--set", "train.batch=2", "--set", "dim=32", "--set", "model.layers=1"]
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=1", *common, "--data", str(data),
                 "--data-encoding", "latin-1"]) == 0
    capsys.readouterr()
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=2", *common, "--resume"]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    # another encoding that reads the bytes as other text (0xf3: ó in Latin-1, σ in Greek) is refused,
    # naming the encodings rather than --data
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=3", *common, "--resume",
                 "--data-encoding", "iso8859-7"]) == 1
    err = capsys.readouterr().err
    assert "the run read its files as latin-1, this resume as iso8859-7" in err, err


def test_a_resume_may_change_how_many_chunks_one_compiled_call_runs(tmp_path, text_file, capsys):
    """`train.chunks_per_call` changes how steps execute, not what they compute (CONTINUABLE)."""
    common = ["--run-dir", str(tmp_path / "run"), "--no-compile", "--no-progress", "--data", str(text_file), *TINY,
              "--set", "train.compile=chunks"]
    assert main(["train", str(REPO / "specs/titans_lmm.nl"), "--set", "train.steps=1", *common]) == 0
    capsys.readouterr()
    assert main(["train", str(REPO / "specs/titans_lmm.nl"), "--set", "train.steps=2", "--set",
                 "train.chunks_per_call=2", *common, "--resume"]) == 0, capsys.readouterr().err
    assert main(["train", str(REPO / "specs/titans_lmm.nl"), "--set", "train.steps=3", "--set",
                 "train.seed=5", *common, "--resume"]) == 1  # beside a change that is refused


@pytest.mark.slow
def test_a_run_compiled_per_block_trains_and_resumes_eagerly(tmp_path, text_file, capsys):
    """`train.compile = blocks` trains through the CLI, says what it compiles, and a resume may run
    eagerly (how steps execute is CONTINUABLE)."""
    common = ["--run-dir", str(tmp_path / "run"), "--no-progress", "--data", str(text_file), *TINY,
              "--set", "model.layers=3", "--set", "train.eval_every=0"]
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=2", "--set",
                 "train.compile=blocks", *common]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "compiled per block" in out and "compiling one block (every block reuses it)" in out, out
    assert main(["train", str(REPO / "specs/transformer.nl"), "--set", "train.steps=3", "--set",
                 "train.compile=blocks", *common, "--no-compile", "--resume"]) == 0, capsys.readouterr().err


def test_the_notice_before_the_first_step_names_what_compiles():
    assert T.compile_notice(True).startswith("compiling the training step on the first step")
    assert T.compile_notice("blocks").startswith("compiling one block (every block reuses it)")
    assert T.compile_notice("chunks").startswith("compiling each chunk body (once per shape)")
    assert "--no-compile runs eagerly" in T.compile_notice(True)


def test_an_import_named_like_the_runs_own_files_never_replaces_them(tmp_path, text_file):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "spec.nl").write_text("block tiny_block {\n  mlp { }\n}\n")  # copies to RUN/spec.nl
    (specs / "tiny.nl").write_text('import "spec.nl" as lib\nmodel tiny {\n  dim = 32\n  layers = 1\n'
                                   "  block from lib.tiny_block { }\n}\n")
    run_dir = tmp_path / "run"
    assert main(["train", str(specs / "tiny.nl"), "--set", "train.steps=1", "--set", "train.seq_len=32", "--set",
                 "train.batch=2", "--data", str(text_file), "--run-dir", str(run_dir), "--no-compile",
                 "--no-progress"]) == 0
    assert (run_dir / "spec.nl").read_text() == (specs / "tiny.nl").read_text(), "spec.nl is the spec's"


def test_a_finished_run_trains_longer_with_resume_and_more_steps(tmp_path, text_file, capsys, monkeypatch):
    """Under a constant schedule the continued run is the run that was trained that long from the start."""
    spec = REPO / "specs/titans_lmm.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.log_every=1",
                 "train.eval_every=0", "train.schedule=constant", "train.warmup=0"]

    def run(run_dir: Path, steps: int, resume: bool = False) -> T.TrainResult:
        chosen = [*overrides, f"train.steps={steps}"]
        options = T.TrainOptions(data=[str(text_file)], run_dir=run_dir, resume=resume, compile=False, progress=False)
        return T.train(loader.check(spec, chosen), chosen, options)

    whole = run(tmp_path / "whole", 5)
    run(tmp_path / "longer", 3)
    capsys.readouterr()
    continued = run(tmp_path / "longer", 5, resume=True)
    assert "continuing with changed train values: steps 3 → 5" in capsys.readouterr().out
    assert sorted(continued.losses) == [4, 5]
    assert {step: whole.losses[step] for step in (4, 5)} == continued.losses
    for name, tensor in weights(whole.checkpoint).items():
        assert torch.equal(tensor, weights(continued.checkpoint)[name]), name
    resolved = json.loads((tmp_path / "longer" / "resolved.json").read_text())
    assert resolved["spec"]["train"]["steps"] == 5  # the run folder records the values it now trains with
    # a continuation stopped before its first step leaves the description of what the run trained
    real = D.batch_at

    def stopped(text, seed, step, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "batch_at", stopped)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "longer", 7, resume=True)
    monkeypatch.setattr(D, "batch_at", real)
    assert json.loads((tmp_path / "longer" / "resolved.json").read_text())["spec"]["train"]["steps"] == 5


def test_init_from_starts_a_new_run_on_new_data_from_a_trained_models_weights(tmp_path, text_file, capsys):
    spec = REPO / "specs/titans_lmm.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.log_every=1",
                 "train.eval_every=0"]
    other_text = tmp_path / "other.txt"
    other_text.write_text("".join(f"class Widget{i}:\n    weight = {i * 7 % 13}\n\n" for i in range(800)))

    def run(run_dir: Path, data: Path, steps: int, **options) -> T.TrainResult:
        chosen = [*overrides, f"train.steps={steps}"]
        settings = T.TrainOptions(data=[str(data)], run_dir=run_dir, compile=False, progress=False, **options)
        return T.train(loader.check(spec, chosen), chosen, settings)

    trained = run(tmp_path / "trained", text_file, 3)
    capsys.readouterr()
    new = run(tmp_path / "new", other_text, 1, init_from=tmp_path / "trained")
    assert "starting from the weights of" in capsys.readouterr().out
    # its first loss is the trained model's loss on the new data's first batch: it started from those weights
    model = loader.load(spec, [*overrides, "train.steps=1"])
    model.load_state_dict(weights(trained.checkpoint))
    train_text = D.tokenize(D.ByteTokenizer(), D.load_split([str(other_text)]).train)
    inputs, targets = D.batch_at(train_text, 0, 0, 4, 32)
    with torch.no_grad():
        expected = model.loss(inputs, targets).item()
    assert new.losses[1] == pytest.approx(expected, rel=1e-6)
    record = json.loads((new.checkpoint / "record.json").read_text())
    assert record["initialized_from"] == str(trained.checkpoint.resolve()) and record["step"] == 1
    with pytest.raises(T.UserError, match="use one of them"):
        run(tmp_path / "new", other_text, 2, init_from=tmp_path / "trained", resume=True)
    wider = [*overrides, "dim=64", "train.steps=1"]
    with pytest.raises(T.UserError, match="written for another model"):
        T.train(loader.check(spec, wider), wider, T.TrainOptions(data=[str(other_text)], run_dir=tmp_path / "wide",
                                                                  compile=False, progress=False,
                                                                  init_from=tmp_path / "trained"))


def test_a_vocabulary_mismatch_is_refused_with_the_fix(tmp_path, capsys):
    # a tokenizer the spec names: the checker's E0508, pointing at the override
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.tokenizer=bpe(vocab=512)",
                   "--run-dir", str(tmp_path / "run"), "--no-compile"])
    err = capsys.readouterr().err
    assert status == 1 and "E0508" in err and "--set model.vocab=512" in err
    # the default byte tokenizer under another vocabulary: E0508 too, which `nldsl check` also gives (it
    # passed check and failed train, with a message naming no line: a researcher's audit)
    for command in (["train"], ["check"]):
        status = main([*command, str(REPO / "specs/transformer.nl"), *(TINY if command == ["train"] else []),
                       "--set", "model.vocab=300", *(["--run-dir", str(tmp_path / "run"), "--no-compile"]
                                                     if command == ["train"] else [])])
        err = capsys.readouterr().err
        assert status == 1 and "E0508" in err and "<--set" in err and "use --set model.vocab=256, or name" in err, err
    assert not (tmp_path / "run").exists()
    # … while the checker alone, as `nldsl.load` uses it, lets a model fed its own token ids keep it
    assert check_file(REPO / "specs/transformer.nl", ["model.vocab=300"]).ok
    # and the trainer's own check stays for a caller from Python
    with pytest.raises(T.UserError, match=r"add --set model\.vocab=256"):
        T.train(check_file(REPO / "specs/transformer.nl", ["model.vocab=300"]), [], T.TrainOptions(compile=False))


def test_tensorboard_logs_or_a_clear_message(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=2", "--data",
                   str(text_file), "--run-dir", str(run_dir), "--no-compile", "--no-progress", "--tensorboard"])
    assert status == 0
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "pip install 'tensorboard>=2.14'" in capsys.readouterr().err
    else:
        assert any((run_dir / "tensorboard").iterdir())


@pytest.mark.slow
def test_compiled_training_matches_eager_and_times_compilation_apart(tmp_path, text_file, capsys):
    spec = REPO / "specs/transformer.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=3", "train.log_every=1",
                 "train.eval_every=0"]
    runs = {}
    for compiled in (False, True):
        options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / str(compiled), compile=compiled,
                                 progress=False)
        runs[compiled] = T.train(loader.check(spec, overrides), overrides, options)
    for step, loss in runs[False].losses.items():
        assert math.isclose(runs[True].losses[step], loss, rel_tol=1e-5)
    assert "compilation + first step" in capsys.readouterr().out
    assert runs[True].tokens_per_second is not None


def test_train_recompute_reruns_chunk_stretches_and_keeps_the_losses(tmp_path, text_file, monkeypatch):
    from nldsl.runtime import chunked

    spec = REPO / "specs/titans_lmm.nl"
    base = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=3", "train.log_every=1",
            "train.eval_every=0", "train.compile=false"]
    stretches = []
    real = chunked.checkpoint

    def counted(*args, **kwargs):
        stretches.append(len(args[4]))  # the pieces of one stretch: checkpoint(_fold_as, mode, step, carry, pieces, …)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "checkpoint", counted)
    runs = {}
    for recompute in (0, 2):
        overrides = [*base, f"train.recompute={recompute}"]
        options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / str(recompute), compile=False,
                                 progress=False)
        runs[recompute] = T.train(loader.check(spec, overrides), overrides, options)
        assert bool(stretches) == bool(recompute)
    assert stretches and max(stretches) == 2
    for step, loss in runs[0].losses.items():
        assert math.isclose(runs[2].losses[step], loss, rel_tol=1e-6)


def test_train_chunks_per_call_groups_the_compiled_chunks_and_keeps_the_losses(tmp_path, text_file, monkeypatch):
    """`train.chunks_per_call` reaches the chunk loops of a run (bodies compiled by AOT autograd here,
    not inductor, to keep the test fast): the grouped run compiles folds of chunks and trains the same."""
    from nldsl.runtime import chunked

    monkeypatch.setattr(chunked.compiled_chunks.__wrapped__, "__defaults__", (True, "aot_eager", True, 1))
    monkeypatch.setattr(chunked, "_folds", {})
    spec = REPO / "specs/titans_lmm.nl"
    base = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=3", "train.log_every=1",
            "train.eval_every=0", "train.compile=chunks"]
    runs = {}
    for group in (1, 2):  # the memory's 2 chunks a sequence: one run of 2 (a loop shorter than K groups nothing)
        overrides = [*base, f"train.chunks_per_call={group}"]
        options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / str(group), progress=False)
        runs[group] = T.train(loader.check(spec, overrides), overrides, options)
        assert bool(chunked._folds) == (group > 1)
    for step, loss in runs[1].losses.items():
        assert math.isclose(runs[2].losses[step], loss, rel_tol=1e-5)
    assert json.loads((tmp_path / "2" / "resolved.json").read_text())["spec"]["train"]["chunks_per_call"] == 2


def _tiny_run(tmp_path: Path, text_file: Path, *extra: str, run_dir: Path | str | None = None) -> list[str]:
    """The arguments of a tiny `nldsl train` run that checkpoints every step; a --set in `extra`
    replaces the default one of its key (a key set twice is a warning)."""
    base = [*TINY, "--set", "train.checkpoint_every=1", "--set", "train.log_every=1", "--set", "train.eval_every=0"]
    given = {extra[i + 1].partition("=")[0] for i, arg in enumerate(extra[:-1]) if arg == "--set"}
    kept = [arg for pair in zip(base[::2], base[1::2], strict=True) if pair[1].partition("=")[0] not in given
            for arg in pair]
    return ["train", str(REPO / "specs/transformer.nl"), *kept, "--data", str(text_file),
            "--run-dir", str(tmp_path / "run" if run_dir is None else run_dir), "--no-compile", "--no-progress", *extra]


def strict_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl read as strict JSON (a bare NaN or Infinity is an error)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage", ["pointer to nothing", "garbage pointer", "record deleted"])
def test_a_damaged_latest_pointer_is_repaired_on_resume_and_the_next_checkpoint_is_saved(tmp_path, text_file,
                                                                                       capsys, damage):
    run_dir = tmp_path / "run"
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2")) == 0
    latest = run_dir / "checkpoints" / "latest"
    if damage == "pointer to nothing":
        latest.write_text("step-000009\n")
    elif damage == "garbage pointer":
        latest.write_bytes(b"\xff\xfe\x00garbage")
    else:
        (run_dir / "checkpoints" / "step-000002" / "record.json").unlink()
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=4", "--resume")) == 0
    out, err = capsys.readouterr()
    assert "warning:" in err and "Traceback" not in err
    assert f"at step {1 if damage == 'record deleted' else 2}" in out
    assert latest.read_text().strip() == "step-000004" and (run_dir / "checkpoints" / "step-000004").is_dir()
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]


@pytest.mark.parametrize("eval_every", [1, 0])  # caught by the evaluation, or by the checkpoint's check
def test_a_diverged_update_stops_the_run_without_checkpointing_it_and_resume_takes_a_lower_lr(
        tmp_path, text_file, capsys, eval_every):
    run_dir = tmp_path / "run"
    # no weight decay: lr × weight_decay above 1 is refused by the checker (E0302), before any step
    fine = ["--set", "train.warmup=0", "--set", f"train.eval_every={eval_every}", "--set", "train.eval_batches=1",
            "--set", "train.optimizer.weight_decay=0"]
    assert main(_tiny_run(tmp_path, text_file, *fine, "--set", "train.steps=2")) == 0
    capsys.readouterr()
    huge = ["--set", "train.optimizer.lr=1e18*1e18*1e4"]  # the first update makes every weight non-finite
    assert main(_tiny_run(tmp_path, text_file, *fine, *huge, "--set", "train.steps=5", "--resume")) == 1
    err = capsys.readouterr().err
    assert ("validation loss is nan" if eval_every else "weights are not finite") in err
    assert "after the update of step 3" in err and "step-000002" in err and "--set train.optimizer.lr=0.01" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert not (run_dir / "checkpoints" / "step-000003").exists()
    strict_metrics(run_dir)  # valid JSON throughout
    # the advice works: resume from the last good checkpoint with a lower learning rate
    assert main(_tiny_run(tmp_path, text_file, *fine, "--set", "train.optimizer.lr=1e-3", "--set", "train.steps=4",
                          "--resume")) == 0
    out = capsys.readouterr().out
    assert "optimizer.lr 0.003 → 0.001" in out and "from step 2 on" in out
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["spec"]["train"]["optimizer"]["lr"] == 0.001
    assert [e["step"] for e in strict_metrics(run_dir) if "loss" in e] == [1, 2, 3, 4]
    record = json.loads((run_dir / "checkpoints" / "step-000004" / "record.json").read_text())
    assert record["spec"]["train"]["optimizer"]["lr"] == 0.001  # the next resume compares with the new lr


def test_a_nan_after_a_risen_loss_names_the_earlier_checkpoints(tmp_path, text_file, capsys, monkeypatch):
    """A finite checkpoint is not a good one: the loss of steps 5–7 rose tenfold before step 8's was NaN,
    and the error says so and names the way back to the checkpoints before (a bad-input audit)."""
    real = T.compile_loss
    scale = {5: 10.0, 6: 10.0, 7: 10.0, 8: float("nan")}  # step 8: not the first after a checkpoint

    def rising_then_nan(*args, **kwargs):
        loss, calls = real(*args, **kwargs), []

        def scaled(inputs, targets):
            calls.append(1)
            return loss(inputs, targets) * scale.get(len(calls), 1.0)
        return scaled

    monkeypatch.setattr(T, "compile_loss", rising_then_nan)
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=9", "--set", "train.checkpoint_every=2",
                          "--set", "train.keep_checkpoints=3")) == 1
    err = capsys.readouterr().err
    assert "the last good checkpoint is" in err and "step-000006 (lower the learning rate" in err
    # the mean of steps 4–6, against a stretch of three before the rise
    assert re.search(r"The training loss had risen by that checkpoint: [\d.]+ on average over the 3 step\(s\) to it, "
                     r"against [\d.]+ over steps [1-2]–[3-4], the run's lowest: if it had begun to diverge, "
                     r"start a new run from an earlier checkpoint instead, e.g. --init-from", err)
    assert "step-000004 --run-dir NEW (kept: step-000002, step-000004)" in err


def test_a_risen_loss_is_told_from_the_noise_of_small_batches():
    """One batch's loss moves by ±30% on a calm run (the B 2, T 128 HOPE run of
    test_a_memory_that_diverges_mid_run_…: 1.82 at step 250, 2.69 at its checkpoint 300), so a
    checkpoint's loss is compared as a mean over steps, not as one batch against the run's luckiest."""
    noise = [2.4, 1.8, 3.1, 2.2, 2.7, 2.0, 2.9, 2.3, 2.5, 2.6]
    calm = {step: noise[step % 10] for step in range(1, 301)}
    assert calm[300] > 1.1 * min(calm.values())  # what the single losses said
    assert T.risen_loss(calm, 300) is None
    rising = {**calm, **{step: 4.0 for step in range(295, 301)}}  # the last six steps far above
    here, count, lowest, first, last = T.risen_loss(rising, 300)
    assert count == 10 and here == pytest.approx((sum(noise[1:5]) + 6 * 4.0) / 10)
    assert lowest == pytest.approx(sum(noise) / 10) and last - first == 9 and last < 295
    assert T.risen_loss({1: 2.0}, 1) is None and T.risen_loss({}, 3) is None and T.risen_loss({1: 2.0}, 2) is None


def test_non_finite_metrics_are_written_as_null(tmp_path):
    log = T.MetricsLog(tmp_path, None, tensorboard=False)
    log.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1})
    assert strict_metrics(tmp_path) == [{"step": 1, "loss": None, "grad_norm": None, "lr": 0.1}]


def test_unreadable_metrics_lines_are_dropped_with_a_warning_on_resume_and_time_goes_on(tmp_path, text_file,
                                                                                       capsys):
    run_dir = tmp_path / "run"
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2")) == 0
    with open(run_dir / "metrics.jsonl", "ab") as handle:  # what a kill during an append, or hands, leave
        handle.write(b'[1, 2]\n\xff\xfe{"step": 1}\n{"step": 9, "loss": 0.5}\n{"step": 2, "loss": 1.0')
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=3", "--resume")) == 0
    err = capsys.readouterr().err
    assert "dropped 3 unreadable line(s)" in err and "kept in metrics.jsonl.dropped" in err and "Traceback" not in err
    # nothing is lost: the unreadable lines as they were, and those past the checkpoint (step 9), in order
    assert (run_dir / "metrics.jsonl.dropped").read_bytes() == (
        b'[1, 2]\n\xff\xfe{"step": 1}\n{"step": 9, "loss": 0.5}\n{"step": 2, "loss": 1.0\n')
    entries = strict_metrics(run_dir)
    assert [e["step"] for e in entries if "loss" in e] == [1, 2, 3]
    times = [e["time_s"] for e in entries if "time_s" in e]
    assert times == sorted(times) and times[-1] > times[-2]  # time_s goes on after the resume, not from 0


def test_resume_without_run_dir_takes_only_this_specs_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(name: str) -> Path:
        folder = Path("runs") / name / "checkpoints" / "step-000001"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text("{}")
        (folder.parent / "latest").write_text("step-000001\n")
        return folder.parent.parent

    run("tf-small-20990101-000000")  # another spec (tf-small.nl), and newer
    with pytest.raises(T.UserError, match="nothing to resume"):
        T.latest_run_dir("specs/tf.nl")
    ours = run("tf-20240101-000000")
    run("tf-old-copy")  # not a name train makes
    assert T.latest_run_dir("specs/tf.nl") == ours
    run("tf-20240101-000000-2")
    tenth = run("tf-20240101-000000-10")  # runs started in the same second: by number, not by text
    assert T.latest_run_dir("specs/tf.nl") == tenth


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frozen = T.datetime.datetime(2026, 12, 3, 12, 0, 0)
    monkeypatch.setattr(T.datetime, "datetime", type("Frozen", (), {"now": staticmethod(lambda: frozen)}))
    made = [T.new_run_dir("specs/tf.nl") for _ in range(3)]
    assert [p.name for p in made] == ["tf-20261203-120000", "tf-20261203-120000-2", "tf-20261203-120000-3"]
    assert all(p.is_dir() for p in made)


def test_resume_with_fewer_steps_than_done_is_refused_and_changes_nothing(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2")) == 0
    resolved = (run_dir / "resolved.json").read_text()
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1", "--resume")) == 1
    err = capsys.readouterr().err
    assert "the run is already at step 2" in err and "with N > 2 to train it longer" in err, err
    assert (run_dir / "resolved.json").read_text() == resolved
    # a spec whose own steps are fewer, resumed without the run's --set train.steps: that is the fix
    # (a researcher's audit: the hint said only to pass more steps)
    short = tmp_path / "short.nl"
    short.write_text((REPO / "specs/transformer.nl").read_text().replace("steps = 200", "steps = 1"))
    arguments = _tiny_run(tmp_path, text_file, "--set", "train.steps=2", run_dir=tmp_path / "short")
    assert main([arguments[0], str(short), *arguments[2:]]) == 0
    capsys.readouterr()
    cut = arguments.index("train.steps=2")
    resumed = arguments[:cut - 1] + arguments[cut + 1:]  # without that --set
    assert main([resumed[0], str(short), *resumed[2:], "--resume"]) == 1
    err = capsys.readouterr().err
    assert "the run was trained with --set train.steps=2, which this command leaves out: give it again" in err, err


def _first_parameter_state(optimizer: dict) -> dict:
    return optimizer["state"]["items"][0][1]["dict"]


NOT_A_STATE = "it is not an optimizer's state"
WRONG_ENTRY = "where the optimizer keeps a"


@pytest.mark.parametrize("edit, said", [
    (lambda o: o.pop("state"), NOT_A_STATE), (lambda o: o.update(state=None), NOT_A_STATE),
    (lambda o: o.update(param_groups=3), NOT_A_STATE), (lambda o: o.pop("param_groups"), NOT_A_STATE),
    (lambda o: _first_parameter_state(o).update(exp_avg=None), WRONG_ENTRY),
    (lambda o: _first_parameter_state(o).pop("exp_avg_sq"), WRONG_ENTRY),
    # another parameter's moments: a tensor of the checkpoint, but not of this parameter's shape
    (lambda o: _first_parameter_state(o).update(exp_avg=o["state"]["items"][-1][1]["dict"]["exp_avg"]), WRONG_ENTRY),
    (lambda o: _first_parameter_state(o).update(exp_avg=o["state"]["items"][0][1]["dict"]["step"]), WRONG_ENTRY),
    # a group's settings: a flag that picks another code path, a number that is not one, its parameters
    (lambda o: o["param_groups"][0]["dict"].update(amsgrad=True), "`amsgrad` of parameter group 0 is True, where"),
    (lambda o: o["param_groups"][0]["dict"].update(betas="x"), "`betas` of parameter group 0 is 'x', where"),
    (lambda o: o["param_groups"][0]["dict"]["params"].reverse(), "parameter group 0 is not the run's"),
])
def test_a_resume_from_an_optimizer_state_no_optimizer_wrote_is_a_one_line_error(tmp_path, text_file, capsys, edit,
                                                                                  said):
    # a record edited by hand and its digest recomputed: past the digest, the state's shape is checked
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1")) == 0
    [checkpoint] = (tmp_path / "run" / "checkpoints").glob("step-*")
    record = json.loads((checkpoint / C.RECORD_FILE).read_text())
    edit(record["optimizer"]["dict"])
    record[C.RECORD_DIGEST] = C.record_digest(record)
    (checkpoint / C.RECORD_FILE).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2", "--resume")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: damaged optimizer state in ") and said in err and err.count("\n") == 1, err


def test_a_resume_from_optimizer_moments_of_another_dtype_is_a_one_line_error(tmp_path, text_file, capsys):
    # the training file rewritten with one moment in float64 and its hash recomputed, as the record's:
    # loaded, torch's fused AdamW would step on it with the wrong element size
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1")) == 0
    [checkpoint] = (tmp_path / "run" / "checkpoints").glob("step-*")
    record = json.loads((checkpoint / C.RECORD_FILE).read_text())
    key = _first_parameter_state(record["optimizer"]["dict"])["exp_avg"]["tensor"]
    tensors = safetensors.torch.load_file(checkpoint / C.TRAINING_FILE)
    tensors[key] = tensors[key].double()
    safetensors.torch.save_file(tensors, checkpoint / C.TRAINING_FILE)
    record["files"][C.TRAINING_FILE] = C.sha256_bytes((checkpoint / C.TRAINING_FILE).read_bytes())
    record[C.RECORD_DIGEST] = C.record_digest(record)
    (checkpoint / C.RECORD_FILE).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2", "--resume")) == 1
    err = capsys.readouterr().err
    assert "torch.float64 tensor, where the optimizer keeps a" in err and "torch.float32 tensor" in err, err


@pytest.mark.parametrize("device", ["meta", "mps", "xla"])
def test_an_unusable_device_is_refused_before_anything_is_read_or_made(tmp_path, text_file, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    status = main(_tiny_run(tmp_path, text_file, "--device", device))
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: --device") and "internal error" not in err
    assert not (tmp_path / "run").exists()


def test_a_failed_start_leaves_no_run_folder_and_an_empty_run_dir_is_refused(tmp_path, text_file, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an empty --run-dir would write, were it taken as "."
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n" * 3)
    assert main(_tiny_run(tmp_path, short)) == 1  # too short for one window: found after tokenizing
    assert "window" in capsys.readouterr().err and not (tmp_path / "run").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert main(_tiny_run(tmp_path, short, run_dir=existing)) == 1
    assert existing.is_dir()  # a folder the user made is left alone
    assert main(_tiny_run(tmp_path, short, run_dir=tmp_path / "made/deep/er/run")) == 1
    assert not (tmp_path / "made").exists(), "the folders made to hold the run go with it"
    assert main(_tiny_run(tmp_path, short, run_dir=tmp_path / "new/../other/run")) == 1
    assert not (tmp_path / "new").exists() and not (tmp_path / "other").exists(), "also through `..`"
    capsys.readouterr()
    too_long = tmp_path / "made" / ("x" * 300) / "run"  # the parent `made` is made, then the name fails
    assert main(_tiny_run(tmp_path, short, run_dir=too_long)) == 1
    assert "File name too long" in capsys.readouterr().err and not (tmp_path / "made").exists()
    (tmp_path / "runs").write_text("a file where the default runs/ folder goes")
    arguments = _tiny_run(tmp_path, short)
    at = arguments.index("--run-dir")
    assert main(arguments[:at] + arguments[at + 2:]) == 1
    assert re.search(r"^error: runs/transformer-[\d-]+: Not a directory \(runs is a file, not a folder\)$",
                     capsys.readouterr().err, re.M)
    with pytest.raises(SystemExit) as usage:  # not the current folder: argparse refuses it
        main(_tiny_run(tmp_path, text_file, run_dir=""))
    assert usage.value.code == 2 and "an empty path" in capsys.readouterr().err


def test_a_second_run_into_a_run_folder_in_use_is_refused(tmp_path, text_file, capsys):
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / T.LOCK_FILE, "a+b") as held:  # as a running `nldsl train` holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1")) == 1
        assert "another `nldsl train` is running" in capsys.readouterr().err
    assert not (run_dir / "checkpoints").exists()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1")) == 0  # released: a run can start


def test_a_folder_that_cannot_be_locked_trains_with_a_warning(tmp_path, text_file, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks_here(descriptor, operation):  # a network mount without flock
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks_here)
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=1")) == 0
    assert "warning: cannot lock" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_cms_layers_of_one_name_in_different_branches_keep_their_own_clocks():
    from nldsl.runtime.clock import clock_prefix
    from nldsl.runtime.evaluate import find_level

    text = ("model {\n  vocab = 13\n  dim = 8\n  block {\n"
            "    parallel p { combine = sum\n      cms c { level slow { update = outer; period = steps(2) } }\n"
            "      mlp m { } }\n"
            "    cms c { level slow { update = outer; period = steps(5) } }\n  }\n}\n")
    result = check_text(text, "clocks.nl")
    assert not [d for d in result.diagnostics if d.severity == "error"]
    module = loader.build_module(result.spec)
    assert module.CLOCK_STEPS == {"p.c.slow_": 2, "c.slow_": 5}
    clocked = {n: clock_prefix(n, module.CLOCK_STEPS) for n, _ in module.build().named_parameters()}
    assert clocked["blocks.0.p.c.slow_w1"] == "p.c.slow_"
    assert clocked["blocks.0.c.slow_w1"] == "c.slow_"
    assert find_level(result.spec, "p.c.slow_").period.count == 2
    assert find_level(result.spec, "c.slow_").period.count == 5
    assert find_level(result.spec, "p.slow_") is None


def test_a_new_run_refuses_a_folder_of_the_users_own_files(tmp_path, text_file, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "spec.nl").write_text("# my unsaved edits\n")
    (folder / "resolved.json").write_text('{"notes": "mine"}')
    status = main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--data", str(text_file),
                   "--run-dir", str(folder), "--no-compile", "--no-progress"])
    assert status == 1 and "not an nldsl run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["resolved.json", "spec.nl"]
    assert (folder / "spec.nl").read_text() == "# my unsaved edits\n"


def test_a_new_bpe_run_trains_its_own_tokenizer_and_a_resume_needs_the_runs(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # an earlier run that stopped before its first checkpoint, with a tokenizer of another vocabulary
    D.write_json(run_dir / "resolved.json", {"spec_sha256": "0" * 64, "values": {}})
    D.BPETokenizer.train("an unrelated text " * 50, 300).save(run_dir / "tokenizer.json")
    bpe = ["--set", "train.tokenizer=bpe(vocab=400)", "--set", "model.vocab=400"]
    args = ["train", str(REPO / "specs/transformer.nl"), *TINY, *bpe, "--data", str(text_file),
            "--run-dir", str(run_dir), "--no-compile", "--no-progress"]
    assert main(args) == 0
    assert "note: the BPE learned" not in capsys.readouterr().out, "the text has pairs for all 400 ids"
    vocabulary = json.loads((run_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocabulary) == 400  # not the 300 of the tokenizer left behind
    D.BPETokenizer.train("another unrelated text " * 50, 400).save(run_dir / "tokenizer.json")
    capsys.readouterr()
    assert main([*args, "--resume", "--set", "train.steps=8"]) == 1  # another tokenizer: other ids
    err = capsys.readouterr().err
    assert "tokenizer.json is not the tokenizer the checkpoint" in err
    [remedy] = re.findall(r"`(cp \S+ \S+)`, then --resume", err)  # the checkpoint keeps its own copy
    subprocess.run(remedy.split(), check=True)
    assert main([*args, "--resume", "--set", "train.steps=7"]) == 0
    (run_dir / "tokenizer.json").unlink()
    assert main([*args, "--resume", "--set", "train.steps=8"]) == 1
    assert "tokenizer.json is missing" in capsys.readouterr().err


def test_a_resume_goes_back_past_a_checkpoint_whose_tokenizer_copy_is_damaged(tmp_path, text_file, capsys):
    """A BPE checkpoint's tokenizer.json is checked with its other files: eval refused the damaged
    checkpoint, while a resume kept it without a word."""
    bpe = ("--set", "train.tokenizer=bpe(vocab=300)", "--set", "model.vocab=300")
    assert main(_tiny_run(tmp_path, text_file, *bpe, "--set", "train.steps=2")) == 0
    (tmp_path / "run/checkpoints/step-000002/tokenizer.json").write_text("garbage")
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, *bpe, "--set", "train.steps=3", "--resume")) == 0
    captured = capsys.readouterr()
    assert "step-000002/tokenizer.json: its sha256 differs" in captured.err, captured.err
    assert "resuming from step-000001, the checkpoint before it, instead" in captured.err


def test_a_bpe_that_learns_fewer_ids_than_the_vocabulary_says_so(tmp_path, capsys):
    data = tmp_path / "short.txt"
    data.write_text("".join(f"line {i}: tiny text\n" for i in range(400)))
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=1", "--set",
                 "train.tokenizer=bpe(vocab=5000)", "--set", "model.vocab=5000", "--data", str(data), "--run-dir",
                 str(tmp_path / "run"), "--no-compile", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"note: the BPE learned [0-9,]+ of its 5,000 ids on this text", out), out


def test_a_refused_resume_never_says_it_continues(tmp_path, text_file, capsys):
    common = ["--run-dir", str(tmp_path / "run"), "--no-compile", "--no-progress"]
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=1", "--data",
                 str(text_file), *common]) == 0
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().upper())
    capsys.readouterr()
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=3", "--data",
                 str(other), *common, "--resume"]) == 1
    captured = capsys.readouterr()
    assert "the training text differs" in captured.err and "continuing with changed" not in captured.out


def _train_ratio(tmp_path: Path, text_file: Path, update: str) -> int:
    spec = tmp_path / "ratio.nl"
    spec.write_text("optimizer ratio {\n  lr = 1e-3\n  level fast { }\n  level slow { period = 4 }\n"
                    f"  update = {update}\n}}\nmodel m {{\n  dim = 16\n  block {{ mlp {{ }} }}\n}}\n"
                    "train { optimizer = ratio  steps = 4  batch = 2  seq_len = 16  warmup = 0 }\n")
    return main(["train", str(spec), "--data", str(text_file), "--run-dir", str(tmp_path / "run"), "--no-compile",
                 "--no-progress"])


def test_a_divergence_under_an_optimizer_written_as_levels_points_at_its_update(tmp_path, text_file, capsys):
    assert _train_ratio(tmp_path, text_file, "fast / slow") == 1
    err = capsys.readouterr().err
    # `slow` reads 0 until its first write: the first update divides by it, which names step 1 and the
    # weights it broke, not the NaN loss of step 2
    assert "the optimizer's update of step 1 made weights not finite (" in err, err
    assert "a division by a level that is 0" in err and "lower the learning rate" not in err
    assert not (tmp_path / "run").exists()  # nothing was saved, so the folder went


def test_a_finite_update_of_an_optimizer_written_as_levels_trains_as_before(tmp_path, text_file):
    assert _train_ratio(tmp_path, text_file, "fast / (abs(slow) + 1)") == 0


EVERY_LEVEL_STATE = """\
optimizer every_state {
  lr = 0.01
  weight_decay = 0.1
  level slow { period = 3  readout = exclusive  retention = 0.9  lr = 0.1  nesterov = true }
  level delta { flow = slow  period = 3  objective = l2  retention = 0.9  init = first_flow }
  level deep { state = mlp  hidden = 3  retention = 0.99  lr = 0.5 }
  level second { flow = squared_gradients  retention = 0.99  lr = 0.01  bias_correction = true }
  update = (deep + delta) / (sqrt(second) + 1e-8)
}
model m {
  dim = 16
  block { attention { heads = 2 }  mlp { } }
}
train { optimizer = every_state  steps = 8  batch = 2  seq_len = 16  warmup = 0  checkpoint_every = 4 }
"""


def test_an_optimizer_written_as_levels_resumes_from_its_checkpoint_bit_for_bit(tmp_path, text_file):
    """Every kind of level state (a slow momentum's sum and stored output, a delta rule started from its
    first flow, an MLP memory's weights, a bias-corrected second moment) goes through the checkpoint
    file: the run resumed from step 4 ends where the straight run ends. An audit of random optimizer
    sections on shrunk shipped models checked this for 801 runs."""
    spec = tmp_path / "every_state.nl"
    spec.write_text(EVERY_LEVEL_STATE)
    common = ["train", str(spec), "--data", str(text_file), "--no-compile", "--no-progress"]
    assert main([*common, "--run-dir", str(tmp_path / "whole")]) == 0
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000008")
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step-000004")
    assert main([*common, "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    for name in ("model.safetensors", "training.safetensors"):
        whole = safetensors.torch.load_file(tmp_path / "whole" / "checkpoints" / "step-000008" / name)
        resumed = safetensors.torch.load_file(tmp_path / "resumed" / "checkpoints" / "step-000008" / name)
        assert whole.keys() == resumed.keys()
        assert all(torch.equal(whole[key], resumed[key]) for key in whole), name
    state = safetensors.torch.load_file(tmp_path / "whole" / "checkpoints" / "step-000008" / "training.safetensors")
    assert {key.split(".", 3)[-1] for key in state if key.startswith("optimizer.state.0.")} >= {
        "slow.accumulated", "slow.output", "delta.memory", "deep.w_in", "deep.w_out", "second.memory"}


def test_weight_decay_takes_matrices_and_gate_projections_never_vectors():
    """docs/language.md: the rule is the shape: θ_0, weights and learned gates' projections decay;
    norms, biases, per-head gate logits and an independent cms's mix do not."""
    text = ("model {\n  vocab = 13\n  dim = 8\n  block {\n"
            "    memory { heads = 2; level { lr = learned(); retention = per_head(init = 0.99) } }\n"
            "    cms { variant = independent; level a { period = 2 } level b { period = 4 } }\n  }\n}\n"
            "train { optimizer = adamw(lr = 0.01, weight_decay = 0.1) }\n")
    result = check_text(text, "decay.nl")
    model = loader.build_module(result.spec).build()
    optimizer = build_optimizer(model.named_parameters(), result.spec.train.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(group["weight_decay"], {names[id(p)].rsplit(".", 1)[-1] for p in group["params"]})
              for group in optimizer.param_groups]
    decayed = set().union(*(group for decay, group in groups if decay))
    kept = set().union(*(group for decay, group in groups if not decay))
    assert {"lr_proj", "memory_w1", "a_w1", "conv_q", "embed"} <= decayed
    assert {"lr_bias", "retention_logit", "norm", "mix"} <= kept and not decayed & kept


def test_a_divergence_right_after_a_checkpoint_does_not_advise_a_resume_that_cannot_help(tmp_path, text_file,
                                                                                        capsys, monkeypatch):
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2")) == 0
    capsys.readouterr()
    # weights whose gradient on the next batch is not finite: that batch and those weights come back
    # on every resume from this checkpoint, so no learning rate can change the outcome
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: torch.tensor(math.nan))
    for lr in ("1e-3", "1e-6"):
        assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=4", "--set", f"train.optimizer.lr={lr}",
                              "--resume")) == 1
        err = capsys.readouterr().err
        assert "at step 3" in err and "whatever the learning rate" in err and "step-000002" in err
        assert "--init-from" in err and "step-000001" in err and err.count("\n") == 1


@pytest.mark.parametrize("first_after_checkpoint", [True, False])
def test_a_memory_that_diverges_mid_run_is_named_and_the_changes_offered_train(
        tmp_path, text_file, capsys, monkeypatch, first_after_checkpoint):
    """A trained HOPE (specs/hope.nl, B 2, T 128) gave a NaN loss at step 332 from weights whose loss
    was steady: its main memory's weights grew from 0.7 to 10³³ in seven chunks of one sequence
    (float64 agreed). The error names the layer, its in-context levels and overrides (their own lr,
    normalised values) that run as given; a lower outer lr with --resume is offered only where an
    outer step comes before the failing one."""
    spec = str(REPO / "specs/titans_lmm.nl")
    assert TINY[-1].startswith("train.steps=")  # set here per run
    common = [*TINY[:-2], "--set", "train.checkpoint_every=2", "--data", str(text_file), "--no-compile",
              "--no-progress"]
    run_dir = tmp_path / "run"
    assert main(["train", spec, *common, "--set", "train.steps=2", "--run-dir", str(run_dir)]) == 0
    real, calls = M.memory_level, []

    def diverged(*args, **kwargs):  # the memory's readout overflows inside the sequence, from step 3 or 4 on
        out, state = real(*args, **kwargs)
        calls.append(torch.is_grad_enabled())
        return (out * math.inf if sum(calls) > (0 if first_after_checkpoint else 1) else out), state

    monkeypatch.setattr(M, "memory_level", diverged)  # a training step calls it once (one block)
    capsys.readouterr()
    assert main(["train", spec, *common, "--set", "train.steps=6", "--run-dir", str(run_dir), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    step = 3 if first_after_checkpoint else 4
    assert "loss is nan" in err and f"at step {step}" in err and "nothing from this step was written" in err
    assert ("first not finite in lmm of block 0 (blocks.0.lmm), whose levels learn in context "
            "(model.block.lmm.level)") in err
    assert "most likely it diverged" in err and "whatever the learning rate" not in err
    checkpoint = run_dir / "checkpoints" / "step-000002"
    assert f"in a new run from the last good checkpoint, --init-from {checkpoint} --run-dir NEW" in err
    resume = "--resume with a lower learning rate (e.g. --set train.optimizer.lr=0.0003)"
    assert (resume in err) != first_after_checkpoint
    suggested = re.findall(r'--set "([^"]+)"', err)
    # a clip, half the spec's bound, and values normalised (titans_lmm stores them raw)
    assert suggested == ["model.block.lmm.level.clip=1", "model.block.lmm.level.lr=learned(max = 0.0025)",
                         "model.block.lmm.value_norm=l2"]
    assert "a clip on its inner gradients, which bounds each token's gradient step" in err
    assert "L2-normalised values, which the memory is trained to reproduce" in err
    monkeypatch.setattr(M, "memory_level", real)
    new_run = tmp_path / "new"
    assert main(["train", spec, *common, "--set", "train.steps=1", "--run-dir", str(new_run),
                 "--init-from", str(checkpoint), *(arg for value in suggested for arg in ("--set", value))]) == 0
    memory = json.loads((new_run / "resolved.json").read_text())["spec"]["model"]["block"]["sublayers"][0]
    assert memory["level"]["lr"]["max"] == 0.0025 and memory["value_norm"] == "l2" and memory["level"]["clip"] == 1


class _NaNGradient(torch.autograd.Function):
    """The identity forward, a NaN gradient backward: a memory that overflowed behind normalisations."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient):
        return gradient * math.nan


def test_a_memory_that_overflows_only_in_the_backward_pass_is_located_from_the_gradients(
        tmp_path, text_file, capsys, monkeypatch):
    """HOPE with a clip on its main memory alone (B 8, T 256, seed 0) stopped at step 241 with a finite
    loss and a NaN gradient: its keys and values are normalised and its gates bounded, so an
    unclipped projection memory that diverged left the forward pass finite. The error finds the layer
    from the gradients and offers the same changes as for a forward pass that fails."""
    spec = str(REPO / "specs/titans_lmm.nl")
    common = [*TINY[:-2], "--set", "train.checkpoint_every=2", "--data", str(text_file), "--no-compile",
              "--no-progress"]
    run_dir = tmp_path / "run"
    assert main(["train", spec, *common, "--set", "train.steps=2", "--run-dir", str(run_dir)]) == 0
    real, calls = M.memory_level, []

    def overflowing_backward(*args, **kwargs):  # from the second training step after the checkpoint on
        out, state = real(*args, **kwargs)
        calls.append(torch.is_grad_enabled())
        return (_NaNGradient.apply(out) if sum(calls) > 1 else out), state

    monkeypatch.setattr(M, "memory_level", overflowing_backward)
    capsys.readouterr()
    assert main(["train", spec, *common, "--set", "train.steps=6", "--run-dir", str(run_dir), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "at step 4" in err
    assert "gradient norm nan" in err and "loss is nan" not in err
    assert ("the forward pass is finite, but its gradient is first not finite in lmm of block 0 (blocks.0.lmm), "
            "whose levels learn in context (model.block.lmm.level)") in err
    assert "bounded gates can keep its forward pass finite while the backward through them overflows" in err
    assert re.findall(r'--set "([^"]+)"', err)[0] == "model.block.lmm.level.clip=1"
    assert "--resume with a lower learning rate" in err  # an outer step came after the checkpoint


def test_the_gradient_search_blames_the_layer_where_gradients_stop_being_finite(monkeypatch):
    """Two blocks: a NaN gradient made in block 0's memory leaves block 1's gradients finite and is
    blamed on block 0's layer; one made in the output head reaches every layer's output and is blamed
    on none; a finite backward on none."""
    from nldsl.runtime.evaluate import non_finite_gradient_layer

    result = check_file(REPO / "specs/titans_lmm.nl", ["dim=16", "model.layers=2", "train.seq_len=8"])
    model = loader.build_model(loader.compile_module(result), result.spec, torch.device("cpu"))
    tokens = torch.randint(0, result.spec.model.vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    targets = tokens.roll(-1, 1)
    assert non_finite_gradient_layer(model, tokens, targets) is None
    real, calls = M.memory_level, []

    def first_call_overflows(*args, **kwargs):
        out, state = real(*args, **kwargs)
        calls.append(1)
        return (_NaNGradient.apply(out) if len(calls) == 1 else out), state

    monkeypatch.setattr(M, "memory_level", first_call_overflows)
    assert non_finite_gradient_layer(model, tokens, targets) == "blocks.0.lmm"
    assert all(p.grad is None for p in model.parameters())  # cleared after the search
    monkeypatch.setattr(M, "memory_level", real)
    loss = model.loss
    monkeypatch.setattr(model, "loss", lambda *args: _NaNGradient.apply(loss(*args)))
    assert non_finite_gradient_layer(model, tokens, targets) is None


def test_a_forward_pass_that_fails_outside_in_context_levels_is_located_and_keeps_the_outer_advice(
        tmp_path, text_file, capsys, monkeypatch):
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=2", "--set", "train.checkpoint_every=2")) == 0
    real, calls = F.scaled_dot_product_attention, []

    def overflowing(*args, **kwargs):  # from the second training step after the checkpoint on
        calls.append(torch.is_grad_enabled())
        out = real(*args, **kwargs)
        return out * math.inf if sum(calls) > 1 else out

    monkeypatch.setattr(F, "scaled_dot_product_attention", overflowing)
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, text_file, "--set", "train.steps=6", "--set", "train.checkpoint_every=2",
                          "--resume")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "at step 4" in err
    assert "; the forward pass is first not finite in attention of block 0 (blocks.0.attention); " in err
    assert "step-000002 (lower the learning rate, e.g. --set train.optimizer.lr=" in err
    assert "learn in context" not in err


@pytest.mark.parametrize("spec_path", [*(path for path in shipped_spec_paths() if "/optimizers/" not in path),
                                       *(f"coverage:{case}" for case in COVERAGE)])
def test_every_in_context_layer_is_found_and_its_advice_checks(spec_path, tmp_path):
    """Every layer whose levels learn in context (nested parallel branches and MAC parts too) is
    found from the generated module's names, and each override the advice gives checks and clips
    the level's inner gradients, lowers its lr, or normalises raw values; a per-head lr, which the
    outer optimizer trains, gets no lower lr, and a level whose newton_schulz sizes its writes
    neither that nor a clip."""
    spec_file = REPO / spec_path
    if spec_path.startswith("coverage:"):
        spec_file = tmp_path / "case.nl"
        spec_file.write_text(model_text(COVERAGE[spec_path.partition(":")[2]], train=COVERAGE_TRAIN))
    result = check_file(spec_file)
    model, seq_len = result.spec.model, result.spec.train.seq_len
    module = loader.build_model(loader.compile_module(result), result.spec, torch.device("cpu"))
    found = {path for name, _ in module.named_modules() for path, _ in T.levels_in(name, model, seq_len)}
    assert found == {f"model.{layer}.{name}" for layer, _, name, _ in in_context_levels(model, seq_len)}
    offered_clips = False
    for name, _ in module.named_modules():
        levels = T.levels_in(name, model, seq_len)
        if levels:
            value_norms = T.value_norm_overrides(name, model, seq_len)
            clips = T.clip_overrides(name, model, seq_len)
            advice = T.in_context_divergence(name, levels, clips, value_norms, None, "0.0003")
            overrides = re.findall(r'--set "([^"]+)"', advice)
            # a level that runs a chunk loop: a clip would send a delta-kernel level token by token (W0701)
            clippable = [path for layer_path, layer, name_in, level in in_context_levels(model, seq_len)
                         if (path := f"model.{layer_path}.{name_in}") in dict(levels)
                         and level.orthogonalize is None and runs_chunk_loop(layer, level, seq_len)]
            bounded = [(path, level) for path, level in levels
                       if level.lr.kind != "per_head" and level.orthogonalize is None]
            assert overrides == ([o for o in overrides if ".clip=" in o] + [o for o in overrides if ".lr=" in o]
                                 + value_norms)
            assert [o.partition(".clip=")[0] for o in overrides if ".clip=" in o] == clippable
            offered_clips |= bool(clippable)
            assert [o.partition(".lr=")[0] for o in overrides if ".lr=" in o] == [path for path, _ in bounded]
            assert bool(bounded) != ("no setting of the lr bounds these writes" in advice)
            checked = check_file(spec_file, overrides)  # no new warning (W0706: a setting without effect)
            assert checked.ok and {d.code for d in checked.diagnostics} <= {d.code for d in result.diagnostics}
            lowered = {f"model.{layer}.{name}": level.lr for layer, _, name, level
                       in in_context_levels(checked.spec.model, seq_len)}
            assert all(lowered[path] != level.lr for path, level in bounded), overrides
            clipped = {f"model.{layer}.{name}": level.clip for layer, _, name, level
                       in in_context_levels(checked.spec.model, seq_len)}
            assert all(clipped[path] is not None and clipped[path] != level.clip
                       for path, level in levels if path in clippable), overrides
            normalised = {f"model.{layer}.value_norm=l2" for layer, layer_spec, _, _
                          in in_context_levels(checked.spec.model, seq_len)
                          if getattr(layer_spec, "value_norm", None) == "l2"}
            assert set(value_norms) <= normalised
    if not spec_path.startswith("coverage:"):  # the shipped MLP memories get one, the delta-kernel levels not
        assert offered_clips == (spec_path in ("specs/hope.nl", "specs/hope_attention.nl", "specs/titans_lmm.nl",
                                               "specs/titans_mac.nl", "specs/titans_mag.nl", "specs/titans_mal.nl"))


def test_ctrl_c_during_an_evaluation_is_made_up_on_resume(tmp_path, text_file, capsys, monkeypatch):
    every = ["--set", "train.eval_every=2", "--set", "train.eval_batches=1", "--set", "train.steps=4"]
    assert main(_tiny_run(tmp_path, text_file, *every, run_dir=tmp_path / "reference")) == 0
    real, calls = T.evaluate, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while step 2 is evaluated
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate", interrupted_once)
    assert main(_tiny_run(tmp_path, text_file, *every)) == 130
    assert main(_tiny_run(tmp_path, text_file, *every, "--resume")) == 0

    def evaluations(run_dir: Path) -> list[tuple[int, float]]:
        return [(e["step"], e["eval_loss"]) for e in strict_metrics(run_dir) if "eval_loss" in e]

    assert evaluations(tmp_path / "run") == evaluations(tmp_path / "reference")
    assert [step for step, _ in evaluations(tmp_path / "run")] == [2, 4]


def test_a_first_step_that_is_not_finite_points_at_the_layer_not_the_optimizer(tmp_path, text_file, capsys):
    # an in-context memory with a learning rate far too large: its readout overflows before any update
    spec = tmp_path / "unstable.nl"
    spec.write_text((REPO / "specs/titans_lmm.nl").read_text().replace("lr = learned(max = 0.005)", "lr = 1e6"))
    status = main(["train", str(spec), *TINY, "--data", str(text_file), "--run-dir", str(tmp_path / "run"),
                   "--no-compile", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("warning[W0719]")  # the checker warned of it before the run
    error = err.split("\n\n")[-1]
    assert "at step 1" in error and error.count("\n") == 1
    assert "a lower train.optimizer.lr or a clip cannot help" in error
    assert "first not finite in lmm of block 0 (blocks.0.lmm)" in error and "learned(max = …)" in error
    assert not (tmp_path / "run").exists()  # no step was done: the folder the run made is removed


def test_a_second_ctrl_c_during_the_interrupt_checkpoint_waits_for_it(tmp_path, text_file, monkeypatch, capsys):
    """Ctrl-C checkpoints the steps done on the way out; a second Ctrl-C while that checkpoint is
    written used to end the process before it was, so a resume silently went back to the last
    regular checkpoint. It now waits for the checkpoint, and the stop is reported once."""
    spec = REPO / "specs/titans_lmm.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=6", "train.log_every=1",
                 "train.checkpoint_every=3", "train.eval_every=0"]
    real_batch, real_save = D.batch_at, C.save_checkpoint

    def stopped_at_step_5(text, seed, step, *args, **kwargs):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(text, seed, step, *args, **kwargs)

    def signalled_while_saving(run_dir, step, *args, **kwargs):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
        return real_save(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(D, "batch_at", stopped_at_step_5)
    monkeypatch.setattr(C, "save_checkpoint", signalled_while_saving)
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "cut", compile=False, progress=False)
    with pytest.raises(KeyboardInterrupt) as raised:
        T.train(loader.check(spec, overrides), overrides, options)
    assert isinstance(raised.value, ReportedInterrupt)
    assert sorted(int(p.name.split("-")[1]) for p in (tmp_path / "cut/checkpoints").glob("step-*")) == [3, 4]
    said = "".join(capsys.readouterr())
    assert "saving step 4 before stopping" in said and said.count("interrupted after 4 step(s)") == 1
    assert main(["train", str(spec), "--data", str(text_file), "--run-dir", str(tmp_path / "cut2"),
                     "--no-compile", *[a for o in overrides for a in ("--set", o)]]) == 130
    assert "".join(capsys.readouterr()).count("interrupted") == 1  # the command line does not say it again


def test_ctrl_c_in_the_first_step_removes_the_folder_it_made_and_says_so(tmp_path, text_file, monkeypatch, capsys):
    spec = REPO / "specs/titans_lmm.nl"
    overrides = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=3"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "batch_at", interrupted)
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "cut", compile=False, progress=False)
    with pytest.raises(ReportedInterrupt):
        T.train(loader.check(spec, overrides), overrides, options)
    assert not (tmp_path / "cut").exists()
    said = "".join(capsys.readouterr())
    assert "interrupted after 0 step(s)" in said and f"the run folder {tmp_path / 'cut'} was removed" in said


def test_eval_of_a_bpe_run_scores_the_windows_its_training_scored(tmp_path, capsys):
    # documents that open with spaces: encoded as one text, BPE merges the separator before each
    # with those spaces, the tokens shift, and eval scored other windows than training (3.64 vs 3.74
    # bits per byte on one checkpoint)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(80):
        (data / f"part_{i}.py").write_text("".join(f"    value_{i}_{j} = {j} * {i} + {i % 5}\n" for j in range(30)))
    run_dir = tmp_path / "run"
    bpe = ["--set", "train.tokenizer=bpe(vocab=300)", "--set", "model.vocab=300"]
    assert main(["train", str(REPO / "specs/transformer.nl"), *TINY, *bpe, "--set", "train.steps=2",
                 "--data", str(data), "--run-dir", str(run_dir), "--no-compile", "--no-progress"]) == 0
    assert "data: 80 file(s) from --data" in capsys.readouterr().out  # validation's files counted too
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = next(entry for entry in reversed(logged) if "eval_bpb" in entry)
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    assert f"bits per byte {trained['eval_bpb']:.4f}" in capsys.readouterr().out


def test_no_compile_lets_a_whole_graph_spec_recompute(tmp_path, text_file, capsys):
    # recompute is E0601 beside `compile = true` (one graph would trace every rerun stretch); run
    # eagerly, the spec is checked as the eager spec it runs as
    args = ["train", str(REPO / "specs/transformer.nl"), *TINY, "--set", "train.steps=1", "--set", "train.recompute=2",
            "--data", str(text_file), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 1 and "E0601" in capsys.readouterr().err
    assert main([*args, "--no-compile"]) == 0


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full, a device that is always full")
def test_a_metrics_line_that_cannot_be_written_names_the_file(tmp_path):
    """The append of every logged step: on a full disk its error named no file."""
    log = T.MetricsLog(tmp_path, None, False)
    log.path = Path("/dev/full")
    with pytest.raises(OSError) as error:
        log.write({"step": 1, "loss": 1.0})
    assert (error.value.errno, error.value.filename) == (28, "/dev/full")


def test_an_interrupt_before_the_first_step_says_the_run_folder_was_removed(tmp_path, text_file, capsys,
                                                                           monkeypatch):
    """A SIGTERM or Ctrl-C while the run was being set up (data, model, compile) removed the new run
    folder and said only `interrupted` (a continual-learning researcher's audit)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_write_run_description", interrupted)
    assert main(_tiny_run(tmp_path, text_file)) == 130
    err = capsys.readouterr().err
    assert f"no step was done: the run folder {tmp_path / 'run'} was removed" in err and "interrupted" in err
    assert not (tmp_path / "run").exists()

"""The training loop's frozen heap (nldsl/runtime/heap.py): what is alive after the compiling steps leaves
the cyclic collector for the loop's duration, garbage is collected rather than frozen, and nothing
stays frozen after the loop."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from bench import harness
from nldsl import loader
from nldsl.runtime import heap
from nldsl.runtime import train as T

REPO = Path(__file__).resolve().parents[2]


class Node:
    """An object that takes part in a reference cycle (and can be weakly referenced)."""


def cycle() -> tuple[Node, weakref.ref]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


@pytest.fixture(autouse=True)
def nothing_frozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_freezes_what_is_alive_and_collects_the_garbage_first():
    kept, kept_ref = cycle()
    dropped, dropped_ref = cycle()
    del dropped
    with heap.frozen_heap() as settle:
        settle()
        assert dropped_ref() is None, "cyclic garbage must be collected, not frozen"
        assert gc.get_freeze_count() > 0
        assert kept_ref() is kept
        del kept  # a cycle among frozen objects waits for the loop's end
        gc.collect()
        assert kept_ref() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert kept_ref() is None, "after the loop the frozen objects are collected again"


def test_a_heap_frozen_by_someone_else_stays_frozen():
    gc.freeze()
    frozen = gc.get_freeze_count()
    with heap.frozen_heap() as settle:
        settle()
    assert gc.get_freeze_count() >= frozen > 0


def tiny_run(tmp_path: Path, steps: int, eval_every: int, resume: bool = False) -> T.TrainResult:
    data = tmp_path / "text.txt"
    data.write_text("".join(f"def f_{i}(x):\n    return x * {i}\n\n" for i in range(300)))
    overrides = ["dim=32", "model.layers=1", "train.seq_len=16", "train.batch=2", f"train.steps={steps}",
                 f"train.eval_every={eval_every}", "train.eval_batches=1", "train.checkpoint_every=0"]
    result = loader.check(REPO / "specs/transformer.nl", overrides)
    options = T.TrainOptions(data=[str(data)], run_dir=tmp_path / "run", resume=resume, compile=False,
                             progress=False)
    return T.train(result, overrides, options)


@pytest.fixture()
def gc_log(monkeypatch) -> list[str]:
    """The collector's freezes and unfreezes, in order (they do nothing here)."""
    log: list[str] = []
    monkeypatch.setattr(heap.gc, "freeze", lambda: log.append("freeze"))
    monkeypatch.setattr(heap.gc, "unfreeze", lambda: log.append("unfreeze"))
    return log


def test_the_training_loop_settles_after_its_first_two_steps_and_each_evaluation(tmp_path, gc_log):
    tiny_run(tmp_path, 7, 3)
    # after steps 1 and 2 (they compile), and after the evaluations at steps 3, 6 and 7 (the last step's)
    assert gc_log.count("freeze") == 5
    assert gc_log[-1] == "unfreeze" and gc_log.count("unfreeze") == 1, "the loop hands the frozen objects back"


def test_a_resumed_run_settles_after_its_own_first_two_steps_and_an_interrupt_unfreezes(tmp_path, monkeypatch,
                                                                                        gc_log):
    tiny_run(tmp_path, 3, 0)
    gc_log.clear()
    real = T.D.batch_at

    def interrupted_at_step_6(text, seed, step, *args, **kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return real(text, seed, step, *args, **kwargs)

    monkeypatch.setattr(T.D, "batch_at", interrupted_at_step_6)
    with pytest.raises(KeyboardInterrupt) as stopped:
        tiny_run(tmp_path, 7, 0, resume=True)
    # a resumed process compiles in its own first steps (4 and 5), whatever step it resumed at; the
    # frozen objects are handed back as the loop stops, not later when the stopped run's frames are
    # freed (`stopped` holds them)
    assert gc_log == ["freeze", "freeze", "unfreeze"] and stopped.value is not None


def test_the_benchmarks_freeze_the_heap_between_the_warm_up_and_the_timed_calls(gc_log):
    harness.measure_step(lambda: gc_log.append("step"), warmup=2, repeats=2)
    assert gc_log == ["step", "step", "freeze", "step", "step", "unfreeze"]
    gc_log.clear()
    harness.alternate_samples({"a": lambda: gc_log.append("a"), "b": lambda: gc_log.append("b")}, rounds=2,
                              warmup=1)
    assert gc_log == ["a", "b", "freeze", "a", "b", "a", "b", "unfreeze"]


def test_the_studies_runs_settle_after_their_first_two_steps(monkeypatch, gc_log):
    from nldsl.runtime import domains as D
    from nldsl.runtime import studies as S

    def step(self, batch) -> float:
        self.steps += 1
        return 1.0

    monkeypatch.setattr(S.Learner, "step", step)
    setup = S.Setup(str(S.spec_path("transformer")), 16, 16, 2, 0)
    S.task_run(setup, lambda step: None, 5, {}, 4)
    assert gc_log == ["freeze", "freeze", "unfreeze"]
    domains = D.load_domains(("docs", "unicode"), max_bytes=50_000)
    validation = [S.language_batch(D.spaced_windows(d.validation, 2, 17)) for d in domains]
    gc_log.clear()
    S.continual_run(setup, domains, 3, validation, False)
    assert gc_log == ["freeze", "freeze", "unfreeze"]

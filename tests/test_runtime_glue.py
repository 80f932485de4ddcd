"""The glue between the pieces: the loader's module naming and source registration, file writes
through pipes, gradient averaging and teardown across processes, signal handling, argument ranges
and a checker path that names a memory's level. Written from a mutation audit of those modules:
each test's docstring names the mutant it fails with."""

from __future__ import annotations

import argparse
import io
import os
import signal
import stat
from pathlib import Path

import pytest
import torch

import nldsl
from nldsl import files, loader
from nldsl.runtime import arguments, distributed, interrupt

REPO = Path(__file__).resolve().parents[1]
TITANS = str(REPO / "specs/titans_lmm.nl")


# ---------------------------------------------------------------- loader


def test_keyword_string_overrides_escape_backslashes():
    """L7: a backslash in a string keyword is written as the language's escape."""
    assert loader.override_strings(name="a\\b") == ['name="a\\\\b"']


def test_the_same_spec_with_other_overrides_is_another_module_and_both_models_pickle():
    """L1: the module is named by the generated text, not by the spec's path: building the same spec at
    another width must not replace the first model's module (its class would no longer pickle)."""
    small = nldsl.load(TITANS, dim=32)
    other = nldsl.load(TITANS, dim=48)
    assert small.module is not other.module and type(small) is not type(other)
    assert small.module.__source__ != other.module.__source__
    for model in (small, other):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        back = torch.load(buffer, weights_only=False)
        assert back.spec.model.dim == model.spec.model.dim


def test_the_generated_source_is_registered_with_linecache_at_load():
    """L4: `linecache` holds the generated lines as soon as the model is built (warnings and tools that
    call `linecache.getline(filename, n)` without module globals read them from there)."""
    import linecache

    model = nldsl.load(TITANS, dim=32)
    filename = model.module.__file__
    assert linecache.getlines(filename) == model.module.__source__.splitlines(keepends=True)


# ---------------------------------------------------------------- files


def test_text_bytes_writes_a_surrogate_as_its_escape():
    """F4: a non-UTF-8 file name (PEP 383 surrogates) is written as its \\udcXX escape."""
    assert files.text_bytes("name-\udcff.txt") == b"name-\\udcff.txt"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_write_atomic_writes_through_a_named_pipe_instead_of_replacing_it(tmp_path):
    """F5: a FIFO (or a device) is written to as it is, never renamed over by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open without blocking
    try:
        files.write_atomic(fifo, b"hello")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the pipe was replaced by a file"
        assert os.read(reader, 100) == b"hello"
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# ---------------------------------------------------------------- distributed


class _FakeGroup:
    """`dist.all_reduce` of `world` identical ranks (a SUM multiplies by the world size)."""

    def __init__(self, world: int):
        self.world, self.calls = world, []

    def all_reduce(self, tensor, op=None):
        self.calls.append("all_reduce")
        tensor.mul_(self.world)

    def barrier(self):
        self.calls.append("barrier")

    def destroy_process_group(self):
        self.calls.append("destroy")

    def is_initialized(self):
        return True


def test_all_reduce_gradients_averages_each_gradient_in_place(monkeypatch):
    """D1 (no division by the world size) and D2 (offset never advances: every gradient gets the first slice)."""
    fake = _FakeGroup(4)
    monkeypatch.setattr(distributed.dist, "all_reduce", fake.all_reduce)
    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(5))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped
    a.grad = torch.arange(6.0).reshape(2, 3)
    b.grad = torch.arange(10.0, 15.0)
    expected = a.grad.clone(), b.grad.clone()
    distributed.all_reduce_gradients([a, c, b], distributed.Distributed(0, 4))
    assert fake.calls == ["all_reduce"]
    assert torch.equal(a.grad, expected[0]) and torch.equal(b.grad, expected[1]) and c.grad is None
    distributed.all_reduce_gradients([a, b], distributed.Distributed(0, 4, fsdp=True))  # FSDP reduces its own
    distributed.all_reduce_gradients([a, b], distributed.Distributed(0, 1))  # one process: nothing to do
    assert fake.calls == ["all_reduce"]


def test_a_cuda_index_past_the_visible_devices_is_refused(monkeypatch):
    """D4: with one visible GPU, cuda:1 (or LOCAL_RANK 1) does not exist."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert distributed.resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    for name, local_rank in (("cuda:1", 0), ("cuda", 1), ("auto", 1)):
        with pytest.raises(distributed.UserError, match="only 1 CUDA device"):
            distributed.resolve_device(name, local_rank)


def test_teardown_waits_for_every_rank_only_when_together(monkeypatch):
    """D6: a successful run waits at a barrier before leaving the group; after an error nobody waits."""
    for together, calls in ((True, ["barrier", "destroy"]), (False, ["destroy"])):
        fake = _FakeGroup(2)
        for name in ("barrier", "destroy_process_group", "is_initialized"):
            monkeypatch.setattr(distributed.dist, name, getattr(fake, name))
        distributed.teardown(distributed.Distributed(0, 2), together=together)
        assert fake.calls == calls
    fake = _FakeGroup(1)
    for name in ("barrier", "destroy_process_group", "is_initialized"):
        monkeypatch.setattr(distributed.dist, name, getattr(fake, name))
    distributed.teardown(distributed.Distributed(0, 1))
    assert fake.calls == []


def test_a_one_process_run_never_blames_a_peer():
    """D3: a gloo/NCCL-looking error of a single process is its own failure."""
    error = RuntimeError("NCCL error: Connection reset by peer")
    assert not distributed.peer_failed(error, distributed.Distributed(0, 1))
    assert distributed.peer_failed(error, distributed.Distributed(0, 2))
    assert not distributed.peer_failed(ValueError("NCCL"), distributed.Distributed(0, 2))


# ---------------------------------------------------------------- interrupt


def _custom(_number, _frame):
    pass


@pytest.fixture
def restored_signals():
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_deferred_interrupt_holds_a_ctrl_c_and_puts_the_handler_back(restored_signals):
    """I1: the handler that was installed before the block is installed again after it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = False
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupt.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
    assert finished and type(raised.value) is KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, _custom)
    with interrupt.deferred_interrupt():
        pass
    assert signal.getsignal(signal.SIGINT) is _custom


def test_the_first_held_signal_decides_and_sigterm_is_restored(restored_signals):
    """I2 (the last signal decides), I3 (SIGTERM not set back to its default), I4 (exit status)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupt.terminate_as_interrupt():
            with interrupt.deferred_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
    assert type(raised.value) is interrupt.Terminated, "the SIGTERM came first"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert interrupt.signal_number(raised.value) == signal.SIGTERM
    assert interrupt.signal_number(KeyboardInterrupt()) == signal.SIGINT
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupt.terminate_as_interrupt():
            with interrupt.deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
    assert type(raised.value) is KeyboardInterrupt


def test_terminate_as_interrupt_leaves_someone_elses_handler_alone(restored_signals):
    """I5: a SIGTERM handler installed by someone else stays theirs inside and after the block."""
    signal.signal(signal.SIGTERM, _custom)
    with interrupt.terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is _custom
    assert signal.getsignal(signal.SIGTERM) is _custom


# ---------------------------------------------------------------- arguments


def test_positive_float_takes_float32s_largest_number():
    """A3: the bound is inclusive (float32's largest finite number is a valid value)."""
    assert arguments.positive_float(repr(arguments.FLOAT32_MAX)) == arguments.FLOAT32_MAX
    with pytest.raises(argparse.ArgumentTypeError):
        arguments.positive_float("3.5e38")
    with pytest.raises(argparse.ArgumentTypeError):
        arguments.positive_float("-1e-30")
    # … and refuses a number float32 rounds to 0 (a learning rate of 0, without a word)
    assert arguments.positive_float("1.4e-45") > 0
    with pytest.raises(argparse.ArgumentTypeError, match="that float32 holds"):
        arguments.positive_float("1e-50")


# ---------------------------------------------------------------- semantics


def _detached_write_codes(tmp_path, name):
    from nldsl.checker import check_file

    spec = tmp_path / "named.nl"
    spec.write_text("model tiny {\n  dim = 64\n  block {\n    memory mem {\n      level " + name + " {\n"
                    "        grad_through_writes = false\n      }\n    }\n  }\n}\n")
    return [d.code for d in check_file(spec).diagnostics]


def test_detached_writes_of_an_unnamed_memory_level_warn(tmp_path):
    assert _detached_write_codes(tmp_path, "") == ["W0706"]


def test_detached_writes_of_a_named_memory_level_warn(tmp_path):
    """The check looked for `<memory>.level.grad_through_writes`: a memory whose level has a name got no
    W0706, while W_k, W_v and the convolution silently got no gradient."""
    assert _detached_write_codes(tmp_path, "fast") == ["W0706"]

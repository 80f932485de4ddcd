"""A researcher's own loop around `nldsl.load`: the continuum clock it must tick, a carried state it
must detach, a whole model it pickles to another process, and the overrides and dtypes it may get
wrong. Each test failed before the change that made it pass (a Python-API audit)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import nldsl
from nldsl.diagnostics import SpecError
from nldsl.runtime.clock import ClockWarning
from nldsl.runtime.evaluate import detach_state

TITANS = "specs/titans_lmm.nl"
HOPE = "specs/hope.nl"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _load(path: str, **values):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the spec's own warnings at this size
        return nldsl.load(path, dim=32, **values)


def _tokens(batch: int = 1, length: int = 65) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def clocked_hope():
    model = _load(HOPE, train__seq_len=64, train__batch=1)
    assert model.module.CLOCK_STEPS == {"cms.slow_": 64}
    return model


def test_a_loop_that_steps_a_clocked_level_every_call_is_warned_once(clocked_hope):
    model, x = clocked_hope, _tokens()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.warns(ClockWarning, match=r"level `cms.slow` is on the continuum clock \(an outer step every 64 "
                      r"calls.*continuum_clock\(model\).tick\(\)") as caught:
        for _ in range(4):
            optimizer.zero_grad()
            model.loss(x[:, :-1], x[:, 1:]).backward()
            optimizer.step()
    assert len([w for w in caught if issubclass(w.category, ClockWarning)]) == 1


def test_training_step_and_a_ticking_loop_are_not_warned(clocked_hope):
    """`training_step`, and a loop of one's own that ticks the clock after two backward passes per
    step (gradient accumulation), keep the spec's clock: no ClockWarning (pyproject makes one an
    error)."""
    model, x = clocked_hope, _tokens()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    slow = dict(model.named_parameters())["blocks.0.cms.slow_w1"]
    before = slow.detach().clone()
    for _ in range(3):
        model.module.training_step(model, optimizer, x[:, :-1], x[:, 1:])
    assert torch.equal(slow.detach(), before)  # its first step is the 64th call's
    clock = model.module.continuum_clock(model)
    for _ in range(70):
        optimizer.zero_grad()
        for half in (x[:, :33], x[:, 32:]):
            model.loss(half[:, :-1], half[:, 1:]).backward()
        clock.tick()
        optimizer.step()
    assert not torch.equal(slow.detach(), before)


@pytest.mark.filterwarnings("ignore::nldsl.runtime.clock.ClockWarning")  # hope's own loop, warned above
@pytest.mark.parametrize("path", [TITANS, HOPE])
def test_a_state_carried_without_detach_across_steps_is_named(path):
    """The second step's backward reaches into the first call's freed graph: titans failed with
    torch's "backward through the graph a second time", hope with "modified by an inplace
    operation", neither naming the state or the mend."""
    model, x = _load(path), _tokens(2, 33)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = None
    with pytest.raises(RuntimeError, match=r"the state carried into this call holds the autograd graph of an "
                       r"earlier call.*its backward pass has run.*detach_state\(state\)"):
        for _ in range(2):
            logits, state = model(x[:, :-1], x[:, 1:], state=state, return_state=True)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
            optimizer.step()


def test_a_carried_graph_still_trains_through_two_calls_and_detached_across_steps():
    """Backpropagation through two calls (one backward) is what a carried graph is for; a state
    detached between steps trains on."""
    model, x = _load(TITANS), _tokens(2, 65)
    first, state = model(x[:, :32], return_state=True)
    second = model(x[:, 32:64], state=state)
    (first.sum() + second.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = None
    for _ in range(2):
        logits, state = model(x[:, :32], state=state, return_state=True)
        state = detach_state(state)
        optimizer.zero_grad()
        logits.float().pow(2).mean().backward()
        optimizer.step()


def test_a_whole_model_pickled_reads_back_in_a_new_process(tmp_path):
    model, x = _load(HOPE), _tokens(2, 40)
    path = tmp_path / "whole.pt"
    torch.save({"model": model, "logits": model(x).detach(), "x": x}, path)
    code = ("import nldsl, torch\n"
            f"saved = torch.load({str(path)!r}, weights_only=False)\n"
            "model = saved['model']\n"
            "assert torch.equal(model(saved['x']), saved['logits'])\n"
            "print(model.module.__name__, model.spec.path)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=os.getcwd())
    assert run.returncode == 0, run.stderr[-800:]
    assert run.stdout.split() == [type(model).__module__, model.spec.path]


@pytest.mark.parametrize(("key", "shown"), [("seq_len", "train__seq_len"), ("train_seq_len", "train__seq_len"),
                                            ("vocab", "model__vocab"), ("model_layers", "model__layers")])
def test_an_attribute_given_without_its_section_names_the_path(key, shown):
    with pytest.raises(SpecError, match=rf"is an attribute of `\w+`: set it as `{shown}`"):
        nldsl.load(TITANS, dim=32, **{key: 64})


def test_a_set_of_an_attribute_without_its_section_names_the_path():
    from nldsl.checker import check_file

    [diagnostic] = check_file(TITANS, ["seq_len=64"]).diagnostics
    assert diagnostic.help == "`seq_len` is an attribute of `train`: set it as `train.seq_len`"


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_a_storage_only_dtype_is_refused_at_load(dtype):
    """float8 stores weights but has no norms or products: the first call failed deep in rms_norm."""
    with pytest.raises(TypeError, match="a storage format without arithmetic"):
        nldsl.load(TITANS, dim=32, dtype=dtype)


def test_a_gradient_taken_at_the_carried_state_is_not_refused():
    """`torch.autograd.grad(loss, state tensors)` stops at the state and never enters the first call's
    freed graph: torch gives it, and the stale-state check (a tensor hook, then) refused it."""
    model, x = _load(TITANS), _tokens(2, 65)
    first, state = model(x[:, :32], return_state=True)
    first.float().pow(2).mean().backward()
    second = model(x[:, 32:64], state=state)
    carried = [t for block in state for t in _state_tensors(block) if t.grad_fn is not None]
    grads = torch.autograd.grad(second.float().pow(2).mean(), carried, allow_unused=True)
    assert any(g is not None for g in grads)


def _state_tensors(value):
    from nldsl.runtime.blocks import _tensors

    return list(_tensors(value))

"""The continuum clock: outer steps for slow levels at their own frequency (docs/semantics.md §4).

A CMS level whose period is longer than a training sequence (or written in outer steps) is a plain
MLP that the outer optimizer steps, but only every N outer steps, with the gradients of those N
steps summed. The generated module lists its clocked levels in `CLOCK_STEPS` (parameter-name
prefix inside a block -> N); its `training_step` and nldsl's training loop both tick this clock
between the backward pass and the optimizer step.
"""

from __future__ import annotations

import functools
import re
import warnings
import weakref

import torch
from torch import Tensor

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule, DistributedDataParallel
# The attribute that counts the outer steps a continuum clock took of a clocked parameter: what
# `watch_clock` reads to tell them from an optimizer stepping it on its own.
CLOCKED_STEPS = "_nldsl_clocked_steps"
STEPPED_AT = "_nldsl_clocked_steps_at_last_optimizer_step"


class ClockWarning(UserWarning):
    """A clocked level's weights were stepped outside the continuum clock (`watch_clock`)."""


def record_clocked_step(parameter: Tensor) -> None:
    """Count an outer step of a clocked parameter taken by its clock (`watch_clock` reads the count)."""
    setattr(parameter, CLOCKED_STEPS, getattr(parameter, CLOCKED_STEPS, 0) + 1)


def clock_prefix(name: str, clock_steps: dict[str, int]) -> str | None:
    """The CLOCK_STEPS prefix a parameter ("blocks.0.cms.slow_w1") falls under, if any.

    A clocked level's parameters are its state weights, `<prefix>w<i>`, matched whole from the
    block down: a prefix test alone would put a level `slow_fast` on the clock of a level `slow`
    (`cms.slow_`), and a suffix test a cms `c` inside a `parallel` on the clock of a top-level `c`.
    A wrapper's prefix (`_orig_mod.` of `torch.compile`, `module.` of DDP) is passed over."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    parts = name.split(".", 2)
    if len(parts) < 3 or parts[0] != "blocks":
        return None
    inner = parts[2]
    for prefix in clock_steps:
        if re.fullmatch(rf"{re.escape(prefix)}w\d+", inner):
            return prefix
    return None


class ContinuumClock:
    """Frequency-gated outer steps for the parameters of slow levels (module docstring)."""

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], clock_steps: dict[str, int]):
        self.members: list[tuple[str, torch.nn.Parameter, int]] = []
        for name, p in named_parameters:
            prefix = clock_prefix(name, clock_steps)
            if prefix is not None and clock_steps[prefix] > 1:
                self.members.append((name, p, clock_steps[prefix]))
        self.sums: dict[str, Tensor] = {name: torch.zeros_like(p) for name, p, _ in self.members}
        self.steps_done = 0  # outer steps ticked, for a caller that does not count them itself

    def tick(self, step: int | None = None) -> None:
        """After the gradients of outer step `step` (0-based; default: the steps this clock has
        ticked): add each clocked parameter's gradient to its sum, and hand the sum to the optimizer
        on the steps where its level is due (its gradient is None on the others, so it stays put)."""
        step = self.steps_done if step is None else step
        for name, p, steps in self.members:
            total = self.sums[name]
            if p.grad is not None:
                total.add_(p.grad)
            if (step + 1) % steps == 0:
                p.grad = total.clone()
                total.zero_()
                record_clocked_step(p)
            else:
                p.grad = None
        self.steps_done = step + 1


def watch_clock(model: torch.nn.Module, clock_steps: dict[str, int]) -> None:
    """Warn once (ClockWarning) when an optimizer steps a clocked level's weights with no clock.

    A loop of its own (`loss.backward(); optimizer.step()`) steps a slow level at every call, where
    the spec gives it one step every N calls with their gradients summed; nothing else would tell.
    A hook before every optimizer step (torch's global step pre-hook) looks at the clocked weights
    the optimizer holds: one with a gradient and no clocked step counted since the optimizer last
    stepped it (`record_clocked_step`: ContinuumClock.tick hands the summed gradient over on its
    due steps and leaves none on the others) is that loop. Gradient accumulation, `load_state_dict`
    (an EMA swapped in for an evaluation) and streams take no optimizer step, and are not read.
    A copy of the model (`copy.deepcopy`, `torch.load` of a pickled model) is watched too: the
    generated `Model.__setstate__` calls this again, and the copy warns once on its own."""
    global _step_hook
    warned: list[bool] = []  # one warning per model
    for name, p in model.named_parameters():
        prefix = clock_prefix(name, clock_steps)
        if prefix is not None and clock_steps[prefix] > 1:
            entry = _WATCHED.get(id(p))
            if entry is not None and entry[0]() is p:  # watched already (a `copy.copy` shares its weights):
                continue  # its model's warning stays the one it gave, or gives
            ref = weakref.ref(p, functools.partial(_forget, id(p)))
            _WATCHED[id(p)] = (ref, prefix.removesuffix("_"), clock_steps[prefix], warned)
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _step_hook = register_optimizer_step_pre_hook(_before_optimizer_step)


# id(parameter) -> (the parameter, its level, outer steps between its clock steps, its model's warned flag)
_WATCHED: dict[int, tuple[weakref.ref, str, int, list[bool]]] = {}
_step_hook = None


def _forget(key: int, ref: weakref.ref) -> None:
    """Drop the entry of a parameter that is gone (copies of a model add entries of their own)."""
    if key in _WATCHED and _WATCHED[key][0] is ref:
        del _WATCHED[key]


def _before_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """`watch_clock`'s check, before any optimizer step."""
    if not _WATCHED or torch.compiler.is_compiling():
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = _WATCHED.get(id(p))
            if entry is None or entry[0]() is not p or p.grad is None:
                continue
            _, level, steps, warned = entry
            now = (getattr(p, CLOCKED_STEPS, 0), p._version)
            last = getattr(p, STEPPED_AT, (0, None))
            if now == last:  # the same step entered again: a subclass's step calling its parent's
                continue
            unclocked = now[0] == last[0]  # no clock step since an optimizer last stepped it
            setattr(p, STEPPED_AT, now)
            if unclocked and not warned:
                warned.append(True)
                warnings.warn(
                    f"level `{level}` is on the continuum clock (an outer step every {steps} calls, with their "
                    "gradients summed: docs/semantics.md §4), but this optimizer step moves it with no clock step: "
                    "a loop outside the model's `training_step` steps it at every call. Use the generated "
                    "module's `training_step(model, optimizer, tokens, targets)` (`model.module` of "
                    "`nldsl.load`), or call its `continuum_clock(model).tick()` between `backward()` and "
                    "`optimizer.step()`", ClockWarning, stacklevel=3)

"""The continuum clock: outer steps for slow levels at their own frequency (docs/semantics.md §4).

A CMS level whose period is longer than a training sequence (or written in outer steps) is a plain
MLP that the outer optimizer steps, but only every N outer steps, with the gradients of those N
steps summed. The generated module lists its clocked levels in `CLOCK_STEPS` (parameter-name
prefix inside a block -> N); its `training_step` and nldsl's training loop both tick this clock
between the backward pass and the optimizer step.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's OptimizedModule, DistributedDataParallel


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
            else:
                p.grad = None
        self.steps_done = step + 1

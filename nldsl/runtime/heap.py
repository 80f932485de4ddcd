"""The Python heap of a training loop: the objects that live as long as the run kept out of the cyclic collector.

Once a model is built and compiled, the process holds half a million Python objects that live as long
as it does (dynamo's and inductor's caches, the generated module, the tensors' wrappers). Python's
cyclic collector scans every one of them in each full collection, and the many small allocations of
a chunk loop trigger one every few steps: HOPE at width 128, T 2048 (one thread) spent 256 ms in a
full collection every fourth step of some 2.1 s (`gc.callbacks`), and its throughput over 14 steps
rose from 1,901 to 1,993 tokens/s with those objects frozen (a one-off script, the same process
layout as `bench.harness.TrainStep`, one run each, one after the other).

`frozen_heap` moves what is alive after the steps that compiled into the collector's permanent
generation (`gc.freeze`), so that a full collection scans only what was made since, and hands it
back when the loop ends (`gc.unfreeze`). Reference counting frees frozen objects as before; only a
reference cycle among them waits until the loop ends to be collected.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[Callable[[], None]]:
    """Yield `settle`, which collects the garbage there is and freezes every object still alive: call it
    after the steps that compile (the first ones, an evaluation's first). On exit the frozen objects
    return to the collector, unless something else had frozen objects before this block began: that
    freeze is not this block's to undo, so everything then stays frozen."""
    ours = gc.get_freeze_count() == 0

    def settle() -> None:
        gc.collect()  # garbage frozen now would never be collected while the loop runs
        gc.freeze()

    try:
        yield settle
    finally:
        if ours:
            gc.unfreeze()

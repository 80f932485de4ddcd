"""HOPE and Transformer++ at batch 1 on a GPU (the second table of docs/results/performance-gpu.md).

`python -m bench gpu` runs HOPE at batch 8, which does not fit an H200 at d_model 1024 (every chunk
of every in-context level keeps its per-sequence state for the backward pass). This script times
the same models at batch 1: bf16 autocast, fused AdamW, one warm-up step then three timed ones.

    python bench/gpu_batch1.py
"""

from __future__ import annotations

import time

import torch

import nldsl
from nldsl.runtime.clock import ContinuumClock


def time_steps(spec: str, overrides: list[str], compiled: bool, batch: int, length: int = 2048,
               steps: int = 3) -> None:
    torch.manual_seed(0)
    model = nldsl.load(spec, overrides).cuda()
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    # the continuum clock, as `nldsl train` ticks it (HOPE's slow CMS level steps every N steps)
    clock = ContinuumClock(list(model.named_parameters()), dict(getattr(model.module, "CLOCK_STEPS", {})))
    loss_fn = torch.compile(model.loss, fullgraph=True) if compiled else model.loss
    tokens = torch.randint(0, model.spec.model.vocab, (batch, length), device="cuda")
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)  # -1: no target at the end

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        clock.tick()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    print(f"{spec} {' '.join(overrides)} compiled={compiled} B={batch} T={length} params={parameters:,} "
          f"first={first:.1f}s step={seconds:.3f}s tok/s={batch * length / seconds:,.0f} "
          f"peak={torch.cuda.max_memory_allocated() / 2**30:.1f}GiB loss={loss.item():.4f}", flush=True)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_batch1.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    transformer = ["dim=1024", "heads=16", "model.layers=8"]
    for spec, overrides, compiled in [("specs/transformer.nl", transformer, True),
                                      ("specs/hope.nl", ["dim=1024", "heads=16", "model.layers=5"], False),
                                      ("specs/transformer.nl", transformer, False)]:
        time_steps(spec, overrides, compiled, batch=1)
        torch.cuda.empty_cache()  # the next model starts from a clean allocator


if __name__ == "__main__":
    main()

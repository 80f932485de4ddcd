"""Training throughput of every shipped model spec at its default size, eager and compiled, one run.

Each spec trains through the real `nldsl train` loop (nldsl.runtime.train.train) on the default
corpus in a temporary run folder: `--warmup` steps that are not timed (the first one compiles,
when compiling), then `--steps` timed steps. Tokens/s is the global batch (batch · seq_len) over
the median time of the timed steps (robust to a neighbour's burst on a shared machine, whose load
average the header reports); the compile column is the wall time of the first step in compiled mode (dynamo +
inductor + that step), each (spec, mode) from empty compile caches unless `--warm-cache` (a cached
graph, such as transformer_muon's after transformer's, compiles in seconds). Both modes run in the
same process, one after the other through the real training loop, so a neighbour's burst on a
shared machine can land on one of them: `python -m bench train` interleaves its modes round by
round for ratios that compare like with like.

    python bench/train_speed.py                          # every spec, eager and compiled
    python bench/train_speed.py --specs specs/transformer.nl --modes eager
    python bench/train_speed.py --threads 1 --output speed.md
    python bench/train_speed.py --specs specs/hope.nl --modes eager,chunks   # per-chunk compilation
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._inductor.utils import fresh_cache

from nldsl import loader
from nldsl.cli import UserError
from nldsl.runtime.train import TrainOptions, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `bench` importable
from bench.harness import ROOT, model_specs
from bench.throughput import COMPILE_MODES


def parameter_count(spec: str) -> int:
    return sum(p.numel() for p in loader.compile_module(loader.check(ROOT / spec)).build("meta").parameters())


def measure(spec: str, compiled: bool | str, warmup: int, steps: int, device: str) -> tuple[float, float]:
    """(tokens/s over the timed steps, seconds of the first step) for one spec and mode."""
    overrides = [f"train.steps={warmup + steps}", "train.eval_batches=1", "train.eval_every=0",
                 "train.checkpoint_every=0", f"train.log_every={warmup + steps}"]
    result = loader.check(ROOT / spec, overrides)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        outcome = train(result, overrides, TrainOptions(run_dir=Path(folder) / "run", compile=compiled,
                                                         device=device, progress=False))
    timed = [outcome.step_seconds[s] for s in sorted(outcome.step_seconds)[warmup:]]
    plan = result.spec.train
    tokens_per_second = plan.batch * plan.seq_len / statistics.median(timed)
    return tokens_per_second, outcome.step_seconds[min(outcome.step_seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", help="spec files (default: every shipped spec with a model)")
    parser.add_argument("--modes", default="eager,compiled", help="comma-separated: " + ", ".join(COMPILE_MODES))
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", help="also write the table (markdown) here")
    parser.add_argument("--warm-cache", action="store_true", help="keep torch's compile cache (compile times shrink)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    specs = args.specs or model_specs()
    header = (f"nldsl training throughput, default sizes, {args.warmup} warm-up + {args.steps} timed steps; "
              f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} thread(s), device {args.device}, "
              f"{'warm' if args.warm_cache else 'cold'} compile cache, load average {os.getloadavg()[0]:.1f}")
    compiled_modes = [m for m in modes if m != "eager"] if "eager" in modes else []  # each gets a ratio to eager
    lines = [header, "", "| spec | parameters | " + " | ".join(f"{m} tok/s" for m in modes)
             + "".join(f" | {m} first step s | {m}/eager" for m in compiled_modes) + " |",
             "|---|---:|" + "---:|" * (len(modes) + 2 * len(compiled_modes))]
    print(header, flush=True)
    for spec in specs:
        speeds: dict[str, float] = {}
        first: dict[str, float] = {}
        parameters = parameter_count(spec)
        failure = None
        for mode in modes:
            began = time.perf_counter()
            try:
                with contextlib.nullcontext() if args.warm_cache else fresh_cache():
                    speeds[mode], first[mode] = measure(spec, COMPILE_MODES[mode], args.warmup, args.steps,
                                                        args.device)
            except UserError as error:  # e.g. a loss that is not finite: the row says so instead
                failure = str(error).split(";")[0]
                break
            print(f"{spec} {mode}: {speeds[mode]:,.0f} tokens/s, first step {first[mode]:.1f} s "
                  f"({time.perf_counter() - began:.0f} s in all)", file=sys.stderr, flush=True)
        if failure is not None:
            row = f"| {spec} | {parameters:,} | {failure} |"
        else:
            row = f"| {spec} | {parameters:,} | " + " | ".join(f"{speeds[m]:,.0f}" for m in modes)
            row += "".join(f" | {first[m]:.1f} | {speeds[m] / speeds['eager']:.2f}×" for m in compiled_modes) + " |"
        lines.append(row)
        print(row, flush=True)
    lines.append(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print(lines[-1].strip())
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

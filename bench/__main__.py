"""`python -m bench <command>`: the benchmark suite (each command's help says how long it takes and what it writes).

    train    training-step tokens/s of every shipped model spec, eager and compiled, T = 512/2048/8192
    memory   peak memory of a training step against T, one fresh subprocess per point
    chunks   chunk-size sweep for Titans and HOPE: throughput and loss after a small budget
    mfu      model FLOPs utilisation against this machine's measured fp32 matmul peak
    peers    titans-pytorch, nested-learning, fla reference ops, the hand-written floor, the targets
    profile  torch.profiler tables of the steps behind missed targets
    smoke    the fast regression guard CI runs (graph breaks, compiled at most 1.3x eager's step time)
    kernel   the fused memory-write kernel of two or more git revisions, side by side in one process
    precision  bfloat16 (autocast and cast) against float64, the error per window of T
    gpu      the CUDA suite in bf16 autocast (correctness, throughput, MFU); --device cpu --tiny to test
    report   docs/results/performance.md and its figures from the JSON results (measures nothing)

train, memory, chunks, mfu, peers, smoke, kernel and precision write bench/results/<command>.json; profile
writes bench/results/profile_<name>.txt; gpu writes bench/results/gpu.json and
docs/results/performance-gpu.md (gpu_tiny.json and .md with --tiny or on the CPU); report writes
docs/results/. NLDSL_BENCH_RESULTS=DIR puts what goes to bench/results/ in DIR instead. Each
command's help (`python -m bench train -h`) says roughly how long it takes on the shared 2-core CPU.

`--threads N` (torch intra-op threads, default 1) goes before or after the command:
`python -m bench --threads 2 train --lengths 512`.
"""

from __future__ import annotations

import argparse
import sys

from bench import (
    chunk_sweep,
    gpu,
    harness,
    kernel_builds,
    mfu,
    peak_memory,
    peers,
    precision,
    profiles,
    report,
    smoke,
    throughput,
)

COMMANDS = {
    "train": throughput,
    "memory": peak_memory,
    "chunks": chunk_sweep,
    "mfu": mfu,
    "peers": peers,
    "profile": profiles,
    "smoke": smoke,
    "kernel": kernel_builds,
    "precision": precision,
    "gpu": gpu,
    "report": report,
}


# (how long a run with the defaults takes, from the committed results where they record it, else
# the work it does; what it writes): each command's help
RUNS = {
    "train": ("long: the committed run's 93 points spent 72 minutes compiling, up to 14 for one "
              "(compile_seconds in bench/results/train.json)", "writes bench/results/train.json"),
    "memory": ("long: a fresh child process per point, each up to --timeout", "writes bench/results/memory.json"),
    "chunks": ("a compile and a fixed training budget per chunk size and spec", "writes bench/results/chunks.json"),
    "mfu": ("a compile per model, timed steps and the matmul peak before and after",
            "adds a run to bench/results/mfu.json"),
    "peers": ("long for all (each peer installed, each contender compiled); --only runs one comparison",
              "writes bench/results/peers.json"),
    "profile": ("a profiled step per missed target", "writes bench/results/profile_<name>.txt"),
    "smoke": ("less than --timed all, which compiles every spec (the last run's seconds are in "
              "bench/results/smoke.json)", "writes bench/results/smoke.json"),
    "kernel": ("a build of each revision's kernel (a minute or two each, once), then --rounds shuffled rounds",
               "writes bench/results/kernel.json"),
    "precision": ("a float64 forward and two bfloat16 ones (autocast, cast) per spec",
                  "writes bench/results/precision.json"),
    "gpu": ("a phase that would overrun --budget is skipped; the committed H200 run took 128 s (elapsed_seconds "
            "in bench/results/gpu.json), --device cpu --tiny 18 s on a 2-core CPU "
            "with warm compile caches, 277 s from empty ones",
            "writes bench/results/gpu.json and docs/results/performance-gpu.md (gpu_tiny.json and "
            "bench/results/gpu_tiny.md with --tiny or on the CPU)"),
    "report": ("seconds; measures nothing", "writes docs/results/performance.md and its figures"),
}


def run_line(name: str) -> str:
    takes, writes = RUNS[name]
    return f"Takes {takes}; {writes}."


def main(argv: list[str] | None = None, prog: str = "python -m bench",
         command_progs: dict[str, str] | None = None) -> int:
    """Run a command; `prog` and `command_progs` (a command's own name in messages) let `nldsl bench speed`
    call it under the name its user typed."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    threads_help = "torch intra-op threads (default 1: the cores are shared, see bench/harness.py)"
    parser.add_argument("--threads", type=harness.at_least(1), default=harness.DEFAULT_THREADS, help=threads_help)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        summary = (module.__doc__ or name).splitlines()[0].rstrip(".")
        sub = commands.add_parser(name, help=f"{summary}. {run_line(name)}",
                                  description=f"{module.__doc__ or name}\n{run_line(name)}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  prog=(command_progs or {}).get(name))
        module.add_arguments(sub)
        # also after the command (`nldsl bench speed --threads 2` has no place before it); SUPPRESS keeps
        # the value given before the command when none comes after
        sub.add_argument("--threads", type=harness.at_least(1), default=argparse.SUPPRESS, help=threads_help)
    args = parser.parse_args(argv)
    if args.command != "report":  # before measuring: a results folder that cannot be written is one line now
        harness.check_results_writable()
    harness.setup_torch(args.threads)
    return COMMANDS[args.command].main(args) or 0


def _cli() -> int:
    """`python -m bench`: a user's mistake (a spec that does not check, a missing file) is one message,
    not a traceback (`nldsl bench speed` reaches `main` through nldsl's own CLI, which does the same)."""
    from nldsl.cli import UserError
    from nldsl.diagnostics import SpecError

    try:
        return main()
    except SpecError as error:
        print(str(error), file=sys.stderr)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:
        if error.filename is None:
            raise
        print(f"error: {error.filename}: {error.strerror or error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(_cli())

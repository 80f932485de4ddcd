"""`python -m bench <command>`: the benchmark suite; every command writes bench/results/<command>.json.

    train    training-step tokens/s of every shipped model spec, eager and compiled, T = 512/2048/8192
    memory   peak memory of a training step against T, one fresh subprocess per point
    chunks   chunk-size sweep for Titans and HOPE: throughput and loss after a small budget
    mfu      model FLOPs utilisation against this machine's measured fp32 matmul peak
    peers    titans-pytorch, nested-learning, fla reference ops, the hand-written floor, the targets
    profile  torch.profiler tables of the steps behind missed targets
    smoke    the fast regression guard CI runs (graph breaks, compiled not slower than eager)
    precision  bfloat16 (autocast and cast) against float64, the error per window of T
    gpu      the CUDA suite in bf16 autocast (correctness, throughput, MFU); --device cpu --tiny to test
    report   docs/results/performance.md and its figures from the JSON results

`--threads N` (torch intra-op threads, default 1) goes before or after the command:
`python -m bench --threads 2 train --lengths 512`.
"""

from __future__ import annotations

import argparse
import sys

from bench import chunk_sweep, gpu, harness, mfu, peak_memory, peers, precision, profiles, report, smoke, throughput

COMMANDS = {
    "train": throughput,
    "memory": peak_memory,
    "chunks": chunk_sweep,
    "mfu": mfu,
    "peers": peers,
    "profile": profiles,
    "smoke": smoke,
    "precision": precision,
    "gpu": gpu,
    "report": report,
}


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
        sub = commands.add_parser(name, help=(module.__doc__ or name).splitlines()[0], description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  prog=(command_progs or {}).get(name))
        module.add_arguments(sub)
        # also after the command (`nldsl bench speed --threads 2` has no place before it); SUPPRESS keeps
        # the value given before the command when none comes after
        sub.add_argument("--threads", type=harness.at_least(1), default=argparse.SUPPRESS, help=threads_help)
    args = parser.parse_args(argv)
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

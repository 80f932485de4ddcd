"""Peak memory of one training step against sequence length, each point in a fresh subprocess.

tracemalloc does not see torch's allocator, so a point is a child process that builds the model and
optimizer, runs one warm-up step at a short length (optimizer state, allocator pools, the lazily
built kernels), reads its peak resident set size (`ru_maxrss`), runs one step at length T and reads
the peak again: the difference is what the step at T needed on top. Batch 1, eager.

Memory levels keep one chunk-start state per chunk for the backward pass and attention-like
(C × C) scores inside a chunk, so they must grow linearly in T. Two contrasts: the Transformer++
spec calls the fused attention kernel, which never stores the (T, T) scores either; the
hand-written Transformer++ with `attention="math"` stores them and grows quadratically. A target
`SPEC:recompute=N` trains the spec with `train.recompute = N` (one state kept per N chunks, the
chunks between rerun in the backward pass).

What recomputation costs in time is measured side by side, in one process, with the chunk bodies
compiled (`--recompute-cost`: HOPE at width 256, T 2048, B 2, stretches of 8 chunks, interleaved
rounds), and kept in the same JSON.

    python -m bench memory
    python -m bench memory --specs specs/titans_lmm.nl specs/hope.nl:recompute=8 --lengths 512 1024 2048
    python -m bench memory --recompute-cost
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from bench.harness import (
    DEFAULT_THREADS,
    ROOT,
    TrainStep,
    alternate,
    at_least,
    build,
    check_model_specs,
    log,
    machine,
    point_key,
    positive_float,
    random_tokens,
    read_result,
    setup_torch,
    spec_key,
    stamp,
    write_result,
)
from nldsl.cli import UserError

NAME = "memory"
LENGTHS = (512, 1024, 2048, 4096, 8192)
SPECS = ("specs/transformer.nl", "specs/titans_lmm.nl", "specs/hope.nl", "specs/hope.nl:recompute=8",
         "specs/gated_deltanet.nl", "specs/titans_mac.nl")
MATH_ATTENTION = "transformer_pp:math"  # the hand-written floor with materialised (T, T) scores
WARMUP_LENGTH = 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(target: str, length: int, threads: int = DEFAULT_THREADS) -> dict:
    """Runs in the subprocess: warm-up step, then the measured step; returns MiB figures."""
    import torch

    from bench.transformer_pp import TransformerConfig, TransformerPP

    setup_torch(threads)
    if target == MATH_ATTENTION:
        model = TransformerPP(TransformerConfig(attention="math", max_len=max(length, WARMUP_LENGTH)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        vocab = model.cfg.vocab
        recompute = 0
    else:
        spec, recompute = split_target(target)
        model, optimizer = build(spec, seq_len=length)
        vocab = model.spec.model.vocab
    step = TrainStep(model, optimizer, recompute=recompute)
    step(*random_tokens(1, WARMUP_LENGTH, vocab))
    before = peak_rss_mib()
    step(*random_tokens(1, length, vocab))
    after = peak_rss_mib()
    return {"baseline_mib": before, "peak_mib": after, "step_mib": max(0.0, after - before)}


def split_target(target: str) -> tuple[str, int]:
    """`SPEC` or `SPEC:recompute=N` → (spec path, N)."""
    spec, _, option = target.partition(":")
    if not option:
        return spec, 0
    name, _, value = option.partition("=")
    if name != "recompute" or not value.isdigit():
        raise UserError(f"bench memory: unknown target option {option!r} in {target!r} (write SPEC:recompute=N)")
    return spec, int(value)


def normalise_target(target: str) -> str:
    """A target as results key it: the spec path normalised (`harness.spec_key`), its option kept."""
    if target == MATH_ATTENTION:
        return target
    spec, recompute = split_target(target)
    return spec_key(spec) + (f":recompute={recompute}" if recompute else "")


def check_targets(targets: list[str], lengths: list[int]) -> None:
    """Every target checked here, before the child processes: a child's failure is a measurement's
    failure, and would keep only its last line of stderr."""
    check_model_specs([split_target(t)[0] for t in targets if t != MATH_ATTENTION], lengths=lengths)


def measure(target: str, length: int, timeout: float, threads: int = DEFAULT_THREADS) -> dict:
    """One point in a child process on `threads` intra-op threads (the parent's `--threads`)."""
    code = ("import json, sys; from bench.peak_memory import child; "
            f"print('RESULT' + json.dumps(child({target!r}, {length}, {threads})))")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
    return {"error": lines[-1][:300], "stderr": lines[-20:]}  # the tail too: the last line alone may say little


KEY = ("target", "length")  # what identifies a point


def run(targets: list[str], lengths: list[int], timeout: float, fresh: bool,
        threads: int = DEFAULT_THREADS) -> dict:
    targets = list(dict.fromkeys(normalise_target(t) for t in targets))
    check_targets(targets, lengths)
    result = read_result(NAME, fresh) or {"machine": machine(), "points": []}
    if fresh:  # only the points measured now: other targets and lengths stay
        measured_now = {(target, length) for target in targets for length in lengths}
        result["points"] = [p for p in result["points"] if point_key(p, KEY) not in measured_now]
    # an error (a timeout, a crash) is not a measurement: it is retried, and replaced, on the next run
    done = {point_key(p, KEY) for p in result["points"] if isinstance(p, dict) and "error" not in p}
    for target in targets:
        for length in lengths:
            if (target, length) in done:
                continue
            point = {"target": target, "length": length, **measure(target, length, timeout, threads=threads),
                     **stamp(), "threads": threads}
            result["points"] = [p for p in result["points"] if point_key(p, KEY) != (target, length)]
            result["points"].append(point)
            write_result(NAME, result)
            log(f"memory {target} T={length}: " + (f"{point['step_mib']:.0f} MiB" if "step_mib" in point
                                                    else point["error"]))
    return result


RECOMPUTE_COST = {"spec": "specs/hope.nl", "overrides": ["dim=256", "heads=4"], "length": 2048, "batch": 2,
                  "stretch": 8}


def recompute_cost(rounds: int, threads: int = DEFAULT_THREADS) -> dict:
    """Training-step seconds with and without `train.recompute`, chunk bodies compiled, interleaved."""
    setup_torch(threads)
    config = RECOMPUTE_COST
    model, optimizer = build(config["spec"], config["overrides"], seq_len=config["length"])
    tokens, targets = random_tokens(config["batch"], config["length"], model.spec.model.vocab)
    plain = TrainStep(model, optimizer, compiled="chunks")
    recomputed = TrainStep(model, optimizer, compiled="chunks", recompute=config["stretch"])
    seconds = alternate({"plain": lambda: plain(tokens, targets), "recompute": lambda: recomputed(tokens, targets)},
                        rounds=rounds, warmup=1)
    tokens_per_step = config["batch"] * config["length"]
    return {**config, **stamp(), "rounds": rounds, "seconds": seconds,
            "tokens_per_second": {name: tokens_per_step / s for name, s in seconds.items()},
            "time_ratio": seconds["recompute"] / seconds["plain"]}


def main(args) -> None:
    if args.recompute_cost:
        result = read_result(NAME) or {"machine": machine(), "points": []}  # read first: a damaged file stops the
        # command before the measurement, not after it (which would lose it)
        result["recompute_cost"] = cost = recompute_cost(args.rounds, args.threads)
        write_result(NAME, result)
        log(f"memory recompute cost: {cost['time_ratio']:.2f}x the step time "
            f"({cost['tokens_per_second']['recompute']:.0f} vs {cost['tokens_per_second']['plain']:.0f} tokens/s)")
        return
    targets = list(args.specs or SPECS) + ([] if args.specs else [MATH_ATTENTION])
    run(targets, args.lengths, args.timeout, args.fresh, args.threads)


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help=f"spec files, or {MATH_ATTENTION} (default: a representative set)")
    parser.add_argument("--lengths", nargs="+", type=at_least(1), default=list(LENGTHS),
                        help=f"sequence lengths T, batch 1 (default: {' '.join(map(str, LENGTHS))})")
    parser.add_argument("--timeout", type=positive_float, default=600.0,
                        help="seconds per point (default: %(default)g)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the stored points this run measures (these targets × lengths; the others "
                             "stay) and measure them again")
    parser.add_argument("--recompute-cost", action="store_true",
                        help="time a HOPE step with and without train.recompute instead (interleaved)")
    parser.add_argument("--rounds", type=at_least(1), default=3,
                        help="interleaved rounds of --recompute-cost (default: %(default)s)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench memory")

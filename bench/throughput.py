"""Training-step throughput of every shipped model spec, eager and compiled, at several lengths.

A step is forward + backward + gradient clipping + AdamW (the spec's outer optimizer), on random
tokens. The batch keeps B·T at a fixed token budget, so every length does the same work per step
for a model whose cost is linear in T. Each (spec, length) builds a fresh model whose modes step
in interleaved rounds on identical inputs (`harness.alternate_samples`), so a neighbour's burst
on the shared machine lands on every mode alike and the compiled/eager ratios compare like with
like. (Points measured before 2026-12-03 ran the modes back to back; their `interleaved` field is
absent.) The compile column is the first compiled step minus a timed one (dynamo + inductor),
from empty compile caches for each point (points measured before 2026-12-05 used the machine's
on-disk inductor cache, so a graph compiled before loaded in seconds).
Compiled points whose unrolled chunk loop is long are skipped: dynamo
unrolls every chunk of every level, and inductor's time grows with the graph (`chunk_steps`).
The `chunks` mode (`train.compile = chunks`) compiles each chunk body once instead, so its compile
time does not grow with T; it runs for the specs whose layers loop over chunks, and is eager for
the others (so it is skipped there).

    python -m bench train                                  # every spec, T = 512, 2048, 8192
    python -m bench train --specs specs/transformer.nl --lengths 512 --modes eager
    python -m bench train --specs specs/hope.nl --modes eager,chunks
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
from torch._inductor.utils import fresh_cache

from bench.harness import (
    TrainStep,
    alternate_samples,
    at_least,
    build,
    check_model_specs,
    log,
    machine,
    model_specs,
    parameter_count,
    point_key,
    random_tokens,
    read_result,
    result_path,
    spec_key,
    stamp,
    timed,
    write_result,
)
from nldsl.cli import UserError
from nldsl.runtime.blocks import CMSLevel
from nldsl.runtime.memory import DELTA_BLOCK, LevelConfig, uses_delta_kernel

NAME = "train"
LENGTHS = (512, 2048, 8192)
TOKEN_BUDGET = 8192  # tokens per step: B = max(1, budget / T)
COMPILE_CHUNK_STEPS = 160  # compile a point only when its unrolled chunk loop is at most this long
COMPILE_MODES: dict[str, bool | str] = {"eager": False, "compiled": True, "chunks": "chunks"}  # train.compile


def _level_configs(model: torch.nn.Module) -> list[LevelConfig]:
    configs = []
    for value in vars(model.module).values():
        if isinstance(value, LevelConfig):
            configs.append(value)
        elif isinstance(value, CMSLevel) and value.in_context:
            configs.append(value.config)
    return configs


def chunk_steps(model: torch.nn.Module, length: int) -> int:
    """How many chunk (or delta-kernel block) steps one forward unrolls, over all layers."""
    steps = sum(math.ceil(length / (DELTA_BLOCK if uses_delta_kernel(cfg) else cfg.chunk_size))
                for cfg in _level_configs(model))
    return steps * model.spec.model.layers


def has_chunk_bodies(model: torch.nn.Module) -> bool:
    """Whether any level loops over chunks (the delta kernel is one op sequence, not a chunk body)."""
    return any(not uses_delta_kernel(cfg) for cfg in _level_configs(model))


def measure_modes(spec: str, length: int, batch: int, modes: list[str], repeats: int) -> dict[str, dict]:
    """Each mode's step at one (spec, length), the modes interleaved round by round on one model.

    A compiled mode's first step (its compilation) is timed alone first; a mode that fails there
    gets an `error` and the others go on."""
    model, optimizer = build(spec, seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    points: dict[str, dict] = {}
    contenders, first_seconds = {}, {}
    for mode in modes:
        step = TrainStep(model, optimizer, compiled=COMPILE_MODES[mode])
        try:
            first_seconds[mode] = timed(lambda step=step: step(tokens, targets))
        except Exception as error:  # a failing mode is recorded, the others go on
            points[mode] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            continue
        contenders[mode] = lambda step=step: step(tokens, targets)
    samples = alternate_samples(contenders, rounds=repeats, warmup=1)
    if any(COMPILE_MODES[mode] for mode in modes):
        torch._dynamo.reset()
    for mode, seconds in samples.items():
        median = statistics.median(seconds)
        points[mode] = {
            "tokens_per_second": batch * length / median,
            "step_seconds": median,
            "all_seconds": seconds,
            "compile_seconds": max(0.0, first_seconds[mode] - median) if COMPILE_MODES[mode] else None,
            "parameters": parameter_count(model),
            "interleaved": True,
        }
    return points


KEY = ("spec", "length", "mode")  # what identifies a point


def run(specs: list[str] | None, lengths: list[int], modes: list[str], budget: int, repeats: int,
        compile_limit: int, fresh: bool) -> dict:
    specs = list(dict.fromkeys(spec_key(spec) for spec in specs)) if specs else model_specs()
    check_model_specs(specs, lengths=lengths)  # before the first point: a mistake is not a result
    result = read_result(NAME, fresh) or {"machine": machine(), "token_budget": budget, "points": []}
    measured_now = {(spec, length, mode) for spec in specs for length in lengths for mode in modes}
    if fresh:  # only the points measured now: other specs, lengths and modes stay
        result["points"] = [p for p in result["points"] if point_key(p, KEY) not in measured_now]
    if result["points"] and result.get("token_budget") != budget:
        raise UserError(f"{result_path(NAME)} holds points at {result.get('token_budget'):,} tokens per step; "
                        f"measure at that budget (--tokens {result.get('token_budget')}), or move the file away "
                        f"to start over at {budget:,}")
    result.update(machine=machine(), token_budget=budget)
    # an error is not a measurement: a failed point is measured again (and replaced) on the next run
    done = {point_key(p, KEY) for p in result["points"] if isinstance(p, dict) and "error" not in p}
    for spec in specs:
        for length in lengths:
            batch = max(1, budget // length)
            pending = [mode for mode in modes if (spec, length, mode) not in done]
            if not pending:
                continue
            model = build(spec, seq_len=length)[0]
            steps, looped = chunk_steps(model, length), has_chunk_bodies(model)
            stamped = stamp()  # one for the modes timed together (report.timed_together compares them)
            points = {mode: {"spec": spec, "length": length, "batch": batch, "mode": mode, "chunk_steps": steps,
                             **stamped} for mode in pending}
            for mode, point in points.items():
                if mode == "compiled" and steps > compile_limit:
                    point["skipped"] = f"{steps} unrolled chunk steps > {compile_limit} (compile time)"
                elif mode == "chunks" and not looped:
                    point["skipped"] = "no chunk loops: the same as eager"
            measured = [mode for mode, point in points.items() if "skipped" not in point]
            if measured:
                try:
                    # every point compiles from nothing: torch's on-disk caches in an empty folder of their
                    # own (a graph another point or an earlier run compiled would otherwise load in seconds)
                    with fresh_cache():
                        found_modes = measure_modes(spec, length, batch, measured, repeats)
                    for mode, found in found_modes.items():
                        points[mode].update(found)
                except Exception as error:  # a failing point is recorded, the sweep goes on
                    for mode in measured:
                        points[mode]["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            replaced = {(spec, length, mode) for mode in points}
            result["points"] = [p for p in result["points"] if point_key(p, KEY) not in replaced]  # earlier errors
            for mode, point in points.items():
                result["points"].append(point)
                shown = (f"{point['tokens_per_second']:,.0f} tok/s" if "tokens_per_second" in point
                         else point.get("skipped") or point.get("error"))
                log(f"train {spec} T={length} B={batch} {mode}: {shown}")
            write_result(NAME, result)
    return result


def main(args) -> None:
    run(args.specs, args.lengths, args.modes, args.tokens, args.repeats, args.compile_limit, args.fresh)


def modes_list(text: str) -> list[str]:
    """An argparse type: comma-separated compile modes, at least one, each known."""
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in COMPILE_MODES]
    if not modes or unknown:
        what = f"unknown mode {', '.join(map(repr, unknown))}" if unknown else "no mode given"
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(COMPILE_MODES)}")
    return modes


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help="spec files (default: every shipped spec with a model)")
    parser.add_argument("--lengths", nargs="+", type=at_least(1), default=list(LENGTHS),
                        help=f"sequence lengths T (default: {' '.join(map(str, LENGTHS))})")
    parser.add_argument("--modes", type=modes_list, default="eager,compiled,chunks",
                        help="comma-separated: " + ", ".join(COMPILE_MODES) + " (default: all three)")
    parser.add_argument("--tokens", type=at_least(1), default=TOKEN_BUDGET,
                        help="tokens per step (B = max(1, tokens // T): a T past it steps on T tokens; default: "
                             "%(default)s)")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="timed steps per point, interleaved across the modes (median kept; default: %(default)s)")
    parser.add_argument("--compile-limit", type=at_least(0), default=COMPILE_CHUNK_STEPS,
                        help="skip compiled points that unroll more chunk steps than this (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the stored points this run measures (these specs × lengths × modes; "
                             "the others stay) and retry them")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench train")

"""Training-step throughput of every shipped model spec, eager and compiled, at several lengths.

A step is forward + backward + gradient clipping + AdamW (the spec's outer optimizer), on random
tokens. The batch keeps B·T at a fixed token budget, so every length does the same work per step
for a model whose cost is linear in T. Each point builds a fresh model; eager and compiled run
back to back on identical inputs. The compile column is the first compiled step minus a timed
one (dynamo + inductor). Compiled points whose unrolled chunk loop is long are skipped: dynamo
unrolls every chunk of every level, and inductor's time grows with the graph (`chunk_steps`).
The `chunks` mode (`train.compile = chunks`) compiles each chunk body once instead, so its compile
time does not grow with T; it runs for the specs whose layers loop over chunks, and is eager for
the others (so it is skipped there).

    python -m bench train                                  # every spec, T = 512, 2048, 8192
    python -m bench train --specs specs/transformer.nl --lengths 512 --modes eager
    python -m bench train --specs specs/hope.nl --modes eager,chunks
"""

from __future__ import annotations

import math
import sys

import torch

from bench.harness import (
    TrainStep,
    build,
    log,
    machine,
    measure_step,
    model_specs,
    parameter_count,
    random_tokens,
    read_result,
    write_result,
)
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


def measure_point(spec: str, length: int, batch: int, compiled: bool | str, repeats: int) -> dict:
    model, optimizer = build(spec, seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    step = TrainStep(model, optimizer, compiled=compiled)
    timing = measure_step(lambda: step(tokens, targets), warmup=2 if compiled else 1, repeats=repeats)
    if compiled:
        torch._dynamo.reset()
    return {
        "tokens_per_second": batch * length / timing.seconds,
        "step_seconds": timing.seconds,
        "all_seconds": timing.all_seconds,
        "compile_seconds": max(0.0, timing.first_seconds - timing.seconds) if compiled else None,
        "parameters": parameter_count(model),
    }


def run(specs: list[str] | None, lengths: list[int], modes: list[str], budget: int, repeats: int,
        compile_limit: int, fresh: bool) -> dict:
    specs = specs or model_specs()
    result = read_result(NAME) or {"machine": machine(), "token_budget": budget, "points": []}
    if fresh:  # only the specs measured now: the other specs' points stay
        result["points"] = [p for p in result["points"] if p["spec"] not in specs]
    if result["points"] and result.get("token_budget") != budget:
        raise SystemExit(f"bench/results/{NAME}.json holds points at {result.get('token_budget'):,} tokens per step; "
                         f"measure at that budget (--tokens) or start over with --fresh and every spec")
    result.update(machine=machine(), token_budget=budget)
    done = {(p["spec"], p["length"], p["mode"]) for p in result["points"]}
    for spec in specs:
        for length in lengths:
            batch = max(1, budget // length)
            model = build(spec, seq_len=length)[0]
            steps, looped = chunk_steps(model, length), has_chunk_bodies(model)
            for mode in modes:
                if (spec, length, mode) in done:
                    continue
                point = {"spec": spec, "length": length, "batch": batch, "mode": mode, "chunk_steps": steps,
                         "measured": machine()["time"]}
                if mode == "compiled" and steps > compile_limit:
                    point["skipped"] = f"{steps} unrolled chunk steps > {compile_limit} (compile time)"
                elif mode == "chunks" and not looped:
                    point["skipped"] = "no chunk loops: the same as eager"
                else:
                    try:
                        point.update(measure_point(spec, length, batch, COMPILE_MODES[mode], repeats))
                    except Exception as error:  # a failing point is recorded, the sweep goes on
                        point["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                result["points"].append(point)
                write_result(NAME, result)
                shown = (f"{point['tokens_per_second']:,.0f} tok/s" if "tokens_per_second" in point
                         else point.get("skipped") or point.get("error"))
                log(f"train {spec} T={length} B={batch} {mode}: {shown}")
    return result


def main(args) -> None:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run(args.specs, args.lengths, modes, args.tokens, args.repeats, args.compile_limit, args.fresh)


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help="spec files (default: every shipped spec with a model)")
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--modes", default="eager,compiled,chunks", help="comma-separated: " + ", ".join(COMPILE_MODES))
    parser.add_argument("--tokens", type=int, default=TOKEN_BUDGET, help="tokens per step (B = tokens / T)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (median kept)")
    parser.add_argument("--compile-limit", type=int, default=COMPILE_CHUNK_STEPS,
                        help="skip compiled points that unroll more chunk steps than this")
    parser.add_argument("--fresh", action="store_true", help="discard earlier points of the specs measured now")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench train")

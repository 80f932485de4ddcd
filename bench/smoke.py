"""The fast regression guard CI runs: no graph breaks in any shipped spec, compiled at most 1.3× eager's step time.

Two checks, both over every shipped model spec:

1. Graph breaks: the loss of a tiny configuration (width 32, one block, T = 16, one or two
   chunks per level) is traced by dynamo with `fullgraph=True` into a counting backend that runs
   the graph eagerly. A graph break raises; more than one compiled frame fails. Graph breaks are
   dynamo's, so tracing the forward is enough. Chunk bodies are plain functions inside a
   whole-model trace, so a break in one of them fails this check too.
2. Compiled vs eager speed: a spec's training step in the compile mode the spec itself asks for
   (`train.compile`: one whole graph, each block or each chunk body), at the tiny size, against the eager
   step on the same inputs. Both are timed in interleaved rounds; the check fails when the
   compiled step's median is more than `SLOWDOWN_TOLERANCE` times the eager one (the margin only
   absorbs timing noise on a shared machine). A cold inductor compile costs 30 s (Transformer++)
   to 110 s (HOPE) even at this size on a 2-core CPU, so the guard CI runs times `TIMED`, the
   chunk-parallel memory of Titans (the compiled path with the most to lose: chunk loops, gates,
   the dual form), and `--timed all` times every shipped spec, each in its own compile mode.

Every run rewrites bench/results/smoke.json, except the outcome of the last run that timed every
shipped spec (`--timed all`), which is kept under `full_speed_check` until the next such run: the
report's Targets row reads that one, never a run that timed only some specs.

    python -m bench smoke                # what CI runs; exit status 1 when a check fails
    python -m bench smoke --timed all    # the speed check for every shipped spec
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from bench.harness import (
    TrainStep,
    alternate,
    at_least,
    build,
    check_model_specs,
    log,
    machine,
    model_specs,
    random_tokens,
    read_result,
    spec_key,
    write_result,
)
from nldsl.runtime.chunked import compiled_chunks

NAME = "smoke"
TINY = ["model.dim=32", "model.layers=1"]  # every shipped spec has 4 heads: head width 8
TINY_LENGTH = 16
SLOWDOWN_TOLERANCE = 1.3  # compiled may be this much slower than eager before the check fails (noise)
TIMED_BATCH = 4
TIMED = ("specs/titans_lmm.nl",)  # the speed check CI runs (module docstring)


def graph_breaks(spec: str, steps: int = 3) -> dict:
    """Trace a tiny configuration's loss in one graph and call it on `steps` batches of new data.

    Fails on a graph break (fullgraph raises), on more than one compiled frame, and on a later
    batch that compiles again (a guard that fails on new data recompiles every step). A spec
    that trains with its chunk bodies compiled also runs them under a counting backend: the
    second and later batches must not add a graph."""
    model, _ = build(spec, TINY, seq_len=TINY_LENGTH)
    counter = CompileCounterWithBackend("eager")
    began = time.perf_counter()
    frames, bodies = [], []
    try:
        loss = torch.compile(model.loss, backend=counter, fullgraph=True)
        for seed in range(steps):
            loss(*random_tokens(2, TINY_LENGTH, model.spec.model.vocab, seed=seed))
            frames.append(counter.frame_count)
        torch._dynamo.reset()
        if model.spec.train.compile == "chunks":
            body_counter = CompileCounterWithBackend("eager")
            with compiled_chunks(backend=body_counter):
                for seed in range(steps):
                    model.loss(*random_tokens(2, TINY_LENGTH, model.spec.model.vocab, seed=seed))
                    bodies.append(body_counter.frame_count)
    except Exception as error:
        return {"ok": False, "error": failure(error)}
    finally:
        torch._dynamo.reset()
    ok = frames == [1] * steps and (not bodies or (bodies[0] > 0 and len(set(bodies)) == 1))
    return {"ok": ok, "frames": frames, "chunk_body_graphs": bodies or None, "ops": counter.op_count,
            "seconds": time.perf_counter() - began}


def failure(error: Exception) -> str:
    """An error in one line: its first, and where dynamo's trace met it (the last frame of its "from
    user code" lines, which name the function that broke the graph)."""
    text = str(error).strip()
    first = text.splitlines()[0][:300] if text else ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    where = f" (at {Path(frames[-1][0]).name}:{frames[-1][1]}, in {frames[-1][2]})" if frames else ""
    return f"{type(error).__name__}: {first}{where}"


def compiled_vs_eager(spec: str, overrides: list[str], length: int, batch: int, rounds: int) -> dict:
    """Time the spec's training step compiled as `train.compile` asks against eager, interleaved."""
    model, optimizer = build(spec, overrides, seq_len=length)
    mode = model.spec.train.compile
    if not mode:
        return {"ok": True, "skipped": "the spec trains eagerly (train.compile = false)"}
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    eager, compiled = TrainStep(model, optimizer), TrainStep(model, optimizer, compiled=mode)
    began = time.perf_counter()
    try:  # a compile that fails (a graph break under fullgraph) is this spec's failed check, not the run's end
        compiled(tokens, targets)
        compile_seconds = time.perf_counter() - began
        seconds = alternate({"eager": lambda: eager(tokens, targets),
                             "compiled": lambda: compiled(tokens, targets)}, rounds=rounds)
    except Exception as error:
        return {"ok": False, "error": failure(error)}
    finally:
        torch._dynamo.reset()
    ratio = seconds["compiled"] / seconds["eager"]
    shown = {"chunks": "chunks", "blocks": "per block"}.get(mode, "whole graph")
    return {"ok": ratio <= SLOWDOWN_TOLERANCE, "mode": shown,
            "eager_seconds": seconds["eager"], "compiled_seconds": seconds["compiled"],
            "compiled_over_eager": ratio, "compile_seconds": compile_seconds, "length": length, "batch": batch,
            "overrides": overrides}


def run(specs: list[str] | None = None, timed: list[str] | None = None, rounds: int = 5) -> dict:
    """Both checks (`timed`: the specs of the speed check, default `TIMED`); "ok" is False when any failed.

    A run that times every shipped model spec is kept under `full_speed_check` as well; a run that
    times fewer carries the stored one over (the Targets row of the report reads only that)."""
    began = time.perf_counter()
    specs = list(dict.fromkeys(spec_key(spec) for spec in specs)) if specs else model_specs()
    timed = TIMED if timed is None else list(dict.fromkeys(spec_key(spec) for spec in timed))
    specs = list(dict.fromkeys([*specs, *timed]))  # a timed spec is graph-checked too, also outside --specs
    check_model_specs(specs)  # up front: a mistake is a message, not a failed check
    full = set(model_specs()) <= set(timed)
    # read before measuring: a damaged file is moved aside (with a warning) rather than stop the guard
    earlier = None if full else stored_full_speed_check(read_result(NAME, fresh=True))
    result: dict = {"machine": machine(), "tolerance": SLOWDOWN_TOLERANCE, "graph_breaks": {}, "speed": {},
                    "timed": list(timed)}
    for spec in specs:
        result["graph_breaks"][spec] = outcome = graph_breaks(spec)
        log(f"smoke graph {spec}: " + ("ok" if outcome["ok"] else f"FAILED {outcome}"))
    for spec in timed:
        result["speed"][spec] = outcome = compiled_vs_eager(spec, TINY, TINY_LENGTH, TIMED_BATCH, rounds)
        if "skipped" in outcome:
            log(f"smoke speed {spec}: skipped, {outcome['skipped']}")
            continue
        if "error" in outcome:
            log(f"smoke speed {spec}: FAILED, the compiled step raised {outcome['error']}")
            continue
        log(f"smoke speed {spec} ({outcome['mode']}): compiled/eager {outcome['compiled_over_eager']:.2f} "
            f"(compile {outcome['compile_seconds']:.1f} s) " + ("ok" if outcome["ok"] else "FAILED"))
    checks = [*result["graph_breaks"].values(), *result["speed"].values()]
    result["ok"] = all(check["ok"] for check in checks)
    result["seconds"] = time.perf_counter() - began
    if full:
        result["full_speed_check"] = {"machine": result["machine"], "tolerance": SLOWDOWN_TOLERANCE,
                                      "speed": result["speed"]}
    elif earlier is not None:
        result["full_speed_check"] = earlier
    write_result(NAME, result)
    log(f"smoke: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s")
    return result


def stored_full_speed_check(stored: dict | None) -> dict | None:
    """The speed check of the last run that timed every shipped spec, from stored results: their
    `full_speed_check`, or, in a file written before that field, the run itself when it timed every
    spec it checked (`--timed all`; its `machine` then dates it)."""
    if not stored:
        return None
    if isinstance(stored.get("full_speed_check"), dict):
        return stored["full_speed_check"]
    speed = stored.get("speed") or {}
    if "timed" not in stored and len(speed) > 1 and set(speed) == set(stored.get("graph_breaks") or {}):
        return {"machine": stored.get("machine"), "tolerance": stored.get("tolerance"), "speed": speed}
    return None


def main(args) -> int:
    timed = None if args.timed is None else (args.specs or model_specs()) if args.timed == ["all"] else args.timed
    return 0 if run(args.specs, timed, rounds=args.rounds)["ok"] else 1


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help="specs to check (default: every shipped model spec)")
    parser.add_argument("--timed", nargs="+", help=f"specs of the speed check, or all (every spec of --specs; "
                                                   f"default: {', '.join(TIMED)})")
    parser.add_argument("--rounds", type=at_least(1), default=5,
                        help="timed rounds of the compiled-vs-eager check (default: 5)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench smoke")

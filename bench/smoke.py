"""The fast regression guard CI runs: no graph breaks in any shipped spec, compiled not slower than eager.

Compiling every spec with inductor takes minutes on a CPU (dynamo unrolls every chunk loop), so
the guard is split in two:

1. Graph breaks, every shipped model spec: the loss of a tiny configuration (width 32, one
   block, T = 16, one or two chunks per level) is traced by dynamo with `fullgraph=True` into a
   counting backend that runs the graph eagerly. A graph break raises; more than one compiled
   frame fails. Graph breaks are dynamo's, so tracing the forward is enough.
2. Compiled vs eager speed, on representative specs at sizes where inductor compiles in seconds:
   the Transformer++ spec (attention + MLP) and the Titans LMM spec (the chunk-parallel memory).
   Both modes are timed in interleaved rounds on the same inputs; the check fails when the
   compiled step's median is more than `SLOWDOWN_TOLERANCE` times the eager one (the margin only
   absorbs timing noise on a shared machine).

    python -m bench smoke            # exit status 1 when a check fails; bench/results/smoke.json
"""

from __future__ import annotations

import sys
import time

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from bench.harness import TrainStep, alternate, build, log, machine, model_specs, random_tokens, write_result

NAME = "smoke"
TINY = ["model.dim=32", "model.layers=1"]  # every shipped spec has 4 heads: head width 8
TINY_LENGTH = 16
SLOWDOWN_TOLERANCE = 1.3  # compiled may be this much slower than eager before the check fails (noise)
TIMED = {  # spec -> (overrides, T, B): sizes where inductor compiles quickly and the step is not trivial
    "specs/transformer.nl": (["model.dim=64"], 256, 4),
    "specs/titans_lmm.nl": (["model.dim=64"], 64, 4),
}


def graph_breaks(spec: str) -> dict:
    """Trace a tiny configuration's loss in one graph; report frames, operators and time."""
    model, _ = build(spec, TINY, seq_len=TINY_LENGTH)
    tokens, targets = random_tokens(2, TINY_LENGTH, model.spec.model.vocab)
    counter = CompileCounterWithBackend("eager")
    began = time.perf_counter()
    try:
        torch.compile(model.loss, backend=counter, fullgraph=True)(tokens, targets)
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    finally:
        torch._dynamo.reset()
    return {"ok": counter.frame_count == 1, "frames": counter.frame_count, "ops": counter.op_count,
            "seconds": time.perf_counter() - began}


def compiled_vs_eager(spec: str, overrides: list[str], length: int, batch: int, rounds: int) -> dict:
    model, optimizer = build(spec, overrides, seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    eager, compiled = TrainStep(model, optimizer), TrainStep(model, optimizer, compiled=True)
    began = time.perf_counter()
    compiled(tokens, targets)
    compile_seconds = time.perf_counter() - began
    seconds = alternate({"eager": lambda: eager(tokens, targets), "compiled": lambda: compiled(tokens, targets)},
                        rounds=rounds)
    torch._dynamo.reset()
    ratio = seconds["compiled"] / seconds["eager"]
    return {"ok": ratio <= SLOWDOWN_TOLERANCE, "eager_seconds": seconds["eager"],
            "compiled_seconds": seconds["compiled"], "compiled_over_eager": ratio,
            "compile_seconds": compile_seconds, "length": length, "batch": batch, "overrides": overrides}


def run(specs: list[str] | None = None, timed: dict | None = None, rounds: int = 5) -> dict:
    """Both checks; the result's "ok" is False when any of them failed."""
    began = time.perf_counter()
    result: dict = {"machine": machine(), "tolerance": SLOWDOWN_TOLERANCE, "graph_breaks": {}, "speed": {}}
    for spec in specs or model_specs():
        result["graph_breaks"][spec] = outcome = graph_breaks(spec)
        log(f"smoke graph {spec}: " + ("ok" if outcome["ok"] else f"FAILED {outcome}"))
    for spec, (overrides, length, batch) in (TIMED if timed is None else timed).items():
        result["speed"][spec] = outcome = compiled_vs_eager(spec, overrides, length, batch, rounds)
        log(f"smoke speed {spec}: compiled/eager {outcome['compiled_over_eager']:.2f} "
            f"(compile {outcome['compile_seconds']:.1f} s) " + ("ok" if outcome["ok"] else "FAILED"))
    checks = [*result["graph_breaks"].values(), *result["speed"].values()]
    result["ok"] = all(check["ok"] for check in checks)
    result["seconds"] = time.perf_counter() - began
    write_result(NAME, result)
    log(f"smoke: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s")
    return result


def main(args) -> int:
    return 0 if run(args.specs, rounds=args.rounds)["ok"] else 1


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help="specs for the graph-break check (default: all shipped)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the compiled-vs-eager check")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench smoke")

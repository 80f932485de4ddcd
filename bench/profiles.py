"""torch.profiler tables of the steps behind missed targets, saved for the report.

- `hope`: one eager HOPE training step (T = 2048, batch 2), operators by self CPU time: where the
  step goes when the chunk loops run in eager mode.
- `transformer`: one compiled Transformer++ step at d_model 512, T = 2048 (the MFU target's
  configuration), by self CPU time.

    python -m bench profile                      # both; bench/results/profile_<name>.txt
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from bench.harness import RESULTS, TrainStep, build, log, random_tokens

TARGETS = {
    "hope": ("specs/hope.nl", [], 2048, 2, False),
    "transformer": ("specs/transformer.nl", ["model.dim=512", "heads=8"], 2048, 1, True),
}


def profile_step(spec: str, overrides: list[str], length: int, batch: int, compiled: bool, rows: int = 18) -> str:
    model, optimizer = build(spec, overrides, seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    step = TrainStep(model, optimizer, compiled=compiled)
    for _ in range(2 if compiled else 1):
        step(tokens, targets)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as recorded:
        step(tokens, targets)
    torch._dynamo.reset()
    averages = recorded.key_averages(group_by_input_shape=True)
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44,
                          max_shapes_column_width=60)


def run(names: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec, overrides, length, batch, compiled = TARGETS[name]
        log(f"profile {name} ...")
        table = profile_step(spec, overrides, length, batch, compiled)
        header = (f"{spec} {' '.join(overrides)} T={length} B={batch} {'compiled' if compiled else 'eager'}, "
                  f"one training step, {torch.get_num_threads()} thread(s)\n")
        (RESULTS / f"profile_{name}.txt").write_text(header + table + "\n", encoding="utf-8")
        log(header + table)


def main(args) -> None:
    run(args.names)


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", default=list(TARGETS), choices=list(TARGETS))


if __name__ == "__main__":
    sys.exit("run it as: python -m bench profile")

"""Chunk-size sweep for Titans and HOPE: training throughput and the loss after a small fixed budget.

The chunk size C is the memory level's period: every inner gradient of a chunk is taken at the
chunk's start state, so a larger C means fewer sequential steps (faster) and staler gradients
(possibly worse loss). For HOPE the projection memories keep half the main memory's chunk, the
ratio of specs/hope.nl (16 / 8).

Throughput: eager training steps at `--length`, median of `--repeats`. Loss: `--steps` training
steps on the default corpus (byte tokens, the spec's AdamW), then the mean loss on `--eval`
held-out batches; same seed, same batches for every C.

    python -m bench chunks
    python -m bench chunks --models titans --chunks 8 16 32
"""

from __future__ import annotations

import sys

import torch

from bench.harness import (
    TrainStep,
    at_least,
    build,
    log,
    machine,
    measure_step,
    point_key,
    random_tokens,
    read_result,
    result_path,
    stamp,
    write_result,
)
from nldsl.cli import UserError
from nldsl.runtime import data

NAME = "chunks"
MODELS = {
    "titans": ("specs/titans_lmm.nl", lambda c: [f"model.block.lmm.level.period={c}"]),
    "hope": ("specs/hope.nl", lambda c: [f"model.block.titans.memory.period={c}",
                                         f"model.block.titans.projections.period={max(1, c // 2)}"]),
}
CHUNKS = (4, 8, 16, 32, 64)


def corpus() -> tuple[data.TokenText, data.TokenText]:
    split = data.load_split(None)
    tokenizer = data.ByteTokenizer()
    return data.tokenize(tokenizer, split.train), data.tokenize(tokenizer, split.validation)


def loss_after_budget(spec: str, overrides: list[str], texts, steps: int, batch: int, length: int,
                      evaluations: int) -> tuple[float, float]:
    """(final training loss, mean held-out loss) after `steps` steps from the same initialisation."""
    train_text, valid_text = texts
    model, optimizer = build(spec, overrides, seq_len=length, seed=0)
    step = TrainStep(model, optimizer)
    loss = float("nan")
    for index in range(steps):
        loss = step(*data.batch_at(train_text, 0, index, batch, length)).item()
    with torch.no_grad():
        held_out = [model.loss(*data.batch_at(valid_text, 1, index, batch, length)).item()
                    for index in range(evaluations)]
    return loss, sum(held_out) / len(held_out)


KEY = ("model", "chunk")  # what identifies a point


def run(models: list[str], chunks: list[int], length: int, batch: int, steps: int, train_length: int,
        train_batch: int, evaluations: int, repeats: int, fresh: bool) -> dict:
    settings = {"length": length, "batch": batch, "steps": steps, "train_length": train_length,
                "train_batch": train_batch}
    result = read_result(NAME, fresh) or {"machine": machine(), **settings, "points": []}
    if fresh:  # only the points measured now: other models and chunk sizes stay
        measured_now = {(name, chunk) for name in models for chunk in chunks}
        result["points"] = [p for p in result["points"] if point_key(p, KEY) not in measured_now]
    stored = {key: result.get(key) for key in settings}
    if result["points"] and stored != settings:  # one header describes every point
        raise UserError(f"{result_path(NAME)} holds points measured with {stored}; measure with those settings, "
                        "or move the file away to start over")
    result.update(settings)
    # an error is not a measurement: a failed point is measured again (and replaced) on the next run
    done = {point_key(p, KEY) for p in result["points"] if isinstance(p, dict) and "error" not in p}
    texts = corpus()
    for name in models:
        spec, overrides_for = MODELS[name]
        for chunk in chunks:
            if (name, chunk) in done:
                continue
            overrides = overrides_for(chunk)
            point: dict = {"model": name, "spec": spec, "chunk": chunk, "overrides": overrides, **stamp()}
            try:
                model, optimizer = build(spec, overrides, seq_len=length)
                tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
                step = TrainStep(model, optimizer)
                timing = measure_step(lambda s=step, a=tokens, b=targets: s(a, b), repeats=repeats)
                point["tokens_per_second"] = batch * length / timing.seconds
                point["all_seconds"] = timing.all_seconds  # timed one C after another, not interleaved
                point["train_loss"], point["eval_loss"] = loss_after_budget(
                    spec, overrides, texts, steps, train_batch, train_length, evaluations)
            except Exception as error:
                point["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            result["points"] = [p for p in result["points"] if point_key(p, KEY) != (name, chunk)]
            result["points"].append(point)
            write_result(NAME, result)
            log(f"chunks {name} C={chunk}: " + (
                f"{point['tokens_per_second']:,.0f} tok/s, held-out loss {point['eval_loss']:.3f}"
                if "eval_loss" in point else point["error"]))
    return result


def main(args) -> None:
    run(args.models, args.chunks, args.length, args.batch, args.steps, args.train_length, args.train_batch,
        args.eval, args.repeats, args.fresh)


def add_arguments(parser) -> None:
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help=f"models to sweep (default: {' '.join(MODELS)})")
    parser.add_argument("--chunks", nargs="+", type=at_least(1), default=list(CHUNKS),
                        help=f"memory chunk sizes C (default: {' '.join(map(str, CHUNKS))})")
    parser.add_argument("--length", type=at_least(1), default=1024,
                        help="sequence length of the throughput steps (default: %(default)s)")
    parser.add_argument("--batch", type=at_least(1), default=2,
                        help="batch of the throughput steps (default: %(default)s)")
    parser.add_argument("--steps", type=at_least(1), default=40,
                        help="training steps of the loss budget (default: %(default)s)")
    parser.add_argument("--train-length", type=at_least(1), default=256,
                        help="sequence length of the loss budget's steps (default: %(default)s)")
    parser.add_argument("--train-batch", type=at_least(1), default=4,
                        help="batch of the loss budget's steps (default: %(default)s)")
    parser.add_argument("--eval", type=at_least(1), default=4, help="held-out batches (default: %(default)s)")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="timed throughput steps per C, median kept (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the stored points this run measures (these models × chunk sizes; the "
                             "others stay) and measure them again")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench chunks")

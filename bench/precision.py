"""Low precision against float64: the error of bfloat16 logits per window of the sequence.

Every shipped model spec at width 32 is run in float64, then under bfloat16 autocast (a float32
model, as `train.precision = bf16` trains) and cast whole to bfloat16, on the same tokens. For each
token the relative error ‖logits − logits₆₄‖ / ‖logits₆₄‖ is taken, and its mean over each quarter
of the sequence is reported. bfloat16 keeps about three significant digits, so a model whose
arithmetic is sound stays near 1e-2 on every window; an error that grows from window to window
is one that compounds through a recurrence (a retention gate rounded to 1 made Titans' error
grow from 0.07 to 0.49 over 1,024 tokens before the gates were kept in float32).

    python -m bench precision                  # every shipped model spec, T = 1024
    python -m bench precision --length 512 --specs specs/titans_lmm.nl
"""

from __future__ import annotations

import copy
import sys

import torch

from bench.harness import at_least, build, check_model_specs, log, machine, model_specs, random_tokens, write_result

NAME = "precision"
WIDTH = ["model.dim=32"]
WINDOWS = 4


def window_errors(low: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """The mean relative error of each of WINDOWS windows of the tokens (logits (1, T, V))."""
    error = ((low.double() - reference).norm(dim=-1) / reference.norm(dim=-1))[0]
    size = -(-error.shape[0] // WINDOWS)
    return [round(error[start:start + size].mean().item(), 4) for start in range(0, error.shape[0], size)]


@torch.no_grad()
def measure(spec: str, length: int) -> dict:
    model, _ = build(spec, WIDTH, dtype=torch.float64)
    tokens, _ = random_tokens(1, length, model.spec.model.vocab, seed=0)
    reference = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = copy.deepcopy(model).float()(tokens)
    cast = copy.deepcopy(model).bfloat16()(tokens)
    return {"spec": spec, "length": length, "autocast": window_errors(autocast, reference),
            "cast": window_errors(cast, reference)}


def run(specs: list[str], length: int) -> dict:
    check_model_specs(specs, WIDTH)
    points = []
    for spec in specs:
        point = measure(spec, length)
        log(f"{spec}: autocast {point['autocast']}, cast {point['cast']}")
        points.append(point)
    result = {"points": points, "windows": WINDOWS, "machine": machine()}
    write_result(NAME, result)
    return result


def main(args) -> int:
    run(args.specs or model_specs(), args.length)
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", help="specs to run (default: every shipped model spec)")
    parser.add_argument("--length", type=at_least(WINDOWS), default=1024, help="tokens per sequence (default 1024)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench precision")

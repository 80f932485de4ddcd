"""Model FLOPs utilisation of training steps against this machine's measured fp32 matmul peak.

The peak is a large square `torch.mm` loop (`harness.matmul_peak`), measured in the same run and
the same thread setting as the steps. A step's FLOPs are counted once, eagerly, with
`FlopCounterMode` over one forward + backward (plus the causal attention the counter cannot see on
the CPU, `harness.attention_flops`); the optimizer step's elementwise work is not counted, as is
usual for MFU. MFU = FLOPs / (step seconds · peak). The specs run eager and compiled; the
hand-written Transformer++ of bench/transformer_pp.py is the floor at the same size.

    python -m bench mfu                          # Transformer++ at d_model 512, T = 2048
    python -m bench mfu --dim 256 --specs specs/transformer.nl specs/titans_lmm.nl
"""

from __future__ import annotations

import sys

import torch

from bench.harness import (
    TrainStep,
    alternate,
    at_least,
    attention_flops,
    build,
    check_model_specs,
    count_flops,
    log,
    machine,
    matmul_peak,
    option_override,
    parameter_count,
    random_tokens,
    read_result,
    spec_key,
    stamp,
    write_result,
)
from bench.transformer_pp import TransformerConfig, TransformerPP

NAME = "mfu"


def hand_attention_flops(cfg: TransformerConfig, batch: int, length: int) -> float:
    return 3.0 * 2 * 2 * (length * (length + 1) / 2) * cfg.dim * cfg.layers * batch


def run(specs: list[str], dim: int, heads: int, layers: int, length: int, batch: int, rounds: int,
        fresh: bool) -> dict:
    specs = list(dict.fromkeys(spec_key(spec) for spec in specs))
    # the options as the user typed them: a spec they do not fit says `--heads 3`, not `--set heads=3`
    sizes = [option_override(f"dim={dim}", f"--dim {dim}"), option_override(f"heads={heads}", f"--heads {heads}"),
             option_override(f"model.layers={layers}", f"--layers {layers}")]
    check_model_specs(specs, sizes, lengths=[length], length_option="--length")
    result = read_result(NAME, fresh) or {"machine": machine(), "runs": []}
    config = {"dim": dim, "heads": heads, "layers": layers, "length": length, "batch": batch}
    if fresh:  # only the earlier runs at this configuration: runs at other sizes stay
        result["runs"] = [r for r in result["runs"] if not (isinstance(r, dict) and r.get("config") == config)]
    result["machine"] = machine()
    peak = matmul_peak()
    log(f"mfu: fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} thread(s))")
    entry: dict = {"config": config, "peak_flops": peak, "models": {}, **stamp()}
    result["runs"].append(entry)
    contenders = {}
    for spec in specs:
        model, optimizer = build(spec, sizes, seq_len=length)
        tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
        counted, per_op = count_flops(lambda m=model, a=tokens, b=targets: m.loss(a, b).backward())
        flops = counted + attention_flops(model, batch, length)
        name = spec.split("/")[-1].removesuffix(".nl")
        entry["models"][name] = {"flops": flops, "counted_flops": counted, "parameters": parameter_count(model),
                                 "top_ops": dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:6])}
        contenders[f"{name}_eager"] = (flops, TrainStep(model, optimizer), tokens, targets)
        contenders[f"{name}_compiled"] = (flops, TrainStep(model, optimizer, compiled=True), tokens, targets)
    hand_cfg = TransformerConfig(dim=dim, layers=layers, heads=heads, max_len=length)
    hand = TransformerPP(hand_cfg)
    tokens, targets = random_tokens(batch, length, hand_cfg.vocab)
    counted, _ = count_flops(lambda: hand.loss(tokens, targets).backward())
    hand_flops = counted + hand_attention_flops(hand_cfg, batch, length)
    entry["models"]["hand_transformer"] = {"flops": hand_flops, "counted_flops": counted,
                                           "parameters": parameter_count(hand)}
    hand_optimizer = torch.optim.AdamW(hand.parameters(), lr=1e-3, fused=True)
    contenders["hand_transformer_eager"] = (hand_flops, TrainStep(hand, hand_optimizer), tokens, targets)
    contenders["hand_transformer_compiled"] = (hand_flops, TrainStep(hand, hand_optimizer, compiled=True),
                                               tokens, targets)
    seconds = alternate({name: (lambda c=c: c[1](c[2], c[3])) for name, c in contenders.items()},
                        rounds=rounds, warmup=2)
    torch._dynamo.reset()
    # The machine's load may change during the run: the peak is measured before and after the steps,
    # and MFU is taken against the higher of the two (the conservative reading).
    entry["peak_after"] = matmul_peak()
    peak = max(peak, entry["peak_after"])
    entry["steps"] = {
        name: {"seconds": seconds[name], "tokens_per_second": batch * length / seconds[name],
               "achieved_flops": c[0] / seconds[name], "mfu": c[0] / seconds[name] / peak}
        for name, c in contenders.items()}
    write_result(NAME, result)
    for name, step in entry["steps"].items():
        log(f"mfu {name}: {step['tokens_per_second']:,.0f} tok/s, {step['achieved_flops'] / 1e9:.1f} GFLOP/s, "
            f"MFU {100 * step['mfu']:.1f}%")
    return result


def main(args) -> None:
    run(args.specs, args.dim, args.heads, args.layers, args.length, args.batch, args.rounds, args.fresh)


def add_arguments(parser) -> None:
    parser.add_argument("--specs", nargs="+", default=["specs/transformer.nl"],
                        help="spec files, timed eager and compiled beside the hand-written Transformer++ "
                             "(default: specs/transformer.nl)")
    parser.add_argument("--dim", type=at_least(1), default=512, help="model width d_model (default: %(default)s)")
    parser.add_argument("--heads", type=at_least(1), default=8, help="attention heads (default: %(default)s)")
    parser.add_argument("--layers", type=at_least(1), default=2, help="blocks (default: %(default)s)")
    parser.add_argument("--length", type=at_least(1), default=2048, help="sequence length T (default: %(default)s)")
    parser.add_argument("--batch", type=at_least(1), default=1, help="batch (default: %(default)s)")
    parser.add_argument("--rounds", type=at_least(1), default=3,
                        help="interleaved timed rounds, median kept (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the stored runs at this configuration (--dim, --heads, --layers, --length, "
                             "--batch; runs at other sizes stay); every run is otherwise kept, the report shows "
                             "the last")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench mfu")

"""Chunk-parallel memory level vs the per-token reference: forward + backward wall time, one run.

The level is HOPE-like: a residual MLP memory (expansion 2) per head, l2 objective, DGD,
momentum, learned retention, causal readout, period 16. Both paths run in eager mode on the same
inputs and dtype; the ratio printed is measured in this one run.

    python bench/memory_speed.py                # T=2048, d=64, 4 heads, batch 2, chunk 16
    python bench/memory_speed.py --length 512   # quicker
"""

import argparse
import time

import torch
import torch.nn.functional as F

from nldsl.runtime.memory import LevelConfig, init_memory_weights, initial_memory_state, memory_level
from nldsl.runtime.reference import memory_level_reference


def make_inputs(cfg: LevelConfig, batch: int, heads: int, length: int, device: str, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    weights = [w.to(device).requires_grad_() for w in init_memory_weights(cfg, heads, generator=generator,
                                                                        dtype=dtype)]
    keys = F.normalize(draw(batch, heads, length, cfg.d_in), dim=-1).requires_grad_()
    queries = F.normalize(draw(batch, heads, length, cfg.d_in), dim=-1).requires_grad_()
    values = draw(batch, heads, length, cfg.d_out).requires_grad_()
    gate = draw(batch, heads, length, 3)
    lr = (0.1 * torch.sigmoid(gate[..., 0])).detach().requires_grad_()  # η
    retention = torch.sigmoid(4.0 + gate[..., 1]).detach().requires_grad_()  # α
    momentum_decay = (0.9 * torch.sigmoid(gate[..., 2])).detach().requires_grad_()  # β
    return weights, keys, values, queries, lr, retention, momentum_decay


def time_forward_backward(level, cfg, inputs, batch: int, device: str) -> float:
    weights, keys, values, queries, lr, retention, momentum_decay = inputs
    if device == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    state = initial_memory_state(cfg, weights, batch)
    outputs, final = level(cfg, state, keys, values, queries, lr, retention, momentum_decay)
    loss = outputs.square().mean() + sum(w.square().mean() for w in final.weights)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--width", type=int, default=64, help="d_in = d_out per head")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--expansion", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fast-path repeats (the median is kept)")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    cfg = LevelConfig(
        "residual_mlp", args.width, args.width, hidden=args.expansion * args.width,
        objective="l2", dgd=True, momentum=True, chunk_size=args.chunk,
    )
    inputs = make_inputs(cfg, args.batch, args.heads, args.length, args.device, dtype)

    time_forward_backward(memory_level, cfg, inputs, args.batch, args.device)  # warm-up
    fast = sorted(time_forward_backward(memory_level, cfg, inputs, args.batch, args.device)
                  for _ in range(args.repeats))[args.repeats // 2]
    reference = time_forward_backward(memory_level_reference, cfg, inputs, args.batch, args.device)

    print(f"memory level, residual mlp (expansion {args.expansion}), l2 + DGD + momentum, "
          f"T={args.length} d={args.width} heads={args.heads} batch={args.batch} chunk={args.chunk} "
          f"{args.dtype} on {args.device}, forward + backward")
    print("| path | seconds |")
    print("|---|---|")
    print(f"| per-token reference | {reference:.3f} |")
    print(f"| chunk-parallel | {fast:.3f} |")
    print(f"speed-up: {reference / fast:.1f}x")


if __name__ == "__main__":
    main()

"""The fused memory-write kernel of two or more source revisions, timed side by side in one process.

Each revision's nldsl/runtime/csrc/memory_write.cpp (`git show REV:…`, or `WORKTREE` for the file as
it is now) is built into an op namespace of its own and loaded into this process. The op's forward,
and its forward + backward with fixed output gradients, then run at the shapes of HOPE's
self-modifying projections at the nested-learning comparison's width (width 256: chunks of 8 tokens,
4 memories × 4 heads of 64 → 128 → 64 with DGD and momentum, batch 2), every build once per round
in shuffled order, round after round. The machine's noise then falls on every build alike, and the
ratios of the medians compare them; the first revision is the baseline. The builds' outputs are
compared too (the largest difference from the baseline's). Every build must have the op signature
of this checkout's nldsl/runtime/fused.py, whose fake kernels and autograd serve them all.

    python -m bench kernel 2210f8e WORKTREE            # the kernel at commit 2210f8e against the file now
"""

from __future__ import annotations

import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import log, machine, write_result
from nldsl.runtime import fused
from nldsl.runtime.memory import LevelConfig, fused_write, init_memory_weights, initial_memory_state

WORKTREE = "WORKTREE"
SOURCE_PATH = "nldsl/runtime/csrc/memory_write.cpp"


def source_of(revision: str) -> bytes:
    """The kernel's C++ at a git revision of this checkout (WORKTREE: the file as it is now)."""
    if revision == WORKTREE:
        return fused.SOURCE.read_bytes()
    shown = subprocess.run(["git", "show", f"{revision}:{SOURCE_PATH}"], capture_output=True,
                           cwd=fused.SOURCE.parents[3])
    if shown.returncode != 0:
        raise SystemExit(f"bench kernel: no {SOURCE_PATH} at {revision!r}: {shown.stderr.decode().strip()}")
    return shown.stdout


def build(source: bytes, registered: set[str]) -> str:
    """Build and load one source into a namespace named by its digest; the namespace. The source of this
    checkout's kernel is the one nldsl already built (`fused.available()`), in its own namespace."""
    from torch.utils import cpp_extension

    if source == fused.SOURCE.read_bytes() and fused.available():
        return fused._namespace
    flags = fused._flags()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    namespace = f"nldsl_ab_{digest}"
    if namespace in registered:
        return namespace
    folder = Path(tempfile.gettempdir()) / "nldsl_kernel_builds" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "memory_write.cpp"
    if not path.is_file() or path.read_bytes() != source:
        path.write_bytes(source)
    cpp_extension.load(name=f"nldsl_memory_write_ab_{digest}", sources=[str(path)],
                       extra_cflags=[*flags, f"-DNLDSL_NAMESPACE={namespace}"], is_python_module=False,
                       verbose=False)
    fused._register_python_parts(namespace)
    registered.add(namespace)
    return namespace


def projection_problem(width: int, heads: int, batch: int, chunk: int, dtype: torch.dtype,
                       dgd_layers: str = "first"):
    """A chunk's inputs at HOPE's self-modifying projections' shapes, and fixed output gradients."""
    generator = torch.Generator().manual_seed(0)
    head = width // heads
    cfg = LevelConfig("residual_mlp", d_in=head, d_out=head, hidden=2 * head, depth=2, objective="l2",
                      values="generated", dgd=True, dgd_layers=dgd_layers, momentum=True, chunk_size=chunk,
                      readout="chunk_start")

    def leaf(*shape: int, low: float | None = None, high: float | None = None) -> torch.Tensor:
        if low is None:
            return torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
        return (low + (high - low) * torch.rand(shape, generator=generator, dtype=dtype)).requires_grad_()

    shared = [w.requires_grad_() for w in init_memory_weights(cfg, 4 * heads, generator=generator, dtype=dtype)]
    state = initial_memory_state(cfg, shared, batch)
    # per-sequence contiguous state, as every chunk after the first gets it from the previous write
    state.weights = [w.detach().contiguous().requires_grad_() for w in state.weights]
    state.momentum = [(0.05 * torch.randn(m.shape, generator=generator, dtype=dtype)).requires_grad_()
                      for m in state.momentum or []]
    return (cfg, state, leaf(batch, heads, chunk, head), leaf(batch, heads, chunk, head),
            leaf(batch, heads, chunk, low=0.05, high=0.15), leaf(batch, heads, chunk, low=0.9, high=1.0),
            leaf(batch, heads, chunk, low=0.5, high=0.9), leaf(batch, heads, chunk, head))


def outputs(inputs) -> list[torch.Tensor]:
    state, read = fused_write(*inputs)
    return [*state.weights, *(state.momentum or []), read]


def run(revisions: list[str], rounds: int, dtype_name: str, width: int, dgd_layers: str = "first") -> dict:
    dtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
    revisions = list(dict.fromkeys(revisions))  # a revision named twice is one build
    if not fused.available():
        raise SystemExit("bench kernel: this checkout's kernel does not build here, so none would")
    registered: set[str] = set()
    namespaces = {}
    for revision in revisions:
        log(f"building the kernel of {revision} ...")
        namespaces[revision] = build(source_of(revision), registered)
    inputs = projection_problem(width, heads=4, batch=2, chunk=8, dtype=dtype, dgd_layers=dgd_layers)
    with torch.no_grad():
        fused._namespace = namespaces[revisions[0]]
        produced = outputs(inputs)
        baseline = torch.cat([t.flatten() for t in produced])
        gradients = [torch.randn_like(t) for t in produced]
    differences = {}
    for revision, namespace in namespaces.items():
        fused._namespace = namespace
        with torch.no_grad():
            produced = torch.cat([t.flatten() for t in outputs(inputs)])
        differences[revision] = (produced - baseline).abs().max().item()

    def forward() -> None:
        with torch.no_grad():
            outputs(inputs)

    def forward_backward() -> None:
        torch.autograd.backward(outputs(inputs), gradients)

    def batch(fn, repeats: int) -> float:
        began = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - began) / repeats

    samples = {revision: {"forward": [], "forward_backward": []} for revision in revisions}
    original = fused._namespace
    try:
        for revision in revisions:  # warm-up: first calls allocate and fault in pages
            fused._namespace = namespaces[revision]
            batch(forward, 3), batch(forward_backward, 3)
        for _ in range(rounds):
            order = revisions[:]
            random.shuffle(order)
            for revision in order:
                fused._namespace = namespaces[revision]
                samples[revision]["forward"].append(batch(forward, 10))
                samples[revision]["forward_backward"].append(batch(forward_backward, 5))
    finally:
        fused._namespace = original
    medians = {revision: {part: statistics.median(values) for part, values in parts.items()}
               for revision, parts in samples.items()}
    base = medians[revisions[0]]
    return {"machine": machine(), "revisions": revisions, "dtype": dtype_name, "rounds": rounds,
            "config": {"width": width, "heads": 4, "memories": 4, "batch": 2, "chunk": 8, "dgd_layers": dgd_layers},
            "milliseconds": {r: {part: 1e3 * s for part, s in m.items()} for r, m in medians.items()},
            "speedup_vs_first": {r: {part: base[part] / s for part, s in m.items()} for r, m in medians.items()},
            "largest_difference_vs_first": differences}


def main(args) -> None:
    result = run(args.revisions, args.rounds, args.dtype, args.width, args.dgd_layers)
    write_result("kernel", result)
    for revision in result["revisions"]:
        ms, speedup = result["milliseconds"][revision], result["speedup_vs_first"][revision]
        log(f"{revision}: forward {ms['forward']:.3f} ms ({speedup['forward']:.3f}×), forward + backward "
            f"{ms['forward_backward']:.3f} ms ({speedup['forward_backward']:.3f}×); largest difference "
            f"{result['largest_difference_vs_first'][revision]:.3g}")


def add_arguments(parser) -> None:
    parser.add_argument("revisions", nargs="+", metavar="REV",
                        help=f"git revisions of the kernel's source (the first is the baseline; {WORKTREE}: the "
                             "file as it is now)")
    parser.add_argument("--rounds", type=int, default=100, help="shuffled rounds (default 100)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="the problem's floating type (default float32)")
    parser.add_argument("--width", type=int, default=256,
                        help="model width (4 heads of width/4, hidden twice that; default 256, specs/hope.nl's 128)")
    parser.add_argument("--dgd-layers", choices=["first", "all"], default="first",
                        help="the layers DGD preconditions (default first, as specs/hope.nl)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench kernel")

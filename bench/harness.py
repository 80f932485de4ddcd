"""What every benchmark here shares: torch settings, models from specs, timed training steps, FLOPs, JSON.

- `setup_torch`: flush denormals (decay products underflow into denormals that slowed some runs
  10×) and pin the intra-op thread count. One thread is the default: the two cores of the
  benchmark machine are shared, and with two threads every small op waits at an OpenMP barrier
  for a core another job holds (a 8×32×64 bmm took 5.5 ms instead of 8 µs).
- `model_specs`, `build`: the shipped specs that define a model, and a model plus its outer
  optimizer from a spec with overrides.
- `TrainStep`: forward + backward + gradient clipping + optimizer step, eager, with the loss
  under `torch.compile(fullgraph=True)` or with its chunk bodies compiled (`train.compile =
  chunks`); `measure_step` times it (warm-up first, median of the timed steps) and reports the
  first (compiling) step separately.
- `alternate`: time several contenders in rounds, interleaved, and keep each one's median, so a
  ratio compares like with like on a machine whose load changes.
- `count_flops`: FLOPs of one forward + backward from `torch.utils.flop_counter.FlopCounterMode`,
  plus causal attention, which the counter does not see on the CPU; `largest_products`: FLOPs of
  a call's matrix products by operand shapes, largest first (where a step's arithmetic goes).
- `matmul_peak`: this machine's fp32 matmul rate, measured with a large `torch.mm` loop.
- `write_result`, `read_result`: bench/results/NAME.json, rewritten after every point so an
  interrupted run keeps what it measured; a damaged file is an error that names it, never a
  traceback, and never silently replaced.
- `stamp`: when an entry (point, run, comparison) was measured and on how many threads, kept in the
  entry (a file's `machine` is its first run's); `check_results_writable`, `check_writable`: the
  output refused in one line before anything is measured.
- `spec_key`, `check_model_specs`: one key per spec file however its path is spelled, and the
  specs checked in-process before any measuring starts (a mistake is reported whole, up front).
- `at_least`, `positive_float`: argparse types of the commands' counts and durations, nldsl's own
  (nldsl/runtime/arguments.py), so that "must be at least 1" reads the same across the CLI.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from nldsl.compiler.optimizers import build_optimizer

import nldsl
from nldsl import loader
from nldsl.checker import Override
from nldsl.cli import UserError
from nldsl.diagnostics import SpecWarning
from nldsl.runtime.arguments import at_least, positive_float  # noqa: F401  (re-exported: the commands' argparse types)
from nldsl.runtime.chunked import compile_loss
from nldsl.runtime.clock import ContinuumClock
from nldsl.runtime.heap import frozen_heap

ROOT = Path(__file__).resolve().parent.parent
# NLDSL_BENCH_RESULTS redirects the JSON (tests run the commands without touching the committed results)
RESULTS = Path(os.environ.get("NLDSL_BENCH_RESULTS") or ROOT / "bench" / "results")
DEFAULT_THREADS = 1
CLIP = 1.0  # gradient clipping of the training loop (nldsl train's default)


def setup_torch(threads: int = DEFAULT_THREADS) -> None:
    """Flush denormals and pin the intra-op thread count (module docstring says why)."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def machine() -> dict[str, Any]:
    """What a result was measured on."""
    return {
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def stamp() -> dict[str, Any]:
    """When an entry (a point, a run, a comparison) was measured and on how many threads: stored in the
    entry itself, since a results file's `machine` is that of the run that created it."""
    return {"measured": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": torch.get_num_threads()}


def model_specs() -> list[str]:
    """Shipped specs that define a model, repository-relative, sorted. A shipped spec that does not
    check raises its SpecError: skipped, it would vanish from every benchmark and from the guard."""
    found = []
    for path in sorted((ROOT / "specs").glob("*.nl")):
        result = loader.check(path)
        if result.spec.model is not None:
            found.append(path.relative_to(ROOT).as_posix())
    return found


def build(spec: str, overrides: Sequence[str] = (), seq_len: int | None = None, *,
          device: str = "cpu", dtype: torch.dtype | None = None, seed: int = 0):
    """(model, optimizer) of a spec; seq_len also sets train.seq_len (it decides which CMS levels learn
    in context, so a benchmark at length T trains the model a run at T would train)."""
    extra = [f"train.seq_len={seq_len}"] if seq_len is not None else []
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # the benchmarks' own overrides (`model.dim=32` leaves `dim` unread)
        warnings.simplefilter("ignore", SpecWarning)
        model = nldsl.load(ROOT / spec, [*overrides, *extra])
    model = model.to(device=device, dtype=dtype)
    optimizer = build_optimizer(model.named_parameters(), model.spec.train.optimizer)
    return model, optimizer


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_tokens(batch: int, length: int, vocab: int, seed: int = 0, device: str = "cpu"):
    """Token ids and next-token targets (B, T); the last position has no target (−1)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length + 1), generator=generator).to(device)
    targets = tokens[:, 1:].clone()
    targets[:, -1] = -1
    return tokens[:, :-1].contiguous(), targets


@dataclass
class TrainStep:
    """One outer training step of a model built by `build`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    compiled: bool | str = False  # train.compile: True one whole graph, "blocks" each block, "chunks" each chunk body
    recompute: int = 0  # chunks per recomputed stretch (train.recompute); 0 = off
    chunks_per_call: int = 1  # chunk bodies per compiled call (train.chunks_per_call)
    loss_fn: Callable = field(init=False)

    clock: ContinuumClock = field(init=False)

    def __post_init__(self) -> None:
        self.loss_fn = compile_loss(self.model.loss, self.compiled, recompute=self.recompute,
                                    chunks_per_call=self.chunks_per_call)
        # the continuum clock, as `nldsl train` ticks it: a slow level's weights take the optimizer's
        # step on their clock's steps only, with the gradients of the steps between summed
        clock_steps = getattr(getattr(self.model, "module", None), "CLOCK_STEPS", {})
        self.clock = ContinuumClock(list(self.model.named_parameters()), dict(clock_steps))

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(tokens, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.clock.tick()
        self.optimizer.step()
        return loss.detach()


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Wall seconds of one call, synchronised on CUDA."""
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - begin


@dataclass
class StepTiming:
    first_seconds: float  # the first step (compiles, when compiled)
    seconds: float  # median of the timed steps
    all_seconds: list[float]


def measure_step(step: Callable[[], Any], warmup: int = 1, repeats: int = 3, device: str = "cpu") -> StepTiming:
    """Time `step`: the first call separately, `warmup − 1` more untimed, then the median of `repeats`,
    with the Python heap frozen after the warm-up as `nldsl train` freezes it (nldsl/runtime/heap.py)."""
    with frozen_heap() as settle:
        first = timed(step, device)
        for _ in range(max(0, warmup - 1)):
            step()
        settle()
        seconds = [timed(step, device) for _ in range(repeats)]
    return StepTiming(first, statistics.median(seconds), seconds)


def alternate(contenders: dict[str, Callable[[], Any]], rounds: int = 3, device: str = "cpu",
              warmup: int = 1) -> dict[str, float]:
    """Median seconds of each contender, timed in interleaved rounds after `warmup` untimed calls each."""
    samples = alternate_samples(contenders, rounds, device, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def alternate_samples(contenders: dict[str, Callable[[], Any]], rounds: int = 3, device: str = "cpu",
                      warmup: int = 1) -> dict[str, list[float]]:
    """Every timed call's seconds of each contender, in interleaved rounds (see `alternate`), with the
    Python heap frozen after the warm-up as `nldsl train` freezes it after its first steps
    (nldsl/runtime/heap.py; before 2026-12-06 it was not, and a full collection fell every few steps)."""
    with frozen_heap() as settle:
        for fn in contenders.values():
            for _ in range(warmup):
                fn()
        settle()
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, fn in contenders.items():
                samples[name].append(timed(fn, device))
    return samples


def _visible_pairs(length: int, window: int, extra: int) -> float:
    """(query, key) pairs a causal attention computes: t+1 keys each (at most `window`), plus `extra`."""
    if window and window < length:
        pairs = window * (window + 1) / 2 + (length - window) * window
    else:
        pairs = length * (length + 1) / 2
    return pairs + length * extra


def attention_flops(model: torch.nn.Module, batch: int, length: int) -> float:
    """Forward + backward FLOPs of the softmax attention of a generated model: QKᵀ and PV over the
    visible (causal) pairs, two multiply-adds per pair and channel, backward twice the forward.
    FlopCounterMode does not count the CPU's fused attention kernel, so this is added to its total."""
    spec = model.spec.model

    def layer_pairs(layer) -> float:
        if layer.kind == "attention":
            return _visible_pairs(length, layer.window, layer.persistent)
        if layer.kind == "parallel":
            return sum(layer_pairs(branch) for branch in layer.branches)
        if layer.kind == "context":  # per segment: [persistent | retrieved | segment], causal in both
            segments, rest = divmod(length, layer.segment)
            per = [layer.segment] * segments + ([rest] if rest else [])
            return sum(2 * _visible_pairs(n, 0, 0) + n * layer.attention.persistent for n in per)
        return 0.0

    pairs = sum(layer_pairs(layer) for layer in spec.block.sublayers)
    return 3.0 * 2 * 2 * pairs * spec.dim * spec.layers * batch


def count_flops(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """FLOPs counted by FlopCounterMode over one call, without attention kernels, and the count per operator.

    Attention is left out because the counter sees it only on some devices (the CUDA kernels, not
    the CPU one) and then counts all (T, T) pairs; `attention_flops` adds the causal count instead,
    the same on every device. The fused memory write is off while counting: the counter sees aten's
    products, and the kernel (a custom op) computes the same ones unseen (HOPE's count would lose a
    quarter).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from nldsl.runtime import fused

    counter = FlopCounterMode(display=False)
    with fused.fused_writes(False), counter:
        fn()
    per_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    total = sum(n for op, n in per_op.items() if "attention" not in op)
    return total, per_op


def largest_products(fn: Callable[[], Any], top: int = 3) -> list[dict[str, Any]]:
    """The `top` (operator, operand shapes) of one call's mm / addmm / bmm products by FLOPs, with their call counts."""
    from torch.utils._python_dispatch import TorchDispatchMode

    flops: dict[tuple[str, tuple, tuple], list[float]] = {}
    aten = torch.ops.aten
    products = {aten.mm.default: "mm", aten.bmm.default: "bmm", aten.addmm.default: "addmm"}

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in products:
                a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
                a, b = a.shape, b.shape
                entry = flops.setdefault((products[func], tuple(a), tuple(b)), [0.0, 0])
                entry[0] += 2.0 * math.prod(a) * b[-1]
                entry[1] += 1
            return func(*args, **(kwargs or {}))

    with Products():
        fn()
    ranked = sorted(flops.items(), key=lambda item: -item[1][0])[:top]
    return [{"product": f"{op} {list(a)} × {list(b)}", "flops": n, "calls": calls}
            for (op, a, b), (n, calls) in ranked]


def matmul_peak(size: int = 2048, seconds: float = 2.0, device: str = "cpu", dtype=torch.float32) -> float:
    """FLOP/s of a large square matmul loop on this machine (the best of several timed batches)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(device)
        begin = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - begin))
    return best


def write_result(name: str, data: Any) -> Path:
    """bench/results/NAME.json (pretty, sorted keys), written whole each time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def check_writable(path: Path, what: str = "the output") -> None:
    """Refuse, in one line and before anything is measured, a file `path` that could not be written
    later (its folder cannot be made, is not writable, or the path is a folder): a `UserError`."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied", str(path))
        else:  # a probe beside it, removed at once: the file itself appears only when results do
            probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write {what} {path}: {error.strerror or error} (nothing was measured)") from None


def check_results_writable() -> None:
    """The results folder (NLDSL_BENCH_RESULTS honoured) checked before a command measures anything:
    a `UserError` in one line when it cannot be made or written."""
    try:
        RESULTS.mkdir(parents=True, exist_ok=True)
        probe = RESULTS / f".write-check.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write results to {RESULTS}: {error.strerror or error} "
                        "(set NLDSL_BENCH_RESULTS to a writable folder; nothing was measured)") from None


def result_path(name: str) -> Path:
    """Where NAME's results live (NLDSL_BENCH_RESULTS honoured): messages name this, not the default."""
    return RESULTS / f"{name}.json"


# The top-level fields each command's results must have (and their types) for the command to add to
# them or the report to read them; a file without them is old or damaged.
SHAPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "train": {"points": list, "token_budget": int},
    "memory": {"points": list},
    "chunks": {"points": list, "length": int, "batch": int, "steps": int, "train_length": int, "train_batch": int},
    "mfu": {"runs": list},
    "peers": {"comparisons": dict},
    "smoke": {"graph_breaks": dict, "speed": dict, "ok": bool, "seconds": (int, float), "tolerance": (int, float)},
    "precision": {"points": list, "windows": int},
}
NO_FRESH = ("smoke", "precision")  # commands that rewrite their file whole every run (no --fresh)


def _shape_problem(name: str, data: Any) -> str | None:
    if not isinstance(data, dict):
        return "does not hold a JSON object"
    for key, kind in SHAPES.get(name, {}).items():
        if key not in data:
            return f"has no `{key}` field (an old format, or a damaged file)"
        if not isinstance(data[key], kind) or (isinstance(data[key], bool) and kind is int):
            return f"has a `{key}` field of the wrong type (an old format, or a damaged file)"
    return None


def read_result(name: str, fresh: bool = False) -> Any | None:
    """NAME's stored results, or None when there are none.

    A file that is not JSON or lacks the fields its command writes is a `UserError` naming it; with
    `fresh` (the caller starts over anyway) it is moved aside instead (never deleted: it may hold
    measurements someone can still read) and None is returned."""
    path = result_path(name)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = _shape_problem(name, data)
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        data, problem = None, f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    if problem is None:
        return data
    if fresh:
        aside = path.with_name(f"{name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}.json")
        path.replace(aside)
        log(f"warning: {path} {problem}; moved it to {aside} and started over")
        return None
    rerun = f"python -m bench {name}" + ("" if name in NO_FRESH else " --fresh")
    raise UserError(f"{path} {problem}: move it away, or rerun `{rerun}`")


def point_key(point: Any, fields: Sequence[str]) -> tuple | None:
    """The values of `fields` of a stored point, or None for a malformed one (not a dict, a field missing)."""
    if not isinstance(point, dict) or any(field not in point for field in fields):
        return None
    try:
        key = tuple(point[field] for field in fields)
        hash(key)
    except TypeError:  # a list where a name belongs: malformed too
        return None
    return key


def spec_key(spec: str) -> str:
    """A spec path as results key it: repository-relative POSIX when inside the repository (so
    `./specs/hope.nl` and `specs/hope.nl` are one spec), else absolute. Relative paths are taken from
    the working folder, or from the repository root when only that holds them (the suite's old rule)."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path if (Path.cwd() / path).exists() or not (ROOT / path).exists() else ROOT / path
    path = path.resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def option_override(text: str, option: str) -> Override:
    """An override a bench option sets (`heads=3` from `--heads 3`): its diagnostics name the option the
    user typed, not a `--set` they never did."""
    return Override(text, origin=option, label=f"<{option.split()[0]}>")


def check_model_specs(specs: Sequence[str], overrides: Sequence[str] = (),
                      lengths: Sequence[int] = (), length_option: str = "--lengths") -> None:
    """Check every spec in this process before anything is measured (a child process or a later point
    would turn a mistake into an error "result"): a spec that does not check raises its `SpecError`
    (all diagnostics), one without a model a `UserError`; then with `overrides`, and at each length
    (its diagnostics name `length_option`, the bench option that gave it)."""
    for spec in specs:
        result = loader.check(ROOT / spec)
        if result.spec.model is None:
            raise UserError(f"{spec} defines no model (no `model` section): the benchmarks train models")
        for length in lengths or [None]:
            if overrides or length is not None:
                at_length = [option_override(f"train.seq_len={length}", f"{length_option} {length}")]
                loader.check(ROOT / spec, [*overrides, *(at_length if length is not None else [])])


def log(message: str) -> None:
    print(message, flush=True)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss, −1 targets ignored (as the generated `Model.loss`)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

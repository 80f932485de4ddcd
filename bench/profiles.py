"""torch.profiler tables of the steps behind missed targets, saved for the report.

- `hope`: one eager HOPE training step (T = 2048, batch 2), operators by self CPU time: where the
  step goes when the chunk loops run in eager mode.
- `transformer`: one compiled Transformer++ step at d_model 512, T = 2048 (the MFU target's
  configuration), by self CPU time.
- `hope_kernels`: one HOPE training step at the nested-learning comparison's configuration (width
  256, T = 512, B = 2, chunk bodies compiled) with inductor's generated kernels named in the
  profile, so a slow fused kernel shows up by name beside the matrix products. Chunk bodies
  compiled with the C++ wrapper (on the CPU, nldsl/runtime/chunked.py) call their batched
  products as `aoti_torch_cpu_bmm_out`; profiles saved before that change name them `aten::bmm`.
- `hope_components`: HOPE at the nested-learning comparison's configuration (width 256, T = 512,
  B = 2, chunk bodies compiled as the spec trains): forward + backward seconds of each part of a
  block — the self-modifying projections, the main memory, each CMS level — timed alone on the
  inputs it saw in a real step, next to the whole step, with its FLOPs and the rate it runs them at
  (against the matmul peak read in the same run), and the per-sequence state each part
  rewrites per token (elements of θ and S over the period), the quantity that bounds a chunk step
  on a CPU: every chunk reads and writes its level's whole state several times, forward and back.

- `clip_cost`: what a `clip` on HOPE's in-context levels costs a training step: the chunk-compiled
  step of `train.chunks_per_call` 8 (T = 2048, B = 2, the Transformer++ comparison's point) without
  a clip, with the clip the training error offers on the main memory and the projections, and with
  those clips and the fused write off (the PyTorch chunk step the projections took before the kernel
  learned the clip), timed in interleaved rounds.

- `titans_layer`: the Titans LMM layer of `peers --only titans_layer` (the ≥ 3× target), compiled
  as a whole graph, at T = 256 instead of the comparison's 1024 (16 chunks: the graph compiles in
  minutes, 1024 took 658 s from a cold cache), over 5 steps with inductor's kernels named: the
  share of MKL's batched products, of the projections' dense ones and of the compiled graphs'
  Python wrappers, which launch every call.

    python -m bench profile                      # all; bench/results/profile_<name>.txt
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench import peers
from bench.harness import RESULTS, TrainStep, alternate_samples, build, log, matmul_peak, random_tokens
from nldsl.runtime import blocks, fused, memory
from nldsl.runtime.chunked import compiled_chunks

TARGETS = {
    "hope": ("specs/hope.nl", [], 2048, 2, False),
    "transformer": ("specs/transformer.nl", ["model.dim=512", "heads=8"], 2048, 1, True),
    "hope_kernels": ("specs/hope.nl", ["dim=256", "heads=4"], 512, 2, "chunks"),
}
TITANS_LAYER_STEPS = 5  # profiled steps of `titans_layer` (one step is some 65 ms there)


def profile_step(spec: str, overrides: list[str], length: int, batch: int, compiled: bool | str,
                 rows: int = 18) -> str:
    model, optimizer = build(spec, overrides, seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    step = TrainStep(model, optimizer, compiled=compiled)
    return _profile_table(lambda: step(tokens, targets), warmups=2 if compiled else 1, steps=1, rows=rows)


def titans_layer(width: int = 256, heads: int = 4, chunk: int = 16, length: int = 256, batch: int = 2,
                 rows: int = 18) -> str:
    """The table of `titans_layer` (module docstring): peers' Titans layer step, compiled, over 5 steps."""
    layer, loss = peers.titans_memory_layer(width, heads, chunk, length)
    x = torch.randn(batch, length, width, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4, fused=True)
    compiled_loss = torch.compile(loss, fullgraph=True)

    def step() -> None:
        value = compiled_loss(x)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return _profile_table(step, warmups=3, steps=TITANS_LAYER_STEPS, rows=rows)


def _profile_table(step: Callable[[], object], warmups: int, steps: int, rows: int) -> str:
    """Operators of `steps` calls of `step` (after `warmups`) by self CPU time, with their shapes."""
    # Compiled kernels record themselves under their generated names (a different graph-cache key,
    # so nothing compiled without it is reused); eager steps are unaffected.
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        for _ in range(warmups):
            step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as recorded:
            for _ in range(steps):
                step()
    torch._dynamo.reset()
    by_name = sorted(recorded.key_averages(), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in by_name)
    shares = ", ".join(f"{event.key[:44]} {100 * event.self_cpu_time_total / total:.1f}% "
                       f"({_calls(event.count / steps)} a step)" for event in by_name[:5])
    averages = recorded.key_averages(group_by_input_shape=True)
    return (f"{total / steps / 1e3:.1f} ms of self CPU time a step; largest shares by operator, all shapes "
            f"together: {shares}\n"
            + averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44,
                             max_shapes_column_width=60))


def _calls(count: float) -> str:
    return f"{count:,.0f} call{'' if round(count) == 1 else 's'}"


def _detached(value):
    """A copy of a captured argument that is a leaf of its own graph (so it can be backpropagated alone)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.is_floating_point())
    if isinstance(value, memory.MemoryState):
        return memory.MemoryState([_detached(w) for w in value.weights],
                                  None if value.momentum is None else [_detached(m) for m in value.momentum])
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(item) for item in value)
    return value


def _state_per_token(cfg: memory.LevelConfig, heads: int) -> float:
    """Elements of per-sequence state (θ, and S with momentum) a level rewrites per token of its flow."""
    elements = heads * sum(out * inp for out, inp in cfg.weight_shapes()) * (2 if cfg.momentum else 1)
    return elements / cfg.chunk_size


def hope_components(width: int = 256, length: int = 512, batch: int = 2, repeats: int = 3) -> str:
    """The table of `hope_components` (module docstring)."""
    model, optimizer = build("specs/hope.nl", [f"dim={width}", "heads=4"], seq_len=length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab)
    calls: dict[str, list[tuple]] = {"projections": [], "memory": [], "cms": []}
    patched = {"projections": (blocks, "self_modifying_projections"), "cms": (blocks, "cms_level"),
               "memory": (model.module.M, "memory_level")}  # the generated module's own calls only
    originals = {name: getattr(owner, attr) for name, (owner, attr) in patched.items()}

    def capture(name: str, real: Callable) -> Callable:
        def run(*args, **kwargs):
            calls[name].append((args, kwargs))
            return real(*args, **kwargs)
        return run

    for name, (owner, attr) in patched.items():
        setattr(owner, attr, capture(name, originals[name]))
    try:
        model.loss(tokens, targets)
    finally:
        for name, (owner, attr) in patched.items():
            setattr(owner, attr, originals[name])
    layers = model.spec.model.layers
    per_block = len(calls["cms"]) // layers
    captured = {"projections": calls["projections"][0], "memory": calls["memory"][0],
                **{f"cms.{index}": calls["cms"][index] for index in range(per_block)}}  # block 0's calls

    def timed(fn: Callable[[], object]) -> float:
        fn()
        fn()  # the first call compiles the chunk bodies
        samples = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)

    def component(name: str, compiled: bool = True) -> Callable[[], None]:
        args, kwargs = captured[name]
        real = originals["cms" if name.startswith("cms.") else name]

        def run() -> None:
            inputs = _detached(list(args))
            with compiled_chunks() if compiled else contextlib.nullcontext():
                outputs = real(*inputs, **kwargs)
            tensors = [t for t in _flatten(outputs) if isinstance(t, torch.Tensor) and t.requires_grad]
            sum(t.float().square().mean() for t in tensors).backward()
        return run

    step = TrainStep(model, optimizer, compiled="chunks")
    total = timed(lambda: step(tokens, targets))
    cfgs = {"projections": model.module.PROJECTIONS_SELFMOD0, "memory": model.module.MEMORY_SELFMOD0}
    heads = {"projections": 4 * len(model.module.SELFMOD_SELFMOD0.adaptive), "memory": 4}
    rows = [f"HOPE width {width}, T={length}, B={batch}, chunk bodies compiled, {torch.get_num_threads()} thread(s);"
            f" whole training step {total:.3f} s ({batch * length / total:,.0f} tokens/s)", "",
            "| part (one block; the model has {layers}) | forward + backward s | × blocks, share of the step | "
            "GFLOP | GFLOP/s | state rewritten per token |".replace("{layers}", str(layers)),
            "|---|---:|---:|---:|---:|---:|"]
    parts = 0.0
    for name in ["projections", "memory", *sorted(k for k in captured if k.startswith("cms."))]:
        seconds = timed(component(name))
        gflop = _counted_flops(component(name, compiled=False)) / 1e9
        parts += seconds * layers
        if name.startswith("cms."):
            level = captured[name][0][0]
            how = "in context" if level.in_context else "static"
            label = f"CMS level {name[4:]} (period {level.config.chunk_size}, {how})"
            state = _state_per_token(level.config, 1) if level.in_context else 0.0
        else:
            label = {"projections": "self-modifying projections M_k, M_v, M_η, M_α", "memory": "main memory"}[name]
            state = _state_per_token(cfgs[name], heads[name])
        rows.append(f"| {label} | {seconds:.3f} | {100 * seconds * layers / total:.0f}% | {gflop:.2f} | "
                    f"{gflop / seconds:.1f} | {state:,.0f} |")
    step_gflop = _counted_flops(lambda: TrainStep(model, optimizer)(tokens, targets)) / 1e9
    rows.append(f"| the parts together (each timed alone, so with its own first calls and colder caches) | — | "
                f"{100 * parts / total:.0f}% | — | — | — |")
    rows.append(f"| the whole training step | {total:.3f} | 100% | {step_gflop:.2f} | {step_gflop / total:.1f} | — |")
    peak = matmul_peak() / 1e9
    rows += ["", f"GFLOP: counted once by `FlopCounterMode` on the eager forward + backward with the fused write off "
             "(the counter does not see that custom op, which computes the same products); GFLOP/s: that count "
             f"over the chunk-compiled seconds. This run's fp32 matmul peak: {peak:.1f} GFLOP/s."]
    return "\n".join(rows)


CLIP_COST_ROUNDS = 6
HOPE_CLIPS = ["model.block.titans.memory.clip=1", "model.block.titans.projections.clip=1"]


def clip_cost(length: int = 2048, batch: int = 2, rounds: int = CLIP_COST_ROUNDS) -> str:
    """The table of `clip_cost` (module docstring)."""
    tokens, targets = random_tokens(batch, length, 256)
    cases = {"no clip": ([], True), "clip on both levels": (HOPE_CLIPS, True),
             "clip on both levels, fused write off": (HOPE_CLIPS, False)}
    contenders = {}
    for name, (overrides, kernel) in cases.items():
        model, optimizer = build("specs/hope.nl", overrides, seq_len=length)
        step = TrainStep(model, optimizer, compiled="chunks", chunks_per_call=8)

        def call(step: TrainStep = step, kernel: bool = kernel) -> None:
            with fused.fused_writes(kernel):
                step(tokens, targets)
        contenders[name] = call
    samples = alternate_samples(contenders, rounds=rounds, warmup=2)
    base = statistics.median(samples["no clip"])
    rows = [f"HOPE (specs/hope.nl) T={length}, B={batch}, chunk bodies compiled, chunks_per_call 8, "
            f"{torch.get_num_threads()} thread(s), {rounds} interleaved rounds after 2 warm-up steps each; "
            f"clips: {' '.join(HOPE_CLIPS)}", "", "| step | median s | × no clip | every round (s) |",
            "|---|---:|---:|---|"]
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.3f} | {median / base:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"hope_components": hope_components, "clip_cost": clip_cost}  # own tables


def _counted_flops(run: Callable[[], object]) -> float:
    """FLOPs of one call of `run` as `FlopCounterMode` counts them, with the fused write off (its custom op
    is invisible to the counter; the PyTorch step computes the same products)."""
    with fused.fused_writes(False), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _flatten(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, memory.MemoryState):
        yield from value.weights
        yield from value.momentum or []
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)


def run(names: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        log(f"profile {name} ...")
        if name == "titans_layer":
            header = (f"the Titans LMM layer of `python -m bench peers --only titans_layer` at T=256 (width 256, "
                      f"4 heads, chunk 16, B=2), compiled whole, forward + backward + AdamW, "
                      f"{TITANS_LAYER_STEPS} steps, {torch.get_num_threads()} thread(s); "
                      "'## Call CompiledFxGraph' rows are the compiled graphs' Python wrappers\n")
            text = header + titans_layer()
            (RESULTS / f"profile_{name}.txt").write_text(text + "\n", encoding="utf-8")
            log(text)
            continue
        if name in TABLES:
            text = TABLES[name]()
            (RESULTS / f"profile_{name}.txt").write_text(text + "\n", encoding="utf-8")
            log(text)
            continue
        spec, overrides, length, batch, compiled = TARGETS[name]
        table = profile_step(spec, overrides, length, batch, compiled)
        mode = {False: "eager", True: "compiled", "chunks": "chunk bodies compiled"}[compiled]
        header = (f"{spec} {' '.join(overrides)} T={length} B={batch} {mode}, "
                  f"one training step, {torch.get_num_threads()} thread(s)\n")
        (RESULTS / f"profile_{name}.txt").write_text(header + table + "\n", encoding="utf-8")
        log(header + table)


def main(args) -> None:
    run(args.names)


def add_arguments(parser) -> None:
    names = [*TARGETS, *TABLES, "titans_layer"]
    parser.add_argument("names", nargs="*", default=names, choices=names, metavar="NAME",
                        help=f"profiles to take, of: {', '.join(names)} (default: all)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench profile")

"""The CUDA suite in one command: correctness on the GPU, then throughput and MFU in bf16 autocast.

    python -m bench gpu                          # on a CUDA machine, within --budget seconds
    python -m bench gpu --device cpu --tiny      # every code path at toy sizes, on the CPU

Phases, each written to the JSON and the markdown as soon as it ends (an interrupted run keeps
what it finished), each skipped with a note when the time budget (`--budget`, seconds) would be
overrun:

1. Correctness. (a) The generated model against the reference interpreter (nldsl.interpreter,
   token by token) in float64 on the device, tiny configurations with lengths that are not
   multiples of the chunk sizes, eager for several specs and under torch.compile for two.
   (b) The bf16-autocast compiled logits against the fp32 eager logits of the same model and batch,
       its parameters moved off their initialisation (where every loss is near ln V whatever the
       precision, so a loss comparison could hardly fail); the losses are reported beside it.
2. Throughput. Transformer++ (the spec, d_model 1024, 8 blocks: 134.5M parameters, so that
   compile, warm-up and timing fit the budget with room to spare) compiled, and HOPE with its
   in-context updates on at the nearest equal parameter count (layers chosen by counting); compiling
   HOPE whole unrolls every chunk of every level and would not fit the budget. Training steps
   (forward + backward + clip + AdamW) in bf16 autocast, T = 2048. HOPE runs with its chunk bodies
   compiled (`train.compile = chunks`, `--hope-mode`), the mode its spec trains in, and with
   `train.recompute = 16` (`--hope-recompute`): storing every chunk's state ran an eager HOPE of
   this size out of an H200's 140 GiB at batch 8. Peak device memory is reported per model; a model
   out of memory is timed again at half the batch, down to 1, and the page says at which batch it ran.
3. MFU against the card's dense bf16 peak (a table by device name; H100 SXM: 989 TFLOP/s), with a
   measured bf16 matmul rate beside it. FLOPs per step are counted once (FlopCounterMode over a
   batch-1 forward + backward, times the batch, attention counted causally).
4. Where the time goes: one more step of each model under torch.profiler, its device kernels counted
   and summed. Their total against the unprofiled step time is how busy the GPU was (a step that
   launches many small kernels leaves it idle between them); the kernels with the largest shares
   are listed by name.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.harness import (
    RESULTS,
    ROOT,
    TrainStep,
    at_least,
    attention_flops,
    build,
    check_writable,
    count_flops,
    log,
    machine,
    matmul_peak,
    parameter_count,
    positive_float,
    random_tokens,
    result_path,
    write_result,
)
from nldsl import loader
from nldsl.interpreter import interpret

# (a word of torch.cuda.get_device_name(), dense bf16 FLOP/s): the longest key whose words all appear in
# the name wins, and a word matches whole ("L4" is not "L40", "H100" alone is not the H100 NVL's row)
DENSE_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("H200 NVL", 835e12),
    ("GH200", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
MODE_NAMES = {False: "eager", True: "compiled", "blocks": "compiled per block", "chunks": "compiled per chunk"}
OUTPUT_RTOL = 1e-6  # float64 generated model vs interpreter, relative to the logits' norm
# bf16 autocast compiled logits vs fp32 eager logits, relative to their norm, with the parameters moved
# off their initialisation (at it the logits are near zero and every loss near ln V, whatever the
# precision). `python -m bench precision` puts bfloat16 at 0.006-0.025 on every spec on the CPU.
BF16_LOGITS_RTOL = 5e-2
# What runs before the logits comparison measured (their bf16 entries have no `compared` field): the bf16
# and fp32 losses at the parameters' initialisation (both near ln V), their relative difference held to 0.02.
OLD_BF16_LOSS_RTOL = 2e-2
BF16_COMPARED = "logits, parameters off their initialisation"  # the `compared` field of a bf16 entry
CORRECTNESS_SPECS = ("specs/transformer.nl", "specs/titans_lmm.nl", "specs/hope.nl", "specs/gated_deltanet.nl",
                     "specs/titans_mac.nl")
COMPILED_CORRECTNESS = ("specs/transformer.nl", "specs/titans_lmm.nl")
TINY_CORRECTNESS = ["model.dim=32", "model.layers=1"]
FULL = {"dim": 1024, "heads": 16, "transformer_layers": 8, "length": 2048, "batch": 8, "steps": 5}
TINY = {"dim": 64, "heads": 4, "transformer_layers": 2, "length": 128, "batch": 2, "steps": 2}


class Run:
    """The results so far, written (JSON and markdown) after every phase."""

    def __init__(self, device: str, budget: float, markdown: Path, name: str) -> None:
        self.began = time.perf_counter()
        self.budget = budget
        self.markdown = markdown
        self.name = name
        self.data: dict = {"machine": machine(), "device": device, "name": name, "phases": {}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.began)

    def save(self) -> None:
        self.data["elapsed_seconds"] = time.perf_counter() - self.began
        write_result(self.name, self.data)
        self.markdown.parent.mkdir(parents=True, exist_ok=True)
        self.markdown.write_text(render(self.data), encoding="utf-8")


def autocast(device: str, enabled: bool = True):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if enabled \
        else contextlib.nullcontext()


def interpreter_agreement(spec: str, device: str, compiled: bool, length: int = 21) -> dict:
    """Relative difference of the generated model's float64 logits and the interpreter's."""
    result = loader.check(ROOT / spec, [*TINY_CORRECTNESS, f"train.seq_len={length}"])
    module = loader.compile_module(result)
    torch.manual_seed(0)
    model = module.build(device=device, dtype=torch.float64)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))  # off the (often symmetric) initialisation
    tokens = torch.randint(0, result.spec.model.vocab, (2, length), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    forward = torch.compile(model, fullgraph=True) if compiled else model
    with torch.no_grad():
        ours = forward(tokens)
        reference = interpret(result.spec, dict(model.named_parameters()), tokens)
    torch._dynamo.reset()
    error = ((ours - reference).norm() / reference.norm()).item()
    return {"relative_error": error, "ok": error <= OUTPUT_RTOL, "length": length}


def bf16_agreement(spec: str, device: str, length: int) -> dict:
    """bf16 autocast compiled logits (and loss) vs fp32 eager, same parameters and batch, the
    parameters moved off their initialisation as in `interpreter_agreement`."""
    model, _ = build(spec, ["model.dim=64", "model.layers=2"], seq_len=length, device=device)
    tokens, targets = random_tokens(2, length, model.spec.model.vocab, device=device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator).to(param))
        reference, reference_loss = model(tokens), model.loss(tokens, targets).item()
        with autocast(device):
            low = torch.compile(model, fullgraph=True)(tokens).float()
            low_loss = torch.compile(model.loss, fullgraph=True)(tokens, targets).item()
    torch._dynamo.reset()
    error = ((low - reference).norm() / reference.norm()).item()
    return {"fp32_eager": reference_loss, "bf16_compiled": low_loss, "relative_error": error,
            "ok": error <= BF16_LOGITS_RTOL, "compared": BF16_COMPARED,
            "tolerance": BF16_LOGITS_RTOL}


def correctness(run: Run, tiny: bool) -> None:
    device = run.data["device"]
    phase = run.data["phases"].setdefault("correctness", {"interpreter": {}, "bf16": {}})
    for spec in CORRECTNESS_SPECS:
        for compiled in (False, True) if spec in COMPILED_CORRECTNESS else (False,):
            key = f"{spec} ({'compiled' if compiled else 'eager'})"
            if run.left() < 60:
                phase["interpreter"][key] = {"skipped": "time budget"}
                continue
            phase["interpreter"][key] = outcome = interpreter_agreement(spec, device, compiled)
            log(f"gpu correctness {key}: relative error {outcome['relative_error']:.2e}")
            run.save()
    for spec in ("specs/transformer.nl", "specs/titans_lmm.nl"):
        if run.left() < 60:
            phase["bf16"][spec] = {"skipped": "time budget", "compared": BF16_COMPARED}
            continue
        phase["bf16"][spec] = outcome = bf16_agreement(spec, device, 64 if tiny else 256)
        log(f"gpu bf16 {spec}: loss fp32 {outcome['fp32_eager']:.4f} bf16 {outcome['bf16_compiled']:.4f}, logits' "
            f"relative difference {outcome['relative_error']:.2e}")
        run.save()


def equal_parameter_layers(dim: int, heads: int, target: int) -> tuple[int, int]:
    """HOPE's block count whose parameter count is nearest `target`, and that count (meta device)."""
    counts = {}
    for layers in range(1, 49):
        result = loader.check(ROOT / "specs/hope.nl", [f"dim={dim}", f"heads={heads}", f"model.layers={layers}"])
        counts[layers] = sum(p.numel() for p in loader.compile_module(result).build("meta").parameters())
        if counts[layers] > target:
            break
    best = min(counts, key=lambda n: abs(counts[n] - target))
    return best, counts[best]


def dense_peak(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, table_peak(name)


def table_peak(name: str) -> float | None:
    """The dense bf16 peak of the card a device name names, or None for a card the table lacks."""
    words = set(re.split(r"[\s-]+", name))
    matches = [(len(key), peak) for key, peak in DENSE_BF16_PEAKS if set(key.split()) <= words]
    return max(matches)[1] if matches else None


def throughput(run: Run, size: dict, hope_mode: bool | str, hope_recompute: int) -> None:
    device = run.data["device"]
    name, table_peak = dense_peak(device)
    measured = matmul_peak(size=1024 if size is TINY else 8192, seconds=1.0, device=device, dtype=torch.bfloat16)
    peak = table_peak or measured
    phase = run.data["phases"].setdefault("throughput", {
        "device_name": name, "table_peak_flops": table_peak, "measured_bf16_matmul_flops": measured,
        "peak_used": "table" if table_peak else "measured", "config": size, "models": {}})
    run.save()
    dim, heads, length, batch = size["dim"], size["heads"], size["length"], size["batch"]
    transformer_overrides = [f"dim={dim}", f"heads={heads}", f"model.layers={size['transformer_layers']}"]
    transformer_params = parameter_count(build("specs/transformer.nl", transformer_overrides, device="meta")[0])
    hope_layers, _ = equal_parameter_layers(dim, heads, transformer_params)
    recompute = 0 if hope_mode is True else hope_recompute  # the checker's rule: not with one whole graph
    plans = [("transformer", "specs/transformer.nl", transformer_overrides, True, 0),
             ("hope", "specs/hope.nl", [f"dim={dim}", f"heads={heads}", f"model.layers={hope_layers}"], hope_mode,
              recompute)]
    for label, spec, overrides, compiled, stretch in plans:
        if run.left() < 45:
            phase["models"][label] = {"skipped": "time budget"}
            run.save()
            continue
        phase["models"][label] = measure_fitting(spec, overrides, length, batch, compiled, device, peak, size,
                                                 run, label, stretch)
        run.save()


def measure_fitting(spec: str, overrides: list[str], length: int, batch: int, compiled: bool | str, device: str,
                    peak: float, size: dict, run: Run, label: str, recompute: int) -> dict:
    """`measure_model` at `batch`, halved after each out-of-memory error while the budget allows, so a
    model too large for the card at the suite's batch is still timed at the largest batch that fits (the
    outcome's `batch`; the batches that ran out, in `out_of_memory_batches`). Every batch out of memory:
    the last error, recorded for this model, and the other models still run."""
    ran_out: list[int] = []
    while True:
        log(f"gpu throughput {label}: {overrides}, batch {batch}, {MODE_NAMES[compiled]} ...")
        try:
            outcome = measure_model(spec, overrides, length, batch, compiled, device, peak, size, run,
                                    recompute=recompute)
        except torch.cuda.OutOfMemoryError as error:
            message = out_of_memory(error)
            log(f"gpu throughput {label} at batch {batch}: {message}")
            torch._dynamo.reset()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            ran_out.append(batch)
            if batch > 1 and run.left() >= 45:
                batch //= 2
                continue
            return {"overrides": overrides, "compiled": compiled, "recompute": recompute, "error": message,
                    "out_of_memory_batches": ran_out}
        return {**outcome, "batch": batch, "out_of_memory_batches": ran_out}


def out_of_memory(error: BaseException) -> str:
    """A CUDA out-of-memory error in one line (torch's message runs to a paragraph of allocator advice)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    first = first.split(". Of the allocated")[0][:300]
    return first if "out of memory" in first.lower() else f"out of memory: {first}" if first else "out of memory"


def measure_model(spec: str, overrides: list[str], length: int, batch: int, compiled: bool | str, device: str,
                  peak: float, size: dict, run: Run, recompute: int = 0) -> dict:
    model, optimizer = build(spec, overrides, seq_len=length, device=device)
    # Counted on one whole sequence of length T, not a shorter one scaled up: HOPE's count grows faster
    # than T (at width 64 and 128, T 2048 counts 8.39× and 8.36× T 256), so a scaled count would be 4%
    # short. It costs an eager step under the counter (tens of seconds for HOPE at width 1024).
    single, single_targets = random_tokens(1, length, model.spec.model.vocab, device=device)
    with autocast(device):
        counted, _ = count_flops(lambda: model.loss(single, single_targets).backward())
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the counted step's activations, before the timed steps' peak is read
    flops = batch * counted + attention_flops(model, batch, length)
    tokens, targets = random_tokens(batch, length, model.spec.model.vocab, device=device)
    step = TrainStep(model, optimizer, compiled=compiled, recompute=recompute)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def call():
        with autocast(device):
            step(tokens, targets)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    began = time.perf_counter()
    call()
    first = time.perf_counter() - began
    seconds = []
    for _ in range(size["steps"] if compiled is True else min(3, size["steps"])):  # HOPE steps are long
        if run.left() < 15 and seconds:
            break
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    seconds.sort()
    median = seconds[len(seconds) // 2]
    if not device.startswith("cuda"):
        kernels = {"skipped": "no device kernels on the cpu"}
    elif run.left() <= 3 * median + 20:
        kernels = {"skipped": "time budget"}
    else:
        try:
            kernels = kernel_profile(call, median)
        except torch.cuda.OutOfMemoryError as error:  # the timed steps above still count
            kernels = {"skipped": out_of_memory(error)}
            torch.cuda.empty_cache()
    torch._dynamo.reset()
    outcome = {"overrides": overrides, "compiled": compiled, "recompute": recompute,
               "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
               "parameters": parameter_count(model),
               "flops_per_step": flops, "first_step_seconds": first, "step_seconds": median,
               "timed_steps": len(seconds), "tokens_per_second": batch * length / median,
               "mfu": flops / median / peak, "kernels": kernels}
    log(f"gpu throughput: {outcome['tokens_per_second']:,.0f} tok/s, MFU {100 * outcome['mfu']:.1f}%")
    return outcome


def kernel_profile(call, step_seconds: float, top: int = 8, kernels: DeviceType = DeviceType.CUDA) -> dict:
    """One profiled step: how many device kernels it launched, their summed time against the unprofiled
    step time (the profiler slows the host, hardly the kernels), and the kernels with the largest shares.
    `kernels` is the device whose events count (CPU: every operator, which is how the tests exercise it)."""
    # device kernels only: the host's events of a HOPE step (about a million) took minutes to read back
    activities = [ProfilerActivity.CUDA] if kernels == DeviceType.CUDA else [ProfilerActivity.CPU]
    with profile(activities=activities) as recorded:
        call()
    durations: dict[str, list[float]] = {}
    for event in recorded.events():
        if event.device_type == kernels:
            durations.setdefault(event.name, []).append(event.time_range.elapsed_us() * 1e-6)
    if not durations:  # the profiler can miss a device's events: say so rather than read "0 kernels, idle"
        log("gpu profile: the profiler recorded no device kernel")
        return {"skipped": "the profiler recorded no device kernel"}
    total = sum(sum(values) for values in durations.values())  # kernels on several streams overlap: can pass 100%
    largest = sorted(durations.items(), key=lambda item: -sum(item[1]))[:top]
    outcome = {"launches": sum(len(values) for values in durations.values()), "kernel_seconds": total,
               "busy_fraction": total / step_seconds,
               "largest": [{"name": name, "seconds": sum(values), "calls": len(values)} for name, values in largest]}
    log(f"gpu profile: {outcome['launches']:,} kernels, {total:.3f} s of kernel time in a {step_seconds:.3f} s step")
    return outcome


def render(data: dict) -> str:
    """The markdown page of a run."""
    lines = ["# nldsl on the GPU", "",
             f"Measured with `python -m bench gpu` on {data['machine'].get('cuda') or data['device']} "
             f"(torch {data['machine']['torch']}, {data['machine']['time']}); "
             f"{data.get('elapsed_seconds', 0):.0f} s in all. Numbers come from bench/results/"
             f"{data.get('name', 'gpu')}.json.", ""]
    correctness_phase = data["phases"].get("correctness")
    if correctness_phase:
        lines += ["## Correctness", "",
                  f"Generated model vs the reference interpreter, float64 logits, tiny configurations "
                  f"(`{' '.join(TINY_CORRECTNESS)}`, T = 21); tolerance {OUTPUT_RTOL:g} relative.", "",
                  "| spec | relative error | ok |", "|---|---:|---|"]
        for key, outcome in correctness_phase["interpreter"].items():
            lines.append(f"| {key} | {outcome.get('relative_error', float('nan')):.2e} | "
                         f"{outcome.get('ok', outcome.get('skipped'))} |")
        lines += render_bf16(correctness_phase["bf16"])
    phase = data["phases"].get("throughput")
    if phase:
        peak = phase["table_peak_flops"] or phase["measured_bf16_matmul_flops"]
        cfg = phase["config"]
        lines += ["## Throughput and MFU", "",
                  f"Training steps in bf16 autocast, T = {cfg['length']}, batch {cfg['batch']}, width "
                  f"{cfg['dim']}, {cfg['heads']} heads. Peak: {peak / 1e12:.3g} TFLOP/s "
                  f"({phase['peak_used']}; measured bf16 matmul {phase['measured_bf16_matmul_flops'] / 1e12:.3g} "
                  f"TFLOP/s) on {phase['device_name']}.", "",
                  "| model | mode | parameters | tokens/s | step s | first step s | peak memory | MFU |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for label, outcome in phase["models"].items():
            if "skipped" in outcome:
                lines.append(f"| {label} | skipped: {outcome['skipped']} | | | | | | |")
                continue
            if "error" in outcome:
                mode = MODE_NAMES.get(outcome.get("compiled"), "")
                lines.append(f"| {label} | {mode}{', ' if mode else ''}failed: {outcome['error']} | | | | | | |")
                continue
            mode = MODE_NAMES[outcome["compiled"]]
            if outcome.get("recompute"):
                mode += f", recompute {outcome['recompute']}"
            if outcome.get("batch", cfg["batch"]) != cfg["batch"]:
                ran_out = ", ".join(str(b) for b in outcome.get("out_of_memory_batches", []))
                mode += f", **batch {outcome['batch']}**" + (f" (batch {ran_out}: out of memory)" if ran_out else "")
            memory = outcome.get("peak_memory_bytes")
            lines.append(f"| {label} | {mode} | "
                         f"{outcome['parameters']:,} | {outcome['tokens_per_second']:,.0f} | "
                         f"{outcome['step_seconds']:.3f} | {outcome['first_step_seconds']:.1f} | "
                         f"{f'{memory / 2**30:.1f} GiB' if memory else '—'} | {100 * outcome['mfu']:.1f}% |")
        models = phase["models"]
        if "tokens_per_second" in models.get("transformer", {}) and "tokens_per_second" in models.get("hope", {}):
            ratio = models["transformer"]["tokens_per_second"] / models["hope"]["tokens_per_second"]
            batches = {models[m].get("batch", cfg["batch"]) for m in ("transformer", "hope")}
            lines += ["", f"Targets: Transformer++ MFU ≥ 40%: {100 * models['transformer']['mfu']:.1f}% "
                          f"({'met' if models['transformer']['mfu'] >= 0.4 else 'missed'}); HOPE within 2.5× of "
                          f"Transformer++: {ratio:.2f}× slower ({'met' if ratio <= 2.5 else 'missed'})"
                          + ("." if len(batches) == 1 else
                             f", at different batches ({models['hope'].get('batch', cfg['batch'])} for HOPE, "
                             f"{models['transformer'].get('batch', cfg['batch'])} for Transformer++).")]
        lines.append("")
        lines += render_kernels(models)
    return "\n".join(lines)


def render_bf16(entries: dict) -> list[str]:
    """The bf16 comparisons, each under a heading that says what its entry measured: the logits with the
    parameters off their initialisation (entries with `compared`), or, in runs before that, the losses at
    the initialisation (no `compared` field)."""
    groups: dict[str | None, dict] = {}
    for spec, outcome in entries.items():
        kind = outcome.get("compared") if isinstance(outcome, dict) else None
        groups.setdefault(kind, {})[spec] = outcome
    lines = []
    for kind, group in groups.items():
        if kind is None:
            lines += ["", "bf16 autocast compiled loss vs fp32 eager loss, at the parameters' initialisation (where "
                      f"every loss is near ln V): the losses' relative difference (tolerance {OLD_BF16_LOSS_RTOL:g}; "
                      "a run before the logits comparison):", "",
                      "| spec | fp32 eager loss | bf16 compiled loss | losses' relative difference | ok |",
                      "|---|---:|---:|---:|---|"]
        else:
            tolerance = next((o["tolerance"] for o in group.values() if "tolerance" in o), BF16_LOGITS_RTOL)
            lines += ["", f"bf16 autocast compiled vs fp32 eager, {kind}: the losses, and the logits' relative "
                      f"difference (tolerance {tolerance:g}):", "",
                      "| spec | fp32 eager loss | bf16 compiled loss | logits' relative difference | ok |",
                      "|---|---:|---:|---:|---|"]
        for spec, outcome in group.items():
            if "skipped" in outcome:
                lines.append(f"| {spec} | | | | {outcome['skipped']} |")
                continue
            lines.append(f"| {spec} | {outcome['fp32_eager']:.4f} | {outcome['bf16_compiled']:.4f} | "
                         f"{outcome['relative_error']:.2e} | {outcome['ok']} |")
    return [*lines, ""]


def render_kernels(models: dict) -> list[str]:
    profiled = {label: outcome["kernels"] for label, outcome in models.items()
                if "launches" in outcome.get("kernels", {})}
    if not profiled:
        return []
    lines = ["## Where the step's time goes", "",
             "One more training step of each model under torch.profiler: the device kernels it launched, their "
             "summed time against the unprofiled step time (how busy the GPU was), and the kernels with the "
             "largest shares of that kernel time.", ""]
    for label, kernels in profiled.items():
        step = kernels["kernel_seconds"] / kernels["busy_fraction"] if kernels["busy_fraction"] else 0.0
        lines += [f"**{label}**: {kernels['launches']:,} kernels, {kernels['kernel_seconds']:.3f} s of kernel time "
                  f"in a {step:.3f} s step (GPU busy {100 * kernels['busy_fraction']:.0f}%).", "",
                  "| kernel | share of kernel time | calls |", "|---|---:|---:|"]
        for kernel in kernels["largest"]:
            name = kernel["name"].replace("|", "\\|")
            name = name if len(name) <= 90 else name[:87] + "..."
            share = kernel["seconds"] / kernels["kernel_seconds"] if kernels["kernel_seconds"] else 0.0
            lines.append(f"| `{name}` | {100 * share:.1f}% | {kernel['calls']:,} |")
        lines.append("")
    return lines


def main(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or not device.startswith("cuda")
    name = "gpu" if device.startswith("cuda") and not args.tiny else "gpu_tiny"
    default = ROOT / "docs" / "results" / "performance-gpu.md" if name == "gpu" else RESULTS / "gpu_tiny.md"
    markdown = Path(args.output) if args.output else default
    check_writable(markdown, "the markdown page")  # now, not after the first phase has run
    check_writable(result_path(name), "the results file")
    run = Run(device, args.budget, markdown, name)
    log(f"gpu suite on {device} ({'tiny' if tiny else 'full'} sizes), budget {args.budget:.0f} s")
    correctness(run, tiny)
    throughput(run, TINY if tiny else FULL, {"eager": False, "compiled": True, "chunks": "chunks"}[args.hope_mode],
               args.hope_recompute)
    run.save()
    log(f"gpu suite done in {time.perf_counter() - run.began:.0f} s: {markdown}")
    phases = run.data["phases"]
    checks = [*phases.get("correctness", {}).get("interpreter", {}).values(),
              *phases.get("correctness", {}).get("bf16", {}).values()]
    return 0 if all(check.get("ok", True) for check in checks) else 1


def device_name(text: str) -> str:
    """An argparse type: a torch device this machine has (a typo or a missing GPU is a usage error, not a
    RuntimeError or an AssertionError from deep inside torch)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"the suite runs on cpu or cuda, not {device.type}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine "
                                         "(use --device cpu --tiny to test the code paths)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def add_arguments(parser) -> None:
    parser.add_argument("--device", type=device_name, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: test every code path quickly")
    parser.add_argument("--budget", type=positive_float, default=330.0,
                        help="seconds; later phases are skipped past it (default: %(default)g)")
    parser.add_argument("--hope-mode", choices=("eager", "compiled", "chunks"), default="chunks",
                        help="how HOPE runs: chunks (each chunk body compiled once, the default), eager, or "
                             "compiled whole (unrolls every chunk: a very long compile at T = 2048)")
    parser.add_argument("--hope-recompute", type=at_least(0), default=16, metavar="N",
                        help="HOPE's train.recompute: one state kept per N chunks (0 = every chunk's; ignored with "
                             "--hope-mode compiled; default: %(default)s)")
    parser.add_argument("--output", help="markdown file (default: docs/results/performance-gpu.md on CUDA)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench gpu")

"""docs/results/performance.md and its figures, from the JSON results of the other commands.

Nothing is measured here: every number on the page comes from bench/results/*.json and names the
command that produced it. A benchmark that has not been run (or was interrupted) shows as such.
The hand-written notes (how the numbers were taken, what changed, why a target is missed) come
from bench/report_notes.md unless `--notes` names another file.

    python -m bench report
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

from bench.harness import RESULTS, ROOT, point_key, read_result, result_path
from bench.peak_memory import WARMUP_LENGTH
from bench.smoke import stored_full_speed_check
from nldsl.cli import UserError
from nldsl.files import write_atomic

DOCS = ROOT / "docs" / "results"
PAGE = DOCS / "performance.md"
NOTES = Path(__file__).with_name("report_notes.md")


def fmt(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


# the Titans layer's contender with `readout = chunk_start` (bench/peers.py titans_layer); not the target's
CHUNK_START = "nldsl_compiled_chunk_start"
PLOT_INSTALL = "pip install -e '.[plot]' (or pip install matplotlib)"  # pyproject.toml's `plot` extra


def require_matplotlib() -> None:
    """Refuse before writing anything when the figures cannot be drawn (a half-written page helps nobody)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"bench report draws its figures with matplotlib, which is not installed: {PLOT_INSTALL}")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported late: the report's text needs none of it)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, figure, name: str) -> str:
    """Write a figure next to the report and return its file name for the markdown link."""
    figure.tight_layout()
    figure.savefig(DOCS / name, dpi=110)
    plt.close(figure)
    return name


def plot_train(train: dict) -> str | None:
    plt = pyplot()
    points = [p for p in train["points"] if "tokens_per_second" in p]
    if not points:
        return None
    specs = sorted({p["spec"] for p in points})
    lengths = sorted({p["length"] for p in points})
    series = [(length, mode) for length in lengths for mode in ("eager", "compiled", "chunks")
              if any(p["length"] == length and p["mode"] == mode for p in points)]
    figure, axis = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(1, len(series))
    for index, (length, mode) in enumerate(series):
        values = [next((p["tokens_per_second"] for p in points if p["spec"] == spec and p["length"] == length
                        and p["mode"] == mode), 0) for spec in specs]
        axis.bar([i + index * width for i in range(len(specs))], values, width, label=f"T={length} {mode}",
                 hatch={"compiled": "//", "chunks": ".."}.get(mode))
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(specs))])
    axis.set_xticklabels([s.removeprefix("specs/").removesuffix(".nl") for s in specs], rotation=30, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("training tokens/s (log)")
    axis.legend(fontsize=8, ncol=2)
    machine = train.get("machine") if isinstance(train.get("machine"), dict) else {}
    # each point stamps its own threads; earlier points only the file's machine
    threads = sorted({p.get("threads") or machine.get("threads") for p in points} - {None})
    axis.set_title("Training-step throughput, "
                   + (f"{'/'.join(map(str, threads))} CPU thread{'s' if threads != [1] else ''}" if threads else "CPU"))
    return save(plt, figure, "train_throughput.png")


def plot_memory(memory: dict) -> str | None:
    plt = pyplot()
    points = [p for p in memory["points"] if "step_mib" in p]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for target in sorted({p["target"] for p in points}):
        rows = sorted((p["length"], p["step_mib"]) for p in points if p["target"] == target)
        label = target.removeprefix("specs/").removesuffix(".nl").replace("transformer_pp:math",
                                                                          "hand Transformer, (T,T) scores")
        axis.plot([r[0] for r in rows], [max(r[1], 0.5) for r in rows], marker="o", label=label)
    lengths = sorted({p["length"] for p in points})
    axis.plot(lengths, [10 * t / lengths[0] for t in lengths], "k:", label="∝ T (reference slope)")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("sequence length T (batch 1)")
    axis.set_ylabel("peak RSS increase of one step (MiB)")
    axis.legend(fontsize=8)
    axis.set_title("Peak memory of a training step")
    return save(plt, figure, "peak_memory.png")


def plot_chunks(chunks: dict) -> str | None:
    plt = pyplot()
    points = [p for p in chunks["points"] if "eval_loss" in p]
    if not points:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in sorted({p["model"] for p in points}):
        rows = sorted((p["chunk"], p["tokens_per_second"], p["eval_loss"]) for p in points if p["model"] == model)
        left.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=model)
        right.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label=model)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("memory chunk size C")
        axis.legend()
    left.set_ylabel("training tokens/s (eager)")
    right.set_ylabel(f"held-out loss after {chunks['steps']} steps")
    return save(plt, figure, "chunk_sweep.png")


def targets_section(peers: dict | None, mfu: dict | None, train: dict | None, smoke: dict | None = None) -> list[str]:
    comparisons = (peers or {}).get("comparisons", {})
    failures = (peers or {}).get("failures")
    failures = failures if isinstance(failures, dict) else {}
    rows = []

    def when(name: str) -> str:
        """When a peer comparison's numbers were measured, and whether its last run failed (the peers
        keep the earlier numbers then)."""
        failure = failures.get(name)
        failed = (f"; the last run ({failure.get('when', 'date unknown')}) failed, so this is the one before"
                  if isinstance(failure, dict) and "error" in failure else "")
        return stamp_note(comparisons.get(name)) + failed

    def row(target: str, value: str, met: bool | None, command: str) -> None:
        status = "not measured" if met is None else ("met" if met else "missed")
        rows.append(f"| {target} | {value} | {status} | `{command}` |")

    run = mfu_target_run(mfu)
    steps = (run or {}).get("steps", {})
    compiled = steps.get("transformer_compiled")
    row("compiled Transformer++ ≥ 55% of fp32 matmul peak (d 512, T 2048)",
        f"{100 * compiled['mfu']:.1f}%"
        + (f" of {run['peak_flops'] / 1e9:,.1f} GFLOP/s" if "peak_flops" in run else "")
        + f" (hand-written: {100 * steps['hand_transformer_compiled']['mfu']:.1f}%)"
        + stamp_note(run) if compiled and "hand_transformer_compiled" in steps
        else "— (no run at d 512, T 2048)" if mfu and run is None else "—",
        None if not compiled else compiled["mfu"] >= 0.55, "python -m bench mfu")
    hope = comparisons.get("hope_transformer", {})
    row("HOPE ≥ 0.3× Transformer++ tokens/s, equal parameters, T 2048",
        f"{hope['hope_over_transformer']:.4f}×" + batch_note(hope) + peak_note(hope) + when("hope_transformer")
        if "hope_over_transformer" in hope
        else short_error(hope.get("error", "—")),
        None if "hope_over_transformer" not in hope else hope["hope_over_transformer"] >= 0.3,
        "python -m bench peers --only hope_transformer")
    titans = comparisons.get("titans_layer", {})
    # the target follows the spec's own (causal) readout; the chunk-start contender is shown beside it
    speedups = titans.get("speedup_vs_titans_pytorch", {})
    best = max((v for name, v in speedups.items() if name != CHUNK_START), default=None)
    recurrence = max((v for name, v in titans.get("speedup_vs_titans_pytorch_chunk_recurrence", {}).items()
                      if name != CHUNK_START), default=None)
    row("Titans LMM layer ≥ 3× titans-pytorch NeuralMemory",
        f"{best:.2f}× (eager {speedups['nldsl_eager']:.2f}×)"
        + (f"; against NeuralMemory running the chunk recurrence as nldsl does (its `batch_size` = the chunk; "
           f"by default it takes every chunk's surprise at the call's starting weights): {recurrence:.2f}×"
           if recurrence else "")
        + (f"; with `readout = chunk_start` (every query of a chunk read at the weights the chunks before it "
           f"wrote, the granularity NeuralMemory reads at): {speedups[CHUNK_START]:.2f}×"
           if CHUNK_START in speedups else "")
        + peak_note(titans) + when("titans_layer")
        if best else
        short_error(titans.get("error", "—")), None if best is None else best >= 3,
        "python -m bench peers --only titans_layer")
    nested = comparisons.get("hope_nested_learning", {})
    row("HOPE ≥ 30× nested-learning hope_selfmod (≥ 20× in the compiler issue)",
        (f"{nested['speedup_vs_nested_learning']:.1f}×" + nested_learning_ceiling(nested)
         + when("hope_nested_learning"))
        if "speedup_vs_nested_learning" in nested else short_error(nested.get("error", "—")),
        None if "speedup_vs_nested_learning" not in nested else nested["speedup_vs_nested_learning"] >= 30,
        "python -m bench peers --only hope_nested_learning")
    reference = comparisons.get("memory_reference", {})
    row("chunk-parallel memory ≥ 20× per-token reference, T 2048",
        (f"{reference['speedup']:.1f}×" + (f" (eager chunk loop {reference['speedup_eager']:.1f}×)"
                                            if "speedup_eager" in reference else "") + peak_note(reference)
         + when("memory_reference"))
        if "speedup" in reference else "—",
        None if "speedup" not in reference else reference["speedup"] >= 20,
        "python -m bench peers --only memory_reference")
    ratios = compile_ratios(train)
    slower = [spec for spec, ratio in ratios.items() if ratio < 1.0]
    apart = len(compile_ratios(train, interleaved=False))
    row("torch.compile vs eager of the generated module (report)",
        f"{len(ratios) - len(slower)}/{len(ratios)} points of bench/results/train.json faster compiled"
        + (f" (slower: {', '.join(slower)})" if slower else "")
        + (f"; {apart} of the {len(ratios)} not timed interleaved in one run" if apart else "")
        if ratios else "—",
        None if not ratios else not slower, "python -m bench train")
    full = stored_full_speed_check(smoke)
    timed = (full or {}).get("speed", {})
    smoke_target = "compiled step faster than eager at the smoke size, each spec in its train.compile mode"
    if any("skipped" not in outcome for outcome in timed.values()):
        # a spec that trains eagerly is skipped; one whose timing failed counts as missed
        timed = {spec: outcome for spec, outcome in timed.items() if "skipped" not in outcome}
        slower = [spec for spec, outcome in timed.items() if outcome.get("compiled_over_eager", math.inf) >= 1.0]
        # a run that stamped its full check says when; the check of a file written before that is the file's run
        when = f"; run of {full['machine']['time']}" if "full_speed_check" in smoke and isinstance(
            full.get("machine"), dict) and full["machine"].get("time") else ""
        closest = max(timed, key=lambda spec: timed[spec].get("compiled_over_eager", math.inf))  # nearest to missing
        row(smoke_target, f"{len(timed) - len(slower)}/{len(timed)} specs"
            + (f" (not faster: {', '.join(slower)})" if slower else
               f" (closest: {closest} at {timed[closest]['compiled_over_eager']:.2f}× eager)") + when,
            not slower, "python -m bench smoke --timed all")
    elif smoke and any("compiled_over_eager" in outcome for outcome in smoke.get("speed", {}).values()):
        partial = ", ".join(spec for spec, outcome in smoke["speed"].items() if "compiled_over_eager" in outcome)
        row(smoke_target, f"— (the stored run timed only {partial}; the target needs every spec)", None,
            "python -m bench smoke --timed all")
    floor = comparisons.get("floor", {}).get("tokens_per_second", {})
    if floor:
        row("Transformer++ spec compiled faster than eager (width 256, T 2048), the hand-written model beside it",
            f"{floor['spec_compiled'] / floor['spec_eager']:.2f}× eager, "
            f"{floor['spec_compiled'] / floor['hand_compiled']:.2f}× the hand-written compiled",
            floor["spec_compiled"] > floor["spec_eager"], "python -m bench peers --only floor")
    return ["| target | measured | status | command |", "|---|---|---|---|", *rows]


MFU_TARGET_SIZE = {"dim": 512, "length": 2048}  # the size the MFU target names


def mfu_target_run(mfu: dict | None) -> dict | None:
    """The latest mfu run at the target's size (d 512, T 2048), or None."""
    runs = [run for run in (mfu or {}).get("runs", [])
            if all(run.get("config", {}).get(key) == value for key, value in MFU_TARGET_SIZE.items())]
    return runs[-1] if runs else None


def stamp_note(entry: dict | None) -> str:
    """"; measured DATE, N thread(s)" for an entry stamped when it was measured (`harness.stamp`), else ""."""
    entry = entry if isinstance(entry, dict) else {}
    when = entry.get("measured")
    if not isinstance(when, str) or not when:
        return ""
    threads = entry.get("threads")
    return f"; measured {when}" + (f", {threads} thread(s)" if isinstance(threads, int) else "")


def measured_on(entry: dict | None) -> str:
    """When an entry was measured (and on how many threads), or "not recorded" for one stored before
    entries were stamped."""
    note = stamp_note(entry)
    return note.removeprefix("; measured ") if note else "not recorded"


def batch_note(outcome: dict) -> str:
    """Where a comparison timed several batches, that its ratio takes each side's fastest, and the ratio at
    each batch (results from before 2026-12-07 ran batch 2 alone and have none)."""
    by_batch = outcome.get("hope_over_transformer_by_batch")
    if not by_batch:
        return ""
    return " (each model at its fastest batch; " + ", ".join(f"{k}: {v:.4f}×" for k, v in by_batch.items()) + ")"


def peak_note(outcome: dict) -> str:
    """The fp32 matmul peak a comparison ran at, for its Targets row (results from before the peers kept
    one have none): ratios against a peer that loops in Python move with the machine's matmul speed."""
    return f" (matmul peak {outcome['matmul_peak'] / 1e9:,.1f} GFLOP/s)" if "matmul_peak" in outcome else ""


def nested_learning_ceiling(nested: dict) -> str:
    """The HOPE comparison's ceiling, when the run counted both sides' FLOPs: the ratio nldsl would reach
    running every counted FLOP of its step at the matmul peak measured in the same run."""
    defaults = nested.get("speedup_vs_nested_learning_defaults")
    at_defaults = f"; against nested-learning at its default chunk size 1: {defaults:.1f}×" if defaults else ""
    matched = nested.get("speedup_matched_memory_vs_nested_learning")
    if matched is not None:  # the same model with memories of nested-learning's shape (bench/peers.py)
        at_defaults = (f"; with memories of nested-learning's shape: {matched:.1f}×, ceiling "
                       f"{nested['speedup_ceiling_matched_memory']:.1f}×" + at_defaults)
    if "speedup_ceiling" not in nested:
        return f" ({at_defaults.removeprefix('; ')})" if at_defaults else ""
    flops = nested["flops_per_step"]
    peak = f" ({nested['matmul_peak'] / 1e9:,.1f} GFLOP/s)" if "matmul_peak" in nested else ""
    return (f" (ceiling at the measured matmul peak{peak} {nested['speedup_ceiling']:.1f}×: nldsl counts "
            f"{flops['nldsl'] / 1e9:.0f} GFLOP a step, nested-learning {flops['nested_learning'] / 1e9:.0f}"
            f"{at_defaults})")


def compile_ratios(train: dict | None, interleaved: bool | None = None) -> dict[str, float]:
    """Compiled (or per-chunk) over eager tokens/s of every point measured both ways; with `interleaved`,
    only the points whose modes were (True) or were not (False) timed interleaved."""
    ratios = {}
    for point in (train or {}).get("points", []):
        if point["mode"] not in ("compiled", "chunks") or "tokens_per_second" not in point:
            continue
        eager = next((p for p in train["points"] if p["spec"] == point["spec"] and p["length"] == point["length"]
                      and p["mode"] == "eager" and "tokens_per_second" in p), None)
        if interleaved is not None and eager and timed_together([point, eager]) != interleaved:
            continue
        if eager:
            key = f"{point['spec']} T={point['length']}" + (" per chunk" if point["mode"] == "chunks" else "")
            ratios[key] = point["tokens_per_second"] / eager["tokens_per_second"]
    return ratios


def train_section(train: dict) -> list[str]:
    where = train.get("machine") if isinstance(train.get("machine"), dict) else {}  # old files may lack it
    lines = [f"Token budget {train['token_budget']:,} per step (B = budget / T), "
             f"{where.get('threads', '?')} thread(s), torch {where.get('torch', '?')}; "
             "median of the timed steps. `compile s` = first compiled step minus a timed one, from empty "
             "compile caches for points measured after 2026-12-05 (earlier points used the machine's on-disk "
             "inductor cache, so a graph compiled before read a few seconds or 0). "
             "`per chunk` = `train.compile = chunks` (each chunk body compiled once; specs with chunk loops). "
             "`timing`: the timed steps of each mode, whether the modes stepped interleaved round by round or "
             "back to back (the earlier points: their ratios also carry any change of load between the modes), "
             "and the spread, the largest max/min of one mode's timed steps.", "",
             "| spec | T | B | parameters | eager tok/s | compiled tok/s | compiled/eager | compile s "
             "| per-chunk tok/s | per-chunk/eager | timing | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    keys = sorted({(p["spec"], p["length"]) for p in train["points"]}, key=lambda k: (k[0], k[1]))
    for spec, length in keys:
        found = {mode: next((p for p in train["points"] if (p["spec"], p["length"], p["mode"]) == (spec, length, mode)),
                            {}) for mode in ("eager", "compiled", "chunks")}
        eager, compiled, chunks = found["eager"], found["compiled"], found["chunks"]

        def over_eager(point: dict, eager: dict = eager) -> float | None:
            measured = "tokens_per_second" in point and "tokens_per_second" in eager
            return point["tokens_per_second"] / eager["tokens_per_second"] if measured else None

        note = compiled.get("skipped") or compiled.get("error") or eager.get("error") or chunks.get("error") or ""
        if not compiled and eager:
            note = "compiled not run at this length"
        lines.append(f"| {spec.removeprefix('specs/')} | {length} | {eager.get('batch', compiled.get('batch', ''))} | "
                     f"{fmt(eager.get('parameters') or compiled.get('parameters'))} | "
                     f"{fmt(eager.get('tokens_per_second'))} | {fmt(compiled.get('tokens_per_second'))} | "
                     f"{fmt(over_eager(compiled), 2, '×')} | {fmt(compiled.get('compile_seconds'), 1)} | "
                     f"{fmt(chunks.get('tokens_per_second'))} | {fmt(over_eager(chunks), 2, '×')} | "
                     f"{timing_note([eager, compiled, chunks])} | {note} |")
    return lines


def timed_together(points: list[dict]) -> bool:
    """Whether modes were timed interleaved in one run: each says so and they share the run's stamp (a
    later `--modes eager` run re-measures eager alone, beside a compiled point of an earlier run)."""
    return all(p.get("interleaved") for p in points) and len({p.get("measured") for p in points}) == 1


def timing_note(points: list[dict]) -> str:
    """How a (spec, length)'s modes were timed: steps per mode, interleaved or back to back, spread."""
    measured = [p for p in points if "tokens_per_second" in p]
    if not measured:
        return ""
    counts = "/".join(str(n) for n in sorted({len(p.get("all_seconds") or []) for p in measured}))
    interleaved = [bool(p.get("interleaved")) for p in measured]
    how = ("interleaved" if timed_together(measured) else "in separate runs" if all(interleaved) else
           "back to back" if not any(interleaved) else "partly interleaved")
    if len(measured) == 1:
        how = "one mode"
    spreads = [max(samples) / min(samples) for p in measured
               if len(samples := p.get("all_seconds") or []) > 1 and min(samples) > 0]
    return f"{counts} steps, {how}" + (f", spread {max(spreads):.2f}×" if spreads else "")


def short_error(error: str) -> str:
    """A comparison's error as the page shows it; results written before peers.py said which package to install
    hold the bare ModuleNotFoundError, which reads the same as a new one here."""
    from bench.peers import missing_package

    found = re.fullmatch(r"ModuleNotFoundError: No module named '([\w.]+)'", str(error).strip())
    return (missing_package(ModuleNotFoundError(name=found.group(1))) if found else None) or str(error)


def peers_section(peers: dict) -> list[str]:
    lines = []
    failures = peers.get("failures") if isinstance(peers.get("failures"), dict) else {}
    for name, outcome in peers["comparisons"].items():
        lines += [f"### {name}", ""]
        if not isinstance(outcome, dict):
            warn(f"{result_path('peers')}: skipped the malformed comparison {name!r}")
            continue
        if "error" in outcome:
            lines += [f"Could not run: `{short_error(outcome['error'])}`", ""]
            continue
        failure = failures.get(name)
        if isinstance(failure, dict) and "error" in failure:
            lines += [f"The last run ({failure.get('when', 'date unknown')}) failed, so these are the earlier "
                      f"measurement's numbers: `{short_error(failure['error'])}`", ""]
        lines.append(f"Configuration: `{outcome.get('config')}`; parameters: `{outcome.get('parameters', '—')}`; "
                     f"measured: {measured_on(outcome)}.")
        lines.append("")
        if "tokens_per_second" in outcome:
            lines += ["| contender | tokens/s |", "|---|---:|"]
            lines += [f"| {k} | {v:,.0f} |" for k, v in outcome["tokens_per_second"].items()]
            lines.append("")
        for key in ("speedup_vs_titans_pytorch", "speedup_vs_titans_pytorch_chunk_recurrence",
                    "peer_surprise_difference", "speedup_vs_nested_learning", "speedup_vs_nested_learning_defaults",
                    "speedup_matched_memory_vs_nested_learning", "hope_over_transformer",
                    "hope_over_transformer_by_batch", "speedup",
                    "speedup_eager", "speedup_ceiling", "speedup_ceiling_matched_memory",
                    "max_relative_output_difference", "seconds", "flops_per_step", "achieved_flops", "matmul_peak",
                    "import_note"):
            if outcome.get(key) is not None:
                lines += [f"{key.replace('_', ' ')}: {_readable(key, outcome[key])}", ""]
        for side, products in outcome.get("largest_products", {}).items():
            lines += [f"largest products ({side}): " + "; ".join(
                f"{p['product']} {p['flops'] / 1e9:,.1f} GFLOP in {p['calls']:,} calls" for p in products), ""]
    return lines


def _readable(key: str, value) -> str:
    """A result value as a reader wants it: ratios to 2 decimals with ×, seconds to 3, errors in e-notation."""
    if isinstance(value, dict):
        return ", ".join(f"{name} {_readable(key, v)}" for name, v in value.items())
    if isinstance(value, float):
        if key in ("flops_per_step", "achieved_flops", "matmul_peak"):
            return f"{value / 1e9:,.1f} GFLOP" + ("" if key == "flops_per_step" else "/s")
        if key == "seconds":
            return f"{value:.3f} s"
        if key.startswith("max_relative") or key == "peer_surprise_difference":
            return f"{value:.1e}"
        return f"{value:.2f}×"
    return f"`{value}`"


def memory_section(memory: dict) -> list[str]:
    targets = sorted({p["target"] for p in memory["points"]})
    lengths = sorted({p["length"] for p in memory["points"]})
    lines = ["| model | " + " | ".join(f"T={t}" for t in lengths) + " | growth per 4× T | measured |",
             "|---|" + "---:|" * (len(lengths) + 1) + "---|"]
    for target in targets:
        values = {p["length"]: p.get("step_mib") for p in memory["points"] if p["target"] == target}
        dates = list(dict.fromkeys(measured_on(p) for p in sorted(
            (p for p in memory["points"] if p["target"] == target), key=lambda p: p["length"])))
        growth = []  # every T and 4·T both measured: 512 → 2048, 1024 → 4096, 2048 → 8192, …
        for short in lengths:
            if values.get(short) and values.get(4 * short):
                growth.append(f"{values[4 * short] / values[short]:.1f}×")
        lines.append(f"| {target} | " + " | ".join(fmt(values.get(t), 0, " MiB") for t in lengths)
                     + f" | {', '.join(growth) or '—'} | {'; '.join(dates)} |")
    cost = memory.get("recompute_cost")
    if cost:
        speeds = cost["tokens_per_second"]
        lines += ["", f"What `train.recompute = {cost['stretch']}` costs (`python -m bench memory --recompute-cost`: "
                  f"{cost['spec']} {' '.join(cost['overrides'])}, T = {cost['length']}, B = {cost['batch']}, chunk "
                  f"bodies compiled, {cost['rounds']} interleaved rounds): {speeds['recompute']:,.0f} vs "
                  f"{speeds['plain']:,.0f} tokens/s, {cost['time_ratio']:.2f}× the step time; measured: "
                  f"{measured_on(cost)}."]
    return lines


def chunks_section(chunks: dict) -> list[str]:
    lines = [f"Throughput: eager steps at T={chunks['length']}, B={chunks['batch']}. Loss: {chunks['steps']} "
             f"training steps at T={chunks['train_length']}, B={chunks['train_batch']} on the default corpus, "
             "then held-out batches; same seed and batches for every C. Each C is timed on its own, one after "
             "another (not interleaved), so its tokens/s moves with the machine's load; `timed steps`: how many "
             "steps its median is of, and their spread (max/min).", "",
             "| model | C | tokens/s | timed steps | final train loss | held-out loss | measured |",
             "|---|---:|---:|---|---:|---:|---|"]
    for p in sorted(chunks["points"], key=lambda p: (p["model"], p["chunk"])):
        samples = p.get("all_seconds") if isinstance(p.get("all_seconds"), list) else None
        steps = "not recorded" if not samples else f"{len(samples)}" + (
            f", spread {max(samples) / min(samples):.2f}×" if len(samples) > 1 and min(samples) > 0 else "")
        lines.append(f"| {p['model']} | {p['chunk']} | {fmt(p.get('tokens_per_second'))} | "
                     f"{steps if 'tokens_per_second' in p else ''} | "
                     f"{fmt(p.get('train_loss'), 3)} | {fmt(p.get('eval_loss'), 3)} | {measured_on(p)} |"
                     + (f" {p['error']}" if "error" in p else ""))
    return lines


def mfu_section(mfu: dict) -> list[str]:
    run = mfu["runs"][-1]
    cfg = run["config"]
    where = mfu.get("machine") if isinstance(mfu.get("machine"), dict) else {}  # old files may lack it
    lines = [f"d_model {cfg['dim']}, {cfg['heads']} heads, {cfg['layers']} blocks, T={cfg['length']}, "
             f"B={cfg['batch']}; fp32 matmul peak measured in the same run: {run['peak_flops'] / 1e9:.1f} GFLOP/s "
             + (f"before, {run['peak_after'] / 1e9:.1f} GFLOP/s after " if run.get("peak_after") else "")
             + f"({run.get('threads', where.get('threads', '?'))} thread(s)); "
             + ("MFU is taken against the higher of the two. " if run.get("peak_after") else "")
             + f"This is the latest run (measured: {measured_on(run)}).", "",
             "| step | tokens/s | GFLOP/s | MFU |", "|---|---:|---:|---:|"]
    for name, step in run["steps"].items():
        lines.append(f"| {name} | {step['tokens_per_second']:,.0f} | {step['achieved_flops'] / 1e9:.1f} | "
                     f"{100 * step['mfu']:.1f}% |")
    models = run["models"]
    lines += ["", "FLOPs per step (forward + backward, FlopCounterMode + causal attention): "
              + ", ".join(f"{k} {v['flops'] / 1e9:.1f} GFLOP" for k, v in models.items())]
    return lines


def smoke_section(smoke: dict) -> list[str]:
    tolerance = smoke["tolerance"]
    lines = [f"Result: **{'ok' if smoke['ok'] else 'FAILED'}** in {smoke['seconds']:.0f} s, run of "
             f"{(smoke.get('machine') or {}).get('time', 'date not recorded')}. The guard's speed check passes a "
             f"spec whose compiled step takes at most {tolerance}× the eager one (a margin for timing noise); the "
             "Targets row above asks for more, compiled faster than eager (below 1.0×), so a spec can pass here "
             "and miss there.", "",
             "| spec | graph-break check | frames | trace s |", "|---|---|---:|---:|"]
    for spec, outcome in smoke["graph_breaks"].items():
        lines.append(f"| {spec} | {'ok' if outcome['ok'] else outcome.get('error', 'FAILED')} | "
                     f"{outcome.get('frames', '—')} | {fmt(outcome.get('seconds'), 1)} |")
    lines += ["", *speed_table(smoke["speed"], tolerance)]
    full = stored_full_speed_check(smoke)
    if full is not None and full.get("speed") != smoke["speed"]:
        lines += ["", "The Targets row reads the last run that timed every shipped spec (`python -m bench smoke "
                  f"--timed all`, run of {(full.get('machine') or {}).get('time', 'date not recorded')}):", "",
                  *speed_table(full["speed"], full.get("tolerance") or tolerance)]
    return lines


def speed_table(speed: dict, tolerance: float) -> list[str]:
    lines = [f"| spec | eager s | compiled s | compiled/eager | compile s | guard (≤ {tolerance}×) "
             "| target (< 1.0×) |", "|---|---:|---:|---:|---:|---|---|"]
    for spec, outcome in speed.items():
        if "compiled_over_eager" not in outcome:  # a spec that trains eagerly is skipped by the check
            if "skipped" in outcome:
                lines.append(f"| {spec} | {outcome['skipped']} | | | | | |")
            else:  # the Targets row counts it as missed too
                lines.append(f"| {spec} | failed: {outcome.get('error', 'not timed')} | | | | | missed |")
            continue
        ratio = outcome["compiled_over_eager"]
        lines.append(f"| {spec} | {outcome['eager_seconds']:.3f} | {outcome['compiled_seconds']:.3f} | "
                     f"{ratio:.2f} | {outcome['compile_seconds']:.1f} | {'ok' if ratio <= tolerance else 'FAILED'} | "
                     f"{'met' if ratio < 1.0 else 'missed'} |")
    return lines


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# The fields (and their types) a stored point needs to be tabled and drawn.
POINT_FIELDS = {"train": {"spec": str, "length": int, "mode": str}, "memory": {"target": str, "length": int},
                "chunks": {"model": str, "chunk": int}}
RUN_FIELDS = ("config", "steps", "models", "peak_flops")  # of an mfu run


def well_formed(name: str, data: dict | None) -> dict | None:
    """`data` with its malformed points (or mfu runs) left out, each left out said on stderr."""
    if data is None:
        return None
    if name == "mfu":
        runs = [r for r in data["runs"] if isinstance(r, dict) and all(k in r for k in RUN_FIELDS)]
        if len(runs) < len(data["runs"]):
            warn(f"{result_path(name)}: skipped {len(data['runs']) - len(runs)} malformed run(s)")
        return {**data, "runs": runs} if runs else None
    fields = POINT_FIELDS.get(name)
    if fields is None:
        return data
    points = [p for p in data["points"] if point_key(p, list(fields)) is not None
              and all(isinstance(p[k], kind) and not isinstance(p[k], bool) for k, kind in fields.items())]
    if len(points) < len(data["points"]):
        warn(f"{result_path(name)}: skipped {len(data['points']) - len(points)} malformed point(s) "
             f"(each needs {', '.join(fields)})")
    return {**data, "points": points}


def write(notes: str = "") -> Path:
    # every file read (and judged) before the page is touched: a damaged one stops the report, it does not
    # leave a half-written page
    train, memory, chunks, mfu, peers, smoke = (well_formed(n, read_result(n)) for n in
                                                 ("train", "memory", "chunks", "mfu", "peers", "smoke"))
    if train or memory or chunks:  # the sections with figures
        require_matplotlib()
    DOCS.mkdir(parents=True, exist_ok=True)
    lines = ["# Performance", "",
             "Generated by `python -m bench report` from bench/results/*.json; every section names the command "
             "that measured it. The machine is a shared 2-core CPU (AVX-512) whose other jobs change the load "
             "during a run: absolute numbers move by 2× from one hour to the next. The MFU, peers, regression-guard "
             "and recompute-cost ratios are measured side by side in one run (contenders interleaved, medians "
             "kept); the training-throughput table says for each point whether its modes were interleaved or "
             "run back to back and how many steps were timed, and the chunk-size sweep times each chunk size on "
             "its own. One intra-op thread unless an entry says otherwise (bench/harness.py says why), denormals "
             "flushed.", ""]
    # the targets first: the notes' history of each round is long, and a reader comes for the status
    lines += ["## Targets", "", *targets_section(peers, mfu, train, smoke), ""]
    if notes:
        lines += ["## How these numbers were taken, and what changed", "", notes, ""]
    if train:
        figure = plot_train(train)
        lines += ["## Training throughput (`python -m bench train`)", ""]
        lines += ([f"![training throughput]({figure})", ""] if figure else [])
        lines += [*train_section(train), ""]
    if mfu:
        lines += ["## Model FLOPs utilisation (`python -m bench mfu`)", "", *mfu_section(mfu), ""]
    if memory:
        figure = plot_memory(memory)
        lines += ["## Peak memory against T (`python -m bench memory`)", "",
                  "Each cell: how far one training step at T (batch 1, eager, in a fresh process) raises the "
                  f"process's peak resident set above its peak after a warm-up step at T = {WARMUP_LENGTH}. "
                  "The warm-up step's own activations, freed before the measured step, count in that baseline, "
                  "so a cell can be low by up to their size (the notes below say what was measured of it).", ""]
        lines += ([f"![peak memory]({figure})", ""] if figure else [])
        lines += [*memory_section(memory), ""]
    if chunks:
        figure = plot_chunks(chunks)
        lines += ["## Chunk-size sweep (`python -m bench chunks`)", ""]
        lines += ([f"![chunk sweep]({figure})", ""] if figure else [])
        lines += [*chunks_section(chunks), ""]
    if peers:
        lines += ["## Peers and targets (`python -m bench peers`)", "", *peers_section(peers)]
    if smoke:
        lines += ["## Regression guard (`python -m bench smoke`)", "", *smoke_section(smoke), ""]
    # Every step profile bench/profiles.py wrote (hope_components is a markdown table, below).
    for path in sorted(RESULTS.glob("profile_*.txt")):
        name = path.stem.removeprefix("profile_")
        if name != "hope_components":
            lines += [f"## Profile: {name} (`python -m bench profile {name}`)", "", "```",
                      path.read_text(encoding="utf-8").rstrip(), "```", ""]
    path = RESULTS / "profile_hope_components.txt"  # a markdown table already
    if path.exists():
        lines += ["## Profile: the parts of a HOPE block (`python -m bench profile hope_components`)", "",
                  path.read_text(encoding="utf-8").rstrip(), ""]
    write_atomic(PAGE, ("\n".join(lines) + "\n").encode("utf-8"))  # an interrupted report keeps the old page
    return PAGE


def main(args) -> None:
    path = NOTES if args.notes is None else Path(args.notes) if args.notes else None
    try:
        notes = path.read_text(encoding="utf-8") if path is not None else ""
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"notes {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    print(write(notes))


def add_arguments(parser) -> None:
    parser.add_argument("--notes", help="a markdown file whose text goes under the introduction (default: "
                                        "bench/report_notes.md; --notes '' for none)")


if __name__ == "__main__":
    sys.exit("run it as: python -m bench report")

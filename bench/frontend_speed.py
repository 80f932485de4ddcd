"""Front-end speed: how long checking a spec takes, in a warm process and as a whole command.

1. Warm: parse + check + level graph of each shipped spec (its imports included), timed in
   this process after one warm-up run; the minimum over the runs is printed for the largest file
   and for the slowest spec, with the parse and graph parts of the slowest on their own.
2. Cold: `python -m nldsl check specs/*.nl` as a whole process (interpreter start, imports,
   every top-level spec), the median over the runs, beside the bare interpreter start.

    python bench/frontend_speed.py              # 20 warm runs, 5 processes
    python bench/frontend_speed.py --runs 50 --processes 9

Targets: warm < 50 ms, whole command < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nldsl.checker import check_file
from nldsl.graph import build_graph
from nldsl.parser import parse
from nldsl.source import SourceFile

ROOT = Path(__file__).resolve().parent.parent
WARM_TARGET_S = 0.050
COLD_TARGET_S = 1.0


def best_of(runs: int, work) -> float:
    """The fastest of `runs` timed calls of `work`, after one untimed warm-up call."""
    work()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def median_process_time(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - start)
        assert done.returncode in (0, 1), done.stderr.decode()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed warm runs (the minimum is reported)")
    parser.add_argument("--processes", type=int, default=5, help="whole-command runs (the median is reported)")
    args = parser.parse_args()

    specs = sorted((ROOT / "specs").rglob("*.nl"))
    largest = max(specs, key=lambda p: p.stat().st_size)

    def pipeline(path: Path):
        def run() -> None:
            result = check_file(path)
            assert result.ok, [d.message for d in result.diagnostics]
            build_graph(result.spec).to_json()
        return run

    warm = {path: best_of(args.runs, pipeline(path)) for path in specs}
    slowest = max(specs, key=warm.__getitem__)
    source = SourceFile.from_text(str(slowest), slowest.read_text(encoding="utf-8"))
    parse_only = best_of(args.runs, lambda: parse(source))
    spec = check_file(slowest).spec
    graph_only = best_of(args.runs, lambda: build_graph(spec).to_json())

    top_level = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("*.nl"))
    cold = median_process_time([sys.executable, "-m", "nldsl", "check", *top_level], args.processes)
    interpreter = median_process_time([sys.executable, "-c", "pass"], args.processes)

    def verdict(seconds: float, target: float) -> str:
        return f"{'within' if seconds < target else 'OVER'} the {target * 1000:.0f} ms target"

    def row(title: str, path: Path) -> str:
        name = f"{path.relative_to(ROOT)} ({path.stat().st_size} bytes)"
        return f"  {title}  {name:44} {warm[path] * 1000:7.2f} ms   {verdict(warm[path], WARM_TARGET_S)}"

    print(f"warm: parse + check + level graph (imports included), min of {args.runs}:")
    print(row("largest file", largest))
    print(row("slowest spec", slowest))
    print(f"    of which parsing it (no imports)  {parse_only * 1000:7.2f} ms")
    print(f"    of which the level graph + JSON   {graph_only * 1000:7.2f} ms")
    print(f"whole process: `nldsl check specs/*.nl` ({len(top_level)} files), median of {args.processes}:")
    print(f"  nldsl check                  {cold * 1000:7.1f} ms   {verdict(cold, COLD_TARGET_S)}")
    print(f"  python -c pass (start alone) {interpreter * 1000:7.1f} ms")


if __name__ == "__main__":
    main()

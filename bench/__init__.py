"""nldsl benchmarks: `python -m bench <command>` (see bench/__main__.py); results under bench/results/."""

"""host_memory: a CPU command's allocation past the machine's memory is an error, not the OOM killer's kill."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl.runtime import host_memory

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux's /proc")


def _meminfo(tmp_path: Path, available_kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       99999999 kB\nMemFree:        1 kB\nMemAvailable:   {available_kib} kB\n")
    return path


def _no_cgroups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(host_memory, "CGROUPS", ((tmp_path / "none.max", tmp_path / "none.current"),))


def test_the_cap_is_the_data_held_plus_what_is_available_and_is_lifted_afterwards(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "MEMINFO", _meminfo(tmp_path, 1_000_000))
    _no_cgroups(monkeypatch, tmp_path)
    before = resource.getrlimit(resource.RLIMIT_DATA)
    if before[0] != resource.RLIM_INFINITY:
        pytest.skip("a data limit is set already")
    with host_memory.capped_to_available() as limit:
        held = host_memory._kib(host_memory.STATUS, "VmData")
        assert limit is not None and abs(limit - (held * 1024 + 1_000_000 * 1024)) < 64 << 20
        assert resource.getrlimit(resource.RLIMIT_DATA) == (limit, before[1])
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_a_memory_cgroup_with_less_room_than_the_machine_sets_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "MEMINFO", _meminfo(tmp_path, 50_000_000))
    (tmp_path / "memory.max").write_text(f"{3 << 30}\n")
    (tmp_path / "memory.current").write_text(f"{1 << 30}\n")
    monkeypatch.setattr(host_memory, "CGROUPS", ((tmp_path / "memory.max", tmp_path / "memory.current"),))
    assert host_memory.available_bytes() == 2 << 30
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2's "no limit"
    assert host_memory.available_bytes() == 50_000_000 * 1024


def test_the_cap_can_be_turned_off_and_keeps_a_lower_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "MEMINFO", _meminfo(tmp_path, 1_000_000))
    _no_cgroups(monkeypatch, tmp_path)
    monkeypatch.setenv("NLDSL_MEMORY_CAP", "0")
    with host_memory.capped_to_available() as limit:
        assert limit is None
    monkeypatch.delenv("NLDSL_MEMORY_CAP")
    monkeypatch.setattr(host_memory, "MEMINFO", tmp_path / "missing")  # not Linux's /proc
    with host_memory.capped_to_available() as limit:
        assert limit is None


def test_a_lower_limit_set_before_is_kept():
    # in a child process: lowering the hard limit cannot be undone in this one
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (1 << 40, 1 << 40))\n"
            "from nldsl.runtime import host_memory\n"
            "host_memory.available_bytes = lambda: 1 << 50\n"
            "with host_memory.capped_to_available() as limit:\n"
            "    assert limit is None and resource.getrlimit(resource.RLIMIT_DATA) == (1 << 40, 1 << 40)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_training_past_the_memory_it_has_is_an_error_that_says_so_not_a_kill(tmp_path):
    """A machine with 600 MiB available (a fake /proc/meminfo) and a batch that needs more: the allocation
    fails under the cap and `nldsl train` stops with a user's error, leaving no run folder."""
    meminfo = _meminfo(tmp_path, 600 * 1024)
    data = tmp_path / "data.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 400, encoding="utf-8")
    run_dir = tmp_path / "run"
    code = ("import sys\nfrom pathlib import Path\nfrom nldsl.runtime import host_memory\n"
            f"host_memory.MEMINFO = Path({str(meminfo)!r})\n"
            "host_memory.CGROUPS = ()\n"
            "from nldsl.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = ["train", str(REPO_ROOT / "specs" / "transformer.nl"), "--data", str(data), "--run-dir", str(run_dir),
            "--no-compile", "--no-progress", "--device", "cpu", "--set", "train.steps=1", "--set", "train.batch=512",
            "--set", "train.seq_len=128"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NLDSL_DEBUG": ""})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "error: out of memory: this command needs more than the" in done.stderr, done.stderr
    assert "use a smaller batch" in done.stderr and not run_dir.exists()

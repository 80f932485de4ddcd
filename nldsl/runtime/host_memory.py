"""A CPU run's memory ceiling: an allocation the machine cannot hold fails as an error, not a kill.

Linux overcommits memory: a CPU tensor larger than what the machine has left is usually allocated
without complaint, and the kernel's OOM killer ends the process once its pages are touched. The
shell prints "Killed", nldsl says nothing, and a training run loses what it had not saved (found by
training `specs/linear_attention.nl --set train.batch=4096 --set model.layers=16` at T 32 on a
machine of 24 GiB: killed at 19 GiB).

`capped_to_available` sets this process's RLIMIT_DATA, the limit on its writable private memory
(where every CPU tensor lives), to what it holds now plus what the machine can still give it:
MemAvailable of /proc/meminfo, or less where the process's memory cgroup (a container's limit)
leaves less, and puts the limit back when the block ends. An allocation past it fails at once,
torch raises its "can't allocate memory" error, and the command stops with "out of memory …: use a
smaller batch, sequence length or model" (cli.py). The commands that run a model on the CPU (train,
eval, generate, stream) run under it; the Python API does not, since a caller's other work shares
the process. A lower limit set before is kept, and NLDSL_MEMORY_CAP=0 leaves the limit alone. Not
on a GPU: the device's allocator raises its own error there, and the driver maps host memory of its
own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import resource
except ImportError:  # not a Unix: nothing is capped
    resource = None

MEMINFO = Path("/proc/meminfo")
STATUS = Path("/proc/self/status")
# a memory cgroup's limit and usage: cgroup v2, then v1 (a v1 "no limit" reads as about 2**63)
CGROUPS = ((Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
           (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")))


@contextlib.contextmanager
def capped_to_available() -> Iterator[int | None]:
    """Run the block with RLIMIT_DATA at this process's data now plus the memory the machine has
    available; yield that limit in bytes, or None where nothing was set (not Linux, turned off, a
    lower limit kept, or the numbers unreadable). The limit before is back afterwards."""
    limit = _limit()
    if limit is None:
        yield None
        return
    before = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, before[1]))
    except (ValueError, OSError):
        yield None
        return
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, before)


def _limit() -> int | None:
    """The limit `capped_to_available` sets, or None where it sets none."""
    if resource is None or os.environ.get("NLDSL_MEMORY_CAP", "1") == "0":
        return None
    held, headroom = _kib(STATUS, "VmData"), available_bytes()
    if held is None or headroom is None:
        return None
    limit = held * 1024 + headroom
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        return None
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


def available_bytes() -> int | None:
    """What the machine can still give a process: MemAvailable, or a memory cgroup's limit minus its
    usage where that is less; None where /proc/meminfo has no MemAvailable (not Linux, or a kernel
    before 3.14)."""
    available = _kib(MEMINFO, "MemAvailable")
    if available is None:
        return None
    headroom = available * 1024
    for limit_file, usage_file in CGROUPS:
        try:
            limit_text, usage = limit_file.read_text().strip(), int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit() and int(limit_text) < 1 << 60:  # "max" or ~2**63: no limit
            headroom = min(headroom, max(int(limit_text) - usage, 0))
        break
    return headroom


def _kib(path: Path, field: str) -> int | None:
    """A `Field:   123 kB` line of a /proc file, in KiB."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None

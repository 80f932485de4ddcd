"""Shared test options and fixtures: golden-file updates and the checked shipped specs.

- `pytest --update-golden` rewrites golden files (tests/golden/) from the current output instead
  of comparing with them; the `update_golden` fixture says whether it was given.
- `checked_spec(path)` checks a shipped spec once per session and returns its `CheckResult`, so
  the tests of later stages (graph, drawing, lowering) share one check per spec. Paths are taken
  relative to the repository root and the spec is named as a user types it (`specs/hope.nl`),
  whatever the current directory.
- A test that takes an argument called `shipped_spec` runs once per spec in specs/ (recursive),
  with the repository-relative path as a string: `def test_x(shipped_spec, checked_spec): ...`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nldsl.checker import CheckResult, check_bytes


@pytest.fixture(autouse=True)
def _denormals_kept():
    """A study or benchmark run in-process flushes denormals for the whole process (their speed);
    later tests in the same worker must see float arithmetic as usual (5e-324 is not 0)."""
    yield
    torch = sys.modules.get("torch")  # not imported here: the front-end tests never import torch
    if torch is not None:
        torch.set_flush_denormal(False)


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background (`&` in a script, some CI runners) inherits SIGINT ignored,
    which nldsl rightly leaves alone; the tests that send themselves a Ctrl-C need Python's usual
    handler (those about an ignored one set it themselves)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO_ROOT / "specs"


def ruff_check_generated(folder: Path) -> subprocess.CompletedProcess:
    """ruff on generated modules as a user keeps them: outside nldsl's checkout (run from `folder`, so
    that nldsl's imports sort after torch's), with the rules the code generator keeps to."""
    return subprocess.run(["ruff", "check", "--isolated", "--line-length", "120", "--select", "E,F,W,B,I",
                           str(folder)], capture_output=True, text=True, cwd=folder)


def shipped_spec_paths() -> list[str]:
    """Every shipped spec as a repository-relative POSIX path, in a stable order."""
    return sorted(path.relative_to(REPO_ROOT).as_posix() for path in SPECS_DIR.rglob("*.nl"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files under tests/golden from the current output")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shipped_spec" in metafunc.fixturenames:
        metafunc.parametrize("shipped_spec", shipped_spec_paths())


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under `pytest --update-golden`: golden tests write their output instead of comparing."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def checked_spec() -> Callable[[str | Path], CheckResult]:
    """`checked_spec("specs/hope.nl")`: the spec's `CheckResult`, checked once per session.

    The result is shared between tests: read it, never mutate it.
    """
    cache: dict[Path, CheckResult] = {}

    def check(path: str | Path) -> CheckResult:
        absolute = (REPO_ROOT / path).resolve()
        if absolute not in cache:
            try:
                display = absolute.relative_to(REPO_ROOT).as_posix()
            except ValueError:
                display = str(absolute)
            cache[absolute] = check_bytes(absolute.read_bytes(), display, base_dir=absolute.parent)
        return cache[absolute]

    return check


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models run faster so, and on a busy 2-core machine threads spin against each other."""
    import torch  # here, not at the top: the front-end tests never import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

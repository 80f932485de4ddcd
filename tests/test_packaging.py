"""Packaging: the wheel installs only `nldsl` (compiler/ and grammar/ map under it) and finds its
grammar when installed, as it does from this checkout."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(REPO)], check=True, capture_output=True)
    (found,) = out.glob("nldsl-*.whl")
    return found


def test_wheel_puts_nothing_generic_at_the_top_level(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"nldsl", next(t for t in top if t.endswith(".dist-info"))}, top
    assert "nldsl/grammar/nl.lark" in names
    assert "nldsl/compiler/codegen.py" in names
    assert "nldsl/runtime/csrc/memory_write.cpp" in names  # the fused kernel builds from the installed source
    assert not any(name.startswith(("compiler/", "grammar/", "tests/", "specs/")) for name in names)


def test_installed_wheel_finds_its_grammar(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import nldsl, nldsl.compiler, nldsl.parser;"
        "assert nldsl.__file__.startswith(sys.argv[1]), nldsl.__file__;"
        "from nldsl.checker import check_text;"
        "r = check_text('model m { dim = 8 block { mlp { } } }');"
        "assert r.ok, r.diagnostics; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def test_checkout_finds_its_grammar() -> None:
    from nldsl.parser import grammar_text

    assert grammar_text() == (REPO / "grammar" / "nl.lark").read_text(encoding="utf-8")


def test_no_tracked_file_names_a_machines_paths() -> None:
    """Committed logs and results carry no absolute path of the machine that made them: not this
    checkout's own, and not an installed package's (a traceback pasted from a run shows both)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    pattern = re.compile(rf"{re.escape(str(REPO))}/|\"/[^\"\s]*/site-packages/")
    found = []
    for name in filter(None, listed.stdout.decode().split("\0")):
        path = REPO / name
        if path.suffix in {".png", ".svg", ".pdf", ".whl", ".safetensors"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in pattern.finditer(text)]
    assert found == [], found[:10]

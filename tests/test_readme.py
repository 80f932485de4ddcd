"""The README tells the truth: its spec example checks, its Python example runs, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nldsl.checker import check_text
from nldsl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_spec_example_checks_clean() -> None:
    (example,) = blocks("nl")
    result = check_text(example, "readme_hope.nl", base_dir=REPO / "specs")
    assert result.ok and not result.diagnostics, [d.message for d in result.diagnostics]


def test_python_example_runs(monkeypatch) -> None:
    (example,) = blocks("python")
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 100, 256)
    assert isinstance(namespace["state"], list) and isinstance(namespace["model"], torch.nn.Module)


def test_every_command_in_the_table_exists() -> None:
    commands = set(re.findall(r"^\| `nldsl ([a-z]+)", README, flags=re.M))
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert commands and commands <= set(choices), commands - set(choices)

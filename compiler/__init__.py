"""The compiler: a checked spec → a readable, torch.compile-ready Python module.

`lower.py` holds the decisions (spec values → runtime configurations), `codegen.py` writes the
text. `NLDSL_DEBUG=codegen` prints every generated module to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from nldsl import spec as S

from .codegen import generate


class CompileError(Exception):
    """The spec cannot be compiled (e.g. it defines no model)."""


def compile_spec(spec: S.Spec, source_text: str = "", overrides: Sequence[str] = ()) -> str:
    """The generated module's source for a checked spec (`overrides`: the `--set` texts it was
    checked with, named in the banner's command that regenerates it)."""
    if spec.model is None:
        raise CompileError(f"{spec.path} defines no `model` section, so there is nothing to compile")
    source = generate(spec, source_text, overrides)
    if "codegen" in os.environ.get("NLDSL_DEBUG", ""):
        print(source, file=sys.stderr)
    return source


__all__ = ["CompileError", "compile_spec"]

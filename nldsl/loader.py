"""Building models in-process: `nldsl.load("spec.nl")` → a `torch.nn.Module`.

The spec is checked (a `SpecError` carries every diagnostic), compiled to source, and the source
is executed as a real module object whose text is registered with `linecache`, so tracebacks
and `inspect.getsource` show the generated lines. Nothing is written to disk.
"""

from __future__ import annotations

import linecache
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .diagnostics import SpecError


def override_strings(overrides: Sequence[str] = (), **values: Any) -> list[str]:
    """`dim=128, train__steps=50` → ["dim=128", "train.steps=50"] (`__` stands for a dot)."""
    out = list(overrides)
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        out.append(f"{key.replace('__', '.')}={text}")
    return out


def check(path: str | Path, overrides: Sequence[str] = (), **values: Any):
    """Check a spec file; raise `SpecError` with all diagnostics if it has errors."""
    from .checker import check_file

    result = check_file(path, override_strings(overrides, **values))
    if not result.ok:
        raise SpecError(result.diagnostics, result.sources)
    _debug(result)
    return result


def _debug(result) -> None:
    """NLDSL_DEBUG=spec,graph,codegen prints each stage to stderr (codegen: see nldsl.compiler)."""
    stages = os.environ.get("NLDSL_DEBUG", "")
    if "spec" in stages:
        print(result.spec.model_dump_json(indent=2), file=sys.stderr)
    if "graph" in stages:
        from .graph import build_graph

        print(build_graph(result.spec).to_json(), file=sys.stderr)


def compile_module(result) -> types.ModuleType:
    """Execute the generated source of a checked spec as a module (registered for tracebacks)."""
    spec = result.spec
    return build_module(spec, result.sources[spec.path].text)


def build_module(spec, source_text: str = "") -> types.ModuleType:
    """Compile a checked `Spec` and execute the source as a module."""
    from nldsl.compiler import compile_spec

    source = compile_spec(spec, source_text)
    name = f"nldsl_generated_{spec.sha256[:16]}"
    filename = f"<nldsl generated from {spec.path} ({spec.sha256[:12]})>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__dict__["__source__"] = source
    sys.modules[name] = module  # torch.compile and pickling look modules up by name
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def load(path: str | Path, overrides: Sequence[str] = (), **values: Any):
    """Build the model of a spec: `nldsl.load("specs/hope.nl", dim=64, train__seq_len=128)`.

    Returns a freshly initialised `torch.nn.Module` whose call on tokens (B, T) returns logits
    (B, T, vocab); `model(tokens, return_state=True)` also returns the memory state. The checked
    spec and the generated module are attached as `model.spec` and `model.module`.
    """
    result = check(path, overrides, **values)
    module = compile_module(result)
    model = module.build()
    model.spec = result.spec
    model.module = module
    return model

"""nldsl: write, check, draw, compile and run Nested Learning models.

    import nldsl
    model = nldsl.load("specs/hope.nl", dim=64)   # a torch.nn.Module
    logits = model(tokens)                         # (B, T) -> (B, T, vocab)

Importing `nldsl` is cheap (no torch): parsing, checking, drawing and formatting never need it;
`load` imports torch when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, overrides: Any = (), **values: Any) -> Any:
    """Build the model of a spec; see `nldsl.loader.load`."""
    from .loader import load as _load

    return _load(path, overrides, **values)


def check(path: Any, overrides: Any = (), **values: Any) -> Any:
    """Check a spec (raises `nldsl.diagnostics.SpecError` listing every problem); see `nldsl.loader.check`."""
    from .loader import check as _check

    return _check(path, overrides, **values)


__all__ = ["__version__", "check", "load"]

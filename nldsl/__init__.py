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


def load(path: Any, overrides: Any = (), *, device: Any = None, dtype: Any = None, **values: Any) -> Any:
    from .loader import load as _load

    return _load(path, overrides, device=device, dtype=dtype, **values)


def load_run(path: Any, device: Any = "cpu") -> Any:
    """A trained run: its folder (the latest checkpoint), `checkpoints/latest` or a checkpoint
    folder. Returns `nldsl.runtime.evaluate.LoadedModel`: `.model` with the run's weights (their
    gradients off: `requires_grad_()` to train on), `.tokenizer` (`encode`/`decode`), `.spec`,
    `.checkpoint` (record and step) and `.module` (the generated module). Raises
    `nldsl.runtime.checkpoint.CheckpointError` for what is not a run and `ValueError` for a device
    nldsl cannot run on here."""
    from .cli import UserError
    from .runtime.evaluate import load_model
    from .runtime.train import check_device

    try:
        resolved = check_device(str(device))
    except UserError as error:  # worded for the command line's --device
        raise ValueError(str(error).replace("--device", "device")) from None
    return load_model(path, resolved)


def check(path: Any, overrides: Any = (), **values: Any) -> Any:
    """Check a spec (raises `nldsl.diagnostics.SpecError` listing every problem); see `nldsl.loader.check`."""
    from .loader import check as _check
    from .loader import python_overrides

    return _check(path, python_overrides(overrides), **values)


def _document_load() -> None:
    """`help(nldsl.load)` shows the whole contract, written once beside the code. The loader
    imports only the standard library and the diagnostics (torch when a model is built)."""
    from .loader import load as _load

    load.__doc__ = _load.__doc__


_document_load()

__all__ = ["__version__", "check", "load", "load_run"]

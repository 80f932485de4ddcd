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
    """Build the model of a spec: `nldsl.load("specs/hope.nl", dim=64, train__seq_len=128)`.

    A keyword's `__` stands for a dot; its value is written as the spec writes it (None as
    `none`, a str as a string, a list as a list). A value the spec writes as a bare name or a
    call (`optimizer = muon`, `tokenizer = bpe(512)`) goes in `overrides` as spec text:
    `nldsl.load("specs/hope.nl", ["train.tokenizer=bpe(512)", "model.vocab=512"], dim=64)`.
    `device` and `dtype` place the model (`device="cuda", dtype=torch.bfloat16`); they are not
    overrides, so a spec constant of either name is set through `overrides`.

    Returns a freshly initialised `torch.nn.Module` whose call on tokens (B, T) returns logits
    (B, T, vocab); `model(tokens, return_state=True)` also returns the memory state. The checked
    spec and the generated module are attached as `model.spec` and `model.module`. Its weights
    come from torch's global random state, as any module's (`torch.manual_seed` first to repeat
    them); given `train__seed` (or a `train.seed=` override), they are the ones `nldsl train`
    starts from with that seed, and the global random state is left as it was. What `nldsl check`
    warns of in the spec is issued as a `nldsl.diagnostics.SpecWarning` (Python's `warnings`).
    """
    from .loader import load as _load

    return _load(path, overrides, device=None if device is None else _device(device), dtype=dtype, **values)


def _device(device: Any) -> Any:
    """A `device` argument nldsl can run on here, as a torch.device; a `ValueError` worded for Python
    otherwise (torch's own errors say "Torch not compiled with CUDA enabled" deep in a layer's init)."""
    import torch

    from .cli import UserError
    from .runtime.train import check_device

    # an int is a CUDA index, as torch reads it
    name = f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else str(device)
    try:
        resolved = check_device(name)
    except UserError as error:  # worded for the command line's --device
        raise ValueError(str(error).replace("--device", "device")) from None
    # a bare "cuda" stays torch's current CUDA device (a torchrun worker's after torch.cuda.set_device),
    # where the command line's --device cuda means this process's LOCAL_RANK
    return torch.device(name) if name == "cuda" else resolved


def load_run(path: Any, device: Any = "cpu") -> Any:
    """A trained run: its folder (the latest checkpoint), `checkpoints/latest` or a checkpoint
    folder. Returns `nldsl.runtime.evaluate.LoadedModel`: `.model` with the run's weights (their
    gradients off: `requires_grad_()` to train on), `.tokenizer` (`encode`/`decode`), `.spec`,
    `.checkpoint` (record and step) and `.module` (the generated module). Raises
    `nldsl.runtime.checkpoint.CheckpointError` for what is not a run and `ValueError` for a device
    nldsl cannot run on here."""
    from .runtime.evaluate import load_model

    return load_model(path, _device(device))


def check(path: Any, overrides: Any = (), **values: Any) -> Any:
    """Check a spec (raises `nldsl.diagnostics.SpecError` listing every problem); see `nldsl.loader.check`."""
    from .loader import check as _check
    from .loader import python_overrides

    return _check(path, python_overrides(overrides), **values)


__all__ = ["__version__", "check", "load", "load_run"]

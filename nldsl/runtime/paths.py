"""Which implementation runs a memory level, decided from plain values so that the checker (which
never imports torch) and the runtime (`memory.uses_delta_kernel`) share one rule."""

from __future__ import annotations


def runs_delta_kernel(single_weight: bool, state: str, momentum: bool, orthogonalize_steps: int, objective: str,
                      values: str, dgd: bool, chunk_size: int, readout: str, clipped: bool) -> bool:
    """Whether a memory level runs through the exact delta kernel rather than the chunk loop: a
    one-matrix state without momentum or Newton–Schulz, written token by token (chunk 1), or with an
    error that does not read the state (a `dot` objective on given values, plain gd) and a readout
    that is not the chunk's start (docs/compiler.md). A clip scales each write by a factor of the
    token's gradient norm at the state before it, which the kernel's closed-form blocks have no
    place for, unless the error does not read the state: then every factor is known beforehand."""
    if not single_weight or state == "residual_mlp":
        return False
    state_free_error = objective == "dot" and values == "given" and not dgd
    if momentum or orthogonalize_steps > 0 or objective == "external" or (clipped and not state_free_error):
        return False
    return chunk_size == 1 or (state_free_error and readout != "chunk_start")

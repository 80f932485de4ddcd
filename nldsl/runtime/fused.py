"""The fused chunk-end write of two-layer memories on the CPU: one C++ kernel per chunk (csrc/memory_write.cpp).

A level whose chunk needs only the chunk-end state (HOPE's self-modifying projections: no readout
of their own; any chunk-start readout) spends its chunk step writing θ and S. Unfused, that write is
~10 batched products and a few elementwise passes forward and ~20 backward, each streaming the
whole batch's state, rewritten one chunk earlier and no longer in cache, at memory speed.
`nldsl_<digest>::memory_write` instead runs one (sequence, head) problem at a time: the memory on the keys
and generated values, the closed-form inner gradient, DGD and both weighted writes, with that
problem's weights in L1/L2; its backward (`memory_write_backward`) runs the chain in reverse
by hand from intermediates the forward saved (a training call returns them as one extra tensor, so
the backward repeats none of the forward's products). The gate coefficients (A_n, m_n, B_n and the
per-token write weights) stay in PyTorch and reach the kernel as inputs, so their gradients flow
back through the ordinary graph.

It applies (`applies`) to a level whose state has two weight matrices (residual_mlp, or mlp of
depth 2), with the L2 objective, no Newton–Schulz and gradients through its writes (a `clip` too:
the kernel scales each token's write weights by its factor from the errors it computes), on CPU
tensors of float32 or float64 outside autocast. Every other level, and every level on a GPU,
takes the PyTorch chunk step
(`memory._chunk_end_state` after `_write_factors`), which is also this kernel's reference in
tests/runtime/test_fused.py (outputs and every input gradient, float64).

The kernel is built on first use by torch.utils.cpp_extension (ninja and a C++ compiler, the
same compiler inductor needs on the CPU) into torch's extensions folder, and loaded from there
afterwards. Its ops live in the namespace `nldsl_<digest of its sources and flags>`: inductor's
cache keys a compiled graph by the ops it calls, not by their outputs' shapes, so a graph compiled
for an earlier kernel (another saved layout) is never replayed against this one.
NLDSL_FUSED_WRITE=0 turns it off; `fused_writes(False)` does so for a block of code (the
benchmarks time both paths side by side). A failed build warns once and leaves the PyTorch step.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from nldsl.runtime.memory import LevelConfig, MemoryState

SOURCE = Path(__file__).with_name("csrc") / "memory_write.cpp"
ACTIVATION_IDS = {"silu": 0, "gelu": 1, "relu": 2, "tanh": 3}  # bits 4-5 of the kernel's flags
SAVE = 64  # bit 6: the forward returns the intermediates its backward reads (kSave)
# The instruction sets the kernel is compiled for, from the level torch itself dispatches to here.
# ATen's vector types (at::vec::Vectorized) then take that level's registers and Sleef's functions.
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}

_enabled = os.environ.get("NLDSL_FUSED_WRITE", "1") != "0"
_built: bool | None = None  # None: not tried yet
_namespace = ""  # the ops' namespace, nldsl_<digest>, once built (`_build`)


def _flags() -> list[str]:
    return ["-O3", *CAPABILITY_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]


def _build() -> bool:
    """Compile and load the kernel (once per process; torch caches the library across processes)."""
    from torch.utils import cpp_extension

    global _namespace
    flags = _flags()
    try:
        # the sources and flags name the library and its ops' namespace, so an edited kernel (its C++, or
        # its shapes and autograd here) or another CPU level builds anew, and no graph compiled for another
        # kernel is replayed (csrc, at the end)
        digest = kernel_digest(flags)
        namespace, name = f"nldsl_{digest}", f"nldsl_memory_write_{digest}"
        with _builder_lock(name) as folder:
            cpp_extension.load(name=name, sources=[str(_source_in(folder))],
                               extra_cflags=[*flags, f"-DNLDSL_NAMESPACE={namespace}"], is_python_module=False,
                               verbose=False)
    except Exception as error:  # no compiler or ninja: say so once, keep the PyTorch chunk step
        warnings.warn(f"nldsl: the fused memory-write kernel could not be built ({error}); memory levels "
                      "use the PyTorch chunk step, which gives the same results more slowly", stacklevel=3)
        return False
    _namespace = namespace
    _register_python_parts(namespace)
    return True


def _source_in(folder: Path | None) -> Path:
    """The kernel's C++ as a copy in its build folder: ninja's build file records the source's path,
    so a checkout elsewhere (another clone, a second venv) that built from its own path would make
    every process that alternates between them rebuild the library (15 s each). The copy is written
    only when missing or different (a rewrite would look newer than the library to ninja); the
    folder is named by the source's digest, so a different copy is a damaged one."""
    if folder is None:
        return SOURCE
    copy = folder / SOURCE.name
    if not copy.is_file() or copy.read_bytes() != SOURCE.read_bytes():
        tmp = copy.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(SOURCE.read_bytes())
        os.replace(tmp, copy)
    return copy


@contextlib.contextmanager
def _builder_lock(name: str) -> Iterator[Path | None]:
    """Hold an OS lock on the kernel's build folder while torch loads (and perhaps builds) it.

    torch marks a build in progress with a `lock` file that it waits on, without end, while it exists;
    a process killed mid-build (Ctrl-C during the first compile) leaves it behind, and every later run
    would hang. Every process loading this kernel holds this lock first, and the OS drops it with its
    process, so a `lock` file found while holding it is one a dead process left: it is removed."""
    try:
        import fcntl

        from torch.utils.cpp_extension import _get_build_directory  # where torch keeps its `lock`
    except ImportError:  # no POSIX locks here (or another torch): torch's own baton alone
        yield None
        return
    folder = Path(_get_build_directory(name, False))
    with open(folder / "nldsl.flock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the OS if this process dies
            locked = True
        except OSError:  # a file system without locks (some network mounts): torch's own baton alone
            locked = False
        stale = folder / "lock"
        if locked and stale.exists():
            warnings.warn(f"nldsl: removed {stale}, left by a kernel build that was stopped midway", stacklevel=4)
            stale.unlink(missing_ok=True)
        yield folder


def kernel_digest(flags: list[str]) -> str:
    """16 hex digits of the kernel's C++, this module (its fake kernels and autograd) and the flags."""
    return hashlib.sha256(SOURCE.read_bytes() + Path(__file__).read_bytes() + " ".join(flags).encode()).hexdigest()[:16]


def available() -> bool:
    """Whether the kernel can run now, building it on the first call made outside a torch.compile trace.

    Call it before compiling (`compiled_chunks` and `compile_loss` do, unless the model is all on a
    GPU, where the kernel never runs): inside a trace an unbuilt kernel reads as unavailable, and the
    traced graph takes the PyTorch step.
    """
    global _built
    if not _enabled:
        return False
    if _built is None and not torch.compiler.is_compiling():
        _built = _build()
    return bool(_built)


@contextlib.contextmanager
def fused_writes(enable: bool = True) -> Iterator[None]:
    """Turn the fused write on or off inside this block (compiled chunk bodies recompile on the switch)."""
    global _enabled
    previous = _enabled
    _enabled = enable
    try:
        yield
    finally:
        _enabled = previous


def applies(cfg: LevelConfig, keys: Tensor, values: Tensor | None) -> bool:
    """Whether `memory_chunk_step` writes this level's chunk with the kernel (module docstring)."""
    return (len(cfg.weight_shapes()) == 2 and cfg.objective == "l2" and values is not None
            and cfg.orthogonalize_steps == 0 and cfg.grad_through_writes
            and keys.device.type == "cpu"
            and keys.dtype in (torch.float32, torch.float64) and values.dtype == keys.dtype
            # under autocast the products' inputs arrive in mixed precisions; the PyTorch step takes them
            and not torch.is_autocast_enabled(keys.device.type) and available())


def kernel_flags(cfg: LevelConfig) -> int:
    """The kernel's `flags` argument for a level."""
    layers = cfg.preconditioned_layers()
    return ((1 if cfg.state == "residual_mlp" else 0) | (2 if cfg.values == "generated" else 0)
            | (4 if 0 in layers else 0) | (8 if 1 in layers else 0) | ACTIVATION_IDS[cfg.activation] << 4)


def saved_size(chunk: int, hidden: int, d_out: int, rows: int, flags: int) -> int:
    """Elements per problem of the forward's saved intermediates (`Saved` in csrc/memory_write.cpp)."""
    if not flags & SAVE:
        return 0
    hidden_blocks = 3 if flags & 2 else 2  # Z, G W2 (+ Zv when the values are generated)
    error_blocks = 2 if flags & 8 else 1  # G (+ Y when DGD preconditions layer 2)
    return chunk * (hidden * hidden_blocks + d_out * error_blocks) + rows * hidden  # + the next read's Z


def chunk_end_state(cfg: LevelConfig, state: MemoryState, keys: Tensor, values: Tensor, decay: Tensor,
                    momentum_scale: Tensor | None, momentum_decay: Tensor | None, write_weights: Tensor,
                    momentum_write_weights: Tensor | None,
                    next_inputs: Tensor | None = None) -> tuple[MemoryState, Tensor | None]:
    """θ and S after the chunk (as `memory._chunk_end_state`) through the kernel, and M_θ(next_inputs).

    The state may stack A memories that share their inputs (weights (B, A·H, out, in), as HOPE's
    self-modifying projections): keys (B, H, n, d_in), values (B, H, n, d_out); decay A_n,
    momentum_scale m_n, momentum_decay B_n (B, H); write_weights −γ_{n,s} η_s and
    momentum_write_weights −(B_n/B_s) η_s (B, H, n). `next_inputs` (B, H, n', d_in): the next
    chunk's rows, read at the new state while it is in cache (B, A·H, n', d_out); None reads nothing.
    """
    from nldsl.runtime.memory import MemoryState

    if not _namespace and not available():  # a direct call (tests, benchmarks), before anything built it
        raise RuntimeError("the fused memory-write kernel is not available here (fused.applies says when it is)")
    momentum = state.momentum
    inputs = (state.weights[0], state.weights[1], None if momentum is None else momentum[0],
              None if momentum is None else momentum[1], keys, values, decay, momentum_scale, momentum_decay,
              write_weights, momentum_write_weights, next_inputs)
    # a call that autograd records keeps its forward's intermediates for the backward; others keep nothing
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    first, second, moment_first, moment_second, read, _ = getattr(torch.ops, _namespace).memory_write(
        *inputs, kernel_flags(cfg) | (SAVE if training else 0), 0.0 if cfg.clip is None else float(cfg.clip))
    new_state = MemoryState([first, second], None if momentum is None else [moment_first, moment_second])
    return new_state, None if next_inputs is None else read


def _register_python_parts(namespace: str) -> None:
    """Shapes for tracing (fake kernels) and the autograd formula of the ops the library defined."""

    def empty(like: Tensor | None, reference: Tensor) -> Tensor:
        return reference.new_empty((0,)) if like is None else like.new_empty(like.shape)

    def read_shape(W1: Tensor, W2: Tensor, next_inputs: Tensor | None) -> Tensor:
        if next_inputs is None:
            return W1.new_empty((0,))
        return W1.new_empty((W1.shape[0], W1.shape[1], next_inputs.shape[2], W2.shape[2]))

    def saved_shape(W1: Tensor, W2: Tensor, keys: Tensor, next_inputs: Tensor | None, flags: int) -> Tensor:
        rows = 0 if next_inputs is None else next_inputs.shape[2]
        return W1.new_empty((W1.shape[0] * W1.shape[1] if flags & SAVE else 0,
                             saved_size(keys.shape[2], W1.shape[2], W2.shape[2], rows, flags)))

    @torch.library.register_fake(f"{namespace}::memory_write")
    def _(W1, W2, S1, S2, keys, values, decay, momentum_scale, momentum_decay, write_weights,
          momentum_write_weights, next_inputs, flags, clip):
        return [W1.new_empty(W1.shape), W2.new_empty(W2.shape), empty(S1, W1), empty(S2, W1),
                read_shape(W1, W2, next_inputs), saved_shape(W1, W2, keys, next_inputs, flags)]

    @torch.library.register_fake(f"{namespace}::memory_write_backward")
    def _(grad_W1, grad_W2, grad_S1, grad_S2, grad_read, W1, W2, S1, S2, keys, values, decay, momentum_scale,
          momentum_decay, write_weights, momentum_write_weights, next_inputs, new_W1, new_W2, saved, flags, clip):
        return [W1.new_empty(W1.shape), W2.new_empty(W2.shape), empty(S1, W1), empty(S2, W1),
                keys.new_empty(keys.shape), values.new_empty(values.shape), decay.new_empty(decay.shape),
                empty(momentum_scale, W1), empty(momentum_decay, W1), write_weights.new_empty(write_weights.shape),
                empty(momentum_write_weights, W1), empty(next_inputs, W1)]

    def setup_context(ctx, inputs, output) -> None:
        ctx.flags, ctx.clip = inputs[-2:]
        ctx.mark_non_differentiable(output[5])  # the forward's intermediates, for backward only
        ctx.save_for_backward(*inputs[:-2], output[0], output[1], output[5])

    def backward(ctx, grads):
        W1, W2, S1, S2, *rest, new_W1, new_W2, saved = ctx.saved_tensors
        next_inputs = rest[-1]
        momentum = S1 is not None
        grad_W1, grad_W2, grad_S1, grad_S2, grad_read, _ = grads
        grad_W1 = torch.zeros_like(W1) if grad_W1 is None else grad_W1
        grad_W2 = torch.zeros_like(W2) if grad_W2 is None else grad_W2
        if momentum:
            grad_S1 = torch.zeros_like(S1) if grad_S1 is None else grad_S1
            grad_S2 = torch.zeros_like(S2) if grad_S2 is None else grad_S2
        if next_inputs is not None and grad_read is None:
            grad_read = new_W1.new_zeros((W1.shape[0], W1.shape[1], next_inputs.shape[2], W2.shape[2]))
        out = getattr(torch.ops, namespace).memory_write_backward(
            grad_W1, grad_W2, grad_S1 if momentum else None, grad_S2 if momentum else None,
            grad_read if next_inputs is not None else None, W1, W2, S1, S2, *rest,
            new_W1 if next_inputs is not None else None, new_W2 if next_inputs is not None else None, saved,
            ctx.flags, ctx.clip)
        absent = [2, 3, 7, 8, 10] if not momentum else []  # no S, m_n, B_n or S writes without momentum
        if next_inputs is None:
            absent.append(11)
        for index in absent:
            out[index] = None
        return (*out, None, None)

    torch.library.register_autograd(f"{namespace}::memory_write", backward, setup_context=setup_context)

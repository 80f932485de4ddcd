"""Data-parallel training under torchrun: one process per device, each with its share of the global batch.

`torchrun --nproc_per_node=N -m nldsl train SPEC …` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup`
reads them, picks the device (cuda:LOCAL_RANK on GPUs) and starts the process group (nccl on
GPUs, gloo on CPU). Without torchrun everything here is a no-op on one process.

- Data parallel (default): every rank holds the whole model, computes the loss of its rows of the
  global batch (data.batch_at), and `all_reduce_gradients` averages the gradients as one flat
  buffer before clipping. Since every rank's loss is a mean over the same number of tokens, the
  average is the gradient of the global batch, so N processes match one process up to float
  summation order. The gradients are reduced by hand rather than by wrapping the model in
  DistributedDataParallel because the training step calls (and compiles) `model.loss`, which
  DDP's forward hooks would not see.
- FSDP (`--fsdp`, meant for GPUs): `shard_model` applies `torch.distributed.fsdp.fully_shard` to
  every block and then to the whole model, so parameters, gradients and optimizer state are
  sharded and gathered block by block; FSDP reduces the gradients itself. Checkpoints hold whole
  tensors in the same layout as without FSDP (`full_state_dicts` gathers them, `load_state_dicts`
  slices each rank's shard locally), so a run saved with or without FSDP resumes either way.

Only rank 0 writes files and shows progress; the others compute the same decisions (clock,
schedule, NaN checks) from the same all-reduced numbers, so they never disagree about what to do.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from nldsl.cli import UserError

_joined = False  # whether this process started a process group (it is a torchrun worker)


class PeerFailure(UserError):
    """Another process of the run stopped: an error every surviving process prints (`cli.quiet_worker`)."""

    every_worker = True


@dataclass
class Distributed:
    """Where this process stands: its rank among `world_size` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" → cuda:LOCAL_RANK when a GPU is there, else cpu; "cuda" → cuda:LOCAL_RANK; others as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device `{name}` (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available (use --device cpu)")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", index)
    return device


def setup(device: str = "auto", fsdp: bool = False) -> Distributed:
    """Join torchrun's process group when there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    global _joined
    if world_size > 1 and not dist.is_initialized():
        # Importing torch._dynamo after the group exists keeps a reference to it (torch 2.13; the
        # optimizers import dynamo), so destroy_process_group would leave gloo's worker threads
        # running into interpreter shutdown, where one releasing a finished collective's tensors
        # aborts the process ("terminate called without an active exception") after a
        # successful run. Imported first, the group and its threads end in `teardown`.
        import torch._dynamo

        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        _joined = True
    if fsdp and world_size == 1:
        raise UserError("--fsdp shards the model over processes: start it with torchrun --nproc_per_node=N, "
                        "N at least 2")
    return Distributed(rank, world_size, local_rank, resolved, fsdp)


def end_worker(status: int) -> None:
    """End a torchrun worker process now, without the interpreter's shutdown, once its run is over.

    Under FSDP the group outlives `destroy_process_group` (DTensor's sharding cache holds the
    device mesh, which holds the group), so gloo's worker threads are still alive when the
    interpreter shuts down; one that releases a finished collective's tensors then needs the
    GIL, which a finalizing interpreter no longer grants, and the process aborts after a
    successful run. Every file is closed by then, so skipping the shutdown loses nothing.
    A process that joined no group returns normally.
    """
    if not _joined:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to deliver there
            pass
    os._exit(status)


def teardown(context: Distributed, together: bool = True) -> None:
    """Leave the process group; `together` waits for every rank first, because a rank that exits while
    another still reads its last message makes gloo abort the reader. After an error the other ranks
    may be elsewhere, so nobody waits (torchrun stops them)."""
    if context.active and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


# What a collective raises when another process of the run is gone (killed, out of memory on its
# device, its machine down): torch's DistError, or gloo's and NCCL's own RuntimeErrors, named by these
_PEER_FAILURES = ("/gloo/", "NCCL", "Connection reset by peer", "Connection closed by peer")


def peer_failed(error: BaseException, context: Distributed) -> bool:
    """Whether `error` says another process of this torchrun run stopped, not this one failing."""
    if context.world_size == 1 or not isinstance(error, RuntimeError):
        return False
    return isinstance(error, dist.DistError) or any(mark in str(error) for mark in _PEER_FAILURES)


def barrier(context: Distributed) -> None:
    if context.active:
        dist.barrier()


def broadcast_object(value: Any, context: Distributed) -> Any:
    """Rank 0's `value` on every rank (a run folder name, a decision)."""
    if not context.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: Tensor, context: Distributed) -> Tensor:
    """The sum over ranks, in place (and returned)."""
    if context.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(parameters: list[torch.nn.Parameter], context: Distributed) -> None:
    """Average the gradients over ranks as one flat buffer (data parallel only; FSDP reduces its own)."""
    if not context.active or context.fsdp:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # (total,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= context.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(model: torch.nn.Module, context: Distributed) -> None:
    """Start every rank from rank 0's parameters (they are built from the same seed; this makes sure)."""
    if not context.active or context.fsdp:
        return
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)


def shard_model(model: torch.nn.Module, context: Distributed) -> torch.nn.Module:
    """FSDP2: shard every block, then the rest of the model (embedding, final norm)."""
    if not context.fsdp:
        return model
    from torch.distributed.fsdp import fully_shard

    for block in model.get_submodule("blocks").children():
        fully_shard(block)
    fully_shard(model)
    return model


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor behind a possibly sharded one (FSDP's DTensor; gathering is collective)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """`full` laid out as `like` is: this rank's shard of it when `like` is a DTensor. Every rank slices
    its own copy (src_data_rank=None), so no communication happens and the order of calls is free."""
    if not hasattr(like, "device_mesh"):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    mesh, placements = like.device_mesh, like.placements  # type: ignore[attr-defined]
    return distribute_tensor(full.to(like.device), mesh, placements, src_data_rank=None)


def _map_tensors(value: Any, function: Any) -> Any:
    if isinstance(value, Tensor):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, function) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, function) for item in value)
    return value


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     context: Distributed) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Whole-tensor model and optimizer state dicts, in the same layout with or without FSDP (the
    optimizer's own `state_dict()`, keyed by parameter index), so checkpoints move between the two.
    Under FSDP every rank must call this (the gathers are collective)."""
    model_state = {name: full_tensor(tensor) for name, tensor in model.state_dict().items()}
    return model_state, _map_tensors(optimizer.state_dict(), full_tensor)


def load_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict[str, Tensor],
                     optimizer_state: dict[str, Any] | None, context: Distributed) -> None:
    """Load whole-tensor state dicts into a plain or an FSDP-sharded model (and its optimizer)."""
    if not context.fsdp:
        model.load_state_dict(model_state)
        if optimizer is not None and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        return
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(shard_like(model_state[name], tensor))
    if optimizer is None or optimizer_state is None:
        return
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, values in optimizer_state["state"].items():
        p = parameters[index]
        state[index] = {key: shard_like(value, p) if isinstance(value, Tensor) and value.shape == p.shape else value
                        for key, value in values.items()}
    optimizer.load_state_dict({**optimizer_state, "state": state})

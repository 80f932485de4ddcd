"""The training loop behind `nldsl train`: a checked spec → a trained model in a run folder.

One outer step: the batch of (seed, step) → `model.loss` (compiled with fullgraph=True when
`train.compile` is true, per block when it is `blocks` and per chunk body when it is `chunks`
(nldsl/runtime/chunked.py), under bf16 autocast when `train.precision = bf16`) → backward through
every inner update → gradients averaged over data-parallel ranks → one gradient-norm clip over all parameters
→ the continuum clock → the spec's outer optimizer, with the learning rate of the schedule.

- Schedule: linear warm-up over `warmup` steps to the optimizer's lr, then cosine or linear decay
  to `min_lr_ratio` · lr at the last step, or constant. Every param group keeps its own base lr.
- Continuum clock (docs/semantics.md §4): a parameter under a CLOCK_STEPS prefix of the generated
  module, in any block (`blocks.{i}.{prefix}…`), with N steps between updates, adds its clipped
  gradient to a sum every step. On steps where (step + 1) is a multiple of N its `.grad` becomes
  that sum (and the sum restarts); on the others its `.grad` is None, so the optimizer skips it
  entirely (no step, no weight decay, no moment update). Levels with N = 1 are ordinary parameters.
- The run folder (default runs/<spec stem>-<date>, or --run-dir): spec.nl (the source text),
  resolved.json (every value of the checked spec and where it came from: a file:line, an
  override, or the default), split.json, tokenizer.json (BPE), metrics.jsonl (one JSON object per
  logged step: step, loss, lr, grad_norm, tokens_per_s; and per evaluation: eval_loss,
  eval_perplexity, eval_bpb), tensorboard/ (with --tensorboard, when TensorBoard is installed),
  checkpoints/ (checkpoint.py), graph.svg (with --sample).
- Exact resume: batches depend only on (seed, step); the checkpoint holds the weights, the
  optimizer state, the clock sums and the RNG states, and the lr is a function of the step, so a
  resumed run computes the same losses as one that was never interrupted (a resume may also
  change CONTINUABLE values, e.g. train.steps to train longer). Metrics logged after the
  checkpoint by the interrupted run are dropped when it resumes. Ctrl-C checkpoints the steps done
  since the last checkpoint first (one process only; a step's update is never cut in half).
- Timing: the first step (which compiles, when compiling) is timed on its own and kept out of
  tokens/s; evaluation and checkpoint time are kept out too.
- A loss or gradient norm that is not finite stops the run before the optimizer step, with a
  message naming the step; nothing from that step is written, the last checkpoint stays as it was.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import errno
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from nldsl import __version__, loader
from nldsl import spec as S
from nldsl.cli import UserError
from nldsl.files import file_in_the_way, naming, write_atomic
from nldsl.runtime import checkpoint as C
from nldsl.runtime import data as D
from nldsl.runtime import distributed
from nldsl.runtime.chunked import compile_loss
from nldsl.runtime.clock import ContinuumClock as BaseClock
from nldsl.runtime.distributed import Distributed
from nldsl.runtime.evaluate import (
    IN_CONTEXT_LR_ADVICE,
    Evaluation,
    describe_module,
    evaluate,
    evaluation_from_sums,
    first_non_finite,
    generate,
    non_finite_gradient_layer,
    non_finite_module,
    shown_text,
)
from nldsl.runtime.heap import frozen_heap
from nldsl.runtime.interrupt import ReportedInterrupt, deferred_interrupt, signal_number, terminate_as_interrupt
from nldsl.semantics import in_context_levels, runs_chunk_loop

RUNS = Path("runs")
_COMPILE_MODES = {False: "eager", True: "compiled", "blocks": "compiled per block", "chunks": "compiled per chunk"}

def compile_notice(compiled: bool | str) -> str:
    """What the training loop says before the first step compiles, in the compile mode `compiled`.

    A deep model under one whole graph is the checker's to point out (W0717), with the other warnings."""
    what = {"chunks": "each chunk body (once per shape)", "blocks": "one block (every block reuses it)"}.get(
        compiled, "the training step")
    return f"compiling {what} on the first step (this can take minutes; --no-compile runs eagerly)"


@dataclass
class TrainOptions:
    data: list[str] | None = None  # files or folders; None = the default corpus
    data_encoding: str | None = None  # None: utf-8, or the encoding the resumed run recorded
    run_dir: str | Path | None = None  # None = runs/<spec stem>-<date>
    resume: bool = False
    tensorboard: bool = False
    compile: bool | str | None = None  # None = the spec's train.compile (true, false, "blocks" or "chunks")
    sample: bool = False
    device: str = "auto"
    fsdp: bool = False
    progress: bool = True  # the progress bar (rank 0 only)
    init_from: str | Path | None = None  # a run or checkpoint whose weights a new run starts from


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # outer steps done
    losses: dict[int, float]  # step → training loss, for the steps this call ran
    step_seconds: dict[int, float]  # step → wall time of that step (the first one includes compilation)
    evaluation: Evaluation | None  # on the validation split at the end
    tokens_per_second: float | None  # after the first step
    first_step_seconds: float | None  # includes compilation when compiling
    checkpoint: Path | None


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss); the message says where and what is kept."""


def learning_rate_factor(step: int, train: Any) -> float:
    """The schedule's multiplier of the base lr at outer step `step` (0-based)."""
    if train.warmup > 0 and step < train.warmup:
        return (step + 1) / train.warmup
    if train.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - train.warmup) / max(1, train.steps - 1 - train.warmup))
    low = train.min_lr_ratio
    if train.schedule == "cosine":
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - low) * progress


class ContinuumClock(BaseClock):
    """The runtime's continuum clock, with its sums saved in and restored from checkpoints."""

    def tensors(self) -> dict[str, Tensor]:
        return {f"clock.{name}": distributed.full_tensor(total) for name, total in self.sums.items()}

    def load(self, tensors: dict[str, Tensor]) -> None:
        for name, total in self.sums.items():
            stored = tensors.get(f"clock.{name}")
            if stored is None:
                raise C.CheckpointError(f"the checkpoint holds no continuum-clock sum for {name}")
            with torch.no_grad():
                total.copy_(distributed.shard_like(stored, total))


# The run folder --------------------------------------------------------------------------------------

def new_run_dir(spec_path: str) -> Path:
    """A fresh runs/<spec stem>-<date> folder, made here. Made with exist_ok=False, so two runs
    started in the same second (a sweep) get -2, -3 … instead of sharing one folder."""
    base = RUNS / f"{Path(spec_path).stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for attempt in itertools.count(1):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def latest_run_dir(spec_path: str) -> Path:
    """For --resume without --run-dir: the newest runs/<spec stem>-<date> folder that has a checkpoint.

    Exactly the names `new_run_dir` makes: a glob `<stem>-*` would also take the runs of
    another spec whose name starts the same (tf.nl and tf-small.nl)."""
    stem = Path(spec_path).stem
    name = re.compile(re.escape(stem) + r"-(\d{8}-\d{6})(?:-(\d+))?")
    candidates = []
    for folder in RUNS.glob(f"{stem}-*"):
        match = name.fullmatch(folder.name)
        if match and (folder / C.CHECKPOINTS).is_dir() and C.complete_checkpoints(folder):
            candidates.append(((match[1], int(match[2] or 1)), folder))
    if not candidates:
        raise UserError(f"nothing to resume: no run of {stem} with a checkpoint under {RUNS}/ (pass --run-dir)")
    return max(candidates)[1]


def resolved_values(dump: dict[str, Any], provenance: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every value of the checked spec by dotted path (named list items by name) and where it came
    from: the nearest entry of the checker's provenance on the path, or "default"."""
    values: dict[str, dict[str, Any]] = {}

    def origin(path: str) -> str:
        parts = path.split(".")
        for end in range(len(parts), 0, -1):
            found = provenance.get(".".join(parts[:end]))
            if found is not None:
                return found
        return "default"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list) and node and all(isinstance(item, dict) and item.get("name") for item in node):
            parent = path.rsplit(".", 1)[0] if "." in path else path
            for item in node:
                walk(item, f"{parent}.{item['name']}")
        else:
            values[path] = {"value": node, "from": origin(path)}

    for key in ("model", "train", "optimizers"):
        walk(dump.get(key), key)
    return values


def read_metrics(path: Path, warn: Any) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
    """The entries of a metrics.jsonl with their line numbers, and the numbers of its unreadable
    lines. Appends are not atomic, so a process killed while writing leaves a cut last line (and
    hands can leave anything): lines that are not a JSON object with an integer step are passed
    over, and reported through `warn`."""
    entries, unreadable = [], []
    for number, entry in D.read_json_lines(path):
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append((number, entry))
        else:
            unreadable.append(number)
    if unreadable and warn is not None:
        lines = ", ".join(map(str, unreadable[:5])) + (" …" if len(unreadable) > 5 else "")
        warn(f"{path}: dropped {len(unreadable)} unreadable line(s) ({lines}), e.g. one cut short by a crash; "
             f"they are kept in {path.name}{DROPPED_SUFFIX}")
    return entries, unreadable


DROPPED_SUFFIX = ".dropped"  # metrics.jsonl.dropped: the lines a resume took out, appended as they were


def _keep_dropped_lines(path: Path, numbers: set[int]) -> None:
    """Append the lines `numbers` (1-based) of `path` to its `.dropped` file, byte for byte, so that
    a resume, which rewrites metrics.jsonl without them, loses nothing a user may want back."""
    if not numbers:
        return
    raw = path.read_bytes().split(b"\n")
    dropped = path.with_name(path.name + DROPPED_SUFFIX)
    with naming(dropped), open(dropped, "ab") as handle:
        handle.write(b"".join(raw[number - 1] + b"\n" for number in sorted(numbers)))


def _json_line(entry: dict[str, Any]) -> str:
    """One strict-JSON line of metrics.jsonl."""
    return json.dumps({key: _json_number(value) for key, value in entry.items()}) + "\n"


def _json_number(value: Any) -> Any:
    """NaN and ±inf as null: bare `NaN` in a line makes it invalid JSON for every strict reader."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """metrics.jsonl (and TensorBoard) on rank 0; a resumed run first drops lines past its checkpoint
    (and unreadable ones)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool, warn: Any = None):
        self.path = run_dir / "metrics.jsonl"
        self.last_time = 0.0  # time_s of the last kept entry, where a resumed run's clock goes on from
        if resume_step is not None and self.path.exists():
            numbered, unreadable = read_metrics(self.path, warn)
            kept = [entry for _, entry in numbered if entry["step"] <= resume_step]
            # the lines past the checkpoint (the steps this resume runs again) and the unreadable ones
            later = {number for number, entry in numbered if entry["step"] > resume_step}
            _keep_dropped_lines(self.path, later | set(unreadable))
            times = [entry["time_s"] for entry in kept if isinstance(entry.get("time_s"), (int, float))]
            self.last_time = float(times[-1]) if times else 0.0
            write_atomic(self.path, "".join(_json_line(entry) for entry in kept).encode("utf-8"))
        elif resume_step is None:
            self.path.write_text("", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                tqdm.write("warning: TensorBoard logs need the `tensorboard` package (pip install "
                           "'tensorboard>=2.14', or pip install -e '.[tensorboard]' in nldsl's checkout); training "
                           "goes on without them", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, entry: dict[str, Any]) -> None:
        with naming(self.path), open(self.path, "a", encoding="utf-8") as handle:  # a full disk names the file
            handle.write(_json_line(entry))
        if self.writer is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    group = "eval" if key.startswith("eval_") else "train"
                    self.writer.add_scalar(f"{group}/{key.removeprefix('eval_')}", value, entry["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Training ----------------------------------------------------------------------------------------------

def train(result: Any, overrides: list[str], options: TrainOptions) -> TrainResult:
    """Train the checked spec `result` (a loader.check / checker CheckResult) as `options` say."""
    spec = result.spec
    if spec.model is None:
        raise UserError(f"{spec.path} defines no `model` section, so there is nothing to train")
    D.check_vocabulary(spec.model.vocab, spec.train.tokenizer)
    check_device(options.device)  # before the data is read and the run folder made
    context = distributed.setup(options.device, options.fsdp)
    folder: list[Path] = []  # the run folder, once `_train` knows it
    try:
        outcome = _train(result, list(overrides), options, context, folder)
    except BaseException as error:
        distributed.teardown(context, together=False)
        if distributed.peer_failed(error, context):
            what = str(error).strip().splitlines()[0].split(". ")[0][:200]  # gloo's first sentence says it
            seen = bool(folder) and folder[0].is_dir()  # (on another machine than rank 0's it may not be)
            kept = C.complete_checkpoints(folder[0]) if seen else []
            then = (f"the run keeps its last regular checkpoint ({kept[-1].name}): rerun the same torchrun command "
                    "with --resume" if kept else "no checkpoint was written yet: rerun the same torchrun command"
                    if seen else "rerun the same torchrun command, with --resume if the run wrote a checkpoint")
            raise distributed.PeerFailure(f"another process of this torchrun run stopped ({what}); {then}") from None
        raise
    distributed.teardown(context)
    return outcome


def _say(context: Distributed, message: str, error: bool = False) -> None:
    """A line from rank 0 (warnings to stderr, beside the errors, out of the way of the run's output)."""
    if context.is_main:
        tqdm.write(message, file=sys.stderr if error else None)


def check_device(name: str) -> torch.device:
    """The device `--device` names, refused up front unless nldsl can run on it here: a CUDA device
    must be there, an Apple GPU available, and nothing else (meta, xla …) runs a model."""
    device = distributed.resolve_device(name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no Apple GPU (MPS) is available (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: nldsl runs on cpu, cuda or mps devices, not {device.type}")
    return device


def _run_dir(spec_path: str, options: TrainOptions, context: Distributed) -> tuple[Path, bool]:
    """The run folder, and whether this process made it (a new default folder is made here, on the
    main process, so that its name is taken before any other run can take it)."""
    if options.run_dir is not None:
        if not str(options.run_dir).strip():  # Path("") would be the current folder
            raise UserError("--run-dir is empty: name the run's folder")
        return Path(options.run_dir), False
    if options.resume:
        return Path(distributed.broadcast_object(str(latest_run_dir(spec_path)), context)), False
    made, refused = None, None
    if context.is_main:
        try:
            made = str(new_run_dir(spec_path))
        except OSError as error:  # `runs` is a file, or not writable: every rank stops with this reason
            refused = _cannot_make(RUNS, error)
    made, refused = distributed.broadcast_object((made, refused), context)
    if refused is not None:
        raise UserError(refused)
    return Path(made), context.is_main


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (nearest first) while they exist and nothing else is in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENAMETOOLONG):
                continue  # not made before the failure (a name too long was never made)
            break  # not empty: something else is in it


def _cannot_make(folder: Path, error: OSError) -> str:
    """Why a run folder could not be made, as the command line prints an OSError: `path: reason`."""
    return f"{error.filename or folder}: {error.strerror or error}{file_in_the_way(error)}"


LOCK_FILE = ".lock"


def _may_hold_a_new_run(run_dir: Path) -> bool:
    """Whether a new run may write into `run_dir`: it does not exist yet, is empty (or holds only a
    lock left by a start that failed), or holds an earlier run of nldsl (its resolved.json says so;
    one with checkpoints is refused later unless resumed). Any other folder is the user's own."""
    if not run_dir.exists():
        return True
    if not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder")
    if {entry.name for entry in run_dir.iterdir()} <= {LOCK_FILE}:
        return True
    try:
        record = json.loads((run_dir / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "spec_sha256" in record and "values" in record


def _lock_run_dir(run_dir: Path) -> Any:
    """An exclusive lock on the run folder for this process's lifetime (released when the returned
    file is closed, or by the OS when the process dies): two runs writing one folder would
    interleave their checkpoints and metrics."""
    try:
        import fcntl  # POSIX only: elsewhere a run folder is not locked
    except ImportError:
        return None
    handle = open(run_dir / LOCK_FILE, "a+b")  # held open until `_train` returns
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # a file system without flock (some network mounts): train, unlocked, rather than refuse
            print(f"warning: cannot lock {run_dir / LOCK_FILE} ({error.strerror or error}); nothing stops "
                  "a second run from writing into this folder", file=sys.stderr)
            return None
        raise UserError(f"another `nldsl train` is running in {run_dir} (it holds {run_dir / LOCK_FILE}): wait "
                        "for it to end, or choose another --run-dir") from None
    return handle


def _train(result: Any, overrides: list[str], options: TrainOptions, context: Distributed,
           folder: list[Path]) -> TrainResult:
    """Make and lock the run folder, then train; a start that fails before its first step is done (bad
    data, a first step out of memory or not finite) leaves no folder behind when this call made it
    (a half-made run would later look like one to resume)."""
    spec = result.spec
    plan = spec.train
    if plan.batch % context.world_size:
        raise UserError(f"train.batch = {plan.batch} does not split over {context.world_size} processes "
                        f"(use a multiple of {context.world_size})")
    run_dir, created = _run_dir(spec.path, options, context)
    folder.append(run_dir)
    if options.resume and options.init_from is not None:
        raise UserError("--resume continues a run; --init-from starts a new one from another run's weights: "
                        "use one of them")
    if options.resume and not run_dir.is_dir():
        raise UserError(f"nothing to resume: {run_dir} is a file, not a run folder" if run_dir.exists() else
                        f"nothing to resume: the run folder {run_dir} does not exist")
    if not options.resume and not created and not _may_hold_a_new_run(run_dir):
        raise UserError(f"{run_dir} holds files that are not an nldsl run: a run writes spec.nl, resolved.json, "
                        "metrics.jsonl … there and would overwrite them; choose a new or empty --run-dir")
    lock, refused = None, None
    made_parents: list[Path] = []  # folders above --run-dir that this run makes, nearest first
    if context.is_main:
        if not created:
            # `new/../x` names `new` twice: as `new` and through `new/..`, which only a missing `new`
            # makes missing and which is no folder of its own to remove
            missing = [parent for parent in run_dir.parents if not parent.exists() and parent.name != ".."]
            try:
                run_dir.mkdir(parents=True, exist_ok=False)  # atomic: "made by this run" is never a guess
                created, made_parents = True, missing
            except FileExistsError:
                pass
            except OSError as error:  # a file where a folder is asked for, no permission: said by every rank
                refused = _cannot_make(run_dir, error)
                _remove_empty(missing)  # the parents made before the failure
        # A failed lock deletes nothing: another run may have entered the folder since it was made.
        if refused is None:
            try:
                lock = _lock_run_dir(run_dir)
            except UserError as error:
                refused = str(error)
    # every process stops with rank 0's reason (the others would only see rank 0 leave)
    refused = distributed.broadcast_object(refused, context)
    if refused is not None:
        raise UserError(refused)
    started = [False]  # set when the first step is done: from then on the folder holds a run
    try:
        with terminate_as_interrupt(enabled=not context.active):
            return _train_in(result, overrides, options, context, run_dir, started)
    except BaseException as error:
        if created and not started[0]:
            shutil.rmtree(run_dir, ignore_errors=True)
            _remove_empty(made_parents)  # and the folders made to hold it
            # Ctrl-C or SIGTERM (the other stops say so in their own message, or need not)
            if isinstance(error, KeyboardInterrupt):
                _say(context, f"no step was done: the run folder {run_dir} was removed", error=True)
        if isinstance(error, BrokenPipeError):  # stdout's reader exited outside the step loop (inside it, the
            _discard_stdout()                   # loop checkpoints the steps done and says so itself)
            if started[0]:  # after the loop: every step ran and was checkpointed; only the report is lost
                raise UserError(f"the output was closed (its reader exited) after training; the run and its "
                                f"checkpoints are in {run_dir}") from None
            raise UserError("the output was closed (its reader exited) before the first step: nothing was "
                            "trained" + (f", and the run folder {run_dir} was removed" if created else "")) from None
        raise
    finally:
        if lock is not None:
            lock.close()


def _train_in(result: Any, overrides: list[str], options: TrainOptions, context: Distributed, run_dir: Path,
              started: list[bool]) -> TrainResult:
    """The run inside its locked folder: what to resume (or start from), the data and tokenizer,
    the model and optimizer (with the resumed state), the run's description files, then the steps
    with their evaluations and checkpoints. Every refusal comes before the first step."""
    spec = result.spec
    plan = spec.train
    device = context.device
    initial = _initial_checkpoint(options.init_from, plan, context) if options.init_from is not None else None
    found, continued = _checkpoint_to_resume(spec, overrides, options, context, run_dir)

    # where the weights of step 0 came from (kept across resumes of a run that started from another's)
    initialized_from = (str(initial.path.resolve()) if initial is not None else
                        found.record.get("initialized_from") if found is not None else None)

    split = _split_to_train_on(options, context, run_dir, found)
    tokenizer = _tokenizer(plan, split, context, run_dir, initial, found)
    train_text = D.tokenize(tokenizer, split.train)
    validation = D.tokenize(tokenizer, split.validation)
    D.require_windows(train_text, plan.seq_len, "training")
    D.require_windows(validation, plan.seq_len, "validation")

    module = loader.compile_module(result)
    torch.manual_seed(plan.seed)
    model = loader.build_model(module, spec, device)
    if initial is not None:
        C.check_parameters(initial.model, _parameter_shapes(model), initial.path)
        model.load_state_dict(initial.model)  # before sharding: every process reads the same file
        _say(context, f"starting from the weights of {initial.path} (step {initial.record['step']}), "
                      "with a fresh optimizer")
    distributed.broadcast_parameters(model, context)
    distributed.shard_model(model, context)
    named = list(model.named_parameters())
    from nldsl.compiler.optimizers import build_optimizer

    optimizer = build_optimizer(named, plan.optimizer)
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    clock = ContinuumClock(named, dict(getattr(module, "CLOCK_STEPS", {})))
    start = 0
    if found is not None:
        C.check_parameters(found.model, _parameter_shapes(model), found.path)
        try:
            optimizer_state = C.optimizer_from_files(found.record["optimizer"], found.training)
        except ValueError as error:
            raise C.CheckpointError(f"damaged optimizer state in {found.path / C.RECORD_FILE}: {error}") from None
        _check_optimizer_state(optimizer_state, optimizer, named, plan.optimizer, found.path)
        try:
            distributed.load_state_dicts(model, optimizer, found.model, optimizer_state, context)
        except ValueError as error:  # torch's (a group of another size) or NestedOptimizer's own check
            raise C.CheckpointError(f"cannot resume the optimizer from {found.path}: {error}") from None
        except (KeyError, TypeError, AttributeError, IndexError) as error:  # a structure no optimizer wrote
            raise C.CheckpointError(f"damaged optimizer state in {found.path / C.RECORD_FILE}: it is not an "
                                    f"optimizer's state ({type(error).__name__}: {error})") from None
        clock.load(found.training)
        C.restore_rng(found.training)
        start = int(found.record["step"])

    # Written only now that the model, the data and the checkpoint all fit: a failed start must not
    # leave a resumed run's folder describing values it never trained with. A continued run records
    # its new values once its first step is done (a stop before it leaves the old description).
    if context.is_main and found is None:
        outside = _write_run_description(result, overrides, initialized_from, split, run_dir)
        if outside:
            _say(context, f"note: {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} imported from outside "
                          "the spec's folder, so the run folder holds no copy: a resume from its spec.nl needs "
                          "the original spec (or the import in place)", error=True)
    describe_after_first_step = context.is_main and found is not None and continued

    compiled = plan.compile if options.compile is None else options.compile
    loss_function = compile_loss(model.loss, compiled, fullgraph=not context.fsdp, recompute=plan.recompute,
                                 chunks_per_call=plan.chunks_per_call)
    bf16 = plan.precision == "bf16"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    metrics = None
    if context.is_main:
        metrics = MetricsLog(run_dir, start if found is not None else None, options.tensorboard,
                             lambda message: _say(context, f"warning: {message}", error=True))
    # the training time (time_s) of a resumed run goes on from where the checkpoint's left it
    recorded_time = found.record.get("time_s") if found is not None else None
    time_offset = (float(recorded_time) if isinstance(recorded_time, (int, float)) and math.isfinite(recorded_time)
                   else metrics.last_time if metrics is not None else 0.0)
    parameter_count = sum(p.numel() for p in model.parameters())
    tokens_per_step = plan.batch * plan.seq_len
    if found is not None:
        _say(context, f"resuming {run_dir} at step {start} from {found.path}")
    if continued:  # after every refusal of the resume (data, tokenizer, state): a refused one never says it
        _say(context, f"note: {continued}")
    _say(context, f"run folder: {run_dir}")
    source = _describe_source(split.record, recorded=found is not None and not options.data)
    _say(context, f"data: {source}; train {len(train_text):,} tokens, validation "
                  f"{len(validation):,} tokens ({tokenizer.kind} tokenizer, vocabulary {tokenizer.vocab_size})")
    learned = tokenizer.tokenizer.get_vocab_size() if tokenizer.kind == "bpe" else tokenizer.vocab_size
    if learned < tokenizer.vocab_size:  # a small text has fewer pairs to merge than the spec asked for
        _say(context, f"note: the BPE learned {learned:,} of its {tokenizer.vocab_size:,} ids on this text; the "
                      "model's other embedding and output rows are never a target, though the softmax still spreads "
                      "probability over them")
    _say(context, f"model: {spec.model.name or Path(spec.path).stem}, {parameter_count:,} parameters, "
                  f"{_COMPILE_MODES[compiled]}, {plan.precision}, {device}"
                  + (f", {context.world_size} processes{' (FSDP)' if context.fsdp else ''}" if context.active else ""))
    if plan.warmup > plan.steps and start < plan.steps:
        peak = learning_rate_factor(plan.steps - 1, plan)
        _say(context, f"note: train.warmup ({plan.warmup}) is longer than train.steps ({plan.steps}): the learning "
                      f"rate rises for the whole run, to {peak:.0%} of the optimizer's lr at the last step; lower "
                      "train.warmup for a short run")

    if compiled and start < plan.steps:
        _say(context, compile_notice(compiled))

    def evaluate_now() -> Evaluation:
        model.eval()
        sums = evaluate(model, validation, plan.seq_len, plan.batch // context.world_size,
                        plan.eval_batches * plan.batch, device, bf16, context.rank, context.world_size,
                        every_rank_all=context.fsdp)
        model.train()
        if context.active and not context.fsdp:
            totals = distributed.all_reduce_sum(torch.tensor(sums, dtype=torch.float64, device=device), context)
            sums = (float(totals[0]), int(totals[1]), int(totals[2]), int(totals[3]))
        return evaluation_from_sums(*sums)

    def log_evaluation(step: int, evaluation: Evaluation) -> None:
        if metrics is not None:
            metrics.write({"step": step, "eval_loss": evaluation.loss, "eval_perplexity": evaluation.perplexity,
                           "eval_bpb": evaluation.bits_per_byte})
        _say(context, f"step {step}: validation {evaluation.line()}")

    last_checkpoint: list[Path | None] = [found.path if found is not None else None]
    saved_step = [start]  # the step of the newest checkpoint (or where the run began)

    def _divergence_note(step: int) -> str:
        """Finite is not good: a checkpoint whose training loss had risen well past the run's lowest
        may already be diverging, and the earlier ones are the way back (named while they exist)."""
        risen = risen_loss(losses, step)
        if risen is None:
            return ""
        here, count, lowest, first, last = risen
        earlier = [path for path in C.complete_checkpoints(run_dir) if path != last_checkpoint[0]]
        back = (f"start a new run from an earlier checkpoint instead, e.g. --init-from {earlier[-1]} --run-dir NEW "
                f"(kept: {', '.join(path.name for path in earlier)})" if earlier else
                "train again, into a new --run-dir (no earlier checkpoint is kept: raise train.keep_checkpoints)")
        stretch = f"step {last}" if first == last else f"steps {first}–{last}"
        return (f". The training loss had risen by that checkpoint: {here:.4g} on average over the {count} step(s) "
                f"to it, against {lowest:.4g} over {stretch}, the run's lowest: if it had begun to diverge, {back}")

    def stopped(what: str, from_the_checkpoint: bool = False,
                batch: tuple[Tensor, Tensor] | None = None, forward_failed: bool = False) -> TrainingError:
        """The error that ends a diverged run, with advice that works: --resume takes a lower lr or a
        clip (CONTINUABLE_FIXES), and the last checkpoint never holds non-finite weights (`save`).
        When the step that failed is the first one after the last checkpoint, its weights already
        give a non-finite loss or gradient before any new lr acts: resuming from it cannot help.
        Where the forward pass of trained weights is what failed, inside a layer whose levels learn in
        context, the error names those levels and the changes that can keep them finite
        (`in_context_divergence`); elsewhere it names the layer beside the advice below."""
        trained = last_checkpoint[0] is not None or not from_the_checkpoint  # not the run's first weights
        if batch is not None and trained and context.world_size == 1:
            # an in-context memory can diverge inside a sequence from finite weights whose loss was
            # steady: its own settings reach that; a lower outer lr only moves the weights it starts from.
            # Behind normalised keys and values and bounded gates the forward pass can stay finite while
            # the backward through them overflows: then the layer is found from the gradients.
            name = (non_finite_module(model, *batch, bf16=bf16) if forward_failed
                    else non_finite_gradient_layer(model, *batch, bf16=bf16))
            levels = [] if name is None else levels_in(name, spec.model, plan.seq_len)
            if name is not None and levels:
                why = in_context_divergence(name, levels, clip_overrides(name, spec.model, plan.seq_len),
                                            value_norm_overrides(name, spec.model, plan.seq_len),
                                            last_checkpoint[0], None if from_the_checkpoint else _lower_lr(plan),
                                            backward=not forward_failed)
                return TrainingError(f"{what}; {why}")
            if name is not None:  # elsewhere: the advice below stands, and says where to look
                what = f"{what}; the {'forward pass' if forward_failed else 'gradient'} is first not finite in " \
                       f"{describe_module(name)}"
        if from_the_checkpoint and last_checkpoint[0]:
            complete = C.complete_checkpoints(run_dir)  # oldest first, by step (names sort wrongly past 999,999)
            earlier = complete[:complete.index(last_checkpoint[0])] if last_checkpoint[0] in complete else []
            way = (f"start a new run from an earlier one, e.g. --init-from {earlier[-1]} --run-dir NEW, with a "
                   "lower learning rate" if earlier else
                   "train again, into a new --run-dir, with a lower learning rate")
            return TrainingError(f"{what}; it is the first step after the checkpoint {last_checkpoint[0]}, whose "
                                 "weights already give it, so resuming from there fails the same way whatever the "
                                 f"learning rate: {way}")
        if from_the_checkpoint and batch is not None:
            # no checkpoint yet: the first step of the weights the run starts from, before any outer update
            if context.world_size == 1:
                where = first_non_finite(model, *batch, bf16=bf16)
                found_at = (f"the forward pass is first not finite in {where}" if where else
                            "the forward pass is finite, its gradient is not")
            else:  # the search runs the model on one process's batch: not a collective step
                found_at = ("the same command in one process (without torchrun) names the layer where the "
                            "forward pass is first not finite")
            return TrainingError(f"{what}; the weights it starts from already give it, before any update, so a lower "
                                 f"train.optimizer.lr or a clip cannot help: {found_at}. {IN_CONTEXT_LR_ADVICE}")
        kept = (f"the last good checkpoint is {last_checkpoint[0]}" if last_checkpoint[0]
                else "no checkpoint was written yet")
        then = "then --resume" if last_checkpoint[0] else "then train again"
        written = ("; with an optimizer written as levels, also check that its update stays finite: a level "
                   "reads 0 until its first write, so dividing by one can give inf, and a fractional power of a "
                   "negative entry is NaN"
                   if isinstance(plan.optimizer, S.OptimizerSpec) else "")
        note = _divergence_note(saved_step[0]) if last_checkpoint[0] else ""
        return TrainingError(f"{what}; {kept} (lower the learning rate, e.g. --set train.optimizer.lr="
                             f"{_lower_lr(plan)}, or set train.clip, {then}{written}){note}")

    def save(step: int, evaluation: Evaluation | None, rng: dict[str, Tensor] | None = None) -> None:
        model_state, optimizer_state = distributed.full_state_dicts(model, optimizer, context)
        clock_tensors = clock.tensors()
        message = None
        if context.is_main:
            broken = [name for name, tensor in model_state.items()
                      if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
            if broken:  # a checkpoint of non-finite weights would be one nothing can continue or use
                message = ("diverged", f"the weights are not finite after the update of step {step} "
                                       f"({len(broken)} of {len(model_state)} tensors, e.g. {broken[0]}); stopped "
                                       "without checkpointing it")
        if context.is_main and message is None:
            structure, tensors = C.optimizer_to_files(optimizer_state)
            tensors.update(clock_tensors)
            tensors.update(rng if rng is not None else C.rng_tensors())
            record = _record(result, overrides, tokenizer, split, module, structure, context, step, evaluation,
                             initialized_from,
                             time_s=round(time_offset + train_seconds + (first_step_seconds or 0), 4))
            extra = None
            if isinstance(tokenizer, D.BPETokenizer):
                extra = {"tokenizer.json": tokenizer.to_str().encode("utf-8")}
            try:
                last_checkpoint[0] = C.save_checkpoint(run_dir, step, model_state, tensors, record,
                                                       plan.keep_checkpoints, extra)
            except C.CheckpointError as error:
                message = ("checkpoint", str(error))
        message = distributed.broadcast_object(message, context)
        if message is not None:
            kind, text = message
            raise stopped(text) if kind == "diverged" else C.CheckpointError(text)
        saved_step[0] = step

    parameters = [p for _, p in named]
    # an optimizer written as levels can compute NaN from finite gradients (0 / 0 where a level is 0):
    # its every update is checked, so that the error names the step and the weights, not a NaN loss later
    # (each process holds the same weights, so all stop alike; FSDP's shards are left to the save's check)
    written_optimizer = isinstance(plan.optimizer, S.OptimizerSpec) and not context.fsdp

    def check_the_update(step: int, norm: float) -> None:
        if not parameters:
            return
        finite = torch.stack([torch.isfinite(p).all() for p in parameters]).tolist()
        if all(finite):
            return
        broken = [name for (name, _), ok in zip(named, finite) if not ok]
        kept = (f"the last good checkpoint is {last_checkpoint[0]}: fix the update, then --resume"
                if last_checkpoint[0] else "no checkpoint was written yet: fix the update, then train again")
        raise TrainingError(
            f"the optimizer's update of step {step} made weights not finite ({', '.join(broken[:4])}"
            f"{f' and {len(broken) - 4} more' if len(broken) > 4 else ''}) from a finite loss and gradient (norm "
            f"{norm:.3g}), so its `update` expression computed NaN or inf: a division by a level that is 0 gives "
            "0/0 where the gradient has been 0 (an embedding row no token used, a level before its first write), "
            "and a fractional power of a negative entry is NaN; add an ε to a divisor, e.g. `m / (sqrt(v) + 1e-8)`. "
            f"Nothing from this step was saved; {kept}")

    losses: dict[int, float] = {}
    step_seconds: dict[int, float] = {}
    first_step_seconds = None
    train_seconds, train_steps = 0.0, 0
    window_seconds, window_steps = 0.0, 0
    evaluation = None
    # the bar on a terminal; a log line every train.log_every steps otherwise (--no-progress, or the
    # output going to a file, where a redrawn bar would be a flood of carriage returns)
    show_bar = context.is_main and options.progress and sys.stderr.isatty()
    bar = tqdm(total=plan.steps, initial=start, unit="step", dynamic_ncols=True, disable=not show_bar)
    model.train()
    step = start
    # what an interrupt between steps saves: the steps done, the RNG at that boundary, its evaluation
    completed, boundary_rng, evaluated_at = start, C.rng_tensors(), None
    heap = contextlib.ExitStack()  # what lives as long as the run leaves the cyclic collector (heap.py)
    settle = heap.enter_context(frozen_heap())
    try:
        if (found is not None and plan.eval_every and start % plan.eval_every == 0 and start < plan.steps
                and found.record.get("evaluation") is None):
            # Ctrl-C during this step's evaluation saved the step without it: evaluate it now, as the
            # uninterrupted run did before its next step
            evaluation, evaluated_at = evaluate_now(), start
            log_evaluation(start, evaluation)
        for step in range(start, plan.steps):
            began = time.perf_counter()
            factor = learning_rate_factor(step, plan)
            for group, base in zip(optimizer.param_groups, base_lrs):
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(base * factor)
                else:
                    group["lr"] = base * factor
            inputs, targets = D.batch_at(train_text, plan.seed, step, plan.batch, plan.seq_len,
                                         context.rank, context.world_size)
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_function(inputs, targets)
            loss.backward()
            distributed.all_reduce_gradients(parameters, context)
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, plan.clip if plan.clip > 0 else math.inf)
            grad_norm = distributed.full_tensor(grad_norm)
            mean_loss = distributed.all_reduce_sum(loss.detach().float().clone(), context) / context.world_size
            loss_value, norm_value = torch.stack([mean_loss, grad_norm.float()]).tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                raise stopped(f"the training loss is {loss_value} (gradient norm {norm_value}) at step {step + 1}; "
                              "stopped before the optimizer step, nothing from this step was written",
                              from_the_checkpoint=step == saved_step[0], batch=(inputs, targets),
                              forward_failed=not math.isfinite(loss_value))
            # A step is applied and logged whole or not at all: Ctrl-C waits for the end of this block.
            with deferred_interrupt():
                clock.tick(step)
                optimizer.step()
                if written_optimizer:
                    check_the_update(step + 1, norm_value)
                optimizer.zero_grad(set_to_none=True)
                done = step + 1
                # what an interrupt from here on saves: set before anything is printed, since a print
                # into a closed pipe (`| head`) raises here, after the step changed the weights
                completed, boundary_rng = done, C.rng_tensors()
                started[0] = True  # a step is done: the folder holds a run (its metrics, soon a checkpoint)
                if describe_after_first_step:
                    _write_run_description(result, overrides, initialized_from, split, run_dir)
                    describe_after_first_step = False
                seconds = time.perf_counter() - began
                losses[step + 1] = loss_value
                step_seconds[step + 1] = seconds
                if step == start:
                    first_step_seconds = seconds
                else:
                    train_seconds, train_steps = train_seconds + seconds, train_steps + 1
                    window_seconds, window_steps = window_seconds + seconds, window_steps + 1
                bar.update(1)
                speed = tokens_per_step * window_steps / window_seconds if window_steps else None
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{speed:,.0f}" if speed else "…")
                if done % plan.log_every == 0 or done == plan.steps:
                    if metrics is not None:
                        metrics.write({"step": done, "loss": loss_value, "lr": base_lrs[0] * factor,
                                       "grad_norm": norm_value, "tokens_per_s": speed,
                                       "time_s": round(time_offset + train_seconds + (first_step_seconds or 0), 4)})
                    if not show_bar:
                        _say(context, f"step {done}/{plan.steps}: loss {loss_value:.4f}, lr {base_lrs[0] * factor:.3g},"
                                      f" grad norm {norm_value:.3g}" + (f", {speed:,.0f} tokens/s" if speed else ""))
                    window_seconds, window_steps = 0.0, 0
            if (plan.eval_every and done % plan.eval_every == 0) or done == plan.steps:
                evaluation, evaluated_at = evaluate_now(), done
                if not math.isfinite(evaluation.loss):  # the update made the model diverge: as a NaN loss
                    raise stopped(f"the validation loss is {evaluation.loss} after the update of step {done}; "
                                  "stopped without checkpointing it")
                log_evaluation(done, evaluation)
            if (plan.checkpoint_every and done % plan.checkpoint_every == 0) or done == plan.steps:
                # whole before a Ctrl-C acts: under torchrun no save follows the interrupt, so one cut
                # between its `latest` pointer and its pruning would leave the run's account stale
                with deferred_interrupt():
                    save(done, evaluation)
            if done - start <= 2 or evaluated_at == done:
                settle()  # the first steps compile, and so may an evaluation: what they made lives on
    except (KeyboardInterrupt, BrokenPipeError) as stop:
        bar.close()
        closed = isinstance(stop, BrokenPipeError)  # stdout's reader exited (`nldsl train … | head`)
        if closed:
            _discard_stdout()
        where = _save_on_interrupt(context, completed, saved_step, last_checkpoint,
                                   lambda: save(completed, evaluation if evaluated_at == completed else None,
                                                boundary_rng), say=not closed)
        if closed and completed >= plan.steps and completed == saved_step[0]:  # the run had finished
            raise UserError(f"the output was closed (its reader exited) after the last step; the run finished and "
                            f"its checkpoint is {last_checkpoint[0]}") from None
        if closed:
            raise UserError(f"the output was closed (its reader exited) after {completed} step(s); {where}"
                            ) from None
        raise ReportedInterrupt(signal_number(stop)) from None  # _save_on_interrupt said where the run stands
    finally:
        heap.close()
        bar.close()
        if metrics is not None:
            metrics.close()

    speed = tokens_per_step * train_steps / train_seconds if train_steps else None
    if first_step_seconds is not None:
        what = "compilation + first step" if compiled else "first step"
        steps = f"{train_steps} step{'' if train_steps == 1 else 's'}"
        _say(context, f"{what}: {first_step_seconds:.2f} s"
                      + (f"; then {steps} at {speed:,.0f} tokens/s" if speed else " (no other step)"))
    if evaluation is None and start >= plan.steps:
        evaluation = evaluate_now()
    if evaluation is not None and evaluated_at != plan.steps:  # the last step's line said it just above
        _say(context, f"validation: {evaluation.line()}")
    if last_checkpoint[0] is not None:
        _say(context, f"checkpoint: {last_checkpoint[0]}")
    if options.sample:
        _sample(spec, model, tokenizer, split, plan, context, run_dir)
    return TrainResult(run_dir, max(start, plan.steps), losses, step_seconds, evaluation, speed, first_step_seconds,
                       last_checkpoint[0])


def _checkpoint_to_resume(spec: Any, overrides: list[str], options: TrainOptions, context: Distributed,
                          run_dir: Path) -> tuple[C.Checkpoint | None, str | None]:
    """The checkpoint `--resume` goes on from and the note on the values it may change (both None
    for a new run), or the refusal: nothing to resume, nothing left to do, another spec, or a new
    run pointed at a folder that already holds one."""
    if not options.resume:
        if C.newest_readable(run_dir) is not None:
            raise UserError(f"{run_dir} already holds a run with checkpoints: pass --resume to continue it, or "
                            "choose another --run-dir")
        return None, None
    found = C.load_for_resume(run_dir, lambda message: _say(context, f"warning: {message}", error=True),
                              check=lambda checkpoint: C.check_run_record(checkpoint, resume=True))
    if found is None:
        raise UserError(f"nothing to resume: {run_dir} has no checkpoint yet (train without --resume)")
    steps = spec.train.steps
    if steps < found.record["step"]:
        left_out = [item for item in _left_out_overrides(found, overrides) if item.startswith("train.steps")]
        hint = (f"the run was trained with --set {left_out[-1]}, which this command leaves out: give it again"
                if left_out else f"--set train.steps=N with N > {found.record['step']} to train it longer")
        raise UserError(f"the run is already at step {found.record['step']} ({found.path}), past "
                        f"train.steps = {steps}: nothing to do ({hint})")
    continued = _check_same_spec(found, spec, overrides)  # said once the data check passed too
    written_by = found.record.get("world_size", 1)
    if written_by != context.world_size:  # each process sums its rows of the batch, then they are averaged
        _say(context, f"note: the checkpoint was written by {written_by} process(es) and this run has "
                      f"{context.world_size}: the batches are the same, but their sums run in another order, so the "
                      "losses follow an uninterrupted run's to float rounding, not bit for bit, and drift apart "
                      "slowly as training goes on (about 1e-6 after 50 steps, 1e-4 after 300, in a small run)")
    return found, continued


def _split_to_train_on(options: TrainOptions, context: Distributed, run_dir: Path,
                       found: C.Checkpoint | None) -> D.Split:
    """The train/validation split of --data (a resumed run's own files when --data is not given),
    refused when it is not the text the resumed run was trained on. This is the last refusal of a
    resume, so `latest` is repointed at the checkpoint it goes on from here."""
    data_paths, encoding = options.data, options.data_encoding
    source = found.record["data"]["source"] if found is not None else {}
    if found is not None and not data_paths and source["kind"] == "files":
        data_paths = source["paths"]
    if found is not None and source["kind"] == "files":
        encoding = encoding or source.get("encoding")  # the run's files, read as the run read them
    split = D.load_split(data_paths, encoding or "utf-8", once_each=bool(options.data))
    if found is not None and split.record["train"]["sha256"] != found.record["data"]["train_sha256"]:
        if source.get("kind") == "default" and not options.data:
            raise UserError(f"the default corpus differs from the one {run_dir} was trained on (see its split.json): "
                            "it is read from this Python's standard library by this nldsl's rule, and the run's "
                            "was another Python's or another nldsl's; resume where the run was made, or start a "
                            "new run")
        recorded = source.get("encoding") or "utf-8"
        if options.data_encoding and codecs.lookup(options.data_encoding).name != codecs.lookup(recorded).name:
            raise UserError(f"the training text differs from the one {run_dir} was trained on (see its split.json): "
                            f"the run read its files as {recorded}, this resume as {options.data_encoding}; resume "
                            f"with --data-encoding {recorded}, or without --data-encoding")
        raise UserError(f"the training text differs from the one {run_dir} was trained on (see its split.json): "
                        "resume with the same --data (if it is the same, an nldsl whose rule for reading it "
                        "changed made the run: a byte-order mark, a file reached twice, copies of one text)")
    validation = found.record["data"].get("validation_sha256") if found is not None else None
    if validation is not None and split.record["validation"]["sha256"] != validation:
        # the same training text with another validation split: the run's validation losses would
        # change text at the resume, and metrics.jsonl would compare numbers of two texts
        raise UserError(f"the validation text differs from the one {run_dir} was evaluated on (see its split.json): "
                        "resume with the same --data, or start a new run")
    if found is not None and context.is_main:
        C.repoint_latest(found, lambda message: _say(context, f"warning: {message}", error=True))
    return split


def _tokenizer(plan: Any, split: D.Split, context: Distributed, run_dir: Path, initial: C.Checkpoint | None,
               found: C.Checkpoint | None) -> Any:
    """The run's tokenizer. A BPE one is trained once, on the train split, and kept in the run
    folder, where a resumed run reads it back; a new run makes its own even when an earlier run
    left one there (other data or vocabulary), and a run started --init-from another takes that
    run's, since its weights read those ids."""
    distributed.barrier(context)  # rank 0 made the folder
    tokenizer_file = run_dir / "tokenizer.json"
    resumed = found is not None
    if plan.tokenizer.kind == "bpe" and resumed and not tokenizer_file.exists():
        raise UserError(f"cannot resume: {tokenizer_file} is missing, and its checkpoints read that tokenizer's ids")
    if plan.tokenizer.kind == "bpe" and found is not None:
        kept = found.path / "tokenizer.json"  # the checkpoint's own copy, checked when it was read
        D.check_tokenizer_file(tokenizer_file, found.record.get("files", {}).get("tokenizer.json"),
                               f"the checkpoint {found.path} was trained with",
                               f"; the checkpoint keeps its own copy: `cp {shlex.quote(str(kept))} "
                               f"{shlex.quote(str(tokenizer_file))}`, then --resume"
                               if kept.exists() else "")
    if plan.tokenizer.kind == "bpe" and context.is_main and not resumed:
        if initial is not None:
            D.check_tokenizer_file(initial.path / "tokenizer.json", initial.record.get("files", {}).get(
                "tokenizer.json"), f"the checkpoint {initial.path} was trained with")
            tokenizer_file.write_bytes((initial.path / "tokenizer.json").read_bytes())
        else:
            _say(context, f"training a byte-level BPE tokenizer (vocabulary {plan.tokenizer.vocab}) on the train "
                          "split")
            D.BPETokenizer.train(split.train, plan.tokenizer.vocab).save(tokenizer_file)
    distributed.barrier(context)
    return D.build_tokenizer(plan.tokenizer, split.train, tokenizer_file)


def _write_run_description(result: Any, overrides: list[str], initialized_from: str | None, split: D.Split,
                           run_dir: Path) -> list[str]:
    """spec.nl, resolved.json and split.json: what the run trains, with every value's origin.
    Returns the imports left out of the copy (_copy_imports)."""
    spec = result.spec
    (run_dir / "spec.nl").write_text(result.sources[spec.path].text, encoding="utf-8")
    outside = _copy_imports(result, run_dir)
    dump = spec.model_dump(mode="json")
    D.write_json(run_dir / "resolved.json", {
        "spec_path": spec.path, "spec_sha256": spec.sha256, "overrides": overrides,
        "initialized_from": initialized_from, "spec": dump,
        "values": resolved_values(dump, dict(result.provenance))})
    D.write_json(run_dir / "split.json", split.record)
    return outside


def _copy_imports(result: Any, run_dir: Path) -> list[str]:
    """The files the spec imports, beside spec.nl at their paths relative to the spec's folder, so
    that `nldsl train RUN/spec.nl --run-dir RUN --resume` resumes even after the originals change
    (an import from outside the spec's folder has no such place and is left out: the checkpoint
    record and resolved.json still hold every value). Returns the imports left out."""
    root = Path(result.spec.path).resolve().parent
    outside = []
    for path, source in result.sources.items():
        if path == result.spec.path or path.startswith("<"):  # the spec itself, an override
            continue
        try:
            relative = Path(path).resolve().relative_to(root)
        except (ValueError, OSError):
            outside.append(path)
            continue
        target = run_dir / relative
        if relative == Path("spec.nl") or (target.exists() and target.suffix != ".nl"):
            continue  # never over spec.nl or a file of the run's (metrics, checkpoints)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.text, encoding="utf-8")
    return outside


def _check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, named: list[tuple[str, torch.nn.Parameter]],
                           optimizer_spec: Any, path: Path) -> None:
    """The stored optimizer state holds what this optimizer keeps: its parameter groups the same
    parameters and settings of the same kinds as the optimizer built for the run (flags equal), and
    each parameter's state the entries, tensors of the shapes, that one step of the same optimizer
    on shape-only (meta) copies of the parameters makes, so nothing is computed or allocated. A
    stored state that passed its digest but not this was edited by hand: loaded, it would fail only
    inside the first optimizer step, as an error (or worse) in torch's kernels."""
    from nldsl.compiler.optimizers import build_optimizer

    def damaged(what: str) -> C.CheckpointError:
        return C.CheckpointError(f"damaged optimizer state in {path / C.RECORD_FILE}: {what}")

    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or \
            not isinstance(state.get("param_groups"), list):
        raise damaged("it is not an optimizer's state (no `state` table and `param_groups` list)")
    groups = optimizer.state_dict()["param_groups"]
    if len(state["param_groups"]) != len(groups):
        return  # said by torch's load, with both counts
    for index, (stored, built) in enumerate(zip(state["param_groups"], groups, strict=True)):
        if not isinstance(stored, dict) or stored.get("params") != built["params"]:
            raise damaged(f"parameter group {index} is not the run's (its `params` differ)")
        for key, value in built.items():
            difference = _kind_difference(stored.get(key, _ABSENT), value)
            if difference is not None:
                raise damaged(f"`{key}` of parameter group {index} is {difference}")
    names = [name for name, _ in named]
    try:
        shadows = [(name, torch.nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype, device="meta")))
                   for name, parameter in named]
        shadow = build_optimizer(shadows, optimizer_spec)
        for _, parameter in shadows:
            parameter.grad = torch.zeros_like(parameter)
        shadow.step()
        expected = shadow.state_dict()["state"]
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return  # an optimizer whose step reads values cannot run on shapes alone: the groups are checked
    for index, stored in state["state"].items():
        keeps = expected.get(index)
        if keeps is None:
            continue  # a parameter past the list: torch's load names it
        if not isinstance(stored, dict):
            raise damaged(f"the state of {names[index]} is a {type(stored).__name__}, where the optimizer keeps a "
                          "table")
        for key, value in keeps.items():
            difference = _kind_difference(stored.get(key, _ABSENT), value, flags_equal=False)
            if difference is not None:
                raise damaged(f"`{key}` of {names[index]} is {difference}")


_ABSENT = object()


def _kind_difference(stored: Any, built: Any, flags_equal: bool = True) -> str | None:
    """How `stored` differs in kind from `built` ('absent, where the optimizer keeps a (4, 8)
    torch.float32 tensor'), or None: tensors by shape and dtype, numbers by being numbers, sequences
    item by item and, with `flags_equal`, booleans, strings and None by value (they choose the
    optimizer's code path). Looser than a stream state's check (evaluate.py `_state_mismatch`, exact
    entries and dtypes): a group's numbers change (the schedule's `lr`, a resume's new one), a state
    may hold entries one step does not make, and a fused kernel keeps its step counts in its own dtype."""
    def shown(value: Any) -> str:
        if value is _ABSENT:
            return "absent"
        return f"a {tuple(value.shape)} {value.dtype} tensor" if torch.is_tensor(value) else repr(value)

    if torch.is_tensor(built):  # a 0-d one (a step count) may be kept in another dtype by a fused kernel
        same = torch.is_tensor(stored) and (built.dim() == 0 or (
            tuple(stored.shape) == tuple(built.shape) and stored.dtype == built.dtype))
    elif isinstance(built, bool) or built is None or isinstance(built, str):
        same = stored == built if flags_equal else stored is not _ABSENT
    elif isinstance(built, (int, float)):
        same = isinstance(stored, (int, float)) and not isinstance(stored, bool)
    elif isinstance(built, (list, tuple)):
        if not isinstance(stored, (list, tuple)) or len(stored) != len(built):
            same = False
        else:
            return next((f"{d} at item {i}" for i, (a, b) in enumerate(zip(stored, built, strict=True))
                         if (d := _kind_difference(a, b, flags_equal)) is not None), None)
    else:
        same = stored is not _ABSENT
    return None if same else f"{shown(stored)}, where the optimizer keeps {shown(built)}"


def _parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Full shapes by name (FSDP shards report their global shape through DTensor)."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# What may change when a run continues: how long it trains, how often it logs, evaluates and
# checkpoints, and how its steps are executed (compiled or not, recomputed or not, chunks per call), which gives the
# same steps. Anything else would make the continued run a different experiment.
CONTINUABLE = ("steps", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every",
               "compile", "recompute", "chunks_per_call")
# And the fixes for a run that diverged: a lower learning rate or a gradient clip from its last good
# checkpoint (the standard move; the alternative, --init-from, would lose the optimizer state). They
# do change the experiment from that step on, which the note on resuming says and the checkpoints'
# records and resolved.json keep.
CONTINUABLE_FIXES = ("clip", "optimizer.lr")


def _initial_checkpoint(target: str | Path, plan: Any, context: Distributed) -> C.Checkpoint:
    """The checkpoint `--init-from` names, checked against what the new run can take from it."""
    initial = C.load_checkpoint(target, warn=lambda message: _say(context, f"warning: {message}", error=True))
    C.check_run_record(initial)
    C.check_finite_weights(initial.model, initial.path)
    recorded = initial.record["tokenizer"].get("kind")
    if recorded is not None and recorded != plan.tokenizer.kind:
        raise UserError(f"--init-from {target}: its model reads {recorded} tokens, this spec's train.tokenizer is "
                        f"{plan.tokenizer.kind}: the weights only fit the tokenizer they were trained with")
    if plan.tokenizer.kind == "bpe" and not (initial.path / "tokenizer.json").exists():
        raise UserError(f"--init-from {target}: the checkpoint {initial.path} holds no tokenizer.json for its BPE")
    return initial


def _check_same_spec(found: C.Checkpoint, spec: Any, overrides: list[str]) -> str | None:
    """None when `found` was written by this very spec; a note when the spec resolves to the same
    values as the checkpoint's, or when only CONTINUABLE train values differ (e.g. `--set
    train.steps=…` to train a finished run longer); UserError otherwise."""
    recorded = found.record.get("spec_sha256")
    if recorded == spec.sha256:
        return None
    before, now = found.record.get("spec"), spec.model_dump(mode="json")
    changed = _continuable_changes(before, now)
    if changed == {}:  # another text (a comment, the layout, an override spelled out) for the same values
        return "the spec's text or overrides differ from the checkpoint's, but they resolve to the same values"
    if changed:
        listed = ", ".join(f"{key} {old} → {new}" for key, (old, new) in changed.items())
        schedule = ""
        if "steps" in changed and spec.train.schedule != "constant":
            schedule = (f"; the {spec.train.schedule} lr schedule now ends at step {spec.train.steps}, so the lr "
                        "follows that schedule from here on")
        if set(changed) & set(CONTINUABLE_FIXES):
            schedule += (f"; from step {found.record['step']} on this run trains with the new values, unlike the "
                         "steps before it")
        return f"continuing with changed train values: {listed}{schedule}"
    # name the value that differs (the first one), not the overrides: these can differ in a value
    # that may change while the spec text differs in one that may not
    why = _first_difference(before, now) if isinstance(before, dict) else None
    allowed = ", ".join(f"train.{key}" for key in (*CONTINUABLE, *CONTINUABLE_FIXES))
    missing = _left_out_overrides(found, overrides)  # the usual cause
    hint = (f" (the run was trained with {' '.join(f'--set {item}' for item in missing)}, which this command "
            "leaves out: give them again)") if missing else ""
    raise UserError(f"the checkpoint {found.path} was written by another spec (sha256 {str(recorded)[:12]}… vs "
                    f"{spec.sha256[:12]}…): {why or 'the spec differs'}; only {allowed} may change on "
                    f"--resume{hint}")


def _left_out_overrides(found: Any, overrides: list[Any]) -> list[str]:
    """The run's --set overrides whose keys this resume does not give."""
    given = {str(item).partition("=")[0].strip() for item in overrides}
    return [str(item) for item in found.record.get("overrides") or []
            if str(item).partition("=")[0].strip() not in given]


def _flat(node: Any, path: str = "") -> dict[str, Any]:
    """A spec dump as {dotted path: leaf value}, in the dump's order (list items by index)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(index), item) for index, item in enumerate(node))
    else:
        return {path: node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flat(value, f"{path}.{key}" if path else str(key)))
    return flat


def _variable(path: str) -> bool:
    """A dump path that may differ on --resume (or that says nothing about the values)."""
    return (path in ("path", "sha256")
            or any(path == f"train.{key}" or path.startswith(f"train.{key}.") for key in (*CONTINUABLE,
                                                                                         *CONTINUABLE_FIXES)))


def _first_difference(before: dict, now: dict, now_is: str = "now") -> str | None:
    """'train.seed is 0 in the checkpoint but 7 now' for the first value that may not change but did
    (`now_is`: how the message names the second dump's side, "in the run" for a run's resolved.json)."""
    old, new = _flat(before), _flat(now)
    missing = object()
    for path in [*new, *(p for p in old if p not in new)]:
        if _variable(path) or old.get(path, missing) == new.get(path, missing):
            continue
        shown = [json.dumps(value) if value is not missing else "absent" for value in (old.get(path, missing),
                                                                                       new.get(path, missing))]
        return (f"{_spec_path(now if path in new else before, path)} is {shown[0]} in the checkpoint but "
                f"{shown[1]} {now_is}")
    return None


def _spec_path(dump: dict, path: str) -> str:
    """A dump path as the spec names it (`model.block.sublayers.0.heads` → `model.block.lmm.heads`):
    a list item with a name is reached by that name, as in --set and resolved.json."""
    node: Any = dump
    shown: list[str] = []
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            if isinstance(node, dict) and node.get("name"):
                shown[-1] = str(node["name"])  # the list's own key gives way to the item's name
                continue
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            node = None
        shown.append(part)
    return ".".join(shown)


def _continuable_changes(before: dict | None, now: dict) -> dict[str, tuple[Any, Any]] | None:
    """The CONTINUABLE (and CONTINUABLE_FIXES) train values that differ between two spec dumps, when
    nothing else does."""
    if not isinstance(before, dict) or not isinstance(before.get("train"), dict):
        return None
    old, new = _flat(before), _flat(now)
    if {p: v for p, v in old.items() if not _variable(p)} != {p: v for p, v in new.items() if not _variable(p)}:
        return None
    return {path.removeprefix("train."): (old.get(path), new.get(path))
            for path in dict.fromkeys([*new, *old]) if path.startswith("train.") and _variable(path)
            and old.get(path) != new.get(path)}


LOWER_LR_CAP = 0.01  # above it a tenth of the lr is still far off any usual one (1e6 → 1e5)


def _lower_lr(plan: Any) -> str:
    """A learning rate for the advice after a divergence: a tenth of the spec's, and at most
    LOWER_LR_CAP."""
    lr = getattr(plan.optimizer, "lr", None)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        return "…"
    return f"{min(lr / 10, LOWER_LR_CAP):.3g}"


# Steps a training loss is averaged over before a checkpoint's is called risen: one batch's loss
# moves by ±30% on small batches (B 2, T 128: 1.82 to 3.11 within 20 steps of a calm run).
RISEN_LOSS_STEPS = 10


def risen_loss(losses: dict[int, float], step: int,
               steps: int = RISEN_LOSS_STEPS) -> tuple[float, int, float, int, int] | None:
    """Whether the training loss had risen by `step`: the mean of the consecutive steps ending
    there, more than 10% above the lowest mean of as many consecutive steps in `losses`. They are
    `steps` steps, or half the steps logged up to `step` where that is fewer, so that a short run
    has an earlier stretch to compare with. Returns (that mean, the steps in it, the lowest mean,
    its first and last step)."""
    logged = 0
    while step - logged in losses:
        logged += 1
    if not logged:
        return None
    count = min(steps, max(1, logged // 2))
    means = {last: sum(losses[last - back] for back in range(count)) / count for last in losses
             if all(last - back in losses for back in range(count))}
    best = min(means, key=means.__getitem__)
    if means[step] <= 1.1 * means[best]:
        return None
    return means[step], count, means[best], best - count + 1, best


def _in_context_levels_in(module_name: str, model: S.ModelSpec,
                          seq_len: int) -> list[tuple[str, Any, str, S.LevelSpec]]:
    """`semantics.in_context_levels` inside the generated model's submodule `module_name`
    (`blocks.N.` and a layer's spec path)."""
    block = re.fullmatch(r"blocks\.\d+\.(.+)", module_name)
    if block is None:  # the model, its block list or a whole block: no one layer to blame
        return []
    path = f"block.{block[1]}"
    return [(layer_path, layer, name, level) for layer_path, layer, name, level in in_context_levels(model, seq_len)
            if layer_path == path or layer_path.startswith(f"{path}.") or path.startswith(f"{layer_path}.")]


def levels_in(module_name: str, model: S.ModelSpec, seq_len: int) -> list[tuple[str, S.LevelSpec]]:
    """The levels that learn in context inside the generated model's submodule `module_name`, each
    with the `--set` path of its section."""
    return [(f"model.{layer_path}.{name}", level)
            for layer_path, _, name, level in _in_context_levels_in(module_name, model, seq_len)]


def value_norm_overrides(module_name: str, model: S.ModelSpec, seq_len: int) -> list[str]:
    """`--set` values that L2-normalise the values of the layers there whose memories store them
    raw: bounded regression targets, which kept three seeds of specs/titans_lmm.nl at B 2, T 128
    finite for 400 steps where the raw values diverged (docs/runtime.md)."""
    layers = {layer_path: layer for layer_path, layer, _, _ in _in_context_levels_in(module_name, model, seq_len)}
    return [f"model.{layer_path}.value_norm=l2" for layer_path, layer in layers.items()
            if getattr(layer, "value_norm", "l2") == "none" and "v" in getattr(layer, "projected", "v")]


def _lower_in_context_lr(level: S.LevelSpec) -> str | None:
    """A level's `lr` at half its value or bound, as an override's value; None where no setting of
    it bounds the writes: a per-head lr, which the outer optimizer trains, and a level whose
    newton_schulz sets each write's size itself (W0706 says so of a constant lr)."""
    gate = level.lr
    if level.orthogonalize is not None:
        return None
    if isinstance(gate, S.ConstantGate):
        return f"{gate.value / 2:g}"
    if isinstance(gate, S.LearnedGate):
        init = "" if gate.init is None else f", init = {gate.init / 2:g}"
        return f"learned(max = {gate.max / 2:g}{init})"
    if isinstance(gate, S.GeneratedGate):
        return f"generated(max = {gate.max / 2:g})"
    return None


# The clip the divergence advice offers a level that has none: about the norm of one token's inner
# gradient with unit keys and values (‖(M(k) − v) kᵀ‖ = ‖M(k) − v‖ for a linear memory). Measured
# (docs/runtime.md, *Memories that diverge in context*): with it on both of HOPE's levels, the run of
# seed 0 that stopped at step 376 trained all 600 steps, the clip holding 3–9% of the writes; on
# titans_lmm, whose raw values make most gradients larger (median 4.5), it held 99% and kept all
# three seeds that had diverged finite for 400 steps.
IN_CONTEXT_CLIP = 1.0


def clip_overrides(module_name: str, model: S.ModelSpec, seq_len: int) -> list[str]:
    """`--set` values that clip the inner gradients of the in-context levels there (IN_CONTEXT_CLIP, or
    half a level's own clip). Only levels that run a chunk loop get one: an MLP memory's gradient can
    outgrow its weights, and a clip keeps it in the loop it runs anyway, whereas a linear level the
    delta kernel runs (DeltaNet) would go token by token under it (W0701) for a recurrence that does
    not run away like that. A level whose newton_schulz sizes each write itself gets none either."""
    return [f"model.{layer_path}.{name}.clip="
            + (f"{IN_CONTEXT_CLIP:g}" if level.clip is None else f"{level.clip / 2:g}")
            for layer_path, layer, name, level in _in_context_levels_in(module_name, model, seq_len)
            if level.orthogonalize is None and runs_chunk_loop(layer, level, seq_len)]


def in_context_divergence(module_name: str, levels: list[tuple[str, S.LevelSpec]], clips: list[str],
                          value_norms: list[str], checkpoint: Path | None, lower_lr: str | None,
                          backward: bool = False) -> str:
    """Why a trained model's forward pass (or, with `backward`, its gradient: the layer was then found by
    `evaluate.non_finite_gradient_layer`) was not finite where `levels` learn in context, and the
    changes that can keep such a memory finite, each a new spec, so a new run from the checkpoint:
    `clips` on the levels' inner gradients (`clip_overrides`; first, since a clip bounds each token's
    gradient step, so the memory can grow only linearly within a sequence), a lower bound on their
    own lr, and `value_norms` (`value_norm_overrides`); or, given `lower_lr`, --resume with it, which moves the
    weights the memories start from (None where the checkpoint's own weights fail: no outer lr acts
    before that). On the measured runs the clips offered kept every run finite, and a lower bound
    some and not others (docs/runtime.md, *Memories that diverge in context*); the outer training
    can still diverge by itself, so the error promises nothing."""
    them = "them" if len(levels) > 1 else "it"
    changes = [f"a clip on {'their' if len(clips) > 1 else 'its'} inner gradients, which bounds each token's "
               "gradient step, e.g. " + " ".join(f'--set "{value}"' for value in clips)] if clips else []
    lowered = [(path, _lower_in_context_lr(level)) for path, level in levels]
    settings = " ".join(f'--set "{path}.lr={value}"' for path, value in lowered if value is not None)
    changes += [f"a lower lr (or lr bound) for {them}, e.g. {settings}" if settings else
               f"a retention below 1 for {them} (no setting of the lr bounds these writes: a per-head lr is trained "
               "by the outer optimizer, and newton_schulz sizes each write itself)"]
    if value_norms:
        changes.append("L2-normalised values, which the memory is trained to reproduce, "
                       + " ".join(f'--set "{value}"' for value in value_norms))
    new_run = (f"in a new run from the last good checkpoint, --init-from {checkpoint} --run-dir NEW, since --resume "
               "refuses a changed spec" if checkpoint else "in a new run")
    resume = (f"; or --resume with a lower learning rate (e.g. --set train.optimizer.lr={lower_lr}) or a train.clip, "
              "which changes the weights the memories start from" if checkpoint and lower_lr else "")
    which = "one of them" if len(levels) > 1 else "it"
    where = ("the forward pass is finite, but its gradient is first not finite in" if backward else
             "the forward pass is first not finite in")
    hidden = ("; normalised keys and values and bounded gates can keep its forward pass finite while the "
              "backward through them overflows" if backward else "")
    return (f"{where} {describe_module(module_name)}, whose levels learn in "
            f"context ({', '.join(path for path, _ in levels)}): most likely {which} diverged inside this step's "
            f"sequences, as a memory whose weights have grown can{hidden}. Changes that can keep it finite, "
            f"{new_run}: "
            f"{'; '.join(changes)}{resume}")


def _describe_source(record: dict[str, Any], recorded: bool = False) -> str:
    """What the run trains on; `recorded`: a resume reading the files its run recorded (no --data)."""
    source = record["source"]
    if source["kind"] == "default":
        return f"default corpus (Python {source['python']} standard library + pydoc topics)"
    where = "the --data the run recorded" if recorded else "--data"
    files = len(record["train"]["documents"])  # a split by position names every file on both sides
    if record.get("by") == "document":
        files += len(record["validation"]["documents"])
    return f"{files} file(s) from {where}"


def _discard_stdout() -> None:
    """Point stdout at the null device once its reader is gone, so that what is still printed (and
    the interpreter's final flush) neither raises again nor interrupts saving the run."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's capture): nothing to do
        pass


def _save_on_interrupt(context: Distributed, completed: int, saved_step: list[int],
                       last_checkpoint: list[Path | None], save: Any, say: bool = True) -> str:
    """After Ctrl-C: checkpoint the steps done since the last checkpoint, then say where the run
    stands (returned as well, for a stop that reports it otherwise).

    Steps are whole (`deferred_interrupt`), so the state is that of `completed` steps. Processes
    of a distributed run are not all at the same step when the signal arrives; they keep the last
    regular checkpoint."""
    if completed > saved_step[0] and not context.active:
        if say:
            _say(context, f"saving step {completed} before stopping (a second Ctrl-C waits for the checkpoint)")
        try:
            with deferred_interrupt():  # the run stops anyway; a second Ctrl-C must not lose the steps
                save()  # sets saved_step and last_checkpoint
        except KeyboardInterrupt:
            pass
        except (C.CheckpointError, TrainingError) as error:
            _say(context, f"could not checkpoint step {completed}: {error}", error=True)
    where = (f"the last checkpoint is {last_checkpoint[0]} (step {saved_step[0]}; continue with --resume)"
             if last_checkpoint[0] else "no checkpoint was written yet")
    if say:
        _say(context, f"interrupted after {completed} step(s); {where}")
    return where


def _record(result: Any, overrides: list[str], tokenizer: Any, split: D.Split, module: Any, optimizer: Any,
            context: Distributed, step: int, evaluation: Evaluation | None,
            initialized_from: str | None = None, time_s: float | None = None) -> dict[str, Any]:
    spec = result.spec
    return {
        "spec_path": spec.path,
        "spec_sha256": spec.sha256,
        "spec_text": result.sources[spec.path].text,
        "overrides": overrides,
        "spec": spec.model_dump(mode="json"),
        "tokenizer": tokenizer.to_json(),
        "data": {"source": split.record["source"], "train_sha256": split.record["train"]["sha256"],
                 "validation_sha256": split.record["validation"]["sha256"], "seed": spec.train.seed,
                 "position": step},
        "clock": dict(getattr(module, "CLOCK_STEPS", {})),
        "initialized_from": initialized_from,
        "optimizer": optimizer,
        "world_size": context.world_size,
        "fsdp": context.fsdp,
        "evaluation": None if evaluation is None else {
            "loss": evaluation.loss, "perplexity": evaluation.perplexity, "bits_per_byte": evaluation.bits_per_byte},
        "time_s": time_s,  # training time so far (as metrics.jsonl counts it), where a resume goes on from
        "versions": {"nldsl": __version__, "torch": torch.__version__},
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _sample(spec: Any, model: torch.nn.Module, tokenizer: Any, split: D.Split, plan: Any, context: Distributed,
            run_dir: Path) -> None:
    """--sample: a generated continuation and the level graph. Every rank generates (sharded forwards
    run in step, and the seeded sampling agrees); rank 0 prints and draws."""
    prompt = "def " if split.record["source"]["kind"] == "default" else split.text("validation")[:24]
    model.eval()
    text = generate(model, tokenizer, prompt, 200, 0.8, 40, plan.seed, plan.seq_len, context.device)
    if not context.is_main:
        return
    print(f"sample (temperature 0.8, top-k 40):\n{prompt}{shown_text(text)}")
    from nldsl.draw import render, to_dot
    from nldsl.graph import build_graph

    message = render(to_dot(build_graph(spec)), run_dir / "graph.svg")
    print(message if message else f"level graph: {run_dir / 'graph.svg'}")

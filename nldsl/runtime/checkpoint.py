"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically, never unpickled.

A run directory keeps its checkpoints under `checkpoints/`:

    checkpoints/step-000100/model.safetensors      the model's parameters, by name
    checkpoints/step-000100/training.safetensors   optimizer state tensors, continuum-clock sums, RNG states
    checkpoints/step-000100/record.json            spec text, sha256 and overrides, the resolved spec, step,
                                                   data position, tokenizer, optimizer structure, file hashes,
                                                   and its own hash (of everything else in it)
    checkpoints/step-000100/tokenizer.json         (BPE runs) so that a checkpoint stands on its own
    checkpoints/latest                             the name of the newest complete checkpoint

Writing is atomic: every file goes into a temporary folder (written, flushed and fsynced), the
folder is renamed into place, and only then is `latest` replaced (temporary file, fsync, rename).
A process killed at any moment leaves `latest` naming a complete checkpoint; a full disk leaves
the previous checkpoint intact and says so in one line. The last `keep` checkpoints are kept.

Nested state (an optimizer's `state_dict()`, a model's memory state) is stored by `encode`: tensors
go to safetensors under a path-like key, the structure goes to JSON with `{"tensor": key}` where a
tensor was. Only plain containers and the dataclasses in `DATACLASSES` can come back, so loading
runs no code from the file. Loading checks the hash of every file, the record's own included, so
a damaged or edited file is named.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from nldsl.cli import UserError
from nldsl.files import fsync_folder, naming, text_bytes, write_atomic, write_file
from nldsl.runtime.arguments import text_codec
from nldsl.runtime.memory import MemoryState

FORMAT = "nldsl-checkpoint/2"  # /2: the record holds its own hash (`record_digest`), which readers require
FORMAT_WITHOUT_DIGEST = "nldsl-checkpoint/1"  # records written before it, read as before
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"
RECORD_FILE = "record.json"
RECORD_DIGEST = "record_sha256"  # the record's own hash, kept in it (`record_digest`)
DATACLASSES: dict[str, type] = {"MemoryState": MemoryState}  # the only classes a stored structure may name


class CheckpointError(UserError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


# Nested structures ↔ (JSON, tensors) ----------------------------------------------------------------

def encode(value: Any, tensors: dict[str, Tensor], key: str) -> Any:
    """A JSON-able description of `value`; its tensors are added to `tensors` under keys below `key`."""
    if isinstance(value, Tensor):
        if key in tensors:  # names with dots can meet another path; keep both
            key = f"{key}#{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()  # copies: safetensors refuses shared storage
        return {"tensor": key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [encode(item, tensors, f"{key}.{index}") for index, item in enumerate(value)]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        if all(isinstance(name, str) for name in value):
            return {"dict": {name: encode(item, tensors, f"{key}.{name}") for name, item in value.items()}}
        return {"items": [[encode(name, tensors, f"{key}.k{index}"), encode(item, tensors, f"{key}.{index}")]
                          for index, (name, item) in enumerate(value.items())]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in DATACLASSES:
        fields = {field.name: encode(getattr(value, field.name), tensors, f"{key}.{field.name}")
                  for field in dataclasses.fields(value)}
        return {"dataclass": type(value).__name__, "fields": fields}
    raise TypeError(f"cannot store a {type(value).__name__} at {key}")


def decode(data: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of `encode`; a structure it did not write (edited, damaged) is a ValueError."""
    try:
        return _decode(data, tensors)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed stored structure ({type(error).__name__}: {error})") from None


def _decode(data: Any, tensors: dict[str, Tensor]) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode(item, tensors) for item in data]
    if "tensor" in data:
        return tensors[data["tensor"]]
    if "tuple" in data:
        return tuple(_decode(item, tensors) for item in data["tuple"])
    if "dict" in data:
        return {name: _decode(item, tensors) for name, item in data["dict"].items()}
    if "items" in data:
        return {_decode(name, tensors): _decode(item, tensors) for name, item in data["items"]}
    if "dataclass" in data:
        cls = DATACLASSES.get(data["dataclass"])
        if cls is None:
            raise ValueError(f"unknown stored class {data['dataclass']!r}")
        return cls(**{name: _decode(item, tensors) for name, item in data["fields"].items()})
    raise ValueError(f"unknown stored value {data!r}")


def rng_tensors() -> dict[str, Tensor]:
    """The torch RNG states (CPU and every CUDA device) as uint8 tensors."""
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{index}"] = state
    return states


def restore_rng(tensors: dict[str, Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"rng.cuda.{index}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"], index)


# Atomic files ---------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a record's contents, its own digest left out, as JSON reads them back: the layout of
    the file and the order of its keys do not count, any value does."""
    body = {key: value for key, value in record.items() if key != RECORD_DIGEST}
    # ASCII escapes: a path that is not UTF-8 (held with surrogates) hashes like any other text
    return sha256_bytes(json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii"))


# Saving -----------------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, model_tensors: dict[str, Tensor], training_tensors: dict[str, Tensor],
                    record: dict[str, Any], keep: int, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`; returns its folder."""
    folder = run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    temporary = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    # only for the message of a failed write: a damaged `latest` must not stop a save, which rewrites it
    previous = newest_readable(run_dir)
    try:
        temporary.mkdir()
        # each tensor file streams from the tensors themselves (`write_tensors`): a save holds no file's bytes
        digests = {MODEL_FILE: write_tensors(temporary / MODEL_FILE, model_tensors),
                   TRAINING_FILE: write_tensors(temporary / TRAINING_FILE, training_tensors)}
        for name, data in (extra_files or {}).items():
            write_file(temporary / name, data)
            digests[name] = sha256_bytes(data)
        record = {**record, "format": FORMAT, "step": step, "files": digests}
        record = json.loads(json.dumps(record))  # as a reader will see it (tuples as lists, keys as strings)
        record[RECORD_DIGEST] = record_digest(record)
        write_file(temporary / RECORD_FILE, text_bytes(json.dumps(record, indent=2, ensure_ascii=False) + "\n"))
        fsync_folder(temporary)
        if final.exists():  # a step written again after a resume from an older checkpoint
            stale = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(final, stale)
            os.rename(temporary, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(temporary, final)
        fsync_folder(folder)
        point_latest_at(final)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        reason = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise CheckpointError(f"could not write the checkpoint of step {step} in {folder}: {reason}; {kept}") from None
    except BaseException:  # out of memory while writing, an interrupt: no half-written folder stays
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    prune(folder, keep)
    return final


# torch's dtypes by their names in the safetensors format
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
}


def write_tensors(path: Path, tensors: dict[str, Tensor]) -> str:
    """Write `tensors` as a safetensors file, one tensor at a time, flushed and fsynced; returns its sha256.

    safetensors' own writers build the whole file in memory first (in Rust, then copied into a Python
    bytes object: twice the tensors' size; holding two files' bytes at once took the save of a
    538M-parameter model past the memory its training fit in), and where Rust cannot allocate that
    buffer it aborts the process.
    This one streams each tensor's bytes from the tensor itself, so a save holds at most one
    tensor's CPU copy (none for a tensor already contiguous on the CPU), and hashes them on the way.
    The layout is safetensors' own: an 8-byte little-endian header length, a JSON header padded with
    spaces to 8 bytes, then the data with the tensors ordered by element size (largest first) and
    name, so that each starts aligned. Files are read with safetensors itself (`read_tensors`);
    tests/test_checkpoint.py checks that it reads every dtype back equal.
    """
    if sys.byteorder != "little":  # the format is little-endian, and each tensor's bytes go out as they are
        raise RuntimeError("nldsl writes checkpoints on little-endian machines only (the safetensors format's order)")
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"a checkpoint cannot store {name!r} of dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with naming(path), open(path, "wb") as handle:
        for piece in (struct.pack("<Q", len(text)), text):
            digest.update(piece)
            handle.write(piece)
        for name in order:
            data = tensors[name].detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            digest.update(data)
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def prune(folder: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (never the one `latest` names) and leftovers of
    interrupted writes."""
    latest = _pointer_name(folder / LATEST)
    for path in step_folders(folder)[:-keep]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".step-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(f".{LATEST}.*.tmp"):  # a pointer write killed before its rename
        path.unlink(missing_ok=True)


# Loading ----------------------------------------------------------------------------------------------

def _step_number(path: Path) -> int | None:
    """N of a `step-N` folder; None for any other name."""
    digits = path.name.removeprefix("step-")
    return int(digits) if path.name.startswith("step-") and digits.isdigit() else None


def step_folders(folder: Path) -> list[Path]:
    """The `step-N` folders of a checkpoints folder, oldest first (by N: names sort wrongly past 999,999)."""
    steps = [(step, p) for p in folder.glob("step-*") if p.is_dir() and (step := _step_number(p)) is not None]
    return [path for _, path in sorted(steps)]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders that were completed (renamed into place with their record), oldest first."""
    return [path for path in step_folders(run_dir / CHECKPOINTS) if (path / RECORD_FILE).exists()]


def _pointer_name(pointer: Path) -> str | None:
    """The `step-N` name a `latest` file holds; None when it is missing or holds anything else
    (binary garbage, a path): the pointer is only ever written by `save_checkpoint`."""
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _step_number(Path(name)) is not None and "/" not in name else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder `checkpoints/latest` names, or None when the run has no checkpoint yet.

    Without the pointer (a crash between a first checkpoint's rename and the pointer's write, or a
    deleted file), the newest complete `step-N` folder: each is complete before it is renamed."""
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.exists():
        complete = complete_checkpoints(run_dir)
        return complete[-1] if complete else None
    name = _pointer_name(pointer)
    path = run_dir / CHECKPOINTS / (name or "")
    if not name or not (path / RECORD_FILE).exists():
        shown = name if name else "something that is not a checkpoint name"
        raise CheckpointError(f"{pointer} names `{shown}`, which is not a complete checkpoint")
    return path


def newest_readable(run_dir: Path) -> Path | None:
    """`latest_checkpoint`, or the newest complete checkpoint when the pointer is damaged; never raises."""
    try:
        return latest_checkpoint(run_dir)
    except CheckpointError:
        complete = complete_checkpoints(run_dir)
        return complete[-1] if complete else None


def repoint_latest(found: Checkpoint, warn: Callable[[str], None]) -> None:
    """Point `latest` at the checkpoint a resume goes on from, when it names anything else (a
    damaged one passed over, or garbage), so that eval and the next resume find it too."""
    pointer = found.path.parent / LATEST
    try:
        if pointer.read_bytes() == (found.path.name + "\n").encode("utf-8"):
            return
    except OSError:
        pass
    try:
        point_latest_at(found.path)
    except OSError as error:
        warn(f"could not repoint {pointer} at {found.path.name}: {error.strerror or error}")


def point_latest_at(path: Path) -> None:
    """Make `latest` of the run name the checkpoint folder `path` (atomically). A folder in its
    place (hands, a copy gone wrong) is moved aside, kept, rather than failing every save."""
    latest = path.parent / LATEST
    if latest.is_dir() and not latest.is_symlink():
        os.rename(latest, path.parent / f".{LATEST}.{uuid.uuid4().hex[:8]}.moved-aside")
    write_atomic(latest, (path.name + "\n").encode("utf-8"))


def resolve_checkpoint(target: str | Path, warn: Callable[[str], None] | None = None) -> Path:
    """A run folder (its latest checkpoint), a checkpoint folder, or a file inside one → the folder.

    When the run's `latest` pointer is damaged, its newest complete checkpoint, said through `warn`
    (as a resume does); without `warn`, a CheckpointError that says how to name one."""
    if not str(target).strip():  # Path("") is the current folder, which the user did not name
        raise CheckpointError("no run or checkpoint given (the path is empty)")
    path = Path(target)
    if not path.exists():
        raise CheckpointError(f"no run or checkpoint at {target}")
    if path.is_file() and path.name == LATEST and path.parent.name == CHECKPOINTS:
        path = path.parent.parent  # the pointer names the run's latest checkpoint
    elif path.is_file():
        path = path.parent
    if (path / RECORD_FILE).exists():
        return path
    if (path / CHECKPOINTS).is_dir() or (path / "resolved.json").exists():
        try:
            found = latest_checkpoint(path)
        except CheckpointError as error:
            complete = complete_checkpoints(path)
            if warn is None or not complete:
                advice = (f"name one of {path / CHECKPOINTS}/step-* by path" if complete
                          else f"{path / CHECKPOINTS} holds no complete checkpoint")
                raise CheckpointError(f"{error} ({advice})") from None
            warn(f"{error}; using {complete[-1].name}, the newest complete checkpoint")
            return complete[-1]
        if found is None:
            raise CheckpointError(f"the run {target} has no checkpoint yet")
        return found
    if path.name == CHECKPOINTS and (path.parent / "resolved.json").exists():
        return resolve_checkpoint(path.parent, warn)  # RUN/checkpoints: the run's latest
    advice = ": train it first (nldsl train SPEC), then name the run folder" if Path(target).suffix == ".nl" else ""
    raise CheckpointError(f"{target} is neither a run folder nor a checkpoint (no {RECORD_FILE}, no "
                          f"{CHECKPOINTS}/){advice}")


@dataclass
class Checkpoint:
    path: Path
    record: dict[str, Any]
    model: dict[str, Tensor]
    training: dict[str, Tensor]


def read_record(path: Path) -> dict[str, Any]:
    file = path / RECORD_FILE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"corrupt checkpoint record {file}: {error}") from None
    if not isinstance(record, dict) or record.get("format") not in (FORMAT, FORMAT_WITHOUT_DIGEST):
        raise CheckpointError(f"{file} is not a {FORMAT} record")
    if record["format"] == FORMAT and record.get(RECORD_DIGEST) != record_digest(record):
        raise CheckpointError(f"damaged checkpoint record {file}: its contents differ from the ones written "
                              f"(`{RECORD_DIGEST}`); it was edited or damaged")
    # the fields save_checkpoint itself writes (`files` may be absent: then no hash is checked)
    if not isinstance(record.get("step"), int) or isinstance(record["step"], bool) or record["step"] < 0:
        raise CheckpointError(f"damaged checkpoint record {file}: it holds no step number")
    files = record.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"damaged checkpoint record {file}: `files` is not a table of file hashes")
    return record


def check_run_record(checkpoint: Checkpoint, resume: bool = False) -> None:
    """The fields a checkpoint written by `nldsl train` holds, with the types their readers need
    (eval, generate, stream; with `resume`, the optimizer's too): a record edited by hand or
    damaged is a CheckpointError naming the field, never a KeyError deep in a command."""
    record = checkpoint.record
    file = checkpoint.path / RECORD_FILE

    def get(path: str, kind: type | tuple[type, ...]) -> Any:
        value: Any = record
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind):
            raise CheckpointError(f"damaged checkpoint record {file}: `{path}` is missing or malformed")
        return value

    get("spec", dict)
    get("spec_sha256", str)
    if "spec_text" in record:  # the spec's own text, for the generated module's banner and tracebacks
        get("spec_text", str)
    if get("tokenizer.kind", str) != "bytes":  # a BPE tokenizer is read from its file, at its vocabulary
        get("tokenizer.file", str)
        vocab = get("tokenizer.vocab", int)
        if isinstance(vocab, bool) or vocab < 1:
            raise CheckpointError(f"damaged checkpoint record {file}: `tokenizer.vocab` is malformed")
    kind = get("data.source.kind", str)
    if kind == "files":
        paths = get("data.source.paths", list)
        if not all(isinstance(p, str) for p in paths):
            raise CheckpointError(f"damaged checkpoint record {file}: `data.source.paths` is malformed")
        encoding = record["data"]["source"].get("encoding", "utf-8")  # absent: written before it was recorded
        try:
            text_codec(encoding if isinstance(encoding, str) else "")
        except argparse.ArgumentTypeError:
            raise CheckpointError(f"damaged checkpoint record {file}: `data.source.encoding` is not a text "
                                  "encoding") from None
    get("data.train_sha256", str)
    overrides = record.get("overrides", [])  # the run's --set, which a resume compares with its own
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise CheckpointError(f"damaged checkpoint record {file}: `overrides` is not a list of --set values")
    if resume:
        get("optimizer", dict)


def read_tensors(file: Path, expected_sha256: str | None) -> dict[str, Tensor]:
    """A safetensors file, checked against its recorded hash; loading never unpickles.

    The hash is taken reading the file in blocks and the tensors are then read by safetensors from
    the file, so a load holds the tensors alone, not also the file's bytes."""
    try:
        if expected_sha256 is not None:
            with open(file, "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
            if actual != expected_sha256:
                raise CheckpointError(f"corrupt checkpoint file {file}: its sha256 differs from the one recorded "
                                      "when it was written")
        return safetensors.torch.load_file(file)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint file {file}: {error.strerror or error}") from None
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"corrupt checkpoint file {file}: {error}") from None


def load_checkpoint(target: str | Path, training: bool = True, warn: Callable[[str], None] | None = None,
                    suggest_older: bool = True) -> Checkpoint:
    """Read a checkpoint (a run folder means its latest one); without `training`, only its record
    and weights (eval, generate and stream need no optimizer state). `warn`: see `resolve_checkpoint`.
    A damaged checkpoint's error names the run's newest older intact one (`suggest_older`): the
    caller asked for this one, so it is not replaced by another step without a word.

    A run that is still training checkpoints and prunes as it goes: a checkpoint that vanishes
    while it is read was replaced by a newer one, which is then read instead."""
    for attempt in range(3):
        path = resolve_checkpoint(target, warn if attempt == 0 else None)
        try:
            record = read_record(path)
            files = record.get("files", {})
            model = read_tensors(path / MODEL_FILE, files.get(MODEL_FILE))
            optimizer = read_tensors(path / TRAINING_FILE, files.get(TRAINING_FILE)) if training else {}
            _check_extra_files(path, files)
            return Checkpoint(path, record, model, optimizer)
        except CheckpointError as error:
            if (path / RECORD_FILE).exists() or attempt == 2:  # pruning removes the files, then the folder
                older = _older_intact(path) if suggest_older else None
                if older is None:
                    raise
                raise CheckpointError(f"{error} ({older} is an older intact checkpoint of the run: name it by "
                                      "path to use it)") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _check_extra_files(path: Path, files: dict[str, str]) -> None:
    """The checkpoint's other recorded files (a BPE run's tokenizer.json) match their hashes: a
    resume that did not read them would keep a checkpoint that eval, generate and --init-from then
    refuse, instead of going back to the one before."""
    for name, expected in files.items():
        if name in (MODEL_FILE, TRAINING_FILE):
            continue
        if Path(name).name != name or name in (".", ".."):  # a file of the checkpoint's own folder, nothing else
            raise CheckpointError(f"damaged checkpoint record {path / RECORD_FILE}: `files` names {name!r}, "
                                  "which is not a file of its folder")
        try:
            data = (path / name).read_bytes()
        except OSError as error:
            raise CheckpointError(f"cannot read checkpoint file {path / name}: {error.strerror or error}") from None
        if sha256_bytes(data) != expected:
            raise CheckpointError(f"corrupt checkpoint file {path / name}: its sha256 differs from the one recorded "
                                  "when it was written")


def _older_intact(path: Path, tries: int = 3) -> Path | None:
    """The newest checkpoint of `path`'s run before it that reads back whole (its record and weights
    match their hashes), if `path` is a step folder of a run; at most `tries` are read."""
    step = _step_number(path)
    if step is None or path.parent.name != CHECKPOINTS:
        return None
    older = [other for other in complete_checkpoints(path.parent.parent) if (_step_number(other) or 0) < step]
    for candidate in reversed(older[-tries:]):
        try:
            files = read_record(candidate).get("files", {})
            read_tensors(candidate / MODEL_FILE, files.get(MODEL_FILE))
            _check_extra_files(candidate, files)
        except CheckpointError:
            continue
        return candidate
    return None


def load_for_resume(run_dir: Path, warn: Callable[[str], None],
                    check: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint of a run that reads back whole (and passes `check`): the latest one or,
    when that one is damaged, the newest older one (each one passed over is reported through
    `warn`). None when the run has no checkpoint; CheckpointError when it has some and none of them
    is intact. It writes nothing: `repoint_latest` does, once the resume is sure to go on."""
    try:
        latest = latest_checkpoint(run_dir)
    except CheckpointError as error:  # a pointer to a missing or partial folder, or garbage
        warn(f"{error}; resuming from the newest complete checkpoint" if complete_checkpoints(run_dir) else str(error))
        latest = None
    newest = None if latest is None else _step_number(latest)
    older = [path for path in reversed(complete_checkpoints(run_dir))
             if path != latest and (newest is None or (_step_number(path) or 0) < newest)]
    candidates = ([latest] if latest is not None else []) + older
    if not candidates:
        if (run_dir / CHECKPOINTS / LATEST).exists():
            raise CheckpointError(f"{run_dir / CHECKPOINTS} holds no complete checkpoint")
        return None
    for path, following in zip(candidates, [*candidates[1:], None]):
        try:
            found = load_checkpoint(path, suggest_older=False)  # it goes on to the older one itself
            if check is not None:
                check(found)
        except CheckpointError as error:
            if following is None:
                raise CheckpointError(f"{error}; no older checkpoint of {run_dir} is intact") from None
            warn(f"{error}; resuming from {following.name}, the checkpoint before it, instead")
            continue
        return found
    raise AssertionError("unreachable: the last candidate returns or raises")


def check_finite_weights(weights: dict[str, Tensor], path: Path) -> None:
    """CheckpointError when a checkpoint's weights hold NaN or infinite values: training never saves
    such weights (it stops first), so the file was damaged or made elsewhere."""
    broken = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise CheckpointError(f"the weights in {path} hold NaN or infinite values ({broken[0]}"
                              + (f" and {len(broken) - 1} more" if len(broken) > 1 else "") + ")")


def check_parameters(model_tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], where: Path) -> None:
    """The checkpoint must hold exactly the model's parameters with the same shapes."""
    missing = sorted(set(expected) - set(model_tensors))
    unexpected = sorted(set(model_tensors) - set(expected))
    reshaped = sorted(name for name in set(expected) & set(model_tensors)
                      if tuple(model_tensors[name].shape) != tuple(expected[name]))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}")
    if reshaped:
        name = reshaped[0]
        problems.append(f"{name} is {tuple(model_tensors[name].shape)} in the checkpoint but {tuple(expected[name])} "
                        f"in the model" + (f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""))
    if problems:
        raise CheckpointError(f"the checkpoint {where} was written for another model: {'; '.join(problems)}")


def optimizer_to_files(state_dict: dict[str, Any]) -> tuple[Any, dict[str, Tensor]]:
    """An optimizer's `state_dict()` as (JSON structure, tensors under "optimizer.")."""
    tensors: dict[str, Tensor] = {}
    return encode(state_dict, tensors, "optimizer"), tensors


def optimizer_from_files(structure: Any, tensors: dict[str, Tensor]) -> dict[str, Any]:
    return decode(structure, tensors)

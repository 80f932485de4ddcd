"""Checkpoints: stored structures round-trip, writes are atomic, failures keep the previous checkpoint, loading
never unpickles and names damaged files."""

from __future__ import annotations

import errno
import json
import pickle

import pytest
import torch

from nldsl.runtime import checkpoint as C
from nldsl.runtime import optim as O
from nldsl.runtime.memory import MemoryState


def same(a, b) -> bool:
    """Structural equality with tensors compared exactly (dtype included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, MemoryState):
        return isinstance(b, MemoryState) and same(a.weights, b.weights) and same(a.momentum, b.momentum)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_nested_structures_round_trip_through_json_and_safetensors():
    value = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 7: {}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 7], "foreach": None, "x": float("inf")}],
        "memory": [{"cms": {"fast": MemoryState([torch.randn(1, 1, 2, 2)], None)}},
                   {"lmm": {"memory": MemoryState([torch.randn(2, 2)], [torch.zeros(2, 2)]), "conv_q": torch.ones(1)}}],
        "flags": torch.tensor([True, False]),
        "ids": torch.arange(4, dtype=torch.int32),
    }
    tensors: dict[str, torch.Tensor] = {}
    structure = json.loads(json.dumps(C.encode(value, tensors, "root")))
    assert same(C.decode(structure, tensors), value)


def test_keys_that_meet_another_path_keep_both_tensors():
    value = {"a.b": torch.zeros(1), "a": {"dict": {}, "b": torch.ones(1)}}
    tensors: dict[str, torch.Tensor] = {}
    assert same(C.decode(C.encode(value, tensors, "x"), tensors), value)


def test_unknown_objects_are_refused_when_stored_and_when_loaded():
    with pytest.raises(TypeError):
        C.encode(object(), {}, "x")
    with pytest.raises(ValueError, match="unknown stored class"):
        C.decode({"dataclass": "os.system", "fields": {}}, {})


def _optimizer_steps(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    lambda params: O.NestedOptimizer(params, O.m3(lr=1e-2)),
], ids=["adamw", "nested-m3"])
def test_optimizer_state_round_trips_and_the_next_steps_match(make):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5))]
    optimizer = make(params)
    _optimizer_steps(optimizer, params, 3)
    structure, tensors = C.optimizer_to_files(optimizer.state_dict())
    structure = json.loads(json.dumps(structure))
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = make(copies)
    restored.load_state_dict(C.optimizer_from_files(structure, tensors))
    _optimizer_steps(optimizer, params, 2)
    _optimizer_steps(restored, copies, 2)
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def save(run_dir, step, keep=3, **record):
    model = {"w": torch.full((2, 2), float(step)), "b": torch.zeros(3)}
    training = {"clock.w": torch.ones(2), **C.rng_tensors()}
    return C.save_checkpoint(run_dir, step, model, training, {"note": "test", **record}, keep)


def test_save_points_latest_at_the_newest_and_keeps_the_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        path = save(tmp_path, step, keep=2)
    assert path == tmp_path / "checkpoints" / "step-000004"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000004"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000003", "step-000004"]
    loaded = C.load_checkpoint(tmp_path)
    assert loaded.record["step"] == 4 and loaded.record["note"] == "test"
    assert torch.equal(loaded.model["w"], torch.full((2, 2), 4.0))
    assert C.load_checkpoint(tmp_path / "checkpoints" / "step-000003" / "model.safetensors").record["step"] == 3


def test_a_write_killed_midway_leaves_latest_on_the_previous_complete_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real = C.write_tensors
    calls = []

    def dies_in_the_second_file(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            real(path, tensors)
            with open(path, "r+b") as handle:
                handle.truncate(path.stat().st_size // 2)
            raise KeyboardInterrupt  # the process is killed here, half the file written
        return real(path, tensors)

    monkeypatch.setattr(C, "write_tensors", dies_in_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    monkeypatch.setattr(C, "write_tensors", real)
    assert not (tmp_path / "checkpoints" / "step-000002").exists()
    assert C.load_checkpoint(tmp_path).record["step"] == 1
    save(tmp_path, 2)  # the next save clears the leftovers
    assert not list((tmp_path / "checkpoints").glob(".step-*"))
    assert C.load_checkpoint(tmp_path).record["step"] == 2


def test_a_full_disk_is_one_clear_message_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    save(tmp_path, 5)

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    for writer in ("write_file", "write_tensors"):  # the record, or a tensor file
        monkeypatch.setattr(C, writer, full_disk)
        with pytest.raises(C.CheckpointError) as error:
            save(tmp_path, 6)
        message = str(error.value)
        assert "no space left on device" in message and "step-000005 is intact" in message and "\n" not in message
        monkeypatch.undo()
    assert C.load_checkpoint(tmp_path).record["step"] == 5
    assert not list((tmp_path / "checkpoints").glob(".step-*"))



def test_tensor_files_read_back_with_safetensors_for_every_dtype(tmp_path):
    """`write_tensors` streams the safetensors format itself: safetensors reads every dtype back equal, its
    returned digest is the file's, and every tensor's data starts aligned to its element size."""
    import struct

    import safetensors
    import safetensors.torch

    base = torch.randn(4, 4)
    tensors = {
        "f32": torch.randn(3, 4), "bf16": torch.randn(5, dtype=torch.bfloat16),
        "f16": torch.randn(3, dtype=torch.float16),
        "f64": torch.randn(2, dtype=torch.float64), "scalar": torch.tensor(7), "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True]), "bytes": torch.arange(10, dtype=torch.uint8),
        "i32": torch.arange(3, dtype=torch.int32), "f8": torch.randn(3).to(torch.float8_e4m3fn),
        "c64": torch.randn(2, dtype=torch.complex64),
        "column": base[:, 1], "row": base[2],  # a non-contiguous view, and two views of one storage
    }
    path = tmp_path / "t.safetensors"
    digest = C.write_tensors(path, tensors)
    assert digest == C.sha256_bytes(path.read_bytes())
    back = safetensors.torch.load_file(path)
    assert set(back) == set(tensors)

    def raw(t):
        return t.contiguous().reshape(-1).view(torch.uint8)

    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(raw(back[name]), raw(tensor)), name
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert length % 8 == 0
    for name, entry in json.loads(data[8:8 + length]).items():
        assert entry["data_offsets"][0] % tensors[name].element_size() == 0, name
    with safetensors.safe_open(str(path), framework="pt") as handle:  # its own validation of the layout
        assert set(handle.keys()) == set(tensors)


def test_a_save_streams_each_tensor_and_never_builds_a_file_in_memory(tmp_path, monkeypatch):
    """safetensors' writers build a whole file's bytes first (twice the tensors' size; Rust aborts where it
    cannot allocate them): a save never calls them, and no single write is larger than one tensor."""
    def refused(*args, **kwargs):
        raise AssertionError("a save built a file's bytes in memory")

    monkeypatch.setattr(C.safetensors.torch, "save", refused)
    monkeypatch.setattr(C.safetensors.torch, "save_file", refused)
    writes: list[int] = []
    real_open = open

    class Recording:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def write(self, data):
            writes.append(memoryview(data).nbytes)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(C, "open", lambda *a, **k: Recording(real_open(*a, **k)), raising=False)
    model = {"big": torch.randn(1000), "small": torch.randn(10)}
    path = C.save_checkpoint(tmp_path, 1, model, {"clock.w": torch.ones(3)}, {"x": 1}, keep=2)
    monkeypatch.undo()
    assert writes and max(writes) == 4000  # the largest tensor's bytes
    loaded = C.load_checkpoint(path)
    assert torch.equal(loaded.model["big"], model["big"])


def test_running_out_of_memory_while_writing_leaves_no_half_written_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real = C.write_tensors

    def fails_on_the_optimizer_state(path, tensors):
        if "clock.w" in tensors:
            raise MemoryError
        return real(path, tensors)

    monkeypatch.setattr(C, "write_tensors", fails_on_the_optimizer_state)
    with pytest.raises(MemoryError):
        save(tmp_path, 2)
    assert not list((tmp_path / "checkpoints").glob(".step-*")) and C.load_checkpoint(tmp_path).record["step"] == 1


def test_a_damaged_file_is_named(tmp_path):
    path = save(tmp_path, 1)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(C.CheckpointError, match=r"corrupt checkpoint file .*model\.safetensors"):
        C.load_checkpoint(tmp_path)


def test_a_broken_safetensors_header_is_a_clear_error(tmp_path):
    path = save(tmp_path, 1)
    record = json.loads((path / "record.json").read_text())
    del record["files"], record[C.RECORD_DIGEST]  # no recorded hash: the header itself must be checked
    record["format"] = C.FORMAT_WITHOUT_DIGEST
    (path / "record.json").write_text(json.dumps(record))
    (path / "training.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    with pytest.raises(C.CheckpointError, match=r"corrupt checkpoint file .*training\.safetensors"):
        C.load_checkpoint(path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    assert C.load_checkpoint(tmp_path).record["step"] == 1


def test_missing_and_empty_runs_are_clear_errors(tmp_path):
    with pytest.raises(C.CheckpointError, match="no run or checkpoint at"):
        C.resolve_checkpoint(tmp_path / "nowhere")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(C.CheckpointError, match="has no checkpoint yet"):
        C.resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-000009\n")
    with pytest.raises(C.CheckpointError, match="not a complete checkpoint"):
        C.resolve_checkpoint(tmp_path)


def test_parameters_must_match_by_name_and_shape(tmp_path):
    tensors = {"w": torch.zeros(2, 2), "extra": torch.zeros(1)}
    with pytest.raises(C.CheckpointError, match=r"another model: missing b; unexpected extra; w is \(2, 2\)"):
        C.check_parameters(tensors, {"w": (2, 3), "b": (4,)}, tmp_path)
    C.check_parameters({"w": torch.zeros(2, 3)}, {"w": (2, 3)}, tmp_path)


def damage(path):
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def test_resume_passes_over_damaged_checkpoints_to_the_newest_intact_one_and_says_so(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    damage(tmp_path / "checkpoints" / "step-000003")
    damage(tmp_path / "checkpoints" / "step-000002")
    warnings: list[str] = []
    found = C.load_for_resume(tmp_path, warnings.append)
    assert found is not None and found.record["step"] == 1
    assert len(warnings) == 2 and "step-000003" in warnings[0] and "resuming from step-000002" in warnings[0]
    assert "resuming from step-000001" in warnings[1]
    damage(tmp_path / "checkpoints" / "step-000001")
    with pytest.raises(C.CheckpointError, match=r"no older checkpoint of .* is intact"):
        C.load_for_resume(tmp_path, warnings.append)


def test_reading_a_damaged_checkpoint_names_the_runs_older_intact_one(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    damage(tmp_path / "checkpoints" / "step-000003")
    damage(tmp_path / "checkpoints" / "step-000002")
    older = tmp_path / "checkpoints" / "step-000001"  # the newest before it that reads back whole
    for target in (tmp_path, tmp_path / "checkpoints" / "step-000003"):
        with pytest.raises(C.CheckpointError, match="sha256") as raised:
            C.load_checkpoint(target, training=False)
        assert str(raised.value).endswith(f"({older} is an older intact checkpoint of the run: name it by "
                                          "path to use it)")
    damage(older)
    with pytest.raises(C.CheckpointError) as raised:  # none older intact: nothing to name
        C.load_checkpoint(tmp_path, training=False)
    assert "older intact" not in str(raised.value)


def test_a_runs_checkpoints_folder_reads_as_the_run_and_a_spec_says_to_train_it(tmp_path):
    save(tmp_path, 1)
    (tmp_path / "resolved.json").write_text("{}")
    assert C.resolve_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "step-000001"
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "m.nl").write_text("model m { dim = 8 }\n")
    with pytest.raises(C.CheckpointError, match=r"train it first \(nldsl train SPEC\)"):
        C.resolve_checkpoint(specs / "m.nl")


def test_resume_without_a_latest_pointer_takes_the_newest_complete_checkpoint(tmp_path):
    assert C.load_for_resume(tmp_path, print) is None  # no checkpoint at all: nothing to resume
    for step in (999_999, 1_000_000):  # past six digits, names no longer sort by step
        save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").unlink()  # e.g. a crash right after the first rename
    assert C.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1000000"
    found = C.load_for_resume(tmp_path, print)
    assert found is not None and found.record["step"] == 1_000_000
    (tmp_path / "checkpoints" / "latest").write_text("step-000009\n")  # a pointer to nothing
    warnings: list[str] = []
    found = C.load_for_resume(tmp_path, warnings.append)
    assert found is not None and found.record["step"] == 1_000_000 and "not a complete checkpoint" in warnings[0]


def test_a_save_removes_what_a_killed_pointer_write_left(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / "checkpoints" / ".latest.0123abcd.tmp"  # written, then killed before the rename
    leftover.write_text("step-000001\n")
    save(tmp_path, 2)
    assert not leftover.exists() and (tmp_path / "checkpoints" / "latest").read_text() == "step-000002\n"


def test_pruning_keeps_the_newest_by_step_number(tmp_path):
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        save(tmp_path, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-1000000", "step-1000001"]


@pytest.mark.parametrize("pointer", [b"step-000009\n", b"\xff\xfe\x00garbage", b"../../elsewhere\n", b""])
def test_a_save_rewrites_a_damaged_latest_pointer_and_a_resume_repairs_it(tmp_path, pointer):
    save(tmp_path, 1)
    latest = tmp_path / "checkpoints" / "latest"
    latest.write_bytes(pointer)
    with pytest.raises(C.CheckpointError, match="not a complete checkpoint"):
        C.latest_checkpoint(tmp_path)  # a clear error for eval, never a UnicodeDecodeError
    warnings: list[str] = []
    found = C.load_for_resume(tmp_path, warnings.append)
    assert found is not None and found.record["step"] == 1 and len(warnings) == 1
    assert latest.read_bytes() == pointer  # finding it writes nothing: a resume may still be refused
    C.repoint_latest(found, warnings.append)
    assert latest.read_text() == "step-000001\n"  # repaired once the resume goes on
    latest.write_bytes(pointer)
    assert save(tmp_path, 2) == tmp_path / "checkpoints" / "step-000002"  # the save never trips on it
    assert latest.read_text() == "step-000002\n"


@pytest.mark.parametrize("edit", [
    lambda r: r.pop("step"), lambda r: r.update(step="7"), lambda r: r.update(files=["model.safetensors"]),
])
def test_a_record_missing_the_fields_of_a_checkpoint_is_a_damaged_checkpoint(tmp_path, edit):
    for step in (1, 2):
        save(tmp_path, step)
    record_file = tmp_path / "checkpoints" / "step-000002" / "record.json"
    record = json.loads(record_file.read_text())
    record.pop(C.RECORD_DIGEST)  # the field checks behind it (records written before the digest have none)
    record["format"] = C.FORMAT_WITHOUT_DIGEST
    edit(record)
    record_file.write_text(json.dumps(record))
    with pytest.raises(C.CheckpointError, match="damaged checkpoint record"):
        C.load_checkpoint(tmp_path)
    warnings: list[str] = []
    found = C.load_for_resume(tmp_path, warnings.append)  # resume falls back as for other damage
    assert found is not None and found.record["step"] == 1 and "resuming from step-000001" in warnings[0]


@pytest.mark.parametrize("edit", [
    lambda r: r.update(step=r["step"] + 1), lambda r: r.update(note="added"), lambda r: r.pop("files"),
    lambda r: r.pop(C.RECORD_DIGEST), lambda r: r.update({C.RECORD_DIGEST: None}),  # a new record needs its hash
])
def test_an_edited_record_fails_its_own_hash_and_resume_falls_back(tmp_path, edit):
    for step in (1, 2):
        save(tmp_path, step)
    record_file = tmp_path / "checkpoints" / "step-000002" / "record.json"
    record = json.loads(record_file.read_text())
    edit(record)
    record_file.write_text(json.dumps(record, indent=4))  # layout and key order are not contents
    with pytest.raises(C.CheckpointError, match=r"damaged checkpoint record .*differ from the ones written"):
        C.load_checkpoint(tmp_path)
    warnings: list[str] = []
    found = C.load_for_resume(tmp_path, warnings.append)
    assert found is not None and found.record["step"] == 1 and "resuming from step-000001" in warnings[0]


def test_a_record_holding_a_path_that_is_not_utf8_passes_its_own_hash(tmp_path):
    path = save(tmp_path, 1, data={"source": {"kind": "files", "paths": ["/d/caf\udce9.txt"]}})  # bytes b"caf\xe9"
    assert C.load_checkpoint(path).record["data"]["source"]["paths"] == ["/d/caf\udce9.txt"]


def test_a_records_own_hash_ignores_layout_and_key_order(tmp_path):
    path = save(tmp_path, 1)
    record = json.loads((path / "record.json").read_text())
    (path / "record.json").write_text(json.dumps(dict(reversed(record.items())), indent=None))
    assert C.load_checkpoint(tmp_path).record == record


def test_a_record_is_hashed_as_json_reads_it_back(tmp_path):
    # integer keys come back as strings, which sort otherwise (9 < 10, "10" < "9"), and tuples as
    # lists: hashed before that round trip, such a record would fail its own check when read
    path = save(tmp_path, 1, data={"shape": (2, 3), "by_step": {9: "warm-up", 10: "decay"}})
    assert C.load_checkpoint(path).record["data"] == {"shape": [2, 3], "by_step": {"9": "warm-up", "10": "decay"}}


def test_a_training_record_needs_what_its_readers_read(tmp_path):
    record = {"spec": {}, "spec_sha256": "x", "tokenizer": {"kind": "bytes"}, "optimizer": {"dict": {}},
              "data": {"source": {"kind": "files", "paths": ["a.txt"]}, "train_sha256": "y"}}
    save(tmp_path, 1, **record)
    checks = []
    found = C.load_for_resume(tmp_path, print, check=lambda c: checks.append(C.check_run_record(c, resume=True)))
    assert found is not None and checks == [None]
    for key, broken in [("tokenizer", None), ("data", {"source": {"kind": "files"}, "train_sha256": "y"}),
                        ("spec", []), ("optimizer", None)]:
        save(tmp_path, 2, **{**record, key: broken})
        with pytest.raises(C.CheckpointError, match="damaged checkpoint record"):
            C.check_run_record(C.load_checkpoint(tmp_path), resume=True)
    with pytest.raises(C.CheckpointError, match="empty"):
        C.resolve_checkpoint("")


def test_a_malformed_stored_structure_is_a_value_error():
    for structure in ({"tensor": "missing"}, {"dict": [1]}, {"dataclass": "MemoryState", "fields": {"x": 1}},
                      {"items": [[[1], 2]]}):
        with pytest.raises(ValueError, match="malformed stored structure"):
            C.decode(structure, {})


def test_a_folder_in_place_of_latest_is_moved_aside_not_a_failed_save(tmp_path):
    step = tmp_path / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").mkdir()
    (tmp_path / "checkpoints" / "latest" / "kept.txt").write_text("mine")
    C.point_latest_at(step)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000002\n"
    aside = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith("moved-aside")]
    assert len(aside) == 1 and (aside[0] / "kept.txt").read_text() == "mine"


def test_reading_a_run_whose_latest_pointer_is_damaged_takes_its_newest_complete_checkpoint_and_says_so(tmp_path):
    """eval, generate, stream and --init-from read a run as a resume does: a `latest` that names
    nothing usable is passed over with a warning; without a warning to give, the error says what to do."""
    for step in (1, 2):
        save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").write_text("garbage\n")
    warnings: list[str] = []
    assert C.load_checkpoint(tmp_path, training=False, warn=warnings.append).record["step"] == 2
    [warning] = warnings
    assert "not a complete checkpoint; using step-000002, the newest complete checkpoint" in warning
    with pytest.raises(C.CheckpointError, match=r"name one of .*/step-\* by path"):
        C.resolve_checkpoint(tmp_path)


def test_a_record_naming_a_file_outside_its_checkpoint_is_damaged(tmp_path):
    """A checkpoint's recorded files are read and hashed: only files of its own folder."""
    for name in ("../model.safetensors", "/dev/zero", ".."):
        with pytest.raises(C.CheckpointError, match="which is not a file of its folder"):
            C._check_extra_files(tmp_path, {name: "0" * 64})
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(C.CheckpointError, match="its sha256 differs"):
        C._check_extra_files(tmp_path, {"tokenizer.json": "0" * 64})


# What the mutation audit of the checkpoint code found untested -------------------------------------

TENSORS = {"w": torch.ones(2)}


def test_pruning_never_removes_the_checkpoint_just_saved(tmp_path):
    """A run resumed from an older step (its newer one damaged) can save below a newer folder: the
    save it just made is kept and `latest` names it, whatever `keep` says of the newer one."""
    C.save_checkpoint(tmp_path, 5, TENSORS, {}, {}, keep=3)
    C.save_checkpoint(tmp_path, 3, TENSORS, {}, {}, keep=1)
    assert (tmp_path / "checkpoints" / "step-000003" / C.RECORD_FILE).exists()
    assert C.latest_checkpoint(tmp_path).name == "step-000003"


def test_a_kill_before_the_folder_is_in_place_leaves_latest_at_the_previous_checkpoint(tmp_path, monkeypatch):
    C.save_checkpoint(tmp_path, 1, TENSORS, {}, {}, keep=3)
    rename = C.os.rename

    def killed(source, target):
        if ".tmp" in str(source):
            raise KeyboardInterrupt  # killed just before the new folder's rename
        return rename(source, target)

    monkeypatch.setattr(C.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path, 2, TENSORS, {}, {}, keep=3)
    assert C.latest_checkpoint(tmp_path).name == "step-000001", "latest never names a folder not yet in place"


def test_one_non_finite_weight_among_finite_ones_is_refused(tmp_path):
    weights = torch.zeros(4)
    weights[1] = float("nan")
    with pytest.raises(C.CheckpointError):
        C.check_finite_weights({"w": weights, "v": torch.ones(2)}, tmp_path)
    C.check_finite_weights({"w": torch.zeros(4), "v": torch.ones(2)}, tmp_path)


def test_a_step_folder_without_its_record_is_not_a_checkpoint(tmp_path):
    """An empty or half-copied `step-N` folder is not taken as the newest checkpoint when `latest` is gone."""
    C.save_checkpoint(tmp_path, 1, TENSORS, {}, {}, keep=3)
    (tmp_path / "checkpoints" / "step-000002").mkdir()
    (tmp_path / "checkpoints" / "latest").unlink()
    assert C.latest_checkpoint(tmp_path).name == "step-000001"


def test_a_damaged_checkpoint_suggests_an_older_one_never_itself(tmp_path):
    """Only its optimizer state is damaged, which the 'older intact' check does not read: the
    suggestion must still be an older step."""
    for step in (2, 4):
        C.save_checkpoint(tmp_path, step, TENSORS, {"m": torch.zeros(2)}, {}, keep=3)
    damaged = tmp_path / "checkpoints" / "step-000004" / C.TRAINING_FILE
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")
    with pytest.raises(C.CheckpointError, match=r"step-000002 is an older intact checkpoint") as error:
        C.load_checkpoint(tmp_path)
    assert "step-000004 is an older" not in str(error.value)


def test_changing_loaded_tensors_in_place_leaves_the_checkpoint_as_it_was(tmp_path):
    """Loads read the files with safetensors.load_file, which maps them: an optimizer that updates its loaded
    state in place (AdamW's moments, as `load_state_dict` keeps them) must not write through to the file."""
    path = save(tmp_path, 1)
    loaded = C.load_checkpoint(path)
    for tensor in (*loaded.model.values(), *loaded.training.values()):
        if tensor.is_floating_point():
            tensor.add_(1.0)
    again = C.load_checkpoint(path)  # its files' hashes are checked again
    assert torch.equal(again.model["w"], torch.full((2, 2), 1.0))
    assert torch.equal(again.training["clock.w"], torch.ones(2))

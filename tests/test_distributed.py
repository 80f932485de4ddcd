"""Data-parallel and FSDP training under torchrun match one process at the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from nldsl import loader
from nldsl.cli import UserError
from nldsl.runtime import distributed
from nldsl.runtime import train as T

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "specs/titans_lmm.nl"
OVERRIDES = ["dim=32", "model.layers=1", "train.seq_len=32", "train.batch=4", "train.steps=3",
             "train.checkpoint_every=2", "train.eval_every=0", "train.log_every=1"]
TOLERANCE = 1e-5  # float summation order differs between one process and two


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("".join(f"value_{i} = compute({i}, {i % 5})\n" for i in range(800)))
    return path


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, text_file) -> Path:
    """The reference run, in this process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path_factory.mktemp("single") / "run", compile=False,
                             progress=False)
    result = T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)
    torch.set_num_threads(before)
    return result.run_dir


@pytest.fixture(scope="module")
def single_process(single_run) -> dict[str, torch.Tensor]:
    """Final parameters of the reference run."""
    return final_parameters(single_run)


def logged(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row[key] for row in rows if key in row]


def gradient_norms(run_dir: Path) -> list[float]:
    """The logged gradient norm of every step: AdamW and the clip hide a gradient summed instead of
    averaged over the processes from the parameters, not from this."""
    return logged(run_dir, "grad_norm")


def launcher(log_dir: Path) -> list[str]:
    """torchrun for two processes on this machine, its logs in `log_dir`: without one it makes a
    /tmp/torchelastic_* folder at each launch and leaves it there."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--log-dir={log_dir}"]


def torchrun(run_dir: Path, text_file: Path, *extra: str, compile: str = "false") -> subprocess.CompletedProcess:
    # beside the data, not the run folder, which some tests put where no folder can be made
    command = [*launcher(text_file.parent / "launcher-logs"), "-m", "nldsl",
               "train", str(SPEC), *[f"--set={o}" for o in OVERRIDES], "--data", str(text_file),
               "--run-dir", str(run_dir), f"--set=train.compile={compile}", "--no-progress", "--device", "cpu", *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO)


def stderr_of(completed: subprocess.CompletedProcess) -> str:
    """A failed torchrun's stderr for the assertion message: the workers' own messages come first
    and the launcher's summary last, so both ends are kept."""
    text = completed.stderr
    return text if len(text) <= 6000 else f"{text[:4000]}\n[…]\n{text[-2000:]}"


def assert_close(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(found[name], tensor, atol=TOLERANCE, rtol=0), name


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run_dir / "checkpoints" / "step-000003" / "model.safetensors")


def test_two_data_parallel_processes_match_one(tmp_path, text_file, single_run, single_process, capsys):
    completed = torchrun(tmp_path / "run", text_file)
    assert completed.returncode == 0, stderr_of(completed)
    assert completed.stdout.count("run folder:") == 1  # only rank 0 speaks
    assert_close(final_parameters(tmp_path / "run"), single_process)
    expected = gradient_norms(single_run)
    assert len(expected) == 3 and gradient_norms(tmp_path / "run") == pytest.approx(expected, rel=TOLERANCE)
    # the logged loss is the mean over every process's rows, not their sum
    assert logged(tmp_path / "run", "loss") == pytest.approx(logged(single_run, "loss"), rel=TOLERANCE)
    # resumed by one process: the same batches summed in another order, said so
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000002\n")
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "run", compile=False, progress=False,
                             resume=True)
    T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)
    said = capsys.readouterr().out
    assert "written by 2 process(es) and this run has 1" in said and "drift apart slowly" in said
    assert_close(final_parameters(tmp_path / "run"), single_process)


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_exactly(tmp_path, text_file, single_process):
    run_dir = tmp_path / "run"
    completed = torchrun(run_dir, text_file, "--fsdp")
    assert completed.returncode == 0, stderr_of(completed)
    assert_close(final_parameters(run_dir), single_process)
    uninterrupted = final_parameters(run_dir)
    (run_dir / "checkpoints" / "latest").write_text("step-000002\n")  # as if killed during step 3
    for file in (run_dir / "checkpoints" / "step-000003").iterdir():
        file.unlink()
    (run_dir / "checkpoints" / "step-000003").rmdir()
    completed = torchrun(run_dir, text_file, "--fsdp", "--resume")
    assert completed.returncode == 0, stderr_of(completed)
    for name, tensor in final_parameters(run_dir).items():
        assert torch.equal(tensor, uninterrupted[name]), name


@pytest.mark.slow
def test_fsdp_with_blocks_compiled_one_at_a_time_matches_one_eager_process(tmp_path, text_file, single_process):
    """FSDP shards block by block and `compile = blocks` compiles block by block: the compiled call
    goes through the sharded block's own call, its hooks included (they gather the block's parameters
    for the forward); the training loop turns fullgraph off under FSDP."""
    completed = torchrun(tmp_path / "run", text_file, "--fsdp", compile="blocks")
    assert completed.returncode == 0, stderr_of(completed)
    assert "compiled per block" in completed.stdout
    assert_close(final_parameters(tmp_path / "run"), single_process)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP over NCCL needs two GPUs")
def test_fsdp_on_gpus(tmp_path, text_file, single_process):
    command = [*launcher(tmp_path / "launcher-logs"), "-m", "nldsl",
               "train", str(SPEC), *[f"--set={o}" for o in OVERRIDES], "--data", str(text_file),
               "--run-dir", str(tmp_path / "run"), "--no-compile", "--no-progress", "--fsdp"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, stderr_of(completed)
    found = final_parameters(tmp_path / "run")
    for name, tensor in single_process.items():
        assert torch.allclose(found[name], tensor, atol=1e-3), name  # TF32 matmuls on the GPU


GROUP_LIFETIME = """
import os, sys, torch
from nldsl.runtime import distributed
def gloo_threads():
    return [t for t in os.listdir("/proc/self/task") if "gloo" in open(f"/proc/self/task/{t}/comm").read()]
context = distributed.setup("cpu")
optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])  # imports torch._dynamo
before = len(gloo_threads())
distributed.teardown(context)
with open(os.path.join(sys.argv[1], f"rank{context.rank}.txt"), "w") as report:
    report.write(f"{before} {len(gloo_threads())}")
distributed.end_worker(7)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_teardown_ends_the_group_and_end_worker_exits_with_the_status(tmp_path):
    """A group that outlives teardown leaves gloo threads running into interpreter shutdown, where
    they can abort the process after a successful run (nldsl/runtime/distributed.py)."""
    script = tmp_path / "group.py"
    script.write_text(GROUP_LIFETIME)
    command = [*launcher(tmp_path / "launcher-logs"), str(script), str(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO)
    for rank in (0, 1):
        report = tmp_path / f"rank{rank}.txt"
        assert report.exists(), stderr_of(completed)
        before, after = (int(n) for n in report.read_text().split())
        assert before > 0 and after == 0, f"rank {rank}: {before} gloo threads before teardown, {after} after"
    assert "exitcode  : 7" in completed.stderr  # torchrun reports the status end_worker exited with


def test_one_process_needs_no_process_group_and_refuses_fsdp():
    context = distributed.setup("cpu")
    assert (context.rank, context.world_size, context.is_main, context.active) == (0, 1, True, False)
    with pytest.raises(UserError, match="torchrun"):
        distributed.setup("cpu", fsdp=True)


def test_devices_resolve_or_fail_in_one_line():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown --device"):
        distributed.resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="no CUDA device"):
            distributed.resolve_device("cuda")


def test_the_global_batch_must_split_over_the_processes(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(distributed, "setup", lambda device, fsdp: distributed.Distributed(0, 3))
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "run", compile=False, progress=False)
    with pytest.raises(UserError, match="does not split over 3 processes"):
        T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)


GLOO_PEER_GONE = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:40123: "
                  "Connection reset by peer. This is typically caused by a remote worker hanging")


def test_a_process_of_the_run_that_stops_is_named_as_such_not_as_a_bug(tmp_path, text_file, single_run,
                                                                         monkeypatch):
    """A killed torchrun worker makes the others' next collective raise gloo's RuntimeError: the
    survivors say another process stopped and how to go on (an audit saw 'internal error … a bug
    in nldsl', exit 3)."""
    two = distributed.Distributed(0, 2)
    assert distributed.peer_failed(RuntimeError(GLOO_PEER_GONE), two)
    assert distributed.peer_failed(torch.distributed.DistBackendError("communicator was aborted"), two)
    assert not distributed.peer_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), two)
    assert not distributed.peer_failed(RuntimeError(GLOO_PEER_GONE), distributed.Distributed(0, 1))

    def gone_in(run_dir: Path):
        def gone(result, overrides, options, context, folder):
            folder.append(run_dir)
            raise RuntimeError(GLOO_PEER_GONE)
        return gone

    monkeypatch.setattr(distributed, "setup", lambda device, fsdp: two)
    monkeypatch.setattr(T, "_train", gone_in(single_run))
    options = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "run", compile=False, progress=False)
    with pytest.raises(distributed.PeerFailure, match=r"another process of this torchrun run stopped \(\[.*Connection "
                       r"reset by peer\); the run keeps its last regular checkpoint \(step-000003\): rerun the same "
                       r"torchrun command with --resume$") as raised:
        T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)
    assert "typically caused" not in str(raised.value)  # gloo's first sentence only
    # before the first checkpoint, --resume would find nothing (an audit followed that advice)
    (tmp_path / "new").mkdir()
    monkeypatch.setattr(T, "_train", gone_in(tmp_path / "new"))
    with pytest.raises(distributed.PeerFailure, match=r"stopped \(.*\); no checkpoint was written yet: rerun the "
                                                      r"same torchrun command$"):
        T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)
    # a folder this machine does not see (rank 0's, on another machine): no claim either way
    monkeypatch.setattr(T, "_train", gone_in(tmp_path / "elsewhere"))
    with pytest.raises(distributed.PeerFailure, match=r"stopped \(.*\); rerun the same torchrun command, with "
                                                      r"--resume if the run wrote a checkpoint$"):
        T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, options)
    # the folder is the one `_train` resolves (here a copy of a run with its checkpoints)
    monkeypatch.undo()
    shutil.copytree(single_run, tmp_path / "copy")
    monkeypatch.setattr(distributed, "setup", lambda device, fsdp: two)
    monkeypatch.setattr(distributed, "broadcast_object", lambda value, context: value)
    monkeypatch.setattr(T, "_train_in", lambda *args: (_ for _ in ()).throw(RuntimeError(GLOO_PEER_GONE)))
    resumed = T.TrainOptions(data=[str(text_file)], run_dir=tmp_path / "copy", compile=False, progress=False,
                             resume=True)
    with pytest.raises(distributed.PeerFailure, match=r"its last regular checkpoint \(step-000003\)"):
        T.train(loader.check(SPEC, OVERRIDES), OVERRIDES, resumed)


def test_a_torchrun_command_mistake_is_said_once_and_a_peer_failure_by_every_survivor(monkeypatch, capsys, tmp_path):
    from nldsl.cli import main

    bad = tmp_path / "bad.nl"
    bad.write_text("model m { dim = 3x }\n")
    for local_rank, shown in (("0", True), ("1", False)):
        monkeypatch.chdir(tmp_path)  # a train without --run-dir makes runs/ where it runs
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        monkeypatch.setattr(distributed, "setup", lambda device, fsdp: distributed.Distributed())  # no group here
        for argv in (["train", str(bad)], ["train", str(SPEC), "--set", "train.batchh=3"],
                     ["train", str(SPEC), "--data", str(tmp_path / "missing.txt")]):
            assert main(argv) == 1
            assert bool(capsys.readouterr().err) == shown, (local_rank, argv)
        with pytest.raises(SystemExit):  # the spec commands print their diagnostics the same way
            main(["compile", str(bad)])
        assert bool(capsys.readouterr().err) == shown
        monkeypatch.setattr(T, "train", lambda *args: (_ for _ in ()).throw(distributed.PeerFailure("peer gone")))
        assert main(["train", str(SPEC)]) == 1
        assert capsys.readouterr().err == "error: peer gone\n"  # only a survivor can say it
        monkeypatch.undo()
    from nldsl.cli import quiet_worker

    for world, local_rank, quiet in (("2", "", False), ("2", "0", False), ("2", "1", True), ("3", " 2 ", True),
                                     ("1", "1", False)):  # another launcher's LOCAL_RANK alone: not a torchrun
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert quiet_worker() == quiet, (world, local_rank)


@pytest.mark.parametrize("command", [["eval", "runs/x"], ["generate", "runs/x"], ["stream", "runs/x", "--data", "t"]])
def test_commands_of_one_process_refuse_torchrun(command, monkeypatch, capsys):
    from nldsl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 1
    assert f"`nldsl {command[0]}` runs in one process: start it without torchrun" in capsys.readouterr().err


def test_a_run_folder_in_use_stops_every_process_with_the_same_reason(tmp_path, text_file):
    """Only rank 0 takes the folder's lock: the other process used to report rank 0's exit as a
    crash and advise --resume (an audit)."""
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / T.LOCK_FILE, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        completed = torchrun(run_dir, text_file)
    assert completed.returncode != 0
    assert completed.stderr.count("another `nldsl train` is running in") == 1, stderr_of(completed)
    assert "another process of this torchrun run stopped" not in completed.stderr, stderr_of(completed)


def test_a_run_folder_that_cannot_be_made_stops_every_process_with_its_reason(tmp_path, text_file):
    """Rank 0 makes the folder: a failure there (a file in the way) left the other process to report
    rank 0's exit as a peer that stopped, before rank 0's own reason (an audit)."""
    (tmp_path / "afile").write_text("x")
    completed = torchrun(tmp_path / "afile" / "run", text_file)
    assert completed.returncode != 0
    assert completed.stderr.count(f"error: {tmp_path / 'afile' / 'run'}: Not a directory") == 1, \
        stderr_of(completed)
    assert "another process of this torchrun run stopped" not in completed.stderr, stderr_of(completed)


def test_a_first_step_that_is_not_finite_under_torchrun_says_how_to_find_the_layer(tmp_path, text_file):
    # the search for the layer runs one process's batch, so torchrun runs skip it; they said instead
    # that the forward pass was finite, under a loss of nan (an audit)
    completed = torchrun(tmp_path / "run", text_file, "--set", "model.block.lmm.level.lr=1e12")
    assert completed.returncode != 0
    assert completed.stderr.count("error: the training loss is nan") == 1, stderr_of(completed)
    assert "the same command in one process (without torchrun) names the layer" in completed.stderr
    assert "the forward pass is finite" not in completed.stderr

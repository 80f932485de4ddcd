"""`nldsl eval`, `generate`, `stream` and `bench`: what they compute, exact stream continuation, one-line errors."""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nldsl import loader
from nldsl.cli import UserError, main
from nldsl.runtime import checkpoint as C
from nldsl.runtime import data as D
from nldsl.runtime import evaluate as E
from nldsl.runtime.memory import MemoryState

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
CLOCK_SPEC = """\
# A tiny model whose CMS has an in-context level and two levels on the continuum clock.
block tiny_block {
  memory lmm { heads = 2; level { state = linear; period = 4 } }
  cms {
    level fast { period = 8 }
    level slow { period = 48 }
    level outer { period = steps(3); update = outer }
  }
}

model tiny {
  vocab = 256
  dim = 16
  layers = 1
  block from tiny_block { }
}

train {
  optimizer = adamw(lr = 0.01)
  steps = 4
  batch = 2
  seq_len = 16
  eval_batches = 2
}
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    return tiny_text(tmp_path_factory.mktemp("data"))


def tiny_text(folder: Path) -> Path:
    """A small text of repeated Python classes, written into `folder`."""
    path = folder / "text.txt"
    path.write_text("".join(f"class Thing{i}:\n    size = {i * 3 % 11}\n\n" for i in range(500)))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text_file) -> Path:
    """A trained tiny model with slow CMS levels (trained once for the module)."""
    return train_tiny(tmp_path_factory.mktemp("run"), CLOCK_SPEC, text_file)


def train_tiny(folder: Path, spec_text: str, text_file: Path) -> Path:
    """Train `spec_text` eagerly on one thread into `folder`/run; the run folder."""
    spec = folder / "clock.nl"
    spec.write_text(spec_text)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    status = main(["train", str(spec), "--data", str(text_file), "--run-dir", str(folder / "run"), "--no-compile",
                   "--no-progress"])
    torch.set_num_threads(before)
    assert status == 0
    return folder / "run"


def test_files_to_evaluate_come_as_documents_and_a_one_token_text_is_named(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("    indented = 1\n")
    second.write_text("    more = 2\n")
    # one piece per file, as training encodes documents (a BPE merge must not cross the separator)
    pieces = E.files_documents([str(first), str(second)], "utf-8")
    assert pieces == ["    indented = 1\n" + D.SEPARATOR, "    more = 2\n"]
    with pytest.raises(UserError, match="the evaluation text has 1 token but one window needs"):
        D.require_windows(D.tokenize(D.ByteTokenizer(), ["x"]), 16, "evaluation")


def test_eval_reports_loss_perplexity_and_bits_per_byte_as_defined(run_dir, text_file, capsys):
    assert main(["eval", str(run_dir), "--data", str(text_file), "--batches", "3"]) == 0
    out = capsys.readouterr().out
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode("".join(E.files_documents([str(text_file)], "utf-8")))
    starts = D.evaluation_starts(len(tokens), 16, 3 * 2)
    inputs, targets = D.windows(tokens, starts, 16)
    with torch.no_grad():
        nats = F.cross_entropy(loaded.model(inputs).flatten(0, 1), targets.flatten(), reduction="sum").item()
    loss = nats / targets.numel()
    assert f"loss {loss:.4f}" in out
    assert f"perplexity {math.exp(loss):.2f}" in out
    assert f"bits per byte {nats / math.log(2) / targets.numel():.4f}" in out  # bytes: one byte per token


@pytest.mark.parametrize("loss, shown", [(2.0, "perplexity 7.39 "), (20.0, "perplexity 4.85e+08 "),
                                         (700.0, "perplexity 1.01e+304 "), (709.5, "perplexity 1.35e+308 "),
                                         (886.0, "perplexity inf "),
                                         (math.nan, "perplexity nan ")])
def test_a_large_perplexity_is_shown_in_powers_of_ten_and_one_past_a_float_is_inf(loss, shown):
    evaluation = E.evaluation_from_sums(10 * loss, 10, 10, 1)
    assert shown in evaluation.line()
    assert evaluation.perplexity == math.exp(loss) if loss < 709.78 else not math.isfinite(evaluation.perplexity)


def test_eval_defaults_to_the_runs_validation_split(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    assert "validation split" in capsys.readouterr().out


def test_eval_draws_a_progress_bar_on_a_terminal_unless_told_not_to(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["eval", str(run_dir), "--batches", "2"]) == 0
    assert "0/2 [" in capsys.readouterr().err  # tqdm's bar over the batches (cleared when done)
    assert main(["eval", str(run_dir), "--batches", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "validation split" in captured.out


def test_generate_is_seeded_and_greedy_at_temperature_zero(run_dir, capsys):
    args = ["generate", str(run_dir), "--prompt", "class ", "--tokens", "12"]
    assert main([*args, "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--seed", "3"]) == 0
    assert capsys.readouterr().out == first and first.startswith("class ")
    loaded = E.load_model(run_dir, CPU)
    ids = list(b"class ")
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(loaded.model(torch.tensor([ids[-16:]]))[0, -1].argmax()))
    expected = bytes(ids[6:]).decode("utf-8", errors="replace")
    assert E.generate(loaded.model, loaded.tokenizer, "class ", 5, 0.0, 40, 0, 16, CPU) == expected
    # a tiny positive temperature is greedy too, not an overflow to inf (also where denormals are flushed)
    flushing = torch.set_flush_denormal(True)
    try:
        assert E.generate(loaded.model, loaded.tokenizer, "class ", 5, 1e-40, 0, 0, 16, CPU) == expected
    finally:
        if flushing:
            torch.set_flush_denormal(False)



def test_generate_yields_its_text_as_it_samples(run_dir):
    loaded = E.load_model(run_dir, CPU)
    pieces = list(E.generate_pieces(loaded.model, loaded.tokenizer, "class ", 40, 1.0, 0, 5, 16, CPU))
    assert "".join(pieces) == E.generate(loaded.model, loaded.tokenizer, "class ", 40, 1.0, 0, 5, 16, CPU)
    # an incomplete UTF-8 sequence waits for the token that completes it (only the last piece may end in one)
    assert all(piece and not piece.endswith("\ufffd") for piece in pieces[:-1])
    # lazily: the first piece of a practically endless continuation comes at once
    endless = E.generate_pieces(loaded.model, loaded.tokenizer, "class ", 10**12, 0.0, 0, 0, 16, CPU)
    assert next(endless)


def flat(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, MemoryState):
        return flat(value.weights) + flat(value.momentum)
    if isinstance(value, dict):
        return [t for item in value.values() for t in flat(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flat(item)]
    return []


@pytest.mark.parametrize("cut", [5, 113, 257])
def test_a_stream_in_two_parts_with_saved_state_equals_one_stream(run_dir, tmp_path, cut):
    text = "".join(f"x{i} = {i * i % 97}\n" for i in range(60))
    whole_model = E.load_model(run_dir, CPU)
    whole = E.stream(whole_model, whole_model.tokenizer.encode(text), 16)
    first_model = E.load_model(run_dir, CPU)
    first = E.stream(first_model, first_model.tokenizer.encode(text[:cut]), 16, keep_pending=True)
    state_file = tmp_path / "state.safetensors"
    E.save_stream_state(state_file, first.state, "sha", "checkpoint", "weights")
    second_model = E.load_model(run_dir, CPU)
    second = E.stream(second_model, second_model.tokenizer.encode(text[cut:]), 16,
                      E.load_stream_state(state_file, "sha", "weights", CPU))
    assert [(s.start, s.tokens, s.nats) for s in first.segments + second.segments] == \
        [(s.start, s.tokens, s.nats) for s in whole.segments]
    assert whole.state.position == second.state.position
    assert all(torch.equal(a, b) for a, b in zip(flat(whole.state.memory), flat(second.state.memory), strict=True))
    for name, value in whole.state.slow_weights.items():
        assert torch.equal(value, second.state.slow_weights[name]), name


def test_a_restored_stream_state_sits_in_fresh_aligned_memory(run_dir, tmp_path):
    """safetensors hands out tensors at unaligned offsets of the file's buffer; continued from them,
    matrix kernels rounded a hope_attention stream differently from one stream (1e-6 in a slow
    level's gradient sum after 3,000 bytes). A restored state is copied into fresh memory."""
    loaded = E.load_model(run_dir, CPU)
    first = E.stream(loaded, loaded.tokenizer.encode("abc " * 30), 16, keep_pending=True)
    path = tmp_path / "state.safetensors"
    E.save_stream_state(path, first.state, "sha", "checkpoint", "weights")
    restored = E.load_stream_state(path, "sha", "weights", CPU)
    tensors = [*flat(restored.memory), *restored.sums.values(), *restored.slow_weights.values()]
    assert tensors and all(t.data_ptr() % 64 == 0 for t in tensors), [t.data_ptr() % 64 for t in tensors]


def test_a_fresh_stream_starts_from_the_checkpoints_slow_weights_every_time(run_dir):
    """stream steps the slow levels' weights in place: a second stream on the same loaded model, with
    no state, must not start where the first left them."""
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode("".join(f"y{i} = {i * 7 % 31}\n" for i in range(80)))
    first = E.stream(loaded, tokens, 16)
    assert sum(first.updates.values()) > 0, "the slow levels must step for the test to mean anything"
    second = E.stream(loaded, tokens, 16)
    assert [s.nats for s in second.segments] == [s.nats for s in first.segments]


def test_stream_steps_each_slow_level_by_the_gradients_since_its_last_step(run_dir):
    """Against the rule written out here (docs/semantics.md §4): each segment's mean next-token loss is
    differentiated, the slow levels' gradients summed, and a level whose period the stream crosses
    steps θ ← θ − η Σ and starts a new sum. Over several periods (a sum never reset after a step
    passed the one-period tests)."""
    import torch.nn.functional as F

    text = "".join(f"z{i} = {i * 5 % 23}\n" for i in range(40))
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode(text)[:16 * 9 + 1]
    streamed = E.stream(loaded, tokens, 16)
    levels = E.slow_levels(loaded, 16)
    assert all(streamed.updates[level.prefix] >= 2 for level in levels), streamed.updates

    replay = E.load_model(run_dir, CPU)  # by hand, on a fresh copy of the weights
    model = replay.model
    slow = {level.prefix: (dict(level.parameters), level.period, level.lr) for level in E.slow_levels(replay, 16)}
    model.requires_grad_(False)
    for parameters, _, _ in slow.values():
        for p in parameters.values():
            p.requires_grad_(True)
    sums = {name: torch.zeros_like(p) for parameters, _, _ in slow.values() for name, p in parameters.items()}
    memory, nats = None, []
    for start in range(0, len(tokens) - 1, 16):
        inputs, targets = tokens[start:start + 16][None], tokens[start + 1:start + 17][None]
        logits, memory = model(inputs, targets, state=memory, return_state=True)
        loss = F.cross_entropy(logits[0], targets[0], reduction="sum")
        nats.append(float(loss.detach()))
        gradients = torch.autograd.grad(loss / inputs.shape[1], [p for ps, _, _ in slow.values() for p in ps.values()],
                                        allow_unused=True)
        for name, grad in zip(sums, gradients, strict=True):
            if grad is not None:
                sums[name] += grad
        memory = E.detach_state(memory)
        for parameters, period, lr in slow.values():
            if (start + inputs.shape[1]) // period > start // period:
                with torch.no_grad():
                    for name, p in parameters.items():
                        p.sub_(lr * sums[name])
                        sums[name].zero_()
    assert [s.nats for s in streamed.segments] == pytest.approx(nats, rel=1e-9)
    for name, value in streamed.state.slow_weights.items():
        torch.testing.assert_close(value, dict(model.named_parameters())[name].detach(), rtol=1e-9, atol=1e-12)
    for name, value in streamed.state.sums.items():
        torch.testing.assert_close(value, sums[name], rtol=1e-9, atol=1e-12)


def test_a_stream_stopped_by_ctrl_c_keeps_whole_segments_and_continues_exactly(run_dir):
    import signal

    text = "".join(f"x{i} = {i * i % 97}\n" for i in range(60))
    whole_model = E.load_model(run_dir, CPU)
    whole = E.stream(whole_model, whole_model.tokenizer.encode(text), 16)
    loaded = _signalled_in_segment(E.load_model(run_dir, CPU), 3, signal.SIGINT)
    stopped = E.stream(loaded, loaded.tokenizer.encode(text), 16, keep_pending=True)
    assert stopped.stopped is not None and stopped.stopped.startswith("interrupted")
    assert len(stopped.segments) == 3 and stopped.state.position == 48
    rest_model = E.load_model(run_dir, CPU)
    rest = E.stream(rest_model, torch.zeros(0, dtype=torch.long), 16, stopped.state)  # the text not yet streamed
    assert [s.nats for s in stopped.segments + rest.segments] == [s.nats for s in whole.segments]
    assert all(torch.equal(a, b) for a, b in zip(flat(whole.state.memory), flat(rest.state.memory), strict=True))


def _signalled_in_segment(loaded, segment: int, number: int):
    """`loaded` whose model sends this process the signal `number` as its `segment`-th call starts
    (a stream holds it until the segment is whole)."""
    import os

    forward, calls = loaded.model.forward, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == segment:
            os.kill(os.getpid(), number)
        return forward(*args, **kwargs)

    loaded.model.forward = signalled
    return loaded


def test_a_stream_whose_loss_is_not_finite_stops_before_applying_it(run_dir, capsys):
    loaded = E.load_model(run_dir, CPU)
    with torch.no_grad():
        loaded.model.embed.fill_(float("nan"))
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16)
    assert result.segments == [] and result.state.position == 0 and "the loss is nan" in result.stopped
    assert "the forward pass is first not finite in" in result.stopped  # as `nldsl train` says of a first step
    assert "`lr` in its `level`" in result.stopped and "fresh memory state" not in result.stopped


def test_a_stream_says_when_its_carried_memory_diverged_and_a_fresh_one_would_not(run_dir):
    """A segment that is not finite with the memory carried to it but finite from a fresh state: the
    message names the layer and says the carried memory is what diverged."""
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode("abc " * 20)
    first = E.stream(loaded, tokens[:17], 16, keep_pending=True)
    for tensor in flat(first.state.memory):
        if tensor.is_floating_point():
            tensor.fill_(float("inf"))
    result = E.stream(loaded, tokens[17:], 16, first.state)
    assert result.segments == [] and "the loss is nan" in result.stopped, result.stopped
    expected = (r"first not finite in \S+ of block 0 \(blocks\.0\.\S+\) with the memory carried here, and "
                r"finite from a fresh memory state \(loss \d+\.\d+\): the carried memory diverged")
    assert re.search(expected, result.stopped), result.stopped


def test_a_memory_that_diverges_under_a_finite_loss_stops_the_stream_before_its_segment(run_dir, tmp_path):
    """A write no later token of its segment reads (or a part the readout bounds) can pass infinity
    with the loss finite: the stream stops there as for a loss that is not finite, naming the part,
    and the state it keeps (the segment waiting in it) saves and loads back, all finite."""
    loaded = E.load_model(run_dir, CPU)
    forward, calls = loaded.model.forward, []

    def diverging(*args, **kwargs):
        logits, state = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            state[0]["lmm"]["memory"].weights[0] = torch.full_like(state[0]["lmm"]["memory"].weights[0], float("inf"))
        return logits, state

    loaded.model.forward = diverging
    tokens = loaded.tokenizer.encode("abc " * 20)
    result = E.stream(loaded, tokens, 16, keep_pending=True)
    assert [s.start for s in result.segments] == [0] and result.state.position == 16
    assert result.stopped.startswith("the memory state is not finite after the segment at token 16 "
                                     "(state[0].lmm.memory.weights[0] holds NaN or infinite values), though the "
                                     "segment's loss is finite"), result.stopped
    assert "the carried memory diverged" in result.stopped and "retention below 1" in result.stopped
    assert torch.equal(result.state.pending, tokens[16:].long())  # the segment not applied waits
    E.save_stream_state(tmp_path / "state.safetensors", result.state, "sha", "checkpoint", "weights")
    restored = E.load_stream_state(tmp_path / "state.safetensors", "sha", "weights", CPU)
    assert restored.position == 16 and all(torch.isfinite(t).all() for t in flat(restored.memory))


def test_slow_levels_take_an_sgd_step_with_their_lr_each_period(run_dir):
    loaded = E.load_model(run_dir, CPU)
    levels = {level.prefix: level for level in E.slow_levels(loaded, 16)}
    assert {p: (lv.period, lv.lr) for p, lv in levels.items()} == {"cms.slow_": (48, 0.01), "cms.outer_": (48, 0.01)}
    # the steps(3) level counts segments (each adds its mean loss's gradient), the other tokens
    assert {p: lv.per_segment for p, lv in levels.items()} == {"cms.slow_": False, "cms.outer_": True}
    start = {name: p.detach().clone() for level in levels.values() for name, p in level.parameters}
    tokens = loaded.tokenizer.encode("".join(f"y{i} = {i}\n" for i in range(20)))[:16 * 5 + 1]
    result = E.stream(loaded, tokens, 16)
    assert result.updates == {"cms.slow_": 1, "cms.outer_": 1}  # 80 tokens: one period of 48 passed

    reference = E.load_model(run_dir, CPU)
    slow = [(n, p) for n, p in reference.model.named_parameters() if ".slow_" in n]
    for _, p in slow:
        p.requires_grad_(True)
    gradient_sums = {n: torch.zeros_like(p) for n, p in slow}
    memory = None
    for index in range(3):  # the level fires after the third segment (48 tokens), with the sum of three gradients
        inputs, targets = tokens[16 * index:16 * index + 16].long(), tokens[16 * index + 1:16 * index + 17].long()
        logits, memory = reference.model(inputs[None], targets[None], state=memory, return_state=True)
        memory = E.detach_state(memory)
        grads = torch.autograd.grad(F.cross_entropy(logits[0], targets), [p for _, p in slow])
        for (n, _), g in zip(slow, grads):
            gradient_sums[n] += g
    for n, _ in slow:
        assert torch.allclose(result.state.slow_weights[n], start[n] - 0.01 * gradient_sums[n], atol=1e-6), n
        assert not torch.equal(result.state.slow_weights[n], start[n])


def test_stream_cli_saves_and_restores_state_and_prints_the_table(run_dir, text_file, tmp_path, capsys):
    state = tmp_path / "memory.safetensors"
    common = ["stream", str(run_dir), "--data", str(text_file), "--max-tokens", "100", "--no-progress"]
    assert main([*common, "--state-out", str(state)]) == 0
    out = capsys.readouterr().out
    assert "bits per byte, first part → last part" in out and "SGD step" in out and "wait for the next text" in out
    assert main([*common, "--state-in", str(state), "--no-learn"]) == 0
    assert "streamed" in capsys.readouterr().out


def test_stream_state_of_another_spec_or_a_damaged_file_is_refused(run_dir, tmp_path):
    loaded = E.load_model(run_dir, CPU)
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16, keep_pending=True)
    path = tmp_path / "state.safetensors"
    E.save_stream_state(path, result.state, "one spec", "c", "w")
    with pytest.raises(UserError, match="belongs to another spec"):
        E.load_stream_state(path, "another spec", "w", CPU)
    with pytest.raises(UserError, match="is a folder: a stream state is a file"):
        E.load_stream_state(tmp_path, "one spec", "w", CPU)
    if Path("/dev/null").exists():  # a device is no folder (it was called one)
        with pytest.raises(UserError, match="/dev/null is not a regular file: a stream state is a file"):
            E.load_stream_state(Path("/dev/null"), "one spec", "w", CPU)
    import json

    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    floating = next(key for key, t in tensors.items() if t.is_floating_point() and t.numel())
    edited = {**tensors, floating: tensors[floating] + 1}  # an edit the header does not know of
    path.write_bytes(safetensors.torch.save(edited, metadata=metadata))
    with pytest.raises(UserError, match="differ from the ones written"):
        E.load_stream_state(path, "one spec", "w", CPU)
    poisoned = {**tensors, floating: torch.full_like(tensors[floating], float("nan"))}
    structure = json.loads(metadata["nldsl"])
    structure["tensors_sha256"] = E.state_tensors_sha256(poisoned)  # even with a matching digest
    path.write_bytes(safetensors.torch.save(poisoned, metadata={"nldsl": json.dumps(structure)}))
    with pytest.raises(UserError, match="NaN or infinite"):
        E.load_stream_state(path, "one spec", "w", CPU)
    whole = path.read_bytes()
    path.write_bytes(whole[:-8])  # cut short: refused, but still a state --state-out may replace
    with pytest.raises(UserError, match="corrupt stream state"):
        E.load_stream_state(path, "one spec", "w", CPU)
    assert E.holds_a_stream_state(path)
    for garbage in (b"garbage", b"# notes\nthe text of a stream\n"):  # no safetensors file at all
        path.write_bytes(garbage)
        with pytest.raises(UserError, match=r"is not a stream state written by `nldsl stream --state-out` \(nor any"):
            E.load_stream_state(path, "one spec", "w", CPU)
        assert not E.holds_a_stream_state(path)
    path.write_bytes(safetensors.torch.save({"embed": torch.zeros(2)}))  # weights of a checkpoint: no nldsl header
    with pytest.raises(UserError, match="is not a stream state written by `nldsl stream --state-out`"):
        E.load_stream_state(path, "one spec", "w", CPU)


def test_commands_on_a_missing_or_damaged_run_are_one_line_errors(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no run or checkpoint at {tmp_path / 'nowhere'}"
    damaged = tmp_path / "damaged"
    checkpoint = next((run_dir / "checkpoints").glob("step-*"))
    damaged.mkdir()
    for file in checkpoint.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / "model.safetensors").write_bytes(b"\x00" * 16)
    assert main(["generate", str(damaged), "--tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "corrupt checkpoint file" in err and err.count("\n") == 1


def test_a_checkpoint_is_checked_against_the_model_it_is_loaded_into(run_dir, tmp_path):
    loaded = E.load_model(run_dir, CPU)
    other = loader.load(REPO / "specs/transformer.nl", ["dim=32", "model.layers=1"])
    with pytest.raises(UserError, match="written for another model"):
        from nldsl.runtime.checkpoint import check_parameters

        check_parameters(loaded.checkpoint.model, {n: tuple(t.shape) for n, t in other.state_dict().items()},
                         loaded.checkpoint.path)


def test_bench_without_studies_says_it_is_not_available(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nldsl.runtime.studies" else real(name, *a))
    assert main(["bench", "continual"]) == 1
    assert "not available" in capsys.readouterr().err


def test_bench_speed_outside_a_checkout_says_where_to_run_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "bench" else real(name, *a))
    assert main(["bench", "speed"]) == 1
    assert "source checkout" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["generate", "{run}", "--temperature", "-1"], "argument --temperature: must be a finite number ≥ 0"),
    (["generate", "{run}", "--temperature", "nan"], "argument --temperature: must be a finite number ≥ 0"),
    (["generate", "{run}", "--tokens", "-1"], "argument --tokens: must be at least 0"),
    (["generate", "{run}", "--top-k", "-1"], "argument --top-k: must be at least 0"),
    (["stream", "{run}", "--segment", "0"], "argument --segment: must be at least 1"),
    (["stream", "{run}", "--max-tokens", "-3"], "argument --max-tokens: must be at least 1"),
    (["stream", "{run}", "--max-tokens", "0"], "argument --max-tokens: must be at least 1"),
    (["eval", "{run}", "--batches", "0"], "argument --batches: must be at least 1"),
])
def test_out_of_range_options_are_usage_errors(run_dir, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main([a.format(run=run_dir) for a in args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["stream", "{run}", "--state-out", "{tmp}/notes.txt"], "the file exists and is not a stream state"),
    (["stream", "{run}", "--state-out", "{tmp}/missing/state.safetensors"], "no folder"),
    (["stream", "{run}", "--state-out", "{tmp}"], "it is a folder"),
])
def test_unwritable_outputs_are_refused_before_any_work(
        run_dir, tmp_path, capsys, monkeypatch, args, message):
    def no_work(*_args, **_kwargs):
        raise AssertionError("the command ran before checking its options")

    (tmp_path / "notes.txt").write_text("the user's own file\n")  # --state-out must not replace it
    monkeypatch.setattr(E, "stream", no_work)  # the stream's learning would be lost to a late refusal
    monkeypatch.setattr(E, "evaluate_text", no_work)
    monkeypatch.setattr(E, "generate", no_work)
    assert main([a.format(run=run_dir, tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (tmp_path / "notes.txt").read_text() == "the user's own file\n"


@pytest.mark.parametrize("command", [["eval", "{damaged}", "--batches", "1"],
                                     ["generate", "{damaged}", "--tokens", "1"], ["stream", "{damaged}"],
                                     ["train", "{spec}", "--init-from", "{damaged}", "--data", "{data}",
                                      "--run-dir", "{new}", "--no-compile", "--no-progress"]])
def test_weights_that_are_not_finite_are_a_damaged_checkpoint(run_dir, text_file, tmp_path, capsys, command):
    from safetensors.torch import load_file, save_file

    damaged = _copy_checkpoint(run_dir, tmp_path / "damaged", lambda r: r.pop("files"))  # no hashes to catch it
    weights = load_file(damaged / "model.safetensors")
    first = next(name for name, t in weights.items() if t.is_floating_point())
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, damaged / "model.safetensors")
    names = {"damaged": damaged, "spec": run_dir / "spec.nl", "data": text_file, "new": tmp_path / "new"}
    assert main([part.format(**names) for part in command]) == 1
    err = capsys.readouterr().err
    assert f"hold NaN or infinite values ({first}" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()  # --init-from refuses before a run folder is made or kept


def test_a_tokenizer_file_other_than_the_recorded_one_is_refused(tmp_path):
    import hashlib

    D.BPETokenizer.train(["the quick brown fox jumps over the lazy dog " * 50], 300).save(tmp_path / "tokenizer.json")
    record = {"kind": "bpe", "file": "tokenizer.json", "vocab": 300}
    recorded = hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    assert D.tokenizer_from_record(record, tmp_path, recorded).vocab_size == 300
    with pytest.raises(UserError, match=r"is not the tokenizer the checkpoint in .* was written with"):
        D.tokenizer_from_record(record, tmp_path, "0" * 64)
    with pytest.raises(UserError, match="more than the model's vocabulary of 260"):
        D.tokenizer_from_record({**record, "vocab": 260}, tmp_path)


def _copy_checkpoint(run_dir: Path, to: Path, edit=None) -> Path:
    """A copy of the run's newest checkpoint, its record changed by `edit`."""
    import json

    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    to.mkdir()
    for file in checkpoint.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    if edit is not None:
        record = json.loads((to / "record.json").read_text())
        record.pop(C.RECORD_DIGEST)  # as a record written before it: the checks behind the digest are tested
        record["format"] = C.FORMAT_WITHOUT_DIGEST
        edit(record)
        (to / "record.json").write_text(json.dumps(record))
    return to


@pytest.mark.parametrize("edit", [
    lambda r: r.pop("tokenizer"), lambda r: r.pop("step"), lambda r: r.pop("data"),
    lambda r: r.update(files=[]), lambda r: r["data"].update(source="files"),
    lambda r: r.update(tokenizer={"kind": "bpe"}),  # a BPE tokenizer without its file and vocabulary
    lambda r: r.update(spec_text=None), lambda r: r.update(spec_text=5),
    lambda r: r.update(overrides=7), lambda r: r.update(overrides=[1]),
])
@pytest.mark.parametrize("command", [["eval", "--batches", "1"], ["generate", "--tokens", "1"], ["stream"]])
def test_a_hand_edited_checkpoint_record_is_a_one_line_error(run_dir, tmp_path, capsys, edit, command):
    damaged = _copy_checkpoint(run_dir, tmp_path / "damaged", edit)
    assert main([command[0], str(damaged), *command[1:]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: damaged checkpoint record") and err.count("\n") == 1


@pytest.mark.parametrize("spec, field", [({"x": 1}, "`path`"), ({"path": 1, "sha256": "s"}, "`path`")])
def test_a_recorded_spec_that_is_not_one_is_a_one_line_error(run_dir, tmp_path, capsys, spec, field):
    damaged = _copy_checkpoint(run_dir, tmp_path / "damaged", lambda r: r.update(spec=spec))
    assert main(["eval", str(damaged), "--batches", "1"]) == 1
    err = capsys.readouterr().err
    assert "holds no usable spec: " + field in err and err.count("\n") == 1


@pytest.mark.parametrize("edit, said", [
    (lambda r: r["spec"].pop("model"), "holds no usable spec: it has no `model`"),
    (lambda r: r["spec"]["model"].update(dim=True), "holds no usable spec: `model.dim`"),  # not read as 1
    (lambda r: r["spec"]["model"].update(dim="16"), "holds no usable spec: `model.dim`"),
    # a width its heads do not divide: the checker never passed it, so it came from an edit
    (lambda r: r["spec"]["model"].update(dim=1), "model.dim is 1 in the record but 16 in its spec text"),
    (lambda r: r["spec"]["train"].update(seq_len=10**30), "holds no usable spec: `train.seq_len`: a spec's numbers"),
    (lambda r: r["data"]["source"].update(encoding=["utf-8"]), "`data.source.encoding` is not a text encoding"),
    (lambda r: r["data"]["source"].update(encoding="hex"), "`data.source.encoding` is not a text encoding"),
])
def test_a_recorded_spec_or_encoding_edited_past_its_types_is_a_one_line_error(run_dir, tmp_path, capsys, edit,
                                                                               said):
    damaged = _copy_checkpoint(run_dir, tmp_path / "damaged", edit)
    assert main(["eval", str(damaged), "--batches", "1"]) == 1
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err


def test_a_recorded_spec_that_its_own_text_checks_to_but_does_not_build_is_nldsl_s_error(run_dir, monkeypatch):
    # the failure is not blamed on the record when its spec is the very one its text checks to
    from nldsl import loader

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(loader, "build_model", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        E.load_model(run_dir, CPU)


def test_a_hand_made_stream_state_that_does_not_fit_is_a_one_line_error(run_dir, tmp_path, capsys):
    import json

    import safetensors.torch

    loaded = E.load_model(run_dir, CPU)
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16, keep_pending=True)
    good = tmp_path / "good.safetensors"
    E.save_stream_state(good, result.state, loaded.checkpoint.record["spec_sha256"], "c", None)
    tensors = safetensors.torch.load_file(good)
    with safetensors.safe_open(str(good), framework="pt") as handle:
        structure = json.loads(handle.metadata()["nldsl"])

    def variant(name: str, change) -> Path:
        changed_tensors, changed = dict(tensors), json.loads(json.dumps(structure))
        change(changed_tensors, changed)
        if "tensors_sha256" in changed:  # made by hand with its digest: the checks past the digest find it
            changed["tensors_sha256"] = E.state_tensors_sha256(changed_tensors)
        path = tmp_path / f"{name}.safetensors"
        safetensors.torch.save_file(changed_tensors, path, metadata={"nldsl": json.dumps(changed)})
        return path

    memory_key = next(key for key in tensors if key.startswith("memory"))
    slow_key = next(key for key in tensors if key.startswith("slow"))
    cases = {
        "position": (lambda t, s: s.update(position="x"), "position"),
        "no-spec": (lambda t, s: s.pop("spec_sha256"), "names no spec"),
        "not-a-dict": (lambda t, s: s.clear() or s.update(format="nldsl-stream-state/1", spec_sha256=None),
                       "names no spec"),
        "missing-tensor": (lambda t, s: t.pop(memory_key), "corrupt stream state"),
        "memory-shape": (lambda t, s: t.update({memory_key: torch.zeros(3, 5)}), "does not fit this model"),
        "slow-shape": (lambda t, s: t.update({slow_key: torch.zeros(7)}), "does not fit this model"),
        "pending": (lambda t, s: t.update({"pending": torch.zeros(2, 2)}), "pending tokens"),
        "vocabulary": (lambda t, s: t.update({"pending": torch.tensor([1, 999])}), "vocabulary"),
        "no-memory-entry": (lambda t, s: s.pop("memory"), "holds no `memory` entry"),  # was a fresh memory
        "memory-none": (lambda t, s: s.update(memory=None), "tokens but holds no memory"),
    }
    for name, (change, message) in cases.items():
        path = variant(name, change)
        assert main(["stream", str(run_dir), "--state-in", str(path), "--max-tokens", "40"]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and err.count("\n") == 1, (name, err)
    capsys.readouterr()
    assert main(["stream", str(run_dir), "--state-in", str(good), "--max-tokens", "40"]) == 0
    assert "\r" not in capsys.readouterr().err, "no progress bar where stderr is no terminal (a log)"


def test_a_prompt_that_is_not_utf8_and_an_unusable_device_are_one_line_errors(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "abc\udcff", "--tokens", "1"]) == 1
    assert "--prompt is not valid UTF-8" in capsys.readouterr().err
    for command in ("eval", "generate", "stream"):
        assert main([command, str(run_dir), "--device", "meta"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --device meta") and err.count("\n") == 1


def test_the_warning_that_the_validation_text_differs_goes_to_stderr(run_dir, capsys):
    import json

    record = json.loads(sorted((run_dir / "checkpoints").glob("step-*"))[-1].joinpath("record.json").read_text())
    record["data"]["validation_sha256"] = "0" * 64
    E.validation_documents(record)
    out, err = capsys.readouterr()
    assert "validation text differs" in err and out == ""


@pytest.mark.skipif(shutil.which("nldsl") is None, reason="the nldsl console script is not installed")
def test_the_console_script_finds_the_benchmark_suite_from_the_repository_root():
    # a console script, unlike `python -m`, does not put the working folder on sys.path
    result = subprocess.run(["nldsl", "bench", "speed", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout


def test_a_stream_state_of_other_weights_is_refused(run_dir, text_file, tmp_path, capsys, one_thread):
    """The same spec trained again (here: one more step from the same start) is another model: the
    state's memory and slow levels grew from the first one's weights and must not continue it."""
    state = tmp_path / "state.safetensors"
    assert main(["stream", str(run_dir), "--data", str(text_file), "--max-tokens", "64", "--no-progress",
                 "--state-out", str(state)]) == 0
    other = tmp_path / "other"
    assert main(["train", str(run_dir / "spec.nl"), "--data", str(text_file), "--run-dir", str(other),
                 "--no-compile", "--no-progress", "--init-from", str(run_dir), "--set", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main(["stream", str(other), "--data", str(text_file), "--max-tokens", "64", "--no-progress",
                 "--state-in", str(state)]) == 1
    assert "was written by a stream of other weights" in capsys.readouterr().err
    assert main(["stream", str(run_dir), "--data", str(text_file), "--max-tokens", "64", "--no-progress",
                 "--state-in", str(state)]) == 0  # its own model continues it


def test_generated_control_characters_reach_a_terminal_escaped():
    assert E.terminal_safe("a\x1b[31mb\tc\nd\x7f\x9b é") == "a\\x1b[31mb\tc\nd\\x7f\\x9b é"


def test_a_run_whose_data_moved_is_told_to_pass_data(tmp_path):
    record = {"data": {"source": {"kind": "files", "paths": [str(tmp_path / "moved.txt")], "encoding": "utf-8"}}}
    with pytest.raises(UserError, match=r"moved\.txt does not exist: .*pass --data"):
        E.validation_documents(record)


def test_eval_needs_no_optimizer_state_and_follows_the_latest_pointer(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (C.latest_checkpoint(copy) / C.TRAINING_FILE).unlink()  # the optimizer and RNG state: eval reads neither
    assert main(["eval", str(copy / C.CHECKPOINTS / C.LATEST), "--batches", "1"]) == 0
    assert "loss" in capsys.readouterr().out


def test_a_checkpoint_pruned_while_it_is_read_gives_way_to_the_newer_one(run_dir, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    real, replaced = C.read_record, []

    def pruned_while_read(path: Path) -> dict:
        if not replaced:  # a training run saves a newer checkpoint and prunes this one meanwhile
            newer = path.parent / C.checkpoint_name(999)
            shutil.copytree(path, newer)
            C.point_latest_at(newer)
            shutil.rmtree(path)
            replaced.append(newer)
        return real(path)

    monkeypatch.setattr(C, "read_record", pruned_while_read)
    assert C.load_checkpoint(copy).path == replaced[0]


def test_a_nested_stream_state_without_its_position_says_why_it_is_refused():
    weights = torch.zeros(2)
    found = E._state_mismatch({"fast": weights}, {"fast": weights, "_position": 0}, "memory.0.c")
    assert found is not None and "carries no stream position" in found


def test_a_trained_run_loads_from_python(run_dir):
    """`nldsl.load_run` gives what eval uses: the run's weights, tokenizer, spec and checkpoint; a run
    folder given to `nldsl.load` (which builds a spec) says where to go instead."""
    import nldsl

    run = nldsl.load_run(run_dir)
    saved = C.load_checkpoint(run_dir, training=False).model
    assert all(torch.equal(tensor, saved[name]) for name, tensor in run.model.state_dict().items())
    assert run.checkpoint.record["step"] == 4 and run.spec.model.dim == 16
    tokens = torch.as_tensor(run.tokenizer.encode("class Thing")).reshape(1, -1)
    assert run.model(tokens).shape == (1, tokens.shape[1], 256)
    assert run.model.spec is run.spec and run.model.module is run.module  # as nldsl.load's model carries them
    assert "module" not in vars(run.model)  # on the class: a module object would make the model uncopyable
    copy.deepcopy(run.model)
    assert re.fullmatch(r"LoadedModel\('.*', step 4, [\d,]+ parameters, bytes tokenizer, on cpu, from '.*'\)",
                        repr(run)), "one line, not every weight (a notebook printed 730 lines)"
    with pytest.raises(IsADirectoryError, match=r"nldsl\.load_run"):
        nldsl.load(run_dir)
    with pytest.raises(C.CheckpointError, match="no run or checkpoint at"):
        nldsl.load_run(run_dir / "nowhere")
    with pytest.raises(ValueError, match=r"^device meta: nldsl runs on cpu, cuda or mps devices, not meta$"):
        nldsl.load_run(run_dir, device="meta")  # worded for Python, not for the command line's --device


def test_stream_says_when_nothing_in_the_model_learns_from_it(run_dir, text_file, tmp_path, capsys):
    spec = tmp_path / "plain.nl"
    spec.write_text("model { vocab = 256\n dim = 16\n layers = 1\n block { attention { heads = 2 }\n mlp { } } }\n"
                    "train { steps = 2\n batch = 2\n seq_len = 16\n warmup = 0 }\n")
    assert main(["train", str(spec), "--data", str(text_file), "--run-dir", str(tmp_path / "run"), "--no-compile",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["stream", str(tmp_path / "run"), "--data", str(text_file), "--max-tokens", "64",
                 "--no-progress"]) == 0
    assert "note: nothing in this model learns from the stream" in capsys.readouterr().out
    assert main(["stream", str(tmp_path / "run"), "--data", str(text_file), "--max-tokens", "64", "--no-progress",
                 "--no-learn"]) == 0
    assert "note: --no-learn freezes the levels on the continuum clock, and this model has none" in \
        capsys.readouterr().out
    assert main(["stream", str(run_dir), "--data", str(text_file), "--max-tokens", "64", "--no-progress"]) == 0
    assert "nothing in this model learns" not in capsys.readouterr().out
    assert main(["stream", str(run_dir), "--data", str(text_file), "--max-tokens", "64", "--no-progress",
                 "--no-learn"]) == 0
    assert "--no-learn freezes" not in capsys.readouterr().out


def test_stream_runs_a_nested_cms_whose_slowest_level_never_moves(text_file, tmp_path, capsys):
    """A slower nested level past train.seq_len is read by nothing (W0706): it was still on the
    continuum clock, and stream's backward then asked for a gradient nothing computes (an internal
    error at any length)."""
    spec = tmp_path / "nested.nl"
    spec.write_text("model { dim = 16\n layers = 1\n block { attention { heads = 2 }\n cms { variant = nested\n"
                    " level fast { period = 4 }\n level mid { period = 16; lr = 0.5 }\n"
                    " level slow { period = 64; lr = 0.5 } } } }\n"
                    "train { steps = 2\n batch = 2\n seq_len = 32\n warmup = 0 }\n")
    assert main(["train", str(spec), "--data", str(text_file), "--run-dir", str(tmp_path / "run"), "--no-compile",
                 "--no-progress"]) == 0
    from nldsl import loader

    assert loader.compile_module(loader.check(spec)).CLOCK_STEPS == {}
    capsys.readouterr()
    assert main(["stream", str(tmp_path / "run"), "--data", str(text_file), "--max-tokens", "100",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "internal error" not in out and "bits per byte" in out


def test_stream_notes_a_segment_that_cuts_in_context_chunks_or_passes_seq_len(run_dir, text_file, capsys):
    common = ["--data", str(text_file), "--max-tokens", "64", "--no-progress"]
    assert main(["stream", str(run_dir), *common]) == 0  # the default segment, train.seq_len = 16
    assert "note: a segment" not in capsys.readouterr().out
    assert main(["stream", str(run_dir), "--segment", "12", *common]) == 0  # lmm's period 4 divides it, fast's 8 not
    out = capsys.readouterr().out
    assert ("note: a segment of 12 tokens is not a multiple of the in-context period(s) 8: each segment ends a "
            "chunk early, so the losses differ from a stream cut at chunk boundaries (--segment 8 cuts none)") in out
    assert main(["stream", str(run_dir), "--segment", "44", *common]) == 0
    out = capsys.readouterr().out
    assert "(--segment 40 cuts none)" in out
    assert "note: a segment of 44 tokens is longer than the 16 tokens the model was trained on" in out


@pytest.mark.parametrize(("segment", "note"), [
    (64, None),
    (32, "the memory-as-context segment(s) 64: each segment ends a context segment early, so the losses differ "
         "from a stream cut at segment boundaries (--segment 64 cuts none)"),
    (24, "the in-context period(s) 16 or the memory-as-context segment(s) 64: each segment ends chunks and segments "
         "early, so the losses differ from a stream cut at chunk and segment boundaries (--segment 64 cuts none)"),
])
def test_stream_notes_a_segment_that_cuts_a_memory_as_context_segment(capsys, segment, note):
    """Titans MAC retrieves from its memory once per segment (64 tokens in specs/titans_mac.nl, whose
    memory's period is 16): a stream segment of 32 divides the period yet cuts each context segment (at
    width 32 and one layer, 128 tokens in two calls cut at token 32 read 1.0 apart from one call,
    relative; cut at 64 they agree exactly)."""
    from nldsl.runtime.commands import _note_segment

    _note_segment(loader.check(REPO / "specs" / "titans_mac.nl").spec, segment)
    out = capsys.readouterr().out
    assert (f"note: a segment of {segment} tokens is not a multiple of {note}" in out) if note else not out


# From a mutation audit of generate, stream and the command line ---------------------------------------

class FixedLogits(torch.nn.Module):
    """Every position predicts the same logits over 256 bytes; records the contexts it is given."""

    def __init__(self, weights: list[float]):
        super().__init__()
        self.logits = torch.full((256,), -1e4)
        for index, weight in enumerate(weights):  # byte `a` + index gets log weight
            self.logits[ord("a") + index] = math.log(weight)
        self.seen: list[list[int]] = []

    def forward(self, tokens):
        self.seen.append(tokens[0].tolist())
        return self.logits.expand(tokens.shape[0], tokens.shape[1], -1)


def sampled(model: FixedLogits, count: int, temperature: float, top_k: int, seed: int = 0, prompt: str = "x",
            seq_len: int = 16) -> str:
    return E.generate(model, D.ByteTokenizer(), prompt, count, temperature, top_k, seed, seq_len, CPU)


def test_sampling_draws_from_the_softmax_of_the_logits_over_the_temperature():
    from collections import Counter

    weights, draws = [1.0, 2.0, 4.0, 8.0], 4000
    for temperature in (1.0, 0.5, 2.0):
        counts = Counter(sampled(FixedLogits(weights), draws, temperature, 0))
        expected = torch.tensor(weights, dtype=torch.float64) ** (1 / temperature)
        expected /= expected.sum()
        for letter, probability in zip("abcd", expected.tolist(), strict=True):
            assert abs(counts[letter] / draws - probability) < 0.03, (temperature, counts)


def test_top_k_samples_among_exactly_the_k_likeliest_tokens():
    for k in (1, 2, 3):
        assert set(sampled(FixedLogits([1.0, 1.5, 2.0, 3.0, 4.0]), 600, 1.0, k)) == set("edcba"[:k]), k


def test_the_seed_chooses_the_sample_and_the_context_is_the_last_seq_len_tokens():
    uniform = FixedLogits([1.0] * 16)
    assert sampled(uniform, 30, 1.0, 0, seed=1) == sampled(uniform, 30, 1.0, 0, seed=1)
    assert sampled(uniform, 30, 1.0, 0, seed=1) != sampled(uniform, 30, 1.0, 0, seed=2)
    recorder = FixedLogits([1.0])
    sampled(recorder, 10, 0.0, 0, prompt="0123456789", seq_len=4)
    assert recorder.seen[0] == list(b"6789") and recorder.seen[-1] == list(b"aaaa")


def test_stream_parts_span_their_segments():
    segments = [E.Segment(0, 16, 1.0, 16), E.Segment(16, 16, 1.0, 16), E.Segment(32, 7, 1.0, 7)]
    assert [(first, last) for first, last, _, _ in E.stream_parts(segments, 3)] == [(0, 16), (16, 32), (32, 39)]


def test_a_text_of_whole_segments_is_fed_whole_when_the_state_is_kept(run_dir):
    loaded = E.load_model(run_dir, CPU)
    result = E.stream(loaded, loaded.tokenizer.encode("x" * 33), 16, keep_pending=True)  # 2 × 16 and a target
    assert [s.tokens for s in result.segments] == [16, 16] and result.state.pending.tolist() == [ord("x")]


def streamed(run_dir: Path, text_file: Path, capsys, *more: str) -> tuple[int, str]:
    status = main(["stream", str(run_dir), "--data", str(text_file), "--no-progress", "--segment", "16", *more])
    return status, capsys.readouterr().out


def test_stream_max_tokens_predicts_that_many_and_state_out_keeps_the_rest(run_dir, text_file, tmp_path, capsys):
    status, out = streamed(run_dir, text_file, capsys, "--max-tokens", "40")
    assert status == 0 and "streamed 40 tokens" in out
    status, out = streamed(run_dir, text_file, capsys, "--max-tokens", "40", "--state-out", str(tmp_path / "s"))
    assert status == 0 and "streamed 32 tokens" in out and "position 32; 9 token(s) wait" in out


def test_stream_no_learn_takes_no_sgd_step(run_dir, text_file, capsys):
    status, out = streamed(run_dir, text_file, capsys, "--max-tokens", "200")
    assert status == 0 and re.search(r"cms\.slow: [1-9]\d* SGD step", out)
    status, out = streamed(run_dir, text_file, capsys, "--max-tokens", "200", "--no-learn")
    assert status == 0 and not re.search(r": [1-9]\d* SGD step", out)


def test_an_interrupted_stream_exits_130(run_dir, text_file, capsys, monkeypatch):
    real = E.stream

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.stopped = "interrupted (Ctrl-C) after 16 tokens"
        return result

    monkeypatch.setattr(E, "stream", interrupted)
    assert streamed(run_dir, text_file, capsys, "--max-tokens", "32")[0] == 130


def test_eval_under_a_two_process_torchrun_is_refused_on_the_first_process(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["eval", str(run_dir)]) == 1
    assert "runs in one process" in capsys.readouterr().err


def test_the_generate_command_seed_chooses_the_sample(run_dir, capsys):
    command = ["generate", str(run_dir), "--prompt", "class ", "--tokens", "40", "--temperature", "1", "--top-k", "0"]
    outputs = []
    for seed in ("1", "2"):
        assert main([*command, "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] != outputs[1]


@pytest.mark.parametrize(("error", "status"), [
    ("sigterm", 143), (BrokenPipeError(32, "Broken pipe"), 0), (ValueError("boom"), 3)])
def test_exit_status_of_a_sigterm_a_closed_pipe_and_an_internal_error(monkeypatch, capsys, error, status):
    from nldsl import cli
    from nldsl.runtime.interrupt import Terminated

    monkeypatch.delenv("NLDSL_DEBUG", raising=False)

    def fails(args):
        raise Terminated() if error == "sigterm" else error

    monkeypatch.setattr(cli, "cmd_explain", fails)
    assert main(["explain", "E0101"]) == status


def test_the_loaded_module_is_the_compiled_one(capsys):
    import nldsl

    spec = REPO / "specs/linear_attention.nl"
    assert main(["compile", str(spec)]) == 0
    assert nldsl.load(spec).module.__source__ == capsys.readouterr().out


@pytest.mark.parametrize("option", [["--seed", str(2**63 - 1)], ["--top-k", "0"], ["--tokens", "0"],
                                    ["--temperature", "0"]])
def test_generate_takes_its_documented_bounds(option):
    from nldsl.cli import build_parser

    assert build_parser().parse_args(["generate", "run", *option]).runtime_command == "generate"


def test_argument_bounds():
    import argparse

    from nldsl.cli import build_parser
    from nldsl.runtime.arguments import at_least, positive_float

    for seed in (str(2**63), "-1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["generate", "run", "--seed", seed])
    assert at_least(1, most=10)("10") == 10
    with pytest.raises(argparse.ArgumentTypeError):
        at_least(1, most=10)("11")
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float("0")


def test_a_stream_continued_without_data_goes_on_with_the_validation_split(run_dir, text_file, tmp_path, capsys):
    """The default text is the run's validation split: a state that read part of it continues it (a
    researcher's audit found the second half fed the split from its start again, labelled as if it
    went on), and a state that read other text starts the split afresh, with a note."""
    def run(*more: str) -> str:
        assert main(["stream", str(run_dir), "--no-progress", "--segment", "16", *more]) == 0
        return capsys.readouterr().out

    whole, half, rest = tmp_path / "whole", tmp_path / "half", tmp_path / "rest"
    run("--max-tokens", "64", "--state-out", str(whole))
    run("--max-tokens", "32", "--state-out", str(half))
    out = run("--max-tokens", "32", "--state-in", str(half), "--state-out", str(rest))
    assert "of the run's validation split from its token 33 in 2 segments" in out, out
    one, two = (E.load_stream_state(path, *_sha_and_weights(run_dir), CPU) for path in (whole, rest))
    assert one.position == two.position == 64 and (one.validation_read, two.validation_read) == (65, 66)
    assert all(torch.equal(a, b) for a, b in zip(flat(one.memory), flat(two.memory), strict=True))

    other = tmp_path / "other"
    run("--data", str(text_file), "--max-tokens", "32", "--state-out", str(other))
    assert E.load_stream_state(other, *_sha_and_weights(run_dir), CPU).validation_read is None
    assert "read other text (--data), so this one streams the run's validation split from its start" in run(
        "--max-tokens", "16", "--state-in", str(other))
    # a state written before the count was kept says nothing of its text: not taken as --data text (a review)
    older = tmp_path / "older"
    state = E.load_stream_state(half, *_sha_and_weights(run_dir), CPU)
    state.validation_read = None
    E.save_stream_state(older, state, *_sha_and_weights(run_dir)[:1], "checkpoint", _sha_and_weights(run_dir)[1])
    _drop_from_header(older, "validation_read")
    assert E.load_stream_state(older, *_sha_and_weights(run_dir), CPU).validation_read == E.UNKNOWN_READ
    assert "does not say which text it read" in run("--max-tokens", "16", "--state-in", str(older))


def _drop_from_header(path: Path, key: str) -> None:
    """Rewrite a stream state without `key` in its JSON structure, as an older nldsl wrote it."""
    import json

    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        structure = json.loads(handle.metadata()["nldsl"])
    del structure[key]
    path.write_bytes(safetensors.torch.save(tensors, metadata={"nldsl": json.dumps(structure)}))


def _sha_and_weights(run_dir: Path) -> tuple[str, str | None]:
    record = E.load_model(run_dir, CPU).checkpoint.record
    return record["spec_sha256"], record.get("files", {}).get("model.safetensors")


def test_a_sigterm_stops_a_stream_as_ctrl_c_does_and_its_state_is_saved(run_dir, text_file, tmp_path, capsys,
                                                                         monkeypatch):
    """`timeout` or a scheduler's SIGTERM ended `nldsl stream` where it stood and --state-out saved
    nothing (a continual-learning researcher's audit): it stops after the segment, saves, exits 143."""
    import signal

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process handles SIGTERM itself")
    real_load = E.load_model
    monkeypatch.setattr(E, "load_model", lambda *a, **k: _signalled_in_segment(real_load(*a, **k), 2, signal.SIGTERM))
    state = tmp_path / "s.state"
    status = main(["stream", str(run_dir), "--data", str(text_file), "--no-progress", "--segment", "16",
                   "--max-tokens", "64", "--state-out", str(state)])
    assert status == 143 and "interrupted (SIGTERM) after 32 tokens" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert E.load_stream_state(state, *_sha_and_weights(run_dir), CPU).position == 32


def test_a_stream_state_whose_checkpoint_was_pruned_says_so(run_dir, tmp_path):
    """A run that trained on pruned the checkpoint a state was streamed with: the refusal said to
    continue with that checkpoint, which was gone (a continual-learning researcher's audit)."""
    loaded = E.load_model(run_dir, CPU)
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16, keep_pending=True)
    path = tmp_path / "state.safetensors"
    E.save_stream_state(path, result.state, "sha", str(tmp_path / "run" / "step-000010"), "old weights")
    with pytest.raises(UserError, match=r"step-000010, which no longer exists .* raise train\.keep_checkpoints"):
        E.load_stream_state(path, "sha", "new weights", CPU)
    E.save_stream_state(path, result.state, "sha", str(run_dir), "old weights")
    with pytest.raises(UserError, match="continue it with that checkpoint"):
        E.load_stream_state(path, "sha", "new weights", CPU)


def test_a_run_left_out_or_taken_by_data_is_named(run_dir, text_file, capsys):
    """`nldsl stream --data f.txt RUN`: --data took the run too, and argparse said only that
    RUN_DIR|CHECKPOINT was required (a continual-learning researcher's audit)."""
    assert main(["stream", "--data", str(text_file), str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: name the run: `nldsl stream RUN_DIR …`; --data takes every word after it (")
    assert "put RUN_DIR before --data or end the files with --" in err
    assert main(["eval"]) == 1 and capsys.readouterr().err == "error: name the run: `nldsl eval RUN_DIR …`\n"


def test_a_stream_baseline_scores_each_segment_from_a_fresh_state_with_the_weights_of_then(run_dir):
    """`--baseline`: each segment's fresh score is the model's loss on that segment alone from its
    initial memory, with the slow levels' weights as the stream has stepped them by then; asking
    for it changes nothing of the stream itself."""
    text = "".join(f"z{i} = {i * 5 % 23}\n" for i in range(40))
    plain_model = E.load_model(run_dir, CPU)
    plain = E.stream(plain_model, plain_model.tokenizer.encode(text), 16)
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode(text)
    weights_then: list[dict[str, torch.Tensor]] = []
    real_forward = loaded.model.forward

    def recording(inputs, targets=None, **kwargs):  # the weights each fresh call sees
        if "state" not in kwargs:
            weights_then.append({n: p.detach().clone() for n, p in loaded.model.named_parameters()})
        return real_forward(inputs, targets, **kwargs)

    loaded.model.forward = recording
    result = E.stream(loaded, tokens, 16, baseline=True)
    assert sum(result.updates.values()) > 0, "the slow levels must step for the test to mean anything"
    assert [(s.start, s.nats) for s in result.segments] == [(s.start, s.nats) for s in plain.segments]
    assert result.segments[0].fresh_nats == pytest.approx(result.segments[0].nats, rel=1e-6)  # both start fresh
    fresh = E.load_model(run_dir, CPU)
    for segment, weights in zip(result.segments, weights_then, strict=True):
        fresh.model.load_state_dict(weights)
        inputs = tokens[segment.start:segment.start + segment.tokens].unsqueeze(0)
        targets = tokens[segment.start + 1:segment.start + segment.tokens + 1].unsqueeze(0)
        with torch.no_grad():
            nats = F.cross_entropy(fresh.model(inputs)[0], targets[0], reduction="sum").item()
        assert segment.fresh_nats == pytest.approx(nats, rel=1e-6), segment.start
    assert any(s.fresh_nats != pytest.approx(s.nats, rel=1e-3) for s in result.segments[1:])


def test_stream_cli_baseline_prints_the_fresh_columns_and_the_difference(run_dir, text_file, capsys):
    status, out = streamed(run_dir, text_file, capsys, "--max-tokens", "128", "--baseline")
    assert status == 0
    assert re.search(r"part +tokens +loss +bpb +fresh loss +fresh bpb", out), out
    carried, fresh = map(float, re.search(r"bits per byte over the stream: (\d+\.\d+) with the memory carried, "
                                          r"(\d+\.\d+) from a fresh state per segment \(carrying it (saves|costs) ",
                                          out).groups()[:2])
    rows = [line.split() for line in out.splitlines() if re.match(r" +\d+ +\d", line)]
    assert len(rows) == 4 and all(len(row) == 6 for row in rows)
    status, plain = streamed(run_dir, text_file, capsys, "--max-tokens", "128")
    assert "fresh" not in plain
    assert f"{carried:.4f}" != f"{fresh:.4f}"


def test_a_slow_levels_stream_step_does_not_depend_on_the_segment_length(run_dir):
    """Segments of 8 and 16 tokens cut no in-context chunk (periods 4 and 8), so the stream's losses
    are the same; the slow level (period 48) then takes the same steps: each segment adds its summed
    loss's gradient over train.seq_len, not its mean's (which made a step twice as large at half the
    segment length)."""
    tokens = torch.randint(0, 256, (97,), generator=torch.Generator().manual_seed(0))
    weights, nats = {}, {}
    for segment in (8, 16):
        loaded = E.load_model(run_dir, CPU)
        result = E.stream(loaded, tokens, segment)
        assert result.updates["cms.slow_"] == 2
        weights[segment] = {k: v for k, v in result.state.slow_weights.items() if ".slow_" in k}
        nats[segment] = sum(s.nats for s in result.segments)
    assert nats[8] == pytest.approx(nats[16], rel=1e-5)
    start = E.load_model(run_dir, CPU).checkpoint.model
    for name, value in weights[16].items():
        assert not torch.equal(value, start[name])
        torch.testing.assert_close(weights[8][name], value, rtol=1e-4, atol=1e-6)


def test_slow_lr_sets_a_slow_levels_stream_step_and_refuses_what_it_cannot_set(run_dir, capsys):
    """--slow-lr: one stream step of `cms.slow` (48 tokens, before any other step changes its
    gradient) moves it by the lr given, twice the spec's moving it twice as far; a name no slow level
    has, and the flag beside --no-learn, are refused (a clock-stepped level's lr was the spec's only)."""
    loaded = E.load_model(run_dir, CPU)
    tokens = loaded.tokenizer.encode("".join(f"w{i} = {i * 3 % 17}\n" for i in range(40)))[:49]
    [slow] = [level for level in E.slow_levels(loaded, 16) if level.prefix == "cms.slow_"]
    start = {name: loaded.checkpoint.model[name] for name, _ in slow.parameters}
    default = E.stream(loaded, tokens, 16)
    doubled = E.stream(loaded, tokens, 16, slow_lrs={"cms.slow": 2 * slow.lr})
    assert default.updates["cms.slow_"] == doubled.updates["cms.slow_"] == 1
    for name, first in start.items():
        torch.testing.assert_close(doubled.state.slow_weights[name] - first,
                                   2 * (default.state.slow_weights[name] - first), rtol=1e-4, atol=2e-7)  # float32
    assert max(float((default.state.slow_weights[n] - first).abs().max()) for n, first in start.items()) > 1e-4
    frozen = E.stream(loaded, tokens, 16, slow_lrs={"cms.slow": 0.0})
    assert all(torch.equal(frozen.state.slow_weights[name], first) for name, first in start.items())
    with pytest.raises(UserError, match=r"--slow-lr names `cms.fast`, which is no slow level of this model \(the "
                       r"levels on the continuum clock: `cms.slow`, `cms.outer`\)"):
        E.stream(loaded, tokens, 16, slow_lrs={"cms.fast": 0.1})
    assert main(["stream", str(run_dir), "--no-learn", "--slow-lr", "cms.slow=0.1", "--no-progress"]) == 1
    assert "--slow-lr sets how the slow levels learn from the stream, and --no-learn freezes them" in \
        capsys.readouterr().err
    assert main(["stream", str(run_dir), "--max-tokens", "40", "--slow-lr", "cms.outer=0.25", "--no-progress"]) == 0
    assert "slow level cms.outer: 0 SGD step(s) from the stream at lr 0.25 (--slow-lr)" in capsys.readouterr().out

"""Edges of the stream, evaluation, checkpoint and continuum-clock code that no test pinned before a
mutation round of nldsl/runtime/{evaluate,checkpoint,clock,commands}.py (90 mutants, 1 equivalent, 19
survivors): bits per byte over the bytes of the predicted tokens, a stream's detached memory, its
stop at an infinite loss and its frozen model afterwards, the checks of a stream state and of a
checkpoint record, the `latest` pointer, and the clock's parameter prefixes. Each test fails with one
of the survivors. The tiny run (`killer_run`) is trained once for the module, as tests/test_commands.py's
`run_dir` is.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_commands import CLOCK_SPEC, tiny_text, train_tiny

from nldsl.cli import UserError, main
from nldsl.runtime import checkpoint as C
from nldsl.runtime import data as D
from nldsl.runtime import evaluate as E

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    return tiny_text(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def killer_run(tmp_path_factory, text) -> Path:
    return train_tiny(tmp_path_factory.mktemp("run"), CLOCK_SPEC, text)


def test_bits_per_byte_divides_by_bytes_not_tokens():
    """evaluate.py evaluation_from_sums: bpb = nats / ln 2 / bytes (a BPE token stands for several
    bytes; every existing test uses byte tokens, where tokens == bytes)."""
    evaluation = E.evaluation_from_sums(nats=30.0, tokens=10, byte_count=40, windows=2)
    assert evaluation.loss == pytest.approx(3.0)
    assert evaluation.bits_per_byte == pytest.approx(30.0 / math.log(2) / 40)
    assert (evaluation.tokens, evaluation.bytes, evaluation.windows) == (10, 40, 2)


class _Uniform(torch.nn.Module):
    """Logits of zeros over a vocabulary of `vocab`: every token costs ln(vocab) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens, targets=None, state=None, return_state=False):
        logits = torch.zeros(*tokens.shape, self.vocab)
        return (logits, state) if return_state else logits


def test_evaluate_counts_the_bytes_of_the_predicted_tokens():
    """evaluate.py evaluate: the bytes are those of the targets (the predicted tokens), not of the
    inputs; with byte tokens (all the existing tests) both are one per token."""
    vocab, seq_len = 8, 4
    tokens = torch.tensor([0, 0, 0, 0, 7, 7, 7, 7, 7], dtype=torch.int32)  # two windows of 4 + 1
    token_bytes = torch.arange(1, vocab + 1, dtype=torch.int64)  # token i stands for i + 1 bytes
    nats, count, byte_count, windows = E.evaluate(_Uniform(vocab), D.TokenText(tokens, token_bytes), seq_len,
                                                  batch=1, limit=None, device=CPU)
    assert (count, windows) == (8, 2)
    assert nats == pytest.approx(8 * math.log(vocab))
    assert byte_count == 3 * 1 + 5 * 8  # targets 0 0 0 7 | 7 7 7 7; the inputs' would be 4 * 1 + 4 * 8


class _Bytes(torch.nn.Module):
    """A byte model that predicts the bytes of `cycle` in turn (greedy): the logits favour
    cycle[len(context) - prompt % len(cycle)]."""

    def __init__(self, cycle: list[int], prompt_length: int):
        super().__init__()
        self.cycle, self.prompt_length = cycle, prompt_length

    def forward(self, tokens, targets=None):
        logits = torch.zeros(*tokens.shape, 256)
        count = tokens.shape[1] - self.prompt_length  # tokens generated so far (the context is never cut here)
        logits[..., self.cycle[count % len(self.cycle)]] = 10.0
        return logits


def test_generate_pieces_never_show_half_a_utf8_sequence_and_join_to_the_text():
    """evaluate.py generate_pieces: a trailing incomplete UTF-8 sequence waits for the next token
    (dropping the rstrip shows U+FFFD that the next token would have completed)."""
    model = _Bytes([0xC3, 0xA9], prompt_length=1)  # "é" = C3 A9, one byte at a time
    pieces = list(E.generate_pieces(model, D.ByteTokenizer(), "x", 4, 0.0, 0, 0, 64, CPU))
    assert "".join(pieces) == "éé" and pieces == ["é", "é"]


def test_generate_pieces_yield_a_trailing_incomplete_sequence_at_the_end():
    """evaluate.py generate_pieces: the last piece holds what is left (an incomplete UTF-8 tail)."""
    model = _Bytes([0xC3], prompt_length=1)  # lead bytes only: never a whole character
    pieces = list(E.generate_pieces(model, D.ByteTokenizer(), "x", 3, 0.0, 0, 0, 64, CPU))
    assert "".join(pieces) == bytes([0xC3] * 3).decode("utf-8", errors="replace") != ""


def test_a_stream_whose_loss_is_infinite_stops_before_applying_it(killer_run):
    """evaluate.py stream: `math.isfinite`, not only NaN: a loss of +inf (a target given probability 0)
    must stop the stream before its gradient reaches the slow levels."""
    loaded = E.load_model(killer_run, CPU)
    forward = loaded.model.forward

    def impossible_targets(inputs, targets=None, **kwargs):
        out = forward(inputs, targets, **kwargs)
        logits, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        if targets is not None:
            logits = logits.scatter(-1, targets.unsqueeze(-1), float("-inf"))
        return (logits, *rest) if rest is not None else logits

    loaded.model.forward = impossible_targets
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16)
    assert result.segments == [] and result.state.position == 0
    assert result.stopped is not None and "the loss is inf" in result.stopped


@pytest.fixture(scope="module")
def killer_run_two_layers(tmp_path_factory, text) -> Path:
    """As `killer_run` with two layers: block 1's memory then depends on block 0's slow levels."""
    return train_tiny(tmp_path_factory.mktemp("run2"), CLOCK_SPEC.replace("layers = 1", "layers = 2"), text)


def test_a_learning_stream_carries_its_memory_cut_from_the_graph(killer_run_two_layers):
    """evaluate.py stream: `memory = detach_state(new_memory)`. Where a later block's memory depends on
    an earlier block's slow level, a carried memory still in the graph sends each segment's backward
    into the previous segment's freed graph (or its gradient into earlier segments)."""
    loaded = E.load_model(killer_run_two_layers, CPU)
    tokens = loaded.tokenizer.encode("".join(f"y{i} = {i * 7 % 31}\n" for i in range(20)))[:16 * 4 + 1]
    result = E.stream(loaded, tokens, 16)
    assert [s.tokens for s in result.segments] == [16] * 4 and result.stopped is None
    leaves = [t for t in _flat(result.state.memory) if t.is_floating_point()]
    assert leaves and not any(t.requires_grad or t.grad_fn is not None for t in leaves)


def _flat(value) -> list[torch.Tensor]:
    from nldsl.runtime.memory import MemoryState

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, MemoryState):
        return _flat(value.weights) + _flat(value.momentum)
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat(item)]
    return []


def test_a_stream_leaves_the_model_frozen_with_no_gradients(killer_run):
    """evaluate.py stream: after a learning stream the slow levels are frozen again and hold no
    gradient (a Python caller of `nldsl.load_run` runs the model afterwards as loaded)."""
    loaded = E.load_model(killer_run, CPU)
    tokens = loaded.tokenizer.encode("".join(f"y{i} = {i}\n" for i in range(20)))[:16 * 4 + 1]
    result = E.stream(loaded, tokens, 16)
    assert sum(result.updates.values()) > 0
    assert not any(p.requires_grad or p.grad is not None for p in loaded.model.parameters())


def _hand_made_state(loaded, tmp_path: Path, name: str, change) -> Path:
    """A state of `loaded` saved, then changed by `change(tensors, structure)` with its digest renewed."""
    import json

    import safetensors
    import safetensors.torch

    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16, keep_pending=True)
    good = tmp_path / f"good-{name}.safetensors"
    E.save_stream_state(good, result.state, loaded.checkpoint.record["spec_sha256"], "c", None)
    tensors = safetensors.torch.load_file(good)
    with safetensors.safe_open(str(good), framework="pt") as handle:
        structure = json.loads(handle.metadata()["nldsl"])
    change(tensors, structure)
    structure["tensors_sha256"] = E.state_tensors_sha256(tensors)
    path = tmp_path / f"{name}.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"nldsl": json.dumps(structure)})
    return path


def test_stream_state_pending_tokens_that_are_floats_are_refused(killer_run, tmp_path):
    """evaluate.py load_stream_state: pending tokens must be integer ids; a float vector (a hand-made
    or damaged file) was silently truncated to ids by `.long()` in stream."""
    loaded = E.load_model(killer_run, CPU)
    path = _hand_made_state(loaded, tmp_path, "floats", lambda t, s: t.update({"pending": torch.tensor([1.7, 2.2])}))
    with pytest.raises(UserError, match="pending tokens are not a list of token ids"):
        E.load_stream_state(path, loaded.checkpoint.record["spec_sha256"], None, CPU)


def test_a_stream_state_whose_memory_has_another_dtype_does_not_fit(killer_run, tmp_path):
    """evaluate.py _state_mismatch: a memory tensor of the right shape but another dtype is refused."""
    loaded = E.load_model(killer_run, CPU)

    def to_double(tensors, structure):
        key = next(k for k, t in tensors.items() if k.startswith("memory") and t.is_floating_point())
        tensors[key] = tensors[key].double()

    path = _hand_made_state(loaded, tmp_path, "dtype", to_double)
    state = E.load_stream_state(path, loaded.checkpoint.record["spec_sha256"], None, CPU)
    with pytest.raises(UserError, match=r"does not fit this model: .*float64"):
        E.check_stream_state(loaded, state, path, 16)


def test_stream_state_out_of_a_text_shorter_than_a_segment_keeps_it_waiting(killer_run, tmp_path, capsys):
    """commands.py stream_command: with --state-out, a text too short for one segment is no error:
    its tokens wait in the state for the next text (exit 0), as the docs of --state-out say."""
    short = tmp_path / "short.txt"
    short.write_text("abcde")  # 5 tokens: no whole segment of 16
    state = tmp_path / "state.safetensors"
    assert main(["stream", str(killer_run), "--data", str(short), "--state-out", str(state), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "streamed 0 tokens" in out and "(position 0; 5 token(s) wait for the next text)" in out


def test_generate_command_passes_top_k_to_the_sampler(killer_run, capsys):
    """commands.py generate_command: --top-k reaches the sampler: top-k 1 at any temperature is greedy."""
    common = ["generate", str(killer_run), "--prompt", "class ", "--tokens", "24", "--seed", "1"]
    assert main([*common, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main([*common, "--temperature", "50", "--top-k", "1"]) == 0
    assert capsys.readouterr().out == greedy


def test_state_out_in_a_read_only_folder_is_refused_before_any_work(killer_run, tmp_path, capsys, monkeypatch):
    """commands.py _check_writable: a folder the process may not write is refused up front (the
    existing tests run as root, where chmod cannot make one, so `os.access` is answered here)."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k:
                        False if Path(path) == tmp_path and mode == os.W_OK else real_access(path, mode, *a, **k))

    def no_work(*_args, **_kwargs):
        raise AssertionError("the command ran before checking its options")

    monkeypatch.setattr(E, "stream", no_work)
    assert main(["stream", str(killer_run), "--state-out", str(tmp_path / "s.safetensors")]) == 1
    assert "is not writable" in capsys.readouterr().err


def _save(run_dir: Path, step: int, keep: int = 3) -> Path:
    model = {"w": torch.full((2, 2), float(step)), "b": torch.zeros(3)}
    return C.save_checkpoint(run_dir, step, model, {"clock.w": torch.ones(2)}, {"note": "test"}, keep)


def test_a_record_with_a_negative_step_is_damaged(tmp_path):
    """checkpoint.py read_record: the step is a count of steps, never negative (a record edited by hand
    and re-hashed, or written by something else, must not resume at step −1)."""
    import json

    path = _save(tmp_path, 1)
    record_file = path / C.RECORD_FILE
    record = json.loads(record_file.read_text())
    record["step"] = -1
    record[C.RECORD_DIGEST] = C.record_digest(record)  # consistent with itself: only the field check finds it
    record_file.write_text(json.dumps(record))
    with pytest.raises(C.CheckpointError, match="holds no step number"):
        C.read_record(path)


def test_a_latest_pointer_naming_a_path_outside_checkpoints_is_not_followed(tmp_path):
    """checkpoint.py _pointer_name: `latest` holds a bare `step-N` name; one with a `/`
    ("../step-000009") must not lead out of checkpoints/ to a folder the run never wrote there."""
    import shutil

    path = _save(tmp_path, 1)
    shutil.copytree(path, tmp_path / "step-000009")  # a complete-looking checkpoint outside checkpoints/
    (tmp_path / C.CHECKPOINTS / C.LATEST).write_text("../step-000009\n")
    with pytest.raises(C.CheckpointError, match="not a complete checkpoint"):
        C.latest_checkpoint(tmp_path)


def test_a_run_record_without_its_training_data_hash_is_damaged(tmp_path):
    """checkpoint.py check_run_record: a resume compares `data.train_sha256` (train.py); a record
    without it must be a CheckpointError naming the field, not a KeyError later."""
    record = {"spec": {}, "spec_sha256": "x", "tokenizer": {"kind": "bytes"}, "optimizer": {"dict": {}},
              "data": {"source": {"kind": "files", "paths": ["a.txt"]}}}
    model = {"w": torch.zeros(2)}
    C.save_checkpoint(tmp_path, 1, model, {}, record, 3)
    with pytest.raises(C.CheckpointError, match=r"`data\.train_sha256` is missing or malformed"):
        C.check_run_record(C.load_checkpoint(tmp_path), resume=True)


def test_infinite_weights_are_a_damaged_checkpoint_not_only_nan(tmp_path):
    """checkpoint.py check_finite_weights: +inf/−inf are refused as NaN is."""
    with pytest.raises(C.CheckpointError, match=r"NaN or infinite values \(w\)"):
        C.check_finite_weights({"w": torch.tensor([1.0, float("inf")]), "b": torch.zeros(2)}, tmp_path)
    C.check_finite_weights({"w": torch.ones(2), "steps": torch.tensor([3])}, tmp_path)  # finite: no error


def test_clock_prefix_passes_over_every_wrapper_prefix():
    """clock.py clock_prefix: DDP around a torch.compile'd model names "module._orig_mod.blocks…":
    each wrapper prefix is passed over, not only the first."""
    from nldsl.runtime.clock import clock_prefix

    assert clock_prefix("module._orig_mod.blocks.0.cms.slow_w1", {"cms.slow_": 3}) == "cms.slow_"


def test_clock_prefix_is_only_for_parameters_of_blocks():
    """clock.py clock_prefix: a parameter outside `blocks.N.` is on no clock."""
    from nldsl.runtime.clock import clock_prefix

    assert clock_prefix("head.0.cms.slow_w1", {"cms.slow_": 3}) is None
    assert clock_prefix("blocks.0.cms.slow_w1", {"cms.slow_": 3}) == "cms.slow_"


def test_clock_prefix_matches_a_levels_weight_name_whole():
    """clock.py clock_prefix: `<prefix>w<i>` is matched whole, so a level named `slow_w1` (prefix
    "cms.slow_w1_", weights "cms.slow_w1_w2") is not put on the clock of a level `slow`."""
    from nldsl.runtime.clock import clock_prefix

    clocks = {"cms.slow_": 3, "cms.slow_w1_": 5}
    assert clock_prefix("blocks.0.cms.slow_w1_w2", clocks) == "cms.slow_w1_"
    assert clock_prefix("blocks.0.cms.slow_w12", clocks) == "cms.slow_"


def test_a_clock_ticked_without_step_numbers_counts_its_own_steps():
    """clock.py ContinuumClock.tick(): without `step` it counts the steps it has ticked (the generated
    module's training_step calls it so), firing every N ticks; an explicit step is obeyed."""
    from nldsl.runtime.clock import ContinuumClock

    slow = torch.nn.Parameter(torch.zeros(2))
    clock = ContinuumClock([("blocks.0.cms.slow_w1", slow)], {"cms.slow_": 3})
    released = []
    for tick in range(6):
        slow.grad = torch.full((2,), float(tick + 1))
        clock.tick()
        released.append(None if slow.grad is None else slow.grad[0].item())
    assert released == [None, None, 1 + 2 + 3, None, None, 4 + 5 + 6] and clock.steps_done == 6
    slow.grad = torch.ones(2)
    clock.tick(8)  # step 8 (0-based) is the ninth: due
    assert slow.grad is not None and clock.steps_done == 9

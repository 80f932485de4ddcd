"""Corpus reading, splits, windows and stream bookkeeping, each at the edge a mutation audit of
nldsl/runtime/{data,evaluate,domains}.py found untested (each test names the mutant it fails with:
M1 … M49 of that audit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nldsl.cli import UserError
from nldsl.runtime import data as D
from nldsl.runtime import domains as M
from nldsl.runtime import evaluate as E

CPU = torch.device("cpu")


def test_stdlib_sources_leave_out_pydoc_data_and_test_folders():
    """pydoc_data/topics.py holds every pydoc topic, which the default corpus also reads one by one:
    read as a stdlib source it would put validation topics into the training text (M1)."""
    paths = [path for path, _ in D.stdlib_sources()]
    assert paths and "json/decoder.py" in paths
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data"}  # not the constant
    for path in paths:
        assert not set(path.split("/")[:-1]) & skipped, path
    ids = {d.id for d in D.default_corpus()}
    assert "pydoc:assert" in ids and "stdlib:pydoc_data/topics.py" not in ids


def test_an_undecodable_byte_after_a_byte_order_mark_is_named_at_its_real_offset(tmp_path):
    """utf-8-sig counts its offsets after the mark: the error named the byte 3 places early."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfab\xffcd")
    with pytest.raises(UserError, match=r"byte 0xff at offset 5"):
        D.decode_file(path)


def test_a_data_folder_with_a_checkpoints_subfolder_but_no_run_record_is_read(tmp_path):
    """Only resolved.json *and* metrics or checkpoints make a run folder (M5: `and` → `or`)."""
    data = tmp_path / "data"
    (data / "checkpoints").mkdir(parents=True)
    (data / "notes.txt").write_text("some notes\n")
    (data / "checkpoints" / "log.txt").write_text("a log\n")
    assert [d.id for d in D.user_corpus([str(data)])] == ["data/checkpoints/log.txt", "data/notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "resolved.json").write_text("{}")  # a JSON file among text, no metrics or checkpoints
    assert D.is_run_folder(data / "checkpoints") is False and D.is_run_folder(other) is False


def test_text_suffixes_match_whatever_their_case(tmp_path):
    """README.MD and NOTES.TXT are text files too (M7: `.suffix.lower()` → `.suffix`)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "NOTES.TXT").write_text("upper-case suffix\n")
    (tmp_path / "d" / "image.PNG").write_bytes(b"\x89PNG")
    assert [d.text for d in D.user_corpus([str(tmp_path / "d")])] == ["upper-case suffix\n"]


def test_nothing_below_a_run_folder_is_read_as_training_text(tmp_path):
    """`--data .` beside runs/: a run's checkpoints/ (JSON records) are not text either (M8: the walk
    descending into a run folder's subfolders)."""
    data = tmp_path / "project"
    run = data / "runs" / "r1"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "resolved.json").write_text("{}")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "checkpoints" / "step-1" / "record.json").write_text('{"step": 1}')
    (data / "notes.txt").write_text("the only text\n")
    assert [d.id for d in D.user_corpus([str(data)])] == ["project/notes.txt"]


def test_a_whitespace_only_file_in_a_folder_is_skipped(tmp_path):
    """M10: `if text.strip()` → `if text` would make a blank file a document of its own."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("text\n")
    (tmp_path / "d" / "blank.txt").write_text("  \n\n\t")
    (tmp_path / "d" / "empty.txt").write_text("")
    assert [d.id for d in D.user_corpus([str(tmp_path / "d")])] == ["d/a.txt"]


def test_ids_of_files_given_one_by_one_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    """The run records absolute paths and eval reads them back from there: a relative file path must
    give the same ids, hence the same split (M12: the id being the path as given)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(40):
        (corpus / f"doc{index}.md").write_text(f"document {index}\n")
    names = [f"doc{index}.md" for index in range(40)]
    monkeypatch.chdir(corpus)
    relative = D.load_split(names)
    again = D.load_split([str(corpus / name) for name in names])
    assert relative.record["by"] == "document"
    assert relative.record["validation"] == again.record["validation"]
    assert relative.record["validation"]["documents"][0] in names


def test_a_cut_by_position_moves_back_at_most_a_tenth_of_the_validation_text():
    """The only newline near the cut lies half the validation size before it: too far back, so the cut
    stays where the fraction puts it (M16: the slack being the whole validation size, not a tenth)."""
    text = "a" * 9249 + "\n" + "b" * 747 + "\n"  # with the separator: 9250 + 750 = 10000 characters
    whole = text + D.SEPARATOR
    assert len(whole) == 10_000
    split = D.split_documents([D.Document("only", text)], {"kind": "test"})
    assert split.record["by"] == "position"
    assert split.text("train") + split.text("validation") == whole
    assert len(split.text("validation")) == 500  # not 750: the newline is 250 back, the slack 50


def test_a_cut_by_position_moves_back_to_a_newline_exactly_a_tenth_before_it():
    """The boundary of `_line_boundary`: a newline right at the edge of the slack still counts, so
    validation grows by exactly a tenth (M17: `index - slack - 1` → `index - slack`)."""
    text = "a" * 9449 + "\n" + "b" * 547 + "\n"
    assert len(text + D.SEPARATOR) == 10_000  # cut at 9500, slack 50: the newline at 9449 is in reach
    split = D.split_documents([D.Document("only", text)], {"kind": "test"})
    assert split.text("validation") == "b" * 547 + "\n" + D.SEPARATOR


def test_bpe_pieces_are_never_cut_before_an_indented_line():
    """A newline followed by indentation is part of a pre-token `\\n   ` that BPE merges: cutting there
    changes the ids (M21: the `_pieces` condition with `or` instead of `and`)."""
    pytest.importorskip("tokenizers")
    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(300))
    tokenizer = D.BPETokenizer.train([text], 320)
    pieces = D._pieces(text, 100)
    assert len(pieces) > 20 and "".join(pieces) == text
    assert all(piece.endswith("\n") and not piece[-2].isspace() for piece in pieces[:-1])
    assert all(not piece[0].isspace() for piece in pieces)
    whole = tokenizer.tokenizer.encode(text).ids
    assert [i for e in tokenizer.tokenizer.encode_batch(pieces) for i in e.ids] == whole


def test_a_text_of_exactly_seq_len_tokens_is_one_token_short_of_a_window():
    """A window is seq_len + 1 tokens (M24: `< seq_len + 1` → `< seq_len`, after which evaluation
    would score zero windows and report a loss of 0)."""
    ones = torch.ones(256, dtype=torch.int64)
    with pytest.raises(UserError, match=r"has 16 tokens but one window needs train\.seq_len \+ 1 = 17"):
        D.require_windows(D.TokenText(torch.zeros(16, dtype=torch.uint8), ones), 16, "validation")
    D.require_windows(D.TokenText(torch.zeros(17, dtype=torch.uint8), ones), 16, "validation")
    assert D.evaluation_starts(17, 16, None).tolist() == [0]


def test_batches_of_other_seeds_are_not_the_same_batches_at_other_steps():
    """(seed, step) pairs must each get their own windows: a run of seed 4 must not replay the
    batches of seed 3 one step later (M25: the generator seeded from seed + step)."""
    draws = {(seed, step): tuple(D.window_starts(10_000, seed, step, 8, 16).tolist())
             for seed in range(4) for step in range(4)}
    assert len(set(draws.values())) == len(draws)


def _corpus(folder: Path, count: int = 40) -> Path:
    folder.mkdir()
    for index in range(count):
        (folder / f"doc{index}.md").write_text(f"document number {index}\n" * 3)
    return folder


def test_eval_without_data_reads_the_runs_validation_split_not_its_training_text(tmp_path, capsys):
    """M36: `validation_documents` returning the training side would score the model on what it learned."""
    split = D.load_split([str(_corpus(tmp_path / "corpus"))])
    assert split.record["by"] == "document" and split.validation
    record = {"data": {"source": split.record["source"], "validation_sha256": split.record["validation"]["sha256"]}}
    assert E.validation_documents(record) == split.validation
    assert not set(E.validation_documents(record)) & set(split.train)
    assert "differs" not in capsys.readouterr().err


def test_a_run_that_read_a_file_twice_is_evaluated_on_its_split_as_it_was(tmp_path):
    """Runs made before a repeated file was refused read their text again as it was (M35: once_each=True)."""
    folder = _corpus(tmp_path / "corpus")
    paths = [str(folder), str(folder / "doc3.md")]
    with pytest.raises(UserError, match="given twice"):
        D.load_split(paths)
    split = D.load_split(paths, once_each=False)
    record = {"data": {"source": split.record["source"], "validation_sha256": split.record["validation"]["sha256"]}}
    assert E.validation_documents(record) == split.validation


def test_json_lines_skip_blank_lines_and_mark_broken_ones(tmp_path):
    """M29: a line of only whitespace (a CRLF editor's `\\r`, spaces) is blank, not a broken record."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n  \n\r\n{"step": 2}\n{"step": 3, "lo\n')
    assert D.read_json_lines(path) == [(1, {"step": 1}), (4, {"step": 2}), (5, None)]


class _Peaked(torch.nn.Module):
    """Logits that depend on the input token, so each window has its own loss."""

    def forward(self, tokens, targets=None, state=None):
        return torch.nn.functional.one_hot(tokens.long() * 7 % 256, 256).float() * 3.0


def test_ranks_evaluate_disjoint_windows_whose_sums_are_the_whole(tmp_path):
    """M32: each rank takes every world_size-th window from its own offset (`starts[rank::world_size]`)."""
    tokens = (torch.arange(7 * 4 + 1) * 13 % 256).to(torch.uint8)
    token_bytes = torch.arange(256, dtype=torch.int64) % 3 + 1
    text = D.TokenText(tokens, token_bytes)
    whole = E.evaluate(_Peaked(), text, 4, 2, None, CPU)
    shares = [E.evaluate(_Peaked(), text, 4, 2, None, CPU, rank=rank, world_size=3) for rank in range(3)]
    assert [s[3] for s in shares] == [3, 2, 2]
    assert sum(s[0] for s in shares) == pytest.approx(whole[0], rel=1e-9)
    assert (sum(s[1] for s in shares), sum(s[2] for s in shares)) == (whole[1], whole[2])
    everything = E.evaluate(_Peaked(), text, 4, 2, None, CPU, rank=2, world_size=3, every_rank_all=True)
    assert everything == whole


def test_random_windows_can_start_at_the_last_position():
    """A text of 10 bytes has windows of 8 at starts 0, 1 and 2, all drawn (M48: the last never drawn)."""
    text = torch.arange(10, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    firsts = set(M.random_windows(text, 200, 8, generator)[:, 0].tolist())
    assert firsts == {0, 1, 2}


def test_spaced_windows_reach_both_ends_of_the_text():
    """The fixed validation set spans the whole text: first window at 0, last one ending at its end (M49)."""
    text = torch.arange(100, dtype=torch.uint8)
    windows = M.spaced_windows(text, 5, 10)
    assert windows[0].tolist() == list(range(10)) and windows[-1].tolist() == list(range(90, 100))


def test_the_passkey_sentence_can_sit_at_any_depth_including_the_very_end_of_the_filler():
    """`before` is drawn from 0 … filler_bytes inclusive (M54: the end of the filler never drawn)."""
    digits = 1
    fixed = len(M.PASSKEY_SENTENCE.format(key="0")) + len(M.PASSKEY_QUESTION.format(key="0"))
    seq_len = fixed + 1  # a filler of 2 bytes: the sentence at depth 0, 1 or 2
    batch = M.passkey(300, seq_len, digits=digits, seed=0)
    depths = {bytes(row.tolist()).decode("ascii").index("The pass key is") for row in batch.tokens}
    assert depths == {0, 1, 2}


class _StatefulPeaked(_Peaked):
    def forward(self, tokens, targets=None, state=None, return_state=False):
        logits = super().forward(tokens)
        return (logits, {"seen": (state or {}).get("seen", 0) + tokens.shape[1]}) if return_state else logits


class _UnevenBytes(D.ByteTokenizer):
    def token_bytes(self):
        return torch.arange(256, dtype=torch.int64) % 4 + 1


def _loaded_stub():
    from types import SimpleNamespace

    spec = SimpleNamespace(train=SimpleNamespace(seq_len=16))  # what a stream reads of the spec
    return E.LoadedModel(_StatefulPeaked(), SimpleNamespace(), spec, _UnevenBytes(), None, CPU)


def test_a_stream_counts_the_bytes_of_the_predicted_tokens():
    """Bits per byte of a stream divide by the bytes of the targets (M38: those of the inputs)."""
    tokens = (torch.arange(41) * 37 % 256).long()
    tokens[-1] = 3  # 4 bytes where the first token has 1: the sums over inputs and over targets differ
    result = E.stream(_loaded_stub(), tokens, 16, learn=False)
    assert [(s.start, s.tokens) for s in result.segments] == [(0, 16), (16, 16), (32, 8)]
    sizes = _UnevenBytes().token_bytes()
    assert [s.bytes for s in result.segments] == [int(sizes[tokens[1 + s.start:1 + s.start + s.tokens]].sum())
                                                  for s in result.segments]
    assert sum(s.bytes for s in result.segments) == int(sizes[tokens[1:]].sum()) != int(sizes[tokens[:-1]].sum())
    assert result.state.position == 40 and result.state.memory == {"seen": 40}


class _Biased(torch.nn.Module):
    """A bias on the logits: one slow parameter for a hand-made slow level."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(256))

    def forward(self, tokens, targets=None, state=None, return_state=False):
        logits = torch.zeros(*tokens.shape, 256) + self.bias
        return (logits, {}) if return_state else logits


def test_a_slow_level_steps_when_the_stream_crosses_its_period_not_only_when_it_lands_on_it(monkeypatch):
    """Segments of 16 tokens and periods of 24 and 40: the stream crosses 24 at 32 and 48 at 48 and 40
    at 48 (M40: `position % period == 0` would step at 48 only, and never for 40)."""
    from types import SimpleNamespace

    model = _Biased()
    levels = [E.SlowLevel("a_", [("bias", model.bias)], 24, 0.1)]
    monkeypatch.setattr(E, "slow_levels", lambda loaded, segment, lrs=None: levels)
    spec = SimpleNamespace(train=SimpleNamespace(seq_len=16))
    checkpoint = SimpleNamespace(model={"bias": torch.zeros(256)})
    loaded = E.LoadedModel(model, SimpleNamespace(), spec, D.ByteTokenizer(), checkpoint, CPU)
    tokens = (torch.arange(49) * 5 % 256).long()
    assert E.stream(loaded, tokens, 16).updates == {"a_": 2}
    levels[0].period = 40
    result = E.stream(loaded, tokens, 16)
    assert result.updates == {"a_": 1}
    assert float(result.state.sums["bias"].abs().sum()) == 0.0, "the sum restarts after the step at 48"


def test_a_stream_state_with_a_token_id_equal_to_the_vocabulary_size_is_refused(tmp_path):
    """Ids run 0 … vocab − 1 (M44: `< vocab` → `<= vocab` lets id 256 through to the embedding)."""
    loaded = _loaded_stub()
    fits = E.StreamState(pending=torch.tensor([0, 255]))
    E.check_stream_state(loaded, fits, tmp_path / "s", 16)
    with pytest.raises(UserError, match="outside this model's vocabulary of 256"):
        E.check_stream_state(loaded, E.StreamState(pending=torch.tensor([3, 256])), tmp_path / "s", 16)
    with pytest.raises(UserError, match="outside this model's vocabulary"):
        E.check_stream_state(loaded, E.StreamState(pending=torch.tensor([-1])), tmp_path / "s", 16)


def test_a_stream_state_with_a_negative_position_is_corrupt(tmp_path):
    """M45: dropping `position < 0` would let a hand-edited state restart the slow levels' clocks."""
    path = tmp_path / "state.safetensors"
    E.save_stream_state(path, E.StreamState(position=0), "spec", "c", "w")
    assert E.load_stream_state(path, "spec", "w", CPU).position == 0
    E.save_stream_state(path, E.StreamState(position=-5), "spec", "c", "w")
    with pytest.raises(UserError, match="its position is not a token count"):
        E.load_stream_state(path, "spec", "w", CPU)


def test_a_steps_count_levels_stream_step_does_not_grow_with_the_segment(monkeypatch):
    """A `steps(3)` level's period is three segments, each adding its mean loss's gradient (as an
    outer step adds its batch mean's): the step is the same at --segment 8 and 16 (the token-share
    scaling of levels with a period in tokens doubled it), and at 12, which does not divide seq_len."""
    from types import SimpleNamespace

    steps = {}
    for segment in (8, 12, 16):
        model = _Biased()
        level = E.SlowLevel("a_", [("bias", model.bias)], 3 * segment, 0.1, per_segment=True)
        monkeypatch.setattr(E, "slow_levels", lambda loaded, seg, lrs=None, level=level: [level])
        spec = SimpleNamespace(train=SimpleNamespace(seq_len=16))
        checkpoint = SimpleNamespace(model={"bias": torch.zeros(256)})
        loaded = E.LoadedModel(model, SimpleNamespace(), spec, D.ByteTokenizer(), checkpoint, CPU)
        result = E.stream(loaded, torch.full((3 * segment + 1,), 5, dtype=torch.long), segment)
        assert result.updates == {"a_": 1}
        steps[segment] = result.state.slow_weights["bias"].abs().sum().item()
    assert steps[8] == pytest.approx(steps[16], rel=1e-5) and steps[12] == pytest.approx(steps[16], rel=1e-5), steps

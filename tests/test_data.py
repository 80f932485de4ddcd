"""Training text: the default corpus and its split, the user-file rule and its errors, tokenizers, batches."""

from __future__ import annotations

import hashlib

import pytest
import torch

from nldsl import spec as S
from nldsl.cli import UserError
from nldsl.runtime import data as D


@pytest.fixture(scope="module")
def default_split() -> D.Split:
    return D.load_split(None)


def test_default_corpus_splits_by_document_and_records_the_split(default_split):
    record = default_split.record
    assert record["by"] == "document" and record["source"]["kind"] == "default"
    train_ids, validation_ids = record["train"]["documents"], record["validation"]["documents"]
    assert not set(train_ids) & set(validation_ids)
    assert any(i.startswith("pydoc:") for i in train_ids + validation_ids)
    assert not any("site-packages" in i or "/test/" in i or i.startswith("stdlib:test/") for i in train_ids)
    for side in ("train", "validation"):
        data = default_split.text(side).encode("utf-8")
        assert record[side]["sha256"] == hashlib.sha256(data).hexdigest()
        assert record[side]["bytes"] == len(data)
    share = len(validation_ids) / (len(train_ids) + len(validation_ids))
    assert 0.01 < share < 0.15


def test_the_split_is_a_stable_function_of_the_document_id():
    ids = [f"doc-{i}" for i in range(2000)]
    first = [D.goes_to_validation(i) for i in ids]
    assert first == [D.goes_to_validation(i) for i in ids]
    assert 40 < sum(first) < 160  # about 5 %
    expected = int.from_bytes(hashlib.sha256(b"doc-7").digest()[:8], "big") / 2**64 < D.VALIDATION_FRACTION
    assert D.goes_to_validation("doc-7") == expected


def test_folders_are_searched_for_text_files_sorted_and_hidden_ones_skipped(tmp_path):
    (tmp_path / "b.md").write_text("bee\n")
    (tmp_path / "a.txt").write_text("ay\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("print('c')\n")
    (tmp_path / "image.bin").write_bytes(b"\x00\xff")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("hidden\n")
    (tmp_path / "empty.rst").write_text("")
    run = tmp_path / "runs" / "model-20260101-000000"  # a run beside the data: its logs are not text to learn
    (run / "checkpoints").mkdir(parents=True)
    (run / "resolved.json").write_text("{}")
    (run / "spec.nl").write_text("model { }\n")
    documents = D.user_corpus([str(tmp_path)])
    assert [d.id for d in documents] == [f"{tmp_path.name}/{name}" for name in ("a.txt", "b.md", "sub/c.py")]


def test_document_ids_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    """A run records its data by absolute path and reads it back from there: the ids that decide
    the split must be the ones a relative `--data` gave when it trained."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(40):
        (corpus / f"doc{index}.md").write_text(f"document {index}\n")
    monkeypatch.chdir(tmp_path)
    relative = D.load_split(["corpus"])
    monkeypatch.chdir(corpus)
    again = D.load_split([str(corpus)])
    assert relative.record["validation"] == again.record["validation"] and relative.record["by"] == "document"


def test_a_given_file_is_read_whatever_its_name(tmp_path):
    path = tmp_path / "notes.data"
    path.write_text("plain text\n")
    assert [d.text for d in D.user_corpus([str(path)])] == ["plain text\n"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("  \n"), "is empty"),
    (lambda p: p.write_bytes("héllo".encode() + b"\xff\xfe rest"), "byte 0xff at offset 6"),
])
def test_bad_data_files_are_one_line_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "input.txt"
    make(path)
    with pytest.raises(UserError, match=message) as error:
        D.user_corpus([str(path)])
    assert "input.txt" in str(error.value) and "\n" not in str(error.value)


def test_a_folder_without_text_files_is_an_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x01")
    with pytest.raises(UserError, match="no non-empty text files"):
        D.user_corpus([str(tmp_path)])


def test_a_run_folder_given_as_data_is_named_as_one(tmp_path):
    (tmp_path / "resolved.json").write_text("{}")
    (tmp_path / "spec.nl").write_text("model m { }\n")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="is a run folder of nldsl train"):
        D.user_corpus([str(tmp_path)])


@pytest.mark.parametrize("given", [["d", "d"], ["d", "d/a.txt"], ["d/a.txt", "d/../d/a.txt"]])
def test_a_file_given_twice_is_refused(tmp_path, given):
    """Read twice, a file would sit in the training text and, for a small corpus split by
    position, in the validation text as well: the held-out numbers would not be held out."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("some text\n")
    with pytest.raises(D.UserError, match=r"is given twice .*: each file must be read once"):
        D.user_corpus([str(tmp_path / name) for name in given])
    assert len(D.user_corpus([str(tmp_path / name) for name in given], once_each=False)) == 2  # eval and stream


def test_data_encoding_reads_other_codecs_and_rejects_unknown_ones(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(UserError, match="--data-encoding"):
        D.user_corpus([str(path)])
    assert D.user_corpus([str(path)], "latin-1")[0].text == "café\n"
    with pytest.raises(UserError, match="unknown --data-encoding"):
        D.user_corpus([str(path)], "no-such-codec")
    # a codec Python knows that decodes nothing is the user's choice to correct, not an internal error
    with pytest.raises(UserError, match=r"cannot be read as undefined.*--data-encoding"):
        D.user_corpus([str(path)], "undefined")


@pytest.mark.parametrize(("given", "reason"), [("", "an empty encoding"), ("hex", "not a text encoding"),
                                               ("no-such-codec", "unknown encoding")])
def test_data_encoding_option_refuses_what_cannot_name_a_text_encoding(given, reason, capsys):
    from nldsl.cli import main

    with pytest.raises(SystemExit) as stop:  # refused by argparse, before any file is read
        main(["eval", "no-such-run", "--data-encoding", given])
    assert stop.value.code == 2
    assert reason in capsys.readouterr().err


def test_one_document_is_split_by_position_at_a_line_boundary():
    text = "".join(f"line {i}\n" for i in range(200))
    split = D.split_documents([D.Document("only", text)], {"kind": "test"})
    assert split.record["by"] == "position"
    assert split.text("train") + split.text("validation") == text + D.SEPARATOR
    assert split.text("train").endswith("\n") and split.text("validation").startswith("line ")
    assert 0 < len(split.text("validation")) < 0.1 * len(text)


def test_a_cut_by_position_does_not_move_back_over_one_long_line():
    text = "".join(f"line {i}\n" for i in range(100)) + "[" + "1, " * 5000 + "]\n"  # a one-line JSON file
    split = D.split_documents([D.Document("only", text)], {"kind": "test"})
    assert split.text("train") + split.text("validation") == text + D.SEPARATOR
    share = len(split.text("validation")) / len(text + D.SEPARATOR)
    assert D.VALIDATION_FRACTION <= share <= 1.1 * D.VALIDATION_FRACTION


def test_batches_are_a_function_of_seed_and_step_and_ranks_share_the_global_batch():
    text = D.TokenText(torch.arange(1000) % 256, torch.ones(256, dtype=torch.int64))
    inputs, targets = D.batch_at(text, 3, 5, 6, 17)
    again, _ = D.batch_at(text, 3, 5, 6, 17)
    other, _ = D.batch_at(text, 3, 6, 6, 17)
    assert inputs.shape == (6, 17) and inputs.dtype == torch.int64
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    shares = [D.batch_at(text, 3, 5, 6, 17, rank, 3)[0] for rank in range(3)]
    assert torch.equal(torch.cat(shares), inputs)


def test_evaluation_windows_do_not_overlap_and_thin_out_evenly():
    starts = D.evaluation_starts(101, 10, None)
    assert starts.tolist() == list(range(0, 100, 10))
    thinned = D.evaluation_starts(1001, 10, 5)
    assert thinned.tolist() == [0, 250, 500, 740, 990]
    assert D.evaluation_starts(1001, 10, 5).tolist() == thinned.tolist()


def test_byte_tokenizer_round_trips_and_counts_one_byte_per_token():
    tokenizer = D.ByteTokenizer()
    ids = tokenizer.encode("naïve ✓")
    assert ids.tolist() == list("naïve ✓".encode())
    assert tokenizer.decode(ids.tolist()) == "naïve ✓"
    assert tokenizer.token_bytes().sum() == 256


def test_bpe_tokenizer_trains_locally_and_knows_the_bytes_of_each_token(tmp_path):
    pytest.importorskip("tokenizers")
    text = "def add(a, b):\n    return a + b  # ünïcode ✓\n" * 50
    tokenizer = D.BPETokenizer.train([text], 300)
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode()) / 2
    assert tokenizer.decode(ids.tolist()) == text
    assert int(tokenizer.token_bytes()[ids.long()].sum()) == len(text.encode("utf-8"))
    tokenizer.save(tmp_path / "tokenizer.json")
    again = D.BPETokenizer.from_file(tmp_path / "tokenizer.json", 300)
    assert torch.equal(again.encode(text), ids)


def test_bpe_cuts_long_pre_tokens_so_a_text_without_spaces_trains_in_time():
    # Training is quadratic in a pre-token's length: these 300,000 letters without a space took 25 s
    # as one pre-token (so a million, minutes); cut, they train like ordinary text.
    pytest.importorskip("tokenizers")
    import random

    rng = random.Random(0)
    run = "".join(rng.choice("ACGT") for _ in range(300_000))
    pre_tokens = D.BPETokenizer.train(["hello world"], 260).tokenizer.pre_tokenizer.pre_tokenize_str(run + " end")
    assert [len(token) for token, _ in pre_tokens] == [256] * 1171 + [224, 4], "the run in 256-character pieces"
    tokenizer = D.BPETokenizer.train([run], 400)  # 0.18 s here; as one pre-token, 25 s
    ids = tokenizer.encode(run)
    assert len(ids) < len(run) / 3 and tokenizer.decode(ids.tolist()) == run


def test_model_vocabulary_must_match_the_tokenizer():
    D.check_vocabulary(256, S.BytesTokenizer())
    with pytest.raises(UserError, match=r"--set model.vocab=1024"):
        D.check_vocabulary(256, S.BPETokenizer(vocab=1024))


def test_a_text_shorter_than_one_window_is_a_clear_error():
    text = D.TokenText(torch.zeros(10, dtype=torch.uint8), torch.ones(256, dtype=torch.int64))
    with pytest.raises(UserError, match=r"train\.seq_len"):
        D.require_windows(text, 16, "validation")


def test_a_file_name_that_is_not_utf8_is_read_split_and_recorded(tmp_path):
    import json
    import os
    import sys

    if sys.platform == "win32" or sys.getfilesystemencoding() != "utf-8":
        pytest.skip("file names are bytes decoded as UTF-8 with surrogates only on POSIX")
    name = os.fsdecode(b"n\xe9me.txt")  # latin-1 bytes: a surrogate in Python's str
    (tmp_path / name).write_text("some text\n" * 20)
    (tmp_path / "other.txt").write_text("more text\n" * 20)
    documents = D.user_corpus([str(tmp_path)])
    split = D.split_documents(documents, {"kind": "files", "paths": [str(tmp_path)]})
    D.write_json(tmp_path / "split.json", split.record)
    recorded = json.loads((tmp_path / "split.json").read_text(encoding="utf-8"))
    assert recorded == json.loads(json.dumps(split.record))  # the name reads back as it was


def test_the_default_corpus_leaves_out_the_codec_tables(default_split):
    ids = default_split.record["train"]["documents"] + default_split.record["validation"]["documents"]
    assert "stdlib:encodings/__init__.py" in ids, "the package's own code stays"
    tables = ("cp1140", "cp437", "cp720", "cp1125", "mac_roman", "koi8_r", "iso8859_15", "palmos")
    assert not [i for i in ids if i.removeprefix("stdlib:encodings/").removesuffix(".py") in tables]
    assert "stdlib:encodings/cp932.py" in ids, "a codec that is code, not a table, stays"


def test_copies_of_a_text_go_to_the_side_of_the_first(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    names = [f"f{i:02}.txt" for i in range(60)]
    for index, name in enumerate(names):
        (folder / name).write_text(f"document {index}\n")
    validation = D.split_documents(D.user_corpus([str(folder)]), {}).record["validation"]["documents"]
    assert validation, "some document must go to validation for the test to mean anything"
    copied = (folder / validation[0].split("/", 1)[1]).read_text()
    for index in range(40):  # copies under other names, which alone would mostly go to train
        (folder / f"copy{index:02}.txt").write_text(copied)
    split = D.split_documents(D.user_corpus([str(folder)]), {})
    train_text = split.text("train")
    assert copied not in train_text and split.text("validation").count(copied) == 41


def test_a_file_reached_twice_through_a_link_in_a_folder_is_refused(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("some text\n")
    (folder / "z_link.txt").symlink_to(folder / "a.txt")
    with pytest.raises(UserError, match=r"a\.txt is reached twice in the folder .* \(a link to it\)"):
        D.user_corpus([str(folder)])
    assert len(D.user_corpus([str(folder)], once_each=False)) == 2, "eval and stream may read a text twice"


def test_a_byte_order_mark_is_not_text_and_a_fifo_is_refused(tmp_path):
    import os

    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfhello\n")
    assert D.decode_file(bom) == "hello\n" and D.decode_file(bom, "UTF8") == "hello\n"
    assert D.decode_file(bom, "latin-1").startswith("ï»¿"), "another encoding reads the bytes as they are"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="neither a regular file nor a folder"):
        D.user_corpus([str(fifo)])
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    with pytest.raises(UserError, match="is empty but for whitespace"):
        D.user_corpus([str(tmp_path / "blank.txt")])


def test_a_long_text_is_bpe_encoded_in_pieces_with_the_whole_texts_ids(monkeypatch):
    pytest.importorskip("tokenizers")
    import random

    rng = random.Random(0)
    alphabet = "ab \n\t\r'sdé😀\u00a0\u2028\u3000x1.,;:()"
    # with runs longer than a pre-token may be (MAX_PRETOKEN_CHARACTERS), which are cut in runs too
    text = "".join(rng.choice([*alphabet, "x" * 700, "\n" + "7" * 300]) for _ in range(60_000))
    tokenizer = D.BPETokenizer.train([text[:20_000]], 300)
    pieces = D._pieces(text, 400)
    assert len(pieces) > 50 and "".join(pieces) == text
    whole = torch.tensor(tokenizer.tokenizer.encode(text).ids, dtype=torch.int32)
    by_piece = torch.cat([torch.tensor(e.ids, dtype=torch.int32) for e in tokenizer.tokenizer.encode_batch(pieces)])
    assert torch.equal(by_piece, whole)
    assert torch.equal(tokenizer.encode(text), whole) and torch.equal(tokenizer.encode_documents([text, text]),
                                                                      torch.cat([whole, whole]))
    monkeypatch.setattr(D, "PIECE_CHARACTERS", 400)  # many pieces, in many batches
    monkeypatch.setattr(D, "BATCH_CHARACTERS", 3000)
    assert torch.equal(tokenizer.encode_documents([text, "", text]), torch.cat([whole, whole]))


# What the mutation audit of the data and evaluation code found untested ----------------------------

def test_every_window_start_of_the_training_text_can_be_drawn():
    """A text of 10 tokens holds windows of 8 + 1 tokens at starts 0 and 1: both are drawn."""
    seen = set()
    for step in range(200):
        seen.update(D.window_starts(10, 0, step, 4, 8).tolist())
    assert seen == {0, 1}


def test_bpe_merges_never_cross_a_document_boundary():
    tokenizer = D.BPETokenizer.train(["ab " * 200], 300)
    assert tokenizer.encode("ab").numel() == 1, "the pair merges inside a document"
    assert torch.equal(tokenizer.encode_documents(["a", "b"]),
                       torch.cat([tokenizer.encode("a"), tokenizer.encode("b")]))


class _Uniform(torch.nn.Module):
    """Logits that give every one of 256 tokens the same probability: ln 256 nats per token."""

    def forward(self, tokens, state=None):
        return torch.zeros(*tokens.shape, 256)


def test_bits_per_byte_counts_the_bytes_of_the_predicted_tokens():
    """Tokens of 1 to 4 bytes: the bytes are those of the targets (the inputs' would be 20, not 23)."""
    import math

    from nldsl.runtime import evaluate as E

    tokens = torch.tensor([0, 0, 0, 0, 3, 3, 3, 3, 3], dtype=torch.uint8)
    token_bytes = torch.tensor([1, 2, 3, 4] + [1] * 252, dtype=torch.int64)
    sums = E.evaluate(_Uniform(), D.TokenText(tokens, token_bytes), 4, 2, None, torch.device("cpu"))
    nats, count, size, windows = sums
    assert (count, size, windows) == (8, 23, 2)
    scores = E.evaluation_from_sums(*sums)
    assert scores.bits_per_byte == pytest.approx(nats / math.log(2) / 23)
    assert scores.bits_per_byte < scores.loss / math.log(2), "tokens of several bytes cost fewer bits per byte"


def test_a_last_evaluation_batch_that_is_not_full_is_scored():
    import math

    from nldsl.runtime import evaluate as E

    text = D.TokenText(torch.arange(5 * 4 + 1, dtype=torch.uint8), torch.ones(256, dtype=torch.int64))
    nats, count, size, windows = E.evaluate(_Uniform(), text, 4, 2, None, torch.device("cpu"))
    assert (windows, count, size) == (5, 20, 20)  # batches of 2, 2 and 1 window
    assert nats == pytest.approx(20 * math.log(256))

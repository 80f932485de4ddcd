"""Training text: the default corpus, the user's files, the train/validation split, tokenizers, batches.

- The default corpus ships with every Python installation, so `nldsl train` needs no download: the
  standard library's `.py` sources (`sysconfig.get_paths()["stdlib"]`, sorted, without
  `site-packages`, test folders, `pydoc_data` and the codec tables of `encodings/`) and
  the pydoc topics (`pydoc_data.topics`), one document each. It depends on the Python version;
  split.json records what it was.
- `--data PATH...`: a file is read whatever its name; a folder is searched recursively for files
  whose suffix is in `TEXT_SUFFIXES`, skipping hidden files and folders and the folders of runs
  (`is_run_folder`); a folder's files are sorted by path, and the paths given are read in the
  order given. Files must be UTF-8 (or the `--data-encoding`
  given; a UTF-8 byte-order mark is dropped): an undecodable file is an error that names the file
  and the byte offset, never silently replaced characters. A given file that is empty (or only
  whitespace) is an error, and so is one that is not a regular file (a FIFO would never end); empty
  files found inside a folder are skipped. A file reached twice (given twice, or through a link in a
  folder) is refused.
- The split is by document: a document goes to validation when a stable hash of its id (a file's
  name, or `<folder name>/<path inside it>` for a file found in a folder: the same from any working
  directory and on any machine, so a run's split can be read again from its split.json; it changes
  when a file or the folder given is renamed, and a folder's files and the same files given one by
  one have other ids) falls below `VALIDATION_FRACTION`; copies of one text (the same text under
  other names) all go where the first goes, so no copy of a validation document is trained on.
  When that leaves a side empty (one file, say) the concatenated text is cut
  by position instead, the last `VALIDATION_FRACTION` of it going to validation (from the start of
  a line when one lies within a tenth of the cut, so one long line cannot move it far). Each side is its
  documents, each followed by `SEPARATOR`; `Split.record` (written as split.json) lists the
  documents, sizes and the sha256 of both concatenations.
- Tokenizers: bytes (vocabulary 256, the default) or a byte-level BPE trained locally on the
  train split with the `tokenizers` package (a long text encoded in pieces cut where its
  pre-tokenizer cuts, so the ids are the whole text's at a fraction of the memory). Both know how
  many bytes of UTF-8 text each token stands for (`token_bytes`), which is what bits per byte
  divides by (UTF-8 bytes also for a file read with another `--data-encoding`).
- Batches are a pure function of (seed, step): `window_starts` draws random windows of
  `seq_len + 1` tokens with a generator seeded from both, so a resumed run sees the same batches
  and each data-parallel rank takes its slice of the same global batch.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import pydoc_data.topics
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nldsl.cli import UserError
from nldsl.files import text_bytes, write_atomic

VALIDATION_FRACTION = 0.05
SEPARATOR = "\n\n"  # between documents in a concatenation
TEXT_SUFFIXES = frozenset({
    ".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".org", ".adoc",
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".lua",
    ".html", ".css", ".json", ".toml", ".yaml", ".yml", ".csv", ".nl",
})
# How the codec tables `encodings/cp1140.py` and the like begin: 72 files, mostly generated, 11% of
# the standard library's text, near-copies of each other (the long lines of a validation table
# largely recur in training ones), which would make the held-out numbers partly not held out.
CODEC_TABLE = "Python Character Mapping Codec"
SKIPPED_STDLIB_FOLDERS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data",
                                    "__pycache__"})


@dataclass(frozen=True)
class Document:
    id: str  # stable name: "stdlib:json/decoder.py", "pydoc:assert", or the file's path
    text: str


# Reading text ---------------------------------------------------------------------------------

def stdlib_sources(codec_tables: bool = False) -> list[tuple[str, str]]:
    """(path inside the standard library, text) of its UTF-8 `.py` sources, sorted, without
    `SKIPPED_STDLIB_FOLDERS` and, unless `codec_tables`, without `CODEC_TABLE`'s files (the
    studies' `code` domain keeps them: its published runs read them)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_STDLIB_FOLDERS.intersection(relative.parts[:-1]):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable stdlib files are simply not part of the corpus
        if text.strip() and (codec_tables or CODEC_TABLE not in text[:200]):
            sources.append((relative.as_posix(), text))
    return sources


def default_corpus() -> list[Document]:
    """The Python standard library's sources and the pydoc topics, in a fixed order."""
    documents = [Document(f"stdlib:{relative}", text) for relative, text in stdlib_sources()]
    for topic in sorted(pydoc_data.topics.topics):
        documents.append(Document(f"pydoc:{topic}", pydoc_data.topics.topics[topic]))
    return documents


def decode_file(path: Path, encoding: str = "utf-8") -> str:
    """The text of a data file, or a one-line error naming the file (and the byte offset)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read data file {path}: {error.strerror or error}") from None
    try:
        # a UTF-8 byte-order mark (Windows tools write one) is not text to train on or score
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except LookupError:
        raise UserError(f"unknown --data-encoding `{encoding}`") from None
    except UnicodeDecodeError as error:
        hint = "convert it to UTF-8 or pass --data-encoding (e.g. latin-1)" if encoding == "utf-8" else \
            "pass the file's real encoding with --data-encoding"
        # utf-8-sig decodes the bytes after a byte-order mark: its offsets count from there
        offset = error.start + len(data) - len(error.object)
        raise UserError(f"data file {path} is not valid {encoding}: byte 0x{data[offset]:02x} at offset "
                        f"{offset} cannot be decoded ({hint})") from None
    except UnicodeError as error:  # a codec that decodes nothing (`undefined`) or rejects the whole text
        raise UserError(f"data file {path} cannot be read as {encoding}: {error}; pass the file's real "
                        "encoding with --data-encoding") from None


def is_run_folder(folder: Path) -> bool:
    """A folder `nldsl train` wrote (its spec, metrics and checkpoints are not training text)."""
    return (folder / "resolved.json").is_file() and (
        (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir())


def _text_files(root: Path) -> list[Path]:
    """The files of a data folder with a text suffix, below it at any depth, except hidden ones
    and those in hidden folders or in run folders (`--data .` beside a `runs/`)."""
    files = []
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        if is_run_folder(here):
            subfolders.clear()
            continue
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        files.extend(here / name for name in names
                     if not name.startswith(".") and Path(name).suffix.lower() in TEXT_SUFFIXES
                     and (here / name).is_file())
    return files


def user_corpus(paths: list[str], encoding: str = "utf-8", once_each: bool = True) -> list[Document]:
    """Documents from the user's files and folders (the rule is in the module docstring).
    `once_each`: refuse a file reached twice (training text, where the repeat could land in both
    the training and the validation side; eval and stream may read a text twice on purpose)."""
    documents: list[Document] = []
    read_as: dict[Path, tuple[int, str]] = {}  # each file read, resolved: which argument reached it, and how

    def once(file: Path, how: str, index: int) -> None:
        # a file read twice (given twice, or reached again through a link in a folder) would sit in
        # the training text and possibly in the validation text, so held-out numbers would not be
        resolved = file.resolve()
        earlier = read_as.get(resolved)
        if once_each and earlier is not None and earlier[0] != index:
            raise UserError(f"data file {file} is given twice ({earlier[1]}, and {how}): each file must be read "
                            "once; drop one of them from --data")
        if once_each and earlier is not None:
            raise UserError(f"data file {resolved} is reached twice {how} (a link to it): each file must be read "
                            "once; remove the link or the file from the folder")
        read_as.setdefault(resolved, (index, how))

    for index, given in enumerate(paths):
        path = Path(given)
        if not path.exists():
            raise UserError(f"data path {given} does not exist")
        if path.is_dir():
            found = sorted(_text_files(path))
            for file in found:
                once(file, f"in the folder {given}", index)
            texts = [(p, decode_file(p, encoding)) for p in found]
            texts = [(p, text) for p, text in texts if text.strip()]
            if not texts and is_run_folder(path):
                raise UserError(f"data folder {given} is a run folder of nldsl train, whose files are not read as "
                                "training text: give the text files or their folder")
            if not texts:
                suffixes = ", ".join(sorted(TEXT_SUFFIXES))
                raise UserError(f"data folder {given} holds no non-empty text files (looked for {suffixes})")
            folder = path.resolve().name
            documents.extend(Document(f"{folder}/{p.relative_to(path).as_posix()}", text) for p, text in texts)
        else:
            if not path.is_file():  # a FIFO or a device would block the read or never end
                raise UserError(f"data path {given} is neither a regular file nor a folder")
            once(path, f"as {given}", index)
            text = decode_file(path, encoding)
            if not text.strip():
                raise UserError(f"data file {given} is empty" + (" but for whitespace" if text else ""))
            documents.append(Document(path.resolve().name, text))
    return documents


def read_documents(paths: list[str] | None, encoding: str = "utf-8", once_each: bool = True) -> list[Document]:
    """The user's documents if `paths` are given, else the default corpus."""
    return user_corpus(paths, encoding, once_each) if paths else default_corpus()


# The split --------------------------------------------------------------------------------------

def goes_to_validation(document_id: str, fraction: float = VALIDATION_FRACTION) -> bool:
    """A stable, platform-independent coin: the first 8 bytes of sha256(id) as a fraction of 2⁶⁴."""
    digest = hashlib.sha256(document_id.encode("utf-8", "surrogateescape")).digest()  # a file name's own bytes
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Split:
    """Train and validation text as pieces whose concatenation is exactly what split.json hashes:
    documents each followed by `SEPARATOR`, or the two halves of a cut by position."""

    train: list[str]
    validation: list[str]
    record: dict[str, Any]  # split.json

    def text(self, side: str) -> str:
        return "".join(self.train if side == "train" else self.validation)


def split_documents(documents: list[Document], source: dict[str, Any],
                    fraction: float = VALIDATION_FRACTION) -> Split:
    """Train and validation text by document, falling back to a cut by position (module docstring)."""
    if not documents:
        raise UserError("no text to train on")
    # A text that occurs more than once (copies under other names) goes where its first copy goes:
    # by id alone, copies could land on both sides and the validation text would not be held out.
    first_id: dict[bytes, str] = {}
    side = {}
    for d in documents:
        digest = hashlib.sha256(d.text.encode("utf-8", "surrogatepass")).digest()
        side[id(d)] = goes_to_validation(first_id.setdefault(digest, d.id), fraction)
    train = [d for d in documents if not side[id(d)]]
    validation = [d for d in documents if side[id(d)]]
    if train and validation:
        by = "document"
        train_pieces = [d.text + SEPARATOR for d in train]
        validation_pieces = [d.text + SEPARATOR for d in validation]
        train_ids, validation_ids = [d.id for d in train], [d.id for d in validation]
        rule = (f"by document: a document goes to validation when sha256(id) < {fraction} · 2^64, the id being "
                "that of the first document with the same text")
    else:
        by = "position"
        whole = "".join(d.text + SEPARATOR for d in documents)
        cut = _line_boundary(whole, math.floor(len(whole) * (1 - fraction)))
        train_pieces, validation_pieces = [whole[:cut]], [whole[cut:]]
        train_ids = validation_ids = [d.id for d in documents]
        rule = (f"by position: the last {fraction} of the concatenated text, cut at a line boundary within a "
                "tenth of it, is validation")
    record = {
        "rule": rule,
        "by": by,
        "validation_fraction": fraction,
        "separator": SEPARATOR,
        "source": source,
        "train": _side_record(train_ids, train_pieces),
        "validation": _side_record(validation_ids, validation_pieces),
    }
    return Split(train_pieces, validation_pieces, record)


def corpus_source(paths: list[str] | None, encoding: str) -> dict[str, Any]:
    """What the text was read from, as split.json records it."""
    if paths:
        return {"kind": "files", "paths": [str(Path(p).resolve()) for p in paths], "encoding": encoding}
    return {"kind": "default", "python": sys.version.split()[0],
            "what": "standard-library .py sources (no site-packages, tests, pydoc_data) + pydoc topics"}


def load_split(paths: list[str] | None, encoding: str = "utf-8", once_each: bool = True) -> Split:
    """Read and split the training text in one call. `once_each=False` for the paths a run recorded:
    a run trained before a repeated file was refused reads its text as it was then."""
    return split_documents(read_documents(paths, encoding, once_each), corpus_source(paths, encoding))


def _side_record(ids: list[str], pieces: list[str]) -> dict[str, Any]:
    joined = "".join(pieces)
    data = joined.encode("utf-8")
    return {"documents": ids, "characters": len(joined), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _line_boundary(text: str, index: int) -> int:
    """`index` moved back to the start of its line, unless that line is so long that validation
    would grow by more than a tenth (one long JSON line must not move most of the text over)."""
    slack = (len(text) - index) // 10
    newline = text.rfind("\n", max(0, index - slack - 1), index)
    return newline + 1 if newline >= 0 else index


# Tokenizers -------------------------------------------------------------------------------------

class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, one byte per token."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        data = text.encode("utf-8")
        if not data:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (N,)

    def encode_documents(self, texts: list[str]) -> Tensor:
        return self.encode("".join(texts))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> Tensor:
        return torch.ones(256, dtype=torch.int64)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "bytes", "vocab": 256}


def _byte_level_alphabet() -> dict[str, int]:
    """Character → byte of the byte-level BPE alphabet: printable Latin-1 bytes stand for themselves,
    the other bytes are shifted to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


PIECE_CHARACTERS = 1 << 20  # a long text is encoded in pieces of about this many characters
# BPE learns merges inside pre-tokens at a cost that grows with the square of a pre-token's length:
# one pre-token of a million characters (a genome, a minified file, a blob) took minutes to train on.
# GPT-2's pattern keeps ordinary text's pre-tokens far shorter (80 characters at most in 2.3 MB of
# the standard library, where the merges and ids come out the same with this cap).
MAX_PRETOKEN_CHARACTERS = 256
BATCH_CHARACTERS = 1 << 23  # and this many characters' pieces at a time


def _pieces(text: str, size: int = PIECE_CHARACTERS) -> list[str]:
    """`text` in pieces of about `size` characters, each cut just after a newline that has a
    non-space character on both sides. The byte-level pre-tokenizer (GPT-2's pattern) always ends a
    pre-token there (the newline is one on its own), so pieces encode to exactly the whole text's
    ids. A text with no such newline past `size` stays whole from there."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = start + size
        while True:
            newline = text.find("\n", cut, len(text) - 1)
            if newline < 0:
                break
            if not text[newline - 1].isspace() and not text[newline + 1].isspace():
                break
            cut = newline + 1
        if newline < 0:
            break
        pieces.append(text[start:newline + 1])
        start = newline + 1
    pieces.append(text[start:])
    return pieces


class BPETokenizer:
    """A byte-level BPE from the `tokenizers` package, trained locally on the train split."""

    kind = "bpe"

    def __init__(self, tokenizer: Any, vocab: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab  # the spec's vocabulary; a small corpus may learn fewer merges

    @staticmethod
    def _package() -> Any:
        try:
            import tokenizers
        except ImportError:
            raise UserError("`tokenizer = bpe(…)` needs the `tokenizers` package: pip install 'tokenizers>=0.15' "
                            "(or pip install -e '.[bpe]' in nldsl's checkout)") from None
        return tokenizers

    @classmethod
    def train(cls, texts: list[str], vocab: int) -> BPETokenizer:
        """Learn merges on `texts` until the vocabulary has `vocab` tokens (or no pair repeats)."""
        tk = cls._package()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        # GPT-2's byte-level pre-tokens, each cut into runs of at most MAX_PRETOKEN_CHARACTERS bytes;
        # the tokenizer keeps the cut, so encoding cuts where training did. (Oniguruma's `(?m)` makes
        # `.` match every character; after the byte-level mapping no line break is left anyway.)
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False),
            tk.pre_tokenizers.Split(tk.Regex(f"(?m).{{1,{MAX_PRETOKEN_CHARACTERS}}}"), behavior="isolated")])
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False, special_tokens=[])
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer, vocab)

    @classmethod
    def from_file(cls, path: Path, vocab: int) -> BPETokenizer:
        tk = cls._package()
        try:
            tokenizer = tk.Tokenizer.from_file(str(path))
        except Exception as error:  # the package raises its own exception type for bad files
            raise UserError(f"cannot read the tokenizer {path}: {error}") from None
        if tokenizer.get_vocab_size() > vocab:  # its ids would index past the model's embedding
            raise UserError(f"the tokenizer {path} has {tokenizer.get_vocab_size():,} ids, more than the model's "
                            f"vocabulary of {vocab:,}: it is not the tokenizer this model was trained with")
        return cls(tokenizer, vocab)

    def save(self, path: Path) -> None:
        path.write_text(self.tokenizer.to_str(), encoding="utf-8")

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def encode(self, text: str) -> Tensor:
        return self.encode_documents([text])

    def encode_documents(self, texts: list[str]) -> Tensor:
        """Each text encoded on its own (merges never cross a document boundary), then concatenated.

        Long texts go in pieces of about `PIECE_CHARACTERS`, cut where the byte-level pre-tokenizer
        cuts anyway (`_pieces`), so the ids are those of the whole text; a batch of pieces at a time
        keeps the package's per-token objects (about 200 bytes each) to a batch's worth rather than
        the corpus's (one 19 MB text: 0.87 GB peak instead of 3.05)."""
        # encode_batch_fast (tokenizers ≥ 0.20) skips the offsets nothing here reads
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        batches: list[list[str]] = [[]]
        size = 0
        for piece in (piece for text in texts for piece in _pieces(text, PIECE_CHARACTERS)):
            if batches[-1] and size + len(piece) > BATCH_CHARACTERS:
                batches.append([])
                size = 0
            batches[-1].append(piece)
            size += len(piece)
        ids = [torch.tensor(encoding.ids, dtype=torch.int32)
               for batch in batches if batch for encoding in encode(batch)]
        return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def token_bytes(self) -> Tensor:
        alphabet = _byte_level_alphabet()
        counts = torch.zeros(self.vocab_size, dtype=torch.int64)
        for token, index in self.tokenizer.get_vocab().items():
            if index < self.vocab_size:
                counts[index] = sum(1 for ch in token if ch in alphabet)
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"kind": "bpe", "vocab": self.vocab_size, "file": "tokenizer.json"}


def tokenizer_vocab(tokenizer_spec: Any) -> int:
    """The vocabulary a spec's `train.tokenizer` produces."""
    return 256 if tokenizer_spec.kind == "bytes" else tokenizer_spec.vocab


def check_vocabulary(model_vocab: int, tokenizer_spec: Any) -> None:
    """The model's embedding must have exactly one row per token."""
    vocab = tokenizer_vocab(tokenizer_spec)
    if model_vocab != vocab:
        written = "bytes" if tokenizer_spec.kind == "bytes" else f"bpe(vocab = {vocab})"
        raise UserError(f"model.vocab is {model_vocab} but the tokenizer `{written}` has {vocab} tokens "
                        f"(add --set model.vocab={vocab})")


def build_tokenizer(tokenizer_spec: Any, train_texts: list[str], saved: Path | None) -> ByteTokenizer | BPETokenizer:
    """The spec's tokenizer: bytes, or a BPE loaded from `saved` when it exists, else trained here."""
    if tokenizer_spec.kind == "bytes":
        return ByteTokenizer()
    if saved is not None and saved.exists():
        return BPETokenizer.from_file(saved, tokenizer_spec.vocab)
    return BPETokenizer.train(train_texts, tokenizer_spec.vocab)


def tokenizer_from_record(record: dict[str, Any], folder: Path, sha256: str | None = None
                          ) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a checkpoint names (`record["tokenizer"]`), its file read from `folder` and
    checked against the sha256 the checkpoint recorded for it (`record["files"]`), when it has one."""
    if record["kind"] == "bytes":
        return ByteTokenizer()
    path = folder / record["file"]
    if not path.exists():
        raise UserError(f"the checkpoint in {folder} names a BPE tokenizer but {path} is missing")
    check_tokenizer_file(path, sha256, f"the checkpoint in {folder} was written with")
    return BPETokenizer.from_file(path, record["vocab"])


def check_tokenizer_file(path: Path, sha256: str | None, whose: str, remedy: str = "") -> None:
    """A tokenizer file must be the one a checkpoint recorded: another one maps text to other ids,
    so the weights would read it wrongly (a loss that is not the run's, or ids past the vocabulary).
    `remedy` ends the message: how to get the right file back, where there is a way."""
    if sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise UserError(f"{path} is not the tokenizer {whose} (its sha256 differs from the recorded one){remedy}")


# Token streams and batches ------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenText:
    """A tokenised text and how many bytes each token id stands for."""

    tokens: Tensor  # (N,) uint8 or int32
    token_bytes: Tensor  # (V,) int64

    def __len__(self) -> int:
        return self.tokens.shape[0]


def tokenize(tokenizer: ByteTokenizer | BPETokenizer, texts: list[str]) -> TokenText:
    return TokenText(tokenizer.encode_documents(texts), tokenizer.token_bytes())


def require_windows(text: TokenText, seq_len: int, what: str,
                    fix: str = "give more text (--data) or lower train.seq_len") -> None:
    """A window is seq_len + 1 tokens; say plainly when a text is shorter than one."""
    if len(text) < seq_len + 1:
        tokens = "1 token" if len(text) == 1 else f"{len(text)} tokens"
        raise UserError(f"the {what} text has {tokens} but one window needs train.seq_len + 1 = {seq_len + 1}: {fix}")


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends on nothing but (seed, step)."""
    digest = hashlib.sha256(f"nldsl-batch:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def window_starts(length: int, seed: int, step: int, batch: int, seq_len: int) -> Tensor:
    """Start positions (batch,) of the random windows of step `step` in a text of `length` tokens."""
    return torch.randint(0, length - seq_len, (batch,), generator=step_generator(seed, step))


def windows(tokens: Tensor, starts: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets (B, seq_len), int64, from windows of seq_len + 1 tokens."""
    index = starts.unsqueeze(1) + torch.arange(seq_len + 1)  # (B, seq_len + 1)
    chunk = tokens[index].long()
    return chunk[:, :-1], chunk[:, 1:]


def batch_at(text: TokenText, seed: int, step: int, batch: int, seq_len: int,
             rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
    """This rank's share of the global batch of step `step`: rows [rank·B/W, (rank+1)·B/W)."""
    starts = window_starts(len(text), seed, step, batch, seq_len)
    share = batch // world_size
    return windows(text.tokens, starts[rank * share:(rank + 1) * share], seq_len)


def evaluation_starts(length: int, seq_len: int, limit: int | None) -> Tensor:
    """Non-overlapping windows (stride seq_len) over the whole text, thinned to `limit` evenly spaced
    ones when there are more; the same for every run, so evaluations are comparable."""
    count = (length - 1) // seq_len
    starts = torch.arange(count) * seq_len
    if limit is not None and count > limit:
        starts = starts[torch.linspace(0, count - 1, limit).round().long()]
    return starts


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, text_bytes(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) for each non-empty line of a JSON-lines file; None for a line that is
    not JSON. Appends are not atomic, so a process killed while writing leaves a cut last line
    (and hands can leave anything): the readers pass such lines over instead of failing."""
    lines = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            lines.append((number, json.loads(raw.decode("utf-8"))))
        # ValueError: not UTF-8 or not JSON (or an integer past Python's digit limit); RecursionError:
        # arrays or objects nested deeper than the parser's recursion (a hand-made `[[[[…`)
        except (ValueError, RecursionError):
            lines.append((number, None))
    return lines

"""The data of the studies (`nldsl bench continual|recall`): three offline text domains and two recall tasks.

- Text domains, byte-level, built from what every Python installation carries, so the continual
  study needs no download:
  `docs`    English documentation: the pydoc topics (`pydoc_data.topics.topics`), sorted by topic;
  `code`    Python code: the standard library's `.py` sources, sorted by path, without
            site-packages, test folders and pydoc_data;
  `unicode` a catalog: one line `U+0041 LATIN CAPITAL LETTER A` per named code point of the
            Unicode database (`unicodedata`), without the names derived from the code point itself
            (`CJK UNIFIED IDEOGRAPH-4E00` …), which would make most of it a hex counter.
  A domain's documents are joined with a blank line and cut into blocks of `BLOCK_BYTES`; every
  `VALIDATION_EVERY`-th block is validation text, the rest training text. Interleaved blocks keep
  both sides drawn from the whole domain (a tail cut of the Unicode catalog would be all Hangul).
  The sizes depend on the Python version; `Domain.record` says what they were.
- MQAR (multi-query associative recall, in the layout of the Zoology benchmark): a prefix of
  key-value pairs `k₁ v₁ k₂ v₂ …`, keys drawn without replacement from `[1, vocab/2)` and values
  from `[vocab/2, vocab)`, then every key asked once in the rest of the sequence, each query
  followed by its value. Query slots `g = 0, 1, …` (pairs of positions after the prefix) are drawn
  without replacement with probability ∝ (g + 1)^(a − 1) (a power law: most queries come soon
  after the prefix, a long tail far away); the other positions hold the filler token 0. Only
  the positions of queried keys are scored: the model must output the value paired earlier.
- Passkey retrieval: filler sentences, `The pass key is 31415. ` hidden at a random depth, and at
  the end `What is the pass key? The pass key is 31415`; the scored positions are those that
  predict the final digits.

A task batch is `tokens` (N, T + 1) with `scored` (N, T): the model reads `tokens[:, :-1]` and is
scored where `scored` is set on predicting `tokens[:, 1:]`.
"""

from __future__ import annotations

import pydoc_data.topics
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nldsl.runtime.data import stdlib_sources

BLOCK_BYTES = 4096
VALIDATION_EVERY = 10  # block i is validation text when i % VALIDATION_EVERY == VALIDATION_EVERY − 1
DOMAIN_NAMES = ("docs", "code", "unicode")


@dataclass(frozen=True)
class Domain:
    """One text domain as byte tokens, split into training and validation text."""

    name: str
    source: str  # where the text comes from, in words
    train: Tensor  # (N_train,) uint8
    validation: Tensor  # (N_validation,) uint8
    documents: int

    @property
    def record(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "documents": self.documents,
                "train_bytes": int(self.train.numel()), "validation_bytes": int(self.validation.numel()),
                "python": sys.version.split()[0], "unicode": unicodedata.unidata_version}


def docs_documents() -> list[str]:
    """The pydoc topics, English reference documentation."""
    topics = pydoc_data.topics.topics
    return [topics[name] for name in sorted(topics)]


def code_documents() -> list[str]:
    """The standard library's Python sources (UTF-8 files only), codec tables included: unlike the
    training corpus (data.default_corpus), this is the text the published study runs read."""
    return [text for _, text in stdlib_sources(codec_tables=True)]


def unicode_documents() -> list[str]:
    """The Unicode name catalog as one document, one named code point a line."""
    lines = []
    for code in range(sys.maxunicode + 1):
        name = unicodedata.name(chr(code), None)
        if name is None or name.endswith((f"-{code:04X}", f"-{code:05X}")):
            continue
        lines.append(f"U+{code:04X} {name}")
    return ["\n".join(lines)]


SOURCES = {
    "docs": (docs_documents, "English documentation: pydoc_data.topics.topics"),
    "code": (code_documents, "Python code: the standard library's .py sources"),
    "unicode": (unicode_documents, "a catalog: unicodedata names, one `U+0041 LATIN CAPITAL LETTER A` a line"),
}


def split_blocks(data: bytes) -> tuple[Tensor, Tensor]:
    """Training and validation bytes: every `VALIDATION_EVERY`-th block of `BLOCK_BYTES` is validation."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    starts = range(0, len(data), BLOCK_BYTES)
    held_out = [start // BLOCK_BYTES % VALIDATION_EVERY == VALIDATION_EVERY - 1 for start in starts]
    train = [tokens[s:s + BLOCK_BYTES] for s, out in zip(starts, held_out) if not out]
    validation = [tokens[s:s + BLOCK_BYTES] for s, out in zip(starts, held_out) if out]
    empty = tokens[:0]
    return torch.cat(train) if train else empty, torch.cat(validation) if validation else empty


def load_domain(name: str, max_bytes: int | None = None) -> Domain:
    """A domain by name (`docs`, `code`, `unicode`); `max_bytes` keeps only the start of its text."""
    documents_of, source = SOURCES[name]
    documents = documents_of()
    data = "\n\n".join(documents).encode("utf-8")
    if max_bytes is not None:
        data = data[:max_bytes]
    train, validation = split_blocks(data)
    return Domain(name, source, train, validation, len(documents))


def load_domains(names: tuple[str, ...] = DOMAIN_NAMES, max_bytes: int | None = None) -> list[Domain]:
    """The domains in the order given (the order the continual study trains them)."""
    return [load_domain(name, max_bytes) for name in names]


def random_windows(text: Tensor, count: int, length: int, generator: torch.Generator) -> Tensor:
    """`count` random windows of `length` tokens from a byte text."""
    starts = torch.randint(0, text.numel() - length + 1, (count,), generator=generator)
    offsets = torch.arange(length)
    return text[starts[:, None] + offsets].long()  # (count, length)


def spaced_windows(text: Tensor, count: int, length: int) -> Tensor:
    """`count` windows of `length` tokens at evenly spaced offsets (a fixed validation set)."""
    last = text.numel() - length
    starts = torch.linspace(0, last, count).long()
    return text[starts[:, None] + torch.arange(length)].long()  # (count, length)


@dataclass(frozen=True)
class TaskBatch:
    """Sequences of a recall task and where they are scored."""

    tokens: Tensor  # (N, T + 1) long
    scored: Tensor  # (N, T) bool: position t is scored on predicting tokens[:, t + 1]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def slice(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(self.tokens[start:stop], self.scored[start:stop])


def power_law_slot_probabilities(slots: int, power: float) -> Tensor:
    """P(slot g) ∝ (g + 1)^(power − 1) for g = 0 … slots − 1."""
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (power - 1)
    return weights / weights.sum()


def mqar(count: int, seq_len: int, pairs: int, vocab: int = 256, power: float = 0.01,
         seed: int = 0) -> TaskBatch:
    """Multi-query associative recall sequences (layout in the module docstring), deterministic by seed."""
    length = seq_len + 1
    slots = (length - 2 * pairs) // 2  # query slots after the prefix, two positions each
    assert slots >= pairs, f"{pairs} pairs do not fit in {seq_len} tokens"
    assert pairs <= vocab // 2 - 1, "keys must be distinct"
    generator = torch.Generator().manual_seed(seed)
    half = vocab // 2
    keys = torch.rand(count, half - 1, generator=generator).argsort(dim=1)[:, :pairs] + 1  # (N, D) in [1, V/2)
    values = torch.rand(count, half, generator=generator).argsort(dim=1)[:, :pairs] + half  # (N, D) in [V/2, V)
    probabilities = power_law_slot_probabilities(slots, power).expand(count, slots)
    query_slots = torch.multinomial(probabilities, pairs, replacement=False, generator=generator)  # (N, D)
    tokens = torch.zeros(count, length, dtype=torch.long)
    tokens[:, 0:2 * pairs:2] = keys
    tokens[:, 1:2 * pairs:2] = values
    rows = torch.arange(count)[:, None]
    query_positions = 2 * pairs + 2 * query_slots  # (N, D)
    tokens[rows, query_positions] = keys
    tokens[rows, query_positions + 1] = values
    scored = torch.zeros(count, seq_len, dtype=torch.bool)
    scored[rows, query_positions] = True
    return TaskBatch(tokens, scored)


FILLER = ("The river ran slowly past the mill. A cart rolled along the road to town. "
          "Rain fell on the roofs of the village. The baker opened his shop at dawn. "
          "Children walked to school under grey clouds. An old dog slept by the fire. ")
PASSKEY_SENTENCE = "The pass key is {key}. "
PASSKEY_QUESTION = "What is the pass key? The pass key is {key}"


def passkey(count: int, seq_len: int, digits: int = 5, seed: int = 0) -> TaskBatch:
    """Passkey retrieval sequences of exactly `seq_len + 1` bytes, deterministic by seed."""
    generator = torch.Generator().manual_seed(seed)
    length = seq_len + 1
    fixed = len(PASSKEY_SENTENCE.format(key="0" * digits)) + len(PASSKEY_QUESTION.format(key="0" * digits))
    filler_bytes = length - fixed
    assert filler_bytes >= 0, f"a passkey of {digits} digits needs at least {fixed - 1} tokens"
    filler = (FILLER * (filler_bytes // len(FILLER) + 2)).encode("ascii")
    rows = []
    for _ in range(count):
        key = "".join(str(d) for d in torch.randint(0, 10, (digits,), generator=generator).tolist())
        before = int(torch.randint(0, filler_bytes + 1, (1,), generator=generator))
        offset = int(torch.randint(0, len(FILLER), (1,), generator=generator))
        text = filler[offset:offset + filler_bytes]
        row = (text[:before] + PASSKEY_SENTENCE.format(key=key).encode("ascii") + text[before:]
               + PASSKEY_QUESTION.format(key=key).encode("ascii"))
        rows.append(torch.tensor(list(row), dtype=torch.long))
    tokens = torch.stack(rows)  # (N, T + 1)
    scored = torch.zeros(count, seq_len, dtype=torch.bool)
    scored[:, seq_len - digits:] = True
    return TaskBatch(tokens, scored)

"""Command-line arguments of the runtime commands (train, eval, generate, stream, bench).

Kept apart from the commands themselves so that building the parser never imports torch.
"""

from __future__ import annotations

import argparse
import codecs
import math
import struct
from collections.abc import Callable


def at_least(low: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer ≥ low (a step count of 0 or a negative batch is a usage error),
    and at most `most` when given."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,}, got {value}")
        return value
    return parse


def path_text(text: str) -> str:
    """An argparse type: a file or folder name that is not empty (`Path("")` is the current folder,
    so an unset shell variable would otherwise read, or write, the wrong place)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file or folder")
    return text


def text_codec(text: str) -> str:
    """An argparse type: the name of a text encoding Python knows (`latin-1`, `utf-16`), not an
    empty one (which would read as the default) nor a bytes-to-bytes codec such as `hex`."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty encoding: name one, e.g. utf-8 or latin-1")
    try:
        known = codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown encoding `{text}` (e.g. utf-8, latin-1, utf-16)") from None
    if not getattr(known, "_is_text_encoding", True):
        raise argparse.ArgumentTypeError(f"`{text}` is not a text encoding (e.g. utf-8, latin-1, utf-16)")
    return text


def slow_lr(text: str) -> tuple[str, float]:
    """An argparse type: `LEVEL=LR`, a slow level's name as the stream prints it and a finite η ≥ 0
    (the stream checks the name against the model's levels)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected LEVEL=LR (e.g. cms.slow=0.01), got {text!r}")
    try:
        lr = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number after `=`, got {value!r}") from None
    if not math.isfinite(lr) or lr < 0 or lr > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"a learning rate is a finite number ≥ 0, got {value!r}")
    return name.strip(), lr


FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45  # the smallest positive float32 (a subnormal)


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 that float32 holds (a learning rate: the parameters' dtype)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    # a number so small that float32 rounds it to 0 would be a learning rate of 0, without a word
    if not (math.isfinite(value) and 0 < value <= FLOAT32_MAX and struct.unpack("f", struct.pack("f", value))[0] > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0 that float32 holds, from {FLOAT32_TINY:.2g} to "
                                         f"{FLOAT32_MAX:.3g}, got {text}")
    return value


def temperature(text: str) -> float:
    """An argparse type: a sampling temperature, a finite number ≥ 0 (0 = greedy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0 (0 = greedy), got {text}")
    return value


def seed_up_to(largest: int, shown: str, why: str = "") -> Callable[[str], int]:
    """An argparse type: a random seed from 0 to `largest` (written `shown` in the message, `why` after it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not 0 <= value <= largest:
            raise argparse.ArgumentTypeError(f"must be between 0 and {shown}{why}, got {value}")
        return value
    return parse


random_seed = seed_up_to(2**63 - 1, "2^63 - 1")  # the seeds torch takes


def add_runtime_commands(sub, overrides: Callable[[argparse.ArgumentParser], None], handler) -> None:
    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda if available)")

    def encoding(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-encoding", default=None, metavar="CODEC", type=text_codec,
                       help="encoding of the --data files (default utf-8; train --resume: the encoding the run "
                            "recorded; an undecodable file is an error)")

    def progress(p: argparse.ArgumentParser, instead: str = "") -> None:
        p.add_argument("--no-progress", action="store_true", help="no progress bar" + instead)

    p = sub.add_parser("train", help="train a spec (default: the embedded corpus, no download)")
    p.add_argument("spec", metavar="SPEC", type=path_text)
    overrides(p)
    p.add_argument("--data", nargs="+", metavar="PATH", type=path_text,
                   help="text files, or folders searched recursively for *.txt, *.md, *.py, *.rst … "
                        "(default: the Python standard library's sources and pydoc topics, no download)")
    p.add_argument("--run-dir", metavar="DIR", type=path_text,
                   help="where checkpoints and logs go (default: runs/<spec>-<date>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir (default: the newest runs/<spec>-*) exactly; "
                        "with --set train.steps=N, train it longer")
    p.add_argument("--init-from", metavar="RUN_DIR|CHECKPOINT", type=path_text,
                   help="start a new run from the weights of a run or checkpoint (a fresh optimizer, step 0), "
                        "e.g. to train a trained model on new --data")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    p.add_argument("--no-compile", action="store_true",
                   help="run eagerly (like --set train.compile=false, but the run resumes either way)")
    p.add_argument("--sample", action="store_true", help="after training: evaluate, generate a sample, draw the graph")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard parameters, gradients and optimizer state (FSDP2, for GPUs)")
    encoding(p)
    progress(p, ": a log line every train.log_every steps instead (as when the output is not a terminal)")
    device(p)
    p.set_defaults(func=handler, runtime_command="train")

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a run or checkpoint")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", type=path_text, nargs="?")  # _load names a missing one
    p.add_argument("--data", nargs="+", metavar="PATH", type=path_text,
                   help="evaluate on these files instead of the validation split (name RUN_DIR first: "
                        "the files take every word after --data, or end them with --)")
    p.add_argument("--batches", type=at_least(1), default=None,
                   help="number of batches, each train.batch windows of train.seq_len + 1 tokens (default: "
                        "the run's train.eval_batches)")
    encoding(p)
    progress(p)
    device(p)
    p.set_defaults(func=handler, runtime_command="eval")

    p = sub.add_parser("generate", help="sample text from a trained model")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", type=path_text, nargs="?")  # _load names a missing one
    p.add_argument("--prompt", default="def ",
                   help="text to continue (default: %(default)r; an empty one starts after a newline)")
    p.add_argument("--tokens", type=at_least(0), default=200, help="how many tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=temperature, default=0.8,
                   help="divides the logits before sampling; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=at_least(0), default=40,
                   help="sample among the k likeliest tokens; 0 = all (default: %(default)s)")
    p.add_argument("--seed", type=random_seed, default=0, help="seed of the sampling (default: %(default)s)")
    device(p)
    p.set_defaults(func=handler, runtime_command="generate")

    p = sub.add_parser("stream", help="feed a long text through a model that keeps learning (continuum clock)")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", type=path_text, nargs="?")  # _load names a missing one
    p.add_argument("--data", nargs="+", metavar="PATH", type=path_text,
                   help="text to stream (default: the validation split; name RUN_DIR first: the files take "
                        "every word after --data, or end them with --)")
    p.add_argument("--segment", type=at_least(1), default=None,
                   help="tokens per forward pass (default: the run's train.seq_len)")
    p.add_argument("--max-tokens", type=at_least(1), default=None,
                   help="predict at most this many tokens of the text, reading one more as the last one's target "
                        "(tokens a --state-in left waiting come on top)")
    p.add_argument("--state-in", metavar="FILE", type=path_text, help="continue from a saved memory state")
    p.add_argument("--state-out", metavar="FILE", type=path_text,
                   help="save the memory state at the end (an unfinished last segment waits in it for the next text)")
    p.add_argument("--no-learn", action="store_true", help="freeze the slow levels (in-context levels still run)")
    p.add_argument("--slow-lr", action="append", default=[], metavar="LEVEL=LR", type=slow_lr,
                   help="the SGD learning rate of a slow level in this stream (e.g. cms.slow=0.01; default: the "
                        "level's lr in the spec); repeat for several levels")
    p.add_argument("--baseline", action="store_true",
                   help="also score each segment from a fresh memory state, as eval scores a window, to show "
                        "what carrying the memory adds (one more forward pass per segment)")
    encoding(p)
    progress(p)
    device(p)
    p.set_defaults(func=handler, runtime_command="stream")

    studies = ("speed", "continual", "recall", "smoke")
    p = sub.add_parser("bench", help="benchmarks and studies: " + ", ".join(studies))
    p.add_argument("study", choices=studies)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the study (see --help of each)")
    p.set_defaults(func=handler, runtime_command="bench")

"""The studies behind `nldsl bench continual` and `nldsl bench recall`: small CPU-scale experiments.

- Continual learning: the text domains of `domains.py` trained one after another; after each
  phase every domain's validation bits per byte gives the score matrix R[i, j] (after phase i, on
  domain j). Reported: average final bpb, backward transfer (BWT, positive = forgetting),
  plasticity R[j, j], a joint-training upper bound (the same steps on mixed domains), and a
  control: a Transformer whose MLP learns 10× slower, so that "updating less forgets less" is
  visible on its own.
- Long-context recall: MQAR (trained at one length and number of pairs, tested on several) with a
  small learning-rate sweep, and passkey retrieval trained at one length and tested at 1×–8× it.
- Models are built with `nldsl.load` at MATCHED parameter count: each spec's `dim` is the width
  (a multiple of 4 the spec accepts) whose count is nearest to `--params`. Widths come in steps, so
  the counts are close, not equal (within MATCH_TOLERANCE; the reports give their spread).
- The loop is eager (no torch.compile: compiling dominates runs this short on CPU), one thread,
  torch.optim.AdamW built here with the spec's AdamW hyper-parameters and the decay split of the
  spec optimizer (weight decay on tensors of two or more dimensions only), linear warm-up then a
  constant learning rate (a continual learner has no end of training to decay towards), and a
  gradient-norm clip over all parameters.
- The continuum clock (docs/semantics.md §4): a parameter under a `CLOCK_STEPS` prefix of the
  generated module with N > 1 steps between updates sums its clipped gradient every step and is
  stepped by AdamW only when (step + 1) is a multiple of N, with that sum; in between it has no
  gradient, so AdamW leaves it (and its moments) alone.
- Each finished run is appended to `<out>/<study>.runs.jsonl`; `--resume` reuses the runs of an
  identical configuration, so an interrupted study continues where it stopped, and
  `--report-only` rebuilds the report from the logged runs without training. `<out>` defaults to
  `runs/bench-<study>`; the published pages are written only with an explicit `--out docs/results`.
- Statistics over seeds leave diverged (NaN) runs out and say how many there were; two models are
  compared by Welch's two-sided t-test at the 5% level, and a comparison with a diverged seed or
  fewer than two seeds is reported as not comparable.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

import nldsl
from nldsl.cli import UserError
from nldsl.diagnostics import SpecError, SpecWarning, listing
from nldsl.files import write_atomic
from nldsl.runtime import domains as D
from nldsl.runtime.arguments import at_least, path_text, positive_float, seed_up_to
from nldsl.runtime.data import read_json_lines
from nldsl.runtime.heap import frozen_heap
from nldsl.runtime.train import ContinuumClock

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"
SPEC_FILES = {
    "transformer": "transformer.nl",
    "titans": "titans_lmm.nl",
    "hope_attention": "hope_attention.nl",
    "hope": "hope.nl",
    "deltanet": "deltanet.nl",
}
# Departures from the shipped specs, applied to every run of that model and stated in the reports.
STUDY_OVERRIDES = {
    # The setting the studies were made with (see `override_notes`): normalised values and an inner
    # lr bound of 0.01 (the spec then bounded it at 0.1, which blew up on real text).
    "titans": ("model.block.lmm.value_norm=l2", "model.block.lmm.level.lr=learned(max=0.01)"),
    # hope.nl bounded η at 0.1 when the studies ran; it now bounds it at 0.02 (see `override_notes`).
    "hope": ("model.block.titans.memory.lr=generated(max=0.1)",
             "model.block.titans.projections.lr=generated(max=0.1)"),
}
SPEC_LR = 3e-3  # the outer lr of every shipped spec used here
CONTROL = "transformer_slow_mlp"  # the Transformer whose MLP weights learn at lr × CONTROL_MLP_LR_SCALE
CONTROL_MLP_LR_SCALE = 0.1
MLP_PARAMETER = re.compile(r"^blocks\.\d+\.mlp\.")
RESULTS = Path("docs/results")  # the published pages: written only when --out names this folder
# The default --out of each study: a run without --out must never replace the published results
DEFAULT_RESULTS = {"continual": Path("runs/bench-continual"), "recall": Path("runs/bench-recall")}
# --tiny is a smoke run: its toy numbers must never replace the published results in RESULTS
TINY_RESULTS = Path("runs/bench-tiny")
BYTE_VOCAB = 256  # the studies' tokens are bytes (text domains, MQAR and passkey alike)


def spec_path(name: str) -> Path:
    """The spec file of a study model name (`hope`) or a path given as is."""
    if name in SPEC_FILES:
        return SPECS_DIR / SPEC_FILES[name]
    path = Path(name)
    if not path.exists():
        if path.suffix == ".nl" or "/" in name or os.sep in name:  # written as a path: say the file is missing
            raise UserError(f"--models {name}: no such spec file (the known models: {', '.join(SPEC_FILES)})")
        raise UserError(f"unknown model `{name}` (known: {', '.join(SPEC_FILES)}; or give a spec path)")
    if not path.is_file():
        raise UserError(f"--models {name}: not a spec file")
    return path


def check_model_spec(name: str) -> None:
    """A model of --models must be a spec without errors (its diagnostics are printed otherwise)
    that defines a model the studies can train: with the AdamW they build, on byte tokens (a byte
    vocabulary, no BPE), and with a `const dim` the study can set (it matches widths through dim).
    Checked for every model before any run, so a spec the study cannot use never costs another
    model's training."""
    from nldsl import loader

    path = spec_path(name)
    result = loader.check(path, study_overrides(name))  # SpecError: the command prints the diagnostics
    if result.spec.model is None:
        raise UserError(f"--models {name}: {path} defines no `model` section, so there is nothing to train")
    train = result.spec.train
    kind = getattr(train.optimizer, "kind", None)
    if kind != "adamw":
        written = (f"the optimizer section `{train.optimizer.name}`" if kind == "spec" and train.optimizer.name
                   else "an optimizer section" if kind == "spec" else f"{kind}(…)")
        raise UserError(f"--models {name}: {path} trains with {written}, but the studies train every model with "
                        "the built-in AdamW (its lr, weight decay and betas taken from `optimizer = adamw(…)`): "
                        "write `optimizer = adamw(lr = …, weight_decay = …)` in its `train` section (an `optimizer` "
                        "section, even one written as AdamW, is not read)")
    if train.tokenizer.kind != "bytes":
        raise UserError(f"--models {name}: {path} uses the {train.tokenizer.kind} tokenizer, but the studies "
                        f"train on bytes (tokens 0–{BYTE_VOCAB - 1}): use the bytes tokenizer and vocab = "
                        f"{BYTE_VOCAB}")
    if result.spec.model.vocab < BYTE_VOCAB:
        raise UserError(f"--models {name}: {path} has vocab = {result.spec.model.vocab}, but the studies train "
                        f"on bytes (tokens 0–{BYTE_VOCAB - 1}): the vocabulary must hold at least {BYTE_VOCAB}")
    try:
        loader.check(path, [f"dim={result.spec.model.dim}", *study_overrides(name)])
    except SpecError:
        raise UserError(f"--models {name}: {path} has no `const dim` the study can set (it matches every model's "
                        "parameter count by its width; declare `const dim = …` and use it as the model's dim)"
                        ) from None


def model_name(name: str) -> str:
    return name if name in SPEC_FILES else Path(name).stem


@functools.cache
def study_overrides(name: str) -> tuple[str, ...]:
    return STUDY_OVERRIDES.get(name, ())


def parameter_count(spec: Path, dim: int, overrides: tuple[str, ...] = ()) -> int | None:
    """Parameters of the spec's model at width `dim`; None when the spec rejects that width."""
    try:
        model = nldsl.load(spec, [f"dim={dim}", *overrides])
    except SpecError:
        return None
    return sum(p.numel() for p in model.parameters())


def matched_width(spec: Path, target: int, overrides: tuple[str, ...] = ()) -> tuple[int, int]:
    """(dim, parameter count) of the width whose count is nearest to `target`: a bisection over multiples
    of 8 (valid for every shipped spec), then the multiples of 4 beside it that the spec accepts (an odd
    head width is fine without rotary embeddings)."""
    low, high = 1, 64  # in units of 8; the count grows with dim
    while low < high:
        middle = (low + high) // 2
        if (parameter_count(spec, middle * 8, overrides) or 0) < target:
            low = middle + 1
        else:
            high = middle
    candidates = {d for d in range(low * 8 - 12, low * 8 + 5, 4) if d >= 4}
    counted = [(abs(n - target), dim, n) for dim in sorted(candidates) if (n := parameter_count(spec, dim, overrides))]
    if not counted:
        raise UserError(f"{spec}: no width near {target:,} parameters is valid for this spec (try another --params, "
                        f"or check it with `nldsl check {spec} --set dim=64`)")
    _, dim, count = min(counted)
    if abs(count - target) > MATCH_TOLERANCE * target:  # past the widths searched: say so, never clamp
        raise UserError(f"{spec}: --params {target:,} is out of reach; the nearest of the widths searched (dim 4 "
                        f"to 516) is dim {dim}, with {count:,} parameters")
    return dim, count


MATCH_TOLERANCE = 0.25  # how far a matched model's parameter count may be from --params


def logged_params(run: dict[str, Any], target: int, label: str) -> int:
    """--report-only: a logged run's parameter count, refused when --params does not describe it (the
    match ignores widths, which follow the spec files of the day, so a page must not claim a size
    its runs never had)."""
    count = int(run["params"])
    if abs(count - target) > MATCH_TOLERANCE * target:
        raise UserError(f"--report-only: the logged runs of {label} have {count:,} parameters, not about --params "
                        f"{target:,}: rebuild with the options the study ran with")
    return count


def recorded_params(previous: Path, target: int, log_path: Path) -> int | None:
    """--report-only: the --params of the invocation whose summary `previous` (the study's JSON beside its
    log) records, refused unless it is `target`: the page names --params in its command and width
    sentence, and the logged widths are what that value matched, not what another one would. None
    when no summary records it (then each logged width is checked against what `target` matches)."""
    try:
        earlier = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = earlier.get("config") if isinstance(earlier, dict) else None
    params = config.get("params") if isinstance(config, dict) else None
    if not isinstance(params, int) or isinstance(params, bool):
        return None
    if params != target:
        command = earlier.get("command")
        # --tiny sets --params itself: the command that made the runs is the one to rebuild with
        again = (f"`{command} --report-only`" if isinstance(command, str) and "--tiny" in command.split()
                 else f"--params {params}")
        raise UserError(f"--report-only: the runs in {log_path} were made with --params {params:,} (as {previous} "
                        f"records), not {target:,}: rebuild with {again}")
    return params


def check_logged_width(spec: Path, target: int, overrides: tuple[str, ...], logged: int, label: str,
                       known: dict[str, int]) -> None:
    """--report-only without a recorded --params: a logged width must be the one `target` matches (at
    the spec files of today), or the page would say the widths are nearest to a count they are not."""
    if label not in known:
        known[label] = matched_width(spec, target, overrides)[0]
    if known[label] != logged:
        raise UserError(f"--report-only: the logged runs of {label} have dim {logged}, and --params {target:,} "
                        f"matches dim {known[label]}: no summary beside the log records the --params they were "
                        "made with; rebuild with that --params")


# The training loop --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """One model and how it is trained."""

    spec: str  # path of the spec file
    dim: int
    seq_len: int  # the training length: decides which CMS levels learn in context (semantics §3.7)
    batch: int
    seed: int
    lr: float | None = None  # None: the spec's AdamW lr
    mlp_lr_scale: float = 1.0  # the control's slower MLP
    warmup: int = 20
    clip: float = 1.0
    overrides: tuple[str, ...] = ()  # --set values beyond the width and training shape


def short_of_warmup(warmup: int, runs: dict[str, int]) -> dict[str, int]:
    """The runs (what → outer steps) that end inside the linear warm-up, never at the full lr."""
    return {what: steps for what, steps in runs.items() if steps < warmup}


def warn_warmup(warmup: int, runs: dict[str, int]) -> None:
    """Before any run: say so when a run ends inside the warm-up (its page says so too)."""
    for what, steps in short_of_warmup(warmup, runs).items():
        print(f"warning: {what} take {plural(steps, 'step')}, fewer than the {plural(warmup, 'warm-up step')}: "
              f"they end inside the linear warm-up, their last step at {steps}/{warmup} of the lr, never at the lr "
              "itself (the report says so)", file=sys.stderr)


@dataclass
class Scores:
    """Sums over scored positions and sequences of an evaluation."""

    loss: float = 0.0  # nats
    positions: int = 0
    correct: int = 0
    sequences: int = 0
    sequences_correct: int = 0  # every scored position of the sequence right

    @property
    def bits_per_byte(self) -> float:
        return self.loss / max(self.positions, 1) / math.log(2)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.positions, 1)

    @property
    def exact(self) -> float:
        return self.sequences_correct / max(self.sequences, 1)


_SHOWN_WARNINGS: set[str] = set()  # a spec's warnings at a setup, printed by the first Learner that meets them


class Learner:
    """A freshly initialised model of a spec with its AdamW and continuum clock."""

    def __init__(self, setup: Setup):
        self.setup = setup
        torch.manual_seed(setup.seed)
        overrides = [f"dim={setup.dim}", f"train.seq_len={setup.seq_len}", f"train.batch={setup.batch}",
                     *setup.overrides]
        with warnings.catch_warnings(record=True) as caught:  # shown once each, as `nldsl check` shows them
            warnings.simplefilter("always", SpecWarning)
            self.model = nldsl.load(setup.spec, overrides)
        for warning in caught:
            if issubclass(warning.category, SpecWarning) and "W0711" in str(warning.message):
                continue  # read against the spec's train.steps, not the study's: the page lists the study's
            if issubclass(warning.category, SpecWarning) and str(warning.message) not in _SHOWN_WARNINGS:
                _SHOWN_WARNINGS.add(str(warning.message))
                print(f"{warning.message}\n", file=sys.stderr)
            elif not issubclass(warning.category, SpecWarning):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        optimizer = self.model.spec.train.optimizer
        if getattr(optimizer, "kind", None) != "adamw":
            raise UserError(f"{setup.spec}: the studies train with AdamW; the spec's optimizer is not adamw(…)")
        self.base_lr = setup.lr if setup.lr is not None else optimizer.lr
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = []
        for is_mlp in (False, True):
            for decay in (True, False):
                params = [p for n, p in named if bool(MLP_PARAMETER.match(n)) == is_mlp and (p.ndim >= 2) == decay]
                if params:
                    scale = setup.mlp_lr_scale if is_mlp else 1.0
                    groups.append({"params": params, "weight_decay": optimizer.weight_decay if decay else 0.0,
                                   "lr": self.base_lr * scale, "base_lr": self.base_lr * scale})
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=(optimizer.momentum, optimizer.beta2),
                                           eps=optimizer.eps)
        self.clock = ContinuumClock(named, dict(getattr(self.model.module, "CLOCK_STEPS", {})))
        self.parameters = [p for _, p in named]
        self.steps = 0

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for the inputs tokens[:, :-1]; the in-context CMS levels' surprise reads
        the true next tokens (a model learning from the stream knows them once they arrive)."""
        return self.model(tokens[:, :-1], tokens[:, 1:])

    def step(self, batch: D.TaskBatch) -> float:
        """One outer step on the scored positions of a batch; returns the loss."""
        warm = min(1.0, (self.steps + 1) / self.setup.warmup) if self.setup.warmup > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * warm
        logits = self.logits(batch.tokens)  # (B, T, V)
        loss = F.cross_entropy(logits[batch.scored].float(), batch.tokens[:, 1:][batch.scored])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.setup.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.setup.clip)
        self.clock.tick(self.steps)
        self.optimizer.step()
        self.steps += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.setup.spec}: the loss is {value} at step {self.steps}")
        return value

    @torch.no_grad()
    def evaluate(self, batch: D.TaskBatch, size: int | None = None) -> Scores:
        """Cross-entropy and accuracy on the scored positions, `size` sequences at a time."""
        scores = Scores()
        size = size or self.setup.batch
        for start in range(0, len(batch), size):
            part = batch.slice(start, start + size)
            logits = self.logits(part.tokens).float()  # (b, T, V)
            targets = part.tokens[:, 1:]
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (b, T)
            right = logits.argmax(-1) == targets
            scores.loss += float(losses[part.scored].sum())
            scores.positions += int(part.scored.sum())
            scores.correct += int(right[part.scored].sum())
            scores.sequences += len(part)
            scores.sequences_correct += int((right | ~part.scored).all(dim=1).sum())
        return scores


def language_batch(tokens: torch.Tensor) -> D.TaskBatch:
    """Language modelling: every position scored."""
    return D.TaskBatch(tokens, torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool))


# Run records (resumable studies) -----------------------------------------------------------------

CODE_SUFFIXES = (".py", ".lark", ".cpp")  # what decides a run's numbers: Python, the grammar, the fused kernel


@functools.cache
def code_digest() -> str:
    """sha256 of nldsl's sources (parser, grammar, checker, compiler, runtime, fused kernel, this file):
    a run made by other code is another run, whatever its configuration (a resumed study must not mix
    the two). Files are named by package (`nldsl.compiler/codegen.py`), so a source checkout, where
    compiler/ and grammar/ sit beside nldsl/, and an installed wheel, where they sit inside it, agree."""
    import nldsl.compiler
    import nldsl.grammar

    packages = {"nldsl.compiler": nldsl.compiler, "nldsl.grammar": nldsl.grammar, "nldsl": nldsl}
    roots = {name: Path(module.__file__).resolve().parent for name, module in packages.items()}
    named: dict[str, bytes] = {}
    for name, root in roots.items():
        nested = [r for other, r in roots.items() if other.startswith(name + ".")]  # inside root in a wheel
        for source in sorted(root.rglob("*")):
            if source.suffix not in CODE_SUFFIXES or "__pycache__" in source.parts:
                continue
            if not any(r in source.parents for r in nested):  # a subpackage's files are named by it
                named[f"{name}/{source.relative_to(root).as_posix()}"] = source.read_bytes()
    digest = hashlib.sha256()
    for key in sorted(named):
        digest.update(key.encode() + b"\0" + named[key] + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def loader_check(spec: str | Path, overrides: tuple[str, ...]) -> Any:
    """The checked spec (nldsl.spec.Spec) of a study model."""
    from nldsl import loader

    return loader.check(spec, list(overrides)).spec


def spec_digest(spec: str, overrides: tuple[str, ...]) -> str:
    """The checked spec's sha256 (its text, its imports' texts and the overrides): a spec file edited
    since a run makes another run."""
    return loader_check(spec, overrides).sha256[:16]


def run_key(key: dict[str, Any], setup: Setup) -> dict[str, Any]:
    """A study's run key with what else decides its numbers: the spec's contents and the code."""
    return {**key, "spec_sha256": spec_digest(setup.spec, setup.overrides), "code": code_digest()}


def portable(key: dict[str, Any]) -> dict[str, Any]:
    """The key with a shipped spec named `specs/<file>`, so that a log resumes from any checkout."""
    setup = key.get("setup")
    if isinstance(setup, dict) and "spec" in setup:
        spec = Path(setup["spec"])
        if spec.parent.resolve() == SPECS_DIR.resolve():
            key = {**key, "setup": {**setup, "spec": f"specs/{spec.name}"}}
    return key


# Result fields whose null in a JSON file stands for NaN (a diverged run): the files are strict JSON
NUMERIC_FIELDS = frozenset({"R", "train_bpb", "final_loss", "accuracy", "exact", "loss"})


def strict(value: Any) -> Any:
    """`value` with every non-finite float as None: NaN is not JSON, and strict readers reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def revive(value: Any, numeric: bool = False) -> Any:
    """A result read back from JSON: a null in a numeric field is the NaN it was written for (logs
    written before the files were strict hold NaN literals, which Python reads as NaN anyway)."""
    if isinstance(value, dict):
        return {key: revive(item, numeric or key in NUMERIC_FIELDS) for key, item in value.items()}
    if isinstance(value, list):
        return [revive(item, numeric) for item in value]
    return math.nan if value is None and numeric else value


def json_text(value: Any, indent: int | None = None) -> str:
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def write_text(path: Path, text: str | bytes) -> None:
    """Write a report file whole (never cut short); a full disk or a refused write names the file."""
    try:
        write_atomic(path, text.encode("utf-8") if isinstance(text, str) else text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def save_figure(figure: Any, path: Path) -> None:
    """A matplotlib figure as PNG, written like the reports."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_text(path, buffer.getvalue())


def key_of(text: str) -> dict[str, Any]:
    """The run key of a logged key text ({} for a key that is not one, e.g. edited by hand)."""
    try:
        key = json.loads(text)
    except ValueError:
        return {}
    return key if isinstance(key, dict) else {}


def report_match(key: dict[str, Any]) -> str:
    """What --report-only asks of a logged run: its configuration, whatever code and spec files made
    it, on whatever copy of the domains' texts, at whatever width the spec matched then (the report
    takes the width and the domains from the logged key)."""
    rest = {name: value for name, value in key.items() if name not in ("code", "spec_sha256", "domains")}
    if isinstance(rest.get("setup"), dict):
        rest["setup"] = {name: value for name, value in rest["setup"].items() if name != "dim"}
    return json.dumps(rest, sort_keys=True)


def number(value: Any) -> bool:
    """A logged number: an int or a float (NaN for a diverged run), never a bool or a text."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count_value(value: Any) -> bool:
    """A logged count (parameters, a step): an int, never a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def seconds_problem(result: dict[str, Any]) -> str | None:
    """What every study's logged result must hold: its time, which the page sums."""
    seconds = result.get("seconds")
    if not (number(seconds) and math.isfinite(seconds) and seconds >= 0):
        return "its `seconds` is not a finite, non-negative number"
    return None


def setup_problem(key: dict[str, Any], result: dict[str, Any]) -> str | None:
    """What both studies' reports read of any logged run: the width its key records, its parameter
    count and the step it diverged at (or null)."""
    setup = key.get("setup")
    if not (isinstance(setup, dict) and count_value(setup.get("dim"))):
        return "its key records no width (`setup.dim`)"
    if not (count_value(result.get("params")) and result["params"] > 0):
        return "its `params` is not a parameter count"
    if not (result.get("diverged_at_step") is None or count_value(result["diverged_at_step"])):
        return "its `diverged_at_step` is neither null nor a step"
    return None


DOMAIN_FIELDS = {"name": str, "source": str, "documents": int, "train_bytes": int, "validation_bytes": int,
                 "python": str, "unicode": str}


def continual_problem(key: dict[str, Any], result: dict[str, Any]) -> str | None:
    """Why a logged continual run cannot be reported (None when it can): its key must record the
    domains' texts the page describes, and its R hold a row before training and one after each
    phase (one phase when joint), a number (or null) per domain: the page indexes R by both."""
    domains = key.get("domains")
    if not (isinstance(domains, list) and domains
            and all(isinstance(d, dict) and all(isinstance(d.get(field), kind) and not isinstance(d[field], bool)
                                                for field, kind in DOMAIN_FIELDS.items()) for d in domains)):
        return "its key does not record the domains' texts"
    if key.get("kind") not in ("sequential", "joint"):
        return "its key names neither sequential nor joint training"
    rows = 2 if key["kind"] == "joint" else len(domains) + 1
    R = result.get("R")
    if not (isinstance(R, list) and len(R) == rows
            and all(isinstance(row, list) and len(row) == len(domains) and all(number(v) for v in row) for row in R)):
        return f"its `R` is not {rows} rows of {len(domains)} numbers (one row before training, one per phase)"
    return setup_problem(key, result)


def recall_problem(key: dict[str, Any], result: dict[str, Any]) -> str | None:
    """Why a logged recall run cannot be reported (None when it can): every test its key names must
    be scored (accuracy, exact and loss), with its final loss and training time."""
    task, tests, scales = key.get("task"), key.get("tests"), key.get("scales")
    if task == "mqar" and isinstance(tests, list) and all(isinstance(t, list) and len(t) == 2 for t in tests):
        names = [f"T={length} D={pairs}" for length, pairs in tests]
    elif task == "passkey" and isinstance(scales, list):
        names = [f"{scale}x" for scale in scales]
    else:
        return "its key names no MQAR tests or passkey scales"
    scored = result.get("tests")
    if not (isinstance(scored, dict) and all(isinstance(scored.get(name), dict)
                                             and all(number(scored[name].get(field))
                                                     for field in ("accuracy", "exact", "loss")) for name in names)):
        return f"its `tests` do not score {', '.join(names)} (accuracy, exact and loss each)"
    if not (number(result.get("final_loss")) and number(result.get("train_seconds"))):
        return "its `final_loss` or `train_seconds` is not a number"
    return setup_problem(key, result)


class RunLog:
    """Finished runs of a study, one JSON line each, keyed by their full configuration. Made only once
    every option and spec of the study is checked: a study refused for its options must leave an
    earlier study's log where it was. With `report_only` the log is read, never written or moved.
    `problem` says why a logged result of this study cannot be reported (None when it can): a line
    that is JSON but not such a result is passed over like a cut one, and never reaches a report."""

    def __init__(self, path: Path, resume: bool, report_only: bool = False,
                 problem: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None):
        self.path = path
        self.problem = problem
        self.done: dict[str, dict[str, Any]] = {}
        self.unusable: dict[str, tuple[int, str]] = {}  # key text → (line, why) of a logged result passed over
        self.reused = 0
        self.seconds = 0.0  # summed over every run of the study, reused or not
        self.report_only = report_only
        self.used: set[str] = set()  # the logged key texts this study's report is made of
        self.last_key: dict[str, Any] = {}  # the key of the run `run` returned last
        if report_only:
            if not path.is_file():
                raise UserError(f"--report-only rebuilds the report from the logged runs in {path}, and there is "
                                "no such file: run the study first, or give the --out that holds its log")
            self._read(rewrite=False)
            return
        try:  # before any run: a folder that cannot take the results must not cost a trained run
            path.parent.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path.parent).close()
            if resume and path.exists():
                self._read()
            elif path.exists() and path.stat().st_size:  # a new study: the earlier one's runs are moved aside
                previous = next(candidate for n in itertools.count(1)
                                if not (candidate := path.with_name(f"{path.name}.previous{'' if n == 1 else n}"))
                                .exists())
                path.replace(previous)
                print(f"note: the finished runs of an earlier study were moved to {previous} (without --resume "
                      "a study starts afresh)", file=sys.stderr)
        except OSError as error:
            # mkdir's "File exists" (or "Not a directory" further down) means a file stands where a folder must
            blocking = next((folder for folder in (path.parent, *path.parent.parents) if folder.is_file()), None)
            reason = f"{blocking} is a file, not a folder" if blocking else error.strerror or error
            raise UserError(f"cannot write the study's results to {path.parent}: {reason}") from None
        other = self._by_other_code()
        if other:
            print(f"note: {len(other)} of the {plural(len(self.done), 'logged run')} in {path} were made by other "
                  f"code ({', '.join(sorted(set(other.values())))}; this code is {code_digest()}) and are not "
                  "reused: --resume reuses only runs of the same code and spec files (`--report-only` rebuilds "
                  "the report from the logged runs without training)", file=sys.stderr)

    def _by_other_code(self) -> dict[str, str]:
        """The logged key texts made by code other than this, with that code's digest."""
        return {text: str(key_of(text).get("code")) for text in self.done
                if key_of(text).get("code") != code_digest()}

    def _read(self, rewrite: bool = True) -> None:
        """The finished runs of the log. An append cut short by a kill (or a line edited by hand, or a
        result this study cannot report) is passed over with a warning, and the log is rewritten
        without it: the next append would otherwise continue the cut line and be lost as well. Such
        runs are simply run again; the lines passed over are kept in `<log>.skipped`."""
        bad: list[int] = []  # the line numbers passed over
        for number, record in read_json_lines(self.path):
            if not (isinstance(record, dict) and isinstance(record.get("key"), str)
                    and isinstance(record.get("result"), dict)):
                bad.append(number)
                continue
            result = revive(record["result"])
            why = seconds_problem(result) or (self.problem(key_of(record["key"]), result) if self.problem else None)
            if why:
                bad.append(number)
                self.unusable[record["key"]] = (number, why)
            else:
                self.done[record["key"]] = result
        if not bad:
            return
        whys = sorted({why for _, why in self.unusable.values()})
        said = f" ({'; '.join(whys[:3])}{'; …' if len(whys) > 3 else ''})" if whys else ""
        if not rewrite:
            print(f"warning: {self.path}: passed over {len(bad)} unreadable line(s) (a run cut short while it was "
                  f"written, or a result edited by hand?){said}; the report is made without them", file=sys.stderr)
            return
        # the rewrite drops them from the log: keep them beside it, so that nothing is lost unseen
        skipped = self.path.with_name(f"{self.path.name}.skipped")
        lines = self.path.read_bytes().split(b"\n")
        with skipped.open("ab") as out:
            out.write(b"".join(lines[number - 1].rstrip(b"\r") + b"\n" for number in bad))
        print(f"warning: {self.path}: passed over {len(bad)} unreadable line(s) (a run cut short while it was "
              f"written, or a result edited by hand?){said}; those runs are done again, and the lines are kept "
              f"in {skipped}", file=sys.stderr)
        text = "".join(json_text({"key": key, "result": result}) + "\n" for key, result in self.done.items())
        write_text(self.path, text)  # a kill mid-rewrite must not cut the log

    def _logged(self, key: dict[str, Any]) -> str:
        """--report-only: the logged run of this configuration (the last logged, when several are)."""
        wanted = report_match(key)
        matches = [text for text in self.done if report_match(key_of(text)) == wanted]
        if not matches:
            setup = key.get("setup", {})
            what = " ".join(str(part) for part in (key.get("kind") or key.get("task"),
                                                   Path(setup.get("spec", "?")).name,
                                                   f"seed {setup.get('seed')}", f"lr {setup.get('lr')}"))
            scale = setup.get("mlp_lr_scale", 1.0)
            if scale != 1.0:  # the control: the same spec, seed and lr as the plain run, which may well be logged
                control = f"the control `{CONTROL}`, " if scale == CONTROL_MLP_LR_SCALE else ""
                what = f"{what} with its MLP at lr × {scale:g} ({control}not the plain run)"
            broken = [place for text, place in self.unusable.items() if report_match(key_of(text)) == wanted]
            if broken:
                number, why = max(broken)
                raise UserError(f"--report-only: the logged run of {what} (line {number} of {self.path}) cannot be "
                                f"reported: {why} (trains nothing; run the study with the same options, and "
                                "--resume, to make it again)")
            raise UserError(f"--report-only: {self.path} holds no run of {what} with these options (trains nothing; "
                            "run the study with the same options, and --resume, to make the missing runs)")
        return matches[-1]

    def run(self, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        text = json.dumps(portable(key), sort_keys=True)
        if self.report_only:
            text = self._logged(portable(key))
        if text in self.done:
            self.reused += 1
        else:
            self.done[text] = compute()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json_text({"key": text, "result": self.done[text]}) + "\n")
            except OSError as error:  # a full disk: say where, and that the run is lost
                raise UserError(f"cannot write {self.path}: {error.strerror or error} (the run just trained is "
                                "not logged; --resume trains it again)") from None
        self.used.add(text)
        self.last_key = key_of(text)
        self.seconds += self.done[text]["seconds"]
        return self.done[text]

    def note_unused(self) -> None:
        """After a resumed study: how many logged runs it did not reuse, and why (other code, or other
        spec files or options)."""
        unused = [text for text in self.done if text not in self.used]
        if self.report_only or not unused:
            return
        other = self._by_other_code()
        by_code = sum(text in other for text in unused)
        parts = ([f"{by_code} made by other code ({', '.join(sorted({other[t] for t in unused if t in other}))})"]
                 if by_code else []) + ([f"{len(unused) - by_code} made with other spec files or options"]
                                        if len(unused) > by_code else [])
        print(f"note: {plural(len(unused), 'logged run')} of {self.path} not reused: {', '.join(parts)}",
              file=sys.stderr)

    def codes(self) -> list[str]:
        """The code digests of the runs the report is made of."""
        return sorted({str(key_of(text).get("code")) for text in self.used})

    def record(self) -> dict[str, Any]:
        return {"runs_reused": self.reused, "run_seconds": self.seconds, "runs_code": self.codes()}


# Continual-learning metrics ------------------------------------------------------------------------

def average_final(scores: Sequence[Sequence[float]]) -> float:
    """Mean bpb over all domains after the last phase; `scores[i][j]` = R after phase i on domain j."""
    return statistics.fmean(scores[-1])


def backward_transfer(scores: Sequence[Sequence[float]]) -> float:
    """BWT = mean over j < T of R[T, j] − R[j, j], in bpb (positive = forgetting)."""
    last = len(scores) - 1
    assert last >= 1 and all(len(row) == len(scores) for row in scores), "R must be square, T ≥ 2"
    return statistics.fmean(scores[last][j] - scores[j][j] for j in range(last))


def plasticity(scores: Sequence[Sequence[float]]) -> list[float]:
    """R[j, j]: how well each new domain is learned in its own phase."""
    return [scores[j][j] for j in range(len(scores))]


def finite(values: Sequence[float]) -> list[float]:
    """The values of the seeds that did not diverge (a diverged run's scores are NaN)."""
    return [v for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation over the finite values: NaN mean when none is finite, and
    no standard deviation (None) from fewer than two."""
    kept = finite(values)
    if not kept:
        return math.nan, None
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else None)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def pm(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± std` over the finite seeds; says when seeds diverged or one seed leaves no spread."""
    kept = finite(values)
    if not kept:
        return f"diverged ({len(values)} of {len(values)})" if len(values) > 1 else "diverged"
    mean, std = mean_std(values)
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} (one seed: no spread)"
    if len(kept) < len(values):
        text += f" ({len(kept)} of {len(values)} seeds finite)"
    return text


# Two-sided 5% critical values of Student's t (its 0.975 quantiles) for 1–30 degrees of freedom; past
# 30, the Cornish–Fisher expansion around the normal's 1.96 (2.0394 at 31, where tables give 2.0395). Welch's
# degrees of freedom are rounded down, which makes the test conservative.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_critical(df: float) -> float:
    """The two-sided 5% critical value of Student's t at floor(df) degrees of freedom (df ≥ 1)."""
    whole = max(1, math.floor(df))
    if whole <= len(T_975):
        return T_975[whole - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * whole) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * whole ** 2)


@dataclass(frozen=True)
class Comparison:
    """a against b: `lower`, `higher`, `not significant` (Welch's two-sided t-test at 5%), or `not
    comparable` (a diverged seed, or fewer than two seeds on a side), with the test's numbers."""

    outcome: str
    t: float | None = None
    df: float | None = None
    critical: float | None = None
    reason: str = ""

    @property
    def detail(self) -> str:
        if self.outcome == "not comparable":
            return self.reason
        return f"Welch t = {self.t:.2f}, df {self.df:.1f}, 5% critical value {self.critical:.3f}"


def compare(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("a", "b")) -> Comparison:
    """Welch's two-sided t-test at the 5% level of a's mean against b's. A side with a diverged
    (non-finite) seed or fewer than two seeds is not comparable: never a verdict from it."""
    for side, name in zip((a, b), names):
        if len(finite(side)) < len(side):
            return Comparison("not comparable", reason=f"{len(side) - len(finite(side))} of {len(side)} seeds of "
                                                       f"{name} diverged")
        if len(side) < 2:
            return Comparison("not comparable", reason=f"{name} has {plural(len(side), 'seed')}: no spread to "
                                                       "test against")
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    va, vb = std_a**2 / len(a), std_b**2 / len(b)
    if va + vb == 0:  # no spread on either side: any difference of the means is exact
        t, df = (math.inf if mean_a != mean_b else 0.0), float(len(a) + len(b) - 2)
    else:
        t = abs(mean_a - mean_b) / math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    critical = t_critical(df)
    if t <= critical:
        return Comparison("not significant", t, df, critical)
    return Comparison("lower" if mean_a < mean_b else "higher", t, df, critical)


# Study 1: continual learning ----------------------------------------------------------------------

@dataclass(frozen=True)
class ContinualConfig:
    models: tuple[str, ...] = ("transformer", "titans", "hope_attention", "hope")
    domains: tuple[str, ...] = D.DOMAIN_NAMES
    params: int = 290_000  # the parameter count every model is matched to
    lr: float = 1e-3  # the outer AdamW lr of every model (the specs say 3e-3: HOPE diverges there, see the report)
    steps: int = 80  # per phase
    batch: int = 8
    seq_len: int = 128
    seeds: int = 3
    warmup: int = 20
    eval_windows: int = 32  # validation windows per domain
    max_bytes: int | None = None  # keep only the start of each domain's text (tests)
    control: bool = True
    joint: bool = True


def steps_bar(steps: int, what: str) -> Any:
    """The steps of a run, with a progress bar on a terminal (a HOPE run takes minutes; the study
    prints a line only when a run ends)."""
    return tqdm(range(steps), desc=what, unit="step", leave=False, disable=not sys.stderr.isatty())


def continual_run(setup: Setup, domains: list[D.Domain], steps: int, validation: list[D.TaskBatch],
                  joint: bool) -> dict[str, Any]:
    """Sequential phases (or one joint phase of the same total steps): R rows and training losses."""
    learner = Learner(setup)
    generator = torch.Generator().manual_seed(setup.seed)
    rows = [[learner.evaluate(v).bits_per_byte for v in validation]]  # before any training
    losses = []
    started = time.perf_counter()
    phases = [list(range(len(domains)))] if joint else [[j] for j in range(len(domains))]
    diverged = None
    try:
        with frozen_heap() as settle:  # as `nldsl train` does (heap.py)
            for number, phase in enumerate(phases, 1):
                phase_losses = []
                for _ in steps_bar(steps * len(phase), f"{Path(setup.spec).stem} seed {setup.seed} "
                                                       f"{'joint' if joint else f'phase {number}'}"):
                    picks = torch.randint(0, len(phase), (setup.batch,), generator=generator).tolist()
                    windows = torch.cat([D.random_windows(domains[phase[p]].train, 1, setup.seq_len + 1, generator)
                                         for p in picks])
                    phase_losses.append(learner.step(language_batch(windows)))
                    if learner.steps <= 2:  # the first steps compile
                        settle()
                losses.append(statistics.fmean(phase_losses[-10:]) / math.log(2))
                rows.append([learner.evaluate(v).bits_per_byte for v in validation])
    except FloatingPointError:  # a diverged run stays in the results as NaN rather than ending the study
        diverged = learner.steps
        rows += [[math.nan] * len(validation)] * (len(phases) + 1 - len(rows))
    return {"R": rows, "train_bpb": losses, "seconds": time.perf_counter() - started,
            "params": learner.parameter_count, "diverged_at_step": diverged}


def run_continual(config: ContinualConfig, out: Path, command: str, resume: bool = False,
                  report_only: bool = False) -> dict[str, Any]:
    """Train every model (and the control, and the joint bound) on the domains; write the report.
    Every option and spec is checked before the run log is touched. With `report_only` every run
    comes from the log in `out`, and nothing is trained."""
    started = time.perf_counter()
    for name in config.models:
        check_model_spec(name)
    bases = [*config.models, *(["transformer"] if config.control and "transformer" not in config.models else [])]
    domains: list[D.Domain] = []
    validation: list[D.TaskBatch] = []
    if report_only:  # the widths and the domains' records come from the logged runs
        widths: dict[str, tuple[Any, Any]] = {name: (None, None) for name in bases}
    else:
        domains = D.load_domains(config.domains, config.max_bytes)
        for domain in domains:
            shortest = min(domain.train.numel(), domain.validation.numel())
            which = "training" if domain.train.numel() == shortest else "validation"
            if shortest < config.seq_len + 1:
                raise UserError(f"--seq-len {config.seq_len} needs windows of {config.seq_len + 1} bytes, and the "
                                f"`{domain.name}` domain's {which} text holds {shortest:,}: use a shorter --seq-len")
        validation = [language_batch(D.spaced_windows(d.validation, config.eval_windows, config.seq_len + 1))
                      for d in domains]
        widths = {name: matched_width(spec_path(name), config.params, study_overrides(name)) for name in bases}
    log = RunLog(out / "continual.runs.jsonl", resume, report_only, continual_problem)
    recorded = recorded_params(out / "continual.json", config.params, log.path) if report_only else None
    known_widths: dict[str, int] = {}
    warn_warmup(config.warmup, {"the runs": config.steps * len(config.domains)})
    records = [d.record for d in domains] if domains else None
    variants = [(model_name(name), name, 1.0) for name in config.models]  # a spec path by its stem, as recall
    if config.control:
        variants.append((CONTROL, "transformer", CONTROL_MLP_LR_SCALE))
    results: dict[str, Any] = {}
    other_texts: list[str] = []  # --report-only: the runs logged on other domain texts than the first run
    first_run = ""
    for label, base, mlp_scale in variants:
        dim, count = widths[base]
        entry = results.setdefault(label, {"spec": str(spec_path(base).name), "dim": dim, "params": count,
                                           "overrides": list(study_overrides(base)), "mlp_lr_scale": mlp_scale,
                                           "sequential": [], "joint": []})
        for seed in range(config.seeds):
            setup = Setup(str(spec_path(base)), dim, config.seq_len, config.batch, seed, lr=config.lr,
                          mlp_lr_scale=mlp_scale, warmup=config.warmup, overrides=study_overrides(base))
            kinds = ["sequential"] + (["joint"] if config.joint and label != CONTROL else [])
            for kind in kinds:
                key = run_key({"study": "continual", "kind": kind, "setup": asdict(setup), "steps": config.steps,
                               "domains": records, "eval_windows": config.eval_windows}, setup)
                run = log.run(key, lambda s=setup, k=kind: continual_run(s, domains, config.steps, validation,
                                                                         k == "joint"))
                if report_only:
                    entry["dim"], entry["params"] = log.last_key["setup"]["dim"], logged_params(run, config.params,
                                                                                                label)
                    if recorded is None:
                        check_logged_width(spec_path(base), config.params, study_overrides(base), entry["dim"],
                                           label, known_widths)
                    # the page describes one copy of the texts (the first run's): a run scored on another
                    # (another Python's stdlib, say) would be described wrongly without a word
                    if records is None:
                        records, first_run = log.last_key["domains"], f"{label} seed {seed} {kind}"
                    elif log.last_key["domains"] != records:
                        other_texts.append(f"{label} seed {seed} {kind} ({texts(log.last_key['domains'])})")
                entry[kind].append(run)
                final = " ".join(f"{d} {b:.3f}" for d, b in zip(config.domains, run["R"][-1]))
                if not report_only:
                    print(f"{label:>22} seed {seed} {kind:>10}: final bpb {final}  ({run['seconds']:.0f} s)",
                          flush=True)
    if other_texts:
        raise UserError(f"--report-only: the runs in {log.path} read different copies of the domains' texts, and a "
                        f"page describes one: {first_run} read {texts(records or [])}, but "
                        f"{', '.join(other_texts[:4])}{', …' if len(other_texts) > 4 else ''} read other texts. Run "
                        "the study again with --resume on one Python (it reuses the runs of that Python's texts and "
                        "makes the others again), then rebuild the page")
    summary = {"config": asdict(config), "command": command, "domains": records,
               "models": results, "wall_seconds": time.perf_counter() - started, **log.record(),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    if report_only:
        summary = rebuilt_summary(summary, out / "continual.json", log)
    elif resume:
        log.note_unused()
    write_continual_report(summary, out)
    return summary


def texts(records: list[dict[str, Any]]) -> str:
    """Which copy of the domains' texts a run read, in short: the Python and Unicode versions of its
    standard library and the bytes of each domain."""
    head = f"Python {records[0]['python']}, Unicode {records[0]['unicode']}, " if records else ""
    return head + ", ".join(f"`{d['name']}` {d['train_bytes'] + d['validation_bytes']:,} bytes" for d in records)


def rebuilt_summary(summary: dict[str, Any], previous: Path, log: RunLog) -> dict[str, Any]:
    """--report-only: what the invocation that made the runs recorded of itself (its command, time and
    machine), from the summary it wrote in `previous` when that is of the same configuration, and
    which code made the logged runs and which code rebuilt the report."""
    try:
        earlier = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and earlier.get("config") == strict(summary["config"]):
        summary.update({field: earlier[field] for field in ("command", "wall_seconds", "runs_reused", "threads",
                                                             "torch") if field in earlier})
    else:  # no record of that invocation: only what the log holds
        summary.update(wall_seconds=None, runs_reused=0, threads=None, torch=None)
    summary["rebuilt"] = {"runs_code": log.codes(), "code": code_digest()}
    return summary


def stayed_finite(scores: Sequence[Sequence[float]]) -> bool:
    """Whether a seed's score matrix is finite in every cell: the seeds every continual statistic counts."""
    return all(math.isfinite(v) for row in scores for v in row)


def mean_matrix(matrices: list[list[list[float]]]) -> list[list[float]]:
    """The cell-wise mean of the score matrices of the seeds that stayed finite throughout (NaN cells
    when none did): mixing a diverged seed's early rows into some cells only would make the rows of
    one matrix means over different seeds."""
    kept = [R for R in matrices if stayed_finite(R)]
    shape = (len(matrices[0]), len(matrices[0][0]))
    if not kept:
        return [[math.nan] * shape[1] for _ in range(shape[0])]
    return [[statistics.fmean(R[i][j] for R in kept) for j in range(shape[1])] for i in range(shape[0])]


def continual_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """Per-seed metrics of one model's sequential (and joint) runs (NaN for a diverged seed)."""
    matrices = [run["R"][1:] for run in entry["sequential"]]  # rows after phases 1 … T
    metrics = {
        "average_final": [average_final(R) for R in matrices],
        "bwt": [backward_transfer(R) for R in matrices],
        # all NaN for a seed that diverged in any phase, its finite early R[j, j] too: plasticity is
        # then the diagonal of mean_R, over the same seeds (and the same seeds as the final bpb and BWT)
        "plasticity": [plasticity(R) if stayed_finite(R) else [math.nan] * len(R) for R in matrices],
        "mean_R": mean_matrix(matrices),
        "initial": [run["R"][0] for run in entry["sequential"]],
    }
    if entry["joint"]:
        metrics["joint_final"] = [statistics.fmean(run["R"][-1]) for run in entry["joint"]]
        metrics["joint_R"] = mean_matrix([[run["R"][-1]] for run in entry["joint"]])[0]
    return metrics


def diverged_seeds(entry: dict[str, Any]) -> str | None:
    """`k of n seeds diverged (…)` for a model some of whose runs diverged; None when none did."""
    parts = []
    for kind in ("sequential", "joint"):
        lost = sum(run.get("diverged_at_step") is not None for run in entry[kind])
        if lost:
            parts.append(f"{lost} of {len(entry[kind])} seeds diverged in {kind} training")
    return "; ".join(parts) or None


COMPARED = {  # outcome → (how HOPE forgets, how its average final bpb stands), against another model
    "lower": ("forgets less than {name}", "lower than {name}'s"),
    "higher": ("forgets more than {name}", "higher than {name}'s"),
    "not significant": ("forgets not significantly differently from {name}", "not significantly different from "
                                                                               "{name}'s"),
    "not comparable": ("cannot be compared with {name} on forgetting", "not comparable with {name}'s"),
}


def continual_verdict(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences on whether HOPE forgets less than each other model, from the measured BWT."""
    if "hope" not in metrics:
        return []
    hope = metrics["hope"]
    lines = []
    for name, other in metrics.items():
        if name == "hope":
            continue
        bwt = compare(hope["bwt"], other["bwt"], ("HOPE", f"`{name}`"))
        final = compare(hope["average_final"], other["average_final"], ("HOPE", f"`{name}`"))
        forgets = COMPARED[bwt.outcome][0].format(name=f"`{name}`")
        ends = COMPARED[final.outcome][1].format(name=f"`{name}`")
        lines.append(f"- HOPE {forgets} (BWT {pm(hope['bwt'])} vs {pm(other['bwt'])} bpb; {bwt.detail}), and its "
                     f"average final bpb is {ends} ({pm(hope['average_final'])} vs {pm(other['average_final'])}; "
                     f"{final.detail}).")
    return lines


def write_continual_report(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary["models"] = revive(summary["models"])  # a summary read back from strict JSON: null is NaN
    names = [d["name"] for d in summary["domains"]]
    config = summary["config"]
    metrics = {label: continual_metrics(entry) for label, entry in summary["models"].items()}
    summary["metrics"] = metrics
    write_text(out / "continual.json", json_text(summary, indent=1) + "\n")
    figure = plot_continual(metrics, names, out / "continual.png")
    seeds = config["seeds"]
    total = config["steps"] * len(names)  # one optimizer for all phases (and the joint run's steps)
    if short_of_warmup(config["warmup"], {"run": total}):
        optimizer = (f"AdamW with each spec's weight decay, its lr rising linearly towards {config['lr']:g} over "
                     f"{plural(config['warmup'], 'warm-up step')} that every run ends inside: its {total} steps end "
                     f"at {total}/{config['warmup']} of it (lr {config['lr'] * total / config['warmup']:g})")
    else:
        optimizer = (f"AdamW at lr {config['lr']:g} with each spec's weight decay after "
                     f"{plural(config['warmup'], 'warm-up step')}")
    lines = [
        "# Continual learning: three text domains in sequence",
        "",
        "Made by",
        "",
        f"    {summary['command']}",
        "",
        timing(summary, "continual") + " Every number below is from the runs of that command (`continual.json` "
        "holds them raw), except the earlier observations marked as such.",
        "",
        "## Setup",
        "",
        f"Byte-level tokens, phases in the order {' → '.join(f'`{n}`' for n in names)}, {config['steps']} steps "
        f"per phase of {config['batch']} random windows of {config['seq_len']} tokens, {optimizer} (one optimizer "
        f"for all phases), {plural(seeds, 'seed')}. After each phase: bits per byte on {config['eval_windows']} "
        "evenly spaced validation "
        "windows of every domain → R[i, j] (after phase i, on domain j). A model's in-context levels, where it "
        "has any, learn within each window and start afresh in the next; its levels on the continuum clock, "
        "where it has any, are stepped by the outer optimizer only every N steps (docs/semantics.md §4).",
        "",
        "| domain | source | documents | train bytes | validation bytes |",
        "|---|---|---:|---:|---:|",
    ]
    for d in summary["domains"]:
        lines.append(f"| `{d['name']}` | {d['source']} | {d['documents']:,} | {d['train_bytes']:,} | "
                     f"{d['validation_bytes']:,} |")
    if config["lr"] < SPEC_LR and "hope" in summary["models"]:
        lines += ["", f"The shipped specs train at lr {SPEC_LR:g}. *Earlier observation, not from this run:* "
                  "at that lr, in the first runs of this study (2026-11-26), HOPE's loss became non-finite in 3 of "
                  "its first 4 runs (seeds 0–1; in float64 as "
                  "well): the outer steps drive its generated gates towards their bounds (retention α → 1, β ≈ "
                  "0.8, η near its maximum 0.1), where the memories' chunk-summed inner steps are unstable. Every "
                  f"model here trains at {config['lr']:g} instead."]
    lines += [
        "",
        f"Python {summary['domains'][0]['python']}, Unicode {summary['domains'][0]['unicode']}.",
        "",
        "| model | spec | dim | parameters | departures from the spec |",
        "|---|---|---:|---:|---|",
    ]
    for label, entry in summary["models"].items():
        note = f" (MLP lr × {entry['mlp_lr_scale']})" if entry["mlp_lr_scale"] != 1.0 else ""
        lines.append(f"| `{label}`{note} | {entry['spec']} | {entry['dim']} | {entry['params']:,} | "
                     f"{departures(entry['overrides'])} |")
    lines += ["", parameter_spread(summary["models"], config["params"]), "",
              *override_notes(summary["models"], [config["lr"]]),
              *checker_notes(summary["models"], {"training": config["seq_len"]}, {"training": config["batch"]},
                             {"training": config["steps"] * len(names)})]
    lines += [
        "",
        "## Results",
        "",
        (f"Mean ± std over {plural(seeds, 'seed')} (a run that diverged in any phase left out of every number "
         "taken from it, its plasticity in the phases before it too, and said so)" if seeds > 1 else
         "Values of the single seed (no spread is available from one seed)")
        + ", bits per byte (lower is better). BWT = mean over j < T of "
        "R[T, j] − R[j, j] (positive = forgetting). Plasticity = R[j, j], the bpb on each domain right after "
        "its own phase. Joint = the same total steps on batches mixing all domains (the upper bound).",
        "",
        "| model | average final bpb | BWT (forgetting) | "
        + " | ".join(f"plasticity `{n}`" for n in names) + " | joint average bpb |",
        "|---|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for label, m in metrics.items():
        cells = [pm(m["average_final"]), pm(m["bwt"])]
        cells += [pm([p[j] for p in m["plasticity"]]) for j in range(len(names))]
        cells.append(pm(m["joint_final"]) if "joint_final" in m else "–")
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    lost = [f"- `{label}`: {text}; its statistics are over the finite seeds only (none where all diverged)"
            + (", and it is not compared with the others (the comparisons read sequential training)."
               if "in sequential" in text else ".")
            for label, entry in summary["models"].items() if (text := diverged_seeds(entry))]
    lines += ["", *lost, *([""] if lost else [])]
    lines += diverged_notes([(f"{label} seed {seed} {kind}", run) for label, entry in summary["models"].items()
                             for kind in ("sequential", "joint") for seed, run in enumerate(entry[kind])])
    lines += ["Mean score matrix R[i, j] per model (rows: after phase i; last row: joint training):", ""]
    for label, m in metrics.items():
        lines += [f"`{label}`", "", "| after | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for i, row in enumerate(m["mean_R"]):
            lines.append(f"| `{names[i]}` | " + " | ".join(cell(v) for v in row) + " |")
        if "joint_R" in m:
            lines.append("| joint | " + " | ".join(cell(v) for v in m["joint_R"]) + " |")
        lines.append("")
    if figure:
        lines += [f"![score matrices]({figure})", ""]
    verdict = continual_verdict(metrics)
    if verdict:
        lines += ["## Does HOPE forget less here?", "",
                  f"Each comparison is Welch's two-sided t-test at the 5% level over the {plural(seeds, 'seed')} "
                  "(critical values of Student's t at the Welch degrees of freedom rounded down, which is "
                  f"conservative). The {plural(2 * len(verdict), 'comparison')} are not corrected for "
                  "multiplicity: with this many tests at 5% each, one false difference is not unlikely. A model "
                  "with a diverged seed, or with a single seed, is not comparable.", "", *verdict, ""]
    control = metrics.get(CONTROL)
    if control and "transformer" in metrics:
        lines += [f"Control: slowing the Transformer's MLP to lr × {CONTROL_MLP_LR_SCALE} changes its BWT from "
                  f"{pm(metrics['transformer']['bwt'])} to {pm(control['bwt'])} bpb and its average final bpb "
                  f"from {pm(metrics['transformer']['average_final'])} to {pm(control['average_final'])}.", ""]
    lines += ["Scale: these are models of about "
              f"{config['params'] / 1e6:.2f}M parameters trained for {config['steps'] * len(names)} steps in all; "
              "the paper's continual-learning claims concern far larger models and longer training, so this "
              "measures the mechanisms at toy scale, not the claims.", ""]
    write_text(out / "continual.md", "\n".join(lines))


def cell(value: float) -> str:
    """A mean score matrix's cell: `–` where every seed diverged."""
    return f"{value:.3f}" if math.isfinite(value) else "–"


def timing(summary: dict[str, Any], study: str) -> str:
    """When and how long: the invocation's wall time, the runs reused by --resume if any, and for a
    page rebuilt by --report-only, that it was and which code made the runs."""
    if summary.get("wall_seconds") is not None:
        text = (f"in {summary['wall_seconds'] / 60:.1f} minutes on CPU ({summary['threads']} thread, torch "
                f"{summary['torch']}, eager).")
    else:  # rebuilt from a log without the summary of the invocation that made it
        text = f"on CPU (eager), its runs taking {summary['run_seconds'] / 60:.1f} minutes in all."
    if summary["runs_reused"]:
        text += (f" That invocation had `--resume` and reused {summary['runs_reused']} finished runs of the identical "
                 f"configuration from an earlier one; the runs took {summary['run_seconds'] / 60:.1f} minutes in all.")
    rebuilt = summary.get("rebuilt")
    if rebuilt:
        made = ", ".join(f"`{code}`" for code in rebuilt["runs_code"])
        text += (f" This page was rebuilt with `--report-only` from the logged runs in `{study}.runs.jsonl`, made by "
                 f"nldsl code {made} (the code digest `--resume` matches); the report's text is that of code "
                 f"`{rebuilt['code']}`, and nothing was trained again.")
    return text


def parameter_spread(models: dict[str, Any], target: int) -> str:
    """The matched parameter counts: close to the target, not equal (widths come in steps of 4)."""
    counts = [entry["params"] for entry in models.values()]
    low, high = min(counts), max(counts)
    worst = max(abs(count - target) for count in counts) / target
    return (f"Parameter counts are matched, not equal: each spec's width is the one whose count is nearest to "
            f"{target:,}, and the counts span {low:,}–{high:,} ({worst:.0%} from {target:,} at most).")


def departures(overrides: Sequence[str]) -> str:
    return ", ".join(f"`--set {o}`" for o in overrides) or "none"


OVERRIDE_NOTES = {
    "titans_lmm.nl":
        "Why Titans departs from `titans_lmm.nl`: the studies were set up when that spec bounded the inner "
        "lr at 0.1, where its in-context MLP memory blew up on real text within a single 128-token window: "
        "with raw SiLU values the logits were NaN at initialisation for most seeds (the reference "
        "interpreter agreed, in float64 too); with L2-normalised values the memory's weights still "
        "overflowed float32 after a few outer steps. SiLU keys of text are strongly aligned and a chunk "
        "sums 16 gradients taken at one state, so η up to 0.1 with momentum is past the stable step. "
        "L2-normalised values and `lr = learned(max = 0.01)` kept 3 seeds finite over 60 steps in a check "
        "before the study; the spec has since bounded η at 0.005 (raw values), and the override pins the "
        "studies' runs to the setting they were made with.",
    "hope.nl":
        "Why HOPE departs from `hope.nl`: the studies ran when the spec bounded its memories' generated "
        "inner lr η at 0.1; the override pins them to that setting. The spec now bounds η at 0.02, because "
        "at 0.1 and the spec's outer lr 0.003 the default 120-step training run's loss became NaN at step 79 "
        "(this study trains at outer lr {lrs}, where 0.1 stayed finite except in the runs marked diverged).",
}


OVERRIDE_SOURCE = ("*Earlier observations, not from this run* (checks made when the studies were set up, "
                   "recorded with STUDY_OVERRIDES in nldsl/runtime/studies.py):")


def override_notes(models: dict[str, Any], lrs: Sequence[float]) -> list[str]:
    """Why a model departs from its shipped spec (STUDY_OVERRIDES), once per spec, marked as earlier
    observations: their numbers are not measured by the run the page reports. `lrs`: the outer lrs
    the page's study trains at (its --lr, or recall's sweep), which a note may name."""
    specs = sorted({entry["spec"] for entry in models.values() if entry["overrides"]})
    if not specs:
        return []
    named = [f"{float(lr):g}" for lr in lrs]
    listed = listing(named)
    return [OVERRIDE_SOURCE, "", *(line for spec in specs
                                   for line in (OVERRIDE_NOTES[spec].replace("{lrs}", listed), ""))]


def checker_notes(models: dict[str, Any], seq_lens: dict[str, int], batch: dict[str, int],
                  steps: dict[str, int]) -> list[str]:
    """What `nldsl check` warns of each model at the study's width, batch, sequence lengths and
    steps (each a dict by part of the study), so that a level the study's setting leaves unread in
    training (W0704) or never steps (W0711) is on the page, not only in the run's log. Computed when
    the page is written, from the spec file as it is now (the spec digests of the runs say whether
    it changed since)."""
    from nldsl import loader

    lines = []
    for label, entry in models.items():
        path = SPECS_DIR / entry["spec"]
        if not path.is_file():  # a model given by a path elsewhere: its folder is not recorded
            continue
        for part, seq_len in seq_lens.items():
            overrides = [f"dim={entry['dim']}", f"train.seq_len={seq_len}", f"train.batch={batch[part]}",
                         f"train.steps={steps[part]}", *entry["overrides"]]
            warnings = [d for d in loader.check(path, overrides).diagnostics if d.severity == "warning"]
            lines += [f"- `{label}` ({part}, {seq_len} tokens): {d.code} at `{d.origin}`: {d.message}."
                      for d in warnings]
    if not lines:
        return []
    return ["`nldsl check` warns of these models at the study's settings (width, batch, training length; "
            "the spec files as they are now):", "", *lines, ""]


def diverged_notes(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per run whose loss stopped being finite (its scores are NaN in the tables)."""
    lines = [f"- `{label}` diverged (non-finite loss) at step {run['diverged_at_step']}."
             for label, run in runs if run.get("diverged_at_step") is not None]
    return [*lines, ""] if lines else []


def plot_continual(metrics: dict[str, dict[str, Any]], names: list[str], path: Path) -> str | None:
    """Heat-maps of the mean score matrices (plus the joint row); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = list(metrics)
    figure, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.4), squeeze=False)
    values = finite([v for m in metrics.values() for row in m["mean_R"] + [m.get("joint_R", [])] for v in row])
    low, high = (min(values), max(values)) if values else (0.0, 1.0)  # every run diverged: NaN cells, drawn blank
    for axis, label in zip(axes[0], labels):
        m = metrics[label]
        rows = m["mean_R"] + ([m["joint_R"]] if "joint_R" in m else [])
        axis.imshow(rows, vmin=low, vmax=high, cmap="viridis_r")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                axis.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if v > (low + high) / 2 else "black")
        axis.set_xticks(range(len(names)), names, fontsize=8)
        axis.set_yticks(range(len(rows)), [f"after {n}" for n in names] + (["joint"] if "joint_R" in m else []),
                        fontsize=8)
        axis.set_title(f"{label}\nBWT {mean_std(m['bwt'])[0]:+.3f}", fontsize=9)
    figure.suptitle("validation bits per byte R[i, j] (mean over seeds)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path.name


# Study 2: long-context recall ----------------------------------------------------------------------

@dataclass(frozen=True)
class RecallConfig:
    models: tuple[str, ...] = ("transformer", "titans", "hope_attention", "hope", "deltanet")
    params: int = 290_000
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    seed: int = 0
    warmup: int = 20
    mqar_seq_len: int = 64
    mqar_pairs: int = 4
    mqar_batch: int = 32
    mqar_steps: int = 300
    mqar_tests: tuple[tuple[int, int], ...] = ((64, 4), (64, 8), (128, 8), (256, 16))  # (length, pairs)
    test_examples: int = 256
    passkey_seq_len: int = 128
    passkey_digits: int = 5
    passkey_batch: int = 16
    passkey_steps: int = 250
    passkey_scales: tuple[int, ...] = (1, 2, 4, 8)
    passkey_examples: int = 64
    eval_batch: int = 32


# Training batch `step` of seed s is generated from s · 10⁶ + step (below 2⁶² for every --seed the
# parser takes, and steps below 10⁶); test sets from TEST_SEED + i, above it: they never share a seed.
TEST_SEED = 2**62
LARGEST_SEED = 2**62 // 10**6 - 1
FINAL_LOSS_STEPS = 20  # a run's "final train loss" averages its last this many steps


def task_run(setup: Setup, make_batch: Callable[[int], D.TaskBatch], steps: int,
             tests: dict[str, D.TaskBatch], eval_batch: int) -> dict[str, Any]:
    """Train on freshly generated batches (`make_batch(step)`), then score every test set."""
    learner = Learner(setup)
    started = time.perf_counter()
    losses: list[float] = []
    try:
        lr = f"lr {setup.lr:g}" if setup.lr is not None else "the spec's lr"
        with frozen_heap() as settle:  # as `nldsl train` does (heap.py)
            for step in steps_bar(steps, f"{Path(setup.spec).stem} {lr}"):
                losses.append(learner.step(make_batch(step)))
                if learner.steps <= 2:  # the first steps compile
                    settle()
    except FloatingPointError:  # a diverged run stays in the results as NaN rather than ending the study
        failed = {"accuracy": math.nan, "exact": math.nan, "loss": math.nan}
        return {"tests": {name: failed for name in tests}, "final_loss": math.nan, "diverged_at_step": learner.steps,
                "train_seconds": time.perf_counter() - started, "seconds": time.perf_counter() - started,
                "params": learner.parameter_count}
    trained = time.perf_counter() - started
    results = {}
    for name, batch in tests.items():
        scores = learner.evaluate(batch, eval_batch)
        results[name] = {"accuracy": scores.accuracy, "exact": scores.exact, "loss": scores.loss / scores.positions}
    return {"tests": results, "final_loss": statistics.fmean(losses[-FINAL_LOSS_STEPS:]), "diverged_at_step": None,
            "train_seconds": trained, "seconds": time.perf_counter() - started, "params": learner.parameter_count}


def run_recall(config: RecallConfig, out: Path, command: str, resume: bool = False,
               report_only: bool = False) -> dict[str, Any]:
    """MQAR with a learning-rate sweep, then passkey retrieval at each model's best MQAR lr; write the report.
    Every option and spec is checked before the run log is touched. With `report_only` every run
    comes from the log in `out`, and nothing is trained."""
    started = time.perf_counter()
    for name in config.models:
        check_model_spec(name)
    widths = {name: (None, None) if report_only
              else matched_width(spec_path(name), config.params, study_overrides(name))
              for name in config.models}  # --params out of reach: refused here, before the log is touched
    log = RunLog(out / "recall.runs.jsonl", resume, report_only, recall_problem)
    recorded = recorded_params(out / "recall.json", config.params, log.path) if report_only else None
    known_widths: dict[str, int] = {}
    warn_warmup(config.warmup, {"the MQAR runs": config.mqar_steps, "the passkey runs": config.passkey_steps})
    mqar_tests = {} if report_only else {f"T={t} D={p}": D.mqar(config.test_examples, t, p, seed=TEST_SEED + i)
                                         for i, (t, p) in enumerate(config.mqar_tests)}
    passkey_tests = {} if report_only else {
        f"{s}x": D.passkey(config.passkey_examples, config.passkey_seq_len * s, config.passkey_digits,
                           seed=TEST_SEED + s) for s in config.passkey_scales}
    train_key = f"T={config.mqar_seq_len} D={config.mqar_pairs}"
    models: dict[str, Any] = {}
    for name in config.models:
        spec = spec_path(name)
        overrides = study_overrides(name)
        dim, count = widths[name]
        entry = models.setdefault(model_name(name), {"spec": spec.name, "dim": dim, "params": count,
                                                     "layers": None, "vocab": None,
                                                     "overrides": list(overrides), "mqar": {}})
        for lr in config.lrs:
            setup = Setup(str(spec), dim, config.mqar_seq_len, config.mqar_batch, config.seed, lr=lr,
                          warmup=config.warmup, overrides=overrides)
            key = run_key({"study": "recall", "task": "mqar", "setup": asdict(setup), "steps": config.mqar_steps,
                           "tests": list(config.mqar_tests), "examples": config.test_examples}, setup)

            def mqar_batch(step: int, s: Setup = setup) -> D.TaskBatch:
                return D.mqar(s.batch, config.mqar_seq_len, config.mqar_pairs, seed=config.seed * 10**6 + step)

            run = log.run(key, lambda s=setup, make=mqar_batch: task_run(s, make, config.mqar_steps, mqar_tests,
                                                                          config.eval_batch))
            if report_only:
                entry["dim"], entry["params"] = log.last_key["setup"]["dim"], logged_params(run, config.params,
                                                                                            name)
                if recorded is None:
                    check_logged_width(spec, config.params, overrides, entry["dim"], model_name(name), known_widths)
            entry["mqar"][repr(lr)] = run
            accuracies = " ".join(f"{k}: {v['accuracy']:.3f}" for k, v in run["tests"].items())
            if not report_only:
                print(f"{model_name(name):>16} MQAR lr {lr:g}: {accuracies}  ({run['seconds']:.0f} s)", flush=True)
        model = loader_check(spec, (f"dim={entry['dim']}", *overrides)).model
        entry["layers"], entry["vocab"] = model.layers, model.vocab
        scored = [lr for lr in config.lrs if math.isfinite(entry["mqar"][repr(lr)]["tests"][train_key]["accuracy"])]
        if not scored:  # every lr diverged: no best lr to claim, and no passkey run to make at one
            print(f"note: {model_name(name)}: every lr of the MQAR sweep diverged, so it has no best lr and its "
                  "passkey run is skipped", file=sys.stderr, flush=True)
            continue
        best = max(scored, key=lambda lr: entry["mqar"][repr(lr)]["tests"][train_key]["accuracy"])
        setup = Setup(str(spec), dim, config.passkey_seq_len, config.passkey_batch, config.seed, lr=best,
                      warmup=config.warmup, overrides=overrides)
        key = run_key({"study": "recall", "task": "passkey", "setup": asdict(setup), "steps": config.passkey_steps,
                       "digits": config.passkey_digits, "scales": list(config.passkey_scales),
                       "examples": config.passkey_examples}, setup)

        def passkey_batch(step: int, s: Setup = setup) -> D.TaskBatch:
            return D.passkey(s.batch, config.passkey_seq_len, config.passkey_digits, seed=config.seed * 10**6 + step)

        run = log.run(key, lambda s=setup, make=passkey_batch: task_run(s, make, config.passkey_steps, passkey_tests,
                                                                         config.eval_batch))
        entry["passkey"] = {"lr": best, **run}
        exact = " ".join(f"{k}: {v['exact']:.3f}" for k, v in run["tests"].items())
        if not report_only:
            print(f"{model_name(name):>16} passkey lr {best:g}: {exact}  ({run['seconds']:.0f} s)", flush=True)
    summary = {"config": asdict(config), "command": command, "models": models,
               "wall_seconds": time.perf_counter() - started, **log.record(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "train_key": train_key}
    if report_only:
        summary = rebuilt_summary(summary, out / "recall.json", log)
    elif resume:
        log.note_unused()
    write_recall_report(summary, out)
    return summary


def write_recall_report(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary["models"] = revive(summary["models"])  # a summary read back from strict JSON: null is NaN
    write_text(out / "recall.json", json_text(summary, indent=1) + "\n")
    config, models = summary["config"], summary["models"]
    figure = plot_recall(summary, out / "recall.png")
    tests = [f"T={t} D={p}" for t, p in config["mqar_tests"]]
    scales = [f"{s}x" for s in config["passkey_scales"]]
    lines = [
        "# Long-context recall: MQAR and passkey retrieval",
        "",
        "Made by",
        "",
        f"    {summary['command']}",
        "",
        timing(summary, "recall") + " Every number below is from the runs of that command (`recall.json` holds "
        "them raw), except the earlier observations marked as such.",
        "",
        "## Setup",
        "",
        "Models at matched parameter count (each spec's `dim` nearest to "
        f"{config['params']:,} parameters), each with its spec's layers and vocabulary (table), AdamW with the "
        f"spec's weight decay, {plural(config['warmup'], 'warm-up step')}, then a constant lr; seed {config['seed']}."
        + "".join(f" {what.capitalize()} ({plural(steps, 'step')}) end inside the warm-up, at {steps}/"
                  f"{config['warmup']} of their lr: they never train at the lr named below."
                  for what, steps in short_of_warmup(config["warmup"], {"the MQAR runs": config["mqar_steps"],
                                                                        "the passkey runs": config["passkey_steps"]})
                  .items()),
        "",
        "| model | spec | dim | layers | vocabulary | parameters | departures from the spec |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, entry in models.items():
        lines.append(f"| `{name}` | {entry['spec']} | {entry['dim']} | {entry.get('layers', '?')} | "
                     f"{entry.get('vocab', '?')} | {entry['params']:,} | {departures(entry['overrides'])} |")
    lines += ["", parameter_spread(models, config["params"]), "", *override_notes(models, config["lrs"]),
              *checker_notes(models, {"MQAR": config["mqar_seq_len"], "passkey": config["passkey_seq_len"]},
                             {"MQAR": config["mqar_batch"], "passkey": config["passkey_batch"]},
                             {"MQAR": config["mqar_steps"], "passkey": config["passkey_steps"]})]
    lines += [
        "",
        f"**MQAR.** Trained for {plural(config['mqar_steps'], 'step')} of {config['mqar_batch']} fresh sequences of "
        f"{config['mqar_seq_len']} tokens with {config['mqar_pairs']} key-value pairs (keys from tokens "
        "1–127, values from 128–255, every key queried once after the prefix at power-law distributed slots, "
        "a = 0.01, filler token 0); loss and accuracy on the query positions only. Tested on "
        f"{config['test_examples']} held-out sequences per (length T, pairs D); longer T and more D than in "
        "training test generalisation. Accuracy per query:",
        "",
        "| model | lr | " + " | ".join(f"`{t}`" for t in tests) + " | final train loss (nats) |",
        "|---|---:|" + "---:|" * len(tests) + "---:|",
    ]
    for name, entry in models.items():
        for lr, run in entry["mqar"].items():
            best = "passkey" in entry and float(lr) == entry["passkey"]["lr"]
            cells = [f"{run['tests'][t]['accuracy']:.3f}" for t in tests]
            lines.append(f"| `{name}` | {float(lr):g}{' *' if best else ''} | " + " | ".join(cells)
                         + f" | {run['final_loss']:.3f} |")
    unscored = [name for name, entry in models.items() if "passkey" not in entry]  # every lr diverged
    pairs = sorted({p for _, p in config["mqar_tests"]})
    lines += [
        "",
        f"\\* the lr with the best accuracy at `{summary['train_key']}`, used for the passkey run"
        + (f" ({' and '.join(f'`{n}`' for n in unscored)}: every lr diverged, so no lr is starred and no passkey "
           "run was made)" if unscored else "")
        + ". Chance is about 1/D for a model that only learned to answer with some value of the prefix ("
        + ", ".join(f"1/{p} at D={p}" for p in pairs) + "), 1/128 for a blind guess among the values. "
        "Final train loss: the mean cross-entropy of the last "
        f"{plural(min(FINAL_LOSS_STEPS, config['mqar_steps']), 'training step')} on the query positions, in nats "
        "(natural log).",
        "",
        f"**Passkey.** Trained for {plural(config['passkey_steps'], 'step')} of {config['passkey_batch']} sequences of "
        f"{config['passkey_seq_len']} bytes: filler sentences, `The pass key is NNNNN. ` at a random depth, and "
        f"at the end `What is the pass key? The pass key is NNNNN` ({config['passkey_digits']} random digits); "
        "loss on the final digits only. Tested on "
        f"{config['passkey_examples']} sequences at 1×–{config['passkey_scales'][-1]}× the training length. "
        "Share of sequences with every digit right (teacher-forced, which is what greedy decoding gets "
        "when it is right) / per-digit accuracy:",
        "",
        "| model | lr | " + " | ".join(f"{s} ({config['passkey_seq_len'] * int(s[:-1])})" for s in scales) + " |",
        "|---|---:|" + "---:|" * len(scales),
    ]
    for name, entry in models.items():
        if "passkey" not in entry:
            lines.append(f"| `{name}` | – | " + " | ".join("not run" for _ in scales) + " |")
            continue
        run = entry["passkey"]
        cells = [f"{run['tests'][s]['exact']:.2f} / {run['tests'][s]['accuracy']:.2f}" for s in scales]
        lines.append(f"| `{name}` | {run['lr']:g} | " + " | ".join(cells) + " |")
    lines += ["", *diverged_notes([(f"{name} MQAR lr {lr}", run) for name, entry in models.items()
                                   for lr, run in entry["mqar"].items()]
                                  + [(f"{name} passkey", entry["passkey"]) for name, entry in models.items()
                                     if "passkey" in entry])]
    lines += ["Training time per run (seconds, this machine):", "",
              "| model | " + " | ".join(f"MQAR lr {float(lr):g}" for lr in next(iter(models.values()))["mqar"])
              + " | passkey |",
              "|---|" + "---:|" * (len(next(iter(models.values()))["mqar"]) + 1)]
    for name, entry in models.items():
        cells = [f"{run['train_seconds']:.0f}" for run in entry["mqar"].values()]
        cells.append(f"{entry['passkey']['train_seconds']:.0f}" if "passkey" in entry else "–")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    if figure:
        lines += ["", f"![MQAR and passkey accuracy]({figure})"]
    lines += ["", f"Scale: {plural(config['mqar_steps'], 'MQAR step')} and "
              f"{plural(config['passkey_steps'], 'passkey step')} on CPU, one seed; models that need a longer run "
              "to find a recall mechanism (an induction circuit for attention) score at chance here, which "
              "measures how fast they learn recall at this budget, not what they can represent.", ""]
    write_text(out / "recall.md", "\n".join(lines))


def plot_recall(summary: dict[str, Any], path: Path) -> str | None:
    """MQAR accuracy against lr (training configuration) and passkey exact match against length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    config, models = summary["config"], summary["models"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    lengths = [config["passkey_seq_len"] * s for s in config["passkey_scales"]]
    markers = "osD^v<>ph"  # lines that coincide (several models at 0) stay told apart by their markers
    diverged_shown = False
    for index, (name, entry) in enumerate(models.items()):
        marker = markers[index % len(markers)]
        lrs = [float(lr) for lr in entry["mqar"]]
        accuracies = [run["tests"][summary["train_key"]]["accuracy"] for run in entry["mqar"].values()]
        line, = left.plot(lrs, accuracies, marker=marker, label=name, alpha=0.85)
        lost = [lr for lr, accuracy in zip(lrs, accuracies) if math.isnan(accuracy)]
        if lost:  # a diverged run has no accuracy: drawn as an × on the axis rather than left out unseen
            left.plot(lost, [0.0] * len(lost), "x", color=line.get_color(), markersize=9, markeredgewidth=2,
                      label=None if diverged_shown else "diverged (×)")
            diverged_shown = True
        if "passkey" in entry:
            right.plot(lengths, [entry["passkey"]["tests"][f"{s}x"]["exact"] for s in config["passkey_scales"]],
                       marker=marker, color=line.get_color(), label=name, alpha=0.85)
    left.set(xscale="log", xlabel="learning rate", ylabel="accuracy", ylim=(-0.02, 1.02),
             title=f"MQAR {summary['train_key']}")
    right.set(xscale="log", xlabel="test length (tokens)", ylabel="all digits right", ylim=(-0.02, 1.02),
              title=f"passkey, trained at {config['passkey_seq_len']}")
    right.set_xticks(lengths, [str(n) for n in lengths])
    right.minorticks_off()  # the log axis's minor labels overprinted the lengths
    left.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path.name


# Command line ------------------------------------------------------------------------------------------

def continual_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nldsl bench continual",
                                description="Continual learning over three text domains (published in "
                                            "docs/results/continual.md, with --out docs/results).")
    d = ContinualConfig()
    p.add_argument("--models", nargs="+", default=list(d.models), help=f"names ({', '.join(SPEC_FILES)}) or spec paths")
    p.add_argument("--params", type=at_least(1), default=d.params, help="parameter count every model is matched to")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="outer AdamW learning rate of every model")
    p.add_argument("--steps", type=at_least(1), default=d.steps, help="steps per phase")
    p.add_argument("--batch", type=at_least(1), default=d.batch)
    p.add_argument("--seq-len", type=at_least(2), default=d.seq_len)
    p.add_argument("--seeds", type=at_least(1), default=d.seeds)
    p.add_argument("--warmup", type=at_least(0), default=d.warmup)
    p.add_argument("--eval-windows", type=at_least(1), default=d.eval_windows)
    p.add_argument("--no-control", action="store_true", help="skip the slow-MLP Transformer control")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-training bound")
    common(p, "continual")
    return p


def recall_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nldsl bench recall",
                                description="MQAR and passkey retrieval (published in docs/results/recall.md, with "
                                            "--out docs/results).")
    d = RecallConfig()
    p.add_argument("--models", nargs="+", default=list(d.models), help=f"names ({', '.join(SPEC_FILES)}) or spec paths")
    p.add_argument("--params", type=at_least(1), default=d.params, help="parameter count every model is matched to")
    p.add_argument("--lrs", nargs="+", type=positive_float, default=list(d.lrs),
                   help="learning rates of the MQAR sweep (one run per value: 0.01 and 1e-2 are one)")
    p.add_argument("--seed", type=study_seed, default=d.seed,
                   help=f"0 to {LARGEST_SEED:,} (default %(default)s)")
    p.add_argument("--mqar-steps", type=at_least(1, most=10**6 - 1), default=d.mqar_steps)
    p.add_argument("--mqar-batch", type=at_least(1), default=d.mqar_batch)
    p.add_argument("--passkey-steps", type=at_least(1, most=10**6 - 1), default=d.passkey_steps)
    p.add_argument("--passkey-batch", type=at_least(1), default=d.passkey_batch)
    p.add_argument("--test-examples", type=at_least(1), default=d.test_examples)
    common(p, "recall")
    return p


# a recall --seed whose training seeds stay below the test sets' (TEST_SEED)
study_seed = seed_up_to(LARGEST_SEED, f"{LARGEST_SEED:,}",
                        " (its training batches are seeded seed · 10^6 + step, below the test sets')")


def common(p: argparse.ArgumentParser, study: str) -> None:
    p.add_argument("--out", default=None, type=path_text,
                   help=f"folder for the report, figure, JSON and run log (default {DEFAULT_RESULTS[study]}; with "
                        f"--tiny, {TINY_RESULTS}); the published pages are written only with --out {RESULTS}")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs of <out>/<study>.runs.jsonl made by the same code and specs")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report, JSON and figure from the runs logged in <out>/<study>.runs.jsonl with "
                        "the same options (whatever code made them), training nothing")
    p.add_argument("--tiny", action="store_true",
                   help=f"a seconds-long smoke run at toy sizes (it sets the sizes itself: --params, steps and "
                        f"batch options are refused with it; writes to {TINY_RESULTS} unless --out is given)")


# The options --tiny replaces by its toy sizes: given with --tiny they would be silently ignored.
TINY_SIZES = {
    "continual": ("params", "steps", "batch", "seq_len", "seeds", "warmup", "eval_windows"),
    "recall": ("params", "lrs", "mqar_steps", "mqar_batch", "passkey_steps", "passkey_batch", "test_examples"),
}


def parse_study(study: str, rest: list[str]) -> argparse.Namespace:
    """The options of a study; --tiny with an option it overrides is an error, and --out defaults
    to a folder of its own under --tiny."""
    make = continual_parser if study == "continual" else recall_parser
    a = make().parse_args(rest)
    if a.tiny:
        probe = make()  # the same options with None as default: what is not None was given
        probe.set_defaults(**dict.fromkeys(TINY_SIZES[study]))
        parsed = vars(probe.parse_args(rest))
        given = [name for name in TINY_SIZES[study] if parsed[name] is not None]
        if given:
            listed = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(f"--tiny sets its own toy sizes and would ignore {listed}: drop {listed} or --tiny")
    labels = [model_name(name) for name in a.models]  # a spec path by its stem, in both studies' reports
    if study == "continual" and not a.no_control:
        labels.append(CONTROL)  # the control is reported under its own name
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # the report keys models by these names: two of one name would be pooled as one model
        control = (f"; `{CONTROL}` is the name of the control (--no-control drops it)" if CONTROL in repeated
                   else "")
        raise UserError(f"--models names {', '.join(repeated)} more than once (models are reported by name, a spec "
                        f"path by its file's stem{control}; give each model once, and copy a spec to another file "
                        "name to compare two variants)")
    a.out = Path(a.out if a.out is not None else TINY_RESULTS if a.tiny else DEFAULT_RESULTS[study])
    if study == "recall":  # one run per learning rate: 0.01 and 1e-2 would train the same run twice
        a.lrs = list(dict.fromkeys(a.lrs))
    return a


def continual_config(a: argparse.Namespace) -> ContinualConfig:
    if a.tiny:
        return ContinualConfig(models=tuple(a.models), params=15_000, lr=a.lr, steps=2, batch=2, seq_len=32, seeds=1,
                               warmup=1, eval_windows=2, max_bytes=200_000, control=not a.no_control,
                               joint=not a.no_joint)
    return ContinualConfig(models=tuple(a.models), params=a.params, lr=a.lr, steps=a.steps, batch=a.batch,
                           seq_len=a.seq_len, seeds=a.seeds, warmup=a.warmup, eval_windows=a.eval_windows,
                           control=not a.no_control, joint=not a.no_joint)


def recall_config(a: argparse.Namespace) -> RecallConfig:
    if a.tiny:
        return RecallConfig(models=tuple(a.models), params=15_000, lrs=tuple(a.lrs[:1]), seed=a.seed, warmup=1,
                            mqar_seq_len=16, mqar_pairs=2, mqar_batch=2, mqar_steps=2, mqar_tests=((16, 2), (32, 4)),
                            test_examples=4, passkey_seq_len=72, passkey_batch=2, passkey_steps=2,
                            passkey_scales=(1, 2), passkey_examples=2, eval_batch=4)
    return RecallConfig(models=tuple(a.models), params=a.params, lrs=tuple(a.lrs), seed=a.seed,
                        mqar_batch=a.mqar_batch, mqar_steps=a.mqar_steps, passkey_batch=a.passkey_batch,
                        passkey_steps=a.passkey_steps, test_examples=a.test_examples)


def run(args: argparse.Namespace) -> int:
    """`nldsl bench continual|recall [options]`: run a study and write its report under --out."""
    torch.set_num_threads(1)  # the studies share small machines; one thread per study process
    torch.set_flush_denormal(True)
    rest = list(args.rest or [])
    command = shlex.join(["nldsl", "bench", args.study, *(r for r in rest if r not in ("--resume", "--report-only"))])
    started = time.perf_counter()
    if args.study in ("continual", "recall"):
        a = parse_study(args.study, rest)
        if args.study == "continual":
            run_continual(continual_config(a), a.out, command, a.resume, a.report_only)
        else:
            run_recall(recall_config(a), a.out, command, a.resume, a.report_only)
        how = "rebuilt from the logged runs" if a.report_only else f"{(time.perf_counter() - started) / 60:.1f} min"
        print(f"wrote {a.out / f'{args.study}.md'} ({how})")
        return 0
    raise UserError(f"no study called `{args.study}` here (continual, recall)")

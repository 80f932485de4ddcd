"""Using a trained model: evaluate (loss, perplexity, bits per byte), generate text, and stream.

- `load_model` rebuilds a run's model from a checkpoint alone: the record holds the resolved spec
  and its source text, so later edits to the spec file (or its imports) do not change what loads.
- `evaluate`: windows of seq_len + 1 tokens, each from a fresh state; loss is nats per predicted
  token, perplexity its exponential, and bits per byte = total nats / ln 2 / total bytes of the
  predicted tokens (the bytes each token stands for, so byte and BPE models compare).
- `generate`: one token at a time, recomputing the forward pass on the last seq_len tokens;
  temperature and top-k sampling from a seeded generator (temperature 0 = greedy).
- `stream`: a long text, segment by segment, with the memory state carried across segments
  (`model(…, state=…, return_state=True)`). The target of a segment's last position is the next
  segment's first token. The in-context levels learn as the text passes; the levels the continuum
  clock steps during training (the module's CLOCK_STEPS parameters) learn from the stream too:
  each segment adds the gradient of its mean loss to a per-level sum, and at the end of a segment
  that crosses a multiple of the level's period in tokens (a `steps(n)` period is n × segment tokens: n whole segments)
  the level takes one SGD step with its spec's constant `lr` η (a learned gate's starting value
  otherwise) and the sum restarts: one step however many periods a long segment spans.
- Stream state files (`--state-out`, `--state-in`): one safetensors file whose header holds the
  JSON structure. It keeps the memory state, the slow levels' weights and sums, the position in
  tokens, and the tokens of an unfinished last segment: when a state is saved those tokens are not
  fed yet but wait in the file for the next text, so a text streamed in two parts (save, then
  restore) gives exactly the losses and state of one stream. A stream of the run's validation
  split (no --data) also keeps how many of its tokens it has read, so that a stream continued
  without --data goes on with the split where the last one stopped.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor
from tqdm import tqdm

from nldsl import loader
from nldsl import spec as S
from nldsl.checker import NUMBER_RANGE
from nldsl.cli import UserError
from nldsl.diagnostics import terminal_safe
from nldsl.files import write_atomic
from nldsl.runtime import checkpoint as C
from nldsl.runtime import data as D
from nldsl.runtime.blocks import non_finite_part
from nldsl.runtime.clock import clock_prefix
from nldsl.runtime.interrupt import deferred_interrupt, signal_number
from nldsl.runtime.memory import MemoryState, detach_state

STATE_FORMAT = "nldsl-stream-state/1"
UNKNOWN_READ = -1  # StreamState.validation_read of a state that does not say which text it read


# Loading a trained model ---------------------------------------------------------------------------

def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def spec_from_record(record: dict[str, Any]) -> S.Spec:
    """The checked spec stored in a checkpoint record (JSON turns an optimizer's update tuple into lists).

    Validated as JSON, strictly: a value nldsl wrote has its field's type already, so `true` for a
    width or "8" for a period is an edited record, not something to coerce (`true` would read as 1)."""
    from nldsl.runtime.train import _flat

    too_large = next((path for path, value in _flat(record["spec"]).items()
                      if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63), None)
    if too_large is not None:
        raise ValueError(f"`{too_large}`: {NUMBER_RANGE}, as the checker requires")
    spec = S.Spec.model_validate_json(json.dumps(record["spec"]), strict=True)
    optimizer = spec.train.optimizer
    if isinstance(optimizer, S.OptimizerSpec):
        optimizer = optimizer.model_copy(update={"update": _tuples(optimizer.update)})
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"optimizer": optimizer})})
    return spec


@dataclass
class LoadedModel:
    """A trained run, as `nldsl.load_run` returns it: `model` (also carrying `.spec` and `.module`,
    as `nldsl.load`'s does), `tokenizer`, `checkpoint` (record and step) and the `device`."""

    model: torch.nn.Module
    module: Any  # the generated module (CLOCK_STEPS, build)
    spec: S.Spec
    tokenizer: D.ByteTokenizer | D.BPETokenizer
    checkpoint: C.Checkpoint
    device: torch.device

    def __repr__(self) -> str:  # the default would print every weight and the whole record
        count = sum(parameter.numel() for parameter in self.model.parameters())
        return (f"LoadedModel({self.spec.path!r}, step {self.checkpoint.record.get('step')}, {count:,} parameters, "
                f"{self.tokenizer.kind} tokenizer, on {self.device}, from {str(self.checkpoint.path)!r})")


def load_model(target: str | Path, device: torch.device) -> LoadedModel:
    """The model of a run folder (its latest checkpoint) or of a checkpoint folder."""
    checkpoint = C.load_checkpoint(target, training=False,
                                   warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    C.check_run_record(checkpoint)
    record = checkpoint.record
    _check_run_folder_spec(checkpoint, lambda message: print(f"warning: {message}", file=sys.stderr))
    try:
        spec = spec_from_record(record)
    except ValidationError as error:  # one line: the first field that is wrong (pydantic lists them all)
        errors = error.errors()  # a missing or wrong field says more than an extra one
        first = next((e for e in errors if e["type"] != "extra_forbidden"), errors[0])
        where = ".".join(str(part) for part in first["loc"]) or "spec"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise C.CheckpointError(f"the record in {checkpoint.path} holds no usable spec: `{where}`: "
                                f"{first['msg']}{more}") from None
    except (KeyError, ValueError) as error:
        raise C.CheckpointError(f"the record in {checkpoint.path} holds no usable spec: {error}") from None
    if spec.model is None:
        raise C.CheckpointError(f"the record in {checkpoint.path} holds no usable spec: it has no `model`")
    overrides = record.get("overrides")  # for the generated banner only: the spec above is already resolved
    overrides = overrides if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides) else ()
    try:
        module = loader.build_module(spec, record.get("spec_text", ""), overrides)
        model = loader.build_model(module, spec, device)
    except Exception as error:  # sorted out below: an edited record, or a bug of nldsl's
        raise _unbuildable(checkpoint, spec, overrides, error) from error
    C.check_parameters(checkpoint.model, {n: tuple(t.shape) for n, t in model.state_dict().items()}, checkpoint.path)
    C.check_finite_weights(checkpoint.model, checkpoint.path)
    model.load_state_dict(checkpoint.model)
    model.requires_grad_(False)
    loader.attach(model, module, spec)
    tokenizer = D.tokenizer_from_record(record["tokenizer"], checkpoint.path,
                                        record.get("files", {}).get("tokenizer.json"))
    return LoadedModel(model, module, spec, tokenizer, checkpoint, device)


def _unbuildable(checkpoint: C.Checkpoint, spec: S.Spec, overrides: Any, error: Exception) -> Exception:
    """What to raise when the spec of a record that passed its digest does not build. The checker
    passed the spec when the run began, so a spec that fails here was edited in the record (its
    digest recomputed) or written by another tool: said as a CheckpointError naming the first value
    that differs from what the record's own spec text checks to. Only where that text checks to the
    very spec recorded is the failure nldsl's own, and the error goes on as it is (an internal error)."""
    from nldsl.checker import check_text
    from nldsl.runtime.train import _first_difference

    why = f"{type(error).__name__}: {error}"
    text = checkpoint.record.get("spec_text")
    if isinstance(text, str):
        again = check_text(text, spec.path, list(overrides)).spec  # None where it does not check on its own
        if again is not None:
            recorded, checked = spec.model_dump(mode="json"), again.model_dump(mode="json")
            for dump in (recorded, checked):
                dump.pop("path"), dump.pop("sha256")
            if recorded == checked:
                return error
            difference = _first_difference(recorded, checked, now_is="in its spec text")
            if difference is not None:
                why += f"; {difference.replace('in the checkpoint', 'in the record', 1)}"
    return C.CheckpointError(f"the spec recorded in {checkpoint.path} does not build ({why}): the record was "
                             "edited or written by another tool; use an older checkpoint of the run, or retrain")


def _check_run_folder_spec(checkpoint: C.Checkpoint, warn: Callable[[str], None]) -> None:
    """A checkpoint inside a run folder (RUN/checkpoints/step-N) that another spec wrote, copied in
    from another run: its model is always rebuilt from its own record, so what it computes is right
    for it, but not the run's, whose name the output carries. Weights that do not fit the model of the
    run's spec (resolved.json) are not this run's: a CheckpointError naming both specs and the first
    value that differs. Weights that fit (a period, an update rule or a train value changed): a
    warning, naming the same. Values that `--resume` may change (train.steps, …) are not compared."""
    from nldsl import shapes
    from nldsl.runtime.train import _first_difference

    # absolute: a checkpoint named from inside its run (`eval step-N` in RUN/checkpoints, `eval .`) has
    # a relative path whose parents say nothing of the run around it
    folder = Path(os.path.abspath(checkpoint.path)).parent
    resolved = folder.parent / "resolved.json"
    if folder.name != C.CHECKPOINTS or not resolved.is_file():
        return
    try:
        run = json.loads(resolved.read_text(encoding="utf-8"))
        run_spec = spec_from_record(run)
        # both read back as the spec reads them: a value a later nldsl added (with its default) is no
        # difference between a checkpoint written before it and a run resumed after it
        mine = run_spec.model_dump(mode="json")
        theirs = spec_from_record(checkpoint.record).model_dump(mode="json")
        expected = shapes.model_parameters(run_spec.model)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, ValidationError):
        # a damaged resolved.json: the checkpoint, which holds its own spec, is read as it is (a
        # damaged record is said by load_model)
        return
    difference = _first_difference(theirs, mine, now_is="in the run")
    if difference is None:
        return
    run_dir = checkpoint.path.parent.parent if checkpoint.path.parent.name == C.CHECKPOINTS else folder.parent
    said = (f"the checkpoint {checkpoint.path} was written by another spec than the run {run_dir}'s: "
            f"{checkpoint.record.get('spec_path', '?')} (sha256 {str(checkpoint.record.get('spec_sha256'))[:12]}…) "
            f"vs the run's {run.get('spec_path', '?')} (sha256 {str(run.get('spec_sha256'))[:12]}…); "
            f"{difference}")
    fits = ({name: tuple(t.shape) for name, t in checkpoint.model.items()} == expected)
    if not fits:
        raise C.CheckpointError(f"{said}, and its weights do not fit the run's model: it was copied in from "
                                "another run. Put it back in its own run, or copy it out of this run folder to "
                                "read it alone (with the spec it recorded)")
    warn(f"{said}. Its weights fit the run's model, but it is read with the spec it recorded, not the run's")


def validation_documents(record: dict[str, Any]) -> list[str]:
    """The validation split of the run a checkpoint belongs to, read again from its recorded source, in
    the pieces training encoded one by one (`Split`: each document with its separator)."""
    source = record["data"]["source"]
    paths = source["paths"] if source["kind"] == "files" else None
    try:
        split = D.load_split(paths, source.get("encoding", "utf-8"), once_each=False)
    except UserError as error:
        if not paths:
            raise
        raise UserError(f"{error}: the run's validation split is read again from the data it trained on; "
                        "pass --data to give the text where it is now, or another one") from None
    recorded = record["data"].get("validation_sha256")
    if recorded and split.record["validation"]["sha256"] != recorded:
        why = ("the data files changed since the run read them, or the run was made by an nldsl whose rule "
               "for reading them changed" if paths else
               "the default corpus comes from this Python's standard library by this nldsl's rule, and the run "
               "used another Python's or another nldsl's")
        print(f"warning: the validation text differs from the one this run recorded ({why}); numbers are not "
              "comparable with the run's own evaluations", file=sys.stderr)
    return split.validation


def files_documents(paths: list[str], encoding: str) -> list[str]:
    """The user's files for eval and stream, separated as in training but with nothing after the last, so
    that a text cut into two files streams exactly as the whole; as pieces, one per document."""
    documents = D.user_corpus(paths, encoding, once_each=False)  # a text twice: fine
    return [d.text + D.SEPARATOR for d in documents[:-1]] + [documents[-1].text]


# Evaluation ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    loss: float  # nats per predicted token
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # bytes those tokens stand for
    windows: int

    def line(self) -> str:
        # past 10⁶ a perplexity is shown in powers of ten, not as a number of hundreds of digits
        perplexity = f"{self.perplexity:.2f}" if self.perplexity < 1e6 else f"{self.perplexity:.3g}"
        return (f"loss {self.loss:.4f}  perplexity {perplexity}  bits per byte {self.bits_per_byte:.4f}  "
                f"({self.tokens:,} tokens in {self.windows} window{'' if self.windows == 1 else 's'})")


def evaluation_from_sums(nats: float, tokens: int, byte_count: int, windows: int) -> Evaluation:
    loss = nats / max(tokens, 1)
    try:
        perplexity = math.exp(loss)  # NaN stays NaN
    except OverflowError:  # from a loss of 709.78: past a float's range
        perplexity = math.inf
    return Evaluation(loss, perplexity, nats / math.log(2) / max(byte_count, 1), tokens, byte_count, windows)


@torch.no_grad()
def evaluate(model: torch.nn.Module, text: D.TokenText, seq_len: int, batch: int, limit: int | None,
             device: torch.device, bf16: bool = False, rank: int = 0, world_size: int = 1,
             every_rank_all: bool = False, progress: bool = False) -> tuple[float, int, int, int]:
    """Sums (nats, predicted tokens, bytes, windows) over the evaluation windows of `text`.

    With several ranks each takes every world_size-th window and the caller adds the sums; under
    FSDP (`every_rank_all`) every rank runs every window, because sharded forwards must run in step.
    `progress` draws a bar over the batches when stderr is a terminal.
    """
    starts = D.evaluation_starts(len(text), seq_len, limit)
    if world_size > 1 and not every_rank_all:
        starts = starts[rank::world_size]
    token_bytes = text.token_bytes.to(device)
    nats, count, byte_count = 0.0, 0, 0
    firsts = range(0, starts.shape[0], batch)
    for first in tqdm(firsts, unit="batch", leave=False, disable=not (progress and sys.stderr.isatty())):
        inputs, targets = D.windows(text.tokens, starts[first:first + batch], seq_len)
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs, targets)  # (B, T, V)
        nats += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
        byte_count += int(token_bytes[targets].sum().item())
    return nats, count, byte_count, int(starts.shape[0])


def evaluate_text(loaded: LoadedModel, pieces: list[str], batches: int | None, progress: bool = False) -> Evaluation:
    """Evaluate a loaded model on a text with the run's seq_len and batch size. The text comes in
    pieces (documents), encoded one by one as training encodes its validation split: a BPE merge
    across a document boundary would shift the tokens, and the windows with them."""
    train = loaded.spec.train
    tokens = D.tokenize(loaded.tokenizer, pieces)
    D.require_windows(tokens, train.seq_len, "evaluation",
                      "give a longer text with --data (the run's train.seq_len is the model's window)")
    limit = (batches or train.eval_batches) * train.batch
    sums = evaluate(loaded.model, tokens, train.seq_len, train.batch, limit, loaded.device,
                    bf16=train.precision == "bf16", progress=progress)
    return evaluation_from_sums(*sums)


# Generation ------------------------------------------------------------------------------------------

def generate(model: torch.nn.Module, tokenizer: D.ByteTokenizer | D.BPETokenizer, prompt: str, tokens: int,
             temperature: float, top_k: int, seed: int, seq_len: int, device: torch.device) -> str:
    """The continuation of `prompt` (without the prompt), sampled one token at a time."""
    return "".join(generate_pieces(model, tokenizer, prompt, tokens, temperature, top_k, seed, seq_len, device))


def generate_pieces(model: torch.nn.Module, tokenizer: D.ByteTokenizer | D.BPETokenizer, prompt: str, tokens: int,
                    temperature: float, top_k: int, seed: int, seq_len: int,
                    device: torch.device) -> Iterator[str]:
    """The continuation of `prompt`, yielded piece by piece as it is sampled, so that a long one shows
    as it grows. A piece is the text the tokens so far add that no later token can change: a
    trailing replacement character (an incomplete UTF-8 sequence, with byte tokens or byte-level
    BPE) waits for the next token, and the last piece holds whatever is left."""
    ids = tokenizer.encode(prompt).long().tolist() or tokenizer.encode("\n").long().tolist()
    prompt_length = len(ids)
    generator = torch.Generator().manual_seed(seed)
    shown = 0  # characters of the continuation yielded so far
    for _ in range(tokens):
        ids.append(_next_token(model, ids[-seq_len:], temperature, top_k, generator, device))
        text = tokenizer.decode(ids[prompt_length:])
        stable = len(text.rstrip("\ufffd"))  # decoding more tokens leaves the text before this as it is
        if stable > shown:
            yield text[shown:stable]
            shown = stable
    if tokens:
        rest = tokenizer.decode(ids[prompt_length:])[shown:]
        if rest:
            yield rest


@torch.no_grad()
def _next_token(model: torch.nn.Module, context: list[int], temperature: float, top_k: int,
                generator: torch.Generator, device: torch.device) -> int:
    logits = model(torch.tensor(context, device=device).unsqueeze(0))[0, -1].float().cpu()  # (V,)
    if temperature <= 0:
        return int(logits.argmax())
    # shifted first, so that a tiny temperature gives −inf (probability 0), never inf; in float64,
    # where a temperature below float32's normal range (1e-40) is not flushed to zero
    logits = (logits.double() - logits.max()) / temperature
    if 0 < top_k < logits.shape[0]:
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


def shown_text(text: str) -> str:
    """Generated text as printed: escaped on a terminal, as it is into a pipe or a file."""
    return terminal_safe(text) if sys.stdout.isatty() else text


# Streaming --------------------------------------------------------------------------------------------

@dataclass
class SlowLevel:
    """A level the continuum clock steps, learning from the stream by SGD every `period` tokens."""

    prefix: str  # as in CLOCK_STEPS, e.g. "cms.slow_"
    parameters: list[tuple[str, torch.nn.Parameter]]
    period: int  # tokens
    lr: float  # η
    # a `steps(count)` level: its period is `count` segments, each adding its mean loss's gradient as an
    # outer step adds its batch mean's (a level of a period in tokens adds each token's share instead)
    per_segment: bool = False


def find_level(spec: S.Spec, prefix: str) -> S.LevelSpec | None:
    """The cms level a CLOCK_STEPS prefix names: "cms.slow_", or "p.cms.slow_" inside a `parallel` p."""
    *path, level_name = prefix.removesuffix("_").split(".")
    assert spec.model is not None
    layers: tuple[Any, ...] = spec.model.block.sublayers
    for index, name in enumerate(path):
        layer = next((candidate for candidate in layers if candidate.name == name), None)
        if isinstance(layer, S.ParallelSpec) and index < len(path) - 1:
            layers = layer.branches
        elif isinstance(layer, S.CMSSpec) and index == len(path) - 1:
            return next((level for level in layer.levels if level.name == level_name), None)
        else:
            return None
    return None


def slow_levels(loaded: LoadedModel, segment: int, lrs: dict[str, float] | None = None) -> list[SlowLevel]:
    """The clock-stepped levels of a model with their stream periods and learning rates: the spec's,
    or `lrs` by level name as the stream prints it (`cms.slow`; a name no level has is a UserError
    that lists them)."""
    from nldsl.compiler import lower

    clock_steps: dict[str, int] = getattr(loaded.module, "CLOCK_STEPS", {})
    levels = []
    for prefix in clock_steps:
        level = find_level(loaded.spec, prefix)
        if level is None:
            continue
        parameters = [(n, p) for n, p in loaded.model.named_parameters() if clock_prefix(n, {prefix: 1}) == prefix]
        period = level.period if isinstance(level.period, int) else level.period.count * segment
        lr = (lrs or {}).get(prefix.removesuffix("_"), lower.gate_start("lr", level.lr))
        levels.append(SlowLevel(prefix, parameters, period, lr, per_segment=not isinstance(level.period, int)))
    unknown = sorted(set(lrs or {}) - {level.prefix.removesuffix("_") for level in levels})
    if unknown:
        names = ", ".join(f"`{level.prefix.removesuffix('_')}`" for level in levels) or "none"
        raise UserError(f"--slow-lr names {', '.join(f'`{name}`' for name in unknown)}, which is no slow level of "
                        f"this model (the levels on the continuum clock: {names})")
    return levels


@dataclass
class StreamState:
    """Everything a stream carries from one text to the next."""

    position: int = 0  # tokens fed so far
    memory: list | None = None  # the model's state, one dict per block
    pending: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # tokens not fed yet
    sums: dict[str, Tensor] = field(default_factory=dict)  # parameter name → summed stream gradient
    slow_weights: dict[str, Tensor] = field(default_factory=dict)  # parameter name → value
    # tokens of the run's validation split read so far (fed or pending), where the stream has read
    # only that text: a stream continued without --data goes on from there; None after other text,
    # UNKNOWN_READ in a state written before the count was kept
    validation_read: int | None = None


@dataclass
class Segment:
    start: int  # position of its first input token in the stream
    tokens: int  # predicted tokens
    nats: float
    bytes: int
    fresh_nats: float | None = None  # the same segment from a fresh memory state (`--baseline`)


@dataclass
class StreamResult:
    segments: list[Segment]
    state: StreamState
    updates: dict[str, int]  # slow level → SGD steps taken
    stopped: str | None = None  # why the stream ended before the text did (Ctrl-C, a non-finite loss)
    levels: list[SlowLevel] = field(default_factory=list)  # the slow levels that learned, with their lr


def first_non_finite(model: torch.nn.Module, inputs: Tensor, targets: Tensor, bf16: bool = False,
                     state: Any = None) -> str | None:
    """Where a forward pass (with its targets, which the surprise of a CMS reads, and a carried
    memory `state`) first gives a value that is not finite: the submodule, innermost first, that
    returned it (e.g. "lmm of block 0 (blocks.0.lmm)"), or None when the logits are finite."""
    name = non_finite_module(model, inputs, targets, bf16=bf16, state=state)
    return None if name is None else describe_module(name)


def describe_module(name: str) -> str:
    """A submodule's name as the errors write it: "lmm of block 0 (blocks.0.lmm)"."""
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    return f"{block[2]} of block {block[1]} ({name})" if block else name or "the model"


def non_finite_module(model: torch.nn.Module, inputs: Tensor, targets: Tensor, bf16: bool = False,
                      state: Any = None) -> str | None:
    """The name of the submodule of `first_non_finite` ("" for the model itself), or None."""
    found: list[str] = []

    def check(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            tensors = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, Tensor)]
            if not found and any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
                found.append(name)
        return hook

    handles = [module.register_forward_hook(check(name)) for name, module in model.named_modules()]
    try:
        with torch.no_grad(), torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(inputs, targets, state=state) if state is not None else model(inputs, targets)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def non_finite_gradient_layer(model: torch.nn.Module, inputs: Tensor, targets: Tensor,
                              bf16: bool = False) -> str | None:
    """The layer of a block (`blocks.N.<layer>`) where a backward pass from a finite loss first gives a
    gradient that is not finite, found by running the loss and its backward again, eagerly: the layer
    whose output receives a finite gradient while its parameters get a non-finite one. (Gradients
    flow from the loss back towards the inputs, so every layer before that one gets non-finite
    gradients at its output too, and every layer after it finite ones.) None when the loss is not
    finite here, every gradient is, or the first non-finite one arises outside the blocks' layers
    (in the output head, say, where the last layer's output gradient is already not finite). The
    parameters' gradients are cleared before and after."""
    layers = {name: module for name, module in model.named_modules() if re.fullmatch(r"blocks\.\d+\.[^.]+", name)}
    order: list[str] = []
    broken_outputs: set[str] = set()  # layers whose output received a gradient that is not finite

    def watch(name: str) -> Callable[..., None]:
        def look(gradient: Tensor) -> None:
            if not bool(torch.isfinite(gradient).all()):
                broken_outputs.add(name)

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            order.append(name)
            for tensor in torch.utils._pytree.tree_leaves(output):
                if isinstance(tensor, Tensor) and tensor.requires_grad:
                    tensor.register_hook(look)
        return hook

    handles = [module.register_forward_hook(watch(name)) for name, module in layers.items()]
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(inputs, targets)
            if not bool(torch.isfinite(loss)):
                return None
            loss.backward()
        found = [name for name in order if name not in broken_outputs and any(
            p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in layers[name].parameters())]
        return found[-1] if found else None
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)


def stream(loaded: LoadedModel, tokens: Tensor, segment: int, state: StreamState | None = None,
           learn: bool = True, keep_pending: bool = False, progress: bool = False,
           baseline: bool = False, slow_lrs: dict[str, float] | None = None) -> StreamResult:
    """Feed `tokens` (N,) segment by segment after what `state` left; see the module docstring.
    With `baseline`, each segment is also scored from a fresh memory state (the model's initial one,
    with the weights as the stream has them then), as `eval` scores a window: the difference is
    what carrying the memory from segment to segment does."""
    state = state or StreamState()
    model, device = loaded.model, loaded.device
    every_level = slow_levels(loaded, segment, slow_lrs)
    levels = every_level if learn else []
    seq_len = loaded.spec.train.seq_len
    with torch.no_grad():
        for level in every_level:
            for name, p in level.parameters:
                # A fresh stream starts from the checkpoint's weights, not from where an earlier
                # stream of this process left the model (it steps them in place).
                start = state.slow_weights.get(name, loaded.checkpoint.model.get(name))
                if start is not None:
                    p.copy_(start)
    model.requires_grad_(False)
    for level in levels:
        for _, p in level.parameters:
            p.requires_grad_(True)
    sums = {name: state.sums.get(name, torch.zeros_like(p)).to(device).clone()
            for level in every_level for name, p in level.parameters}
    buffer = torch.cat([state.pending.long(), tokens.long()]).to(device)
    token_bytes = loaded.tokenizer.token_bytes().to(device)
    memory, position, fed = state.memory, state.position, 0
    segments: list[Segment] = []
    updates = {level.prefix: 0 for level in levels}
    bar = tqdm(total=max(buffer.shape[0] - 1, 0), unit="tok", unit_scale=True, leave=False,
               disable=not (progress and sys.stderr.isatty()))  # a log gets no carriage returns
    total_nats, total_bytes = 0.0, 0
    stopped = None
    while True:
        try:  # a Ctrl-C or SIGTERM anywhere in the loop stops it at a whole segment
            available = buffer.shape[0] - fed - 1  # inputs whose next token is known
            n = segment if available >= segment else (available if available >= 1 and not keep_pending else 0)
            if n == 0:
                break
            inputs = buffer[fed:fed + n].unsqueeze(0)  # (1, n)
            targets = buffer[fed + 1:fed + n + 1].unsqueeze(0)
            with deferred_interrupt():  # a segment is applied whole, so the state saved after Ctrl-C is sound
                with torch.set_grad_enabled(bool(levels)):
                    logits, new_memory = model(inputs, targets, state=memory, return_state=True)
                    loss = F.cross_entropy(logits[0].float(), targets[0], reduction="sum")
                nats = float(loss.detach())
                fresh_nats = None
                if baseline:
                    fresh_nats = _fresh_nats(model, inputs, targets)
                if not math.isfinite(nats):
                    stopped = (f"the loss is {nats} on the segment at token {position:,}: it was not applied, and "
                               f"the stream stopped there; {_non_finite_cause(model, inputs, targets, memory)}")
                    break
                # A memory can pass infinity in a write that no later token of the segment reads, or in a
                # part the readout bounds: the loss stays finite, and the next segment, or a --state-in of
                # the saved state, would meet it
                broken = non_finite_part(new_memory)
                if broken is not None:
                    stopped = (f"the memory state is not finite after the segment at token {position:,} ({broken} "
                               "holds NaN or infinite values), though the segment's loss is finite: the segment was "
                               "not applied, and the stream stopped there; the carried memory diverged. "
                               + DIVERGED_MEMORY)
                    break
                if levels:
                    # the segment's summed loss over a training sequence's length: its mean loss weighted
                    # by its share of a sequence, so that a period in tokens takes the same step whatever
                    # --segment cuts it into (a segment of seq_len adds its mean loss's gradient); a
                    # `steps(count)` level counts segments, and each adds its mean loss's gradient
                    (loss / seq_len).backward()
                    for level in levels:
                        for name, p in level.parameters:
                            if p.grad is not None:
                                sums[name] += p.grad * (seq_len / n) if level.per_segment else p.grad
                            p.grad = None
                memory = detach_state(new_memory)
                segment_bytes = int(token_bytes[targets].sum())
                segments.append(Segment(position, n, nats, segment_bytes, fresh_nats))
                before, position, fed = position, position + n, fed + n
                for level in levels:
                    if position // level.period > before // level.period:
                        with torch.no_grad():
                            for name, p in level.parameters:
                                p.sub_(level.lr * sums[name])
                                sums[name].zero_()
                        updates[level.prefix] += 1
            total_nats, total_bytes = total_nats + nats, total_bytes + segment_bytes
            bar.update(n)
            bar.set_postfix(loss=f"{nats / n:.3f}", bpb=f"{total_nats / math.log(2) / max(total_bytes, 1):.3f}")
        except KeyboardInterrupt as stop:
            how = "SIGTERM" if signal_number(stop) == signal.SIGTERM else "Ctrl-C"
            stopped = f"interrupted ({how}) after {position - state.position:,} tokens"
            break
    bar.close()
    for level in levels:
        for _, p in level.parameters:
            p.grad = None
    model.requires_grad_(False)
    final = StreamState(
        position=position, memory=memory,
        pending=buffer[fed:].cpu() if keep_pending else torch.zeros(0, dtype=torch.int64),
        sums={name: s.cpu() for name, s in sums.items()},
        slow_weights={name: p.detach().cpu().clone() for level in every_level for name, p in level.parameters})
    return StreamResult(segments, final, updates, stopped, levels)


def _fresh_nats(model: torch.nn.Module, inputs: Tensor, targets: Tensor) -> float:
    """A segment's summed loss from a fresh memory state (one sequence)."""
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs, targets)[0].float(), targets[0], reduction="sum"))


# why a memory carried along a stream diverges, and what to change
DIVERGED_MEMORY = ("A memory without retention, or with a large `lr`, can grow past what training's sequences "
                   "showed it; stream shorter texts, or give the level a retention below 1. A --state-in of the "
                   "saved state meets this segment first")
# what to change when an in-context level diverges (`nldsl train` says it of a first step too)
IN_CONTEXT_LR_ADVICE = ("An in-context level's learning rate (`lr` in its `level`) set too high is the usual cause: "
                        "lower it, or its bound in learned(max = …) or generated(max = …)")


def _non_finite_cause(model: torch.nn.Module, inputs: Tensor, targets: Tensor, memory: Any) -> str:
    """Why a stream's segment is not finite, as `nldsl train` says it of a first step: the layer
    where the forward pass first is, and whether a fresh memory state gets through the same segment
    (then the memory carried this far is what diverged)."""
    where = first_non_finite(model, inputs, targets, state=memory)
    found = f"the forward pass is first not finite in {where}" if where else "the forward pass is finite"
    if memory is None:
        return f"{found}. {IN_CONTEXT_LR_ADVICE}, and train again"
    fresh = _fresh_nats(model, inputs, targets)
    if math.isfinite(fresh):
        return (f"{found} with the memory carried here, and finite from a fresh memory state (loss "
                f"{fresh / inputs.shape[1]:.4f}): the carried memory diverged. {DIVERGED_MEMORY}")
    return f"{found}, from a fresh memory state too. {IN_CONTEXT_LR_ADVICE}, and train again"


def stream_parts(segments: list[Segment], parts: int = 4
                 ) -> list[tuple[int, int, Evaluation, Evaluation | None]]:
    """(first token, last token, evaluation, evaluation from fresh states or None) for `parts`
    consecutive stretches of segments."""
    if not segments:
        return []
    parts = min(parts, len(segments))
    rows = []
    for index in range(parts):
        chunk = segments[index * len(segments) // parts:(index + 1) * len(segments) // parts]
        tokens, byte_count = sum(s.tokens for s in chunk), sum(s.bytes for s in chunk)
        fresh = None
        if all(s.fresh_nats is not None for s in chunk):
            fresh = evaluation_from_sums(sum(s.fresh_nats or 0.0 for s in chunk), tokens, byte_count, len(chunk))
        rows.append((chunk[0].start, chunk[-1].start + chunk[-1].tokens,
                     evaluation_from_sums(sum(s.nats for s in chunk), tokens, byte_count, len(chunk)), fresh))
    return rows


def save_stream_state(path: Path, state: StreamState, spec_sha256: str, checkpoint: str,
                      weights_sha256: str | None) -> None:
    """One safetensors file: tensors, with the JSON structure in its header metadata; written atomically.
    `weights_sha256` (the checkpoint's model file) names the weights the state belongs to."""
    tensors: dict[str, Tensor] = {}
    structure = {
        "format": STATE_FORMAT,
        "spec_sha256": spec_sha256,
        "checkpoint": checkpoint,
        "weights_sha256": weights_sha256,
        "position": state.position,
        "memory": C.encode(state.memory, tensors, "memory"),
        "pending": C.encode(state.pending, tensors, "pending"),
        "sums": C.encode(state.sums, tensors, "sums"),
        "slow_weights": C.encode(state.slow_weights, tensors, "slow"),
        "validation_read": state.validation_read,
    }
    structure["tensors_sha256"] = state_tensors_sha256(tensors)
    data = safetensors.torch.save(tensors, metadata={"nldsl": json.dumps(structure)})
    try:
        write_atomic(path, data)
    except OSError as error:
        raise UserError(f"could not write the stream state {path}: {error.strerror or error}") from None


def holds_a_stream_state(path: Path) -> bool:
    """Whether the file at `path` is a state `save_stream_state` wrote (a damaged one included: its
    header still says so), i.e. a file `--state-out` may replace."""
    # The header is read by hand: safetensors refuses to open a file whose tensors are cut short.
    # Layout: an 8-byte little-endian header length, then the JSON header with its __metadata__.
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= path.stat().st_size - 8:
                return False
            metadata = json.loads(handle.read(length)).get("__metadata__") or {}
            structure = json.loads(metadata.get("nldsl", "null"))
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):  # ValueError: bad JSON or UTF-8
        return False
    return isinstance(structure, dict) and structure.get("format") == STATE_FORMAT


def state_tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """A digest of a state's tensors (their safetensors serialization, which orders them by name)."""
    return C.sha256_bytes(safetensors.torch.save(tensors))


def load_stream_state(path: Path, spec_sha256: str, weights_sha256: str | None, device: torch.device) -> StreamState:
    """A state written by `save_stream_state` for the same spec and the same weights: a state's
    memory and slow levels grew from the model that wrote it, so another model (another run of the
    spec, a model --init-from it, another checkpoint) must not continue it."""
    if not path.exists():
        raise UserError(f"no stream state at {path}")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise UserError(f"{path} is {what}: a stream state is a file, written by `nldsl stream --state-out FILE`")
    try:
        with open(path, "rb") as file:
            opening = file.read(9)
    except OSError as error:
        raise UserError(f"cannot read the stream state {path}: {error.strerror or error}") from None
    if len(opening) < 9 or opening[8:9] != b"{":  # a safetensors file opens with its header's length, then `{`
        raise UserError(f"{path} is not a stream state written by `nldsl stream --state-out` (nor any "
                        "safetensors file)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            # copied into fresh (aligned) memory: safetensors' tensors sit at unaligned offsets of the
            # file's buffer, where matrix kernels take other paths and round the continued stream
            # differently from one stream (1e-6 in a gradient sum, measured)
            tensors = {key: handle.get_tensor(key).to(device, copy=True) for key in handle.keys()}
        if "nldsl" not in metadata:  # a safetensors file of something else (a checkpoint's weights)
            raise UserError(f"{path} is not a stream state written by `nldsl stream --state-out`")
        structure = json.loads(metadata["nldsl"])
    except (safetensors.SafetensorError, OSError, json.JSONDecodeError) as error:
        raise UserError(f"corrupt stream state {path}: {error}") from None
    if not isinstance(structure, dict) or structure.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a stream state written by `nldsl stream --state-out`")
    digest = structure.get("tensors_sha256")
    if digest is not None and digest != state_tensors_sha256({key: t.cpu() for key, t in tensors.items()}):
        raise UserError(f"corrupt stream state {path}: its tensors differ from the ones written (sha256)")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise UserError(f"corrupt stream state {path}: it holds NaN or infinite values")
    written_by = structure.get("weights_sha256")
    if isinstance(written_by, str) and weights_sha256 is not None and written_by != weights_sha256:
        checkpoint = structure.get("checkpoint")
        if isinstance(checkpoint, str) and checkpoint and not Path(checkpoint).exists():
            # pruned by keep_checkpoints (a run trained on), or deleted: nothing can continue the state
            raise UserError(f"the stream state {path} was written by a stream of checkpoint {checkpoint}, which no "
                            "longer exists (a run that trained on prunes its older checkpoints: raise "
                            "train.keep_checkpoints to keep them): its memory and slow levels belong to those "
                            "weights; stream this checkpoint without --state-in")
        raise UserError(f"the stream state {path} was written by a stream of other weights (checkpoint "
                        f"{checkpoint}): its memory and slow levels belong to that model; "
                        "continue it with that checkpoint, or stream this one without --state-in")
    recorded = structure.get("spec_sha256")
    if not isinstance(recorded, str):
        raise UserError(f"corrupt stream state {path}: it names no spec")
    if recorded != spec_sha256:
        raise UserError(f"the stream state {path} belongs to another spec (sha256 {recorded[:12]}… "
                        f"vs {spec_sha256[:12]}…)")
    position = structure.get("position")
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise UserError(f"corrupt stream state {path}: its position is not a token count")
    # `memory` is written always, and is none only before the first segment (the stream starts fresh)
    if "memory" not in structure:
        raise UserError(f"corrupt stream state {path}: it holds no `memory` entry")
    if structure["memory"] is None and position > 0:
        raise UserError(f"corrupt stream state {path}: it has streamed {position:,} tokens but holds no memory")
    read = structure.get("validation_read")
    if read is not None and (not isinstance(read, int) or isinstance(read, bool) or read < 0):
        raise UserError(f"corrupt stream state {path}: its `validation_read` is not a token count")
    if "validation_read" not in structure:  # a state written before the count was kept
        read = UNKNOWN_READ
    try:
        state = StreamState(
            position=position, memory=C.decode(structure.get("memory"), tensors),
            pending=C.decode(structure.get("pending"), tensors), sums=C.decode(structure.get("sums"), tensors),
            slow_weights=C.decode(structure.get("slow_weights"), tensors), validation_read=read)
    except ValueError as error:
        raise UserError(f"corrupt stream state {path}: {error}") from None
    pending = state.pending
    if not (isinstance(pending, Tensor) and pending.dim() == 1 and not pending.is_floating_point()
            and not pending.is_complex()):
        raise UserError(f"corrupt stream state {path}: its pending tokens are not a list of token ids")
    state.pending = pending.cpu()
    for what in ("sums", "slow_weights"):
        table = getattr(state, what)
        if not (isinstance(table, dict) and all(isinstance(v, Tensor) for v in table.values())):
            raise UserError(f"corrupt stream state {path}: `{what}` is not a table of tensors")
    return state


def check_stream_state(loaded: LoadedModel, state: StreamState, path: Path, segment: int) -> None:
    """A state read from a file fits the loaded model: token ids within its vocabulary, the slow
    levels' tensors by name and shape, and a memory of the structure and shapes the model makes
    (compared with the state after one token), so that a hand-made or mismatched file is one clear
    error instead of a shape error deep in a forward pass."""
    vocab = loaded.tokenizer.vocab_size
    if state.pending.numel() and not (0 <= int(state.pending.min()) and int(state.pending.max()) < vocab):
        raise UserError(f"the stream state {path} holds token ids outside this model's vocabulary of {vocab}")
    expected = {name: tuple(p.shape) for level in slow_levels(loaded, segment) for name, p in level.parameters}
    for what in ("sums", "slow_weights"):
        for name, tensor in getattr(state, what).items():
            if name not in expected or tuple(tensor.shape) != expected[name]:
                shape = expected.get(name)
                wanted = f"the model's {shape}" if shape is not None else "no slow-level parameter of this model"
                raise UserError(f"the stream state {path} does not fit this model: {what} `{name}` is "
                                f"{tuple(tensor.shape)}, {wanted}")
    with torch.no_grad():
        probe = torch.zeros(1, 1, dtype=torch.long, device=loaded.device)
        _, reference = loaded.model(probe, probe, return_state=True)
    problem = _state_mismatch(state.memory, reference, "memory") if state.memory is not None else None
    if problem:
        raise UserError(f"the stream state {path} does not fit this model: {problem}")


def _state_mismatch(value: Any, reference: Any, where: str) -> str | None:
    """Where `value` differs from `reference` in structure, tensor shape or dtype; None if nowhere."""
    if isinstance(reference, Tensor):
        if not isinstance(value, Tensor):
            return f"{where} is not a tensor"
        if tuple(value.shape) != tuple(reference.shape) or value.dtype != reference.dtype:
            return f"{where} is {tuple(value.shape)} {value.dtype}, the model's is {tuple(reference.shape)} " \
                   f"{reference.dtype}"
        return None
    if isinstance(reference, MemoryState):
        if not isinstance(value, MemoryState):
            return f"{where} is not a memory state"
        return (_state_mismatch(value.weights, reference.weights, f"{where}.weights")
                or _state_mismatch(value.momentum, reference.momentum, f"{where}.momentum"))
    if isinstance(reference, dict):
        if isinstance(value, dict) and set(reference) - set(value) == {"_position"} and set(value) <= set(reference):
            return (f"{where} carries no stream position: the state was written before nested CMS states "
                    "carried one, so it cannot time its slower levels; stream the text again from the checkpoint")
        if not isinstance(value, dict) or set(value) != set(reference):
            return f"{where} holds other entries than the model's"
        return next((found for key in reference
                     if (found := _state_mismatch(value[key], reference[key], f"{where}.{key}"))), None)
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            return f"{where} holds {len(value) if isinstance(value, (list, tuple)) else 'no'} items, the model's " \
                   f"{len(reference)}"
        return next((found for index, (item, ref) in enumerate(zip(value, reference))
                     if (found := _state_mismatch(item, ref, f"{where}.{index}"))), None)
    # plain leaves (counters, flags) may hold other values later in a stream, but not another kind
    return None if type(value) is type(reference) else \
        f"{where} is a {type(value).__name__}, the model's a {type(reference).__name__}"

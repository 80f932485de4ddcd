"""The runtime commands of the CLI: train, eval, generate, stream (and the `bench` dispatch).

`nldsl.cli.cmd_runtime` calls `run(args)` with the parsed arguments (nldsl/runtime/arguments.py).
Each command turns arguments into a call of the runtime's Python API and prints the outcome.
A spec with errors prints its diagnostics; other problems a user can fix raise `UserError`,
which the CLI prints as one line — never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nldsl.cli import UserError, is_out_of_memory, out_of_memory_message, quiet_worker, torchrun_workers
from nldsl.diagnostics import SpecError
from nldsl.runtime.interrupt import deferred_interrupt, terminate_as_interrupt


def run(args: argparse.Namespace) -> int:
    """Dispatch `args.runtime_command`; returns the exit status."""
    handlers = {"train": train_command, "eval": eval_command, "generate": generate_command,
                "stream": stream_command, "bench": bench_command}
    if args.runtime_command != "train" and torchrun_workers() > 1:
        # each torchrun process would run the whole command and print it again
        raise UserError(f"`nldsl {args.runtime_command}` runs in one process: start it without torchrun "
                        "(only `nldsl train` shares its work among torchrun's processes)")
    # the commands that run a model (all but bench, whose suite sets its own sizes) on the CPU: an
    # allocation past the machine's memory is an error there, not a kill (host_memory)
    capped = (_memory_capped(args.device) if args.runtime_command != "bench" else contextlib.nullcontext())
    limit = None
    try:
        with capped as limit:
            return handlers[args.runtime_command](args)
    except SpecError as error:
        if not quiet_worker():  # under torchrun, the machine's first worker prints the diagnostics
            print(str(error), file=sys.stderr)
        return 1
    except BaseException as error:  # not Exception alone: a Rust extension's panic too (cli._run)
        if limit is None or not is_out_of_memory(error):
            raise
        raise UserError(out_of_memory_message(error, limit)) from None


def train_command(args: argparse.Namespace) -> int:
    from nldsl import loader
    from nldsl.checker import Override, held_to_training
    from nldsl.diagnostics import render_text
    from nldsl.runtime.train import TrainOptions, train

    overrides = list(args.set)
    if args.no_compile:  # as an override, so that the run records how it ran and checks as an eager spec
        overrides.append(Override("train.compile=false", origin="--no-compile", label="<--no-compile>"))
    result = held_to_training(loader.check(args.spec, overrides))
    if not result.ok:
        raise loader.SpecError(result.diagnostics, result.sources)
    warnings = [d for d in result.diagnostics if d.severity == "warning"]
    if warnings and not quiet_worker():  # what `nldsl check` says: before a long run, not after it
        print(render_text(warnings, result.sources) + "\n", file=sys.stderr)
    options = TrainOptions(
        data=args.data, data_encoding=args.data_encoding, run_dir=args.run_dir, resume=args.resume,
        tensorboard=args.tensorboard, compile=False if args.no_compile else None, sample=args.sample,
        device=args.device, fsdp=args.fsdp, progress=not args.no_progress, init_from=args.init_from)
    train(result, overrides, options)
    return 0


def _memory_capped(device_name: str) -> contextlib.AbstractContextManager:
    """On the CPU, a block whose allocations past the machine's memory fail as errors rather than
    kills (host_memory); elsewhere, or for a device `check_device` will refuse, a plain block."""
    from nldsl.runtime import distributed, host_memory

    try:
        on_cpu = distributed.resolve_device(device_name).type == "cpu"
    except UserError:  # said in its place, by check_device
        on_cpu = False
    return host_memory.capped_to_available() if on_cpu else contextlib.nullcontext()


def _load(args: argparse.Namespace):
    from nldsl.runtime.evaluate import load_model
    from nldsl.runtime.train import check_device

    if args.target is None:  # argparse's "required" would not say that --data took every word after it
        data = getattr(args, "data", None)
        raise UserError(f"name the run: `nldsl {args.command} RUN_DIR …`"
                        + (f"; --data takes every word after it ({' '.join(data)}), so put RUN_DIR before --data "
                           "or end the files with --" if data else ""))
    return load_model(args.target, check_device(args.device))


def _documents(args: argparse.Namespace, loaded) -> tuple[list[str], str]:
    """The text a command reads (--data files, else the run's validation split), in pieces, one per
    document, and its description."""
    from nldsl.runtime.evaluate import files_documents, validation_documents

    if args.data:
        return files_documents(args.data, args.data_encoding or "utf-8"), f"{len(args.data)} path(s) from --data"
    return validation_documents(loaded.checkpoint.record), "the run's validation split"


def eval_command(args: argparse.Namespace) -> int:
    from nldsl.runtime.evaluate import evaluate_text

    loaded = _load(args)
    pieces, what = _documents(args, loaded)
    evaluation = evaluate_text(loaded, pieces, args.batches, progress=not args.no_progress)
    print(f"checkpoint {loaded.checkpoint.path} (step {loaded.checkpoint.record['step']}) on {what}")
    print(evaluation.line())
    return 0


def generate_command(args: argparse.Namespace) -> int:
    from nldsl.runtime.evaluate import generate_pieces, shown_text

    try:
        args.prompt.encode("utf-8")  # bytes that were not UTF-8 in argv arrive as lone surrogates
    except UnicodeEncodeError:
        raise UserError("--prompt is not valid UTF-8 text (check the terminal's or the script's encoding)") from None
    loaded = _load(args)
    pieces = generate_pieces(loaded.model, loaded.tokenizer, args.prompt, args.tokens, args.temperature, args.top_k,
                             args.seed, loaded.spec.train.seq_len, loaded.device)
    # printed as it is sampled: a long continuation shows as it grows, and a reader that stops
    # reading (`| head`) stops the sampling
    print(shown_text(args.prompt), end="", flush=True)
    try:
        for piece in pieces:
            print(shown_text(piece), end="", flush=True)
    except KeyboardInterrupt:
        print()  # the text so far stays, and "interrupted" goes on a line of its own
        raise
    print()
    return 0


def stream_command(args: argparse.Namespace) -> int:
    from nldsl.runtime.checkpoint import MODEL_FILE
    from nldsl.runtime.evaluate import (
        UNKNOWN_READ,
        check_stream_state,
        load_stream_state,
        save_stream_state,
        stream,
        stream_parts,
    )

    if args.no_learn and args.slow_lr:
        raise UserError("--slow-lr sets how the slow levels learn from the stream, and --no-learn freezes them: "
                        "give one of the two")
    if args.state_out:
        _check_writable(Path(args.state_out))  # before the stream, whose learning the state keeps
        _check_replaceable_state(Path(args.state_out))
    loaded = _load(args)
    segment = args.segment or loaded.spec.train.seq_len
    _note_segment(loaded.spec, segment)
    sha = loaded.checkpoint.record["spec_sha256"]
    weights = loaded.checkpoint.record.get("files", {}).get(MODEL_FILE)
    state = load_stream_state(Path(args.state_in), sha, weights, loaded.device) if args.state_in else None
    if state is not None:
        check_stream_state(loaded, state, Path(args.state_in), segment)
    pieces, what = _documents(args, loaded)
    tokens = loaded.tokenizer.encode("".join(pieces))  # one text: a stream does not know where documents end
    # Without --data a continued stream goes on with the validation split where its state stopped
    # reading it; a state that read other text starts the split afresh, and says so.
    start = 0
    if not args.data and state is not None:
        if state.validation_read is None:
            print("note: the --state-in stream read other text (--data), so this one streams the run's validation "
                  "split from its start")
        elif state.validation_read == UNKNOWN_READ:
            print("note: the --state-in file does not say which text it read (it was written before streams kept "
                  "that count), so this one streams the run's validation split from its start: pass --data to "
                  "choose the text")
        else:
            start = state.validation_read
            what = f"the run's validation split from its token {start:,}"
    split_size = len(tokens)
    tokens = tokens[start:]
    if args.max_tokens is not None:
        tokens = tokens[:args.max_tokens + 1]
    # a SIGTERM (`timeout`, a scheduler) stops the stream as Ctrl-C does, so that --state-out keeps it
    with terminate_as_interrupt():
        result = stream(loaded, tokens, segment, state, learn=not args.no_learn, keep_pending=bool(args.state_out),
                        progress=not args.no_progress, baseline=args.baseline, slow_lrs=dict(args.slow_lr))
        # every token taken from the text was fed or waits in the state (keep_pending)
        result.state.validation_read = None if args.data else start + len(tokens)
        if args.state_out:  # saved before anything is printed: a closed stdout must not lose the stream's learning
            with deferred_interrupt():  # a second Ctrl-C waits for the state: it holds what the stream learned
                save_stream_state(Path(args.state_out), result.state, sha, str(loaded.checkpoint.path), weights)
    fed = sum(s.tokens for s in result.segments)
    if not result.segments and not args.state_out and result.stopped is None:
        if start and start >= split_size:
            raise UserError(f"nothing to stream: the run's validation split holds {split_size:,} token(s), and the "
                            "--state-in stream has read them all; give more text with --data")
        raise UserError(f"nothing to stream: {what} holds {len(tokens):,} token(s), and a segment needs a token and "
                        "the one after it")
    segments = f"{len(result.segments)} segment{'' if len(result.segments) == 1 else 's'}"
    print(f"streamed {fed:,} token{'' if fed == 1 else 's'} of {what} in {segments} of up to {segment} "
          f"from checkpoint {loaded.checkpoint.path}")
    for level in result.levels:
        if level.prefix in result.updates:
            print(f"slow level {level.prefix.rstrip('_')}: {result.updates[level.prefix]} SGD step(s) from the stream "
                  f"at lr {level.lr:g}" + (" (--slow-lr)" if level.prefix.rstrip("_") in dict(args.slow_lr) else ""))
    if args.no_learn and not getattr(loaded.module, "CLOCK_STEPS", {}):
        print("note: --no-learn freezes the levels on the continuum clock, and this model has none: its in-context "
              "levels run as without it")
    in_context = any(layer for block in (result.state.memory or []) for layer in block.values())
    if not in_context and not getattr(loaded.module, "CLOCK_STEPS", {}):
        print("note: nothing in this model learns from the stream (no in-context level, no level on the "
              "continuum clock): its numbers below change only with the text")
    rows = stream_parts(result.segments)
    if rows:
        fresh_columns = f"  {'fresh loss':>10}  {'fresh bpb':>9}" if args.baseline else ""
        print(f"{'part':>4}  {'tokens':>23}  {'loss':>8}  {'bpb':>8}{fresh_columns}")
        for index, (first, last, evaluation, fresh) in enumerate(rows, 1):
            fresh_values = f"  {fresh.loss:10.4f}  {fresh.bits_per_byte:9.4f}" if fresh is not None else ""
            print(f"{index:>4}  {f'{first:,}–{last:,}':>23}  {evaluation.loss:8.4f}  "
                  f"{evaluation.bits_per_byte:8.4f}{fresh_values}")
        print(f"bits per byte, first part → last part: {rows[0][2].bits_per_byte:.4f} → "
              f"{rows[-1][2].bits_per_byte:.4f}")
        _print_baseline(result.segments, args.baseline)
    if args.state_out:
        pending = result.state.pending.shape[0]
        print(f"state saved to {args.state_out} (position {result.state.position:,}; {pending:,} token(s) wait "
              "for the next text)")
    if result.stopped is not None:
        kept = f"; the state up to there is saved in {args.state_out}" if args.state_out else ""
        print(f"error: {result.stopped}{kept}", file=sys.stderr)
        if result.stopped.startswith("interrupted"):
            return 128 + (signal.SIGTERM if "SIGTERM" in result.stopped else signal.SIGINT)
        return 1
    return 0


def _print_baseline(segments: list, asked: bool) -> None:
    """The whole stream's bits per byte with the memory carried and from a fresh state per segment
    (`--baseline`): what carrying the memory adds, or costs."""
    if not asked:
        return
    from nldsl.runtime.evaluate import stream_parts

    [(_first, _last, carried, fresh)] = stream_parts(segments, parts=1)
    if fresh is None:
        return
    change = carried.bits_per_byte - fresh.bits_per_byte
    verdict = "saves" if change < 0 else "costs"
    print(f"bits per byte over the stream: {carried.bits_per_byte:.4f} with the memory carried, "
          f"{fresh.bits_per_byte:.4f} from a fresh state per segment (carrying it {verdict} {abs(change):.4f})")


def _note_segment(spec: Any, segment: int) -> None:
    """A segment that cuts in-context chunks or memory-as-context segments, or is longer than
    training's calls, gives other numbers than the run's own stream would: say so before the numbers
    (docs/runtime.md, *Stream*)."""
    from nldsl.semantics import context_segments, in_context_periods

    periods = in_context_periods(spec.model, spec.train.seq_len)
    segments = context_segments(spec.model)
    cut_periods = sorted(period for period in periods if segment % period)
    cut_segments = sorted(length for length in segments if segment % length)
    if cut_periods or cut_segments:
        every = math.lcm(*periods, *segments)
        what = [f"the {name}(s) {', '.join(map(str, cut))}" for name, cut in
                (("in-context period", cut_periods), ("memory-as-context segment", cut_segments)) if cut]
        ends, at = (("a chunk", "chunk") if not cut_segments else ("a context segment", "segment") if not cut_periods
                    else ("chunks and segments", "chunk and segment"))
        print(f"note: a segment of {segment} tokens is not a multiple of {' or '.join(what)}: each segment ends "
              f"{ends} early, so the losses differ from a stream cut at {at} boundaries "
              f"(--segment {max(every, segment // every * every)} cuts none)")
    if segment > spec.train.seq_len:
        print(f"note: a segment of {segment} tokens is longer than the {spec.train.seq_len} tokens the model was "
              "trained on (train.seq_len)")


def _check_replaceable_state(path: Path) -> None:
    """--state-out replaces only a stream state (or writes through a device such as /dev/null): a
    file of any other kind there (the text being streamed, a checkpoint's weights) is the user's."""
    from nldsl.runtime.evaluate import holds_a_stream_state

    if path.is_file() and not holds_a_stream_state(path):
        raise UserError(f"--state-out {path}: the file exists and is not a stream state, so writing the state "
                        "there would destroy it; choose a new file (a stream state is replaced as it is updated)")


def _check_writable(path: Path) -> None:
    """Refuse an output file whose folder is missing or read-only before any work is done."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: folder {folder} is not writable")


def bench_command(args: argparse.Namespace) -> int:
    if args.study in ("speed", "smoke"):  # the benchmark suite lives in the checkout's bench/ package
        checkout = str(Path.cwd())
        if (Path(checkout) / "bench" / "harness.py").is_file() and checkout not in sys.path:
            sys.path.insert(0, checkout)  # the `nldsl` console script does not put its folder on the path
        if importlib.util.find_spec("bench") is None or importlib.util.find_spec("bench.harness") is None:
            raise UserError(f"`nldsl bench {args.study}` runs the benchmark suite of a source checkout: "
                            "run it from the repository root (or `python -m bench`)")
        suite = importlib.import_module("bench.__main__")
        command = "train" if args.study == "speed" else "smoke"
        # the suite's messages name the command the user typed; its options (--threads too) follow it
        return int(suite.main([command, *(args.rest or [])], prog="nldsl bench",
                              command_progs={command: f"nldsl bench {args.study}"}) or 0)
    if importlib.util.find_spec("nldsl.runtime.studies") is None:
        raise UserError(f"`nldsl bench {args.study}` is not available: this installation has no studies module "
                        "(nldsl.runtime.studies)")
    studies = importlib.import_module("nldsl.runtime.studies")
    return int(studies.run(args) or 0)

"""The `nldsl` command line: check, fmt, graph, explain, compile, train, eval, generate, stream, bench.

Front-end commands (check, fmt, graph, explain) never import torch, so they start fast. Every
user mistake ends in a diagnostic or a one-line error and exit status 1 (2 for usage errors),
never a Python traceback; `NLDSL_DEBUG=1` shows tracebacks of internal errors.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .diagnostics import Diagnostic, json_entries, render_json, render_text, summary
from .files import file_in_the_way, first_line, text_bytes, write_atomic
from .loader import ModelTooLargeError, print_debug_stages
from .runtime.arguments import path_text
from .runtime.interrupt import ReportedInterrupt, signal_number


class UserError(Exception):
    """A problem the user can fix (bad path, bad option); printed as one line, exit status 1."""

    every_worker = False  # under torchrun, printed by every process rather than one a machine (`quiet_worker`)


def write_output(path: str, text: str) -> None:
    """Write a command's `-o` file; a path that cannot be written is the user's to fix."""
    _refuse_a_folder(path)
    try:
        write_atomic(Path(path), text_bytes(text))
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def _refuse_a_folder(path: str) -> None:
    """`-o out/` or `-o existing_folder` names a folder: refused, never written as a file named `out`."""
    if path.endswith(("/", os.sep)) or os.path.basename(path) in (".", "..") or Path(path).is_dir():
        raise UserError(f"cannot write {path}: it names a folder, and -o takes a file")


def _color(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def _print_diagnostics(diagnostics: Sequence[Diagnostic], sources: dict, fmt: str) -> None:
    if fmt == "json":
        print(render_json(diagnostics))
    elif diagnostics:
        print(render_text(diagnostics, sources, color=_color(sys.stderr)), file=sys.stderr)
        print(file=sys.stderr)


def load_checked(path: str, overrides: Sequence[str] = (), fmt: str = "text"):
    """Check a spec for a command that needs a valid one; print its diagnostics (warnings too, to
    stderr) and stop if invalid."""
    from .checker import check_file

    result = check_file(path, overrides)
    shown = not quiet_worker()  # under torchrun, the machine's first worker shows them
    if shown and result.diagnostics:
        _print_diagnostics(result.diagnostics, result.sources, fmt)
    if not result.ok:
        if fmt == "text" and shown:
            print(f"{path}: {summary(result.diagnostics)}", file=sys.stderr)
        raise SystemExit(1)
    print_debug_stages(result)
    return result


# Commands --------------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .checker import check_file, held_to_training

    status = 0
    everything: list[dict] = []
    for path in args.files:
        result = held_to_training(check_file(path, args.set))
        everything.extend(json_entries(result.diagnostics, path))
        if result.ok:
            print_debug_stages(result)
        if args.format == "text":
            _print_diagnostics(result.diagnostics, result.sources, "text")
            line = f"{path}: {'ok' if result.ok else 'failed'}"
            details = [_model_summary(result.spec.model)] if result.ok and result.spec.model is not None else []
            if result.diagnostics:
                details.append(summary(result.diagnostics))
            if details:
                line += f" ({'; '.join(details)})"
            print(line, file=sys.stderr if not result.ok else sys.stdout)
        if not result.ok:
            status = 1
    if args.format == "json":
        print(json.dumps(everything, indent=2))
    return status


def _model_summary(model) -> str:
    """`model hope, 1.09M parameters`: what a checked spec builds, as `nldsl graph` titles it."""
    from . import shapes

    total = shapes.parameter_count(model)
    return (f"model {model.name}, " if model.name else "") + f"{shapes.human_count(total)} parameters"


def cmd_fmt(args: argparse.Namespace) -> int:
    from .fmt import format_file

    status = 0
    for path in args.files:
        outcome = format_file(path, check=args.check)
        if outcome.diagnostics:
            _print_diagnostics(outcome.diagnostics, outcome.sources, "text")
            status = 1
        elif outcome.changed:
            print(f"{'would reformat' if args.check else 'reformatted'} {path}")
            if args.check:
                status = 1
    return status


def cmd_graph(args: argparse.Namespace) -> int:
    from .graph import build_graph

    wants_json = _graph_wants_json(args.format, args.output)
    result = load_checked(args.file, args.set)
    if result.spec.model is None and not result.spec.optimizers and not result.levels:
        # the graph would be a lone outer level
        raise UserError(f"{result.spec.path} defines no `model`, `optimizer` or `level` section, so there is "
                        "nothing to draw (a model or train section of an imported file is not imported; a "
                        "`block` is drawn where a model uses it)")
    if args.output:
        _refuse_to_overwrite_a_source(args.output, result.sources, "graph", "the graph, e.g. graph.svg")
    graph = build_graph(result.spec, result.levels)
    if wants_json:
        text = graph.to_json()
        if args.output:
            write_output(args.output, text)
            print(f"wrote {args.output}")
        else:
            sys.stdout.write(text)
        return 0
    from .draw import render, to_dot

    dot = to_dot(graph)
    if not args.output:
        sys.stdout.write(dot)
        return 0
    message = render(dot, Path(args.output))
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


def _graph_wants_json(fmt: str | None, output: str | None) -> bool:
    """JSON or a drawing: `--format` for stdout, the suffix of `-o` for a file; a contradiction
    between the two is refused rather than settled by one of them silently."""
    if output is None:
        return fmt == "json"
    if output:
        _refuse_a_folder(output)
    is_json = Path(output).suffix.lower() == ".json"
    if fmt is not None and (fmt == "json") != is_json:
        wanted = ".json" if fmt == "json" else ".dot, .svg, .png or .pdf"
        raise UserError(f"--format {fmt} and -o {output} disagree: with -o the suffix chooses the format "
                        f"(use a {wanted} file, or leave out --format)")
    return is_json


def cmd_explain(args: argparse.Namespace) -> int:
    from .error_codes import CODES, explain

    code = args.code.strip().upper()
    if code not in CODES:
        from .diagnostics import did_you_mean

        hint = did_you_mean(code, CODES) or f"known codes: {', '.join(sorted(CODES))}"
        raise UserError(f"unknown error code `{args.code}` ({hint})")
    print(explain(code))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    result = load_checked(args.file, args.set)
    from .compiler import compile_spec

    if result.spec.model is None:
        raise UserError(f"{result.spec.path} defines no `model` section, so there is nothing to compile")
    source = compile_spec(result.spec, result.sources[result.spec.path].text, args.set or ())
    if args.output and args.output != "-":
        _refuse_to_overwrite_a_source(args.output, result.sources)
        _refuse_to_replace_what_compile_did_not_write(Path(args.output))
        write_output(args.output, source)
        print(f"wrote {args.output}")
    else:  # as UTF-8 bytes, as a written module is: a console in another encoding must not fail on `§`
        sys.stdout.flush()
        sys.stdout.buffer.write(text_bytes(source))
        sys.stdout.buffer.flush()
    return 0


def _refuse_to_overwrite_a_source(output: str, sources: dict, command: str = "compile",
                                  instead: str = "the module, e.g. model.py") -> None:
    """`nldsl compile spec.nl -o spec.nl` would replace the spec with Python (and `nldsl graph` with
    a drawing): refused, as is an import."""
    target = Path(output).resolve()
    for name in sources:
        if Path(name).resolve() == target:
            raise UserError(f"-o {output} would overwrite {name}, a spec file this {command} reads; choose another "
                            f"file for {instead}")


def _refuse_to_replace_what_compile_did_not_write(output: Path) -> None:
    """`-o notes.py` onto a file of the user's own would replace it; a module `nldsl compile` wrote
    (a rerun's) is replaced, and a pipe or device is written through."""
    from .compiler.codegen import GENERATED_BANNER

    if not output.is_file():
        return
    first = first_line(output)  # None: unreadable, and the write then says what is wrong with it
    if first is not None and not first.startswith(GENERATED_BANNER.encode("utf-8")):
        raise UserError(f"-o {output} exists and is not a module `nldsl compile` wrote (its first line would begin "
                        f"`{GENERATED_BANNER.strip()}`), so it is left as it is: remove it first, or choose another "
                        "file")


def cmd_runtime(args: argparse.Namespace) -> int:
    """train / eval / generate / stream / bench live in the runtime (they import torch)."""
    from .runtime import commands

    return commands.run(args)


# Parser ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nldsl", description="Write, check, draw, compile and run Nested Learning models.")
    parser.add_argument("--version", action="version", version=f"nldsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.set_defaults(commands=sub.choices)  # each command's parser, for `_parse`'s usage errors

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a constant or an attribute path, e.g. dim=256 or train.steps=50")

    p = sub.add_parser("check", help="check specs and report every problem")
    p.add_argument("files", nargs="+", metavar="FILE", type=path_text)
    p.add_argument("--format", choices=("text", "json"), default="text")
    overrides(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fmt", help="rewrite specs in the canonical layout (comments kept)")
    p.add_argument("files", nargs="+", metavar="FILE", type=path_text)
    p.add_argument("--check", action="store_true", help="only report files that would change (exit 1)")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("graph", help="draw the level hierarchy (svg, png, pdf, dot) or export JSON")
    p.add_argument("file", metavar="FILE", type=path_text)
    p.add_argument("-o", "--output", metavar="OUT", type=path_text,
                   help="out.svg|png|pdf|dot|json (default: DOT on stdout)")
    p.add_argument("--format", choices=("dot", "json"), default=None,
                   help="what goes to stdout without -o (default dot); with -o the file's suffix decides")
    overrides(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("explain", help="explain an error code in detail, with an example")
    p.add_argument("code", metavar="CODE")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compile", help="compile a spec to a readable PyTorch module")
    p.add_argument("file", metavar="FILE", type=path_text)
    p.add_argument("-o", "--output", metavar="OUT.py", type=path_text,
                   help="the module's file (default, or -: stdout, UTF-8)")
    overrides(p)
    p.set_defaults(func=cmd_compile)

    from .runtime.arguments import add_runtime_commands

    add_runtime_commands(sub, overrides, cmd_runtime)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    status = _run(argv)
    workers = sys.modules.get("nldsl.runtime.distributed")  # loaded only by commands that may join a group
    if workers is not None:
        workers.end_worker(status)  # a torchrun worker ends here (see end_worker)
    return status


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown option is reported by its command's parser: the usage then
    shows that command's options (`nldsl train: error: …`, not the list of commands), with the
    closest of them when one is near (`--run-dri` → `--run-dir`)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = args.commands[args.command]
        options = [name for action in command._actions for name in action.option_strings]
        flag = next((item.split("=", 1)[0] for item in unknown if item.startswith("-")), None)
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.7) if flag else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    del args.commands
    return args


def _run(argv: Sequence[str] | None) -> int:
    _escape_unprintable_output()
    args = _parse(build_parser(), argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        if not quiet_worker() or error.every_worker:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except ModelTooLargeError as error:  # every process says it: one device may be fuller than another's
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ReportedInterrupt as stop:  # the command has said what it saved and how to go on
        return 128 + (stop.args[0] if stop.args and isinstance(stop.args[0], int) else 2)  # 130 for Ctrl-C
    except KeyboardInterrupt as stop:
        print("interrupted", file=sys.stderr)
        return 128 + signal_number(stop)
    except BrokenPipeError:
        return 0
    except OSError as error:
        if not _user_facing(error):
            return _internal_error(error)
        # a path that does not exist or cannot be written, a full disk: the user's to fix, not a bug
        where = f"{error.filename}: " if error.filename else _failing_stdout(error)
        print(f"error: {where}{error.strerror or error}{file_in_the_way(error)}", file=sys.stderr)
        return 1
    except (SystemExit, GeneratorExit):
        raise
    # Exception, and what a Rust extension raises: pyo3's PanicException (safetensors, tokenizers)
    # derives from BaseException alone, and would otherwise leave as a bare traceback
    except BaseException as error:
        if is_out_of_memory(error):
            print(f"error: {out_of_memory_message(error)}", file=sys.stderr)
            return 1
        return _internal_error(error)


def torchrun_workers() -> int:
    """The processes of this torchrun run (WORLD_SIZE, which torchrun sets), 1 outside torchrun."""
    workers = os.environ.get("WORLD_SIZE", "1").strip()
    return int(workers) if workers.isdigit() else 1


def quiet_worker() -> bool:
    """Whether this process is a torchrun worker other than its machine's first (LOCAL_RANK > 0). Its
    processes read the same spec, options and files and take the same collective decisions, so they
    stop with the same user error: the first says it, the others only exit, except for an error
    marked `every_worker` (another process stopped, which only the survivors can say). Each
    machine's first says its own, for a file one machine lacks."""
    return torchrun_workers() > 1 and os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def is_out_of_memory(error: BaseException) -> bool:
    """The machine's limit, not a bug: Python's MemoryError, torch's CUDA `OutOfMemoryError`, or
    the CPU allocator's refusal (a RuntimeError; the front end does not import torch to test it),
    also as the cause or context of the error raised (the chain is walked). So does a buffer that a
    graph compiled with inductor's C++ wrapper could not allocate: its generated code says only that
    the call failed (`aoti_torch_empty_strided(…) API call failed at …`), and making an empty tensor
    on the CPU fails for want of memory alone. (Checkpoints no longer go through safetensors' writers,
    whose panic over a buffer they could not allocate carried no MemoryError: checkpoint.write_tensors.)"""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current) if isinstance(current, RuntimeError) else ""
        if isinstance(current, MemoryError) or type(current).__name__ == "OutOfMemoryError" or (
                "can't allocate memory" in text
                or (text.startswith("aoti_torch_empty_strided(") and "API call failed" in text)):
            return True
        current = current.__cause__ or current.__context__
    return False


def out_of_memory_message(error: BaseException, room: int | None = None) -> str:
    """What a command that ran out of memory says; `room`: the bytes its memory cap gave it (host_memory)."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if room is None:
        return f"out of memory ({first}): use a smaller batch, sequence length or model"
    return (f"out of memory: this command needs more than the {room / 2**30:,.1f} GiB this machine had for it when "
            f"it started ({first}); use a smaller batch, sequence length or model")


# errnos of the machine rather than of nldsl: no space, no permission, a read-only file system, quota
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT}


def _failing_stdout(error: OSError) -> str:
    """"could not write to standard output: " where the error was stdout's (`> /dev/full`), else
    nothing. A failed print drops its text, so a line written again tells: it fails the same way
    on a full device, and on a sound stdout it is one more newline after the command's output.
    Only for the errors of a write to an open file (a full disk or quota, an I/O error)."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        return ""
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except OSError as again:
        if again.errno == error.errno:
            return "could not write to standard output: "
    except ValueError:  # stdout closed
        pass
    return ""


def _escape_unprintable_output() -> None:
    """Print what the terminal's encoding cannot show as escapes (`\\u2026`), not as an exception.

    Help texts, samples and graphs hold non-ASCII characters (…, η, a sample's bytes), and a
    stream set to ASCII or Latin-1 (PYTHONIOENCODING, a pipe under an old locale) would
    otherwise stop the command after its work was done, or before argparse printed its help."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")


def _user_facing(error: OSError) -> bool:
    """An OSError about a path (a missing folder, a file in the way) or about the machine."""
    return error.filename is not None or error.errno in _ENVIRONMENT_ERRNOS


def _show_tracebacks() -> bool:
    """`NLDSL_DEBUG=1` (alone or in its list of stages, `1,spec`): a stage name alone prints that
    stage, and a user's mistake is a one-line error whatever the setting."""
    return "1" in (part.strip() for part in os.environ.get("NLDSL_DEBUG", "").split(","))


def _internal_error(error: BaseException) -> int:
    """An internal error: say so plainly, keep the traceback behind a flag."""
    if _show_tracebacks():
        raise error
    print(f"internal error: {type(error).__name__}: {error}\n"
          "this is a bug in nldsl; rerun with NLDSL_DEBUG=1 for the traceback", file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())


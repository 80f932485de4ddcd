"""The front-end commands: `nldsl check` (exit codes, text and JSON output, several files,
`--set` overrides), `nldsl explain`, `--version`, and that none of them imports torch.

Most commands run in process through `nldsl.cli.main`; the few that are about the process
(`python -m nldsl`, imports, determinism across hash seeds) run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, shipped_spec_paths

from nldsl import __version__
from nldsl.checker import check_file
from nldsl.cli import main

HOPE = str(REPO_ROOT / "specs" / "hope.nl")
TITANS = str(REPO_ROOT / "specs" / "titans_lmm.nl")
INVALID = REPO_ROOT / "tests" / "invalid"
UNKNOWN_ATTRIBUTE = str(INVALID / "E0203_unknown_attribute.nl")


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env={**os.environ, **(env or {})})


def test_check_valid_spec_exits_0(capsys):
    status, out, err = run(capsys, "check", HOPE)
    assert status == 0
    assert f"{HOPE}: ok" in out and err == ""


@pytest.mark.parametrize("spec", ["specs/hope.nl", "specs/titans_mac.nl", "specs/transformer.nl"])
def test_check_names_the_model_and_the_parameters_it_builds(capsys, spec):
    import nldsl
    from nldsl.shapes import human_count
    built = nldsl.load(REPO_ROOT / spec)
    total = sum(p.numel() for p in built.parameters())
    status, out, _ = run(capsys, "check", str(REPO_ROOT / spec))
    expected = f"{REPO_ROOT / spec}: ok (model {built.spec.model.name}, {human_count(total)} parameters)\n"
    assert status == 0 and out == expected


def test_check_of_a_file_without_a_model_says_ok_alone(capsys):
    status, out, _ = run(capsys, "check", str(REPO_ROOT / "specs/optimizers/adamw.nl"))
    assert (status, out) == (0, f"{REPO_ROOT / 'specs/optimizers/adamw.nl'}: ok\n")


def test_check_invalid_spec_exits_1_with_rustc_style_text(capsys):
    status, _, err = run(capsys, "check", UNKNOWN_ATTRIBUTE)
    assert status == 1
    assert "error[E0203]: unknown attribute `dims` in `model`" in err
    assert f"--> {UNKNOWN_ATTRIBUTE}:4:3" in err
    assert "4 |   dims = 3" in err
    lines = err.splitlines()
    caret = lines[lines.index(next(line for line in lines if line.startswith("4 |   dims"))) + 1]
    assert caret.endswith("|   ^^^^"), caret
    assert "= help: did you mean `dim`?" in err
    assert f"{UNKNOWN_ATTRIBUTE}: failed (4 errors)" in err


def test_check_json_has_location_code_message_and_help(capsys):
    status, out, _ = run(capsys, "check", "--format", "json", UNKNOWN_ATTRIBUTE)
    assert status == 1
    items = json.loads(out)
    assert len(items) == 4
    first = items[0]
    assert {"file", "line", "column", "code", "message", "help", "severity"} <= first.keys()
    assert (first["file"], first["line"], first["column"], first["code"]) == (UNKNOWN_ATTRIBUTE, 4, 3, "E0203")
    assert first["message"] == "unknown attribute `dims` in `model`"
    assert first["help"] == "did you mean `dim`?"


def test_check_json_of_a_valid_spec_is_an_empty_list(capsys):
    status, out, _ = run(capsys, "check", "--format", "json", HOPE, TITANS)
    assert status == 0 and json.loads(out) == []


def test_check_several_files_reports_each_and_fails_if_any_fails(capsys):
    status, out, err = run(capsys, "check", HOPE, UNKNOWN_ATTRIBUTE, TITANS)
    assert status == 1
    assert f"{HOPE}: ok" in out and f"{TITANS}: ok" in out
    assert f"{UNKNOWN_ATTRIBUTE}: failed" in err
    status, out, _ = run(capsys, "check", "--format", "json", HOPE, UNKNOWN_ATTRIBUTE)
    assert status == 1 and {item["file"] for item in json.loads(out)} == {UNKNOWN_ATTRIBUTE}
    # an entry's file may be an override (or an import): its `spec` says which FILE it was found checking
    status, out, _ = run(capsys, "check", "--format", "json", HOPE, TITANS, "--set", "nosuch=3")
    assert {(item["file"], item["spec"]) for item in json.loads(out)} == {("<--set 1>", HOPE), ("<--set 1>", TITANS)}


def test_check_every_shipped_spec_at_once(capsys):
    paths = [str(REPO_ROOT / spec) for spec in shipped_spec_paths()]
    status, out, err = run(capsys, "check", *paths)
    assert status == 0, err
    assert out.count(": ok") == len(paths)


def test_check_missing_file_is_a_diagnostic(capsys, tmp_path):
    status, _, err = run(capsys, "check", str(tmp_path / "nothing.nl"))
    assert status == 1
    assert "error[E0105]: cannot read" in err and "Traceback" not in err


def test_check_directory_is_a_diagnostic(capsys, tmp_path):
    status, _, err = run(capsys, "check", str(tmp_path))
    assert status == 1 and "E0105" in err


def test_check_without_files_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["check"])
    assert stop.value.code == 2


def test_override_is_applied(capsys):
    status, out, _ = run(capsys, "check", TITANS, "--set", "train.steps=5", "--set", "dim=64")
    assert status == 0, out
    result = check_file(TITANS, ["train.steps=5", "dim=64", "model.block.lmm.heads=2"])
    assert result.ok
    assert (result.spec.train.steps, result.spec.model.dim, result.spec.model.block.sublayers[0].heads) == (5, 64, 2)
    assert result.provenance["train.steps"] == "--set train.steps=5"
    # an attribute that reads an overridden constant names the override beside its own line
    assert result.provenance["model.dim"].endswith("titans_lmm.nl:37 with --set dim=64")
    assert "with" not in result.provenance["model.vocab"]


def test_override_changes_the_hash():
    plain, overridden = check_file(TITANS), check_file(TITANS, ["train.steps=5"])
    assert plain.spec.sha256 != overridden.spec.sha256


def test_an_edited_import_changes_the_hash(tmp_path):
    (tmp_path / "lib.nl").write_text("block shared { memory { level { period = 8 } } }\n")
    (tmp_path / "main.nl").write_text('import "lib.nl" as lib\nmodel { dim = 32; block from lib.shared { } }\n')
    before = check_file(tmp_path / "main.nl").spec.sha256
    (tmp_path / "lib.nl").write_text("block shared { memory { level { period = 16 } } }\n")
    assert check_file(tmp_path / "main.nl").spec.sha256 != before  # a resume must not take it for the same model


def test_override_of_train_without_a_train_section(tmp_path):
    spec = tmp_path / "tiny.nl"
    spec.write_text("model tiny {\n  dim = 64\n  block { mlp { } }\n}\n", encoding="utf-8")
    result = check_file(spec, ["train.seq_len=32"])
    assert result.ok and result.spec.train.seq_len == 32


@pytest.mark.parametrize(("spec_text", "overrides", "expected"), [
    ("train {\n  optimizer = adamw(lr = 3e-3, weight_decay = 0.1)\n}\n", ["train.optimizer.lr=0.01"],
     ("adamw", 0.01, 0.1)),
    ("train {\n  optimizer = sgd(0.05)\n}\n", ["train.optimizer.lr=0.2"], ("sgd", 0.2, 0.0)),  # positional lr
    ("train {\n  optimizer = muon\n}\n", ["train.optimizer.weight_decay=0.01"], ("muon", 1e-3, 0.01)),
    ("", ["train.optimizer.lr=0.02"], ("adamw", 0.02, 0.1)),  # no train section: the default optimizer
    ("train {\n  optimizer = sgd(0.05)\n}\n", ["train.optimizer=adamw", "train.optimizer.lr=0.2"], ("adamw", 0.2, 0.0)),
])
def test_override_of_a_built_in_optimizers_argument(tmp_path, spec_text, overrides, expected):
    spec = tmp_path / "tiny.nl"
    spec.write_text("model tiny {\n  dim = 64\n  block { mlp { } }\n}\n" + spec_text, encoding="utf-8")
    result = check_file(spec, overrides)
    assert result.ok, [d.message for d in result.diagnostics]
    optimizer = result.spec.train.optimizer
    assert (optimizer.kind, optimizer.lr, optimizer.weight_decay) == expected
    argument = overrides[-1].split("=")[0].split(".")[-1]
    assert result.provenance[f"train.optimizer.{argument}"] == f"--set {overrides[-1]}"
    assert result.spec.sha256 != check_file(spec).spec.sha256


@pytest.mark.parametrize(("override", "code", "text"), [
    ("dimm=3", "E0206", "did you mean `dim`?"),
    ("train.stepz=5", "E0203", "did you mean `steps`?"),
    ("model.block.lmmm.heads=2", "E0206", "did you mean `lmm`?"),
])
def test_unknown_override_key_suggests_the_nearest(capsys, override, code, text):
    status, _, err = run(capsys, "check", TITANS, "--set", override)
    assert status == 1
    assert f"error[{code}]" in err and text in err
    assert "<--set 1>:1:1" in err, "the diagnostic points at the override, not at the file"


@pytest.mark.parametrize(("override", "code", "text"), [
    ("train.steps=-3", "E0302", "`steps` should be greater than or equal to 1"),
    ("train.steps=abc", "E0201", "unknown name `abc`"),
    ("train.steps=2.5", "E0301", "`steps` expects an integer"),
    ("train.steps=", "E0206", "is not `key=value`"),
    ("train.steps=(3", "E0103", "in override: unexpected end of file"),
    ("dim=64 / 0", "E0304", "division by zero"),
    ("dim=64 const extra = 1", "E0206", "has more than one value"),
    ("model=3", "E0206", "unknown override `model`"),
    # a built-in optimizer's arguments: checked like the others, never ignored
    ("train.optimizer.lr=-1", "E0302", "`lr` should be greater than 0"),
    ("train.optimizer.foo=1", "E0305", "`adamw` has no argument `foo`"),
    ("train.optimizer.m.lr=1", "E0206", "`adamw(…)` is a built-in optimizer: it has no section `m`"),
])
def test_bad_override_value(capsys, override, code, text):
    status, out, _ = run(capsys, "check", "--format", "json", TITANS, "--set", override)
    assert status == 1
    items = json.loads(out)
    assert [(item["code"], text in item["message"]) for item in items] == [(code, True)], items
    assert all(item["file"] == "<--set 1>" for item in items), "it points at the override"


@pytest.mark.parametrize(("override", "shown", "message"), [
    ("nokey", "1 | nokey\n", "override `nokey` is not `key=value`"),
    ("=3", "1 | =3\n", "override `=3` is not `key=value`"),
    ("", "1 | \n", "an empty override is not `key=value`"),
])
def test_an_override_without_key_and_value_is_shown_as_typed(capsys, override, shown, message):
    status, _, err = run(capsys, "check", TITANS, "--set", override)
    assert status == 1 and f"error[E0206]: {message}" in err and shown in err, err


def test_explain_prints_the_entry(capsys):
    status, out, _ = run(capsys, "explain", "E0203")
    assert status == 0
    assert out.startswith("error[E0203]: unknown attribute")
    assert "perod = 16" in out and "period = 16" in out


def test_explain_accepts_lowercase(capsys):
    assert run(capsys, "explain", "w0702")[0] == 0


def test_explain_unknown_code_exits_1(capsys):
    status, out, err = run(capsys, "explain", "E9999")
    assert status == 1 and out == ""
    assert "unknown error code `E9999`" in err and "E0101" in err
    status, _, err = run(capsys, "explain", "E020")
    assert status == 1 and "did you mean" in err


def test_version():
    done = python("-m", "nldsl", "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"nldsl {__version__}"


def test_front_end_does_not_import_torch():
    code = ("import sys, nldsl.cli, nldsl.checker, nldsl.graph, nldsl.error_codes\n"
            "nldsl.cli.build_parser()\n"
            "status = nldsl.cli.main(['check', 'specs/hope.nl'])\n"
            "nldsl.cli.main(['explain', 'E0203'])\n"
            "assert status == 0\n"
            "assert 'torch' not in sys.modules, 'the front end imported torch'\n")
    done = python("-c", code)
    assert done.returncode == 0, done.stderr


def test_check_output_does_not_depend_on_the_hash_seed():
    files = [str(path.relative_to(REPO_ROOT)) for path in sorted(INVALID.glob("*.nl"))] + shipped_spec_paths()
    outputs = [python("-m", "nldsl", "check", "--format", "json", *files, env={"PYTHONHASHSEED": seed})
               for seed in ("1", "2")]
    assert all(done.returncode == 1 and "Traceback" not in done.stderr for done in outputs)
    assert outputs[0].stdout == outputs[1].stdout
    assert json.loads(outputs[0].stdout)


@pytest.mark.parametrize("command", [["compile", "{spec}", "-o", "{out}"], ["graph", "{spec}", "-o", "{out}.json"],
                                     ["graph", "{spec}", "-o", "{out}.dot"]])
def test_an_output_path_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys, command):
    spec = TITANS
    out = tmp_path / "missing" / "model"
    assert main([part.format(spec=spec, out=out) for part in command]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") or err.startswith("cannot write"), err
    assert "No such file or directory" in err and "internal error" not in err and err.count("\n") == 1


def test_an_os_error_about_a_path_is_the_users_and_any_other_error_is_internal(monkeypatch, capsys):
    import nldsl.cli as cli

    def missing_folder(_args):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/run")

    monkeypatch.setattr(cli, "cmd_compile", missing_folder)
    assert main(["compile", TITANS]) == 1
    assert capsys.readouterr().err == "error: /nowhere/run: No such file or directory\n"

    def bug(_args):
        raise OSError("a socket went away")  # no path, not the machine's errno: nldsl's own fault

    monkeypatch.setattr(cli, "cmd_compile", bug)
    assert main(["compile", TITANS]) == 3
    assert "internal error" in capsys.readouterr().err
    # a stage list prints stages; only `1` shows tracebacks, and never for the user's own mistake
    monkeypatch.setattr(cli, "cmd_compile", missing_folder)
    for setting in ("spec", "1", "1,graph"):
        monkeypatch.setenv("NLDSL_DEBUG", setting)
        assert main(["compile", TITANS]) == 1
        assert capsys.readouterr().err.endswith("error: /nowhere/run: No such file or directory\n")
    monkeypatch.setattr(cli, "cmd_compile", bug)
    monkeypatch.setenv("NLDSL_DEBUG", "spec")
    assert main(["compile", TITANS]) == 3
    monkeypatch.setenv("NLDSL_DEBUG", "1,spec")
    with pytest.raises(OSError, match="a socket went away"):
        main(["compile", TITANS])


@pytest.mark.parametrize("command", [["check", TITANS], ["graph", TITANS], ["compile", TITANS]])
def test_debug_stages_print_the_checked_spec_and_graph_on_every_command(command, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NLDSL_DEBUG", "spec,graph")
    assert main(command) == 0
    err = capsys.readouterr().err
    assert '"sha256"' in err and '"frequency_groups"' in err  # the spec stage, then the graph stage


def test_check_json_names_the_file_of_an_unreadable_one(tmp_path, capsys) -> None:
    missing = str(tmp_path / "missing.nl")
    assert main(["check", "--format", "json", TITANS, missing]) == 1
    entries = json.loads(capsys.readouterr().out)
    assert [(entry["code"], entry["file"]) for entry in entries] == [("E0105", missing)]


@pytest.mark.parametrize("args, message", [
    (["--format", "json", "-o", "{tmp}/g.png"], "--format json and -o {tmp}/g.png disagree"),
    (["--format", "dot", "-o", "{tmp}/g.json"], "--format dot and -o {tmp}/g.json disagree"),
    (["-o", "{tmp}"], "cannot write {tmp}: it names a folder"),
])
def test_graph_refuses_a_format_its_output_contradicts(args, message, tmp_path, capsys) -> None:
    assert main(["graph", TITANS, *(a.format(tmp=tmp_path) for a in args)]) == 1
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output", ["{tmp}", "{tmp}/new/", "{tmp}/new.json/", "{tmp}/new/.", "{tmp}/new/.."])
@pytest.mark.parametrize("command", ["compile", "graph"])
def test_an_output_that_names_a_folder_is_refused_not_written_as_a_file(command, output, tmp_path, capsys) -> None:
    output = output.format(tmp=tmp_path)
    assert main([command, TITANS, "-o", output]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {output}: it") and "folder" in err
    assert list(tmp_path.iterdir()) == []  # `-o new/` used to write a file named `new`


def test_graph_takes_the_json_suffix_in_any_case(tmp_path, capsys) -> None:
    assert main(["graph", TITANS, "-o", str(tmp_path / "g.JSON")]) == 0
    assert "frequency_groups" in json.loads((tmp_path / "g.JSON").read_text())
    assert capsys.readouterr().out == f"wrote {tmp_path / 'g.JSON'}\n"  # as a drawing's -o says


@pytest.mark.parametrize("args", [["compile", TITANS, "-o", ""], ["graph", TITANS, "-o", " "], ["check", ""],
                                  ["train", TITANS, "--data", ""], ["train", TITANS, "--run-dir", ""],
                                  ["stream", "", "--state-out", "s.safetensors"], ["stream", "run", "--state-in", ""]])
def test_an_empty_path_is_a_usage_error_not_the_current_folder_or_stdout(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "an empty path" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_output_to_a_named_pipe_is_written_through_not_replaced(tmp_path):
    import threading

    pipe = tmp_path / "model.py"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    assert main(["compile", TITANS, "-o", str(pipe)]) == 0
    reader.join(timeout=60)
    assert received and received[0].startswith("# Generated by nldsl") and pipe.is_fifo()


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] "
                                                                 "DefaultCPUAllocator: can't allocate memory"),
                                     # a chunk body compiled with inductor's C++ wrapper, under the CPU memory cap
                                     RuntimeError("aoti_torch_empty_strided(3, int_array_53, int_array_54, "
                                                  "cached_torch_dtype_float32, cached_torch_device_type_cpu, 0, "
                                                  "&buf35_handle) API call failed at /tmp/x.main.cpp, line 249")])
def test_running_out_of_memory_is_the_machines_limit_not_a_bug(failure, monkeypatch, capsys):
    import nldsl.cli as cli

    def too_big(_args):
        raise failure

    monkeypatch.setattr(cli, "cmd_compile", too_big)
    assert main(["compile", TITANS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "smaller batch" in err and err.count("\n") == 1



class PanicException(BaseException):
    """What pyo3 raises when a Rust extension (safetensors, tokenizers) panics: a BaseException alone."""


def test_a_rust_extension_s_panic_is_an_error_not_a_bare_traceback(monkeypatch, capsys):
    """pyo3's PanicException is not an Exception, and one left `main` as a traceback (found by the --set
    audit: safetensors panicking while it serialised a checkpoint, whose writers a save no longer calls:
    checkpoint.write_tensors). Any panic is a one-line internal error."""
    import nldsl.cli as cli

    def panics(_args):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(cli, "cmd_compile", panics)
    monkeypatch.delenv("NLDSL_DEBUG", raising=False)
    status = main(["compile", TITANS])
    err = capsys.readouterr().err
    assert status == 3 and err.startswith("internal error: PanicException") and "Traceback" not in err, err

@pytest.mark.parametrize("args", [["generate", "run", "--seed", str(2**64)], ["generate", "run", "--seed", "-1"],
                                  ["bench", "continual", "--lr", "1e308"], ["bench", "recall", "--seed", str(2**63)]])
def test_seeds_and_learning_rates_out_of_torchs_range_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "must be" in capsys.readouterr().err


@pytest.mark.parametrize("victim", ["hope.nl", "titans_lmm.nl"])  # the spec itself, and a file it imports
def test_compile_refuses_to_write_over_a_spec_it_reads(tmp_path, capsys, victim):
    for name in ("hope.nl", "titans_lmm.nl"):
        (tmp_path / name).write_text((REPO_ROOT / "specs" / name).read_text())
    before = (tmp_path / victim).read_text()
    assert main(["compile", str(tmp_path / "hope.nl"), "-o", str(tmp_path / ".." / tmp_path.name / victim)]) == 1
    assert "a spec file this compile reads" in capsys.readouterr().err
    assert (tmp_path / victim).read_text() == before


@pytest.mark.parametrize("name", ["spec.dot", "spec.json", "spec.svg"])
def test_graph_refuses_to_write_over_the_spec_it_reads(tmp_path, capsys, name):
    spec = tmp_path / name  # a spec's name need not end in .nl, and -o's suffix picks the drawing's format
    spec.write_text((REPO_ROOT / "specs" / "transformer.nl").read_text())
    before = spec.read_text()
    assert main(["graph", str(spec), "-o", str(spec)]) == 1
    assert "a spec file this graph reads" in capsys.readouterr().err
    assert spec.read_text() == before


def test_the_banner_command_regenerates_the_module_with_its_overrides(tmp_path, capsys):
    import shlex

    first, again = tmp_path / "a.py", tmp_path / "b.py"
    spec = str(REPO_ROOT / "specs" / "titans_lmm.nl")
    overrides = ["--set", "dim=32", "--set", "train.optimizer=adamw(lr = 1e-3)", "--set", "train.log_every=7",
                 "--set", "train.eval_every=9", "--set", "train.seed=3"]
    assert main(["compile", spec, *overrides, "-o", str(first)]) == 0
    lines = first.read_text().splitlines()
    assert all(len(line) <= 120 for line in lines[:12]), "the command goes on over lines"
    start = next(i for i, line in enumerate(lines) if line.startswith("#     nldsl compile"))
    command = ""
    for line in lines[start:]:  # a long command goes on over lines ending in ` \`, as a shell reads it
        command += line.removeprefix("#").strip().removesuffix("\\").rstrip() + " "
        if not line.endswith("\\"):
            break
    command = command.strip()
    assert command.endswith(f" -o <this file> {spec}"), "the path last: a long one ends the command"
    words = shlex.split(command.replace("<this file>", shlex.quote(str(again))))
    assert words[:2] == ["nldsl", "compile"] and "--set=dim=32" in words
    assert main(words[1:]) == 0
    assert again.read_text() == first.read_text()


def test_compile_graph_and_load_show_the_specs_warnings(tmp_path, capsys):
    """Warnings were only in `nldsl check` (and `train`): compile and graph built without a word,
    and a notebook calling nldsl.load never saw them."""
    import warnings

    import nldsl
    from nldsl.diagnostics import SpecWarning

    spec = str(REPO_ROOT / "specs/titans_lmm.nl")
    twice = ["--set", "dim=32", "--set", "dim=64"]
    for command in (["compile", spec, *twice, "-o", str(tmp_path / "m.py")],
                    ["graph", spec, *twice, "-o", str(tmp_path / "g.dot")]):
        assert main(command) == 0
        err = capsys.readouterr().err
        assert "warning[W0706]: this override has no effect: `--set dim=64` sets `dim` again later" in err, command
    assert main(["compile", spec, "-o", str(tmp_path / "m.py")]) == 0 and not capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nldsl.load(spec, ["dim=32"], dim=64)
    [warning] = [w for w in caught if issubclass(w.category, SpecWarning)]
    assert "`dim=64` sets `dim` again later" in str(warning.message) and warning.filename == __file__


def test_graph_of_a_file_with_nothing_to_draw_says_so(tmp_path, capsys):
    """A file of imports only drew a lone `outer` node with 0 parameters; compile refused it."""
    spec = tmp_path / "imports.nl"
    spec.write_text(f'import "{REPO_ROOT / "specs/titans_lmm.nl"}"\n')
    assert main(["graph", str(spec), "-o", str(tmp_path / "g.json")]) == 1
    assert "defines no `model`, `optimizer` or `level` section, so there is nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()
    assert main(["graph", str(REPO_ROOT / "specs/optimizers/lion.nl"), "-o", str(tmp_path / "o.json")]) == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_full_stdout_is_named_as_stdout():
    """`nldsl check spec > /dev/full` said only "No space left on device", as if the disk were full (a
    bad-input audit); a sound stdout gets its output as before."""
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "nldsl", "check", "specs/hope.nl"], stdout=full,
                             stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == "error: could not write to standard output: No space left on device"
    assert "Exception ignored" not in run.stderr
    sound = python("-m", "nldsl", "check", "specs/hope.nl")
    assert (sound.returncode, sound.stdout) == (0, "specs/hope.nl: ok (model hope, 1.09M parameters)\n")


def test_the_command_list_names_every_bench_study():
    """`nldsl --help` listed `bench` as "speed, continual, recall", leaving out `smoke` (an audit)."""
    import argparse

    from nldsl.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = commands.choices["bench"]
    studies = next(a for a in bench._actions if a.dest == "study").choices
    listed = next(a.help for a in commands._choices_actions if a.dest == "bench")
    assert all(study in listed for study in studies), listed


@pytest.mark.parametrize("command", [["train", "--help"], ["graph", "specs/hope.nl", "--format", "json"]])
def test_an_ascii_terminal_gets_escapes_not_a_traceback(command):
    """Help texts and graphs hold `…` and `η`: a stream that cannot encode them (PYTHONIOENCODING=ascii,
    an old locale's pipe) printed a traceback or an internal error (a bad-input audit)."""
    done = python("-m", "nldsl", *command, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "\\u" in done.stdout  # each unprintable character as its escape


def test_compile_output_replaces_a_module_it_wrote_but_not_a_users_file(tmp_path, capsys):
    """`-o notes.py` replaced a file of the user's own without a word (a bad-input audit)."""
    mine = tmp_path / "notes.py"
    mine.write_text("my notes\n", encoding="utf-8")
    assert main(["compile", TITANS, "-o", str(mine)]) == 1
    assert "exists and is not a module `nldsl compile` wrote" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "my notes\n"
    module = tmp_path / "model.py"
    assert main(["compile", TITANS, "-o", str(module)]) == 0
    assert main(["compile", HOPE, "-o", str(module)]) == 0  # a rerun's module, another spec's even
    assert "spec: " + HOPE in module.read_text(encoding="utf-8")


@pytest.mark.parametrize(("args", "said"), [
    (["train", TITANS, "--out", "runs/x"], "nldsl train: error: unrecognized arguments: --out runs/x\n"),
    (["train", TITANS, "--run-dri", "runs/x"],
     "nldsl train: error: unrecognized arguments: --run-dri runs/x (did you mean --run-dir?)\n"),
    (["check", TITANS, "--formt=json"],
     "nldsl check: error: unrecognized arguments: --formt=json (did you mean --format?)\n"),
    (["graph", TITANS, "extra"], "nldsl graph: error: unrecognized arguments: extra\n"),
])
def test_an_unknown_option_shows_its_commands_usage_and_the_closest_option(args, said, capsys):
    """`nldsl train spec --out runs/x` answered with the list of commands (`nldsl: error: …`), which
    does not show what train takes; now the command's own usage says it, with a near option named."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"usage: nldsl {args[0]} ") and err.endswith(said), err

"""Edges of the checks, messages and stream bookkeeping a stop added (the session after f7b51d7),
from a mutation audit of that new code: 67 mutants, 37 killed by the suite, 7 equivalent; each test
here fails with one or more of the other 23 (its docstring says which behaviour it pins)."""

from __future__ import annotations

from pathlib import Path

import pytest

import nldsl
from nldsl.checker import check_text, held_to_training

SPECS = Path(nldsl.__file__).resolve().parent.parent / "specs"


def _messages(result):
    return [(d.code, d.message, d.help) for d in result.diagnostics]


def test_an_override_is_not_ordered_after_one_that_only_the_files_definition_of_another_reads():
    """_override_order follows the file's definitions, but not those of a constant that is itself
    overridden: `b`'s file definition reads `c`, whose override reads `a`; `a=a+b` reads the
    override `b=4` (a = 1 + 4), not a made-up cycle that would fold it before `b` is set (1 + 10)."""
    text = ("const a = 1\nconst c = 1\nconst b = c * 10\n"
            "model m {\n  dim = 64 * a\n  block { attention { heads = b } }\n}\n")
    result = check_text(text, "o.nl", ["a=a+b", "c=a", "b=4"])
    assert result.spec is not None, _messages(result)
    assert (result.spec.model.dim, result.spec.model.block.sublayers[0].heads) == (320, 4)


def _vocab_error(text: str, overrides=()):
    result = held_to_training(check_text(text, "v.nl", list(overrides)))
    assert result.spec is None
    [error] = [d for d in result.diagnostics if d.code == "E0508"]
    return error


def test_the_byte_tokenizers_vocabulary_error_says_where_to_fix_it():
    """A vocabulary written in the file is fixed in the file; one given by --set by a --set. The
    bpe alternative is offered from the smallest bpe vocabulary on (260)."""
    in_file = _vocab_error("model m {\n  dim = 64\n  vocab = 300\n  block { attention { heads = 2 } }\n}\n")
    assert in_file.help.startswith("set `vocab = 256`, or name a tokenizer"), in_file.help
    at_least = _vocab_error("model m {\n  dim = 64\n  vocab = 260\n  block { attention { heads = 2 } }\n}\n")
    assert "bpe(vocab = 260)" in at_least.help, at_least.help
    below = _vocab_error("model m {\n  dim = 64\n  vocab = 259\n  block { attention { heads = 2 } }\n}\n")
    assert "bpe(" not in below.help, below.help


MODEL = "model m {\n  dim = 64\n  block { attention { heads = 2 } }\n}\n"


@pytest.mark.parametrize("key", ["name", "kind"])
def test_a_train_attribute_that_is_a_model_or_optimizer_field_by_name_only_is_not_sent_elsewhere(key):
    """`name` (every section's) and `kind` (the optimizer's tag) are no settings to move: `train`
    lists what it takes instead of `name belongs in the model section` or `optimizer = adamw(kind = …)`."""
    result = check_text(MODEL + f"train {{ {key} = 3 }}\n", "b.nl")
    [error] = [d for d in result.diagnostics if d.code == "E0203"]
    assert error.help.startswith("`train` takes: optimizer, steps"), error.help


def test_an_override_of_an_attribute_named_like_a_level_sets_the_attribute():
    """An optimizer section's `lr` attribute beside its `level lr`: `--set train.optimizer.lr=…` sets
    the attribute (the 'is a section, not an attribute' error is for a name that is only a section)."""
    text = ("optimizer o {\n  lr = 1e-3\n  level lr { flow = gradients; lr = 0.1; retention = 0.9 }\n  update = lr\n}\n"
            + MODEL + "train { optimizer = o }\n")
    result = check_text(text, "o.nl", ["train.optimizer.lr=0.002"])
    assert result.ok, _messages(result)
    assert result.spec.train.optimizer.lr == 0.002


def test_an_override_of_a_section_by_a_keyword_does_not_say_set():
    """The `--set ` of the section-override help is for a --set; nldsl.load's keyword is no --set."""
    from nldsl.checker import check_file
    from nldsl.loader import override_strings

    titans = SPECS / "titans_lmm.nl"
    [error] = check_file(titans, override_strings([], model__block__lmm__level="linear")).diagnostics
    assert error.message.endswith("`level` is a section, not an attribute") and "--set" not in error.help, error.help
    assert error.help.endswith('`model__block__lmm__level__state="linear"`'), "written as a keyword"


def test_an_optimizer_whose_level_fails_reports_it_without_checking_flows_of_missing_levels():
    """The flows are checked beside a failed update only where every level converted: a level that
    failed is no level to check (nor a crash)."""
    text = ("optimizer o {\n  lr = 1e-3\n  level m { flow = gradients; lr = 0.1; retention = 0.9; colour = 3 }\n"
            "  level v { flow = m; lr = 0.1; period = 2 }\n  update = m ** v\n}\n"
            + MODEL + "train { optimizer = o }\n")
    result = check_text(text, "o.nl")
    codes = sorted(d.code for d in result.diagnostics)
    assert "E0203" in codes and not result.ok, _messages(result)


CMS_RUN = ("model tiny {\n  dim = 64\n  block {\n    cms {\n      level fast { period = 8 }\n"
           "      level slow { period = steps(500); update = outer }\n    }\n  }\n}\n")
OPT_RUN = ("optimizer o {\n  lr = 1e-3\n  level m { flow = gradients; lr = 0.1; retention = 0.9 }\n"
           "  level slow { flow = m; lr = 0.1; period = 40 }\n  update = m + slow\n}\n" + MODEL)


@pytest.mark.parametrize(("text", "period"), [(CMS_RUN + "train { steps = STEPS }\n", 500),
                                              (OPT_RUN + "train { optimizer = o; steps = STEPS }\n", 40)])
def test_w0711_warns_of_a_period_more_than_the_runs_steps_only(text, period):
    """W0711 (docs: 'N is more than train.steps'): a level stepped exactly at the run's last step
    is no level that never updates; one step fewer is."""
    def w0711(steps: int) -> list[str]:
        result = check_text(text.replace("STEPS", str(steps)), "r.nl")
        return [d.message for d in result.diagnostics if d.code == "W0711"]

    assert w0711(period) == []
    assert len(w0711(period - 1)) == 1



def _nested(fast: str, slow: str) -> list[tuple[str, int, str]]:
    text = ("model m {\n  dim = 16\n  vocab = 32\n  block {\n    cms { variant = nested\n"
            f"      level fast {{ state = mlp(expansion = 1) {fast} }}\n"
            f"      level slow {{ state = mlp(expansion = 1) {slow} }} }}\n  }}\n}}\ntrain {{ seq_len = 8 }}\n")
    return [(d.code, d.span.line, d.message) for d in check_text(text, "n.nl").diagnostics]


def test_w0704_of_a_nested_chain_names_the_level_it_is_about():
    """The nested-level W0704 (its move is after the last token) is a slower level's; the fastest at
    a period of one sequence gets the cms level's own; and a chain whose fastest level does not learn
    in context moves no slower level at all (W0706 says so), so no W0704 either."""
    [(_, line, message)] = [d for d in _nested("period = 8", "period = 16 lr = 0.5") if d[0] == "W0704"]
    assert line == 6 and message.startswith("period 8 is a whole training sequence: a cms level reads"), message
    assert [d[0] for d in _nested("period = 4 update = outer", "period = 8 lr = 0.5")] == ["W0706"]


def _memory(level: str) -> list[tuple[str, int]]:
    text = f"model m {{\n  dim = 64\n  block {{\n    memory {{ {level} }}\n  }}\n}}\ntrain {{ seq_len = 128 }}\n"
    return [(d.code, d.span.line) for d in check_text(text, "m.nl").diagnostics]


def test_the_in_context_rules_spared_for_an_outer_cms_level_still_hold_for_a_memory_level():
    """outer_cms is a cms level's: a memory level slower than a sequence with newton_schulz and the
    default readout is still E0601."""
    assert ("E0601", 5) in _memory("level { period = 256\n orthogonalize = newton_schulz }")


def test_detached_writes_are_warned_of_on_a_named_memory_level():
    """The W0706 of `grad_through_writes = false` reads the level's setting by its name."""
    assert _memory("level fast { period = 16\n grad_through_writes = false }") == [("W0706", 5)]


# nldsl stream ------------------------------------------------------------------------------------

STREAM_SPEC = """\
model tiny {
  vocab = 256
  dim = 16
  layers = 1
  block { memory lmm { heads = 2; level { state = linear; period = 4 } } }
}
train {
  optimizer = adamw(lr = 0.01)
  steps = 2
  batch = 2
  seq_len = 16
  eval_batches = 1
}
"""


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    import torch

    from nldsl.cli import main

    folder = tmp_path_factory.mktemp("stream")
    text = folder / "text.txt"
    text.write_text("".join(f"class Thing{i}:\n    size = {i * 3 % 11}\n\n" for i in range(300)))
    (folder / "s.nl").write_text(STREAM_SPEC)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(folder / "s.nl"), "--data", str(text), "--run-dir", str(folder / "run"),
                     "--no-compile", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    return folder / "run", text


def test_a_stream_of_data_continued_from_a_validation_stream_reads_the_data_from_its_start(stream_run, tmp_path,
                                                                                          capsys):
    """--data is other text: where a state read of the validation split stays the split's, not an
    offset into the new text."""
    from nldsl.cli import main

    run_dir, text = stream_run
    half = tmp_path / "half"
    assert main(["stream", str(run_dir), "--no-progress", "--segment", "16", "--max-tokens", "32",
                 "--state-out", str(half)]) == 0
    capsys.readouterr()
    assert main(["stream", str(run_dir), "--no-progress", "--segment", "16", "--max-tokens", "32",
                 "--data", str(text), "--state-in", str(half)]) == 0
    out = capsys.readouterr().out
    assert "validation split" not in out, out


def test_a_stream_that_read_the_whole_validation_split_says_so_when_continued(stream_run, tmp_path, capsys):
    """A state that read every token of the split: its continuation without --data has nothing left."""
    from nldsl.cli import main

    run_dir, _ = stream_run
    whole = tmp_path / "whole"
    assert main(["stream", str(run_dir), "--no-progress", "--segment", "113", "--state-out", str(whole)]) == 0
    capsys.readouterr()
    assert main(["stream", str(run_dir), "--no-progress", "--segment", "113", "--state-in", str(whole)]) == 1
    err = capsys.readouterr().err
    assert "--state-in stream has read them all; give more text with --data" in err, err


@pytest.mark.parametrize("read", [True, -1, 1.5])
def test_a_stream_state_whose_validation_read_is_no_token_count_is_corrupt(stream_run, tmp_path, read):
    import torch

    from nldsl.cli import UserError
    from nldsl.runtime import evaluate as E

    run_dir, _ = stream_run
    loaded = E.load_model(run_dir, torch.device("cpu"))
    result = E.stream(loaded, loaded.tokenizer.encode("abc " * 20), 16, keep_pending=True)
    result.state.validation_read = read
    path = tmp_path / "state.safetensors"
    E.save_stream_state(path, result.state, "sha", str(run_dir), "weights")
    with pytest.raises(UserError, match="its `validation_read` is not a token count"):
        E.load_stream_state(path, "sha", "weights", torch.device("cpu"))
    result.state.validation_read = 7
    E.save_stream_state(path, result.state, "sha", str(run_dir), "weights")
    assert E.load_stream_state(path, "sha", "weights", torch.device("cpu")).validation_read == 7


# studies ------------------------------------------------------------------------------------------

def test_the_pages_checker_notes_check_at_the_studys_batch():
    """W0711 of HOPE's `slow` level (period 4096) depends on the tokens of a step: at batch 1 and 128
    tokens it is stepped every 32 outer steps, past 20 steps (at the spec's batch 8, every 4: no
    warning)."""
    from nldsl.runtime import studies

    models = {"hope": {"spec": "hope.nl", "dim": 32, "overrides": []}}
    lines = [line for line in studies.checker_notes(models, {"training": 128}, {"training": 1}, {"training": 20})
             if line.startswith("- ")]
    assert lines == ["- `hope` (training, 128 tokens): W0711 at `model.block.cms.slow.period`: level `slow` is "
                     "stepped every 32 outer steps (its period of 4,096 tokens over the 128 tokens of a step "
                     "(batch × seq_len)), more than train.steps = 20: it keeps its initial weights for the whole "
                     "run."], lines


def test_a_learners_spec_warnings_are_printed_once_and_other_warnings_pass_through(tmp_path, capsys, monkeypatch):
    import warnings

    import nldsl
    from nldsl.runtime import studies as S

    spec = tmp_path / "w.nl"
    spec.write_text("const dim = 16\nmodel m {\n  dim = dim\n"
                    "  block { memory { level { period = 1\n momentum = 0.9 } } }\n}\n")
    setup = S.Setup(str(spec), 16, 8, 2, 0)
    S.Learner(setup)
    S.Learner(setup)
    err = capsys.readouterr().err
    assert err.count("W0701") == 1, err
    real = nldsl.load

    def load(*args, **kwargs):
        warnings.warn("not a spec's warning", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(S.nldsl, "load", load)
    with pytest.warns(UserWarning, match="not a spec's warning"):
        S.Learner(setup)


# nldsl train --resume ----------------------------------------------------------------------------

def test_a_resume_past_the_specs_steps_names_the_left_out_steps_override_among_others(stream_run, tmp_path,
                                                                                      capsys):
    """The hint names the run's `--set train.steps=…`, not the first of its other left-out overrides."""
    from nldsl.cli import main

    _, text = stream_run
    spec = tmp_path / "short.nl"
    spec.write_text(STREAM_SPEC.replace("steps = 2", "steps = 1"))
    common = ["train", str(spec), "--data", str(text), "--run-dir", str(tmp_path / "run"), "--no-compile",
              "--no-progress"]
    assert main([*common, "--set", "train.log_every=3", "--set", "train.steps=2"]) == 0
    capsys.readouterr()
    assert main([*common, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "the run was trained with --set train.steps=2, which this command leaves out: give it again" in err, err
    # a key set twice: the last one is what the run trained with (the first named a count it had passed)
    common[common.index(str(tmp_path / "run"))] = str(tmp_path / "twice")
    assert main([*common, "--set", "train.steps=1", "--set", "train.steps=3"]) == 0
    capsys.readouterr()
    assert main([*common, "--resume"]) == 1
    assert "the run was trained with --set train.steps=3, which" in capsys.readouterr().err


def test_gib_switches_to_whole_gibibytes_at_100():
    from nldsl.loader import _gib

    assert [_gib(int(size * 2**30)) for size in (99.94, 100, 999_999)] == ["99.9 GiB", "100 GiB", "999,999 GiB"]

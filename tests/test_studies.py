"""Tests of the studies (`nldsl bench continual|recall`): the task generators, the text domains, the
continual-learning metrics, the continuum clock and width matching of the loop, and a smoke run of
each study at toy size through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

from nldsl.cli import UserError, main
from nldsl.runtime import domains as D
from nldsl.runtime import studies as S

REPO = Path(__file__).resolve().parent.parent

GAP_TOLERANCE = 0.03  # total-variation distance between the sampled and requested slot distributions
DOMAIN_DISTANCE = 0.15  # least total-variation distance between two domains' byte distributions


@pytest.mark.parametrize("seq_len, pairs", [(63, 4), (100, 8), (257, 16)])
def test_mqar_keys_values_and_answers(seq_len, pairs):
    batch = D.mqar(40, seq_len, pairs, seed=3)
    tokens, scored = batch.tokens, batch.scored
    assert tokens.shape == (40, seq_len + 1) and scored.shape == (40, seq_len)
    keys, values = tokens[:, 0:2 * pairs:2], tokens[:, 1:2 * pairs:2]
    assert ((keys >= 1) & (keys < 128)).all() and ((values >= 128) & (values < 256)).all()
    for row in range(40):
        pairing = dict(zip(keys[row].tolist(), values[row].tolist()))
        assert len(pairing) == pairs  # distinct keys: every query has one answer
        positions = scored[row].nonzero().flatten().tolist()
        assert len(positions) == pairs and min(positions) >= 2 * pairs
        queried = [int(tokens[row, p]) for p in positions]
        assert sorted(queried) == sorted(pairing)  # every key asked once
        for p in positions:
            assert int(tokens[row, p + 1]) == pairing[int(tokens[row, p])]
        rest = torch.ones(seq_len + 1, dtype=torch.bool)
        rest[:2 * pairs] = False
        for p in positions:
            rest[p] = rest[p + 1] = False
        assert (tokens[row][rest] == 0).all()  # filler everywhere else


def test_mqar_is_deterministic_by_seed():
    a, b, c = D.mqar(8, 64, 4, seed=1), D.mqar(8, 64, 4, seed=1), D.mqar(8, 64, 4, seed=2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scored, b.scored)
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("power", [0.01, 0.5])
def test_mqar_gaps_follow_the_power_law(power):
    seq_len, count = 65, 20_000
    batch = D.mqar(count, seq_len, 1, power=power, seed=0)  # one pair: the slot is one draw of the law
    slot = (batch.scored.float().argmax(dim=1) - 2) // 2
    slots = (seq_len + 1 - 2) // 2
    sampled = torch.bincount(slot, minlength=slots).double() / count
    requested = D.power_law_slot_probabilities(slots, power)
    assert 0.5 * (sampled - requested).abs().sum() < GAP_TOLERANCE
    if power < 0.1:
        assert sampled[0] > 5 * sampled[slots // 2]  # mostly soon after the prefix


def test_mqar_rejects_too_many_pairs():
    with pytest.raises(AssertionError):
        D.mqar(2, 16, 8)


@pytest.mark.parametrize("seq_len", [65, 127, 513])
def test_passkey(seq_len):
    batch = D.passkey(12, seq_len, digits=5, seed=4)
    assert batch.tokens.shape == (12, seq_len + 1)
    assert batch.scored.sum(dim=1).tolist() == [5] * 12
    keys = set()
    for row in range(12):
        text = bytes(batch.tokens[row].tolist()).decode("ascii")
        assert text.count("The pass key is ") == 2
        hidden = text.split("The pass key is ")[1][:5]
        assert hidden.isdigit() and text.endswith("What is the pass key? The pass key is " + hidden)
        predicted = batch.tokens[row, 1:][batch.scored[row]]
        assert bytes(predicted.tolist()).decode("ascii") == hidden  # the scored positions predict the answer
        keys.add(hidden)
    assert len(keys) > 6
    assert torch.equal(batch.tokens, D.passkey(12, seq_len, digits=5, seed=4).tokens)


def test_passkey_too_short():
    with pytest.raises(AssertionError):
        D.passkey(1, 40)


@pytest.fixture(scope="module")
def domains():
    return D.load_domains(max_bytes=300_000)


def test_domains_load_offline_and_are_distinct(domains):
    assert [d.name for d in domains] == list(D.DOMAIN_NAMES)
    histograms = []
    for domain in domains:
        assert domain.train.dtype == torch.uint8 and domain.validation.numel() > 0
        assert domain.train.numel() + domain.validation.numel() == 300_000
        assert abs(domain.validation.numel() / 300_000 - 1 / D.VALIDATION_EVERY) < 0.02
        histograms.append(torch.bincount(domain.train.long(), minlength=256).double() / domain.train.numel())
    for i in range(3):
        for j in range(i + 1, 3):
            assert 0.5 * (histograms[i] - histograms[j]).abs().sum() > DOMAIN_DISTANCE
    unicode = bytes(domains[2].train[:200].tolist()).decode("utf-8")
    assert unicode.startswith("U+0020 SPACE\nU+0021 EXCLAMATION MARK")
    assert "CJK UNIFIED IDEOGRAPH-" not in bytes(domains[2].train.tolist()).decode("utf-8", "replace")


def test_split_blocks_every_tenth_block_is_validation():
    data = bytes(range(256)) * 200  # 51 200 bytes = 12.5 blocks
    train, validation = D.split_blocks(data)
    block = D.BLOCK_BYTES
    assert torch.equal(validation, torch.frombuffer(bytearray(data[9 * block:10 * block]), dtype=torch.uint8))
    assert train.numel() == len(data) - block


def test_continual_metrics_on_a_hand_made_matrix():
    R = [[2.0, 5.0, 6.0],  # after phase 1 (domain 0)
         [3.0, 1.5, 6.5],  # after phase 2 (domain 1)
         [4.0, 2.5, 1.0]]  # after phase 3 (domain 2)
    assert S.average_final(R) == pytest.approx(2.5)
    assert S.backward_transfer(R) == pytest.approx(((4.0 - 2.0) + (2.5 - 1.5)) / 2)
    assert S.plasticity(R) == [2.0, 1.5, 1.0]
    better = [[2.0, 5.0], [1.5, 1.0]]  # learning the second domain helped the first
    assert S.backward_transfer(better) == pytest.approx(-0.5)


def test_compare_is_welchs_t_test_at_five_percent():
    assert S.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]).outcome == "lower"
    assert S.compare([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]).outcome == "higher"
    assert S.compare([1.0, 1.5, 0.5], [1.2, 1.7, 0.7]).outcome == "not significant"
    assert S.t_critical(3.41) == 3.182 and S.t_critical(1) == 12.706 and S.t_critical(30.9) == 2.042
    assert round(S.t_critical(31), 3) == 2.039 and round(S.t_critical(120), 3) == 1.980 and S.t_critical(0.4) == 12.706
    # The published HOPE-vs-titans BWT (1.363 ± 0.384 vs 1.997 ± 0.246, 3 seeds): beyond twice the standard
    # error, but Welch's p ≈ 0.085, so not a difference at 5%
    published = json.loads((REPO / "docs/results/continual.json").read_text())["metrics"]
    hope, titans = published["hope"]["bwt"], published["titans"]["bwt"]
    comparison = S.compare(hope, titans)
    assert comparison.outcome == "not significant"
    assert comparison.df == pytest.approx(3.41, abs=0.01) and comparison.t == pytest.approx(2.41, abs=0.01)
    verdict = "\n".join(S.continual_verdict({name: published[name] for name in ("hope", "titans")}))
    assert "HOPE forgets not significantly differently from `titans`" in verdict and "forgets less" not in verdict
    assert "Welch t = 2.41, df 3.4, 5% critical value 3.182" in verdict


def test_statistics_leave_diverged_seeds_out_and_never_compare_them(tmp_path):
    nan = math.nan
    assert S.mean_std([1.0, nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert S.pm([1.0, nan, 3.0]) == "2.000 ± 1.414 (2 of 3 seeds finite)"
    assert S.pm([1.5]) == "1.500 (one seed: no spread)" and "±" not in S.pm([1.5])
    assert S.pm([nan, nan]).startswith("diverged")
    assert S.compare([1.0, nan, 1.1], [2.0, 2.1, 1.9]).outcome == "not comparable"
    assert S.compare([1.0], [2.0]).outcome == "not comparable"  # one seed: no verdict
    summary = json.loads((REPO / "docs/results/continual.json").read_text())
    hope = summary["models"]["hope"]["sequential"][1]
    hope["R"] = [hope["R"][0]] + [[nan] * 3] * 3  # seed 1 of HOPE diverged in its first phase
    hope["diverged_at_step"] = 5
    S.write_continual_report(summary, tmp_path)  # statistics.stdev raised on the NaN here
    report = (tmp_path / "continual.md").read_text()
    assert "- `hope`: 1 of 3 seeds diverged in sequential training" in report
    assert "HOPE cannot be compared with `titans` on forgetting" in report and "1 of 3 seeds of HOPE diverged" in report
    assert "forgets less" not in report and "nan ±" not in report
    json.loads((tmp_path / "continual.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    summary["config"]["seeds"] = 1
    for entry in summary["models"].values():
        entry["sequential"], entry["joint"] = entry["sequential"][:1], entry["joint"][:1]
    S.write_continual_report(summary, tmp_path)
    report = (tmp_path / "continual.md").read_text()
    assert "± 0.000" not in report and "no spread is available" in report and "cannot be compared" in report


def test_learner_clock_and_control_groups():
    hope_attention = S.Learner(S.Setup(str(S.spec_path("hope_attention")), 16, 32, 2, 0))
    periods = {period for _, _, period in hope_attention.clock.members}  # the training loop's clock
    assert len(hope_attention.clock.members) == 4 and periods == {math.ceil(4096 / (2 * 32))}  # 2 layers × 2
    before = [p.detach().clone() for _, p, _ in hope_attention.clock.members]
    batch = S.language_batch(torch.randint(0, 256, (2, 33)))
    hope_attention.step(batch)
    assert all(torch.equal(b, p) for b, (_, p, _) in zip(before, hope_attention.clock.members))
    control = S.Learner(S.Setup(str(S.spec_path("transformer")), 16, 32, 2, 0, mlp_lr_scale=0.1))
    lrs = {name: group["base_lr"] for group in control.optimizer.param_groups
           for name, p in control.model.named_parameters() if any(p is q for q in group["params"])}
    assert all(lr == pytest.approx(3e-4 if ".mlp." in name else 3e-3) for name, lr in lrs.items())
    assert sum(".mlp." in name for name in lrs) == 2 * 4  # 2 layers × (norm, w_gate, w_up, w_down)


def test_matched_width():
    assert S.matched_width(S.spec_path("transformer"), S.parameter_count(S.spec_path("transformer"), 16)) == \
        (16, S.parameter_count(S.spec_path("transformer"), 16))
    dim, count = S.matched_width(S.spec_path("hope"), 30_000)
    assert dim % 4 == 0 and abs(count - 30_000) < 0.2 * 30_000
    for unreachable in (10**12, 10):  # past the widest and below the narrowest width: refused, not clamped
        with pytest.raises(UserError, match="out of reach"):
            S.matched_width(S.spec_path("transformer"), unreachable)


def test_continual_smoke(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["bench", "continual", "--tiny", "--models", "transformer", "hope", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "continual.json").read_text())
    assert set(summary["models"]) == {"transformer", "hope", S.CONTROL}
    assert len(summary["models"]["hope"]["sequential"][0]["R"]) == 4  # before training + 3 phases
    assert len(summary["models"]["hope"]["joint"][0]["R"]) == 2
    report = (out / "continual.md").read_text()
    assert "nldsl bench continual --tiny --models transformer hope" in report and "BWT" in report
    lines = (out / "continual.runs.jsonl").read_text().splitlines()
    assert main([*argv, "--resume"]) == 0  # nothing recomputed
    assert (out / "continual.runs.jsonl").read_text().splitlines() == lines


def test_recall_smoke(tmp_path):
    out = tmp_path / "results"
    assert main(["bench", "recall", "--tiny", "--models", "transformer", "deltanet", "--out", str(out)]) == 0
    summary = json.loads((out / "recall.json").read_text())
    for entry in summary["models"].values():
        for run in entry["mqar"].values():
            assert all(0 <= t["accuracy"] <= 1 for t in run["tests"].values())
        assert set(entry["passkey"]["tests"]) == {"1x", "2x"}
    assert "nldsl bench recall --tiny" in (out / "recall.md").read_text()


def test_titans_runs_with_normalised_values():
    learner = S.Learner(S.Setup(str(S.spec_path("titans")), 16, 32, 2, 0, overrides=S.study_overrides("titans")))
    memory = learner.model.spec.model.block.sublayers[0]
    assert memory.value_norm == "l2" and memory.level.lr.max == pytest.approx(0.01)


def test_a_diverged_run_is_recorded_not_fatal(monkeypatch):
    calls = []

    def step(self, batch):
        calls.append(1)
        if len(calls) > 1:
            raise FloatingPointError("the loss is nan")
        return 1.0

    monkeypatch.setattr(S.Learner, "step", step)
    domains = D.load_domains(("docs", "unicode"), max_bytes=50_000)
    validation = [S.language_batch(D.spaced_windows(d.validation, 2, 17)) for d in domains]
    run = S.continual_run(S.Setup(str(S.spec_path("transformer")), 16, 16, 2, 0), domains, 3, validation, False)
    assert run["diverged_at_step"] == 0 and len(run["R"]) == 3
    assert all(math.isnan(v) for row in run["R"][1:] for v in row)
    assert any("diverged" in line for line in S.diverged_notes([("transformer", run)]))


def test_run_keys_name_shipped_specs_relative_to_the_checkout(tmp_path):
    shipped = {"study": "recall", "setup": {"spec": str(S.spec_path("hope").resolve()), "dim": 64}}
    assert S.portable(shipped)["setup"] == {"spec": "specs/hope.nl", "dim": 64}
    own = {"study": "recall", "setup": {"spec": str(tmp_path / "hope.nl"), "dim": 64}}
    assert S.portable(own) == own


@pytest.mark.parametrize(("study", "option", "value", "message"), [
    ("continual", "--steps", "0", "must be at least 1, got 0"),
    ("continual", "--lr", "-1", "must be a number > 0"),
    ("continual", "--seq-len", "1", "must be at least 2"),
    ("continual", "--batch", "x", "expected an integer"),
    ("recall", "--lrs", "nan", "must be a number > 0"),
    ("recall", "--mqar-batch", "-4", "must be at least 1"),
    ("recall", "--seed", str(S.LARGEST_SEED + 1), f"must be between 0 and {S.LARGEST_SEED:,}"),  # < test seeds
    ("recall", "--seed", "-1", f"must be between 0 and {S.LARGEST_SEED:,}"),
    ("recall", "--passkey-steps", str(10**6), "must be at most 999,999"),
    ("recall", "--mqar-steps", str(10**6), "must be at most 999,999"),
    ("continual", "--out", "", "an empty path"),
])
def test_out_of_range_study_options_are_usage_errors_before_any_run(capsys, study, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["bench", study, "--tiny", option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [b'{"key": "k", "result": {"seconds"', b"[1]", b"\xff\xfe", b'{"key": 1, "result": 2}'])
def test_a_resumed_study_passes_over_unreadable_run_lines_and_rewrites_the_log(tmp_path, capsys, bad):
    log_file = tmp_path / "continual.runs.jsonl"
    good = json.dumps({"key": "done", "result": {"seconds": 1.5}})
    log_file.write_bytes(good.encode() + b"\n" + bad)  # a kill during the append leaves a cut last line
    log = S.RunLog(log_file, resume=True)
    assert "unreadable line" in capsys.readouterr().err
    assert log.run({"k": 1}, lambda: {"seconds": 2.0}) == {"seconds": 2.0}
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["done", json.dumps({"k": 1}, sort_keys=True)]
    assert S.RunLog(log_file, resume=True).done["done"] == {"seconds": 1.5}


def test_tiny_studies_write_apart_from_the_published_results_and_refuse_size_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = S.parse_study("continual", ["--tiny"])
    assert a.out == S.TINY_RESULTS and S.RESULTS not in a.out.parents and a.out != S.RESULTS
    assert S.parse_study("recall", ["--tiny", "--out", "mine"]).out == Path("mine")
    for study, option in [("continual", "--steps"), ("continual", "--params"), ("recall", "--mqar-batch"),
                          ("recall", "--lrs")]:
        assert main(["bench", study, "--tiny", option, "3"]) == 1
        err = capsys.readouterr().err
        assert f"--tiny sets its own toy sizes and would ignore {option}" in err and err.count("\n") == 1


@pytest.mark.parametrize("study", ["continual", "recall"])
def test_a_model_named_twice_is_refused_not_pooled(tmp_path, capsys, study):
    copy = tmp_path / "transformer.nl"  # another file with the same name: reported under the same label
    copy.write_text((REPO / "specs/transformer.nl").read_text())
    for models in (["hope", "hope"], ["transformer", str(copy)]):
        assert main(["bench", study, "--tiny", "--out", str(tmp_path / "out"), "--models", *models]) == 1
        err = capsys.readouterr().err
        assert f"--models names {models[0]} more than once" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["no-dim", "errors", "optimizer", "folder", "text"])
def test_a_model_the_study_cannot_size_is_a_clear_error(tmp_path, capsys, make):
    if make == "no-dim":
        path = tmp_path / "fixed.nl"
        path.write_text((REPO / "specs/transformer.nl").read_text().replace("const dim = 128", "")
                        .replace("dim = dim", "dim = 32"))
    elif make == "errors":
        path = tmp_path / "broken.nl"
        path.write_text("model m { vocab = 256\n dim = }\n")
    elif make == "optimizer":
        path = REPO / "specs/optimizers/adamw.nl"
    elif make == "folder":
        path = tmp_path
    else:
        path = tmp_path / "notes.txt"
        path.write_text("just some notes\n")
    assert main(["bench", "continual", "--tiny", "--no-control", "--out", str(tmp_path / "out"),
                 "--models", str(path)]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err and err.strip()
    assert not (tmp_path / "out").exists()


def test_training_and_test_seeds_of_recall_never_meet():
    assert S.LARGEST_SEED * 10**6 + (10**6 - 1) < S.TEST_SEED  # the largest seed's last step
    assert S.TEST_SEED + 16 < 2**63  # every test set's seed is one torch takes


def test_a_resumed_study_reuses_only_runs_of_the_same_code_and_spec(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    argv = ["bench", "recall", "--tiny", "--models", "transformer", "--out", str(out)]
    assert main(argv) == 0
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "recall.json").read_text())["runs_reused"] == 2  # MQAR and passkey
    monkeypatch.setattr(S, "code_digest", lambda: "other code")  # a run made by other code is another run
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "recall.json").read_text())["runs_reused"] == 0
    key = json.loads(json.loads((out / "recall.runs.jsonl").read_text().splitlines()[0])["key"])
    assert key["spec_sha256"] == S.loader_check(str(S.spec_path("transformer")), ()).sha256[:16]


def test_a_new_study_keeps_the_earlier_runs_aside_and_checks_its_folder_first(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    argv = ["bench", "recall", "--tiny", "--models", "transformer", "--out", str(out)]
    assert main(argv) == 0
    earlier = (out / "recall.runs.jsonl").read_text()
    assert main(argv) == 0  # without --resume: a new study, the earlier runs kept, not deleted
    assert (out / "recall.runs.jsonl.previous").read_text() == earlier
    assert "moved to" in capsys.readouterr().err
    second = (out / "recall.runs.jsonl").read_text()
    assert main(argv) == 0  # a third: the first study's runs are not overwritten by the second's
    assert (out / "recall.runs.jsonl.previous").read_text() == earlier
    assert (out / "recall.runs.jsonl.previous2").read_text() == second
    (out / "recall.runs.jsonl").write_text("")  # what a study stopped before its first run leaves
    S.RunLog(out / "recall.runs.jsonl", resume=False)
    assert not (out / "recall.runs.jsonl.previous3").exists()  # nothing to keep: no empty log moved aside
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("a run trained before the results folder was checked")

    monkeypatch.setattr(S, "Learner", no_training)
    (tmp_path / "afile").write_text("")
    beneath_a_file = str(tmp_path / "afile" / "x")
    assert main(["bench", "continual", "--tiny", "--models", "transformer", "--out", beneath_a_file]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the study's results to") and err.count("\n") == 1
    assert err.rstrip().endswith(f"{tmp_path / 'afile'} is a file, not a folder"), err
    assert main(["bench", "recall", "--tiny", "--models", "transformer", "--out", str(tmp_path / "afile")]) == 1
    assert capsys.readouterr().err.rstrip().endswith("afile is a file, not a folder")


def test_a_sequence_longer_than_a_domains_text_is_a_clear_error(tmp_path, capsys):
    argv = ["bench", "continual", "--models", "transformer", "--seq-len", "500000", "--steps", "1", "--seeds", "1",
            "--no-joint", "--no-control", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--seq-len 500000 needs windows of 500001 bytes" in err and err.count("\n") == 1


def test_the_code_digest_is_the_same_for_a_checkout_and_an_installed_wheel(tmp_path):
    """A wheel installs compiler/ and grammar/ inside nldsl/ (pyproject's package-dir); the digest
    names files by package, so a log made in a checkout resumes from an install of the same code."""
    import shutil
    import subprocess
    import sys

    import nldsl.compiler
    import nldsl.grammar

    site = tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(nldsl.__file__).parent, site / "nldsl", ignore=ignore)
    for module, name in ((nldsl.compiler, "compiler"), (nldsl.grammar, "grammar")):
        if not (site / "nldsl" / name).exists():  # a checkout: they sit beside the package
            shutil.copytree(Path(module.__file__).parent, site / "nldsl" / name, ignore=ignore)
    probe = ("import nldsl, nldsl.runtime.studies as S; "
             f"assert nldsl.__file__.startswith({str(site)!r}), nldsl.__file__; print(S.code_digest())")
    installed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(site)},
                               capture_output=True, text=True, check=True).stdout.split()[-1]
    assert installed == S.code_digest()
    grammar = next((site / "nldsl" / "grammar").glob("*.lark"))  # the grammar decides what a spec means
    grammar.write_text(grammar.read_text() + "\n// edited\n")
    edited = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
                            capture_output=True, text=True, check=True).stdout.split()[-1]
    assert edited != installed


def test_the_recall_report_marks_a_diverged_run_and_tells_which_notes_apply(tmp_path, monkeypatch):
    summary = json.loads((REPO / "docs/results/recall.json").read_text())  # HOPE diverged at lr 0.003 and 0.01
    lost = summary["models"]["deltanet"]["mqar"]["0.01"]
    lost["diverged_at_step"] = 7
    for test in lost["tests"].values():
        test["accuracy"] = math.nan
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    drawn = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append((a, k)) or plot(self, *a, **k))
    S.write_recall_report(summary, tmp_path)
    report = (tmp_path / "recall.md").read_text()
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](recall.png)" in report
    crosses = [(a, k) for a, k in drawn if len(a) == 3 and a[2] == "x"]  # on the axis, once per model
    assert [(list(a[0]), list(a[1])) for a, _ in crosses] == [([0.003, 0.01], [0.0, 0.0]), ([0.01], [0.0])]
    assert [k["label"] for _, k in crosses] == ["diverged (×)", None]  # one legend entry for them all
    assert len({k["marker"] for _, k in drawn if "marker" in k}) == len(summary["models"])
    assert "- `deltanet MQAR lr 0.01` diverged (non-finite loss) at step 7." in report
    row = next(line for line in report.splitlines() if line.startswith("| `transformer` | transformer.nl"))
    assert row.split(" | ")[3:5] == ["2", "256"]  # layers and vocabulary
    assert S.override_notes(summary["models"], summary["config"]["lrs"])[2] in report
    assert S.OVERRIDE_NOTES["titans_lmm.nl"] in report

    for entry in summary["models"].values():  # no model departs from its spec or diverges: no note says so
        entry["overrides"] = []
        for run in [*entry["mqar"].values(), entry["passkey"]]:
            run["diverged_at_step"] = None
    S.write_recall_report(summary, tmp_path)
    report = (tmp_path / "recall.md").read_text()
    assert "Why" not in report and "diverged" not in report


@pytest.mark.parametrize("terminal", [True, False])
def test_a_study_run_draws_its_steps_only_on_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(S.sys.stderr, "isatty", lambda: terminal)
    bar = S.steps_bar(5, "hope seed 0 phase 1")
    assert bar.disable is (not terminal)  # read before the loop: tqdm disables a closed bar
    assert not terminal or bar.desc == "hope seed 0 phase 1"
    assert list(bar) == list(range(5))


@pytest.mark.parametrize("study", ["continual", "recall"])
def test_a_study_without_out_never_writes_the_published_results(tmp_path, monkeypatch, study):
    monkeypatch.chdir(tmp_path)
    a = S.parse_study(study, [])
    assert a.out == Path(f"runs/bench-{study}") and a.out != S.RESULTS and S.RESULTS not in a.out.parents
    assert S.parse_study(study, ["--out", "docs/results"]).out == S.RESULTS  # publishing is explicit
    assert f"runs/bench-{study}" in (S.continual_parser() if study == "continual" else S.recall_parser()).format_help()


def test_a_refused_study_leaves_the_earlier_log_in_place(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    log = out / "recall.runs.jsonl"
    log.write_text(json.dumps({"key": "an earlier run", "result": {"seconds": 1.0}}) + "\n")
    muon = str(REPO / "specs/transformer_muon.nl")

    def no_training(*args, **kwargs):
        raise AssertionError("a run trained before the options were checked")

    monkeypatch.setattr(S, "Learner", no_training)
    for argv in (["bench", "recall", "--params", "5", "--models", "transformer"],  # no width that small
                 ["bench", "continual", "--params", "5", "--models", "transformer", "--no-control"],
                 ["bench", "recall", "--tiny", "--models", "transformer", muon]):  # an optimizer it cannot use
        assert main([*argv, "--out", str(out)]) == 1
        assert capsys.readouterr().err.startswith("error:")
        assert log.exists() and not list(out.glob("*.previous*"))  # not moved aside before the refusal


@pytest.mark.parametrize("make, message", [
    ("muon", "the studies train every model with the built-in AdamW"),
    ("adamw section", "trains with the optimizer section `adamw`, but the studies train every model with the "
                      "built-in AdamW"),
    ("vocab", "has vocab = 128, but the studies train on bytes"),
    ("bpe", "uses the bpe tokenizer, but the studies train on bytes"),
])
@pytest.mark.parametrize("study", ["continual", "recall"])
def test_a_spec_the_studies_cannot_train_is_refused_before_any_run(tmp_path, capsys, monkeypatch, make, message,
                                                                   study):
    text = (REPO / "specs/transformer.nl").read_text()
    if make == "muon":
        path = REPO / "specs/transformer_muon.nl"
    elif make == "adamw section":  # AdamW written as levels is still not the built-in the studies build
        path = tmp_path / "adamw_section.nl"
        path.write_text(f'import "{REPO / "specs/optimizers/adamw.nl"}" as opt\n'
                        + text.replace("optimizer = adamw(", "optimizer = opt.adamw  # ("))
    else:
        path = tmp_path / f"{make}.nl"
        path.write_text(text.replace("vocab = 256", "vocab = 128") if make == "vocab" else
                        text.replace("vocab = 256", "vocab = 512").replace("seq_len = 256",
                                                                            "seq_len = 256\n  tokenizer = bpe(512)"))
    trained = []
    monkeypatch.setattr(S, "Learner", lambda *a, **k: trained.append(a) or pytest.fail("trained a model"))
    # the spec the study cannot use comes last: no other model trains first
    assert main(["bench", study, "--tiny", "--no-control" if study == "continual" else "--seed", *(
        [] if study == "continual" else ["0"]), "--out", str(tmp_path / "out"),
        "--models", "transformer", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "internal error" not in err and not trained


def test_resume_says_which_runs_it_does_not_reuse_and_report_only_rebuilds_without_training(tmp_path, monkeypatch,
                                                                                            capsys):
    out = tmp_path / "results"
    argv = ["bench", "recall", "--tiny", "--models", "transformer", "--out", str(out)]
    assert main([*argv, "--report-only"]) == 1  # nothing logged yet: nothing to rebuild from
    assert "--report-only rebuilds the report from the logged runs" in capsys.readouterr().err
    assert main(argv) == 0
    made = S.code_digest()
    page = (out / "recall.md").read_text()
    summary = json.loads((out / "recall.json").read_text())
    monkeypatch.setattr(S, "code_digest", lambda: "other code")
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only trained a run")

    monkeypatch.setattr(S, "Learner", no_training)
    logged = (out / "recall.runs.jsonl").read_text()
    assert main([*argv, "--report-only"]) == 0
    assert (out / "recall.runs.jsonl").read_text() == logged  # read, never written or moved
    rebuilt = (out / "recall.md").read_text()
    assert f"rebuilt with `--report-only` from the logged runs in `recall.runs.jsonl`, made by nldsl code `{made}`" \
        in rebuilt and "`other code`" in rebuilt
    assert rebuilt.split("\n", 8)[8] == page.split("\n", 8)[8]  # below the header: the same page
    again = json.loads((out / "recall.json").read_text())
    assert again["models"] == summary["models"] and again["command"] == summary["command"]
    assert again["rebuilt"] == {"runs_code": [made], "code": "other code"}
    monkeypatch.undo()
    monkeypatch.setattr(S, "code_digest", lambda: "other code")
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"note: 2 of the 2 logged runs in {out / 'recall.runs.jsonl'} were made by other code ({made}" in err
    assert "logged runs of" in err and f"not reused: 2 made by other code ({made})" in err


def test_duplicate_learning_rates_are_one_run(tmp_path):
    a = S.parse_study("recall", ["--lrs", "0.01", "1e-2", "0.003", "--out", str(tmp_path)])
    assert a.lrs == [0.01, 0.003] and S.recall_config(a).lrs == (0.01, 0.003)


def test_report_files_are_strict_json_and_a_failed_write_names_its_file(tmp_path, monkeypatch):
    summary = json.loads((REPO / "docs/results/recall.json").read_text())  # HOPE diverged at lr 0.003 and 0.01
    S.write_recall_report(summary, tmp_path)
    text = (tmp_path / "recall.json").read_text()
    assert "NaN" not in text and json.loads(text)["models"]["hope"]["mqar"]["0.01"]["tests"]["T=64 D=4"]["accuracy"] \
        is None
    revived = S.revive(json.loads(text)["models"]["hope"]["mqar"]["0.01"])
    assert math.isnan(revived["tests"]["T=64 D=4"]["accuracy"]) and revived["diverged_at_step"] is not None
    report = (tmp_path / "recall.md").read_text()
    assert "Models at matched parameter count" in report and "the counts span 270,776–309,096" in report
    assert "*Earlier observations, not from this run*" in report

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S, "write_atomic", full)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'recall.json'}: No space left on device"):
        S.write_recall_report(summary, tmp_path)
    log = S.RunLog(tmp_path / "x.runs.jsonl", resume=False)
    monkeypatch.setattr(Path, "open", lambda *a, **k: full(None, None))
    with pytest.raises(UserError, match=r"cannot write .*x\.runs\.jsonl: No space left on device"):
        log.run({"k": 1}, lambda: {"seconds": 1.0})


def test_report_only_refuses_a_params_its_logged_runs_never_had():
    assert S.logged_params({"params": 290_000}, 300_000, "hope") == 290_000
    with pytest.raises(UserError, match=r"logged runs of hope have 290,000 parameters, not about --params 500,000"):
        S.logged_params({"params": 290_000}, 500_000, "hope")


def tiny_recall(**changes):
    """The --tiny recall configuration of one Transformer, with `changes`."""
    import dataclasses

    return dataclasses.replace(S.recall_config(S.parse_study("recall", ["--tiny", "--models", "transformer"])),
                               **changes)


def tiny_continual(**changes):
    import dataclasses

    a = S.parse_study("continual", ["--tiny", "--no-control", "--no-joint", "--models", "transformer"])
    return dataclasses.replace(S.continual_config(a), **changes)


def test_report_only_takes_exactly_the_logged_params(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    S.run_recall(tiny_recall(), out, "nldsl bench recall --tiny")
    monkeypatch.setattr(S, "Learner", lambda *a, **k: pytest.fail("--report-only trained a run"))
    with pytest.raises(UserError, match=r"made with --params 15,000 \(as .*recall\.json records\), not 14,000: "
                                        r"rebuild with `nldsl bench recall --tiny --report-only`$"):
        S.run_recall(tiny_recall(params=14_000), out, "nldsl bench recall --params 14000", report_only=True)
    summary = json.loads((out / "recall.json").read_text())
    (out / "recall.json").write_text(json.dumps({**summary, "command": "nldsl bench recall --params 15000"}))
    with pytest.raises(UserError, match=r"not 14,000: rebuild with --params 15000$"):  # not --tiny: its --params
        S.run_recall(tiny_recall(params=14_000), out, "nldsl bench recall --params 14000", report_only=True)
    S.run_recall(tiny_recall(), out, "nldsl bench recall --tiny", report_only=True)  # the logged value: rebuilt
    (out / "recall.json").unlink()  # no record of --params: the logged widths must be what it matches
    S.run_recall(tiny_recall(params=14_000), out, "nldsl bench recall --params 14000", report_only=True)
    page = (out / "recall.md").read_text()
    assert "nearest to 14,000 parameters" in page  # dim 16 is: the page is true
    assert "the mean cross-entropy of the last 2 training steps" in page, "--tiny trains 2 steps, not 20"
    with pytest.raises(UserError, match=r"have dim 16, and --params 24,000 matches dim 24"):
        S.check_logged_width(S.spec_path("transformer"), 24_000, (), 16, "transformer", {})


def test_a_run_shorter_than_the_warm_up_is_warned_of_and_the_page_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    S.run_continual(tiny_continual(warmup=20), tmp_path / "c", "nldsl bench continual")  # 3 phases × 2 steps
    err = capsys.readouterr().err
    assert "warning: the runs take 6 steps, fewer than the 20 warm-up steps" in err and "at 6/20 of the lr" in err
    page = (tmp_path / "c" / "continual.md").read_text()
    assert "AdamW at lr" not in page and "its 6 steps end at 6/20 of it (lr 0.0003)" in page
    S.run_recall(tiny_recall(warmup=3), tmp_path / "r", "nldsl bench recall")  # 2 MQAR and 2 passkey steps
    err = capsys.readouterr().err
    assert "warning: the MQAR runs take 2 steps" in err and "warning: the passkey runs take 2 steps" in err
    page = (tmp_path / "r" / "recall.md").read_text()
    assert "The passkey runs (2 steps) end inside the warm-up, at 2/3 of their lr" in page
    published = json.loads((REPO / "docs/results/continual.json").read_text())  # 240 steps ≥ 20: as before
    S.write_continual_report(published, tmp_path / "p")
    assert "AdamW at lr 0.001 with each spec's weight decay after 20 warm-up steps" in \
        (tmp_path / "p" / "continual.md").read_text()


def test_a_model_whose_every_lr_diverged_has_no_best_lr_and_no_passkey_run(tmp_path, monkeypatch, capsys):
    def diverge(self, batch):
        raise FloatingPointError("the loss is nan")

    monkeypatch.setattr(S.Learner, "step", diverge)
    out = tmp_path / "results"
    assert main(["bench", "recall", "--tiny", "--models", "transformer", "--out", str(out)]) == 0
    assert "note: transformer: every lr of the MQAR sweep diverged" in capsys.readouterr().err
    entry = json.loads((out / "recall.json").read_text())["models"]["transformer"]
    assert "passkey" not in entry and len(entry["mqar"]) == 1
    page = (out / "recall.md").read_text()
    assert " *" not in page and "(`transformer`: every lr diverged, so no lr is starred and no passkey run" in page
    assert "| `transformer` | – | not run | not run |" in page


def test_a_spec_path_is_reported_by_its_stem_in_both_studies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "specs" / "mine.nl"
    spec.parent.mkdir()
    spec.write_text((REPO / "specs/transformer.nl").read_text())
    assert main(["bench", "continual", "--tiny", "--no-control", "--no-joint", "--models", str(spec)]) == 0
    assert list(json.loads((S.TINY_RESULTS / "continual.json").read_text())["models"]) == ["mine"]
    assert "| `mine` |" in (S.TINY_RESULTS / "continual.md").read_text()
    control = tmp_path / f"{S.CONTROL}.nl"  # the control's name: two models of one name, refused
    control.write_text(spec.read_text())
    assert main(["bench", "continual", "--tiny", "--models", str(control)]) == 1
    assert f"--models names {S.CONTROL} more than once" in capsys.readouterr().err
    assert main(["bench", "continual", "--tiny", "--no-control", "--no-joint", "--models", str(control),
                 "--out", "other"]) == 0


def test_page_sentences_hold_for_the_run_they_describe(tmp_path):
    continual = json.loads((REPO / "docs/results/continual.json").read_text())
    S.write_continual_report(continual, tmp_path)
    page = (tmp_path / "continual.md").read_text()
    assert "the slow CMS level follows the continuum clock" not in page
    assert "A model's in-context levels, where it has any, learn within each window" in page
    assert "(this study trains at outer lr 0.001, where 0.1 stayed finite" in page
    recall = json.loads((REPO / "docs/results/recall.json").read_text())
    S.write_recall_report(recall, tmp_path)
    page = (tmp_path / "recall.md").read_text()
    assert "the studies train at outer lr 0.001" not in page
    assert "(this study trains at outer lr 0.001, 0.003 and 0.01, where 0.1 stayed finite" in page


def test_recall_page_states_chance_per_pair_count_and_the_loss_unit(tmp_path):
    recall = json.loads((REPO / "docs/results/recall.json").read_text())
    recall["config"]["passkey_steps"] = 1
    S.write_recall_report(recall, tmp_path)
    page = (tmp_path / "recall.md").read_text()
    assert "Chance is about 1/D" in page and "(1/4 at D=4, 1/8 at D=8, 1/16 at D=16)" in page
    assert "Chance is about 1/4 " not in page
    assert "Trained for 300 steps of" in page and "Trained for 1 step of" in page
    assert "| final train loss (nats) |" in page and "in nats" in page


def test_a_model_name_that_is_no_model_and_no_file_is_told_apart_from_a_missing_spec_file(tmp_path):
    with pytest.raises(UserError, match=r"^unknown model `hopee` \(known: .*hope.*; or give a spec path\)$"):
        S.spec_path("hopee")
    with pytest.raises(UserError, match=r"^--models .*missing\.nl: no such spec file \(the known models: "):
        S.spec_path(str(tmp_path / "missing.nl"))
    with pytest.raises(UserError, match=r"^--models lost\.nl: no such spec file"):
        S.spec_path("lost.nl")
    with pytest.raises(UserError, match=r"^--models \./hope: no such spec file"):
        S.spec_path("./hope")
    with pytest.raises(UserError, match=r": not a spec file$"):
        S.spec_path(str(tmp_path))
    assert S.spec_path("hope").name == "hope.nl"


# From a mutation audit of the studies, their domains and the continuum clock: the code behind every
# published number (24 of 49 mutants survived the tests above, none an equivalent one) ---------------

@pytest.mark.parametrize("study", ["continual", "recall"])
def test_published_pages_are_rebuilt_exactly_from_their_json(tmp_path, study):
    """Every number of the page is what this code computes from the raw runs (metrics, fields, text)."""
    summary = json.loads((REPO / f"docs/results/{study}.json").read_text())
    (S.write_continual_report if study == "continual" else S.write_recall_report)(summary, tmp_path)
    assert (tmp_path / f"{study}.md").read_text() == (REPO / f"docs/results/{study}.md").read_text()


def test_continual_metrics_read_the_rows_after_each_phase_not_the_initial_one():
    R = [[9.0, 9.0, 9.0], [2.0, 5.0, 6.0], [3.0, 1.5, 6.5], [4.0, 2.5, 1.0]]  # initial row, then phases 1..3
    joint = [[9.0, 9.0, 9.0], [3.0, 2.0, 1.0]]
    m = S.continual_metrics({"sequential": [{"R": R}], "joint": [{"R": joint}]})
    assert m["bwt"] == [pytest.approx(1.5)] and m["average_final"] == [pytest.approx(2.5)]
    assert m["plasticity"] == [[2.0, 1.5, 1.0]] and m["initial"] == [[9.0, 9.0, 9.0]]
    assert m["joint_final"] == [pytest.approx(2.0)] and m["joint_R"] == [3.0, 2.0, 1.0]


def constant_domains(length=4000):
    return [D.Domain(n, n, torch.full((length,), 10 + j, dtype=torch.uint8),
                     torch.full((length // 10,), 100 + j, dtype=torch.uint8), 1) for j, n in enumerate("abc")]


def record_steps(monkeypatch):
    seen = []
    monkeypatch.setattr(S.Learner, "step", lambda self, batch: seen.append(batch.tokens.clone()) or 1.0)
    return seen


def test_each_phase_trains_on_its_own_domain_and_joint_on_all_for_as_many_steps(monkeypatch):
    domains = constant_domains()
    validation = [S.language_batch(D.spaced_windows(d.validation, 2, 17)) for d in domains]
    setup = S.Setup(str(S.spec_path("transformer")), 16, 16, 4, 0)
    seen = record_steps(monkeypatch)
    S.continual_run(setup, domains, 5, validation, joint=False)
    assert len(seen) == 15
    for step, tokens in enumerate(seen):
        assert (tokens == 10 + step // 5).all()  # phase j: domain j's training text only
    seen.clear()
    S.continual_run(setup, domains, 5, validation, joint=True)
    assert len(seen) == 15 and set(torch.cat(seen).unique().tolist()) == {10, 11, 12}


def test_seeds_draw_their_own_batches_and_initial_weights(monkeypatch):
    domains = D.load_domains(("docs",), max_bytes=60_000)
    validation = [S.language_batch(D.spaced_windows(d.validation, 2, 17)) for d in domains]
    seen = record_steps(monkeypatch)
    batches = []
    for seed in (0, 1):
        seen.clear()
        S.continual_run(S.Setup(str(S.spec_path("transformer")), 16, 16, 4, seed), domains, 2, validation, False)
        batches.append(torch.cat(seen))
    assert not torch.equal(*batches)
    a, b = (S.Learner(S.Setup(str(S.spec_path("transformer")), 16, 16, 4, seed)) for seed in (0, 1))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters, b.parameters))


def test_the_continual_study_scores_validation_text_and_runs_each_seed_with_its_own_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake(setup, domains, steps, validation, joint):
        calls.append((setup.seed, domains, validation))
        return {"R": [[1.0] * 3] * 4, "train_bpb": [1.0] * 3, "seconds": 0.0, "params": 15_000,
                "diverged_at_step": None}

    monkeypatch.setattr(S, "continual_run", fake)
    config = dataclasses.replace(S.continual_config(S.parse_study("continual", ["--tiny", "--no-control", "--no-joint",
                                                                               "--models", "transformer"])), seeds=2)
    S.run_continual(config, tmp_path / "c", "x")
    assert [seed for seed, _, _ in calls] == [0, 1]
    _, domains, validation = calls[0]
    for d, v in zip(domains, validation):
        assert torch.equal(v.tokens, D.spaced_windows(d.validation, config.eval_windows, config.seq_len + 1))


def test_evaluate_scores_only_scored_positions_and_exact_means_every_one_right():
    learner = S.Learner(S.Setup(str(S.spec_path("transformer")), 16, 8, 2, 0))
    tokens = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    scored = torch.tensor([[False, True, False, True], [False, True, True, False]])
    logits = torch.full((2, 4, 256), -30.0)
    right = tokens[:, 1:].clone()
    right[1, 2] = 0  # row 1 wrong at a scored position; rows wrong elsewhere at unscored ones
    logits[torch.arange(2)[:, None], torch.arange(4), right] = 30.0
    logits[0, 0, :] = 0.0
    learner.logits = lambda t: logits
    s = learner.evaluate(D.TaskBatch(tokens, scored))
    assert (s.positions, s.correct, s.sequences, s.sequences_correct) == (4, 3, 2, 1)
    assert s.loss == pytest.approx(60.0, rel=1e-3)  # one wrong scored position, cross-entropy ≈ 60 nats
    assert S.Scores(loss=10 * math.log(2), positions=10).bits_per_byte == pytest.approx(1.0)


def test_the_training_loss_is_the_evaluated_loss_on_the_scored_positions():
    learner = S.Learner(S.Setup(str(S.spec_path("transformer")), 16, 32, 4, 0))
    batch = D.mqar(4, 32, 4, seed=5)
    before = learner.evaluate(batch)
    assert learner.step(batch) == pytest.approx(before.loss / before.positions, rel=1e-5)


def test_final_loss_is_the_mean_of_the_last_steps(monkeypatch):
    losses = iter(range(100))
    monkeypatch.setattr(S.Learner, "step", lambda self, batch: float(next(losses)))
    run = S.task_run(S.Setup(str(S.spec_path("transformer")), 16, 16, 2, 0), lambda step: None, 50, {}, 4)
    assert run["final_loss"] == pytest.approx(sum(range(30, 50)) / 20)


def test_recall_seeds_training_and_test_sets_apart_and_picks_the_best_lr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = {"mqar": [], "passkey": []}
    for task in made:
        real = getattr(D, task)
        monkeypatch.setattr(D, task, lambda *a, _r=real, _t=task, **k: made[_t].append(k["seed"]) or _r(*a, **k))
    trained = []

    def fake(setup, make_batch, steps, tests, eval_batch):
        trained.append(setup.lr)
        for step in range(steps):
            make_batch(step)
        accuracy = {1e-3: 0.2, 3e-3: 0.9, 1e-2: 0.5}[setup.lr]
        return {"tests": {name: {"accuracy": accuracy, "exact": 0.0, "loss": 1.0} for name in tests},
                "final_loss": 1.0, "diverged_at_step": None, "train_seconds": 0.0, "seconds": 0.0, "params": 15_000}

    monkeypatch.setattr(S, "task_run", fake)
    config = dataclasses.replace(S.recall_config(S.parse_study("recall", ["--tiny", "--models", "transformer"])),
                                 lrs=(1e-3, 3e-3, 1e-2), mqar_steps=5, passkey_steps=5)
    summary = S.run_recall(config, tmp_path / "r", "x")
    assert summary["models"]["transformer"]["passkey"]["lr"] == 3e-3 and trained[-1] == 3e-3
    tests = made["mqar"][:len(config.mqar_tests)] + made["passkey"][:len(config.passkey_scales)]
    training = made["mqar"][len(config.mqar_tests):] + made["passkey"][len(config.passkey_scales):]
    assert len(set(made["mqar"][len(config.mqar_tests):])) == 3 * 5 // 3  # one seed per step
    assert not set(tests) & set(training)
    assert len(set(made["mqar"][:len(config.mqar_tests)])) == len(config.mqar_tests)


def test_matched_width_finds_the_width_of_a_parameter_count():
    spec = S.spec_path("deltanet")
    for dim in (20, 28):
        count = S.parameter_count(spec, dim)
        assert S.matched_width(spec, count) == (dim, count)


def test_the_passkey_is_hidden_at_every_depth():
    batch = D.passkey(300, 512, seed=9)
    depths = [bytes(row.tolist()).index(b"The pass key is ") / 512 for row in batch.tokens]
    assert min(depths) < 0.1 and max(depths) > 0.8


def test_spaced_windows_cover_the_whole_text():
    text = torch.arange(1000) % 256
    windows = D.spaced_windows(text.to(torch.uint8), 5, 10)
    assert torch.equal(windows[0], text[:10]) and torch.equal(windows[-1], text[-10:])


def test_the_clock_sums_every_gradient_between_releases_and_starts_afresh():
    from nldsl.runtime.clock import ContinuumClock

    p = torch.nn.Parameter(torch.zeros(2))
    clock = ContinuumClock([("blocks.0.cms.slow_w1", p)], {"cms.slow_": 2})
    released = []
    for step in range(6):
        p.grad = torch.full((2,), float(step + 1))
        clock.tick(step)
        released.append(None if p.grad is None else p.grad[0].item())
    assert released == [None, 3.0, None, 7.0, None, 11.0]


def test_the_code_domain_is_the_one_the_published_runs_read():
    published = {d["name"]: d for d in json.loads((REPO / "docs/results/continual.json").read_text())["domains"]}
    code = published["code"]
    if code["python"] != D.sys.version.split()[0]:
        pytest.skip(f"the published sizes are those of Python {code['python']}")
    record = D.load_domain("code").record
    assert (record["documents"], record["train_bytes"], record["validation_bytes"]) == \
        (code["documents"], code["train_bytes"], code["validation_bytes"])


def test_every_clock_level_of_two_steps_or_more_is_on_the_clock():
    from nldsl.runtime.clock import ContinuumClock

    named = [(f"blocks.0.cms.l{n}_w1", torch.nn.Parameter(torch.zeros(1))) for n in (1, 2, 3)]
    clock = ContinuumClock(named, {"cms.l1_": 1, "cms.l2_": 2, "cms.l3_": 3})
    assert [(name, steps) for name, _, steps in clock.members] == [("blocks.0.cms.l2_w1", 2), ("blocks.0.cms.l3_w1", 3)]


def test_the_mean_matrix_leaves_out_a_seed_that_diverged_in_a_later_phase():
    nan = math.nan
    finite = [[0.0] * 3, [2.0, 5.0, 6.0], [3.0, 1.5, 6.5], [4.0, 2.5, 1.0]]
    late = [[0.0] * 3, [9.0, 9.0, 9.0], [9.0, 9.0, 9.0], [nan, nan, nan]]  # diverged in phase 3
    m = S.continual_metrics({"sequential": [{"R": finite}, {"R": late}], "joint": []})
    assert m["mean_R"] == finite[1:]


def test_the_warm_up_starts_at_one_step_of_it_and_reaches_the_lr():
    learner = S.Learner(S.Setup(str(S.spec_path("transformer")), 16, 16, 2, 0, lr=1e-3, warmup=4))
    batch = S.language_batch(torch.randint(0, 256, (2, 17)))
    lrs = []
    for _ in range(5):
        learner.step(batch)
        lrs.append(learner.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_the_pages_name_what_the_checker_warns_of_a_model_at_the_studys_settings():
    """MQAR trains at 64 tokens, where HOPE's `mid` cms level (period 64) writes only after the last
    token (W0704): the recall page said nothing of it (a continual-learning researcher's audit)."""
    from nldsl.runtime import studies

    models = {"hope": {"spec": "hope.nl", "dim": 32, "overrides": []},
              "elsewhere": {"spec": "not-a-shipped-spec.nl", "dim": 32, "overrides": []}}
    lines = studies.checker_notes(models, {"MQAR": 64, "passkey": 128}, {"MQAR": 2, "passkey": 2},
                                  {"MQAR": 300, "passkey": 300})
    assert lines[0].startswith("`nldsl check` warns of these models at the study's settings")
    assert [line for line in lines if line.startswith("- ")] == [
        "- `hope` (MQAR, 64 tokens): W0704 at `model.block.cms.mid.period`: period 64 is a whole training "
        "sequence: a cms level reads the weights of its last write, and its one write lands at the end of the "
        "sequence, where nothing in the training sequence reads it."]
    assert studies.checker_notes(models, {"training": 128}, {"training": 2}, {"training": 300}) == []
    # … at the study's steps: HOPE's slow level (4,096 tokens) steps every 32 steps of 2 × 64 tokens
    [short] = [line for line in studies.checker_notes(models, {"MQAR": 64}, {"MQAR": 2}, {"MQAR": 20})
               if "W0711" in line]
    assert short.startswith("- `hope` (MQAR, 64 tokens): W0711 at `model.block.cms.slow.period`: level `slow` is "
                            "stepped every 32 outer steps")

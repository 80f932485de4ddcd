"""Tests of the studies' run logs as --resume and --report-only read them: a logged line that is
JSON but not a result the study can report, a line nested past the parser, a non-finite time, runs
made on other domain texts, a missing control run; and plasticity counted over the seeds of the
mean score matrix."""

from __future__ import annotations

import json
import math

import pytest
from test_studies import REPO, tiny_continual, tiny_recall

from nldsl.cli import UserError
from nldsl.runtime import studies as S

COMMAND = "nldsl bench continual --tiny"


def one_run_log(tmp_path, monkeypatch, **changes):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "c"
    S.run_continual(tiny_continual(**changes), out, COMMAND)
    return out, out / "continual.runs.jsonl"


def malformed(record, result):
    if result == "R_wrong_shape":
        record["result"]["R"] = [[1.0]]
    elif result == "R_strings":
        record["result"]["R"] = "abc"
    elif result == "no_params":
        del record["result"]["params"]
    else:
        record["result"] = result
    return record


@pytest.mark.parametrize("result", [{"seconds": 1.0}, "R_wrong_shape", "R_strings", "no_params"])
def test_report_only_refuses_a_logged_result_it_cannot_report_naming_the_log_and_run(tmp_path, monkeypatch,
                                                                                      result):
    out, log = one_run_log(tmp_path, monkeypatch)
    record = malformed(json.loads(log.read_text().splitlines()[0]), result)
    log.write_text(json.dumps(record) + "\n")
    monkeypatch.setattr(S, "Learner", lambda *a, **k: pytest.fail("--report-only trained a run"))
    with pytest.raises(UserError, match=r"the logged run of sequential transformer\.nl seed 0 .*\(line 1 of "
                                        r".*continual\.runs\.jsonl\) cannot be reported: its "):
        S.run_continual(tiny_continual(), out, COMMAND, report_only=True)


@pytest.mark.parametrize("result", [{"seconds": 1.0}, "R_wrong_shape", "R_strings", "no_params"])
def test_resume_passes_over_a_logged_result_it_cannot_report_and_keeps_the_line(tmp_path, monkeypatch, capsys,
                                                                                  result):
    out, log = one_run_log(tmp_path, monkeypatch)
    record = malformed(json.loads(log.read_text().splitlines()[0]), result)
    log.write_text(json.dumps(record) + "\n")
    capsys.readouterr()
    summary = S.run_continual(tiny_continual(), out, COMMAND, resume=True)
    assert "unreadable line" in capsys.readouterr().err and summary["runs_reused"] == 0  # the run was done again
    skipped = out / "continual.runs.jsonl.skipped"
    assert json.loads(skipped.read_text()) == record  # the line dropped from the log is kept beside it
    [line] = log.read_text().splitlines()
    assert len(json.loads(line)["result"]["R"]) == len(tiny_continual().domains) + 1


def test_a_logged_run_with_non_finite_seconds_is_passed_over(tmp_path, capsys):
    log_file = tmp_path / "continual.runs.jsonl"
    log_file.write_text('{"key": "k", "result": {"seconds": NaN}}\n{"key": "j", "result": {"seconds": -1}}\n'
                        '{"key": "i", "result": {"seconds": 2}}\n')
    assert list(S.RunLog(log_file, resume=True).done) == ["i"]
    assert "passed over 2 unreadable line(s)" in capsys.readouterr().err


def test_a_deeply_nested_log_line_is_passed_over_not_an_internal_error(tmp_path, capsys):
    log_file = tmp_path / "continual.runs.jsonl"
    log_file.write_text("[" * 100_000 + "\n" + json.dumps({"key": "k", "result": {"seconds": 1.0}}) + "\n")
    assert "k" in S.RunLog(log_file, resume=True).done
    assert "unreadable line" in capsys.readouterr().err


def test_plasticity_cells_agree_with_the_mean_score_matrix_diagonal():
    summary = json.loads((REPO / "docs/results/continual.json").read_text())
    entry = summary["models"]["transformer"]
    run = entry["sequential"][1]
    run["R"] = run["R"][:2] + [[math.nan] * 3] * 2  # seed 1 diverged in phase 2: R[docs, docs] stays finite
    run["diverged_at_step"] = 100
    metrics = S.continual_metrics(S.revive(entry))
    for j in range(3):
        assert S.mean_std([p[j] for p in metrics["plasticity"]])[0] == pytest.approx(metrics["mean_R"][j][j])
    assert "(2 of 3 seeds finite)" in S.pm([p[0] for p in metrics["plasticity"]])


def test_report_only_refuses_runs_made_on_other_domain_texts(tmp_path, monkeypatch):
    out, log = one_run_log(tmp_path, monkeypatch, models=("transformer", "hope"))
    lines = log.read_text().splitlines()
    for number, line in enumerate(lines):
        record = json.loads(line)
        key = json.loads(record["key"])
        if key["setup"]["spec"].endswith("hope.nl"):
            for domain in key["domains"]:
                domain["python"] = "3.99.0"
            lines[number] = json.dumps({"key": json.dumps(key, sort_keys=True), "result": record["result"]})
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"read different copies of the domains' texts.*transformer seed 0 "
                                        r"sequential read Python .* but hope seed 0 sequential \(Python 3\.99\.0"):
        S.run_continual(tiny_continual(models=("transformer", "hope")), out, COMMAND, report_only=True)


def test_report_only_names_the_control_when_its_run_is_missing(tmp_path, monkeypatch):
    out, log = one_run_log(tmp_path, monkeypatch, control=True)
    lines = log.read_text().splitlines()
    kept = [line for line in lines if json.loads(json.loads(line)["key"])["setup"]["mlp_lr_scale"] == 1.0]
    assert len(kept) == len(lines) - 1
    log.write_text("\n".join(kept) + "\n")
    with pytest.raises(UserError, match=rf"with its MLP at lr × {S.CONTROL_MLP_LR_SCALE:g} \(the control "
                                        rf"`{S.CONTROL}`, not the plain run\)"):
        S.run_continual(tiny_continual(control=True), out, COMMAND, report_only=True)


@pytest.mark.parametrize("mode", ["resume", "report_only"])
def test_a_logged_recall_result_without_its_test_scores_is_no_internal_error(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    S.run_recall(tiny_recall(), out, "nldsl bench recall --tiny")
    log = out / "recall.runs.jsonl"
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["result"]["tests"] = {}
    log.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    capsys.readouterr()
    if mode == "report_only":
        with pytest.raises(UserError, match=r"the logged run of mqar transformer\.nl .*\(line 1 of .*\) cannot be "
                                            r"reported: its `tests` do not score T="):
            S.run_recall(tiny_recall(), out, "nldsl bench recall --tiny", report_only=True)
    else:
        summary = S.run_recall(tiny_recall(), out, "nldsl bench recall --tiny", resume=True)
        assert summary["runs_reused"] == len(lines) - 1  # only the run without its scores is made again
        assert "unreadable line" in capsys.readouterr().err

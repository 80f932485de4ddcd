"""The benchmark suite's regression guard (`python -m bench smoke`) and the pieces it rests on.

The guard itself traces every shipped spec with dynamo (graph breaks, recompiles on new data) and
compiles Titans with inductor, which takes about a minute on an idle 2-core CPU with a cold compile
cache and several on a loaded one, so it is marked slow.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import harness, profiles, smoke, throughput
from bench.throughput import chunk_steps
from bench.transformer_pp import TransformerConfig, TransformerPP

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    harness.setup_torch(1)
    yield
    torch.set_num_threads(threads)


def test_graph_break_check_passes_on_a_shipped_spec() -> None:
    outcome = smoke.graph_breaks("specs/titans_lmm.nl")
    assert outcome["ok"], outcome
    assert outcome["frames"] == [1, 1, 1]  # one graph, reused for new data


def test_graph_break_check_fails_on_a_graph_break(monkeypatch) -> None:
    from nldsl.runtime import memory

    real = memory.memory_level

    def breaking(*args, **kwargs):
        torch._dynamo.graph_break()
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "memory_level", breaking)
    outcome = smoke.graph_breaks("specs/titans_lmm.nl")
    assert not outcome["ok"] and "graph_break" in outcome["error"], "the break itself is named"
    assert "(at test_bench_smoke.py:" in outcome["error"] and ", in breaking)" in outcome["error"], outcome["error"]
    # the speed check of a spec whose compile fails records the failure and lets the run go on
    timed = smoke.compiled_vs_eager("specs/titans_lmm.nl", smoke.TINY, smoke.TINY_LENGTH, 2, rounds=1)
    assert timed["ok"] is False and "graph_break" in timed["error"]


def test_a_shipped_spec_that_does_not_check_fails_the_guard_rather_than_vanish(tmp_path, monkeypatch) -> None:
    from nldsl.diagnostics import SpecError

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/broken.nl").write_text("model { dim = }\n")
    monkeypatch.setattr(harness, "ROOT", tmp_path)
    with pytest.raises(SpecError):
        harness.model_specs()


def test_recompiling_on_new_data_fails_the_graph_check(monkeypatch) -> None:
    from nldsl.runtime import memory

    real = memory.memory_level
    calls = iter(range(100))

    def recompiling(*args, **kwargs):
        outputs, state = real(*args, **kwargs)
        return outputs * (1.0 + 0.0 * next(calls)), state  # a new Python constant each call: a guard fails

    monkeypatch.setattr(memory, "memory_level", recompiling)
    outcome = smoke.graph_breaks("specs/titans_lmm.nl")
    assert not outcome["ok"] and outcome["frames"][-1] > 1, outcome


def test_chunk_bodies_are_checked_for_specs_that_compile_them() -> None:
    outcome = smoke.graph_breaks("specs/hope.nl")
    assert outcome["ok"], outcome
    assert outcome["chunk_body_graphs"] and len(set(outcome["chunk_body_graphs"])) == 1


def test_speed_check_skips_a_spec_that_trains_eagerly() -> None:
    outcome = smoke.compiled_vs_eager("specs/transformer.nl", ["model.dim=32", "train.compile=false"], 16, 1, 1)
    assert outcome["ok"] and "skipped" in outcome


def test_speed_check_fails_when_compiled_is_slower(monkeypatch) -> None:
    calls = iter([1.0, 2.0] * 10)
    monkeypatch.setattr(smoke, "alternate", lambda contenders, rounds: {"eager": next(calls), "compiled": next(calls)})
    monkeypatch.setattr(smoke, "TrainStep", lambda model, optimizer, compiled=False: (lambda tokens, targets: None))
    outcome = smoke.compiled_vs_eager("specs/transformer.nl", ["model.dim=32"], 16, 1, rounds=1)
    assert not outcome["ok"] and outcome["compiled_over_eager"] == pytest.approx(2.0)


def test_hand_written_transformer_matches_the_spec_parameter_count() -> None:
    model, _ = harness.build("specs/transformer.nl", ["model.dim=64"], seq_len=32)
    hand = TransformerPP(TransformerConfig(dim=64, layers=model.spec.model.layers, heads=4))
    assert harness.parameter_count(hand) == harness.parameter_count(model)
    tokens, targets = harness.random_tokens(2, 33, 256)
    math = TransformerPP(TransformerConfig(dim=64, layers=1, heads=4, attention="math"))
    fused = TransformerPP(TransformerConfig(dim=64, layers=1, heads=4))
    fused.load_state_dict(math.state_dict())
    torch.testing.assert_close(math.loss(tokens, targets), fused.loss(tokens, targets), rtol=1e-5, atol=1e-5)


def _profile_summary(text: str) -> tuple[float, list[float], list[float], str]:
    """A step profile's milliseconds a step, top five shares and their calls a step, and its table."""
    summary, table = text.split("\n", 1)
    found = re.fullmatch(r"([\d.]+) ms of self CPU time a step; largest shares by operator, all shapes together: (.*)",
                         summary)
    assert found, summary
    parts = re.findall(r" ([\d.]+)% \(([\d,]+) calls? a step\)", found.group(2))
    return (float(found.group(1)), [float(share) for share, _ in parts],
            [float(calls.replace(",", "")) for _, calls in parts], table)


def test_step_profile_leads_with_each_operator_share_over_all_shapes() -> None:
    text = profiles.profile_step("specs/transformer.nl", smoke.TINY, smoke.TINY_LENGTH, 1, compiled=False)
    milliseconds, shares, _, table = _profile_summary(text)
    assert milliseconds > 0
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert "Self CPU" in table


@pytest.mark.slow
def test_titans_layer_profile_counts_calls_per_step_of_the_compiled_layer() -> None:
    """The profile behind the Titans target: the compiled layer's products, per step over several steps."""
    text = profiles.titans_layer(width=16, heads=2, chunk=4, length=8, batch=1)
    milliseconds, shares, calls, table = _profile_summary(text)
    assert milliseconds > 0 and len(shares) == 5 and shares == sorted(shares, reverse=True)
    assert all(count >= 1 for count in calls)
    assert "Call CompiledFxGraph" in table and "aten::bmm" in table  # compiled whole; per-head products


def test_flop_count_of_a_linear_layer_and_causal_attention() -> None:
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    flops, _ = harness.count_flops(lambda: layer(x).sum().backward())
    assert flops == 3 * (2 * 3 * 8 * 4)  # forward, grad of the input, grad of the weight
    model, _ = harness.build("specs/transformer.nl", ["model.dim=32"], seq_len=16)
    pairs = 16 * 17 / 2
    assert harness.attention_flops(model, 1, 16) == 3 * 2 * 2 * pairs * 32 * model.spec.model.layers



def test_largest_products_ranks_matrix_products_by_flops() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    c, d = torch.randn(2, 4, 8), torch.randn(2, 8, 5)
    bias = torch.randn(3)
    ranked = harness.largest_products(lambda: (a @ b, torch.bmm(c, d), c @ d, torch.addmm(bias, a, b)), top=3)
    assert ranked == [{"product": "bmm [2, 4, 8] × [2, 8, 5]", "flops": 2 * 2 * 2 * 4 * 8 * 5, "calls": 2},
                      {"product": "mm [4, 8] × [8, 3]", "flops": 2 * 4 * 8 * 3, "calls": 1},
                      {"product": "addmm [4, 8] × [8, 3]", "flops": 2 * 4 * 8 * 3, "calls": 1}]

def test_chunk_steps_counts_every_unrolled_chunk() -> None:
    model, _ = harness.build("specs/titans_lmm.nl", seq_len=64)
    assert chunk_steps(model, 64) == 4 * model.spec.model.layers  # period 16
    transformer, _ = harness.build("specs/transformer.nl", seq_len=64)
    assert chunk_steps(transformer, 64) == 0


def test_training_throughput_interleaves_the_modes_and_records_a_failing_one(monkeypatch) -> None:
    order = []
    real_step = harness.TrainStep

    class Recorded(real_step):  # eager steps that log their mode's name; "broken" fails
        def __post_init__(self) -> None:
            self.name, self.compiled = self.compiled, False
            super().__post_init__()

        def __call__(self, tokens, targets):
            order.append(self.name)
            if self.name == "broken":
                raise RuntimeError("cannot compile this")
            return super().__call__(tokens, targets)

    monkeypatch.setattr(throughput, "TrainStep", Recorded)
    monkeypatch.setattr(throughput, "COMPILE_MODES", {name: name for name in ("eager", "other", "broken")})
    points = throughput.measure_modes("specs/transformer.nl", 32, 2, ["eager", "other", "broken"], repeats=3)
    assert points["broken"] == {"error": "RuntimeError: cannot compile this"}
    for mode in ("eager", "other"):
        assert points[mode]["interleaved"] and len(points[mode]["all_seconds"]) == 3
        assert points[mode]["tokens_per_second"] == pytest.approx(64 / points[mode]["step_seconds"])
    # the first calls, one warm-up each, then three rounds with the two modes in turn
    assert order == ["eager", "other", "broken", "eager", "other"] + ["eager", "other"] * 3


@pytest.mark.slow
def test_bench_smoke_passes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "NLDSL_BENCH_RESULTS": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_report_tables_growth_per_4x_length_and_rounds_values() -> None:
    from bench import report

    points = [{"target": "m", "length": t, "step_mib": mib} for t, mib in [(512, 10.0), (1024, 21.0), (2048, 40.0)]]
    row = report.memory_section({"points": points})[-1]
    assert row.endswith("| 4.0× | not recorded |")  # 512 → 2048 only: 1024 has no 4096 beside it; no date
    assert report._readable("speedup", 8.1237) == "8.12×"
    assert report._readable("seconds", {"a": 1.02392}) == "a 1.024 s"
    assert report._readable("max_relative_output_difference", 4.53e-07) == "4.5e-07"
    assert report._readable("flops_per_step", {"nldsl": 49.09e9}) == "nldsl 49.1 GFLOP"
    assert report._readable("matmul_peak", 87.7e9) == "87.7 GFLOP/s"


def test_report_states_the_nested_learning_ratio_ceiling() -> None:
    from bench import report

    measured = {"speedup_vs_nested_learning": 6.3, "speedup_ceiling": 24.46,
                "flops_per_step": {"nldsl": 49.1e9, "nested_learning": 397e9}}
    rows = report.targets_section({"comparisons": {"hope_nested_learning": measured}}, None, None)
    row = next(line for line in rows if "nested-learning" in line)
    assert "6.3× (ceiling at the measured matmul peak 24.5×: nldsl counts 49 GFLOP a step, nested-learning 397)" in row
    assert "missed" in row
    assert report.nested_learning_ceiling({"speedup_vs_nested_learning": 6.3}) == ""  # an older result: no ceiling


def test_report_puts_the_ratio_against_nested_learnings_defaults_beside_the_matched_one() -> None:
    from bench import report

    measured = {"speedup_vs_nested_learning": 6.3, "speedup_vs_nested_learning_defaults": 8.04,
                "speedup_ceiling": 24.46, "flops_per_step": {"nldsl": 49.1e9, "nested_learning": 397e9}}
    rows = report.targets_section({"comparisons": {"hope_nested_learning": measured}}, None, None)
    row = next(line for line in rows if "nested-learning" in line)
    assert "| 6.3× (ceiling" in row
    assert "nested-learning 397; against nested-learning at its default chunk size 1: 8.0×)" in row
    assert "missed" in row  # the matched ratio decides the target
    assert report.nested_learning_ceiling({"speedup_vs_nested_learning_defaults": 8.04}) == \
        " (against nested-learning at its default chunk size 1: 8.0×)"


def test_report_states_the_matmul_peak_beside_the_hope_over_transformer_ratio() -> None:
    """The ratio moves with the machine's matmul speed (Transformer++'s step is matmul-bound, HOPE's is
    not), so its row names the peak read in the same run; a result from before the peak was kept has none."""
    from bench import report

    def row(measured: dict) -> str:
        rows = report.targets_section({"comparisons": {"hope_transformer": measured}}, None, None)
        return next(line for line in rows if "Transformer++ tokens/s" in line)

    assert "| 0.4250× (matmul peak 88.5 GFLOP/s)" in row({"hope_over_transformer": 0.425, "matmul_peak": 88.5e9})
    assert "| met |" in row({"hope_over_transformer": 0.425, "matmul_peak": 88.5e9})
    older = row({"hope_over_transformer": 0.2995})
    assert "| 0.2995× |" in older and "matmul peak" not in older and "| missed |" in older


def test_hope_over_transformer_row_names_the_ratio_at_each_batch() -> None:
    """A run over several batches takes each model's fastest step; its row shows the ratio at each batch."""
    from bench import report

    rows = report.targets_section({"comparisons": {"hope_transformer": {
        "hope_over_transformer": 0.3274, "hope_over_transformer_by_batch": {"batch 2": 0.2484, "batch 8": 0.3274},
        "matmul_peak": 180e9}}}, None, None)
    row = next(line for line in rows if "Transformer++ tokens/s" in line)
    assert "| 0.3274× (each model at its fastest batch; batch 2: 0.2484×, batch 8: 0.3274×) (matmul peak" in row
    assert "| met |" in row


def test_hope_transformer_takes_each_model_s_fastest_batch(monkeypatch) -> None:
    """The ratio is best HOPE over best Transformer++, and each batch's ratio compares that batch's steps."""
    from bench import peers

    class Model:
        spec = type("Spec", (), {"model": type("M", (), {"vocab": 256})})()

    monkeypatch.setattr(peers, "build", lambda spec, overrides=(), seq_len=None: (Model(), None))
    monkeypatch.setattr(peers, "TrainStep", lambda *args, **kwargs: None)
    monkeypatch.setattr(peers, "random_tokens", lambda batch, length, vocab: (batch, None))
    monkeypatch.setattr(peers, "parameter_count", lambda model: 1)
    monkeypatch.setattr(peers, "matmul_peak", lambda: 1e11)
    step_seconds = {"hope_chunks": {2: 4.0, 8: 8.0}, "hope_chunks_grouped": {2: 3.0, 8: 9.0},
                    "transformer_eager": {2: 1.0, 8: 4.0}, "transformer_compiled": {2: 0.75, 8: 3.2},
                    "hope_eager": {2: 6.0, 8: 30.0}}

    def alternate(contenders, rounds, warmup):
        return {name: step_seconds[name.split(",")[0]][int(name.rsplit(" ", 1)[1])] for name in contenders}

    monkeypatch.setattr(peers, "alternate", alternate)
    result = peers.hope_transformer(length=2048, batches=(2, 8), rounds=1)
    speeds = result["tokens_per_second"]
    assert speeds["hope_chunks, batch 8"] == 8 * 2048 / 8.0
    best_hope, best_transformer = 8 * 2048 / 8.0, 2 * 2048 / 0.75
    assert result["hope_over_transformer"] == pytest.approx(best_hope / best_transformer)
    assert result["hope_over_transformer_by_batch"] == pytest.approx(
        {"batch 2": (2 * 2048 / 3.0) / best_transformer, "batch 8": best_hope / (8 * 2048 / 3.2)})


def test_every_peer_comparison_keeps_the_matmul_peak_and_every_target_row_states_it(results, monkeypatch) -> None:
    """A comparison that reads the peak during its rounds keeps its own; the others get one read after them."""
    from bench import peers, report

    monkeypatch.setattr(peers, "COMPARISONS", {"titans_layer": lambda: {"speedup_vs_titans_pytorch": {
        "nldsl_compiled": 2.76, "nldsl_eager": 1.2}}, "hope_transformer": lambda: {
        "hope_over_transformer": 0.425, "matmul_peak": 88.5e9}})
    monkeypatch.setattr(peers, "matmul_peak", lambda: 90.04e9)
    comparisons = peers.run(None, fresh=False)["comparisons"]
    assert comparisons["titans_layer"]["matmul_peak"] == 90.04e9
    assert comparisons["hope_transformer"]["matmul_peak"] == 88.5e9
    comparisons["memory_reference"] = {"speedup": 42.5, "matmul_peak": 87.0e9}
    comparisons["hope_nested_learning"] = {"speedup_vs_nested_learning": 8.4, "speedup_ceiling": 21.9,
                                           "flops_per_step": {"nldsl": 49.1e9, "nested_learning": 397e9},
                                           "matmul_peak": 89.7e9}
    mfu = {"runs": [{"config": {"dim": 512, "length": 2048}, "peak_flops": 87.1e9,
                     "steps": {"transformer_compiled": {"mfu": 0.866}, "hand_transformer_compiled": {"mfu": 0.824}}}]}
    page = "\n".join(report.targets_section({"comparisons": comparisons}, mfu, None))
    assert "| 2.76× (eager 1.20×) (matmul peak 90.0 GFLOP/s)" in page
    assert "| 0.4250× (matmul peak 88.5 GFLOP/s)" in page
    assert "| 42.5× (matmul peak 87.0 GFLOP/s)" in page
    assert "| 8.4× (ceiling at the measured matmul peak (89.7 GFLOP/s) 21.9×: nldsl counts 49 GFLOP" in page
    assert "| 86.6% of 87.1 GFLOP/s (hand-written: 82.4%) | met |" in page


def test_a_mistake_on_the_bench_command_line_is_one_message_not_a_traceback(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    for args, expected in ((["train", "--specs", "nowhere.nl"], "error[E0105]"),
                           (["report", "--notes", str(tmp_path / "missing.md")], "No such file or directory")):
        done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=root, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr


# The suite's own bookkeeping: results kept across runs, mistakes refused up front. None of these measure
# anything: the timing functions are replaced, the results go to tmp_path.

@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def test_a_failed_peer_comparison_keeps_the_earlier_measurement(results, monkeypatch, capsys) -> None:
    from bench import peers

    outcomes = iter([{"tokens_per_second": {"a": 1.0}}, RuntimeError("peer broke")])

    def comparison():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(peers, "COMPARISONS", {"floor": comparison})
    monkeypatch.setattr(peers, "matmul_peak", lambda: 1e9)
    peers.run(["floor"], fresh=False)
    result = peers.run(["floor"], fresh=False)
    assert result["comparisons"]["floor"]["tokens_per_second"] == {"a": 1.0}
    assert result["failures"]["floor"]["error"] == "RuntimeError: peer broke"
    assert "FAILED, RuntimeError: peer broke (the earlier measurement is kept)" in capsys.readouterr().out
    from bench import report

    page = "\n".join(report.peers_section(harness.read_result("peers")))
    assert "failed" in page and "peer broke" in page and "| a | 1 |" in page


def test_peers_exits_nonzero_when_a_comparison_asked_for_fails(results, monkeypatch, capsys) -> None:
    import argparse

    from bench import peers

    def broken():
        raise RuntimeError("peer broke")

    monkeypatch.setattr(peers, "COMPARISONS", {"floor": lambda: {"tokens_per_second": {"a": 1.0}},
                                               "other": broken})
    monkeypatch.setattr(peers, "matmul_peak", lambda: 1e9)
    assert peers.main(argparse.Namespace(only=["floor"], fresh=False)) == 0
    assert peers.main(argparse.Namespace(only=None, fresh=False)) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "peers: 1 of 2 comparisons failed: other"
    # a failure kept beside an earlier measurement still fails the run
    monkeypatch.setattr(peers, "COMPARISONS", {"floor": broken})
    assert peers.main(argparse.Namespace(only=["floor"], fresh=False)) == 1


def test_a_missing_peer_package_is_one_line_naming_what_to_install(results, monkeypatch, capsys) -> None:
    from bench import peers, report

    def needs_titans():
        raise ModuleNotFoundError("No module named 'titans_pytorch'", name="titans_pytorch")

    monkeypatch.setattr(peers, "COMPARISONS", {"titans_layer": needs_titans})
    outcome = peers.run(None, fresh=False)["comparisons"]["titans_layer"]
    expected = ("titans_pytorch is not installed: pip install 'titans-pytorch==0.5.5' "
                "(or every peer: pip install -e '.[bench]')")
    assert outcome["error"] == expected and "traceback" not in outcome
    assert capsys.readouterr().out.splitlines()[-1] == f"peers titans_layer: FAILED, {expected}"
    # a result written before this change holds the bare error; the page shows the same line
    old = {"comparisons": {"fla": {"error": "ModuleNotFoundError: No module named 'fla'", "traceback": ["..."]}}}
    assert "Could not run: `fla is not installed: pip install 'fla-core==0.6.0'" in "\n".join(report.peers_section(old))


def test_fresh_drops_only_the_points_measured_now_and_errors_are_retried(results, monkeypatch) -> None:
    from bench import peak_memory

    measured = []

    def measure(target, length, timeout, threads=1):
        measured.append((target, length))
        return {"error": "timed out"} if length == 64 and len(measured) == 1 else {"step_mib": float(length)}

    monkeypatch.setattr(peak_memory, "measure", measure)
    peak_memory.run(["./specs/transformer.nl"], [64, 128], 10.0, fresh=False)
    peak_memory.run(["specs/transformer.nl"], [64, 128], 10.0, fresh=False)  # the same spec: only the error reruns
    assert measured == [("specs/transformer.nl", 64), ("specs/transformer.nl", 128), ("specs/transformer.nl", 64)]
    peak_memory.run(["specs/titans_lmm.nl"], [64], 10.0, fresh=True)  # another target: the others stay
    points = harness.read_result("memory")["points"]
    assert sorted((p["target"], p["length"]) for p in points) == [
        ("specs/titans_lmm.nl", 64), ("specs/transformer.nl", 64), ("specs/transformer.nl", 128)]
    assert all("error" not in p for p in points)


def test_chunk_sweep_fresh_keeps_other_points_and_mfu_fresh_keeps_other_sizes(results, monkeypatch) -> None:
    from bench import chunk_sweep

    harness.write_result("chunks", {"machine": {}, "length": 8, "batch": 1, "steps": 1, "train_length": 8,
                                    "train_batch": 1, "points": [{"model": "titans", "chunk": 4, "eval_loss": 1.0},
                                                                 {"model": "hope", "chunk": 4, "eval_loss": 2.0}]})
    monkeypatch.setattr(chunk_sweep, "corpus", lambda: None)
    monkeypatch.setattr(chunk_sweep, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no model")))
    result = chunk_sweep.run(["titans"], [4], 8, 1, 1, 8, 1, 1, 1, fresh=True)
    assert [(p["model"], "error" in p) for p in result["points"]] == [("hope", False), ("titans", True)]


def test_a_spec_path_is_one_key_however_it_is_spelled() -> None:
    assert harness.spec_key("./specs/transformer.nl") == harness.spec_key("specs/transformer.nl") == \
        harness.spec_key(str(REPO / "specs" / ".." / "specs" / "transformer.nl")) == "specs/transformer.nl"


@pytest.mark.parametrize("argv, message", [
    (["train", "--lengths", "0"], "argument --lengths: must be at least 1, got 0"),
    (["train", "--lengths", "-5"], "argument --lengths: must be at least 1, got -5"),
    (["train", "--modes", "eager,fast"], "unknown mode 'fast': choose from eager, compiled, chunks"),
    (["train", "--modes", ""], "no mode given: choose from eager, compiled, chunks"),
    (["train", "--repeats", "0"], "argument --repeats: must be at least 1"),
    (["mfu", "--rounds", "0"], "argument --rounds: must be at least 1"),
    (["chunks", "--eval", "0"], "argument --eval: must be at least 1"),
    (["chunks", "--chunks", "-4"], "argument --chunks: must be at least 1"),
    (["memory", "--timeout", "0"], "argument --timeout: must be a number > 0"),
    (["--threads", "0", "train"], "argument --threads: must be at least 1"),
    (["train", "--threads", "0"], "argument --threads: must be at least 1"),
    (["gpu", "--device", "nosuch"], "argument --device: not a device: 'nosuch'"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_on_a_machine_without_cuda_says_so(capsys) -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["gpu", "--device", "cuda"])
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_the_gpu_suites_kernel_profile_sums_and_ranks_what_it_counts() -> None:
    """The GPU suite's profile counts device kernels; counting CPU operators exercises the same code here."""
    from torch.autograd import DeviceType

    from bench import gpu

    a, b = torch.randn(256, 256), torch.randn(256, 256)
    kernels = gpu.kernel_profile(lambda: [a @ b for _ in range(5)], step_seconds=10.0, kernels=DeviceType.CPU)
    mm = next(kernel for kernel in kernels["largest"] if kernel["name"] == "aten::mm")
    assert mm["calls"] == 5 and 0 < mm["seconds"] <= kernels["kernel_seconds"]
    assert kernels["launches"] >= 5 and kernels["busy_fraction"] == pytest.approx(kernels["kernel_seconds"] / 10.0)
    page = "\n".join(gpu.render_kernels({"hope": {"kernels": kernels}, "transformer": {"kernels": {"skipped": "x"}}}))
    assert f"**hope**: {kernels['launches']:,} kernels" in page and "| `aten::mm` |" in page
    assert "transformer" not in page
    nothing = gpu.kernel_profile(lambda: None, step_seconds=1.0, kernels=DeviceType.CPU)
    assert nothing == {"skipped": "the profiler recorded no device kernel"}  # not "0 kernels, GPU idle"


def test_a_spec_without_a_model_is_refused_up_front(results, monkeypatch) -> None:
    from bench import mfu, peak_memory
    from nldsl.cli import UserError
    from nldsl.diagnostics import SpecError

    monkeypatch.setattr(peak_memory, "measure", lambda *a: pytest.fail("a child process was started"))
    for run in (lambda s: throughput.run([s], [32], ["eager"], 64, 1, 10, False),
                lambda s: peak_memory.run([s], [32], 1.0, False),
                lambda s: mfu.run([s], 32, 4, 1, 16, 1, 1, False),
                lambda s: smoke.run([s], []),):
        with pytest.raises(UserError, match=r"specs/optimizers/adamw\.nl defines no model"):
            run("specs/optimizers/adamw.nl")
    with pytest.raises(SpecError, match="check the path"):
        peak_memory.run(["nowhere.nl"], [32], 1.0, False)
    with pytest.raises(UserError, match="write SPEC:recompute=N"):
        peak_memory.run(["specs/hope.nl:recompute=x"], [32], 1.0, False)
    assert not results.exists()  # no error "results"


@pytest.mark.parametrize("text", ["", '{"points": [', '{"machine": {}, "points": []}', "[]"])
def test_a_damaged_results_file_is_one_error_naming_it_and_fresh_moves_it_aside(results, monkeypatch, text) -> None:
    from nldsl.cli import UserError

    results.mkdir()
    (results / "train.json").write_text(text)
    monkeypatch.setattr(throughput, "measure_modes", lambda spec, length, batch, modes, repeats:
                        {mode: {"tokens_per_second": 1.0} for mode in modes})
    with pytest.raises(UserError, match=r"train\.json .*: move it away, or rerun `python -m bench train --fresh`"):
        throughput.run(["specs/transformer.nl"], [32], ["eager"], 64, 1, 10, False)
    result = throughput.run(["specs/transformer.nl"], [32], ["eager"], 64, 1, 10, True)
    assert len(result["points"]) == 1
    assert [p.read_text() for p in results.glob("train.damaged-*.json")] == [text]  # kept, not deleted


def test_the_token_budget_message_names_the_file_in_use(results) -> None:
    from nldsl.cli import UserError

    harness.write_result("train", {"machine": {}, "token_budget": 128, "points": [
        {"spec": "specs/transformer.nl", "length": 32, "mode": "eager", "tokens_per_second": 1.0}]})
    with pytest.raises(UserError, match=str(results / "train.json")):
        throughput.run(["specs/transformer.nl"], [32], ["eager"], 64, 1, 10, False)


def test_report_skips_malformed_points_and_refuses_a_damaged_file(results, tmp_path, monkeypatch, capsys) -> None:
    from bench import report
    from nldsl.cli import UserError

    monkeypatch.setattr(report, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(report, "PAGE", tmp_path / "docs" / "performance.md")
    harness.write_result("memory", {"points": [{"target": "m", "length": 512, "step_mib": 3.0}, {"length": 2}, 7]})
    page = report.write().read_text()
    assert "| m | 3 MiB |" in page
    assert "memory.json: skipped 2 malformed point(s)" in capsys.readouterr().err
    (results / "train.json").write_text('{"points": []}')
    with pytest.raises(UserError, match="has no `token_budget` field"):
        report.write()


def test_report_without_matplotlib_names_the_package(results, tmp_path, monkeypatch) -> None:
    from bench import report
    from nldsl.cli import UserError

    monkeypatch.setattr(report, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(report, "PAGE", tmp_path / "docs" / "performance.md")
    real = report.importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib"
                        else real(name, *a))
    harness.write_result("memory", {"points": []})
    with pytest.raises(UserError, match=r"matplotlib, which is not installed: pip install -e '\.\[plot\]'"):
        report.write()
    assert not (tmp_path / "docs" / "performance.md").exists()


def test_nldsl_bench_speed_takes_threads_and_names_itself(monkeypatch, capsys, request) -> None:
    from nldsl.cli import main

    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))  # the suite sets 2

    seen = {}
    monkeypatch.setattr(throughput, "run", lambda *args: seen.update(threads=torch.get_num_threads(), args=args))
    assert main(["bench", "speed", "--threads", "2", "--specs", "specs/transformer.nl", "--lengths", "32"]) == 0
    assert seen["threads"] == 2 and seen["args"][1] == [32]
    with pytest.raises(SystemExit):
        main(["bench", "speed", "--lengths", "0"])
    assert "nldsl bench speed: error: argument --lengths: must be at least 1" in capsys.readouterr().err


def test_precision_reports_the_bfloat16_error_per_window(results, monkeypatch) -> None:
    import json

    from bench import precision

    result = precision.run(["specs/titans_lmm.nl"], length=64)
    [point] = result["points"]
    assert len(point["autocast"]) == len(point["cast"]) == precision.WINDOWS
    # bfloat16 keeps ~3 digits: an error near 1e-2, not the 0 of a float64 run or the 1 of a broken one
    assert all(0 < error < 0.05 for error in point["autocast"] + point["cast"])
    assert json.loads((results / "precision.json").read_text())["points"] == result["points"]


# The audit of the suite (smoke's partial runs, the MFU row's size, timing and dates on the page, the GPU
# suite's failures and labels, output checked before measuring, option names in messages).

TWO_SPECS = ["specs/transformer.nl", "specs/titans_lmm.nl"]


def fake_smoke(monkeypatch, ratios: dict[str, float]) -> None:
    """smoke.run over TWO_SPECS (the shipped specs for it) with the checks replaced: nothing compiles."""
    monkeypatch.setattr(smoke, "model_specs", lambda: list(TWO_SPECS))
    monkeypatch.setattr(smoke, "graph_breaks", lambda spec: {"ok": True, "frames": [1, 1, 1]})
    monkeypatch.setattr(smoke, "compiled_vs_eager", lambda spec, *a: {
        "ok": True, "mode": "whole graph", "eager_seconds": 1.0, "compiled_seconds": ratios[spec],
        "compiled_over_eager": ratios[spec], "compile_seconds": 1.0})


def smoke_row(stored: dict | None) -> str:
    from bench import report

    return next(line for line in report.targets_section(None, None, None, stored) if "smoke size" in line)


def test_a_partial_smoke_run_keeps_the_full_speed_check_for_the_targets_row(results, monkeypatch) -> None:
    fake_smoke(monkeypatch, {"specs/transformer.nl": 0.8, "specs/titans_lmm.nl": 1.2})
    smoke.run(timed=list(TWO_SPECS))  # --timed all
    full = smoke_row(harness.read_result("smoke"))
    assert "| 1/2 specs (not faster: specs/titans_lmm.nl); run of " in full and "| missed |" in full
    fake_smoke(monkeypatch, {"specs/transformer.nl": 0.8, "specs/titans_lmm.nl": 0.5})
    stored = smoke.run()  # the default: times specs/titans_lmm.nl only
    assert list(stored["speed"]) == ["specs/titans_lmm.nl"]
    assert smoke_row(stored) == full  # not "1/1 specs | met"
    from bench import report

    assert "The Targets row reads the last run that timed every shipped spec" in "\n".join(
        report.smoke_section(stored))


def test_a_timed_spec_outside_specs_is_graph_checked_too(results, monkeypatch) -> None:
    fake_smoke(monkeypatch, {"specs/transformer.nl": 0.8, "specs/titans_lmm.nl": 0.5})
    stored = smoke.run(["specs/transformer.nl"], ["specs/titans_lmm.nl"])
    assert list(stored["graph_breaks"]) == TWO_SPECS and list(stored["speed"]) == ["specs/titans_lmm.nl"]


def test_a_smoke_run_that_timed_some_specs_is_no_targets_result(results, monkeypatch) -> None:
    fake_smoke(monkeypatch, {"specs/transformer.nl": 0.8, "specs/titans_lmm.nl": 0.5})
    row = smoke_row(smoke.run())
    assert "the stored run timed only specs/titans_lmm.nl" in row and "| not measured |" in row
    # a file written before the full check was kept apart: a run that timed every spec it checked is one
    old = {"graph_breaks": {s: {"ok": True} for s in TWO_SPECS}, "ok": True, "seconds": 1.0, "tolerance": 1.3,
           "speed": {s: {"compiled_over_eager": r} for s, r in zip(TWO_SPECS, (0.8, 1.1), strict=True)}}
    assert smoke_row(old).startswith("| compiled step faster than eager at the smoke size, each spec in its "
                                     "train.compile mode | 1/2 specs (not faster: specs/titans_lmm.nl) | missed |")


def test_smoke_states_its_tolerance_and_the_page_says_which_threshold_is_which() -> None:
    from bench import report

    assert f"{smoke.SLOWDOWN_TOLERANCE}×" in smoke.__doc__.splitlines()[0]
    stored = {"graph_breaks": {}, "ok": True, "seconds": 1.0, "tolerance": 1.3,
              "speed": {"specs/titans_lmm.nl": {"compiled_over_eager": 1.2, "eager_seconds": 1.0,
                                                "compiled_seconds": 1.2, "compile_seconds": 1.0}}}
    page = "\n".join(report.smoke_section(stored))
    assert "at most 1.3× the eager one" in page and "compiled faster than eager (below 1.0×)" in page
    assert "| 1.20 | 1.0 | ok | missed |" in page


def test_the_mfu_target_reads_the_latest_run_at_its_size() -> None:
    from bench import report

    def run(dim: int, mfu: float) -> dict:
        steps = {"transformer_compiled": {"mfu": mfu}, "hand_transformer_compiled": {"mfu": 0.6}}
        return {"config": {"dim": dim, "length": 2048}, "steps": steps}

    def row(runs: list[dict]) -> str:
        return next(line for line in report.targets_section(None, {"runs": runs}, None) if "matmul peak" in line)

    assert "| 57.0% (hand-written: 60.0%) | met |" in row([run(512, 0.57), run(256, 0.2)])
    assert "| — (no run at d 512, T 2048) | not measured |" in row([run(256, 0.9)])


def test_the_training_table_says_how_each_point_was_timed() -> None:
    from bench import report

    def point(mode: str, seconds: list[float], **extra) -> dict:
        return {"spec": "specs/x.nl", "length": 64, "mode": mode, "all_seconds": seconds,
                "tokens_per_second": 64 / min(seconds), **extra}

    old = {"token_budget": 64, "points": [point("eager", [1.0, 2.0]), point("compiled", [0.5, 0.6])]}
    assert "| 2 steps, back to back, spread 2.00× |" in report.train_section(old)[-1]
    new = {"token_budget": 64, "points": [point("eager", [1.0] * 3, interleaved=True),
                                          point("compiled", [0.5] * 3, interleaved=True)]}
    assert "| 3 steps, interleaved, spread 1.00× |" in report.train_section(new)[-1]
    row = next(line for line in report.targets_section(None, None, old) if "torch.compile" in line)
    assert "1 of the 1 not timed interleaved in one run" in row


def test_the_page_dates_each_entry_and_says_when_an_old_one_is_not_recorded() -> None:
    from bench import report

    stamped = {"config": "c", "tokens_per_second": {"a": 1.0}, "measured": "2026-12-05 10:00:00", "threads": 2}
    page = "\n".join(report.peers_section({"comparisons": {"new": stamped, "old": {"config": "c"}}}))
    assert "measured: 2026-12-05 10:00:00, 2 thread(s)." in page and "measured: not recorded." in page
    memory = {"points": [{"target": "m", "length": 512, "step_mib": 3.0},
                         {"target": "n", "length": 512, "step_mib": 3.0, "measured": "2026-12-05 11:00:00",
                          "threads": 1}]}
    rows = report.memory_section(memory)
    assert rows[-2].endswith("| not recorded |") and rows[-1].endswith("| 2026-12-05 11:00:00, 1 thread(s) |")
    chunks = {"length": 8, "batch": 1, "steps": 1, "train_length": 8, "train_batch": 1, "points": [
        {"model": "titans", "chunk": 4, "tokens_per_second": 1.0, "eval_loss": 1.0, "train_loss": 1.0}]}
    assert "| 4 | 1 | not recorded | 1.000 | 1.000 | not recorded |" in report.chunks_section(chunks)[-1]


def test_memory_points_are_stamped_and_measured_on_the_threads_asked_for(results, monkeypatch) -> None:
    from bench import peak_memory

    commands = []

    class Done:
        stdout, stderr = 'RESULT{"step_mib": 1.0}', ""

    real = subprocess.run

    def run(command, **kwargs):  # only the child of a point is faked (torch may start processes of its own)
        if "from bench.peak_memory import child" not in command[-1]:
            return real(command, **kwargs)
        commands.append(command)
        return Done()

    monkeypatch.setattr(peak_memory.subprocess, "run", run)
    [point] = peak_memory.run(["specs/transformer.nl"], [64], 10.0, fresh=False, threads=2)["points"]
    assert len(commands) == 1 and "child('specs/transformer.nl', 64, 2)" in commands[0][-1]
    assert point["threads"] == 2 and point["measured"] and point["step_mib"] == 1.0


def test_the_gpu_suite_records_out_of_memory_per_model_and_goes_on(results, tmp_path, monkeypatch) -> None:
    from bench import gpu

    def measure_model(spec, *args, **kwargs):
        if "transformer" in spec:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB. Of the allocated ...")
        return {"compiled": "chunks", "recompute": 16, "parameters": 1, "tokens_per_second": 2.0, "step_seconds": 1.0,
                "first_step_seconds": 1.0, "mfu": 0.1, "kernels": {"skipped": "cpu"}}

    monkeypatch.setattr(gpu, "measure_model", measure_model)
    monkeypatch.setattr(gpu, "matmul_peak", lambda **kw: 1e9)
    monkeypatch.setattr(gpu, "equal_parameter_layers", lambda *a: (1, 1))
    run = gpu.Run("cpu", 1000.0, tmp_path / "page.md", "gpu_tiny")
    gpu.throughput(run, gpu.TINY, "chunks", 16)
    models = harness.read_result("gpu_tiny")["phases"]["throughput"]["models"]
    assert models["transformer"]["error"] == "CUDA out of memory. Tried to allocate 9.00 GiB"
    assert models["hope"]["tokens_per_second"] == 2.0
    page = (tmp_path / "page.md").read_text()
    assert "| transformer | compiled, failed: CUDA out of memory. Tried to allocate 9.00 GiB |" in page


def test_the_gpu_suite_halves_the_batch_of_a_model_out_of_memory_and_says_so(results, tmp_path, monkeypatch) -> None:
    from bench import gpu

    batches = []

    def measure_model(spec, overrides, length, batch, *args, **kwargs):
        batches.append((spec, batch))
        if "hope" in spec and batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return {"compiled": "chunks", "recompute": 16, "parameters": 1, "tokens_per_second": 10.0 * batch,
                "step_seconds": 1.0, "first_step_seconds": 1.0, "mfu": 0.5, "kernels": {"skipped": "cpu"}}

    monkeypatch.setattr(gpu, "measure_model", measure_model)
    monkeypatch.setattr(gpu, "matmul_peak", lambda **kw: 1e9)
    monkeypatch.setattr(gpu, "equal_parameter_layers", lambda *a: (1, 1))
    run = gpu.Run("cpu", 1000.0, tmp_path / "page.md", "gpu_tiny")
    gpu.throughput(run, {**gpu.TINY, "batch": 4}, "chunks", 16)
    assert batches == [("specs/transformer.nl", 4), ("specs/hope.nl", 4), ("specs/hope.nl", 2), ("specs/hope.nl", 1)]
    models = harness.read_result("gpu_tiny")["phases"]["throughput"]["models"]
    assert models["transformer"]["batch"] == 4 and models["transformer"]["out_of_memory_batches"] == []
    assert models["hope"]["batch"] == 1 and models["hope"]["out_of_memory_batches"] == [4, 2]
    page = (tmp_path / "page.md").read_text()
    assert "| hope | compiled per chunk, recompute 16, **batch 1** (batch 4, 2: out of memory) |" in page
    assert "4.00× slower (missed), at different batches (1 for HOPE, 4 for Transformer++)." in page


def test_the_gpu_page_labels_each_bf16_check_by_what_was_measured() -> None:
    from bench import gpu

    old = {"fp32_eager": 5.5575, "bf16_compiled": 5.5575, "relative_error": 4.5e-6, "ok": True}
    new = {**old, "relative_error": 0.012, "compared": gpu.BF16_COMPARED, "tolerance": gpu.BF16_LOGITS_RTOL}
    old_page = "\n".join(gpu.render_bf16({"specs/transformer.nl": old}))
    assert "at the parameters' initialisation" in old_page and "tolerance 0.02" in old_page
    assert "off their initialisation" not in old_page and "losses' relative difference" in old_page
    new_page = "\n".join(gpu.render_bf16({"specs/transformer.nl": new}))
    assert "parameters off their initialisation" in new_page and "tolerance 0.05" in new_page


def test_an_unwritable_output_is_refused_before_measuring(tmp_path, monkeypatch) -> None:
    from bench import gpu, precision
    from bench.__main__ import main
    from nldsl.cli import UserError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(harness, "RESULTS", blocker / "results")
    monkeypatch.setattr(precision, "measure", lambda *a: pytest.fail("measured before checking the results folder"))
    with pytest.raises(UserError, match=r"^cannot write results to .*a-file/results: .*nothing was measured\)$"):
        main(["precision", "--specs", "specs/titans_lmm.nl"])
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(gpu, "correctness", lambda *a: pytest.fail("measured before checking --output"))
    with pytest.raises(UserError, match=r"^cannot write the markdown page .*a-file/x\.md: "):
        main(["gpu", "--device", "cpu", "--tiny", "--output", str(blocker / "x.md")])


def test_a_bench_option_that_does_not_fit_the_spec_is_named_as_typed(results) -> None:
    from bench import mfu
    from nldsl.diagnostics import SpecError

    with pytest.raises(SpecError) as error:
        mfu.run(["specs/transformer.nl"], 512, 3, 1, 64, 1, 1, False)
    assert "`--heads 3`" in str(error.value) and "--set" not in str(error.value)


def test_every_bench_option_has_help_and_every_command_says_what_it_costs(capsys) -> None:
    import argparse

    from bench.__main__ import COMMANDS, main

    for name, module in COMMANDS.items():
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        for action in parser._actions:
            assert action.help, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    assert all(f"{name} " in listing for name in COMMANDS) and listing.count("Takes ") == len(COMMANDS)


# From an audit of the numbers bench publishes ---------------------------------------------------------

def test_a_spec_whose_timing_failed_counts_as_missed_not_as_absent() -> None:
    from bench import report

    stored = {"graph_breaks": {s: {"ok": True} for s in TWO_SPECS}, "ok": False, "seconds": 1.0, "tolerance": 1.3,
              "speed": {"specs/transformer.nl": {"compiled_over_eager": 0.8, "eager_seconds": 1.0,
                                                 "compiled_seconds": 0.8, "compile_seconds": 1.0},
                        "specs/titans_lmm.nl": {"ok": False, "error": "RuntimeError: boom"}}}
    assert "| 1/2 specs (not faster: specs/titans_lmm.nl) | missed |" in smoke_row(stored)
    assert "| specs/titans_lmm.nl | failed: RuntimeError: boom | | | | | missed |" in report.smoke_section(stored)
    both_failed = {**stored, "speed": {spec: {"ok": False, "error": "boom"} for spec in TWO_SPECS}}
    assert "| 0/2 specs (not faster: specs/transformer.nl, specs/titans_lmm.nl) | missed |" in smoke_row(both_failed)


def test_flops_are_counted_with_the_fused_write_off_which_the_counter_cannot_see() -> None:
    from nldsl.runtime import fused

    if not fused.available():
        pytest.skip("the fused kernel cannot be built here, so there is nothing the counter could miss")
    model, _ = harness.build("specs/hope.nl", ["model.dim=32", "model.layers=1"], seq_len=64)
    tokens = torch.randint(0, 256, (2, 64))
    with fused.fused_writes(True):
        on, _ = harness.count_flops(lambda: model.loss(tokens, tokens).backward())
    with fused.fused_writes(False):
        off, _ = harness.count_flops(lambda: model.loss(tokens, tokens).backward())
    assert on == off > 0


def test_the_gpu_peak_table_matches_a_card_by_whole_words_the_longest_key_first() -> None:
    from bench.gpu import table_peak

    assert table_peak("NVIDIA H100 80GB HBM3") == 989.4e12 and table_peak("NVIDIA H100 PCIe") == 756e12
    assert table_peak("NVIDIA H100 NVL") == 835e12 and table_peak("NVIDIA H200") == 989.4e12
    assert table_peak("NVIDIA L4") == 121e12 and table_peak("NVIDIA L40") == 181e12
    assert table_peak("NVIDIA L40S") == 362e12 and table_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert table_peak("NVIDIA H200 NVL") == 835e12 and table_peak("Tesla T4") is None


def test_modes_timed_in_separate_runs_are_not_called_interleaved() -> None:
    from bench import report

    def point(mode: str, tokens_per_second: float, measured: str) -> dict:
        return {"spec": "specs/hope.nl", "length": 512, "mode": mode, "tokens_per_second": tokens_per_second,
                "interleaved": True, "measured": measured, "all_seconds": [1.0, 1.0]}

    first, later = "2026-12-01 10:00:00", "2026-12-05 09:00:00"
    together = {"points": [point("eager", 100.0, first), point("compiled", 200.0, first)]}
    apart = {"points": [point("eager", 100.0, later), point("compiled", 200.0, first)]}
    assert report.compile_ratios(together, interleaved=True) == {"specs/hope.nl T=512": 2.0}
    assert report.compile_ratios(apart, interleaved=True) == {}
    assert report.compile_ratios(apart, interleaved=False) == {"specs/hope.nl T=512": 2.0}
    assert report.timing_note(apart["points"]) == "2 steps, in separate runs, spread 1.00×"
    assert report.timing_note(together["points"]) == "2 steps, interleaved, spread 1.00×"

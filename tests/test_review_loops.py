"""Edges that a review and mutation round of this stop's change found unpinned (88 mutants, 41 real
survivors): the update checks' variance and size reading, named constants, the continuum-clock
watch, the stale-state check, the loader's pickling and dtypes, and the studies' log validators.
Each test fails with the mutant described beside it."""
from __future__ import annotations

import pytest

from nldsl.checker import check_text

MODEL = "model m {\n  dim = 32\n  vocab = 256\n  block { mlp { } }\n}\n"
LEVELS = ("  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
          "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }\n"
          "  level g { flow = gradients  retention = 0 }\n"
          "  level s { flow = v  retention = 0.5  lr = 0.5 }")
EMA = "retention = 0.9  lr = 0.1"
CORRECTED = "bias_correction = true"


def _codes(update: str) -> list[str]:
    text = MODEL + f"optimizer o {{\n  lr = 1e-3\n{LEVELS}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"
    return [d.code for d in check_text(text, "o.nl").diagnostics]


def _variance(m_options: str, s_options: str, update: str = "m / (sqrt(s - m * m) + 1e-8)",
              extra: str = "") -> list[tuple[str, str]]:
    text = MODEL + ("optimizer o {\n  lr = 1e-3\n"
                    f"  level m {{ flow = gradients  {m_options} }}\n"
                    f"  level s {{ flow = squared_gradients  {s_options} }}\n{extra}"
                    f"  update = {update}\n}}\ntrain {{ optimizer = o }}\n")
    return [(d.code, d.message) for d in check_text(text, "o.nl").diagnostics]


@pytest.mark.parametrize("update", [
    "sqrt((sign(m) - 1) / (sign(m) - 2)) * m + v + g + s",  # mutant: a quotient of sums ≤ 0 by sizes
    "m / (sign(m) - 2) + v + g + s",                   # mutant: a divisor of at most −1 (may_be_zero `high < 0`)
    "m / (sign(-v) + 0.5 * sign(m) - 0.6) + g + s",    # mutant: sign(≤ 0) is at most 0, not 1
])
def test_sizes_that_settle_a_sign_or_keep_a_divisor_off_zero(update):
    assert _codes(update) == []


def test_a_root_of_a_sum_at_most_0_by_sizes_is_e0304():  # mutant: _sum_sign's NEGATIVE from bounds dropped
    update = "sqrt(sign(m) - 1) * m + v + g + s"
    text = MODEL + f"optimizer o {{\n  lr = 1e-3\n{LEVELS}\n  update = {update}\n}}\ntrain {{ optimizer = o }}\n"
    [diagnostic] = check_text(text, "o.nl").diagnostics
    assert diagnostic.code == "E0304" and "≤ 0 in every entry" in diagnostic.message


def test_an_integer_power_of_a_variance_is_no_root():  # mutant: `root[2][1] != int(root[2][1])` dropped
    assert _variance(f"{EMA}  {CORRECTED}", EMA, "m / ((s - m * m) ** 2 + 1e-8)") == []


def test_a_fractional_power_of_a_variance_is_read_as_a_root():  # mutant: only sqrt read
    [(code, message)] = _variance(f"{EMA}  {CORRECTED}", EMA, "m / ((s - m * m) ** 0.5 + 1e-8)")
    assert code == "E0304" and "from step 1 " in message


def test_one_variance_under_two_roots_is_reported_once():  # mutant: `pair in reported` dropped
    found = _variance(f"{EMA}  {CORRECTED}", EMA, "m / (sqrt(s - m * m) + 1e-8) + sqrt(s - m * m)")
    assert [code for code, _ in found] == ["E0304"]


def test_both_corrected_with_different_retentions_blames_the_retentions_not_the_correction():
    # mutant: the correction reason for a corrected s; u26: the correction's exponent; u28: the tolerance
    [(code, message)] = _variance(f"{EMA}  {CORRECTED}", f"retention = 0.999  lr = 0.001  {CORRECTED}")
    assert code == "E0304" and "from step 2 " in message and "bias-corrected" not in message
    assert "their retentions differ (0.9 and 0.999)" in message


def test_different_lrs_are_named():  # mutant: lr dropped from the options compared
    [(code, message)] = _variance("retention = 0.9  lr = 0.2", EMA)
    assert code == "E0304" and "their lrs differ (0.2 and 0.1)" in message and "add up to" not in message


@pytest.mark.parametrize(("update", "extra"), [
    ("m / (sqrt(s - m * g) + 1e-8)", f"  level g {{ flow = gradients  {EMA} }}\n"),  # mutant: m * g is no square
    ("m / (sqrt(s - m ** 3) + 1e-8)", ""),                                             # mutant: a cube is no square
])
def test_a_product_that_is_no_square_is_not_read_as_a_variance(update, extra):
    found = _variance(f"{EMA}  {CORRECTED}", EMA, update, extra)
    assert [code for code, _ in found] == ["E0304"] and found[0][1].startswith("the square root of")


@pytest.mark.parametrize("m_extra", [
    "period = 2",                                   # mutant: a level written every other step
    "nesterov = true",                              # mutant: Nesterov's output
    "readout = exclusive",                          # mutant: a readout unlike s's
])
def test_levels_the_variance_check_cannot_read_stay_trusted(m_extra):
    assert _variance(f"{EMA}  {CORRECTED}  {m_extra}", EMA) == []


def test_a_level_of_another_levels_output_is_not_read_as_a_gradient_average():  # mutant: m's flow not checked
    extra = f"  level h {{ flow = m  {EMA}  {CORRECTED} }}\n"
    assert _variance(EMA, EMA, "h / (sqrt(s - h * h) + 1e-8)", extra) == []


def test_first_flow_weighs_the_first_gradient_by_retention_to_the_t_minus_1():
    # mutant: weights[0] = α^t reads m_1 = α X_1, which keeps this variance ≥ 0 at every step
    [(code, message)] = _variance("retention = 0.3  lr = 0.7  init = first_flow", "retention = 0.3  lr = 0.7")
    assert code == "E0304" and "from step 1 " in message and "their inits differ" in message


def test_a_gradient_that_s_no_longer_holds_makes_the_variance_negative():  # mutant: b == 0 passed over
    [(code, message)] = _variance(EMA, "retention = 0  lr = 1")
    assert code == "E0304" and "from step 2 " in message


def test_the_graph_shows_a_named_constant_of_the_update_by_its_name():  # mutant: _strip_spans rebuilds consts
    from nldsl.graph import build_graph

    text = "const scale = 0.5\n" + MODEL + ("optimizer o {\n  lr = 1e-3\n"
                    "  level m { flow = gradients  retention = 0.9  lr = 0.1 }\n"
                    "  level v { flow = squared_gradients  retention = 0.9  lr = 0.1 }\n"
                    "  update = scale * m / (sqrt(v) + 1e-8)\n}\ntrain { optimizer = o }\n")
    result = check_text(text, "o.nl")
    graph = build_graph(result.spec)
    [update] = [attrs["update"] for _, attrs in graph.nx.nodes(data=True) if "update" in attrs]
    assert update.startswith("scale * m")


@pytest.mark.parametrize("layer", [
    "memory { level { momentum = 0.9  lr = learned(init = 2, max = 1) } }",      # mutant: E0302, not E0505
    "memory { level { momentum = 0.9  period = steps(2) } }",                    # mutant: E0601 on the period
])
def test_a_slow_level_rejected_for_any_error_is_not_also_w0701(layer):
    text = f"model m {{\n  dim = 16\n  block {{\n    {layer}\n  }}\n}}\n"
    codes = [d.code for d in check_text(text, "k.nl").diagnostics]
    assert codes and "W0701" not in codes


def test_a_context_segment_longer_than_a_sequence_says_so():  # mutant: 'a whole' for any segment ≥ seq_len
    text = ("model m {\n  dim = 16\n  block {\n    context { segment = 40\n"
            " memory { heads = 2; level { state = linear; period = 4 } }\n attention { heads = 2 } }\n"
            "  }\n}\ntrain { seq_len = 32 }\n")
    [warning] = check_text(text, "k.nl").diagnostics
    assert warning.code == "W0704" and "segment 40 is longer than a training sequence (32 tokens)" in warning.message


@pytest.mark.parametrize("key", ["name", "kind"])
def test_a_spec_field_that_no_override_sets_is_not_offered_as_a_path(key):  # mutant: kind/name not excluded
    text = "model m {\n  dim = 16\n  block { mlp { } }\n}\n"
    [error] = check_text(text, "k.nl", [f"{key}=3"]).diagnostics
    assert error.code == "E0206" and "is an attribute of" not in (error.help or "")


# The continuum-clock watch (nldsl/runtime/clock.py watch_clock) -------------------------------------

def _clocked_hope():
    import warnings

    import torch

    import nldsl

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load("specs/hope.nl", dim=32, train__seq_len=64, train__batch=1)
    x = torch.randint(0, 256, (1, 65), generator=torch.Generator().manual_seed(1))
    return model, x


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_loop_without_the_clock_is_warned_at_its_first_step(micro_batches):
    """With gradient accumulation too: the watch of the previous version counted backward passes in a
    row that found the weights changed, and two micro-batches a step reset it (a second review)."""
    import torch

    from nldsl.runtime.clock import ClockWarning

    model, x = _clocked_hope()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.warns(ClockWarning, match="this optimizer step moves it with no clock step"):
        optimizer.zero_grad()
        for _ in range(micro_batches):
            model.loss(x[:, :-1], x[:, 1:]).backward()
        optimizer.step()


@pytest.mark.usefixtures("one_thread")
def test_an_ema_swapped_in_and_back_in_a_ticking_loop_is_not_warned():
    """A review's probe: a loop that ticks the clock and, every 3 steps, swaps averaged weights in
    for an evaluation and back was warned after the second swap (unclocked changes were counted, not
    counted in a row)."""
    import copy

    import torch

    model, x = _clocked_hope()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = model.module.continuum_clock(model)
    average = copy.deepcopy(model.state_dict())
    for step in range(12):  # pyproject makes a ClockWarning an error
        optimizer.zero_grad()
        model.loss(x[:, :-1], x[:, 1:]).backward()
        clock.tick()
        optimizer.step()
        if step % 3 == 2:
            live = copy.deepcopy(model.state_dict())
            model.load_state_dict(average)
            with torch.no_grad():
                model(x[:, :-1])
            model.load_state_dict(live)


@pytest.mark.usefixtures("one_thread")
def test_one_load_state_dict_between_ticking_steps_is_not_warned():  # mutant: warned at the first unclocked change
    import copy

    import torch

    model, x = _clocked_hope()
    saved = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clock = model.module.continuum_clock(model)
    for step in range(3):  # pyproject makes a ClockWarning an error
        optimizer.zero_grad()
        model.loss(x[:, :-1], x[:, 1:]).backward()
        clock.tick()
        optimizer.step()
        if step == 0:
            model.load_state_dict(saved)


CLOCKED = """model m { vocab = 32  dim = 16  layers = 1  block {
  parallel par { combine = sum
    cms c { variant = independent  level f { period = 4 } level s { period = 48 } }
    mlp { } } } }
train { seq_len = 16  batch = 2 }
"""


@pytest.mark.usefixtures("one_thread")
def test_a_ticking_loop_whose_clock_fires_again_and_again_is_not_warned(tmp_path):
    # mutant: the clocked-steps count not compared; k4: ContinuumClock.tick not counting its step
    import warnings

    import torch

    import nldsl

    path = tmp_path / "clocked.nl"
    path.write_text(CLOCKED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load(path)
    assert model.module.CLOCK_STEPS == {"par.c.s_": 2}
    slow = model.blocks[0].par.c.s_w1
    before = slow.detach().clone()
    tokens = torch.randint(0, 32, (2, 17), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    clock = model.module.continuum_clock(model)
    for _ in range(7):  # the clock fires at calls 2, 4 and 6 (pyproject makes a ClockWarning an error)
        optimizer.zero_grad()
        model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
        clock.tick()
        optimizer.step()
    assert not torch.equal(slow.detach(), before)


@pytest.mark.usefixtures("one_thread")
def test_a_clocked_level_stepped_every_call_by_its_clock_is_not_watched(tmp_path):
    # mutant: `clock_steps[prefix] > 1` dropped (period 32 over 2 × 16 tokens: one outer step per call)
    import warnings

    import torch

    import nldsl

    path = tmp_path / "every_call.nl"
    path.write_text(CLOCKED.replace("period = 48", "period = 32"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load(path)
    assert model.module.CLOCK_STEPS == {"par.c.s_": 1}
    tokens = torch.randint(0, 32, (2, 17), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):  # no tick needed: every call is an outer step (a ClockWarning is an error)
        optimizer.zero_grad()
        model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()


@pytest.fixture(scope="module")
def clocked_run(tmp_path_factory):
    from test_commands import CLOCK_SPEC, tiny_text, train_tiny

    return train_tiny(tmp_path_factory.mktemp("run"), CLOCK_SPEC, tiny_text(tmp_path_factory.mktemp("data")))


@pytest.mark.usefixtures("one_thread")
def test_streams_again_and_again_on_one_loaded_model_are_not_warned(clocked_run):
    # streams step the slow levels without an optimizer: the clock watch has nothing to read
    import torch

    from nldsl.runtime import evaluate as E

    loaded = E.load_model(clocked_run, torch.device("cpu"))
    assert any(steps > 1 for steps in loaded.module.CLOCK_STEPS.values())
    tokens = loaded.tokenizer.encode("".join(f"y{i} = {i}\n" for i in range(40)))[:16 * 8 + 1]
    updates = 0
    for _ in range(3):  # pyproject makes a ClockWarning an error
        updates += sum(E.stream(loaded, tokens, 16).updates.values())
    assert updates >= 3


@pytest.fixture(scope="module")
def train_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(600)))
    return path


def test_a_nan_after_a_loss_within_a_tenth_of_the_lowest_adds_no_divergence_note(tmp_path, train_text, capsys,
                                                                                 monkeypatch):
    # mutant: the 1.1 × lowest margin of train._divergence_note dropped (a loss 5 % above the lowest is noise)
    from test_train import _tiny_run

    from nldsl.cli import main
    from nldsl.runtime import train as T

    real = T.compile_loss
    values = {5: 2.1, 6: 2.1, 7: 2.1, 8: float("nan")}

    def flat_then_nan(*args, **kwargs):
        loss, calls = real(*args, **kwargs), []

        def fixed(inputs, targets):
            calls.append(1)
            return loss(inputs, targets) * 0 + values.get(len(calls), 2.0)
        return fixed

    monkeypatch.setattr(T, "compile_loss", flat_then_nan)
    assert main(_tiny_run(tmp_path, train_text, "--set", "train.steps=9", "--set", "train.checkpoint_every=2",
                          "--set", "train.keep_checkpoints=3")) == 1
    err = capsys.readouterr().err
    assert "step-000006 (lower the learning rate" in err and "That checkpoint's training loss" not in err


def test_a_full_disk_elsewhere_is_not_blamed_on_stdout_that_fails_otherwise(monkeypatch):
    # x2: any failure of the test write read as stdout's own
    import errno
    import io
    import sys

    from nldsl import cli

    class Broken(io.StringIO):
        def write(self, text):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sys, "stdout", Broken())
    assert cli._failing_stdout(OSError(errno.ENOSPC, "No space left on device")) == ""
    assert cli._failing_stdout(OSError(errno.EIO, "Input/output error")) == "could not write to standard output: "


def test_float16_models_still_load():  # mutant: float16 refused as a storage format
    import warnings

    import torch

    import nldsl

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load("specs/transformer.nl", dim=32, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_a_logged_run_with_infinite_seconds_is_passed_over(tmp_path, capsys):
    # mutant: math.isfinite dropped from seconds_problem (NaN fails `>= 0` anyway; Infinity does not)
    from nldsl.runtime import studies as S

    log_file = tmp_path / "x.runs.jsonl"
    log_file.write_text('{"key": "k", "result": {"seconds": Infinity}}\n{"key": "i", "result": {"seconds": 2}}\n')
    assert list(S.RunLog(log_file, resume=True).done) == ["i"]
    assert "Infinity" in (tmp_path / "x.runs.jsonl.skipped").read_text()


def _continual_run(**changes):
    domain = {"name": "a", "source": "s", "documents": 1, "train_bytes": 10, "validation_bytes": 5,
              "python": "3.11", "unicode": "15.0"}
    key = {"kind": "sequential", "domains": [domain, dict(domain, name="b")], "setup": {"dim": 32}}
    result = {"R": [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], "params": 100, "diverged_at_step": None, "seconds": 1.0}
    for name, value in changes.items():
        (key if name in key else result)[name] = value
    return key, result


def test_a_well_formed_continual_run_has_no_problem():
    from nldsl.runtime import studies as S

    assert S.continual_problem(*_continual_run()) is None


@pytest.mark.parametrize("changes", [
    {"R": [[True, 2.0], [1.0, 2.0], [1.0, 2.0]]},          # mutant: a bool is no number
    {"params": 0},                                          # mutant: no parameters
    {"R": [[1.0], [1.0], [1.0]]},                           # mutant: a row without a number per domain
    {"kind": "interleaved"},                                # mutant: neither sequential nor joint
    {"diverged_at_step": "soon"},                           # mutant: neither null nor a step
])
def test_a_continual_run_the_page_cannot_report_has_a_problem(changes):
    from nldsl.runtime import studies as S

    assert S.continual_problem(*_continual_run(**changes)) is not None


def _recall_run(scores=None, **result_changes):
    key = {"task": "mqar", "tests": [[64, 4]], "setup": {"dim": 32}}
    result = {"tests": {"T=64 D=4": scores or {"accuracy": 0.5, "exact": 0.1, "loss": 1.0}}, "final_loss": 1.0,
              "train_seconds": 2.0, "params": 100, "diverged_at_step": None, "seconds": 3.0}
    result.update(result_changes)
    return key, result


def test_recall_problems():
    from nldsl.runtime import studies as S

    assert S.recall_problem(*_recall_run()) is None
    assert S.recall_problem(*_recall_run({"accuracy": 0.5, "loss": 1.0})) is not None   # mutant: `exact` missing
    assert S.recall_problem(*_recall_run(train_seconds=None)) is not None              # mutant: no training time


def test_lines_passed_over_by_two_rewrites_are_all_kept(tmp_path, capsys):  # mutant: `.skipped` opened "wb"
    from nldsl.runtime import studies as S

    log_file = tmp_path / "x.runs.jsonl"
    log_file.write_text('{"key": "a", "result": {"seconds": -1}}\n{"key": "i", "result": {"seconds": 2}}\n')
    S.RunLog(log_file, resume=True)
    with open(log_file, "a") as handle:
        handle.write('{"key": "b", "result": {"seconds": -2}}\n')
    S.RunLog(log_file, resume=True)
    kept = (tmp_path / "x.runs.jsonl.skipped").read_text().splitlines()
    assert kept == ['{"key": "a", "result": {"seconds": -1}}', '{"key": "b", "result": {"seconds": -2}}']


def test_the_runtime_refuses_bias_correction_over_a_first_flow_start():  # mutant: OptimizerLevelConfig's refusal
    from nldsl.runtime.optim import OptimizerLevelConfig

    with pytest.raises(ValueError, match="bias_correction assumes init 'zeros'"):
        OptimizerLevelConfig("m", "gradients", lr=0.1, retention=0.9, bias_correction=True, init="first_flow")
    OptimizerLevelConfig("m", "gradients", lr=1.0, retention=0.0, bias_correction=True, init="first_flow")

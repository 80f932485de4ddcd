"""Edges of the mends after this stop's first review, from a second review and mutation round (38
mutants, 2 real survivors) and its four findings: the `abs` mend and an ε inside the root (under a
factor too) clear the variance's E0304, a Σ of exactly 1 at step 1 with one level corrected is
E0304, a loop of one's own with gradient accumulation is warned, and the stale-state and recompute
rules hold where a mutant would break them."""
from __future__ import annotations

import warnings

import pytest
import torch
from test_review_loops import EMA, _clocked_hope, _variance

from nldsl.checker import check_file, check_text

CORRECTED = f"{EMA}  bias_correction = true"


def test_the_abs_mend_that_e0304_and_the_docs_offer_clears_it():
    assert _variance(CORRECTED, CORRECTED, "m / (sqrt(abs(s - m * m)) + 1e-8)") == []


def test_an_eps_inside_the_root_under_a_factor_keeps_it_off_0():
    assert _variance(CORRECTED, CORRECTED, "m / sqrt((s - m * m + 1e-8) * 0.5)") == []


def test_sum_exactly_1_at_step_1_with_m_alone_corrected_is_e0304():
    """m corrected, v = 0.9·v + 1·g² not: Σ a²/b = 0.1/(1 − 0.9^t) is 1 at step 1, and the correction
    rounds it just past (10,000 of 10,000 entries NaN at step 1 in float64, the review's probe)."""
    [(code, message)] = _variance("retention = 0.9  lr = 0.1  bias_correction = true", "retention = 0.9  lr = 1")
    assert code == "E0304" and "`m`'s weight squared equals `s`'s at step 1" in message


@pytest.mark.usefixtures("one_thread")
def test_an_own_loop_with_gradient_accumulation_is_still_warned():
    from nldsl.runtime.clock import ClockWarning

    model, x = _clocked_hope()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.warns(ClockWarning):
        for _ in range(2):
            optimizer.zero_grad()
            for _ in range(2):
                model.loss(x[:, :-1], x[:, 1:]).backward()
            optimizer.step()


# nldsl/update_checks.py negative_variances --------------------------------------------------------------

@pytest.mark.parametrize("update", [
    "m / sqrt(s - m * m - 1e-8)",         # a negative constant keeps nothing off 0
    "m / sqrt(s - m * m + 1e-8 - 1e-8)",  # a constant that cancels keeps nothing off 0
])
def test_a_constant_in_the_root_that_is_not_positive_does_not_excuse_two_corrected_levels(update):
    [(code, message)] = _variance(CORRECTED, CORRECTED, update)
    assert code == "E0304" and "is 0 at step 1 for any gradient" in message


def test_weights_summing_a_little_past_1_are_e0304():  # mutant: ROUNDING = 1e-2 (Σ = 1.008·(1 − 0.9^t))
    [(code, message)] = _variance("retention = 0.9  lr = 0.1004", EMA)
    assert code == "E0304" and "from step 46 " in message


def test_the_zero_variance_is_reported_once_and_alone():  # mutant: the `continue` after the zero case dropped
    found = _variance(CORRECTED, CORRECTED)
    assert [code for code, _ in found] == ["E0304"]


def test_the_zero_variance_points_at_the_update_line():  # mutant: span = header
    from test_review_loops import MODEL
    text = MODEL + ("optimizer o {\n  lr = 1e-3\n"
                    f"  level m {{ flow = gradients  {CORRECTED} }}\n"
                    f"  level s {{ flow = squared_gradients  {CORRECTED} }}\n"
                    "  update = m / (sqrt(s - m * m) + 1e-8)\n}\ntrain { optimizer = o }\n")
    [diagnostic] = check_text(text, "o.nl").diagnostics
    update_line = text.splitlines().index("  update = m / (sqrt(s - m * m) + 1e-8)") + 1
    assert diagnostic.code == "E0304" and diagnostic.span.line == update_line


# nldsl/runtime/clock.py watch_clock ----------------------------------------------------------------------

# nldsl/runtime/blocks.py _watch_carried_graph ---------------------------------------------------------------

def _counting(monkeypatch):
    import nldsl.runtime.blocks as B

    calls = []
    original = B._check_graph
    monkeypatch.setattr(B, "_check_graph", lambda roots, limit=512: (calls.append(len(roots)), original(roots, limit)))
    return B, calls


@pytest.mark.usefixtures("one_thread")
def test_a_state_passed_to_many_calls_is_looked_at_once_per_backward(monkeypatch):
    # mutants: the `_nldsl_watched` filter or mark dropped (one hook per call: 20 looks)
    import nldsl

    _, calls = _counting(monkeypatch)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load("specs/titans_lmm.nl", dim=32)
    x = torch.randint(0, 256, (2, 65), generator=torch.Generator().manual_seed(1))
    _, state = model(x[:, :32], return_state=True)
    outputs = [model(x[:, 32:64], state=state) for _ in range(20)]
    calls.clear()
    sum(o.float().pow(2).mean() for o in outputs).backward()
    assert len(calls) == 1


def test_two_roots_of_one_state_are_looked_at_once_per_backward(monkeypatch):
    # mutants: `if task not in checked` -> `if True`; `checked.append(task)` dropped
    B, calls = _counting(monkeypatch)
    leaf = torch.randn(3, requires_grad=True)
    a, b = leaf.sin(), leaf.exp()
    B._watch_carried_graph([{"a": a, "b": b}])
    (a.sum() + b.sum()).backward()
    assert calls == [2]


def test_a_freed_graph_behind_the_second_root_is_named():  # mutant: _check_graph(roots[:1])
    import nldsl.runtime.blocks as B

    leaf = torch.randn(3, requires_grad=True)
    freed = leaf.exp()
    freed.sum().backward()  # frees ExpBackward's saved result
    intact = leaf.sin()
    B._watch_carried_graph([{"a": intact, "b": freed}])
    with pytest.raises(RuntimeError, match=r"carried into this call.*its backward pass has run"):
        (intact.sum() + freed.sum()).backward()


# nldsl/semantics.py runs_chunk_loop / check_chunk_options, nldsl/runtime/paths.py -------------------------------

D = "model.block.deltanet.level."
L = "model.block.lmm.level."


@pytest.mark.parametrize(("path", "overrides", "warned"), [
    ("deltanet", [D + "momentum=per_head(0.5)"], False),  # momentum dropped (paths, semantics)
    ("deltanet", [D + "period=8"], False),                                          # l2 in chunks of 8: the chunk loop
    ("deltanet", [D + "objective=dot", D + "period=8"], True),                      # dot on given values: the kernel
    ("deltanet", [D + "objective=dot", D + "period=8", D + "readout=chunk_start"], False),  # readout dropped, chunk = 1
    ("deltanet", [D + "objective=dot", D + "period=8", D + "rule=dgd"], False),  # `not dgd` dropped, dgd = False
    # (learned starts: from deltanet's zeros a memory with generated values never writes, E0601)
    ("deltanet", [D + "objective=dot", D + "period=8", D + "values=generated", D + "init=learned"], False),
    ("titans_lmm", [L + "momentum=none", L + "period=1"], False),  # depth <= 2 read as one matrix
    ("titans_lmm", [L + "state=mlp(depth = 1)", L + "momentum=none", L + "period=1"], True),
    ("titans_mac", ["model.block.mac.memory.level.state=linear", "model.block.mac.memory.level.momentum=none",
                    "model.block.mac.memory.level.period=1"], True),
    ("deltanet", [D + "readout=chunk_start", D + "orthogonalize=newton_schulz(steps = 1)"], False),  # mutant: steps > 1
    ("hope", [], False),
    ("hope_attention", [], False),
])
def test_recompute_w0706_follows_the_runtimes_chunk_loops(path, overrides, warned):
    result = check_file(f"specs/{path}.nl", ["train.recompute=2", "train.compile=false", *overrides])
    assert not [d for d in result.diagnostics if d.severity == "error"]
    assert any(d.code == "W0706" and "recompute" in d.message for d in result.diagnostics) == warned


def test_recompute_on_a_selfmod_alone_is_not_w0706():  # mutant: a non-memory layer's level runs no chunk loop
    text = ("model m { dim = 16; block { selfmod { heads = 2\n"
            "level memory { period = 8; state = linear; objective = l2 } } } }\n"
            "train { recompute = 2\n compile = false }\n")
    diagnostics = check_text(text, "k.nl").diagnostics
    assert not [d for d in diagnostics if d.severity == "error"]
    assert not [d for d in diagnostics if d.code == "W0706" and "recompute" in d.message]


def test_v_corrected_alone_with_a_short_average_is_accepted():
    # mutant: the zero case for `first.bias_correction or second.bias_correction` (Σ = (1 − 0.5^t)² passes
    # 1 − 1e-9 by step 30, yet v alone corrected only makes v larger)
    assert _variance("retention = 0.5  lr = 0.5", "retention = 0.5  lr = 0.5  bias_correction = true") == []


def test_a_freed_node_that_made_the_state_is_named_before_it_runs():
    # mutant: node.register_hook (after the node ran, torch's own error came first) for register_prehook
    import nldsl.runtime.blocks as B

    leaf = torch.randn(3, requires_grad=True)
    freed = leaf.exp()
    freed.sum().backward()  # frees ExpBackward's saved result: the state's own node
    B._watch_carried_graph([{"b": freed}])
    with pytest.raises(RuntimeError, match=r"carried into this call.*its backward pass has run"):
        freed.sum().backward()


def test_recompute_on_cms_levels_on_the_continuum_clock_alone_is_w0706():
    # mutant: a cms level counted as running a chunk loop whether or not it learns in context
    text = ("model m { dim = 16; block { cms { level f { period = 4096 } } } }\n"
            "train { seq_len = 64\n recompute = 2\n compile = false }\n")
    diagnostics = check_text(text, "k.nl").diagnostics
    assert any(d.code == "W0706" and "recompute" in d.message for d in diagnostics)


@pytest.mark.usefixtures("one_thread")
def test_a_step_that_calls_its_parents_step_is_read_once():
    """nldsl's DecoupledSGD.step calls torch's SGD.step, whose hooks run too once any SGD was made in
    the process: the watch read that inner call as a second step with no clock step, and the clock
    tests of `nldsl train` failed in the whole suite only (a pyproject error)."""
    import nldsl
    from nldsl.runtime.optim import DecoupledSGD

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch patches SGD.step with its hooks
    _, x = _clocked_hope()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nldsl.load("specs/hope.nl", dim=32)  # its seq_len and batch: `cms.slow` every 2 steps
    assert model.module.CLOCK_STEPS == {"cms.slow_": 2}
    optimizer = DecoupledSGD(model.parameters(), lr=0.1)
    for _ in range(3):  # pyproject makes a ClockWarning an error
        model.module.training_step(model, optimizer, x[:, :-1], x[:, 1:])

"""The Python contract of a built model: what a call accepts, what it refuses, and how it travels.

`nldsl.load(path)` returns an `nn.Module` called on tokens (B, T). A caller's mistake is a
TypeError or ValueError naming it before any layer runs (nldsl/runtime/blocks.py
`checked_inputs`); any integer dtype of ids is accepted; the model deep-copies and pickles (within
the process) even when its spec was built again since; a float64 model's loss stays float64; lower precisions run
on the CPU for every kind of level, the exact delta kernel and the fused write included.
"""

from __future__ import annotations

import copy
import fractions
import io
import re

import pytest
import torch

import nldsl
from nldsl.loader import ModelTooLargeError
from nldsl.runtime.delta import _solve_unit_lower

SMALL = {"dim": 32}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def titans():
    torch.manual_seed(0)
    return nldsl.load("specs/titans_lmm.nl", **SMALL)


@pytest.fixture(scope="module")
def hope():
    torch.manual_seed(0)
    return nldsl.load("specs/hope.nl", **SMALL)


def tokens(batch: int = 2, length: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make_input, error, message", [
    (lambda x: x[0], TypeError, "tokens must be a 2-D integer tensor (batch, time); got a 1-D int64 tensor"),
    (lambda x: x[None], TypeError, "got a 3-D int64 tensor of shape (1, 2, 20)"),
    (lambda x: x.float(), TypeError, "got a 2-D float32 tensor"),
    (lambda x: x.bool(), TypeError, "got a 2-D bool tensor"),
    (lambda x: x.tolist(), TypeError, "tokens must be a torch.Tensor of shape (batch, time); got list"),
    (lambda x: torch.tensor([[1, -1, 3]]), ValueError, "tokens must lie in [0, 256)"),
    (lambda x: torch.tensor([[1, 256, 3]]), ValueError, "the vocabulary has 256 ids; got 256"),
    # torch has no CPU min/max of the wider unsigned types, which the range check reads
    (lambda x: x.to(torch.uint16), TypeError, "got a 2-D uint16 tensor of shape (2, 20) (ids are int64, int32"),
    (lambda x: x.to("meta"), ValueError, "tokens are on the meta device, which holds shapes but no values"),
])
def test_a_mistaken_token_input_is_named(titans, make_input, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        titans(make_input(tokens()))


def test_mistaken_targets_and_states_are_named(titans) -> None:
    x = tokens()
    with pytest.raises(ValueError, match=re.escape("targets must have the tokens' shape (2, 20); got (2, 5)")):
        titans(x, targets=x[:, :5])
    with pytest.raises(ValueError, match=re.escape("targets must lie in [-1, 256)")):
        titans(x, targets=x * 0 - 2)
    with pytest.raises(TypeError, match=r"state must be the list of 2 per-block dicts .* got a str"):
        titans(x, state="abc")
    with pytest.raises(TypeError, match="got a list of 1 dict"):
        titans(x, state=[{}])
    _, state = titans(x[:1], return_state=True)
    with pytest.raises(ValueError, match=r"state \[0\]\.\S+ holds a batch of 1, and the tokens have a batch of 2"):
        titans(x, state=state)
    with pytest.raises(ValueError, match="the vocabulary has 256 ids"):
        titans.loss(x, x + 300)
    _, state = titans(x, return_state=True)
    with pytest.raises(ValueError, match="state holds float32 tensors on cpu, and the model is float64"):
        copy.deepcopy(titans).double()(x, state=state)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a state of mixed precisions is autocast's own
        _, mixed = titans(x, return_state=True)
        titans(x, state=mixed)
    titans(x, state=mixed)  # and it continues without autocast too


def test_every_tensor_of_a_carried_state_is_checked_not_only_the_first(titans) -> None:
    """One tensor of batch 1 broadcast over the batch (every sequence read the first one's memory),
    and a part replaced by a str or a 0-d tensor failed deep in a chunk step (a Python API audit)."""
    from nldsl.runtime.evaluate import detach_state

    x = tokens()

    def edited(edit):
        state = detach_state(titans(x, return_state=True)[1])
        edit(state[1]["lmm"])
        return state

    def first_sequence_only(layer):
        layer["memory"].weights[1] = layer["memory"].weights[1][:1]

    def scalar(layer):
        layer["memory"].weights[0] = torch.tensor(1.0)

    with pytest.raises(ValueError, match=re.escape("state [1].lmm.memory.weights[1] holds a batch of 1")):
        titans(x, state=edited(first_sequence_only))
    with pytest.raises(ValueError, match=re.escape("state [1].lmm.memory.weights[0] holds a 0-d tensor")):
        titans(x, state=edited(scalar))
    with pytest.raises(TypeError, match=re.escape("state [1].lmm.memory holds a str")):
        titans(x, state=edited(lambda layer: layer.update(memory="x")))
    # a part dropped, set to None or renamed started afresh while the rest carried on (a Python API audit)
    with pytest.raises(ValueError, match=re.escape("the state of block 1 has no `[1].lmm.memory`")):
        titans(x, state=edited(lambda layer: layer.update(memroy=layer.pop("memory"))))
    with pytest.raises(ValueError, match=re.escape("holds None at `[1].lmm.memory`, where this model's state has")):
        titans(x, state=edited(lambda layer: layer.update(memory=None)))
    with pytest.raises(ValueError, match=re.escape("holds `[1].lmm.extra`, which this model's state has not")):
        titans(x, state=edited(lambda layer: layer.update(extra=torch.zeros(2))))
    state = detach_state(titans(x, return_state=True)[1])
    titans(x, state=[{}, state[1]])  # an empty dict still starts its block afresh


def test_loss_and_training_step_name_a_caller_s_mistake(titans) -> None:
    from nldsl.compiler.optimizers import build_optimizer

    model = copy.deepcopy(titans)
    x = tokens()
    with pytest.raises(TypeError, match="loss needs targets"):
        model.loss(x, None)
    optimizer = build_optimizer(model.named_parameters(), model.spec.train.optimizer)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"outside torch.no_grad\(\)"):
        model.module.training_step(model, optimizer, x, x)
    another = build_optimizer(copy.deepcopy(titans).named_parameters(), model.spec.train.optimizer)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="the optimizer holds none of this model's parameters"):
        model.module.training_step(model, another, x, x)  # it returned losses while the model never changed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.module.training_step(model, optimizer, x, x)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    usage = re.escape("build_optimizer(model.named_parameters(), spec.train.optimizer)")
    for named, spec in [(model.parameters(), model.spec.train.optimizer), (model, model.spec.train.optimizer),
                        (model.named_parameters(), None), (model.named_parameters(), model.spec.train)]:
        with pytest.raises(TypeError, match=usage):
            build_optimizer(named, spec)


@pytest.mark.parametrize(("path", "error", "message"), [
    ("model m {\n  dim = 32\n}\n", ValueError, "looks like a spec's text ('model m {'"),
    ("", ValueError, "got an empty path"),
    (None, TypeError, "path must be a spec file's path"),
])
@pytest.mark.parametrize("entry", [nldsl.load, nldsl.check])
def test_load_and_check_name_what_is_not_a_spec_path(entry, path, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        entry(path)


def test_a_state_from_another_model_is_refused_and_empty_dicts_start_afresh(titans, hope) -> None:
    x = tokens()
    _, state = hope(x, return_state=True)
    with pytest.raises(ValueError, match=re.escape("state holds blocks of the layers 'titans', 'cms', and this "
                                                   "model's blocks have 'lmm', 'mlp'")):
        titans(x, state=state)  # read by name, it would have run from a fresh memory without a word
    with torch.no_grad():
        assert torch.equal(titans(x, state=[{}, {}]), titans(x))  # what a call on no tokens returns


def test_a_state_of_the_same_spec_at_another_width_names_the_tensor_that_differs(titans, hope) -> None:
    """It failed deep in a layer with torch's shape error; the block now runs afresh to tell a
    state that does not fit from another failure, and names the state's first tensor that differs."""
    x = tokens()
    for model, spec, layer in ((titans, "specs/titans_lmm.nl", "lmm"), (hope, "specs/hope.nl", "titans")):
        wider = nldsl.load(spec, **{**SMALL, "dim": SMALL["dim"] * 2})
        _, state = model(x, return_state=True)
        with pytest.raises(ValueError, match=re.escape(f"the state of block 0 does not fit this model: `{layer}.")
                           ) as refused:
            wider(x, state=state)
        assert "holds a tensor of shape" in str(refused.value) and isinstance(refused.value.__cause__, RuntimeError)
        _, own = wider(x, return_state=True)
        wider(x, state=own)  # its own state continues
    # a memory without momentum keeps no S: a state with one (or without, the other way round) is named,
    # where a runtime assertion escaped
    plain = nldsl.load("specs/titans_lmm.nl", **SMALL, model__block__lmm__level__momentum=None)
    _, with_momentum = titans(x, return_state=True)
    _, without = plain(x, return_state=True)
    for model, state, why in ((plain, with_momentum, "it holds `lmm.memory.momentum[0]`, which this model's state "
                               "has not"), (titans, without, "it has no `lmm.memory.momentum[0]`, which this model's")):
        with pytest.raises(ValueError, match=re.escape(f"does not fit this model: {why}")):
            model(x, state=state)


def test_training_across_calls_takes_the_state_detached(titans) -> None:
    from nldsl.runtime.evaluate import detach_state

    model = copy.deepcopy(titans)
    _, state = model(tokens(), return_state=True)
    logits, _ = model(tokens(), state=state, return_state=True)
    logits.sum().backward()  # through both calls' graphs: the first one is freed now
    with pytest.raises(RuntimeError, match=r"holds the autograd graph of an earlier call.*its backward pass has run"):
        model(tokens(), state=state).sum().backward()
    model(tokens(), state=detach_state(state)).sum().backward()  # as the README says


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_ids_give_the_int64_result(hope, dtype) -> None:
    # HOPE's CMS surprise one-hot encodes the targets, which once required int64
    x = tokens() % 200
    with torch.no_grad():
        expected = hope(x)
        assert torch.equal(hope(x.to(dtype)), expected)
        assert torch.equal(hope(x, targets=x.to(dtype)), hope(x, targets=x))
        assert torch.equal(hope.loss(x.to(dtype), x.to(dtype)), hope.loss(x, x))


def test_tracebacks_and_getsource_show_the_generated_lines_also_after_linecache_is_cleared(titans) -> None:
    import inspect
    import linecache
    import traceback

    def failing_call() -> list[str]:
        try:
            titans(torch.zeros(2, 3))  # float ids: refused inside the generated forward
        except TypeError:
            lines = traceback.format_exc().splitlines()
        generated = next(i for i, line in enumerate(lines) if "nldsl generated from specs/titans_lmm.nl" in line)
        return lines[generated:generated + 2]

    first = failing_call()
    assert "R.checked_inputs(" in first[1], first
    linecache.clearcache()  # as IPython and some debuggers do: the registered copy is gone
    assert failing_call() == first
    module = inspect.getmodule(type(titans))
    banner = inspect.getsource(module).splitlines()[3]
    # the command in the banner makes this module: it names the override the model was built with
    assert banner == "#     nldsl compile --set=dim=32 -o <this file> specs/titans_lmm.nl", banner


def test_a_built_model_deep_copies_and_pickles_after_its_spec_is_built_again(titans) -> None:
    again = nldsl.load("specs/titans_lmm.nl", **SMALL)
    assert type(again) is type(titans) and again.module is titans.module  # one module per generated text
    x = tokens()
    with torch.no_grad():
        expected = titans(x)
        assert torch.equal(copy.deepcopy(titans)(x), expected)
        buffer = io.BytesIO()
        torch.save(titans, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)


def test_a_float64_model_keeps_its_loss_in_float64(titans) -> None:
    model = copy.deepcopy(titans).double()
    x = tokens()
    assert model.loss(x, x).dtype == torch.float64
    assert copy.deepcopy(titans).bfloat16().loss(x, x).dtype == torch.float32  # half precisions: at least float32


def test_the_loss_is_the_mean_over_positions_with_a_target_and_zero_without_any(hope) -> None:
    """−1 marks a position without a target; a batch with none at all (a padded tail, T = 1 with the
    last target unknown) has loss 0 and zero gradients, not the NaN of an empty mean."""
    x = tokens()
    targets = torch.roll(x, -1, dims=1)
    targets[0, 3:] = -1
    logits = hope(x, targets)
    kept = targets >= 0
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    assert torch.allclose(hope.loss(x, targets), expected, rtol=1e-6)
    hope.zero_grad(set_to_none=True)
    empty = hope.loss(x, torch.full_like(x, -1))
    empty.backward()
    assert empty.item() == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in hope.parameters() if p.grad is not None)
    hope.zero_grad(set_to_none=True)


def test_a_cast_and_back_leaves_the_rotary_tables_exact() -> None:
    """The tables are not saved with the weights, so a rounded table would outlive a cast back:
    they follow the model's device and are rebuilt in float64 at every move (L.RotaryTables)."""
    model = nldsl.load("specs/transformer.nl", **SMALL)
    rotary = model.blocks[0].attention.rotary
    exact = rotary.cos.clone(), rotary.sin.clone()
    model.bfloat16().float()
    assert rotary.cos.dtype == torch.float64 and torch.equal(rotary.cos, exact[0]) and torch.equal(rotary.sin, exact[1])
    model.to("meta")
    assert rotary.cos.device.type == "meta"


@pytest.mark.parametrize("overrides", ["dim=32", {"dim": 32}, ["dim=32", 5]])
def test_load_refuses_overrides_that_are_not_a_list_of_strings(overrides) -> None:
    with pytest.raises(TypeError, match="overrides must be a list of 'key=value' strings"):
        nldsl.load("specs/titans_lmm.nl", overrides)


def test_load_takes_any_real_number_for_a_keyword_override() -> None:
    model = nldsl.load("specs/titans_lmm.nl", dim=torch.tensor(32).item(), train__seq_len=64)
    assert model.spec.model.dim == 32
    numpy = pytest.importorskip("numpy")
    assert nldsl.load("specs/titans_lmm.nl", dim=numpy.int64(32)).spec.model.dim == 32
    for huge in (fractions.Fraction(10**400, 3), -fractions.Fraction(10**400, 3)):  # past a float's range
        with pytest.raises(ValueError, match=r"^dim=Fraction\(-?10+…: a spec's numbers are finite floats"):
            nldsl.load("specs/titans_lmm.nl", dim=huge)
    assert nldsl.load("specs/titans_lmm.nl", dim=torch.tensor(32)).spec.model.dim == 32  # a 0-d tensor: its number
    assert nldsl.load("specs/titans_lmm.nl", model__tie_embeddings=torch.tensor(False)).spec.model.tie_embeddings \
        is False  # a 0-d bool: its bool, not 0
    numpy = pytest.importorskip("numpy")
    # the language has neither nan nor inf, also inside a list or a 0-d tensor: a ValueError naming the keyword
    for key, odd in (("train__clip", float("nan")), ("train__clip", torch.tensor(float("-inf"))),
                     ("train__clip", numpy.float32("inf")), ("gates", [1.0, float("nan")])):
        with pytest.raises(ValueError, match=rf"^{key}=.*: a spec's numbers are finite floats"):
            nldsl.load("specs/titans_lmm.nl", **{key: odd})
    with pytest.raises(TypeError, match="path must be a spec file's path"):
        nldsl.load(5)


@pytest.mark.parametrize("call", [nldsl.load, nldsl.check])
def test_python_overrides_are_named_as_python_gives_them(call) -> None:
    with pytest.raises(nldsl.diagnostics.SpecError) as raised:
        call("specs/titans_lmm.nl", ["dim32"])
    assert "<override 1>" in str(raised.value) and "write e.g. 'train.steps=200'" in str(raised.value)
    assert "--set" not in str(raised.value)
    assert "Returns a freshly initialised `torch.nn.Module`" in nldsl.load.__doc__  # help(nldsl.load) says it all


def test_load_places_the_model_and_train_seed_gives_the_weights_nldsl_train_starts_from() -> None:
    model = nldsl.load("specs/titans_lmm.nl", dim=32, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert next(nldsl.load("specs/titans_lmm.nl", dim=32, device=torch.device("cpu")).parameters()).is_cpu
    # a device nldsl cannot use here is a ValueError before anything is built, as nldsl.load_run says it
    for device, message in (("meta", "device meta: nldsl runs on cpu, cuda or mps devices, not meta"),
                            ("nope", "unknown device `nope`")):
        with pytest.raises(ValueError, match=re.escape(message)):
            nldsl.load("specs/titans_lmm.nl", dim=32, device=device)
    for dtype in (torch.int32, "float32"):  # torch's own TypeError named nn.Module.to
        with pytest.raises(TypeError, match=r"dtype must be a floating-point torch dtype"):
            nldsl.load("specs/titans_lmm.nl", dim=32, dtype=dtype)
    if not torch.cuda.is_available():  # torch's AssertionError "Torch not compiled with CUDA enabled" escaped
        for device in ("cuda", 0):
            with pytest.raises(ValueError, match=r"device cuda(:0)?: no CUDA device is available"):
                nldsl.load("specs/titans_lmm.nl", dim=32, device=device)
    torch.manual_seed(3)
    first = nldsl.load("specs/titans_lmm.nl", dim=32, train__seed=0)
    after_first = torch.rand(1)
    torch.manual_seed(3)
    other = nldsl.load("specs/titans_lmm.nl", dim=32, train__seed=5)
    assert torch.equal(torch.rand(1), after_first), "the global random state is left as it was"
    again = nldsl.load("specs/titans_lmm.nl", ["train.seed=0"], dim=32)
    torch.manual_seed(0)  # what `nldsl train` does before building
    trained_from = nldsl.load("specs/titans_lmm.nl", dim=32)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]) and torch.equal(weight, trained_from.state_dict()[name])
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))


def test_a_state_made_under_inference_mode_continues_in_a_call_that_records_gradients(titans) -> None:
    # torch refuses inference tensors in a backward's saved tensors, deep in a layer; frozen in part
    # or not at all, the model continues such a state with the values it holds
    with torch.no_grad():
        _, reference = titans(tokens(), return_state=True)
        expected = titans(tokens(), state=reference)
    for frozen in ([], ["embed"], [name for name, _ in titans.named_parameters()]):
        model = copy.deepcopy(titans)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in frozen)
        with torch.inference_mode():
            _, state = model(tokens(), return_state=True)
        logits = model(tokens(), state=state)
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)
        if frozen != [name for name, _ in titans.named_parameters()]:
            logits.sum().backward()  # the state's copies are constants of the call
        assert not any(tensor.is_inference() for tensor in nldsl.runtime.blocks._tensors(state))


def test_a_saved_state_reads_back_with_torch_load_defaults(titans) -> None:
    from nldsl.runtime.evaluate import detach_state

    _, state = titans(tokens(), return_state=True)
    buffer = io.BytesIO()
    torch.save(detach_state(state), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)  # weights_only=True
    expected = titans(tokens(), state=detach_state(state))
    torch.testing.assert_close(titans(tokens(), state=loaded), expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. torch's "cannot dispatch to fused rms_norm"
@pytest.mark.parametrize("spec", ["specs/hope.nl", "specs/gated_deltanet.nl"])
def test_bfloat16_runs_forward_and_backward_on_the_cpu(spec) -> None:
    """The fused write (HOPE) and the exact delta kernel (gated DeltaNet) under autocast and cast."""
    torch.manual_seed(0)
    model = nldsl.load(spec, **SMALL)
    x = tokens(length=40)
    with torch.no_grad():
        reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(x, x)
        with torch.no_grad():
            autocast = model(x).float()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        cast = model.bfloat16()(x).float()
    for low in (autocast, cast):  # bfloat16 keeps ~3 significant digits
        assert (low - reference).norm() < 0.05 * reference.norm()


@pytest.mark.parametrize("mode", ["autocast", "cast"])
def test_bfloat16_keeps_a_retention_near_one(mode) -> None:
    # Titans' learned retention starts at α = 0.999, exactly 1 in bfloat16: a memory computed with
    # its gates in bfloat16 never forgot, and its error against float64 grew with T (0.07 → 0.49 over
    # 1024 tokens). With the gates and the recurrence in float32 the error stays where bfloat16 puts it.
    torch.manual_seed(0)
    model = nldsl.load("specs/titans_lmm.nl", **SMALL, model__layers=1).double()
    x = tokens(batch=1, length=512)
    with torch.no_grad():
        reference = model(x)
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model.float()(x).double()
        else:
            low = model.bfloat16()(x).double()
    error = ((low - reference).norm(dim=-1) / reference.norm(dim=-1))[0]  # per token
    windows = [error[start:start + 128].mean().item() for start in range(0, 512, 128)]
    assert max(windows) < 0.03 and windows[-1] < 1.5 * windows[0], windows


def test_the_delta_solve_runs_half_precisions_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    matrix = 0.3 * torch.randn(2, 8, 8, generator=generator).tril(-1)
    rhs = torch.randn(2, 8, 4, generator=generator)
    expected = torch.linalg.solve_triangular(matrix, rhs, upper=False, unitriangular=True)
    solved = _solve_unit_lower(matrix.bfloat16(), rhs.bfloat16())
    assert solved.dtype == torch.bfloat16
    assert (solved.float() - expected).norm() < 0.02 * expected.norm()
    assert torch.equal(_solve_unit_lower(matrix.double(), rhs.double()),
                       torch.linalg.solve_triangular(matrix.double(), rhs.double(), upper=False, unitriangular=True))


def test_a_model_larger_than_memory_is_refused_before_it_is_allocated() -> None:
    # 10^12 persistent-memory rows: the allocation alone would overcommit, and touching it would kill the process
    with pytest.raises(ModelTooLargeError,
                       match=r"the model has [\d,]+ parameters \(476,837 GiB of weights\), more than the"):
        nldsl.load("specs/transformer.nl", dim=32, model__block__attention__persistent=10**12)
    from nldsl.loader import _gib  # a size past a million GiB reads as a power of ten, not 15 digits and ".0"
    assert [_gib(int(size)) for size in (4e8, 1.3e10, 1.1e12, 2.05e23)] == \
        ["0.4 GiB", "12.1 GiB", "1,024 GiB", "1.9e+14 GiB"]



def test_the_memory_check_counts_the_bytes_of_the_dtype_asked_for(monkeypatch) -> None:
    """Memory for the float32 weights and half as much again: float64 weights do not fit."""
    from nldsl import loader, shapes

    spec = nldsl.check("specs/transformer.nl", ["dim=32"]).spec
    count = shapes.count(shapes.model_parameters(spec.model))
    monkeypatch.setattr(loader, "_device_memory", lambda device: count * 6)
    assert nldsl.load("specs/transformer.nl", dim=32) is not None
    with pytest.raises(ModelTooLargeError, match=r"more than the [\d.]+ GiB of memory of cpu"):
        nldsl.load("specs/transformer.nl", dim=32, dtype=torch.float64)


@pytest.mark.parametrize("adaptive, projections, warned, unread", [
    ("[]", "", True, ["wv", "conv_v"]),
    ("[k]", "objective = reconstruction", True, ["wv", "conv_v"]),
    ("[k, v]", "objective = reconstruction", True, ["v_memory_w1", "v_memory_w2", "conv_v"]),
    ("[k, v]", "", False, ["v_memory_w1", "v_memory_w2", "conv_v"]),  # the projection memories write values
])
def test_w0706_on_a_selfmod_whose_values_nothing_reads_names_what_gets_no_gradient(
        tmp_path, adaptive, projections, warned, unread) -> None:
    from nldsl.checker import check_file

    spec = tmp_path / "values.nl"
    spec.write_text(f"""model m {{
  vocab = 256
  dim = 32
  layers = 1
  block {{
    selfmod {{
      heads = 2
      adaptive = {adaptive}
      level memory {{ objective = reconstruction  period = 4 }}
      level projections {{ {projections}  period = 2  readout = chunk_start }}
    }}
  }}
}}
train {{ seq_len = 32 }}
""")
    warnings = [d.message for d in check_file(spec).diagnostics if d.code == "W0706" and "values" in d.message]
    assert bool(warnings) == warned
    torch.manual_seed(0)
    model = nldsl.load(spec)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))  # off the initialisation, where some gradients vanish anyway
    x = tokens(2, 16)
    model.loss(x, torch.roll(x, -1, 1)).backward()
    grads = {name.rsplit(".", 1)[-1]: p.grad for name, p in model.named_parameters()}
    silent = [name for name in unread if grads[name] is None or not grads[name].any()]
    assert silent == (unread if warned else [])
    if warned:
        assert ("M_v" if "v" in adaptive else "W_v") in warnings[0]

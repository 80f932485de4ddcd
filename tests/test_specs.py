"""The shipped specs (specs/, recursively): each checks clean, cites the paper, stays laptop-sized,
and says what its header says; HOPE's Table 6 ablations are one-line changes of specs/hope.nl.

The meaning tests pin each spec to the special case it claims (linear attention is a zero-started
linear memory with a dot objective and η = 1, DeltaNet's retention-free delta rule, AdamW with
torch's defaults, …), so that an edit that silently changes a model fails here, not in a benchmark.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import pytest

from nldsl import ast
from nldsl import spec as S
from nldsl.checker import CheckResult, check_file, check_text
from nldsl.diagnostics import render_text
from nldsl.parser import parse
from nldsl.source import SourceFile

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
SPEC_FILES = sorted(SPECS.rglob("*.nl"))
OPTIMIZER_FILES = sorted((SPECS / "optimizers").glob("*.nl"))
MODEL_FILES = [path for path in SPEC_FILES if path not in OPTIMIZER_FILES]
SHIPPED = {
    "hope.nl", "hope_attention.nl", "titans_lmm.nl", "titans_mac.nl", "titans_mag.nl", "titans_mal.nl",
    "transformer.nl", "transformer_muon.nl", "linear_attention.nl", "deltanet.nl", "gated_deltanet.nl",
    "optimizers/sgd_momentum.nl", "optimizers/delta_momentum.nl", "optimizers/dmgd.nl", "optimizers/muon.nl",
    "optimizers/m3.nl", "optimizers/adamw.nl", "optimizers/lion.nl",
}


def spec_id(path: Path) -> str:
    return path.relative_to(SPECS).as_posix()


def checked(path: Path, overrides: tuple[str, ...] = ()) -> CheckResult:
    result = check_file(path, overrides)
    assert result.ok, render_text(result.diagnostics, result.sources)
    return result


def header_comment(text: str) -> str:
    """The comment block a spec file opens with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def differences(before: Any, after: Any, path: str) -> set[str]:
    """The shallowest paths where two dumped specs differ (a value kind change is one difference)."""
    if isinstance(before, dict) and isinstance(after, dict) and before.keys() == after.keys() \
            and before.get("kind") == after.get("kind"):
        return {d for key in before for d in differences(before[key], after[key], f"{path}.{key}")}
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(before) == len(after) \
            and all(isinstance(item, dict) for item in (*before, *after)):
        return {d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}.{i}")}
    return set() if before == after else {path}


def spec_differences(before: S.Spec, after: S.Spec) -> set[str]:
    exclude = {"path", "sha256"}
    return differences(before.model_dump(exclude=exclude), after.model_dump(exclude=exclude), "spec")


def test_every_shipped_spec_exists():
    assert {spec_id(path) for path in SPEC_FILES} >= SHIPPED


@pytest.mark.parametrize("path", SPEC_FILES, ids=spec_id)
def test_spec_checks_clean(path):
    result = check_file(path)
    assert result.ok and not result.diagnostics, render_text(result.diagnostics, result.sources)


@pytest.mark.parametrize("path", SPEC_FILES, ids=spec_id)
def test_header_cites_the_paper(path):
    header = header_comment(path.read_text(encoding="utf-8"))
    assert header, "a spec opens with a comment saying what it is"
    assert re.search(r"Eq\. \d+", header), "the header cites at least one equation"


@pytest.mark.parametrize("path", MODEL_FILES, ids=spec_id)
def test_model_spec_trains_on_a_laptop(path):
    spec = checked(path).spec
    assert spec.model is not None
    assert 64 <= spec.model.dim <= 128
    assert spec.model.layers == 2
    assert 128 <= spec.train.seq_len <= 256
    assert spec.train.batch == 8
    assert 100 <= spec.train.steps <= 300


@pytest.mark.parametrize("path", [p for p in MODEL_FILES if "const dim = " in p.read_text(encoding="utf-8")],
                         ids=spec_id)
def test_model_width_is_one_override_away(path):
    spec = checked(path, ("dim=64",)).spec
    assert spec.model.dim == 64
    assert spec_differences(checked(path).spec, spec) == {"spec.model.dim"}


@pytest.mark.parametrize("path", OPTIMIZER_FILES, ids=spec_id)
def test_optimizer_file_holds_one_optimizer(path):
    module, diagnostics = parse(SourceFile.from_text(str(path), path.read_text(encoding="utf-8")))
    assert module is not None and not diagnostics
    sections = [item for item in module.items if isinstance(item, ast.Section)]
    assert all(isinstance(item, (ast.Const, ast.Section)) for item in module.items)
    assert [(s.kind, s.name) for s in sections] == [("optimizer", path.stem)]
    spec = checked(path).spec
    assert spec.model is None and [opt.name for opt in spec.optimizers] == [path.stem]


# What each spec means ---------------------------------------------------------------------------

def model_of(name: str) -> S.ModelSpec:
    return checked(SPECS / name).spec.model


def optimizer_of(name: str) -> S.OptimizerSpec:
    return checked(SPECS / "optimizers" / name).spec.optimizers[0]


def test_linear_attention_is_a_hebbian_linear_memory():
    memory = model_of("linear_attention.nl").block.sublayers[0]
    level = memory.level
    assert isinstance(memory, S.MemorySpec)
    assert (memory.activation, memory.conv, memory.qk_norm) == ("none", 0, "none")
    assert isinstance(level.state, S.LinearState)
    assert (level.objective, level.rule, level.period, level.init, level.readout) == ("dot", "gd", 1, "zeros", "causal")
    assert level.lr == S.ConstantGate(value=1.0)
    assert level.retention is None and level.momentum is None


def test_deltanet_is_the_delta_rule_with_a_learned_beta():
    level = model_of("deltanet.nl").block.sublayers[0].level
    assert isinstance(level.state, S.LinearState)
    assert (level.objective, level.rule, level.period, level.init, level.readout) == ("l2", "gd", 1, "zeros", "causal")
    assert isinstance(level.lr, S.LearnedGate) and level.lr.max == 1.0
    assert level.retention is None and level.momentum is None


def test_gated_deltanet_adds_only_a_retention_gate():
    plain = model_of("deltanet.nl").block.sublayers[0]
    gated = model_of("gated_deltanet.nl").block.sublayers[0]
    assert isinstance(gated.level.retention, S.LearnedGate)
    assert gated.level.retention_order == "before_write"  # decay, then write: Gated DeltaNet exactly
    assert gated.level.model_copy(update={"retention": None, "retention_order": "with_write"}) == plain.level
    assert gated.model_copy(update={"name": plain.name, "level": plain.level, "output_gate": False}) == plain


@pytest.mark.parametrize("name", ["titans_mac.nl", "titans_mag.nl", "titans_mal.nl"])
def test_titans_variants_reuse_the_lmm_memory(name):
    lmm_level = model_of("titans_lmm.nl").block.sublayers[0].level
    layers = model_of(name).block.sublayers
    memories = [layer for layer in layers if isinstance(layer, S.MemorySpec)]
    for layer in layers:
        if isinstance(layer, S.ParallelSpec):
            memories += [b for b in layer.branches if isinstance(b, S.MemorySpec)]
        if isinstance(layer, S.ContextSpec):
            memories.append(layer.memory)
    assert [memory.level for memory in memories] == [lmm_level]


def test_titans_layouts():
    mac = model_of("titans_mac.nl").block.sublayers
    assert [layer.kind for layer in mac] == ["context", "mlp"]
    assert mac[0].attention.persistent > 0 and mac[0].attention.window == 0
    mag = model_of("titans_mag.nl").block.sublayers
    assert [layer.kind for layer in mag] == ["parallel", "mlp"]
    assert mag[0].combine == "gate" and [b.kind for b in mag[0].branches] == ["attention", "memory"]
    assert mag[0].branches[0].window > 0
    mal = model_of("titans_mal.nl").block.sublayers
    assert [layer.kind for layer in mal] == ["memory", "attention", "mlp"]
    assert mal[1].window > 0


def test_transformer_is_rope_attention_and_swiglu():
    model = model_of("transformer.nl")
    attention, mlp = model.block.sublayers
    assert model.block.norm == "rms"
    assert isinstance(attention, S.AttentionSpec) and attention.rope and attention.window == 0
    assert isinstance(mlp, S.MLPSpec) and mlp.activation == "swiglu"


def test_hope_attention_is_the_transformer_with_hope_cms():
    attention, cms = model_of("hope_attention.nl").block.sublayers
    assert attention == model_of("transformer.nl").block.sublayers[0]
    assert cms == model_of("hope.nl").block.sublayers[1]


def test_transformer_muon_uses_the_muon_spec():
    spec = checked(SPECS / "transformer_muon.nl").spec
    assert spec.train.optimizer == optimizer_of("muon.nl")
    assert spec.model.model_copy(update={"name": "transformer"}) == model_of("transformer.nl")


def test_sgd_momentum_is_torch_sgd():
    (level,) = optimizer_of("sgd_momentum.nl").levels
    assert (level.flow, level.state, level.objective, level.lr, level.retention) == \
        ("gradients", "linear", "dot", 1.0, 0.9)
    assert not level.nesterov and not level.bias_correction and level.orthogonalize is None


def _steps(named: list, optimizer: Any, grads_per_step: list) -> list:
    """Step `optimizer` over `named` parameters with the given gradients; the parameters after each step."""
    history = []
    for grads in grads_per_step:
        for (_, p), g in zip(named, grads):
            p.grad = g.clone()
        optimizer.step()
        history.append([p.detach().clone() for _, p in named])
    return history


def test_sgd_momentum_with_weight_decay_is_the_builtin_sgd():
    # Both decay decoupled, p ← p (1 − lr λ) − lr m, and only weights of two or more dimensions.
    torch = pytest.importorskip("torch")
    from nldsl.compiler.optimizers import build_optimizer

    text = 'import "optimizers/sgd_momentum.nl" as opt\ntrain { optimizer = opt.sgd_momentum }\n'
    result = check_text(text, str(SPECS / "sgd_user.nl"), ["train.optimizer.weight_decay=0.05"], base_dir=SPECS)
    assert result.ok, render_text(result.diagnostics, result.sources)
    builtins = [check_text(f"train {{ optimizer = sgd(lr = 0.05, momentum = 0.9{decay}) }}").spec.train.optimizer
                for decay in (", weight_decay = 0.05", "")]
    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (3,), (2, 3, 4)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes] for _ in range(10)]
    histories = []
    for spec in (result.spec.train.optimizer, *builtins):
        named = [(f"p{i}", torch.nn.Parameter(p.clone())) for i, p in enumerate(start)]
        histories.append(_steps(named, build_optimizer(named, spec), grads))
    level, builtin, undecayed = histories
    for ours, theirs in zip(level, builtin, strict=True):
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(builtin[-1][0], undecayed[-1][0])  # the decay acts on the matrix
    assert torch.equal(builtin[-1][1], undecayed[-1][1])  # and not on the vector


@pytest.mark.parametrize("name", ["muon.nl", "m3.nl"])
def test_matrices_only_optimizers_decay_weights_of_two_or_more_dimensions_only(name):
    torch = pytest.importorskip("torch")
    from nldsl.compiler.optimizers import build_optimizer

    optimizer = optimizer_of(name)
    assert optimizer.matrices_only and optimizer.weight_decay > 0
    named = [("w", torch.nn.Parameter(torch.ones(4, 4, dtype=torch.float64))),
             ("state", torch.nn.Parameter(torch.ones(2, 2, 2, dtype=torch.float64))),
             ("norm.weight", torch.nn.Parameter(torch.ones(4, dtype=torch.float64)))]
    zero = [[torch.zeros_like(p) for _, p in named]] * 10  # no gradient: only weight decay moves a parameter
    (*_, last) = _steps(named, build_optimizer(named, optimizer), zero)
    decayed = (1 - optimizer.lr * optimizer.weight_decay) ** 10
    assert [p.flatten()[0].item() for p in last] == pytest.approx([decayed, decayed, 1.0], rel=1e-12, abs=0)


@pytest.mark.parametrize("rms, ratio", [(1e-3, (1.0, 1.001)), (1e-2, (1.0, 1.02)), (1e-1, (3.6, 3.8))])
def test_dmgd_step_against_sgd_momentum_on_a_steady_gradient(rms, ratio):
    # What specs/optimizers/dmgd.nl says of its lr: on a steady gradient (after 100 steps, when
    # sgd_momentum's buffer has reached g / (1 − 0.9) to 3e-5) DMGD's step lr · φ(g) is sgd_momentum's
    # while φ stays near the identity, and grows once gradient entries are large enough to steepen φ.
    torch = pytest.importorskip("torch")
    from nldsl.compiler.optimizers import build_optimizer

    g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * rms
    steps = []
    for name in ("dmgd.nl", "sgd_momentum.nl"):
        named = [("w", torch.nn.Parameter(torch.zeros(64, 64, dtype=torch.float64)))]
        *_, before, after = _steps(named, build_optimizer(named, optimizer_of(name)), [[g]] * 100)
        steps.append((after[0] - before[0]).norm().item())
    assert ratio[0] <= steps[0] / steps[1] <= ratio[1]


def test_delta_momentum_and_dmgd_change_only_the_memory():
    momentum = optimizer_of("sgd_momentum.nl").levels[0]
    delta = optimizer_of("delta_momentum.nl").levels[0]
    deep = optimizer_of("dmgd.nl").levels[0]
    assert delta.objective == "l2" and delta.model_copy(update={"objective": "dot"}) == momentum
    assert deep.state == "mlp" and deep.objective == "dot"


def test_adamw_has_torch_defaults():
    torch = pytest.importorskip("torch")
    defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    beta1, beta2 = defaults["betas"]
    optimizer = optimizer_of("adamw.nl")
    m, v = optimizer.levels
    assert (optimizer.lr, optimizer.weight_decay) == (defaults["lr"], defaults["weight_decay"])
    assert (m.flow, m.retention, m.lr, m.bias_correction) == ("gradients", beta1, 1 - beta1, True)
    assert (v.flow, v.retention, v.lr, v.bias_correction) == ("squared_gradients", beta2, 1 - beta2, True)
    assert optimizer.update == ("div", ("level", "m"), ("add", ("sqrt", ("level", "v")), ("const", defaults["eps"])))


def test_muon_has_torch_momentum_and_newton_schulz():
    torch = pytest.importorskip("torch")
    defaults = torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)]).defaults
    optimizer = optimizer_of("muon.nl")
    (level,) = optimizer.levels
    assert optimizer.lr_scale == "muon" and optimizer.matrices_only
    assert optimizer.weight_decay == defaults["weight_decay"]
    assert (level.retention, level.lr, level.nesterov) == \
        (defaults["momentum"], 1 - defaults["momentum"], defaults["nesterov"])
    assert level.orthogonalize == S.NewtonSchulz(steps=defaults["ns_steps"])


def test_lion_is_lion_step_for_step():
    # Chen et al. 2023, Algorithm 2, written here: c = β1 m + (1 − β1) g; p ← p − lr (sign(c) + λ p);
    # m ← β2 m + (1 − β2) g. Applied, as Lion's weight decay is, to every parameter here; nldsl decays
    # matrices only, so the vector is checked with λ = 0.
    torch = pytest.importorskip("torch")
    from nldsl.compiler.optimizers import build_optimizer

    optimizer = optimizer_of("lion.nl")
    lr, decay, beta1, beta2 = optimizer.lr, optimizer.weight_decay, 0.9, 0.99
    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (4,)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    # a zero entry in the first step's gradient: sign(0) is 0, the entry moves by its decay only
    grads = [[torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes] for _ in range(12)]
    grads[0][0][0, 0] = 0.0
    named = [(f"p{i}", torch.nn.Parameter(p.clone())) for i, p in enumerate(start)]
    ours = _steps(named, build_optimizer(named, optimizer), grads)
    params, moments = [p.clone() for p in start], [torch.zeros_like(p) for p in start]
    for step, step_grads in enumerate(grads):
        for i, g in enumerate(step_grads):
            c = beta1 * moments[i] + (1 - beta1) * g
            params[i] = params[i] - lr * (torch.sign(c) + (decay if params[i].ndim >= 2 else 0.0) * params[i])
            moments[i] = beta2 * moments[i] + (1 - beta2) * g
            torch.testing.assert_close(ours[step][i], params[i], rtol=1e-12, atol=1e-15)
    assert ours[0][0][0, 0] == start[0][0, 0] * (1 - lr * decay)


def test_m3_mixes_a_fast_a_slow_and_a_second_moment_level():
    optimizer = optimizer_of("m3.nl")
    levels = {level.name: level for level in optimizer.levels}
    fast, slow, second = levels["fast"], levels["slow"], levels["second_moment"]
    assert fast.period == 1 < slow.period
    assert (fast.readout, slow.readout) == ("causal", "exclusive")  # Algorithm 1 reads M2 of the last block
    assert fast.orthogonalize is not None and slow.orthogonalize is not None
    assert second.flow == "squared_gradients" and second.orthogonalize is None
    assert optimizer.update == ("div", ("add", ("level", "fast"), ("mul", ("const", 0.5), ("level", "slow"))),
                                ("add", ("sqrt", ("level", "second_moment")), ("const", 1e-8)))


# HOPE's ablations (Table 6) ---------------------------------------------------------------------

HOPE = SPECS / "hope.nl"
MEMORY_SECTION = "level hope_memory "
SELFMOD_SECTION = "selfmod titans "
SELFMOD = "spec.model.block.sublayers.0"
CMS = "spec.model.block.sublayers.1"


def both_levels(field: str) -> set[str]:
    """The self-modifying Titans' memories: the main memory and the projection memories."""
    return {f"{SELFMOD}.memory.{field}", f"{SELFMOD}.projections.{field}"}


def set_attribute(text: str, header: str, key: str, value: str) -> str:
    """Set `key = value` in the section whose header line starts with `header`: replace the line
    that sets it, or add one before the section's closing brace."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(header)]
    assert len(starts) == 1, f"`{header}` must open exactly one section"
    start, depth = starts[0], 0
    for end in range(start, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0:
            break
    assert end > start, f"`{header}` must span several lines"
    indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)
    new_line = f"{indent}{key} = {value}\n"
    for i in range(start + 1, end):
        if re.match(rf"{indent}{key}\s*=", lines[i]):
            lines[i] = new_line
            return "".join(lines)
    lines.insert(end, new_line)
    return "".join(lines)


def replace_section(text: str, header: str, replacement: str) -> str:
    """Replace the whole section whose header line starts with `header`."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header))
    depth = 0
    for end in range(start, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        if depth == 0:
            break
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    return "".join([*lines[:start], f"{indent}{replacement}\n", *lines[end + 1:]])


def changed_lines(before: str, after: str) -> int:
    """How many lines of `before` an edit removes or adds (a replaced line counts once)."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return max(sum(line.startswith("- ") for line in diff), sum(line.startswith("+ ") for line in diff))


# Table 6 row -> (edits of hope.nl as (section header, key, value), `--set` overrides, changed fields).
# "w/o momentum" sets β = 0: the momentum recurrence S_t = β S_{t−1} − η u_t, θ_t = α θ_{t−1} + S_t
# is then exactly gd (docs/semantics.md §1.5); the language has no way to unset an inherited gate.
# "w/o weight decay" also drops `alpha` from `adaptive`: an adaptive alpha generates α_t whatever
# `retention` says (docs/semantics.md §3.6). Hope's q is static already (§8.1), so the row
# "w/o inner-projection q" is the shipped spec and its counterpart is "adaptive q".
ABLATIONS: dict[str, tuple[list[tuple[str, str, str]], list[str], set[str]]] = {
    "without DGD": (
        [(MEMORY_SECTION, "rule", "gd")],
        ["model.block.titans.memory.rule=gd", "model.block.titans.projections.rule=gd"],
        both_levels("rule")),
    "without momentum": (
        [(MEMORY_SECTION, "momentum", "0")],
        ["model.block.titans.memory.momentum=0", "model.block.titans.projections.momentum=0"],
        both_levels("momentum")),
    "without weight decay": (
        [(MEMORY_SECTION, "retention", "1.0"), (SELFMOD_SECTION, "adaptive", "[k, v, eta]")],
        ["model.block.titans.memory.retention=1.0", "model.block.titans.projections.retention=1.0",
         "model.block.titans.adaptive=[k, v, eta]"],
        both_levels("retention") | {f"{SELFMOD}.adaptive"}),
    "static k": (
        [(SELFMOD_SECTION, "adaptive", "[v, eta, alpha]")],
        ["model.block.titans.adaptive=[v, eta, alpha]"],
        {f"{SELFMOD}.adaptive"}),
    "static v": (
        [(SELFMOD_SECTION, "adaptive", "[k, eta, alpha]")],
        ["model.block.titans.adaptive=[k, eta, alpha]"],
        {f"{SELFMOD}.adaptive"}),
    "adaptive q": (
        [(SELFMOD_SECTION, "adaptive", "[k, v, q, eta, alpha]")],
        ["model.block.titans.adaptive=[k, v, q, eta, alpha]"],
        {f"{SELFMOD}.adaptive"}),
}


@pytest.fixture(scope="module")
def hope() -> tuple[str, S.Spec]:
    return HOPE.read_text(encoding="utf-8"), checked(HOPE).spec


@pytest.mark.parametrize("row", ABLATIONS)
def test_hope_ablation_is_a_one_line_edit(row, hope):
    text, original = hope
    edits, _, changed = ABLATIONS[row]
    edited = text
    for header, key, value in edits:
        edited = set_attribute(edited, header, key, value)
    assert changed_lines(text, edited) == len(edits)
    result = check_text(edited, str(HOPE), base_dir=SPECS)
    assert result.ok and not result.diagnostics, render_text(result.diagnostics, result.sources)
    assert spec_differences(original, result.spec) == changed


@pytest.mark.parametrize("row", ABLATIONS)
def test_hope_ablation_by_overrides(row, hope):
    text, original = hope
    edits, overrides, changed = ABLATIONS[row]
    result = checked(HOPE, tuple(overrides))
    assert not result.diagnostics
    assert spec_differences(original, result.spec) == changed
    edited = text
    for header, key, value in edits:
        edited = set_attribute(edited, header, key, value)
    assert result.spec.model == check_text(edited, str(HOPE), base_dir=SPECS).spec.model


def test_hope_without_momentum_has_zero_beta(hope):
    spec = checked(HOPE, tuple(ABLATIONS["without momentum"][1])).spec
    selfmod = spec.model.block.sublayers[0]
    assert selfmod.memory.momentum == selfmod.projections.momentum == S.ConstantGate(value=0.0)


def test_hope_without_cms_replaces_the_chain_by_an_mlp(hope):
    # "w/o CMS": the Transformer case of CMS (k = 1, no in-context update, §7.1) is a plain MLP.
    text, original = hope
    edited = replace_section(text, "cms {", "mlp { }")
    result = check_text(edited, str(HOPE), base_dir=SPECS)
    assert result.ok and not result.diagnostics, render_text(result.diagnostics, result.sources)
    assert spec_differences(original, result.spec) == {CMS}
    assert isinstance(result.spec.model.block.sublayers[1], S.MLPSpec)

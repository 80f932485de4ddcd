"""The fused chunk-end write (nldsl/runtime/fused.py) against the PyTorch chunk step it replaces.

The kernel's new θ and S, its read of the next chunk, and the gradients of every input agree in
float64 with the PyTorch path (`memory_chunk_step` with the kernel off, `memory_forward` for the
read) over every state, activation, value source, DGD placement and momentum it accepts, with
and without a clip, for one
memory, for memories stacked on shared inputs (HOPE's projections) and for weights past its
transpose limit; over random shapes and options (hypothesis; NLDSL_KERNEL_PROBLEMS, 200) in float64,
and in float32 against the exact answer; the whole HOPE model agrees with the kernel on and off; the dispatch rule; a
failed build warns and leaves the PyTorch step;
under torch.compile the kernel's chunk step is one graph (slow).
"""

import dataclasses
import itertools
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nldsl
from nldsl.runtime import fused, memory
from nldsl.runtime.chunked import compiled_chunks
from nldsl.runtime.memory import (
    LevelConfig,
    MemoryState,
    _write_factors,
    clip_scale,
    fused_write,
    init_memory_weights,
    initial_memory_state,
    memory_chunk_step,
    memory_forward,
    memory_level,
)

RTOL = 1e-10  # kernel vs PyTorch, float64: the same arithmetic in another order
MODEL_RTOL = 1e-9  # a whole HOPE model, float64, through many chunks; random problems up to 600 wide
KERNEL_PROBLEMS = int(os.environ.get("NLDSL_KERNEL_PROBLEMS", "200"))
# float32: the kernel's error against the float64 answer, at most this many times the PyTorch step's own
# float32 error (on the same inputs or on inputs an ulp away), or under the floor. An audit of 28,036 random
# problems read at most 21 times; a kernel dropping 3 leftover rows of a product read 5.7·10⁴ (1.9e-3 vs 3.3e-8)
FLOAT32_FACTOR, FLOAT32_FLOOR = 100.0, 2e-5
BATCH, HEADS, WIDTH, HIDDEN, TOKENS = 2, 3, 6, 7, 5

def level(state: str = "residual_mlp", **options) -> LevelConfig:
    for name, default in (("d_in", WIDTH), ("d_out", WIDTH), ("objective", "l2"), ("hidden", HIDDEN),
                          ("chunk_size", TOKENS)):
        options.setdefault(name, default)
    return LevelConfig(state, depth=2, readout="chunk_start", **options)


def draw(cfg: LevelConfig, memories: int = 1, seed: int = 0, following: int = 0,
         dtype: torch.dtype = torch.float64, sizes: tuple[int, int, int] = (BATCH, HEADS, TOKENS)) -> dict:
    """A chunk's inputs as leaves: state of `memories` stacked levels, keys, values, gates; `sizes` is
    (batch, heads, tokens)."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads, tokens = sizes

    def normal(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(shape, generator=generator, dtype=dtype)).requires_grad_()

    def uniform(low: float, high: float) -> torch.Tensor:
        value = low + (high - low) * torch.rand(batch, heads, tokens, generator=generator, dtype=dtype)
        return value.requires_grad_()

    shared = init_memory_weights(cfg, memories * heads, generator=generator, dtype=dtype)
    state = initial_memory_state(cfg, [w.requires_grad_() for w in shared], batch)
    if cfg.momentum:
        state.momentum = [normal(*m.shape, scale=0.05) for m in state.momentum or []]
    return {
        "state": state,
        "keys": normal(batch, heads, tokens, cfg.d_in),
        "values": normal(batch, heads, tokens, cfg.d_out),
        "lr": uniform(0.05, 0.5),
        "retention": uniform(0.5, 1.0),
        "momentum": uniform(0.2, 0.9) if cfg.momentum else None,
        "following": normal(batch, heads, following, cfg.d_in) if following else None,
        "shared": shared,
    }


def leaves(inputs: dict) -> list[torch.Tensor]:
    candidates = [*inputs["shared"], *(inputs["state"].momentum or []), inputs["keys"], inputs["values"],
                  inputs["lr"], inputs["retention"], inputs["momentum"], inputs["following"]]
    return [leaf for leaf in candidates if leaf is not None]


def tiled(tensor: torch.Tensor | None, memories: int) -> torch.Tensor | None:
    return None if tensor is None else torch.cat([tensor] * memories, dim=1)


def pytorch_step(cfg: LevelConfig, inputs: dict, memories: int) -> tuple[MemoryState, torch.Tensor | None]:
    """The reference: the PyTorch chunk step on inputs tiled once per stacked memory, then the read."""
    with fused.fused_writes(False):
        _, state = memory_chunk_step(
            cfg, inputs["state"], tiled(inputs["keys"], memories), tiled(inputs["values"], memories), None,
            tiled(inputs["lr"], memories), tiled(inputs["retention"], memories), tiled(inputs["momentum"], memories))
    read = None
    if inputs["following"] is not None:
        read = memory_forward(cfg, state.weights, tiled(inputs["following"], memories))[0]
    return state, read


def kernel_step(cfg: LevelConfig, inputs: dict, memories: int) -> tuple[MemoryState, torch.Tensor | None]:
    return fused_write(cfg, inputs["state"], inputs["keys"], inputs["values"], inputs["lr"], inputs["retention"],
                       inputs["momentum"], inputs["following"])


def produced_and_gradients(step, cfg: LevelConfig, inputs: dict, memories: int):
    state, read = step(cfg, inputs, memories)
    produced = [*state.weights, *(state.momentum or []), *([] if read is None else [read])]
    projection = torch.Generator().manual_seed(99)  # drawn in float64: the same loss in every dtype
    loss = sum((p * torch.randn(p.shape, generator=projection, dtype=torch.float64).to(p.dtype)).sum()
               for p in produced)
    return produced, torch.autograd.grad(loss, leaves(inputs))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_kernel_matches(cfg: LevelConfig, memories: int = 1, following: int = 0,
                          dtype: torch.dtype = torch.float64, rtol: float = RTOL) -> None:
    produced, gradients = produced_and_gradients(
        kernel_step, cfg, draw(cfg, memories, following=following, dtype=dtype), memories)
    expected, expected_gradients = produced_and_gradients(
        pytorch_step, cfg, draw(cfg, memories, following=following, dtype=dtype), memories)
    assert len(produced) == len(expected)
    for index, (actual, wanted) in enumerate(zip(produced, expected)):
        assert actual.shape == wanted.shape and actual.dtype == dtype
        assert relative_error(actual, wanted) <= rtol, f"output {index}"
    for index, (actual, wanted) in enumerate(zip(gradients, expected_gradients)):
        assert wanted.abs().sum() > 0, f"leaf {index} gets no gradient in the reference"
        assert relative_error(actual, wanted) <= rtol, f"gradient of leaf {index}"


GRID = [
    (state, activation, values, dgd, momentum)
    for state, activation, values, dgd, momentum in itertools.product(
        ["residual_mlp", "mlp"], ["silu", "gelu", "relu", "tanh"], ["given", "generated"], ["none", "first", "all"],
        [False, True])
]


@pytest.mark.parametrize(("state", "activation", "values", "dgd", "momentum"), GRID)
def test_kernel_matches_the_pytorch_step(state: str, activation: str, values: str, dgd: str, momentum: bool) -> None:
    cfg = level(state, activation=activation, values=values, dgd=dgd != "none",
                dgd_layers="all" if dgd == "all" else "first", momentum=momentum)
    assert fused.applies(cfg, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert_kernel_matches(cfg)


@pytest.mark.parametrize(("state", "values", "width", "hidden"), [
    ("residual_mlp", "generated", WIDTH, HIDDEN), ("residual_mlp", "given", 20, 36), ("mlp", "generated", 36, 20),
    ("residual_mlp", "generated", 32, 64)])
def test_the_float32_kernel_matches_the_pytorch_step(state: str, values: str, width: int, hidden: int) -> None:
    """The path training takes: the kernel's float instantiation (its own vector width), at widths
    that are not multiples of a vector, and at HOPE's projections' 32 → 64 → 32 (whole vectors, where
    the products start from the new weights' and gradients' elementwise parts in registers), against
    the PyTorch step in float32."""
    cfg = level(state, values=values, d_in=width, d_out=width, hidden=hidden, dgd=True, dgd_layers="all",
                momentum=True)
    assert fused.applies(cfg, torch.zeros(1), torch.zeros(1))
    assert_kernel_matches(cfg, following=2, dtype=torch.float32, rtol=2e-5)


@pytest.mark.parametrize("momentum", [False, True])
def test_rectangular_mlp_with_given_values(momentum: bool) -> None:
    assert_kernel_matches(level("mlp", d_out=4, momentum=momentum))


def test_large_weights_are_read_row_by_row() -> None:
    """Past the kernel's transpose limit (a CMS level's 512 × 128) products with Wᵀ are dot products of
    W's rows with the chunk's rows instead of a transposed copy."""
    cfg = level("mlp", d_in=16, d_out=12, hidden=520, momentum=True, dgd=True, dgd_layers="all")
    assert cfg.hidden * cfg.d_in > 8192  # kTransposeLimit in csrc/memory_write.cpp
    assert_kernel_matches(cfg, following=3)


@pytest.mark.parametrize(("memories", "following"), [(1, 3), (4, TOKENS), (3, 2)])
def test_stacked_memories_on_shared_inputs_and_the_next_read(memories: int, following: int) -> None:
    """HOPE's projections: A memories share keys, values and gates; the call also reads the next chunk."""
    assert_kernel_matches(level(values="generated", dgd=True, momentum=True), memories, following)


def clipped_between(options: dict, inputs: dict, memories: int) -> LevelConfig:
    """`level(**options)` with a clip halfway between the middle two gradient norms of the drawn chunk
    (`memory._write_factors` on its keys and values, tiled per stacked memory), and those norms' factors."""
    keys, values = (tiled(inputs[name], memories) for name in ("keys", "values"))
    squared = _write_factors(level(**options, clip=1.0), inputs["state"].weights, keys, values, None, None)[3]
    norms = squared.detach().flatten().sqrt().sort().values
    middle = len(norms) // 2
    cfg = level(**options, clip=((norms[middle - 1] + norms[middle]) / 2).item())
    factors = clip_scale(cfg.clip, squared)
    unbound = 1 - 8 * torch.finfo(factors.dtype).eps  # c·rsqrt(c²) is 1 up to rounding
    assert (factors < 0.999).any() and (factors > unbound).any()  # binds on some tokens, not on all
    return cfg


CLIP_GRID = [(state, values, dgd, momentum, memories) for state, values, dgd, momentum, memories in itertools.product(
    ["residual_mlp", "mlp"], ["given", "generated"], ["none", "first", "all"], [False, True], [1, 3])]


@pytest.mark.parametrize(("state", "values", "dgd", "momentum", "memories"), CLIP_GRID)
def test_a_clipped_level_matches_the_pytorch_step(state: str, values: str, dgd: str, momentum: bool,
                                                   memories: int) -> None:
    """`clip = c`: the kernel scales each token's write weights by ρ_s = min(1, c/‖∇ℓ_s‖) from its own errors,
    per stacked memory, and differentiates through ρ; the PyTorch step clips η (memory.clip_scale). The clip
    is set between the middle two gradient norms of the drawn chunk, so that it binds on some tokens and not
    on others, and no token sits on its kink."""
    options = dict(state=state, values=values, dgd=dgd != "none", dgd_layers="all" if dgd == "all" else "first",
                   momentum=momentum)
    cfg = clipped_between(options, draw(level(**options), memories, following=2), memories)
    assert fused.applies(cfg, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert_kernel_matches(cfg, memories, following=2)


def test_the_float32_kernel_clips_as_the_pytorch_step() -> None:
    """HOPE's projections' shapes in float32 (whole vectors), clipped between the chunk's middle norms."""
    options = dict(values="generated", d_in=32, d_out=32, hidden=64, dgd=True, momentum=True)
    cfg = clipped_between(options, draw(level(**options), 4, following=2, dtype=torch.float32), 4)
    assert_kernel_matches(cfg, 4, following=2, dtype=torch.float32, rtol=2e-5)


def counting_kernel_calls(monkeypatch) -> list[int]:
    """Count the kernel's calls (one entry each), so that a test of "with the kernel" knows it ran."""
    calls: list[int] = []
    real = fused.chunk_end_state

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "chunk_end_state", counted)
    return calls


HOPE_CLIPS = ["model.block.titans.memory.clip=0.5", "model.block.titans.projections.clip=0.05"]


@pytest.mark.parametrize("clips", [[], HOPE_CLIPS])
def test_hope_with_the_kernel_equals_hope_without(monkeypatch, clips: list[str]) -> None:
    """The whole model in float64, logits and every parameter gradient, at a length no chunk size divides;
    also with a clip on both in-context levels (the projections' small enough to bind)."""
    model = nldsl.load("specs/hope.nl", clips, dim=16, heads=2).double()
    tokens = torch.randint(0, 256, (2, 29), generator=torch.Generator().manual_seed(0))
    calls = counting_kernel_calls(monkeypatch)

    def run(enable: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        calls.clear()
        with fused.fused_writes(enable):
            logits = model(tokens)
        assert bool(calls) == enable, f"the kernel ran {len(calls)} times with fused writes {enable}"
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=logits.dtype)
        (logits * weights).sum().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    factors: list[torch.Tensor] = []  # the PyTorch step's clip factors, to know that the clip binds
    real_scale = memory.clip_scale
    monkeypatch.setattr(memory, "clip_scale",
                        lambda clip, norms: factors.append(real_scale(clip, norms)) or factors[-1])
    logits, gradients = run(True)
    expected_logits, expected_gradients = run(False)
    assert bool(clips) == any(bool((factor < 0.999).any()) for factor in factors)
    assert relative_error(logits, expected_logits) <= MODEL_RTOL
    assert gradients.keys() == expected_gradients.keys()
    for name, wanted in expected_gradients.items():
        assert relative_error(gradients[name], wanted) <= MODEL_RTOL, name


def test_dispatch_rule() -> None:
    cpu = torch.zeros(1)
    assert fused.applies(level(), cpu, cpu)
    assert fused.applies(level("mlp", d_out=4), cpu, cpu)
    assert not fused.applies(level(), cpu, None)  # no values to regress to
    assert not fused.applies(level(objective="external"), cpu, None)  # the CMS surprise: measured no faster
    assert not fused.applies(level(grad_through_writes=False), cpu, cpu)
    assert not fused.applies(level(orthogonalize_steps=2), cpu, cpu)
    assert fused.applies(level(clip=1.0), cpu, cpu)  # the kernel scales each token's write weights
    assert not fused.applies(level(objective="dot"), cpu, cpu)
    assert not fused.applies(LevelConfig("linear", d_in=4, d_out=4, objective="l2", chunk_size=4), cpu, cpu)
    assert not fused.applies(LevelConfig("mlp", d_in=4, d_out=4, hidden=4, depth=3, objective="l2"), cpu, cpu)
    assert fused.applies(level(d_in=256, d_out=256, hidden=256), cpu, cpu)  # wide weights too (measured faster)
    assert not fused.applies(level(), cpu.half(), cpu.half())
    assert not fused.applies(level(), cpu, cpu.bfloat16())  # mixed precisions (autocast's products)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.applies(level(), cpu, cpu)
    with fused.fused_writes(False):
        assert not fused.applies(level(), cpu, cpu)
    assert fused.applies(level(), cpu, cpu)


def test_the_ops_namespace_names_the_kernel_source(monkeypatch, tmp_path) -> None:
    # a graph inductor cached for another kernel calls another namespace, so it is never replayed
    # here (one cached for a development version of the saved layout failed at run time)
    assert fused.available()
    digest = fused._namespace.removeprefix("nldsl_")
    assert len(digest) == 16 and fused._namespace != "nldsl"
    assert hasattr(getattr(torch.ops, fused._namespace), "memory_write")
    flags = ["-O3", *fused.CAPABILITY_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]
    assert digest == fused.kernel_digest(flags) and fused._flags() == flags
    edited = tmp_path / "memory_write.cpp"  # an edit to the C++ names another namespace
    edited.write_bytes(fused.SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(fused, "SOURCE", edited)
    assert fused.kernel_digest(flags) != digest


def test_a_lock_a_killed_build_left_is_removed_before_torch_would_wait_on_it(monkeypatch, tmp_path) -> None:
    """torch waits without end while its `lock` file exists; one left by a build stopped midway is
    removed under the OS lock every loading process holds (a live builder would hold that too)."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    (tmp_path / "lock").write_text("")
    with pytest.warns(UserWarning, match="left by a kernel build that was stopped midway"):
        with fused._builder_lock("nldsl_memory_write_test"):
            assert not (tmp_path / "lock").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no lock left: nothing to say
        with fused._builder_lock("nldsl_memory_write_test"):
            pass
    import fcntl

    def refused(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)  # a file system without locks: torch's own baton alone
    (tmp_path / "lock").write_text("")
    with fused._builder_lock("nldsl_memory_write_test"):
        assert (tmp_path / "lock").exists(), "without the OS lock a live builder's file cannot be told apart"


def test_the_kernel_builds_from_a_copy_in_its_build_folder(monkeypatch, tmp_path) -> None:
    """ninja's build file records the source's path: a build from the checkout's own path would be
    redone by every process of another checkout that shares the folder. The copy is written once
    (a rewrite would look newer than the library) and again when the source differs."""
    from torch.utils import cpp_extension

    copy = fused._source_in(tmp_path)
    assert copy == tmp_path / fused.SOURCE.name and copy.read_bytes() == fused.SOURCE.read_bytes()
    written = copy.stat().st_mtime_ns
    assert fused._source_in(tmp_path) == copy and copy.stat().st_mtime_ns == written
    copy.write_bytes(b"// stale\n")
    assert fused._source_in(tmp_path).read_bytes() == fused.SOURCE.read_bytes()
    assert fused._source_in(None) == fused.SOURCE  # no build folder known: the source where it is
    seen = {}
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(fused, "_register_python_parts", lambda namespace: None)
    monkeypatch.setattr(fused, "_namespace", fused._namespace)
    assert fused._build()
    assert seen["sources"] == [str(tmp_path / fused.SOURCE.name)]


@pytest.mark.slow
def test_two_checkouts_share_one_kernel_build(tmp_path) -> None:
    """A process of one checkout after one of another loads the built kernel (it rebuilt it, 15 s a
    time, when each checkout's path was in the build file)."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    here = Path(nldsl.__file__).resolve().parent.parent
    other = tmp_path / "other_checkout"
    shutil.copytree(here / "nldsl", other / "nldsl", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    code = "from nldsl.runtime import fused; assert fused.available()"

    def load(root: Path) -> float:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, PYTHONPATH=str(root)), cwd=root, timeout=900)
        assert done.returncode == 0, done.stderr
        return time.perf_counter() - began

    built = load(here)  # the first build
    load(other)
    again = load(here)
    assert again < built / 2, (built, again)


def test_a_failed_build_warns_and_leaves_the_pytorch_step(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(fused, "SOURCE", tmp_path / "missing.cpp")
    with pytest.warns(UserWarning, match="could not be built"):
        assert fused._build() is False
    monkeypatch.setattr(fused, "_built", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fused.applies(level(), torch.zeros(1), torch.zeros(1))


def in_float64(cfg: LevelConfig, inputs: dict, batch: int) -> dict:
    """The same inputs as new float64 leaves (the exact answer a float32 run is measured against)."""
    shared = [w.detach().double().requires_grad_() for w in inputs["shared"]]
    state = initial_memory_state(cfg, shared, batch)
    if cfg.momentum:
        state.momentum = [m.detach().double().requires_grad_() for m in inputs["state"].momentum]
    copied = {name: None if inputs[name] is None else inputs[name].detach().double().requires_grad_()
              for name in ("keys", "values", "lr", "retention", "momentum", "following")}
    return {**copied, "state": state, "shared": shared}


@st.composite
def kernel_problems(draw_from) -> tuple:
    """A level the kernel accepts and a problem for it: widths on and off the vector width (the
    micro-kernel's strips and leftover columns), hidden widths on both sides of its transpose limit,
    one to 40 tokens (leftover rows), 0–33 rows of the next chunk, 1–4 stacked memories."""
    state = draw_from(st.sampled_from(["residual_mlp", "mlp"]))
    values = draw_from(st.sampled_from(["given", "generated"]))
    d_in = draw_from(st.integers(1, 80))
    d_out = d_in if state == "residual_mlp" or values == "generated" else draw_from(st.integers(1, 80))
    hidden = draw_from(st.one_of(st.integers(1, 80), st.integers(100, 600)))
    tokens = draw_from(st.integers(1, 40))
    dtype = draw_from(st.sampled_from([torch.float64, torch.float32]))
    # relu only in float64: in float32 a pre-activation within rounding of 0 takes the other side of the
    # kink in one of the two paths, and its gradient with it (5 float32 relu problems of an audit's 48,881;
    # in the one examined, a next-chunk row at |z| = 2.6e-7)
    activations = ["silu", "gelu", "relu", "tanh"] if dtype == torch.float64 else ["silu", "gelu", "tanh"]
    cfg = level(state, values=values, d_in=d_in, d_out=d_out, hidden=hidden, chunk_size=tokens,
                activation=draw_from(st.sampled_from(activations)), dgd=draw_from(st.booleans()),
                dgd_layers=draw_from(st.sampled_from(["first", "all"])), momentum=draw_from(st.booleans()))
    sizes = (draw_from(st.integers(1, 3)), draw_from(st.integers(1, 3)), tokens)
    return (cfg, sizes, draw_from(st.integers(1, 4)), draw_from(st.sampled_from([0, 1, 2, 7, 16, 33])), dtype,
            draw_from(st.integers(0, 2**31 - 1)))


@settings(max_examples=KERNEL_PROBLEMS, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_problems())
def test_random_problems_match_the_pytorch_step(problem: tuple) -> None:
    """Random shapes and options: in float64 the kernel equals the PyTorch step; in float32 (its other
    instantiation, another vector width) it is as close to the exact float64 answer as the PyTorch
    step in float32 is, on the same inputs or on inputs an ulp away, within a factor (float32 rounding
    alone separates the two)."""
    cfg, sizes, memories, following, dtype, seed = problem
    assert fused.applies(cfg, torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype))
    fresh = lambda: draw(cfg, memories, seed, following, dtype, sizes)  # noqa: E731
    produced, gradients = produced_and_gradients(kernel_step, cfg, fresh(), memories)
    expected, expected_gradients = produced_and_gradients(pytorch_step, cfg, fresh(), memories)
    results = [*produced, *gradients]
    assert len(produced) == len(expected) and len(gradients) == len(expected_gradients)
    if dtype == torch.float64:
        for index, (actual, wanted) in enumerate(zip(results, [*expected, *expected_gradients])):
            assert relative_error(actual, wanted) <= MODEL_RTOL, f"result {index}"
        return
    exact, exact_gradients = produced_and_gradients(pytorch_step, cfg, in_float64(cfg, fresh(), sizes[0]), memories)
    # the same step on inputs moved by about an ulp: what rounding alone does to each result (a gradient that
    # cancels to a small norm moves by 1e-4 and more, in either path, with the summation order)
    shaken_inputs = fresh()
    with torch.no_grad():
        for leaf in leaves(shaken_inputs):
            leaf.mul_(1 + 2e-7 * torch.randn(leaf.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype))
    shaken, shaken_gradients = produced_and_gradients(pytorch_step, cfg, shaken_inputs, memories)
    for index, (actual, rounded, moved, wanted) in enumerate(zip(
            results, [*expected, *expected_gradients], [*shaken, *shaken_gradients], [*exact, *exact_gradients])):
        ours = relative_error(actual.double(), wanted)
        theirs = max(relative_error(rounded.double(), wanted), relative_error(moved.double(), wanted))
        assert ours <= max(FLOAT32_FACTOR * theirs, FLOAT32_FLOOR), f"result {index}: {ours:.2e} vs {theirs:.2e}"


@pytest.mark.slow
def test_compiled_chunk_step_is_one_graph_and_matches_eager() -> None:
    cfg = level(values="generated", dgd=True, momentum=True)
    inputs = draw(cfg)
    arguments = (cfg, inputs["state"], inputs["keys"], inputs["values"], None, inputs["lr"], inputs["retention"],
                 inputs["momentum"])
    _, eager = memory_chunk_step(*arguments)
    torch._dynamo.reset()
    _, compiled = torch.compile(memory_chunk_step, fullgraph=True, backend="aot_eager")(*arguments)
    for actual, wanted in zip([*compiled.weights, *compiled.momentum], [*eager.weights, *eager.momentum]):
        assert relative_error(actual, wanted) <= RTOL


@pytest.mark.slow
def test_chunk_start_level_reads_each_next_chunk_in_the_kernel_call_compiled_and_eager(monkeypatch) -> None:
    """memory_level pipelines a chunk-start level through the kernel: the same outputs, state and
    gradients as the PyTorch chunk loop, eager and with the kernel's chunk body compiled (T not a
    multiple of the chunk)."""
    cfg = dataclasses.replace(level(values="generated", dgd=True, momentum=True), chunk_size=4)
    generator = torch.Generator().manual_seed(3)
    length = 11
    shared = [w.requires_grad_() for w in init_memory_weights(cfg, HEADS, generator=generator, dtype=torch.float64)]
    keys, queries, values = (torch.randn(BATCH, HEADS, length, WIDTH, generator=generator, dtype=torch.float64)
                             .requires_grad_() for _ in range(3))
    gates = [(0.1 + 0.8 * torch.rand(BATCH, HEADS, length, generator=generator, dtype=torch.float64)).requires_grad_()
             for _ in range(3)]
    leaves_ = [*shared, keys, queries, values, *gates]

    def run(enable: bool, compiled: bool) -> tuple[list[torch.Tensor], tuple]:
        state = initial_memory_state(cfg, shared, BATCH)
        with fused.fused_writes(enable), compiled_chunks(compiled, backend="aot_eager"):
            outputs, final = memory_level(cfg, state, keys, values, queries, *gates)
        produced = [outputs, *final.weights, *(final.momentum or [])]
        projection = torch.Generator().manual_seed(7)
        loss = sum((p * torch.randn(p.shape, generator=projection, dtype=p.dtype)).sum() for p in produced)
        return produced, torch.autograd.grad(loss, leaves_)

    calls = counting_kernel_calls(monkeypatch)
    expected, expected_gradients = run(False, False)
    assert not calls
    for compiled in (False, True):
        produced, gradients = run(True, compiled)
        assert calls, "the kernel did not run"  # eager calls it, a compiled run traces through it
        for actual, wanted in zip([*produced, *gradients], [*expected, *expected_gradients]):
            assert relative_error(actual, wanted) <= RTOL

"""What the generated module does that comparing it with the interpreter cannot show: start values, the
continuum clock in odd places, state carried by a stream, cut-off memories (from a mutation audit of
compiler/codegen.py and compiler/lower.py: 10 of 37 mutants were caught by no behavioural test).

Literal expectations come from the docs / the generated module's init comments, not from the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from nldsl import loader
from nldsl.checker import check_text

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def build(text: str, seed: int = 0):
    result = check_text(text, "killer.nl")
    assert not [d for d in result.diagnostics if d.severity == "error"], result.diagnostics
    module = loader.build_module(result.spec)
    torch.manual_seed(seed)
    model = module.build(dtype=torch.float64)
    return module, model, result.spec


CLOCKED = """model m { vocab = 32  dim = 16  layers = 1  block {
  parallel par { combine = sum
    cms c { variant = independent  level f { period = 4 } level s { period = 48 } }
    mlp { } } } }
train { seq_len = 16  batch = 2 }
"""


def test_a_clock_level_inside_a_parallel_branch_steps_every_ceil_period_over_batch_tokens() -> None:
    """period 48 over batch · seq_len = 32 tokens per outer step: ceil(48 / 32) = 2 outer steps
    (docs/semantics.md §4); the level sits in a `parallel` branch, so its clock key holds the path."""
    module, model, _ = build(CLOCKED)
    assert module.CLOCK_STEPS == {"par.c.s_": 2}
    slow = model.blocks[0].par.c.s_w1
    fast = model.blocks[0].par.c.f_w1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    slow0, fast0 = slow.detach().clone(), fast.detach().clone()
    module.training_step(model, optimizer, tokens, targets)
    assert not torch.equal(fast.detach(), fast0), "the in-context level's θ_0 takes every outer step"
    assert torch.equal(slow.detach(), slow0), "the clocked level waits for its second outer step"
    module.training_step(model, optimizer, tokens, targets)
    assert not torch.equal(slow.detach(), slow0), "the clocked level steps on its second outer step"


def test_a_gelu_mlps_output_projection_is_scaled_by_one_over_sqrt_two_layers() -> None:
    _, model, _ = build("model m { vocab = 32  dim = 64  layers = 2\n"
                        "  block { mlp { activation = gelu  expansion = 4 } } }\n")
    w_out = model.blocks[0].mlp.w_out  # (d, hidden) = (64, 256)
    expected = 1 / math.sqrt(256) / math.sqrt(2 * 2)
    assert abs(w_out.std().item() / expected - 1) < 0.1, (w_out.std().item(), expected)


def test_persistent_tokens_start_at_std_0_02() -> None:
    _, model, _ = build("model m { vocab = 32  dim = 64  layers = 1\n"
                        "  block { attention { heads = 4  persistent = 16 } } }\n")
    for name in ("persistent_k", "persistent_v"):
        std = getattr(model.blocks[0].attention, name).std().item()
        assert abs(std / 0.02 - 1) < 0.2, (name, std)


def test_query_and_key_norm_weights_start_at_one() -> None:
    _, model, _ = build("model m { vocab = 32  dim = 16  layers = 1\n"
                        "  block { attention { heads = 2  qk_norm = true } } }\n")
    attention = model.blocks[0].attention
    assert torch.equal(attention.q_norm, torch.ones_like(attention.q_norm))
    assert torch.equal(attention.k_norm, torch.ones_like(attention.k_norm))


MAC = """model m { vocab = 32  dim = 16  layers = 1  block {
  context mac { segment = 4
    memory lmm { heads = 2  conv = 3  level { period = 2 } }
    attention att { heads = 2  persistent = 2 } }
  mlp { } } }
train { seq_len = 16 }
"""


def test_memory_as_context_continues_a_stream_from_the_returned_state() -> None:
    """Two calls cut at a segment boundary, the second given the first's state, equal one call:
    the memory written by the first segments is what the later segments retrieve from (§3.8)."""
    _, model, _ = build(MAC, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    whole = model(tokens, targets)
    first, state = model(tokens[:, :8], targets[:, :8], return_state=True)
    second = model(tokens[:, 8:], targets[:, 8:], state=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-9, atol=1e-9)


def test_selfmod_projection_memories_that_no_gradient_reaches_get_none_not_zeros() -> None:
    """hope with both `grad_through_writes = false`: k, v and η reach the loss only through detached
    writes (W0706), so θ_0 of M_k, M_v, M_eta get no gradient: None, not zeros, which AdamW's weight
    decay would follow; W_q still learns."""
    import warnings

    from conftest import SPECS_DIR

    from nldsl.checker import check_file

    hope = SPECS_DIR / "hope.nl"
    overrides = ["dim=32", "model.layers=1", "model.block.titans.memory.grad_through_writes=false",
                 "model.block.titans.projections.grad_through_writes=false", "train.seq_len=16"]
    result = check_file(hope, overrides)
    assert result.ok, result.diagnostics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = loader.build_module(result.spec)
    torch.manual_seed(0)
    model = module.build(dtype=torch.float64)
    titans = model.blocks[0].titans
    tokens = torch.randint(0, result.spec.model.vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
    for name in ("k_memory_w1", "k_memory_w2", "v_memory_w1", "v_memory_w2", "eta_memory_w1", "eta_memory_w2"):
        assert getattr(titans, name).grad is None, name  # an attribute that is missing fails too
    assert titans.wq.grad is not None and titans.wq.grad.abs().sum() > 0


INERT = """model m { vocab = 32  dim = 16  layers = 1  block {
    cms c { variant = nested  level f { period = 2 } level s { period = 64  lr = 0.5 } } } }
train { seq_len = 16  batch = 2 }
"""


def test_an_inert_nested_level_is_not_on_the_clock_and_weight_decay_leaves_it_alone() -> None:
    """A slower nested level whose period passes train.seq_len never moves and is read by nothing
    (W0706, docs/semantics.md §3.7): no clock steps it, so AdamW never sees a (zero) gradient for it."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, model, _ = build(INERT)
    assert module.CLOCK_STEPS == {}
    slow = model.blocks[0].c.s_w1
    before = slow.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    for _ in range(4):
        module.training_step(model, optimizer, tokens, targets)
    assert torch.equal(slow.detach(), before)


UNTIED = """model m { vocab = 32  dim = 16  layers = 1  tie_embeddings = false  block {
    cms c { variant = sequential  level f { period = 4  objective = surprise } } } }
train { seq_len = 16 }
"""


def test_an_untied_models_surprise_reads_its_own_head_as_the_interpreter_does() -> None:
    """The surprise of an in-context CMS level is the next-token loss through final norm and the
    unembedding: `head` when embeddings are untied (the interpreter), never `embed`."""
    from nldsl.interpreter import interpret

    _, model, spec = build(UNTIED, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(2))
    compiled = model(tokens)
    reference = interpret(spec, dict(model.named_parameters()), tokens)
    assert ((compiled - reference).norm() / reference.norm()).item() <= 1e-6



SURPRISE = """model m { vocab = 32  dim = 16  layers = 1  block {
    cms c { variant = sequential  level f { period = 1  objective = surprise  readout = chunk_start } } } }
train { seq_len = 16 }
"""


def test_default_targets_are_the_next_tokens_with_none_after_the_last() -> None:
    """Forward's docstring: targets default to the tokens shifted by one, −1 (none) at the end. The
    last token has no next token, so its surprise writes nothing into the state a stream carries on
    from (with a made-up target, the next call's logits would read that write)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, model, _ = build(SURPRISE, seed=3)
    tokens = torch.randint(1, 32, (2, 9), generator=torch.Generator().manual_seed(3))
    explicit = torch.nn.functional.pad(tokens[:, 1:], (0, 1), value=-1)
    _, default_state = model(tokens, return_state=True)
    _, explicit_state = model(tokens, explicit, return_state=True)
    more = torch.randint(1, 32, (2, 5), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(more, state=default_state), model(more, state=explicit_state), rtol=0, atol=0)

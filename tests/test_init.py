"""What a freshly built model starts from, against literal values.

The compiled-vs-interpreter tests perturb every parameter and hand the same values to both sides,
so they cannot see a wrong initial value; nor can a golden module, once regenerated. A mutation
audit changed gate starts, the independent cms mix, init scales and the hidden width rounding
without any other test failing. The numbers here are written out from the docs
(docs/semantics.md §2 for the gates, the generated module's init comments for the scales), not
computed by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

import nldsl
from nldsl import shapes
from nldsl import spec as S
from nldsl.checker import check_text

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SPEC = """\
model {
  dim = 16
  layers = 2
  block {
    memory a { heads = 2; level { state = linear; period = 4
      lr = learned(max = 0.2); retention = learned(); momentum = learned(max = 0.8) } }
    memory b { heads = 2; level { state = linear; period = 4
      lr = learned(max = 0.2, init = 0.05); retention = per_head(0.95); momentum = per_head(0.7) } }
    memory c { heads = 2; level { state = linear; period = 4; lr = per_head(0.03) } }
    selfmod s { heads = 2
      level memory { period = 4; lr = generated(max = 0.3); retention = generated(max = 0.9) }
      level projections { period = 2; readout = chunk_start } }
    cms m { variant = independent; level f { period = 4 } level g { period = 8 }
      level h { update = outer; period = steps(2) } }
    mlp { expansion = 2.6667 }
  }
}
train { compile = chunks }  # built eagerly here; one whole graph would unroll 960 chunk steps (W0714)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, torch.Tensor]:
    path = tmp_path_factory.mktemp("init") / "init.nl"
    path.write_text(SPEC)
    torch.manual_seed(0)
    model = nldsl.load(path, dtype=torch.float64)
    return {name.removeprefix("blocks.0."): p.detach() for name, p in model.named_parameters()}


def test_gates_start_where_the_docs_say(built) -> None:
    """learned: max · sigmoid(b) at 0.5 / 0.999 / 0.9 of max, or `init`; per_head: softplus for lr,
    sigmoid for retention and momentum, at its value; generated: the readout is zero, so
    max · sigmoid(b) at 0.1 / 0.999 of max."""
    sigmoid, softplus = torch.sigmoid, torch.nn.functional.softplus
    starts = {
        "a.lr_bias": (0.2 * sigmoid(built["a.lr_bias"]), 0.1),
        "a.retention_bias": (sigmoid(built["a.retention_bias"]), 0.999),
        "a.momentum_bias": (0.8 * sigmoid(built["a.momentum_bias"]), 0.72),
        "b.lr_bias": (0.2 * sigmoid(built["b.lr_bias"]), 0.05),
        "b.retention_logit": (sigmoid(built["b.retention_logit"]), 0.95),
        "b.momentum_logit": (sigmoid(built["b.momentum_logit"]), 0.7),
        "c.lr_logit": (softplus(built["c.lr_logit"]), 0.03),
        "s.eta_bias": (0.3 * sigmoid(built["s.eta_bias"]), 0.03),
        "s.alpha_bias": (0.9 * sigmoid(built["s.alpha_bias"]), 0.9 * 0.999),
    }
    for name, (value, expected) in starts.items():
        torch.testing.assert_close(value, torch.full_like(value, expected), rtol=1e-6, atol=0, msg=name)
    assert not built["s.eta_readout"].any() and not built["s.alpha_readout"].any()


def test_an_independent_cms_starts_with_an_even_mix(built) -> None:
    torch.testing.assert_close(built["m.mix"], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_scales_at_init(built) -> None:
    """The conv starts as the identity (1 on the current token's tap, ± 0.02 elsewhere), output
    projections are scaled by 1/sqrt(2 · layers), a memory's θ_0 ~ N(0, 1/fan_in), a residual
    memory's second layer starts small (M(x) ≈ x), the embedding at std 0.02."""
    conv = built["a.conv_q"]
    assert (conv[:, -1] - 1).abs().max() < 0.1 and conv[:, :-1].abs().max() < 0.1
    layers = 2

    def close(std: float, expected: float, name: str) -> None:
        assert abs(std / expected - 1) < 0.2, (name, std, expected)

    close(built["mlp.w_down"].std().item(), 1 / math.sqrt(43) / math.sqrt(2 * layers), "mlp.w_down")
    close(built["a.wo"].std().item(), 1 / math.sqrt(16) / math.sqrt(2 * layers), "a.wo")
    close(built["a.wq"].std().item(), 1 / math.sqrt(16), "a.wq")
    close(built["m.f_w1"].std().item(), 1 / math.sqrt(16), "m.f_w1")
    first, second = built["s.k_memory_w1"].std().item(), built["s.k_memory_w2"].std().item()
    assert second < 0.3 * first, "a residual memory's last layer starts small, so that M(x) ≈ x"


def test_the_embedding_starts_at_std_0_02(tmp_path) -> None:
    path = tmp_path / "e.nl"
    path.write_text("model { dim = 64\n layers = 1\n block { mlp { } } }\n")
    torch.manual_seed(0)
    model = nldsl.load(path)
    assert abs(model.embed.std().item() / 0.02 - 1) < 0.05


def test_a_fractional_expansion_rounds_to_the_nearest_width() -> None:
    """round(2.6667 · 16) = 43 (int() would give 42): the compiler, the interpreter and the
    parameter count share this function, so only a literal shows a change."""
    assert shapes.hidden_width(2.6667, 16) == 43
    result = check_text(SPEC, "init.nl")
    [mlp] = [layer for layer in result.spec.model.block.sublayers if isinstance(layer, S.MLPSpec)]
    assert shapes.layer_parameters(mlp, 16)["w_down"] == (16, 43)


def test_a_level_learns_in_context_up_to_a_period_of_one_training_sequence() -> None:
    """docs/semantics.md §3.7: a period at most train.seq_len learns in context; a longer one is on the
    continuum clock."""
    level = check_text("model { dim = 16; block { cms { level f { period = 32 } } } }\n", "l.nl").spec
    [cms] = level.model.block.sublayers
    assert cms.levels[0].learns_in_context(32) and not cms.levels[0].learns_in_context(31)

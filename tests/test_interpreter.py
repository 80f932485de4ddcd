"""Tests of the reference interpreter (nldsl/interpreter.py).

The interpreter defines what a spec means, so it is pinned here to models written independently
in this file: a Transformer (masked softmax, complex-number RoPE), causal linear attention,
DeltaNet and a full Gated DeltaNet layer (conv through F.conv1d, learned gates, output path,
the chunk rule), a plain MLP block, one in-context CMS step with the surprise backpropagated by
hand, the wiring of the self-modifying projections and of memory-as-context. Outputs and the
gradients of every parameter are compared in float64 on odd lengths. Every shipped spec, and
small specs covering each layer kind, runs at a tiny size with finite logits and gradients, is
causal, deterministic and keeps the sequences of a batch apart.
"""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nldsl import spec as S
from nldsl.checker import check_file, check_text
from nldsl.interpreter import init_params, interpret, interpret_loss, learns_in_context
from nldsl.runtime.memory import LevelConfig, MemoryState
from nldsl.runtime.reference import memory_level_reference
from nldsl.semantics import check_layer
from nldsl.shapes import model_parameters

OUTPUT_ATOL = 1e-10  # logits, float64
GRAD_ATOL = 1e-9  # parameter gradients, float64
VOCAB = 32
BATCH = 2
SPECS = Path(__file__).resolve().parents[1] / "specs"
TINY = ["model.dim=16", "model.layers=1", f"model.vocab={VOCAB}"]
SHIPPED_LENGTH = 11  # covers several chunks once the periods are shrunk


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The interpreter's tensors are tiny: thread synchronisation would dominate its runtime."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checked(text: str) -> S.Spec:
    result = check_text(text)
    assert result.ok, [d.message for d in result.diagnostics]
    assert result.spec is not None
    return result.spec


def model_text(block: str, *, dim: int = 16, layers: int = 1, extra: str = "", train: str = "") -> str:
    return (f"model tiny {{\n  vocab = {VOCAB}\n  dim = {dim}\n  layers = {layers}\n  {extra}\n"
            f"  block {{\n{block}\n  }}\n}}\n{train}\n")


def leaf_params(spec: S.Spec, seed: int) -> dict[str, torch.Tensor]:
    return {name: value.requires_grad_() for name, value in init_params(spec, seed=seed).items()}


def random_tokens(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, length), generator=torch.Generator().manual_seed(seed))


def assert_same_function(spec: S.Spec, params: dict[str, torch.Tensor], tokens: torch.Tensor,
                         expected_logits: torch.Tensor, positions: int | None = None) -> None:
    """interpret's logits (first `positions` tokens) equal expected_logits, and so do the gradients
    of a random projection of them with respect to every parameter."""
    logits = interpret(spec, params, tokens)[:, :positions]
    assert logits.shape == expected_logits.shape
    torch.testing.assert_close(logits, expected_logits, atol=OUTPUT_ATOL, rtol=0)
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=logits.dtype)
    names = list(params)
    ours = torch.autograd.grad((logits * probe).sum(), [params[n] for n in names], allow_unused=True)
    theirs = torch.autograd.grad((expected_logits * probe).sum(), [params[n] for n in names], allow_unused=True)
    for name, got, want in zip(names, ours, theirs):
        got = torch.zeros_like(params[name]) if got is None else got
        want = torch.zeros_like(params[name]) if want is None else want
        torch.testing.assert_close(got, want, atol=GRAD_ATOL, rtol=0, msg=f"gradient of {name}")


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def heads_of(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).permute(0, 2, 1, 3)


def merged(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3).flatten(2)


def scoped(params, prefix):
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def unembed(hidden: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    head = params.get("head", params["embed"])
    return rms(hidden, params["final_norm"]) @ head.T


# A Transformer: attention + MLP ----------------------------------------------------------------

def rope_complex(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE as a complex rotation of the pairs (x_j, x_{j+D/2}) by angle t · base^(−2j/D)."""
    half = x.shape[-1] // 2
    frequencies = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    angles = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * frequencies
    rotated = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([rotated.real, rotated.imag], dim=-1)


def masked_attention(x, p, heads, window, persistent, qk_norm):
    q, k, v = (heads_of(x @ p[w].T, heads) for w in ("wq", "wk", "wv"))
    if qk_norm:
        q, k = rms(q, p["q_norm"]), rms(k, p["k_norm"])
    q, k = rope_complex(q), rope_complex(k)
    length = x.shape[1]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    allowed = (j <= i) & ((j > i - window) if window else True)
    scores = (q @ k.mT).masked_fill(~allowed, float("-inf"))
    if persistent:
        scores = torch.cat([q @ p["persistent_k"].mT, scores], dim=-1)
        v = torch.cat([p["persistent_v"].expand(x.shape[0], -1, -1, -1), v], dim=2)
    weights = torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1)
    return merged(weights @ v) @ p["wo"].T


def feed_forward(x, p, activation):
    if activation == "swiglu":
        return (F.silu(x @ p["w_gate"].T) * (x @ p["w_up"].T)) @ p["w_down"].T
    return F.gelu(x @ p["w_in"].T + p["b_in"]) @ p["w_out"].T + p["b_out"]


TRANSFORMERS = {
    "plain": dict(heads=2, window=0, persistent=0, qk_norm=False, mlp="swiglu", layers=2, tie=True),
    "windowed": dict(heads=4, window=3, persistent=2, qk_norm=True, mlp="gelu", layers=1, tie=False),
}


@pytest.mark.parametrize("length", [5, 11])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("variant", sorted(TRANSFORMERS))
def test_transformer_matches_hand_written(variant, seed, length):
    c = TRANSFORMERS[variant]
    block = (f"    attention {{ heads = {c['heads']} window = {c['window']} persistent = {c['persistent']} "
             f"qk_norm = {str(c['qk_norm']).lower()} }}\n    mlp {{ activation = {c['mlp']} }}")
    spec = checked(model_text(block, layers=c["layers"], extra=f"tie_embeddings = {str(c['tie']).lower()}"))
    params = leaf_params(spec, seed)
    tokens = random_tokens(length, seed)

    hidden = params["embed"][tokens]
    for index in range(c["layers"]):
        p = scoped(params, f"blocks.{index}.attention.")
        hidden = hidden + masked_attention(rms(hidden, p["norm"]), p, c["heads"], c["window"], c["persistent"],
                                           c["qk_norm"])
        p = scoped(params, f"blocks.{index}.mlp.")
        hidden = hidden + feed_forward(rms(hidden, p["norm"]), p, c["mlp"])
    assert_same_function(spec, params, tokens, unembed(hidden, params))


# Linear attention, DeltaNet, Gated DeltaNet ---------------------------------------------------

LINEAR_MEMORY = """    memory la {{
      heads = 2
      activation = none
      conv = 0
      qk_norm = none
      output_norm = false
      output_gate = false
      level {{ state = linear objective = {objective} rule = gd period = {period} init = zeros lr = {lr} {retention} }}
    }}"""


def causal_linear_attention(q, k, v, lr, retention):
    """o_t = η Σ_{s≤t} α^{t−s} (q_t·k_s) v_s, all positions at once."""
    length = q.shape[-2]
    t, s = torch.arange(length)[:, None], torch.arange(length)[None, :]
    decay = torch.where(s <= t, retention ** (t - s).clamp_min(0).to(q.dtype), torch.zeros((), dtype=q.dtype))
    return lr * ((q @ k.mT) * decay) @ v


def delta_net(q, k, v, lr, retention, period=1):
    """S_t = α_t S_{t−1} − η_t (S_c k_t − v_t) k_tᵀ,  o_t = S_t q_t, with S_c the chunk's start state.

    lr and retention are numbers or per-token tensors (B, H, T).
    """
    state = torch.zeros(*q.shape[:2], v.shape[-1], k.shape[-1], dtype=q.dtype)
    outputs = []
    for t in range(q.shape[-2]):
        if t % period == 0:
            chunk_start = state
        k_t, v_t = k[:, :, t, :, None], v[:, :, t, :, None]
        eta = lr if isinstance(lr, float) else lr[:, :, t, None, None]
        alpha = retention if isinstance(retention, float) else retention[:, :, t, None, None]
        state = alpha * state - eta * (chunk_start @ k_t - v_t) @ k_t.mT
        outputs.append((state @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outputs, dim=2)


@pytest.mark.parametrize("length", [7, 13])
@pytest.mark.parametrize("retention", [None, 0.9])
@pytest.mark.parametrize(("objective", "period"), [("dot", 1), ("dot", 3), ("l2", 1)])
def test_linear_memory_matches_linear_attention_and_delta_net(objective, period, retention, length):
    lr = 0.5
    text = LINEAR_MEMORY.format(objective=objective, period=period, lr=lr,
                                retention="" if retention is None else f"retention = {retention}")
    spec = checked(model_text(text))
    params = leaf_params(spec, seed=length)
    tokens = random_tokens(length, seed=length)

    hidden = params["embed"][tokens]
    x = rms(hidden, params["blocks.0.la.norm"])
    q, k, v = (heads_of(x @ params[f"blocks.0.la.{w}"].T, 2) for w in ("wq", "wk", "wv"))
    reference = causal_linear_attention if objective == "dot" else delta_net
    outputs = reference(q, k, v, lr, 1.0 if retention is None else retention)
    hidden = hidden + merged(outputs) @ params["blocks.0.la.wo"].T
    assert_same_function(spec, params, tokens, unembed(hidden, params))


def causal_conv(x, taps):
    """Depthwise causal convolution through F.conv1d: x (B, T, d), taps (d, W)."""
    width = taps.shape[1]
    out = F.conv1d(x.transpose(1, 2), taps[:, None], padding=width - 1, groups=x.shape[-1])
    return out[..., : x.shape[1]].transpose(1, 2)


def l2_normalized(x):
    return x / (x.square().sum(-1, keepdim=True) + 1e-6).sqrt()


def memory_path(x, p, heads, name):
    """q, k or v of a memory layer: projection, causal conv, silu, heads, l2 for q and k."""
    y = heads_of(F.silu(causal_conv(x @ p[f"w{name}"].T, p[f"conv_{name}"])), heads)
    return l2_normalized(y) if name in "qk" else y


def memory_output_path(o, p, gate_input):
    """Per-head RMS norm, merge, sigmoid output gate, output projection."""
    return (merged(rms(o, p["out_norm"])) * torch.sigmoid(gate_input @ p["w_gate"].T)) @ p["wo"].T


def learned_gate(x, p, name, bound=1.0):
    return bound * torch.sigmoid(torch.einsum("btd,hd->bht", x, p[f"{name}_proj"]) + p[f"{name}_bias"][:, None])


@pytest.mark.parametrize("length", [7, 12])
@pytest.mark.parametrize("period", [1, 3])
def test_gated_delta_net_layer_matches_hand_written(period, length):
    """A full memory layer: conv, silu, l2 keys and queries, learned η and α, output norm and gate."""
    spec = checked(model_text(f"""    memory gdn {{ heads = 2 conv = 3
      level {{ state = linear objective = l2 period = {period} init = zeros lr = learned(max = 0.8)
               retention = learned() }} }}"""))
    params = leaf_params(spec, seed=period)
    tokens = random_tokens(length, seed=period)

    p = scoped(params, "blocks.0.gdn.")
    hidden = params["embed"][tokens]
    x = rms(hidden, p["norm"])
    q, k, v = (memory_path(x, p, 2, name) for name in "qkv")
    outputs = delta_net(q, k, v, learned_gate(x, p, "lr", 0.8), learned_gate(x, p, "retention"), period)
    hidden = hidden + memory_output_path(outputs, p, x)
    assert_same_function(spec, params, tokens, unembed(hidden, params))


# CMS: a plain MLP when it does not learn in context -------------------------------------------

def mlp_state(x, weights):
    """W_2 silu(W_1 x) for weights (1, out, in)."""
    return F.silu(x @ weights[0][0].T) @ weights[1][0].T


STATIC_CMS = {
    "outer": ("cms { level ffn { update = outer } }", "sequential", ["ffn"], ""),
    "longer_than_training": ("cms { level ffn { period = 16 } }", "sequential", ["ffn"], "train { seq_len = 8 }"),
    "sequential": ("cms { level a { update = outer } level b { period = 64 } }", "sequential", ["a", "b"],
                   "train { seq_len = 8 }"),
    "independent": ("cms { variant = independent level a { update = outer } level b { update = outer "
                    "state = mlp(depth = 2, expansion = 2) } }", "independent", ["a", "b"], ""),
}


@pytest.mark.parametrize("length", [5, 11])
@pytest.mark.parametrize("variant", sorted(STATIC_CMS))
def test_static_cms_is_a_plain_mlp_block(variant, length):
    block, kind, levels, train = STATIC_CMS[variant]
    spec = checked(model_text(f"    {block}", train=train))
    params = leaf_params(spec, seed=3)
    tokens = random_tokens(length, seed=3)

    hidden = params["embed"][tokens]
    x = rms(hidden, params["blocks.0.cms.norm"])
    weights = {name: [params[f"blocks.0.cms.{name}_w1"], params[f"blocks.0.cms.{name}_w2"]] for name in levels}
    if kind == "sequential":
        y = x
        for name in levels:
            y = mlp_state(y, weights[name])
    else:
        mix = params["blocks.0.cms.mix"]
        y = sum(mix[index] * mlp_state(x, weights[name]) for index, name in enumerate(levels))
    assert_same_function(spec, params, tokens, unembed(hidden + y, params))


# CMS: one in-context step driven by the surprise, in closed form ------------------------------

def silu_derivative(z):
    gate = torch.sigmoid(z)
    return gate * (1 + z * (1 - gate))


def surprise_gradients(x, weights, final_norm, head, target, eps=1e-6):
    """(u_1, u_2) of one token: the next-token loss of the head on y = W_2 silu(W_1 x), by hand.

    x (B, d), weights (B, out, in), target (B,). g = J_normᵀ Eᵀ (softmax − onehot), then Eq. 29.
    """
    w1, w2 = weights
    z = torch.einsum("boi,bi->bo", w1, x)
    hidden = F.silu(z)
    y = torch.einsum("boi,bi->bo", w2, hidden)
    inverse_rms = torch.rsqrt(y.square().mean(-1, keepdim=True) + eps)
    probabilities = torch.softmax((y * inverse_rms * final_norm) @ head.T, dim=-1)
    error = (probabilities - F.one_hot(target, head.shape[0]).to(x.dtype)) @ head  # ∂CE/∂norm(y)
    weighted = final_norm * error
    g = weighted * inverse_rms - y * (weighted * y).sum(-1, keepdim=True) * inverse_rms**3 / y.shape[-1]
    delta_1 = torch.einsum("bo,boi->bi", g, w2) * silu_derivative(z)
    return torch.einsum("bo,bi->boi", delta_1, x), torch.einsum("bo,bi->boi", g, hidden)


@pytest.mark.parametrize("period", [1, 3])
def test_in_context_cms_takes_the_surprise_step(period):
    lr = 0.5
    length = 2 * period + 1
    spec = checked(model_text(f"    cms {{ level fast {{ period = {period} lr = {lr} }} }}"))
    params = leaf_params(spec, seed=period)
    tokens = random_tokens(length, seed=period)

    hidden = params["embed"][tokens]
    x = rms(hidden, params["blocks.0.cms.norm"])
    initial = [params["blocks.0.cms.fast_w1"], params["blocks.0.cms.fast_w2"]]
    first_chunk = mlp_state(x[:, :period], initial)
    start = [w.expand(BATCH, -1, -1) for w in initial]
    updated = list(start)
    for s in range(period):
        for index, u in enumerate(surprise_gradients(x[:, s], start, params["final_norm"], params["embed"],
                                                     tokens[:, s + 1])):
            updated[index] = updated[index] - lr * u  # θ_1 = θ_0 − η Σ_s u_s, every u_s at θ_0
    second_chunk = torch.einsum("boi,bti->bto", updated[1],
                                F.silu(torch.einsum("boi,bti->bto", updated[0], x[:, period:2 * period])))
    y = torch.cat([first_chunk, second_chunk], dim=1)
    expected = unembed(hidden[:, :2 * period] + y, params)
    assert_same_function(spec, params, tokens, expected, positions=2 * period)


def test_nested_cms_with_a_full_step_is_its_fastest_level():
    """With η_2 = 1 the slower level copies the faster one and the faster restarts where it was."""
    nested = checked(model_text("    cms { variant = nested level fast { period = 2 lr = 0.5 } "
                                "level slow { period = 4 lr = 1.0 } }"))
    alone = checked(model_text("    cms { level fast { period = 2 lr = 0.5 } }"))
    params = leaf_params(nested, seed=5)
    tokens = random_tokens(11, seed=5)
    fastest = {name: value for name, value in params.items() if "slow_" not in name}
    assert_same_function(nested, params, tokens, interpret(alone, fastest, tokens))


def test_selfmod_without_adaptive_projections_is_a_memory_layer():
    level = ("state = residual_mlp(expansion = 2) values = generated rule = dgd period = 3 "
             "lr = learned(max = 0.5) retention = learned() momentum = 0.5")
    selfmod = checked(model_text(f"    selfmod titans {{ heads = 2 adaptive = [] level memory {{ {level} }} }}"))
    value_norm = getattr(selfmod.model.block.sublayers[0], "value_norm", None)
    memory_options = "activation = none" + (f" value_norm = {value_norm}" if value_norm else "")
    memory = checked(model_text(f"    memory titans {{ heads = 2 {memory_options} level {{ {level} }} }}"))
    params = leaf_params(selfmod, seed=2)
    assert set(params) == set(model_parameters(memory.model))
    tokens = random_tokens(9, seed=2)
    assert_same_function(selfmod, params, tokens, interpret(memory, params, tokens))


def test_selfmod_reads_its_projection_memories_within_a_chunk():
    """With one projection chunk, k and v are the chunk-start readouts x_h + W_2 silu(W_1 x_h)."""
    length = 9
    spec = checked(model_text("""    selfmod titans { heads = 2 adaptive = [k, v] conv = 3
      level memory { period = 4 lr = learned(max = 0.5) retention = learned() }
      level projections { period = 16 lr = 0.1 retention = 1.0 } }"""))
    params = leaf_params(spec, seed=6)
    tokens = random_tokens(length, seed=6)

    p = scoped(params, "blocks.0.titans.")
    hidden = params["embed"][tokens]
    x = rms(hidden, p["norm"])
    x_heads = heads_of(x, 2)

    def projection_memory(name):
        inner = F.silu(torch.einsum("hoi,bhti->bhto", p[f"{name}_memory_w1"], x_heads))
        return x_heads + torch.einsum("hoi,bhti->bhto", p[f"{name}_memory_w2"], inner)

    raw = {"q": heads_of(x @ p["wq"].T, 2), "k": projection_memory("k"), "v": projection_memory("v")}
    q, k, v = (heads_of(causal_conv(merged(raw[name]), p[f"conv_{name}"]), 2) for name in "qkv")
    q, k = l2_normalized(q), l2_normalized(k)
    if getattr(spec.model.block.sublayers[0], "value_norm", "none") == "l2":
        v = l2_normalized(v)
    config = LevelConfig(state="residual_mlp", d_in=8, d_out=8, hidden=16, objective="l2", values="generated",
                         dgd=True, chunk_size=4, readout="causal")
    state = MemoryState([w.expand(BATCH, -1, -1, -1) for w in (p["memory_w1"], p["memory_w2"])])
    outputs, _ = memory_level_reference(config, state, k, v, q, learned_gate(x, p, "lr", 0.5),
                                        learned_gate(x, p, "retention"), None)
    hidden = hidden + memory_output_path(outputs, p, x)
    assert_same_function(spec, params, tokens, unembed(hidden, params))


def mac_attention(x_s, r_s, attention, heads):
    """MAC's attention over [persistent | retrieved r_s | segment x_s] for the queries of x_s."""
    size = x_s.shape[1]
    q = rope_complex(heads_of(x_s @ attention["wq"].T, heads))
    k = torch.cat([rope_complex(heads_of(part @ attention["wk"].T, heads)) for part in (r_s, x_s)], dim=2)
    v = torch.cat([heads_of(part @ attention["wv"].T, heads) for part in (r_s, x_s)], dim=2)
    causal = torch.arange(size)[None, :] <= torch.arange(size)[:, None]
    scores = (q @ k.mT).masked_fill(~torch.cat([causal, causal], dim=1), float("-inf"))
    scores = torch.cat([q @ attention["persistent_k"].mT, scores], dim=-1) / math.sqrt(q.shape[-1])
    v = torch.cat([attention["persistent_v"].expand(BATCH, -1, -1, -1), v], dim=2)
    return merged(torch.softmax(scores, dim=-1) @ v) @ attention["wo"].T


@pytest.mark.parametrize("lr", [0.0, 0.5])
def test_memory_as_context_wiring(lr):
    """Titans MAC: segment s retrieves with the state the writes of segments 0 … s−1 left (the
    per-token reference runs each segment's writes; with η = 0 the state stays θ_0), attends over
    [persistent | r_s | x_s], writes its attention output y_s and returns y_s ⊙ M(y_s); the read
    stream's conv runs over x and the write stream's over y, each across segments."""
    length, segment, heads = 11, 4, 2
    spec = checked(model_text(f"""    context mac {{ segment = {segment}
      memory {{ heads = {heads} level {{ state = mlp(depth = 2, expansion = 2) period = 2 lr = {lr} }} }}
      attention {{ heads = {heads} persistent = 2 }} }}"""))
    params = leaf_params(spec, seed=9)
    tokens = random_tokens(length, seed=9)
    memory, attention = scoped(params, "blocks.0.mac.memory."), scoped(params, "blocks.0.mac.attention.")
    width = params["embed"].shape[1] // heads
    level = LevelConfig("mlp", width, width, hidden=2 * width, chunk_size=2)  # silu, l2, gd, causal
    hidden = params["embed"][tokens]
    x = rms(hidden, params["blocks.0.mac.norm"])

    def memory_read(queries, weights):  # M_θ(q) per sequence and head
        inner = F.silu(torch.einsum("bhoi,bhti->bhto", weights[0], queries))
        return torch.einsum("bhoi,bhti->bhto", weights[1], inner)

    state = MemoryState([w.unsqueeze(0).expand(BATCH, *w.shape) for w in (memory["memory_w1"], memory["memory_w2"])])
    read_queries = memory_path(x, memory, heads, "q")  # the read stream's conv runs over all of x
    attended, outputs = [], []
    for start in range(0, length, segment):
        x_s = x[:, start:start + segment]
        size = x_s.shape[1]
        r_s = memory_output_path(memory_read(read_queries[:, :, start:start + size], state.weights), memory, x_s)
        attended.append(mac_attention(x_s, r_s, attention, heads))
        y = torch.cat(attended, dim=1)  # the write stream so far: its conv runs across segments
        q_y, k_y, v_y = (memory_path(y, memory, heads, name)[:, :, start:] for name in "qkv")
        rates = torch.full((BATCH, heads, size), lr, dtype=torch.float64)
        out, state = memory_level_reference(level, state, k_y, v_y, q_y, rates, None, None)
        outputs.append(attended[-1] * memory_output_path(out, memory, attended[-1]))
    assert torch.equal(state.weights[0][0], memory["memory_w1"]) == (lr == 0)  # it learned, or it did not
    hidden = hidden + torch.cat(outputs, dim=1)
    assert_same_function(spec, params, tokens, unembed(hidden, params))


# Every shipped spec, and small specs covering every layer kind ---------------------------------

COVERAGE = {
    "mag": """    parallel { combine = gate
      attention { heads = 2 window = 4 persistent = 2 }
      memory m { heads = 2 level { state = mlp(depth = 2, expansion = 2) period = 2 lr = learned(max = 0.1)
                                   retention = learned() momentum = per_head(0.5) } } }""",
    "sum_of_branches": """    parallel { combine = sum
      memory a { heads = 2 level { period = 1 readout = exclusive retention = per_head(0.9) lr = per_head(0.1) } }
      mlp { activation = gelu expansion = 2 } }""",
    "mac": """    context mac { segment = 4
      memory { heads = 2 level { state = mlp(depth = 2, expansion = 2) period = 2 momentum = 0.8 } }
      attention { heads = 2 persistent = 2 qk_norm = true } }""",
    "hope_with_q": """    selfmod titans { heads = 2 adaptive = [q, k, v, eta, alpha] conv = 3
      level memory { period = 3 momentum = learned(max = 0.9) dgd_layers = all }
      level projections { period = 2 momentum = learned(max = 0.9) } }""",
    "muon_memory": """    memory m { heads = 2 level { period = 3 readout = chunk_start orthogonalize = newton_schulz(3)
                                 momentum = 0.9 } }""",
    "frozen_writes": """    memory m { heads = 2 level { state = mlp(depth = 3, expansion = 2) period = 2
                                 grad_through_writes = false lr = learned(max = 0.2) retention = learned() } }""",
    "nested_cms": """    cms { variant = nested
      level a { period = 2 momentum = 0.5 retention = 0.99 }
      level b { period = 4 lr = 0.5 }
      level c { period = 16 lr = 0.5 } }""",
    "independent_cms": """    cms { variant = independent
      level a { period = 2 objective = reconstruction lr = learned(max = 0.1) }
      level b { period = 4 state = residual_mlp(expansion = 2) rule = dgd }
      level c { period = 64 lr = learned(max = 0.1) } }""",
}
COVERAGE_TRAIN = "train { seq_len = 32 }"


def shrink_period(period: int) -> int:
    """A power-of-two period 2^a becomes 2^⌈a/2⌉ (divisibility among periods is kept); others stay."""
    if period <= 2 or period & (period - 1):
        return period
    return 2 ** math.ceil(math.log2(period) / 2)


def shrink_layer(layer, seq_len: int):
    """The same layer with 2 heads and short periods, segments and windows, so that 11 tokens span chunks."""
    def level(spec: S.LevelSpec, in_cms: bool) -> S.LevelSpec:
        if not isinstance(spec.period, int) or (in_cms and not learns_in_context(spec, seq_len)):
            return spec
        return spec.model_copy(update={"period": shrink_period(spec.period)})

    update = {}
    if hasattr(layer, "heads"):
        update["heads"] = 2
    if isinstance(layer, S.MemorySpec):
        update["level"] = level(layer.level, False)
    if isinstance(layer, S.SelfModSpec):
        update["memory"], update["projections"] = level(layer.memory, False), level(layer.projections, False)
    if isinstance(layer, S.CMSSpec):
        update["levels"] = tuple(level(spec, True) for spec in layer.levels)
    if isinstance(layer, S.AttentionSpec) and layer.window:
        update["window"] = shrink_period(layer.window)
    if isinstance(layer, S.ParallelSpec):
        update["branches"] = tuple(shrink_layer(branch, seq_len) for branch in layer.branches)
    if isinstance(layer, S.ContextSpec):
        update["segment"] = shrink_period(layer.segment)
        update["memory"] = shrink_layer(layer.memory, seq_len)
        update["attention"] = shrink_layer(layer.attention, seq_len)
    shrunk = layer.model_copy(update=update)
    valid = not any(d.severity == "error" for d in check_layer(shrunk, "layer", {}, seq_len))
    return shrunk if valid else layer


def shrunk(spec: S.Spec) -> S.Spec:
    assert spec.model is not None
    block = spec.model.block
    layers = tuple(shrink_layer(layer, spec.train.seq_len) for layer in block.sublayers)
    model = spec.model.model_copy(update={"block": block.model_copy(update={"sublayers": layers})})
    return spec.model_copy(update={"model": model})


def shipped_models() -> list[Path]:
    """Every spec file under specs/ that defines a model (optimizer-only files are left out)."""
    paths = []
    for path in sorted(SPECS.rglob("*.nl")):
        result = check_file(path)
        if result.spec is None or result.spec.model is not None:
            paths.append(path)  # an invalid spec stays in, so that its test reports why
    return paths


def tiny_spec(case: str) -> S.Spec:
    if case in COVERAGE:
        return checked(model_text(COVERAGE[case], train=COVERAGE_TRAIN))
    result = check_file(SPECS / case, TINY)
    assert result.ok, [f"{d.code} {d.message}" for d in result.diagnostics]
    assert result.spec is not None
    return shrunk(result.spec)


CASES = [str(path.relative_to(SPECS)) for path in shipped_models()] + sorted(COVERAGE)


def explained_unused(spec: S.Spec, length: int) -> set[str]:
    """Parameters that get no gradient by design at this length, with the reason in a comment."""
    assert spec.model is not None
    unused = set()
    names = model_parameters(spec.model)
    for block in range(spec.model.layers):
        for layer in spec.model.block.sublayers:
            prefix = f"blocks.{block}.{layer.name}."
            if isinstance(layer, S.CMSSpec):
                for index, level in enumerate(layer.levels):
                    level_prefix = f"{prefix}{level.name}_"
                    learning = learns_in_context(level, spec.train.seq_len)
                    if not learning:
                        # a static level reads no gates
                        unused |= {n for n in names if n.startswith(level_prefix)
                                   and not re.fullmatch(r"w\d+", n[len(level_prefix):])}
                    fired = learning and level.period <= length
                    if layer.variant == "nested" and index > 0 and not fired:
                        # a slower nested level acts only when its period ends
                        unused |= {n for n in names if n.startswith(level_prefix)}
            if isinstance(layer, S.MemorySpec) and not layer.level.grad_through_writes:
                # detached writes: keys, values and η reach the output only through the writes
                unused |= {prefix + n for n in ("wk", "wv", "conv_k", "conv_v", "lr_proj", "lr_bias", "lr_logit")}
    return unused & set(names)


@pytest.mark.parametrize("case", CASES)
def test_spec_runs_with_finite_logits_and_gradients(case):
    spec = tiny_spec(case)
    params = leaf_params(spec, seed=0)
    tokens = random_tokens(SHIPPED_LENGTH, seed=0)
    logits = interpret(spec, params, tokens)
    assert logits.shape == (BATCH, SHIPPED_LENGTH, spec.model.vocab)
    assert logits.dtype == torch.float64
    assert torch.isfinite(logits).all()

    interpret_loss(spec, params, tokens).backward()
    no_gradient = {name for name, value in params.items() if value.grad is None}
    assert no_gradient == explained_unused(spec, SHIPPED_LENGTH)
    for name, value in params.items():
        if value.grad is not None:
            assert torch.isfinite(value.grad).all(), name


@pytest.mark.parametrize("case", CASES)
def test_spec_is_causal(case):
    """Changing the tokens after position t leaves the logits up to t unchanged."""
    spec = tiny_spec(case)
    params = init_params(spec, seed=1)
    tokens = random_tokens(SHIPPED_LENGTH, seed=1)
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    before, after = interpret(spec, params, tokens), interpret(spec, params, changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], atol=OUTPUT_ATOL, rtol=0)
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("case", ["mac", "hope_with_q", "nested_cms"])
def test_interpret_is_deterministic(case):
    spec = tiny_spec(case)
    params = init_params(spec, seed=2)
    tokens = random_tokens(SHIPPED_LENGTH, seed=2)
    assert torch.equal(interpret(spec, params, tokens), interpret(spec, params, tokens))


def test_sequences_of_a_batch_are_independent():
    spec = tiny_spec("hope_with_q")
    params = init_params(spec, seed=4)
    tokens = random_tokens(SHIPPED_LENGTH, seed=4)
    together = interpret(spec, params, tokens)
    alone = torch.cat([interpret(spec, params, tokens[b:b + 1]) for b in range(BATCH)])
    torch.testing.assert_close(together, alone, atol=OUTPUT_ATOL, rtol=0)


def test_init_params_names_shapes_and_seed():
    spec = tiny_spec("mac")
    params = init_params(spec, seed=0)
    assert {name: tuple(value.shape) for name, value in params.items()} == model_parameters(spec.model)
    assert all(torch.equal(params[name], value) for name, value in init_params(spec, seed=0).items())
    assert not torch.equal(params["embed"], init_params(spec, seed=1)["embed"])
    assert init_params(spec, dtype=torch.float32)["embed"].dtype == torch.float32


def test_float32_logits_follow_the_float64_ones():
    spec = tiny_spec("mag")
    params = init_params(spec, seed=0)
    tokens = random_tokens(SHIPPED_LENGTH, seed=0)
    single = interpret(spec, params, tokens, dtype=torch.float32)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), interpret(spec, params, tokens), atol=1e-4, rtol=1e-4)

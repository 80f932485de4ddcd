"""Tests for nldsl.runtime.layers: each layer against its per-step reference, outputs and gradients.

Exactness checks run in float64 on odd lengths; the Newton–Schulz check against torch.optim.Muon
runs in float32, as Muon does. The compiled checks are marked slow.
"""

import math

import pytest
import torch

from nldsl.runtime.layers import (
    apply_rope,
    causal_attention,
    causal_attention_mask,
    causal_attention_reference,
    causal_depthwise_conv,
    causal_depthwise_conv_reference,
    gelu_mlp,
    gelu_mlp_reference,
    l2_normalize,
    l2_normalize_reference,
    linear_split,
    newton_schulz,
    newton_schulz_reference,
    output_gate,
    output_gate_reference,
    rms_norm,
    rms_norm_reference,
    rope_frequencies,
    swiglu,
    swiglu_reference,
)

SEQ_LENS = [1, 7, 63, 100]
OUTPUT_ATOL = 1e-11  # float64, fast vs reference
OUTPUT_RTOL = 1e-9
GRAD_ATOL = 1e-9  # float64; gradients add one more layer of rounding
GRAD_RTOL = 1e-8
STREAM_ATOL = 1e-12  # float64, one call vs pieces with a carried cache
MUON_ATOL = 1e-6  # float32, newton_schulz vs a torch.optim.Muon step
COMPILED_ATOL = 1e-9  # float64, torch.compile vs eager

BATCH, HEADS, HEAD_DIM, CHANNELS = 2, 2, 8, 6


def randn(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def outputs_and_grads(fn, inputs, cotangent_seed):
    """Run fn on inputs, pull random cotangents back to every input; return (outputs, grads)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(cotangent_seed)
    pairing = sum(
        (out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() for out in outputs
    )
    grads = torch.autograd.grad(pairing, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]
    return [out.detach() for out in outputs], grads


def assert_matches_reference(fast, reference, inputs, *, atol=OUTPUT_ATOL, grad_atol=GRAD_ATOL):
    fast_outputs, fast_grads = outputs_and_grads(fast, inputs, cotangent_seed=7)
    reference_outputs, reference_grads = outputs_and_grads(reference, inputs, cotangent_seed=7)
    for index, (got, want) in enumerate(zip(fast_outputs, reference_outputs)):
        torch.testing.assert_close(
            got, want, atol=atol, rtol=OUTPUT_RTOL, msg=lambda m, index=index: f"output {index}: {m}"
        )
    for index, (got, want) in enumerate(zip(fast_grads, reference_grads)):
        torch.testing.assert_close(
            got,
            want,
            atol=grad_atol,
            rtol=GRAD_RTOL,
            msg=lambda m, index=index: f"grad of input {index}: {m}",
        )


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_matches_reference(seq_len, with_weight):
    gen = torch.Generator().manual_seed(seq_len)
    x = randn(BATCH, seq_len, CHANNELS, generator=gen)
    if with_weight:
        assert_matches_reference(
            rms_norm, rms_norm_reference, [x, 1.0 + 0.1 * randn(CHANNELS, generator=gen)]
        )
    else:
        assert_matches_reference(lambda x: rms_norm(x, None), lambda x: rms_norm_reference(x, None), [x])


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_l2_normalize_matches_reference(seq_len):
    gen = torch.Generator().manual_seed(seq_len)
    x = randn(BATCH, HEADS, seq_len, HEAD_DIM, generator=gen)
    assert_matches_reference(l2_normalize, l2_normalize_reference, [x])
    norms = torch.linalg.vector_norm(l2_normalize(x), dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)


def test_l2_normalize_is_smooth_at_zero():
    x = torch.zeros(3, HEAD_DIM, dtype=torch.float64, requires_grad=True)
    y = l2_normalize(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.isfinite(grad).all()


def rope_by_complex_numbers(x, base, offset):
    """Textbook RoPE: pair channel j with channel j + D/2 as z_j = x_j + i·x_{j+D/2} (the rotate-half
    pairing, not adjacent channels), multiply by e^{i t θ_j} with θ_j = base^(−2j/D), and unpair."""
    half = x.shape[-1] // 2
    positions = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)
    theta = torch.tensor([base ** (-2.0 * j / x.shape[-1]) for j in range(half)], dtype=torch.float64)
    rotation = torch.polar(
        torch.ones(len(positions), half, dtype=torch.float64), torch.outer(positions, theta)
    )
    z = torch.complex(x[..., :half], x[..., half:]) * rotation  # (B, H, T, D/2)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("offset", [0, 5])
def test_apply_rope_matches_complex_rotation(seq_len, offset):
    gen = torch.Generator().manual_seed(seq_len + offset)
    x = randn(BATCH, HEADS, seq_len, HEAD_DIM, generator=gen)
    base = 500.0
    cos, sin = rope_frequencies(HEAD_DIM, 128, base, dtype=torch.float64)
    assert_matches_reference(
        lambda x: apply_rope(x, cos, sin, offset), lambda x: rope_by_complex_numbers(x, base, offset), [x]
    )


def test_rope_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = randn(1, 1, 1, HEAD_DIM, generator=gen), randn(1, 1, 1, HEAD_DIM, generator=gen)
    cos, sin = rope_frequencies(HEAD_DIM, 64, dtype=torch.float64)
    scores = [
        (apply_rope(q, cos, sin, offset=start + 9) * apply_rope(k, cos, sin, offset=start)).sum()
        for start in (0, 3, 40)
    ]
    torch.testing.assert_close(scores[1], scores[0], atol=OUTPUT_ATOL, rtol=0)
    torch.testing.assert_close(scores[2], scores[0], atol=OUTPUT_ATOL, rtol=0)
    unrotated = (q * k).sum()
    assert not torch.allclose(scores[0], unrotated)


def test_rope_tables_follow_requested_dtype():
    cos, sin = rope_frequencies(HEAD_DIM, 10, dtype=torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16
    assert cos.shape == sin.shape == (10, HEAD_DIM)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("window", [0, 1, 5])
@pytest.mark.parametrize("num_persistent", [0, 3])
def test_causal_attention_matches_reference(seq_len, window, num_persistent):
    gen = torch.Generator().manual_seed(seq_len * 10 + window)
    q, k, v = (randn(BATCH, HEADS, seq_len, HEAD_DIM, generator=gen) for _ in range(3))
    if num_persistent == 0:
        assert_matches_reference(
            lambda q, k, v: causal_attention(q, k, v, window=window),
            lambda q, k, v: causal_attention_reference(q, k, v, window=window),
            [q, k, v],
        )
        return
    persistent = [randn(HEADS, num_persistent, HEAD_DIM, generator=gen) for _ in range(2)]
    assert_matches_reference(
        lambda q, k, v, pk, pv: causal_attention(q, k, v, window=window, persistent_k=pk, persistent_v=pv),
        lambda q, k, v, pk, pv: causal_attention_reference(
            q, k, v, window=window, persistent_k=pk, persistent_v=pv
        ),
        [q, k, v, *persistent],
    )


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("window", [0, 1, 4, 200])
@pytest.mark.parametrize("num_persistent", [0, 2])
def test_attention_mask_matches_explicit_loop(seq_len, window, num_persistent):
    expected = torch.zeros(seq_len, num_persistent + seq_len, dtype=torch.bool)
    for query in range(seq_len):
        for column in range(num_persistent + seq_len):
            key = column - num_persistent
            in_window = window == 0 or query - key < window
            expected[query, column] = key < 0 or (key <= query and in_window)
    assert torch.equal(causal_attention_mask(seq_len, window, num_persistent), expected)


def test_window_of_one_returns_own_value():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (randn(BATCH, HEADS, 7, HEAD_DIM, generator=gen) for _ in range(3))
    torch.testing.assert_close(causal_attention(q, k, v, window=1), v, atol=OUTPUT_ATOL, rtol=0)


def test_window_covering_sequence_equals_full_causal():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (randn(BATCH, HEADS, 7, HEAD_DIM, generator=gen) for _ in range(3))
    torch.testing.assert_close(
        causal_attention(q, k, v, window=7), causal_attention(q, k, v), atol=OUTPUT_ATOL, rtol=0
    )


def test_first_token_attends_to_persistent_memory():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (randn(1, HEADS, 1, HEAD_DIM, generator=gen) for _ in range(3))
    pk, pv = randn(HEADS, 1, HEAD_DIM, generator=gen), randn(HEADS, 1, HEAD_DIM, generator=gen)
    scores = torch.stack([(q[0, :, 0] * pk[:, 0]).sum(-1), (q[0, :, 0] * k[0, :, 0]).sum(-1)], dim=-1)
    weights = torch.softmax(scores / math.sqrt(HEAD_DIM), dim=-1)  # (H, 2)
    expected = weights[:, :1] * pv[:, 0] + weights[:, 1:] * v[0, :, 0]  # (H, D)
    got = causal_attention(q, k, v, window=1, persistent_k=pk, persistent_v=pv)
    torch.testing.assert_close(got[0, :, 0], expected, atol=OUTPUT_ATOL, rtol=0)


@pytest.mark.parametrize("scale", [0.5, None])
def test_causal_attention_scale(scale):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (randn(BATCH, HEADS, 7, HEAD_DIM, generator=gen) for _ in range(3))
    assert_matches_reference(
        lambda q, k, v: causal_attention(q, k, v, window=3, scale=scale),
        lambda q, k, v: causal_attention_reference(q, k, v, window=3, scale=scale),
        [q, k, v],
    )


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_depthwise_conv_matches_reference(seq_len, width, with_bias):
    gen = torch.Generator().manual_seed(seq_len * 10 + width)
    x = randn(BATCH, seq_len, CHANNELS, generator=gen)
    weight = randn(CHANNELS, width, generator=gen)
    if with_bias:
        inputs = [x, weight, randn(CHANNELS, generator=gen)]
        assert_matches_reference(causal_depthwise_conv, causal_depthwise_conv_reference, inputs)
    else:
        assert_matches_reference(
            lambda x, w: causal_depthwise_conv(x, w, None),
            lambda x, w: causal_depthwise_conv_reference(x, w, None),
            [x, weight],
        )


def test_causal_depthwise_conv_with_cache_matches_reference():
    gen = torch.Generator().manual_seed(5)
    inputs = [randn(BATCH, 7, CHANNELS, generator=gen), randn(CHANNELS, 4, generator=gen)]
    inputs += [randn(CHANNELS, generator=gen), randn(BATCH, 3, CHANNELS, generator=gen)]
    assert_matches_reference(causal_depthwise_conv, causal_depthwise_conv_reference, inputs)


def test_causal_depthwise_conv_is_causal():
    gen = torch.Generator().manual_seed(6)
    x = randn(1, 9, CHANNELS, generator=gen)
    weight, bias = randn(CHANNELS, 4, generator=gen), randn(CHANNELS, generator=gen)
    changed = x.clone()
    changed[:, 5:] += 1.0
    y, _ = causal_depthwise_conv(x, weight, bias)
    y_changed, _ = causal_depthwise_conv(changed, weight, bias)
    torch.testing.assert_close(y_changed[:, :5], y[:, :5], atol=0, rtol=0)
    assert not torch.allclose(y_changed[:, 5], y[:, 5])


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("split", [0, 1, 2, 30, 62, 63])
def test_causal_depthwise_conv_streams_in_pieces(width, split):
    gen = torch.Generator().manual_seed(width * 100 + split)
    x = randn(BATCH, 63, CHANNELS, generator=gen).requires_grad_()
    weight, bias = randn(CHANNELS, width, generator=gen), randn(CHANNELS, generator=gen)
    whole, whole_cache = causal_depthwise_conv(x, weight, bias)
    first, cache = causal_depthwise_conv(x[:, :split], weight, bias)
    second, pieces_cache = causal_depthwise_conv(x[:, split:], weight, bias, cache)
    pieces = torch.cat([first, second], dim=1)
    torch.testing.assert_close(pieces, whole, atol=STREAM_ATOL, rtol=0)
    torch.testing.assert_close(pieces_cache, whole_cache, atol=0, rtol=0)
    assert whole_cache.shape == (BATCH, width - 1, CHANNELS)
    cotangent = torch.randn(whole.shape, generator=gen, dtype=torch.float64)
    (grad_whole,) = torch.autograd.grad((whole * cotangent).sum(), x)
    (grad_pieces,) = torch.autograd.grad((pieces * cotangent).sum(), x)
    torch.testing.assert_close(grad_pieces, grad_whole, atol=STREAM_ATOL, rtol=0)


def test_compiled_causal_depthwise_conv_sums_taps_at_any_length():
    """Under torch.compile the taps are summed directly at every length (conv1d only runs eagerly
    above SHORT_CONV_TOKENS): outputs, cache and gradients equal the token-by-token reference."""
    gen = torch.Generator().manual_seed(9)
    x = randn(BATCH, 100, CHANNELS, generator=gen)
    inputs = [x, randn(CHANNELS, 4, generator=gen), randn(CHANNELS, generator=gen),
              randn(BATCH, 3, CHANNELS, generator=gen)]
    traced = []

    def backend(graph, example_inputs):
        traced.extend(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
        return graph.forward

    compiled = torch.compile(causal_depthwise_conv, backend=backend, fullgraph=True)
    assert_matches_reference(compiled, causal_depthwise_conv_reference, inputs)
    torch._dynamo.reset()
    assert traced and not any("conv" in target for target in traced), traced


def test_causal_depthwise_conv_carries_cache_across_many_short_calls():
    gen = torch.Generator().manual_seed(8)
    x = randn(BATCH, 11, CHANNELS, generator=gen)
    weight, bias = randn(CHANNELS, 4, generator=gen), randn(CHANNELS, generator=gen)
    whole, _ = causal_depthwise_conv(x, weight, bias)
    cache, pieces = None, []
    for t in range(x.shape[1]):
        y_t, cache = causal_depthwise_conv(x[:, t : t + 1], weight, bias, cache)
        pieces.append(y_t)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=STREAM_ATOL, rtol=0)


def test_linear_split_is_each_product_and_its_gradients():
    gen = torch.Generator().manual_seed(10)
    inputs = [randn(BATCH, 7, CHANNELS, generator=gen), randn(3, CHANNELS, generator=gen),
              randn(5, CHANNELS, generator=gen)]
    assert_matches_reference(lambda x, a, b: linear_split(x, a, b),
                             lambda x, a, b: (x @ a.T, x @ b.T), inputs)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_swiglu_matches_reference(seq_len):
    gen = torch.Generator().manual_seed(seq_len)
    hidden = 10
    inputs = [randn(BATCH, seq_len, CHANNELS, generator=gen)]
    inputs += [randn(hidden, CHANNELS, generator=gen), randn(hidden, CHANNELS, generator=gen)]
    inputs += [randn(CHANNELS, hidden, generator=gen)]
    assert_matches_reference(swiglu, swiglu_reference, inputs)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("with_biases", [True, False])
def test_gelu_mlp_matches_reference(seq_len, with_biases):
    gen = torch.Generator().manual_seed(seq_len)
    hidden = 10
    x = randn(BATCH, seq_len, CHANNELS, generator=gen)
    w_in, w_out = randn(hidden, CHANNELS, generator=gen), randn(CHANNELS, hidden, generator=gen)
    if with_biases:
        inputs = [x, w_in, randn(hidden, generator=gen), w_out, randn(CHANNELS, generator=gen)]
        assert_matches_reference(gelu_mlp, gelu_mlp_reference, inputs)
    else:
        assert_matches_reference(
            lambda x, w_in, w_out: gelu_mlp(x, w_in, None, w_out, None),
            lambda x, w_in, w_out: gelu_mlp_reference(x, w_in, None, w_out, None),
            [x, w_in, w_out],
        )


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_output_gate_matches_reference(seq_len):
    gen = torch.Generator().manual_seed(seq_len)
    inputs = [randn(BATCH, seq_len, CHANNELS, generator=gen), randn(BATCH, seq_len, 5, generator=gen)]
    inputs += [randn(CHANNELS, 5, generator=gen)]
    assert_matches_reference(output_gate, output_gate_reference, inputs)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (7, 5), (8, 8), (3, 4, 9), (2, 3, 9, 4)])
@pytest.mark.parametrize("steps", [1, 5])
def test_newton_schulz_matches_reference(shape, steps):
    gen = torch.Generator().manual_seed(sum(shape) + steps)
    g = randn(*shape, generator=gen)
    assert_matches_reference(
        lambda g: newton_schulz(g, steps, compute_dtype=None),
        lambda g: newton_schulz_reference(g, steps),
        [g],
    )


@pytest.mark.parametrize("shape", [(8, 16), (16, 8), (12, 12)])
def test_newton_schulz_acts_on_singular_values_only(shape):
    """NS(U S Vᵀ) = U p(S / ‖S‖) Vᵀ with p the scalar quintic σ ↦ aσ + bσ³ + cσ⁵ applied five times:
    singular vectors are kept, and singular values not far below the largest land in (0.5, 1.5)."""
    gen = torch.Generator().manual_seed(9)
    rank = min(shape)
    left, _ = torch.linalg.qr(randn(shape[0], rank, generator=gen))  # (m, r)
    right, _ = torch.linalg.qr(randn(shape[1], rank, generator=gen))  # (n, r)
    singular_values = torch.linspace(0.1, 1.0, rank, dtype=torch.float64)
    sigma = singular_values / torch.linalg.vector_norm(singular_values)
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(5):
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    expected = left @ torch.diag(sigma) @ right.T
    got = newton_schulz(left @ torch.diag(singular_values) @ right.T, compute_dtype=None)
    torch.testing.assert_close(got, expected, atol=OUTPUT_ATOL, rtol=OUTPUT_RTOL)
    assert sigma.min() > 0.5 and sigma.max() < 1.5, sigma


def muon_update(grad):
    """The parameter change of one torch.optim.Muon step with lr = 1, no momentum, no weight decay."""
    param = torch.nn.Parameter(torch.randn(grad.shape, generator=torch.Generator().manual_seed(0)))
    before = param.detach().clone()
    optimizer = torch.optim.Muon(
        [param], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, adjust_lr_fn="original"
    )
    param.grad = grad.clone()
    optimizer.step()
    rows, cols = grad.shape
    lr_scale = math.sqrt(max(1.0, rows / cols))  # Muon's "original" shape adjustment of lr
    return (param.detach() - before) / lr_scale


@pytest.mark.parametrize("shape", [(7, 13), (13, 7), (16, 16), (64, 33), (100, 63)])
def test_newton_schulz_matches_a_muon_step(shape):
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    ns = newton_schulz(grad)
    assert ns.dtype == torch.float32
    torch.testing.assert_close(muon_update(grad), -ns, atol=MUON_ATOL, rtol=0)


def test_batched_newton_schulz_matches_muon_per_matrix():
    grads = torch.randn(3, 2, 9, 5, generator=torch.Generator().manual_seed(10))
    ns = newton_schulz(grads)
    for index in range(3):
        for head in range(2):
            torch.testing.assert_close(
                muon_update(grads[index, head]), -ns[index, head], atol=MUON_ATOL, rtol=0
            )


@pytest.mark.slow
def test_compiled_block_matches_eager():
    """conv → l2 norm → rope → windowed attention with persistent tokens → norm, gate, SwiGLU,
    compiled with fullgraph=True (a graph break fails), forward and backward against eager."""
    gen = torch.Generator().manual_seed(11)
    seq_len, width, num_persistent = 21, 4, 2
    model_dim = HEADS * HEAD_DIM
    cos, sin = rope_frequencies(HEAD_DIM, 64, dtype=torch.float64)

    def block(
        x, conv_weight, conv_bias, persistent_k, persistent_v, norm_weight, w_gate, w_up, w_down, w_out
    ):
        mixed, _ = causal_depthwise_conv(x, conv_weight, conv_bias)  # (B, T, C)
        heads = mixed.view(BATCH, seq_len, HEADS, HEAD_DIM).transpose(1, 2)  # (B, H, T, D)
        q = apply_rope(l2_normalize(heads), cos, sin, offset=3)
        k = apply_rope(l2_normalize(heads.flip(-1)), cos, sin, offset=3)
        attended = causal_attention(
            q, k, heads, window=5, persistent_k=persistent_k, persistent_v=persistent_v, scale=2.0
        )
        full = causal_attention(q, k, heads)
        y = (attended + full).transpose(1, 2).reshape(BATCH, seq_len, model_dim)  # (B, T, C)
        y = output_gate(rms_norm(y, norm_weight), x, w_out)
        return y + swiglu(y, w_gate, w_up, w_down)

    inputs = [
        randn(BATCH, seq_len, model_dim, generator=gen),
        randn(model_dim, width, generator=gen),
        randn(model_dim, generator=gen),
        randn(HEADS, num_persistent, HEAD_DIM, generator=gen),
        randn(HEADS, num_persistent, HEAD_DIM, generator=gen),
        randn(model_dim, generator=gen),
        randn(24, model_dim, generator=gen),
        randn(24, model_dim, generator=gen),
        randn(model_dim, 24, generator=gen),
        randn(model_dim, model_dim, generator=gen),
    ]
    eager_outputs, eager_grads = outputs_and_grads(block, inputs, cotangent_seed=12)
    compiled = torch.compile(block, fullgraph=True)
    compiled_outputs, compiled_grads = outputs_and_grads(compiled, inputs, cotangent_seed=12)
    torch.testing.assert_close(compiled_outputs, eager_outputs, atol=COMPILED_ATOL, rtol=COMPILED_ATOL)
    torch.testing.assert_close(compiled_grads, eager_grads, atol=COMPILED_ATOL, rtol=COMPILED_ATOL)


@pytest.mark.slow
def test_compiled_newton_schulz_matches_eager():
    gen = torch.Generator().manual_seed(13)
    inputs = [randn(3, 9, 5, generator=gen)]

    def orthogonalise(g):
        return newton_schulz(g, 5, compute_dtype=None)

    eager_outputs, eager_grads = outputs_and_grads(orthogonalise, inputs, cotangent_seed=14)
    compiled = torch.compile(orthogonalise, fullgraph=True)
    compiled_outputs, compiled_grads = outputs_and_grads(compiled, inputs, cotangent_seed=14)
    torch.testing.assert_close(compiled_outputs, eager_outputs, atol=COMPILED_ATOL, rtol=COMPILED_ATOL)
    torch.testing.assert_close(compiled_grads, eager_grads, atol=COMPILED_ATOL, rtol=COMPILED_ATOL)


def test_the_surprise_is_the_per_token_gradient_of_the_next_token_loss_and_zero_without_a_target() -> None:
    """blocks.surprise_error, in closed form, against autograd of CE(RMSNorm(y) Eᵀ, target) per token;
    a position whose target is −1 (none known) has g = 0 exactly (a mask dropped went unnoticed)."""
    from nldsl.runtime.blocks import surprise_error

    generator = torch.Generator().manual_seed(0)
    batch, length, width, vocab, eps = 2, 5, 6, 11, 1e-6
    y = torch.randn(batch, length, width, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = 1 + 0.1 * torch.randn(width, generator=generator, dtype=torch.float64)
    unembed = torch.randn(vocab, width, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, vocab, (batch, length), generator=generator)
    targets[0, -1] = targets[1, 2] = -1
    normed = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * weight
    losses = torch.nn.functional.cross_entropy((normed @ unembed.T).flatten(0, 1), targets.flatten(),
                                               ignore_index=-1, reduction="sum")
    [expected] = torch.autograd.grad(losses, [y])  # per token: each loss term reads only its own y_t
    got = surprise_error(y.detach().unsqueeze(1), targets, weight, unembed, eps).squeeze(1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert not got[0, -1].any() and not got[1, 2].any() and got[0, 0].any()

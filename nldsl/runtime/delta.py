"""The exact block-parallel generalized delta recurrence, the fast path of linear memories.

A linear memory updated token by token (period 1, no momentum) follows

    S_t = S_{t−1} (α_t I + a_t k_tᵀ) + x_t k_tᵀ        S: d_out × d_in

for the objectives `l2` and `dot` of docs/semantics.md §1.3 (the inner gradient is taken at
S_{t−1}, and every term is linear in S_{t−1}; `external` has no such form).
`delta_rule_coefficients` derives a_t and x_t from the level's objective, values and DGD switch;
`generalized_delta_chunked` runs the recurrence exactly (not an approximation) over blocks of L
tokens:

- r_t = S_{t−1} a_t + x_t is what token t writes (S_t = α_t S_{t−1} + r_t k_tᵀ). Unrolling S_{t−1}
  from the block start gives the unit lower-triangular system
  r_t − Σ_{s<t} (A_{t−1}/A_s)(a_t·k_s) r_s = A_{t−1} S_0 a_t + x_t, solved in one batched call;
- o_t = A_t S_0 q_t + Σ_{s≤t} (A_t/A_s)(k_s·q_t) r_s (causal; exclusive stops at t−1);
- S_L = A_L S_0 + Σ_s (A_L/A_s) r_s k_sᵀ carries the state to the next block (a Python loop).

A_t is the product of α over the block up to t. Its ratios are exponentials of masked differences
of a log-cumsum, so long blocks with strong decay neither underflow nor divide by zero.
"""

import math

import torch
from torch import Tensor


def delta_rule_coefficients(
    objective: str, generated_values: bool, dgd: bool, keys: Tensor, values: Tensor | None, lr: Tensor
) -> tuple[Tensor, Tensor]:
    """The per-token a_t (B, H, T, d_in) and x_t (B, H, T, d_out) of a linear level with period 1.

    With S = S_{t−1}, η = lr, d = 1 with DGD (else 0) and the update S_t = α S − η (g kᵀ + d S k kᵀ):

    | objective, values       | output error g   | a_t                | x_t   |
    |-------------------------|------------------|--------------------|-------|
    | l2, given               | S k − v          | −η (1 + d) k       | η v   |
    | l2, generated           | S k − S v        | −η ((1 + d) k − v) | 0     |
    | dot, given              | −v               | −η d k             | η v   |
    | dot, generated          | −S v             | η (v − d k)        | 0     |
    | reconstruction          | S k − k          | −η (1 + d) k       | η k   |

    Generated values v̂ = S_{t−1} v are the memory's own prediction at the chunk start, which with
    period 1 is S_{t−1}; they become part of a_t. With the l2 objective and DGD the S k kᵀ term
    appears twice, as in the paper's Eq. 88.
    """
    eta = lr.unsqueeze(-1)  # (B, H, T, 1)
    extra = 1.0 if dgd else 0.0
    if objective == "reconstruction":
        return -eta * (1.0 + extra) * keys, eta * keys
    assert values is not None, f"objective {objective!r} needs values"
    if objective == "l2" and not generated_values:
        return -eta * (1.0 + extra) * keys, eta * values
    if objective == "l2":
        return -eta * ((1.0 + extra) * keys - values), torch.zeros_like(values)
    if objective == "dot" and not generated_values:
        return -eta * extra * keys, eta * values
    if objective == "dot":
        return eta * (values - extra * keys), torch.zeros_like(values)
    raise ValueError(f"objective {objective!r} has no delta-rule form")


def log_gate(gate: Tensor) -> Tensor:
    """log of a decay gate (α or β, in [0, 1]) for the log-domain prefix sums. A gate may be 0 (a
    constant `retention = 0` forgets everything each token; β = 0 carries no momentum). Its log is
    kept finite, so that ratios of prefix products do not become −inf − (−inf) = NaN, and is set to
    twice the log of the smallest normal number, so that the exp of every prefix sum or ratio that
    holds it underflows to exactly 0. At the log of that number itself, such a product came out as
    1e-308 times what it scales: a state that `retention = 0` should have wiped still moved a
    relu memory's pre-activations off 0 (by about 1e-308), so relu's derivative there read 1 where
    the interpreter's exact 0 reads 0 (a run of the wide-spec property test without derandomize
    found it: outputs 0.38 apart).

    The gradient with respect to a gate that is exactly 0 is 0 here (log has no derivative there),
    where the per-token reference's is the state the gate scales. No spec reaches the difference:
    every gate is a constant or `max · sigmoid(…)` (docs/semantics.md §2), whose own derivative is
    0 wherever it is 0, so what flows back to a parameter is 0 either way. (An audit of this kernel
    against the reference on random shapes and gates, α drawn with exact zeros, found it.)"""
    tiny = torch.finfo(gate.dtype).tiny
    return torch.where(gate > 0, torch.log(gate.clamp_min(tiny)), 2 * math.log(tiny))


def generalized_delta_chunked(
    q: Tensor,
    k: Tensor,
    a: Tensor,
    x: Tensor,
    alpha: Tensor | None,
    initial_state: Tensor,
    block: int = 64,
    readout: str = "causal",
    detach_writes: bool = False,
) -> tuple[Tensor, Tensor]:
    """Run S_t = S_{t−1}(α_t I + a_t k_tᵀ) + x_t k_tᵀ exactly, block by block.

    q, k, a: (B, H, T, d_in); x: (B, H, T, d_out); alpha: (B, H, T) in [0, 1] or None (no decay);
    initial_state: (B, H, d_out, d_in). readout "causal" returns o_t = S_t q_t, "exclusive"
    o_t = S_{t−1} q_t. detach_writes stops gradients through each written increment r_t k_tᵀ while
    the retention path (α and S_0) stays differentiable (semantics §1.7).
    Returns the outputs (B, H, T, d_out) and the final state (B, H, d_out, d_in).
    """
    assert readout in ("causal", "exclusive"), readout
    assert block >= 1
    state = initial_state
    outputs = []
    # torch.split, not slicing: each slice's backward would fill a zero tensor of the full length.
    log_alphas = [None] * (-(-q.shape[-2] // block)) if alpha is None else log_gate(alpha).split(block, dim=-1)
    pieces = zip(q.split(block, dim=-2), k.split(block, dim=-2), a.split(block, dim=-2), x.split(block, dim=-2),
                 log_alphas)
    for q_block, k_block, a_block, x_block, log_alpha in pieces:
        block_outputs, state = _delta_block(q_block, k_block, a_block, x_block, log_alpha, state, readout,
                                            detach_writes)
        outputs.append(block_outputs)
    return torch.cat(outputs, dim=-2), state


def _delta_block(
    q: Tensor, k: Tensor, a: Tensor, x: Tensor, log_alpha: Tensor | None, state: Tensor,
    readout: str, detach_writes: bool,
) -> tuple[Tensor, Tensor]:
    """One block of `generalized_delta_chunked`: its outputs and the state after it."""
    n = q.shape[-2]
    if log_alpha is None:
        log_alpha = q.new_zeros(q.shape[:-1])  # (B, H, n)
    log_decay = torch.cumsum(log_alpha, dim=-1)  # log A_t  (B, H, n)
    log_decay_before = log_decay - log_alpha  # log A_{t−1}, with A_{−1} = 1
    inclusive = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    strict = inclusive.tril(-1)

    # The system for r mixes the block's writes through A_{t−1}/A_s for s < t.
    decay_before = masked_decay_ratios(log_decay_before, log_decay, strict)  # (B, H, n, n)
    mixing = decay_before * (a @ k.transpose(-1, -2))  # [t, s] = (A_{t−1}/A_s)(a_t·k_s)
    start_term = log_decay_before.exp().unsqueeze(-1) * (a @ state.transpose(-1, -2))  # (B, H, n, d_out)
    writes = _solve_unit_lower(-mixing, start_term + x)  # r_t  (B, H, n, d_out)
    write_keys = k
    if detach_writes:
        writes, write_keys = writes.detach(), k.detach()

    if readout == "causal":
        readout_decay, readout_log = masked_decay_ratios(log_decay, log_decay, inclusive), log_decay
    else:
        readout_decay, readout_log = decay_before, log_decay_before
    scores = readout_decay * (q @ write_keys.transpose(-1, -2))  # (B, H, n, n)
    outputs = readout_log.exp().unsqueeze(-1) * (q @ state.transpose(-1, -2)) + scores @ writes

    total = log_decay[..., -1:]  # log A_n  (B, H, 1)
    to_end = (total - log_decay).exp().unsqueeze(-1)  # A_n/A_s  (B, H, n, 1)
    new_state = total.exp().unsqueeze(-1) * state + (to_end * writes).transpose(-1, -2) @ write_keys
    return outputs, new_state


def _solve_unit_lower(matrix: Tensor, rhs: Tensor) -> Tensor:
    """X with (I + strictly-lower(matrix)) X = rhs, in at least float32.

    The CPU solver has no bfloat16 or float16 kernel, and a substitution through a block is where
    half precision would lose the most; the result comes back in the inputs' precision.
    """
    result_dtype = torch.promote_types(matrix.dtype, rhs.dtype)
    solve_dtype = torch.promote_types(result_dtype, torch.float32)
    with torch.autocast(matrix.device.type, enabled=False):
        solved = torch.linalg.solve_triangular(matrix.to(solve_dtype), rhs.to(solve_dtype), upper=False,
                                               unitriangular=True)
    return solved.to(result_dtype)


def masked_decay_ratios(log_row: Tensor, log_col: Tensor, mask: Tensor) -> Tensor:
    """exp(log_row_t − log_col_s) (B, H, n, n) where mask[t, s], else 0.

    The mask is applied before the exponential, so masked entries never overflow (and never turn
    into NaN gradients).
    """
    difference = log_row.unsqueeze(-1) - log_col.unsqueeze(-2)  # (B, H, n, n)
    return torch.where(mask, difference, float("-inf")).exp()

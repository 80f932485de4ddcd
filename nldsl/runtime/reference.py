"""Plain per-token references for the runtime's fast paths, written to be read rather than to be fast.

- `memory_level_reference`: docs/semantics.md §1 literally. A loop over tokens builds M_θ from the
  weight list, takes the inner gradient of the objective written as a loss with autograd (at the
  chunk-start state), adds the DGD term, scales η by a clip when the level has one, steps the gd
  or momentum recurrence, applies Newton–Schulz to each chunk's increment and reads out per the
  level's readout.
- `generalized_delta_reference`: S_t = S_{t−1}(α_t I + a_t k_tᵀ) + x_t k_tᵀ token by token.
- `newton_schulz_reference`: Muon's quintic iteration on one matrix.

They define what the fast paths in memory.py and delta.py must reproduce (tests/runtime/); run
them in float64.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl.runtime.memory import LevelConfig, MemoryState

ExternalLoss = Callable[[Tensor, int], Tensor]  # (prediction (B, H, 1, d_out), t) -> loss (B, H, 1)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": torch.relu,
    "tanh": torch.tanh,
}


def apply_memory(cfg: LevelConfig, weights: list[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """M_θ(x) for one token x (B, H, d_in), and the input each layer reads, each (B, H, in)."""
    layer_inputs = []
    hidden = x
    for index, weight in enumerate(weights):
        layer_inputs.append(hidden)
        hidden = torch.einsum("bhoi,bhi->bho", weight, hidden)
        if index < len(weights) - 1:
            hidden = ACTIVATIONS[cfg.activation](hidden)
    if cfg.state == "residual_mlp":
        hidden = x + hidden
    return hidden, layer_inputs


def inner_loss(
    cfg: LevelConfig,
    weights: list[Tensor],
    chunk_weights: list[Tensor],
    key: Tensor,
    value: Tensor | None,
    external_loss: ExternalLoss | None,
    t: int,
) -> Tensor:
    """ℓ(θ; k_t, v̂_t) of §1.3, summed over sequences and heads (they are independent)."""
    prediction = apply_memory(cfg, weights, key)[0]  # (B, H, d_out)
    if cfg.objective == "external":
        assert external_loss is not None
        return external_loss(prediction.unsqueeze(-2), t).sum()
    if cfg.objective == "reconstruction":
        return 0.5 * ((prediction - key) ** 2).sum()
    assert value is not None
    target = value if cfg.values == "given" else apply_memory(cfg, chunk_weights, value)[0]
    if cfg.objective == "dot":
        return -(prediction * target).sum()
    return 0.5 * ((prediction - target) ** 2).sum()


def inner_gradient(
    cfg: LevelConfig,
    chunk_weights: list[Tensor],
    key: Tensor,
    value: Tensor | None,
    external_loss: ExternalLoss | None,
    t: int,
) -> tuple[list[Tensor], Tensor]:
    """u_t = ∇_θ ℓ(θ_c; k_t, v̂_t) plus the DGD term W_l^c x_l x_lᵀ, each (B, H, out, in), and the
    squared norm of the gradient alone, ‖∇_θ ℓ‖² (B, H) over all of a head's weight matrices (what a
    clip bounds)."""
    # The loss gets its own handle on θ_c: differentiating w.r.t. the copies follows only the
    # loss's use of θ, so a generated target (computed from θ_c itself) is a constant here while
    # create_graph keeps everything differentiable for the outer loss.
    copies = [weight.clone() for weight in chunk_weights]
    for copy in copies:
        if not copy.requires_grad:
            copy.requires_grad_()
    loss = inner_loss(cfg, copies, chunk_weights, key, value, external_loss, t)
    gradients = list(torch.autograd.grad(loss, copies, create_graph=True))
    squared_norm = torch.stack([(gradient ** 2).sum((-2, -1)) for gradient in gradients]).sum(0)
    if cfg.dgd:
        layer_inputs = apply_memory(cfg, chunk_weights, key)[1]
        # spelled out here rather than read from cfg.preconditioned_layers(), which the fast path uses
        preconditioned = range(len(chunk_weights)) if cfg.dgd_layers == "all" else range(1)
        for index in preconditioned:
            x = layer_inputs[index]
            gradients[index] = gradients[index] + torch.einsum(
                "bhoi,bhi,bhj->bhoj", chunk_weights[index], x, x
            )
    return gradients, squared_norm


def newton_schulz_reference(matrix: Tensor, steps: int) -> Tensor:
    """Muon's quintic Newton–Schulz iteration on one 2-D matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (torch.linalg.norm(x) + 1e-7)  # Frobenius; its gradient at a zero matrix is 0
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if tall else x


def _orthogonalize(increment: Tensor, steps: int) -> Tensor:
    """newton_schulz_reference on every (b, h) matrix of increment (B, H, out, in)."""
    batch, heads = increment.shape[:2]
    return torch.stack([
        torch.stack([newton_schulz_reference(increment[b, h], steps) for h in range(heads)])
        for b in range(batch)
    ])


def memory_level_reference(
    cfg: LevelConfig,
    state: MemoryState,
    keys: Tensor,
    values: Tensor | None,
    queries: Tensor,
    lr: Tensor,
    retention: Tensor | None,
    momentum_decay: Tensor | None,
    external_loss: ExternalLoss | None = None,
) -> tuple[Tensor, MemoryState]:
    """A memory level token by token (semantics §1); same inputs and outputs as `memory_level`.

    external_loss(prediction (B, H, 1, d_out), t) -> (B, H, 1) is the inner loss of objective
    external for token t; its gradient is taken with autograd.
    """
    assert cfg.orthogonalize_steps == 0 or cfg.readout == "chunk_start"
    assert (state.momentum is not None) == cfg.momentum, "the state carries S iff cfg.momentum"
    length = keys.shape[-2]
    weights = list(state.weights)
    momentum = list(state.momentum) if state.momentum is not None else None
    outputs = []
    with torch.enable_grad():
        for t in range(length):
            if t % cfg.chunk_size == 0:
                chunk_weights = weights  # θ_c: every gradient of this chunk is taken here
                chunk_retention = torch.ones_like(lr[..., 0, None, None])  # A: α's product so far
                # θ_t − A θ_c, summed as it is written: taken as that difference, it would hold rounding
                # noise of θ's size, which Newton–Schulz multiplies by up to 3.4445 a step
                increments = [torch.zeros_like(weight) for weight in weights]
            key, query = keys[..., t, :], queries[..., t, :]
            value = None if values is None else values[..., t, :]
            eta = lr[..., t, None, None]
            alpha = 1.0 if retention is None else retention[..., t, None, None]

            if cfg.readout == "exclusive":
                outputs.append(apply_memory(cfg, weights, query)[0])
            if cfg.readout == "chunk_start":
                outputs.append(apply_memory(cfg, chunk_weights, query)[0])

            at = chunk_weights
            if cfg.decay_before_write:  # Gated DeltaNet: decay first, then write at the decayed state
                at = [alpha * weight for weight in chunk_weights]
            gradients, squared_norm = inner_gradient(cfg, at, key, value, external_loss, t)
            if cfg.clip is not None:
                # the token's whole write, DGD term included, scaled by min(1, clip/‖∇ℓ‖); the norm is
                # floored at the clip before its root, whose derivative at a zero gradient is infinite
                norm = torch.sqrt(torch.clamp(squared_norm, min=cfg.clip ** 2))
                eta = eta * (cfg.clip / norm)[..., None, None]
            written = [eta * u for u in gradients]  # η_t u_t
            if not cfg.grad_through_writes:
                written = [w.detach() for w in written]
            if momentum is None:
                weights = [alpha * weight - w for weight, w in zip(weights, written)]
                increments = [alpha * d - w for d, w in zip(increments, written)]
            else:
                assert momentum_decay is not None, "a momentum level needs momentum_decay"
                beta = momentum_decay[..., t, None, None]
                momentum = [beta * s - w for s, w in zip(momentum, written)]
                weights = [alpha * weight + s for weight, s in zip(weights, momentum)]
                increments = [alpha * d + s for d, s in zip(increments, momentum)]
            chunk_retention = chunk_retention * alpha

            if cfg.readout == "causal":
                outputs.append(apply_memory(cfg, weights, query)[0])

            chunk_ends = (t + 1) % cfg.chunk_size == 0 or t == length - 1
            if cfg.orthogonalize_steps > 0 and chunk_ends:
                weights = [
                    chunk_retention * start + _orthogonalize(increment, cfg.orthogonalize_steps)
                    for increment, start in zip(increments, chunk_weights)
                ]
    return torch.stack(outputs, dim=-2), MemoryState(weights, momentum)


def generalized_delta_reference(
    q: Tensor,
    k: Tensor,
    a: Tensor,
    x: Tensor,
    alpha: Tensor | None,
    initial_state: Tensor,
    readout: str = "causal",
    detach_writes: bool = False,
) -> tuple[Tensor, Tensor]:
    """S_t = S_{t−1}(α_t I + a_t k_tᵀ) + x_t k_tᵀ token by token; same arguments as the fast kernel.

    o_t = S_t q_t (causal) or S_{t−1} q_t (exclusive). detach_writes detaches what each token
    adds on top of the retained α_t S_{t−1}.
    """
    d_in = q.shape[-1]
    identity = torch.eye(d_in, dtype=q.dtype, device=q.device)
    state = initial_state
    outputs = []
    for t in range(q.shape[-2]):
        a_t, k_t, x_t, q_t = a[..., t, :], k[..., t, :], x[..., t, :], q[..., t, :]
        alpha_t = 1.0 if alpha is None else alpha[..., t, None, None]
        if readout == "exclusive":
            outputs.append(torch.einsum("bhoi,bhi->bho", state, q_t))
        transition = alpha_t * identity + torch.einsum("bhi,bhj->bhij", a_t, k_t)  # (B, H, d_in, d_in)
        new_state = state @ transition + torch.einsum("bho,bhi->bhoi", x_t, k_t)
        if detach_writes:
            retained = alpha_t * state
            new_state = retained + (new_state - retained).detach()
        state = new_state
        if readout == "causal":
            outputs.append(torch.einsum("bhoi,bhi->bho", state, q_t))
    return torch.stack(outputs, dim=-2), state

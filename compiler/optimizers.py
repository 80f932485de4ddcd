"""Lowering the outer level: a spec's `train.optimizer` → a `torch.optim.Optimizer`.

An `optimizer` section becomes a `NestedOptimizer` (nldsl/runtime/optim.py) with one level per
`level`; a builtin (`adamw(…)`, `sgd(…)`, `muon(…)`, `m3(…)`) becomes its usual optimizer. Weight
decay is decoupled everywhere (p ← p (1 − lr·λ), AdamW's; `sgd` is torch's SGD with that decay,
`O.DecoupledSGD`) and applies to weights of two or more dimensions only (matrices, embeddings,
initial memory states), never to norms, biases or gate parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nldsl import spec as S
from nldsl.runtime import optim as O


def level_config(level: S.OptimizerLevelSpec) -> O.OptimizerLevelConfig:
    return O.OptimizerLevelConfig(
        name=level.name, flow=level.flow, state=level.state, hidden=level.hidden, objective=level.objective,
        lr=level.lr, retention=level.retention, period=level.period,
        orthogonalize_steps=level.orthogonalize.steps if level.orthogonalize else 0,
        nesterov=level.nesterov, bias_correction=level.bias_correction, readout=level.readout, init=level.init)


def optimizer_config(opt: S.OptimizerSpec) -> O.OptimizerConfig:
    """The runtime configuration of an `optimizer` section."""
    fallback = O.adamw(lr=opt.lr, weight_decay=opt.weight_decay) if opt.matrices_only else None
    return O.OptimizerConfig(
        lr=opt.lr, levels=tuple(level_config(level) for level in opt.levels), update=opt.update,
        weight_decay=opt.weight_decay, lr_scale=opt.lr_scale, matrices_only=opt.matrices_only, fallback=fallback)


def builtin_config(opt: S.BuiltinOptimizer) -> O.OptimizerConfig | None:
    """Builtins that run as nested levels (muon, m3); None for those torch provides directly."""
    if opt.kind == "muon":
        return O.muon(lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                      fallback=O.adamw(lr=opt.lr, betas=(0.9, opt.beta2), eps=opt.eps,
                                       weight_decay=opt.weight_decay))
    if opt.kind == "m3":
        return O.m3(lr=opt.lr, betas=(opt.momentum, opt.beta2, opt.momentum), eps=opt.eps,
                    weight_decay=opt.weight_decay,
                    fallback=O.adamw(lr=opt.lr, betas=(0.9, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay))
    return None


def parameter_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _name, param in named:
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fused_kernels_apply(named: list[tuple[str, torch.nn.Parameter]]) -> bool:
    """Whether torch's fused AdamW / SGD kernels serve these parameters. They compute the same update
    (float64: equal to 2e-16) in one pass over each tensor; on CPU the default per-tensor loop took
    4x as long (139 ms vs 34 ms per step for the 8.5 M parameters of the d_model-512 Transformer++)."""
    return bool(named) and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for _, p in named)


def build_optimizer(named: Iterable[tuple[str, torch.nn.Parameter]], optimizer: Any) -> torch.optim.Optimizer:
    """The outer optimizer of `train.optimizer` over named parameters."""
    usage = "build_optimizer(model.named_parameters(), spec.train.optimizer)"
    try:
        named = list(named)
    except TypeError:
        raise TypeError(f"build_optimizer takes the model's named parameters, got {type(named).__name__}: "
                        f"{usage}") from None
    if not all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor) for item in named):
        raise TypeError(f"build_optimizer takes (name, parameter) pairs, as named_parameters() gives them: {usage}")
    if not isinstance(optimizer, (S.OptimizerSpec, S.BuiltinOptimizer)):
        raise TypeError(f"build_optimizer takes a spec's train.optimizer, got {type(optimizer).__name__}: {usage}")
    if isinstance(optimizer, S.OptimizerSpec):
        config = optimizer_config(optimizer)
        return O.NestedOptimizer(parameter_groups(named, optimizer.weight_decay), config)
    groups = parameter_groups(named, optimizer.weight_decay)
    fused = _fused_kernels_apply(named)
    if optimizer.kind == "adamw":
        return torch.optim.AdamW(groups, lr=optimizer.lr, betas=(optimizer.momentum, optimizer.beta2),
                                 eps=optimizer.eps, fused=fused)
    if optimizer.kind == "sgd":
        return O.DecoupledSGD(groups, lr=optimizer.lr, momentum=optimizer.momentum, fused=fused)
    config = builtin_config(optimizer)
    assert config is not None
    return O.NestedOptimizer(groups, config)

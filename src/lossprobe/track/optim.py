"""What the tracker reads from the user's optimiser: the learning rate, the stability threshold
that plays the role of 2/η for it, and the diagonal preconditioner of Adam, RMSprop and Adagrad.

Everything here only reads ``optimizer.param_groups`` and ``optimizer.state``; nothing is
written to the optimiser.

Stability thresholds (the largest curvature a quadratic model tolerates without diverging):

    SGD                  2/η                         against λ_max of H
    SGD + momentum μ     (2 + 2μ)/η  (heavy ball; dampening d: divided by 1 − d)
    Nesterov μ           (2 + 2μ)/((1 + 2μ)η)
    RMSprop              2/η, (2 + 2μ)/η with momentum μ    against λ_max of P^-1/2 H P^-1/2
    Adagrad              2/η (with its lr decay)              against λ_max of P^-1/2 H P^-1/2
    Adam, AdamW          (2 + 2β₁)/((1 − β₁)η) = 38/η at β₁ = 0.9 (Cohen et al. 2022)
                         against λ_max of P^-1/2 H P^-1/2, P = diag(√v̂ + ε)

The preconditioner P is the one the optimiser's last step divided by: Adam √(v/(1 − β₂ᵗ)) + ε
(the running maximum with amsgrad), RMSprop √(E[g²] − E[g]²·centered) + ε, Adagrad √Σg² + ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ADAPTIVE = ("Adam", "AdamW", "RMSprop", "Adagrad")


@dataclass
class Threshold:
    """lr: the first parameter group's learning rate; two_over_lr: 2/lr; threshold: the optimiser's
    analogue of 2/η; against: 'sharpness' (compare λ_max of H) or 'preconditioned' (compare λ_max of
    P^-1/2 H P^-1/2); kind: the optimiser's class name."""

    lr: float
    two_over_lr: float
    threshold: float
    against: str
    kind: str


def _kind(optimizer) -> str:
    """The class name of the optimiser or of the first torch optimiser it wraps (Lightning,
    accelerate and HF wrap the user's optimiser)."""
    seen = 0
    while optimizer is not None and seen < 4:
        name = type(optimizer).__name__
        if isinstance(optimizer, torch.optim.Optimizer) and type(optimizer).__module__.startswith("torch.optim"):
            return name
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return name if seen else "none"


def unwrap(optimizer):
    """The torch optimiser inside a wrapper (``.optimizer`` chains), or `optimizer` itself."""
    opt, seen = optimizer, 0
    while opt is not None and not (isinstance(opt, torch.optim.Optimizer)
                                   and type(opt).__module__.startswith("torch.optim")) and seen < 4:
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            return optimizer
        opt, seen = inner, seen + 1
    return opt if opt is not None else optimizer


def threshold(optimizer) -> Threshold:
    """The learning rate and stability threshold of `optimizer` now (NaN without an optimiser)."""
    if optimizer is None:
        nan = math.nan
        return Threshold(nan, nan, nan, "sharpness", "none")
    opt = unwrap(optimizer)
    g = opt.param_groups[0]
    lr = float(g["lr"])
    kind = _kind(optimizer)
    two = 2.0 / lr if lr > 0 else math.inf
    if kind in ("Adam", "AdamW"):
        b1 = float(g["betas"][0])
        return Threshold(lr, two, (2 + 2 * b1) / ((1 - b1) * lr) if lr > 0 else math.inf, "preconditioned", kind)
    if kind == "RMSprop":
        mu = float(g.get("momentum", 0.0))
        return Threshold(lr, two, (2 + 2 * mu) / lr if lr > 0 else math.inf, "preconditioned", kind)
    if kind == "Adagrad":
        st = _first_state(opt)
        t = float(st["step"]) if st is not None and "step" in st else 1.0
        clr = lr / (1 + (max(t, 1.0) - 1) * float(g.get("lr_decay", 0.0)))
        return Threshold(lr, two, 2.0 / clr if clr > 0 else math.inf, "preconditioned", kind)
    if kind == "SGD":
        mu = float(g.get("momentum", 0.0))
        damp = float(g.get("dampening", 0.0))
        if mu and g.get("nesterov"):
            thr = (2 + 2 * mu) / ((1 + 2 * mu) * lr)
        else:
            thr = (2 + 2 * mu) / (lr * (1 - damp if mu else 1.0))
        return Threshold(lr, two, thr if lr > 0 else math.inf, "sharpness", kind)
    return Threshold(lr, two, two, "sharpness", kind)


def _first_state(opt):
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                return st
    return None


@torch.no_grad()
def preconditioner(optimizer, model: nn.Module, space) -> torch.Tensor | None:
    """The diagonal P [P] (float64, the parameter vector's layout of `space`) that the optimiser's
    last step divided the gradient by; NaN where a parameter has no optimiser state. None when the
    optimiser is not adaptive (SGD) or has taken no step yet. Read only: nothing is written."""
    if optimizer is None:
        return None
    opt = unwrap(optimizer)
    kind = _kind(optimizer)
    if kind not in ADAPTIVE:
        return None
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    live = dict(model.named_parameters())
    out = torch.full((space.numel,), math.nan, dtype=torch.float64, device=space.device)
    found = False
    for e in space.entries:
        p = live.get(e.name)
        st = opt.state.get(p) if p is not None else None
        if not st:
            continue
        g = group_of[id(p)]
        eps = float(g["eps"])
        if kind in ("Adam", "AdamW"):
            v = st["max_exp_avg_sq"] if g.get("amsgrad") and "max_exp_avg_sq" in st else st["exp_avg_sq"]
            step = float(st["step"])
            if step < 1:
                continue
            bc2 = 1 - float(g["betas"][1]) ** step
            d = v.double().sqrt() / math.sqrt(bc2) + eps
        elif kind == "RMSprop":
            v = st["square_avg"].double()
            if g.get("centered") and "grad_avg" in st:
                v = v - st["grad_avg"].double() ** 2
            d = v.clamp_min(0).sqrt() + eps
        else:  # Adagrad
            d = st["sum"].double().sqrt() + eps
        out[e.slice] = d.reshape(-1).to(out.device)
        found = True
    return out if found else None


__all__ = ["ADAPTIVE", "Threshold", "preconditioner", "threshold", "unwrap"]

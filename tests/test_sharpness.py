"""Sharpness measures and the critical-point classifier."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lossprobe import Objective
from lossprobe.curvature import sharpness as S
from lossprobe.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


class Point(nn.Module):
    """A 'model' whose output is its own 2-D parameter, for toy objectives f(p)."""

    def __init__(self, p):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p, dtype=torch.float64))

    def forward(self, x):
        return self.p.expand(len(x), 2)


def _toy(fn, p=(0.0, 0.0)):
    x = torch.zeros(4, 1, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    return Objective(Point(list(p)), (x, y), loss=lambda out, y: fn(out[:, 0], out[:, 1]))


def _classifier(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(120, 2, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return Objective(m, (x, y))


def test_classifier_on_saddle_and_bowl():
    saddle = S.critical_point(_toy(lambda a, b: a**2 - b**2))
    assert saddle.kind == "saddle"
    assert math.isclose(saddle.lambda_max, 2.0, rel_tol=1e-9) and math.isclose(saddle.lambda_min, -2.0, rel_tol=1e-9)
    round_bowl = S.critical_point(_toy(lambda a, b: a**2 + b**2))
    assert round_bowl.kind == "minimum" and math.isclose(round_bowl.condition_number, 1.0, rel_tol=1e-9)
    bowl = S.critical_point(_toy(lambda a, b: a**2 + 3 * b**2))
    assert bowl.kind == "minimum"
    assert math.isclose(bowl.condition_number, 3.0, rel_tol=1e-9)
    cap = S.critical_point(_toy(lambda a, b: -(a**2) - b**2))
    assert cap.kind == "maximum"
    away = S.critical_point(_toy(lambda a, b: a**2 + b**2, p=(1.0, 0.0)))
    assert away.kind == "not critical" and math.isclose(away.grad_norm, 2.0)
    # tolerances: a tiny negative eigenvalue is 'degenerate' until the tolerance is tightened
    assert S.classify_critical_point(0.0, -1e-9, 1.0, eig_tol=1e-6).kind == "degenerate"
    assert S.classify_critical_point(0.0, -1e-9, 1.0, eig_tol=1e-12).kind == "saddle"


def test_noise_robustness_seeded_and_monotone_on_average():
    obj = _classifier()
    a = S.noise_robustness(obj, sigmas=[0.0, 0.05, 1.0], draws=4, seed=3)
    b = S.noise_robustness(obj, sigmas=[0.0, 0.05, 1.0], draws=4, seed=3)
    c = S.noise_robustness(obj, sigmas=[0.0, 0.05, 1.0], draws=4, seed=4)
    assert np.array_equal(a.loss, b.loss) and not np.array_equal(a.loss, c.loss)
    assert np.allclose(a.loss[0], a.clean_loss) and a.accuracy_std[0] == 0
    assert a.loss_mean[2] > a.loss_mean[1] >= a.clean_loss - 1e-9
    assert a.accuracy_mean[2] < a.clean_accuracy
    with pytest.raises(UserError):
        S.noise_robustness(obj, sigmas=[-1.0])


def test_filter_noise_scale_is_relative_to_filter_norm():
    obj = _classifier()
    N = S.filter_noise(obj, count=200, seed=0)
    e = obj.space["0.weight"]
    w = obj.theta0[e.slice].view(e.shape)
    n = N[:, e.slice].view(200, *e.shape)
    ratio = (n.norm(dim=2) / w.norm(dim=1)).pow(2).mean(0)  # E||n_f||² / ||w_f||² = 1
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.3)
    assert torch.count_nonzero(N[:, obj.space["0.bias"].slice]) == 0
    d = S.filter_normalized_direction(obj, seed=1)
    assert torch.allclose(d[e.slice].view(e.shape).norm(dim=1), w.norm(dim=1))


def test_keskar_sam_asam_on_quadratic():
    # L = a² + 4 b² at (1, 1): gradient (2, 8), Hessian diag(2, 8)
    obj = _toy(lambda a, b: a**2 + 4 * b**2, p=(1.0, 1.0))
    l0 = 5.0
    # box |δ| ≤ ε(|w|+1) = 2ε: the maximum is at δ = (2ε, 2ε)
    eps = 0.01
    k = S.keskar_sharpness(obj, epsilon=eps, steps=20)
    best = (1 + 2 * eps) ** 2 + 4 * (1 + 2 * eps) ** 2
    assert math.isclose(k.perturbed_loss, best, rel_tol=1e-9)
    assert math.isclose(k.sharpness, 100 * (best - l0) / (1 + l0), rel_tol=1e-9)
    rho = 0.1
    sam = S.sam_sharpness(obj, rho=rho)
    g = torch.tensor([2.0, 8.0], dtype=torch.float64)
    d = rho * g / g.norm()
    assert math.isclose(sam.perturbed_loss, float((1 + d[0]) ** 2 + 4 * (1 + d[1]) ** 2), rel_tol=1e-12)
    assert math.isclose(sam.delta_norm, rho, rel_tol=1e-9)
    multi = S.sam_sharpness(obj, rho=rho, steps=10)
    assert multi.rise >= sam.rise - 1e-12 and multi.delta_norm <= rho * (1 + 1e-9)
    asam = S.sam_sharpness(obj, rho=rho, adaptive=True)
    assert asam.measure == "asam" and asam.rise > 0


def test_asam_is_scale_invariant_where_sam_is_not():
    # ReLU network: scaling layer 1 by c and layer 2 by 1/c leaves the function unchanged
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)).double()
    x = torch.randn(50, 2, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    m2 = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)).double()
    with torch.no_grad():
        m2[0].weight.copy_(m[0].weight * 4)
        m2[0].bias.copy_(m[0].bias * 4)
        m2[2].weight.copy_(m[2].weight / 4)
    o1, o2 = Objective(m, (x, y)), Objective(m2, (x, y))
    a1 = S.sam_sharpness(o1, rho=0.2, adaptive=True, eta=0.0)
    a2 = S.sam_sharpness(o2, rho=0.2, adaptive=True, eta=0.0)
    s1, s2 = S.sam_sharpness(o1, rho=0.2), S.sam_sharpness(o2, rho=0.2)
    assert math.isclose(a1.rise, a2.rise, rel_tol=1e-6)
    assert not math.isclose(s1.rise, s2.rise, rel_tol=1e-2)


def test_pac_bayes_sigma_bisection():
    obj = _classifier()
    r = S.pac_bayes_sigma(obj, bound=0.05, criterion="loss", draws=3, seed=0)
    rises = dict(r.evaluated)
    assert rises[r.sigma] <= 0.05
    above = [s for s, v in r.evaluated if s > r.sigma]
    assert above and all(rises[s] > 0.05 for s in above if s <= min(above))
    assert math.isclose(r.measure, 1 / r.sigma**2)
    r2 = S.pac_bayes_sigma(obj, bound=0.05, criterion="loss", draws=3, seed=0)
    assert r2.sigma == r.sigma
    mag = S.pac_bayes_sigma(obj, bound=0.1, criterion="error", noise="magnitude", draws=3)
    assert mag.sigma > 0
    with pytest.raises(UserError):
        S.pac_bayes_sigma(obj, criterion="margin")

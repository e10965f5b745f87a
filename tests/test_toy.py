"""Analytic landscapes: known minima, critical points, optimisers."""

import math

import numpy as np
import pytest
import torch

from lossprobe.trajectories import toy
from lossprobe.errors import UserError

WITH_MINIMA = [name for name, t in toy.TOYS.items() if t.minima]


@pytest.mark.parametrize("name", WITH_MINIMA)
def test_known_minima_have_zero_gradient_and_positive_definite_hessian(name):
    t = toy.TOYS[name]
    for m in t.minima:
        g = t.grad(m)
        assert float(g.norm()) < 1e-9, (name, m, g)
        ev = torch.linalg.eigvalsh(t.hessian(m))
        assert float(ev.min()) > 1e-3, (name, m, ev)
    assert t.value(t.minima[0]) == pytest.approx(t.min_value, abs=1e-12)
    # the first listed minimum is a global one: nothing on a fine grid is lower
    _, _, Z = t.grid(151)
    assert Z.min() >= t.min_value - 1e-9


def test_minimum_is_not_a_critical_point_of_a_shifted_point():
    t = toy.TOYS["rosenbrock"]
    assert float(t.grad((1.0, 1.01)).norm()) > 1.0  # the gradient test can fail


@pytest.mark.parametrize("name", ["saddle", "monkey"])
def test_saddles_are_classified_as_saddles(name):
    c = toy.classify(toy.TOYS[name], (0.0, 0.0))
    assert c.kind == "saddle"
    assert c.degenerate is (name == "monkey")  # the monkey saddle's Hessian is zero


def test_classify_minimum_and_maximum():
    him = toy.TOYS["himmelblau"]
    assert toy.classify(him, (3.0, 2.0)).kind == "minimum"
    assert toy.classify(him, (-0.2708445906673476, -0.9230385564799815)).kind == "maximum"
    # a degenerate minimum: x⁴ + y⁴ has a zero Hessian at 0 and is classified on the ring
    c = toy.classify(lambda p: p[..., 0] ** 4 + p[..., 1] ** 4, (0.0, 0.0))
    assert c.kind == "minimum" and c.degenerate


def test_find_critical_points_himmelblau():
    cps = toy.find_critical_points(toy.TOYS["himmelblau"], n_starts=11)
    kinds = [c.kind for c in cps]
    assert kinds.count("minimum") == 4 and kinds.count("saddle") == 4 and kinds.count("maximum") == 1
    for c in cps:
        assert c.grad_norm < 1e-6
    assert cps[0].value == pytest.approx(0.0, abs=1e-10)


def test_find_critical_points_saddle_function():
    cps = toy.find_critical_points(toy.TOYS["saddle"], n_starts=5)
    assert [c.kind for c in cps] == ["saddle"]
    assert np.allclose(cps[0].point, (0.0, 0.0), atol=1e-8)


@pytest.mark.parametrize("opt", toy.GRADIENT_OPTIMIZERS)
def test_optimizers_converge_on_a_convex_quadratic(opt):
    t = toy.TOYS["quadratic"]
    r = toy.run_optimizer(t, opt, steps=400, noise=0.05)
    tol = 0.05 if opt == "sgd" else 1e-4  # SGD's noise keeps it jittering near the minimum
    assert r.final_value < tol * 10 and t.distance_to_minimum(r.points[-1]) < math.sqrt(tol)
    assert r.values[0] > 1.0 and r.steps_to_threshold(t.threshold) is not None
    assert r.points.shape == (401, 2) and not r.diverged


def test_gradient_free_baselines_find_the_quadratic_minimum():
    t = toy.TOYS["quadratic"]
    sa = toy.run_optimizer(t, "annealing", steps=400, seed=1)
    assert sa.final_value < 0.05 and sa.evaluations == 401
    gs = toy.run_optimizer(t, "grid", steps=2000, grid_points=11)
    assert gs.final_value < 1e-3 and np.all(np.diff(gs.values) <= 0)


def test_sgd_noise_is_seeded_and_matters():
    a = toy.run_optimizer("sincos", "sgd", steps=50, seed=3)
    b = toy.run_optimizer("sincos", "sgd", steps=50, seed=3)
    c = toy.run_optimizer("sincos", "gd", steps=50)
    assert np.array_equal(a.points, b.points)
    assert not np.allclose(a.points, c.points)


def test_uses_torch_optim_adam_exactly():
    # one Adam step from the start equals torch.optim.Adam's own step
    t = toy.TOYS["rosenbrock"]
    r = toy.run_optimizer(t, "adam", steps=1, lr=0.1)
    p = torch.tensor(t.start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1)
    t.fn(p).backward()
    opt.step()
    assert np.allclose(r.points[1], p.detach().numpy())


def test_saddle_run_stops_when_leaving_the_domain():
    r = toy.run_optimizer("saddle", "gd", steps=500)
    assert r.left_domain and len(r.points) < 501 and not r.diverged


def test_bad_names():
    with pytest.raises(UserError, match="unknown toy function 'nope'"):
        toy.get_toy("toy:nope")
    with pytest.raises(UserError, match="unknown optimizer"):
        toy.run_optimizer("quadratic", "lbfgs")
    assert toy.steps_to_threshold([3, 2, 1], None) is None
    assert toy.steps_to_threshold([3, 2, 1], 1.5, steps=[0, 10, 20]) == 20
    assert toy.steps_to_threshold([3, 2, 1], 0.5) is None

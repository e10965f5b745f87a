"""Training monitors: norms per step and the plateau detector."""

import numpy as np
import pytest
import torch

from lossprobe.errors import UserError
from lossprobe.models import mlp
from lossprobe.trajectories.monitors import TrainingMonitor, detect_plateaus, grad_norm, rolling_variance, weight_norm


def test_norms_match_flat_vectors():
    m = mlp([3, 4, 2], seed=0)
    x = torch.randn(5, 3)
    m(x).pow(2).sum().backward()
    flat_g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    flat_w = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    assert grad_norm(m) == pytest.approx(float(flat_g.norm()), rel=1e-6)
    assert weight_norm(m) == pytest.approx(float(flat_w.norm()), rel=1e-6)
    assert grad_norm(mlp([3, 2], seed=0)) == 0.0  # no gradients yet


def test_plateau_detector_finds_the_flat_stretch():
    # falls, stalls from step 100 to 199, falls again
    loss = np.concatenate([np.linspace(2, 1, 100), np.full(100, 1.0), np.linspace(1, 0.2, 100)])
    loss = loss + 1e-4 * np.random.default_rng(0).standard_normal(300)
    ps = detect_plateaus(loss, window=20, threshold=1e-5)
    assert len(ps) == 1
    assert abs(ps[0].start - 100) <= 3 and abs(ps[0].end - 199) <= 3
    assert ps[0].mean_loss == pytest.approx(1.0, abs=1e-3)
    assert detect_plateaus(np.linspace(2, 0, 300), window=20, threshold=1e-5) == []


def test_rolling_variance_and_bad_input():
    v = rolling_variance([1, 1, 1, 3], 2)
    assert np.allclose(v, [0, 0, 1])
    with pytest.raises(UserError):
        rolling_variance([1, 2], 1)
    with pytest.raises(UserError):
        detect_plateaus([1, 2, 3], window=2, threshold=-1)


def test_monitor_in_a_plain_training_loop_with_a_hook():
    torch.manual_seed(0)
    m = mlp([2, 8, 1], seed=0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    mon = TrainingMonitor(m, window=10, threshold=1e-5).attach(opt)
    x, y = torch.randn(64, 2), torch.randn(64, 1)
    for _ in range(60):
        loss = (m(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log_loss(loss)
    mon.detach()
    assert len(mon) == 60 and len(mon.loss) == 60
    assert mon.grad_norm[0] > mon.grad_norm[-1] > 0
    s = mon.summary()
    assert s["steps"] == 60 and s["weight_norm_initial"] > 0
    # full-batch GD on noise regression falls for a few steps, then stalls: the detector says where
    assert s["plateaus"] and 3 <= s["first_stall_step"] <= 20 and s["plateaus"][-1]["end"] == 59
    assert mon.plateaus(threshold=1e-12) == []
    opt.step()  # detached: no more records
    assert len(mon) == 60

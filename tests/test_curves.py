"""Curves between fixed endpoints: exact endpoints, start on the line, training lowers the barrier."""

import numpy as np
import pytest
import torch

from conftest import tiny_cnn, tiny_mlp
from lossprobe.connectivity.curves import Curve, CurveTrainConfig, curve_weights, evaluate_curve, train_curve
from lossprobe.errors import UserError
from lossprobe.core.space import ParamSpace
from lossprobe.training.loop import evaluate_model


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("bends", [1, 3])
def test_endpoints_exact_and_start_on_line(kind, bends):
    a, b = tiny_mlp(0, (2, 8, 2)), tiny_mlp(1, (2, 8, 2))
    c = Curve(a, b, bends=bends, kind=kind)
    sp = ParamSpace(a)
    ta, tb = sp.flatten(a), sp.flatten(b)
    assert torch.equal(c.point(0.0), ta) and torch.equal(c.point(1.0), tb)
    for t in (0.2, 0.5, 0.9):  # bends start on the straight line, so the curve is the line
        assert torch.allclose(c.point(t), (1 - t) * ta + t * tb, atol=1e-6)
    w = curve_weights(np.linspace(0, 1, 7), bends, kind)
    assert torch.allclose(w.sum(1), torch.ones(7, dtype=torch.float64))


def test_training_keeps_endpoints_and_lowers_midpoint_loss(spiral):
    from lossprobe.training.loop import TrainConfig, fit

    ms = []
    for s in (0, 1):
        m = tiny_mlp(s, (2, 16, 16, 2))
        fit(m, spiral, None, TrainConfig(epochs=10, lr=1e-2))
        ms.append(m)
    c = Curve(ms[0], ms[1], bends=1)
    before = evaluate_curve(c, spiral, ts=[0, 0.5, 1])
    train_curve(c, spiral, CurveTrainConfig(epochs=8, lr=1e-2, batch_size=50))
    after = evaluate_curve(c, spiral, ts=[0, 0.5, 1])
    # the endpoints stay fixed: the curve's losses there are the models' own
    assert after.loss["data"][0] == pytest.approx(evaluate_model(ms[0], spiral)[0], abs=1e-6)
    assert after.loss["data"][2] == pytest.approx(evaluate_model(ms[1], spiral)[0], abs=1e-6)
    assert after.loss["data"][1] < before.loss["data"][1]
    assert after.barriers()["loss_barrier"]["data"] < before.barriers()["loss_barrier"]["data"]


def test_resume_gives_the_same_bends(spiral, tmp_path, monkeypatch):
    import lossprobe.connectivity.curves as curves

    a, b = tiny_mlp(0), tiny_mlp(1)
    cfg2 = CurveTrainConfig(epochs=2, lr=1e-2, batch_size=50, seed=3)
    c1 = Curve(a, b)
    train_curve(c1, spiral, cfg2)
    c2 = Curve(a, b)
    train_curve(c2, spiral, CurveTrainConfig(epochs=1, lr=1e-2, batch_size=50, seed=3), checkpoint_dir=tmp_path)
    # a different config in the same directory is refused
    with pytest.raises(UserError):
        train_curve(Curve(a, b), spiral, cfg2, checkpoint_dir=tmp_path)

    # every epoch's steps go through run_epoch: count them, or stop the run in epoch 2
    real, trained = curves.run_epoch, []

    def counted(opt, batches, batch_terms, *, epoch, **kw):
        if epoch == stop_at:
            raise KeyboardInterrupt
        trained.append(epoch)
        return real(opt, batches, batch_terms, epoch=epoch, **kw)

    monkeypatch.setattr(curves, "run_epoch", counted)
    run = tmp_path / "run"
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        train_curve(Curve(a, b), spiral, cfg2, checkpoint_dir=run)
    assert trained == [1]
    stop_at, trained = None, []
    c3 = Curve(a, b)
    h = train_curve(c3, spiral, cfg2, checkpoint_dir=run)  # resumes after epoch 1
    assert trained == [2] and h.epoch == [1, 2]
    c4 = Curve(a, b)
    h4 = train_curve(c4, spiral, cfg2, checkpoint_dir=run)  # already finished: loads, trains nothing
    assert trained == [2] and h4.epoch == [1, 2]
    assert torch.equal(c3.bends, c1.bends) and torch.equal(c4.bends, c1.bends)


def test_batchnorm_curve_reestimates_statistics():
    a, b = tiny_cnn(0), tiny_cnn(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 12, 12, generator=g), torch.randint(0, 10, (96,), generator=g)
    c = Curve(a, b)
    with pytest.raises(UserError, match="bn_data"):
        evaluate_curve(c, (x, y), ts=[0, 1])
    ev = evaluate_curve(c, (x, y), ts=[0, 0.5, 1], bn_data=(x, y), bn_batches=2)
    assert np.isfinite(ev.loss["data"]).all()
    train_curve(c, (x, y), CurveTrainConfig(epochs=1, batch_size=32))
    assert not torch.equal(c.point(0.5), 0.5 * (c.theta_a + c.theta_b))

import numpy as np
import pytest
import torch

from conftest import tiny_cnn, tiny_mlp
from lossprobe import UserError, interpolate
from lossprobe.data import Split
from lossprobe.connectivity.paths import default_alphas, error_barrier, loss_barrier
from lossprobe.training.loop import evaluate_model


def _data(n=200, d=2, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g))


def test_default_grid_has_exact_endpoints():
    a = default_alphas()
    assert len(a) == 41 and a[0] == -0.5 and a[-1] == 1.5
    assert (a == 0.0).sum() == 1 and (a == 1.0).sum() == 1


def test_endpoints_equal_each_models_own_loss_exactly():
    data = _data(n=300, d=10, classes=3)
    a, b = tiny_mlp(0, (10, 32, 3)), tiny_mlp(1, (10, 32, 3))
    it = interpolate(a, b, {"test": data}, batch_size=128)
    la, aa = evaluate_model(a, data, batch_size=128)
    lb, ab = evaluate_model(b, data, batch_size=128)
    assert it.loss["test"][it.alphas == 0][0] == la
    assert it.loss["test"][it.alphas == 1][0] == lb
    assert it.accuracy["test"][it.alphas == 0][0] == aa
    assert it.accuracy["test"][it.alphas == 1][0] == ab


def test_barrier_of_a_model_with_itself_is_zero():
    data = _data()
    a = tiny_mlp(0)
    it = interpolate(a, a, data)
    assert it.loss_barrier("data") == pytest.approx(0.0, abs=1e-6)
    assert it.error_barrier("data") == pytest.approx(0.0, abs=1e-12)


def test_barrier_definitions():
    alphas = np.array([0, 0.5, 1.0])
    assert loss_barrier(alphas, [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert error_barrier(alphas, [0.1, 0.5, 0.2]) == pytest.approx(0.35)
    # convex path: no barrier
    assert loss_barrier(alphas, [1.0, 0.5, 1.0]) <= 0
    with pytest.raises(UserError, match="endpoints"):
        loss_barrier(np.array([0.1, 0.5]), [1, 2])


@pytest.mark.parametrize("bn", ["interpolate", "recompute"])
def test_batchnorm_modes(bn):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 12, 12)
    y = torch.randint(0, 10, (64,))
    data = Split(x, y)
    a, b = tiny_cnn(0), tiny_cnn(1)
    for m in (a, b):  # give the running statistics something to hold
        m.train()
        with torch.no_grad():
            m(x)
        m.eval()
    it = interpolate(a, b, {"d": data}, alphas=[0.0, 0.5, 1.0], bn=bn, bn_data=data, bn_batches=4)
    assert it.bn == bn
    assert np.isfinite(it.loss["d"]).all()
    if bn == "interpolate":  # endpoints are the models themselves, statistics included
        assert it.loss["d"][0] == pytest.approx(evaluate_model(a, data)[0], rel=1e-6)
        assert it.loss["d"][2] == pytest.approx(evaluate_model(b, data)[0], rel=1e-6)
    else:  # recomputed statistics differ from the stored ones, so the endpoint losses move
        assert it.loss["d"][0] != pytest.approx(evaluate_model(a, data)[0], rel=1e-6)
    # the models themselves are untouched
    assert torch.isfinite(next(a.parameters())).all()


def test_recompute_needs_data():
    a, b = tiny_cnn(0), tiny_cnn(1)
    with pytest.raises(UserError, match="bn_data"):
        interpolate(a, b, Split(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))), bn="recompute")


def test_mismatched_architectures_name_first_parameter():
    with pytest.raises(UserError, match="'1.weight'"):
        interpolate(tiny_mlp(0, (2, 8, 2)), tiny_mlp(1, (2, 6, 2)), _data())

"""REPAIR: identical endpoints change nothing; statistics are restored; folding is exact."""

import torch

from conftest import tiny_cnn, tiny_mlp
from lossprobe.connectivity.repair import Repairer, interpolate_repaired, layer_statistics, repair


def _max_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def _data(shape, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, 2, (n,), generator=g)


def test_identical_endpoints_change_nothing_without_bn():
    m = tiny_mlp(0, (6, 16, 16, 2))
    data = _data((6,))
    for alpha in (0.0, 0.3, 0.5, 1.0):
        assert _max_diff(m, repair(m, m, data, alpha=alpha)) < 1e-5


def test_identical_endpoints_change_nothing_with_bn():
    m = tiny_cnn(0, batchnorm=True)
    data = _data((1, 12, 12), n=128)
    reset = Repairer(m, m, data).at(0.0)  # A with BatchNorm statistics measured on `data`
    again = Repairer(reset, reset, data).at(0.5)
    assert _max_diff(reset, again) < 1e-5
    x = data[0][:16]
    with torch.no_grad():
        assert torch.allclose(reset(x), again(x), atol=1e-5)


def test_repair_restores_interpolated_statistics():
    a, b = tiny_mlp(0, (6, 32, 32, 2)), tiny_mlp(1, (6, 32, 32, 2))
    data = _data((6,), n=512)
    rep = Repairer(a, b, data)
    assert rep.layers == ["1", "3"]
    mid_plain = rep.interpolated(0.5)
    mid = rep.at(0.5)
    sa, sb = rep.stats_a, rep.stats_b
    plain = layer_statistics(mid_plain, rep.layers, data)
    fixed = layer_statistics(mid, rep.layers, data)
    for name in rep.layers:
        target_sd = 0.5 * (sa[name][1] + 1e-5).sqrt() + 0.5 * (sb[name][1] + 1e-5).sqrt()
        target_mu = 0.5 * (sa[name][0] + sb[name][0])
        # σ_t / sqrt(var + eps) rescales var exactly, so sqrt(var' + eps) matches σ_t up to the eps shift
        assert torch.allclose((fixed[name][1] + 1e-5).sqrt(), target_sd, rtol=1e-3, atol=1e-4)
        assert torch.allclose(fixed[name][0], target_mu, atol=1e-4)
    # the plain midpoint had collapsed variance in at least the first layer; REPAIR changed it
    assert (plain["1"][1] < fixed["1"][1]).float().mean() > 0.5
    # same architecture and state-dict keys: REPAIR is folded into plain weights
    assert list(mid.state_dict()) == list(a.state_dict())


def test_interpolate_repaired_reproduces_endpoints():
    a, b = tiny_mlp(0, (6, 16, 16, 2)), tiny_mlp(1, (6, 16, 16, 2))
    data = _data((6,))
    it = interpolate_repaired(a, b, {"d": data}, data, alphas=[0, 0.5, 1])
    from lossprobe.training.loop import evaluate_model

    la, lb = evaluate_model(a, data)[0], evaluate_model(b, data)[0]
    assert abs(it.loss["d"][0] - la) < 1e-4 and abs(it.loss["d"][2] - lb) < 1e-4

import numpy as np
import pytest
import torch

from conftest import tiny_cnn, tiny_mlp
from lossprobe import ParamSpace, UserError
from lossprobe.core import directions as D


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("make", [lambda: tiny_mlp(widths=(6, 5, 4, 3)), lambda: tiny_cnn(batchnorm=True)])
def test_filter_normalisation_matches_direct_per_filter_computation(make):
    model = make()
    d = D.random_direction(model, seed=3, norm="filter")
    # direct computation: same Gaussian draw, each filter (index 0 of each weight) rescaled
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(ParamSpace(model).numel, generator=g, dtype=torch.float64)
    offset = 0
    for name, p in model.named_parameters():
        seg = raw[offset:offset + p.numel()].view(p.shape)
        got = d.vector[offset:offset + p.numel()].view(p.shape).double()
        offset += p.numel()
        if p.ndim < 2:  # biases and BatchNorm affine parameters are ignored by default
            assert torch.count_nonzero(got) == 0, name
            continue
        for i in range(p.shape[0]):
            want = seg[i] * p[i].detach().double().norm() / seg[i].norm()
            torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-7)
            assert abs(float(got[i].norm()) - float(p[i].detach().norm())) < 1e-5 * float(p[i].detach().norm()) + 1e-7
    assert d.meta == {"kind": "random", "seed": 3, "index": 0, "norm": "filter", "ignore": ["bias", "norm"],
                      "include_buffers": False}


def test_layer_model_and_no_normalisation():
    model = tiny_mlp(widths=(6, 5, 3))
    sp = ParamSpace(model)
    theta = sp.flatten(model).double()
    lay = D.random_direction(model, seed=1, norm="layer", ignore=()).vector.double()
    for e in sp.entries:
        assert abs(float(lay[e.slice].norm() - theta[e.slice].norm())) < 1e-5
    mod = D.random_direction(model, seed=1, norm="model", ignore=()).vector.double()
    assert abs(float(mod.norm() - theta.norm())) < 1e-5
    raw = D.random_direction(model, seed=1, norm=None, ignore=()).vector.double()
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(raw, torch.randn(sp.numel, generator=g, dtype=torch.float64).float().double())


def test_buffers_move_only_when_asked():
    model = tiny_cnn(batchnorm=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(2.0)
    d = D.random_direction(model, seed=0, include_buffers=True)
    sp = ParamSpace(model, include_buffers=True)
    assert len(d) == sp.numel
    buf = sp.mask(["buffer"])
    assert torch.count_nonzero(d.vector[buf]) > 0
    d2 = D.random_direction(model, seed=0)
    assert len(d2) == ParamSpace(model).numel


def test_seeded_plane_and_orthogonality():
    model = tiny_mlp(widths=(10, 8, 3))
    a1, a2 = D.random_plane(model, seed=5)
    b1, b2 = D.random_plane(model, seed=5)
    assert torch.equal(a1.vector, b1.vector) and torch.equal(a2.vector, b2.vector)
    assert torch.equal(a1.vector, D.random_direction(model, seed=5).vector)
    assert not torch.equal(a1.vector, a2.vector)
    o1, o2 = D.random_plane(model, seed=5, orthogonal=True)
    assert abs(float(o1.vector.double() @ o2.vector.double())) < 1e-6 * o1.norm * o2.norm
    assert abs(o2.norm - a2.norm) < 1e-4 * a2.norm
    assert o2.meta["orthogonal"] is True


def test_between_and_plane_through():
    a, b, c = (tiny_mlp(seed=s, widths=(4, 6, 2)) for s in (0, 1, 2))
    sp = ParamSpace(a)
    ta, tb, tc = (sp.flatten(m) for m in (a, b, c))
    d = D.between(a, b)
    torch.testing.assert_close(ta + d.vector, tb)
    d1, d2 = D.plane_through(a, b, c)
    x2, y2 = d1.meta["points"]["theta2"]
    assert y2 == 1.0
    assert abs(float(d1.vector.double() @ d2.vector.double())) < 1e-6 * d1.norm * d2.norm
    torch.testing.assert_close(ta + x2 * d1.vector + d2.vector, tc, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="one line|line"):
        D.plane_through(ta, tb, ta + 2 * (tb - ta))


def test_pca_recovers_known_axes_and_streams_the_same():
    g = torch.Generator().manual_seed(0)
    P, T = 500, 30
    e1, e2 = torch.zeros(P), torch.zeros(P)
    e1[3], e2[10] = 1.0, 1.0
    t = torch.linspace(0, 1, T)
    traj = 5 * t[:, None] * e1 + torch.sin(6 * t)[:, None] * e2 + 0.001 * torch.randn(T, P, generator=g)
    dirs, evr = D.pca_directions(traj, k=2, center="mean")
    for d in dirs:  # both directions lie in span{e1, e2}, the first mostly along e1 (the larger variance)
        assert float(d.vector[3]) ** 2 + float(d.vector[10]) ** 2 > 0.99
    assert abs(float(dirs[0].vector[3])) > 0.9
    # ratios match an SVD of the centred matrix
    Xc = traj.double() - traj.double().mean(0)
    s = torch.linalg.svdvals(Xc) ** 2
    np.testing.assert_allclose(evr, (s[:2] / s.sum()).numpy(), rtol=1e-6)
    # sign: the first point has a negative coordinate
    assert float((traj[0] - traj.mean(0)) @ dirs[0].vector) < 0
    # an iterable (spilled to disk, small blocks) gives the same directions
    dirs_it, evr_it = D.pca_directions(iter(list(traj)), k=2, center="mean", block=64)
    np.testing.assert_allclose(evr_it, evr, rtol=1e-5)
    for a, b in zip(dirs, dirs_it):
        torch.testing.assert_close(a.vector, b.vector, atol=1e-5, rtol=1e-4)
    dirs_f, _ = D.pca_directions(traj, k=1, center="final")
    assert float((traj[0] - traj[-1]) @ dirs_f[0].vector) < 0


def test_bad_options_are_one_line_errors():
    model = tiny_mlp()
    for kw, pat in [({"norm": "filters"}, "norm must be"), ({"ignore": ("biases",)}, "unknown kind")]:
        with pytest.raises(UserError, match=pat) as e:
            D.random_direction(model, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="reference"):
        D.random_direction(ParamSpace(model), norm="filter")
    with pytest.raises(UserError, match="at least 2"):
        D.pca_directions(torch.zeros(1, 5))

"""GGN, Fisher, empirical Fisher and K-FAC against their dense definitions (float64, tiny models)."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossprobe import Objective
from lossprobe.curvature import hessian
from lossprobe.curvature import operators as O
from lossprobe.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed=0, n=16, d_in=3, hidden=5, out=3, classes=True):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, out)).double().eval()
    x = torch.randn(n, d_in, dtype=torch.float64)
    y = torch.randint(0, out, (n,)) if classes else torch.randn(n, out, dtype=torch.float64)
    return m, x, y


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _per_sample_grads(obj, x, labels, loss):
    """∇_θ loss(f(x_i), labels_i) for each i: [N, P]."""
    out = []
    for i in range(len(x)):
        th = obj.theta0.clone().requires_grad_(True)
        z = obj.forward(th, (x[i:i + 1], labels[i:i + 1]))
        out.append(torch.autograd.grad(loss(z, labels[i:i + 1]), th)[0])
    return torch.stack(out)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce"])
def test_ggn_equals_dense_definition(loss):
    m, x, y = _mlp(classes=loss == "cross_entropy")
    if loss == "bce":
        y = (torch.rand(16, 3, dtype=torch.float64) > 0.5).double()
    obj = Objective(m, (x, y), loss=loss, batch_size=5)  # 4 batches: no cached graph
    G = O.dense(O.GGNOperator(obj))
    # reference: J^T H_out J / N with H_out of the loss sum by autograd (not the closed form)
    with obj.mode():
        th = obj.theta0.clone().requires_grad_(True)
        J = torch.autograd.functional.jacobian(lambda t: obj.forward(t, (x, y)), th)
        J = J.reshape(-1, th.numel())
        z0 = obj.forward(obj.theta0, (x, y)).detach()

        def total(z):
            return obj.criterion.terms(z.reshape(z0.shape), (x, y)).loss

        Hout = torch.autograd.functional.hessian(total, z0.reshape(-1))
    ref = J.T @ Hout @ J / len(x)
    assert _rel(G, ref) < 1e-6
    assert torch.allclose(G, G.T, atol=1e-12) and torch.linalg.eigvalsh(G).min() > -1e-10


def test_fisher_exact_equals_ggn_for_cross_entropy_and_dense_expectation():
    m, x, y = _mlp(seed=1)
    obj = Objective(m, (x, y), batch_size=7)
    Fx = O.dense(O.FisherOperator(obj, mc_samples=None))
    G = O.dense(O.GGNOperator(obj))
    # dense expectation: Σ_i Σ_c p_ic g_ic g_icᵀ / N with per-sample, per-class gradients
    with torch.no_grad(), obj.mode():
        p = torch.softmax(m(x), -1)
    ref = torch.zeros_like(G)
    for c in range(3):
        gc = _per_sample_grads(obj, x, torch.full((16,), c), lambda z, t: F.cross_entropy(z, t))
        ref += (gc * p[:, c:c + 1]).T @ gc
    ref /= 16
    assert _rel(Fx, ref) < 1e-6
    assert _rel(Fx, G) < 1e-6


def test_fisher_sampled_equals_dense_with_its_labels_and_is_reproducible():
    m, x, y = _mlp(seed=2)
    obj = Objective(m, (x, y), batch_size=16)
    op = O.FisherOperator(obj, mc_samples=3, seed=5)
    Fs = O.dense(op)
    labels = op._labels[0]  # [3, 16], drawn once
    ref = torch.zeros_like(Fs)
    for s in range(3):
        g = _per_sample_grads(obj, x, labels[s], lambda z, t: F.cross_entropy(z, t))
        ref += g.T @ g / 3
    assert _rel(Fs, ref / 16) < 1e-6
    again = O.dense(O.FisherOperator(obj, mc_samples=3, seed=5))
    other = O.dense(O.FisherOperator(obj, mc_samples=3, seed=6))
    assert torch.equal(Fs, again) and not torch.allclose(Fs, other)
    # many samples approach the exact Fisher
    many = O.dense(O.FisherOperator(obj, mc_samples=4000, seed=0))
    assert _rel(many, O.dense(O.GGNOperator(obj))) < 0.1


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_exact_fisher_equals_ggn_for_mse_and_bce(loss):
    m, x, y = _mlp(seed=3, classes=False)
    if loss == "bce":
        y = (y > 0).double()
    obj = Objective(m, (x, y), loss=loss)
    assert _rel(O.dense(O.FisherOperator(obj, mc_samples=None)), O.dense(O.GGNOperator(obj))) < 1e-10
    # the sampled Fisher (Gaussian / Bernoulli labels with the likelihood weights) approaches it
    many = O.dense(O.FisherOperator(obj, mc_samples=3000, seed=1))
    assert _rel(many, O.dense(O.GGNOperator(obj))) < 0.1


def test_empirical_fisher_equals_per_sample_gradients():
    m, x, y = _mlp(seed=4)
    obj = Objective(m, (x, y), batch_size=6)
    E = O.dense(O.EmpiricalFisherOperator(obj))
    g = _per_sample_grads(obj, x, y, lambda z, t: F.cross_entropy(z, t))
    assert _rel(E, g.T @ g / 16) < 1e-6


def test_ggn_equals_hessian_at_a_zero_residual_minimum():
    # a tanh network fitted exactly (targets are its own outputs): the residual term of the
    # Hessian vanishes, so H = GGN; also linear least squares (a convex problem) anywhere
    m, x, _ = _mlp(seed=5, classes=False)
    with torch.no_grad():
        y = m(x)
    obj = Objective(m, (x, y), loss="mse")
    H = O.dense(hessian.HessianOperator(obj))
    assert _rel(O.dense(O.GGNOperator(obj)), H) < 1e-9
    torch.manual_seed(0)
    lin = nn.Linear(4, 2).double()
    xl, yl = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    obj = Objective(lin, (xl, yl), loss="mse")
    assert _rel(O.dense(O.GGNOperator(obj)), O.dense(hessian.HessianOperator(obj))) < 1e-9


def test_ggn_of_a_user_loss_and_parameter_selection():
    m, x, y = _mlp(seed=6, classes=False)

    def huber(out, target):
        return F.smooth_l1_loss(out, target, reduction="none").mean(1)

    obj = Objective(m, (x, y), loss=huber, batch_size=8)
    G = O.dense(O.GGNOperator(obj))
    with obj.mode():
        th = obj.theta0.clone().requires_grad_(True)
        J = torch.autograd.functional.jacobian(lambda t: obj.forward(t, (x, y)), th).reshape(-1, th.numel())
        z0 = m(x).detach()
        Hout = torch.autograd.functional.hessian(lambda z: huber(z.reshape(z0.shape), y).sum(), z0.reshape(-1))
    assert _rel(G, J.T @ Hout @ J / 16) < 1e-6
    # a parameter selection is the principal sub-block
    sub = O.GGNOperator(obj, params=["2"])
    idx = torch.nonzero(sub.mask).squeeze(1)
    assert _rel(O.dense(sub), G[idx][:, idx]) < 1e-10
    with pytest.raises(UserError, match="likelihood"):
        O.FisherOperator(obj)


def test_kfac_equals_ggn_blocks_for_one_sample_and_for_a_whole_image_conv():
    m, x, y = _mlp(seed=7, n=1)
    obj = Objective(m, (x, y))
    K = O.dense(O.KFACOperator(obj, kfac_type="exact"))
    G = O.dense(O.GGNOperator(obj))
    for name, sl in O.GGNOperator(obj).blocks:  # per layer: weight and bias together
        assert _rel(K[sl, sl], G[sl, sl]) < 1e-10
    first = O.GGNOperator(obj).blocks[0][1]
    assert float(K[first, first.stop:].abs().max()) == 0.0  # no coupling between the two layers

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3, 4)).double().eval()
    xc, yc = torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.tensor([1])
    obj = Objective(conv, (xc, yc))
    K, G = O.dense(O.KFACOperator(obj, kfac_type="exact")), O.dense(O.GGNOperator(obj))
    for _, sl in O.GGNOperator(obj).blocks:
        assert _rel(K[sl, sl], G[sl, sl]) < 1e-10


def test_kfac_many_samples_mc_and_left_out_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).double().eval()
    x, y = torch.randn(20, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    obj = Objective(model, (x, y), batch_size=8)
    with pytest.warns(UserWarning, match="left out: 1.weight, 1.bias"):
        op = O.KFACOperator(obj)
    K = O.dense(op)
    assert torch.allclose(K, K.T, atol=1e-12) and torch.linalg.eigvalsh(K).min() > -1e-10
    assert op.kfac_type_used == "exact" and op.n == 4 * 9 + 4 + 3 * 144 + 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = O.dense(O.KFACOperator(obj, kfac_type="mc", mc_samples=2, seed=1))
        b = O.dense(O.KFACOperator(obj, kfac_type="mc", mc_samples=2, seed=1))
        e = hessian.eigenvalues(obj, k=2, curvature="kfac")
    assert torch.equal(a, b)
    assert abs(e.values[0] - float(torch.linalg.eigvalsh(K)[-1])) < 1e-6 * abs(e.values[0])


def test_generic_api_eigenvalues_trace_density_and_linear_operator():
    m, x, y = _mlp(seed=8, n=40)
    obj = Objective(m, (x, y), batch_size=40)
    G = O.dense(O.GGNOperator(obj))
    ev = torch.linalg.eigvalsh(G)
    r = hessian.eigenvalues(obj, k=2, curvature="ggn", tol=1e-10)
    np.testing.assert_allclose(r.values, ev.flip(0)[:2].numpy(), rtol=1e-8)
    assert np.all(r.residuals < 1e-8 * ev[-1].item()) and r.vectors.shape == (2, obj.space.numel)
    tr = hessian.trace(obj, curvature="ggn", matvecs=99)  # 99 ≥ n = 38: exact
    assert abs(tr.trace - float(torch.trace(G))) < 1e-9 * float(torch.trace(G))
    d = hessian.spectral_density(O.FisherOperator(obj, mc_samples=None), probes=2, steps=10)
    assert abs(np.trapezoid(d.density, d.grid) - 1) < 1e-3
    A = hessian.as_linear_operator(obj, curvature="efisher")
    v = np.random.default_rng(0).standard_normal(A.shape[0])
    E = O.dense(O.EmpiricalFisherOperator(obj))
    np.testing.assert_allclose(A.matvec(v), (E @ torch.from_numpy(v)).numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(UserError, match="curvature must be one of"):
        hessian.eigenvalues(obj, curvature="gauss")
    with pytest.raises(UserError, match="takes no option"):
        O.curvature_operator(obj, "ggn", mc_samples=2)


def test_cached_and_streamed_products_agree():
    m, x, y = _mlp(seed=9, n=30)
    obj = Objective(m, (x, y), batch_size=7)
    v = torch.randn(obj.space.numel, dtype=torch.float64)
    for cls in (O.GGNOperator, O.EmpiricalFisherOperator):
        a = cls(obj, cache_graph=True)
        b = cls(obj, cache_graph=False)
        assert _rel(a.matvec(v), b.matvec(v)) < 1e-12
        assert _rel(a.matvec(v), b.matvec(v)) < 1e-12  # the cache is reused


def test_hf_bert_dict_batches_ggn_and_fisher_against_dense():
    pytest.importorskip("transformers")
    from compat_models import tiny_bert

    model = tiny_bert().double()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (6, 5), generator=g)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[::2, 3:] = 0
    data = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (6,), generator=g)}
    obj = Objective(model, data, loss="model", batch_size=4)  # two batches of a dict, the model's own loss
    params = ["bert.pooler", "classifier"]
    op = O.GGNOperator(obj, params=params)
    G = O.dense(op)
    idx = torch.nonzero(op.mask).squeeze(1)
    with obj.mode():
        th = obj.theta0.clone().requires_grad_(True)
        from lossprobe.core.objective import second_order

        with second_order():
            z = obj.forward(th, data).logits
            J = torch.stack([torch.autograd.grad(z.reshape(-1)[i], th, retain_graph=True)[0][idx]
                             for i in range(z.numel())])
    p = torch.softmax(z.detach(), -1)
    Hout = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p])
    ref = J.T @ Hout @ J / 6
    assert _rel(G, ref) < 1e-6
    assert _rel(O.dense(O.FisherOperator(obj, params=params, mc_samples=None)), ref) < 1e-6

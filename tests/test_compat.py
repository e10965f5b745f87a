"""The compatibility matrix: user-style models × probes, each checked against a hand-written loss.

Models (tests/compat_models.py): a ResNet with BatchNorm and residual adds, an LSTM
classifier, a GroupNorm CNN, a model with tied weights, a two-input model, a regression
model (mse), and tiny HF BERT (dict batches, the model's own loss) and GPT-2 (causal LM,
-100 labels, tied embeddings) built from configs. Capabilities: interpolation, surface and
slice, Hessian top eigenvalue and trace, sharpness, curves. Data is always batched more
finely (5 samples) than the one-batch hand-written reference, so batching must not matter.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lossprobe as lp
from lossprobe.curvature import hessian, sharpness
from lossprobe.connectivity.curves import Curve, CurveTrainConfig, evaluate_curve, train_curve
from lossprobe.connectivity.paths import recompute_batchnorm
from lossprobe.curvature.operators import HessianOperator, dense

from compat_models import cases

CASES = {c.name: c for c in cases()}
# a small parameter block per model whose exact Hessian trace is cheap to form densely
TRACE_BLOCK = {"resnet": "bn", "lstm": "head.bias", "groupnorm": "net.1", "tied": "mix.bias", "two-input": "head",
               "regression": "net.2", "hf-bert": "classifier.bias", "hf-gpt2": "transformer.ln_f.bias"}
# and one whose dense Hessian's top eigenvalue is simple (the mse head's is doubled: one copy per output)
EIG_BLOCK = {**TRACE_BLOCK, "regression": "net.0.bias"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def with_vector(model, space, vec):
    m = copy.deepcopy(model)
    space.load_into(m, vec)
    return m.eval()


def close(a, b, rel=1e-5, abs_=1e-6):
    assert abs(float(a) - float(b)) <= abs_ + rel * abs(float(b)), (float(a), float(b))


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    return CASES[request.param]


def test_interpolation_midpoint(case):
    a, b = case.build(0), case.build(1)
    line = lp.interpolate(a, b, case.data, alphas=[0.0, 0.5, 1.0], batch_size=case.batch_size, **case.kwargs)
    sa, sb = a.state_dict(), b.state_dict()
    mid = copy.deepcopy(a)
    mid.load_state_dict({k: (0.5 * sa[k] + 0.5 * sb[k]) if sa[k].is_floating_point() else sa[k] for k in sa})
    with torch.no_grad():
        close(line.loss["data"][1], case.hand_loss(mid.eval()))
        close(line.loss["data"][0], case.hand_loss(a))
        close(line.loss["data"][2], case.hand_loss(b))


def test_surface_and_slice_points(case):
    model = case.build(0)
    space = lp.ParamSpace(model)
    d1, d2 = lp.directions.random_plane(model, seed=3)
    s = lp.surface(model, case.data, directions=(d1, d2), span=(-0.5, 0.5), steps=3, batch_size=case.batch_size,
                   progress=False, **case.kwargs)
    theta = space.flatten(model).double()
    with torch.no_grad():
        for i, j in ((2, 0), (1, 1)):
            a, b = s.coords[0][i], s.coords[1][j]
            point = (theta + a * d1.vector.double() + b * d2.vector.double()).to(space.dtype)
            close(s.loss[i, j], case.hand_loss(with_vector(model, space, point)), rel=1e-4)
    sl = lp.slice(model, case.data, direction=d1, span=(-0.5, 0.5), steps=3, batch_size=case.batch_size,
                  progress=False, **case.kwargs)
    with torch.no_grad():
        point = (theta + sl.coords[0][0] * d1.vector.double()).to(space.dtype)
        close(sl.loss[0], case.hand_loss(with_vector(model, space, point)), rel=1e-4)


def _rayleigh(case, model, v):
    """vᵀ H v of the hand-written loss, by double backward."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    space = lp.ParamSpace(model)
    vs = {e.name: v[e.slice].view(e.shape).to(params[e.name]) for e in space.entries}
    loss = case.hand_loss(model, None)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
    gv = sum((g * vs[n]).sum() for n, g in zip(names, grads) if g is not None)
    hv = torch.autograd.grad(gv, [params[n] for n in names], allow_unused=True)
    return float(sum((h * vs[n]).sum() for n, h in zip(names, hv) if h is not None))


def test_hessian_top_eigenvalue(case):
    """The top eigenvalue is the top one: on a small block, the largest of all eigenvalues of the
    dense block Hessian (eigvalsh); on the whole model, at least that (a principal submatrix's
    largest eigenvalue never exceeds the matrix's), with vᵀHv of the hand-written loss equal to it."""
    model = case.build(0)
    obj = lp.Objective(model, case.data, batch_size=case.batch_size, **case.kwargs)
    block = EIG_BLOCK[case.name]
    D = dense(HessianOperator(obj, params=[block]))
    exact = torch.linalg.eigvalsh(0.5 * (D + D.T))  # ascending
    top = float(exact[-1])
    # the top is well apart from the next one, so a wrong eigenvalue cannot pass for it
    assert top - float(exact[-2]) > 0.05 * abs(top), exact[-3:]
    eig_block = hessian.eigenvalues(HessianOperator(obj, params=[block]), k=1, seed=0)
    close(eig_block.values[0], top, rel=1e-4, abs_=1e-6)
    eig = hessian.eigenvalues(obj, k=1, max_steps=40, seed=0)
    v = eig.vectors[0].double()
    lam = float(eig.values[0])
    assert lam >= top * (1 - 1e-4) - 1e-6, (lam, top)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        rq = _rayleigh(case, model, v / v.norm())
    assert abs(rq - lam) <= 2e-3 * abs(lam) + 1e-5, (rq, lam, eig.residuals)


def test_hessian_trace_of_a_block(case):
    model = case.build(0)
    obj = lp.Objective(model, case.data, batch_size=case.batch_size, **case.kwargs)
    block = TRACE_BLOCK[case.name]
    names = [n for n, _ in model.named_parameters() if n == block or n.startswith(block + ".")]
    n = sum(dict(model.named_parameters())[k].numel() for k in names)
    tr = hessian.trace(obj, params=[block], method="hutch++", matvecs=3 * n + 3, seed=0)
    own = dict(model.named_parameters())

    def f(*flat):
        return case.hand_loss(model, dict(zip(names, flat)))

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        H = torch.autograd.functional.hessian(f, tuple(own[k].detach() for k in names))
    exact = sum(float(torch.diagonal(H[i][i].reshape(own[k].numel(), own[k].numel())).sum())
                for i, k in enumerate(names))
    assert abs(tr.trace - exact) <= 1e-3 * abs(exact) + 1e-4, (tr.trace, exact)


def test_sharpness_gradient_and_loss(case):
    model = case.build(0)
    obj = lp.Objective(model, case.data, batch_size=case.batch_size, **case.kwargs)
    cp = sharpness.critical_point(obj, max_steps=20)
    params = list(model.parameters())  # a tied tensor appears once
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        loss = case.hand_loss(model, None)
        g = torch.autograd.grad(loss, params, allow_unused=True)
    gn = float(torch.cat([x.reshape(-1) for x in g if x is not None]).norm())
    close(cp.grad_norm, gn, rel=1e-4)
    sam = sharpness.sam_sharpness(obj, rho=0.01, steps=1)
    close(sam.loss, float(loss), rel=1e-5)
    assert sam.perturbed_loss >= sam.loss - 1e-6


def test_curve_midpoint(case):
    a, b = case.build(0), case.build(1)
    curve = Curve(a, b, bends=1)
    train_curve(curve, case.data, CurveTrainConfig(epochs=1, batch_size=4, lr=1e-3), loss=case.kwargs.get("loss"))
    ev = evaluate_curve(curve, case.data, ts=[0.0, 0.5, 1.0], bn_data=case.data, batch_size=case.batch_size,
                        **case.kwargs)
    mid = curve.model_at(0.5)
    if lp.paths.has_batchnorm(mid):
        recompute_batchnorm(mid, case.data, seed=0)
    with torch.no_grad():
        close(ev.loss["data"][1], case.hand_loss(mid.eval()), rel=1e-4)
        if not lp.paths.has_batchnorm(mid):
            close(ev.loss["data"][0], case.hand_loss(a))
    assert np.isfinite(ev.loss["data"]).all()

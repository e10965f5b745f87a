"""lossprobe.track: the Tracker's numbers, warm start, that it leaves training untouched, resuming,
its run directory and report page, TensorBoard."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from lossprobe.curvature.operators import HessianOperator, dense
from lossprobe.core.objective import Objective
from lossprobe.errors import UserError
from lossprobe.results.contract import load_result
from lossprobe.track import PROBES, Tracker, TrackHistory, preconditioner, threshold

ALL = tuple(PROBES)


def _quadratic(seed=0, n=256, d=12):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) * torch.linspace(0.3, 2.0, d)
    y = X @ torch.randn(d, generator=g) + 0.1 * torch.randn(n, generator=g)
    return X, y[:, None]


def _mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8), nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def _blobs(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def test_quadratic_lambda_max_is_the_top_eigenvalue_at_every_measurement(one_thread):
    X, y = _quadratic()
    model = nn.Linear(X.shape[1], 1, bias=False)
    true = torch.linalg.eigvalsh(2 * X.double().T @ X.double() / len(X))  # H of the mean squared error
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = Tracker(model, (X, y), loss="mse", every=3, probes=("lambda_max", "top_k", "trace"), optimizer=opt, k=3,
                 quiet=True)
    for _ in range(20):
        opt.zero_grad()
        ((model(X) - y) ** 2).mean().backward()
        opt.step()
        tr.step()
    h = tr.history
    assert len(h) == 7 and list(h["step"]) == [0, 3, 6, 9, 12, 15, 18]
    # documented tolerance: within the recorded residual of an eigenvalue (Lanczos, tol 1e-3 relative)
    err = np.abs(h["lambda_max"] - true[-1].item())
    assert np.all(err <= h["lambda_max_residual"] + 1e-6 * true[-1].item()), (err, h["lambda_max_residual"])
    assert np.all(h["lambda_max_residual"] <= 1e-3 * h["lambda_max"] * 1.0001)
    np.testing.assert_allclose(h["top_k"], np.tile(true.flip(0)[:3].numpy(), (7, 1)), rtol=1e-4)
    np.testing.assert_allclose(h["trace"], true.sum().item(), rtol=1e-5)  # 12 ≤ products: exact
    np.testing.assert_allclose(h["two_over_lr"], 2 / 0.05)


def test_lambda_max_matches_the_dense_hessian_along_training(one_thread):
    x, y = _blobs()
    for restart_every in (1, 0):  # 1: every measurement cold; 0: warm after the first
        model = _mlp(0)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        tr = Tracker(model, (x, y), every=2, probes=("lambda_max",), optimizer=opt, restart_every=restart_every,
                     tol=1e-4, quiet=True)
        dense_top = []
        for s in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if tr.step() is not None:
                obj = Objective(model, (x, y))
                dense_top.append(torch.linalg.eigvalsh(dense(HessianOperator(obj)))[-1].item())
        h = tr.history
        err = np.abs(h["lambda_max"] - np.array(dense_top))
        assert np.all(err <= h["lambda_max_residual"] + 1e-5), (err, h["lambda_max_residual"])
        assert np.all(h["warm"][1:] == (restart_every == 0))


def test_warm_start_reduces_products_per_measurement(one_thread):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=g)
    y = x[:, :5].argmax(1)
    runs = {}
    for restart_every in (1, 0):  # the same run measured with cold starts only, and warm-started
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tr = Tracker(model, (x, y), every=5, probes=("lambda_max",), optimizer=opt, restart_every=restart_every,
                     quiet=True)
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            tr.step()
        runs[restart_every] = tr.history
    cold, warm = runs[1]["lambda_max_matvecs"][1:], runs[0]["lambda_max_matvecs"][1:]
    assert warm.mean() < 0.6 * cold.mean(), (warm, cold)  # measured: about 8.7 against 18
    np.testing.assert_allclose(runs[0]["lambda_max"], runs[1]["lambda_max"], rtol=2e-3)
    assert runs[0].meta["matvecs_mean_warm"] == pytest.approx(warm.mean())


def _train(model, opt, x, y, steps, tracker=None, every_call=None):
    for s in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.step()
    # leave gradients on the model, as a loop does between steps
    opt.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(model(x), y).backward()


def _state(model, opt):
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "modes": [m.training for m in model.modules()],
            "opt": copy.deepcopy(opt.state_dict()),
            "rng": torch.get_rng_state(), "py": random.getstate(), "np": np.random.get_state()[1].copy()}


@pytest.mark.parametrize("train_mode", [False, True])
def test_training_is_bitwise_the_same_with_and_without_the_tracker(one_thread, train_mode):
    x, y = _blobs()
    out = []
    for with_tracker in (False, True):
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)
        model = _mlp(1, dropout=0.2)
        model.train()
        model[0].eval()  # a mixed mode must survive as it is
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        tr = Tracker(model, (x, y), every=1, probes=ALL, optimizer=opt, k=2, train_mode=train_mode, quiet=True) \
            if with_tracker else None
        _train(model, opt, x, y, 6, tr)
        if tr is not None:
            h = tr.history
            assert len(tr) == 6 and np.isfinite(h["preconditioned_lambda_max"][1:]).all()
            assert np.isfinite(h["update_slice"][1:]).all() and np.isfinite(h["barrier_to"][1:]).all()
        out.append(_state(model, opt))
    a, b = out
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
        assert torch.equal(a["grads"][k], b["grads"][k]), k
    assert a["modes"] == b["modes"] and a["modes"][1] is False
    assert torch.equal(a["rng"], b["rng"]) and a["py"] == b["py"] and np.array_equal(a["np"], b["np"])
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]


def test_preconditioned_sharpness_is_that_of_the_adam_preconditioner(one_thread):
    x, y = _blobs()
    model = _mlp(2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99))
    tr = Tracker(model, (x, y), every=4, probes=("preconditioned_lambda_max",), optimizer=opt, tol=1e-5, quiet=True)
    _train(model, opt, x, y, 9, tr)
    h = tr.history
    assert np.isnan(h["preconditioned_lambda_max"][0]) or h["step"][0] == 0
    obj = Objective(model, (x, y))
    # the tracker measured at step 8, the model now is one step further: measure again here
    rec = tr.measure(100)
    P = preconditioner(opt, model, obj.space)
    D = torch.diag(P.rsqrt())
    want = torch.linalg.eigvalsh(D @ dense(HessianOperator(obj)) @ D)[-1].item()
    assert abs(rec["preconditioned_lambda_max"] - want) <= rec["preconditioned_residual"] + 1e-6 * want
    # Adam's threshold (2 + 2β₁)/((1 − β₁)η) = 38/η at β₁ = 0.9
    assert rec["threshold"] == pytest.approx(38 / 0.01) and rec["two_over_lr"] == pytest.approx(200)


def test_thresholds_of_the_optimisers():
    p = [nn.Parameter(torch.zeros(2))]
    assert threshold(torch.optim.SGD(p, lr=0.1)).threshold == pytest.approx(20)
    assert threshold(torch.optim.SGD(p, lr=0.1, momentum=0.9)).threshold == pytest.approx(38)
    assert threshold(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)).threshold == pytest.approx(3.8 / 0.28)
    t = threshold(torch.optim.RMSprop(p, lr=0.01))
    assert t.threshold == pytest.approx(200) and t.against == "preconditioned"
    assert threshold(torch.optim.AdamW(p, lr=0.001, betas=(0.8, 0.999))).threshold == pytest.approx(3.6 / 0.2 / 0.001)
    assert preconditioner(torch.optim.SGD(p, lr=0.1), nn.Linear(2, 1), None) is None


def test_resume_from_state_dict_continues_the_same_history(one_thread, tmp_path):
    x, y = _blobs()
    probes = ("lambda_max", "top_k", "grad_norm", "barrier_to", "update_slice", "distance_from_init")

    def run(split):
        model = _mlp(3)
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        tr = Tracker(model, (x, y), every=3, probes=probes, optimizer=opt, k=2, lag=2, quiet=True)
        _train(model, opt, x, y, split, tr)
        if split < 20:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "tracker": tr.state_dict()},
                       tmp_path / "ckpt.pt")
            ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
            model = _mlp(99)
            model.load_state_dict(ck["model"])
            opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
            opt.load_state_dict(ck["opt"])
            tr = Tracker(model, (x, y), every=3, probes=probes, optimizer=opt, k=2, lag=2, quiet=True)
            tr.load_state_dict(ck["tracker"])
            _train(model, opt, x, y, 20 - split, tr)
        return tr.history

    whole, resumed = run(20), run(10)
    assert whole.names == resumed.names and len(whole) == 7
    for name in whole.names:
        if name not in ("seconds",):
            np.testing.assert_array_equal(whole[name], resumed[name], err_msg=name)
    assert np.isfinite(whole["barrier_to"][2:]).all() and np.isnan(whole["barrier_to"][:2]).all()
    assert np.isfinite(whole["update_slice"][1:]).all() and whole["update_slice"].shape == (7, 6)
    # update_slice at c = 1 is the loss at the point measured
    i1 = list(whole["update_slice_multiples"]).index(1.0)
    np.testing.assert_allclose(whole["update_slice"][1:, i1], whole["loss"][1:], rtol=1e-5)
    bad = Tracker(_mlp(3), (x, y), every=3, probes=("lambda_max",), quiet=True)
    with pytest.raises(UserError, match="other settings"):
        bad.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["tracker"])


def test_run_directory_history_result_and_report_page(one_thread, tmp_path):
    x, y = _blobs()
    model = _mlp(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    with Tracker(model, (x, y), every=2, probes=("lambda_max", "grad_norm", "trace", "distance_from_init"),
                 optimizer=opt, out=tmp_path / "track", quiet=True, tensorboard=True) as tr:
        _train(model, opt, x, y, 8, tr)
    d = tmp_path / "track"
    for f in ("config.json", "summary.json", "report.md", "track.npz", "track.json"):
        assert (d / f).is_file(), f
    h = TrackHistory.load(d)
    assert isinstance(load_result(d / "track.npz"), TrackHistory)
    np.testing.assert_array_equal(h["lambda_max"], tr.history["lambda_max"])
    assert h.summary()["measurements"] == 4 and "lambda_max_over_threshold_last_third" in h.summary()
    titles = [p.title for p in h.plots()]
    assert any("sharpness" in t for t in titles)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(d / "tensorboard"))
    ev.Reload()
    assert "lossprobe/lambda_max" in ev.Tags()["scalars"] and len(ev.Scalars("lossprobe/lambda_max")) == 4

    from lossprobe.report.site import build_site

    index = build_site([d], tmp_path / "site")
    page = next((index.parent / "runs").glob("*/index.html")).read_text()
    assert "sharpness along training" in page and "2/η" in page


def test_auto_schedule_measures_first_then_paces(one_thread):
    import time

    x, y = _blobs()
    model = _mlp(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tr = Tracker(model, (x, y), probes=("lambda_max",), optimizer=opt, overhead=0.5, quiet=True)
    for s in range(40):
        time.sleep(0.005)
        tr.step()
    steps = tr.history["step"]
    assert steps[0] == 0 and 2 <= len(steps) < 40


def test_user_mistakes_are_one_line():
    x, y = _blobs()
    m = _mlp(0)
    with pytest.raises(UserError, match="unknown probe"):
        Tracker(m, (x, y), probes=("lambda_min",))
    with pytest.raises(UserError, match="optimizer="):
        Tracker(m, (x, y), probes=("preconditioned_lambda_max",))
    with pytest.raises(UserError, match="every"):
        Tracker(m, (x, y), every=0)


@pytest.mark.parametrize("curvature,options", [("ggn", None), ("fisher", {"mc_samples": None}), ("kfac", None)])
def test_other_curvatures_through_curvature(one_thread, curvature, options):
    # a linear model with the squared error: GGN = exact Fisher = K-FAC (one layer, no bias) = H
    X, y = _quadratic(1)
    model = nn.Sequential(nn.Linear(X.shape[1], 1, bias=False))
    true = torch.linalg.eigvalsh(2 * X.double().T @ X.double() / len(X))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = Tracker(model, (X, y), loss="mse", every=2, probes=("lambda_max", "trace"), optimizer=opt,
                 curvature=curvature, curvature_options=options, quiet=True)
    for _ in range(5):
        opt.zero_grad()
        ((model(X) - y) ** 2).mean().backward()
        opt.step()
        tr.step()
    h = tr.history
    assert h.meta["curvature"] == curvature
    np.testing.assert_allclose(h["lambda_max"], true[-1].item(), rtol=1e-4)
    np.testing.assert_allclose(h["trace"], true.sum().item(), rtol=1e-4)


def test_a_diverged_run_is_recorded_not_raised(one_thread):
    x, y = _blobs()
    model = _mlp(6)
    tr = Tracker(model, (x, y), every=1, probes=("lambda_max", "grad_norm", "barrier_to"), quiet=True)
    tr.step()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.warns(UserWarning, match="curvature not measured"):
        tr.step()
    h = tr.history
    assert np.isfinite(h["lambda_max"][0]) and np.isnan(h["lambda_max"][1]) and np.isnan(h["loss"][1])

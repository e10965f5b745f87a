"""Curvature: Lanczos / Hutch++ / SLQ on dense matrices, and the Hessian of tiny float64
networks against torch.autograd.functional.hessian."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lossprobe import Objective
from lossprobe.curvature import hessian
from lossprobe.curvature import algorithms as C
from lossprobe.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


def _quadratic(n=40, seed=0, spectrum=None):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    ev = torch.as_tensor(spectrum, dtype=torch.float64) if spectrum is not None else torch.linspace(-2, 7, n, dtype=torch.float64)
    return Q @ torch.diag(ev) @ Q.T, ev


def _tiny(seed=0, n=64, bn=False, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(6, 3)]
    m = nn.Sequential(*layers).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return m, x, y


def _dense_hessian(obj, x, y):
    def L(th):
        with obj.mode():
            return nn.functional.cross_entropy(obj.forward(th, x), y)
    return torch.autograd.functional.hessian(L, obj.theta0)


# --- generic algorithms --------------------------------------------------------------
def test_lanczos_known_spectrum_both_ends():
    A, ev = _quadratic(spectrum=np.r_[np.linspace(-1, 1, 36), [3.0, 5.0, -4.0, 8.0]])
    r = C.lanczos_eigs(A, k=2, which="both", tol=1e-12)
    assert r.converged
    np.testing.assert_allclose(r.values, [8.0, 5.0, -4.0, -1.0], rtol=1e-9)
    assert np.all(r.residuals < 1e-8)
    # vectors are eigenvectors: A y = λ y
    for y, lam in zip(r.vectors, r.values):
        assert torch.allclose(A @ y, lam * y, atol=1e-8)


def test_lanczos_repeated_eigenvalue_found_after_breakdown():
    # spectrum with only 3 distinct values: the Krylov space is invariant after 3 steps
    A, _ = _quadratic(n=12, spectrum=[5.0] * 4 + [1.0] * 4 + [-2.0] * 4)
    r = C.lanczos_eigs(A, k=3, which="largest", tol=1e-12)
    np.testing.assert_allclose(r.values, [5.0, 5.0, 5.0], rtol=1e-10)


def test_lanczos_reproducible_with_seed_and_start_vector_changes_it():
    A, _ = _quadratic(n=80, spectrum=np.linspace(0, 1, 80) ** 3)
    a = C.lanczos_eigs(A, k=1, tol=1e-3, seed=3, residuals="estimate")
    b = C.lanczos_eigs(A, k=1, tol=1e-3, seed=3, residuals="estimate")
    c = C.lanczos_eigs(A, k=1, tol=1e-3, seed=4, residuals="estimate")
    assert a.values[0] == b.values[0] and a.matvecs == b.matvecs
    assert a.values[0] != c.values[0]


def test_hutchpp_exact_when_rank_is_small_and_hutchinson_within_error():
    g = torch.Generator().manual_seed(1)
    U = torch.randn(100, 5, generator=g, dtype=torch.float64)
    A = U @ torch.diag(torch.tensor([9.0, 4, 3, 2, 1], dtype=torch.float64)) @ U.T / 100
    exact = float(torch.trace(A))
    pp = C.hutchpp(A, matvecs=30, seed=0)
    assert abs(pp.trace - exact) < 1e-10 * abs(exact)
    hs = C.hutchinson(A, samples=60, seed=0)
    assert hs.stderr > 0 and abs(hs.trace - exact) < 4 * hs.stderr


def test_hutchpp_blocks_sum_to_total():
    A, ev = _quadratic(n=30)
    blocks = [("a", slice(0, 10)), ("b", slice(10, 30))]
    r = C.hutchpp(A, matvecs=24, seed=2, blocks=blocks)
    assert abs(sum(v[0] for v in r.blocks.values()) - r.trace) < 1e-9
    ex = C.hutchinson(A, samples=20, seed=2, blocks=blocks)
    assert abs(sum(v[0] for v in ex.blocks.values()) - ex.trace) < 1e-9


def test_slq_density_integrates_to_one_and_matches_spectrum():
    A, ev = _quadratic(n=50, spectrum=np.r_[np.zeros(40), np.linspace(5, 6, 10)])
    q = C.slq(A, probes=6, steps=50, seed=0)
    grid, dens = q.density(sigma=0.05)
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-6
    # 80% of the mass at 0, 20% in [5, 6]
    near0 = np.trapezoid(dens[np.abs(grid) < 0.5], grid[np.abs(grid) < 0.5])
    assert abs(near0 - 0.8) < 0.1
    assert abs(q.trace - float(ev.sum())) < 4 * q.trace_stderr + 1e-6


def test_operator_wrappers_accept_linear_operator_and_reject_bad_input():
    from scipy.sparse.linalg import aslinearoperator

    A, _ = _quadratic(n=20)
    r = C.lanczos_eigs(aslinearoperator(A.numpy()), k=1, tol=1e-10)
    assert abs(r.values[0] - 7.0) < 1e-8
    with pytest.raises(UserError):
        C.lanczos_eigs(A, k=1, which="middle")
    with pytest.raises(UserError):
        C.lanczos_eigs(A, k=30, which="both")


# --- the Hessian of tiny networks ------------------------------------------------------
@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_hvp_matches_dense_hessian(method):
    m, x, y = _tiny()
    obj = Objective(m, (x, y), batch_size=20)  # 4 unequal batches: sample weighting matters
    H = _dense_hessian(obj, x, y)
    v = torch.randn(obj.space.numel, dtype=torch.float64)
    assert torch.allclose(hessian.hvp(obj, v, method=method), H @ v, atol=1e-12, rtol=1e-10)


def test_eigenvalues_match_dense_to_1e6_relative():
    m, x, y = _tiny(seed=2)
    obj = Objective(m, (x, y))
    H = _dense_hessian(obj, x, y)
    ev = torch.linalg.eigvalsh(H).numpy()
    r = hessian.eigenvalues(obj, k=3, which="both")
    np.testing.assert_allclose(r.values[:3], ev[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(r.values[3:], ev[:3], rtol=1e-6)
    assert np.all(r.residuals < 1e-8 * np.abs(ev).max())
    assert r.vectors.shape == (3 * 2, obj.space.numel)
    # eigenvectors are usable as directions: the loss curvature along them is λ
    y0 = r.vectors[0]
    assert abs(float(y0 @ (H @ y0)) - r.values[0]) < 1e-8


def test_eigsh_on_linear_operator_agrees():
    from scipy.sparse.linalg import eigsh

    m, x, y = _tiny(seed=3)
    obj = Objective(m, (x, y))
    A = hessian.as_linear_operator(obj)
    top = eigsh(A, k=1, which="LA", tol=1e-12)[0][0]
    r = hessian.eigenvalues(obj, k=1)
    assert abs(top - r.values[0]) < 1e-9 * abs(top)
    assert A.hessian.calls > 0


def test_trace_within_stderr_and_per_layer():
    m, x, y = _tiny(seed=4)
    obj = Objective(m, (x, y))
    H = _dense_hessian(obj, x, y)
    exact = float(torch.trace(H))
    hs = hessian.trace(obj, method="hutchinson", matvecs=40, seed=1)
    assert abs(hs.trace - exact) < 3 * hs.stderr
    pp = hessian.trace(obj, method="hutch++", matvecs=30, seed=1)
    assert abs(pp.trace - exact) < max(3 * pp.stderr, 1e-9)
    diag = torch.diag(H)
    n0 = m[0].weight.numel() + m[0].bias.numel()
    assert set(pp.blocks) == {"0", "2"}
    assert abs(pp.blocks["0"][0] - float(diag[:n0].sum())) < max(3 * pp.blocks["0"][1], 1e-9)


def test_spectral_density_integrates_to_one():
    m, x, y = _tiny(seed=5)
    obj = Objective(m, (x, y))
    d = hessian.spectral_density(obj, probes=3, steps=20, seed=0)
    assert abs(np.trapezoid(d.density, d.grid) - 1.0) < 1e-4
    assert d.matvecs == 3 * 20


def test_seed_reproducibility():
    m, x, y = _tiny(seed=6)
    obj = Objective(m, (x, y))
    a = hessian.trace(obj, matvecs=12, seed=7)
    b = hessian.trace(obj, matvecs=12, seed=7)
    assert a.trace == b.trace and a.stderr == b.stderr
    d1 = hessian.spectral_density(obj, probes=2, steps=10, seed=1)
    d2 = hessian.spectral_density(obj, probes=2, steps=10, seed=1)
    assert np.array_equal(d1.density, d2.density)


def test_frozen_and_unused_parameters():
    net, x, y = _tiny(seed=7)

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.extra = nn.Linear(2, 2).double()  # registered but never used in forward

        def forward(self, x):
            return self.net(x)

    m = WithUnused()
    net[0].weight.requires_grad_(False)
    obj = Objective(m, (x, y))
    H = hessian.HessianOperator(obj)
    frozen = net[0].weight.numel()
    assert H.n == obj.space.numel - frozen
    r = hessian.eigenvalues(obj, k=2, which="smallest")
    # unused parameters contribute exact zeros, so the smallest eigenvalues include 0
    assert np.isfinite(r.values).all()
    v = torch.zeros(obj.space.numel, dtype=torch.float64)
    v[obj.space["extra.weight"].slice] = 1
    assert torch.count_nonzero(hessian.hvp(obj, v)) == 0
    sub = hessian.eigenvalues(hessian.HessianOperator(obj, params=["net.2"]), k=1)
    assert torch.count_nonzero(sub.vectors[0][: obj.space["net.2.weight"].offset]) == 0
    with pytest.raises(UserError):
        hessian.HessianOperator(obj, params=["nope"])


def test_probe_keywords_that_configure_the_operator_still_work_with_a_warning():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    obj = Objective(m, (torch.randn(20, 3), torch.randint(0, 2, (20,))))
    new = hessian.eigenvalues(hessian.HessianOperator(obj, params="weight"), k=2)
    from lossprobe.errors import LossprobeDeprecationWarning, _warned

    _warned.clear()
    with pytest.warns(LossprobeDeprecationWarning, match="params"):
        old = hessian.eigenvalues(obj, params="weight", k=2)
    np.testing.assert_array_equal(old.values, new.values)
    with pytest.raises(UserError, match="configure the operator"):
        hessian.eigenvalues(hessian.HessianOperator(obj), params="weight")


def test_eval_mode_default_and_train_mode_warning():
    m, x, y = _tiny(seed=8, bn=True, dropout=0.3)
    m.train()
    obj = Objective(m, (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessian.HessianOperator(obj)  # eval mode by default: no warning
    assert m.training  # the model's own flag is restored
    with pytest.warns(UserWarning, match="train mode"):
        hessian.HessianOperator(Objective(m, (x, y), train_mode=True))


def test_cached_graph_products_equal_uncached():
    m, x, y = _tiny(seed=9)
    v = torch.randn(m[0].weight.numel() * 0 + sum(p.numel() for p in m.parameters()), dtype=torch.float64)
    one = Objective(m, (x, y))  # one batch: the gradient graph is cached
    many = Objective(m, (x, y), batch_size=10)
    Hc = hessian.HessianOperator(one)
    Hf = hessian.HessianOperator(one, method="forward")
    Hm = hessian.HessianOperator(many, cache_graph=True)
    assert Hc.cache_graph and not Hf.cache_graph
    ref = hessian.HessianOperator(one, cache_graph=False).matvec(v)
    for H in (Hc, Hf, Hm):
        assert torch.allclose(H.matvec(v), ref, atol=1e-12)
        assert torch.allclose(H.matvec(2 * v), 2 * ref, atol=1e-12)  # graph reused


def test_power_iteration_finds_the_dominant_eigenvalue():
    spectrum = np.concatenate([[-9.0], np.linspace(-1, 3, 39)])  # largest magnitude is negative
    A, _ = _quadratic(spectrum=spectrum)
    lam, v = C.power_iteration(A, iters=200, seed=1)
    assert abs(lam + 9.0) < 1e-8 and abs(float(v.norm()) - 1) < 1e-12
    with pytest.raises(UserError):
        C.power_iteration(A, iters=0)


# --- Lanczos with its basis on disk (large models) --------------------------------------
@pytest.mark.parametrize("which,k", [("largest", 1), ("largest", 3), ("smallest", 2), ("both", 2)])
def test_spilled_lanczos_agrees_with_the_in_memory_one(which, k):
    A, ev = _quadratic(n=120, spectrum=np.r_[np.linspace(-1, 1, 114), [3.0, 5.0, 5.5, -4.0, -4.5, 8.0]])
    r = C.lanczos_eigs_spilled(A, k=k, which=which, tol=1e-10)
    m = C.lanczos_eigs(A, k=k, which=which, tol=1e-10)
    assert r.converged and r.restarts == 0
    np.testing.assert_allclose(r.values, m.values, rtol=1e-9)
    assert np.all(r.residuals < 1e-8)
    for y, lam in zip(r.vectors, r.values):
        assert torch.allclose(A @ y, lam * y, atol=1e-7)


def test_spilled_lanczos_makes_no_ghost_of_a_converged_eigenvalue():
    # an isolated top eigenvalue converges in a few steps; without orthogonalisation against it the
    # recurrence makes a second copy of it long before the cluster below converges to 1e-12
    A, _ = _quadratic(n=300, spectrum=np.r_[[100.0], np.linspace(0, 1, 299)])
    r = C.lanczos_eigs_spilled(A, k=3, tol=1e-12)
    np.testing.assert_allclose(r.values, [100.0, 1.0, 1.0 - 1 / 298], rtol=1e-10)
    Y = r.vectors
    assert torch.allclose(Y @ Y.T, torch.eye(3, dtype=Y.dtype), atol=1e-8)


def test_spilled_lanczos_keeps_two_vectors_and_writes_one_per_step(monkeypatch, tmp_path):
    from lossprobe.core import spill

    written = []
    orig = spill.SpilledRows.append
    monkeypatch.setattr(spill.SpilledRows, "append", lambda self, v: written.append(1) or orig(self, v))
    A, _ = _quadratic(n=200, spectrum=np.r_[np.linspace(0, 1, 199), [4.0]])
    r = C.lanczos_eigs_spilled(A, k=1, tol=1e-8, directory=str(tmp_path), residuals="estimate")
    assert len(written) == r.steps == r.matvecs
    assert not list(tmp_path.iterdir())  # the file is unlinked from the start
    np.testing.assert_allclose(r.values, [4.0], rtol=1e-10)


def test_spilled_lanczos_stops_with_a_warning_when_the_disk_is_full(monkeypatch):
    from lossprobe.core import spill

    calls = {"n": 0}

    def room(self):
        calls["n"] += 1
        return calls["n"] <= 5
    monkeypatch.setattr(spill.SpilledRows, "has_room", room)
    A, _ = _quadratic(n=200, spectrum=np.linspace(0, 1, 200) ** 2)
    with pytest.warns(UserWarning, match="no room for another vector"):
        r = C.lanczos_eigs_spilled(A, k=1, tol=1e-12)
    assert r.steps == 6 and not r.converged and 0 < r.values[0] <= 1  # the first row is written unasked


def test_hessian_eigenvalues_basis_on_disk_equals_in_memory():
    m, x, y = _tiny(seed=2)
    obj = Objective(m, (x, y))
    disk = hessian.eigenvalues(obj, k=2, which="both", basis="disk")
    mem = hessian.eigenvalues(obj, k=2, which="both", basis="memory")
    np.testing.assert_allclose(disk.values, mem.values, rtol=1e-8)
    assert torch.allclose(disk.vectors.abs(), mem.vectors.abs(), atol=1e-6)
    with pytest.raises(UserError, match="basis must be"):
        hessian.eigenvalues(obj, basis="ram")


def test_auto_basis_stays_in_memory_when_the_temporary_directory_is_tmpfs(monkeypatch):
    from pathlib import Path

    from lossprobe.core import spill
    from lossprobe.curvature import hessian as hs

    if Path("/dev/shm").is_dir():
        assert spill.in_memory_filesystem("/dev/shm") and spill.spill_room("/dev/shm") == 0
    m, x, y = _tiny(seed=2)
    obj = Objective(m, (x, y))
    used = []
    monkeypatch.setattr(hs, "lanczos_eigs_spilled", lambda *a, **k: used.append("disk"))
    monkeypatch.setattr(hs, "vectors_allowed", lambda *a, **k: 4)  # as if the model were large
    monkeypatch.setattr(hs, "spill_room", lambda: 0)  # a tmpfs TMPDIR
    r = hessian.eigenvalues(obj, k=1)
    assert not used and r.restarts > 0  # thick-restarted in memory
    monkeypatch.setattr(hs, "spill_room", lambda: 1 << 40)
    with pytest.raises(AttributeError):  # the stub returns None: the disk path was taken
        hessian.eigenvalues(obj, k=1)
    assert used == ["disk"]

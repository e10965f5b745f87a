"""Trajectories: PCA planes, projection, fidelity of drawn points, roughness, curvature."""

import numpy as np
import pytest
import torch

from lossprobe.trajectories import trajectory as T
from lossprobe.data import two_spirals
from lossprobe.errors import UserError
from lossprobe.models import mlp
from lossprobe.core.objective import Objective


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run():
    torch.set_num_threads(1)
    data = two_spirals(60, 0.1, 1.5, seed=0)
    model = mlp([2, 8, 1], seed=0)
    tj = T.train_trajectory(model, data, "momentum", 0.05, steps=120, batch_size=16, every=10, seed=0)
    return model, data, tj


def test_train_trajectory_records_snapshots_and_monitors(run):
    model, data, tj = run
    assert list(tj.steps) == list(range(0, 121, 10))
    assert tj.thetas.shape == (13, sum(p.numel() for p in model.parameters()))
    assert len(tj.monitor) == 120 and len(tj.monitor.loss) == 120
    obj = Objective(model, data, loss="bce")
    loss, acc = T.losses_at(obj, tj.thetas, chunk=5)
    assert loss[-1] < loss[0]
    assert loss[-1] == pytest.approx(float(obj.loss_at().loss[0]), rel=1e-5)  # the model ends at the last snapshot


def test_pca_directions_are_orthonormal_and_explain_the_reported_variance():
    g = torch.Generator().manual_seed(0)
    T_, P = 40, 300
    # snapshots mostly along two directions, plus noise
    basis = torch.randn(2, P, generator=g, dtype=torch.float64)
    coef = torch.randn(T_, 2, generator=g, dtype=torch.float64) * torch.tensor([5.0, 2.0], dtype=torch.float64)
    X = coef @ basis + 0.1 * torch.randn(T_, P, generator=g, dtype=torch.float64)
    for center in (False, True):
        plane = T.pca_plane(X, origin=torch.zeros(P, dtype=torch.float64), center=center, chunk=64)
        D = plane.directions
        assert torch.allclose(D @ D.T, torch.eye(2, dtype=torch.float64), atol=1e-10)
        Xc = X - plane.origin
        proj = Xc @ D.T
        evr = (proj**2).sum(0) / (Xc**2).sum()
        assert np.allclose(evr.numpy(), plane.explained_variance_ratio, atol=1e-6)
        assert plane.explained_variance_ratio.sum() > 0.95
        assert plane.explained_variance_ratio[0] >= plane.explained_variance_ratio[1]
        # the first direction matches the top eigenvector of the (uncentred or centred) covariance
        C = (Xc.T @ Xc)
        top = torch.linalg.eigh(C).eigenvectors[:, -1]
        assert abs(float(top @ D[0])) > 1 - 1e-6
    with pytest.raises(UserError):
        T.pca_plane(X[:1])


def test_pca_plane_of_several_trajectories_default_origin(run):
    _, _, tj = run
    plane = T.pca_plane([tj.thetas, tj.thetas[::2]])
    assert torch.equal(plane.origin, tj.thetas[-1].double())


def test_point_on_the_plane_has_zero_distance_and_matching_loss(run):
    model, data, tj = run
    obj = Objective(model, data, loss="bce")
    plane = T.pca_plane(tj.thetas)
    coords = np.array([[0.3, -0.2], [0.0, 0.0], [-0.5, 0.4]])
    on_plane = plane.point(coords).float()
    ext = ((-1.0, 1.0), (-1.0, 1.0))
    surf = T.plane_surface(obj, plane, ext, n=21)  # grid step 0.1: the coords lie on grid nodes
    f = T.path_fidelity(obj, plane, on_plane, surf)
    assert np.allclose(f["coords"], coords, atol=1e-5)
    assert np.all(f["distance"] < 1e-5) and np.all(f["rel_distance"] < 1e-5)
    assert np.allclose(f["true_loss"], f["plane_loss"], rtol=1e-4)
    assert np.allclose(f["true_loss"], f["surface_loss"], rtol=1e-4)
    # a point moved off the plane has that distance, and its loss no longer matches
    off = on_plane[0].double() + 0.5 * torch.nn.functional.normalize(torch.randn(on_plane.shape[1],
                                                                                  dtype=torch.float64), dim=0)
    off = off - (plane.directions @ (off - on_plane[0].double())) @ plane.directions  # orthogonal to the plane
    g = T.path_fidelity(obj, plane, off[None].float(), surf)
    assert g["distance"][0] == pytest.approx(float((off - on_plane[0].double()).norm()), rel=1e-4)
    assert np.allclose(g["coords"][0], coords[0], atol=1e-4)
    assert abs(g["true_loss"][0] - g["surface_loss"][0]) > 1e-4
    s = T.fidelity_summary({k: np.concatenate([f[k], g[k]]) for k in f}, near=0.1)
    assert s["near"]["n"] == 3 and s["far"]["n"] == 1


def test_random_plane_is_filter_normalised(run):
    model, _, _ = run
    plane = T.Plane.random(model, seed=0)
    assert plane.directions.shape == (2, plane.origin.numel())
    w = model[1].weight.detach().double()
    d = plane.directions[0][: w.numel()].view_as(w)
    assert torch.allclose(d.norm(dim=1), w.norm(dim=1), rtol=1e-6)
    b = plane.directions[0][w.numel() : w.numel() + model[1].bias.numel()]
    assert torch.all(b == 0)
    again = T.Plane.random(model, seed=0)
    assert torch.equal(plane.directions, again.directions)


def test_roughness_separates_smooth_from_rough():
    x = np.linspace(-1, 1, 41)
    X, Y = np.meshgrid(x, x)
    bowl = X**2 + Y**2
    rough = bowl + 0.2 * np.sin(25 * X) * np.cos(25 * Y)
    rb, rr = T.roughness(bowl), T.roughness(rough)
    assert rb["positive_curvature_share"] == pytest.approx(1.0)
    assert rr["positive_curvature_share"] < 0.8
    assert rr["mean_abs_smooth_diff"] > 5 * rb["mean_abs_smooth_diff"]
    with pytest.raises(UserError):
        T.roughness(np.full((4, 4), np.nan))


def test_hessian_extremes_match_a_dense_reference(run):
    model, data, tj = run
    h = T.hessian_extremes(model, data, tj.thetas[[0, -1]], loss="bce")
    assert h["method"] == "dense" and h["min"].shape == (2,)
    assert np.all(h["min"] <= h["max"])
    # reference: the Hessian from Hessian-vector products of the core objective (float32)
    obj = Objective(model, data, loss="bce")
    P = obj.space.numel
    H = torch.stack([obj.hvp(e, tj.thetas[-1]) for e in torch.eye(P)]).double()
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T))
    assert h["max"][-1] == pytest.approx(float(ev[-1]), rel=1e-3)
    assert h["min"][-1] == pytest.approx(float(ev[0]), abs=1e-3 * float(ev[-1]))
    assert list(T.near_saddles(np.array([-1.0, 0.5]), np.array([10.0, 10.0]), np.array([0.01, 1.0]))) == [0]


def test_pca_plane_agrees_with_the_fallback(run):
    _, _, tj = run
    a = T.pca_plane(tj.thetas)  # lossprobe.core.directions.pca_directions when installed
    b = T.pca_plane([tj.thetas])  # always the Gram-matrix code here
    assert np.allclose(a.explained_variance_ratio, b.explained_variance_ratio, atol=1e-6)
    # the same subspace: projecting one basis on the other keeps its length
    M = a.directions @ b.directions.T
    assert np.allclose(torch.linalg.svdvals(M).numpy(), [1.0, 1.0], atol=1e-5)

"""Directions that matter (curvature eigenvectors, gradient, PCA, towards) and --span auto, from the CLI;
the auto span on a quadratic; basins and saddles of a surface."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lossprobe import Objective
from lossprobe.cli import main
from lossprobe.models import build
from lossprobe.landscape.surfaces import auto_span
from lossprobe.landscape.topology import persistence
from lossprobe.training.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = "mlp:784-8-10"


@pytest.fixture()
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_checkpoint(build(SPEC, seed=0), p)
    return p


def _surface(tmp_path, ckpt, name, *extra, cmd="surface", steps=("3",)):
    out = tmp_path / name
    rc = main([cmd, str(ckpt), "--model", SPEC, "--data", "fashion-mnist:test", "--subset", "60", "--steps", *steps,
               "--no-html" if cmd == "surface" else "--log", *extra, "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text())


def _least_squares(seed=0, n=50):
    torch.manual_seed(seed)
    lin = nn.Linear(4, 1, bias=False).double()
    x, y = torch.randn(n, 4, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return lin, x, y


def test_auto_span_on_a_quadratic_is_the_analytic_span():
    # L(w* + a d) = L0 + a² dᵀ(XᵀX/N)d exactly, so L = F·L0 at a = sqrt((F − 1)L0 / dᵀ(XᵀX/N)d)
    lin, x, y = _least_squares()
    obj = Objective(lin, (x, y), loss="mse")
    L0 = float(obj.evaluate().loss[0])
    d = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * torch.tensor([[3.0], [0.01]],
                                                                                                           dtype=torch.float64)
    for factor in (4.0, 1.5):
        got = auto_span(obj, d, factor=factor)
        for i in range(2):
            q = float(d[i] @ (x.T @ x / len(x)) @ d[i])
            exact = math.sqrt((factor - 1) * L0 / q)
            assert got[i]["reached"] and abs(got[i]["span"] - exact) < 1e-4 * exact
            assert abs(got[i]["minus"] - got[i]["plus"]) < 1e-4 * exact  # symmetric
        assert got[0]["evaluations"] < 120


def test_span_auto_from_the_cli_on_a_quadratic(tmp_path):
    lin, x, y = _least_squares(seed=2)
    torch.save({"x": x.float(), "y": y.float()}, tmp_path / "data.pt")
    (tmp_path / "linmodel.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 1, bias=False)\n")
    save_checkpoint(lin.float(), tmp_path / "w.safetensors")
    out = tmp_path / "auto"
    rc = main(["slice", str(tmp_path / "w.safetensors"), "--model", f"{tmp_path / 'linmodel.py'}:build", "--data",
               str(tmp_path / "data.pt"), "--loss", "mse", "--directions", "gradient", "--span", "auto:3",
               "--steps", "5", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    a = s["auto_span"][0]
    q = s["directions"][0]["second_derivative"]  # = 2 dᵀ(XᵀX/N)d for the unit gradient direction
    exact = math.sqrt(2 * (3 - 1) * a["center_loss"] / q)
    assert abs(a["span"] - exact) < 1e-3 * exact and s["spans"] == [[-a["span"], a["span"]]]
    assert abs(s["max_loss"] - 3 * a["center_loss"]) < 1e-3 * a["center_loss"]  # the ends sit on the threshold
    assert "auto" in (out / "report.md").read_text()


def test_second_derivative_along_the_top_hessian_eigenvector_is_lambda1(tmp_path):
    # a smooth (tanh) network, so that central differences on the grid converge
    ckpt = tmp_path / "tanh.safetensors"
    save_checkpoint(build(SPEC + ":tanh", seed=0), ckpt)
    h = 0.01
    out = tmp_path / "fd"
    assert main(["slice", str(ckpt), "--model", SPEC + ":tanh", "--subset", "60", "--steps", "5", "--directions",
                 "hessian", "--span", str(-2 * h), str(2 * h), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    info = s["directions"][0]
    assert info["kind"] == "hessian" and info["norm"] == "unit" and abs(info["length"] - 1) < 1e-6
    lam = info["eigenvalue"]
    assert info["residual"] < 1e-3 * lam and abs(info["second_derivative"] - lam) < 1e-3 * lam
    with np.load(out / "surface.npz") as f:
        c, L = f["coords_0"], f["loss"]
    i0 = int(np.flatnonzero(c == 0)[0])
    fd = (L[i0 + 1] - 2 * L[i0] + L[i0 - 1]) / (c[i0 + 1] - c[i0]) ** 2
    assert abs(fd - lam) < 0.01 * lam
    # the eigenvalue is printed in the report and stored with the directions
    assert f"{lam:.4g}" in (out / "report.md").read_text()
    assert json.loads((out / "directions.json").read_text())["directions"][0]["eigenvalue"] == lam


def test_each_directions_form_from_the_cli(tmp_path, ckpt):
    # hessian and ggn: two eigenvectors, orthonormal, eigenvalues in order
    for kind in ("hessian", "ggn"):
        _, s = _surface(tmp_path, ckpt, kind, "--directions", kind)
        d1, d2 = s["directions"]
        assert d1["kind"] == d2["kind"] == kind and d1["eigenvalue"] >= d2["eigenvalue"] > 0
        assert [d1["index"], d2["index"]] == [0, 1]
    # gradient on one axis, a random second axis; the gradient direction has unit length
    _, s = _surface(tmp_path, ckpt, "grad", "--directions", "gradient")
    assert [d["kind"] for d in s["directions"]] == ["gradient", "random"]
    assert abs(s["directions"][0]["length"] - 1) < 1e-6 and s["directions"][1]["norm"] == "filter"
    # --norm model scales an eigenvector to ‖θ‖; filter would change its shape and is refused
    _, s = _surface(tmp_path, ckpt, "model-norm", "--directions", "gradient", "hessian", "--norm", "model")
    assert s["directions"][0]["norm"] == "model" and s["directions"][0]["length"] > 1
    assert main(["surface", str(ckpt), "--model", SPEC, "--directions", "hessian", "--norm", "filter",
                 "--out", str(tmp_path / "bad")]) == 2
    # towards:CKPT and the deprecated --towards: CKPT_B at 1
    other = tmp_path / "b.safetensors"
    save_checkpoint(build(SPEC, seed=1), other)
    out, s = _surface(tmp_path, ckpt, "towards", "--directions", f"towards:{other}", "--span", "0", "1")
    _, s2 = _surface(tmp_path, ckpt, "towards-old", "--towards", str(other), "--span", "0", "1")
    assert s["directions"][0]["kind"] == "towards" and s["max_loss"] == s2["max_loss"]
    assert s["directions"][0]["length"] == pytest.approx(s2["directions"][0]["length"])
    # pca:RUN_DIR from a directory of checkpoints, and from a .npy trajectory
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    vecs = []
    for i in range(4):
        m = build(SPEC, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 0.1 * i).add_(0.01 * i * i)
        save_checkpoint(m, run / f"epoch-{i}.safetensors")
        vecs.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
    _, s = _surface(tmp_path, ckpt, "pca", "--directions", f"pca:{tmp_path / 'run'}")
    assert [d["kind"] for d in s["directions"]] == ["pca", "pca"]
    assert s["directions"][0]["explained_variance_ratio"] > s["directions"][1]["explained_variance_ratio"]
    np.save(tmp_path / "traj.npy", torch.stack(vecs).numpy())
    _, s3 = _surface(tmp_path, ckpt, "pca-npy", "--directions", f"pca:{tmp_path / 'traj.npy'}")
    assert s3["directions"][0]["explained_variance_ratio"] == pytest.approx(
        s["directions"][0]["explained_variance_ratio"], rel=1e-5)
    # random by default, with its curvature along each axis stored on a grid of 40+ points per axis
    _, s = _surface(tmp_path, ckpt, "random", steps=("9",))
    assert [d["kind"] for d in s["directions"]] == ["random", "random"]
    assert all("rayleigh" in d and "second_derivative" in d for d in s["directions"])
    assert s["topology"]["basins"] >= 1
    # a 3×3 grid skips it (two Hessian-vector products would cost more than a tenth of the grid)
    _, s = _surface(tmp_path, ckpt, "random-small")
    assert not any("second_derivative" in d for d in s["directions"])


def test_bad_direction_and_span_specs(tmp_path, ckpt, capsys):
    base = ["surface", str(ckpt), "--model", SPEC, "--subset", "30"]
    assert main(base + ["--directions", "sideways", "--out", str(tmp_path / "a")]) == 2
    assert "unknown 'sideways'" in capsys.readouterr().err
    assert main(base + ["--directions", "pca", "--out", str(tmp_path / "b")]) == 2
    assert main(base + ["--span", "auto:0.5", "--out", str(tmp_path / "c")]) == 2
    assert "above 1" in capsys.readouterr().err
    assert main(base + ["--span", "-1", "x", "--out", str(tmp_path / "d")]) == 2
    assert main(base + ["--directions", "gradient", "gradient", "--out", str(tmp_path / "e")]) == 2


def test_persistence_counts_two_basins_and_their_saddle():
    a, b = np.meshgrid(np.linspace(-2, 2, 41), np.linspace(-1, 1, 21), indexing="ij")
    z = (a ** 2 - 1) ** 2 + b ** 2 + 0.1 * a  # two wells at a ≈ ±1, the right one higher
    r = persistence(z)
    assert r["basins"] == 2 and r["saddles"] == 1
    p = r["pairs"][0]
    assert p["saddle"] == [20, 10] and p["minimum"][0] > 20  # merges at the origin; the younger basin is a > 0
    assert abs(p["death"] - z[20, 10]) < 1e-12
    bowl = a ** 2 + b ** 2
    assert persistence(bowl)["basins"] == 1 and persistence(bowl)["saddles"] == 0


def test_a_run_directory_from_before_the_layout_change_resumes_without_recomputing(tmp_path, ckpt):
    """lossprobe 0.1 wrote directions.json as a list of direction infos and auto_span.json as a
    list; a rerun reads neither as its own, computes the same directions and spans again, and
    takes every chunk of the grid from the old run."""
    args = ["surface", str(ckpt), "--model", SPEC, "--subset", "60", "--steps", "3", "--directions", "hessian",
            "--span", "auto", "--out", str(tmp_path / "old")]
    assert main(args) == 0
    out = tmp_path / "old"
    before = json.loads((out / "summary.json").read_text())
    (out / "directions.json").write_text(json.dumps(json.loads((out / "directions.json").read_text())["directions"]))
    (out / "auto_span.json").write_text(json.dumps(json.loads((out / "auto_span.json").read_text())["auto_span"]))
    chunks = sorted((out / "grid" / "chunks").glob("chunk_*.npz"))
    stamps = [c.stat().st_mtime_ns for c in chunks]
    assert main(args) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["resumed_chunks"] == len(chunks) == 3
    assert [c.stat().st_mtime_ns for c in chunks] == stamps  # no chunk written again
    assert after["spans"] == before["spans"] and after["center_loss"] == before["center_loss"]
    assert isinstance(json.loads((out / "directions.json").read_text()), dict)  # rewritten in the new form

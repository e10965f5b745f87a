"""`lossprobe hessian` and `lossprobe sharpness` on a tiny checkpoint."""

import json

import pytest

from lossprobe.cli import main
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def ckpt(tmp_path):
    p = tmp_path / "m.safetensors"
    save_checkpoint(build("mlp:784-8-10", seed=0), p)
    return p


def test_hessian_cli_summary(tmp_path, ckpt):
    out = tmp_path / "h"
    rc = main(["hessian", str(ckpt), "--model", "mlp:784-8-10", "--data", "fashion-mnist:test", "--subset", "100",
               "--top-k", "3", "--trace", "--trace-products", "12", "--density", "--probes", "2", "--steps", "10",
               "--batch-size", "40", "--graph-budget", "50K", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    ev = s["eigenvalues"]
    assert len(ev) == 3 and ev == sorted(ev, reverse=True)
    assert len(s["residuals"]) == 3 and max(s["residuals"]) < 1e-3 * abs(ev[0])
    assert "trace" in s and s["trace_stderr"] >= 0 and s["layer_traces"]
    assert abs(s["density"]["integral"] - 1) < 1e-3
    assert (out / "eigenvectors.safetensors").is_file() and (out / "figures" / "spectral_density.png").is_file()


def test_sharpness_cli_and_bad_input(tmp_path, ckpt, capsys):
    out = tmp_path / "s"
    rc = main(["sharpness", str(ckpt), "--model", "mlp:784-8-10", "--subset", "100", "--measures", "sam", "noise",
               "critical", "--sigmas", "0.1,0.5", "--draws", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["noise"]["sigmas"] == [0.1, 0.5] and s["sam"]["rise"] >= 0
    assert s["critical"]["kind"] in ("minimum", "maximum", "saddle", "degenerate", "not critical")
    assert main(["sharpness", str(ckpt), "--model", "mlp:784-16-10", "--out", str(tmp_path / "bad")]) == 2
    assert "different architecture" in capsys.readouterr().err
    assert main(["hessian", str(tmp_path / "missing.safetensors"), "--model", "mlp:784-8-10",
                 "--out", str(tmp_path / "bad2")]) == 2
    assert main(["hessian", str(ckpt), "--model", "mlp:784-8-10", "--subset", "100", "--graph-budget", "lots",
                 "--out", str(tmp_path / "bad3")]) == 2
    assert "memory size 'lots' not understood" in capsys.readouterr().err


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "efisher", "kfac"])
def test_hessian_cli_curvature_choice(tmp_path, ckpt, curvature):
    out = tmp_path / curvature
    rc = main(["hessian", str(ckpt), "--model", "mlp:784-8-10", "--subset", "60", "--top-k", "2", "--trace",
               "--trace-products", "9", "--curvature", curvature, "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["curvature"] == curvature and min(s["eigenvalues"]) > -1e-5  # positive semi-definite
    assert max(s["residuals"]) < 1e-3 * s["eigenvalues"][0] and s["trace"] > 0
    if curvature == "fisher":
        assert s["curvature_options"] == {"mc_samples": 1, "seed": 0}
    assert "# " + {"ggn": "GGN", "fisher": "Fisher", "efisher": "Empirical Fisher", "kfac": "K-FAC"}[curvature] \
        in (out / "report.md").read_text()


def test_hessian_cli_basis_on_disk_and_memory_budget(tmp_path, ckpt, capsys):
    """--basis disk gives the in-memory basis' eigenvalues; --memory too small is one line before any work."""
    common = [str(ckpt), "--model", "mlp:784-8-10", "--subset", "100", "--top-k", "2", "--tol", "1e-8"]
    for basis in ("memory", "disk"):
        assert main(["hessian", *common, "--basis", basis, "--out", str(tmp_path / basis)]) == 0
    ev = [json.loads((tmp_path / b / "summary.json").read_text())["eigenvalues"] for b in ("memory", "disk")]
    assert ev[0] == pytest.approx(ev[1], rel=1e-6)
    capsys.readouterr()
    assert main(["hessian", *common, "--memory", "2K", "--out", str(tmp_path / "tiny")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs" in err[0] and "--memory" in err[0], err

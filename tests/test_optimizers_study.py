"""`lossprobe study optimizers` from the command line: spiral and toy, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest

from lossprobe.cli import main

SMALL = """
optimizers = ["sgd", "adam"]
steps = 100
every = 10
n_points = 50
grid = 7
basin_seeds = [0, 1]
variants = ["base", "l2", "wide"]
hessian_checkpoints = 3
threshold = 0.65
"""


@pytest.fixture(scope="module")
def spiral_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("opt")
    cfg = d / "small.toml"
    cfg.write_text(SMALL)
    out = d / "spiral"
    p = subprocess.run([sys.executable, "-m", "lossprobe", "study", "optimizers", "--quick", "--config", str(cfg),
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 0, p.stderr
    return out, p.stdout


def test_spiral_study_from_the_cli(spiral_run):
    out, stdout = spiral_run
    s = json.loads((out / "summary.json").read_text())
    assert set(s["optimizers"]) == {"sgd", "adam"}
    for r in s["optimizers"].values():
        assert 0 < r["final_loss"] < 1 and 0 <= r["final_accuracy"] <= 1
        assert r["steps_to_threshold"] is None or 0 <= r["steps_to_threshold"] <= 100
        assert r["hessian"]["max_final"] >= r["hessian"]["min_final"]
    assert s["threshold"] == 0.65
    for key in ("pca-shared", "pca-sgd", "random-adam", "variant-wide-random", "pca-seeds"):
        r = s["surfaces"][key]["roughness"]
        assert 0 <= r["positive_curvature_share"] <= 1 and r["mean_abs_smooth_diff"] >= 0
    # the own-PCA planes hold the paths closely: near points, small mismatch
    pm = s["projection_match"]["pca-own"]
    assert pm["n_near"] > 0 and pm["median_abs_diff_near"] < 0.05
    assert s["basins"]["pairs"]["0-1"]["loss_barrier_train"] is not None
    assert set(s["variants"]) == {"base", "l2", "wide"} and s["variants"]["wide"]["params"] > s["variants"]["base"]["params"]
    report = (out / "report.md").read_text()
    assert "Does the picture show the loss the optimiser had?" in report and "| sgd |" in report
    for fig in ("paths_pca_shared", "paths_own_planes", "fidelity_random", "variants", "hessian_along_training"):
        assert (out / "figures" / f"{fig}.png").is_file()
    rows = (out / "fidelity" / "pca-shared__sgd.csv").read_text().splitlines()
    assert rows[0].startswith("step,x,y,true_loss,surface_loss") and len(rows) == 12  # header + 11 snapshots
    assert "sgd" in stdout and "report.md" in stdout


def test_rerun_resumes_without_recomputing(spiral_run, tmp_path):
    out, _ = spiral_run
    before = json.loads((out / "summary.json").read_text())
    stamp = (out / "train-sgd.npz").stat().st_mtime_ns
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    assert main(["study", "optimizers", "--quick", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "train-sgd.npz").stat().st_mtime_ns == stamp
    after = json.loads((out / "summary.json").read_text())
    assert after["optimizers"] == before["optimizers"]


def test_toy_study(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["study", "optimizers", "--dataset", "toy:himmelblau", "--quick", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["optimizers"]) == {"gd", "sgd", "momentum", "nesterov", "rmsprop", "adam", "annealing", "grid"}
    assert s["critical_point_counts"] == {"minimum": 4, "saddle": 4, "maximum": 1}
    assert s["optimizers"]["gd"]["final_accuracy"] is None
    assert s["optimizers"]["grid"]["final_loss"] < 1e-2
    assert "roughness" in s["surfaces"]["himmelblau"]
    assert (out / "figures" / "toy_paths.png").is_file()
    assert "gd" in capsys.readouterr().out


@pytest.mark.parametrize("args, expect", [
    (["--dataset", "toy:nope"], "unknown toy function 'nope'"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--optimizers", "annealing"], "optimizer 'annealing' is not available for spiral"),
    (["--lr", "adam"], "must look like NAME=LR"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, expect):
    code = main(["study", "optimizers", "--quick", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("lossprobe: error:") and len(err.splitlines()) == 1 and expect in err, err


def test_spiral_summary_follows_from_its_arrays(spiral_run):
    """Final losses, thresholds, Hessian extremes and basin barriers in summary.json are those of
    the arrays the stages saved; plane surfaces declare rows = y, columns = x."""
    import numpy as np

    from lossprobe.connectivity.paths import error_barrier, loss_barrier
    from lossprobe.results.store import plots_of

    out, _ = spiral_run
    s = json.loads((out / "summary.json").read_text())
    for o, r in s["optimizers"].items():
        a = np.load(out / f"train-{o}.npz")
        assert r["final_loss"] == float(a["loss"][-1]) and r["final_accuracy"] == float(a["accuracy"][-1])
        below = np.flatnonzero(a["loss"] < s["threshold"])
        assert r["steps_to_threshold"] == (int(a["steps"][below[0]]) if len(below) else None)
        h = np.load(out / "hessian.npz")
        assert r["hessian"]["min_final"] == float(h[f"{o}_min"][-1]) and r["hessian"]["max_final"] == float(h[f"{o}_max"][-1])
        assert [p.x for p in plots_of(dict(a))] == ["steps", "steps"]
    b = dict(np.load(out / "basins.npz"))
    pair = s["basins"]["pairs"]["0-1"]
    assert pair["loss_barrier_test"] == loss_barrier(b["pair0-1_alphas"], b["pair0-1_loss_test"])
    assert pair["error_barrier_train"] == error_barrier(b["pair0-1_alphas"], 1 - b["pair0-1_accuracy_train"])
    plane = dict(np.load(out / "plane-pca-shared.npz"))
    (loss_plot, _) = [p for p in plots_of(plane) if p.kind == "surface"]
    assert (loss_plot.z, loss_plot.rows, loss_plot.cols) == ("surface_loss", "surface_ys", "surface_xs")
    assert plane["surface_loss"].shape == (len(plane["surface_ys"]), len(plane["surface_xs"]))
    assert loss_plot.ylabel.startswith("y") and loss_plot.xlabel.startswith("x")

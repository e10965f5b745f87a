"""`lossprobe study edge-of-stability` and `lossprobe study stability` at toy sizes from the command
line, resumed, and drawn on the report site."""

import json

import pytest

from conftest import needs_fashion
from lossprobe.cli import main

EOS = """
model = "mlp:784-16-10:tanh"
n_train = 64
steps = 30
every = 10
step_sizes = [0.5, 2.0]
adam_lrs = [0.01]
"""

STAB = """
train_subset = 512
eval_subset = 256
barrier_train_subset = 256
epochs = 2
spawn_steps = [0, 2]
spawn_epochs = [1]
barrier_points = 5
track_every = 2
track_probe = 64
model = "mlp:784-16-10"
"""


@needs_fashion
def test_edge_of_stability_study(tmp_path, capsys):
    cfg = tmp_path / "eos.toml"
    cfg.write_text(EOS)
    out = tmp_path / "eos"
    assert main(["study", "edge-of-stability", "--config", str(cfg), "--out", str(out), "--no-site"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["runs"]) == 2 * 2 + 2 * 1
    for name, r in s["runs"].items():
        assert r["measurements"] == 4 or r["diverged_at"] is not None, name
        assert r["threshold"] > 0
        if r["diverged_at"] is None:
            assert r["sharpness_over_threshold_last_third"] > 0
    assert s["runs"]["gd-mse-0"]["threshold"] == pytest.approx(2 / 0.5)
    assert s["runs"]["adam-ce-0"]["threshold"] == pytest.approx(38 / 0.01)
    report = (out / "report.md").read_text()
    assert "| gd-mse-0 |" in report and "Cohen et al." in report
    for f in ("sharpness_gd_mse", "sharpness_adam_ce"):
        assert (out / "figures" / f"{f}.png").is_file()
    # rerunning resumes every finished run and gives the same summary
    capsys.readouterr()
    assert main(["study", "edge-of-stability", "--config", str(cfg), "--out", str(out), "--no-site"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["runs"] == s["runs"]
    # its report-site page: sharpness against step with the 2/η and 38/η lines
    from lossprobe.report.site import build_site

    index = build_site([out], tmp_path / "site")
    page = next((index.parent / "runs").glob("*/index.html")).read_text()
    assert "\\u03bb_max of the Hessian" in page or "λ_max of the Hessian" in page
    assert "2/\\u03b7" in page or "2/η" in page
    assert "38/\\u03b7" in page or "38/η" in page


@needs_fashion
def test_stability_study_and_its_report_page(tmp_path):
    cfg = tmp_path / "stab.toml"
    cfg.write_text(STAB)
    out = tmp_path / "stab"
    assert main(["study", "stability", "--config", str(cfg), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["spawn_steps"] == [0, 2, 4]  # 512 images in batches of 128: the end of epoch 1 is step 4
    assert set(s["error_barrier_test"]) == {"0", "2", "4"}
    assert all(0 <= v <= 1 for v in s["error_barrier_test"].values())
    assert s["stable_from_step"]["test"] in (None, 0, 2, 4)
    assert "reference_error_barrier" in s and "Frankle et al." in (out / "report.md").read_text()
    page = next((out / "site" / "runs").glob("*/index.html")).read_text()
    assert "error barrier between two copies spawned at step k" in page
    assert "sharpness along training" in page  # the parent's track


def test_stable_from():
    from lossprobe.studies.stability import stable_from

    assert stable_from([0, 10, 20], [0.05, 0.01, 0.015], 0.02) == 10
    assert stable_from([0, 10, 20], [0.01, 0.05, 0.01], 0.02) == 20
    assert stable_from([0, 10], [0.05, 0.03], 0.02) is None

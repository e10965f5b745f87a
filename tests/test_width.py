"""`lossprobe study width` on tiny settings: summary, figure, report, resume."""

import numpy as np
import pytest

from conftest import finished_stages, needs_fashion


@needs_fashion
def test_width_study_tiny(tmp_path):
    from lossprobe.studies.width import STUDY, WidthConfig, run

    cfg = WidthConfig(widths=[4, 8], pairs=1, epochs=1, train_subset=300, eval_subset=200, calib_subset=100, alphas=3)
    s = run(tmp_path / "w", cfg, progress=False)
    assert s["pairs_per_width"] == 1 and s["widths"] == [4, 8]
    for m in ("naive", "aligned", "aligned_repair"):
        assert len(s["error_barrier_test_mean"][m]) == 2
    assert len(s["pattern"]["claims"]) == 4
    assert (tmp_path / "w" / "figures" / "barrier_vs_width.png").is_file()
    assert "published pattern" in (tmp_path / "w" / "report.md").read_text()
    stamps = finished_stages(STUDY, cfg, tmp_path / "w")
    assert len(stamps) == 2  # a stage per width
    again = run(tmp_path / "w", cfg, progress=False)  # resumes: every pair is loaded, not retrained
    assert finished_stages(STUDY, cfg, tmp_path / "w") == stamps
    for m in ("naive", "aligned", "aligned_repair"):
        np.testing.assert_array_equal(again["error_barrier_test_mean"][m], s["error_barrier_test_mean"][m])


@needs_fashion
def test_width_study_claims_follow_from_its_arrays(tmp_path):
    """The summary's numbers and yes/no claims are what its saved arrays say."""
    import json

    from lossprobe.studies.width import WidthConfig, run

    cfg = WidthConfig(widths=[4, 8], pairs=2, epochs=1, train_subset=300, eval_subset=200, calib_subset=100, alphas=3)
    run(tmp_path / "w", cfg, progress=False)
    s = json.loads((tmp_path / "w" / "summary.json").read_text())
    a = np.load(tmp_path / "w" / "width.npz")
    assert a["widths"].tolist() == [4, 8] and a["naive_error_barrier_test"].shape == (2, 2)  # [width, pair]
    err = {m: a[f"{m}_error_barrier_test"].mean(1) for m in ("naive", "aligned", "aligned_repair")}
    mid = {m: a[f"{m}_midpoint_accuracy_test"].mean(1) for m in ("naive", "aligned", "aligned_repair")}
    for m in err:
        np.testing.assert_allclose(s["error_barrier_test_mean"][m], err[m], rtol=1e-12)
        np.testing.assert_allclose(s["midpoint_test_accuracy_mean"][m], mid[m], rtol=1e-12)
    np.testing.assert_allclose(s["endpoint_test_accuracy_mean"], a["endpoint_accuracy_test"].mean(1), rtol=1e-12)
    seen = {c["claim"]: c["seen"] for c in s["pattern"]["claims"]}
    assert seen["the naive midpoint is near chance (< 20% test accuracy)"] == bool(np.all(mid["naive"] < 0.2))
    assert seen["alignment lowers the error barrier at every width"] == bool(np.all(err["aligned"] < err["naive"]))
    assert seen["REPAIR lowers it further at every width"] == bool(np.all(err["aligned_repair"] <= err["aligned"]))
    assert seen["the aligned barrier shrinks with width"] == bool(err["aligned"][1] < err["aligned"][0])
    assert s["pattern"]["all_seen"] == all(seen.values())
    # each pair's barriers are the barriers of its saved test loss curves
    from lossprobe.connectivity.paths import loss_barrier

    p = json.loads((tmp_path / "w" / "pairs" / "w8_p1.json").read_text())
    for m in ("naive", "aligned", "aligned_repair"):
        assert p["loss_barrier"][m]["test"] == pytest.approx(loss_barrier(p["alphas"], p["loss_test"][m]), abs=1e-12)
        assert a[f"{m}_loss_barrier_test"][1, 1] == p["loss_barrier"][m]["test"]
    # the means over pairs are declared as line plots against width
    from lossprobe.results.store import plots_of

    plots = plots_of(dict(np.load(tmp_path / "w" / "width_mean.npz")))
    assert plots and all(pl.x == "widths" and pl.log_x for pl in plots)

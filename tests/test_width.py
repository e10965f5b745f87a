"""`lossprobe study width` on tiny settings: summary, figure, report, resume."""

import numpy as np

from conftest import needs_fashion


@needs_fashion
def test_width_study_tiny(tmp_path):
    from lossprobe.studies.width import WidthConfig, run

    cfg = WidthConfig(widths=[4, 8], pairs=1, epochs=1, train_subset=300, eval_subset=200, calib_subset=100, alphas=3)
    s = run(tmp_path / "w", cfg, progress=False)
    assert s["pairs_per_width"] == 1 and s["widths"] == [4, 8]
    for m in ("naive", "aligned", "aligned_repair"):
        assert len(s["error_barrier_test_mean"][m]) == 2
    assert len(s["pattern"]["claims"]) == 4
    assert (tmp_path / "w" / "figures" / "barrier_vs_width.png").is_file()
    assert "published pattern" in (tmp_path / "w" / "report.md").read_text()
    again = run(tmp_path / "w", cfg, progress=False)  # resumes: every pair is loaded, not retrained
    for m in ("naive", "aligned", "aligned_repair"):
        np.testing.assert_array_equal(again["error_barrier_test_mean"][m], s["error_barrier_test_mean"][m])

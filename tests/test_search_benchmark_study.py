"""The search-benchmark study on a prebuilt synthetic table: stages, summary keys, the default
method recorded in summary.json, report, resume."""

import json

import pytest

from lossprobe.search.methods import DEFAULT_METHOD, METHODS
from lossprobe.studies.search_benchmark import QUICK, STUDY, SearchBenchmarkConfig, _table, run

from conftest import finished_stages
from search_fake import write_fake_table


def test_study_on_a_cached_table(tmp_path):
    cfg = SearchBenchmarkConfig(**{**QUICK, "seeds": 4, "feature_seeds": 3, "table_dir": str(tmp_path / "tables")})
    tcfg, space = _table(cfg, "mlp")
    write_fake_table(tmp_path / "tables" / "mlp", tcfg)
    s = run(tmp_path / "out", cfg, progress=False)
    t = s["tables"]["mlp"]
    assert t["size"] == tcfg.size and set(t["spearman"]) == set(tcfg.keys())
    rep = t["replay"]["seconds"]["methods"]
    assert set(rep) == set(METHODS) and set(t["replay"]) == {"seconds", "epochs"}
    for m, r in rep.items():
        for q in ("0.25", "0.5", "1"):
            mean, lo, hi = r["regret_at"][q]
            assert lo <= mean + 1e-12 and mean <= hi + 1e-12
        assert r["regret_at"]["1"][0] <= r["regret_at"]["0.25"][0] + 1e-12  # regret never rises with budget
        assert 0 <= r["time_to_target"]["success_rate"] <= 1
    # the default method is the measured minimum of the stated criterion, and says whether the code agrees
    d = s["default_method"]
    assert d["measured"] == min(d["scores"], key=d["scores"].get)
    assert d["in_code"] == DEFAULT_METHOD and d["agrees"] == (d["measured"] == DEFAULT_METHOD)
    crit = sum(rep[d["measured"]]["regret_at"][q][0] for q in ("0.25", "0.5", "1")) / 3
    assert abs(crit - d["scores"][d["measured"]]) < 1e-12
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["default_method"]["measured"] == d["measured"]
    f = t["features"]
    assert set(f["pays"]) == {"grad_norm", "sharpness", "hessian"} and f["cost"]["hessian"]["median_seconds"] == 0.1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Default method (measured)" in report and "| mf |" in report and "pays for itself" in report
    assert (tmp_path / "out" / "figures" / "regret_vs_seconds_mlp.png").is_file()
    # the regret at the full budget is the mean over seeds of the end of each saved regret curve
    import numpy as np

    from lossprobe.results.store import plots_of

    for m, r in rep.items():
        a = dict(np.load(tmp_path / "out" / f"replay-mlp-seconds-{m}.npz"))
        assert a["curves"].shape == (4, len(a["cost"])) and a["cost"][-1] == t["budget_seconds"]
        assert r["regret_at"]["1"][0] == pytest.approx(a["curves"][:, -1].mean(), abs=1e-12)
        assert np.array_equal(a["mean_regret"], a["curves"].mean(0)) and plots_of(a)[0].x == "cost"
    # rerun resumes: nothing is recomputed, same numbers
    # (the replay stage runs every time but reuses each method's saved replay, so those files stay too)
    replays = lambda: {f.name: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("replay-*")}  # noqa: E731
    stamps, replayed = finished_stages(STUDY, cfg, tmp_path / "out"), replays()
    assert set(stamps) == {"correlations-mlp", "features-mlp"} and len(replayed) == 2 * 2 * len(METHODS)
    s2 = run(tmp_path / "out", cfg, progress=False)
    assert finished_stages(STUDY, cfg, tmp_path / "out") == stamps and replays() == replayed
    assert s2["tables"]["mlp"]["replay"] == s["tables"]["mlp"]["replay"]

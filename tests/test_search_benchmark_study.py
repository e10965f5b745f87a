"""The search-benchmark study on a prebuilt synthetic table: stages, summary keys, report."""

import json
import math
from dataclasses import asdict

import numpy as np

from lossprobe.search.probes import feature_names
from lossprobe.search.table import TableConfig, fidelity_key, sample_configs
from lossprobe.store import write_json
from lossprobe.studies.search_benchmark import QUICK, SearchBenchmarkConfig, _space, run


def test_study_on_a_cached_table(tmp_path):
    cfg = SearchBenchmarkConfig(**{**QUICK, "seeds": 2, "table_dir": str(tmp_path / "table")})
    space = _space(cfg)
    tcfg = TableConfig(space=space.to_dict(), size=cfg.size, n_repeat=cfg.n_repeat,
                       fidelities=[[float(f), int(e)] for f, e in cfg.fidelities], n_train=cfg.n_train,
                       n_val=cfg.n_val, data_seed=cfg.data_seed)
    (tmp_path / "table" / "rows").mkdir(parents=True)
    write_json(tmp_path / "table" / "table_config.json", asdict(tcfg))
    rng = np.random.default_rng(0)
    for i, v in enumerate(sample_configs(space, cfg.size, 0)):  # a fake table: accuracy follows log lr
        q = float(np.clip(0.85 - 0.05 * (math.log10(v["lr"]) + 2.5) ** 2, 0.1, 0.9))
        curve = [0.1] + [0.1 + (q - 0.1) * e / space.epochs for e in range(1, space.epochs + 1)]
        probes = {}
        for f, e in cfg.fidelities:
            feats = {k: float(rng.normal()) for k in feature_names(space)}
            feats.update(space.encode(v), val_acc=q - 0.2 + 0.02 * rng.normal())
            probes[fidelity_key(f, e)] = {"features": feats, "cost": f * e, "seconds": 0.1}
        row = {"id": i, "values": v, "full": {"val_accuracy": curve[-1], "val_curve": curve, "train_curve": curve,
                                              "seconds": 1.0}, "probes": probes}
        if i < cfg.n_repeat:
            row["repeat"] = {"val_accuracy": curve[-1] + 0.003 * rng.normal(), "val_curve": curve}
        write_json(tmp_path / "table" / "rows" / f"{i:05d}.json", row)
    s = run(tmp_path / "out", cfg, progress=False)
    for k in ("spearman", "regret_at_budget", "budget_to_regret", "table_size", "noise_ceiling", "verdict"):
        assert k in s
    assert s["table_size"] == cfg.size
    assert set(s["spearman"]) == {fidelity_key(f, e) for f, e in cfg.fidelities}
    assert set(s["regret_at_budget"]) >= {"probe", "probe-no-sharpness", "random", "tpe", "sh", "hyperband"}
    mean, lo, hi = s["regret_at_budget"]["random"]  # mean and 95% interval
    assert lo <= mean <= hi
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["table_size"] == cfg.size
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Verdict" in report and "| probe |" in report
    assert (tmp_path / "out" / "figures" / "regret_vs_budget.png").is_file()
    # rerun resumes: nothing is recomputed, same numbers
    s2 = run(tmp_path / "out", cfg, progress=False)
    assert s2["regret_at_budget"] == s["regret_at_budget"]

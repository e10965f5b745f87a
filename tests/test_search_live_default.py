"""The live default of `lossprobe search` is what the benchmark measured (issue 26): probes are evaluated
on a split carved from the training data, never on the selection split; the budget is a number of
full trainings of measured time; the help says what the default method is."""

import math
import tomllib

import numpy as np
import pytest

import lossprobe.search.engine as engine
import lossprobe.search.probes as probes
from lossprobe.cli import main
from lossprobe.search.engine import LiveOracle, TaskSpec
from lossprobe.search.methods import DEFAULT_METHOD, DEFAULT_METHOD_TEXT, run_method
from lossprobe.search.probes import carve_probe_split, make_task
from lossprobe.search.space import SearchSpace
from lossprobe.search.tune import Budget, budget_of, parse_budget

SPACE = """
[train]
epochs = 2
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 8, high = 32, log = true }
depth = 1
"""


def _watch(monkeypatch):
    """Record the evaluation split of every probe and every full training (by identity)."""
    seen = {"probe": [], "full": []}
    for mod, kind in ((probes, "probe"), (engine, "full")):
        real = mod.fit

        def fit(model, train, val, cfg, *a, real=real, kind=kind, **k):
            seen[kind].append(val)
            return real(model, train, val, cfg, *a, **k)

        monkeypatch.setattr(mod, "fit", fit)
    return seen


def test_fashion_probe_split_is_carved_from_training_data_and_disjoint():
    task = make_task("fashion-mnist", seed=3)
    tr, va, pv = (set(s.indices.tolist()) for s in (task.train, task.val, task.probe_val))
    assert len(pv) == 5000 and len(tr) == 45_000  # 10% of the 50k training images
    assert not (pv & va) and not (pv & tr) and not (tr & va)
    # the same carve as the benchmark's live-default table: of the training images (sorted), a seeded
    # permutation's first 45k are trained on and the rest is the probe split P
    parent = np.array(sorted(tr | pv))
    perm = np.random.default_rng([3, 31]).permutation(50_000)
    assert pv == set(parent[perm[45_000:]].tolist())
    small = carve_probe_split(task.val, 0.25, seed=1)  # any split: disjoint parts, indices of the parent
    assert len(small[1]) == 2500 and not set(small[0].indices.tolist()) & set(small[1].indices.tolist())
    with pytest.raises(Exception, match="probe-split"):
        carve_probe_split(task.train, 1.0)


def test_live_probes_never_evaluate_on_the_selection_split(monkeypatch):
    seen = _watch(monkeypatch)
    space = SearchSpace.from_dict(tomllib.loads(SPACE))
    spec = TaskSpec("spiral", 200, 100, seed=4)
    task = spec.load()
    assert task.probe_val is not None and task.probe_val is not task.val
    oracle = LiveOracle(space, spec, "sqlite:///:memory:", fraction=0.25, probe_epochs=1, axis="seconds",
                        budget_trainings=2)
    trace = run_method(DEFAULT_METHOD, oracle, seed=0)
    assert trace.t and seen["probe"] and seen["full"]
    assert all(v is task.probe_val for v in seen["probe"])  # every probe: the probe split
    assert all(v is task.val for v in seen["full"])  # every full training: the selection split
    # the budget: 3 × the median measured time of the full trainings finished
    assert oracle.full_seconds and oracle.clock.budget == pytest.approx(2 * float(np.median(oracle.full_seconds)))
    assert oracle.clock.spent >= oracle.clock.budget - 1e-9
    assert set(oracle.clock.by_kind) <= {"probe", "train", "meta"}


def test_cli_default_budget_method_and_probe_split(tmp_path, monkeypatch, capsys):
    seen = _watch(monkeypatch)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "run"
    assert main(["search", "--space", str(space), "--dataset", "spiral", "--fraction", "0.25", "--budget", "2x",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"with '{DEFAULT_METHOD}' (default)" in text and "2 full trainings of measured time" in text
    assert "probe images" in text and "evaluated on the probe split" in text
    task = TaskSpec("spiral", None, None, 0).load()
    assert seen["probe"] and all(v is task.probe_val for v in seen["probe"])
    # the budget forms
    assert parse_budget("20x") == (20.0, "trainings") and parse_budget("15m") == (900.0, "seconds")
    assert budget_of(None, 6, 0.1, 1) == Budget(20.0, "trainings")
    assert budget_of("20x", 6, 0.1, 1).oracle_kwargs() == {"axis": "seconds", "budget": math.inf,
                                                            "budget_trainings": 20.0}
    with pytest.raises(Exception, match="less than one full training"):
        budget_of("0.5x", 6, 0.1, 1)


def test_help_says_what_the_default_method_is(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert DEFAULT_METHOD in text and " ".join(DEFAULT_METHOD_TEXT.split()) in text

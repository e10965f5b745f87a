"""Live search on Optuna storage: resume after a kill loses no finished trial; the Ray backend works;
the test set is read once, after selection."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from lossprobe.cli import main

SPACE = """
[train]
epochs = 2
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 8, high = 32, log = true }
optimizer = { type = "categorical", choices = ["sgd", "adam"] }
depth = 1
"""
ARGS = ["--dataset", "spiral", "--budget", "9", "--init-probes", "4", "--probes-per-round", "2", "--init-full", "2",
        "--fraction", "0.25", "--probe-epochs", "1", "--meta", "rf"]


def _complete_full_trials(db) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            (n,) = con.execute("SELECT count(*) FROM trials JOIN studies USING (study_id) "
                               "WHERE studies.study_name = 'search-full' AND trials.state = 'COMPLETE'").fetchone()
        return n
    except sqlite3.Error:  # not created yet, or locked by the writer for a moment
        return 0


def _trials(db):
    out = {}
    for name in ("search-probes", "search-full"):
        try:
            st = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        except KeyError:
            out[name] = {}
            continue
        out[name] = {t.user_attrs["candidate"]: (t.params, t.value) for t in st.trials if t.state.name == "COMPLETE"}
    return out


def test_killed_search_resumes_without_losing_finished_trials(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "run"
    db = out / "search.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lossprobe", "search", "--space", str(space), *ARGS,
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # kill once some, not all, of the work is finished
            # a plain SQLite count, not Optuna: on a loaded machine loading the studies took long
            # enough for the search to finish before the kill
            if db.is_file() and _complete_full_trials(db) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"search ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = _trials(db)
    assert len(before["search-probes"]) >= 4 and len(before["search-full"]) >= 1
    assert not (out / "chosen.json").exists()
    assert main(["search", "--space", str(space), *ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"resuming: {len(before['search-probes'])} probes" in printed
    after = _trials(db)
    for study, trials in before.items():
        for cand, (params, value) in trials.items():
            assert after[study][cand] == (params, value)  # kept, not redone or changed
    # the kill may come after the last full training (budget 9 allows two): then nothing is left to train
    assert len(after["search-full"]) >= len(before["search-full"])
    import json

    chosen = json.loads((out / "chosen.json").read_text())
    assert 0 <= chosen["test_accuracy"] <= 1 and chosen["candidate"] in after["search-full"]
    assert (out / "figures" / "search_progress.png").is_file()
    # a finished search does not read the test set again
    assert main(["search", "--space", str(space), *ARGS, "--out", str(out)]) == 0
    assert "not read again" in capsys.readouterr().out


def test_selection_never_reads_the_test_set():
    from lossprobe.search.engine import LiveOracle, TaskSpec
    from lossprobe.search.loop import LoopConfig, probe_search
    from lossprobe.search.space import SearchSpace
    import tomllib

    space = SearchSpace.from_dict(tomllib.loads(SPACE))
    spec = TaskSpec("spiral", 200, 100, seed=5)
    oracle = LiveOracle(space, spec, "sqlite:///:memory:", fraction=0.25, probe_epochs=1)
    sealed = spec.load().test
    seen = []
    res = probe_search(oracle, LoopConfig(budget=7, init_probes=3, probes_per_round=2, init_full=1, meta="rf"),
                       on_event=lambda e, r: seen.append(sealed.touched), final_test=oracle.test_accuracy)
    assert seen and not any(seen)  # sealed during every step of selection (reading it would have raised)
    assert sealed.accesses == [f"final evaluation of candidate {res.chosen}"]
    # asked again, the oracle gives the number recorded in the storage and never reopens the test set
    assert oracle.test_accuracy(res.chosen) == res.test_accuracy
    assert oracle.fulls.user_attrs["final_test"]["test_accuracy"] == res.test_accuracy
    assert len(sealed.accesses) == 1
    with pytest.raises(RuntimeError, match="already used"):
        sealed.open("a second look")


def test_ray_backend_tiny_search(tmp_path):
    ray = pytest.importorskip("ray")
    from lossprobe.search.engine import Executor, LiveOracle, TaskSpec
    from lossprobe.search.loop import LoopConfig, probe_search
    from lossprobe.search.space import SearchSpace
    import tomllib

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        space = SearchSpace.from_dict(tomllib.loads(SPACE))
        spec = TaskSpec("spiral", 200, 100, seed=1)
        oracle = LiveOracle(space, spec, f"sqlite:///{tmp_path / 'ray.db'}", fraction=0.25, probe_epochs=1,
                            executor=Executor("ray"))
        res = probe_search(oracle, LoopConfig(budget=5, init_probes=3, probes_per_round=2, init_full=1, meta="rf"))
        assert 0 < res.chosen_val_accuracy <= 1
        t = _trials(tmp_path / "ray.db")
        assert len(t["search-probes"]) >= 3 and len(t["search-full"]) >= 1
    finally:
        ray.shutdown()


def test_claims_one_winner_and_dead_owners_are_taken_over(tmp_path):
    from lossprobe.search.claims import Claims

    url = f"sqlite:///{tmp_path / 'c.db'}"
    a, b = Claims(url, "s"), Claims(url, "s")
    assert a.claim("probe", 1) and not b.claim("probe", 1)  # one winner
    assert a.claim("probe", 1)  # its own claim, still running
    assert a.claim("test", 1)
    a.done("test", 1, {"test_accuracy": 0.5})
    state, value, owner = b.status("test", 1)
    assert (state, value, owner) == ("done", {"test_accuracy": 0.5}, a.owner)
    assert not b.claim("test", 1)  # done work is never redone
    a.release()  # gives up the unfinished probe claim at once
    assert b.claim("probe", 1)
    code = (f"from lossprobe.search.claims import Claims; c = Claims({url!r}, 's'); print(c.claim('full', 7))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True"  # that process died holding the claim ...
    assert b.claim("full", 7)  # ... so it is taken over at once, on the same machine
    del a, b
    import gc

    gc.collect()
    c = Claims(url, "s")  # a forgotten, unreleased Claims of this very process does not block either
    assert c.claim("probe", 1) and c.claim("full", 7)
    c.release()


def test_default_method_never_reads_the_test_set_before_the_end():
    from lossprobe.search.engine import LiveOracle, TaskSpec
    from lossprobe.search.methods import DEFAULT_METHOD, run_method
    from lossprobe.search.space import SearchSpace
    import tomllib

    space = SearchSpace.from_dict(tomllib.loads(SPACE))
    spec = TaskSpec("spiral", 200, 100, seed=6)
    seen = []
    oracle = LiveOracle(space, spec, "sqlite:///:memory:", fraction=0.25, probe_epochs=1, budget=8,
                        on_job=lambda e: seen.append(spec.load().test.touched))
    sealed = spec.load().test
    trace = run_method(DEFAULT_METHOD, oracle, seed=0)
    assert seen and not any(seen) and oracle.clock.spent <= 8 + 1e-9
    acc = oracle.test_accuracy(trace.chosen)
    assert 0 <= acc <= 1 and sealed.accesses == [f"final evaluation of candidate {trace.chosen}"]
    assert oracle.test_accuracy(trace.chosen) == acc  # recorded in the storage: the test set is not opened again
    assert len(sealed.accesses) == 1

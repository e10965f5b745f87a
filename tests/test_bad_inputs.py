"""Bad input that was once accepted silently, answered with a misleading line or a traceback:
each is now one line saying what is wrong (benchmarks/bad_inputs.py runs a census of many more).
Also: two search workers sharing one storage, and an unreachable Ray cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from lossprobe.runtime import config as config_mod
from lossprobe.cli import main
from lossprobe.errors import UserError
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

M = ["--model", "mlp:2-8-2", "--data", "spiral:test"]
SPACE = """
[train]
epochs = 1
[params]
lr = { type = "float", low = 3e-3, high = 0.1, log = true }
width = { type = "int", low = 4, high = 8 }
depth = 1
"""
SEARCH = ["--dataset", "spiral", "--method", "probe", "--budget", "3", "--init-probes", "2", "--probes-per-round", "1", "--init-full", "1",
          "--fraction", "0.5", "--probe-epochs", "1", "--meta", "rf"]


@pytest.fixture
def ck(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    save_checkpoint(build("mlp:2-8-2", seed=0), d / "a.safetensors")
    save_checkpoint(build("mlp:2-8-2", seed=1), d / "b.safetensors")
    m = build("mlp:2-8-2", seed=0)
    with torch.no_grad():
        next(m.parameters())[0, 0] = float("nan")
    save_checkpoint(m, d / "nan.safetensors")
    m = build("mlp:2-8-2", seed=2)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1e25)  # finite weights, outputs overflow float32
    save_checkpoint(m, d / "huge.safetensors")
    (d / "folder.safetensors").mkdir()
    (d / "space.toml").write_text(SPACE)
    return d


def lp(argv: list[str]) -> int:
    """The CLI's exit status (argparse's mistakes exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def one_line(capsys, rc, *expect, code=2):
    err = capsys.readouterr().err.strip()
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lossprobe: error:"), err
    for e in expect:
        assert e in err, err
    return err


def test_kappa_and_other_floats_must_be_finite(ck, tmp_path, capsys):
    for bad in ("nan", "inf", "-inf"):
        rc = lp(["search", "--space", str(ck / "space.toml"), *SEARCH, f"--kappa={bad}", "--out", str(tmp_path / "o")])
        one_line(capsys, rc, "--kappa", "finite")
    one_line(capsys, lp(["sharpness", str(ck / "a.safetensors"), *M, "--epsilon", "inf", "--out", str(tmp_path / "s")]),
             "--epsilon", "finite")
    one_line(capsys, lp(["surface", str(ck / "a.safetensors"), *M, "--span", "nan", "1", "--out", str(tmp_path / "u")]),
             "--span", "finite")
    for bad in ("inf", "nan", "infm"):
        rc = lp(["search", "--space", str(ck / "space.toml"), *SEARCH, "--budget", bad, "--out", str(tmp_path / "b")])
        one_line(capsys, rc, "--budget")
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_the_command_line_under_torchrun_says_it_runs_in_one_process(ck, tmp_path, capsys, monkeypatch):
    """torchrun starts the command once per rank: each would write the same --out (the second found it
    locked and the launcher stopped the first); now every rank says why before touching anything."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "surface"
    rc = lp(["surface", str(ck / "a.safetensors"), *M, "--steps", "3", "--out", str(out)])
    one_line(capsys, rc, "runs in one process", "WORLD_SIZE=2", "docs/large-models.md")
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1 is one process: it runs
    assert lp(["slice", str(ck / "a.safetensors"), *M, "--steps", "3", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()


def test_towards_the_same_checkpoint_is_a_zero_direction(ck, tmp_path, capsys):
    same = ck / "a_again.safetensors"
    same.write_bytes((ck / "a.safetensors").read_bytes())
    for cmd in ("surface", "slice"):
        rc = lp([cmd, str(ck / "a.safetensors"), *M, "--steps", "3", "--towards", str(same), "--out",
                   str(tmp_path / cmd)])
        one_line(capsys, rc, "holds the same weights", "zero")


def test_quick_is_a_preset_that_the_config_file_and_flags_override(tmp_path, capsys):
    from lossprobe.studies.two_seeds import QUICK, TwoSeedsConfig

    f = tmp_path / "c.toml"
    f.write_text("epochs = 3\nalphas = 9\n")
    cfg = config_mod.load(TwoSeedsConfig, f, {"alphas": 13}, presets=QUICK)
    assert (cfg.epochs, cfg.alphas, cfg.train_subset) == (3, 13, QUICK["train_subset"])
    f.write_text("epochs = -3\n")  # once hidden behind --quick's epochs = 1, never validated
    rc = lp(["study", "two-seeds", "--quick", "--config", str(f), "--out", str(tmp_path / "o")])
    one_line(capsys, rc, "epochs must be positive, got -3")
    assert not (tmp_path / "o").exists()


def test_a_non_finite_loss_on_the_line_exits_non_zero_naming_where(ck, tmp_path, capsys):
    from lossprobe.connectivity.paths import non_finite

    rc = lp(["interpolate", str(ck / "a.safetensors"), str(ck / "huge.safetensors"), *M, "--out", str(tmp_path / "i")])
    one_line(capsys, rc, "endpoint B (α = 1)", "huge.safetensors", "nan")
    rc = lp(["interpolate", str(ck / "nan.safetensors"), str(ck / "b.safetensors"), *M, "--out", str(tmp_path / "j")])
    one_line(capsys, rc, "nan.safetensors has 1 non-finite value(s)", "'1.weight'")
    a = np.linspace(-0.5, 1.5, 9)
    assert non_finite(a, np.ones(9)) is None
    assert non_finite(a, np.where(a == 0, np.nan, 1.0)).startswith("the loss at endpoint A (α = 0) is nan")
    inner = non_finite(a, np.where((a > 0.2) & (a < 0.8), np.inf, 1.0))
    assert "α = 0.25, 0.5, 0.75" in inner and "3 of 5 points" in inner
    assert non_finite(a, np.where(a < 0, np.nan, 1.0)) is None  # outside [0, 1]: not part of the barrier


def test_empty_or_damaged_json_is_named(tmp_path):
    from lossprobe.results.store import read_json

    f = tmp_path / "summary.json"
    f.write_text("")
    with pytest.raises(UserError, match=f"{f} is empty"):
        read_json(f)
    f.write_text('{"a": ')
    with pytest.raises(UserError, match=f"{f} is damaged: not valid JSON"):
        read_json(f)
    with pytest.raises(UserError, match="is a folder"):
        read_json(tmp_path)


def test_damaged_derived_files_are_recomputed_on_resume(ck, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["surface", str(ck / "a.safetensors"), *M, "--steps", "3", "--out", str(out)]
    assert main(args) == 0
    want = np.load(out / "surface.npz")["loss"]
    (out / "summary.json").write_text("")
    (out / "status.json").write_text("{")
    chunks = sorted((out / "grid" / "chunks").glob("chunk_*.npz"))
    chunk = chunks[1]
    chunk.write_bytes(chunk.read_bytes()[:30])
    stamps = lambda: [c.stat().st_mtime_ns for c in chunks]  # noqa: E731
    before = stamps()
    assert main(args) == 0
    np.testing.assert_array_equal(np.load(out / "surface.npz")["loss"], want)
    assert json.loads((out / "summary.json").read_text())["resumed_chunks"] == 2
    after = stamps()  # only the damaged chunk was computed (and written) again
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert len(chunks) == 3 and np.load(chunk)["loss"].shape == (3,)


def test_a_folder_given_as_a_checkpoint(ck, tmp_path, capsys):
    rc = lp(["sharpness", str(ck / "folder.safetensors"), *M, "--out", str(tmp_path / "o")])
    one_line(capsys, rc, "is a folder, not a checkpoint file")


def test_sharpness_of_a_nan_model_names_the_checkpoint(ck, tmp_path, capsys):
    rc = lp(["sharpness", str(ck / "nan.safetensors"), *M, "--out", str(tmp_path / "o")])
    one_line(capsys, rc, "nan.safetensors has 1 non-finite value(s)")
    rc = lp(["sharpness", str(ck / "huge.safetensors"), *M, "--measures", "noise", "--out", str(tmp_path / "p")])
    one_line(capsys, rc, "the loss at", "huge.safetensors is nan", "sharpness and surfaces around it are undefined")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_config_that_is_a_folder(tmp_path, capsys):
    rc = lp(["study", "two-seeds", "--config", str(tmp_path), "--out", str(tmp_path / "o")])
    one_line(capsys, rc, f"config file {tmp_path} is a folder, not a TOML file")


@pytest.mark.parametrize("url,expect", [
    ("foo://bar", "SQLAlchemy has no driver for 'foo'"),
    ("garbage", "is not a database URL"),
])
def test_storage_urls_that_cannot_work_are_refused_before_any_output(ck, tmp_path, capsys, url, expect):
    out = tmp_path / "o"
    rc = lp(["search", "--space", str(ck / "space.toml"), *SEARCH, "--storage", url, "--out", str(out)])
    one_line(capsys, rc, expect)
    assert not out.exists()


def test_storage_driver_not_installed(ck, tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    import importlib.util

    if importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2"):
        pytest.skip("a PostgreSQL driver is installed")
    rc = lp(["search", "--space", str(ck / "space.toml"), *SEARCH, "--storage", "postgresql://u@localhost:1/db",
               "--out", str(tmp_path / "o")])
    one_line(capsys, rc, "needs the Python driver", "not installed")


def test_damaged_sqlite_storage(ck, tmp_path, capsys):
    db = tmp_path / "search.db"
    db.write_bytes(b"not a database at all " * 200)
    rc = lp(["search", "--space", str(ck / "space.toml"), *SEARCH, "--storage", f"sqlite:///{db}",
               "--out", str(tmp_path / "o")])
    err = one_line(capsys, rc, f"{db} is damaged (not a valid SQLite database)")
    assert "--force" in err
    assert db.read_bytes() == b"not a database at all " * 200  # the user's file is left as it was


def test_ray_address_parsing():
    from lossprobe.runtime.cluster import _host_port

    assert _host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert _host_port("ray://head:10001") == ("head", 10001)
    assert _host_port("ray://head") == ("head", 10001)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None
    for bad in ("head", "head:port", "ray://:1"):
        with pytest.raises(UserError):
            _host_port(bad)


@pytest.mark.slow
def test_ray_address_that_never_answers_fails_in_time_with_one_line(ck, tmp_path):
    pytest.importorskip("ray")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    threading.Thread(target=lambda: [conns.append(srv.accept()) for _ in range(8)], daemon=True).start()
    port = srv.getsockname()[1]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "lossprobe", "surface", str(ck / "a.safetensors"), *M, "--steps", "3",
                        "--backend", "ray", "--address", f"127.0.0.1:{port}", "--ray-timeout", "4",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    took = time.time() - t0
    srv.close()
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("[", "20"))]  # Ray's own log
    assert p.returncode == 2 and lines[-1].startswith("lossprobe: error:"), p.stderr[-2000:]
    assert f"127.0.0.1:{port}" in lines[-1] and "Traceback" not in p.stderr
    assert "did not answer within 4 s" in lines[-1] or "could not join" in lines[-1], lines[-1]
    assert took < 120 and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_workers_on_one_storage_share_the_work_and_read_the_test_set_once(ck, tmp_path):
    import optuna

    db = tmp_path / "shared.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "lossprobe", "search", "--space", str(ck / "space.toml"), *SEARCH, "--budget", "5",
            "--init-probes", "4", "--storage", f"sqlite:///{db}"]
    procs = [subprocess.Popen([*args, "--out", str(tmp_path / w)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in ("w1", "w2")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
    for name in ("search-probes", "search-full"):
        st = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        cands = [t.user_attrs["candidate"] for t in st.trials]
        assert len(cands) == len(set(cands)) and cands, (name, cands)  # no trial stored twice
    chosen = [json.loads((tmp_path / w / "chosen.json").read_text()) for w in ("w1", "w2")]
    assert chosen[0]["candidate"] == chosen[1]["candidate"]
    assert chosen[0]["test_accuracy"] == chosen[1]["test_accuracy"]
    assert sorted(c["test_evaluated_by_this_worker"] for c in chosen) == [False, True]  # opened once, by one
    full = optuna.load_study(study_name="search-full", storage=f"sqlite:///{db}")
    assert full.user_attrs["final_test"]["test_accuracy"] == chosen[0]["test_accuracy"]
    printed = "".join(o for o, _ in outs)
    assert printed.count("evaluated now; the test set was opened once") == 1

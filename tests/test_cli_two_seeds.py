"""The two-seed study and `lossprobe interpolate` from the command line, and bad input."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_fashion
from lossprobe.cli import main
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint

QUICK = ["study", "two-seeds", "--quick"]


def run_cli(*args):
    """Run the console entry point in a subprocess; return (code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "lossprobe", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line_error(capsys, code, expect):
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("lossprobe: error:") and len(err.splitlines()) == 1, err
    assert expect in err, err


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "two-seeds"
    code, stdout, stderr = run_cli(*QUICK, "--out", str(out))
    assert code == 0, stderr
    return out, stdout


@needs_fashion
def test_study_writes_every_file_and_key(quick_run):
    out, stdout = quick_run
    assert "test accuracy" in stdout and "report.md" in stdout
    for f in ("config.json", "environment.json", "summary.json", "interpolation.npz", "report.md", "status.json",
              "checkpoints/model_seed0.safetensors", "checkpoints/model_seed1.safetensors",
              "history_seed0.json", "history_seed1.json"):
        assert (out / f).is_file(), f
    for fig in ("learning_curves", "interpolation"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000
    s = json.loads((out / "summary.json").read_text())
    assert len(s["test_accuracy"]) == 2 and all(0 <= a <= 1 for a in s["test_accuracy"])
    assert len(s["val_accuracy"]) == 2 and all(0 <= a <= 1 for a in s["val_accuracy"])
    for key in ("loss_barrier", "error_barrier"):
        assert set(s[key]) >= {"train", "test"} and all(isinstance(s[key][k], float) for k in ("train", "test"))
    assert 0.0 in s["alphas"] and 1.0 in s["alphas"]
    assert isinstance(s["verdict"], str) and s["verdict"]
    assert isinstance(s["same_basin"], bool) and isinstance(s["same_basin_up_to_permutation"], bool)
    assert isinstance(s["seconds"], float) and s["seconds"] > 0
    assert s["test_accuracy"][0] > 0.6  # one epoch on 4000 images is far above chance (10%)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "two-seeds" and cfg["epochs"] == 1 and cfg["seeds"] == [0, 1]
    env = json.loads((out / "environment.json").read_text())
    assert env["versions"]["torch"] and env["cpu_count"] and env["seeds"]["init"] == [0, 1]
    arr = np.load(out / "interpolation.npz")
    assert arr["loss_test"].shape == arr["alphas"].shape
    report = (out / "report.md").read_text()
    assert "figures/interpolation.png" in report and s["verdict"] in report
    assert json.loads((out / "status.json").read_text())["complete"] is True


@needs_fashion
def test_rerun_resumes_and_other_config_is_refused(quick_run, capsys):
    out, _ = quick_run
    before = (out / "checkpoints" / "model_seed0.safetensors").stat().st_mtime_ns
    assert main([*QUICK, "--out", str(out)]) == 0
    assert (out / "checkpoints" / "model_seed0.safetensors").stat().st_mtime_ns == before  # not retrained
    capsys.readouterr()
    code = main([*QUICK, "--out", str(out), "--seeds", "3", "4"])
    one_line_error(capsys, code, "--force")


@needs_fashion
def test_interpolate_cli_on_study_checkpoints(quick_run, tmp_path):
    out, _ = quick_run
    code, stdout, stderr = run_cli("interpolate", str(out / "checkpoints/model_seed0.safetensors"),
                                   str(out / "checkpoints/model_seed1.safetensors"), "--model", "mlp:784-256-256-10",
                                   "--data", "fashion-mnist:test", "--subset", "500", "--alphas", "9",
                                   "--out", str(tmp_path / "interp"))
    assert code == 0, stderr
    s = json.loads((tmp_path / "interp" / "summary.json").read_text())
    assert set(s["loss_barrier"]) == {"test"} and len(s["alphas"]) == 9
    assert (tmp_path / "interp" / "figures" / "interpolation.png").is_file()


def test_config_file_validation(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\nlearning_rate = 0.1\n")
    one_line_error(capsys, main([*QUICK, "--out", str(tmp_path / "o"), "--config", str(bad)]), "'learning_rate'")
    bad.write_text('epochs = "two"\n')
    one_line_error(capsys, main([*QUICK, "--out", str(tmp_path / "o"), "--config", str(bad)]), "'epochs' must be an integer")
    one_line_error(capsys, main([*QUICK, "--out", str(tmp_path / "o"), "--config", str(tmp_path / "none.toml")]),
                   "does not exist")


def test_out_dir_with_other_content_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    one_line_error(capsys, main([*QUICK, "--out", str(tmp_path)]), "not empty")
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.fixture
def ckpts(tmp_path):
    a, b = build("mlp:4-8-3", seed=0), build("mlp:4-8-3", seed=1)
    save_checkpoint(a, tmp_path / "a.safetensors")
    save_checkpoint(b, tmp_path / "b.safetensors")
    save_checkpoint(build("mlp:4-9-3"), tmp_path / "other.safetensors")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"w": Boom()}, fh)
    torch.save({"not": "tensors"}, tmp_path / "notstate.pt")
    return tmp_path


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lossprobe-pwned",))


@pytest.mark.parametrize("case,expect", [
    ("missing", "does not exist"),
    ("evil", "could not be loaded safely"),
    ("notstate", "not a state dict"),
    ("other", "different architecture"),
    ("spec", "unknown model spec"),
])
def test_interpolate_bad_input(ckpts, capsys, case, expect):
    a, b, spec = ckpts / "a.safetensors", ckpts / "b.safetensors", "mlp:4-8-3"
    if case == "missing":
        b = ckpts / "nope.safetensors"
    elif case == "evil":
        b = ckpts / "evil.pt"
    elif case == "notstate":
        b = ckpts / "notstate.pt"
    elif case == "other":
        b = ckpts / "other.safetensors"
    else:
        spec = "resnet:9000"
    code = main(["interpolate", str(a), str(b), "--model", spec, "--data", "spiral:test", "--out", str(ckpts / "o")])
    one_line_error(capsys, code, expect)
    assert not os.path.exists("/tmp/lossprobe-pwned")


def test_interpolate_on_spiral_data(ckpts, tmp_path):
    a, b = build("mlp:2-8-2", seed=0), build("mlp:2-8-2", seed=1)
    save_checkpoint(a, tmp_path / "sa.safetensors")
    save_checkpoint(b, tmp_path / "sb.safetensors")
    assert main(["interpolate", str(tmp_path / "sa.safetensors"), str(tmp_path / "sb.safetensors"),
                 "--model", "mlp:2-8-2", "--data", "spiral:test", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["loss_barrier"]["test"] >= -1e-6


def test_missing_data_is_one_line(tmp_path, monkeypatch, capsys):
    import lossprobe.data.fashion as fm

    monkeypatch.delenv("LOSSPROBE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LOSSPROBE_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "none")
    one_line_error(capsys, main([*QUICK, "--out", str(tmp_path / "o")]), "dataset-fashion-mnist")


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit):
        main(["study", "two-seeds", "--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--config", "--epochs", "--seeds", "--quick", "--force"):
        assert opt in text


@needs_fashion
def test_study_barriers_are_those_of_its_saved_paths(quick_run):
    """summary.json's barriers and verdict follow from the arrays the study saved."""
    from lossprobe.connectivity.paths import error_barrier, loss_barrier
    from lossprobe.results.store import plots_of

    out, _ = quick_run
    s = json.loads((out / "summary.json").read_text())
    it = dict(np.load(out / "interpolation.npz"))
    conn = dict(np.load(out / "connectivity.npz"))
    for split in ("train", "test"):
        assert s["loss_barrier"][split] == loss_barrier(it["alphas"], it[f"loss_{split}"])
        assert s["error_barrier"][split] == error_barrier(it["alphas"], 1 - it[f"accuracy_{split}"])
        assert s["loss"][split] == it[f"loss_{split}"].tolist()
        for p in ("aligned", "aligned_repair", "curve"):
            assert s["loss_barrier"][p][split] == pytest.approx(
                loss_barrier(conn["alphas"], conn[f"{p}_loss_{split}"]), abs=1e-12)
            assert s["error_barrier"][p][split] == pytest.approx(
                error_barrier(conn["alphas"], 1 - conn[f"{p}_accuracy_{split}"]), abs=1e-12)
    tol = json.loads((out / "config.json").read_text())["barrier_tolerance"]
    assert s["same_basin"] == (max(s["error_barrier"]["train"], s["error_barrier"]["test"]) <= tol)
    assert s["same_basin_up_to_permutation"] == (max(s["error_barrier"]["aligned"].values()) <= tol)
    # the grid runs past both endpoints (α in [−0.5, 1.5]), the barriers only look inside [0, 1]
    assert it["alphas"][0] < 0 and it["alphas"][-1] > 1
    # what to draw is declared with the arrays: loss and accuracy against α
    plots = plots_of(it)
    assert [p.x for p in plots] == ["alphas", "alphas"] and plots[0].xlabel.startswith("α")
    assert {sr.y for sr in plots[0].series} == {"loss_train", "loss_test"}
    assert len(plots_of(conn)) == 2

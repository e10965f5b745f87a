"""`lossprobe align` and `lossprobe curve` on tiny settings (spiral data)."""

import json

import pytest

from conftest import spiral_checkpoints
from lossprobe.cli import main


@pytest.fixture
def ckpts(tmp_path, spiral):
    return spiral_checkpoints(tmp_path, spiral, epochs=3)


def test_align_cli_writes_summary_with_three_paths(ckpts, tmp_path, capsys):
    out = tmp_path / "al"
    rc = main(["align", *ckpts, "--model", "mlp:2-8-8-2", "--data", "spiral:test", "--repair",
               "--calib-data", "spiral:train", "--calib-subset", "200", "--alphas", "5", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("loss_barrier", "error_barrier"):
        assert set(s[key]) == {"naive", "aligned", "aligned_repair"}
        assert all(isinstance(v, float) for v in s[key].values())
    assert (out / "checkpoints" / "aligned_b.safetensors").is_file()
    assert (out / "figures" / "alignment.png").is_file()
    assert "aligned + REPAIR" in capsys.readouterr().out
    # the aligned checkpoint computes the same function as B
    from lossprobe.cli.common import load_model
    from lossprobe.data import load_split
    from lossprobe.training.loop import evaluate_model

    test = load_split("spiral:test")
    b = evaluate_model(load_model("mlp:2-8-8-2", ckpts[1]), test)
    ab = evaluate_model(load_model("mlp:2-8-8-2", str(out / "checkpoints" / "aligned_b.safetensors")), test)
    assert b[0] == pytest.approx(ab[0], abs=1e-5)


def test_curve_cli(ckpts, tmp_path):
    out = tmp_path / "cv"
    rc = main(["curve", *ckpts, "--model", "mlp:2-8-8-2", "--data", "spiral:test", "--epochs", "1",
               "--points", "5", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["loss_barrier"]) == {"curve", "line"} and set(s["loss_barrier"]["curve"]) == {"train", "test"}
    # t = 0 and t = 1 are the checkpoints themselves on both paths
    for k in ("loss",):
        assert s[k]["curve"]["test"][0] == pytest.approx(s[k]["line"]["test"][0], abs=1e-6)
        assert s[k]["curve"]["test"][-1] == pytest.approx(s[k]["line"]["test"][-1], abs=1e-6)
    assert (out / "checkpoints" / "curve.safetensors").is_file()


def test_bad_input_gives_one_line(ckpts, tmp_path, capsys):
    rc = main(["align", *ckpts, "--model", "mlp:2-9-9-2", "--data", "spiral:test", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    rc = main(["curve", *ckpts, "--model", "mlp:2-8-8-2", "--data", "spiral:test", "--points", "4",
               "--out", str(tmp_path / "y")])
    assert rc == 2


def test_align_cli_activation_features(ckpts, tmp_path):
    out = tmp_path / "act"
    rc = main(["align", *ckpts, "--model", "mlp:2-8-8-2", "--data", "spiral:test", "--method", "activations",
               "--features", "all", "--calib-data", "spiral:train", "--calib-subset", "200", "--alphas", "5",
               "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["features"] == "all" and s["spec"] == "fx-derived" and set(s["loss_barrier"]) == {"naive", "aligned"}

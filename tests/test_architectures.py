"""The architecture study in --quick mode: keys, resume, report; and its CLI."""

import json

import pytest

from lossprobe.studies import STUDIES
from conftest import finished_stages
from lossprobe.studies.architectures import QUICK, STUDY, ArchitecturesConfig, run


pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_study_summary_and_resume(tmp_path):
    cfg = ArchitecturesConfig(**QUICK)
    s = run(tmp_path / "run", cfg, progress=False)
    for key in ("val_accuracy", "test_accuracy", "generalization_gap", "top_eigenvalue", "trace"):
        assert set(s[key]) == {"A", "B"}, key
    nr = s["noise_robustness"]
    assert nr["sigmas"] == QUICK["noise_sigmas"] and len(nr["A"]) == len(nr["B"]) == len(nr["sigmas"])
    assert all(0 <= a <= 1 for a in nr["A"] + nr["B"])
    assert s["top_eigenvalue"]["A"] > 0 and s["residuals"]["A"][0] < 1e-3 * s["top_eigenvalue"]["A"]
    assert len(s["generalization_gap_per_epoch"]["A"]) == QUICK["epochs"] + 1
    d = tmp_path / "run"
    assert (d / "report.md").read_text().count("![") >= 6
    for fig in ("learning_curves", "generalization_gap", "noise_robustness", "slices_1d", "curvature"):
        assert (d / "figures" / f"{fig}.png").is_file()
    saved = json.loads((d / "summary.json").read_text())
    assert saved["val_accuracy"] == s["val_accuracy"]
    # a rerun resumes every stage: same numbers, nothing retrained
    status = json.loads((d / "status.json").read_text())
    assert {"train-A", "train-B", "curvature-A", "curvature-B", "noise", "slices"} <= set(status["done"])
    stamps = finished_stages(STUDY, cfg, d)
    assert {"train-A", "train-B", "curvature-A", "curvature-B", "noise", "slices"} <= set(stamps)
    s2 = run(d, cfg, progress=False)
    assert finished_stages(STUDY, cfg, d) == stamps  # no finished stage computed again
    assert s2["top_eigenvalue"] == s["top_eigenvalue"] and s2["noise_robustness"] == s["noise_robustness"]
    # the numbers of the summary are those of the files each stage saved
    for k in ("A", "B"):
        h = json.loads((d / f"history_{k}.json").read_text())
        assert s["train_accuracy"][k] == h["train_accuracy"][-1] and s["val_accuracy"][k] == h["val_accuracy"][-1]
        assert s["generalization_gap"][k] == pytest.approx(h["train_accuracy"][-1] - h["val_accuracy"][-1], abs=1e-15)
        assert s["generalization_gap_per_epoch"][k] == pytest.approx(
            [a - b for a, b in zip(h["train_accuracy"], h["val_accuracy"])], abs=1e-15)
        c = json.loads((d / f"curvature_{k}.json").read_text())
        assert s["top_eigenvalue"][k] == max(c["eigenvalues"]) == c["eigenvalues"][0]
        assert s["trace"][k] == c["trace"] and c["trace"] == pytest.approx(
            sum(v["trace"] for v in c["layer_traces"].values()), rel=1e-6)
        sl = json.loads((d / "slices.json").read_text())[k]
        loss = sl["loss"]["train"]
        assert sl["alphas"][len(loss) // 2] == 0.0
        assert s["slice_loss_rise_at_span"][k] == pytest.approx((loss[0] + loss[-1]) / 2 - loss[len(loss) // 2])
        assert s["meets_targets"][k] == (s["val_accuracy"][k] >= s["targets_val_accuracy"][k])


def test_registered_and_bad_config_rejected(tmp_path):
    from lossprobe.cli import main
    from lossprobe.errors import UserError

    assert "architectures" in STUDIES
    with pytest.raises(UserError):
        ArchitecturesConfig(slice_steps=4)
    with pytest.raises(UserError):
        ArchitecturesConfig(trace_products=2)
    assert main(["study", "architectures", "--quick", "--model-b", "cnn:4-8:nope", "--out", str(tmp_path / "x")]) == 2

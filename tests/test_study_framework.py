"""lossprobe.studies.base: flags built from configuration fields, one precedence rule, stages
that resume and are timed."""

import argparse
import json
from dataclasses import dataclass

import pytest

from lossprobe.cli.study import add_arguments, load_config
from lossprobe.runtime.config import positive_int
from lossprobe.errors import UserError
from lossprobe.studies import STUDIES
from lossprobe.studies.base import Preset, Stage, Study, option, run_study

# every flag each study had before its flags were built from its configuration
FLAGS = {
    "two-seeds": ["--out", "--force", "--config", "--epochs", "--seeds", "--model", "--different-data-order", "--quick",
                  "--optimizer", "--lr", "--weight-decay", "--schedule", "--warmup", "--augment", "--crop-padding"],
    "width": ["--out", "--force", "--config", "--widths", "--pairs", "--epochs", "--train-subset", "--depth", "--quick",
              "--deep", "--optimizer", "--lr", "--weight-decay", "--schedule", "--warmup", "--augment",
              "--crop-padding"],
    "architectures": ["--out", "--force", "--config", "--epochs", "--model-a", "--model-b", "--lr", "--hessian-subset",
                      "--threads", "--quick"],
    "optimizers": ["--dataset", "--out", "--force", "--config", "--optimizers", "--lr", "--steps", "--seed",
                   "--threshold", "--grid", "--no-gif", "--quick"],
    "search-benchmark": ["--out", "--force", "--config", "--tables", "--space", "--seeds", "--budget", "--methods",
                         "--table-dir", "--quick"],
    "edge-of-stability": ["--out", "--force", "--config", "--model", "--n-train", "--losses", "--optimizers",
                          "--step-sizes", "--adam-lrs", "--steps", "--every", "--threads", "--quick"],
    "stability": ["--out", "--force", "--config", "--model", "--child-data-seeds", "--spawn-steps", "--spawn-epochs",
                  "--epochs", "--optimizer", "--lr", "--threads", "--quick"],
}


def _parser(name):
    import importlib

    study = importlib.import_module(STUDIES[name][0]).STUDY
    p = argparse.ArgumentParser()
    add_arguments(p, study)
    return p, study


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_every_flag_is_there_with_its_help(name):
    p, _ = _parser(name)
    have = {o: a for a in p._actions for o in a.option_strings}
    for flag in FLAGS[name]:
        assert flag in have and have[flag].help, (name, flag)


def test_precedence_defaults_presets_file_flags(tmp_path):
    p, study = _parser("width")
    f = tmp_path / "w.toml"
    f.write_text("epochs = 3\npairs = 2\n")
    cfg = load_config(study, p.parse_args(["--quick", "--deep", "--config", str(f), "--pairs", "4"]))
    assert cfg.depth == 10  # --deep (a preset later in the list wins over --quick)
    assert cfg.train_subset == 20_000 and cfg.calib_subset == 5000  # --deep over --quick's 2000 and 500
    assert cfg.alphas == 5  # --quick only
    assert cfg.epochs == 3  # the file over both presets
    assert cfg.pairs == 4  # the flag over the file
    assert cfg.lr == 0.05 and cfg.schedule == "onecycle"
    assert load_config(study, p.parse_args([])).widths == [16, 32, 64, 128, 256, 512]  # defaults


def test_a_preset_can_depend_on_what_the_user_chose(tmp_path):
    p, study = _parser("optimizers")
    assert load_config(study, p.parse_args(["--quick"])).steps == 300
    assert load_config(study, p.parse_args(["--quick", "--dataset", "toy:himmelblau"])).steps == 60
    f = tmp_path / "o.toml"
    f.write_text('dataset = "toy:beale"\n')
    cfg = load_config(study, p.parse_args(["--quick", "--config", str(f), "--optimizers", "gd, adam", "--lr", "gd=0.1",
                                           "--no-gif"]))
    assert (cfg.steps, cfg.optimizers, cfg.lrs, cfg.gif) == (60, ["gd", "adam"], ["gd=0.1"], False)


@dataclass
class Tiny:
    n: int = option(3, flag="--n", type=positive_int, help="how many")

    def __post_init__(self):
        if self.n > 10:
            raise UserError("n must be at most 10")


def test_stages_resume_and_are_timed(tmp_path):
    calls = []

    def count(ctx):
        calls.append("count")
        ctx.rd.save_json("count.json", list(range(ctx.cfg.n)))
        return ctx.rd.load_json("count.json")

    def total(ctx):
        calls.append("total")
        return {"total": sum(ctx.out["count"]), "inputs": ctx.inputs["k"]}

    study = Study(name="tiny", config=Tiny, inputs=lambda ctx: {"k": 7},
                  stages=lambda cfg: [Stage("count", count, load=lambda ctx: ctx.rd.load_json("count.json"),
                                            files=("count.json",)),
                                      Stage("total", total, resume=False)],
                  presets=(Preset("quick", {"n": 2}, "fewer"),))
    assert run_study(study, tmp_path / "r", Tiny(4), progress=False) == {"total": 6, "inputs": 7}
    assert calls == ["count", "total"]
    timing = json.loads((tmp_path / "r" / "timing.json").read_text())
    assert set(timing["stages"]) == {"count", "total"} and timing["seconds"] >= 0
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["done"] == ["count"] and status["complete"] is True
    assert run_study(study, tmp_path / "r", Tiny(4), progress=False)["total"] == 6  # resumed: count is loaded
    assert calls == ["count", "total", "total"]
    (tmp_path / "r" / "count.json").write_text("{damaged")
    assert run_study(study, tmp_path / "r", Tiny(4), progress=False)["total"] == 6  # a damaged file: computed again
    assert calls[-2:] == ["count", "total"]
    with pytest.raises(UserError, match="at most 10"):
        Tiny(11)  # validated once, by the dataclass


def test_a_run_written_before_a_config_key_existed_still_resumes(tmp_path):
    """A key added to a study's configuration later (e.g. curve_epochs) does not orphan an unfinished
    run whose config.json lacks it, as long as this run uses the key's default."""
    from lossprobe.results.store import RunDir

    old = RunDir(tmp_path / "a", "k", {"epochs": 3})
    old.mark("train")
    old.close()
    again = RunDir(tmp_path / "a", "k", {"epochs": 3, "curve_epochs": 2}, defaults={"epochs": 12, "curve_epochs": 2})
    assert again.resumed and again.done("train")
    again.close()
    RunDir(tmp_path / "b", "k", {"epochs": 3}).close()
    with pytest.raises(UserError, match="different run"):  # not the default: another run
        RunDir(tmp_path / "b", "k", {"epochs": 3, "curve_epochs": 5}, defaults={"epochs": 12, "curve_epochs": 2})
    with pytest.raises(UserError, match="different run"):  # a changed key is never excused
        RunDir(tmp_path / "b", "k", {"epochs": 4, "curve_epochs": 2}, defaults={"epochs": 4, "curve_epochs": 2})

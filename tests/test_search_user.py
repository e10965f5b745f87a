"""Searching your own model (lossprobe.search.run, `lossprobe search --model ...`): a regression whose
best learning rate is known, a classifier whose width and dropout come from [model], dict batches
with the model's own loss, the one-line refusals, every method and the probe features on a user
model, resume after a kill, two workers on one storage, Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lossprobe as lp
from lossprobe.cli import main
from lossprobe.errors import UserError
from lossprobe.search.user import UserTaskSpec

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).parent

MODELS = '''
import torch
from torch import nn


def linear(inputs: int = 8):
    return nn.Linear(inputs, 1)


def mlp(width, dropout: float = 0.0, classes: int = 3):
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, classes))


class Tagger(nn.Module):
    """Dict batches in, {'loss', 'logits'} out, as an HF model."""

    def __init__(self, vocab=60, dim=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        m = attention_mask[..., None].float()
        h = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.head(torch.tanh(h))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def tagger(dim: int = 16):
    return Tagger(dim=dim)
'''


# --- data ------------------------------------------------------------------------------------
def whitened(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Inputs with zero mean and X^T X / n = I exactly: the mean squared error of a linear model has
    Hessian 2I, so one full-batch gradient step of size 0.5 lands on the least-squares fit."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    q = q - q.mean(0)
    q, _ = torch.linalg.qr(q)
    return (q * n ** 0.5).float()


def regression(n: int, g: torch.Generator, w: torch.Tensor):
    x = whitened(n, w.shape[0], g)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


def blobs(n: int, seed: int):
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    centres = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    return (centres[y] + g.normal(size=(n, 2))).astype(np.float32), y.astype(np.int64)


def topics(n: int, seed: int, vocab: int = 60, length: int = 8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    topical = labels[:, None] * (vocab // 3) + torch.randint(0, vocab // 3, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < 0.6, topical, torch.randint(0, vocab, (n, length), generator=g))
    mask = torch.ones_like(ids)
    mask[::3, length // 2:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


@pytest.fixture
def files(tmp_path):
    """models.py (builders) and data files: a classification table, a regression table, dict batches."""
    (tmp_path / "models.py").write_text(MODELS)
    x, y = blobs(600, 0)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    xt, yt = blobs(300, 1)
    np.savez(tmp_path / "blobs-test.npz", x=xt, y=yt)
    g = torch.Generator().manual_seed(0)
    xr = torch.randn(300, 8, generator=g)
    np.savez(tmp_path / "reg.npz", features=xr.numpy(), target=(xr[:, :1] - xr[:, 1:2]).numpy())
    torch.save(topics(240, 0), tmp_path / "topics.pt")
    return tmp_path


# --- a regression whose best learning rate is known -------------------------------------------------
REGRESSION_SPACE = {"train": {"epochs": 2, "optimizer": "sgd", "schedule": "constant", "batch_size": 400,
                              "lr": {"low": 0.01, "high": 1.5, "log": True}}}
# docs/search.md states this bound: the search's choice is within 0.02 (in MSE, the objective's units)
# of the validation loss at the best learning rate, 0.5, where the loss of an untrained model is about 9
REGRESSION_REGRET = 0.02


def test_regression_search_finds_the_known_best_learning_rate(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g)
    train, val, probe, test = (regression(n, g, w) for n in (400, 200, 200, 200))
    res = lp.search.run(lambda: nn.Linear(8, 1), train, REGRESSION_SPACE, val_data=val, probe_data=probe,
                        test_data=test, loss="mse", objective="loss", budget=24, fraction=0.5, out=tmp_path / "run",
                        verbose=False)
    # the best learning rate, trained the way the search trains its candidates (seed 0, full batch)
    torch.manual_seed(0)
    best = nn.Linear(8, 1)
    lp.fit(best, train, None, lp.TrainConfig(optimizer="sgd", lr=0.5, schedule="constant", batch_size=400, epochs=2),
           loss="mse")
    best_val = lp.Objective(best, val, loss="mse").loss_at().loss[0]
    assert res.objective == "loss (mse)" and res.direction == "min"
    assert res.regret(float(best_val)) <= REGRESSION_REGRET, (res.values, res.val_value, float(best_val))
    assert 0.3 < res.values["lr"] < 0.7
    # the checkpoint is the chosen model: reloaded into the builder it gives the reported numbers
    model = res.model(lambda: nn.Linear(8, 1))
    assert lp.Objective(model, val, loss="mse").loss_at().loss[0] == pytest.approx(res.val_value, rel=1e-5)
    assert lp.Objective(model, test, loss="mse").loss_at().loss[0] == pytest.approx(res.test_value, rel=1e-5)
    # the history is in the objective's units (losses, not negated scores), and the result reopens
    assert all(e["value"] > 0 for e in res.history)
    again = lp.load_result(tmp_path / "run" / "search.npz")
    assert again.candidate == res.candidate and again.val_value == res.val_value
    assert res.train_config["lr"] == res.values["lr"] and res.train_config["optimizer"] == "sgd"
    chosen = json.loads((tmp_path / "run" / "chosen.json").read_text())
    assert chosen["objective"] == "loss (mse)" and chosen["val_value"] == res.val_value
    assert (tmp_path / "run" / "figures" / "search_progress.png").is_file()
    # a finished search is not run again, nor its test set read again
    res2 = lp.search.run(lambda: nn.Linear(8, 1), train, REGRESSION_SPACE, val_data=val, probe_data=probe,
                         test_data=test, loss="mse", objective="loss", budget=24, fraction=0.5,
                         out=tmp_path / "run", verbose=False)
    assert res2.test_value == res.test_value and res2.history == res.history


def test_metric_objective_is_maximised_in_its_units(tmp_path):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    train = regression(600, g, w)

    def neg_abs_error(out, y):  # a per-sample metric [B]
        return -(out - y).abs().mean(1)

    res = lp.search.run(lambda: nn.Linear(8, 1), train, REGRESSION_SPACE, loss="mse", objective=neg_abs_error,
                        budget=10, fraction=0.5, init_probes=6, out=tmp_path / "m", verbose=False)
    assert res.direction == "max" and res.objective == "neg_abs_error" and res.val_value < 0
    assert res.test_value is None and res.test == {"evaluated": False, "why": "no test data was given"}
    full = [e["value"] for e in res.history if e["kind"] == "full"]
    assert res.val_value == max(full)
    # the splits were carved from the training data: validation, probe and training are disjoint
    task = UserTaskSpec(lambda: None, train, loss="mse").load()
    idx = [set(d.indices.tolist()) for d in (task.train, task.val, task.probe_val)]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    assert sum(map(len, idx)) == 600 and len(idx[1]) == 120 and len(idx[2]) == 60


# --- a classifier whose width and dropout come from [model] (CLI, tensor files) ----------------------
CLASSIFIER_SPACE = """
[model]
width = { low = 4, high = 64, log = true }
dropout = { low = 0.0, high = 0.3 }

[train]
epochs = 3
lr = { low = 1e-3, high = 0.1, log = true }
batch_size = { choices = [32, 64] }
"""


def test_classifier_builder_takes_width_and_dropout_from_the_model_table(files, capsys):
    (files / "space.toml").write_text(CLASSIFIER_SPACE)
    out = files / "run"
    rc = main(["search", "--space", str(files / "space.toml"), "--model", f"{files / 'models.py'}:mlp",
               "--data", str(files / "blobs.npz"), "--test-data", str(files / "blobs-test.npz"), "--budget", "12",
               "--fraction", "0.5", "--init-probes", "6", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "val accuracy" in printed and "test accuracy" in printed
    chosen = json.loads((out / "chosen.json").read_text())
    kw = chosen["model_kwargs"]
    assert set(kw) == {"width", "dropout"} and 4 <= kw["width"] <= 64 and 0 <= kw["dropout"] <= 0.3
    assert chosen["train_config"]["epochs"] == 3 and chosen["objective"] == "accuracy"
    assert 0.7 < chosen["val_value"] <= 1 and 0.7 < chosen["test_value"] <= 1
    # the builder built it: the checkpoint loads into mlp(**model_kwargs) and scores the reported
    # accuracy on the validation split carved from --data
    sys.path.insert(0, str(files))
    try:
        import models
    finally:
        sys.path.remove(str(files))
    model = lp.load_checkpoint(models.mlp(**kw), out / chosen["checkpoint"]).eval()
    task = UserTaskSpec(str(files / "models.py") + ":mlp", str(files / "blobs.npz")).load()
    assert lp.Objective(model, task.val).loss_at().accuracy[0] == pytest.approx(chosen["val_value"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"] == 420 and summary["splits"]["val"] == 120 and summary["splits"]["probe"] == 60
    # the report site has a page for it, with the search's declared plots
    site = lp.report.site.build_site([out], files / "site")
    pages = [p.read_text() for p in site.parent.rglob("*.html") if p != site]
    assert any("search: accuracy of full trainings" in p for p in pages)


# --- dict batches and the model's own loss ----------------------------------------------------------
TAGGER_SPACE = {"model": {"dim": {"choices": [8, 16]}},
                "train": {"epochs": 2, "optimizer": "adamw", "schedule": "linear", "batch_size": 16,
                          "lr": {"low": 1e-3, "high": 0.1, "log": True},
                          "weight_decay": {"low": 1e-4, "high": 0.1, "log": True},
                          "warmup_epochs": {"low": 0.0, "high": 1.0}}}


def test_dict_batches_with_the_models_own_loss(files):
    res = lp.search.run(f"{files / 'models.py'}:tagger", str(files / "topics.pt"), TAGGER_SPACE, loss="model",
                        budget=8, fraction=0.5, method="sh-probe", eta=3, out=files / "tag", verbose=False)
    assert res.objective == "accuracy" and 0.5 < res.val_value <= 1  # 3 topics: chance is 1/3
    assert set(res.values) == {"dim", "lr", "weight_decay", "warmup_epochs"}
    assert 0 <= res.train_config["warmup_epochs"] <= 1 and res.train_config["optimizer"] == "adamw"
    model = res.model()  # the builder was a spec: the result rebuilds and loads it
    assert model.emb.embedding_dim == res.model_kwargs["dim"]


def test_probe_features_and_every_method_on_a_user_model(files):
    from lossprobe.search.engine import LiveOracle
    from lossprobe.search.methods import METHODS, run_method
    from lossprobe.search.probes import probe
    from lossprobe.search.space import UserSpace

    spec = UserTaskSpec(f"{files / 'models.py'}:tagger", str(files / "topics.pt"), loss="model")
    space = UserSpace.from_dict(TAGGER_SPACE)
    task = spec.load()
    r = probe(space, space.sample(0), task, 0.5, 1, seed=2, families="all")
    for k in ("grad_norm", "sharpness_noise", "hessian_top", "val_acc", "val_loss"):
        assert np.isfinite(r.features[k]), k
    small = {"sh": {"eta": 3}, "hyperband": {"eta": 3}, "asha": {"eta": 3}, "bohb": {"eta": 3},
             "sh-probe": {"eta": 3}, "hyperband-probe": {"eta": 3, "rungs": "probe,full"}, "asha-probe": {"eta": 3},
             "probe-rank": {"init_probes": 6}}  # the tuned defaults need more than this tiny budget
    for m in METHODS:
        oracle = LiveOracle(space, spec, "sqlite:///:memory:", fraction=0.25, probe_epochs=1, budget=5.5)
        trace = run_method(m, oracle, seed=0, **small.get(m, {}))
        assert trace.chosen is not None and oracle.clock.spent <= 5.5 + 1e-9, m
        assert 0 <= max(trace.values) <= 1, m


# --- one line before any work -----------------------------------------------------------------------
@pytest.mark.parametrize("space, needle", [
    ("[model]\nwidht = { low = 4, high = 64 }\n[train]\nlr = { low = 1e-3, high = 0.1 }",
     "[model] 'widht' is not a parameter of the model builder mlp(width, dropout: float = 0.0, classes: int = 3) "
     "(did you mean 'width'?)"),
    ("[model]\nwidth = 8\n[train]\nlr_decay = { low = 1e-3, high = 0.1 }",
     "[train] 'lr_decay' is not an option of fit; its options are augment, batch_size, crop_padding, epochs,"),
    ("[model]\ndropout = 0.1\n[train]\nlr = { low = 1e-3, high = 0.1 }",
     "the model builder mlp(width, dropout: float = 0.0, classes: int = 3) needs 'width'"),
    ("[model]\nwidth = 8\n[train]\nepochs = { low = 2, high = 5 }\nlr = 0.1",
     "[train] 'epochs' takes a fixed value, not a range"),
    ("[model]\nwidth = 8\n[train]\ndata_seed = 3\nlr = { low = 1e-3, high = 0.1 }",
     "[train] 'data_seed' cannot be set in a search space"),
    ("[model]\nwidth = 8\n[train]\noptimizer = { choices = ['adam', 'lion'] }",
     "[train] 'optimizer': unknown optimizer 'lion'"),
    ("[train]\nmodel = 'mlp'\n[params]\nlr = { type = 'float', low = 1e-3, high = 0.1 }",
     "instead of [params]"),
])
def test_space_mistakes_are_one_line_before_any_work(files, capsys, space, needle):
    (files / "bad.toml").write_text(space)
    out = files / "never"
    rc = main(["search", "--space", str(files / "bad.toml"), "--model", f"{files / 'models.py'}:mlp",
               "--data", str(files / "blobs.npz"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("lossprobe: error:") and "\n" not in err, err
    assert needle in err, err
    assert not out.exists()  # nothing written, nothing trained


@pytest.mark.parametrize("args, needle", [
    (["--objective", "accuracy", "--loss", "mse"], "--objective accuracy, but loss 'mse' gives no accuracy"),
    (["--objective", "nope"], "--objective must be accuracy, loss or module:function"),
    (["--dataset", "spiral"], "--dataset is for the built-in mlp/cnn"),
    (["--val-fraction", "0.5", "--probe-split", "0.6"], "val_fraction + probe_split must be below 1"),
])
def test_task_mistakes_are_one_line_before_any_work(files, capsys, args, needle):
    (files / "space.toml").write_text("[model]\ninputs = 8\n[train]\nlr = { low = 1e-3, high = 0.1, log = true }")
    out = files / "never"
    rc = main(["search", "--space", str(files / "space.toml"), "--model", f"{files / 'models.py'}:linear",
               "--data", f"{files / 'reg.npz'}:features,target", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and needle in err, err
    assert not out.exists()


def test_builtin_options_and_user_options_do_not_mix(files, capsys):
    (files / "s.toml").write_text("[params]\nlr = { type = 'float', low = 1e-3, high = 0.1 }")
    rc = main(["search", "--space", str(files / "s.toml"), "--dataset", "spiral", "--data", "x.npz",
               "--out", str(files / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--data is for your own model: give --model" in err


# --- resume after a kill, two workers, Ray ------------------------------------------------------------
def _cli(files, *extra):
    (files / "space.toml").write_text(CLASSIFIER_SPACE)
    return ["search", "--space", str(files / "space.toml"), "--model", f"{files / 'models.py'}:mlp",
            "--data", str(files / "blobs.npz"), "--test-data", str(files / "blobs-test.npz"), "--fraction", "0.5",
            "--init-probes", "4", "--probes-per-round", "2", *extra]


@pytest.mark.slow
def test_user_search_killed_anywhere_resumes_to_the_same_result(files):
    from faults import run_state, write_sequence
    from test_sigkill import killed_then_resumed, pick

    args = _cli(files, "--budget", "8", "--out")
    ref = files / "ref"
    seq = write_sequence(lambda: main([*args, str(ref)]), ref)
    want = run_state(ref)
    # while a trained candidate is not yet stored as a trial, and once the test result was recorded
    for k in pick(seq, "checkpoints/candidate-", "chosen.json")[:2]:
        out = files / f"k{k}"
        assert killed_then_resumed([*args, str(out)], out, k) == want, (k, seq[k - 1])


@pytest.mark.slow
def test_two_workers_share_one_storage_with_a_user_model(files):
    import optuna

    db = files / "shared.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "lossprobe", *_cli(files, "--budget", "10", "--storage", f"sqlite:///{db}")]
    procs = [subprocess.Popen([*args, "--out", str(files / w)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in ("w1", "w2")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
    for name in ("search-probes", "search-full"):
        st = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        keys = [(t.user_attrs["candidate"], t.user_attrs.get("fidelity"), t.user_attrs.get("epoch")) for t in st.trials]
        assert keys and len(keys) == len(set(keys)), (name, keys)  # no piece of work stored twice
    chosen = [json.loads((files / w / "chosen.json").read_text()) for w in ("w1", "w2")]
    assert chosen[0]["candidate"] == chosen[1]["candidate"] and chosen[0]["test_value"] == chosen[1]["test_value"]
    assert sorted(c["test_evaluated_by_this_worker"] for c in chosen) == [False, True]
    assert "".join(o for o, _ in outs).count("the test set was opened once") == 1


@pytest.mark.slow
def test_ray_backend_with_a_user_model(files):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = lp.search.run(f"{files / 'models.py'}:mlp", str(files / "blobs.npz"), _toml(CLASSIFIER_SPACE),
                            budget=6, fraction=0.5, init_probes=4, backend="ray", out=files / "ray", verbose=False)
        assert 0 < res.val_value <= 1 and any(e["kind"] == "full" for e in res.history)
    finally:
        ray.shutdown()


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_api_refuses_a_bad_builder_in_one_line():
    with pytest.raises(UserError, match="build must be a function"):
        lp.search.run(3, (torch.zeros(4, 2), torch.zeros(4)), {"train": {"lr": {"low": 0.1, "high": 1.0}}})
    with pytest.raises(UserError, match="'depth' is not a parameter of the model builder"):
        lp.search.run(lambda width=4: nn.Linear(2, width), (torch.zeros(40, 2), torch.zeros(40, dtype=torch.long)),
                      {"model": {"depth": 2}, "train": {"lr": {"low": 0.1, "high": 1.0}}})

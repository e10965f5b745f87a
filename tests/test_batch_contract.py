"""The batch contract (data forms, forward=, loss=, metric=), parameter kinds from modules, tied
checkpoints, and the user's own models, data and losses from the CLI."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossprobe as lp
from lossprobe.curvature import hessian
from lossprobe.cli import main
from lossprobe.errors import UserError

from compat_models import LSTMClassifier, TiedLM, TwoInput, tiny_bert, tiny_gpt2

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def clf_data(n=30, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def mlp(d=6, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, c)).eval()


# --- losses: reduction, counts, batch size ---------------------------------------------------
def test_a_batch_mean_loss_is_refused_not_divided_again():
    x, y = clf_data()
    with pytest.raises(UserError, match="per-sample losses"):
        lp.Objective(mlp(), (x, y), loss=F.cross_entropy)


def test_torch_loss_modules_mean_what_they_say():
    x, y = clf_data()
    m = mlp()
    with torch.no_grad():
        true = float(F.cross_entropy(m(x), y))
    for loss in (nn.CrossEntropyLoss(), "cross_entropy", lambda out, t: F.cross_entropy(out, t, reduction="none")):
        assert abs(lp.Objective(m, (x, y), loss=loss, batch_size=7).loss_at().loss[0] - true) < 1e-6


def test_mse_is_the_per_sample_mean_over_outputs_like_nn_MSELoss():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=g), torch.randn(20, 3, generator=g)
    m = mlp()
    with torch.no_grad():
        true = float(nn.MSELoss()(m(x), y))
    for loss in ("mse", nn.MSELoss()):
        ev = lp.Objective(m, (x, y), loss=loss, batch_size=6).loss_at()
        assert abs(ev.loss[0] - true) < 1e-6
        assert np.isnan(ev.accuracy[0])  # no accuracy for a regression loss


@pytest.mark.parametrize("loss", ["cross_entropy", "mse_like", "model"])
def test_results_do_not_depend_on_batch_size(loss):
    if loss == "model":
        model = tiny_gpt2()
        ids = torch.randint(0, 30, (11, 8), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[3:, 6:] = -100
        data = {"input_ids": ids, "labels": labels}
    elif loss == "mse_like":
        model, (x, _) = mlp(), clf_data(n=23)
        data, loss = (x, torch.randn(23, 3)), "mse"
    else:
        model, data = mlp(), clf_data(n=23)
    vals = [lp.Objective(model, data, loss=loss, batch_size=b).loss_at().loss[0] for b in (1, 4, 23)]
    assert max(vals) - min(vals) < 1e-6 * max(1.0, abs(vals[0]))
    obj1 = lp.Objective(model, data, loss=loss, batch_size=3)
    objn = lp.Objective(model, data, loss=loss, batch_size=100)
    v = torch.randn(obj1.space.numel, generator=torch.Generator().manual_seed(2))
    h1, hn = obj1.hvp(v), objn.hvp(v)
    assert (h1 - hn).norm() <= 1e-4 * hn.norm() + 1e-7


def test_model_loss_with_ignored_labels_equals_the_models_token_weighted_mean():
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 30, (9, 8), generator=g)
    labels = ids.clone()
    labels[::2, 4:] = -100  # uneven numbers of counted tokens per batch
    data = {"input_ids": ids, "labels": labels}
    ev = lp.Objective(model, data, loss="model", batch_size=2).loss_at()
    with torch.no_grad():
        own = float(model(**data).loss)  # all data in one call: HF's mean over every counted token
    assert abs(ev.loss[0] - own) < 1e-5
    # a plain mean of batch means would differ: make sure the test can tell
    with torch.no_grad():
        means = [float(model(input_ids=ids[i:i + 2], labels=labels[i:i + 2]).loss) for i in range(0, 9, 2)]
    assert abs(np.mean(means) - own) > 1e-4
    assert 0 <= ev.accuracy[0] <= 1  # next-token accuracy over the same tokens


def test_bert_with_dict_batches_uses_the_attention_mask():
    model = tiny_bert()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 30, (10, 8), generator=g)
    mask = torch.ones(10, 8, dtype=torch.long)
    mask[:, 4:] = 0
    data = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (10,), generator=g)}
    with_mask = lp.Objective(model, data, loss="model", batch_size=4).loss_at().loss[0]
    no_mask = lp.Objective(model, {k: v for k, v in data.items() if k != "attention_mask"}, loss="model").loss_at()
    with torch.no_grad():
        assert abs(with_mask - float(model(**data).loss)) < 1e-5
    assert abs(with_mask - no_mask.loss[0]) > 1e-4
    # the same data as cross-entropy on the logits gives the same number
    assert abs(lp.Objective(model, data, batch_size=3).loss_at().loss[0] - with_mask) < 1e-5


def test_model_loss_without_a_loss_is_one_line():
    x, y = clf_data()
    with pytest.raises(UserError, match="without a loss"):
        lp.Objective(mlp(), (x, y), loss="model")


def test_metric_replaces_accuracy():
    x, y = clf_data()
    m = mlp()

    def top2(out, t):
        return (out.topk(2, dim=1).indices == t[:, None]).any(1).float()

    ev = lp.Objective(m, (x, y), metric=top2, batch_size=7).loss_at()
    with torch.no_grad():
        assert abs(ev.accuracy[0] - float(top2(m(x), y).double().mean())) < 1e-9


# --- data forms and forward= ------------------------------------------------------------------
def test_every_data_form_gives_the_same_loss():
    x, y = clf_data(n=20)
    m = mlp()
    ref = lp.Objective(m, (x, y)).loss_at().loss[0]
    ds = torch.utils.data.TensorDataset(x, y)
    forms = [lp.data.Split(x, y), (x.numpy(), y.numpy()), ds, torch.utils.data.DataLoader(ds, batch_size=6),
             [(x[i:i + 7], y[i:i + 7]) for i in range(0, 20, 7)]]
    for form in forms:
        assert abs(lp.Objective(m, form, batch_size=5).loss_at().loss[0] - ref) < 1e-6


def test_a_generator_is_refused_with_a_reason():
    x, y = clf_data()
    with pytest.raises(UserError, match="one-shot"):
        lp.Objective(mlp(), ((x[i:i + 5], y[i:i + 5]) for i in range(0, 30, 5)))


def test_multi_input_tuples_and_dataloader_of_dicts():
    g = torch.Generator().manual_seed(5)
    x1, x2, y = torch.randn(14, 6, generator=g), torch.randn(14, 4, generator=g), torch.randint(0, 3, (14,), generator=g)
    torch.manual_seed(0)
    m = TwoInput().eval()
    with torch.no_grad():
        true = float(F.cross_entropy(m(x1, x2), y))
    assert abs(lp.Objective(m, (x1, x2, y), batch_size=4).loss_at().loss[0] - true) < 1e-6
    dicts = [{"a": x1[i:i + 5], "b": x2[i:i + 5], "y": y[i:i + 5]} for i in range(0, 14, 5)]
    obj = lp.Objective(m, dicts, forward=lambda model, b: model(b["a"], b["b"]), target=lambda b: b["y"])
    assert abs(obj.loss_at().loss[0] - true) < 1e-6


def test_default_forward_failure_says_to_pass_forward():
    x, y = clf_data()
    batches = [{"features": x, "y": y}]
    with pytest.raises(UserError, match="forward="):
        lp.Objective(mlp(), batches)


def test_fit_trains_a_two_input_model_and_a_bert():
    g = torch.Generator().manual_seed(6)
    x1, x2 = torch.randn(40, 6, generator=g), torch.randn(40, 4, generator=g)
    y = (x1[:, 0] > 0).long()
    torch.manual_seed(0)
    m = TwoInput()
    h = lp.fit(m, (x1, x2, y), (x1, x2, y), lp.TrainConfig(epochs=3, batch_size=8, lr=1e-2))
    assert h.train_loss[-1] < h.train_loss[0]
    bert = tiny_bert()
    ids = torch.randint(0, 30, (16, 6), generator=g)
    data = {"input_ids": ids, "labels": (ids[:, 0] % 3)}
    h = lp.fit(bert, data, None, lp.TrainConfig(epochs=2, batch_size=8, lr=1e-3), loss="model")
    assert np.isfinite(h.train_loss).all() and len(h.train_loss) == 3


# --- parameter kinds and unit axes ------------------------------------------------------------
def test_lstm_biases_are_biases():
    space = lp.ParamSpace(LSTMClassifier())
    kinds = {e.name: (e.kind, e.unit_axis) for e in space.entries}
    assert kinds["lstm.bias_ih_l0"][0] == "bias" and kinds["lstm.bias_hh_l0"][0] == "bias"
    assert kinds["lstm.weight_ih_l0"] == ("weight", 0)
    d = lp.directions.random_direction(LSTMClassifier(), seed=0)  # biases stay fixed by default
    for e in space.entries:
        if e.kind == "bias":
            assert float(d.vector[e.slice].abs().max()) == 0.0


def test_hf_conv1d_is_normalised_per_output_unit():
    model = tiny_gpt2()
    space = lp.ParamSpace(model)
    e = space["transformer.h.0.attn.c_attn.weight"]  # HF Conv1D: [in, out]
    assert (e.kind, e.unit_axis) == ("weight", 1)
    d = lp.directions.random_direction(model, seed=0, norm="filter")
    w = dict(model.named_parameters())[e.name].detach().double()
    dw = d.vector[e.slice].view(e.shape).double()
    assert torch.allclose(dw.norm(dim=0), w.norm(dim=0), rtol=1e-5)  # each output column
    assert not torch.allclose(dw.norm(dim=1), w.norm(dim=1), rtol=1e-2)
    kinds = {x.name: x.kind for x in space.entries}
    assert kinds["transformer.h.0.ln_1.weight"] == "norm" and kinds["transformer.h.0.attn.c_attn.bias"] == "bias"


# --- transformers: attention kernels, tied weights ----------------------------------------------
def test_hessian_products_through_scaled_dot_product_attention():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(8 * 5, 3)).eval()
    x, y = torch.randn(6, 5, 8), torch.randint(0, 3, (6,))
    obj = lp.Objective(model, (x, y))
    eig = hessian.eigenvalues(obj, k=1, max_steps=20)
    assert np.isfinite(eig.values).all()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # the caller's choice survives the probe
        hessian.hvp(obj, torch.ones(obj.space.numel))
        assert not torch.backends.cuda.math_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    # and without the math backend the products fail on this CPU kernel: the test can tell
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
        x2 = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x2).sum(), x2, create_graph=True)
        torch.autograd.grad(g.sum(), x2)


def test_tied_checkpoints_save_and_load(tmp_path):
    torch.manual_seed(0)
    m = TiedLM()
    lp.save_checkpoint(m, tmp_path / "tied.safetensors")
    torch.manual_seed(1)
    m2 = TiedLM()
    lp.load_checkpoint(m2, tmp_path / "tied.safetensors")
    assert torch.equal(m2.out.weight, m.emb.weight) and m2.out.weight is m2.emb.weight
    gpt = tiny_gpt2(0)
    gpt.save_pretrained(tmp_path / "hf")  # omits the tied lm_head.weight
    g2 = tiny_gpt2(1)
    lp.load_checkpoint(g2, tmp_path / "hf" / "model.safetensors")
    assert torch.equal(g2.lm_head.weight, gpt.transformer.wte.weight)


# --- the CLI with the user's own model, data and loss ----------------------------------------------
USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    def build(width=8, outputs=3):
        return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, outputs))

    def regressor():
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))

    def data(n=30):
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def huber(out, target, delta=1.0):
        return nn.functional.huber_loss(out, target, delta=delta, reduction="none").mean(1)

    def mean_loss(out, target):
        return nn.functional.cross_entropy(out, target)

    def broken():
        raise RuntimeError("weights server unreachable")
""")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for i in (0, 1):
        m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        lp.save_checkpoint(m, tmp_path / f"c{i}.safetensors")
        r = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        lp.save_checkpoint(r, tmp_path / f"r{i}.safetensors")
    g = torch.Generator().manual_seed(1)
    x, y, t = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g), torch.randn(30, 2, generator=g)
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    np.savez(tmp_path / "data.npz", features=x.numpy(), target=t.numpy(), extra=np.zeros(30))
    from safetensors.torch import save_file

    save_file({"x": x, "y": y}, str(tmp_path / "data.safetensors"))
    return tmp_path


def _ok(capsys, args):
    code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return cap.out


def _summary(path):
    return json.loads((path / "summary.json").read_text())


@pytest.mark.parametrize("data", ["data.pt", "data.safetensors", "mymodels:data", "mymodels.py:data:n=30"])
def test_cli_data_forms_and_model_specs(user_dir, capsys, data):
    _ok(capsys, ["interpolate", "c0.safetensors", "c1.safetensors", "--model", "mymodels:build", "--data", data,
                 "--alphas", "5", "--out", "run"])
    s = _summary(user_dir / "run")
    x, y = (torch.load(user_dir / "data.pt")[k] for k in ("x", "y")) if data.startswith("data.") else \
        __import__("mymodels").data()
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    lp.load_checkpoint(m, user_dir / "c0.safetensors")
    with torch.no_grad():
        assert abs(s["endpoint_loss"]["A"] - float(F.cross_entropy(m(x), y))) < 1e-5


def test_cli_regression_from_a_named_npz_with_mse_and_a_user_loss(user_dir, capsys):
    _ok(capsys, ["interpolate", "r0.safetensors", "r1.safetensors", "--model", "./mymodels.py:regressor",
                 "--data", "data.npz:features,target", "--loss", "mse", "--alphas", "5", "--out", "reg"])
    s = _summary(user_dir / "reg")
    z = np.load(user_dir / "data.npz")
    r = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    lp.load_checkpoint(r, user_dir / "r1.safetensors")
    with torch.no_grad():
        true = float(nn.MSELoss()(r(torch.from_numpy(z["features"])), torch.from_numpy(z["target"])))
    assert abs(s["endpoint_loss"]["B"] - true) < 1e-5
    out = _ok(capsys, ["slice", "r0.safetensors", "--model", "mymodels:regressor", "--data", "data.npz:features,target",
                       "--loss", "mymodels:huber:delta=0.5", "--steps", "3", "--out", "huber"])
    assert "centre loss" in out


def test_cli_hessian_and_sharpness_on_a_user_model(user_dir, capsys):
    _ok(capsys, ["hessian", "c0.safetensors", "--model", "mymodels:build", "--data", "data.pt", "--top-k", "1",
                 "--batch-size", "7", "--out", "h"])
    s = _summary(user_dir / "h")
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    lp.load_checkpoint(m, user_dir / "c0.safetensors")
    x, y = (torch.load(user_dir / "data.pt")[k] for k in ("x", "y"))
    dense = torch.autograd.functional.hessian(
        lambda th: F.cross_entropy(torch.func.functional_call(m, lp.ParamSpace(m).unflatten(th), (x,)), y),
        lp.ParamSpace(m).flatten(m))
    assert abs(s["eigenvalues"][0] - float(torch.linalg.eigvalsh(dense)[-1])) < 1e-3 * s["eigenvalues"][0]
    _ok(capsys, ["sharpness", "c0.safetensors", "--model", "mymodels:build", "--data", "data.pt",
                 "--measures", "sam", "--out", "s"])


def test_cli_image_folder_and_cifar(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from lossprobe.data.cifar import write_batch

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    split = lp.data.load_split("imagefolder:imgs:size=8")
    assert tuple(split.x.shape) == (6, 3, 8, 8) and split.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert -1.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
    d = tmp_path / "cifar"
    d.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(d / f, rng.integers(0, 255, (4, 3, 32, 32)), rng.integers(0, 10, 4))
    torch.manual_seed(0)
    lp.save_checkpoint(lp.models.build("cnn:4:in=3:size=32:hidden=8"), tmp_path / "cnn.safetensors")
    _ok(capsys, ["slice", "cnn.safetensors", "--model", "cnn:4:in=3:size=32:hidden=8", "--data", f"cifar10:{d}",
                 "--steps", "3", "--out", "c10"])
    assert _summary(tmp_path / "c10")["n_samples"] == 4


def _bad(capsys, args, expect):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err
    assert err.startswith("lossprobe: error:") and len(err.splitlines()) == 1, err
    assert expect in err, err


def test_cli_bad_user_input_is_one_line(user_dir, capsys):
    base = ["slice", "c0.safetensors", "--model", "mymodels:build", "--steps", "3", "--out", "bad"]
    np.savez(user_dir / "nolabels.npz", a=np.zeros((4, 6)), b=np.zeros(4))
    _bad(capsys, base + ["--data", "nolabels.npz"], "'a' [4, 6], 'b' [4]")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, user_dir / "evil.pt")
    _bad(capsys, base + ["--data", "evil.pt"], "never runs code")
    _bad(capsys, ["slice", "c0.safetensors", "--model", "mymodels:broken", "--data", "data.pt", "--out", "bad"],
         "weights server unreachable")
    _bad(capsys, base + ["--data", "mymodels:broken"], "RuntimeError: weights server unreachable")
    _bad(capsys, base + ["--data", "data.pt", "--loss", "mymodels:mean_loss"], "per-sample losses")
    _bad(capsys, base + ["--data", "data.pt", "--loss", "model"], "without a loss")
    _bad(capsys, base + ["--data", "data.pt", "--loss", "hinge"], "unknown loss 'hinge'")
    (user_dir / "empty_folder").mkdir()
    _bad(capsys, base + ["--data", "imagefolder:empty_folder"], "no class subfolders")
    _bad(capsys, base + ["--data", "spiral:test"], "model 'mymodels:build' cannot be called")
    _bad(capsys, base + ["--data", "fashion-mnist"], "say which split")
    _bad(capsys, base + ["--data", "nosuchfile.npz"], "does not exist")
    _bad(capsys, base + ["--data", "data.pt:x"], "name the inputs and the target")
    assert not (user_dir / "bad").exists()  # nothing written before the input was checked


def test_cli_subset_larger_than_the_data_warns(user_dir, capsys):
    code = main(["slice", "c0.safetensors", "--model", "mymodels:build", "--data", "data.pt", "--subset", "999",
                 "--steps", "3", "--out", "big"])
    err = capsys.readouterr().err
    assert code == 0 and "larger than data.pt (30 samples); using all of it" in err

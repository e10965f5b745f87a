"""Hoisting in Objective.evaluate: what does not move is computed once per batch, and the
result equals the plain forward pass (shortcut=False) on every kind of model."""

import numpy as np
import pytest
import torch
from torch import nn

from compat_models import SmallResNet, TiedLM
from lossprobe import Objective


class Standardize(nn.Module):
    """Per-sample (x - mean) / std: preprocessing inside the model, no parameters."""

    def forward(self, x):
        x = x.flatten(1)
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def prefix_mlp():
    torch.manual_seed(0)
    return nn.Sequential(Standardize(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3)).eval()


def only(obj, names, m=2, seed=0):
    """Random directions [m, P] that move only the named tensors (all when names is None)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(m, obj.space.numel, generator=g) * 0.1
    if names is not None:
        keep = torch.zeros(obj.space.numel, dtype=torch.bool)
        for n in names:
            keep[obj.space[n].slice] = True
        d[:, ~keep] = 0
    return d


def check_equal(model, data, dirs_names, loss="cross_entropy", batch_size=7, K=6, shortcut="auto", **kw):
    fast = Objective(model, data, loss=loss, batch_size=batch_size, shortcut=shortcut, **kw)
    plain = Objective(model, data, loss=loss, batch_size=batch_size, shortcut=False, **kw)
    d = only(fast, dirs_names)
    coords = torch.randn(K, 2, generator=torch.Generator().manual_seed(1))
    a, b = fast.evaluate(coords, directions=d), plain.evaluate(coords, directions=d)
    np.testing.assert_allclose(a.loss, b.loss, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(a.accuracy, b.accuracy, atol=1e-12)
    return fast.hoisting(d)


def test_prefix_module_is_hoisted_and_first_linear_combined(one_thread):
    model = prefix_mlp()
    data = (torch.randn(30, 20), torch.randint(0, 3, (30,)))
    how = check_equal(model, data, None)
    assert how == {"hoisted_modules": ["0"], "first_moving_layer": "1", "linear_combination": True,
                   "folded_batchnorms": []}


def test_head_only_directions_cost_only_the_head(one_thread):
    model = prefix_mlp()
    data = (torch.randn(30, 20), torch.randint(0, 3, (30,)))
    how = check_equal(model, data, ["5.weight", "5.bias"])
    assert how["hoisted_modules"] == ["0", "1", "2", "3", "4"] and how["first_moving_layer"] == "5"


def test_head_only_on_a_resnet(one_thread):
    torch.manual_seed(0)
    model = SmallResNet().eval()
    data = (torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,)))
    how = check_equal(model, data, ["head.weight"], batch_size=4)
    assert how["hoisted_modules"] == ["stem", "bn", "blocks"] and how["linear_combination"]


def test_resnet_batchnorms_fold_into_convolutions(one_thread, monkeypatch):
    import lossprobe.core.objective as O

    monkeypatch.setattr(O, "CONV_BATCH", 3)  # per-point passes over smaller batches than batch_size
    torch.manual_seed(0)
    model = SmallResNet().eval()
    for m in model.modules():  # statistics and affine parameters that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    data = (torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,)))
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]  # BatchNorm does not move
    how = check_equal(model, data, weights, batch_size=8)
    assert how["first_moving_layer"] == "stem" and how["folded_batchnorms"] == [
        "bn", "blocks.0.b1", "blocks.0.b2", "blocks.1.b1", "blocks.1.b2"]
    how = check_equal(model, data, None, batch_size=4)  # everything moves: nothing folds
    assert how["folded_batchnorms"] == []


def test_embedding_first_model(one_thread):
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8, padding_idx=0)
            self.head = nn.Linear(8, 3)

        def forward(self, t):
            return self.head(torch.tanh(self.emb(t)).mean(1))

    torch.manual_seed(0)
    data = (torch.randint(0, 20, (25, 6)), torch.randint(0, 3, (25,)))
    how = check_equal(Bag().eval(), data, None, shortcut=True)
    assert how["first_moving_layer"] == "emb" and how["linear_combination"]
    # by default an embedding lookup alone is not worth verifying a plan for: the plain path
    assert Objective(Bag().eval(), data).hoisting() is None


def test_a_moving_parameter_read_before_the_first_moving_layer_stops_hoisting(one_thread):
    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = Standardize()
            self.body = nn.Linear(20, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.pre(x) * (1 + self.head.weight.mean())  # the head's weight, read up front
            return self.head(torch.tanh(self.body(h)))

    torch.manual_seed(0)
    data = (torch.randn(30, 20), torch.randint(0, 3, (30,)))
    how = check_equal(Sneaky().eval(), data, ["head.weight"])
    # only what runs before the read is hoisted; body depends on the moving weight
    assert how["hoisted_modules"] == ["pre"] and not how["linear_combination"]


def test_tied_weights_embedding_is_also_the_output_layer(one_thread):
    torch.manual_seed(0)
    model = TiedLM().eval()
    data = (torch.randint(0, 20, (25, 6)), torch.randint(0, 20, (25,)))
    how = check_equal(model, data, None, shortcut=True)
    assert how["first_moving_layer"] == "emb"
    obj = Objective(model, data, shortcut=True)
    obj.hoisting()
    plan = obj._hoister._plans[obj._moving(None)]
    assert "emb.weight" not in plan.exclusive  # read again by the output layer: formed per point


def test_in_place_change_of_a_hoisted_output_is_caught(one_thread):
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = Standardize()
            self.head = nn.Linear(20, 3)

        def forward(self, x):
            h = self.pre(x)
            h.mul_(2)  # would compound on a shared hoisted output
            return self.head(h)

    torch.manual_seed(0)
    data = (torch.randn(30, 20), torch.randint(0, 3, (30,)))
    check_equal(InPlace().eval(), data, None)


def test_dict_batches_of_a_hf_model(one_thread):
    pytest.importorskip("transformers")
    from compat_models import cases, tiny_bert

    case = next(c for c in cases() if c.name == "hf-bert")
    model = tiny_bert()
    how = check_equal(model, case.data, ["classifier.weight", "classifier.bias"], loss="model", batch_size=5)
    assert how["first_moving_layer"] == "classifier" and "bert" in how["hoisted_modules"]
    check_equal(model, case.data, None, loss="model", batch_size=5)


def test_hf_conv1d_is_a_linear_first_moving_layer(one_thread):
    pytest.importorskip("transformers")
    from compat_models import cases, tiny_gpt2

    case = next(c for c in cases() if c.name == "hf-gpt2")
    names = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias"]
    how = check_equal(tiny_gpt2(), case.data, names, loss="model", batch_size=5)
    assert how["first_moving_layer"] == "transformer.h.0.attn.c_attn" and how["linear_combination"]
    assert "transformer.wte" in how["hoisted_modules"]


def test_surface_cache_reuses_hoisted_values(one_thread, monkeypatch):
    import lossprobe.core.objective as O
    from lossprobe.landscape import surfaces as S

    model = prefix_mlp()
    data = (torch.randn(40, 20), torch.randint(0, 3, (40,)))
    obj = Objective(model, data, batch_size=16)  # 3 batches
    d = only(obj, None)
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return capture(*a, **k)

    capture = O.capture
    monkeypatch.setattr(O, "capture", counted)
    res = S.surface(obj, None, (d[0], d[1]), span=(-1, 1), steps=5, progress=False)  # 5 chunks of 5 points
    assert len(calls) == 3  # once per batch for the whole surface, not once per chunk
    plain = Objective(model, data, batch_size=16, shortcut=False).evaluate(
        torch.from_numpy(res.grid_points()), directions=d)
    np.testing.assert_allclose(res.loss.reshape(-1), plain.loss, atol=1e-6)
    assert res.meta["shortcut"]

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cnn, tiny_mlp
from lossprobe import Objective, ParamSpace, UserError
from lossprobe.data import Split


def plain_losses(model, x, y, origin, dirs, coords):
    """Reference: copy the weights into the module and run a forward pass per point."""
    sp = ParamSpace(model)
    out = []
    for c in coords:
        sp.load_into(model, origin + c @ dirs)
        with torch.no_grad():
            logits = model(x)
        out.append((F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()))
    sp.load_into(model, origin)
    return np.array(out)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_first_layer_shortcut_matches_plain_evaluation(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model = tiny_mlp(widths=(20, 16, 16, 3))
        x = torch.randn(300, 20)
    else:
        model = tiny_cnn(batchnorm=True)
        x = torch.randn(120, 1, 12, 12)
    y = torch.randint(0, 3, (len(x),))
    obj = Objective(model, (x, y), batch_size=64)
    assert obj.hoisting()["linear_combination"], "a model whose first layer is Linear/Conv combines its outputs"
    dirs = torch.randn(2, obj.space.numel) * 0.1
    coords = torch.randn(9, 2)
    ev = obj.evaluate(coords, directions=dirs)
    ref = plain_losses(model, x, y, obj.theta0, dirs, coords.float())
    np.testing.assert_allclose(ev.loss, ref[:, 0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ev.accuracy, ref[:, 1], atol=1e-12)
    plain = Objective(model, (x, y), batch_size=64, shortcut=False).evaluate(coords, directions=dirs)
    np.testing.assert_allclose(ev.loss, plain.loss, atol=1e-5, rtol=1e-5)


def test_unequal_batches_are_weighted_by_sample_count():
    torch.manual_seed(1)
    model = tiny_mlp(widths=(5, 7, 3))
    x, y = torch.randn(103, 5), torch.randint(0, 3, (103,))
    full = Objective(model, (x, y), batch_size=1000).loss_at()
    small = Objective(model, (x, y), batch_size=10).loss_at()  # 10 batches of 10 and one of 3
    with torch.no_grad():
        ref = F.cross_entropy(model(x), y).item()
    assert small.loss[0] == pytest.approx(ref, rel=1e-6)
    assert full.loss[0] == pytest.approx(ref, rel=1e-6)
    assert small.n == 103


def test_dataloader_streaming_equals_in_memory():
    torch.manual_seed(2)
    model = tiny_mlp(widths=(5, 7, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    d = torch.randn(1, ParamSpace(model).numel)
    a = Objective(model, loader).evaluate(torch.linspace(-1, 1, 5), directions=d)
    b = Objective(model, Split(x, y), batch_size=7).evaluate(torch.linspace(-1, 1, 5), directions=d)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)


def test_model_mode_and_weights_are_restored():
    model = tiny_cnn(batchnorm=True, dropout=0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, (torch.randn(20, 1, 12, 12), torch.randint(0, 10, (20,))))
    obj.evaluate(torch.randn(4, 1), directions=torch.randn(obj.space.numel))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_shapes_give_clear_errors():
    model = tiny_mlp()
    obj = Objective(model, (torch.randn(10, 2), torch.randint(0, 2, (10,))))
    with pytest.raises(UserError, match="directions have shape"):
        obj.evaluate(torch.zeros(3, 1), directions=torch.zeros(1, 5))
    with pytest.raises(UserError, match="coords have shape"):
        obj.evaluate(torch.zeros(3, 3), directions=torch.zeros(2, obj.space.numel))
    with pytest.raises(UserError, match="NaN"):
        obj.evaluate(torch.tensor([[float("nan")]]), directions=torch.zeros(1, obj.space.numel))
    with pytest.raises(UserError, match="empty"):
        Objective(model, (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_gradient_and_hvp_match_autograd():
    torch.manual_seed(3)
    model = tiny_mlp(widths=(3, 4, 2)).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 2, (30,))
    obj = Objective(model, (x, y), batch_size=7)
    theta = obj.theta0.clone()

    def f(t):
        return F.cross_entropy(obj.forward(t, x), y)

    loss, g = obj.loss_and_grad(theta)
    assert loss == pytest.approx(f(theta).item(), rel=1e-12)
    torch.testing.assert_close(g, torch.autograd.functional.jacobian(f, theta))
    H = torch.autograd.functional.hessian(f, theta)
    v = torch.randn_like(theta)
    torch.testing.assert_close(obj.hvp(v, theta), H @ v)


def test_train_mode_evaluation_leaves_batchnorm_statistics_alone():
    model = tiny_cnn(batchnorm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, (torch.randn(20, 1, 12, 12), torch.randint(0, 10, (20,))), train_mode=True)
    obj.evaluate(torch.randn(3, 1), directions=torch.randn(obj.space.numel))
    obj.loss_and_grad()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_argmax_hits_equal_argmax_with_ties_and_ignored_labels():
    from lossprobe.core.losses import IGNORE_INDEX, argmax_hits

    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        z = torch.randint(-3, 3, (300, 5000), generator=g).float()  # integer logits: many ties
        y = torch.randint(0, 5000, (300,), generator=g)
        y[::7] = z[::7].argmax(-1)
        y[::11] = IGNORE_INDEX
        z[5], y[5], z[6], y[6] = 0.0, 0, 0.0, 3  # a row of equal logits: argmax is the first index
        ref = (z.argmax(-1) == y) & (y != IGNORE_INDEX)
        assert torch.equal(argmax_hits(z, y), ref)

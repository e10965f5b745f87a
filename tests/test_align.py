"""Permutation alignment: fx-derived groups, function-preserving permutations, recovery."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_cnn, tiny_mlp
from lossprobe.connectivity.alignment.spec import PermutationSpec
from lossprobe.connectivity.alignment.matching import (
    align, apply_permutation, match_weights, permutation_spec, random_permutation,
)
from lossprobe.errors import UserError
from lossprobe.connectivity.paths import interpolate


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class ResNet(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block1 = Block(c)
        self.block2 = Block(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


def _perturbed(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so permutations matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _cases():
    torch.manual_seed(0)
    return [
        ("mlp", tiny_mlp(0, (10, 12, 12, 3)), torch.randn(48, 10)),
        ("bn-cnn", _perturbed(tiny_cnn(0)), torch.randn(48, 1, 12, 12)),
        ("resnet", _perturbed(ResNet()), torch.randn(48, 1, 8, 8)),
    ]


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("case", range(3))
def test_permuted_copy_same_function_and_aligns_back(case, method):
    name, model, x = _cases()[case]
    permuted, perms = random_permutation(model, seed=1)
    assert any((p != torch.arange(len(p))).any() for p in perms.values())
    assert _max_diff(model, permuted) > 1e-3  # the weights really moved
    with torch.no_grad():
        assert torch.allclose(model(x), permuted(x), atol=1e-5), name
    y = torch.zeros(len(x), dtype=torch.long)
    back = align(model, permuted, method=method, data=(x, y))
    assert _max_diff(model, back) < 1e-6, f"{name}: aligned weights differ from the original"
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5)
    it = interpolate(model, back, {"d": (x, y)}, alphas=[0, 0.25, 0.5, 0.75, 1])
    assert abs(it.loss_barrier("d")) < 1e-5


def test_groups_of_mlp_equal_hand_written():
    model = tiny_mlp(0, (10, 12, 12, 3))  # Flatten, Linear 1, ReLU, Linear 3, ReLU, Linear 5
    spec = permutation_spec(model)
    hand = PermutationSpec({
        "h1": [("1.weight", 0), ("1.bias", 0), ("3.weight", 1)],
        "h2": [("3.weight", 0), ("3.bias", 0), ("5.weight", 1)],
    })
    assert spec.as_sets() == hand.as_sets()
    assert spec.repair_layers == ["1", "3"] and spec.norm_layers == []


def test_groups_of_resnet_block_equal_hand_written():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.block = Block(4)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.block(F.relu(self.bn(self.stem(x)))), 1))

    spec = permutation_spec(Net())
    bn = lambda p: [(f"{p}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")]  # noqa: E731
    hand = PermutationSpec({
        # the residual stream: stem, its BN, conv2 + bn2 of the block (added to it), and the head
        "stream": [("stem.weight", 0), *bn("bn"), ("block.conv1.weight", 1), ("block.conv2.weight", 0),
                   *bn("block.bn2"), ("fc.weight", 1, 36)],
        "inner": [("block.conv1.weight", 0), *bn("block.bn1"), ("block.conv2.weight", 1)],
    })
    assert spec.as_sets() == hand.as_sets()
    assert sorted(spec.norm_layers) == ["block.bn1", "block.bn2", "bn"]


def test_unsupported_operation_is_named():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(10, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    with pytest.raises(UserError, match="cat"):
        align(Cat(), Cat())


def test_user_spec_override_and_residual_to_input_stays_fixed():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(6, 8), nn.Linear(8, 6)

        def forward(self, x):
            return x + self.l2(torch.relu(self.l1(x)))  # the residual ties l2's outputs to the input

    torch.manual_seed(0)
    m = Res()
    spec = permutation_spec(m)
    assert spec.as_sets() == PermutationSpec({"h": [("l1.weight", 0), ("l1.bias", 0), ("l2.weight", 1)]}).as_sets()
    # a hand-written spec (as a plain dict) is accepted and used
    p, perms = random_permutation(m, seed=3, spec=spec)
    back = align(m, p, spec={"mine": [("l1.weight", 0), ("l1.bias", 0), ("l2.weight", 1)]})
    assert _max_diff(m, back) < 1e-6
    with pytest.raises(UserError, match="does not have"):
        align(m, p, spec={"bad": [("nope.weight", 0)]})


def test_weight_matching_increases_similarity_of_independent_networks():
    a, b = tiny_mlp(0, (10, 32, 32, 3)), tiny_mlp(1, (10, 32, 32, 3))
    spec = permutation_spec(a)
    perms = match_weights(a.state_dict(), b.state_dict(), spec, restarts=2)
    sb = apply_permutation(b.state_dict(), spec, perms)

    def inner(s):
        return sum(float((a.state_dict()[k] * s[k]).sum()) for k in s)

    assert inner(sb) > inner(b.state_dict()) + 0.1
    x = torch.randn(20, 10)
    with torch.no_grad():
        b2 = tiny_mlp(1, (10, 32, 32, 3))
        b2.load_state_dict(sb)
        assert torch.allclose(b(x), b2(x), atol=1e-5)

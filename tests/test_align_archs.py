"""Alignment on the architectures users bring: function preserved, permuted copies align
back to a zero barrier, REPAIR's endpoints are the endpoints, refusals are one line."""

import pytest
import torch
from torch import nn

from align_models import LOSS, SharedLayer, TiedLM, build, data_for
from lossprobe.connectivity.alignment.spec import PermutationSpec
from lossprobe.connectivity.alignment.matching import align, permutation_spec, random_permutation
from lossprobe.errors import UserError
from lossprobe.core.losses import criterion, logits_of
from lossprobe.connectivity.paths import interpolate
from lossprobe.connectivity.repair import Repairer, interpolate_repaired
from lossprobe.training.loop import evaluate_model

ARCHS = ["shared", "tied", "standardised", "groupnorm", "layernorm", "embedding", "two-input", "encoder", "bert",
         "gpt2"]


def _needs(name):
    if name in ("bert", "gpt2"):
        pytest.importorskip("transformers")


def _out(model, data, loss):
    with torch.no_grad():
        return logits_of(criterion(loss).forward(model.eval(), data))


@pytest.mark.parametrize("name", ARCHS)
def test_permuted_copy_same_function_and_aligns_back(name, one_thread):
    _needs(name)
    model, data, loss = build(name, 0), data_for(name), LOSS.get(name, "cross_entropy")
    spec = permutation_spec(model, example=data)
    assert spec.groups, name
    permuted, perms = random_permutation(model, seed=1, spec=spec)
    assert any(bool((p != torch.arange(len(p))).any()) for p in perms.values())
    ref = _out(model, data, loss)
    assert (ref - _out(permuted, data, loss)).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max())), name
    for method in ("weights", "activations"):
        back = align(model, permuted, method=method, data=data)
        it = interpolate(model, back, {"d": data}, alphas=[0, 0.5, 1], loss=loss)
        assert abs(it.loss_barrier("d")) < 1e-4, (name, method)
        sa, sb = model.state_dict(), back.state_dict()
        assert max(float((sa[k] - sb[k]).abs().max()) for k in sa if sa[k].is_floating_point()) < 1e-5, (name, method)


@pytest.mark.parametrize("name", ARCHS)
def test_independent_copies_align_with_same_function_and_repair_endpoints(name, one_thread):
    _needs(name)
    a, b, data, loss = build(name, 0), build(name, 1), data_for(name), LOSS.get(name, "cross_entropy")
    aligned = align(a, b, method="weights", data=data)  # checked inside; checked again here
    ref = _out(b, data, loss)
    assert (ref - _out(aligned, data, loss)).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))
    rep = interpolate_repaired(a, aligned, {"d": data}, data, alphas=[0, 0.5, 1], loss=loss)
    la, lb = evaluate_model(a, data, loss)[0], evaluate_model(b, data, loss)[0]
    assert abs(rep.loss["d"][0] - la) < 1e-4 * max(1, la) and abs(rep.loss["d"][2] - lb) < 1e-4 * max(1, lb), name


def test_shared_layer_merges_its_groups_and_repair_visits_it_once(one_thread):
    m = SharedLayer()
    spec = permutation_spec(m, example=data_for("shared"))
    # fc2 maps its own outputs back to its inputs: fc1's, fc2's units are one permutation
    assert list(spec.groups) == ["P_fc1"]
    members = {(x.name, x.axis) for x in spec.groups["P_fc1"]}
    assert {("fc2.weight", 0), ("fc2.weight", 1), ("fc1.weight", 0), ("fc3.weight", 1)} <= members
    assert spec.repair_layers == ["fc1", "fc2"]
    rep = Repairer(m, build("shared", 1), data_for("shared"), spec=spec)
    assert rep.order == ["fc1", "fc2"] and rep.calls["fc2"] == 2


def test_tied_weights_one_consistent_permutation_even_from_a_hand_written_spec(one_thread):
    a, b, data = TiedLM(), build("tied", 1), data_for("tied")
    spec = permutation_spec(a, example=data)
    assert spec.aliases == {"out.weight": "emb.weight"}
    assert all(x.name != "out.weight" for ms in spec.groups.values() for x in ms)
    # a hand-written spec naming both names of the tied tensor in two groups: merged into one
    hand = {"e": [("emb.weight", 1), ("mix.weight", 1)], "m": [("mix.weight", 0), ("mix.bias", 0), ("out.weight", 1)]}
    aligned = align(a, b, spec=hand, data=data)
    assert torch.allclose(_out(aligned, data, "cross_entropy"), _out(b, data, "cross_entropy"), atol=1e-5)


def test_wrong_spec_is_refused_in_one_line_naming_the_group(one_thread):
    a, b, data = build("standardised", 0), build("standardised", 1), data_for("standardised")
    wrong = {"h1": [("fc1.weight", 0), ("fc1.bias", 0)]}  # forgets fc2's inputs
    with pytest.raises(UserError) as e:
        align(a, b, spec=wrong, data=data)
    msg = str(e.value)
    assert "\n" not in msg and "'h1'" in msg and "same function" in msg


def test_unsupported_operation_is_one_line():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(10, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    with pytest.raises(UserError) as e:
        align(Cat(), Cat(), data=(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)))
    assert "\n" not in str(e.value) and "'cat' along the permuted axis" in str(e.value)


def test_unpermuted_tensors_pass_any_operation_and_cat_split_getitem_work(one_thread):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            left, right = torch.split(x, 2, dim=1)[0], x[:, 2:]  # on the raw input
            x = torch.cat([right, left], 1).sort(1).values  # sort: unknown to the derivation, harmless here
            h = torch.relu(self.fc1(x))
            h = torch.cat([h[:2], h[2:]], 0)  # along the batch axis of a permuted tensor
            return self.fc2(h.unsqueeze(1).transpose(1, 2).squeeze(2))

    torch.manual_seed(0)
    m = Net().eval()
    data = (torch.randn(16, 8), torch.zeros(16, dtype=torch.long))
    spec = permutation_spec(m, example=data)
    assert spec.sizes(m.state_dict()) == {"P_fc1": 6}
    p, _ = random_permutation(m, seed=2, spec=spec)
    assert torch.allclose(m(data[0]), p(data[0]), atol=1e-6)


def test_groupnorm_groups_and_channels_within_them():
    spec = permutation_spec(build("groupnorm"), example=data_for("groupnorm"))
    # the whole symmetry group: the GroupNorm groups, and one permutation within each group
    assert spec.sizes(build("groupnorm").state_dict()) == {
        "P_net.0[0]": 4, "P_net.0[1]": 4, "P_net.1.groups": 2,
        "P_net.4[0]": 2, "P_net.4[1]": 2, "P_net.4[2]": 2, "P_net.4[3]": 2, "P_net.5.groups": 4}
    assert spec.blocks == {"P_net.1.groups": [["P_net.0[0]", "P_net.0[1]"]],
                           "P_net.5.groups": [[f"P_net.4[{b}]" for b in range(4)]]}


def _wreath(channels: int, blocks: int, g: torch.Generator) -> torch.Tensor:
    """A random element of the symmetry group of `blocks` blocks of channels: the blocks
    permuted, and the channels of each block permuted independently of the others."""
    per = channels // blocks
    order = torch.randperm(blocks, generator=g)
    return torch.cat([order[b] * per + torch.randperm(per, generator=g) for b in range(blocks)])


def _max_difference(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("seed", [3, 4])
def test_groupnorm_copy_permuted_independently_in_each_group_aligns_back(seed, one_thread):
    """Written without the spec: each GroupNorm group's channels permuted on their own (the
    same function); weight and activation matching both bring the copy back exactly."""
    model, data = build("groupnorm", 0), data_for("groupnorm")
    g = torch.Generator().manual_seed(seed)
    p0, p1 = _wreath(8, 2, g), _wreath(8, 4, g)
    assert any(not torch.equal(p1[2 * b:2 * b + 2] - p1[2 * b:2 * b + 2].min(), torch.tensor([0, 1]))
               for b in range(4))  # some group's channels are reordered inside it
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k in ("net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias"):
        sd[k] = sd[k][p0]
    sd["net.4.weight"] = sd["net.4.weight"][:, p0][p1]
    for k in ("net.4.bias", "net.5.weight", "net.5.bias"):
        sd[k] = sd[k][p1]
    sd["net.8.weight"] = sd["net.8.weight"].reshape(4, 8, 16)[:, p1].reshape(4, 128)
    copy = build("groupnorm", 0)
    copy.load_state_dict(sd)
    assert torch.allclose(_out(model, data, "cross_entropy"), _out(copy, data, "cross_entropy"), atol=1e-5)
    assert _max_difference(model, copy) > 0.1
    for method in ("weights", "activations"):
        assert _max_difference(model, align(model, copy, method=method, data=data)) < 1e-6, method


def test_attention_copy_permuted_independently_in_each_head_aligns_back(one_thread):
    """nn.TransformerEncoderLayer, written without the spec: heads permuted, and each head's
    Q/K dimensions and V dimensions permuted on their own (the same function)."""
    model, data = build("encoder", 0), data_for("encoder")
    g = torch.Generator().manual_seed(5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    E, H = 16, 4
    d = E // H
    for layer in range(2):
        pre = f"layers.{layer}.self_attn"
        heads = torch.randperm(H, generator=g)
        qk = torch.cat([heads[h] * d + torch.randperm(d, generator=g) for h in range(H)])
        vo = torch.cat([heads[h] * d + torch.randperm(d, generator=g) for h in range(H)])
        rows = torch.cat([qk, E + qk, 2 * E + vo])
        sd[f"{pre}.in_proj_weight"] = sd[f"{pre}.in_proj_weight"][rows]
        sd[f"{pre}.in_proj_bias"] = sd[f"{pre}.in_proj_bias"][rows]
        sd[f"{pre}.out_proj.weight"] = sd[f"{pre}.out_proj.weight"][:, vo]
    copy = build("encoder", 0)
    copy.load_state_dict(sd)
    assert torch.allclose(_out(model, data, "cross_entropy"), _out(copy, data, "cross_entropy"), atol=1e-5)
    assert _max_difference(model, copy) > 0.1
    spec = permutation_spec(model, example=data)
    assert all(len(fams) == 2 and all(len(f) == H for f in fams) for fams in spec.blocks.values())
    for method in ("weights", "activations"):
        assert _max_difference(model, align(model, copy, method=method, data=data)) < 1e-5, method


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_hf_copy_permuted_independently_in_each_head_aligns_back(name, one_thread):
    _needs(name)
    model, data = build(name, 0), data_for(name)
    spec = permutation_spec(model, example=data)
    heads = [og for og in spec.blocks if og.endswith(".heads")]
    assert heads and all(len(spec.blocks[og]) == 2 for og in heads)  # Q/K and V/O dimensions per head
    copy, perms = random_permutation(model, seed=7, spec=spec)
    within = [perms[w].tolist() for og in heads for f in spec.blocks[og] for w in f]
    assert len({tuple(p) for p in within}) > 1  # the heads' own permutations differ
    loss = LOSS[name]
    assert torch.allclose(_out(model, data, loss), _out(copy, data, loss), atol=1e-4)
    for method in ("weights", "activations"):
        assert _max_difference(model, align(model, copy, method=method, data=data)) < 1e-5, method


@pytest.mark.parametrize("name", ["bert", "gpt2", "encoder"])
def test_attention_groups(name):
    _needs(name)
    m = build(name)
    sizes = permutation_spec(m, example=data_for(name)).sizes(m.state_dict())
    heads = [g for g in sizes if g.endswith(".heads")]
    assert heads and all(sizes[g] == (4 if name == "encoder" else 2) for g in heads)
    assert any(".qk[" in g for g in sizes) and any(".vo[" in g for g in sizes)  # one group per head each
    assert max(sizes.values()) == {"bert": 32, "gpt2": 64, "encoder": 32}[name]  # the MLP's hidden units


def test_two_input_activation_matching_with_dict_batches_and_forward(one_thread):
    a, b = build("two-input", 0), build("two-input", 1)
    x1, x2, y = data_for("two-input")
    data = {"left": x1, "right": x2, "labels": y}
    fwd = lambda m, batch: m(batch["left"], batch["right"])  # noqa: E731
    for features in ("post", "all"):
        aligned = align(a, b, method="activations", data=data, forward=fwd, features=features)
        assert torch.allclose(aligned(x1, x2), b(x1, x2), atol=1e-5)
    with pytest.raises(UserError, match="features"):
        align(a, b, method="activations", data=data, forward=fwd, features="pre")


def test_check_without_data_uses_a_made_up_input_or_asks_for_data():
    a, b = build("standardised", 0), build("standardised", 1)
    align(a, b)  # Linear first: an input is made up for the check
    with pytest.raises(UserError, match="pass data="):
        align(a, b, spec=PermutationSpec({"h": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]}),
              forward=lambda m, batch: m(batch["x"]))


def test_rmsnorm_residual_stream(one_thread):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.norm = nn.Linear(5, 8), nn.RMSNorm(8)
            self.up, self.down, self.out = nn.Linear(8, 12), nn.Linear(12, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.down(F.gelu(self.up(self.norm(h))))  # a pre-norm residual block
            return self.out(h)

    import torch.nn.functional as F

    torch.manual_seed(0)
    a, b = Net().eval(), Net().eval()
    data = (torch.randn(32, 5), torch.zeros(32, dtype=torch.long))
    sizes = permutation_spec(a, example=data).sizes(a.state_dict())
    assert sizes == {"P_inp": 8, "P_up": 12}  # the stream (inp, norm, down) and the block's hidden units
    p, _ = random_permutation(a, seed=1, spec=permutation_spec(a, example=data))
    back = align(a, p, data=data)
    assert torch.allclose(back.inp.weight, a.inp.weight, atol=1e-6)
    align(a, b, data=data, method="activations")

import pytest
import torch

from conftest import tiny_cnn, tiny_mlp
from lossprobe import ParamSpace, UserError


def test_flatten_unflatten_round_trip_mlp():
    m = tiny_mlp()
    sp = ParamSpace(m)
    v = sp.flatten(m)
    assert v.shape == (sum(p.numel() for p in m.parameters()),)
    d = sp.unflatten(v)
    for name, p in m.named_parameters():
        assert torch.equal(d[name], p)
    # views, not copies
    v[0] = 123.0
    assert d[sp.names[0]].reshape(-1)[0] == 123.0


def test_round_trip_with_buffers_and_kinds():
    m = tiny_cnn(batchnorm=True)
    with torch.no_grad():
        for b in m.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
    sp = ParamSpace(m, include_buffers=True)
    kinds = {e.name: e.kind for e in sp.entries}
    assert kinds["0.weight"] == "weight"
    assert kinds["1.weight"] == "norm" and kinds["1.bias"] == "norm"
    assert kinds["1.running_mean"] == "buffer" and kinds["1.running_var"] == "buffer"
    assert "1.num_batches_tracked" not in kinds  # integer buffers are not part of the space
    assert kinds[sp.names[-1]] in ("bias", "buffer")
    v = sp.flatten(m)
    m2 = tiny_cnn(seed=5)
    sp.load_into(m2, v)
    for (n1, t1), (n2, t2) in zip(m.state_dict().items(), m2.state_dict().items()):
        if t1.is_floating_point():
            assert torch.equal(t1, t2), n1
    assert sp.mask(["buffer"]).sum() == sum(b.numel() for b in m.buffers() if b.is_floating_point())


def test_incompatible_models_name_the_parameter():
    a, b = ParamSpace(tiny_mlp(widths=(2, 8, 2))), ParamSpace(tiny_mlp(widths=(2, 9, 2)))
    with pytest.raises(UserError, match="'1.weight'"):
        a.check_compatible(b)


def test_wrong_vector_length_is_a_clear_error():
    sp = ParamSpace(tiny_mlp())
    with pytest.raises(UserError, match="expected"):
        sp.unflatten(torch.zeros(3))

"""Gradient graphs kept across Hessian-vector products within a memory budget."""

import pytest
import torch

from conftest import tiny_mlp
from lossprobe import Objective, UserError
from lossprobe.curvature import hessian
from lossprobe.core.graphs import parse_bytes


def _obj(dtype=torch.float64, n=35, batch_size=7):
    torch.manual_seed(0)
    model = tiny_mlp(widths=(6, 16, 3)).to(dtype)
    x, y = torch.randn(n, 6, dtype=dtype), torch.randint(0, 3, (n,))
    return Objective(model, (x, y), batch_size=batch_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cached_and_recomputed_products_agree(one_thread, dtype):
    obj = _obj(dtype)
    v = torch.randn(obj.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kept = hessian.HessianOperator(obj)  # 5 batches, all kept under the default budget
    rebuilt = hessian.HessianOperator(obj, cache_graph=False)
    for w in (v, -2 * v):
        a, b = kept.matvec(w), rebuilt.matvec(w)
        assert float((a - b).norm() / b.norm()) < 1e-6
    assert kept.graphs.stats["kept"] == 5 and kept.graphs.stats["built"] == 5  # second product: no rebuild


def test_budget_is_honoured_and_the_rest_is_rebuilt(one_thread):
    obj = _obj()
    v = torch.randn(obj.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = hessian.HessianOperator(obj, cache_graph=False).matvec(v)
    full = hessian.HessianOperator(obj, cache_budget="inf")
    full.matvec(v)
    per_batch = full.graphs.bytes / 5
    assert per_batch > 0
    part = hessian.HessianOperator(obj, cache_budget=2.5 * per_batch)
    tiny = hessian.HessianOperator(obj, cache_budget=1)  # nothing fits: every product rebuilds
    for H in (part, tiny):
        for _ in range(3):
            assert torch.allclose(H.matvec(v), ref, rtol=1e-10, atol=1e-12)
    assert part.graphs.stats["kept"] == 2 and part.graphs.bytes <= 2.5 * per_batch
    assert part.graphs.stats["built"] == 5 + 2 * 3  # the three batches that do not fit, per product
    assert tiny.graphs.stats["kept"] == 0 and tiny.graphs.stats["built"] == 15


def test_eigenvalues_take_a_budget(one_thread):
    obj = _obj()
    a = hessian.eigenvalues(hessian.HessianOperator(obj, cache_budget=0), k=2)
    b = hessian.eigenvalues(obj, k=2)
    assert a.values == pytest.approx(b.values, rel=1e-9)


def test_parse_bytes():
    assert parse_bytes("2G") == 2e9 and parse_bytes("500M") == 5e8 and parse_bytes("1GiB") == 2 ** 30
    assert parse_bytes("0") == 0 and parse_bytes("inf") == float("inf") and parse_bytes(1234) == 1234
    with pytest.raises(UserError, match="not understood"):
        parse_bytes("lots")

"""Half-precision models work in every probe, with the error against float32 on the same
weights that docs/large-models.md states (measured at scale by benchmarks/precision.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lossprobe as lp
from lossprobe.curvature import hessian

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2():
    """A tiny GPT-2 trained a few steps on a repeated motif (so the loss has structure), and a batch."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    m = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)

    def batch(n):
        x = torch.randint(0, 128, (n, 4), generator=g).repeat(1, 8)
        return {"input_ids": x, "labels": x}

    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(40):
        loss = m(**batch(16)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), batch(8)


KW = dict(loss="model", batch_size=8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_surface_and_hessian_against_float32(gpt2, dtype):
    model, data = gpt2
    half = copy.deepcopy(model).to(dtype)
    ref = copy.deepcopy(half).float()  # the same weights in float32: the arithmetic's error alone
    s32 = lp.surface(ref, data, steps=3, progress=False, **KW).loss
    sh = lp.surface(half, data, steps=3, progress=False, **KW).loss
    assert np.isfinite(sh).all()
    assert np.max(np.abs(sh - s32) / np.abs(s32)) < 1e-2
    assert np.max(np.abs(sh - s32)) < 1e-2 * (s32.max() - s32.min())
    e32 = hessian.eigenvalues(lp.Objective(ref, data, **KW), k=1, tol=1e-5).values[0]
    eh = hessian.eigenvalues(lp.Objective(half, data, **KW), k=1)
    assert eh.vectors.dtype == torch.float32  # bases in float32 for a half-precision model
    assert abs(eh.values[0] - e32) / abs(e32) < 5e-2
    t32 = hessian.trace(lp.Objective(ref, data, **KW), matvecs=9).trace
    th = hessian.trace(lp.Objective(half, data, **KW), matvecs=9).trace
    assert abs(th - t32) / abs(t32) < 5e-2


def test_interpolation_and_slice_of_bfloat16_models(gpt2):
    model, data = gpt2
    a = copy.deepcopy(model).to(torch.bfloat16)
    torch.manual_seed(3)
    b = transformers.GPT2LMHeadModel(model.config).eval().to(torch.bfloat16)
    r = lp.interpolate(a, b, data, alphas=[0, 0.5, 1], **KW)
    r32 = lp.interpolate(a.float(), b.float(), data, alphas=[0, 0.5, 1], **KW)
    a.to(torch.bfloat16), b.to(torch.bfloat16)
    assert np.allclose(r.loss["data"], r32.loss["data"], rtol=1e-2)
    s = lp.slice(a, data, steps=5, progress=False, **KW)
    assert np.isfinite(s.loss).all()


def test_a_float32_model_under_autocast(gpt2):
    model, data = gpt2
    plain = lp.surface(model, data, steps=3, progress=False, **KW).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = lp.surface(model, data, steps=3, progress=False, **KW).loss
        top = hessian.eigenvalues(lp.Objective(model, data, **KW), k=1, tol=1e-3).values[0]
    assert np.max(np.abs(auto - plain) / np.abs(plain)) < 2e-2
    ref = hessian.eigenvalues(lp.Objective(model, data, **KW), k=1, tol=1e-5).values[0]
    assert abs(top - ref) / abs(ref) < 5e-2

"""The Ray backend gives the same numbers as the local one (a local one-CPU Ray instance)."""

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")


def test_ray_backend_equals_local(tmp_path):
    from lossprobe.landscape import surfaces as surface
    from lossprobe.models import mlp

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 4, generator=g), torch.randint(0, 2, (100,), generator=g)
    model = mlp([4, 8, 2], seed=0).eval()
    local = surface.surface(model, (x, y), steps=(3, 4), progress=False)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = surface.surface(model, (x, y), steps=(3, 4), backend="ray", out=tmp_path / "r", progress=False)
    finally:
        ray.shutdown()
    assert remote.mask.all() and remote.meta["backend"] == "ray"
    np.testing.assert_allclose(remote.loss, local.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(remote.accuracy, local.accuracy)
    assert len(list((tmp_path / "r" / "chunks").glob("chunk_*.npz"))) == 3  # the driver stored every chunk

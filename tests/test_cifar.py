"""CIFAR python-batch loader on tiny synthetic files in the real format; the small CNN for it."""

import os
import pickle

import numpy as np
import pytest
import torch

from lossprobe.data.cifar import cifar, cifar_cnn, read_batch, write_batch
from lossprobe.errors import UserError


def _write_cifar10(d, n=12, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(os.path.join(d, f), rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n))


def test_cifar10_loads_standardised_splits(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = cifar(tmp_path, "cifar10", n_val=10, split_seed=0)  # finds the standard subfolder
    assert ds.train.x.shape == (50, 3, 32, 32) and ds.val.x.shape == (10, 3, 32, 32)
    assert ds.test.x.shape == (12, 3, 32, 32) and ds.n_classes == 10
    allx = torch.cat([ds.train.x, ds.val.x])
    assert torch.allclose(allx.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)  # per-channel standardisation
    x, y = read_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    assert x.dtype == np.uint8 and x.shape == (12, 3, 32, 32) and y.dtype == np.int64
    # the same pixel comes back in channel-major layout
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    assert x[3, 1, 5, 7] == raw[b"data"][3, 1024 + 5 * 32 + 7]
    out = cifar_cnn(10, seed=0)(ds.train.x[:4])
    assert out.shape == (4, 10)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    write_batch(tmp_path / "train", rng.integers(0, 256, (30, 3, 32, 32)), rng.integers(0, 100, 30), fine=True)
    write_batch(tmp_path / "test", rng.integers(0, 256, (8, 3, 32, 32)), rng.integers(0, 100, 8), fine=True)
    ds = cifar(tmp_path, "cifar100", n_val=5)
    assert ds.n_classes == 100 and len(ds.train) == 25 and len(ds.test) == 8


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no cifar10 python batches"):
        cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(UserError, match="refusing to load"):
        read_batch(p)
    q = tmp_path / "short"
    q.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match="expected data"):
        read_batch(q)
    with pytest.raises(UserError, match="unknown CIFAR kind"):
        cifar(tmp_path, "cifar11")


def test_cifar_task_for_search(tmp_path):
    from lossprobe.search.probes import make_task

    _write_cifar10(tmp_path, n=20)
    t = make_task(f"cifar10:{tmp_path}", seed=0)
    assert t.input_shape == (3, 32, 32) and t.n_classes == 10
    with pytest.raises(RuntimeError, match="sealed"):
        t.test.x

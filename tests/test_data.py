import gzip
import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
import torch

from conftest import needs_fashion
from lossprobe import UserError
from lossprobe.data import fashion_mnist, read_idx, two_spirals
import lossprobe.data.fashion as fm


def write_idx(path, arr, compress=True):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return raw


def fake_fashion(d, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    raws = {}
    for key, n, shape in (("train_images", n_train, (28, 28)), ("test_images", n_test, (28, 28)),
                          ("train_labels", n_train, ()), ("test_labels", n_test, ())):
        arr = rng.integers(0, 10 if not shape else 256, size=(n, *shape), dtype=np.uint8)
        raws[fm.FILES[key]] = write_idx(d / fm.FILES[key], arr)
    return {k: hashlib.sha256(v).hexdigest() for k, v in raws.items()}


def test_idx_reader_on_tiny_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "a", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short")


def test_explicit_root_and_seeded_split(tmp_path):
    fake_fashion(tmp_path)
    a = fashion_mnist(root=tmp_path, n_val=10, split_seed=3)
    b = fashion_mnist(root=tmp_path, n_val=10, split_seed=3)
    assert len(a.train) == 20 and len(a.val) == 10 and len(a.test) == 10
    assert a.train.x.shape == (20, 1, 28, 28)
    assert set(a.train.indices) | set(a.val.indices) == set(range(30))
    assert not set(a.train.indices) & set(a.val.indices)
    assert torch.equal(a.val.x, b.val.x)
    c = fashion_mnist(root=tmp_path, n_val=10, split_seed=4)
    assert not np.array_equal(a.val.indices, c.val.indices)


def _isolate(monkeypatch, tmp_path):
    monkeypatch.delenv("LOSSPROBE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")


def test_missing_data_and_no_network_is_one_clear_error(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("LOSSPROBE_MIRROR", "http://127.0.0.1:9/")  # nothing listens on the discard port
    with pytest.raises(UserError) as e:
        fashion_mnist()
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "LOSSPROBE_DATA" in msg
    assert "\n" not in msg


def test_env_var_is_searched(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    (tmp_path / "mine").mkdir()
    fake_fashion(tmp_path / "mine")
    monkeypatch.setenv("LOSSPROBE_DATA", str(tmp_path / "mine"))
    assert fm.locate(allow_download=False) == tmp_path / "mine"


def test_download_verifies_sha256(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    served = tmp_path / "mirror"
    served.mkdir()
    sums = fake_fashion(served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("LOSSPROBE_MIRROR", f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.setattr(fm, "SHA256", sums)
        monkeypatch.setattr(fm.download, "__defaults__", (fm.MIRROR, sums, 30))
        ds = fashion_mnist(n_val=5)
        assert ds.root == fm.cache_dir() and len(ds.test) == 10
        # a corrupted mirror is refused
        for f in fm.cache_dir().iterdir():
            f.unlink()
        bad = dict(sums)
        bad[fm.FILES["test_labels"]] = "0" * 64
        monkeypatch.setattr(fm.download, "__defaults__", (fm.MIRROR, bad, 30))
        with pytest.raises(UserError, match="SHA-256"):
            fashion_mnist()
    finally:
        server.shutdown()


@needs_fashion
def test_real_fashion_mnist_shapes():
    ds = fashion_mnist()
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.test.x.shape == (10_000, 1, 28, 28)
    assert abs(float(ds.train.x.mean())) < 0.05 and abs(float(ds.train.x.std()) - 1) < 0.05
    assert sorted(ds.test.y.unique().tolist()) == list(range(10))


def test_two_spirals():
    s = two_spirals(n=50, noise=0.05, seed=1)
    assert s.x.shape == (100, 2) and s.y.tolist() == [0] * 50 + [1] * 50
    assert torch.equal(s.x, two_spirals(n=50, noise=0.05, seed=1).x)
    assert not torch.equal(s.x, two_spirals(n=50, noise=0.05, seed=2).x)
    with pytest.raises(UserError):
        two_spirals(n=0)

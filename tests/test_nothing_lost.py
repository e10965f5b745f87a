"""Nothing lost, nothing stale, nothing silently wrong (issue 23): one fast test per kind of bad
input of the second census round (benchmarks/bad_inputs.py runs many more of each)."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from lossprobe.cli import main
from lossprobe.errors import UserError
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

M = ["--model", "mlp:2-8-2", "--data", "spiral:test"]


@pytest.fixture
def ck(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        save_checkpoint(build("mlp:2-8-2", seed=seed), d / f"{name}.safetensors")
    return d


def lp(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return int(e.code)


def one_line(capsys, rc, *expect, code=None) -> str:
    err = capsys.readouterr().err.strip()
    assert rc != 0 and (code is None or rc == code), (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("lossprobe: error:"), err
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


def ok(capsys, argv) -> str:
    rc = lp(argv)
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


def spiral_npz(path, **change):
    from lossprobe.data import two_spirals

    s = two_spirals(n=200, seed=2)
    arrays = {"x": s.x.numpy(), "y": s.y.numpy(), **change}
    np.savez(path, **arrays)
    return path


# --- 1. a user's file deleted ----------------------------------------------------------------
def test_pca_of_a_users_trajectory_never_deletes_it(tmp_path, capsys):
    from lossprobe.core.directions import pca_directions

    traj = tmp_path / "traj.npy"
    np.save(traj, np.random.default_rng(0).normal(size=(5, 42)).astype(np.float32))
    pca_directions(np.load(traj, mmap_mode="r"), k=2)  # the library call
    assert traj.is_file()
    save_checkpoint(build("mlp:2-8-2", seed=0), tmp_path / "a.safetensors")
    ok(capsys, ["surface", tmp_path / "a.safetensors", *M, "--steps", "3", "--directions", f"pca:{traj}",
                "--out", tmp_path / "s"])
    assert traj.is_file()  # the CLI memory-maps it too
    spill = tmp_path / "spill"
    spill.mkdir()
    pca_directions((torch.randn(42) for _ in range(4)), k=1, tmpdir=str(spill))
    assert not list(spill.iterdir())  # its own temporary file is gone


def test_training_checkpoints_leave_a_users_files_in_the_folder(tmp_path):
    from lossprobe.data import two_spirals
    from lossprobe.training.loop import TrainConfig, fit

    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    (ckdir / "model-best.safetensors").write_bytes(b"mine")
    (ckdir / "trajectory-old.npy").write_bytes(b"mine")
    s = two_spirals(n=50, seed=0)
    fit(build("mlp:2-8-2", seed=0), s, s, TrainConfig(epochs=2, batch_size=50), checkpoint_dir=ckdir,
        trajectory_every=1)
    assert (ckdir / "model-best.safetensors").read_bytes() == b"mine"
    assert (ckdir / "trajectory-old.npy").read_bytes() == b"mine"
    assert not (ckdir / "model-1.safetensors").exists() and (ckdir / "model-2.safetensors").is_file()


# --- 2. a user's folder moved by --force: one definition of a run directory ---------------------
def test_a_folder_that_looks_like_a_run_is_never_moved(ck, tmp_path, capsys):
    from lossprobe.results.store import is_run_dir

    run = tmp_path / "run"
    ok(capsys, ["sharpness", ck / "a.safetensors", *M, "--measures", "sam", "--out", run])
    assert is_run_dir(run)
    looks = {
        "copy": {n: (run / n).read_text() for n in ("config.json", "environment.json", "summary.json")},
        "marker": {".lossprobe-run": "my notes\n"},
        "lock": {".lossprobe.lock": "not a pid\n"},
        "tmpname": {"draft.lossprobe-tmp": "mine\n"},
    }
    for way, files in looks.items():
        d = tmp_path / way
        d.mkdir()
        for name, text in {**files, "thesis.tex": "mine\n"}.items():
            (d / name).write_text(text)
        before = {f.name: f.read_bytes() for f in d.iterdir()}
        assert not is_run_dir(d)
        for force in ([], ["--force"]):
            rc = lp(["sharpness", ck / "a.safetensors", *M, "--measures", "sam", "--out", d, *force])
            one_line(capsys, rc, "is not a lossprobe run", code=2)
            assert {f.name: f.read_bytes() for f in d.iterdir()} == before, way
    assert not list(tmp_path.glob("*.old-*"))


def test_force_never_moves_what_the_command_reads_and_dot_names_the_folder(ck, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    ok(capsys, ["slice", ck / "a.safetensors", *M, "--steps", "3", "--out", run])
    shutil.copy(ck / "b.safetensors", run / "b.safetensors")
    rc = lp(["surface", ck / "a.safetensors", *M, "--steps", "3", "--directions", f"towards:{run}/b.safetensors",
             "--out", run, "--force"])
    one_line(capsys, rc, "--force would move", "b.safetensors", "which this command reads")
    assert (run / "b.safetensors").is_file() and not list(tmp_path.glob("run.old-*"))
    monkeypatch.chdir(run / "figures")  # --out .. from a run's subfolder moves the whole run
    ok(capsys, ["sharpness", ck / "a.safetensors", *M, "--measures", "sam", "--out", "..", "--force"])
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "figures").is_dir() and (old / "b.safetensors").is_file() and (old / "config.json").is_file()
    monkeypatch.chdir(run)  # and --out . the run it is in
    ok(capsys, ["slice", ck / "a.safetensors", *M, "--steps", "3", "--out", ".", "--force"])
    assert len(list(tmp_path.glob("run.old-*"))) == 2 and json.loads((run / "config.json").read_text())["kind"] == "slice"


def test_a_site_never_overwrites_or_deletes_a_users_file(ck, tmp_path, capsys):
    run, site = tmp_path / "run", tmp_path / "site"
    ok(capsys, ["sharpness", ck / "a.safetensors", *M, "--measures", "sam", "--out", run])
    ok(capsys, ["report", run, "--out", site])
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(site / ".lossprobe-site", mine / ".lossprobe-site")  # a copied manifest ...
    (mine / "index.html").write_text("<p>mine</p>")  # ... beside the user's own page
    one_line(capsys, lp(["report", run, "--out", mine]), "holds index.html, which lossprobe did not write")
    assert (mine / "index.html").read_text() == "<p>mine</p>"
    (site / "assets" / "site.css").write_text("my edit")  # a site file the user changed is not replaced
    one_line(capsys, lp(["report", run, "--out", site]), "assets/site.css")
    assert (site / "assets" / "site.css").read_text() == "my edit"


# --- 3. a resume that does not notice changed inputs --------------------------------------------
def test_a_changed_input_is_refused_on_resume_naming_it(ck, tmp_path, capsys):
    a = tmp_path / "a.safetensors"
    shutil.copy(ck / "a.safetensors", a)
    args = ["hessian", a, *M, "--top-k", "1", "--out", tmp_path / "h"]
    ok(capsys, args)
    ok(capsys, args)  # unchanged: the complete run is reopened
    shutil.copy(ck / "b.safetensors", a)
    one_line(capsys, lp(args), "the checkpoint", "has changed since", "--force")
    data = spiral_npz(tmp_path / "d.npz")
    loss = tmp_path / "myloss.py"
    loss.write_text("import torch.nn.functional as F\ndef ce(out, y):\n    return F.cross_entropy(out, y, "
                    "reduction='none')\n")
    args = ["surface", ck / "a.safetensors", "--model", "mlp:2-8-2", "--data", data, "--loss", f"{loss}:ce",
            "--steps", "3", "--out", tmp_path / "s"]
    ok(capsys, args)
    z = dict(np.load(data))
    z["x"][300] += 1  # beyond the rows the grid's own fingerprint reads
    np.savez(data, **z)
    one_line(capsys, lp(args), "--data file", "has changed since")
    spiral_npz(data)
    ok(capsys, args)
    loss.write_text(loss.read_text() + "# edited\n")
    one_line(capsys, lp(args), "--loss code", "myloss.py")


def test_a_run_from_before_inputs_json_resumes_with_a_warning(ck, tmp_path, capsys):
    args = ["sharpness", ck / "a.safetensors", *M, "--measures", "sam", "--out", tmp_path / "o"]
    ok(capsys, args)
    (tmp_path / "o" / "inputs.json").unlink()
    marker = json.loads((tmp_path / "o" / ".lossprobe-run").read_text())
    del marker["run_id"]
    (tmp_path / "o" / ".lossprobe-run").write_text(json.dumps(marker))
    assert "did not record its inputs" in ok(capsys, args)
    assert (tmp_path / "o" / "inputs.json").is_file() and "run_id" in json.loads(
        (tmp_path / "o" / ".lossprobe-run").read_text())


def test_a_grid_resumed_on_other_data_is_refused_by_the_library(tmp_path):
    from lossprobe.data import two_spirals
    from lossprobe.landscape.surfaces import surface

    model, s = build("mlp:2-8-2", seed=0), two_spirals(n=200, seed=2)
    surface(model, s, steps=3, out=tmp_path / "g")
    x = s.x.clone()
    x[300] += 1
    with pytest.raises(UserError, match="different surface"):
        surface(model, (x, s.y), steps=3, out=tmp_path / "g")


# --- 4. silently wrong targets and losses --------------------------------------------------------
def test_targets_that_do_not_fit_the_loss_are_refused(ck, tmp_path, capsys):
    a = ck / "a.safetensors"
    cases = [
        (spiral_npz(tmp_path / "f.npz", y=np.full(400, 0.7, np.float32)), "floats with a fraction"),
        (f"{spiral_npz(tmp_path / 'xx.npz')}:x,x", "class probabilities"),
        (spiral_npz(tmp_path / "late.npz", y=np.where(np.arange(400) == 350, 7, 0)), "class 7 at sample 350"),
        (spiral_npz(tmp_path / "neg.npz", y=np.where(np.arange(400) == 350, -1, 0)), "class -1 at sample 350"),
    ]
    for data, expect in cases:
        one_line(capsys, lp(["hessian", a, "--model", "mlp:2-8-2", "--data", data, "--out", tmp_path / "o"]), expect)
    ok(capsys, ["hessian", a, "--model", "mlp:2-8-2", "--data",
                spiral_npz(tmp_path / "ign.npz", y=np.where(np.arange(400) % 5, 1, -100)), "--top-k", "1",
                "--out", tmp_path / "ign"])  # -100 is ignored, as in torch
    loss = tmp_path / "l.py"
    loss.write_text("import torch.nn.functional as F\ndef mean1(out, y):\n    return F.cross_entropy(out, y)"
                    ".reshape(1)\n")
    one_line(capsys, lp(["slice", a, *M, "--loss", f"{loss}:mean1", "--out", tmp_path / "o"]),
             "returned 1 value(s) for a batch of")
    assert not (tmp_path / "o").exists()


def test_checkpoints_of_another_dtype_or_layout_and_empty_classes_are_refused(ck, tmp_path, capsys):
    from PIL import Image

    sd = build("mlp:2-8-2", seed=0).state_dict()
    for name, state, expect in (("bool", {k: v.bool() for k, v in sd.items()}, "holds bool values"),
                                ("complex", {k: v.to(torch.complex64) for k, v in sd.items()}, "complex64"),
                                ("sparse", {k: v.to_sparse() for k, v in sd.items()}, "sparse"),
                                ("meta", {k: v.to("meta") for k, v in sd.items()}, "meta")):
        torch.save(state, tmp_path / f"{name}.pt")
        one_line(capsys, lp(["hessian", tmp_path / f"{name}.pt", *M, "--out", tmp_path / "o"]), expect)
    for c in ("a", "b", "c"):
        (tmp_path / "img" / c).mkdir(parents=True)
        if c != "b":
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / c / "0.png")
    from lossprobe.data.sources import image_folder

    with pytest.raises(UserError, match="class folder 'b' holds no images"):
        image_folder(str(tmp_path / "img"))


# --- 5. tracebacks past the first batch: one line naming the batch ------------------------------
def test_an_error_in_a_later_batch_is_one_line_naming_it(ck, tmp_path, capsys):
    loss = tmp_path / "late.py"
    loss.write_text("import torch.nn.functional as F\nn = [0]\ndef ce(out, y):\n    n[0] += 1\n"
                    "    if n[0] > 2:\n        raise RuntimeError('breaks later')\n"
                    "    return F.cross_entropy(out, y, reduction='none')\n")
    rc = lp(["slice", ck / "a.safetensors", *M, "--loss", f"{loss}:ce", "--batch-size", "100", "--steps", "3",
             "--out", tmp_path / "o"])
    one_line(capsys, rc, "batch 2 of 4 of data 'spiral:test' (samples 100-199)", "RuntimeError: breaks later")
    from lossprobe.core.batching import BatchError
    from lossprobe.core.objective import Objective
    from lossprobe.data import two_spirals

    s = two_spirals(n=200, seed=2)
    batches = [(s.x[i:i + 100], s.y[i:i + 100].clone()) for i in range(0, 400, 100)]
    batches[3][1][5] = 9  # a stream is not checked up front: its batch is named when it fails
    obj = Objective(build("mlp:2-8-2", seed=0), batches)
    with pytest.raises(BatchError, match=r"batch 4 of data 'data': IndexError: Target 9 is out of bounds"):
        obj.loss_at()


# --- 6. more tracebacks ----------------------------------------------------------------------------
def test_a_full_disk_inside_torch_save_is_one_line(tmp_path, monkeypatch):
    from lossprobe.errors import StorageError
    from lossprobe.results import atomic

    real = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

    monkeypatch.setattr(atomic, "open", lambda f, mode="r", *a, **k: Full(real(f, mode, *a, **k)), raising=False)
    with pytest.raises(StorageError, match="no space left on the device"):
        atomic.save_torch(tmp_path / "state.pt", {"w": torch.zeros(10)})
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())


def test_damaged_resume_files_are_recomputed(ck, tmp_path, capsys):
    args = ["surface", ck / "a.safetensors", *M, "--steps", "3", "--out", tmp_path / "s"]
    ok(capsys, args)
    want = np.load(tmp_path / "s" / "surface.npz")["loss"]
    g = tmp_path / "s"
    (g / "directions.json").write_text(json.dumps({"request": json.loads((g / "directions.json").read_text())
                                                   ["request"], "directions": [1, 2, 3]}))
    (g / "directions.safetensors").write_bytes((g / "directions.safetensors").read_bytes()[:50])
    ok(capsys, args)
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "surface.npz")["loss"], want)


def test_more_bad_files_and_code_are_one_line(ck, tmp_path, capsys):
    from lossprobe.data import read_idx
    from lossprobe.results.store import read_json
    from lossprobe.runtime.config import read_toml

    (tmp_path / "t-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(tmp_path / "t-idx3-ubyte")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_toml(tmp_path / "deep.toml")
    code = tmp_path / "mine.py"
    code.write_text("import sys\nclass Stop(BaseException):\n    pass\ndef stop():\n    raise Stop('no')\n"
                    "def leave():\n    sys.exit(3)\n")
    one_line(capsys, lp(["hessian", ck / "a.safetensors", "--model", f"{code}:stop", "--data", "spiral:test",
                         "--out", tmp_path / "o"]), "raised Stop: no")
    one_line(capsys, lp(["hessian", ck / "a.safetensors", "--model", "mlp:2-8-2", "--data", f"{code}:leave",
                         "--out", tmp_path / "o"]), "called sys.exit(3)")
    one_line(capsys, lp(["hessian", ck / "a.safetensors", "--model", "mlp:2-100000000000-2", "--data",
                         "spiral:test", "--out", tmp_path / "o"]), "500,000,000,002 parameters")
    assert not (tmp_path / "o").exists()
    traj = np.random.default_rng(0).normal(size=(4, 42)).astype(np.float32)
    traj[1, 3] = np.nan
    np.save(tmp_path / "nan.npy", traj)
    one_line(capsys, lp(["slice", ck / "a.safetensors", *M, "--directions", f"pca:{tmp_path / 'nan.npy'}",
                         "--out", tmp_path / "p"]), "NaN or infinite values")
    assert (tmp_path / "nan.npy").is_file()


# --- 7. serve ------------------------------------------------------------------------------------------
def test_serve_resolves_the_site_once_and_never_serves_dot_files(tmp_path):
    from lossprobe.cli.serve import make_server

    site = tmp_path / "site"
    (site / "runs").mkdir(parents=True)
    (site / "index.html").write_text("<html>site</html>")
    (site / ".lossprobe.lock").write_text("123\n")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", site / "runs" / "link.txt")
    server = make_server(site, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path):
        c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()

    try:
        assert get("/")[0] == 200
        for path in ("/.lossprobe.lock", "/index.html%00.txt", "/runs/link.txt", "/%2e%2e/secret.txt", "/runs"):
            assert get(path)[0] == 404, path
        os.rename(site, tmp_path / "site-real")
        os.symlink(tmp_path, site)  # the site folder replaced by a link to its parent while serving
        assert get("/secret.txt")[0] == 404 and get("/index.html") == (200, b"<html>site</html>")
    finally:
        server.shutdown()
        server.server_close()
        os.close(server.site_root_fd)


# --- 8. resources ------------------------------------------------------------------------------------
def test_zip_bombs_and_decompression_bombs_are_refused_before_they_take_memory(ck, tmp_path, capsys, monkeypatch):
    import struct
    import zipfile
    import zlib

    from lossprobe.results import store

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (4_000_000_000,)  # 32 GB declared in a file of a few hundred bytes
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "liar.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue() + b"\0" * 64)
        z.writestr("y.npy", buf.getvalue() + b"\0" * 64)
    one_line(capsys, lp(["hessian", ck / "a.safetensors", "--model", "mlp:2-8-2", "--data", tmp_path / "liar.npz",
                         "--out", tmp_path / "o"]), "a zip bomb?")
    monkeypatch.setattr(store, "BOMB_BYTES", 1_000_000)  # a real one, small
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros(2_000_000, np.uint8))
    with pytest.raises(UserError, match="zip bomb"):
        store.load_arrays(tmp_path / "bomb.npz")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    (tmp_path / "img" / "a" / "big.png").write_bytes(png)
    (tmp_path / "img" / "b" / "big.png").write_bytes(png)
    from lossprobe.data.sources import image_folder

    with pytest.raises(UserError, match="decompression bomb"):
        image_folder(str(tmp_path / "img"))


# --- 9. messages that mislead ----------------------------------------------------------------------
def test_messages_say_what_is_wrong(ck, tmp_path, capsys):
    a = ck / "a.safetensors"
    out = ["--out", tmp_path / "o"]
    argmod = tmp_path / "script.py"
    argmod.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', required=True)\n"
                      "p.parse_args()\ndef build():\n    pass\n")
    one_line(capsys, lp(["hessian", a, "--model", f"{argmod}:build", "--data", "spiral:test", *out]),
             "called sys.exit(2) while being imported", "__main__")
    one_line(capsys, lp(["surface", a, *M, "--steps", "1", "5", *out]), "at least 2 points per axis")
    one_line(capsys, lp(["hessian", a, *M, "--seed", str(2 ** 70), *out]), "--seed", "expected a seed")
    one_line(capsys, lp(["align", a, ck / "b.safetensors", *M, "--seed", "-5", *out]), "--seed", "expected a seed")
    one_line(capsys, lp(["surface", a, *M, "--span", "auto:1e300", *out]), "FACTOR up to")
    one_line(capsys, lp(["hessian", a, "--model", "mlp:2-16-2:tanh:gelu", "--data", "spiral:test", *out]),
             "2 activations")
    (tmp_path / "zero.pt").write_bytes(b"\0" * 4096)
    err = one_line(capsys, lp(["hessian", tmp_path / "zero.pt", *M, *out]), "damaged or not a checkpoint")
    assert "weights_only" not in err
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    err = one_line(capsys, lp(["hessian", a, "--model", "mlp:2-8-2", "--data", tmp_path / "trunc.npz", *out]),
                   "is damaged")
    assert "safely" not in err and "code" not in err
    xn = spiral_npz(tmp_path / "n.npz", x=np.where(np.arange(800).reshape(400, 2) == 601, np.nan, 0.5).astype("f4"))
    err = one_line(capsys, lp(["hessian", a, "--model", "mlp:2-8-2", "--data", xn, *out]), "NaN or infinite value")
    assert "checkpoint" not in err and "sample 300" in err
    assert not (tmp_path / "o").exists()
    ok(capsys, ["slice", a, *M, "--steps", "3", "--span", "-1e6", "1e6", "--out", tmp_path / "wide"])

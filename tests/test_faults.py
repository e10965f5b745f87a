"""Nothing lost, nothing leaked: --force never touches the user's files, one writer per run
directory, and a read-only or full disk gives one line and leaves no partial file.

The disk errors are tested twice: faked in this process (a patched open, ENOSPC at one chosen
file's fsync), which runs anywhere, and on real file systems (a read-only tmpfs, a tmpfs that
fills up; permission bits with root's override dropped), which needs root: those skip, saying
why, where mounting is impossible."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lossprobe.results import atomic
from lossprobe.cli import main
from lossprobe.models import build
from lossprobe.training.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).parent
M = ["--model", "mlp:2-8-2", "--data", "spiral:test"]


@pytest.fixture
def ckpts(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        save_checkpoint(build("mlp:2-8-2", seed=seed), d / f"{name}.safetensors")
    return d


def interpolate_args(ckpts, out, *extra):
    return ["interpolate", str(ckpts / "a.safetensors"), str(ckpts / "b.safetensors"), *M, "--alphas", "5",
            *extra, "--out", str(out)]


def ok(capsys, argv):
    """Run a command that must succeed, and forget what it printed."""
    assert main(argv) == 0
    capsys.readouterr()


def one_line(capsys, rc, *expect, code=None, after_progress=False):
    """The command failed with one line (after the progress bars of the work done before, if allowed)."""
    return one_line_in(capsys.readouterr().err, rc, *expect, code=code, after_progress=after_progress)


def one_line_in(err: str, rc, *expect, code=None, after_progress=False):
    """`one_line` for the standard error `err` of a command run elsewhere."""
    err = err.strip()
    assert rc != 0 and (code is None or rc == code), (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    if after_progress:
        lines = [ln for ln in lines if not re.search(r"\d+%\||/s\]\s*$|\[\d\d:\d\d", ln)]
    assert len(lines) == 1 and lines[0].startswith("lossprobe: error:"), err
    for e in expect:
        assert e in err, err
    return err


def foreign_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("my thesis\n")
    (path / "sub" / "data.csv").write_text("1,2\n")
    return path


def assert_foreign_intact(path: Path) -> None:
    assert (path / "thesis.tex").read_text() == "my thesis\n"
    assert (path / "sub" / "data.csv").read_text() == "1,2\n"


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if atomic.is_temp(p.name)]


# --- --force ---------------------------------------------------------------------------------
def test_force_on_a_foreign_folder_refuses_and_deletes_nothing(ckpts, tmp_path, capsys):
    thesis = foreign_folder(tmp_path / "thesis")
    for extra in ((), ("--force",)):
        rc = main(interpolate_args(ckpts, thesis, *extra))
        one_line(capsys, rc, "is not a lossprobe run", "sub/, thesis.tex", "never moves or deletes", code=2)
        assert_foreign_intact(thesis)
        assert sorted(p.name for p in thesis.iterdir()) == ["sub", "thesis.tex"]  # nothing added either
    space = tmp_path / "space.toml"
    space.write_text("[train]\nepochs = 1\n[params]\nlr = { type = \"float\", low = 0.01, high = 0.1 }\n")
    rc = main(["search", "--space", str(space), "--dataset", "spiral", "--out", str(thesis), "--force"])
    one_line(capsys, rc, "is not a lossprobe run", code=2)
    assert_foreign_intact(thesis)


def test_force_on_a_run_moves_it_aside_and_deletes_nothing(ckpts, tmp_path, capsys):
    run = tmp_path / "run"
    ok(capsys, interpolate_args(ckpts, run))
    (run / "notes.txt").write_text("mine\n")
    old_summary = (run / "summary.json").read_text()
    rc = main(["sharpness", str(ckpts / "a.safetensors"), *M, "--measures", "sam", "--out", str(run)])
    one_line(capsys, rc, "already holds a different run (interpolate)", "--force", code=2)
    assert (run / "summary.json").read_text() == old_summary
    assert main(["sharpness", str(ckpts / "a.safetensors"), *M, "--measures", "sam", "--out", str(run), "--force"]) == 0
    assert "moved the previous run" in capsys.readouterr().err
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "notes.txt").read_text() == "mine\n" and (old / "summary.json").read_text() == old_summary
    assert json.loads((run / "config.json").read_text())["kind"] == "sharpness"
    assert not (run / "notes.txt").exists()


def test_report_never_deletes_files_it_did_not_write(ckpts, tmp_path, capsys):
    run_a, run_b = tmp_path / "ra", tmp_path / "rb"
    ok(capsys, interpolate_args(ckpts, run_a))
    ok(capsys, ["sharpness", str(ckpts / "a.safetensors"), *M, "--measures", "sam", "--out", str(run_b)])
    mine = foreign_folder(tmp_path / "mine")
    one_line(capsys, main(["report", str(run_a), "--out", str(mine)]), "not a lossprobe site", code=2)
    assert_foreign_intact(mine)
    site = tmp_path / "site"
    ok(capsys, ["report", str(run_a), str(run_b), "--out", str(site)])
    (site / "notes.txt").write_text("keep\n")
    (site / "runs" / "keep.txt").write_text("keep\n")
    (site / "runs" / "ra" / "mine.txt").write_text("keep\n")
    ok(capsys, ["report", str(run_b), "--out", str(site)])  # rebuilt without run A
    for f in ("notes.txt", "runs/keep.txt", "runs/ra/mine.txt"):
        assert (site / f).read_text() == "keep\n", f
    assert not (site / "runs" / "ra" / "index.html").exists()  # what lossprobe wrote for A is gone
    assert (site / "runs" / "rb" / "index.html").is_file() and no_temp_files(site)


# --- one writer per run directory -------------------------------------------------------------
@pytest.mark.slow
def test_a_second_writer_is_refused_with_one_line_and_the_first_finishes(ckpts, tmp_path, capsys):
    out = tmp_path / "busy"
    signal_file = tmp_path / "sleeping"
    go_on = tmp_path / "go-on"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSPROBE_FAULT_SLEEP_AT": "3", "LOSSPROBE_FAULT_WAIT_FOR": str(go_on),
           "LOSSPROBE_FAULT_SIGNAL": str(signal_file)}
    first = subprocess.Popen([sys.executable, str(HERE / "faults.py"), *interpolate_args(ckpts, out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not signal_file.exists():  # the first writer holds the lock and is mid-run
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        for args in (interpolate_args(ckpts, out), ["slice", str(ckpts / "a.safetensors"), *M, "--out", str(out)]):
            rc = main(args)
            one_line(capsys, rc, f"{out} is in use by pid {first.pid}; wait for it or use another --out", code=2)
        go_on.write_text("")  # let the first writer finish
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert json.loads((out / "status.json").read_text())["complete"]
    ok(capsys, interpolate_args(ckpts, out))  # the lock went with the first process


def test_lock_is_shared_within_a_process_and_released_by_the_kernel(tmp_path):
    from lossprobe.results.store import LOCK_NAME, FolderLock

    a = FolderLock(tmp_path / "d")
    b = FolderLock(tmp_path / "d")  # the same process may reopen its own run
    a.release()
    code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got it')\n"
            "except BlockingIOError:\n    print('busy', os.pread(fd, 32, 0).decode().strip())")
    other = [sys.executable, "-c", code, str(tmp_path / "d" / LOCK_NAME)]
    assert subprocess.run(other, capture_output=True, text=True).stdout.strip() == f"busy {os.getpid()}"
    b.release()
    assert subprocess.run(other, capture_output=True, text=True).stdout.strip() == "got it"


# --- read-only and full disks -------------------------------------------------------------------
def _read_only(monkeypatch, root: Path) -> None:
    """Make every write under `root` fail as on a read-only file system (root ignores chmod)."""
    import builtins

    root = str(root)
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def under(p) -> bool:
        return os.path.abspath(os.fspath(p)).startswith(root) if isinstance(p, (str, bytes, os.PathLike)) else False

    def fake_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


COMMANDS = {
    "interpolate": lambda c, out: interpolate_args(c, out),
    "surface": lambda c, out: ["surface", str(c / "a.safetensors"), *M, "--steps", "3", "--out", str(out)],
    "sharpness": lambda c, out: ["sharpness", str(c / "a.safetensors"), *M, "--measures", "sam", "--out", str(out)],
    "hessian": lambda c, out: ["hessian", str(c / "a.safetensors"), *M, "--top-k", "1", "--out", str(out)],
    "align": lambda c, out: ["align", str(c / "a.safetensors"), str(c / "b.safetensors"), *M, "--alphas", "3",
                             "--out", str(out)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("exists", [False, True])
def test_read_only_out_is_one_line(ckpts, tmp_path, monkeypatch, capsys, command, exists):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "out"
    if exists:
        out.mkdir()
    _read_only(monkeypatch, ro)
    rc = main(COMMANDS[command](ckpts, out))
    monkeypatch.undo()
    one_line(capsys, rc, "read-only file system", str(out), code=1)
    assert [p for p in ro.rglob("*")] == ([out] if exists else [])


def test_read_only_site_is_one_line(ckpts, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    ok(capsys, interpolate_args(ckpts, run))
    _read_only(monkeypatch, tmp_path / "ro")
    rc = main(["report", str(run), "--out", str(tmp_path / "ro" / "site")])
    monkeypatch.undo()
    one_line(capsys, rc, "read-only file system", code=1)


def test_unwritable_out_is_one_line(ckpts, tmp_path, capsys):
    """Root writes through permission bits, so as root the command runs in a child process without
    the capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as a user would."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() != 0:
            one_line(capsys, main(interpolate_args(ckpts, locked / "out")), "permission denied", code=1)
            return
        if not shutil.which("setpriv"):
            pytest.skip("root writes through permission bits and setpriv (util-linux) is missing to drop that")
        p = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
                            "lossprobe", *interpolate_args(ckpts, locked / "out")],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        if "setpriv:" in p.stderr:
            pytest.skip(f"cannot drop root's capabilities here: {p.stderr.strip()}")
        one_line_in(p.stderr, p.returncode, "permission denied", str(locked / "out"), code=1)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _disk_full_at(monkeypatch, name: str) -> list:
    """Fail the durable write of the file called `name` with ENOSPC after its bytes went to the temporary file."""
    real = atomic._fsync_file
    hits = []

    def full(f, path):
        if Path(path).name == name:
            hits.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, path)

    monkeypatch.setattr(atomic, "_fsync_file", full)
    return hits


@pytest.mark.parametrize("command,victim", [
    ("surface", "surface.html"),  # plotly's own writer once left this truncated under its name
    ("hessian", "eigenvectors.safetensors"),
    ("interpolate", "interpolation.png"),
    ("sharpness", "summary.json"),
])
def test_full_disk_is_one_line_leaves_no_partial_file_and_resumes(ckpts, tmp_path, monkeypatch, capsys, command,
                                                                   victim):
    out = tmp_path / "out"
    hits = _disk_full_at(monkeypatch, victim)
    rc = main(COMMANDS[command](ckpts, out))
    monkeypatch.undo()
    err = one_line(capsys, rc, "no space left on the device", victim, "it needs about", "free", code=1,
                   after_progress=True)
    assert hits and "run the same command again" in err
    assert not list(out.rglob(victim)) and no_temp_files(out)
    ok(capsys, COMMANDS[command](ckpts, out))  # space freed: the same command finishes the run
    assert list(out.rglob(victim)) and json.loads((out / "status.json").read_text())["complete"]


def test_full_disk_while_building_a_site(ckpts, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    ok(capsys, interpolate_args(ckpts, run))
    _disk_full_at(monkeypatch, "plotly.min.js")
    rc = main(["report", str(run), "--out", str(tmp_path / "site")])
    monkeypatch.undo()
    one_line(capsys, rc, "no space left on the device", "plotly.min.js", code=1)
    assert not (tmp_path / "site" / "assets" / "plotly.min.js").exists() and no_temp_files(tmp_path / "site")


def test_atomic_writes_are_whole_or_absent(tmp_path, monkeypatch):
    p = tmp_path / "x.npz"
    atomic.save_npz(p, a=np.arange(3))
    before = p.read_bytes()
    _disk_full_at(monkeypatch, "x.npz")
    with pytest.raises(OSError) as e:
        atomic.save_npz(p, a=np.arange(10_000))
    assert e.value.errno == errno.ENOSPC and str(p) in str(e.value)
    assert p.read_bytes() == before and no_temp_files(tmp_path)  # the old file, whole
    monkeypatch.undo()
    with pytest.raises(KeyError):  # an exception inside the block leaves nothing either
        with atomic.open_atomic(tmp_path / "y.txt", "w") as f:
            f.write("half")
            raise KeyError("boom")
    assert not (tmp_path / "y.txt").exists() and no_temp_files(tmp_path)


# --- real file systems: a read-only mount and a full tmpfs ----------------------------------------
# The tests above fake the errors (a patched open, an ENOSPC at one chosen fsync); these mount
# real file systems, as root, in a private mount namespace (tests/mounted.py), so every writer
# meets the kernel's own EROFS and ENOSPC wherever it writes, and nothing outlives the test.
@pytest.fixture(scope="module")
def mounting(tmp_path_factory):
    """Skip, saying why, where a tmpfs cannot be mounted (not root, no CAP_SYS_ADMIN, no unshare)."""
    if not shutil.which("unshare"):
        pytest.skip("cannot mount a tmpfs: unshare (util-linux) is missing")
    probe = tmp_path_factory.mktemp("probe")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs -o size=64k tmpfs {probe} && mount -o remount,ro {probe}"],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {p.stderr.strip() or p.returncode}")


def run_mounted(plan: list, tmp_path: Path) -> list[dict]:
    """Do `plan` (see tests/mounted.py) in a private mount namespace; the results of its runs."""
    plan_file, result_file = tmp_path / "plan.json", tmp_path / "result.json"
    plan_file.write_text(json.dumps(plan, default=str))
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(HERE / "mounted.py"),
                        str(plan_file), str(result_file)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(result_file.read_text())


def whole(path: Path) -> None:
    """`path` is a whole file of its kind (not cut short by a full disk)."""
    data = path.read_bytes()
    kind = path.suffix
    if path.name == ".lossprobe.lock":
        pass  # written in place (flock needs a fixed file); only the pid in it, which a full disk may keep out
    elif kind in (".md", ".csv"):
        assert data.strip(), path
    elif path.name == ".lossprobe-run":
        json.loads(data)
    elif kind == ".json":
        json.loads(data)
    elif kind == ".npz":
        with np.load(path) as f:
            for k in f.files:
                f[k]
    elif kind == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
    elif kind == ".svg":
        assert data.rstrip().endswith(b"</svg>"), path
    elif kind == ".html":
        assert data.rstrip().endswith(b"</html>"), path
    elif kind == ".safetensors":
        from safetensors.numpy import load

        load(data)
    else:
        raise AssertionError(f"whole() does not know how to check {path}; teach it")


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_read_only_mount_is_one_line_and_writes_nothing(mounting, ckpts, tmp_path, capsys):
    """Every command, to a new --out and to an existing empty one on a read-only file system, and
    `report` building a site there: one line naming the folder, nothing written."""
    run = tmp_path / "run"
    ok(capsys, interpolate_args(ckpts, run))
    ro = tmp_path / "ro"
    plan = [{"mount": ro, "size": "1m"}] + [{"mkdir": ro / f"old-{c}"} for c in sorted(COMMANDS)]
    plan.append({"remount": ro, "options": "ro"})
    outs = [ro / f"{age}-{c}" for c in sorted(COMMANDS) for age in ("new", "old")]
    plan += [{"run": COMMANDS[o.name.split("-", 1)[1]](ckpts, o)} for o in outs]
    plan += [{"run": ["report", str(run), "--out", str(ro / "site")]}, {"copy": [ro, tmp_path / "left"]}]
    results = run_mounted(plan, tmp_path)
    for out, r in zip([*outs, ro / "site"], results):
        one_line_in(r["err"], r["rc"], "read-only file system", code=1)
        assert str(ro) in r["err"], r["err"]
    left = tmp_path / "left"
    assert sorted(str(p.relative_to(left)) for p in left.rglob("*")) == [f"old-{c}" for c in sorted(COMMANDS)]


@pytest.mark.parametrize("command", ["interpolate",  # JSON, npz, PNG, SVG, markdown
                                     pytest.param("surface", marks=pytest.mark.slow)])  # + safetensors, chunks, plotly
def test_full_tmpfs_is_one_line_leaves_whole_files_and_resumes(mounting, ckpts, tmp_path, capsys, command):
    """On a tmpfs too small for the run (filling up at each kind of file it writes), the
    command stops with one line, wherever the disk fills up, leaving no temporary file and no file
    cut short; with the space grown, the same command finishes the run (after the middle one of
    those failures), with the numbers of a run that never failed."""
    ref = tmp_path / "ref"
    ok(capsys, COMMANDS[command](ckpts, ref))
    # the run's files in the order they were (last) written, and the pages (tmpfs counts whole
    # pages) the run holds once each is written: a disk one page smaller fills up there or before.
    # One such point at the first file of each kind (each writer: JSON, npz, safetensors, PNG, SVG,
    # markdown, plotly's page), and one at the largest file
    written = sorted(files(ref).values(), key=lambda p: p.stat().st_mtime_ns)
    pages = [-(-p.stat().st_size // 4096) for p in written]
    held = np.cumsum(pages)
    first = {}
    for i, p in enumerate(written):
        first.setdefault(p.suffix or p.name, i)
    sizes = sorted({max(1, int(held[i]) - 1) for i in {*first.values(), int(np.argmax(pages))}})
    grown = 2 * int(held[-1]) + 256  # room for the files and a new copy of the largest while it replaces the old
    resume = (len(sizes) // 2,)  # part of the run is on the disk, part is not
    plan = []
    for i, size in enumerate(sizes):
        disk = tmp_path / f"disk{i}"
        plan += [{"mount": disk, "size": f"{4 * size}k"},
                 {"run": COMMANDS[command](ckpts, disk / "out")},
                 {"copy": [disk / "out", tmp_path / f"full{i}"]}]
        if i in resume:
            plan += [{"remount": disk, "options": f"rw,size={4 * grown}k"},
                     {"run": COMMANDS[command](ckpts, disk / "out")},
                     {"copy": [disk / "out", tmp_path / f"resumed{i}"]}]
    results = iter(run_mounted(plan, tmp_path))
    stopped_at = []
    for i in range(len(sizes)):
        full = next(results)
        err = one_line_in(full["err"], full["rc"], "no space left on the device", "run the same command again",
                          code=1, after_progress=True)
        stopped_at.append(err.split("cannot write ", 1)[-1].split(":")[0].replace(str(tmp_path / f"disk{i}"), ""))
        left = files(tmp_path / f"full{i}")
        assert not [n for n in left if atomic.is_temp(n)], left
        for p in left.values():
            whole(p)
        if i not in resume:
            continue
        resumed = next(results)
        assert resumed["rc"] == 0, resumed["err"]
        again = files(tmp_path / f"resumed{i}")
        assert set(again) == set(files(ref)), set(again) ^ set(files(ref))
        for name, p in again.items():
            whole(p)
            if name.endswith(".npz"):
                with np.load(p) as a, np.load(ref / name) as b:
                    assert a.files == b.files and all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
                                                      for k in a.files if a[k].dtype.kind != "O"), name
        assert json.loads((tmp_path / f"resumed{i}" / "status.json").read_text())["complete"]
    assert len(set(stopped_at)) >= 3, (stopped_at, sizes)  # the disk filled up in different writers

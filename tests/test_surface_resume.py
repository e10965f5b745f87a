"""Kill a process computing a surface with SIGKILL part-way; the rerun computes only the rest."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from lossprobe import surface
    from lossprobe.models import mlp

    def setup():
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(150, 6, generator=g), torch.randint(0, 3, (150,), generator=g)
        return mlp([6, 12, 3], seed=0).eval(), (x, y)

    if __name__ == "__main__":
        model, data = setup()
        # slow each chunk down so that the parent can kill us part-way
        surface(model, data, steps=(5, 4), chunk_size=1, out=sys.argv[1], progress=False,
                on_chunk=lambda i, n: time.sleep(0.25))
""")


def test_sigkill_then_resume_computes_only_missing_chunks(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "grid"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=tmp_path)
    chunks = out / "chunks"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if chunks.is_dir() and len(list(chunks.glob("chunk_*.npz"))) >= 4:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = {int(p.stem.split("_")[1]) for p in chunks.glob("chunk_*.npz")}
    assert 4 <= len(done_before) < 20
    assert not (out / "surface.npz").exists()

    sys.path.insert(0, str(tmp_path))
    try:
        import job
    finally:
        sys.path.remove(str(tmp_path))
    from lossprobe.landscape import surfaces as surface

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, data = job.setup()
        computed = []
        resumed = surface.surface(model, data, steps=(5, 4), chunk_size=1, out=out, progress=False,
                                  on_chunk=lambda i, k: computed.append(i))
        fresh = surface.surface(model, data, steps=(5, 4), chunk_size=1, progress=False)
    finally:
        torch.set_num_threads(n)
    assert set(computed) == set(range(20)) - done_before
    assert resumed.mask.all() and resumed.meta["resumed_chunks"] == len(done_before)
    np.testing.assert_array_equal(resumed.loss, fresh.loss)
    np.testing.assert_array_equal(resumed.accuracy, fresh.accuracy)

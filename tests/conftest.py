import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _fashion_available() -> bool:
    from lossprobe.data.fashion import locate
    from lossprobe.errors import UserError

    try:
        locate(allow_download=False)
        return True
    except UserError:
        return False


needs_fashion = pytest.mark.skipif(not _fashion_available(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def one_thread():
    """One torch thread for the test: with tiny tensors a second thread only adds barrier
    waits, which on a loaded machine cost far more than the work."""
    from lossprobe.runtime.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def spiral():
    from lossprobe.data import two_spirals

    return two_spirals(n=100, seed=0)


def tiny_mlp(seed=0, widths=(2, 8, 2)):
    from lossprobe.models import mlp

    return mlp(widths, seed=seed).eval()


def spiral_checkpoints(folder, data, epochs: int, widths=(2, 8, 8, 2)) -> list[str]:
    """Two tiny MLPs (seeds 0 and 1) trained on `data` for `epochs`, saved as FOLDER/m0, m1.safetensors."""
    from lossprobe.training.loop import TrainConfig, fit
    from lossprobe.training.checkpoints import save_checkpoint

    paths = []
    for s in (0, 1):
        m = tiny_mlp(s, widths)
        fit(m, data, None, TrainConfig(epochs=epochs, lr=1e-2))
        p = folder / f"m{s}.safetensors"
        save_checkpoint(m, p)
        paths.append(str(p))
    return paths


def tiny_cnn(seed=0, batchnorm=True, dropout=0.0):
    from lossprobe.models import cnn

    return cnn((4, 8), batchnorm=batchnorm, dropout=dropout, hidden=16, image_size=12, seed=seed).eval()


def finished_stages(study, cfg, run_dir) -> dict:
    """What a rerun of `study` in `run_dir` must leave alone: for each stage recorded as finished
    in status.json, the mtime (ns) of each file it wrote and the seconds timing.json says it
    took. A stage computed again writes its files again (atomically: a new inode and mtime)
    and records new seconds, so comparing this before and after a rerun catches recomputation
    even where the numbers come out the same."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    done = set(json.loads((run_dir / "status.json").read_text())["done"])
    seconds = json.loads((run_dir / "timing.json").read_text())["stages"]
    out = {}
    for stage in study.stages(cfg):
        if stage.resume and stage.name in done:
            out[stage.name] = ({f: (run_dir / f).stat().st_mtime_ns for f in stage.files}, seconds[stage.name])
    return out


def assert_drawn_as_declared(fig, specs, arrays) -> None:
    """`fig` (from `Result.figure` or `drawing.plot_declared`) draws the declarations `specs` over
    `arrays`: one panel per declaration, in order; a line plot has one line per series, labelled as
    declared, through the declared arrays, with the declared axis labels and scales; a surface has
    its z on a colour mesh with cols along x and rows along y."""
    import numpy as np

    panels = fig.axes[:len(specs)]  # colour bars come after the panels
    assert len(panels) == len(specs), (len(fig.axes), len(specs))
    for spec, ax in zip(specs, panels):
        assert ax.get_title() == spec.title
        if spec.kind == "line":
            lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
            assert [ln.get_label() for ln in lines] == [s.label or s.y for s in spec.series], spec.title
            for s, ln in zip(spec.series, lines):
                np.testing.assert_array_equal(np.asarray(ln.get_xdata(), float), np.asarray(arrays[spec.x], float))
                np.testing.assert_array_equal(np.asarray(ln.get_ydata(), float), np.asarray(arrays[s.y], float))
                assert (ln.get_linestyle() == "--") == bool(s.dash) or not any(x.group for x in spec.series)
            assert ax.get_xlabel() == (spec.xlabel or spec.x) and ax.get_ylabel() == spec.ylabel
            assert ax.get_xscale() == ("log" if spec.log_x else "linear")
            assert ax.get_yscale() == ("log" if spec.log_y else "linear")
        else:
            (mesh,) = [c for c in ax.collections if c.__class__.__name__ == "QuadMesh"]
            z = np.asarray(arrays[spec.z], float)
            if spec.log_z:
                with np.errstate(all="ignore"):
                    z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
            got = np.ma.filled(np.ma.asarray(mesh.get_array(), float), np.nan).reshape(z.shape)
            np.testing.assert_array_equal(got, np.where(np.isfinite(z), z, np.nan))
            cols, rows = np.asarray(arrays[spec.cols], float), np.asarray(arrays[spec.rows], float)
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            assert x0 <= cols.min() and cols.max() <= x1 and y0 <= rows.min() and rows.max() <= y1
            assert ax.get_xlabel() == (spec.xlabel or spec.cols) and ax.get_ylabel() == (spec.ylabel or spec.rows)

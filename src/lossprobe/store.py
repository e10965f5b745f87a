"""The run directory: everything needed to reopen, compare and rerun a result.

Layout (a study or command writes what applies):
    config.json        all that is needed to rerun (study name and every option)
    environment.json   versions, seeds, CPU threads, command line, start time
    summary.json       the key numbers
    status.json        stages finished so far (for resuming), and 'complete' at the end
    *.npz              arrays
    checkpoints/       safetensors weights
    figures/           PNG and SVG
    report.md          figures and a verdict

Reopening an existing directory with the same configuration resumes it; a directory
that holds another run is refused unless `force=True`, which clears it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tensors, paths and tuples to JSON types; NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def environment(seeds: dict | None = None) -> dict:
    import torch

    from . import __version__

    versions = {"lossprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    for mod in ("scipy", "matplotlib", "safetensors"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    return {
        "versions": versions,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "seeds": seeds or {},
        "command": sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


class RunDir:
    """A run directory for `kind` (a study or command name) with configuration `config`."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict, force: bool = False, seeds: dict | None = None):
        self.path = Path(path)
        self.kind = kind
        self.config = {"kind": kind, **to_jsonable(config)}
        self.resumed = False
        cfg_file = self.path / "config.json"
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a directory")
        if cfg_file.is_file():
            try:
                old = json.loads(cfg_file.read_text())
            except json.JSONDecodeError:
                old = None
            if old == self.config and not force:
                self.resumed = True
            elif force:
                self._clear()
            else:
                what = old.get("kind", "another run") if isinstance(old, dict) else "an unreadable run"
                raise UserError(
                    f"{self.path} already holds a different run ({what}); use --force to overwrite it "
                    "or choose another --out"
                )
        elif self.path.is_dir() and any(self.path.iterdir()):
            if not force:
                raise UserError(
                    f"{self.path} is not empty and is not a lossprobe run; use --force to overwrite it or choose another --out"
                )
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "figures").mkdir(exist_ok=True)
        write_json(cfg_file, self.config)
        env_file = self.path / "environment.json"
        env = environment(seeds)
        if self.resumed and env_file.is_file():
            env["resumed_from"] = json.loads(env_file.read_text()).get("started")
        write_json(env_file, env)

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # --- files ---------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def subdir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def load_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def save_arrays(self, name: str, **arrays) -> Path:
        path = self.path / name
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
        return path

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name) as f:
            return {k: f[k] for k in f.files}

    def save_figure(self, fig, name: str) -> list[Path]:
        from .report.figures import save_figure

        return save_figure(fig, self.figures, name)

    # --- stages (resume) -------------------------------------------------------------
    def _status(self) -> dict:
        f = self.path / "status.json"
        return json.loads(f.read_text()) if f.is_file() else {"done": [], "complete": False}

    def done(self, stage: str) -> bool:
        return stage in self._status()["done"]

    def mark(self, stage: str) -> None:
        st = self._status()
        if stage not in st["done"]:
            st["done"].append(stage)
        write_json(self.path / "status.json", st)

    def complete(self) -> None:
        st = self._status()
        st["complete"] = True
        st["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(self.path / "status.json", st)

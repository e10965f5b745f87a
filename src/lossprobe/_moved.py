"""The module paths of lossprobe 0.1 before the layered layout, kept importing for one release.

``import lossprobe.hessian`` or ``from lossprobe.batching import as_data`` still work: a finder
on `sys.meta_path` answers each old name with the module at its new home (the same module
object, so monkeypatching through the old name still reaches the code) and warns once per
name with a `lossprobe.errors.LossprobeDeprecationWarning` (a `FutureWarning`, so users see it).
Old names that are top-level attributes today (``lp.hessian``, ``lp.directions``, ...) are
not deprecated as attributes; `attribute` answers the rest (``lp.batching``) the same way.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

from lossprobe.errors import warn_deprecated

OLD = {
    "align": "connectivity.alignment",
    "align_derive": "connectivity.alignment.fx",
    "align_hf": "connectivity.alignment.hf",
    "atomic": "results.atomic",
    "batching": "core.batching",
    "config": "runtime.config",
    "critical": "curvature.critical",
    "curves": "connectivity.curves",
    "directions": "landscape.directions",
    "graphs": "core.graphs",
    "hessian": "curvature.hessian",
    "hoist": "core.hoist",
    "losses": "core.losses",
    "monitors": "trajectories.monitors",
    "objective": "core.objective",
    "operators": "curvature.operators",
    "paths": "connectivity.paths",
    "plotspec": "results.plotspec",
    "raycluster": "runtime.cluster",
    "repair": "connectivity.repair",
    "sharpness": "curvature.sharpness",
    "space": "core.space",
    "specs": "core.specs",
    "store": "results.store",
    "surface": "landscape.surfaces",
    "threads": "runtime.threads",
    "topology": "landscape.topology",
    "toy": "trajectories.toy",
    "train": "training",
    "trajectory": "trajectories.trajectory",
    "data.split": "data",
    "report.figures": "results.drawing",
    "report.connectivity_plots": "figures.connectivity",
    "report.curvature_plots": "figures.curvature",
    "report.paths_plots": "figures.paths",
    "report.search_plots": "figures.search",
    "report.surface_plots": "figures.surfaces",
    "report.training_plots": "figures.training",
    "report.trajectory_plots": "figures.trajectories",
}


def _warn(old: str, new: str) -> None:
    warn_deprecated(f"lossprobe.{old}", f"lossprobe.{new}", stacklevel=4)


def _target(old: str) -> types.ModuleType:
    return importlib.import_module(f"lossprobe.{OLD[old]}")


class _CallableModule(types.ModuleType):
    """The old `lossprobe.surface` / `lossprobe.align` modules were callable; importing them by
    their old path replaces the package attribute with the module, so the module must call."""

    def __call__(self, *args, **kwargs):
        return self.__dict__["_call"](*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["_module"], name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("lossprobe.") and fullname[len("lossprobe."):] in OLD:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name[len("lossprobe."):]
        _warn(old, OLD[old])
        module = _target(old)
        if old in ("surface", "align"):
            shim = _CallableModule(spec.name, module.__doc__)
            shim._module, shim._call = module, getattr(module, old)
            return shim
        return module

    def exec_module(self, module):
        pass


def attribute(name: str):
    """``lossprobe.NAME`` for an old module name that is no longer a top-level attribute."""
    if name in OLD and "." not in name:
        _warn(name, OLD[name])
        return _target(name)
    raise AttributeError(f"module 'lossprobe' has no attribute '{name}'")


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())

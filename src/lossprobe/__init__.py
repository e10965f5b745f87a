"""lossprobe: probe the geometry of neural-network loss landscapes.

The core is one evaluator, `Objective.evaluate`, that returns loss and accuracy at many
points ``origin + coords @ directions`` of parameter space; every probe is built on it.
The package is layered, each layer importing only those below it (checked in CI):

    core          objective, batches, losses, parameter space, directions, hoisting, graphs
    results       the result contract, plot declarations, run directories, atomic writes
    runtime       configurations, threads, Ray
    models, data  built-in models and data sets
    training      the training loop and checkpoints
    curvature     Lanczos / Hutch++ / SLQ, curvature operators, sharpness
    landscape     slices, surfaces, directions, topology
    connectivity  interpolation, curves, permutation alignment, REPAIR
    trajectories  optimiser trajectories, toy landscapes, training monitors
    track         the landscape measured during training (Tracker, Lightning and HF callbacks)
    search        probe-based hyperparameter search
    figures       the studies' matplotlib figures
    studies       ready-made studies: a configuration and stages
    report, cli   faces: the report site and the command line
"""

from lossprobe import _start  # noqa: F401 - first of all: Ctrl-C while the library imports (see there)

# isort: split
import importlib

from lossprobe import _moved, curvature, data, models, results, track
from lossprobe._version import __version__
from lossprobe.connectivity import (
    PathEvaluation,
    align,
    curves,
    error_barrier,
    interpolate,
    loss_barrier,
    paths,
    repair,
)
from lossprobe.connectivity.paths import Interpolation
from lossprobe.core import Evaluation, Objective, ParamSpace
from lossprobe.curvature import hessian, operators, sharpness
from lossprobe.errors import UserError
from lossprobe.landscape import Surface, directions, slice, surface, topology  # noqa: A004  (lp.slice is the 1-D probe)
from lossprobe.results import load_result, plotspec
from lossprobe.training import History, TrainConfig, fit, load_checkpoint, save_checkpoint
from lossprobe.trajectories import monitors, toy, trajectory

__all__ = [
    "Evaluation",
    "History",
    "Interpolation",
    "Objective",
    "PathEvaluation",
    "ParamSpace",
    "Surface",
    "TrainConfig",
    "UserError",
    "__version__",
    "align",
    "curvature",
    "curves",
    "data",
    "directions",
    "error_barrier",
    "fit",
    "hessian",
    "interpolate",
    "load_checkpoint",
    "load_result",
    "loss_barrier",
    "models",
    "monitors",
    "operators",
    "paths",
    "plotspec",
    "repair",
    "results",
    "save_checkpoint",
    "sharpness",
    "slice",
    "surface",
    "topology",
    "toy",
    "track",
    "trajectory",
]

# Imported on first use (start-up time): search pulls in Optuna and scikit-learn, the report
# site plotly, studies and figures matplotlib's pyplot; none is needed to start the CLI.
_LAZY = {"search", "report", "studies", "figures"}


def __getattr__(name: str):
    if name in _LAZY:

        module = importlib.import_module(f".{name}", __name__)
        if name == "report":
            importlib.import_module(".report.site", __name__)
        globals()[name] = module
        return module
    return _moved.attribute(name)

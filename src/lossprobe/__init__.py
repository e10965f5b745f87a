"""lossprobe: probe the geometry of neural-network loss landscapes.

The core is one evaluator, `Objective.evaluate`, that returns loss and accuracy at many
points ``origin + coords @ directions`` of parameter space; every probe is built on it.
"""

from . import data, models
from .errors import UserError
from .objective import Evaluation, Objective
from .paths import Interpolation, PathEvaluation, error_barrier, interpolate, loss_barrier
from . import plotspec, results  # noqa: E402  (the result contract and plot declarations)
from .results import load_result  # noqa: E402
from .space import ParamSpace
from .train import History, TrainConfig, fit, load_checkpoint, save_checkpoint
from . import directions, surface  # noqa: E402  (surface is a callable module: lossprobe.surface(...))
from .surface import Surface, slice  # noqa: E402,A004
from . import align, curves, repair  # noqa: E402  (align is a callable module: lossprobe.align(a, b))
from . import monitors, toy, trajectory  # noqa: E402
from . import curvature, hessian, operators, sharpness, topology  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "History",
    "Interpolation",
    "Objective",
    "PathEvaluation",
    "ParamSpace",
    "TrainConfig",
    "UserError",
    "align",
    "curves",
    "repair",
    "Surface",
    "data",
    "directions",
    "error_barrier",
    "fit",
    "interpolate",
    "load_checkpoint",
    "load_result",
    "loss_barrier",
    "models",
    "plotspec",
    "results",
    "save_checkpoint",
    "slice",
    "surface",
]

# Imported on first use: search pulls in Optuna and scikit-learn, the report site plotly,
# and neither is needed for the rest of the library or to start the CLI.
_LAZY = {"search", "report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        if name == "report":
            importlib.import_module(".report.site", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'lossprobe' has no attribute '{name}'")

"""Every result type honours one contract (in the spirit of scikit-learn's check_estimator):
to_dict/from_dict, save/load, summary, plot declarations that fit its arrays, and to_xarray
for gridded results."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import lossprobe  # noqa: F401 - registers every result type
from conftest import assert_drawn_as_declared
from lossprobe.results import store
from lossprobe.results.drawing import captured_figures
from lossprobe.curvature.algorithms import EigResult, SLQResult, TraceResult
from lossprobe.errors import UserError
from lossprobe.curvature.hessian import Density
from lossprobe.connectivity.paths import PathEvaluation
from lossprobe.results.contract import RESULT_TYPES, load_result
from lossprobe.curvature.sharpness import NoiseRobustness, PacBayesSigma, SharpnessResult
from lossprobe.landscape.surfaces import Surface
from lossprobe.curvature.critical import CriticalPoint
from lossprobe.training.loop import History
from lossprobe.search.tune import SearchRun
from lossprobe.track.history import TrackHistory

rng = np.random.default_rng(0)


def _surface_2d():
    loss = rng.random((3, 5))
    loss[1, 2] = np.nan  # a computed NaN stays NaN
    mask = np.ones((3, 5), bool)
    mask[2, 4] = False
    return Surface([np.linspace(-1, 1, 3), np.linspace(-2, 2, 5)], loss, rng.random((3, 5)), mask,
                   {"axis_labels": ["d1 (filter)", "d2 (filter)"], "seconds": 1.5}, np.arange(7))


EXAMPLES = {
    "Surface": [
        _surface_2d,
        lambda: Surface([np.linspace(-1, 1, 4)], rng.random(4), rng.random(4)),
        lambda: Surface.plane(np.linspace(0, 1, 5), np.linspace(-1, 0, 3), rng.random((3, 5)), rng.random((3, 5))),
    ],
    "PathEvaluation": [
        lambda: PathEvaluation(alphas=np.arange(-2, 7) / 4, loss={"train": rng.random(9), "test": rng.random(9)},
                               accuracy={"train": rng.random(9), "test": rng.random(9)}, bn="recompute"),
        lambda: PathEvaluation(ts=np.linspace(0, 1, 5), loss={"val": rng.random(5)}, accuracy={"val": rng.random(5)}),
    ],
    "EigResult": [
        lambda: EigResult(np.array([3.0, -1.0]), np.array([1e-7, 2e-7]), torch.randn(2, 6, dtype=torch.float64), 40, 20,
                          True, "both", "exact", np.array([3.0, 1.0, -1.0])),
        lambda: EigResult(np.array([2.0]), np.array([np.nan]), None, 10, 5, False, "largest", "estimate"),
    ],
    "TraceResult": [
        lambda: TraceResult(12.5, 0.3, 100, "hutch++", rng.random(50), {"0.weight": (10.0, 0.2), "0.bias": (2.5, float("nan"))},
                            1.25),
        lambda: TraceResult(float("nan"), float("nan"), 0, "hutchinson", np.zeros(0)),
    ],
    "Density": [
        lambda: Density(np.linspace(-1, 5, 50), rng.random(50), 0.06,
                        SLQResult(rng.random((2, 4)), rng.random((2, 4)), 8, 10, 11.0, 0.5)),
    ],
    "NoiseRobustness": [
        lambda: NoiseRobustness(np.array([0.0, 0.1, 0.2]), rng.random((3, 4)), rng.random((3, 4)), 0.3, 0.9, 4, 7),
    ],
    "SharpnessResult": [
        lambda: SharpnessResult("keskar", 1e-3, 0.2, 0.25, 0.05, 25.0, [0.21, 0.25], 20, 1e-3),
    ],
    "CriticalPoint": [
        lambda: CriticalPoint((1.0, -2.0), 0.5, (-1.0, 3.0), "saddle", False, 1e-9),
        lambda: CriticalPoint(None, 0.2, (1e-3, 40.0), "minimum", False, 1e-5, 4e4, 1e-3, 1e-6, [1e-8, 2e-8]),
    ],
    "History": [
        lambda: History([0, 1, 2], [2.3, 0.6, 0.4], [0.1, 0.8, 0.9], [2.3, 0.7, 0.5], [0.1, 0.75, 0.85], [0.9, 0.5],
                        [1e-3, 5e-4], [0.0, 1.0, 2.0], None),
        lambda: History([0, 1], [2.3, float("nan")], [0.1, 0.1], [], [], [float("nan")], [1e-3], [0.0, 1.0], "diverged"),
    ],
    "PacBayesSigma": [
        lambda: PacBayesSigma(0.05, 400.0, "error", 0.1, "absolute", [[0.01, 0.02], [0.1, 0.3]], 0.1),
    ],
    "SearchRun": [
        lambda: SearchRun(
            2, {"lr": 0.01, "width": 16}, {"width": 16}, {"lr": 0.01, "epochs": 2}, "loss (mse)", "min", 0.04, 0.05,
            "/runs/s/checkpoints/candidate-2.safetensors", "probe-rank", 8.0, "epochs", 7.5,
            [{"kind": "probe", "candidate": 0, "epoch": 0.25, "value": 0.3, "spent": 0.25, "seconds": 0.1, "reused": False},
             {"kind": "full", "candidate": 2, "epoch": 2, "value": 0.04, "spent": 7.5, "seconds": 1.0, "reused": True}],
            "model.py:build", "/runs/s", "sqlite:///runs/s/search.db", {"val": 0.2}, {"loss": 0.05}, 9.5),
        lambda: SearchRun(0, {}, {}, {}, "accuracy", "max", 0.9, None, "c.safetensors", "random", 2.0, "seconds", 2.1),
    ],
    "TrackHistory": [
        lambda: TrackHistory({"step": np.array([0, 50, 100]), "lambda_max": np.array([3.0, 8.5, np.nan]),
                              "lr": np.full(3, 0.1), "two_over_lr": np.full(3, 20.0), "top_k": rng.random((3, 2)),
                              "grad_norm": rng.random(3)},
                             {"every": 50, "probes": ["lambda_max", "grad_norm"], "measure_seconds": 0.5}),
    ],
}


def _cases() -> list:
    return [pytest.param(make, id=f"{name}-{i}") for name, makers in EXAMPLES.items() for i, make in enumerate(makers)]


def test_every_result_type_is_checked():
    """A new result type cannot skip this file: each registered type has an example here."""
    assert set(RESULT_TYPES) <= set(EXAMPLES), sorted(set(RESULT_TYPES) - set(EXAMPLES))


def _same(a, b):
    """Equal JSON documents / arrays, NaN equal to NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (a.keys(), getattr(b, "keys", lambda: b)())
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple, np.ndarray)):
        a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
        assert a.shape == b.shape
        for x, y in zip(a.reshape(-1), b.reshape(-1)):
            _same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert b is None or (isinstance(b, float) and np.isnan(b))
    else:
        assert a == b or (a is None and isinstance(b, float) and np.isnan(b)), (a, b)


def _arrays_equal(x: dict, y: dict):
    assert set(x) == set(y)
    for k in x:
        a, b = np.asarray(x[k]), np.asarray(y[k])
        assert a.shape == b.shape, k
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), k


def _same_value(x, y, where: str):
    """`y` (reloaded) holds the value of `x` (the original): arrays and tensors by value (NaN equal
    to NaN) and kind (an array stays an array, a tensor a tensor), None stays None, nested
    dataclasses field by field, lists and tuples element-wise."""
    if x is None:
        assert y is None, f"{where}: None came back as {y!r}"
    elif dataclasses.is_dataclass(x):
        assert type(y) is type(x), f"{where}: {type(x).__name__} came back as {type(y).__name__}"
        for f in dataclasses.fields(x):
            _same_value(getattr(x, f.name), getattr(y, f.name), f"{where}.{f.name}")
    elif isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), f"{where}: a tensor came back as {type(y).__name__}"
        assert y.shape == x.shape, f"{where}: shape {tuple(x.shape)} came back as {tuple(y.shape)}"
        assert torch.equal(y.to(x.dtype), x), f"{where}: values differ"
    elif isinstance(x, np.ndarray):
        assert isinstance(y, np.ndarray), f"{where}: an array came back as {type(y).__name__}"
        assert y.shape == x.shape, f"{where}: shape {x.shape} came back as {y.shape}"
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{where}: values differ"
    elif isinstance(x, dict):
        assert isinstance(y, dict) and set(y) == set(x), f"{where}: keys {sorted(x)} came back as {y!r}"
        for k in x:
            _same_value(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(y) == len(x), f"{where}: {x!r} came back as {y!r}"
        for i, (a, b) in enumerate(zip(x, y)):
            _same_value(a, b, f"{where}[{i}]")
    elif isinstance(x, float) and np.isnan(x):
        assert isinstance(y, float) and np.isnan(y), f"{where}: NaN came back as {y!r}"
    else:
        assert type(y) is type(x) and y == x, f"{where}: {x!r} came back as {y!r}"


def _same_fields(r, back, skip=frozenset()):
    """Every dataclass field of the result `r` (but those in `skip`) holds the same value in `back`."""
    assert type(back) is type(r)
    for f in dataclasses.fields(r):
        if f.name not in skip:
            _same_value(getattr(r, f.name), getattr(back, f.name), f"{type(r).__name__}.{f.name}")


def test_json_omits_only_declared_fields():
    """JSON_OMITS names real fields; a result's fields are either in its JSON form or declared omitted."""
    for name, cls in RESULT_TYPES.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.JSON_OMITS) <= names, (name, set(cls.JSON_OMITS) - names)
    assert EigResult.JSON_OMITS == {"vectors"}  # eigenvectors are [k, P]: too large for a JSON document
    assert TraceResult.JSON_OMITS == {"samples"}  # one value per probe


@pytest.mark.parametrize("make", _cases())
def test_dict_round_trip(make):
    """to_dict -> JSON text -> from_dict keeps every field but those the type declares JSON_OMITS."""
    r = make()
    d = json.loads(json.dumps(store.to_jsonable(r.to_dict())))  # through real JSON text
    back = type(r).from_dict(d)
    _same_fields(r, back, skip=r.JSON_OMITS)
    _same(store.to_jsonable(r.to_dict()), store.to_jsonable(back.to_dict()))


@pytest.mark.parametrize("make", _cases())
def test_save_load_round_trip(make, tmp_path):
    """save -> load (npz + json) keeps every field, JSON_OMITS included."""
    r = make()
    npz = r.save(tmp_path)
    assert npz.is_file()
    back = type(r).load(tmp_path)
    _same_fields(r, back)
    _arrays_equal(r.to_arrays(), back.to_arrays())
    _same(store.to_jsonable(r.metadata()), store.to_jsonable(back.metadata()))
    again = load_result(npz)  # any result reopens without naming its type
    assert type(again) is type(r)
    _same_fields(r, again)


@pytest.mark.parametrize("make", _cases())
def test_summary_is_json(make):
    s = make().summary()
    assert isinstance(s, dict) and s
    json.dumps(store.to_jsonable(s))


@pytest.mark.parametrize("make", _cases())
def test_plot_declarations_fit_the_arrays(make, tmp_path):
    r = make()
    for prefix in ("", "p_"):
        arrays = r.to_arrays(prefix)
        specs = r.plots(prefix)
        for s in specs:
            s.check(arrays)  # raises when a name or a shape does not fit
        store.save_arrays(tmp_path / "a.npz", arrays, plots=specs)
        with np.load(tmp_path / "a.npz") as f:
            assert [s.to_dict() for s in store.plots_of(dict(f))] == [s.to_dict() for s in specs]
    if isinstance(r, (Surface, PathEvaluation, Density, NoiseRobustness)):
        assert r.plots(), "a gridded result declares what to draw"


@pytest.mark.parametrize("make", _cases())
def test_figure_draws_the_declarations(make, tmp_path):
    r = make()
    if not r.plots():
        with pytest.raises(TypeError):
            r.figure()
        return
    with captured_figures() as saved:
        assert r.figure(tmp_path, "f") == ["f"]
    assert (tmp_path / "f.png").stat().st_size > 0 and [n for n, _ in saved] == ["f"]
    assert_drawn_as_declared(saved[0][1], r.plots(), r.to_arrays())
    assert_drawn_as_declared(r.figure(), r.plots(), r.to_arrays())  # the Figure itself, unsaved


@pytest.mark.parametrize("make", _cases())
def test_to_xarray(make):
    r = make()
    if not r.GRIDDED:
        with pytest.raises(TypeError):
            r.to_xarray()
        return
    pytest.importorskip("xarray")
    ds = r.to_xarray()
    assert ds.sizes and all(n > 0 for n in ds.sizes.values())


def test_prefixed_arrays_rebuild_the_same_result():
    """Studies keep several results in one file under prefixes: from_arrays(prefix) gets each back."""
    a, b = EXAMPLES["PathEvaluation"][0](), EXAMPLES["Surface"][2]()
    arrays = {**a.to_arrays("line_"), **b.to_arrays("plane_")}
    _arrays_equal(PathEvaluation.from_arrays(arrays, prefix="line_").to_arrays(), a.to_arrays())
    _arrays_equal(Surface.from_arrays(arrays, prefix="plane_").to_arrays(), b.to_arrays())


def test_plane_surface_orientation_is_declared_not_guessed():
    """z[i, j] is the value at (y = ys[i], x = xs[j]): the declaration, xarray and interpolation agree."""
    xs, ys = np.arange(5.0), np.arange(3.0) * 10
    z = ys[:, None] + xs[None, :] / 10  # asymmetric: 3 rows (y) × 5 columns (x)
    s = Surface.plane(xs, ys, z, np.zeros_like(z))
    (spec, *_) = s.plots()
    assert (spec.rows, spec.cols) == ("ys", "xs")
    assert spec.ylabel.startswith("y") and spec.xlabel.startswith("x")
    assert s.interpolate([[4.0, 20.0]], dims=("x", "y"))[0] == pytest.approx(20.4)
    assert s.interpolate([[20.0, 4.0]])[0] == pytest.approx(20.4)  # default: columns in dims order (y, x)
    pytest.importorskip("xarray")
    assert float(s.to_xarray().loss.sel(x=4.0, y=20.0)) == pytest.approx(20.4)


def test_a_path_evaluation_is_a_line_or_a_curve():
    line = PathEvaluation(alphas=[0, 0.5, 1], loss={"a": np.array([1.0, 3.0, 1.0])}, accuracy={"a": np.array([1.0, 0.5, 1.0])})
    curve = PathEvaluation(ts=[0, 0.5, 1], loss={"a": np.array([1.0, 3.0, 1.0])}, accuracy={"a": np.array([1.0, 0.5, 1.0])})
    assert (line.axis, curve.axis) == ("alpha", "t")
    assert "alphas" in line.to_arrays() and "ts" in curve.to_arrays()
    assert line.barriers() == curve.barriers() == {"loss_barrier": {"a": 2.0}, "error_barrier": {"a": 0.5}}
    from lossprobe import Interpolation
    from lossprobe.connectivity.curves import CurveEvaluation

    assert Interpolation is CurveEvaluation is PathEvaluation
    with pytest.raises(UserError):
        PathEvaluation(alphas=[0, 1], ts=[0, 1])


def test_load_refuses_another_type(tmp_path):
    EXAMPLES["Density"][0]().save(tmp_path / "d.npz")
    with pytest.raises(UserError, match="holds a Density"):
        NoiseRobustness.load(tmp_path / "d.npz")


def test_old_surface_files_still_open(tmp_path):
    """A surface.json written before dims were stored (format 1, 'ndim' and 'meta' only)."""
    s = _surface_2d()
    s.save(tmp_path)
    info = json.loads((tmp_path / "surface.json").read_text())
    (tmp_path / "surface.json").write_text(json.dumps({"format": 1, "ndim": 2, "meta": info["meta"]}))
    back = Surface.load(tmp_path)
    assert back.dims == ("d1", "d2")
    _arrays_equal(s.to_arrays(), back.to_arrays())

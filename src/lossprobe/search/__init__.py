"""Probe-based hyperparameter search (see docs/search.md).

    run        search your own model: lp.search.run(build, train_data, space, ...) -> SearchRun
    space      the TOML search space, validated ([train]/[params] for mlp/cnn; [model]/[train] for a builder)
    user       your builder, data, loss and objective as the task a search runs on
    tune       `run` and its result, `SearchRun` (what `lossprobe search --model ...` runs)
    probes     short trainings on data fractions and their named features
    meta       the meta-model of final validation accuracy (random forest / gradient boosting)
    loop       probe many, fully train the most promising, refit, until the budget is spent
    engine     Optuna storage (resumable) and in-process or Ray execution
    baselines  random search, TPE, successive halving, Hyperband at equal budget
    table      the cached table of fully trained configurations for the benchmark
    benchmark  replays of every method on that table
"""

from lossprobe.search.tune import SearchRun, run

__all__ = ["SearchRun", "run"]

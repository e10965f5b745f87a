"""Probe-based hyperparameter search (see docs/search.md).

    space      the TOML search space, validated
    probes     short trainings on data fractions and their named features
    meta       the meta-model of final validation accuracy (random forest / gradient boosting)
    loop       probe many, fully train the most promising, refit, until the budget is spent
    engine     Optuna storage (resumable) and in-process or Ray execution
    baselines  random search, TPE, successive halving, Hyperband at equal budget
    table      the cached table of fully trained configurations for the benchmark
    benchmark  replays of every method on that table
"""

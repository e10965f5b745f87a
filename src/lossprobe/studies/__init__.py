"""Ready-made studies. Each module has `add_arguments(parser)`, `run_cli(args)` and a
Python function that runs the study from code."""

# name -> (module, one-line help)
STUDIES = {
    "architectures": ("lossprobe.studies.architectures",
                      "MLP vs CNN with BatchNorm and dropout: learning curves, gap, noise robustness, slices, Hessian"),
    "width": ("lossprobe.studies.width",
              "pairs of MLPs of increasing width: barrier vs width naive, after alignment and with REPAIR"),
    "two-seeds": ("lossprobe.studies.two_seeds",
                  "train the same MLP from two seeds and test whether the solutions share a basin"),
    "search-benchmark": ("lossprobe.studies.search_benchmark",
                         "probe-based hyperparameter search vs random search, TPE and successive halving on one table"),
    "optimizers": ("lossprobe.studies.optimizers",
                   "optimiser paths on a spiral network's landscape or an analytic function, with honest projections"),
}

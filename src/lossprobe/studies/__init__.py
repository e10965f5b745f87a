"""Ready-made studies. Each module declares `STUDY` (a `lossprobe.studies.base.Study`: a
configuration dataclass and its stages; `lossprobe study NAME` builds its flags from it) and a
`run(out, config)` function that runs the study from code."""

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
    "edge-of-stability": ("lossprobe.studies.edge_of_stability",
                          "full-batch GD and Adam on a Fashion-MNIST subset: sharpness against 2/η (edge of stability)"),
    "stability": ("lossprobe.studies.stability",
                  "instability analysis: copies spawned at step k trained with different data order, barrier vs k"),
    "optimizers": ("lossprobe.studies.optimizers",
                   "optimiser paths on a spiral network's landscape or an analytic function, with honest projections"),
}

"""Ready-made studies. Each module has `add_arguments(parser)`, `run_cli(args)` and a
Python function that runs the study from code."""

# name -> (module, one-line help)
STUDIES = {
    "two-seeds": ("lossprobe.studies.two_seeds",
                  "train the same MLP from two seeds and test whether the solutions share a basin"),
}

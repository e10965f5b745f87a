"""The studies' matplotlib figures, one module per kind of result (greyscale-readable, PNG and SVG).

The generic drawing of declared plots lives in `lossprobe.results.drawing`; these modules
draw what a declaration cannot say (an interpolation with its chord and barrier, a surface
with trajectories on it, the search benchmark's regret curves).

Layer rule: may import search, the probes, training, data, results and the core; never
studies, report or cli.
"""

"""Trajectories: how optimisers travel, drawn on the landscape.

`trajectory` records parameter trajectories of networks, projects them on PCA or random
planes and says how faithful the picture is; `toy` holds analytic two-dimensional
landscapes with the optimisers run on them and their critical points; `monitors` records
gradient and weight norms inside any training loop and finds plateaus.

Layer rule: may import landscape, connectivity, curvature, training, runtime, results and
the core.
"""

"""The landscape during training: curvature, sharpness and connectivity measured inside the
user's own loop (`Tracker`), in PyTorch Lightning (`lossprobe.track.lightning`) or under the
HuggingFace Trainer (`lossprobe.track.hf`), at a few percent of the training's cost.

    from lossprobe.track import Tracker
    tracker = Tracker(model, probe_data, loss="cross_entropy", every=50,
                      probes=("lambda_max", "grad_norm"), optimizer=opt, out="runs/track")
    for step, batch in enumerate(loader):
        ...; opt.step()
        tracker.step()
    h = tracker.history         # h["step"], h["lambda_max"], h["lr"], ... (arrays)

See docs/tracking.md for the probes, their cost in Hessian-vector products and how to choose
`every`.
"""

from lossprobe.track.history import TrackHistory, edge_of_stability
from lossprobe.track.optim import Threshold, preconditioner, threshold
from lossprobe.track.tracker import DEFAULT_PROBES, PROBES, Tracker, kept_random_state

__all__ = ["DEFAULT_PROBES", "PROBES", "Threshold", "TrackHistory", "Tracker", "edge_of_stability",
           "kept_random_state", "preconditioner", "threshold"]

"""A PyTorch Lightning callback over `Tracker` (needs ``pytorch-lightning>=2``, or ``lightning``).

    from lossprobe.track.lightning import TrackerCallback
    cb = TrackerCallback(probe_data, every=100, probes=("lambda_max", "grad_norm"), out="runs/track")
    trainer = pl.Trainer(callbacks=[cb], ...)
    trainer.fit(module, loader)            # values logged as lossprobe/<name> through pl_module.log
    cb.tracker.history                     # the TrackHistory

The tracker is made when training starts (``on_fit_start``) on the LightningModule and its first
optimiser, measures after the optimiser steps (``on_train_batch_end``, at ``trainer.global_step``,
the number of optimiser steps taken) and logs through ``pl_module.log``, so the values reach every
logger of the trainer (TensorBoard, CSV, W&B ...). Its state (history, warm-start vectors) is part
of Lightning's checkpoints (`state_dict` / `load_state_dict`), so ``trainer.fit(ckpt_path=...)``
resumes the tracking with the training. Every keyword of `Tracker` may be given (``loss``,
``forward``, ``every``, ``probes``, ``out``, ``curvature`` ...).

The class is built on first access (Lightning is an optional dependency, imported then): the
``pytorch_lightning`` package if installed, else ``lightning.pytorch``.
"""

from __future__ import annotations

from lossprobe.errors import UserError
from lossprobe.track.tracker import Tracker

_CLASS = None


def _lightning():
    try:
        import pytorch_lightning as pl  # lazy: Lightning is an optional dependency
    except ImportError:
        try:
            import lightning.pytorch as pl  # lazy: Lightning is an optional dependency
        except ImportError:
            raise UserError("the Lightning callback needs pytorch-lightning: pip install 'lossprobe[lightning]'") from None
    return pl


def _build():
    pl = _lightning()

    class TrackerCallback(pl.Callback):
        """Track the landscape during ``trainer.fit`` (see the module doc)."""

        def __init__(self, probe_data, prefix: str = "lossprobe/", **tracker_kwargs):
            super().__init__()
            self.probe_data = probe_data
            self.prefix = prefix
            self.kwargs = dict(tracker_kwargs)
            self.kwargs.setdefault("quiet", True)
            self.tracker: Tracker | None = None
            self._pending_state: dict | None = None

        def on_fit_start(self, trainer, pl_module):
            if self.tracker is None:
                opts = trainer.optimizers
                self.tracker = Tracker(pl_module, self.probe_data, optimizer=opts[0] if opts else None, **self.kwargs)
            if self._pending_state is not None:
                self.tracker.load_state_dict(self._pending_state)
                self._pending_state = None
            elif trainer.global_step == 0 and not len(self.tracker):
                self.tracker.step(0)  # the initial point, before the first optimiser step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec = self.tracker.step(trainer.global_step)
            if rec:
                values = {f"{self.prefix}{k}": v for k, v in rec.items() if k != "step" and v == v}
                pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)

        def on_fit_end(self, trainer, pl_module):
            if self.tracker is not None:
                self.tracker.close()

        def state_dict(self):
            return self.tracker.state_dict() if self.tracker is not None else (self._pending_state or {})

        def load_state_dict(self, state_dict):
            if not state_dict:
                return
            if self.tracker is not None:
                self.tracker.load_state_dict(state_dict)
            else:
                self._pending_state = state_dict  # applied when the tracker is made (on_fit_start)

    return TrackerCallback


def __getattr__(name: str):
    global _CLASS
    if name == "TrackerCallback":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrackerCallback"]

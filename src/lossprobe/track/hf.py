"""A HuggingFace `TrainerCallback` over `Tracker` (needs ``transformers`` with its Trainer).

    from lossprobe.track.hf import attach
    trainer = Trainer(model=model, args=args, train_dataset=ds, ...)
    cb = attach(trainer, probe_batches, every=200, probes=("lambda_max", "grad_norm"))
    trainer.train()                       # values logged as lossprobe/<name> with the trainer's own logs
    cb.tracker.history

The tracker is made when training starts (``on_train_begin``) on the trainer's model and
optimiser, with ``loss="model"`` (the model's own loss) unless another `loss=` is given, and
measures after optimiser steps (``on_step_end``, at ``state.global_step``). A step that measured
asks the trainer to log, and ``on_log`` adds the values to that log entry, so they appear in
``trainer.state.log_history`` and wherever ``report_to`` sends the logs. Transformers calls its
callbacks in order and puts the `report_to` integrations first, so `attach` puts this callback
before them (``TrackerCallback(...)`` passed in ``callbacks=[...]`` works too, but then the
integrations log before it adds its values).

Resuming: on every checkpoint save the tracker's state is written next to it
(``checkpoint-N/lossprobe_tracker.pt``), and ``trainer.train(resume_from_checkpoint=...)``
reads it back when training starts at that step.

The class is built on first access (transformers is an optional dependency, imported then).
"""

from __future__ import annotations

import os
import warnings

import torch

from lossprobe.errors import UserError
from lossprobe.results.atomic import save_torch
from lossprobe.track.tracker import Tracker

STATE_FILE = "lossprobe_tracker.pt"
_CLASS = None


def _build():
    try:
        from transformers import TrainerCallback  # lazy: transformers is an optional dependency
    except ImportError:
        raise UserError("the HF Trainer callback needs transformers: pip install 'lossprobe[hf]'") from None

    class TrackerCallback(TrainerCallback):
        """Track the landscape during ``Trainer.train`` (see the module doc)."""

        def __init__(self, probe_data, prefix: str = "lossprobe/", **tracker_kwargs):
            self.probe_data = probe_data
            self.prefix = prefix
            self.kwargs = dict(tracker_kwargs)
            self.kwargs.setdefault("quiet", True)
            self.kwargs.setdefault("loss", "model")
            self.tracker: Tracker | None = None
            self._pending: dict[str, float] = {}

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if self.tracker is None:
                self.tracker = Tracker(model, self.probe_data, optimizer=optimizer, **self.kwargs)
            if state.global_step > 0:
                path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
                if os.path.isfile(path):
                    self.tracker.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                else:
                    warnings.warn(f"resuming at step {state.global_step} without {path}: the tracker's history "
                                  "starts here", stacklevel=2)
            elif not len(self.tracker):
                self.tracker.step(0)  # the initial point, before the first optimiser step

        def on_step_end(self, args, state, control, **kwargs):
            rec = self.tracker.step(state.global_step)
            if rec:
                self._pending = {f"{self.prefix}{k}": v for k, v in rec.items() if k != "step" and v == v}
                control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self._pending and logs is not None:
                logs.update(self._pending)
                if state.log_history and state.log_history[-1].get("step") == state.global_step:
                    state.log_history[-1].update(self._pending)
                self._pending = {}

        def on_save(self, args, state, control, **kwargs):
            if self.tracker is not None and args.should_save:
                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
                if os.path.isdir(folder):
                    save_torch(os.path.join(folder, STATE_FILE), self.tracker.state_dict())

        def on_train_end(self, args, state, control, **kwargs):
            if self.tracker is not None:
                self.tracker.close()

    return TrackerCallback


def attach(trainer, probe_data, **tracker_kwargs):
    """Make a `TrackerCallback` and put it first among the trainer's callbacks, before the
    `report_to` integrations, so that they log its values; returns it."""
    cb = __getattr__("TrackerCallback")(probe_data, **tracker_kwargs)
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb


def __getattr__(name: str):
    global _CLASS
    if name == "TrackerCallback":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STATE_FILE", "TrackerCallback", "attach"]

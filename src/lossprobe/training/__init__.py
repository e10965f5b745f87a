"""Training: the one training loop, and checkpoints.

`loop` holds `fit` (learning curves, schedules, warm-up, augmentation, per-epoch resume)
and its inner loop `run_epoch`, which curves and trajectories train through too;
`checkpoints` saves state dicts as safetensors and loads them without running code.

Layer rule: imports only runtime, results and the core.
"""

from lossprobe.training.checkpoints import apply_state_dict, load_checkpoint, load_state_dict, save_checkpoint
from lossprobe.training.loop import History, TrainConfig, TrainingDiverged, evaluate_model, fit

__all__ = ["History", "TrainConfig", "TrainingDiverged", "apply_state_dict", "evaluate_model", "fit",
           "load_checkpoint", "load_state_dict", "save_checkpoint"]

"""Checkpoints: state dicts saved as safetensors and loaded without running code.

`save_checkpoint` writes a model's parameters and buffers as safetensors (tied tensors once,
as HF's ``save_pretrained`` does). `load_state_dict` reads safetensors, or a torch file with
``weights_only=True`` (a file carrying pickled code is refused, never run), and
`apply_state_dict` copies a state into a model after checking every name and shape, naming
the first mismatch in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lossprobe.core.space import tied_names
from lossprobe.errors import UserError, first_line, refused_pickle
from lossprobe.results.atomic import describe, save_safetensors


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the state dict (parameters and buffers) as safetensors.

    Tied tensors (one tensor under several names, e.g. an embedding shared with the
    output layer) are stored once, under their first name, as HF's ``save_pretrained``
    does; `load_checkpoint` restores every alias.
    """
    state, seen = {}, {}
    for k, v in model.state_dict(keep_vars=True).items():
        key = (v.data_ptr(), v.dtype, tuple(v.shape), v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        state[k] = v.detach().contiguous().cpu()
    save_safetensors(path, state)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a torch file with ``weights_only=True``.

    Raises UserError for a missing file, a file carrying pickled code, or anything that is
    not a mapping of names to tensors.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {p} is a folder, not a checkpoint file (.safetensors or a torch state dict)")
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise UserError(f"checkpoint {p} is not a regular file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise describe(e, p, "read") from None
    if not head:
        raise UserError(f"checkpoint {p} is empty")
    if p.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):

        try:
            state = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"checkpoint {p} is not a valid safetensors file: {e}") from None
    else:
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            raise UserError(f"checkpoint {p} is damaged or not a checkpoint file (it starts with bytes "
                            f"{head[:8].hex(' ')}); save a state_dict with torch.save or as safetensors")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except MemoryError:
            raise UserError(f"checkpoint {p} does not fit in memory") from None
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            why = refused_pickle(e)
            if why is None:  # not a pickle that weights_only refused: a damaged file
                raise UserError(f"checkpoint {p} is damaged or not a torch checkpoint ({type(e).__name__}: "
                                f"{first_line(e)})") from None
            raise UserError(
                f"checkpoint {p} could not be loaded safely: it holds more than tensors (torch's safe loader "
                f"refused it: {why}); lossprobe never runs code from a checkpoint: save a plain state_dict or "
                "safetensors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"checkpoint {p} is not a state dict (a mapping of parameter names to tensors)")
    for k, v in state.items():
        if v.layout != torch.strided or v.is_meta:
            kind = "meta (no values)" if v.is_meta else str(v.layout).split(".")[-1]
            raise UserError(f"checkpoint {p}: '{k}' is a {kind} tensor; save dense tensors with values")
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint into `model`, naming the first mismatching parameter if any."""
    return apply_state_dict(model, load_state_dict(path), path)


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike = "the state dict") -> nn.Module:
    """Copy `state` into `model` after checking every name and shape.

    A tied tensor needs to be present under one of its names only (``save_pretrained``
    files omit the copies); the others are filled from it.
    """
    own = model.state_dict()
    state = dict(state)
    tied = tied_names(model)
    for alias, name in tied.items():
        if alias not in state and name in state:
            state[alias] = state[name]
        elif name not in state and alias in state:
            state[name] = state[alias]
    for k, v in own.items():
        if k not in state:
            raise UserError(f"checkpoint {path} has no parameter '{k}': it was saved from a different architecture")
        got = state[k]
        if (got.is_complex() and not v.is_complex()) or (got.dtype == torch.bool) != (v.dtype == torch.bool) \
                or (v.is_floating_point() and not (got.is_floating_point() or got.is_complex())):
            raise UserError(f"checkpoint {path}: '{k}' holds {str(got.dtype).replace('torch.', '')} values, the model "
                            f"expects {str(v.dtype).replace('torch.', '')}; lossprobe does not cast them silently")
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(
                f"checkpoint {path}: parameter '{k}' has shape {tuple(state[k].shape)}, the model expects "
                f"{tuple(v.shape)}: different architecture"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise UserError(f"checkpoint {path} has parameter '{extra[0]}' that the model lacks: different architecture")
    model.load_state_dict(state)
    return model

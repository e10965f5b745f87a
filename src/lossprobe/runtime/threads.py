"""Torch's intra-op thread count, set for a block of work and restored after it."""

from __future__ import annotations

import contextlib

import torch

from lossprobe.errors import UserError


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: leave the setting alone), then restore it.

    Small models and small matrix products are often much faster on one thread on a
    shared machine: OpenMP barriers wait for threads that the OS has descheduled.
    """
    if n is None:
        yield
        return
    if int(n) < 1:
        raise UserError(f"threads must be a positive integer, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)

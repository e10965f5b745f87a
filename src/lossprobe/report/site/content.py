"""The text content of a run: its headline numbers and the flattened tables of its JSON files."""

from __future__ import annotations

import re
from typing import Any

from lossprobe.report.site.markup import fmt


def flatten(d: Any, prefix: str = "", max_list: int = 8) -> list[tuple[str, Any, str]]:
    """Leaves of nested dicts as (dotted key, value, note). Lists longer than `max_list`
    (or of non-scalars) keep their value but get a note such as '41 values' to show instead."""
    out: list[tuple[str, Any, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k), max_list)
    elif isinstance(d, (list, tuple)):
        scalars = all(isinstance(x, (int, float, str, bool)) or x is None for x in d)
        if scalars and len(d) <= max_list:
            out.append((prefix, list(d), ""))
        else:
            out.append((prefix, d, f"{len(d)} values"))
    else:
        out.append((prefix, d, ""))
    return out


# --- key numbers: a summary's headline values, ranked by what they measure ---
_SKIP_KEY = re.compile(r"(seconds?|time|timing|seeds?|alphas?|batch|epochs?|^lr$|version|grid|shape|^n_|^n$|count|"
                       r"^study$|^kind$|^model$|^points|^computed$|non_finite|per_second|chunk|workers|threshold|every)", re.I)
_PRIORITY = ("barrier", "test_acc", "accuracy", "sharp", "eigen", "lambda", "trace", "gap", "flat", "distance",
             "loss", "error")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _headline_key(dicts: list[dict]) -> str | None:
    """The numeric key shared by all `dicts` that ranks first in _PRIORITY (test accuracy, loss, ...)."""
    common = [k for k in dicts[0] if all(_is_number(d.get(k)) for d in dicts) and not _SKIP_KEY.search(k)]
    ranked = sorted((rank, j, k) for j, k in enumerate(common)
                    if (rank := next((i for i, w in enumerate(_PRIORITY) if w in str(k).lower()), None)) is not None)
    return ranked[0][2] if ranked else None


def key_numbers(summary: Any, limit: int = 6) -> list[tuple[str, str]]:
    """The summary's headline numbers as (key, text), barriers, accuracies, sharpness ... first.

    A top-level value qualifies if it is a number, a list of up to 4 numbers ('a / b'), or
    a dict with 1 to 4 numbers ('train 0.76 · test 0.74'); bookkeeping keys (seconds,
    seeds, sizes) are left out.
    """
    if not isinstance(summary, dict):
        return []
    def small(v) -> bool:  # a number or up to 4 numbers
        return _is_number(v) or (isinstance(v, list) and 0 < len(v) <= 4 and all(map(_is_number, v)))

    def text(v) -> str:
        return fmt(v) if _is_number(v) else " / ".join(fmt(x) for x in v)

    items = []
    for order, (k, v) in enumerate(summary.items()):
        if _SKIP_KEY.search(str(k)):
            continue
        if small(v):
            shown, values = text(v), v if isinstance(v, list) else [v]
        elif isinstance(v, dict) and 0 < sum(map(small, v.values())) <= 4:
            # the direct numbers only (train/test, or per method); nested variants stay in the table
            shown = " · ".join(f"{sk} {text(x)}" for sk, x in v.items() if small(x))
            values = [y for x in v.values() if small(x) for y in (x if isinstance(x, list) else [x])]
        elif (isinstance(v, dict) and 2 <= len(v) <= 6 and all(isinstance(x, dict) for x in v.values())
              and (common := _headline_key([x for x in v.values()]))):
            # one number per entry (per optimiser, per variant): its most telling common key
            k = f"{k}.{common}"
            shown = " · ".join(f"{sk} {fmt(x[common])}" for sk, x in v.items())
            values = [x[common] for x in v.values()]
        else:
            continue
        low = str(k).lower()
        rank = next((i for i, word in enumerate(_PRIORITY) if word in low), len(_PRIORITY))
        if all(isinstance(y, int) for y in values):
            rank += len(_PRIORITY) + 1  # counts and settings after measured values
        items.append((rank, order, str(k), shown))
    items.sort()
    return [(k, t) for _, _, k, t in items[:limit]]

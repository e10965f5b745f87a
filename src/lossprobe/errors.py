"""The exception types whose message the CLI prints as one line, and the deprecation warning."""

import warnings


class UserError(ValueError):
    """Something the user gave is wrong; the message says what and what to do."""


class StorageError(OSError):
    """An operating-system error reading or writing lossprobe's files (permission denied,
    read-only file system, disk full, ...); str() is one line naming the file."""

    def __init__(self, errno: int | None, message: str, filename: str | None = None):
        super().__init__(errno, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BusyError(UserError):
    """Another process is writing the same run directory (or site)."""


class Interrupt(Exception):
    """Raised on purpose to leave a loop early (a training paused at its epoch, a spent search
    budget, a pass stopped at the layer it measures): error wrappers such as
    `core.batching.at_batch` let it through unchanged."""


def describe_exception(e: BaseException) -> str:
    """'TypeError: what it says' for an exception a user's code raised, in one line;
    'sys.exit(2)' for SystemExit."""
    if isinstance(e, SystemExit):
        return f"SystemExit: it called sys.exit({'' if e.code is None else repr(e.code)})"
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: what a
    one-line error quotes of an exception raised by torch, a user's model or a file reader."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def refused_pickle(e: BaseException) -> str | None:
    """For torch.load(weights_only=True) refusing a pickle (a class, a function or an opcode its
    safe unpickler does not run), the reason torch gives, without torch's advice to load the
    file with weights_only=False; None for any other failure (a damaged file)."""
    text = str(e)
    if "Weights only load failed" not in text:
        return None
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.startswith("WeightsUnpickler error:"):
            ln = ln[len("WeightsUnpickler error:"):].strip()
        if ln and not ln.startswith(skip):
            return ln
    return "not plain tensors"


class LossprobeDeprecationWarning(FutureWarning):
    """A name lossprobe still answers but will drop in the next release (a FutureWarning, so
    users see it by default)."""


_warned: set[str] = set()


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn once per process that `old` is deprecated in favour of `new`."""
    if old not in _warned:
        _warned.add(old)
        warnings.warn(f"{old} is deprecated: use {new}; the old form stops working in the next release",
                      LossprobeDeprecationWarning, stacklevel=stacklevel)

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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: what a
    one-line error quotes of an exception raised by torch, a user's model or a file reader."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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

"""The exception types whose message the CLI prints as one line."""


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

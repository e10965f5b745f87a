"""The one exception type for user mistakes; the CLI prints its message as one line."""


class UserError(ValueError):
    """Something the user gave is wrong; the message says what and what to do."""

"""Run as the command line, Ctrl-C while the library is still importing ends it quietly.

Imported first by `lossprobe/__init__`. `lossprobe ...` and `python -m lossprobe` spend their
first second or so importing torch and the library, before `cli.main` can turn Ctrl-C into
one line; without this module a Ctrl-C then prints a traceback through torch's imports.
"""

import os
import signal
import sys


def _cli_interrupt_at_start() -> None:
    """Run as the command line (`lossprobe ...` or `python -m lossprobe`), Ctrl-C while the
    library is still importing (the first second or so, before the command's own handling)
    ends it with one line and status 130 instead of a traceback through torch's imports;
    `cli.main` puts Python's own handler back once it runs."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1:argv.index("-m") + 2] if "-m" in argv else []
    as_cli = module == ["lossprobe"] or (len(argv) > 1 and os.path.basename(argv[1]) == "lossprobe")
    if as_cli and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted)


def interrupted(signum, frame):
    os.write(2, b"lossprobe: interrupted while starting; nothing was written\n")
    os._exit(130)


_cli_interrupt_at_start()

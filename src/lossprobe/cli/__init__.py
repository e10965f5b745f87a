"""The `lossprobe` command line.

Each subcommand lives in its own module under `lossprobe.cli` with a `register(subparsers)`
function; add it to COMMANDS to expose it. A command module parses, calls the library and
presents what it returns: it computes nothing itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
import warnings

from lossprobe._start import interrupted
from lossprobe._version import __version__
from lossprobe.errors import UserError, first_line
from lossprobe.results.atomic import describe
from lossprobe.results.store import release_all_locks
from lossprobe.runtime.cluster import leave_if_ray_init_hangs

# command -> the module that registers it (`register(subparsers)`); `lossprobe COMMAND ...` imports
# only that module, so a command does not wait for the imports of the others (matplotlib, SQLAlchemy)
COMMANDS = {
    "study": "lossprobe.cli.study",
    "interpolate": "lossprobe.cli.interpolate",
    "hessian": "lossprobe.cli.hessian",
    "sharpness": "lossprobe.cli.sharpness",
    "report": "lossprobe.cli.report",
    "serve": "lossprobe.cli.serve",
    "align": "lossprobe.cli.align",
    "curve": "lossprobe.cli.curve",
    "search": "lossprobe.cli.search",
    "surface": "lossprobe.cli.surface",
    "slice": "lossprobe.cli.surface",
}


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line (what was wrong, where to read more) and exit 2.
    A value such as -1e6, -.5 or -inf is a (negative) number, not an option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        self.exit(2, f"lossprobe: error: {cmd + ': ' if cmd else ''}{message} "
                     f"(see 'lossprobe {cmd + ' ' if cmd else ''}--help')\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with only the one `argv` names (the others' help is then unused)."""

    parser = Parser(
        prog="lossprobe",
        description="Probe the geometry of neural-network loss landscapes.",
        epilog="Run 'lossprobe COMMAND --help' for the options of a command. "
        "Set LOSSPROBE_DEBUG=1 to see full tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"lossprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    modules = [COMMANDS[chosen]] if chosen in COMMANDS else COMMANDS.values()
    for name in dict.fromkeys(modules):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is KeyboardInterrupt again (lossprobe._start)
    try:
        parser = build_parser(argv)
    except KeyboardInterrupt:
        print("lossprobe: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        print("lossprobe: error: give a command, e.g. 'lossprobe study two-seeds'; 'lossprobe --help' lists them",
              file=sys.stderr)
        return 2
    refused = _several_processes()
    if refused:
        print(f"lossprobe: error: {refused}", file=sys.stderr)
        return 2
    debug = os.environ.get("LOSSPROBE_DEBUG") == "1"
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lossprobe: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError) as e:
        if debug:
            raise
        print(f"lossprobe: error: {first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # permission denied, read-only file system, disk full, ...: one line naming the file
        if debug:
            raise
        action = "read" if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) else "write"
        print(f"lossprobe: error: {first_line(describe(e, action=action))}", file=sys.stderr)
        return 1
    except MemoryError:
        print("lossprobe: error: out of memory; use a smaller --subset or batch size", file=sys.stderr)
        return 2
    except SystemExit as e:  # sys.exit from the user's code (lossprobe's own code never calls it)
        if debug:
            raise
        print(f"lossprobe: error: the command stopped: your code called sys.exit({'' if e.code is None else repr(e.code)})",
              file=sys.stderr)
        return 2
    finally:
        release_all_locks()
        leave_if_ray_init_hangs(2)


def _several_processes() -> str | None:
    """One line when this process is one of several that torchrun (or another launcher) started.

    Each command is one process: under torchrun every rank would run the whole command into the
    same --out folder (the second finds it locked, and the launcher stops the first). Data-parallel
    and model-sharded probes are the library's, from a script (docs/large-models.md).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    return (f"the command line runs in one process, and this is one of {world} (WORLD_SIZE={world}, torchrun?); "
            "run it without torchrun, or call the probes from a script under torchrun (lossprobe.surface, "
            "hessian.eigenvalues, ...: data-parallel, see docs/large-models.md)")


if __name__ == "__main__":
    sys.exit(main())

"""The `lossprobe` command line.

Each subcommand lives in its own module under `lossprobe.cli` with a `register(subparsers)`
function; add the module's name to COMMANDS to expose it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ..errors import UserError

COMMANDS = [
    "lossprobe.cli.study",
    "lossprobe.cli.interpolate",
    "lossprobe.cli.hessian",
    "lossprobe.cli.sharpness",
    "lossprobe.cli.report",
    "lossprobe.cli.serve",
    "lossprobe.cli.align",
    "lossprobe.cli.curve",
    "lossprobe.cli.search",
    "lossprobe.cli.surface",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="lossprobe",
        description="Probe the geometry of neural-network loss landscapes.",
        epilog="Run 'lossprobe COMMAND --help' for the options of a command. "
        "Set LOSSPROBE_DEBUG=1 to see full tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"lossprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = os.environ.get("LOSSPROBE_DEBUG") == "1"
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lossprobe: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"lossprobe: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lossprobe: error: out of memory; use a smaller --subset or batch size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The user's own code named on the command line: ``module:function``, ``package.module:function``
or ``path/to/file.py:function``, each optionally followed by ``:key=value`` arguments.

Used for models (``--model``), data (``--data``), losses (``--loss``) and forward
functions (``--forward``). Values of ``key=value`` become int, float, bool or str.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any, Callable

from lossprobe.errors import UserError, first_line


def literal(v: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def options(parts: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``['bn', 'dropout=0.1']`` into flags and ``{key: literal(value)}``."""
    flags, kv = [], {}
    for p in parts:
        if "=" in p:
            k, v = p.split("=", 1)
            kv[k] = literal(v)
        elif p:
            flags.append(p)
    return flags, kv


def looks_like_code(spec: str) -> bool:
    """Whether `spec` names a function: 'mod:fn', 'pkg.mod:fn' or 'file.py:fn'."""
    head, _, rest = spec.partition(":")
    name = rest.split(":", 1)[0]
    return bool(head) and name.isidentifier() and (
        head.endswith(".py") or all(p.isidentifier() for p in head.split(".")))


def load_callable(spec: str, what: str) -> tuple[Callable, dict[str, Any]]:
    """The function named by `spec` and its ``key=value`` arguments.

    `what` names the option in error messages ('model', 'data', 'loss', ...).
    """
    head, _, rest = spec.partition(":")
    fn_name, *opts = rest.split(":")
    if not head or not fn_name:
        raise UserError(f"{what} '{spec}' must look like module:function or path/to/file.py:function")
    module = _import(head, spec, what)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise UserError(f"{head} has no '{fn_name}' ({what} '{spec}')")
    if not callable(fn):
        raise UserError(f"'{fn_name}' in {head} is a {type(fn).__name__}, not a function ({what} '{spec}')")
    return fn, options(opts)[1]


def _raised(e: BaseException) -> str:
    """'raised TypeError: ...', or 'called sys.exit(2)' for SystemExit."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({'' if e.code is None else repr(e.code)})"
    return f"raised {type(e).__name__}" + (f": {first_line(e)}" if str(e).strip() else "")


def call_user(fn: Callable, kwargs: dict, spec: str, what: str):
    """Call the user's function; anything it raises (a BaseException subclass or sys.exit too,
    but Ctrl-C) becomes one line naming the spec."""
    try:
        return fn(**kwargs)
    except UserError:
        raise
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as e:
        raise UserError(f"{what} '{spec}' {_raised(e)}") from None


@contextlib.contextmanager
def _importing(spec: str, what: str, name: str, import_errors: bool = False):
    """Around importing the user's module: it sees only its own name in sys.argv, what it prints
    is held back, and an exception or exit is one line (a module that parses the command line
    when imported would otherwise print its own usage, as if lossprobe had refused its options).
    What it printed is passed on when the import succeeds. `import_errors`: let an ImportError
    through (for the caller's own message)."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [name]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except UserError:
        raise
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as e:
        if import_errors and isinstance(e, ImportError):
            raise
        hint = ""
        if isinstance(e, SystemExit):
            hint = (" while being imported (does it parse the command line or exit at import? put that under "
                    "`if __name__ == '__main__':`)")
        raise UserError(f"{what} '{spec}': importing {name} {_raised(e)}{hint}") from None
    finally:
        sys.argv = argv
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())


def _import(head: str, spec: str, what: str):
    if head.endswith(".py"):
        path = Path(head).expanduser()
        if not path.is_file():
            raise UserError(f"{what} '{spec}': file {path} does not exist")
        name = f"lossprobe_user_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        # the file may import its neighbours, as it would when run as a script
        sys.path.insert(0, str(path.resolve().parent))
        try:
            with _importing(spec, what, str(path)):
                loader_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.resolve().parent))
        sys.modules[name] = module
        return module
    # modules in the current directory, as `python -m` would find them
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        with _importing(spec, what, head, import_errors=True):
            return importlib.import_module(head)
    except ImportError as e:
        raise UserError(f"cannot import '{head}' for {what} '{spec}': {first_line(e)}") from None


def source_file(spec: str) -> Path | None:
    """The file of the user's code that `spec` ('file.py:fn' or 'module:fn') names, for the
    fingerprints of a run's inputs (None when it is not code or has no file)."""
    if not isinstance(spec, str) or not looks_like_code(spec):
        return None
    head = spec.partition(":")[0]
    if head.endswith(".py"):
        return Path(head).expanduser()
    module = sys.modules.get(head)
    f = getattr(module, "__file__", None)
    if f is None:
        try:
            found = importlib.util.find_spec(head)
        except (ImportError, ValueError):
            return None
        f = getattr(found, "origin", None)
    return Path(f) if f and Path(f).is_file() else None


__all__ = ["call_user", "literal", "load_callable", "looks_like_code", "options", "source_file"]

"""Ray for lossprobe: starting or joining it with a deadline (an unreachable `--address` is
one line, not a hang), and the one `Executor` that surfaces and search run their jobs on."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from lossprobe.errors import UserError

DEFAULT_TIMEOUT = 30.0  # seconds to reach a cluster at --address


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address ('host:port', 'ray://host:port'); None for 'auto'/'local'."""
    if address in ("auto", "local"):
        return None
    if "://" in address:
        u = urlsplit(address)
        try:
            port = u.port
        except ValueError:
            raise UserError(f"--address {address}: the port is not a number") from None
        if not u.hostname:
            raise UserError(f"--address {address} has no host; use HOST:PORT or ray://HOST:PORT")
        return u.hostname, port or (10001 if u.scheme == "ray" else 6379)
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise UserError(f"--address {address} is not HOST:PORT or ray://HOST:PORT")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UserError(f"--address {address}: the port '{port}' is not a number") from None


_HUNG_INITS: list[threading.Thread] = []  # ray.init calls still waiting for a cluster that never answered


def leave_if_ray_init_hangs(code: int) -> None:
    """Exit now with `code` when a `ray.init` is still stuck in its thread: letting the
    interpreter finalise under it aborts the process (SIGABRT) after the one-line error."""
    if any(t.is_alive() for t in _HUNG_INITS):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def init(address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **kw) -> bool:
    """`ray.init` (joining the cluster at `address`, or starting a local Ray) within `timeout`
    seconds; returns True if this call started Ray, False if it was running already.

    Raises UserError naming the address when the cluster cannot be reached in time."""
    try:
        import ray  # lazy: Ray is an optional extra
    except ImportError:
        raise UserError("the Ray backend needs Ray: pip install 'lossprobe[ray]'") from None
    if ray.is_initialized():
        return False
    if not timeout > 0:
        raise UserError(f"the Ray connection timeout must be positive, got {timeout}")
    t0 = time.monotonic()
    if address:
        hp = _host_port(address)
        if hp is not None:
            try:
                socket.create_connection(hp, timeout=timeout).close()
            except OSError as e:
                why = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else (e.strerror or str(e))
                raise UserError(f"cannot reach the Ray cluster at {address} ({why}) within {timeout:g} s; check "
                                "--address, or leave it out to start a local Ray") from None
        kw = {**kw, "address": address}
    result: dict = {}

    def go():
        try:
            ray.init(**kw)
            result["ok"] = True
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    th = threading.Thread(target=go, name="lossprobe-ray-init", daemon=True)
    th.start()
    th.join(max(1.0, timeout - (time.monotonic() - t0)) if address else None)
    if th.is_alive():
        _HUNG_INITS.append(th)
        raise UserError(f"the Ray cluster at {address} did not answer within {timeout:g} s; check --address "
                        "(and that the cluster runs the same Ray version), or raise --ray-timeout")
    if "error" in result:
        e = result["error"]
        if isinstance(e, (UserError, KeyboardInterrupt)):
            raise e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = f"join the Ray cluster at {address}" if address else "start a local Ray"
        raise UserError(f"could not {where}: {first}") from None
    return True


# --- running jobs here or on Ray ---------------------------------------------------------
BACKENDS = ("local", "ray")
ALIASES = {"inprocess": "local"}  # the search's earlier name for the local backend
DEFAULT_RETRIES = 3  # times Ray reruns a failed task (a lost worker, an exception) before giving up


def backend_name(backend: str) -> str:
    """The canonical name of a backend ('local' or 'ray'; 'inprocess' means 'local')."""
    name = ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use local (or inprocess) or ray")
    return name


class Executor:
    """Runs jobs in this process (``backend='local'``, alias 'inprocess') or as Ray tasks
    (``backend='ray'``: joins the cluster at `address` within `timeout` seconds, or starts a
    local Ray with `num_cpus`).

    Ray tasks take one CPU each and are rerun up to `retries` times when they fail. `close`
    (or leaving a ``with`` block) shuts Ray down if this executor started it. `put` shares a
    large argument once (a Ray object reference; the value itself locally).
    """

    def __init__(self, backend: str = "local", address: str | None = None, num_cpus: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES):
        self.backend = backend_name(backend)
        self.retries = int(retries)
        self._started = False
        if self.backend == "ray":
            kw = {"ignore_reinit_error": True, "logging_level": "ERROR", "log_to_driver": False}
            if not address:
                kw["include_dashboard"] = False
                if num_cpus is not None:
                    kw["num_cpus"] = num_cpus
            self._started = init(address, timeout, **kw)
            import ray  # lazy: Ray is an optional extra

            self._ray = ray
            self._remote: dict = {}

    def put(self, value):
        return self._ray.put(value) if self.backend == "ray" else value

    def map(self, fn, arglist: list[tuple]) -> list:
        out = [None] * len(arglist)
        for i, r in self.as_completed(fn, arglist):
            out[i] = r
        return out

    def as_completed(self, fn, arglist: list[tuple]):
        """Yield (index, result) as each job finishes, so callers can store it at once."""
        if self.backend == "local":
            for i, a in enumerate(arglist):
                yield i, fn(*a)
            return
        ray = self._ray
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=self.retries, retry_exceptions=True)(fn)
        refs = [self._remote[fn].remote(*a) for a in arglist]
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                yield index[r], ray.get(r)

    def close(self) -> None:
        """Shut Ray down if this executor started it (a Ray that was running already stays)."""
        if self._started:
            self._started = False
            self._ray.shutdown()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

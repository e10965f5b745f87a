"""Starting or joining Ray with a deadline: an unreachable `--address` is one line, not a hang."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from .errors import UserError

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


def init(address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **kw) -> bool:
    """`ray.init` (joining the cluster at `address`, or starting a local Ray) within `timeout`
    seconds; returns True if this call started Ray, False if it was running already.

    Raises UserError naming the address when the cluster cannot be reached in time."""
    try:
        import ray
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

"""Claims: several search processes on one Optuna storage share the work instead of repeating it.

Before a process probes or trains a candidate, or opens the sealed test set, it claims that
piece of work in a small table, ``lossprobe_claims``, in the same database as the Optuna
studies. A claim is a row with a unique key (study, kind, candidate), so of two processes
that try at once exactly one succeeds; the other does the rest of its batch and then waits
for the finished trial to appear in the storage. The final test evaluation is claimed the
same way and its result is recorded in the row (and in the full study's user attributes),
so it happens once per search, whatever the number of workers or restarts.

A claim whose owner died is taken over: at once when the owner ran on this machine and its
process is gone, otherwise when its heartbeat (renewed every `HEARTBEAT` seconds while the
owner lives) is older than `STALE` seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import weakref

import sqlalchemy as sa

_LIVE: set[str] = set()  # owners (Claims objects) alive in this process
HEARTBEAT = 10.0
STALE = 90.0
TABLE = "lossprobe_claims"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy engine options for `url`: SQLite waits (up to a minute) for another writer."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


class Claims:
    """Claims of work on the database at `url` for the search called `study`."""

    def __init__(self, url: str, study: str):
        self.study = study
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self.enabled = ":memory:" not in url and url not in ("sqlite://", "sqlite:///")
        self._stop = threading.Event()
        _LIVE.add(self.owner)
        weakref.finalize(self, _forget, self.owner, self._stop)
        self._thread: threading.Thread | None = None
        if not self.enabled:  # one process only: nothing to share
            self._mine: set = set()
            self._values: dict = {}
            return
        self.engine = sa.create_engine(url, **engine_kwargs(url))
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("study", sa.String(512), primary_key=True),
            sa.Column("kind", sa.String(32), primary_key=True),
            sa.Column("item", sa.String(128), primary_key=True),
            sa.Column("owner", sa.String(256), nullable=False),
            sa.Column("host", sa.String(256), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),  # running | done
            sa.Column("heartbeat", sa.Float, nullable=False),
            sa.Column("value", sa.Text, nullable=True),  # JSON, for the recorded test result
        )
        for attempt in range(5):  # two processes creating the table at once: one of them retries
            try:
                meta.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # --- claims ------------------------------------------------------------------------
    def _row(self, conn, kind: str, item) -> dict | None:
        t = self.table
        r = conn.execute(t.select().where(t.c.study == self.study, t.c.kind == kind, t.c.item == str(item))).mappings().first()
        return dict(r) if r is not None else None

    def _stale(self, row: dict) -> bool:
        if row["state"] != "running":
            return False
        if row["host"] == self.host and row["pid"] != self.pid and not _pid_alive(row["pid"]):
            return True
        if row["host"] == self.host and row["pid"] == self.pid and row["owner"] not in _LIVE:
            return True  # an earlier search in this process that was not closed
        return time.time() - row["heartbeat"] > STALE

    def claim(self, kind: str, item) -> bool:
        """Try to take (kind, item); True if this process may do the work now."""
        if not self.enabled:
            self._mine.add((kind, str(item)))
            return True

        t = self.table
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(t.insert().values(study=self.study, kind=kind, item=str(item), owner=self.owner,
                                               host=self.host, pid=self.pid, state="running", heartbeat=now))
            self._start_heartbeat()
            return True
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as conn:
            row = self._row(conn, kind, item)
            if row is None:  # released in between: try again
                return self.claim(kind, item)
            if row["owner"] == self.owner:
                return row["state"] == "running"
            if not self._stale(row):
                return False
            res = conn.execute(t.update().where(t.c.study == self.study, t.c.kind == kind, t.c.item == str(item),
                                                t.c.owner == row["owner"], t.c.state == "running")
                               .values(owner=self.owner, host=self.host, pid=self.pid, heartbeat=now))
        if res.rowcount == 1:
            self._start_heartbeat()
            return True
        return False

    def done(self, kind: str, item, value=None) -> None:
        """Mark (kind, item) finished, with an optional JSON-able `value` recorded."""
        if not self.enabled:
            self._values[(kind, str(item))] = value
            return
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.study == self.study, t.c.kind == kind, t.c.item == str(item),
                                          t.c.owner == self.owner)
                         .values(state="done", heartbeat=time.time(),
                                 value=None if value is None else json.dumps(value)))

    def status(self, kind: str, item) -> tuple[str | None, object, str | None]:
        """(state or None, recorded value, owner) of (kind, item)."""
        if not self.enabled:
            key = (kind, str(item))
            return ("done" if key in self._values else None), self._values.get(key), self.owner
        with self.engine.begin() as conn:
            row = self._row(conn, kind, item)
        if row is None:
            return None, None, None
        return row["state"], (json.loads(row["value"]) if row["value"] else None), row["owner"]

    def release(self) -> None:
        """Give up this process's unfinished claims (others may take them at once) and stop the heartbeat."""
        self._stop.set()
        _LIVE.discard(self.owner)
        if not self.enabled:
            return
        t = self.table
        try:
            with self.engine.begin() as conn:
                conn.execute(t.delete().where(t.c.study == self.study, t.c.owner == self.owner,
                                              t.c.state == "running"))
        except Exception:  # noqa: BLE001 - best effort; a dead owner's claims go stale anyway
            pass

    # --- heartbeat -----------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        # the thread holds no reference to self, so a forgotten Claims is collected (and stops it)
        self._thread = threading.Thread(target=_beat, args=(self.engine, self.table, self.owner, self._stop),
                                        name="lossprobe-claims-heartbeat", daemon=True)
        self._thread.start()


def _forget(owner: str, stop: threading.Event) -> None:
    _LIVE.discard(owner)
    stop.set()


def _beat(engine, t, owner: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            with engine.begin() as conn:
                conn.execute(t.update().where(t.c.owner == owner, t.c.state == "running").values(heartbeat=time.time()))
        except Exception:  # noqa: BLE001 - a missed beat is retried; STALE allows for several
            pass

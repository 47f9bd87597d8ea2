"""Group commit for a service that records every request: one writer thread, one long-lived connection.

Requests hand the writer a function that builds their row (the anomaly map PNG, the row's fields: done on
the writer thread, off the request's path) and get a future that resolves to the record id once the row's
transaction has COMMITTED. Whatever arrived while the previous transaction committed goes into the next
one, so concurrent requests share a commit instead of queueing for one each.

Durability contract: a future resolves only after the database acknowledged the commit, and a row is
inserted only after its image file is complete under its final name. What an acknowledged record then
survives is the database's: SQLite (WAL, ``synchronous=NORMAL``) and the image folder survive the
service being killed at any point (SIGKILL, OOM, crash), not a power loss or kernel crash (their last
writes are not yet fsynced then); PostgreSQL with its default ``synchronous_commit=on`` also survives the
database server crashing. A failed transaction fails every request in it (none of its rows exist).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from defectlab.errors import BadInputError
from defectlab.records.schema import _short
from defectlab.records.store import RecordStore, insert_rows

RowFn = Callable[[], dict[str, Any]]
MAX_GROUP = 64  # rows in one transaction at most


class GroupWriter:
    def __init__(self, store: RecordStore, max_group: int = MAX_GROUP) -> None:
        self.store, self.max_group = store, max_group
        self._queue: queue.SimpleQueue[tuple[RowFn, Future] | None] = queue.SimpleQueue()
        self._conn: Any = None
        self.groups = 0  # transactions committed (a group commit shares one between requests)
        self.rows = 0
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()

    def submit(self, make_row: RowFn) -> Future:
        """``make_row`` runs on the writer thread; the future gets the record id once committed (or the
        error that kept it from the store)."""
        fut: Future = Future()
        if not self._thread.is_alive():
            fut.set_exception(BadInputError(self.store.where, "the record writer is closed"))
            return fut
        self._queue.put((make_row, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit(group)
        self._disconnect()

    def _commit(self, group: list[tuple[RowFn, Future]]) -> None:
        rows, futures = [], []
        for make_row, fut in group:
            try:
                rows.append(make_row())
                futures.append(fut)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                fut.set_exception(exc if isinstance(exc, BadInputError) else
                                  BadInputError(self.store.where, f"record not built ({_short(exc)})"))
        if not rows:
            return
        try:
            if self._conn is None:
                self._conn = self.store.engine.connect()
                if self._conn.dialect.name == "postgresql":  # one round trip per group, not three
                    self._conn = self._conn.execution_options(isolation_level="AUTOCOMMIT")
            if self._conn.dialect.name == "postgresql":
                ids = insert_rows(self._conn, rows)  # ONE statement (INSERT .. VALUES (..), .. RETURNING):
            else:                                    # atomic and committed before the server answers
                with self._conn.begin():
                    ids = insert_rows(self._conn, rows)
        except Exception as exc:  # noqa: BLE001 - nothing of this transaction is stored: say so to each
            self._disconnect()  # a broken connection is not reused; the next group opens a fresh one
            err = BadInputError(self.store.where, f"record store write failed ({_short(exc)})")
            for fut in futures:
                fut.set_exception(err)
            return
        self.groups += 1
        self.rows += len(rows)
        for fut, rid in zip(futures, ids, strict=True):
            fut.set_result(int(rid))

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - it is being dropped anyway
                pass
            self._conn = None

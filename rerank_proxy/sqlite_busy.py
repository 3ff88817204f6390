"""SQLite steps that another process's lock makes fail at once, retried until a deadline.

SQLite does not call the busy handler for every lock: switching a new file to WAL while another
connection does the same answers "database is locked" at once. Several workers open the same
files (the vector store, the console store) at the same moment when they start, so the wait for
that lock is done here, for both.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable


def while_busy(step: Callable[[], object], timeout_s: float) -> None:
    """Run `step` again while another connection holds the lock it needs, up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
                    or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)

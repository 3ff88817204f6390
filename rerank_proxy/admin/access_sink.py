"""Access lines at next to no cost: encoded once, buffered, written in batches by a thread.

One line per request is the default, as in nginx and envoy, so it must not cost the request path
what `logging` costs (a record, a formatter, a locked handler, one write per line). Here a line is
one orjson call and a deque append on the event loop; a writer thread takes the lines in batches,
as nginx's `access_log ... buffer=64k flush=1s` does: when 64 KiB are waiting, or a second after
the first line. A slow reader of the log (a full pipe) then stalls the thread, never the loop;
past MAX_PENDING_BYTES waiting, lines are dropped and counted rather than held without bound.

On a pipe (a container's stderr, the serve supervisor's workers sharing one), each write is at
most PIPE_BUF bytes and ends at a line's end, so lines of several workers never interleave. A
clean stop writes everything (`close`, also at interpreter exit); a crash loses at most the last
second, or the last 64 KiB, of lines.
"""

from __future__ import annotations

import atexit
import os
import select
import selectors
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 1.0
MAX_PENDING_BYTES = 8 * 1024 * 1024
FILE_CHUNK_BYTES = 256 * 1024

Encode = Callable[[dict[str, Any], float], bytes]


class AccessSink:
    def __init__(self, fd: int, encode: Encode, *, flush_bytes: int = FLUSH_BYTES,
                 flush_interval_s: float = FLUSH_INTERVAL_S, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._fd = fd
        self._encode = encode
        self._flush_bytes = flush_bytes
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending_bytes
        self._chunk = _write_chunk_bytes(fd)
        self._lines: deque[bytes] = deque()
        self._queued = 0    # bytes appended: only the emitting thread changes it
        self._taken = 0     # bytes taken for writing: only a drainer (under _drain_lock) changes it
        self.dropped = 0    # lines not written: over the pending bound, or the log is gone
        self._broken = False
        self._closed = False
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rerank-proxy-access-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def pending_bytes(self) -> int:
        return self._queued - self._taken

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue one access line; never blocks."""
        line = self._encode(fields, time.time())
        pending = self._queued - self._taken
        if pending + len(line) > self._max_pending or self._broken:
            self.dropped += 1
            return
        self._lines.append(line)
        self._queued += len(line)
        if pending + len(line) >= self._flush_bytes and not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        """Write everything queued and stop the writer; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.drain()
        atexit.unregister(self.close)

    def drain(self) -> None:
        """Write what is queued now, in this thread (also before another log line, so the order holds)."""
        with self._drain_lock:
            while self._lines:
                batch = self._take_batch()
                self._write(b"".join(batch), len(batch))

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            self.drain()

    def _take_batch(self) -> list[bytes]:
        """Whole lines up to the write size (at least one line, however long)."""
        batch = [self._lines.popleft()]
        size = len(batch[0])
        while self._lines and size + len(self._lines[0]) <= self._chunk:
            line = self._lines.popleft()
            batch.append(line)
            size += len(line)
        self._taken += size
        return batch

    def _write(self, data: bytes, lines: int) -> None:
        if self._broken:
            self.dropped += lines
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
                _wait_writable(self._fd, 1.0)
                continue
            except InterruptedError:
                continue
            except OSError:  # the log is gone (EPIPE, EBADF, ENOSPC): count what is lost, keep serving
                self._broken = True
                self.dropped += lines
                return
            view = view[written:]


def _write_chunk_bytes(fd: int) -> int:
    """PIPE_BUF on a pipe or socket (each write lands whole, between other writers' lines)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return select.PIPE_BUF
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        return select.PIPE_BUF
    return FILE_CHUNK_BYTES


def _wait_writable(fd: int, timeout_s: float) -> None:
    """Until `fd` takes more bytes, or `timeout_s`. A selector, not select(), which refuses a
    descriptor numbered past 1023 (a process may hold that many)."""
    with selectors.DefaultSelector() as waiter:
        waiter.register(fd, selectors.EVENT_WRITE)
        waiter.select(timeout_s)

"""Wake-ups between the workers of one host: "the scores you waited for have landed", and "flush".

A worker that finds another worker's claim on a key it needs puts its pid on that claim
(host_tier.py); the claimer, when it stores the scores or gives the claim up, sends each waiting
worker one datagram naming the keys, and the waiter reads them from the host tier at once instead
of polling it. Only contended keys cause a datagram, so one is rare next to provider calls. Each
worker binds one Unix datagram socket, `<pid>.wake`, in the host tier's private directory.

A datagram can be lost (the receiver's queue is full, the receiver is restarting): waiters look
again after a recheck interval anyway (host_share.py), so a lost wake-up costs latency, never a
result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

KEY_BYTES = 16                        # ScoreCache.doc_keys: 16-byte keys
_KEYS, _FLUSH = b"K", b"F"
_KEYS_PER_DATAGRAM = 4000             # 64 KB: within the default socket buffers
_SUFFIX = ".wake"


class HostSignals:
    """This worker's wake-up socket, the waits registered on it, and sending to the others."""

    def __init__(self, directory: str | os.PathLike[str], on_flush: Callable[[], object] | None = None,
                 pid: int | None = None) -> None:
        self.directory = os.fspath(directory)
        self.on_flush = on_flush
        self.path = self._path(os.getpid() if pid is None else pid)
        self.lost = 0                 # datagrams the receiver's full queue refused
        self._watching: dict[bytes, list[Watch]] = {}
        self._sock: socket.socket | None = None      # bound: this worker's wake-ups arrive here
        self._sender: socket.socket | None = None    # unbound: needs no event loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Bind this worker's socket and read it on the running loop."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by an earlier process with this pid
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self.path)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._sock = sock

    def restart(self) -> None:
        """Bind again (the socket file was deleted with the host tier's files): wake-ups reach this
        worker again instead of being lost until it restarts."""
        self.close()
        self.start()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- waiting ---------------------------------------------------------------------------------

    def watch(self, keys: Iterable[bytes]) -> Watch:
        """Register a wait before looking at the claims, so that no wake-up can slip in between."""
        watch = Watch(self, set(keys))
        for key in watch.remaining:
            self._watching.setdefault(key, []).append(watch)
        return watch

    def _forget(self, watch: Watch) -> None:
        for key in watch.keys:
            watchers = self._watching.get(key)
            if watchers is None:
                continue
            with contextlib.suppress(ValueError):
                watchers.remove(watch)
            if not watchers:
                del self._watching[key]

    # --- sending ---------------------------------------------------------------------------------

    def wake(self, waiting: Mapping[int, list[bytes]]) -> None:
        """Tell each waiting worker (pid -> keys) that its keys were stored or given up."""
        for pid, keys in waiting.items():
            for start in range(0, len(keys), _KEYS_PER_DATAGRAM):
                self._send(self._path(pid), _KEYS + b"".join(keys[start:start + _KEYS_PER_DATAGRAM]))

    def broadcast_flush(self) -> None:
        """Every other worker empties its in-process tier (the admin flush reaches one worker)."""
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.endswith(_SUFFIX) and path != self.path:
                self._send(path, _FLUSH)

    def _send(self, path: str, payload: bytes) -> None:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            self._sender.sendto(payload, path)
        except BlockingIOError:
            self.lost += 1
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # that worker is gone; its successor has another pid

    # --- receiving -------------------------------------------------------------------------------

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(_KEYS_PER_DATAGRAM * KEY_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            kind = data[:1]
            if kind == _FLUSH and self.on_flush is not None:
                self.on_flush()
            elif kind == _KEYS:
                for start in range(1, len(data) - KEY_BYTES + 1, KEY_BYTES):
                    for watch in self._watching.get(data[start:start + KEY_BYTES], ()):
                        watch.arrived(data[start:start + KEY_BYTES])

    def _path(self, pid: int) -> str:
        return os.path.join(self.directory, f"{pid}{_SUFFIX}")


class Watch:
    """The keys one request waits for; `wait` returns once each was announced, or at the timeout."""

    def __init__(self, signals: HostSignals, keys: set[bytes]) -> None:
        self.signals = signals
        self.keys = frozenset(keys)
        self.remaining = keys
        self._done = asyncio.Event()
        if not keys:
            self._done.set()

    def arrived(self, key: bytes) -> None:
        self.remaining.discard(key)
        if not self.remaining:
            self._done.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when every key was announced; False at the timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._done.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.signals._forget(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

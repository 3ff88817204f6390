"""Real HTTP servers on 127.0.0.1 for the rerank client tests (no mocks of httpx).

`FaultServer` is a tiny HTTP/1.1 server on asyncio streams: each request goes to an async
handler that writes whatever bytes it likes (wrong Content-Length, a slow drip, a reset), which a
framework server would refuse to do. `serve_app` runs a real ASGI app under uvicorn.
Both run in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Captured:
    """One request as it arrived on the wire."""

    method: str
    path: str
    headers: dict[str, str]          # lower-cased names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


# handler(request, writer) writes the response; returning False closes the connection.
Handler = Callable[[Captured, asyncio.StreamWriter], Awaitable[bool | None]]


def response_bytes(status: int, body: bytes, headers: dict[str, str] | None = None,
                   content_length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
             "Content-Type: application/json",
             f"Content-Length: {len(body) if content_length is None else content_length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def send_json(writer: asyncio.StreamWriter, status: int, payload: Any,
                    headers: dict[str, str] | None = None) -> None:
    writer.write(response_bytes(status, orjson.dumps(payload), headers))
    await writer.drain()


class FaultServer:
    """`async with FaultServer(handler) as server:` then point a client at `server.url`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Captured] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FaultServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                if await self.handler(request, writer) is False:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Captured | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Captured(method, path, headers, body)


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on a free port; yields its base URL.

    The socket listens before uvicorn starts, so a client may connect at once: the kernel queues
    the connection until uvicorn accepts it (no waiting for "started").
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class RecordingUpstream:
    """A counting engine stand-in: a real loopback HTTP/1.1 server, in its own thread, that records
    every complete request exactly as it arrived (after strict parsing) and the raw bytes of each
    connection, and answers each request with `{"seq": n, "method": ..., "path": ...}`.

    It proves what "the engine" received: a smuggled request shows up as a request of its own."""

    def __init__(self) -> None:
        import threading

        self.requests: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = []
        self.raw: list[bytearray] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(512)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="recording-upstream")
        self._thread.start()

    def paths(self) -> list[str]:
        with self._lock:
            return [path for _, path, _, _ in self.requests]

    def close(self) -> None:
        self._stopping = True
        self._sock.close()

    def _accept(self) -> None:
        import threading

        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import httptools

        raw = bytearray()
        with self._lock:
            self.raw.append(raw)
        upstream = self

        class Collector:
            def __init__(self) -> None:
                self.url = b""
                self.headers: list[tuple[bytes, bytes]] = []
                self.body = b""

            def on_message_begin(self) -> None:
                self.url, self.headers, self.body = b"", [], b""

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers.append((name, value))

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                method = parser.get_method().decode()
                path = self.url.decode("latin-1")
                with upstream._lock:
                    upstream.requests.append((method, path, self.headers, self.body))
                    seq = len(upstream.requests)
                payload = orjson.dumps({"seq": seq, "method": method, "path": path, "body_bytes": len(self.body)})
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                             % (len(payload), payload))

        parser = httptools.HttpRequestParser(Collector())
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                raw += data
                parser.feed_data(data)
        except (OSError, httptools.HttpParserError):
            pass
        finally:
            conn.close()

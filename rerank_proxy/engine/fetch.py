"""A read the proxy makes on its own behalf (a search's candidates, a probe); answered whole.

Only reads come here, so any failure may be asked again: a dead pooled connection on a new
connection to the same engine, anything else on the next engine. The answer is bounded by
MAX_CANDIDATE_BYTES: past it the read is abandoned (`AnswerTooLarge`), never held.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

from rerank_proxy.engine.headers import request_head, with_length
from rerank_proxy.engine.transport import EngineAnswer
from rerank_proxy.errors import AnswerTooLarge, ProxyError

if TYPE_CHECKING:
    from rerank_proxy.engine.connection import EngineConnection
    from rerank_proxy.engine.pool import EnginePool

class Attempt(enum.Enum):
    """How one try on one engine connection ended; the value is what an error answer says."""

    OK = "answered"
    CLOSED = "the engine closed the connection"
    TOO_LARGE = "the answer is larger than MAX_CANDIDATE_BYTES"
    MALFORMED = "the engine sent a malformed response"
    TIMED_OUT = "the engine did not answer within UPSTREAM_TIMEOUT_S"
    UNREACHABLE = "connection refused or timed out"


class FetchExchange:
    def __init__(self, pool: EnginePool, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes | None) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.method = method
        self.path = path
        self.head_only = method == b"HEAD"
        self.body = body or b""
        self.headers = with_length(headers, method, self.body)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.answered = False
        self.last_read = 0.0
        self.keep_alive = True
        self.outcome: asyncio.Future[Attempt] = self.loop.create_future()
        self.conn: EngineConnection | None = None

    async def run(self) -> EngineAnswer:
        failure = Attempt.UNREACHABLE
        for target in self.pool.order():
            conn = self.pool.take_idle(target) if target.healthy else None
            pooled = conn is not None
            while True:
                if conn is None:
                    conn = await self.pool.connect(target)
                    if conn is None:
                        failure = Attempt.UNREACHABLE
                        break
                result = await self._ask(conn)
                if result is Attempt.OK:
                    return EngineAnswer(self.status, self.response_headers, b"".join(self.chunks))
                if result is Attempt.TOO_LARGE:  # asking another engine would give the same answer
                    raise AnswerTooLarge(self.pool.settings.max_candidate_bytes)
                failure = result
                if pooled and result is Attempt.CLOSED and not self.answered:
                    conn, pooled = None, False  # a stale pooled connection: once more on a new one
                    continue
                break
        raise ProxyError(502, "proxy_upstream_unavailable_exception", f"no engine could be reached ({failure.value})")

    async def _ask(self, conn: EngineConnection) -> Attempt:
        self._reset()
        self.conn = conn
        conn.exchange = self
        head = request_head(conn.target, self.method, self.path, self.headers, None)
        head.append(self.body)
        self.last_read = self.loop.time()
        conn.send(b"".join(head))
        try:
            return await asyncio.wait_for(self.outcome, self.pool.settings.upstream_timeout_s)
        except TimeoutError:
            conn.close()
            return Attempt.TIMED_OUT
        except asyncio.CancelledError:
            conn.close()
            raise

    # --- called by EngineConnection --------------------------------------------------------------

    def response_head(self, status: int, upstream_keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = upstream_keep_alive

    def response_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.pool.settings.max_candidate_bytes:
            self.chunks.clear()
            self._give_up(Attempt.TOO_LARGE)
            return
        self.chunks.append(chunk)

    def flush(self) -> None:
        pass

    def response_done(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            if self.keep_alive:
                self.pool.release(conn)
            else:
                conn.close()
        self._settle(Attempt.OK)

    def upstream_lost(self) -> None:
        self.conn = None
        self._settle(Attempt.CLOSED)

    def upstream_broken(self, reason: str) -> None:
        self._give_up(Attempt.MALFORMED)

    def _give_up(self, result: Attempt) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._settle(result)

    def _settle(self, result: Attempt) -> None:
        if not self.outcome.done():
            self.outcome.set_result(result)

    def pause_source(self) -> None:
        pass

    def resume_source(self) -> None:
        pass

"""A read the proxy makes on its own behalf (a search's candidates, a probe); answered whole.

Only reads come here, and nothing reaches the client before the answer is whole, so any failure may
be asked again (`Resend.ANY_FAILURE` in `retry_policy.py`): a dead pooled connection on a new
connection to the same engine, anything else on the next engine. The answer is bounded by
MAX_CANDIDATE_BYTES: past it the read is abandoned (`AnswerTooLarge`), never held.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rerank_proxy.engine.headers import request_head, with_length
from rerank_proxy.engine.retry_policy import Failure, Next, Resend, give_up, next_step
from rerank_proxy.engine.transport import EngineAnswer

if TYPE_CHECKING:
    from rerank_proxy.engine.connection import EngineConnection
    from rerank_proxy.engine.pool import EnginePool
    from rerank_proxy.engine.response_core import ResponseHead


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
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.answered = False
        self.last_read = 0.0
        self.keep_alive = True
        # None: answered; else how the try failed.
        self.outcome: asyncio.Future[Failure | None] = self.loop.create_future()
        self.conn: EngineConnection | None = None

    async def run(self) -> EngineAnswer:
        last = Failure.UNREACHABLE
        for target in self.pool.order():
            conn = self.pool.take_idle(target) if target.healthy else None
            pooled = conn is not None
            step = Next.NEW_CONNECTION
            while step is Next.NEW_CONNECTION:
                if conn is None:
                    conn = await self.pool.connect(target)
                failure = Failure.UNREACHABLE if conn is None else await self._ask(conn)
                if failure is None:
                    return EngineAnswer(self.status, self.response_headers, b"".join(self.chunks), target.name)
                step = next_step(failure, Resend.ANY_FAILURE, pooled=pooled, answered=self.answered)
                if step is Next.GIVE_UP:
                    raise give_up(failure, every_engine=False, answer_limit=self.pool.settings.max_candidate_bytes)
                conn, pooled, last = None, False, failure
        raise give_up(last, every_engine=True)

    async def _ask(self, conn: EngineConnection) -> Failure | None:
        self._reset()
        self.conn = conn
        conn.attach(self, head_only=self.head_only, max_body=self.pool.settings.max_candidate_bytes)
        head = request_head(conn.target, self.method, self.path, self.headers, None)
        head.append(self.body)
        self.last_read = self.loop.time()
        conn.send(b"".join(head))
        try:
            return await asyncio.wait_for(self.outcome, self.pool.settings.upstream_timeout_s)
        except TimeoutError:
            conn.close()
            return Failure.TIMED_OUT
        except asyncio.CancelledError:
            conn.close()
            raise

    # --- called by EngineConnection --------------------------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        self.status = head.status
        self.response_headers = head.headers
        self.keep_alive = head.keep_alive

    def response_body(self, chunk: bytes) -> None:
        self.chunks.append(chunk)  # the core refuses a body past MAX_CANDIDATE_BYTES before it gets here

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
        self._settle(None)

    def upstream_lost(self) -> None:
        self.conn = None
        self._settle(Failure.CLOSED)

    def upstream_broken(self, failure: Failure) -> None:
        self._give_up(failure)

    def _give_up(self, result: Failure) -> None:
        self.chunks.clear()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._settle(result)

    def _settle(self, result: Failure | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(result)

    def pause_source(self) -> None:
        pass

    def resume_source(self) -> None:
        pass

"""Who may come in, and how many at once: the proxy's API keys and MAX_CONCURRENT_REQUESTS.

Admission is the edge's, not the application's: a relayed request is admitted before any engine
connection is taken, a search when its body is complete, an own endpoint when it starts. Each
admitted request is counted until its answer is written, so shutdown can wait for the count to
reach zero and `rerank_proxy_in_flight_requests` reads the same number the limit is checked on.
"""

from __future__ import annotations

import asyncio
import hmac

KEY_HEADER = b"x-proxy-api-key"
BUSY = (429, "rejected_execution_exception", "too many concurrent requests at the proxy; retry later")
BAD_KEY = (401, "security_exception", "missing or invalid X-Proxy-Api-Key")


class Admission:
    def __init__(self, max_concurrent: int, api_keys: tuple[str, ...]) -> None:
        self.max_concurrent = max_concurrent
        self._keys = tuple(key.encode() for key in api_keys)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def full(self) -> bool:
        return self._in_flight >= self.max_concurrent

    def key_refusal(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str, str] | None:
        """None when no keys are set or the request carries one of them, else the 401 to answer."""
        if not self._keys:
            return None
        sent = next((value for name, value in headers if name.lower() == KEY_HEADER), b"")
        ok = False
        for key in self._keys:  # compare with every key: the time taken tells nothing
            ok |= hmac.compare_digest(sent, key)
        return None if ok else BAD_KEY

    def enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def until_idle(self, timeout_s: float) -> bool:
        """Wait for every admitted request to be answered; False if `timeout_s` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

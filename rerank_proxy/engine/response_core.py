"""How an engine's answers are framed, as a sans-I/O state machine: bytes in, events out.

`ResponseCore` reads one connection's answers, one exchange at a time: `expect` says a request went
out (and whether it was a HEAD, and the largest body the reader will take), `feed` takes whatever
bytes came and returns what they meant, `eof` says the connection closed. No socket, no loop, no
clock: every framing case is an in-memory test, and the asyncio protocol (`connection.py`) only
moves bytes and hands events on.

The byte-level parsing is llhttp's (httptools), the parser the edge uses too; on top of it the core
decides what llhttp cannot know: interim (1xx) answers are dropped, a HEAD answer ends at its head,
a body without a length ends with the connection, bytes nobody asked for put the connection out of
step, and a body past the reader's limit is refused as soon as it passes it, never held.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import httptools

_NO_BODY_STATUS = frozenset({204, 304})


class Framing(enum.Enum):
    """How the body of an answer ends."""

    NONE = "no body"                  # the answer to a HEAD, a 204, a 304
    LENGTH = "Content-Length"
    CHUNKED = "Transfer-Encoding"
    UNTIL_CLOSE = "the connection closes"


class Refusal(enum.Enum):
    """Why the core stopped reading a connection; after one, the connection is of no further use."""

    MALFORMED = "the engine sent a malformed response"
    TOO_LARGE = "the body is larger than the reader's limit"
    CLOSED = "the engine closed the connection before the answer ended"
    UNSOLICITED = "the engine sent bytes no request was waiting for"


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool          # the engine will keep the connection open after this answer
    framing: Framing


@dataclass(slots=True)
class BodyData:
    data: bytes


@dataclass(slots=True)
class ResponseEnd:
    reusable: bool            # kept alive, and nothing came after the answer: the pool may keep it


@dataclass(slots=True)
class Refused:
    refusal: Refusal


Event = ResponseHead | BodyData | ResponseEnd | Refused


class Phase(enum.Enum):
    IDLE = "no request waiting"
    HEAD = "waiting for the head"
    BODY = "reading the body"
    BROKEN = "out of use"


# Module names for the phases: the core compares them on every callback, and a module name is read
# several times faster than an Enum class attribute.
_IDLE, _HEAD, _BODY, _BROKEN = Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.BROKEN
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE


def framing_of(status: int, headers: list[tuple[bytes, bytes]], *, head_only: bool) -> Framing:
    """Any Transfer-Encoding frames the body as chunks (a Content-Length beside it is not trusted)."""
    if head_only or status in _NO_BODY_STATUS:
        return _NONE
    framing = _UNTIL_CLOSE
    for name, _ in headers:
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            return _CHUNKED
        if len(name) == 14 and name.lower() == b"content-length":
            framing = _LENGTH
    return framing


class _Stop(Exception):
    """Raised from a parser callback: nothing more of this feed is parsed."""


class ResponseCore:
    """One engine connection's answers, read in order. The `on_*` methods are llhttp's callbacks."""

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._max_body: int | None = None
        self._body_size = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._framing = Framing.NONE
        self._keep_alive = False
        self._events: list[Event] = []
        self._end: ResponseEnd | None = None   # the end given in the current feed
        self._ended_head_only = False

    def expect(self, *, head_only: bool, max_body: int | None = None) -> None:
        """A request went out: its answer is next. `max_body` bounds the body (None: unbounded)."""
        if self.phase is not _IDLE:
            raise RuntimeError(f"an answer is expected only on an idle connection, not one {self.phase.value}")
        self.phase = _HEAD
        self._head_only = head_only
        self._max_body = max_body
        self._body_size = 0
        self._reason = b""
        self._headers = []

    def feed(self, data: bytes) -> list[Event]:
        """What `data` meant, in order; a `Refused` is always last."""
        if self.phase is _BROKEN:
            return []
        if self.phase is _IDLE:
            self.phase = _BROKEN
            return [Refused(Refusal.UNSOLICITED)]
        events = self._events = []
        self._end = None
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not isinstance(exc.__context__, _Stop):
                self._broken_bytes()
        if self._ended_head_only:  # llhttp still waits for the HEAD answer's body: a fresh parser
            self._ended_head_only = False
            self._parser = httptools.HttpResponseParser(self)
        self._events = []
        return events

    def eof(self) -> list[Event]:
        """The engine closed the connection: the end of a body that runs until then, else a refusal."""
        phase, self.phase = self.phase, _BROKEN
        if phase is _BODY and self._framing is _UNTIL_CLOSE:
            return [ResponseEnd(reusable=False)]
        if phase in (_HEAD, _BODY):
            return [Refused(Refusal.CLOSED)]
        return []

    # --- llhttp callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase is not _HEAD:  # a message after the answer ended: nobody asked for it
            self._out_of_step()

    def on_status(self, status: bytes) -> None:
        if self.phase is _HEAD:
            self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase is _HEAD:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.phase is not _HEAD:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._reason = b""
            self._headers = []
            return
        self._framing = framing_of(status, self._headers, head_only=self._head_only)
        self._keep_alive = self._parser.should_keep_alive()
        self._events.append(ResponseHead(status, self._reason, self._headers, self._keep_alive, self._framing))
        self.phase = _BODY
        if self._head_only:  # its body never comes, whatever the head says
            self._ended_head_only = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.phase is not _BODY:  # bytes after the end of an answer (a HEAD's "body")
            self._out_of_step()
        if self._max_body is not None:
            self._body_size += len(body)
            if self._body_size > self._max_body:
                self._refuse(Refusal.TOO_LARGE)
        self._events.append(BodyData(body))

    def on_message_complete(self) -> None:
        if self.phase is _BODY:
            self._finish()
        # else: an interim answer's end, or llhttp ending the HEAD answer the core ended already

    # --- outcomes --------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._end = ResponseEnd(reusable=self._keep_alive)
        self._events.append(self._end)
        self.phase = _IDLE

    def _out_of_step(self) -> None:
        """Bytes came after the answer ended: the answer stands, the connection is not kept."""
        if self._end is not None:
            self._end.reusable = False
        self.phase = _BROKEN
        raise _Stop

    def _refuse(self, refusal: Refusal) -> None:
        self._events.append(Refused(refusal))
        self.phase = _BROKEN
        raise _Stop

    def _broken_bytes(self) -> None:
        """llhttp gave up on the bytes: mid-answer that is a malformed answer; after it, out of step."""
        if self.phase is _IDLE and self._end is not None:
            self._end.reusable = False
        elif self.phase is not _BROKEN:
            self._events.append(Refused(Refusal.MALFORMED))
        self.phase = _BROKEN

"""Sans-I/O HTTP/1.1 for the client side of a connection: bytes in, request events out, and the
order in which answers go back.

Why apart from the asyncio protocol (`connection.py`): every rule a client's bytes can break
(framing, smuggling, sizes, pipelining, early answers, upgrades, slow heads and bodies) is decided
here from bytes and `now` values alone, so each one can be checked in memory, case by case; the
protocol only moves bytes, pauses reading and arms the linger timer.

llhttp (through httptools) does the parsing, and its strict defaults refuse the smuggling set:
Content-Length next to Transfer-Encoding, repeated or listed lengths, bad chunk sizes, obs-fold,
bare CR or LF, spaces before a colon, NUL bytes. This core adds what a parser alone does not: a
bound on a head while it arrives (httptools would buffer a 100 MB header whole), trailers that are
never headers, the body an upgrade request declared, answers in the order requests came, and what
becomes of the connection after each answer.

Use: `receive_data(data, now)`, then `next_event()` until it returns None. A `RequestHead` must be
`accept()`ed (with the exchange that answers it) before the next event; when an answer is complete,
`response_done()` says what the connection does next. The exchanges are opaque to the core (`T`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Generic, TypeAlias, TypeVar

import httptools

T = TypeVar("T")

# Raw head bytes may exceed the measured size (url + name + value + 4 per header) by the request
# line's method and version, spaces and the final CRLF; past this slack the head is surely too large.
HEAD_SLACK = 1024
_TOO_LONG = "too_long_http_header_exception"
_TIMEOUT = "request_timeout_exception"


class Framing(Enum):
    """How a request's body is delimited, as its (accepted) headers declare it."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"


class Phase(Enum):
    """What the parser waits for: the adapter's keep-alive and client timeouts depend on it."""

    IDLE = "idle"      # between messages
    HEAD = "head"      # a message began, its head has not ended
    BODY = "body"      # the head ended, the body has not


class Start(Enum):
    """Whether an accepted exchange answers now or waits for the answers before it."""

    NOW = "now"
    QUEUED = "queued"  # reading pauses: one client's pipeline is not buffered without end


class Fate(Enum):
    """What a refusal does to the request it interrupts."""

    ANSWER = "answer"            # no exchange owns it: answer the error in turn, then close
    BODY_CUT = "body_cut"        # a routed request's body broke off: its exchange answers the error
    CLOSE_ONLY = "close_only"    # that request was answered early already: only the close is left


class After(Enum):
    """What the connection does once an answer is complete."""

    NOT_ACTIVE = "not_active"      # not the answer whose turn it is: nothing changes
    DRAIN = "drain"                # answered before its body ended: read and drop the rest, keep the connection
    NEXT = "next"                  # start the next pipelined exchange (`active`)
    IDLE = "idle"                  # keep the connection and wait for the next request
    CLOSE = "close"                # close once what is written has gone
    LINGER_CLOSE = "linger_close"  # the client may still send: FIN, read and drop, close a little later


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The client's time limits (CLIENT_HEADER_TIMEOUT_S, CLIENT_BODY_TIMEOUT_S, CLIENT_BODY_MIN_RATE)."""

    head_s: float
    body_s: float
    body_min_rate: float  # bytes a second, averaged over the body so far


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]   # past max_header_bytes the rest are dropped (header_bytes tells)
    http_version: str
    keep_alive: bool                     # False for upgrades: nothing after one is read
    framing: Framing
    header_bytes: int                    # target + names + values + 4 per header
    upgrade: bool


@dataclass(frozen=True, slots=True)
class BodyData(Generic[T]):
    exchange: T
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage(Generic[T]):
    exchange: T
    drained: bool  # it was answered early and its body is now read: call `response_done` again


@dataclass(frozen=True, slots=True)
class Refusal(Generic[T]):
    """Bytes that cannot be parsed safely: an engine-style error, and after it the (linger) close."""

    status: int
    error_type: str
    reason: str
    fate: Fate
    exchange: T | None  # the interrupted request's exchange (BODY_CUT, CLOSE_ONLY)


Event: TypeAlias = RequestHead | BodyData[T] | EndOfMessage[T] | Refusal[T]


class _End(Enum):
    MESSAGE = "message"
    LAST = "last"  # nothing after this message is read (an upgrade request)


@dataclass(frozen=True, slots=True)
class _Refused:
    status: int
    error_type: str
    reason: str


_Item: TypeAlias = RequestHead | bytes | _End | _Refused


class _Turn(Generic[T]):
    """One exchange in the answer queue, with what the core knows of its request body."""

    __slots__ = ("body_done", "exchange")

    def __init__(self, exchange: T, body_done: bool) -> None:
        self.exchange = exchange
        self.body_done = body_done


class _Stop(Exception):
    """Raised from a parser callback when nothing more may be parsed on this connection."""


class _Refuse(Exception):
    """Raised from a parser callback to refuse the request with an engine-style error."""


class H1Core(Generic[T]):
    """One client connection's HTTP/1.1 state: a parser side fed by `receive_data`, and an answer
    side (active exchange, pipelined ones, the one whose body is being read) moved by the events
    handed out and by `response_done`."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self._callbacks = SimpleNamespace(
            on_message_begin=self._on_message_begin, on_url=self._on_url, on_header=self._on_header,
            on_headers_complete=self._on_headers_complete, on_body=self._on_body,
            on_message_complete=self._on_message_complete)
        self._parser = httptools.HttpRequestParser(self._callbacks)
        self._queue: deque[_Item] = deque()
        # parser side
        self._now = 0.0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._phase = Phase.IDLE
        self._head_raw = 0                 # raw bytes received for the head being parsed
        self._messages_done = 0
        self._head_started = 0.0
        self._body_started = 0.0
        self._body_last = 0.0
        self._body_bytes = 0
        self._upgrade_framing: bytes | None = None   # an upgrade request's framing header, body unread
        self._priming = False              # a fresh parser reads the framing of a body already handed out
        self._last_message = False         # nothing after the message being parsed is read
        self._parse_stopped = False
        # answer side
        self._stopped = False              # nothing more is handed out: only answers in turn are left
        self._unaccepted: Framing | None = None   # a head handed out, its exchange not accepted yet
        self._active: _Turn[T] | None = None
        self._pending: deque[_Turn[T]] = deque()
        self._parsing: _Turn[T] | None = None
        self._draining: _Turn[T] | None = None

    # --- state the adapter reads ---------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def active(self) -> T | None:
        return None if self._active is None else self._active.exchange

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return self._active is None and not self._pending and self._parsing is None

    # --- bytes in --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Parse `data` (arrived at `now`) into events; after a refusal or a stop, bytes are dropped."""
        if self._parse_stopped:
            return
        self._now = now
        done_before = self._messages_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0]:] if upgrade.args else b"")
            return
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return
        if self._phase is Phase.HEAD:
            if self._messages_done == done_before:  # else part of this data was the previous message
                self._head_raw += len(data)
            if self._head_raw > self.max_header_bytes + HEAD_SLACK:
                self._refuse_parsing(431, _TOO_LONG, f"request headers are larger than {self.max_header_bytes} bytes")
        elif self._phase is Phase.BODY:
            self._body_last = now

    def refuse(self, status: int, error_type: str, reason: str) -> None:
        """Refuse the connection from outside the bytes (a timeout): the next event is the Refusal."""
        if not self._parse_stopped:
            self._refuse_parsing(status, error_type, reason)

    def check_timeouts(self, now: float, timeouts: Timeouts, *, paused: bool) -> None:
        """A head or a body arriving too slowly is refused (408). While the adapter is not reading
        (`paused`), the client is not the slow one: its clocks restart."""
        if self._stopped or self._parse_stopped:
            return
        if paused:
            self._head_started = self._body_last = now
            return
        if self._phase is Phase.HEAD:
            if now - self._head_started > timeouts.head_s:
                self.refuse(408, _TIMEOUT, "the request head did not arrive within CLIENT_HEADER_TIMEOUT_S")
            return
        if self._phase is not Phase.BODY:
            return
        elapsed = now - self._body_started
        if now - self._body_last > timeouts.body_s:
            self.refuse(408, _TIMEOUT, "the request body stalled for longer than CLIENT_BODY_TIMEOUT_S")
        elif elapsed > timeouts.body_s and self._body_bytes < timeouts.body_min_rate * elapsed:
            self.refuse(408, _TIMEOUT, "the request body arrived slower than CLIENT_BODY_MIN_RATE bytes per second")

    def stop(self) -> None:
        """Nothing more is parsed nor handed out (its framing cannot be trusted, or the connection
        closes); exchanges already accepted still answer in turn."""
        self._stopped = self._parse_stopped = True
        self._queue.clear()
        self._phase = Phase.IDLE

    # --- events out ------------------------------------------------------------------------------

    def next_event(self) -> Event[T] | None:
        """The next event, or None until more bytes come."""
        if self._unaccepted is not None:
            raise RuntimeError("accept() the exchange of the last RequestHead first")
        if not self._queue:
            return None
        item = self._queue.popleft()
        if type(item) is bytes:
            assert self._parsing is not None  # a body follows an accepted head
            return BodyData(self._parsing.exchange, item)
        if isinstance(item, RequestHead):
            self._unaccepted = item.framing
            return item
        if isinstance(item, _End):
            return self._message_ended(item is _End.LAST)
        assert isinstance(item, _Refused)
        return self._refused(item)

    def _message_ended(self, last: bool) -> EndOfMessage[T]:
        turn, self._parsing = self._parsing, None
        assert turn is not None  # an end follows an accepted head
        turn.body_done = True
        if last:
            self._stopped = True
        drained = turn is self._draining
        if drained:
            self._draining = None
        return EndOfMessage(turn.exchange, drained)

    def _refused(self, refused: _Refused) -> Refusal[T]:
        self._stopped = True
        broken, self._parsing = self._parsing, None
        fate = Fate.ANSWER
        if broken is not None and broken is self._draining:
            self._draining = None
            self._active = None
            fate = Fate.CLOSE_ONLY
        elif broken is not None:
            fate = Fate.BODY_CUT
        return Refusal(refused.status, refused.error_type, refused.reason, fate,
                       None if broken is None else broken.exchange)

    # --- the answer queue ----------------------------------------------------------------------

    def accept(self, exchange: T) -> Start:
        """`exchange` answers the RequestHead just handed out; its body events name it."""
        if self._unaccepted is None:
            raise RuntimeError("no RequestHead waits for an exchange")
        turn = _Turn(exchange, body_done=self._unaccepted is Framing.NONE)
        self._unaccepted = None
        if not self._stopped:  # else its body is never read
            self._parsing = turn
        return self._enqueue(turn)

    def queue_answer(self, exchange: T) -> Start:
        """An answer no head was routed to (a refusal's own), in its turn after the others."""
        return self._enqueue(_Turn(exchange, body_done=True))

    def _enqueue(self, turn: _Turn[T]) -> Start:
        if self._active is None:
            self._active = turn
            return Start.NOW
        self._pending.append(turn)
        return Start.QUEUED

    def hand_over(self, old: T, new: T) -> bool:
        """`new` answers in `old`'s place (a bypassed search becomes a relay); True if it starts now."""
        if self._active is None or self._active.exchange is not old:
            return False
        self._active.exchange = new
        return True

    def response_done(self, exchange: T, *, keep_alive: bool, stopping: bool) -> After:
        """`exchange`'s answer is complete (`keep_alive` as it told the client; `stopping` while the
        server shuts down): what the connection does next."""
        turn = self._active
        if turn is None or turn.exchange is not exchange:
            return After.NOT_ACTIVE
        if not turn.body_done and keep_alive and not stopping and turn is self._parsing and not self._stopped:
            # Answered before its body ended (the engine answers some requests from the head): the
            # rest is read and dropped, as the engine does, and the connection carries on.
            self._draining = turn
            return After.DRAIN
        self._active = None
        if not turn.body_done:
            # The client may still be sending: a close with its bytes unread would reset the
            # connection and could destroy the answer before the client reads it.
            return self._closing(After.LINGER_CLOSE)
        if not keep_alive or stopping:
            return self._closing(After.LINGER_CLOSE if self._stopped and not stopping else After.CLOSE)
        if self._pending:  # requests parsed before a refusal are still answered, in their turn
            self._active = self._pending.popleft()
            return After.NEXT
        if self._stopped and not stopping:
            return self._closing(After.LINGER_CLOSE)
        return After.IDLE

    def _closing(self, after: After) -> After:
        self.stop()  # a request after the close would be relayed and never answered
        return after

    def abandon(self) -> list[T]:
        """The client is gone: every exchange it still has, once each; none of the queued ones starts."""
        seen: list[T] = []
        for turn in (self._active, self._parsing, *self._pending):
            if turn is not None and all(turn.exchange is not other for other in seen):
                seen.append(turn.exchange)
        self._pending.clear()
        self.stop()
        return seen

    # --- parser callbacks ----------------------------------------------------------------------

    def _on_message_begin(self) -> None:
        if self._priming:
            return
        if self._parse_stopped:  # bytes after the last trusted message: never parsed, never forwarded
            raise _Stop
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._phase = Phase.HEAD
        self._head_raw = 0
        self._head_started = self._now

    def _on_url(self, url: bytes) -> None:
        if self._priming:
            return
        self._url += url
        self._header_bytes += len(url)

    def _on_header(self, name: bytes, value: bytes) -> None:
        if self._priming:
            return
        limit = self.max_header_bytes
        self._header_bytes += len(name) + len(value) + 4
        if self._phase is not Phase.HEAD:
            # A chunked body's trailer: never trusted as a header (it would be the logged request
            # id, or anything else), and bounded like a head.
            if self._header_bytes > 2 * limit:
                raise _Refuse(431, _TOO_LONG, f"request trailers are larger than {limit} bytes")
            return
        if self._header_bytes <= limit:
            self._headers.append((name, value))

    def _on_headers_complete(self) -> None:
        if self._priming:
            self._priming = False
            return
        parser = self._parser
        upgrade = parser.should_upgrade()
        if upgrade:
            # Engines speak no upgraded protocol, so the upgrade is ignored (RFC 9110 7.8 allows it):
            # the request is answered as plain HTTP, then the connection closes; what follows the
            # request (the other protocol's bytes) is never parsed nor forwarded.
            self._upgrade_framing = _declared_framing(self._headers)
            self._last_message = True
        self._phase = Phase.BODY
        self._body_started = self._body_last = self._now
        self._body_bytes = 0
        self._queue.append(RequestHead(parser.get_method(), self._url, self._headers, parser.get_http_version(),
                                       parser.should_keep_alive() and not upgrade, framing_of(self._headers),
                                       self._header_bytes, upgrade))

    def _on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._queue.append(body)

    def _on_message_complete(self) -> None:
        if self._upgrade_framing is not None:  # llhttp's end of an upgrade head: the body is still to come
            return
        self._messages_done += 1
        self._phase = Phase.IDLE
        if self._last_message:
            self._parse_stopped = True
            self._queue.append(_End.LAST)
        else:
            self._queue.append(_End.MESSAGE)

    # --- parser outcomes -------------------------------------------------------------------------

    def _upgraded(self, rest: bytes) -> None:
        """llhttp ends an upgrade request at its head. Its declared body is read as any other, by a
        fresh parser primed with that framing alone (the primer's own callbacks are ignored)."""
        primer, self._upgrade_framing = self._upgrade_framing, None
        if primer is None:
            self._parse_stopped = True
            return
        self._parser = httptools.HttpRequestParser(self._callbacks)
        self._priming = True
        self.receive_data(b"PUT / HTTP/1.1\r\n" + primer + b"\r\n" + rest, self._now)

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, _Stop) or self._parse_stopped:
            return
        if isinstance(cause, _Refuse):
            self._refuse_parsing(*cause.args)
        else:
            self._refuse_parsing(400, "illegal_argument_exception",
                                 f"invalid HTTP request: {exc or type(exc).__name__}")

    def _refuse_parsing(self, status: int, error_type: str, reason: str) -> None:
        self._parse_stopped = True
        self._phase = Phase.IDLE
        self._queue.append(_Refused(status, error_type, reason))


def framing_of(headers: list[tuple[bytes, bytes]]) -> Framing:
    """The body framing accepted headers declare (the parser refused any ambiguous mix)."""
    framing = Framing.NONE
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return Framing.CHUNKED
        if lowered == b"content-length" and value.strip().lstrip(b"0"):
            framing = Framing.LENGTH
    return framing


def _declared_framing(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The framing header of a request that declares a body (as the parser accepted it), else None."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return b"Transfer-Encoding: " + value + b"\r\n"
        if lowered == b"content-length" and value.strip().lstrip(b"0"):
            return b"Content-Length: " + value.strip() + b"\r\n"
    return None

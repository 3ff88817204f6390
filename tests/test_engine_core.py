"""The engine side in memory: how answers are framed (`ResponseCore` fed bytes), its asyncio adapter
fed by a fake transport, and the observers a relay tells. No socket, no engine, no loop; the whole
file runs in milliseconds."""

from __future__ import annotations

import asyncio

import pytest

from rerank_proxy.config import load_settings
from rerank_proxy.edge.observers import Observers, RelayObserver, RelayRecord
from rerank_proxy.edge.relay import RelayExchange
from rerank_proxy.edge.relay_observers import CopyBudget, WriteWarming
from rerank_proxy.engine.connection import EngineConnection
from rerank_proxy.engine.response_core import (
    BodyData,
    Event,
    Framing,
    Phase,
    Refusal,
    Refused,
    ResponseCore,
    ResponseEnd,
    ResponseHead,
)
from rerank_proxy.engine.retry_policy import Failure

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def phase_of(core: ResponseCore) -> Phase:
    """The core's phase, read afresh (an attribute narrowed by one assert stays narrowed for mypy
    after a call changes it)."""
    return core.phase


def answer(head_only: bool = False, max_body: int | None = None) -> ResponseCore:
    core = ResponseCore()
    core.expect(head_only=head_only, max_body=max_body)
    return core


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyData))


def head_of(events: list[Event]) -> ResponseHead:
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert len(heads) == 1, events
    return heads[0]


def fed_bytewise(core: ResponseCore, data: bytes) -> list[Event]:
    return [event for i in range(len(data)) for event in core.feed(data[i:i + 1])]


# --- framing ------------------------------------------------------------------------------------


def test_a_content_length_body_ends_at_its_length_and_keeps_the_connection():
    core = answer()
    events = core.feed(OK_HEAD + b"Content-Length: 11\r\n\r\n{\"ok\":")
    head = head_of(events)
    assert (head.status, head.reason, head.framing, head.keep_alive) == (200, b"OK", Framing.LENGTH, True)
    assert head.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"11")]
    assert not any(isinstance(e, ResponseEnd) for e in events)
    assert phase_of(core) is Phase.BODY
    rest = core.feed(b"true}")
    assert body_of(events + rest) == b'{"ok":true}'
    assert rest[-1] == ResponseEnd(reusable=True)
    assert phase_of(core) is Phase.IDLE


def test_a_chunked_body_is_given_decoded_and_ends_at_the_last_chunk():
    core = answer()
    events = core.feed(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")
    assert head_of(events).framing is Framing.CHUNKED
    assert body_of(events) == b'{"a":1}'
    assert events[-1] == ResponseEnd(reusable=True)


def test_any_transfer_encoding_frames_as_chunks_even_beside_a_length():
    assert head_of(answer().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")).framing is Framing.CHUNKED


def test_a_body_without_a_length_ends_when_the_engine_closes():
    core = answer()
    events = core.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome ") + core.feed(b"bytes")
    head = head_of(events)
    assert head.framing is Framing.UNTIL_CLOSE
    assert head.keep_alive is False
    assert body_of(events) == b"some bytes"
    assert phase_of(core) is Phase.BODY
    assert core.eof() == [ResponseEnd(reusable=False)]
    assert phase_of(core) is Phase.BROKEN


def test_an_http10_answer_is_not_kept_alive():
    events = answer().feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert head_of(events).keep_alive is False
    assert events[-1] == ResponseEnd(reusable=False)


def test_connection_close_with_a_length_ends_at_the_length_but_is_not_reused():
    events = answer().feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert body_of(events) == b"ok"
    assert events[-1] == ResponseEnd(reusable=False)


def test_interim_answers_are_dropped_and_the_final_one_is_read():
    core = answer()
    events = core.feed(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                       b"HTTP/1.1 102 Processing\r\n\r\n"
                       b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    head = head_of(events)
    assert (head.status, head.reason, head.headers) == (201, b"Created", [(b"Content-Length", b"2")])
    assert body_of(events) == b"ok"
    assert events[-1] == ResponseEnd(reusable=True)


def test_an_interim_answer_alone_waits_for_the_final_one():
    core = answer()
    assert core.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    assert core.phase is Phase.HEAD
    assert head_of(core.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).status == 200


def test_a_head_answer_ends_at_its_head_whatever_length_it_announces():
    core = answer(head_only=True)
    events = core.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert head_of(events).framing is Framing.NONE
    assert events[-1] == ResponseEnd(reusable=True)
    assert (b"Content-Length", b"1234") in head_of(events).headers
    # the next exchange on the connection parses afresh: no body of 1234 bytes is waited for
    core.expect(head_only=False)
    events = core.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert body_of(events) == b"ok"
    assert events[-1] == ResponseEnd(reusable=True)


def test_a_head_answer_without_a_length_ends_at_its_head_but_is_not_reused():
    # llhttp reads a length-less head as a body until the close, so it says "not kept alive"
    events = answer(head_only=True).feed(b"HTTP/1.1 200 OK\r\n\r\n")
    assert head_of(events).framing is Framing.NONE
    assert events[-1] == ResponseEnd(reusable=False)


def test_a_head_answer_with_a_body_after_it_is_not_reused():
    events = answer(head_only=True).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert body_of(events) == b""
    assert events[-1] == ResponseEnd(reusable=False)


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_whatever_length_they_announce(status: int):
    core = answer()
    events = core.feed(b"HTTP/1.1 %d Whatever\r\nContent-Length: 5\r\n\r\n" % status)
    assert head_of(events).framing is Framing.NONE
    assert events[-1] == ResponseEnd(reusable=True)
    assert core.phase is Phase.IDLE


def test_answers_in_turn_on_one_kept_alive_connection():
    core = answer()
    for n in range(3):
        events = core.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
        assert body_of(events) == b"%d" % n
        assert events[-1] == ResponseEnd(reusable=True)
        core.expect(head_only=False)


def test_bytes_split_anywhere_give_the_same_answer():
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Fine Thanks\r\nX-A: b\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n")
    events = fed_bytewise(answer(), data)
    head = head_of(events)
    assert (head.status, head.reason, head.headers[0]) == (200, b"Fine Thanks", (b"X-A", b"b"))
    assert body_of(events) == b"hello!"
    assert events[-1] == ResponseEnd(reusable=True)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_answers_are_refused(garbage: bytes):
    core = answer()
    events = core.feed(garbage)
    assert events[-1] == Refused(Refusal.MALFORMED)
    assert core.phase is Phase.BROKEN
    assert core.feed(b"more") == []
    assert core.eof() == []


def test_what_came_before_a_malformed_byte_is_still_given():
    events = answer().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")
    assert head_of(events).status == 200
    assert body_of(events) == b"ok"
    assert events[-1] == Refused(Refusal.MALFORMED)


def test_an_upgrade_answer_is_malformed_engines_speak_no_other_protocol():
    events = answer().feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert events == [Refused(Refusal.MALFORMED)]


def test_a_body_past_the_limit_is_refused_as_it_passes_it():
    core = answer(max_body=10)
    events = core.feed(OK_HEAD + b"Content-Length: 20\r\n\r\n0123456789")
    assert body_of(events) == b"0123456789"
    assert not isinstance(events[-1], Refused)
    events = core.feed(b"A")
    assert events == [Refused(Refusal.TOO_LARGE)]
    assert core.phase is Phase.BROKEN


def test_a_chunked_body_past_the_limit_is_refused_too():
    events = answer(max_body=3).feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n")
    assert body_of(events) == b"ab"
    assert events[-1] == Refused(Refusal.TOO_LARGE)


def test_a_body_at_the_limit_is_whole():
    events = answer(max_body=4).feed(OK_HEAD + b"Content-Length: 4\r\n\r\nabcd")
    assert body_of(events) == b"abcd"
    assert events[-1] == ResponseEnd(reusable=True)


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Le", OK_HEAD + b"Content-Length: 9\r\n\r\nabc",
                                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"])
def test_a_close_before_the_answer_ended_is_refused(sent: bytes):
    core = answer()
    core.feed(sent)
    assert core.eof() == [Refused(Refusal.CLOSED)]


def test_a_close_of_an_idle_connection_says_nothing():
    core = ResponseCore()
    assert core.eof() == []
    assert core.phase is Phase.BROKEN


def test_bytes_nobody_asked_for_are_refused():
    core = ResponseCore()
    assert core.feed(b"HTTP/1.1 200 OK\r\n\r\n") == [Refused(Refusal.UNSOLICITED)]
    assert core.phase is Phase.BROKEN


def test_a_second_answer_in_the_same_bytes_makes_the_first_the_last():
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
    events = answer().feed(one + b"a" + one + b"b")
    assert len([e for e in events if isinstance(e, ResponseHead)]) == 1
    assert body_of(events) == b"a"
    assert events[-1] == ResponseEnd(reusable=False)


def test_garbage_after_a_complete_answer_leaves_the_answer_standing():
    events = answer().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\x00\x01")
    assert body_of(events) == b"a"
    assert events[-1] == ResponseEnd(reusable=False)


def test_expecting_an_answer_while_one_is_being_read_is_a_bug():
    core = answer()
    with pytest.raises(RuntimeError):
        core.expect(head_only=False)


# --- the asyncio adapter, on a fake transport ---------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.paused = False

    def write(self, data: bytes) -> None:  # type: ignore[override]  # asyncio's takes any buffer; the connection writes bytes
        self.written.append(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Owner:
    def __init__(self) -> None:
        self.discarded: list[EngineConnection] = []

    def discard(self, conn: EngineConnection) -> None:
        self.discarded.append(conn)


class Recorder:
    """An exchange that writes down what the connection told it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.last_read = 0.0
        self.answered = False
        self.calls: list[tuple[str, object]] = []

    def response_head(self, head: ResponseHead) -> None:
        self.calls.append(("head", head.status))

    def response_body(self, chunk: bytes) -> None:
        self.calls.append(("body", chunk))

    def flush(self) -> None:
        self.calls.append(("flush", None))

    def response_done(self) -> None:
        self.calls.append(("done", None))

    def upstream_lost(self) -> None:
        self.calls.append(("lost", None))

    def upstream_broken(self, failure: Failure) -> None:
        self.calls.append(("broken", failure))

    def pause_source(self) -> None:
        self.calls.append(("pause", None))

    def resume_source(self) -> None:
        self.calls.append(("resume", None))


class FakeLoop:
    def time(self) -> float:
        return 42.0


def connected(head_only: bool = False, max_body: int | None = None) -> tuple[EngineConnection, Recorder, Owner]:
    owner = Owner()
    conn = EngineConnection(owner, None)  # type: ignore[arg-type]  # the target is only carried along
    conn.connection_made(FakeTransport())
    exchange = Recorder(FakeLoop())  # type: ignore[arg-type]  # the connection reads only loop.time()
    conn.attach(exchange, head_only=head_only, max_body=max_body)
    return conn, exchange, owner


def test_the_adapter_hands_events_on_and_flushes_between_reads():
    conn, exchange, _ = connected()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert exchange.calls == [("head", 200), ("body", b"ab"), ("flush", None)]
    assert exchange.answered
    assert exchange.last_read == 42.0
    conn.data_received(b"cd")
    assert exchange.calls[3:] == [("body", b"cd"), ("done", None)]
    assert not conn.closed  # reusable: the exchange gives it back to the pool


def test_the_adapter_closes_a_connection_that_cannot_be_reused_before_the_end_is_told():
    conn, exchange, owner = connected()
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert exchange.calls[-1] == ("done", None)
    assert conn.closed
    assert owner.discarded == [conn]


def test_the_adapter_ends_a_close_delimited_body_at_the_close():
    conn, exchange, owner = connected()
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\npartial")
    conn.connection_lost(None)
    assert exchange.calls[-2:] == [("flush", None), ("done", None)]
    assert owner.discarded == [conn]


def test_the_adapter_reports_a_close_mid_answer_as_lost():
    conn, exchange, _ = connected()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    conn.connection_lost(None)
    assert exchange.calls[-1] == ("lost", None)
    assert conn.exchange is None


@pytest.mark.parametrize(("data", "failure"), [(b"nonsense\r\n\r\n", Failure.MALFORMED),
                                               (OK_HEAD + b"Content-Length: 9\r\n\r\n123456789", Failure.TOO_LARGE)])
def test_the_adapter_reports_refusals_as_the_policys_failures(data: bytes, failure: Failure):
    conn, exchange, _ = connected(max_body=4)
    conn.data_received(data)
    assert exchange.calls[-1] == ("broken", failure)


def test_the_adapter_drops_a_connection_that_speaks_unasked():
    owner = Owner()
    conn = EngineConnection(owner, None)  # type: ignore[arg-type]  # the target is only carried along
    conn.connection_made(FakeTransport())
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert conn.closed
    assert owner.discarded == [conn]


def test_the_adapter_passes_flow_control_on():
    conn, exchange, _ = connected()
    conn.pause_writing()
    conn.resume_writing()
    assert exchange.calls == [("pause", None), ("resume", None)]
    assert not conn.writing_paused
    conn.pause_reading()
    assert conn.reading_paused
    assert isinstance(conn.transport, FakeTransport)
    assert conn.transport.paused
    conn.resume_reading()
    assert not conn.reading_paused


# --- observers of relays, in memory --------------------------------------------------------------


class FakeRelay:
    def __init__(self, method: bytes = b"POST", path: str = "/books/_bulk", status: int = 200) -> None:
        self.method = method
        self.record = RelayRecord(path, [], 0.0)
        self.status = status
        self.body_complete = True
        self.request_headers: list[tuple[bytes, bytes]] = []

    @property
    def final_status(self) -> int:
        return self.status or 499


class Told(RelayObserver):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def response_done(self, relay: RelayExchange) -> None:
        self.log.append(self.name)


class Warming(WriteWarming):
    """Write warming with the queueing written down instead of run."""

    def __init__(self, limit: int, budget: CopyBudget) -> None:
        super().__init__(None, load_settings({"UPSTREAM_URLS": "http://x:9200"}), None, budget)  # type: ignore[arg-type]  # no warmer: _warm is replaced
        self.limit = limit  # smaller than any MAX_SEARCH_BODY_BYTES allowed
        self.warmed: list[bytes] = []

    def _warm(self, relay: RelayExchange, body: bytes) -> None:
        self.warmed.append(body)


def test_observers_are_told_in_their_declared_order_and_only_the_hooks_they_have():
    log: list[str] = []
    observers = Observers([Told(log, "first"), Told(log, "second")])
    assert observers.request_body == ()
    assert len(observers.response_done) == 2
    for hook in observers.response_done:
        hook(FakeRelay())  # type: ignore[arg-type]  # a FakeRelay has what observers read
    assert log == ["first", "second"]


def test_write_warming_copies_a_successful_writes_body_and_gives_its_budget_back_later():
    budget = CopyBudget(100)
    warming = Warming(limit=50, budget=budget)
    relay = FakeRelay()
    for chunk in (b"abc", b"def"):
        warming.request_body(relay, chunk)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    assert budget.held == 6
    warming.response_done(relay)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    assert warming.warmed == [b"abcdef"]
    assert budget.held == 6


@pytest.mark.parametrize(("relay", "chunks"), [
    (FakeRelay(status=500), [b"abc"]),                    # the write failed
    (FakeRelay(status=0), [b"abc"]),                      # the client went away
    (FakeRelay(), [b"x" * 30, b"y" * 30]),                # past the per-request limit
    (FakeRelay(method=b"GET", path="/books/_doc/1"), [b"abc"]),   # not a write
])
def test_write_warming_drops_copies_it_will_not_use_and_gives_their_budget_back(relay: FakeRelay,
                                                                                chunks: list[bytes]):
    budget = CopyBudget(100)
    warming = Warming(limit=50, budget=budget)
    for chunk in chunks:
        warming.request_body(relay, chunk)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    warming.response_done(relay)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    assert warming.warmed == []
    assert budget.held == 0


def test_write_warming_stops_copying_when_the_workers_budget_is_spent():
    budget = CopyBudget(10)
    warming = Warming(limit=50, budget=budget)
    first, second = FakeRelay(), FakeRelay()
    warming.request_body(first, b"x" * 8)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    warming.request_body(second, b"y" * 8)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    for relay in (first, second):
        warming.response_done(relay)  # type: ignore[arg-type]  # a FakeRelay has what observers read
    assert warming.warmed == [b"x" * 8]

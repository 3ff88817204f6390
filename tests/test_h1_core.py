"""The client-side HTTP/1.1 core probed in memory, as an attacker would probe the edge.

The raw-socket cases of test_edge.py, test_fair_share_edge.py and test_server.py, against
`H1Core` alone: bytes in, events and the connection's next step out. No socket, no engine, no
clock: `now` values are given, so a slow client is a number, not a sleep. Exchanges are named by
their request target (interned: the core tells exchanges apart by identity, as the edge's objects
are), so an event says which request it belongs to.
"""

from __future__ import annotations

from sys import intern

import pytest

from rerank_proxy.edge.h1 import (
    HEAD_SLACK,
    After,
    BodyData,
    EndOfMessage,
    Fate,
    Framing,
    H1Core,
    Phase,
    Refusal,
    RequestHead,
    Start,
    Timeouts,
)

LIMIT = 16384
H = "Host: x\r\n"
AFTER = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
UPGRADES = {
    "h2c": "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
    "websocket": "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n",
}
TIMEOUTS = Timeouts(head_s=1.0, body_s=2.0, body_min_rate=0.0)


class Client:
    """Feeds one core and routes every head as the server would: the exchange is the target;
    targets in `refused` are refused by routing (a 400: nothing after them is parsed)."""

    def __init__(self, limit: int = LIMIT, refused: frozenset[str] = frozenset()) -> None:
        self.core: H1Core[str] = H1Core(limit)
        self.refused = refused
        self.starts: dict[str, Start] = {}

    def send(self, data: bytes | str, now: float = 0.0) -> list[object]:
        self.core.receive_data(data.encode("latin-1") if isinstance(data, str) else data, now)
        return self.events()

    def events(self) -> list[object]:
        out: list[object] = []
        while (event := self.core.next_event()) is not None:
            out.append(event)
            if isinstance(event, RequestHead):
                target = intern(event.target.decode("latin-1"))
                if target in self.refused:
                    self.core.stop()
                self.starts[target] = self.core.accept(target)
        return out

    def done(self, exchange: str, keep_alive: bool = True, stopping: bool = False) -> After:
        return self.core.response_done(intern(exchange), keep_alive=keep_alive, stopping=stopping)

    def queue_answer(self, exchange: str) -> Start:
        return self.core.queue_answer(intern(exchange))

    def hand_over(self, old: str, new: str) -> bool:
        return self.core.hand_over(intern(old), intern(new))


def heads(events: list[object]) -> list[str]:
    return [e.target.decode() for e in events if isinstance(e, RequestHead)]


def body_of(events: list[object], exchange: str) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyData) and e.exchange == exchange)


def ends(events: list[object]) -> list[EndOfMessage[str]]:
    return [e for e in events if isinstance(e, EndOfMessage)]


def refusals(events: list[object]) -> list[Refusal[str]]:
    return [e for e in events if isinstance(e, Refusal)]


def only_head(events: list[object]) -> RequestHead:
    [head] = [e for e in events if isinstance(e, RequestHead)]
    return head


# --- the classic smuggling set and framing errors: one 400, nothing after it -----------------------

# (request, fate): ANSWER when the head never completed, BODY_CUT when its body broke off.
PARSER_REFUSED = {
    "cl_then_te": (f"POST /a HTTP/1.1\r\n{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                   Fate.ANSWER),
    "te_then_cl": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                   Fate.ANSWER),
    "two_lengths": (f"POST /a HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", Fate.ANSWER),
    "length_list": (f"POST /a HTTP/1.1\r\n{H}Content-Length: 3, 3\r\n\r\nabc", Fate.ANSWER),
    "length_not_digits": (f"GET /a HTTP/1.1\r\n{H}Content-Length: x\r\n\r\n", Fate.ANSWER),
    "te_chunked_identity": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                            Fate.ANSWER),
    "te_twice": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
                 Fate.ANSWER),
    "te_identity_body": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\n\r\nabc", Fate.BODY_CUT),
    "obs_fold": (f"GET /a HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n", Fate.ANSWER),
    "obs_fold_te": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", Fate.ANSWER),
    "bare_lf": (f"GET /a HTTP/1.1\n{H}\n", Fate.ANSWER),
    "bare_cr": ("GET /a HTTP/1.1\rHost: x\r\r", Fate.ANSWER),
    "lf_in_header": (f"GET /a HTTP/1.1\r\n{H}X-A: a\nX-B: b\r\n\r\n", Fate.ANSWER),
    "nul_in_header": (f"GET /a HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n", Fate.ANSWER),
    "space_before_colon": (f"POST /a HTTP/1.1\r\n{H}Content-Length : 3\r\n\r\nabc", Fate.ANSWER),
    "chunk_size_0x": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n0x7\r\nabcdefg\r\n0\r\n\r\n",
                      Fate.BODY_CUT),
    "chunk_size_huge": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{'f' * 19}\r\nabc\r\n0\r\n\r\n",
                        Fate.BODY_CUT),
    "chunk_without_crlf": (f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
                           Fate.BODY_CUT),
    "h2_preface": ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Fate.ANSWER),
}


@pytest.mark.parametrize("case", sorted(PARSER_REFUSED))
def test_malformed_or_ambiguous_bytes_are_one_400_and_nothing_after_is_parsed(case):
    raw, fate = PARSER_REFUSED[case]
    client = Client()
    events = client.send(raw.encode("latin-1") + AFTER)
    [refusal] = refusals(events)
    assert (refusal.status, refusal.error_type) == (400, "illegal_argument_exception")
    assert refusal.reason.startswith("invalid HTTP request")
    assert refusal.fate is fate
    assert refusal.exchange == ("/a" if fate is Fate.BODY_CUT else None)
    assert "/after" not in heads(events)
    assert events[-1] is refusal
    assert ends(events) == []  # a broken request never looks complete
    assert client.send(AFTER) == []
    assert client.core.stopped


@pytest.mark.parametrize(("raw", "target", "version"), [
    (f"GET http://elsewhere.example/a HTTP/1.1\r\n{H}\r\n", "http://elsewhere.example/a", "1.1"),
    (f"GET //elsewhere.example/a HTTP/1.1\r\n{H}\r\n", "//elsewhere.example/a", "1.1"),
    (f"OPTIONS * HTTP/1.1\r\n{H}\r\n", "*", "1.1"),
    ("GET /a\r\n\r\n", "/a", "0.9"),
], ids=["absolute_uri", "double_slash", "options_star", "http_0_9"])
def test_targets_and_versions_reach_routing_as_sent_and_its_400_stops_parsing(raw, target, version):
    """Origin-form targets and the version are the router's rules: the core hands them over unchanged,
    and once the router refuses, the pipelined request after them is never handed out."""
    client = Client(refused=frozenset({target}))
    events = client.send(raw.encode() + AFTER)
    head = only_head(events)
    assert (head.target.decode(), head.http_version) == (target, version)
    assert heads(events) == [target]
    assert client.core.stopped
    assert client.done(target, keep_alive=False) is After.LINGER_CLOSE


def test_connect_is_an_upgrade_with_no_keep_alive():
    client = Client(refused=frozenset({"elsewhere.example:443"}))
    events = client.send(f"CONNECT elsewhere.example:443 HTTP/1.1\r\n{H}\r\n".encode() + AFTER)
    head = only_head(events)
    assert head.method == b"CONNECT"
    assert head.upgrade
    assert not head.keep_alive
    assert heads(events) == ["elsewhere.example:443"]


@pytest.mark.parametrize("connection", ["Content-Length", "content-length", "keep-alive, Content-Length",
                                        "CONTENT-LENGTH , keep-alive", "Transfer-Encoding"])
def test_the_connection_header_cannot_remove_framing(connection):
    client = Client()
    events = client.send(f"POST /doc HTTP/1.1\r\n{H}Connection: {connection}\r\n"
                         f"Content-Length: {len(SMUGGLED)}\r\n\r\n".encode() + SMUGGLED)
    head = only_head(events)
    assert head.framing is Framing.LENGTH
    assert body_of(events, "/doc") == SMUGGLED  # the hidden request is a body, never a head
    assert heads(events) == ["/doc"]
    assert [e.exchange for e in ends(events)] == ["/doc"]


def test_a_request_hidden_in_a_body_is_a_head_only_when_sent_as_one():
    hidden = b"DELETE /everything HTTP/1.1\r\nHost: x\r\n\r\n"
    client = Client()
    first = client.send(f"POST /doc HTTP/1.1\r\n{H}Connection: keep-alive, Content-Length\r\n"
                        f"Content-Length: {len(hidden)}\r\n\r\n".encode() + hidden)
    assert heads(first) == ["/doc"]
    assert body_of(first, "/doc") == hidden
    assert client.done("/doc") is After.IDLE
    second = client.send(hidden)
    assert heads(second) == ["/everything"]
    assert only_head(second).method == b"DELETE"


# --- upgrades: answered as plain HTTP, their body read, nothing after them ----------------------------

@pytest.mark.parametrize("upgrade", sorted(UPGRADES))
def test_an_upgrade_is_the_last_request_and_the_other_protocol_is_never_parsed(upgrade):
    client = Client()
    events = client.send(f"GET /up HTTP/1.1\r\n{H}{UPGRADES[upgrade]}\r\n".encode() + b"PRI * HTTP/2.0\r\n\r\n"
                         + SMUGGLED)
    head = only_head(events)
    assert head.upgrade
    assert not head.keep_alive
    assert head.framing is Framing.NONE
    assert heads(events) == ["/up"]
    assert [e.exchange for e in ends(events)] == ["/up"]
    assert refusals(events) == []
    assert client.core.stopped
    assert client.send(SMUGGLED) == []
    assert client.done("/up", keep_alive=head.keep_alive) is After.LINGER_CLOSE


@pytest.mark.parametrize(("framing", "body", "expected"), [
    ("Content-Length: 7", b'{"a":1}', b'{"a":1}'),
    ("Transfer-Encoding: chunked", b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", b"abcdefg"),
], ids=["length", "chunked"])
def test_an_upgrade_requests_body_is_read_whole(framing, body, expected):
    client = Client()
    events = client.send(f"PUT /u0 HTTP/1.1\r\n{H}{UPGRADES['h2c']}{framing}\r\n\r\n".encode() + body + SMUGGLED)
    assert heads(events) == ["/u0"]
    assert only_head(events).upgrade
    assert body_of(events, "/u0") == expected
    assert [e.exchange for e in ends(events)] == ["/u0"]
    assert refusals(events) == []
    assert client.done("/u0", keep_alive=False) is After.LINGER_CLOSE


def test_an_upgrade_body_split_over_reads_keeps_its_framing():
    client = Client()
    first = client.send(f"PUT /u1 HTTP/1.1\r\n{H}{UPGRADES['h2c']}Content-Length: 10\r\n\r\n".encode() + b"0123")
    assert client.core.phase is Phase.BODY
    assert ends(first) == []
    second = client.send(b"456789" + SMUGGLED)
    assert body_of(first, "/u1") + body_of(second, "/u1") == b"0123456789"
    assert [e.exchange for e in ends(second)] == ["/u1"]
    assert heads(second) == []


def test_an_unfinished_upgrade_body_still_times_out():
    client = Client()
    client.send(f"PUT /held HTTP/1.1\r\n{H}{UPGRADES['h2c']}Content-Length: 7\r\n\r\n".encode() + b'{"a"', now=0.0)
    client.core.check_timeouts(2.5, TIMEOUTS, paused=False)
    [refusal] = refusals(client.events())
    assert (refusal.status, refusal.fate, refusal.exchange) == (408, Fate.BODY_CUT, "/held")


def test_an_upgrade_with_a_zero_length_has_no_body():
    client = Client()
    events = client.send(f"POST /u2 HTTP/1.1\r\n{H}{UPGRADES['h2c']}Content-Length: 000\r\n\r\n".encode() + SMUGGLED)
    assert only_head(events).framing is Framing.NONE
    assert body_of(events, "/u2") == b""
    assert [e.exchange for e in ends(events)] == ["/u2"]
    assert heads(events) == ["/u2"]


# --- trailers -------------------------------------------------------------------------------------

def test_trailers_are_not_headers():
    client = Client()
    events = client.send(f"POST /t HTTP/1.1\r\n{H}X-Opaque-Id: from-header\r\nTransfer-Encoding: chunked\r\n\r\n"
                         .encode() + b"3\r\nabc\r\n0\r\nX-Opaque-Id: from-trailer\r\nX-Injected: 1\r\n\r\n")
    head = only_head(events)
    assert [v for k, v in head.headers if k.lower() == b"x-opaque-id"] == [b"from-header"]
    assert not any(k.lower() == b"x-injected" for k, _ in head.headers)
    assert body_of(events, "/t") == b"abc"
    assert [e.exchange for e in ends(events)] == ["/t"]


def test_endless_trailers_get_431():
    client = Client(limit=1024)
    client.send(f"POST /t HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n".encode())
    events: list[object] = []
    for n in range(100):
        events += client.send(f"X-T{n}: {'v' * 100}\r\n".encode())
        if refusals(events):
            break
    [refusal] = refusals(events)
    assert (refusal.status, refusal.error_type) == (431, "too_long_http_header_exception")
    assert "trailers" in refusal.reason
    assert refusal.fate is Fate.BODY_CUT
    assert n < 25


# --- header size: enforced while the head arrives ------------------------------------------------------

@pytest.mark.parametrize("start", [b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: ", b"GET /"], ids=["header", "url"])
def test_an_endless_head_gets_431_before_it_ends(start):
    client = Client()
    events, sent = client.send(start), len(start)
    while not events and sent < 64 * LIMIT:
        events = client.send(b"a" * 4096)
        sent += 4096
    [refusal] = events
    assert isinstance(refusal, Refusal)
    assert refusal.status == 431
    assert refusal.fate is Fate.ANSWER
    assert sent <= LIMIT + HEAD_SLACK + 4096, f"{sent} bytes of one head were read"
    assert client.core.phase is Phase.IDLE
    assert client.send(b"\r\n\r\n" + AFTER) == []


def test_a_head_just_under_the_bound_is_handed_over():
    client = Client()
    events = client.send(f"GET /a HTTP/1.1\r\nX-Pad: {'p' * (LIMIT - 200)}\r\n\r\n".encode())
    assert heads(events) == ["/a"]
    assert refusals(events) == []
    assert only_head(events).header_bytes <= LIMIT


def test_the_url_counts_toward_the_header_size_and_headers_past_it_are_dropped():
    """Routing answers 431 from `header_bytes`; the core never keeps headers past the bound."""
    client = Client()
    head = only_head(client.send(f"GET /{'u' * 9000} HTTP/1.1\r\n{H}X-Pad: {'p' * 8000}\r\n\r\n".encode()))
    assert head.header_bytes == 9001 + (4 + 1 + 4) + (5 + 8000 + 4) > LIMIT
    assert head.headers == [(b"Host", b"x")]


def test_the_previous_messages_bytes_do_not_count_toward_the_next_head():
    client = Client()
    events = client.send(f"PUT /a HTTP/1.1\r\n{H}Content-Length: 40000\r\n\r\n".encode() + b"x" * 40000
                         + b"GET /b HTTP/1.1\r\nHost: x\r\n")
    assert heads(events) == ["/a"]
    assert refusals(events) == []
    assert client.core.phase is Phase.HEAD
    second = client.send(b"\r\n")
    assert heads(second) == ["/b"]
    assert second[-1] == EndOfMessage("/b", drained=False)


def test_a_head_trickled_in_a_byte_at_a_time_is_handed_over_whole():
    raw = f"GET /slowly HTTP/1.1\r\n{H}X-Pad: {'p' * 1900}\r\n\r\n".encode()
    client = Client(limit=1024)
    events: list[object] = []
    for i in range(len(raw)):
        events += client.send(raw[i:i + 1])
    assert heads(events) == ["/slowly"]
    assert refusals(events) == []


# --- slow heads, slow bodies (the adapter's tick gives `now`) --------------------------------------------

def test_a_head_that_never_ends_gets_408_after_the_header_timeout():
    client = Client()
    client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n", now=10.0)
    client.core.check_timeouts(10.9, TIMEOUTS, paused=False)
    assert client.events() == []
    client.core.check_timeouts(11.1, TIMEOUTS, paused=False)
    [refusal] = client.events()
    assert isinstance(refusal, Refusal)
    assert refusal.status == 408
    assert "CLIENT_HEADER_TIMEOUT_S" in refusal.reason
    assert refusal.fate is Fate.ANSWER


def test_a_stalled_body_gets_408_and_never_completes():
    client = Client()
    client.send(f"PUT /stall HTTP/1.1\r\n{H}Content-Length: 100\r\n\r\n".encode() + b"x" * 10, now=0.0)
    client.send(b"x" * 10, now=1.5)
    client.core.check_timeouts(3.0, TIMEOUTS, paused=False)  # 1.5 s since the last byte: alive
    assert client.events() == []
    client.core.check_timeouts(3.6, TIMEOUTS, paused=False)
    [refusal] = client.events()
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.fate, refusal.exchange) == (408, Fate.BODY_CUT,
                                                                                                 "/stall")
    assert "stalled" in refusal.reason
    assert client.done("/stall", keep_alive=False) is After.LINGER_CLOSE


def test_a_body_slower_than_the_minimum_rate_gets_408():
    client = Client()
    rate = Timeouts(head_s=1.0, body_s=1.0, body_min_rate=1000.0)
    client.send(f"POST /any/_search HTTP/1.1\r\n{H}Content-Length: 100000\r\n\r\n".encode(), now=0.0)
    for tick in range(1, 5):  # a byte every 0.3 s: never idle, far too slow
        client.send(b" ", now=tick * 0.3)
        client.core.check_timeouts(tick * 0.3, rate, paused=False)
    [refusal] = client.events()
    assert isinstance(refusal, Refusal)
    assert refusal.status == 408
    assert "CLIENT_BODY_MIN_RATE" in refusal.reason


def test_while_reading_is_paused_the_client_is_not_the_slow_one():
    client = Client()
    client.send(f"PUT /held HTTP/1.1\r\n{H}Content-Length: 100\r\n\r\n".encode(), now=0.0)
    client.core.check_timeouts(50.0, TIMEOUTS, paused=True)   # its clocks restart at 50
    client.core.check_timeouts(51.5, TIMEOUTS, paused=False)
    assert client.events() == []
    client.core.check_timeouts(52.5, TIMEOUTS, paused=False)
    assert [r.status for r in refusals(client.events())] == [408]


def test_an_idle_connection_and_a_refused_one_get_no_408():
    idle = Client()
    idle.send(f"GET /a HTTP/1.1\r\n{H}\r\n".encode(), now=0.0)
    assert idle.core.phase is Phase.IDLE
    idle.core.check_timeouts(1000.0, TIMEOUTS, paused=False)
    assert idle.events() == []
    refused = Client()
    refused.send(b"GET /a HTTP/1.1\r\nBad Header: x\r\n", now=0.0)
    refused.core.check_timeouts(1000.0, TIMEOUTS, paused=False)
    assert refused.events() == []  # one answer per connection


# --- pipelining: answers in the order asked ----------------------------------------------------------

def test_pipelined_requests_wait_for_their_turn_and_are_answered_in_order():
    client = Client()
    events = client.send(b"".join(f"GET /{n} HTTP/1.1\r\n{H}\r\n".encode() for n in "abc"))
    assert heads(events) == ["/a", "/b", "/c"]
    assert client.starts == {"/a": Start.NOW, "/b": Start.QUEUED, "/c": Start.QUEUED}
    assert client.done("/b") is After.NOT_ACTIVE  # not its turn: nothing changes
    assert (client.done("/a"), client.core.active, client.core.pending) == (After.NEXT, "/b", 1)
    assert (client.done("/b"), client.core.active, client.core.pending) == (After.NEXT, "/c", 0)
    assert client.done("/c") is After.IDLE
    assert client.core.idle


def test_requests_pipelined_before_a_refused_one_are_answered_in_turn():
    client = Client()
    events = client.send(f"GET /a HTTP/1.1\r\n{H}\r\nGET /b HTTP/1.1\r\n{H}\r\n"
                         f"GET /c HTTP/1.1\r\nContent-Length: x\r\n\r\nGET /d HTTP/1.1\r\n\r\n".encode())
    assert heads(events) == ["/a", "/b"]
    [refusal] = refusals(events)
    assert refusal.fate is Fate.ANSWER
    assert refusal.status == 400
    assert client.queue_answer("error") is Start.QUEUED
    assert [client.done("/a"), client.core.active] == [After.NEXT, "/b"]
    assert [client.done("/b"), client.core.active] == [After.NEXT, "error"]
    assert client.done("error", keep_alive=False) is After.LINGER_CLOSE


def test_a_refusal_with_nothing_before_it_answers_now():
    client = Client()
    client.send(b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    assert client.queue_answer("error") is Start.NOW
    assert client.core.active == "error"


def test_a_refusal_mid_body_of_a_queued_request_names_it():
    client = Client()
    events = client.send(f"GET /a HTTP/1.1\r\n{H}\r\nPOST /b HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n"
                         "3\r\nabc\r\nzz\r\n".encode())
    [refusal] = refusals(events)
    assert (refusal.fate, refusal.exchange) == (Fate.BODY_CUT, "/b")
    assert body_of(events, "/b") == b"abc"
    assert client.done("/a") is After.NEXT
    assert client.core.active == "/b"
    assert client.done("/b", keep_alive=False) is After.LINGER_CLOSE  # its body never ended


@pytest.mark.parametrize(("request_line", "keep_alive"), [
    ("GET /a HTTP/1.0\r\n", False),
    ("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n", True),
    ("GET /a HTTP/1.1\r\nConnection: close\r\n", False),
    ("GET /a HTTP/1.1\r\n", True),
])
def test_keep_alive_follows_the_version_and_connection_header(request_line, keep_alive):
    client = Client()
    assert only_head(client.send(f"{request_line}{H}\r\n".encode())).keep_alive is keep_alive


def test_after_a_close_nothing_pipelined_is_handed_out():
    client = Client()
    client.send(f"GET /a HTTP/1.0\r\n{H}\r\n".encode())
    assert client.done("/a", keep_alive=False) is After.CLOSE
    assert client.send(AFTER) == []
    assert client.core.stopped


def test_a_shutting_down_server_closes_kept_alive_connections():
    client = Client()
    client.send(f"GET /a HTTP/1.1\r\n{H}\r\nGET /b HTTP/1.1\r\n{H}\r\n".encode())
    assert client.done("/a", stopping=True) is After.CLOSE


def test_a_kept_alive_connection_reads_the_next_request():
    client = Client()
    client.send(f"GET /a HTTP/1.1\r\n{H}\r\n".encode())
    assert client.done("/a") is After.IDLE
    assert client.core.idle
    assert heads(client.send(f"GET /b HTTP/1.1\r\n{H}\r\n".encode())) == ["/b"]
    assert client.starts["/b"] is Start.NOW


# --- early answers: before the body ended ----------------------------------------------------------------

def test_an_early_answer_drains_the_body_and_keeps_the_connection():
    client = Client()
    client.send(f"PUT /_cluster/no_such_handler HTTP/1.1\r\n{H}Content-Length: 13\r\n\r\n".encode() + b'{"a":')
    assert client.done("/_cluster/no_such_handler") is After.DRAIN
    events = client.send(b'"bbbbb"}' + f"GET /_cluster/health HTTP/1.1\r\n{H}\r\n".encode())
    assert ends(events)[0] == EndOfMessage("/_cluster/no_such_handler", drained=True)
    assert heads(events) == ["/_cluster/health"]
    assert client.starts["/_cluster/health"] is Start.QUEUED
    assert client.done("/_cluster/no_such_handler") is After.NEXT  # its turn ends once drained
    assert client.core.active == "/_cluster/health"


@pytest.mark.parametrize(("keep_alive", "stopping"), [(False, False), (True, True)],
                         ids=["close_announced", "stopping"])
def test_an_early_answer_that_does_not_keep_alive_lingers(keep_alive, stopping):
    client = Client()
    client.send(f"PUT /big HTTP/1.1\r\n{H}Content-Length: 5000000\r\n\r\n".encode() + b"x" * 4000)
    assert client.done("/big", keep_alive=keep_alive, stopping=stopping) is After.LINGER_CLOSE
    assert client.send(b"x" * 4000 + AFTER) == []  # what still comes is dropped unparsed


def test_a_refusal_while_draining_leaves_only_the_close():
    client = Client()
    client.send(f"POST /early HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".encode())
    assert client.done("/early") is After.DRAIN
    [refusal] = refusals(client.send(b"0x7\r\nabcdefg\r\n"))
    assert (refusal.fate, refusal.exchange) == (Fate.CLOSE_ONLY, "/early")
    assert client.core.active is None
    assert client.core.idle


def test_a_bodiless_request_answered_at_once_is_not_drained():
    client = Client()
    events = client.send(f"POST /a HTTP/1.1\r\n{H}Content-Length: 0000\r\n\r\n".encode())
    assert only_head(events).framing is Framing.NONE
    assert client.done("/a") is After.IDLE


def test_a_body_cut_before_its_answer_closes_with_a_linger():
    client = Client()
    events = client.send(f"POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz".encode())
    assert [(r.fate, r.exchange) for r in refusals(events)] == [(Fate.BODY_CUT, "/a")]
    assert client.done("/a", keep_alive=True) is After.LINGER_CLOSE


# --- bodies ---------------------------------------------------------------------------------------------

def test_a_chunked_body_arrives_decoded_across_reads():
    client = Client()
    raw = f"POST /_bulk HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n".encode() + \
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    events: list[object] = []
    for i in range(0, len(raw), 7):
        events += client.send(raw[i:i + 7])
    assert only_head(events).framing is Framing.CHUNKED
    assert body_of(events, "/_bulk") == b"hello world"
    assert len(ends(events)) == 1


def test_a_length_body_ends_exactly_at_its_length():
    client = Client()
    events = client.send(f"PUT /a HTTP/1.1\r\n{H}Content-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n{H}\r\n".encode())
    assert body_of(events, "/a") == b"abc"
    assert heads(events) == ["/a", "/b"]
    assert [type(e).__name__ for e in events] == ["RequestHead", "BodyData", "EndOfMessage", "RequestHead",
                                                  "EndOfMessage"]


# --- the core's own contract --------------------------------------------------------------------------

def test_a_head_must_be_accepted_before_the_next_event():
    core: H1Core[str] = H1Core(LIMIT)
    core.receive_data(f"GET /a HTTP/1.1\r\n{H}\r\n".encode(), 0.0)
    assert isinstance(core.next_event(), RequestHead)
    with pytest.raises(RuntimeError):
        core.next_event()
    core.accept("/a")
    with pytest.raises(RuntimeError):
        core.accept("/b")


def test_a_hand_over_replaces_the_active_exchange_only():
    client = Client()
    client.send(f"POST /i/_search HTTP/1.1\r\n{H}\r\nGET /b HTTP/1.1\r\n{H}\r\n".encode())
    assert not client.hand_over("/b", "relay-b")  # queued: not its turn
    assert client.hand_over("/i/_search", "relay")
    assert client.done("/i/_search") is After.NOT_ACTIVE
    assert client.done("relay") is After.NEXT


def test_a_client_gone_abandons_each_exchange_once():
    client = Client()
    client.send(f"GET /a HTTP/1.1\r\n{H}\r\nPUT /b HTTP/1.1\r\n{H}Content-Length: 9\r\n\r\nabc".encode())
    assert client.core.abandon() == ["/a", "/b"]
    assert client.core.pending == 0
    assert client.send(b"defghi") == []

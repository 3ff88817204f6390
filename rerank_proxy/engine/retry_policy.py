"""When a request to an engine may be sent again, where, and what the client is told otherwise.

One rule set for both ways the proxy talks to the engines: relayed requests (`relay.py`) and the
reads the proxy makes itself (`fetch.py`). Pure: no I/O, no clock, so every case is a unit test.

- Nothing was sent (no connection could be opened): any request, write or read, goes to the next
  engine. Every engine of the rotation is tried once.
- The request may have reached the engine: it is sent again only if sending it twice cannot change
  anything. A relayed read (an idempotent method whose body was not streamed yet, or a search read
  whole) is sent again only when a pooled connection died before any byte of an answer: the engine
  closed a kept-alive connection as the request went out, and never saw it. A write never is.
- A read the proxy makes itself is answered whole, so nothing has reached the client yet: any
  failure is asked of the next engine, except an answer too large, which every engine would give.

Errors are the engine's JSON shape (`ProxyError`): 502 when no engine answered, 504 when the one
asked did not answer in time, 429 when no connection or upload slot came free.
"""

from __future__ import annotations

import enum

from rerank_proxy.errors import AnswerTooLarge, ProxyError

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class Failure(enum.Enum):
    """How one try on one engine ended without an answer; the value is what an error answer says."""

    UNREACHABLE = "connection refused or timed out"   # nothing was sent
    CLOSED = "the engine closed the connection"
    MALFORMED = "the engine sent a malformed response"
    TIMED_OUT = "the engine did not answer within UPSTREAM_TIMEOUT_S"
    TOO_LARGE = "the answer is larger than MAX_CANDIDATE_BYTES"


class Resend(enum.Enum):
    """What a request allows once it may have reached an engine."""

    NEVER = "never"              # a write, or a body already streamed: the engine may have acted on it
    IF_UNSEEN = "if unseen"      # a relayed read: only when a pooled connection died before answering
    ANY_FAILURE = "any failure"  # a read the proxy makes and reads whole: nothing reached the client


class Next(enum.Enum):
    """What to do after a failed try."""

    NEW_CONNECTION = "send it again on a new connection"   # the engine never saw it
    NEXT_ENGINE = "try the next engine"
    GIVE_UP = "answer the client with the error"


class ErrorKind(enum.Enum):
    """The errors the client can get from the engine side, as (status, engine-style type)."""

    UNAVAILABLE = (502, "proxy_upstream_unavailable_exception")
    TIMEOUT = (504, "proxy_upstream_timeout_exception")
    BUSY = (429, "rejected_execution_exception")

    def error(self, reason: str) -> ProxyError:
        status, error_type = self.value
        return ProxyError(status, error_type, reason)


def relay_resend(method: bytes, *, whole_body: bool, body_started: bool) -> Resend:
    """The rule of a relayed request: a read may be sent again while it can be replayed whole."""
    if whole_body or (method in IDEMPOTENT and not body_started):
        return Resend.IF_UNSEEN
    return Resend.NEVER


def next_step(failure: Failure, resend: Resend, *, pooled: bool, answered: bool) -> Next:
    """After `failure` on one engine: again, elsewhere, or the error.

    `pooled`: the try used a kept-alive connection; `answered`: a byte of an answer had come."""
    if failure is Failure.UNREACHABLE:
        return Next.NEXT_ENGINE
    if failure is Failure.TOO_LARGE or resend is Resend.NEVER:
        return Next.GIVE_UP
    if failure is Failure.CLOSED and pooled and not answered:
        return Next.NEW_CONNECTION
    return Next.NEXT_ENGINE if resend is Resend.ANY_FAILURE else Next.GIVE_UP


def give_up(failure: Failure, *, every_engine: bool, answer_limit: int = 0) -> ProxyError:
    """The client's error after `failure`: with `every_engine`, the last of a failover that ran out
    (502, whatever the failure); otherwise the failure of the one engine asked, as it is (a 504 for
    a timeout). `answer_limit` is MAX_CANDIDATE_BYTES, said in a too-large answer's error."""
    if failure is Failure.TOO_LARGE:
        return AnswerTooLarge(answer_limit)
    if not every_engine:
        if failure is Failure.TIMED_OUT:
            return ErrorKind.TIMEOUT.error(failure.value)
        if failure is Failure.MALFORMED:
            return ErrorKind.UNAVAILABLE.error(failure.value)
    return ErrorKind.UNAVAILABLE.error(f"no engine could be reached ({failure.value})")


def pool_full() -> ProxyError:
    return ErrorKind.BUSY.error("all engine connections are in use (UPSTREAM_MAX_CONNECTIONS); retry later")


def uploads_full() -> ProxyError:
    return ErrorKind.BUSY.error("all upload slots are in use (a quarter of UPSTREAM_MAX_CONNECTIONS); retry later")

"""The retry and failover rules of the engine transport, as a table: no engine, no socket."""

from __future__ import annotations

import pytest

from rerank_proxy.engine.retry_policy import (
    ErrorKind,
    Failure,
    Next,
    Resend,
    give_up,
    next_step,
    pool_full,
    relay_resend,
    uploads_full,
)
from rerank_proxy.errors import AnswerTooLarge


@pytest.mark.parametrize("resend", list(Resend))
def test_nothing_sent_goes_to_the_next_engine_whatever_the_request(resend: Resend):
    for pooled in (False, True):
        assert next_step(Failure.UNREACHABLE, resend, pooled=pooled, answered=False) is Next.NEXT_ENGINE


@pytest.mark.parametrize("failure", [f for f in Failure if f is not Failure.UNREACHABLE])
def test_a_write_that_may_have_reached_the_engine_is_never_sent_again(failure: Failure):
    for pooled in (False, True):
        for answered in (False, True):
            assert next_step(failure, Resend.NEVER, pooled=pooled, answered=answered) is Next.GIVE_UP


@pytest.mark.parametrize("resend", [Resend.IF_UNSEEN, Resend.ANY_FAILURE])
def test_a_read_on_a_stale_pooled_connection_goes_again_on_a_new_one(resend: Resend):
    assert next_step(Failure.CLOSED, resend, pooled=True, answered=False) is Next.NEW_CONNECTION


@pytest.mark.parametrize(("pooled", "answered"), [(False, False), (True, True), (False, True)])
def test_a_relayed_read_is_not_sent_again_once_the_engine_may_have_seen_it(pooled: bool, answered: bool):
    assert next_step(Failure.CLOSED, Resend.IF_UNSEEN, pooled=pooled, answered=answered) is Next.GIVE_UP
    for failure in (Failure.MALFORMED, Failure.TIMED_OUT):
        assert next_step(failure, Resend.IF_UNSEEN, pooled=pooled, answered=answered) is Next.GIVE_UP


@pytest.mark.parametrize("failure", [Failure.CLOSED, Failure.MALFORMED, Failure.TIMED_OUT])
def test_the_proxys_own_read_asks_the_next_engine_after_any_failure(failure: Failure):
    assert next_step(failure, Resend.ANY_FAILURE, pooled=False, answered=True) is Next.NEXT_ENGINE


def test_an_answer_too_large_is_given_up_at_once_every_engine_would_give_it():
    for resend in Resend:
        assert next_step(Failure.TOO_LARGE, resend, pooled=True, answered=True) is Next.GIVE_UP


@pytest.mark.parametrize(("method", "whole_body", "body_started", "expected"), [
    (b"GET", False, False, Resend.IF_UNSEEN),
    (b"HEAD", False, False, Resend.IF_UNSEEN),
    (b"OPTIONS", False, False, Resend.IF_UNSEEN),
    (b"GET", False, True, Resend.NEVER),          # part of a streamed body is gone: not replayable
    (b"POST", True, False, Resend.IF_UNSEEN),     # a search read whole: replayed from memory
    (b"POST", False, False, Resend.NEVER),
    (b"PUT", False, False, Resend.NEVER),
    (b"DELETE", False, False, Resend.NEVER),
])
def test_which_relayed_requests_are_reads(method: bytes, whole_body: bool, body_started: bool, expected: Resend):
    assert relay_resend(method, whole_body=whole_body, body_started=body_started) is expected


@pytest.mark.parametrize(("failure", "status", "error_type", "reason"), [
    (Failure.UNREACHABLE, 502, "proxy_upstream_unavailable_exception",
     "no engine could be reached (connection refused or timed out)"),
    (Failure.CLOSED, 502, "proxy_upstream_unavailable_exception",
     "no engine could be reached (the engine closed the connection)"),
    (Failure.MALFORMED, 502, "proxy_upstream_unavailable_exception", "the engine sent a malformed response"),
    (Failure.TIMED_OUT, 504, "proxy_upstream_timeout_exception",
     "the engine did not answer within UPSTREAM_TIMEOUT_S"),
])
def test_the_error_of_the_one_engine_asked(failure: Failure, status: int, error_type: str, reason: str):
    error = give_up(failure, every_engine=False)
    assert (error.status, error.error_type, error.reason) == (status, error_type, reason)


@pytest.mark.parametrize("failure", [f for f in Failure if f is not Failure.TOO_LARGE])
def test_a_failover_that_ran_out_is_a_502_naming_the_last_failure(failure: Failure):
    error = give_up(failure, every_engine=True)
    assert (error.status, error.error_type) == ErrorKind.UNAVAILABLE.value
    assert error.reason == f"no engine could be reached ({failure.value})"


def test_an_answer_too_large_says_the_limit():
    for every_engine in (False, True):
        error = give_up(Failure.TOO_LARGE, every_engine=every_engine, answer_limit=65536)
        assert isinstance(error, AnswerTooLarge)
        assert error.status == 502
        assert "65536" in error.reason
        assert error.error_type == "proxy_upstream_response_exception"


def test_no_free_connection_or_upload_slot_is_the_engines_429():
    for error in (pool_full(), uploads_full()):
        assert (error.status, error.error_type) == (429, "rejected_execution_exception")
        assert error.reason.endswith("retry later")
    assert b'"status":429' in pool_full().body()

"""The edge's admission: API keys and the concurrency limit, without a server."""

from __future__ import annotations

import asyncio

from rerank_proxy.edge.admission import BAD_KEY, Admission


def test_no_keys_admits_anyone():
    assert Admission(4, ()).key_refusal([]) is None


def test_any_of_the_keys_admits_and_nothing_else_does():
    admission = Admission(4, ("first", "second"))
    assert admission.key_refusal([(b"X-Proxy-Api-Key", b"second")]) is None
    assert admission.key_refusal([(b"x-proxy-api-key", b"first")]) is None
    assert admission.key_refusal([(b"X-Proxy-Api-Key", b"secon")]) == BAD_KEY
    assert admission.key_refusal([(b"Authorization", b"first")]) == BAD_KEY


def test_full_at_the_limit_and_free_again_after_one_leaves():
    admission = Admission(2, ())
    admission.enter()
    assert not admission.full
    admission.enter()
    assert admission.full
    admission.leave()
    assert not admission.full
    assert admission.in_flight == 1


async def test_until_idle_waits_for_the_last_answer():
    admission = Admission(2, ())
    admission.enter()
    waiting = asyncio.ensure_future(admission.until_idle(30))
    await asyncio.sleep(0)
    assert not waiting.done()
    admission.leave()
    assert await waiting is True


async def test_until_idle_gives_up_when_the_grace_runs_out():
    admission = Admission(2, ())
    admission.enter()
    assert await admission.until_idle(0.01) is False
    assert admission.in_flight == 1

"""The search pipeline: intercept -> rewrite -> fetch candidates -> rerank (cache) -> merge.

`SearchPipeline.search` and `.msearch` take a parsed client request and return either a finished
response or a `Forward` (bypass: send the client's request on as is). Failures of the reranker
never fail a search unless fail-closed was chosen: the page is then served in lexical order and
flagged `X-Rerank: fallback`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from rerank_proxy.config import Settings
from rerank_proxy.engine.headers import credentials_of, forwardable_headers
from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.errors import AnswerTooLarge, ProxyError, bad_request, parse_error
from rerank_proxy.experiments import ubi as ubi_ext
from rerank_proxy.experiments.arms import Arm, assign, unit_of
from rerank_proxy.experiments.interleave import Team
from rerank_proxy.experiments.query_log import QueryLog, credentials, query_record, response_object_ids
from rerank_proxy.experiments.serving import ShadowScorer, interleaved_order, page_teams
from rerank_proxy.experiments.ubi_bypass import fetch_with_query_id
from rerank_proxy.scoring.cache.scores import ScoreCache, text_hash
from rerank_proxy.scoring.final import final_scores, resolve_mode, resolve_weight
from rerank_proxy.scoring.providers.base import RerankError
from rerank_proxy.scoring.providers.errors import RerankVectorsCold, reason_of
from rerank_proxy.scoring.providers.waits import provider_waits
from rerank_proxy.scoring.work_owner import owned_by
from rerank_proxy.search import filter_path as filter_paths
from rerank_proxy.search.answer_memo import AnswerMemo, Remembered, generations, request_key
from rerank_proxy.search.merge import merge, rerank_order
from rerank_proxy.search.partial import PARTIAL_REASON, partial_pins, score_warm
from rerank_proxy.search.plan import (
    Bypass,
    EngineMustAnswer,
    Plan,
    build_target,
    ensure_rewritable,
    parse_client_body,
    plan_search,
    read_client_body,
)
from rerank_proxy.search.text.hit_text import RuleMemo, VersionedTexts
from rerank_proxy.search.text.text_fields import TextFieldCache, mapped_fields

_DROP_ON_REWRITE = frozenset({b"content-length", b"content-encoding", b"accept-encoding"})
_DROP_ON_RESPONSE = frozenset({b"content-length", b"content-encoding"})
_MEMO_ARMS = frozenset({"off", "reranked"})  # arms whose answer is the plain reranked one, so memo-able


@dataclass(slots=True)
class Forward:
    """Bypass: forward the client's request; `body` replaces the original when not None."""

    reason: str
    body: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # added to the relayed answer


@dataclass(slots=True)
class Finished:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    outcome: str                   # reranked | cached | fallback | bypass | error
    reason: str = ""
    engine_ms: float = 0.0
    rerank_ms: float = 0.0
    cache: str = ""
    provider_ms: float = 0.0       # within rerank_ms: waiting on the provider's HTTP answers
    upstream: str = ""             # the engine that answered the candidate fetch
    arm: str = ""                  # the experiment arm that served it ("" with no experiment)


@dataclass(slots=True)
class Decided:
    """A `_search` to rerank: its decoded body, that body parsed, and the plan (a bypass carrying
    the UBI extension, whose answer is read whole to get the query id in)."""

    body: bytes
    parsed: Any
    plan: Plan | Bypass


@dataclass(slots=True)
class _Scored:
    scores: list[float] | None
    outcome: str
    reason: str = ""
    rerank_ms: float = 0.0
    cache: str = ""
    last: list[int] = field(default_factory=list)  # window positions ranked last (blank texts)
    mapped: tuple[str, ...] = ()   # indices whose mapping gave the texts
    provider_ms: float = 0.0
    pinned: list[int] = field(default_factory=list)  # window positions kept in place (vectors still cold)


@dataclass(slots=True)
class _Served:
    """How an arm serves a window: its scores, and for the interleaved arm its order and teams."""

    scored: _Scored
    order: list[int] | None = None
    teams: tuple[Team | None, ...] = ()


@dataclass(slots=True)
class _MemoSlot:
    """A search the memo may keep: its request key, and the engine answer's digest once computed."""

    request: bytes
    credentials: bytes       # credentials_of the request: the texts' fields were chosen with them
    answer: bytes | None = None


def decode_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The request body, decompressed (official clients may gzip their requests)."""
    encoding = content_encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise ProxyError(415, "illegal_argument_exception", f"unsupported Content-Encoding [{encoding}]")
    # "deflate" is zlib-wrapped by the standard, raw by some clients: the engines take both.
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS if _zlib_wrapped(raw) else -zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise parse_error(f"request body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise ProxyError(413, "content_too_long_exception", f"decompressed request body is larger than {limit} bytes")
    return out


def _zlib_wrapped(raw: bytes) -> bool:
    """A zlib header (RFC 1950): deflate method, and the two bytes a multiple of 31."""
    return len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0


def parse_json(raw: bytes, what: str = "request body") -> Any:
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise parse_error(f"{what} is not valid JSON: {exc}") from None


class SearchPipeline:
    def __init__(self, settings: Settings, engine: EngineTransport, cache: ScoreCache | None,
                 text_fields: TextFieldCache | None = None, query_log: QueryLog | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.cache = cache
        self.query_log = query_log  # where searches with the UBI extension are recorded (None: nowhere)
        self.experiment = settings.rerank_experiment
        # a quarter of the provider's slots at most, as for one _msearch: live searches keep the rest
        self.shadow = ShadowScorer(settings.rerank_max_concurrency // 4) if self.experiment.shadow else None
        self._rule_for = RuleMemo(settings.rule_for)
        self._texts = VersionedTexts(text_hash)
        # The mapping-derived texts (RERANK_TEXT_FROM_MAPPING); the console and the proxy's warming
        # use this same cache, so every text of one index is built from the same fields.
        if text_fields is None and settings.rerank_text_from_mapping:
            text_fields = TextFieldCache(engine)
        self.text_fields = text_fields
        self.memo: AnswerMemo | None = None
        if cache is not None and cache.enabled and settings.cache_answers_max_mb > 0:
            fields = text_fields
            self.memo = AnswerMemo(settings.cache_answers_max_mb << 20, settings.cache_ttl_s,
                                   generations(lambda: cache.flushes,
                                               lambda: fields.generation if fields is not None else 0),
                                   fresh=fields.fresh if fields is not None else None)

    # --- _search -----------------------------------------------------------------------------

    async def search(self, method: str, targets: str | None, params: dict[str, str],
                     headers: dict[str, str], raw_headers: list[tuple[bytes, bytes]],
                     body: bytes) -> Finished | Forward:
        decided = self.decide(targets, params, headers, body)
        if isinstance(decided, Forward):
            return decided
        return await self.rerank(decided, method, targets, params, headers, raw_headers)

    def decide(self, targets: str | None, params: dict[str, str], headers: dict[str, str],
               body: bytes) -> Forward | Decided:
        """The part of a `_search` that needs no I/O: relayed (`Forward`), or reranked (`Decided`).
        The edge calls it first, so a search that is relayed never becomes a task."""
        decoded = decode_body(body, headers.get("content-encoding", ""), self.settings.max_search_body_bytes)
        try:
            parsed = read_client_body(decoded)
            decision = plan_search(targets, params, parsed, headers, self.settings)
            if isinstance(decision, Bypass) and not decision.body_changed:
                return Forward(decision.reason)  # relayed as sent: nothing is re-serialised
            ensure_rewritable(decoded, parsed)
        except EngineMustAnswer as exc:
            return Forward(exc.reason)  # the client's own bytes, as sent
        if isinstance(decision, Bypass) and decision.ubi is None:
            return Forward(decision.reason, orjson.dumps(decision.body))
        return Decided(decoded, parsed, decision)

    async def rerank(self, decided: Decided, method: str, targets: str | None, params: dict[str, str],
                     headers: dict[str, str], raw_headers: list[tuple[bytes, bytes]],
                     client_addr: str | None = None) -> Finished | Forward:
        """A decided `_search`: candidates from the engine, scores, the page (in its experiment arm)."""
        decoded, parsed, decision = decided.body, decided.parsed, decided.plan
        if isinstance(decision, Bypass):
            return await self._bypass_with_ubi(decision, method, targets, params, raw_headers)
        arm = self._arm(decision.ubi, headers, client_addr)
        upstream_headers = _rewrite_headers(raw_headers)
        started = time.perf_counter()
        try:
            answer = await self.engine.fetch(method if method != "HEAD" else "GET", decision.target,
                                             upstream_headers, orjson.dumps(decision.body))
        except AnswerTooLarge:
            # Candidates past MAX_CANDIDATE_BYTES are never held: the engine answers the client's
            # own search (without the `rerank` extension), relayed as it comes, flagged.
            return Forward("candidates_too_large", orjson.dumps(parsed) if decision.body_changed else None,
                           _ubi_headers(decision.ubi))
        engine_ms = (time.perf_counter() - started) * 1000
        out_headers = forwardable_headers(answer.headers)
        if answer.status != 200:
            # The engine refused the candidate request: the client gets the engine's answer to its
            # own request (the same error, same line/col; or a success when only the rewrite was
            # refused, e.g. a window above index.max_result_window), flagged as a bypass.
            return Forward("engine_error", orjson.dumps(parsed) if decision.body_changed else None,
                           _ubi_headers(decision.ubi))
        opensearch = _is_opensearch(answer.headers)
        # A UBI search is answered with its own query id (and recorded): never a remembered answer.
        recall = self._recall(method, targets, params, headers, credentials_of(raw_headers), decoded,
                              answer.body, opensearch) if decision.ubi is None and arm in _MEMO_ARMS else None
        arm_headers = self._arm_headers(arm)
        if isinstance(recall, Remembered):
            return Finished(200, _response_headers(out_headers) + arm_headers, recall.body, recall.outcome, "",
                            engine_ms, 0.0, recall.cache, upstream=answer.served_by, arm=self._arm_label(arm))
        data = parse_json(answer.body, "engine response")
        served = await self._serve(decision, data, upstream_headers, arm)
        scored = served.scored
        if scored.outcome == "failed":
            return self._fail_closed(scored, engine_ms, answer.served_by)
        merged = merge(data, decision, scored.scores, scored.last, scored.pinned, served.order)
        self._record(decision, merged, arm, served.teams, answer.body, upstream_headers, credentials(raw_headers))
        merged = filter_paths.apply(merged, decision.filter_path, opensearch=opensearch)
        body_out = orjson.dumps(merged, option=orjson.OPT_INDENT_2 if decision.pretty else 0)
        if recall is not None:
            self._remember(recall, scored, answer.body, body_out, opensearch)
        return Finished(200, _response_headers(out_headers) + _ubi_headers(decision.ubi) + arm_headers, body_out,
                        scored.outcome, scored.reason, engine_ms, scored.rerank_ms, scored.cache, scored.provider_ms,
                        answer.served_by, self._arm_label(arm))

    # --- experiment arms -----------------------------------------------------------------------

    def _record(self, plan: Plan, merged: Any, arm: Arm, teams: Sequence[Team | None], engine_body: bytes,
                headers: Sequence[tuple[bytes, bytes]], auth: tuple[tuple[bytes, bytes], ...]) -> None:
        """The UBI query id into the answer and the search's record onto the log; for a shadow
        experiment's lexical answer, the reranking behind it first (its record waits for it)."""
        record = self._ubi_record(plan.ubi, merged, arm, plan.page_from, teams) if plan.ubi is not None else None
        if self.shadow is not None and arm == "lexical":
            self._start_shadow(plan, engine_body, headers, record, auth)
        elif record is not None and self.query_log is not None:
            self.query_log.offer(record, auth)

    def _arm(self, ubi: ubi_ext.UbiRequest | None, headers: dict[str, str], client_addr: str | None) -> Arm:
        """The arm serving this search: sticky per unit (UBI client_id, else RERANK_EXPERIMENT_UNIT)."""
        if self.experiment.kind == "off":
            return "off"
        unit = unit_of(self.settings.rerank_experiment_unit, ubi.client_id if ubi is not None else None,
                       headers, client_addr)
        return assign(self.experiment, unit or "", self.settings.rerank_experiment_salt)

    def _arm_label(self, arm: Arm) -> str:
        return arm if self.experiment.kind != "off" else ""

    def _arm_headers(self, arm: Arm) -> list[tuple[bytes, bytes]]:
        return self._arm_headers_of([arm])

    def _arm_headers_of(self, arms: Sequence[str]) -> list[tuple[bytes, bytes]]:
        """`X-Rerank-Arm` while an experiment runs (an _msearch's arms comma-joined); none without one."""
        return [(b"x-rerank-arm", ",".join(arms).encode())] if self.experiment.kind != "off" and arms else []

    async def _serve(self, plan: Plan, data: Any, headers: Sequence[tuple[bytes, bytes]], arm: Arm,
                     query_id: str | None = None) -> _Served:
        """The arm's scores and order: none for the lexical arm (nothing is scored), the reranked
        order for `off`/`reranked`, the team draft of both for `interleaved`."""
        if arm == "lexical":
            return _Served(_Scored(None, "lexical", "experiment"))
        scored = await self._rerank(plan, data, headers)
        if arm != "interleaved" or scored.scores is None:
            return _Served(scored)
        reranked = rerank_order(scored.scores, scored.last, scored.pinned)
        order, teams = interleaved_order(reranked, query_id or (plan.ubi.query_id if plan.ubi else uuid.uuid4().hex))
        return _Served(scored, order, teams)

    def _start_shadow(self, plan: Plan, engine_body: bytes, headers: Sequence[tuple[bytes, bytes]],
                      record: dict[str, Any] | None, auth: tuple[tuple[bytes, bytes], ...]) -> None:
        """The reranked list of a lexically served search, computed after its answer; its record
        waits for it (or goes without it when every shadow slot is taken)."""
        assert self.shadow is not None
        if not self.shadow.start(self._shadow_job(plan, engine_body, headers, record, auth)) \
                and record is not None and self.query_log is not None:
            self.query_log.offer(record, auth)

    async def _shadow_job(self, plan: Plan, engine_body: bytes, headers: Sequence[tuple[bytes, bytes]],
                          record: dict[str, Any] | None, auth: tuple[tuple[bytes, bytes], ...]) -> float | None:
        """Rerank one search's candidates again from the engine's bytes; the seconds it took, None on failure."""
        started = time.perf_counter()
        try:
            data = parse_json(engine_body, "engine response")
            scored = await self._rerank(plan, data, headers)
            seconds = time.perf_counter() - started
            if scored.scores is None and scored.outcome == "fallback":
                return None
            if record is not None and isinstance(data, dict):
                merged = merge(data, plan, scored.scores, scored.last, scored.pinned)
                hits = merged.get("hits", {}).get("hits") if isinstance(merged.get("hits"), dict) else None
                record["shadow_object_ids"] = response_object_ids(hits, plan.ubi.object_id_field if plan.ubi else None)
            return seconds
        finally:
            if record is not None and self.query_log is not None:
                self.query_log.offer(record, auth)

    async def _bypass_with_ubi(self, bypass: Bypass, method: str, targets: str | None, params: dict[str, str],
                               raw_headers: list[tuple[bytes, bytes]]) -> Finished | Forward:
        """A bypassed search that carried `ext.ubi`: the engine's answer to it (the extension removed),
        read whole to answer the query id in it and record it; relayed when too large to hold."""
        assert bypass.ubi is not None  # decide() makes a Decided of a bypass only for these
        body = orjson.dumps(bypass.body)
        target = build_target(targets, "search", list(params.items()))
        ubi_headers = _ubi_headers(bypass.ubi)
        started = time.perf_counter()
        try:
            answer = await fetch_with_query_id(
                self.engine, method if method != "HEAD" else "GET", target, _rewrite_headers(raw_headers), body,
                bypass.ubi, self.query_log, credentials(raw_headers),
                filtered="filter_path" in params, pretty="pretty" in params and params["pretty"] != "false")
        except AnswerTooLarge:
            return Forward(bypass.reason, body, ubi_headers)
        return Finished(answer.status, _response_headers(forwardable_headers(answer.headers)) + ubi_headers,
                        answer.body, "bypass", bypass.reason, (time.perf_counter() - started) * 1000,
                        upstream=answer.served_by)

    def _ubi_record(self, ubi: ubi_ext.UbiRequest, merged: Any, arm: Arm, page_from: int,
                    teams: Sequence[Team | None] = ()) -> dict[str, Any] | None:
        """The query id into the answer (where the UBI plugin puts it, so filter_path applies to it
        as on the engine); the search's record, for the query log (None when nothing records)."""
        if not isinstance(merged, dict):
            return None
        ubi_ext.answer_ext(merged, ubi)
        if self.query_log is None:
            return None
        hits = merged.get("hits", {}).get("hits") if isinstance(merged.get("hits"), dict) else None
        returned = len(hits) if isinstance(hits, list) else 0
        return query_record(ubi, hits, arm=arm, teams=page_teams(teams, page_from, returned) if teams else ())

    def _recall(self, method: str, targets: str | None, params: dict[str, str], headers: dict[str, str],
                credentials: bytes, body: bytes, engine_body: bytes,
                opensearch: bool) -> Remembered | _MemoSlot | None:
        """The remembered answer to this request and engine answer; else where to remember the new
        one (None: no memo)."""
        memo = self.memo
        if memo is None:
            return None
        slot = _MemoSlot(request_key(method, targets, params, headers, body, credentials), credentials)
        if memo.expects(slot.request):
            slot.answer = memo.answer_digest(engine_body, opensearch=opensearch)
            found = memo.get(slot.request, slot.answer, engine_body) if slot.answer is not None else None
            if found is not None:
                if self.cache is not None:
                    self.cache.count_reused(found.window)
                return found
        return slot

    def _remember(self, slot: _MemoSlot, scored: _Scored, engine_body: bytes, body_out: bytes,
                  opensearch: bool) -> None:
        memo = self.memo
        if memo is None or scored.outcome not in ("reranked", "cached") or scored.scores is None or scored.pinned:
            return  # only wholly reranked answers: a fallback or partial is computed again, so reranking comes back
        answer = slot.answer or memo.answer_digest(engine_body, opensearch=opensearch)
        if answer is not None:  # kept as what it is next time: an answer that needs no provider work
            memo.put(slot.request, answer, body_out, "cached", "hit", len(scored.scores), scored.mapped,
                     slot.credentials)

    def _fail_closed(self, scored: _Scored, engine_ms: float, upstream: str) -> Finished:
        error = ProxyError(503, "rerank_unavailable_exception",
                           f"the reranker failed and RERANK_FAIL_MODE=closed ({scored.reason})")
        return Finished(503, [(b"content-type", b"application/json")], error.body(), "error",
                        scored.reason, engine_ms, scored.rerank_ms, upstream=upstream)

    async def _rerank(self, plan: Plan, data: Any, headers: Sequence[tuple[bytes, bytes]]) -> _Scored:
        """Scores for the window hits, or None scores (lexical order) with the reason why."""
        hits = data.get("hits", {}).get("hits") if isinstance(data, dict) else None
        if not isinstance(hits, list):
            return _Scored(None, "fallback", "no_hits_in_response")
        window = hits[: plan.window]
        if not window:
            return _Scored(None, "lexical", "no_hits")  # nothing to rerank: the engine's answer
        mapped = await mapped_fields(window, plan.rule, self._rule_for, self.text_fields, headers)
        texts, digests = self._texts.texts(window, plan.rule, self._rule_for, mapped)
        mode = resolve_mode(plan.options.score_mode, self.settings.rerank_score_mode, self.settings.rerank_provider)
        weight = resolve_weight(plan.options.blend_weight, self.settings.rerank_blend_weight)
        lexical = [h.get("_score") if isinstance(h, dict) else None for h in window]
        started = time.perf_counter()
        pinned: list[int] = []
        with provider_waits() as waits:
            try:
                try:
                    scored = await final_scores(self.cache, plan.query_text, texts, lexical, mode, weight, digests)
                except RerankVectorsCold as cold:
                    pinned = partial_pins(texts, cold.cold_texts)
                    if not pinned:
                        raise
                    scored = await score_warm(self.cache, plan.query_text, texts, lexical, mode, weight, digests,
                                            pinned)
            except RerankError as exc:
                elapsed = (time.perf_counter() - started) * 1000
                reason = reason_of(exc)
                if self.settings.rerank_fail_mode == "closed":
                    return _Scored(None, "failed", reason, elapsed, provider_ms=waits.ms)
                return _Scored(None, "fallback", reason, elapsed, provider_ms=waits.ms)
        if scored.mode == "lexical":
            return _Scored(scored.final, "lexical", "score_mode")  # asked for: no reranker involved
        elapsed = (time.perf_counter() - started) * 1000
        status = scored.outcome.status if scored.outcome is not None else "hit"
        outcome = "cached" if status == "hit" and not pinned else "reranked"
        return _Scored(scored.final, outcome, PARTIAL_REASON if pinned else "", elapsed, status, scored.blanks,
                       tuple(mapped or ()), waits.ms, pinned)

    # --- _msearch ----------------------------------------------------------------------------

    async def msearch(self, method: str, targets: str | None, params: dict[str, str],
                      headers: dict[str, str], raw_headers: list[tuple[bytes, bytes]],
                      body: bytes, client_addr: str | None = None) -> Finished | Forward:
        decoded = decode_body(body, headers.get("content-encoding", ""), self.settings.max_search_body_bytes)
        try:
            pairs = parse_ndjson(decoded, self.settings.max_msearch_searches)
        except EngineMustAnswer as exc:
            return Forward(exc.reason)
        try:
            # filter_path applies to the whole _msearch answer (`responses.hits.hits._id`): the
            # proxy applies it after merging, so the sub-searches fetch whole candidates.
            client_filter = filter_paths.parse(params.get("filter_path"))
        except ValueError:
            return Forward("filter_path")
        plans: list[Plan | None] = []
        ubis: list[ubi_ext.UbiRequest | None] = []
        lines: list[bytes] = []
        client_lines: list[bytes] = []
        if not self._plan_subs(pairs, targets, params, headers, plans, lines, client_lines, ubis):
            return Forward("bypass", b"\n".join(lines) + b"\n")
        upstream_headers = _rewrite_headers(raw_headers)
        keep = [(k, v) for k, v in params.items()
                if k not in ("from", "size", "_source", "_source_includes", "_source_excludes", "filter_path")]
        target = build_target(targets, "msearch", keep)
        started = time.perf_counter()
        upstream_headers = [(k, v) if k.lower() != b"content-type" or b"ndjson" in v or b"vnd." in v
                            else (k, b"application/x-ndjson") for k, v in upstream_headers]
        try:
            answer = await self.engine.fetch(method, target, upstream_headers, b"\n".join(lines) + b"\n")
        except AnswerTooLarge:
            return Forward("candidates_too_large", b"\n".join(client_lines) + b"\n")
        engine_ms = (time.perf_counter() - started) * 1000
        out_headers = forwardable_headers(answer.headers)
        if answer.status != 200:
            # As for _search: the engine answers the client's own _msearch.
            return Forward("engine_error", b"\n".join(client_lines) + b"\n")
        data = parse_json(answer.body, "engine response")
        responses = data.get("responses") if isinstance(data, dict) else None
        if not isinstance(responses, list) or len(responses) != len(plans):
            raise ProxyError(502, "proxy_upstream_response_exception",
                             "the engine's _msearch reply has the wrong shape")
        started = time.perf_counter()
        arms = [self._arm(ubi, headers, client_addr) if plan is not None else "off" for plan, ubi in zip(plans, ubis)]
        teams: list[tuple[Team | None, ...]] = [()] * len(plans)
        scored = await self._rerank_subs(plans, responses, upstream_headers, params.get("max_concurrent_searches"),
                                         arms, teams)
        rerank_ms = (time.perf_counter() - started) * 1000
        outcomes = [s for s in scored if s]
        if self.settings.rerank_fail_mode == "closed" and "failed" in outcomes:
            return self._fail_closed(_Scored(None, "failed", "msearch"), engine_ms, answer.served_by)
        summary = ",".join(sorted({o if o != "failed" else "fallback" for o in outcomes})) or "bypass"
        self._record_subs(plans, ubis, responses, arms, teams, credentials(raw_headers))
        data = filter_paths.apply(data, client_filter, opensearch=_is_opensearch(answer.headers))
        served_arms = sorted({arm for arm, plan in zip(arms, plans) if plan is not None})
        return Finished(200, _response_headers(out_headers) + self._arm_headers_of(served_arms), orjson.dumps(data),
                        summary, "", engine_ms, rerank_ms, upstream=answer.served_by,
                        arm=",".join(served_arms) if self.experiment.kind != "off" else "")

    def _record_subs(self, plans: Sequence[Plan | None], ubis: Sequence[ubi_ext.UbiRequest | None],
                     responses: Sequence[Any], arms: Sequence[Arm], teams: Sequence[Sequence[Team | None]],
                     auth: tuple[tuple[bytes, bytes], ...]) -> None:
        """Each sub-search with the UBI extension that the engine answered: its query id and record."""
        for plan, ubi, response, arm, drafted in zip(plans, ubis, responses, arms, teams):
            if ubi is not None and isinstance(response, dict) and "error" not in response:
                record = self._ubi_record(ubi, response, arm, plan.page_from if plan is not None else 0, drafted)
                if record is not None and self.query_log is not None:
                    self.query_log.offer(record, auth)

    def _plan_subs(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]], targets: str | None,
                   params: dict[str, str], headers: dict[str, str], plans: list[Plan | None], lines: list[bytes],
                   client_lines: list[bytes], ubis: list[ubi_ext.UbiRequest | None]) -> bool:
        """Plan each sub-search of an `_msearch` (None for a bypassed one) and write the lines of the
        candidate request and of the client's own (`rerank` and `ext.ubi` removed, the latter kept in
        `ubis`); True when any is reranked."""
        sub_params = {k: v for k, v in params.items()
                      if k not in ("max_concurrent_searches", "max_concurrent_shard_requests", "filter_path")}
        any_plan = False
        for header, search_body in pairs:
            index = header.get("index")
            if isinstance(index, list):
                index = ",".join(str(i) for i in index)
            sub_targets = index if isinstance(index, str) and index else targets
            decision = plan_search(sub_targets, sub_params, search_body, headers, self.settings)
            ubis.append(decision.ubi)
            client_lines += [orjson.dumps(header), orjson.dumps(search_body)]  # `rerank` removed
            if isinstance(decision, Plan):
                any_plan = True
                plans.append(decision)
                lines.append(orjson.dumps(header))
                lines.append(orjson.dumps(decision.body))
            else:
                plans.append(None)
                lines.append(orjson.dumps(header))
                lines.append(orjson.dumps(decision.body if decision.body is not None else {}))
        return any_plan

    async def _rerank_subs(self, plans: list[Plan | None], responses: list[Any],
                           headers: Sequence[tuple[bytes, bytes]], asked_concurrency: str | None,
                           arms: Sequence[Arm], teams: list[tuple[Team | None, ...]]) -> list[str]:
        """Each sub-search's outcome, reranked a few at a time and as one owner of queued work.

        One `_msearch` may carry a thousand sub-searches: run at once they would take every provider
        slot and fill the model's queues ahead of every other client, and then miss their own
        deadlines waiting for each other. So at most `sub_search_concurrency` run at once (a quarter
        of RERANK_MAX_CONCURRENCY, or fewer if the client's `max_concurrent_searches` says so), and
        the background embedder takes their documents in one turn, shared with other requests.
        Each is served in its own arm (`arms`); an interleaved one's teams go into `teams`.
        """
        outcomes = ["bypass"] * len(plans)
        pending = iter(range(len(plans)))

        async def run_in_turn() -> None:
            for n in pending:
                outcomes[n], teams[n] = await self._rerank_sub(plans[n], responses[n], headers, arms[n])

        limit = sub_search_concurrency(self.settings.rerank_max_concurrency, asked_concurrency)
        with owned_by(object()):
            await asyncio.gather(*(run_in_turn() for _ in range(min(limit, len(plans)))))
        return outcomes

    async def _rerank_sub(self, plan: Plan | None, response: Any, headers: Sequence[tuple[bytes, bytes]],
                          arm: Arm) -> tuple[str, tuple[Team | None, ...]]:
        """A sub-search's outcome and its teams; served in its arm (an _msearch gets no shadow scoring)."""
        if plan is None or not isinstance(response, dict) or "error" in response:
            return "bypass", ()  # not planned, or the engine refused this sub-search
        served = await self._serve(plan, response, headers, arm)
        scored = served.scored
        merge(response, plan, scored.scores, scored.last, scored.pinned, served.order)
        return scored.outcome, served.teams


def sub_search_concurrency(provider_slots: int, asked: str | None) -> int:
    """How many of one `_msearch`'s sub-searches are reranked at once: a quarter of the provider's
    slots (so one request leaves three quarters to everyone else), or the client's own
    `max_concurrent_searches` when that is lower."""
    limit = max(1, provider_slots // 4)
    if asked is not None and asked.isdigit() and int(asked) >= 1:
        limit = min(limit, int(asked))
    return limit


def parse_ndjson(raw: bytes, max_searches: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(header, body) pairs of an `_msearch` body. More than `max_searches` (MAX_MSEARCH_SEARCHES)
    is the proxy's 400, before any line is parsed; so is an odd number of lines. A line the proxy
    cannot rewrite faithfully raises EngineMustAnswer (see `parse_client_body`)."""
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if len(lines) // 2 > max_searches:
        raise ProxyError(400, "illegal_argument_exception",
                         f"an _msearch of {len(lines) // 2} searches is larger than the limit of {max_searches} "
                         "(MAX_MSEARCH_SEARCHES)")
    if len(lines) % 2:
        raise bad_request("The msearch request must be terminated by a newline [\\n] and have "
                          "an even number of lines (header, body)", "parsing_exception")
    pairs = []
    for n in range(0, len(lines), 2):
        header = parse_client_body(lines[n])
        body = parse_client_body(lines[n + 1])
        if not isinstance(header, dict) or not isinstance(body, dict):
            raise bad_request(f"msearch lines {n + 1}-{n + 2} must be JSON objects", "parsing_exception")
        pairs.append((header, body))
    return pairs


def _rewrite_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Client headers for a rewritten request: same auth, ids and versioned media types,
    but no length or compression (the proxy sends its own plain body and must parse the reply)."""
    headers = [(k, v) for k, v in forwardable_headers(raw) if k.lower() not in _DROP_ON_REWRITE]
    if not any(k.lower() == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    return headers


def _is_opensearch(raw: Sequence[tuple[bytes, bytes]]) -> bool:
    """Elasticsearch names itself in every answer (`X-Elastic-Product`); OpenSearch does not.
    The two differ in one filter_path detail (see filter_path.py)."""
    return not any(k.lower() == b"x-elastic-product" for k, _ in raw)


def _ubi_headers(ubi: ubi_ext.UbiRequest | None) -> list[tuple[bytes, bytes]]:
    header = ubi_ext.header(ubi) if ubi is not None else None
    return [header] if header is not None else []


def _response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k.lower() not in _DROP_ON_RESPONSE]



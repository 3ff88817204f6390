"""The relevance console: a page under /_rerank/console and its JSON API, behind the admin token.

Search teams adopt reranking once they have seen, query by query, what it changes. The page shows
the engine's lexical top 10 next to the reranked top 10, lets them switch scorer, window and hit
text fields, record relevance judgments, see nDCG@10 of both columns, and run query sets.

Routes (every one behind `guard`, the admin bearer-token check; the page also accepts the token
once as `?token=`, since a browser cannot send a header on first navigation, and then sets a
cookie so a reload works; the cookie opens the page only, every API call needs the bearer header):

GET  /_rerank/console                           the page (a sign-in form without a valid token;
                                                ?signin clears the page cookie and shows the form)
GET  /_rerank/console/api/options               scorer choices and defaults
GET  /_rerank/console/api/indices               user indices (no dot-indices)
GET  /_rerank/console/api/fields?index=         text fields of an index's mapping
POST /_rerank/console/api/compare               both columns for one query
GET|PUT /_rerank/console/api/judgments          judgments of a query / list of judged queries; set one (grade 0-3)
GET  /_rerank/console/api/judgments/{qrels.tsv,queries.jsonl,export.zip}   BEIR-style exports
POST /_rerank/console/api/metrics               nDCG@10 of both columns over the judged queries
POST /_rerank/console/api/batch                 queries, a saved set or a BEIR folder; NDJSON progress, then result
GET  /_rerank/console/api/querysets             saved sets: names and sizes (not their queries)
GET|PUT|DELETE /_rerank/console/api/querysets/{name}   one set's queries; save; delete

Compare, metrics and batch take the same options; [query_template] (the app's DSL with {{query}})
is what the engine is sent for every query of all three.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

from rerank_proxy.console import batch, engine, page
from rerank_proxy.console.beir import MAX_QUERIES, EvalQuery, load_folder, parse_qrels_tsv
from rerank_proxy.console.compare import compare, engine_json, to_json
from rerank_proxy.console.judgments import JudgmentStore, query_id, store_for
from rerank_proxy.console.ndcg import GRADES, K, ndcg_at_k
from rerank_proxy.console.params import index_name, parse_compare, query_text, require_object
from rerank_proxy.console.scorers import Scorers
from rerank_proxy.described_route import DescribedRoute
from rerank_proxy.errors import ProxyError, bad_request

if TYPE_CHECKING:
    from rerank_proxy.runtime import Runtime

PREFIX = page.CONSOLE_PATH
API = f"{PREFIX}/api"
MAX_BODY_BYTES = 20 * 1024 * 1024
_SET_NAME = re.compile(r"^[\w .-]{1,80}$")

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Handler], Handler]


def _json(data: Any, status: int = 200) -> Response:
    return Response(engine_json(data), status, media_type="application/json",
                    headers={"cache-control": "no-store"})


async def _body(request: Request) -> Any:
    """The JSON body, read up to MAX_BODY_BYTES (a larger one is refused before it is all read)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProxyError(413, "content_too_long_exception", f"request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None


def _errors(handler: Handler) -> Handler:
    """Errors in the engine's JSON shape, as every other proxy endpoint answers them."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ProxyError as exc:
            return Response(exc.body(), exc.status, media_type="application/json")
    return wrapped


def _with_bearer(request: Request, token: str) -> Request:
    try:
        value = f"Bearer {token}".encode("latin-1")
    except UnicodeEncodeError:  # cannot be a valid header value, so it cannot match either
        return request
    scope = dict(request.scope)
    scope["headers"] = [*request.scope["headers"], (b"authorization", value)]
    return Request(scope, request.receive)


def _token_from_query(handler: Handler) -> Handler:
    """Let `?token=` stand in for the Authorization header (first navigation of a browser)."""
    async def wrapped(request: Request) -> Response:
        token = request.query_params.get("token")
        if token and "authorization" not in request.headers:
            request = _with_bearer(request, token)
        return await handler(request)
    return wrapped


def _download(body: str | bytes, filename: str, media_type: str) -> Response:
    return Response(body, media_type=media_type, headers={"content-disposition": f'attachment; filename="{filename}"',
                                                          "cache-control": "no-store"})


def _optional_index(request: Request) -> str | None:
    value = request.query_params.get("index")
    return index_name(value) if value else None


def _set_name(name: str) -> str:
    if not _SET_NAME.match(name):
        raise bad_request("a query set name is 1-80 letters, digits, spaces, dots or dashes")
    return name


async def _eval_items(body: dict[str, Any], index: str, store: JudgmentStore) -> list[EvalQuery]:
    """A batch's queries, each with its qrels: a BEIR folder on the server, a saved query set, or a
    list with optional qrels; queries without given qrels get the stored judgments."""
    if body.get("beir_path"):
        return await _beir_items(body)
    queries = await _listed_queries(body, store)
    qrels = _given_qrels(body.get("qrels"))
    items = _distinct_items(queries, qrels, index)
    stored = await store.get_many(index, [item.text for item in items if item.qrels is None])
    return [item if item.qrels is not None else EvalQuery(item.id, item.text, stored[item.text]) for item in items]


async def _beir_items(body: dict[str, Any]) -> list[EvalQuery]:
    """The queries and qrels of the BEIR folder at [beir_path] ([split], up to [limit] queries)."""
    if not isinstance(body["beir_path"], str):
        raise bad_request("[beir_path] must be a folder path")
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise bad_request("[limit] must be a positive integer")
    # up to 2 x 200 MB of files: read and parsed off the event loop
    return await asyncio.to_thread(load_folder, body["beir_path"], str(body.get("split") or "test"), limit)


async def _listed_queries(body: dict[str, Any], store: JudgmentStore) -> list[Any]:
    """[queries] as sent, or the saved set named by [query_set]; at most MAX_QUERIES."""
    queries = body.get("queries")
    if body.get("query_set") is not None:
        if queries is not None or not isinstance(body["query_set"], str):
            raise bad_request("[query_set] is the name of a saved set, instead of [queries]")
        queries = await store.query_set(_set_name(body["query_set"]))
        if queries is None:
            raise ProxyError(404, "resource_not_found_exception", f"no saved query set [{body['query_set']}]")
    if not isinstance(queries, list) or not queries:
        raise bad_request("give [queries] (a list of texts or {id, text}), [query_set] or [beir_path]")
    if len(queries) > MAX_QUERIES:
        raise bad_request(f"at most {MAX_QUERIES} queries per run")
    return queries


def _given_qrels(qrels: Any) -> dict[str, dict[str, int]] | None:
    """[qrels] as qrels TSV text or {query-id: {corpus-id: grade}}; None when not given."""
    if isinstance(qrels, str):
        qrels = parse_qrels_tsv(qrels)
    if qrels is not None and not (isinstance(qrels, dict) and all(_is_grades(d) for d in qrels.values())):
        raise bad_request("[qrels] must be qrels TSV text or {query-id: {corpus-id: grade}}")
    return qrels


def _is_grades(docs: Any) -> bool:
    return isinstance(docs, dict) and all(isinstance(g, int) and not isinstance(g, bool) for g in docs.values())


def _distinct_items(queries: list[Any], qrels: dict[str, dict[str, int]] | None, index: str) -> list[EvalQuery]:
    """One item per query id (the first of repeats), with its given qrels, if any were given."""
    items, seen = [], set()
    for item in queries:
        if isinstance(item, dict):
            text = query_text(item.get("text"), "queries[].text")
            qid = str(item.get("id") or query_id(index, text))
        else:
            text = query_text(item, "queries[]")
            qid = query_id(index, text)
        if qid in seen:
            continue
        seen.add(qid)
        items.append(EvalQuery(qid, text,
                               None if qrels is None else {str(k): v for k, v in qrels.get(qid, {}).items()}))
    return items


def _grade(value: Any) -> int | None:
    """A judgment's [grade]: 0 to len(GRADES) - 1, or None (clears the judgment)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value < len(GRADES)):
        raise bad_request(f"[grade] must be 0 ({GRADES[0]}) to {len(GRADES) - 1} ({GRADES[-1]}); binary "
                          "judgments are 0 or 1; null clears the judgment")
    return value


def console_routes(runtime: Runtime, guard: Guard) -> list[BaseRoute]:
    """Routes under /_rerank/console; `guard(handler)` wraps a handler with the admin-token check."""
    return ConsoleEndpoints(runtime, guard).routes()


class ConsoleEndpoints:
    """The console's handlers, bound to one worker's runtime, its scorers and the judgment store."""

    def __init__(self, runtime: Runtime, guard: Guard) -> None:
        self.runtime = runtime
        self.guard = guard
        self.scorers = Scorers(runtime)
        runtime.closers.append(self.scorers.aclose)  # extra rerankers the console built are closed at shutdown
        self.store = store_for(runtime.settings)
        runtime.closers.append(self.store.aclose)
        self._guarded_page = _token_from_query(guard(self.page_view))

    def api(self, handler: Handler) -> Handler:
        return self.guard(_errors(handler))

    def routes(self) -> list[BaseRoute]:
        def api(path: str, handler: Handler, methods: list[str], meaning: str) -> BaseRoute:
            return DescribedRoute(f"{API}{path}", self.api(handler), methods=methods, meaning=meaning, token=True)

        return [
            DescribedRoute(PREFIX, self.page_or_login, methods=["GET"], token=True,
                           meaning="the relevance console (a sign-in form without the token; ?token= signs in)"),
            api("/options", self.options, ["GET"], "console: scorer choices and defaults"),
            api("/indices", self.indices, ["GET"], "console: user indices"),
            api("/fields", self.fields, ["GET"], "console: text fields of an index (?index=)"),
            api("/compare", self.compare_one, ["POST"], "console: lexical and reranked top 10 of one query"),
            api("/judgments", self.judgments, ["GET", "PUT"], "console: judgments of a query, or set one"),
            api("/judgments/qrels.tsv", self.qrels_tsv, ["GET"], "console: judgments as BEIR qrels"),
            api("/judgments/queries.jsonl", self.queries_jsonl, ["GET"], "console: judged queries as BEIR queries"),
            api("/judgments/export.zip", self.export_zip, ["GET"], "console: qrels and queries in one zip"),
            api("/metrics", self.metrics, ["POST"], "console: nDCG@10 of both columns over the judged queries"),
            api("/batch", self.batch_view, ["POST"], "console: run a query set or BEIR folder (NDJSON progress)"),
            api("/querysets", self.query_sets, ["GET"], "console: saved query sets"),
            api("/querysets/{name}", self.query_set, ["GET", "PUT", "DELETE"], "console: one saved query set"),
        ]

    # --- the page ----------------------------------------------------------------------------------

    async def page_view(self, request: Request) -> Response:
        return page.page()

    async def page_or_login(self, request: Request) -> Response:
        """The page; a sign-in form for a browser without a valid token (or one signing out)."""
        token = self.runtime.settings.admin_token
        if "signin" in request.query_params:
            response: Response = page.login()
            response.delete_cookie(page.PAGE_COOKIE, path=PREFIX)
            return response
        if token and page.cookie_matches(request.cookies.get(page.PAGE_COOKIE, ""), token) \
                and "authorization" not in request.headers and "token" not in request.query_params:
            request = _with_bearer(request, token)  # a reload: the page, never the API, trusts the cookie
        response = await self._guarded_page(request)
        if response.status_code == 200 and token:
            page.set_cookie(response, token, secure=request.url.scheme == "https")
        elif response.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            return page.login(rejected="token" in request.query_params)
        return response

    # --- options, indices, fields, compare ---------------------------------------------------------

    async def options(self, request: Request) -> Response:
        s = self.runtime.settings
        return _json({
            "providers": self.scorers.choices(),
            "defaults": {"window": s.rerank_window, "fields": list(s.rerank_fields), "template": s.rerank_template,
                         "max_chars": s.rerank_max_chars, "score_mode": s.rerank_score_mode,
                         "blend_weight": s.rerank_blend_weight},
            "limits": {"max_window": 1000, "max_size": 50}, "k": K,
            "judgments_file": str(self.store.path), "grades": list(GRADES),
        })

    async def indices(self, request: Request) -> Response:
        return _json({"indices": await engine.list_indices(self.runtime)})

    async def fields(self, request: Request) -> Response:
        index = index_name(request.query_params.get("index"))
        return _json({"index": index, "fields": await engine.text_fields(self.runtime, index)})

    async def compare_one(self, request: Request) -> Response:
        opts = parse_compare(await _body(request))
        result = to_json(await compare(self.runtime, self.scorers, opts))
        judged = await self.store.get(opts.index, result["query"])
        result["query_id"] = query_id(opts.index, result["query"])
        result["judgments"] = judged
        result["ndcg"] = {"k": K, "lexical": ndcg_at_k([h["id"] for h in result["lexical"]], judged),
                          "reranked": ndcg_at_k([h["id"] for h in result["reranked"]], judged)}
        return _json(result)

    # --- judgments ---------------------------------------------------------------------------------

    async def judgments(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._judgments_of(request)
        return await self._set_judgment(request)

    async def _judgments_of(self, request: Request) -> Response:
        """One query's judgments (?query=), or the judged queries of the index."""
        index = index_name(request.query_params.get("index"))
        text = request.query_params.get("query")
        if text:
            text = query_text(text)
            return _json({"query_id": query_id(index, text), "judgments": await self.store.get(index, text)})
        return _json({"queries": [{"id": q.id, "query": q.text, "judged": len(q.docs),
                                   "relevant": sum(1 for g in q.docs.values() if g > 0)}
                                  for q in await self.store.queries(index)]})

    async def _set_judgment(self, request: Request) -> Response:
        body = require_object(await _body(request))
        index, text = index_name(body.get("index")), query_text(body.get("query"))
        doc_id = body.get("doc_id")
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512:
            raise bad_request("[doc_id] must be a document _id")
        docs = await self.store.set(index, text, doc_id, _grade(body.get("grade")))
        return _json({"query_id": query_id(index, text), "judgments": docs})

    async def qrels_tsv(self, request: Request) -> Response:
        return _download(await self.store.qrels_tsv(_optional_index(request)), "qrels.tsv",
                         "text/tab-separated-values")

    async def queries_jsonl(self, request: Request) -> Response:
        return _download(await self.store.queries_jsonl(_optional_index(request)), "queries.jsonl",
                         "application/x-ndjson")

    async def export_zip(self, request: Request) -> Response:
        return _download(await self.store.export_zip(_optional_index(request)), "judgments-beir.zip",
                         "application/zip")

    # --- metrics and batches -----------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        opts = parse_compare(await _body(request), need_query=False)
        await self.scorers.get(opts.provider, opts.model)  # a bad provider choice is a 400, not n row errors
        items = [EvalQuery(q.id, q.text, q.docs) for q in await self.store.queries(opts.index)]
        return _json(await batch.collect(self.runtime, self.scorers, opts, items))

    async def batch_view(self, request: Request) -> Response:
        body = require_object(await _body(request))
        opts = parse_compare(body, need_query=False)
        items = await _eval_items(body, opts.index, self.store)
        await self.scorers.get(opts.provider, opts.model)

        async def lines() -> AsyncIterator[bytes]:
            async for event in batch.run(self.runtime, self.scorers, opts, items):
                yield orjson.dumps(event) + b"\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={"cache-control": "no-store"})

    # --- query sets --------------------------------------------------------------------------------

    async def query_sets(self, request: Request) -> Response:
        return _json({"sets": [{"name": s.name, "queries": s.queries, "saved_at": round(s.saved_at, 3)}
                               for s in await self.store.query_sets()]})

    async def query_set(self, request: Request) -> Response:
        name = _set_name(request.path_params["name"])
        if request.method == "GET":
            texts = await self.store.query_set(name)
            if texts is None:
                raise ProxyError(404, "resource_not_found_exception", f"no saved query set [{name}]")
            return _json({"name": name, "queries": texts})
        if request.method == "DELETE":
            return _json({"deleted": await self.store.delete_set(name)})
        return await self._save_set(request, name)

    async def _save_set(self, request: Request, name: str) -> Response:
        body = require_object(await _body(request))
        texts = body.get("queries")
        if not isinstance(texts, list):
            raise bad_request("[queries] must be a list of query texts")
        cleaned = list(dict.fromkeys(query_text(t, "queries[]") for t in texts))
        await self.store.save_set(name, cleaned)
        return _json({"name": name, "queries": cleaned})

"""`rerank-proxy warm --index NAME`: embed every document of an index into the local vector store.

A search whose candidates are all stored costs the built-in model one query embedding; a cold one
embeds up to a window of documents first (seconds on a small CPU). Warming ahead of traffic moves
that cost out of the search path. Texts are built exactly as the proxy builds them (same rule from
the same environment, same `hit_texts`), so the vector keys match; --fields/--template override the
rule when the proxy is configured differently from this shell.

    rerank-proxy warm --index products
    rerank-proxy warm --index docs --url http://es:9200 --fields title,body --batch 512

`queue_written` is the same warming from the write path: documents written through the proxy are
queued for the background embedder from the body the proxy relays anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sqlite3
import sys
import time
from typing import Any

import httpx

from rerank_proxy.config import ConfigError, IndexRule, Settings, load_settings
from rerank_proxy.local.embedder import Warmer
from rerank_proxy.search.hit_text import RuleMemo, hit_text, hit_texts, needed_source_fields

SCROLL_KEEP_ALIVE = "5m"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--index", required=True, help="index (or pattern/alias) to read")
    parser.add_argument("--url", help="engine URL (default: the first of UPSTREAM_URLS)")
    parser.add_argument("--fields", help="comma-separated _source fields of the text (overrides the rule)")
    parser.add_argument("--template", help="text template with {field} placeholders (overrides the rule)")
    parser.add_argument("--batch", type=int, default=256,
                        help="documents per engine page and model call (default: 256)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"rerank-proxy warm: {exc}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("rerank-proxy warm: --batch must be >= 1", file=sys.stderr)
        return 2
    rule = rule_from(settings, args.index, fields=args.fields, template=args.template)
    overridden = args.fields is not None or args.template is not None
    url = (args.url or settings.upstream_urls[0]).rstrip("/")
    try:
        return asyncio.run(warm(settings, url, args.index, rule, args.batch, per_index_rules=not overridden))
    except KeyboardInterrupt:
        print("interrupted; vectors embedded so far are kept", file=sys.stderr)
        return 130


def rule_from(settings: Settings, index: str, *, fields: str | None = None,
              template: str | None = None) -> IndexRule:
    """The rule the proxy would apply to `index`, with the command line's overrides."""
    rule = settings.rule_for(index)
    if rule is None:
        print(f"note: searches on {index!r} are not reranked under RERANK_INDICES/RERANK_RULES; "
              "warming with the default text rule", file=sys.stderr)
        rule = settings.default_rule(index)
    if template is not None:
        rule = dataclasses.replace(rule, template=template.replace("\\n", "\n"))
    elif fields is not None:
        rule = dataclasses.replace(rule, template="",
                                   fields=tuple(f.strip() for f in fields.split(",") if f.strip()))
    return rule


async def warm(settings: Settings, url: str, index: str, rule: IndexRule, batch: int, *,
               per_index_rules: bool = True) -> int:
    """Scroll through the index and store a vector for every text not stored yet.

    With `per_index_rules`, each hit's text follows the rule of its concrete `_index`, as in the
    search pipeline (it matters when `index` is an alias or pattern and RERANK_RULES differ).
    """
    from tqdm import tqdm

    from rerank_proxy.local.reranker import LocalReranker

    reranker = LocalReranker(settings)
    rule_for = RuleMemo(settings.rule_for) if per_index_rules else None
    started = time.perf_counter()
    seen = new = 0
    try:
        async with _engine_client(settings) as client:
            source = None if per_index_rules and settings.rerank_rules else needed_source_fields(rule)
            scroll = _Scroll(client, url, index, batch, source)
            try:
                hits, total = await scroll.first()
                with tqdm(total=total, unit="doc", desc=f"warming {index}", file=sys.stderr) as bar:
                    while hits:
                        following = asyncio.create_task(scroll.next())
                        try:
                            texts = hit_texts(hits, rule, rule_for)
                            new += await reranker.embed_documents(texts)
                        except BaseException:
                            following.cancel()
                            raise
                        seen += len(hits)
                        bar.update(len(hits))
                        bar.set_postfix(new=new)
                        hits = await following
            finally:
                await scroll.clear()
    except _EngineError as exc:
        print(f"rerank-proxy warm: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        print(f"rerank-proxy warm: cannot write the vector store {reranker.store.path}: {exc}", file=sys.stderr)
        return 1
    finally:
        await reranker.aclose()
    elapsed = time.perf_counter() - started
    print(f"{index}: {seen} documents, {new} newly embedded, {seen - new} already stored "
          f"({elapsed:.1f} s; store {reranker.store.path}, model {reranker.model})")
    return 0


async def queue_written(warmer: Warmer, settings: Settings, method: str, path: str, body: bytes) -> int:
    """Queue the documents of a relayed write (`_bulk`, `_doc`, `_create`, `_update`) for embedding.

    Call it after the write has been relayed, as a task nobody awaits: parsing runs on a thread, a
    full queue drops documents (counted by the embedder), and nothing here can fail the write.
    Bodies above MAX_SEARCH_BODY_BYTES are skipped: a huge bulk would cost more to parse than the
    searches will save. Returns how many documents were queued.
    """
    if not body or len(body) > settings.max_search_body_bytes:
        return 0
    try:
        texts = await asyncio.to_thread(written_texts, settings, method, path, body)
        return warmer.submit_texts(texts)
    except Exception as exc:  # a bug here must never reach the write
        log.warning("write warming skipped a %s %s: %s", method, path, exc)
        return 0


async def warm_on_start(warmer: Warmer, settings: Settings) -> int:
    """Read the LOCAL_WARM_ON_START indices and queue their texts at start-up priority.

    Meant as a background task of a starting proxy: searches' and writes' documents still go
    first, the queue is filled only to half (back-pressure, so nothing is dropped), and progress
    is logged. Off by default: reading whole indices from the engine on every pod start is load a
    proxy should not add unasked, and traffic, writes and the shared Redis tier warm the store
    anyway. Returns how many documents were queued.
    """
    embedder = warmer.embedder
    if not settings.local_warm_on_start:
        return 0
    queued = 0
    url = settings.upstream_urls[0].rstrip("/")
    async with _engine_client(settings) as client:
        for index in settings.local_warm_on_start:
            rule = settings.rule_for(index) or settings.default_rule(index)
            source = None if settings.rerank_rules else needed_source_fields(rule)
            scroll = _Scroll(client, url, index, 256, source)
            rule_for = RuleMemo(settings.rule_for)
            seen = 0
            try:
                hits, total = await scroll.first()
                while hits:
                    await asyncio.to_thread(embedder.wait_below, max(1, embedder.max_queue // 2), 3600)
                    texts = hit_texts(hits, rule, rule_for)
                    queued += warmer.submit_texts(texts, startup=True)
                    seen += len(hits)
                    log.info("start-up warm of %s: %d of %s documents read, %d queued so far",
                             index, seen, total, queued)
                    hits = await scroll.next()
            except _EngineError as exc:
                log.warning("start-up warm of %s stopped: %s", index, exc)
            finally:
                await scroll.clear()
    return queued


def written_texts(settings: Settings, method: str, path: str, body: bytes) -> list[str]:
    """The rerank texts of the written documents whose index is reranked (same rule as searches)."""
    from rerank_proxy.local.write_docs import written_docs

    rules: dict[str, IndexRule | None] = {}
    texts = []
    for doc in written_docs(method, path, body):
        if doc.index not in rules:
            rules[doc.index] = settings.rule_for(doc.index)
        rule = rules[doc.index]
        if rule is not None:
            texts.append(hit_text(doc.source, rule))
    return texts


class _EngineError(Exception):
    pass


def _engine_client(settings: Settings) -> httpx.AsyncClient:
    verify: Any = settings.upstream_ca_file or settings.upstream_tls_verify
    cert: str | tuple[str, str] | None = None
    if settings.upstream_client_cert_file:
        cert = settings.upstream_client_cert_file
        if settings.upstream_client_key_file:
            cert = (settings.upstream_client_cert_file, settings.upstream_client_key_file)
    timeout = httpx.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s)
    return httpx.AsyncClient(verify=verify, cert=cert, timeout=timeout)


class _Scroll:
    """The scroll API (same on Elasticsearch and OpenSearch), in `_doc` order: the cheapest full read."""

    def __init__(self, client: httpx.AsyncClient, url: str, index: str, size: int,
                 source: tuple[str, ...] | None) -> None:
        self.client, self.url, self.index, self.size, self.source = client, url, index, size, source
        self.scroll_id: str | None = None

    async def first(self) -> tuple[list[dict], int | None]:
        body: dict[str, Any] = {"size": self.size, "sort": ["_doc"], "track_total_hits": True,
                                "_source": list(self.source) if self.source is not None else True}
        data = await self._call("POST", f"/{self.index}/_search", params={"scroll": SCROLL_KEEP_ALIVE},
                                json=body)
        total = data.get("hits", {}).get("total")
        return self._hits(data), total.get("value") if isinstance(total, dict) else total

    async def next(self) -> list[dict]:
        data = await self._call("POST", "/_search/scroll",
                                json={"scroll": SCROLL_KEEP_ALIVE, "scroll_id": self.scroll_id})
        return self._hits(data)

    async def clear(self) -> None:
        if self.scroll_id:
            try:
                await self.client.request("DELETE", self.url + "/_search/scroll",
                                          json={"scroll_id": [self.scroll_id]})
            except httpx.HTTPError:
                pass  # it expires by itself after SCROLL_KEEP_ALIVE
            self.scroll_id = None

    def _hits(self, data: dict) -> list[dict]:
        self.scroll_id = data.get("_scroll_id") or self.scroll_id
        return data.get("hits", {}).get("hits") or []

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = await self.client.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise _EngineError(f"cannot reach the engine at {_safe(self.url)}: {exc}") from None
        if response.status_code != 200:
            raise _EngineError(f"engine answered {response.status_code} to {method} {path}: {response.text[:500]}")
        return response.json()


def _safe(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = httpx.URL(url)
    return str(parts.copy_with(username=None, password=None)) if parts.userinfo else url

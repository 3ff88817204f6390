"""Warming the built-in model's vector store from inside the proxy: from writes, and at start-up.

Searches warm the store themselves (their cold documents go to the background embedder); this
module adds the documents of writes relayed through the proxy, and optionally whole indices at
start-up (LOCAL_WARM_ON_START), read through the same engine transport as every search.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rerank_proxy.config import IndexRule, Settings
from rerank_proxy.engine.scroll import Scroll, ScrollError
from rerank_proxy.engine.transport import EngineTransport
from rerank_proxy.local.warmer import Warmer
from rerank_proxy.local.write_docs import written_docs
from rerank_proxy.search.text.hit_text import MappedFields, RuleMemo, hit_text, needed_source_fields
from rerank_proxy.search.text.text_fields import Headers, TextFieldCache, mapped_hit_texts

log = logging.getLogger("rerank_proxy.warm")


async def queue_written(warmer: Warmer, settings: Settings, method: str, path: str, body: bytes,
                        fields: TextFieldCache | None = None, headers: Headers = ()) -> int:
    """Queue the documents of a relayed write (`_bulk`, `_doc`, `_create`, `_update`) for embedding.

    Call it after the write has been relayed, as a task nobody awaits: parsing runs on a thread, a
    full queue drops documents (counted by the embedder), and nothing here can fail the write.
    Bodies above MAX_SEARCH_BODY_BYTES are skipped: a huge bulk would cost more to parse than the
    searches will save. The text fields come from `fields` (read with the writer's `headers`), as
    for a search. Returns how many documents were queued.
    """
    if not body or len(body) > settings.max_search_body_bytes:
        return 0
    try:
        docs = await asyncio.to_thread(_reranked_docs, settings, method, path, body)
        indices = {index for index, rule, _ in docs if rule.text_from_mapping}
        mapped = await fields.resolve(indices, headers) if fields is not None and indices else None
        texts = await asyncio.to_thread(_texts, docs, mapped)
        return warmer.submit_texts(texts)
    except Exception as exc:  # noqa: BLE001 - a bug here must never reach the write
        log.warning("write warming skipped a %s %s: %s", method, path, exc)
        return 0


async def warm_on_start(warmer: Warmer, settings: Settings, engine: EngineTransport,
                        fields: TextFieldCache | None = None) -> int:
    """Read the LOCAL_WARM_ON_START indices and queue their texts at start-up priority.

    Meant as a background task of a starting proxy: searches' and writes' documents still go
    first, the queue is filled only to half (back-pressure, so nothing is dropped), and progress
    is logged. Off by default: reading whole indices from the engine on every pod start is load a
    proxy should not add unasked, and traffic, writes and the shared Redis tier warm the store
    anyway. Texts take their fields from `fields`, as searches do. Returns how many documents were
    queued.
    """
    embedder = warmer.embedder
    if not settings.local_warm_on_start:
        return 0
    queued = 0
    for index in settings.local_warm_on_start:
        rule = settings.rule_for(index) or settings.default_rule(index)
        source = None if settings.rerank_rules else needed_source_fields(rule)
        scroll = Scroll(engine, index, 256, source)
        rule_for = RuleMemo(settings.rule_for)
        seen = 0
        try:
            hits, total = await scroll.first()
            while hits:
                await asyncio.to_thread(embedder.wait_below, max(1, embedder.max_queue // 2), 3600)
                texts = await mapped_hit_texts(hits, rule, rule_for, fields)
                queued += warmer.submit_texts(texts, startup=True)
                seen += len(hits)
                log.info("start-up warm of %s: %d of %s documents read, %d queued so far",
                         index, seen, total, queued)
                hits = await scroll.next()
        except ScrollError as exc:
            log.warning("start-up warm of %s stopped: %s", index, exc)
        finally:
            await scroll.clear()
    return queued


def written_texts(settings: Settings, method: str, path: str, body: bytes,
                  mapped: MappedFields | None = None) -> list[str]:
    """The rerank texts of the written documents whose index is reranked (same rule as searches)."""
    return _texts(_reranked_docs(settings, method, path, body), mapped)


def _reranked_docs(settings: Settings, method: str, path: str, body: bytes) -> list[tuple[str, IndexRule, Any]]:
    """(index, rule, source) of the written documents whose index is reranked."""
    rules: dict[str, IndexRule | None] = {}
    docs = []
    for doc in written_docs(method, path, body):
        if doc.index not in rules:
            rules[doc.index] = settings.rule_for(doc.index)
        rule = rules[doc.index]
        if rule is not None:
            docs.append((doc.index, rule, doc.source))
    return docs


def _texts(docs: list[tuple[str, IndexRule, Any]], mapped: MappedFields | None) -> list[str]:
    return [hit_text(source, rule, mapped.get(index) if mapped is not None and rule.text_from_mapping else None)
            for index, rule, source in docs]

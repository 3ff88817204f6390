"""`rerank-proxy warm --index NAME`: embed every document of an index into the local vector store.

A search whose candidates are all stored costs the built-in model one query embedding; a cold one
embeds up to a window of documents first (seconds on a small CPU). Warming ahead of traffic moves
that cost out of the search path. Texts are built exactly as the proxy builds them (same rule from
the same environment, the same text fields read from the index mapping), so the vector keys match;
--fields/--template override the rule when the proxy is configured differently from this shell.

    rerank-proxy warm --index products
    rerank-proxy warm --index docs --url http://es:9200 --fields title,body --batch 512

The proxy warms the store by itself too, from searches, writes and (optionally) at start-up:
see `rerank_proxy.local.warming`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sqlite3
import sys
import time

from rerank_proxy.config import ConfigError, IndexRule, Settings, load_settings
from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.engine.scroll import Scroll, ScrollError
from rerank_proxy.search.text.hit_text import RuleMemo, needed_source_fields
from rerank_proxy.search.text.text_fields import TextFieldCache, mapped_hit_texts


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
    if args.url:
        settings = dataclasses.replace(settings, upstream_urls=(args.url.rstrip("/"),))
    try:
        return asyncio.run(warm(settings, args.index, rule, args.batch, per_index_rules=not overridden))
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
        rule = dataclasses.replace(rule, template=template.replace("\\n", "\n"), text_from_mapping=False)
    elif fields is not None:
        rule = dataclasses.replace(rule, template="", text_from_mapping=False,
                                   fields=tuple(f.strip() for f in fields.split(",") if f.strip()))
    return rule


async def warm(settings: Settings, index: str, rule: IndexRule, batch: int, *,
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
        engine = EnginePool(settings)
        fields = TextFieldCache(engine) if settings.rerank_text_from_mapping else None
        source = None if per_index_rules and settings.rerank_rules else needed_source_fields(rule)
        scroll = Scroll(engine, index, batch, source)
        try:
            hits, total = await scroll.first()
            with tqdm(total=total, unit="doc", desc=f"warming {index}", file=sys.stderr) as bar:
                while hits:
                    following = asyncio.create_task(scroll.next())
                    try:
                        texts = await mapped_hit_texts(hits, rule, rule_for, fields)
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
            if fields is not None:
                await fields.aclose()
            engine.close()
    except ScrollError as exc:
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

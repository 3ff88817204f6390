"""`rerank-proxy demo`: a real local engine, the proxy on its embedded defaults, a sample corpus,
and each demo query's lexical and reranked top results side by side; then, unless `--no-eval`,
nDCG@10 lexical vs reranked on the Cranfield judgments, measured through the proxy
(rerank_proxy/demo_eval.py); with `--experiment`, the online experiment with simulated users
(rerank_proxy/demo_experiment.py).

Nothing is mocked: the engine is the official distribution started by the engine runner, the
proxy is the same ASGI app `rerank-proxy serve` runs, and the reranker is the configured one
(the built-in local model unless RERANK_PROVIDER says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from rerank_proxy.config import ConfigError, Settings, load_settings, non_defaults
from rerank_proxy.demo_corpus import DEMO_DOCS, DEMO_INDEX, DEMO_QUERIES
from rerank_proxy.demo_eval import CRANFIELD, EVAL_INDEX, Collection, EvalError, evaluate, load_collection, table

if TYPE_CHECKING:
    from rerank_proxy.local_engines.runner import EngineInfo

# Settings the demo sets itself, and why (anything else that differs came from the environment).
_DEMO_SETTINGS = {"UPSTREAM_URLS": "the demo's engine", "LOCAL_VECTOR_STORE": "a fresh store for this run"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["elasticsearch", "opensearch"], default="elasticsearch")
    parser.add_argument("--port", type=int, default=None, help="engine HTTP port (runner default)")
    parser.add_argument("--query", action="append", help="a query to show (repeatable); default: the demo queries")
    parser.add_argument("--size", type=int, default=5, help="hits shown per column")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the Cranfield nDCG@10 evaluation (a few minutes: the model embeds 1,400 documents)")
    parser.add_argument("--eval-dataset", type=Path, default=None,
                        help=f"BEIR folder of the evaluation (default: {CRANFIELD})")
    parser.add_argument("--eval-docs", type=int, default=None, help="evaluate on the first N documents only")
    parser.add_argument("--eval-queries", type=int, default=None, help="evaluate on the first N judged queries only")
    parser.add_argument("--experiment", action="store_true",
                        help="then run the online experiment with simulated users (A/B, interleaving and their A/A "
                             "controls on the evaluation collection; several minutes)")
    parser.add_argument("--experiment-searches", type=int, default=None,
                        help="simulated searches per experiment run (default: 5,000 A/B, 1,500 interleaving, "
                             "2,000 A/A, 500 A/A interleaving)")


def run(args: argparse.Namespace) -> int:
    from rerank_proxy.local_engines.distributions import machine_default
    from rerank_proxy.local_engines.runner import ensure_engine

    collection = None if args.no_eval and not args.experiment else _eval_collection(args)
    steps = 5 + (not args.no_eval) + bool(args.experiment)
    print(f"[1/{steps}] starting a local {args.engine} (first run downloads it; later runs reuse it)", flush=True)
    build, note = machine_default(args.engine)
    if note:
        print(f"      {note}", flush=True)
    try:
        engine = ensure_engine(args.engine, version=build.version, port=args.port,
                               say=lambda m: print(f"      {m}", flush=True))
    except RuntimeError as exc:  # EngineError, JavaNotFound, a failed download
        print(f"demo: the engine did not start: {exc}", file=sys.stderr)
        return 1
    print(f"      {engine.kind} {engine.version} at {engine.url}")
    # The engine outlives the demo (the next run starts in seconds), so however the demo ends, even
    # on an error or Ctrl-C, the last lines say it is still running and how to stop it.
    try:
        return _run_with_engine(args, engine, collection, steps)
    finally:
        print("\n" + "\n".join(closing_lines(engine)), flush=True)


def _run_with_engine(args: argparse.Namespace, engine: EngineInfo, collection: Collection | None,
                     steps: int) -> int:
    print(f"[2/{steps}] writing the sample corpus ({len(DEMO_DOCS)} documents) into index '{DEMO_INDEX}'",
          flush=True)
    bulk = load_demo_corpus(engine.url)

    with tempfile.TemporaryDirectory(prefix="rerank-demo-", ignore_cleanup_errors=True) as scratch:
        env = dict(os.environ)
        own = {"UPSTREAM_URLS"} | ({"LOCAL_VECTOR_STORE"} if "LOCAL_VECTOR_STORE" not in env else set())
        env["UPSTREAM_URLS"] = engine.url
        env.setdefault("LOCAL_VECTOR_STORE", str(Path(scratch) / "vectors.sqlite"))
        try:
            settings = load_settings(env)
        except ConfigError as exc:
            print(f"demo: configuration error: {exc}", file=sys.stderr)
            return 2
        print(f"[3/{steps}] starting the proxy (reranker: {settings.rerank_provider}, window {settings.rerank_window})",
              flush=True)
        print(f"      settings that differ from the shipped defaults: {describe_settings(settings, own)}", flush=True)
        with _proxy(settings) as proxy:
            proxy_url = proxy.server.url
            warm_from_writes(proxy, settings, bulk, steps)
            print(f"[5/{steps}] searching through the proxy at {proxy_url} and straight at the engine\n", flush=True)
            for query in args.query or DEMO_QUERIES:
                show(query, engine.url, proxy_url, args.size)
            if collection is not None and not args.no_eval:
                status = show_evaluation(proxy_url, settings, collection, own, steps)
                if status:
                    return status
        if args.experiment and collection is not None:
            return show_experiment(engine.url, settings, collection, own, steps, args.experiment_searches)
    return 0


def show_experiment(engine_url: str, settings: Settings, collection: Collection, own: set[str], steps: int,
                    searches: int | None) -> int:
    """The last step: simulated users in A/B, interleaving and the two A/A controls, with the report."""
    from contextlib import contextmanager

    from tqdm import tqdm

    from rerank_proxy import demo_experiment

    @contextmanager
    def start(run_settings: Settings) -> Iterator[str]:
        with _proxy(run_settings) as proxy:
            yield proxy.server.url

    def progress(name: str) -> Callable[[int, int], None]:
        bar = tqdm(total=None, unit="search", desc=f"      {name}", file=sys.stderr)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
        return update

    print(f"[{steps}/{steps}] the online experiment: simulated users (a cascade click model over the judgments of "
          f"{collection.name}) search through the proxy with UBI and click; the report is the proxy's own", flush=True)
    results = []
    try:
        for result in demo_experiment.run_modes(
                engine_url, settings, collection, start, searches=searches,
                say=lambda m: print(f"      {m}", flush=True), progress=progress):
            results.append(result)
    except (httpx.HTTPError, RuntimeError, EvalError) as exc:
        print(f"demo: the experiment failed: {exc}", file=sys.stderr)
        return 1
    print("\n" + demo_experiment.table(results) + "\n")
    print("95% intervals (| marks no difference):\n" + demo_experiment.interval_plot(results) + "\n")
    print(f"settings that differ from the shipped defaults: {describe_settings(settings, own)}, plus "
          "RERANK_EXPERIMENT per run and a generated ADMIN_TOKEN; fresh UBI indices per run", flush=True)
    return 0


def closing_lines(engine: EngineInfo) -> list[str]:
    """What the demo leaves behind: the engine still runs, the in-process proxy does not."""
    from rerank_proxy.local_engines.runner import DEFAULT_PORTS

    # `engine down --engine KIND` stops the one on the kind's default port; any other needs --port.
    which = f"--engine {engine.kind}" if engine.port == DEFAULT_PORTS[engine.kind] else f"--port {engine.port}"
    since = "was already running before the demo" if engine.reused else "was started by the demo"
    command = _command()
    return [
        f"still running: {engine.kind} {engine.version} at {engine.url} ({since}; the demo's indices stay in "
        "it), so the next demo starts in seconds",
        f"not running: the proxy (it ran inside the demo and stopped with it); to run one in front of this "
        f"engine: UPSTREAM_URLS={engine.url} {command} serve",
        f"stop the engine (and delete its data): {command} engine down {which}   "
        f"(`{command} engine status` lists the running ones)",
    ]


def _command() -> str:
    """`rerank-proxy` as the user can type it: `.venv/bin/rerank-proxy` under `make demo`, where
    it is not on PATH."""
    invoked = sys.argv[0]
    if Path(invoked).name != "rerank-proxy":  # e.g. `python -m rerank_proxy.cli`, or a test
        return "rerank-proxy"
    on_path = shutil.which("rerank-proxy")
    if on_path is not None and Path(on_path).resolve() == Path(invoked).resolve():
        return "rerank-proxy"
    return invoked


def _eval_collection(args: argparse.Namespace) -> Collection | None:
    """The judged set, read before anything starts: a missing default dataset skips the evaluation,
    a dataset the user named and that cannot be read ends the demo."""
    folder = args.eval_dataset or CRANFIELD
    try:
        return load_collection(folder, args.eval_docs, args.eval_queries)
    except EvalError as exc:
        if args.eval_dataset is not None:
            raise SystemExit(f"demo: {exc}") from None
        print(f"demo: no evaluation ({exc}); pass --eval-dataset PATH, or --no-eval", file=sys.stderr)
        return None


def describe_settings(settings: Settings, own: set[str]) -> str:
    changed = non_defaults(settings)
    if not changed:
        return "none"
    return ", ".join(f"{name}={value} ({_DEMO_SETTINGS[name] if name in own else 'from your environment'})"
                     for name, value in changed.items())


def show_evaluation(proxy_url: str, settings: Settings, collection: Collection, own: set[str], steps: int) -> int:
    """Step 6: the measurement through the proxy, with the embedder's progress on stderr."""
    from tqdm import tqdm

    print(f"[6/{steps}] nDCG@10 on {collection.name} through the proxy: writing {len(collection.docs)} documents into "
          f"'{EVAL_INDEX}' (write warming queues them for the model), then {len(collection.queries)} judged "
          "queries, lexical and reranked", flush=True)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="doc", desc="      embedding", file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()  # caught up: the bar's clock should not run on through the searches

    try:
        result = evaluate(proxy_url, settings, collection, progress=progress)
    except (EvalError, httpx.HTTPError) as exc:
        print(f"demo: the evaluation failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print("\n" + table(result))
    print(f"settings that differ from the shipped defaults: {describe_settings(settings, own)}; "
          f"index '{EVAL_INDEX}' (fresh), proxy on {proxy_url}", flush=True)
    return 0


def warm_from_writes(proxy: _proxy, settings: Any, bulk: bytes, steps: int = 5) -> None:
    """Queue the corpus the demo just wrote for the built-in model, as a write through the proxy
    would be, and wait for it: otherwise the first searches meet a cold store and answer lexically."""
    from rerank_proxy.local.warming import queue_written

    warmer = proxy.app.runtime.warmer if proxy.app.runtime is not None else None
    if warmer is None:
        print(f"[4/{steps}] (no local model: nothing to warm)", flush=True)
        return
    embedder = warmer.embedder
    queued = asyncio.run(queue_written(warmer, settings, "POST", f"/{DEMO_INDEX}/_bulk", bulk))
    started = time.perf_counter()
    print(f"[4/{steps}] embedding the {queued} written documents in the background ...", end="", flush=True)
    done = embedder.wait_idle(300)
    print(f" {'done' if done else 'still going'} in {time.perf_counter() - started:.1f} s", flush=True)


def load_demo_corpus(url: str) -> bytes:
    """Index the corpus; returns the `_bulk` body that wrote it."""
    with httpx.Client(base_url=url, timeout=60) as client:
        client.delete(f"/{DEMO_INDEX}")
        client.put(f"/{DEMO_INDEX}", json={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}}).raise_for_status()
        lines = []
        for i, doc in enumerate(DEMO_DOCS):
            lines.append(f'{{"index":{{"_id":"{i}"}}}}')
            lines.append(httpx.Response(200, json=doc).text)
        body = ("\n".join(lines) + "\n").encode()
        client.post(f"/{DEMO_INDEX}/_bulk?refresh=true", content=body,
                    headers={"content-type": "application/x-ndjson"}).raise_for_status()
    return body


def _search(url: str, query: str, size: int) -> tuple[list[dict[str, Any]], httpx.Headers, float]:
    body = {"query": {"multi_match": {"query": query, "fields": ["title", "body"]}}, "size": size}
    started = time.perf_counter()
    response = httpx.post(f"{url}/{DEMO_INDEX}/_search", json=body, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return response.json()["hits"]["hits"], response.headers, elapsed


def show(query: str, engine_url: str, proxy_url: str, size: int) -> None:
    lexical, _, lexical_ms = _search(engine_url, query, size)
    reranked, headers, reranked_ms = _search(proxy_url, query, size)
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 12) // 2)
    print(f'query: "{query}"')
    print(f"  {'engine (lexical)':<{width}}  {'through rerank-proxy':<{width}}")
    for rank in range(size):
        left = _cell(lexical, rank, width)
        right = _cell(reranked, rank, width)
        print(f"{rank + 1:>2} {left:<{width}}  {right:<{width}}")
    print(f"  engine {lexical_ms:.0f} ms | proxy {reranked_ms:.0f} ms, X-Rerank: {headers.get('x-rerank')}, "
          f"{headers.get('server-timing', '')}\n", flush=True)


def _cell(hits: list[dict[str, Any]], rank: int, width: int) -> str:
    if rank >= len(hits):
        return ""
    hit = hits[rank]
    text = f"{hit['_score']:7.3f}  {hit['_source'].get('title', hit['_id'])}"
    return text[:width]


class _proxy:
    """Run the proxy on a free loopback port for the duration of the demo."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def __enter__(self) -> _proxy:
        from rerank_proxy.app import ProxyApp
        from rerank_proxy.edge import BackgroundServer

        try:
            self.app = ProxyApp(self.settings)
            self.server = BackgroundServer(self.app).start()
        except Exception as exc:  # noqa: BLE001 - any start-up failure ends the demo with one clear line
            raise SystemExit(f"demo: the proxy failed to start: {exc}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()

"""`/_rerank/ready` on several workers reports the embedder of every worker, as the metrics do:
on the defaults (the built-in model) and a fresh store, two workers' write warming adds up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from rerank_proxy.config import SETTING_PREFIXES
from tests.fixtures.proxy import free_port
from tests.support_wait import metric_samples, wait_until

BULKS, PER_BULK = 20, 5


def test_ready_merges_the_embedder_of_both_workers(es_engine, index_name: str, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
    env.update({"UPSTREAM_URLS": es_engine.url, "PORT": str(port), "WORKERS": "2", "HOME": str(tmp_path)})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def both_up() -> bool:
            assert proc.poll() is None, "the proxy exited"
            try:
                return metric_samples(url).get(("rerank_proxy_workers", ())) == 2
            except (httpx.TransportError, AssertionError):
                return False

        wait_until(both_up, "two workers to answer", timeout_s=180)
        for n in range(BULKS):  # a new connection each, so the kernel spreads them over the workers
            lines = [orjson.dumps(line) for i in range(PER_BULK) for line in (
                {"index": {"_id": f"{n}-{i}"}}, {"body": f"boundary layer report {n} part {i}"})]
            answer = httpx.post(f"{url}/{index_name}/_bulk", content=b"\n".join(lines) + b"\n", timeout=60,
                                headers={"content-type": "application/x-ndjson", "connection": "close"})
            assert answer.status_code == 200, answer.text[:300]

        def vectors() -> dict:
            return httpx.get(f"{url}/_rerank/ready", timeout=30).json()["reranker"]["vectors"]

        # Each worker warms the writes it relayed: only the sum over both reaches every document.
        wait_until(lambda: vectors()["embedded"] >= BULKS * PER_BULK and vectors()["queue_depth"] == 0,
                   "both workers' writes to be embedded", timeout_s=300)
        status = vectors()
        samples = metric_samples(url)
        assert status["workers"] == 2
        assert status["embedded"] == samples[("rerank_proxy_embedder_documents_embedded_total", ())]
        assert status["store_entries"] == samples[("rerank_proxy_vector_store_entries", ())] >= BULKS * PER_BULK
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0

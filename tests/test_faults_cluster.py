"""A node of a real 3-node cluster stops and comes back under search and write traffic.

The proxy knows all three nodes (UPSTREAM_URLS). Searches must keep answering, every write the
client saw acknowledged must be in the index afterwards, exactly once (each id is created once with
`op_type=create`).

A 409 on a fresh id can still happen here without any resend by the proxy: when the primary's node
stops mid-write, the engine itself retries the replicated create on the promoted replica, which
already holds the document. Such an id must then be present (once). That the proxy itself never
sends a write twice is proven deterministically in test_limits_security.py, where the upstream
counts what it receives.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from rerank_proxy.local_engines.runner import ensure_engine, start_node, stop_engine, stop_node
from tests.fixtures.proxy import proxy_settings, run_proxy
from tests.support_rerankers import OverlapReranker

pytestmark = pytest.mark.engine  # starts engines of its own (ensure_engine), not only through fixtures
CLUSTER_PORT = 19310


@pytest.fixture(scope="module")
def cluster():
    info = ensure_engine("opensearch", port=CLUSTER_PORT, nodes=3, timeout_s=400)
    yield info
    stop_engine("opensearch", port=CLUSTER_PORT)


class Traffic(threading.Thread):
    """Alternating creates and searches through the proxy until told to stop."""

    def __init__(self, url: str, index: str) -> None:
        super().__init__(daemon=True)
        self.url, self.index = url, index
        self.stop_flag = threading.Event()
        self.acked: set[str] = set()
        self.conflicted: set[str] = set()
        self.write_status: Counter[int] = Counter()
        self.search_status: Counter[int] = Counter()
        self.ops = 0
        self.progress = threading.Condition()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            n = 0
            while not self.stop_flag.is_set():
                doc_id = f"d{n}"
                n += 1
                response = client.put(f"/{self.index}/_create/{doc_id}", json={"body": f"jet engine {n}"})
                self.write_status[response.status_code] += 1
                if response.status_code == 201:
                    self.acked.add(doc_id)
                elif response.status_code == 409:
                    self.conflicted.add(doc_id)
                search = client.post(f"/{self.index}/_search", json={"query": {"match": {"body": "engine"}}})
                self.search_status[search.status_code] += 1
                with self.progress:
                    self.ops += 1
                    self.progress.notify_all()

    def wait_for_ops(self, more: int) -> None:
        with self.progress:
            target = self.ops + more
            assert self.progress.wait_for(lambda: self.ops >= target, timeout=300), "traffic stalled"


@pytest.mark.slow  # a 3-node cluster starts, a node stops and returns under traffic: ~45 s
def test_node_stop_and_return_under_traffic(cluster):
    index = "failover"
    with httpx.Client(base_url=cluster.url, timeout=60) as admin:
        admin.delete(f"/{index}")
        created = admin.put(f"/{index}", json={"settings": {"number_of_shards": 3, "number_of_replicas": 1}})
        assert created.status_code == 200, created.text
        admin.get("/_cluster/health", params={"wait_for_status": "green", "timeout": "120s"})
    settings = proxy_settings(",".join(cluster.urls), UPSTREAM_TIMEOUT_S="30")
    with run_proxy(settings, reranker=OverlapReranker()) as running:
        traffic = Traffic(running.url, index)
        traffic.start()
        traffic.wait_for_ops(30)
        stop_node(cluster, 2)
        traffic.wait_for_ops(60)
        start_node(cluster, 2, timeout_s=300)
        traffic.wait_for_ops(30)
        traffic.stop_flag.set()
        traffic.join(120)

    with httpx.Client(base_url=cluster.url, timeout=60) as admin:
        admin.get("/_cluster/health", params={"wait_for_status": "green", "timeout": "120s"})
        admin.post(f"/{index}/_refresh")
        present = set()
        body = {"query": {"match_all": {}}, "size": 10000, "_source": False}
        for hit in admin.post(f"/{index}/_search", json=body).json()["hits"]["hits"]:
            present.add(hit["_id"])
        count = admin.get(f"/{index}/_count").json()["count"]
        admin.delete(f"/{index}")

    print(f"\ncluster failover: writes {dict(traffic.write_status)}, searches {dict(traffic.search_status)}, "
          f"acknowledged {len(traffic.acked)}, present {len(present)}, lost {len(traffic.acked - present)}")
    assert traffic.acked, "no write was acknowledged"
    assert traffic.acked <= present, f"acknowledged writes lost: {sorted(traffic.acked - present)[:10]}"
    assert count == len(present)
    assert traffic.conflicted <= present, "a 409 on a fresh id whose document is not there"
    assert traffic.write_status[409] <= 3, f"too many conflicts for one failover: {traffic.write_status}"
    searches = sum(traffic.search_status.values())
    assert traffic.search_status[200] >= 0.9 * searches, traffic.search_status

"""`rerank-proxy serve` on its shipped logging: every access line arrives, whole, and none is lost at a
clean stop, with two workers writing to one pipe (as a container's stderr is)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx

from rerank_proxy.config import SETTING_PREFIXES
from tests.fixtures.proxy import free_port
from tests.support_wait import wait_until

REQUESTS = 3000


def test_every_access_line_of_two_workers_reaches_the_pipe_whole_by_a_clean_stop(es_engine):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
    # the provider is beside the point here: access lines are the same for every request
    env.update({"UPSTREAM_URLS": es_engine.url, "RERANK_PROVIDER": "none", "PORT": str(port), "WORKERS": "2"})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    received: list[bytes] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: received.append(proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, "the proxy exited"
            try:
                return httpx.get(f"{url}/_rerank/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "the proxy to listen", timeout_s=120)
        sent = 0
        while sent < REQUESTS:   # a new connection every 100 requests, so both workers take some
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(100):
                    assert client.get("/_cluster/health", headers={"X-Opaque-Id": f"r{sent}"}).status_code == 200
                    sent += 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(60)
    assert code == 0
    lines = [json.loads(line) for line in received[0].splitlines() if line.strip()]  # a torn line fails here
    access = [line for line in lines if line.get("logger") == "rerank_proxy.access"]
    ids = sorted(int(line["request_id"][1:]) for line in access if line.get("path") == "/_cluster/health")
    assert ids == list(range(REQUESTS))
    assert {line["level"] for line in access} == {"info"}
    assert all(line["ts"].endswith("Z") and line["msg"] == "request" for line in access)
    pids = {line.get("pid") for line in lines if line.get("msg") == "listening"}
    assert len(pids) == 2, "both workers started"

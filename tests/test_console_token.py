"""The console on the defaults: with no ADMIN_TOKEN, `rerank-proxy serve` generates one and logs the
console's URL with it; the landing page at /_rerank/ lists the proxy's endpoints.

Real processes: `rerank-proxy serve` started as an admin would, its start-up lines read from its
stderr, requests over loopback HTTP. No engine is needed (nothing here searches): the upstream is a
closed port. Which worker served a connection is read from /proc (the worker that holds the
server side of that TCP connection), so "every worker accepts the token" is checked, not hoped.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from rerank_proxy.config import SETTING_PREFIXES, ConfigError, load_settings
from tests.fixtures.proxy import free_port
from tests.support_wait import wait_until


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    lines: list[str] = field(default_factory=list)

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.strip()]

    def console_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.logged() if "console" in line]

    def worker_pids(self) -> set[int]:
        return {line["pid"] for line in self.logged() if line.get("msg") == "listening"}


@contextmanager
def serve(workers: int, **env: str) -> Iterator[Served]:
    """`rerank-proxy serve` on the shipped defaults but for `env`, until its workers all listen."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES) and k != "WORKERS"}
    clean.update({"UPSTREAM_URLS": f"http://127.0.0.1:{free_port()}", "RERANK_PROVIDER": "none",
                  "PORT": str(port), "WORKERS": str(workers), **env})
    proc = subprocess.Popen([sys.executable, "-m", "rerank_proxy.cli", "serve"], env=clean,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    served = Served(proc, f"http://127.0.0.1:{port}", port)
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: served.lines.extend(line.decode() for line in proc.stderr))  # type: ignore[union-attr]
    reader.start()
    try:
        def up() -> bool:
            assert proc.poll() is None, "".join(served.lines)
            return len(served.worker_pids()) == workers

        wait_until(up, f"{workers} workers to listen", timeout_s=120)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(60)
    assert code == 0, "".join(served.lines)


def the_token(served: Served) -> str:
    [line] = served.console_lines()
    url = urlsplit(line["console"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", served.port, "/_rerank/console")
    [token] = parse_qs(url.query)["token"]
    return token


@pytest.fixture(scope="module")
def on_defaults() -> Iterator[Served]:
    with serve(2) as served:
        yield served


# --- the generated token ------------------------------------------------------------------------

def test_the_console_url_from_the_start_up_lines_opens_the_console(on_defaults):
    line = on_defaults.console_lines()[0]
    assert line["level"] == "warning"
    assert "ADMIN_TOKEN" in line["msg"]
    token = the_token(on_defaults)
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    page = httpx.get(line["console"], headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "rerank-proxy-console-token" in page.text  # the console itself, not the sign-in form
    assert httpx.get(f"{on_defaults.url}/_rerank/console?token=not-{token}",
                     headers={"accept": "text/html"}).status_code == 401


def test_the_admin_api_takes_the_generated_token_as_a_bearer_header_only(on_defaults):
    token = the_token(on_defaults)
    config = httpx.get(f"{on_defaults.url}/_rerank/admin/config", headers={"authorization": f"Bearer {token}"})
    assert config.status_code == 200
    assert config.json()["ADMIN_TOKEN"] == "<redacted>"
    wrong = httpx.get(f"{on_defaults.url}/_rerank/admin/config", headers={"authorization": f"Bearer {token}x"})
    assert wrong.status_code == 401
    assert httpx.get(f"{on_defaults.url}/_rerank/admin/config?token={token}").status_code == 401


def _serving_pid(client_port: int, proxy_port: int, pids: set[int]) -> int | None:
    """The worker holding the server side of the loopback connection from `client_port`."""
    wanted = (f"0100007F:{proxy_port:04X}", f"0100007F:{client_port:04X}")
    inode = None
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cells = row.split()
        if (cells[1], cells[2]) == wanted:
            inode = cells[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


def test_every_worker_accepts_the_same_generated_token(on_defaults):
    token = the_token(on_defaults)
    pids = on_defaults.worker_pids()
    answered: dict[int, tuple[int, int]] = {}

    def one_connection() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", on_defaults.port, timeout=30)
        try:
            conn.connect()
            pid = _serving_pid(conn.sock.getsockname()[1], on_defaults.port, pids)
            statuses = []
            for sent in (token, f"{token}x"):
                conn.request("GET", "/_rerank/admin/breaker", headers={"authorization": f"Bearer {sent}"})
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            conn.close()
        if pid is not None:
            answered[pid] = (statuses[0], statuses[1])
        return set(answered) == pids

    wait_until(one_connection, lambda: f"a connection to each worker {sorted(pids)}, saw {sorted(answered)}",
               interval_s=0)
    assert answered == dict.fromkeys(pids, (200, 401))


def test_the_token_is_written_once_in_the_start_up_lines_and_never_in_access_lines():
    with serve(1) as served:
        token = the_token(served)
        assert httpx.get(f"{served.url}/_rerank/console?token={token}").status_code == 200
        assert httpx.get(f"{served.url}/_rerank/admin/cache", headers={"authorization": f"Bearer {token}"}) \
            .status_code == 200
        relayed = httpx.get(f"{served.url}/_cluster/health?token={token}")  # an access-logged relay
        assert relayed.status_code == 502  # the upstream is a closed port
    output = "".join(served.lines)
    assert output.count(token) == 1, output
    access = [line for line in served.logged() if line.get("logger") == "rerank_proxy.access"]
    assert [line["path"] for line in access] == ["/_cluster/health"]


# --- a configured token, and off ----------------------------------------------------------------

def test_a_configured_token_is_never_printed_and_no_console_url_is():
    token = "configured-admin-token-1"
    with serve(1, ADMIN_TOKEN=token) as served:
        good = httpx.get(f"{served.url}/_rerank/admin/config", headers={"authorization": f"Bearer {token}"})
        assert good.status_code == 200
    output = "".join(served.lines)
    assert token not in output
    assert "token=" not in output
    assert served.console_lines() == []


def test_admin_token_off_turns_the_admin_endpoints_and_console_off():
    with serve(1, ADMIN_TOKEN="off") as served:
        assert httpx.get(f"{served.url}/_rerank/console?token=off").status_code == 404
        assert httpx.get(f"{served.url}/_rerank/admin/config", headers={"authorization": "Bearer off"}) \
            .status_code == 404
    assert served.console_lines() == []
    assert "token=" not in "".join(served.lines)


def test_an_empty_token_file_keeps_them_off_as_before(tmp_path):
    empty = tmp_path / "admin-token"
    empty.write_text("\n")
    with serve(1, ADMIN_TOKEN_FILE=str(empty)) as served:
        assert httpx.get(f"{served.url}/_rerank/admin/config").status_code == 404
    assert served.console_lines() == []


@pytest.mark.parametrize("word", ["false", "Disabled", "none", "0", "no"])
def test_a_switch_word_is_refused_rather_than_taken_as_a_token(word):
    with pytest.raises(ConfigError, match=r"ADMIN_TOKEN=<redacted>: reads as a switch.*accepted: off"):
        load_settings({"ADMIN_TOKEN": word})
    assert load_settings({"ADMIN_TOKEN": "OFF"}).admin_token == ""


def test_serve_stops_with_a_configuration_error_for_a_switch_word():
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    done = subprocess.run([sys.executable, "-m", "rerank_proxy.cli", "serve"], capture_output=True, timeout=60,
                          env={**env, "ADMIN_TOKEN": "false", "RERANK_PROVIDER": "none", "PORT": str(free_port())})
    assert done.returncode == 2
    assert b"ADMIN_TOKEN=<redacted>: reads as a switch" in done.stderr


# --- the landing page ---------------------------------------------------------------------------

def test_the_landing_page_links_the_console_and_lists_real_endpoints(on_defaults):
    page = httpx.get(f"{on_defaults.url}/_rerank/", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<a href="/_rerank/console">' in page.text
    listed = httpx.get(f"{on_defaults.url}/_rerank/").json()["endpoints"]
    paths = {e["path"] for e in listed}
    assert {"/_rerank/health", "/_rerank/ready", "/_rerank/metrics", "/_rerank/console",
            "/_rerank/admin/config", "/_rerank/admin/cache/flush"} <= paths
    for endpoint in listed:
        assert endpoint["meaning"], endpoint
        assert endpoint["token"] == endpoint["path"].startswith(("/_rerank/admin/", "/_rerank/console")), endpoint
        if "{" in endpoint["path"]:
            continue
        method = endpoint["methods"][0]
        answer = httpx.request(method, f"{on_defaults.url}{endpoint['path']}")
        assert "no proxy endpoint" not in answer.text, endpoint  # the catch-all never answers a listed path


def test_the_bare_prefix_reaches_the_landing_page(on_defaults):
    bare = httpx.get(f"{on_defaults.url}/_rerank")
    assert bare.status_code == 308
    assert bare.headers["location"] == "/_rerank/"
    followed = httpx.get(f"{on_defaults.url}/_rerank", headers={"accept": "text/html"}, follow_redirects=True)
    assert followed.status_code == 200
    assert "/_rerank/console" in followed.text

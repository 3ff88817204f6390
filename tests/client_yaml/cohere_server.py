"""A Cohere Rerank v2 server on a loopback port, in a thread: `POST /v2/rerank` scored by word overlap.

It speaks the documented contract (see ../shared/reference/rerank-apis.md, section 1): the request has
`model`, `query`, `documents` (strings) and maybe `top_n`; the answer is `{"id", "results": [{"index",
"relevance_score"}], "meta"}` with results sorted by score, best first. It counts requests, so a test
can tell the proxy really called it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support_rerankers import overlap_score


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CohereServer

    def log_message(self, format: str, *args: Any) -> None:   # quiet
        pass

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/v2/rerank":
            self._answer(404, {"message": f"no route {self.path}"})
            return
        try:
            request = json.loads(raw)
            query, documents = request["query"], request["documents"]
            if not isinstance(query, str) or not isinstance(documents, list) or "model" not in request:
                raise ValueError("model, query and documents are required")
        except (ValueError, KeyError, TypeError) as error:
            self._answer(400, {"message": f"invalid request: {error}"})
            return
        with self.server.lock:
            self.server.calls += 1
            self.server.documents += len(documents)
        results = sorted(({"index": i, "relevance_score": round(overlap_score(query, str(d)), 6)}
                          for i, d in enumerate(documents)), key=lambda r: -r["relevance_score"])
        top_n = request.get("top_n")
        if isinstance(top_n, int):
            results = results[:top_n]
        self._answer(200, {"id": f"loopback-{self.server.calls}", "results": results,
                           "meta": {"api_version": {"version": "2"},
                                    "billed_units": {"search_units": 1}}})


class CohereServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.calls = 0
        self.documents = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="cohere-loopback")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> CohereServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)

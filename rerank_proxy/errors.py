"""Errors of the proxy itself, in the engine's own JSON shape.

Elasticsearch and OpenSearch both answer errors as
`{"error": {"root_cause": [{"type", "reason"}], "type", "reason"}, "status": N}`; official clients
parse that shape into their exception classes, so the proxy's own errors use it too.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson


class ProxyError(Exception):
    """An error the proxy answers itself (never an engine error, which passes through)."""

    def __init__(self, status: int, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason

    def body(self) -> bytes:
        return error_body(self.status, self.error_type, self.reason)


class AnswerTooLarge(ProxyError):
    """An engine answer the proxy reads whole passed MAX_CANDIDATE_BYTES: it is dropped unread, so
    one search can never hold more than that in memory (the search is then forwarded as is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(502, "proxy_upstream_response_exception",
                         f"the engine's answer is larger than MAX_CANDIDATE_BYTES ({limit} bytes)")


def error_body(status: int, error_type: str, reason: str) -> bytes:
    cause = {"type": error_type, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


def bad_request(reason: str, error_type: str = "illegal_argument_exception") -> ProxyError:
    return ProxyError(400, error_type, reason)


def parse_error(reason: str) -> ProxyError:
    return ProxyError(400, "x_content_parse_exception", reason)


def status_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def error_response(status: int, error_type: str, reason: str, *, close: bool) -> bytes:
    """A whole engine-style error answer, as written on the wire by the server itself."""
    body = error_body(status, error_type, reason)
    return (b"HTTP/1.1 %d %b\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: %d\r\n"
            b"x-rerank: error\r\n%b\r\n%b"
            % (status, status_phrase(status), len(body), b"Connection: close\r\n" if close else b"", body))

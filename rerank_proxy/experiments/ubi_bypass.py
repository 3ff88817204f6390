"""A bypassed search that carried `ext.ubi`: the engine's answer, read whole, with the query id in.

A bypass is otherwise relayed as the engine answers it, streamed; but the UBI plugin answers the
query id inside the body (`ext.ubi.query_id`) and the search is to be recorded with the ids of its
hits, so these few searches are read whole instead (bounded by MAX_CANDIDATE_BYTES like every read
of the proxy's own, past which they are relayed after all, the query id in the header only).
"""

from __future__ import annotations

from typing import Any

import orjson

from rerank_proxy.engine.transport import EngineAnswer, EngineTransport
from rerank_proxy.experiments.query_log import Credentials, QueryLog, query_record
from rerank_proxy.experiments.ubi import UbiRequest, answer_ext


async def fetch_with_query_id(engine: EngineTransport, method: str, target: str,
                              headers: list[tuple[bytes, bytes]], body: bytes, ubi: UbiRequest,
                              query_log: QueryLog | None, auth: Credentials, *, filtered: bool,
                              pretty: bool) -> EngineAnswer:
    """The engine's answer to the bypassed search; a JSON success gets `ext.ubi.query_id` (unless
    the client's filter_path shaped it: the engine's filter would have applied to the plugin's ext)
    and is recorded. Anything else (an error, YAML or CBOR) is the engine's own bytes."""
    answer = await engine.fetch(method, target, headers, body)
    if answer.status != 200:
        return answer
    try:
        data: Any = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return answer  # format=yaml/cbor/smile: the engine's bytes
    if not isinstance(data, dict):
        return answer
    if query_log is not None:
        hits = data.get("hits", {}).get("hits") if isinstance(data.get("hits"), dict) else None
        query_log.offer(query_record(ubi, hits), auth)
    if filtered:
        return answer
    answer_ext(data, ubi)
    return EngineAnswer(200, answer.headers, orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0),
                        answer.served_by)

"""The one transport to the engines: pooled keep-alive connections, failover, retry rules, limits.

Everything the proxy sends an engine goes through here: the edge's relayed requests, streamed both
ways over a pooled connection (`rerank_proxy/edge/relay.py`), and reads the proxy makes itself,
answered whole (`fetch.py`): a search's candidates, probes, the console's lookups.
`EngineTransport` is what the rest of the proxy sees of it.

Both follow one rule set for sending again and failing over (`retry_policy.py`); an engine's bytes
are framed by a sans-I/O core (`response_core.py`) under the asyncio connection (`connection.py`).
"""

from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.engine.transport import EngineAnswer, EngineTransport

__all__ = ["EngineAnswer", "EnginePool", "EngineTransport"]

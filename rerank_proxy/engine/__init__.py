"""The one transport to the engines: pooled keep-alive connections, failover, retry rules, limits.

Everything the proxy sends an engine goes through here: relayed requests streamed both ways
(`relay.py`), and reads the proxy makes itself, answered whole (`fetch.py`): a search's candidates,
probes, the console's lookups. `EngineTransport` is what the rest of the proxy sees of it.
"""

from rerank_proxy.engine.pool import EnginePool
from rerank_proxy.engine.transport import EngineAnswer, EngineTransport

__all__ = ["EngineAnswer", "EnginePool", "EngineTransport"]

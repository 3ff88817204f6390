"""The proxy's own HTTP/1.1 server: client connections, admission, and the two exchanges.

A client's bytes are parsed by a sans-I/O core (`h1.py`) under the asyncio protocol
(`connection.py`). Each request becomes an exchange: a relay to the engine (`relay.py`), whose
outcome goes to the observers the server declares (`observers.py`, `relay_observers.py`), or a
search that is reranked (`search.py`). `server.py` says why this is not a general ASGI server.
"""

from rerank_proxy.edge.background import BackgroundServer
from rerank_proxy.edge.server import ProxyServer

__all__ = ["BackgroundServer", "ProxyServer"]

"""The proxy's own HTTP/1.1 server (see `server.py` for why it is not a general ASGI server)."""

from rerank_proxy.edge.background import BackgroundServer
from rerank_proxy.edge.server import ProxyServer

__all__ = ["BackgroundServer", "ProxyServer"]

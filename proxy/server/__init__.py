"""The proxy's own HTTP/1.1 server (see `server.py` for why it is not a general ASGI server)."""

from .background import BackgroundServer
from .server import ProxyServer

__all__ = ["BackgroundServer", "ProxyServer"]

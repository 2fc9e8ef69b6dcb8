"""HTTP: the ASGI app, its guards and pages, and the listener that serves it."""

from exporter.http.app import App, Request, Response, serve
from exporter.http.listener import Server

__all__ = ["App", "Request", "Response", "Server", "serve"]

"""HTTP: the ASGI app, its guards and pages, and the listener that serves it."""

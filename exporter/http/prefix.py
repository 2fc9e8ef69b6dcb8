"""Where the endpoints live: ``--web.route-prefix`` and ``--web.external-url``, as Prometheus
and blackbox_exporter read them.

Behind a reverse proxy at ``https://ops.example.com/cec/`` that does not strip the path,
``--web.external-url=https://ops.example.com/cec/`` (or ``--web.route-prefix=/cec``) puts
every endpoint under ``/cec/``; the landing page links relative to itself, so its links
work under any prefix, and behind a proxy that strips it too.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def external_url(value: str) -> str:
    """``value`` checked as an absolute http(s) URL without query or fragment; raises ValueError."""
    try:
        parts = urlsplit(value.strip())
    except ValueError as err:
        raise ValueError(f"not a URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.strip()


def route_prefix(prefix: str | None, url: str | None = None) -> str:
    """The path every endpoint lives under: ``""`` for the root, else ``/a/b`` (no trailing
    ``/``). ``prefix`` wins; without it, the path of the external ``url``."""
    chosen = prefix if prefix is not None else (urlsplit(url).path if url else "")
    stripped = chosen.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def local_path(prefix: str, path: str) -> str | None:
    """``path`` as seen under ``prefix`` (``/cec/metrics`` -> ``/metrics``); None outside it.

    The prefix itself, without its trailing ``/``, is outside: relative links would
    resolve against its parent (the caller redirects it to the prefix with ``/``).
    """
    if not prefix:
        return path
    if path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return None

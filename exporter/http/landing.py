"""The landing page, ``/``: the build, the endpoints, and per target its recent collections.

As blackbox_exporter's "Recent Probes"; every target name and vendor message is
HTML-escaped. Every link is relative to the page, so the page works under any
``--web.route-prefix`` and behind a reverse proxy that strips its own prefix.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from exporter.build import Build
from exporter.cec.text import ERROR_TEXT_CHARS, clip, utc
from exporter.scrape import CollectionSummary

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}.down{color:#b00}"
)


def _row(c: CollectionSummary) -> str:
    pages, records = c.pages, c.phone_records
    result = '<span class="up">up</span>' if c.up else '<span class="down">down</span>'
    cells = (
        html.escape(utc(c.started_wall)),
        result,
        f"{c.duration:.3f}s",
        "" if pages is None else str(pages),
        "" if records is None else str(records),
        html.escape(f"{c.reason}: " if c.reason else "")
        + html.escape(clip(c.error or "", ERROR_TEXT_CHARS)),
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _links(paths: Sequence[str]) -> str:
    """Links to the page's sibling endpoints (``/metrics`` -> ``href="metrics"``)."""
    return " · ".join(
        f'<a href="{html.escape(quote(path.lstrip("/")))}">{html.escape(path)}</a>'
        for path in paths
    )


def landing_page(
    version: str,
    build: Build,
    telemetry_path: str,
    recent: Mapping[str, Sequence[CollectionSummary]],
) -> str:
    """The HTML of ``/``: version and revision, links, and each target's recent collections."""
    release = f"{version} (revision {build.revision}, branch {build.branch}, built {build.date})"
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8">',
        f"<title>CEC Phone Exporter</title><style>{_STYLE}</style></head><body>",
        f"<h1>CEC Phone Exporter</h1><p>Version {html.escape(release)}</p>",
        f"<p>{_links((telemetry_path, '/config', '/sd', '/-/healthy', '/-/ready'))}</p>",
        "<h2>Recent collections</h2>",
    ]
    header = (
        "<tr><th>time (UTC)</th><th>result</th><th>duration</th><th>pages</th>"
        "<th>phone records</th><th>error</th></tr>"
    )
    for name, collections in recent.items():
        shown = html.escape(name)
        link = html.escape(f"probe?target={quote(name, safe='')}")
        parts.append(
            f'<h3>{shown}</h3><p><a href="{link}">/probe</a> · '
            f'<a href="{link}&amp;debug=true">debug probe</a></p>'
        )
        if collections:
            rows = "".join(_row(c) for c in collections)
            parts.append(f"<table>{header}{rows}</table>")
        else:
            parts.append("<p>No collection yet.</p>")
    parts.append("</body></html>")
    return "".join(parts)

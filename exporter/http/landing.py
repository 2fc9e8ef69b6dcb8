"""The landing page, ``/``: per target, its recent collections and its debug probe.

As blackbox_exporter's "Recent Probes"; every target name and vendor message is
HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from urllib.parse import quote

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


def landing_page(version: str, recent: Mapping[str, Sequence[CollectionSummary]]) -> str:
    """The HTML of ``/``: version, links, and each target's recent collections."""
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8">',
        f"<title>CEC Phone Exporter</title><style>{_STYLE}</style></head><body>",
        f"<h1>CEC Phone Exporter</h1><p>Version {html.escape(version)}</p>",
        '<p><a href="/metrics">/metrics</a> · <a href="/sd">/sd</a> · ',
        '<a href="/-/healthy">/-/healthy</a> · <a href="/-/ready">/-/ready</a></p>',
        "<h2>Recent collections</h2>",
    ]
    header = (
        "<tr><th>time (UTC)</th><th>result</th><th>duration</th><th>pages</th>"
        "<th>phone records</th><th>error</th></tr>"
    )
    for name, collections in recent.items():
        shown = html.escape(name)
        link = html.escape(f"/probe?target={quote(name, safe='')}")
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

"""The one redactor: what log lines and vendor text may not show, in any form it comes in.

Secrets are kept out of text by construction (the parser drops phone passwords, ``Secret``
never shows its value); this is the second line of defence, for what a vendor echoes
back and what third-party code logs. It replaces

- every value a live holder (a target's client) says it uses: its app secret, app key
  and access tokens, held for as long as the holder lives, however many there are;
- credential shapes, known values or not: ``Bearer x``, ``Basic x``, the value of
  ``app_secret=``, ``"app_secret":``, ``access_token``, and anything after ``password``;

as written, JSON-escaped (``\\/``, ``\\uXXXX``) or percent-encoded: each text is read
as written and decoded both ways, and what any reading finds is cut from the text as
written. A text clipped inside a value loses the start of the value too.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from exporter.cec.text import CLIP_MARK

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4
"""Shorter values are not scrubbed: they would mangle ordinary words."""
RECENT_VALUES = 2
"""Values a holder keeps known per kind: the one in use and the one before it, which a
request still in flight (a token being renewed, a secret being rotated) may have sent."""

_SHAPES = (
    re.compile(r"(?i)bearer\s+([^\s\"']+)"),
    re.compile(r"(?i)authorization[\"']?\s*[:=]\s*[\"']?basic\s+([^\s\"']+)"),
    # JSON ("app_secret": "x y"), Python reprs ('access_token': 'x'), key=value and query
    # strings; not config key paths (``targets[0].app_secret: ...``), which hold no value.
    re.compile(
        r"(?i)(?<![.\w])[\"']?(?:app_?secret|access_?token)[\"']?\s*[:=]\s*"
        r"(\"[^\"]*\"|'[^']*'|[^\s\"',}&]+)"
    ),
    re.compile(r"(?i)password([\s\S]+)"),  # whatever follows: its value, quoted or not
)
_JSON_ESCAPE = (
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair
    r"|\\u[0-9a-fA-F]{4}|\\[\\/\"bfnrt]"
)
_PERCENT_ESCAPE = r"(?:%[0-9a-fA-F]{2})+"
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


# --- the values in use -------------------------------------------------------------------------


class _Held:
    """The values live holders use, by holder and kind; every access under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_holder: dict[object, dict[str, list[str]]] = {}
        self.count: Counter[str] = Counter()
        """How many (holder, kind) slots hold each value."""
        self.heads: dict[str, set[str]] = {}
        """The values held, by their first ``MIN_SECRET_LENGTH`` characters."""

    def add(self, value: str) -> None:
        self.count[value] += 1
        if self.count[value] == 1:
            self.heads.setdefault(value[:MIN_SECRET_LENGTH], set()).add(value)

    def remove(self, value: str) -> None:
        self.count[value] -= 1
        if self.count[value] == 0:
            del self.count[value]
            head = value[:MIN_SECRET_LENGTH]
            self.heads[head].discard(value)
            if not self.heads[head]:
                del self.heads[head]


_held = _Held()


def hold_secret(holder: object, kind: str, value: str) -> None:
    """``holder`` uses ``value`` as its ``kind`` (``app_secret``, ``token``...) from now on:
    it is scrubbed from every log line and vendor text until ``release_secrets(holder)``.

    The value it used before stays known too (``RECENT_VALUES``); older ones go.
    """
    if len(value) < MIN_SECRET_LENGTH:
        return  # too short to scrub without mangling ordinary words
    with _held.lock:
        kinds = _held.by_holder.setdefault(holder, {})
        recent = kinds.get(kind, [])
        if recent[-1:] == [value]:
            return  # the usual case: a value in use, held again
        kept = [*(old for old in recent if old != value), value][-RECENT_VALUES:]
        for old in recent:
            _held.remove(old)
        for new in kept:
            _held.add(new)
        kinds[kind] = kept


def release_secrets(holder: object) -> None:
    """``holder`` is gone (a target left the config): the values only it held are forgotten."""
    with _held.lock:
        for values in _held.by_holder.pop(holder, {}).values():
            for value in values:
                _held.remove(value)


def held_secrets() -> frozenset[str]:
    """Every value held now."""
    with _held.lock:
        return frozenset(_held.count)


# --- readings of a text ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """``text`` decoded, and where each of its characters came from in the text as written:
    character ``i`` from ``starts[i]`` up to ``ends[i]`` (no lists: the text as written)."""

    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def written(self, start: int, end: int) -> tuple[int, int]:
        """The span of the text as written that characters ``start..end`` came from."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]

    def origins(self, start: int, end: int) -> tuple[list[int], list[int]]:
        """Where characters ``start..end`` came from: their starts and their ends."""
        if self.starts is None or self.ends is None:
            return list(range(start, end)), list(range(start + 1, end + 1))
        return self.starts[start:end], self.ends[start:end]


def _unescape_json(escape: str) -> list[tuple[str, int]]:
    """The character of one JSON escape (a surrogate pair is one), with its length."""
    if escape.startswith("\\u"):
        units = [int(escape[i + 2 : i + 6], 16) for i in range(0, len(escape), 6)]
        if len(units) == 2:
            return [(chr(0x10000 + ((units[0] - 0xD800) << 10) + (units[1] - 0xDC00)), 12)]
        return [(chr(units[0]), 6)]
    return [(_SIMPLE.get(escape[1], escape[1]), 2)]


def _unescape_percent(escape: str) -> list[tuple[str, int]]:
    """The characters of a run of ``%XX`` (UTF-8, else one per byte) or of a form's ``+``,
    each with the length of its escape."""
    if escape == "+":
        return [(" ", 1)]
    raw = bytes.fromhex(escape.replace("%", ""))
    try:
        return [(char, 3 * len(char.encode())) for char in raw.decode()]
    except UnicodeDecodeError:
        return [(chr(byte), 3) for byte in raw]


@dataclass(frozen=True)
class _Decoder:
    """One way a text may be escaped: what its escapes look like, and what each stands for."""

    escapes: re.Pattern[str]
    marks: str
    """Characters without which a text has none of its escapes."""
    unescape: Callable[[str], list[tuple[str, int]]]


_JSON = _Decoder(re.compile(_JSON_ESCAPE), "\\", _unescape_json)
_PERCENT = _Decoder(re.compile(_PERCENT_ESCAPE), "%", _unescape_percent)
_FORM = _Decoder(re.compile(_PERCENT_ESCAPE + r"|\+"), "%+", _unescape_percent)
"""Percent-encoding with ``+`` for a space (HTML forms); without it, ``+`` is itself."""
_THEN = {_JSON: (_PERCENT, _FORM), _PERCENT: (_JSON,), _FORM: (_JSON,)}
"""What a decoded text is decoded with next: JSON in a query string, a URL in JSON."""


def _decoded(reading: _Reading, decoder: _Decoder) -> _Reading | None:
    """``reading`` with ``decoder``'s escapes decoded; None if it has none."""
    text = reading.text
    if not any(mark in text for mark in decoder.marks):
        return None
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []

    def keep(start: int, end: int) -> None:
        pieces.append(text[start:end])
        more_starts, more_ends = reading.origins(start, end)
        starts.extend(more_starts)
        ends.extend(more_ends)

    done = 0
    for match in decoder.escapes.finditer(text):
        start, end = match.span()
        keep(done, start)
        at = start
        for char, length in decoder.unescape(match.group()):
            pieces.append(char)
            starts.append(reading.written(at, at + 1)[0])
            ends.append(reading.written(at + length - 1, at + length)[1])
            at += length
        done = end
    if not pieces:
        return None
    keep(done, len(text))
    return _Reading("".join(pieces), starts, ends)


def _readings(text: str) -> Iterator[_Reading]:
    """``text`` as written, then decoded once and twice (JSON's escapes, percent-encoding)."""
    written = _Reading(text)
    yield written
    for decoder, thens in _THEN.items():
        once = _decoded(written, decoder)
        if once is not None:
            yield once
            for then in thens:
                if (twice := _decoded(once, then)) is not None:
                    yield twice


# --- redaction ---------------------------------------------------------------------------------


def _held_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where a held value, or the start of one cut off by a clip, stands in ``text``.
    Called with ``_held.lock`` held."""
    heads = _held.heads
    if not heads:
        return
    body = len(text) - len(CLIP_MARK) if text.endswith(CLIP_MARK) else len(text)
    for at in range(body - MIN_SECRET_LENGTH + 1):
        for value in heads.get(text[at : at + MIN_SECRET_LENGTH], ()):
            if text.startswith(value, at):
                yield at, at + len(value)
            elif _cut_inside(text[at:body], value):
                yield at, body


def _cut_inside(rest: str, value: str) -> bool:
    """Whether ``rest``, the end of a clipped text, is the start of ``value``: perhaps
    followed by the start of an escape (``\\u00``, ``%2``) the clip cut in two."""
    if len(rest) >= len(value):
        return False
    common = next(
        (n for n, (a, b) in enumerate(zip(rest, value, strict=False)) if a != b), len(rest)
    )
    tail = rest[common:]
    return common >= MIN_SECRET_LENGTH and (not tail or (len(tail) < 6 and tail[0] in "\\%"))


def _shape_spans(text: str) -> Iterator[tuple[int, int]]:
    for shape in _SHAPES:
        for match in shape.finditer(text):
            yield match.span(1)


def redact(text: str) -> str:
    """``text`` with every held value and every credential shape replaced by ``<redacted>``,
    in whichever form (as written, JSON-escaped, percent-encoded) it stands there."""
    if len(text) < MIN_SECRET_LENGTH:
        return text
    spans: list[tuple[int, int]] = []
    for reading in _readings(text):
        with _held.lock:
            found = list(_held_spans(reading.text))
        found += _shape_spans(reading.text)
        spans += (reading.written(start, end) for start, end in found if end > start)
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start >= done:
            pieces += (text[done:start], REDACTED)
        done = max(done, end)  # overlapping spans are cut as one
    pieces.append(text[done:])
    return "".join(pieces)

"""Reading the README and docs/*.md: fenced blocks, sections, tables, headings and links.

Used by tests/test_docs.py (the commands run, the links resolve) and
tests/test_docs_tables.py (the tables match the code), and by tests that hold one
doc to its subject (test_webconfig.py: security.md lists every web config key;
test_ops_deploy.py: deployment.md mounts the secret where the image reads it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ops_common import github_anchor

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS_DIR = REPO / "docs"
# Every Markdown file that documents the exporter: the README first, then docs/ by name.
DOCS = (README, *sorted(DOCS_DIR.glob("*.md")))

METRICS_DOC = DOCS_DIR / "metrics.md"
CONFIGURATION_DOC = DOCS_DIR / "configuration.md"
DEPLOYMENT_DOC = DOCS_DIR / "deployment.md"
SECURITY_DOC = DOCS_DIR / "security.md"

_FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it starts, its info string and its text."""

    doc: Path
    line: int
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def code_blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc``; a block indented in a list item loses that indent."""
    blocks: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    info, indent = "", ""
    for number, line in enumerate(lines, 1):
        fence = _FENCE.match(line)
        if not fence:
            continue
        if start is None:
            start, indent, info = number, fence.group(1), fence.group(2).strip()
        else:
            body = [
                text.removeprefix(indent) if text.startswith(indent) else text.lstrip()
                for text in lines[start : number - 1]
            ]
            blocks.append(Block(doc, start, info, "\n".join(body)))
            start = None
    return blocks


def prose(text: str) -> str:
    """``text`` with its fenced blocks blanked out: every offset and line number stays."""
    out, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            out.append(" " * len(line))
        else:
            out.append(" " * len(line) if fenced else line)
    return "\n".join(out)


def headings(doc: Path) -> list[str]:
    """The text of every heading of ``doc``, outside fenced blocks."""
    return re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(doc.read_text("utf-8")), re.M)


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``doc`` (a repeated one gets -1, -2, ...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings(doc):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(f"{anchor}-{count}" if count else anchor)
    return found


def links(doc: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link in ``doc``, outside code blocks and code spans."""
    text = prose(doc.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m[0]), text)
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    ]


def section(doc: Path, heading: str) -> str:
    """The body of ``doc``'s section ``heading``, up to the next heading of its level."""
    text = doc.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"{doc.relative_to(REPO)} has no section {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", prose(rest), re.MULTILINE)
    return rest[: end.start()] if end else rest


def _cells(line: str) -> list[str]:
    # Split on "|" but not on "\|" (an escaped pipe inside a cell, as in `text\|json`).
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text``: a list of rows, each {header: cell}."""
    found: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [h.lower() for h in _cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=False)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def tables_with(text: str, *columns: str) -> list[dict[str, str]]:
    """The rows of every table in ``text`` that has all of ``columns``."""
    return [
        row for table in tables(text) if table and set(columns) <= set(table[0]) for row in table
    ]


def ticked(cell: str) -> list[str]:
    """The `backticked` parts of a cell."""
    return re.findall(r"`([^`]+)`", cell)

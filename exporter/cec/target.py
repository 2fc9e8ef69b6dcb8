"""One target as the client reads it: a CEC account and its collection settings.

The settings layer validates the config file into these records; everything here
trusts them. A ``Secret`` never shows its value in ``repr`` or ``str``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Secret:
    """An app secret given inline or as a file; the file is re-read on each use.

    Re-reading lets an operator rotate the secret without a restart. ``repr``
    and ``str`` never show the value.
    """

    value: str | None = None
    file: str | None = None

    def read(self) -> str:
        """Return the secret, reading the file now if it comes from one."""
        if self.file is None:
            return self.value or ""
        return Path(self.file).read_text(encoding="utf-8").strip()

    def describe(self) -> str:
        """Where the secret comes from, for summaries: never the value."""
        return f"file {self.file}" if self.file else "inline (redacted)"

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__


@dataclass(frozen=True)
class TargetConfig:
    """One CEC account to collect from: its identity and collection settings."""

    name: str
    base_url: str
    app_key: str
    app_secret: Secret
    tenant_space_id: str | None = None
    timeout_seconds: float = 10.0
    page_size: int = 100
    max_concurrency: int = 4
    max_pages: int = 1000
    token_lifetime_seconds: int = 600
    cache_ttl_seconds: float = 0.0
    verify_tls: bool = True
    ca_file: str | None = None
    proxy: str | None = None
    pagination_as_strings: bool = False
    per_phone_metrics: bool = False
    max_response_bytes: int = 16 * 1024 * 1024
    requests_per_second: float = 0.0
    """0: unlimited; targets with the same base_url and app_key share one budget."""

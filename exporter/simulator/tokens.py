"""Access tokens issued by the simulated tokenByAkSk: random, expiring for real, revocable.

Each token belongs to the app (``app_key``) it was issued to, and is good for that app only.
A gateway that keeps one live token per app revokes the app's older tokens on each issue
(``exclusive``): a client that fetches a token per target, not per app, gets 401s.
"""

import secrets
import threading
import time
from collections import deque

# Expired tokens are swept on issue once the table grows past this, so it stays small.
_SWEEP_AT = 1024
# The most recent tokens issued are remembered (even once expired) so tests can look for leaks.
_ISSUED_KEPT = 1024


class TokenStore:
    """Thread-safe table of live tokens: their app and monotonic expiry time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, tuple[str, float]] = {}
        self._issued: deque[str] = deque(maxlen=_ISSUED_KEPT)

    def issue(self, lifetime_seconds: float, app: str = "", exclusive: bool = False) -> str:
        """A new random token of ``app`` valid for ``lifetime_seconds``; ``exclusive``
        revokes the app's older tokens."""
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            if exclusive:
                self._expiry = {t: e for t, e in self._expiry.items() if e[0] != app}
            if len(self._expiry) >= _SWEEP_AT:
                self._expiry = {t: e for t, e in self._expiry.items() if e[1] > now}
            self._expiry[token] = (app, now + lifetime_seconds)
            self._issued.append(token)
        return token

    def issued(self) -> list[str]:
        """Tokens issued so far (the most recent ones), oldest first, expired or not."""
        with self._lock:
            return list(self._issued)

    def is_live(self, token: str, app: str = "") -> bool:
        """Whether ``token`` was issued to ``app``, has not expired and was not revoked."""
        with self._lock:
            entry = self._expiry.get(token)
        return entry is not None and entry[0] == app and time.monotonic() < entry[1]

    def expire_all(self) -> None:
        """Revoke every token issued so far."""
        with self._lock:
            self._expiry.clear()

"""Access tokens issued by the simulated tokenByAkSk: random, expiring for real, revocable."""

import secrets
import threading
import time
from collections import deque

# Expired tokens are swept on issue once the table grows past this, so it stays small.
_SWEEP_AT = 1024
# The most recent tokens issued are remembered (even once expired) so tests can look for leaks.
_ISSUED_KEPT = 1024


class TokenStore:
    """Thread-safe table of live tokens and their monotonic expiry times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._issued: deque[str] = deque(maxlen=_ISSUED_KEPT)

    def issue(self, lifetime_seconds: float) -> str:
        """A new random token valid for ``lifetime_seconds``."""
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            if len(self._expiry) >= _SWEEP_AT:
                self._expiry = {t: e for t, e in self._expiry.items() if e > now}
            self._expiry[token] = now + lifetime_seconds
            self._issued.append(token)
        return token

    def issued(self) -> list[str]:
        """Tokens issued so far (the most recent ones), oldest first, expired or not."""
        with self._lock:
            return list(self._issued)

    def is_live(self, token: str) -> bool:
        """Whether ``token`` was issued, has not expired and was not revoked."""
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def expire_all(self) -> None:
        """Revoke every token issued so far."""
        with self._lock:
            self._expiry.clear()

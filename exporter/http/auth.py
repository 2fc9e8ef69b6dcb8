"""Basic auth against bcrypt hashes, and the rate limit, of the ``--web-config``.

bcrypt is slow on purpose, so a flood of guesses must not starve a real login: every
verdict (success or failure) is remembered by digest in a bounded cache that outlives
web-config reloads (a changed hash is another digest), and the checks that do run
take turns per client address, one at a time in a thread of their own, off the
event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from exporter.settings import RateLimit

BCRYPT_MAX_PASSWORD_BYTES = 72
"""bcrypt reads no further (and bcrypt 5 raises): longer passwords are simply wrong, as
Go's bcrypt answers ErrPasswordTooLong."""
CACHE_SIZE = 4096
QUEUED_PER_CLIENT = 16
"""bcrypt checks one client address may have waiting; more are answered 429."""


class VerdictCache:
    """Recent verdicts by digest of (user, password, hash): least recently used goes first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()

    def get(self, digest: bytes) -> bool | None:
        """The remembered verdict, or None."""
        verdict = self._verdicts.get(digest)
        if verdict is not None:
            self._verdicts.move_to_end(digest)
        return verdict

    def put(self, digest: bytes, verdict: bool) -> None:
        """Remember ``verdict``, forgetting the oldest beyond the bound."""
        self._verdicts[digest] = verdict
        self._verdicts.move_to_end(digest)
        while len(self._verdicts) > self._size:
            self._verdicts.popitem(last=False)


class FairQueue:
    """Runs blocking checks one at a time in a thread, taking client addresses in turn.

    A client with many checks waiting delays only itself: each other address gets
    the next turn.
    """

    def __init__(self, per_client: int = QUEUED_PER_CLIENT) -> None:
        self._per_client = per_client
        self._waiting: dict[str, deque[tuple[Callable[[], bool], asyncio.Future[bool]]]] = {}
        self._turns: deque[str] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self.checks = 0
        """Checks run so far (each one a bcrypt computation)."""

    async def run(self, client: str, check: Callable[[], bool]) -> bool | None:
        """``check()``'s answer in this client's turn; None when it has too many waiting."""
        queue = self._waiting.get(client)
        if queue is None:
            queue = self._waiting[client] = deque()
            self._turns.append(client)
        if len(queue) >= self._per_client:
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue.append((check, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._turns:
            client = self._turns.popleft()
            queue = self._waiting[client]
            check, future = queue.popleft()
            if queue:
                self._turns.append(client)
            else:
                del self._waiting[client]
            if future.done():  # its client went away
                continue
            self.checks += 1
            try:
                verdict = await loop.run_in_executor(self._thread, check)
            except ValueError:  # bcrypt's own refusal of an input: a wrong password
                verdict = False
            if not future.done():
                future.set_result(verdict)


def credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header, or None."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":  # case-insensitive (RFC 9110 11.1), as Go's BasicAuth
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (non-ASCII bytes included), or not UTF-8
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    """Checks ``Authorization: Basic`` against the users' bcrypt hashes.

    An unknown user is checked against a dummy salt of the users' highest cost, so it
    takes as long as a wrong password and timing does not reveal user names.
    """

    def __init__(
        self, users: Mapping[str, bytes], cost: int, cache: VerdictCache, queue: FairQueue
    ) -> None:
        self._users = users
        self._dummy = bcrypt.gensalt(rounds=max(cost, 4))
        self._cache = cache
        self._queue = queue

    async def check(self, header: str | None, client: str) -> bool | None:
        """True for a known user with the right password; None when ``client`` must wait."""
        found = credentials(header)
        if found is None:
            return False
        user, password = found
        secret = password.encode()
        if len(secret) > BCRYPT_MAX_PASSWORD_BYTES:
            return False
        hashed = self._users.get(user)
        digest = hashlib.sha256(b"\0".join((user.encode(), secret, hashed or b""))).digest()
        verdict = self._cache.get(digest)
        if verdict is not None:
            return verdict

        def check() -> bool:
            return bcrypt.checkpw(secret, hashed or self._dummy) and hashed is not None

        verdict = await self._queue.run(client, check)
        if verdict is not None:
            self._cache.put(digest, verdict)
        return verdict


class RateLimiter:
    """A token bucket as golang.org/x/time/rate: ``burst`` tokens, one more per interval.

    With ``burst`` 0 nothing is ever allowed (upstream's behaviour, kept as is).
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if one is there."""
        with self._lock:
            now = time.monotonic()
            refill = (now - self._at) / self.limit.interval_seconds
            self._tokens = min(float(self.limit.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


__all__ = ["BasicAuth", "FairQueue", "RateLimiter", "VerdictCache", "credentials"]

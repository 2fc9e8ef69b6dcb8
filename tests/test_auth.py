"""Basic auth under a flood of guesses: verdicts cached, checks fair per client address.

Real bcrypt, on a real event loop; ``FairQueue.checks`` counts the bcrypt checks run.
"""

from __future__ import annotations

import asyncio

import bcrypt
from support import basic_auth

from exporter.http.auth import BasicAuth, FairQueue, VerdictCache

COST = 6


def header(user: str, password: str) -> str:
    return basic_auth(user, password)["Authorization"]


def hashed(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=COST))


def test_failures_are_cached_as_well_as_successes() -> None:
    async def run() -> None:
        queue, cache = FairQueue(), VerdictCache()
        auth = BasicAuth({"alice": hashed("right")}, COST, cache, queue)
        assert await auth.check(header("alice", "wrong"), "10.0.0.1") is False
        assert await auth.check(header("alice", "wrong"), "10.0.0.1") is False
        assert await auth.check(header("mallory", "x"), "10.0.0.1") is False
        assert await auth.check(header("mallory", "x"), "10.0.0.1") is False
        assert queue.checks == 2
        assert await auth.check(header("alice", "right"), "10.0.0.2") is True
        assert await auth.check(header("alice", "right"), "10.0.0.2") is True
        assert queue.checks == 3

    asyncio.run(run())


def test_verdicts_outlive_a_web_config_change_for_unchanged_users() -> None:
    async def run() -> None:
        queue, cache = FairQueue(), VerdictCache()
        alice = hashed("right")
        first = BasicAuth({"alice": alice}, COST, cache, queue)
        assert await first.check(header("alice", "right"), "c") is True
        # A renewed certificate, a new user: alice's verdict is still known.
        second = BasicAuth({"alice": alice, "bob": hashed("b")}, COST, cache, queue)
        assert await second.check(header("alice", "right"), "c") is True
        assert queue.checks == 1
        # A changed hash is another digest: checked again, and the old password fails.
        third = BasicAuth({"alice": hashed("new")}, COST, cache, queue)
        assert await third.check(header("alice", "right"), "c") is False
        assert await third.check(header("alice", "new"), "c") is True
        assert queue.checks == 3

    asyncio.run(run())


def test_a_valid_login_gets_through_a_flood_of_guesses() -> None:
    """Clients take turns: one address's queue of guesses delays that address only."""

    async def run() -> None:
        queue = FairQueue()
        auth = BasicAuth({"alice": hashed("right")}, COST, VerdictCache(), queue)
        done: list[str] = []

        async def attempt(password: str, client: str) -> bool | None:
            verdict = await auth.check(header("alice", password), client)
            done.append(password)
            return verdict

        flood = [asyncio.ensure_future(attempt(f"guess-{i}", "attacker")) for i in range(12)]
        await asyncio.sleep(0)  # the guesses are queued first
        assert await attempt("right", "scraper") is True
        assert done.index("right") <= 2, done  # after at most two guesses, not twelve
        assert await asyncio.gather(*flood) == [False] * 12

    asyncio.run(run())


def test_one_address_cannot_queue_without_bound() -> None:
    async def run() -> None:
        queue = FairQueue(per_client=4)
        auth = BasicAuth({"alice": hashed("right")}, COST, VerdictCache(), queue)
        verdicts = await asyncio.gather(
            *(auth.check(header("alice", f"g{i}"), "attacker") for i in range(8))
        )
        assert verdicts.count(None) >= 3  # told to wait (429), no bcrypt spent on them
        assert queue.checks <= 5

    asyncio.run(run())


def test_passwords_past_bcrypts_limit_are_wrong_without_a_check() -> None:
    async def run() -> None:
        queue = FairQueue()
        auth = BasicAuth({"alice": hashed("right")}, COST, VerdictCache(), queue)
        assert await auth.check(header("alice", "x" * 73), "c") is False
        assert await auth.check(header("alice", "é" * 37), "c") is False  # 74 bytes
        assert queue.checks == 0

    asyncio.run(run())

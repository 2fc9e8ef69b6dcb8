"""Cancelled requests give their connection-pool slots back (encode/httpcore#1093).

httpcore 1.0.9 could leave a request cancelled just after the pool handed it a new,
not yet connected connection holding that slot for good; enough of them and every
later request waited for the pool until its deadline. httpx2 reclaims such
connections (pydantic/httpx2#983), so the client keeps one pool for its lifetime:
these tests cancel hundreds of collections at random moments, several at once on one
client (more requests than pool slots), then require normal collections in time.
Against httpx 0.28.1 + httpcore 1.0.9 without the old pool-renewal workaround, the
first normal collection here waits out its 10 s deadline: the pool is starved.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

from exporter.cec import CecClient, CecError, Snapshot
from exporter.config import parse_config
from exporter.metrics import ApiMetrics
from exporter.simulator import Fault, Simulator

CONCURRENCY = 2  # pool of CONCURRENCY + 1 slots; three collections at once overfill it
PARALLEL = 3
ROUNDS = 200
PHONES = 1000  # ten pages


def client_for(sim: Simulator, **settings: Any) -> CecClient:
    entry = {
        "name": "sim",
        "base_url": sim.url,
        "app_key": sim.config.app_key,
        "app_secret": sim.config.app_secret,
        "max_concurrency": CONCURRENCY,
        **settings,
    }
    target = parse_config({"targets": [entry]}).targets[0]
    return CecClient(target, ApiMetrics().observer("sim"))


async def cancelled_collections(client: CecClient, rng: random.Random) -> int:
    """ROUNDS rounds of PARALLEL collections, each cancelled after 0-30 ms; how many were."""
    cancelled = 0

    async def one(delay: float) -> None:
        nonlocal cancelled
        try:
            async with asyncio.timeout(delay):
                await client.collect()
        except TimeoutError:
            cancelled += 1

    for _ in range(ROUNDS):
        await asyncio.gather(*(one(rng.uniform(0.0, 0.03)) for _ in range(PARALLEL)))
    return cancelled


async def settled(sim: Simulator) -> None:
    """Wait until the simulator has no request in flight (the hung pages answered)."""
    async with asyncio.timeout(10):
        while sim.stats()["in_flight"]:
            await asyncio.sleep(0.05)


async def timed_collect(client: CecClient, seconds: float) -> tuple[Snapshot, float]:
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        snapshot = await client.collect(started + seconds)
    return snapshot, time.monotonic() - started


def test_cancelling_requests_under_pool_contention_leaks_no_slot(
    simulator: Callable[..., Simulator],
) -> None:
    sim = simulator(phones=PHONES, latency_ms=3.0, jitter_ms=6.0)
    # One page answers only after 1 s: no collection of the stress phase can finish.
    sim.set_faults([Fault("hang", pages=(5,), value=1)])
    expected = {key: n for key, n in sim.expected().counts.items() if n}

    async def scenario() -> None:
        client = client_for(sim)
        try:
            cancelled = await cancelled_collections(client, random.Random(1093))
            assert cancelled == ROUNDS * PARALLEL
            sim.clear_faults()
            sim.update(latency_ms=20.0, jitter_ms=0.0)  # pages overlap: C of them in flight
            await settled(sim)
            sim.reset_stats()
            # Ten pages, C=2, 20 ms each: about 0.12 s; a starved pool would wait out the 10 s.
            snapshot, seconds = await timed_collect(client, 10.0)
            assert snapshot.counts == expected
            assert seconds < 5.0
            assert sim.stats()["in_flight_max"] == CONCURRENCY
            # Contention again, with nothing cancelled: every collection completes in time.
            results = await asyncio.gather(*(timed_collect(client, 10.0) for _ in range(PARALLEL)))
            assert [r[0].counts for r in results] == [expected] * PARALLEL
        finally:
            with contextlib.suppress(CecError):
                await client.aclose()

    asyncio.run(scenario())

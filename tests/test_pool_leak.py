"""Cancelled requests leave nothing behind in the connection pool (encode/httpcore#1093).

httpcore 1.0.9 could leave a request cancelled just after the pool handed it a new,
not yet connected connection holding that connection for good: never idle, never
closed, owned by no request. In a capped pool enough of them starved every later
request until its deadline (the old ``CecClient._renew_pool`` replaced the pool after
any failed collection); in the uncapped shared pools of ``Upstream`` they would pile
up. httpx2 reclaims them (pydantic/httpx2#983), so pools live as long as their users.

The test cancels 600 collections at random moments, three at once on one client with
an in-flight cap smaller than their requests, then requires normal collections in
time and a pool holding only idle connections. Against httpx 0.28.1 + httpcore 1.0.9
(the same code, ``httpx2`` aliased to ``httpx``), the pool is left holding connections
that are not idle although no request is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from exporter.cec import CecClient, CecError, Snapshot
from exporter.cec.deadline import Deadline
from exporter.cec.errors import DeadlineExceeded
from exporter.cec.upstream import Upstream
from exporter.scrape.api_metrics import ApiMetrics
from exporter.settings import parse_config
from exporter.simulator import Fault, Simulator

CONCURRENCY = 2  # pages in flight per collection
MAX_INFLIGHT = CONCURRENCY + 1  # three collections at once contend for these
PARALLEL = 3
ROUNDS = 200
PHONES = 1000  # ten pages


def client_for(sim: Simulator) -> CecClient:
    entry = {
        "name": "sim",
        "base_url": sim.url,
        "app_key": sim.config.app_key,
        "app_secret": sim.config.app_secret,
        "max_concurrency": CONCURRENCY,
    }
    target = parse_config({"targets": [entry]}).targets[0]
    return CecClient(target, ApiMetrics().observer("sim"), Upstream(MAX_INFLIGHT))


def pool_connections(client: CecClient) -> list[Any]:
    """The connections in the client's pool (httpcore2's own list; httpx2 has no handle)."""
    return list(client.transport.http._transport._pool.connections)  # type: ignore[attr-defined]


async def cancelled_collections(client: CecClient, rng: random.Random) -> int:
    """ROUNDS rounds of PARALLEL collections, each cancelled after 0-30 ms; how many were.

    Half end by their own deadline, half are cancelled from outside (a scrape that left).
    """
    cancelled = 0

    async def one(delay: float, own_deadline: bool) -> None:
        nonlocal cancelled
        try:
            if own_deadline:
                await client.read_snapshot(Deadline(time.monotonic() + delay))
            else:
                async with asyncio.timeout(delay):
                    await client.read_snapshot()
        except (TimeoutError, DeadlineExceeded):
            cancelled += 1

    for number in range(ROUNDS):
        delays = [rng.uniform(0.0, 0.03) for _ in range(PARALLEL)]
        await asyncio.gather(*(one(delay, number % 2 == 0) for delay in delays))
    return cancelled


async def settled(sim: Simulator) -> None:
    """Wait until the simulator has no request in flight (the hung pages answered)."""
    async with asyncio.timeout(10):
        while sim.stats()["in_flight"]:
            await asyncio.sleep(0.05)


async def timed_collect(client: CecClient, seconds: float) -> tuple[Snapshot, float]:
    started = time.monotonic()
    snapshot = await client.read_snapshot(Deadline(started + seconds))
    return snapshot, time.monotonic() - started


@pytest.mark.slow
def test_cancelling_requests_under_contention_leaves_no_connection_behind(
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
            # No request runs now: every connection left must be idle, ready for reuse.
            connections = pool_connections(client)
            assert connections
            assert [c for c in connections if not c.is_idle()] == []
            assert len(connections) <= MAX_INFLIGHT
        finally:
            with contextlib.suppress(CecError):
                await client.aclose()

    asyncio.run(scenario())

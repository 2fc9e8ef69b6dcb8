"""Scale (issue 11): shared connection pools, the in-flight cap and per-app rate budgets.

Many targets on one simulator, over loopback: the simulator counts the requests in
flight and the connections open at once, so the caps are checked where the vendor
would feel them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import RunningExporter, sample, target_entry

from exporter.cec.errors import DeadlineExceeded
from exporter.cec.ratelimit import RateLimiter
from exporter.cec.upstream import group_rates
from exporter.settings import load_config
from exporter.simulator import Simulator


def test_targets_on_one_endpoint_share_a_pool_and_the_inflight_cap(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """12 accounts x 4 pages in flight would be 48 requests and 60 sockets; the cap is 6."""
    sim = simulator(phones=1000, latency_ms=30)
    targets = [target_entry(sim, f"acct-{i:02d}") for i in range(12)]
    config = write_config(max_inflight_requests=6, defaults={"max_concurrency": 4}, targets=targets)
    running = exporter_server(config)
    assert running.exporter.upstream.pools == 1
    text = running.metrics()
    for i in range(12):
        assert sample(text, "cec_up", target=f"acct-{i:02d}") == 1.0
    stats = sim.stats()
    assert stats["query_requests"] == 12 * 10
    assert 1 < stats["in_flight_max"] <= 6  # type: ignore[operator]
    assert stats["connections_open_max"] <= 6, stats  # type: ignore[operator]
    assert stats["connections"] <= 6, stats  # type: ignore[operator]
    # A second scrape reuses the same connections.
    running.metrics()
    assert sim.stats()["connections"] == stats["connections"]


def test_pools_follow_reloads(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    one, two = simulator(phones=10), simulator(phones=10)
    config = write_config(
        targets=[target_entry(one, "a"), target_entry(one, "b"), target_entry(two, "c")]
    )
    running = exporter_server(config)
    assert running.exporter.upstream.pools == 2
    assert running.exporter.upstream.max_inflight == 64
    changed = config.read_text().replace(two.url, one.url)
    config.write_text(changed + "max_inflight_requests: 3\n")
    assert running.exporter.reload()
    assert running.exporter.upstream.pools == 1
    assert running.exporter.upstream.max_inflight == 3
    text = running.metrics()
    assert sample(text, "cec_up", target="c") == 1.0
    assert one.stats()["query_requests"] == 3
    assert two.stats()["query_requests"] == 0


def test_rate_budget_is_shared_per_app(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """Two accounts of one app share 5 requests/s; an account of another app has its own."""
    shared, other = simulator(phones=300), simulator(phones=300)
    config = write_config(
        defaults={"requests_per_second": 5},
        targets=[target_entry(shared, "a1"), target_entry(shared, "a2"), target_entry(other, "b")],
    )
    running = exporter_server(config)
    started = time.monotonic()
    text = running.metrics()
    wall = time.monotonic() - started
    for name in ("a1", "a2", "b"):
        assert sample(text, "cec_up", target=name) == 1.0
    # a1 + a2: one shared token and six pages = 7 requests at 5/s: 6 intervals of 0.2 s.
    slowest_a = max(
        sample(text, "cec_collection_duration_seconds", target=n) or 0 for n in ("a1", "a2")
    )
    assert slowest_a >= 1.15
    assert shared.stats()["token_requests"] == 1
    # b: a token and three pages on a budget of its own: 3 intervals.
    b = sample(text, "cec_collection_duration_seconds", target="b") or 0
    assert 0.55 <= b < 1.3
    assert wall < 10
    assert shared.stats()["query_requests"] == 6


def test_a_budget_that_cannot_fit_fails_with_deadline_early(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """11 requests at 2/s need 5 s; with 2 s the collection fails without waiting past it."""
    sim = simulator(phones=1000)
    config = write_config(
        targets=[target_entry(sim, "slow", requests_per_second=2, timeout_seconds=2)]
    )
    running = exporter_server(config)
    started = time.monotonic()
    text = running.metrics()
    assert time.monotonic() - started < 4
    assert sample(text, "cec_up", target="slow") == 0.0
    assert sample(text, "cec_collection_failures_total", target="slow", reason="deadline") == 1
    (collection,) = running.exporter.recent()["slow"]
    assert collection.error is not None
    assert "requests_per_second" in collection.error
    assert collection.duration <= 2.2
    assert sim.stats()["query_requests"] < 5


def test_rate_limiter_spaces_requests_and_refuses_a_slot_past_the_deadline() -> None:
    async def run() -> None:
        clock = [100.0]  # frozen: each wait reports the slot's distance; sleeps are short
        limiter = RateLimiter(4, clock=lambda: clock[0])
        assert await limiter.wait(deadline=101) == 0
        assert await limiter.wait(deadline=101) == pytest.approx(0.25)
        with pytest.raises(DeadlineExceeded, match="requests_per_second 4"):
            await limiter.wait(deadline=100.4)  # the next slot is at 100.5
        # The refused slot was not reserved: the next caller gets it.
        assert await limiter.wait(deadline=101) == pytest.approx(0.5)

    asyncio.run(run())


def test_group_rate_is_the_lowest_non_zero(write_config: Callable[..., Path]) -> None:
    def entry(name: str, key: str, rate: float) -> dict[str, Any]:
        return {
            "name": name,
            "base_url": "http://127.0.0.1:9",
            "app_key": key,
            "app_secret": "s",
            "requests_per_second": rate,
        }

    config = load_config(
        write_config(
            targets=[
                entry("a", "k", 0),
                entry("b", "k", 10),
                entry("c", "k", 4),
                entry("d", "other", 0),
            ]
        )
    )
    assert group_rates(config.targets) == {
        ("http://127.0.0.1:9", "k"): 4,
        ("http://127.0.0.1:9", "other"): 0,
    }


# --- a fair shared budget: round-robin between targets, no slot held by a cancelled waiter ---


def test_rate_limiter_serves_waiting_targets_round_robin() -> None:
    """Target big queues five requests, then small one: small's comes second, not sixth."""

    async def run() -> list[str]:
        limiter = RateLimiter(100)  # 10 ms slots
        order: list[str] = []

        async def request(party: str) -> None:
            await limiter.wait(deadline=time.monotonic() + 10, party=party)
            order.append(party)

        assert await limiter.wait(deadline=time.monotonic() + 10, party="big") == 0
        big = [asyncio.ensure_future(request("big")) for _ in range(5)]
        await asyncio.sleep(0)  # big's five are queued first
        small = [asyncio.ensure_future(request("small")) for _ in range(2)]
        await asyncio.gather(*big, *small)
        return order

    assert asyncio.run(run()) == ["big", "small", "big", "small", "big", "big", "big"]


async def queue_requests(limiter: RateLimiter, party: str, n: int) -> list[asyncio.Future[float]]:
    """``party`` takes the free slot, then queues ``n`` more requests (10 s deadlines)."""
    deadline = time.monotonic() + 10
    await limiter.wait(deadline, party=party)
    queued = [asyncio.ensure_future(limiter.wait(deadline, party=party)) for _ in range(n)]
    await asyncio.sleep(0)  # each is in the queue now
    return queued


def test_rate_limiter_refuses_only_what_fair_service_cannot_fit() -> None:
    """Beside eight waiting requests of another target, a new one is one slot away, not nine."""

    async def run() -> None:
        limiter = RateLimiter(4)  # 0.25 s slots
        big = await queue_requests(limiter, "big", 8)
        assert limiter.slots_ahead("small") == 1
        assert limiter.slots_ahead("big") == 8
        waited = await limiter.wait(deadline=time.monotonic() + 0.6, party="small")
        assert waited < 0.6
        # big's next request waits behind the 7 of its own still queued: about 2 s away,
        # refused at once against a 1 s deadline.
        with pytest.raises(DeadlineExceeded, match="requests_per_second 4"):
            await limiter.wait(deadline=time.monotonic() + 1, party="big")
        for task in big:
            task.cancel()
        await asyncio.gather(*big, return_exceptions=True)

    asyncio.run(run())


def test_rate_limiter_cancelled_waiters_hold_no_slot() -> None:
    """Requests cancelled while they wait (a deadline, a failed sibling, a reload) give way."""

    async def run() -> None:
        limiter = RateLimiter(2)  # 0.5 s slots
        big = await queue_requests(limiter, "big", 6)
        await asyncio.sleep(0.05)
        for task in big:
            task.cancel()
        await asyncio.gather(*big, return_exceptions=True)
        assert limiter.waiting == 0
        started = time.monotonic()
        # Only the slot big used is spaced from: the next one is at most 0.5 s away.
        await limiter.wait(deadline=started + 0.7, party="small")
        await limiter.wait(deadline=started + 1.2, party="small")
        assert time.monotonic() - started < 1.2

    asyncio.run(run())


def shared_app(sim: Simulator, rate: float, **big: Any) -> list[dict[str, Any]]:
    """Targets big (90 phones in 18 pages, eight in flight) and small (one page) on one budget.

    Both read the same simulated account; the page size makes one big and the other small.
    """
    shared = {"requests_per_second": rate}
    return [
        {**target_entry(sim, "big"), **shared, "page_size": 5, "max_concurrency": 8, **big},
        {**target_entry(sim, "small"), **shared, "page_size": 100},
    ]


def probe_small(running: RunningExporter) -> float:
    """``/probe`` small with a 2 s scrape timeout; it must be up: its collection time."""
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
    text = running.metrics("/probe?target=small", headers=headers)
    assert sample(text, "cec_up", target="small") == 1.0
    duration = sample(text, "cec_collection_duration_seconds", target="small")
    assert duration is not None
    return duration


def test_a_target_that_gave_up_leaves_the_shared_budget_to_the_next(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """Big cannot fit its 19 requests in 3 s at 2/s and gives up; small, probed next, is up."""
    sim = simulator(phones=90, latency_ms=5)
    running = exporter_server(write_config(targets=shared_app(sim, 2, timeout_seconds=3)))
    big = running.metrics("/probe?target=big")
    assert sample(big, "cec_up", target="big") == 0.0
    assert probe_small(running) < 1.6


def test_a_small_target_beside_a_busy_one_on_one_budget_is_served_fairly(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """While big's eight workers wait for the 4/s budget, small's page still fits in 2 s."""
    sim = simulator(phones=90, latency_ms=5)
    running = exporter_server(write_config(targets=shared_app(sim, 4, timeout_seconds=20)))
    result: dict[str, str] = {}

    def scrape_big() -> None:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "30"}
        result["big"] = running.metrics("/probe?target=big", headers=headers)

    scraper = threading.Thread(target=scrape_big)
    scraper.start()
    deadline = time.monotonic() + 10
    while sim.stats()["query_requests"] < 3:  # big's workers are paging
        assert time.monotonic() < deadline, "big never started paging"
        time.sleep(0.02)
    assert probe_small(running) < 1.5
    scraper.join(timeout=30)
    assert sample(result["big"], "cec_up", target="big") == 1.0  # 19 requests, about 5 s

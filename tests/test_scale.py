"""Scale (issue 11): shared connection pools, the in-flight cap and per-app rate budgets.

Many targets on one simulator, over loopback: the simulator counts the requests in
flight and the connections open at once, so the caps are checked where the vendor
would feel them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningExporter, sample, target_entry

from exporter.cec.errors import DeadlineExceeded
from exporter.cec.upstream import RateLimiter, group_rates
from exporter.config import load_config
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
    # a1 + a2: two tokens and six pages = 8 requests at 5/s: at least 7 intervals of 0.2 s.
    slowest_a = max(
        sample(text, "cec_collection_duration_seconds", target=n) or 0 for n in ("a1", "a2")
    )
    assert slowest_a >= 1.35
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

"""Scale (issue 11): shared connection pools and the in-flight cap.

Many targets on one simulator, over loopback: the simulator counts the requests in
flight and the connections open at once, so the caps are checked where the vendor
would feel them. The per-app rate budget: test_budget.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import RunningExporter, sample, target_entry

from exporter.simulator import Simulator


@pytest.mark.slow
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

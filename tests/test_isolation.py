"""One target never hurts another: no shared cookies, bounded vendor text, lean history.

Every target shares one event loop, one connection pool per ``base_url`` and one
process's memory (SPEC section 6). Over loopback against the simulator, whose
``/_sim/state`` tells what the exporter sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import RunningExporter, sample, target_entry

from exporter.simulator import Simulator

StartSim = Callable[..., Simulator]
WriteConfig = Callable[..., Path]
StartExporter = Callable[..., RunningExporter]


def test_targets_sharing_a_pool_send_no_cookie_the_vendor_set(
    simulator: StartSim, write_config: WriteConfig, exporter_server: StartExporter
) -> None:
    """A gateway's ``Set-Cookie`` for one tenant space is never sent, by any target."""
    sim = simulator(phones=250, set_cookie=True)
    entries = [
        target_entry(sim, "a", tenant_space_id="ts1"),
        target_entry(sim, "b", tenant_space_id="ts2"),
    ]
    running = exporter_server(write_config(targets=entries))
    assert running.exporter.upstream.pools == 1  # one pool: what a jar in it would share
    for _ in range(3):
        text = running.metrics()
        assert sample(text, "cec_up", target="a") == 1
        assert sample(text, "cec_up", target="b") == 1
    stats = sim.stats()
    assert stats["tenant_space_ids"] == ["ts1", "ts2"]
    assert stats["query_requests"] == 3 * 2 * 3
    assert stats["cookies"] == [], "a cookie the vendor set was sent back"

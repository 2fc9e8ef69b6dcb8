"""One target never hurts another: no shared cookies, bounded vendor text, lean history.

Every target shares one event loop, one connection pool per ``base_url`` and one
process's memory (SPEC section 6). Over loopback against the simulator, whose
``/_sim/state`` tells what the exporter sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from support import RunningExporter, sample, target_entry
from support_procs import ServeProcess

from exporter.simulator import Fault, Simulator

StartSim = Callable[..., Simulator]
WriteConfig = Callable[..., Path]
StartExporter = Callable[..., RunningExporter]
MB = 1024 * 1024


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


HUGE_RET_MSG = 16_000_000  # under the default 16 MiB max_response_bytes: it is read whole
SCRAPES = 5


@pytest.mark.slow
def test_a_huge_ret_msg_on_one_target_neither_downs_another_nor_bloats_memory_or_log(
    simulator: StartSim, write_config: WriteConfig, serve_process: Callable[..., ServeProcess]
) -> None:
    """A stand-in vendor answers target a with a 16 MB ``retMsg``; b stays up in time.

    Before, the text went whole into the error, each log line and the history: b was
    deadline-down (the loop busy logging), RSS grew about 30 MB and the log 16 MB a scrape.
    """
    huge, healthy = simulator(phones=10), simulator(phones=250, latency_ms=100)
    huge.set_faults([Fault("huge_ret_msg", value=HUGE_RET_MSG)])
    entries = [target_entry(huge, "a"), target_entry(healthy, "b")]
    server = serve_process("--config", str(write_config(targets=entries))).start()
    process = server.ps
    rss: list[int] = []
    with httpx2.Client(timeout=30) as client:
        for _ in range(SCRAPES):
            response = client.get(
                server.url + "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
            )
            assert response.status_code == 200
            text = response.text
            assert sample(text, "cec_up", target="a") == 0
            # b alone takes about 0.2 s: page 0, then pages 1 and 2 at once, 100 ms each.
            assert sample(text, "cec_up", target="b") == 1, "the healthy target went down"
            rss.append(process.memory_info().rss)
        landing = client.get(server.url + "/").text
    failed = sample(text, "cec_collection_failures_total", target="a", reason="ret_code")
    assert failed == SCRAPES
    assert huge.stats()["faults_applied"] == {"huge_ret_msg": SCRAPES}
    # Bounded: the text is clipped where it is parsed, so neither the history of
    # collections nor each failure's log line holds it.
    assert rss[-1] - rss[0] < 20 * MB, [n // MB for n in rss]
    assert len(landing) < 64 * 1024
    output = server.stop()
    assert len(output) < 64 * 1024, f"{len(output)} bytes of log"
    failures = [line for line in output.splitlines() if "collection failed" in line]
    assert len(failures) == SCRAPES
    assert all("query failed: xxx" in line for line in failures)  # the head is still shown


HISTORY = 10
PER_PHONE_PHONES = 50_000


@pytest.mark.slow
def test_history_keeps_summaries_so_memory_stays_flat_over_ten_per_phone_scrapes(
    simulator: StartSim, write_config: WriteConfig, serve_process: Callable[..., ServeProcess]
) -> None:
    """Only the collection being served holds its data; the landing page's past ones do not."""
    sim = simulator(phones=PER_PHONE_PHONES, tenants=5)
    entry = target_entry(sim, "big", per_phone_metrics=True, timeout_seconds=60)
    server = serve_process("--config", str(write_config(targets=[entry]))).start()
    process = server.ps
    rss: list[int] = []
    with httpx2.Client(timeout=120) as client:
        for _ in range(HISTORY):
            text = client.get(server.url + "/metrics").text
            assert sample(text, "cec_up", target="big") == 1
            rss.append(process.memory_info().rss)
        landing = client.get(server.url + "/").text
    # Held whole, each past collection keeps its per-phone map: about 10 MB a scrape at
    # 50,000 phones (90 MB over these ten). Summaries leave only the allocator settling
    # (about 10 MB, then flat; tracemalloc sees the Python heap flat from the second).
    assert rss[-1] - rss[1] < 40 * MB, [n // MB for n in rss]
    rows = landing.count("<tr>") - 1  # the header row
    assert rows == HISTORY
    assert landing.count(f"<td>{PER_PHONE_PHONES}</td>") == HISTORY  # phone records of each

"""The shared ``requests_per_second`` budget of one vendor app (issue 23, A.1 and A.2).

Whole collections are admitted: one that cannot fit before its deadline sends nothing
and fails with reason ``budget``; the targets refused go first next time; and requests
of one app never leave closer together than its interval, even after another app held
every in-flight place. Checked against the simulator, which sees the requests.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

from support import RunningExporter, sample, samples_named, target_entry

from exporter.simulator import Fault, Simulator

TARGETS, PAGES, RATE, SCRAPE_TIMEOUT = 30, 10, 50.0, 3.5
FIT = 15
"""Whole collections the budget fits: the deadline (3.5 s less 10 %) holds 157 slots at
50/s, and each collection needs its 10 pages (the token is held)."""


def per_target(text: str, name: str, **labels: str) -> dict[str, float]:
    """``name``'s samples with ``labels``, summed per target."""
    found: dict[str, float] = {}
    for sample_labels, value in samples_named(text, name):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            target = sample_labels["target"]
            found[target] = found.get(target, 0.0) + value
    return found


def test_a_budget_for_half_the_targets_keeps_half_up_and_the_other_half_next_time(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """30 targets x 10 pages at 50/s in 3.5 s scrapes: the budget fits 15 whole collections.

    Interleaved pages left 5-6 up per scrape (a different few each time), and 60 % of
    the requests went to collections that then failed. Whole collections: at least 12 up
    each scrape, the others refused at once with reason ``budget`` and no request sent,
    and each target refused is up the next scrape.
    """
    sim = simulator(phones=PAGES * 100)
    targets = [target_entry(sim, f"t{i:02d}") for i in range(TARGETS)]
    running = exporter_server(write_config(defaults={"requests_per_second": RATE}, targets=targets))
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    text = running.metrics(headers=headers)  # a token, and each target's page count
    refused_before: set[str] = set()
    for scrape in range(3):
        requests_before = per_target(text, "cec_api_requests_total")
        budget_before = per_target(text, "cec_collection_failures_total", reason="budget")
        started = time.monotonic()
        text = running.metrics(headers=headers)
        assert time.monotonic() - started < SCRAPE_TIMEOUT
        up = {t for t, v in per_target(text, "cec_up").items() if v == 1}
        down = {f"t{i:02d}" for i in range(TARGETS)} - up
        assert len(up) >= 0.8 * FIT, f"scrape {scrape}: {len(up)} of {TARGETS} up"
        requests = per_target(text, "cec_api_requests_total")
        budget = per_target(text, "cec_collection_failures_total", reason="budget")
        for target in down:
            assert budget[target] == budget_before[target] + 1, (scrape, target)
            assert requests[target] == requests_before[target], f"{target} sent requests"
        assert refused_before <= up, f"scrape {scrape}: refused twice: {refused_before - up}"
        refused_before = down


def test_one_apps_requests_stay_paced_after_another_app_held_every_inflight_place(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """App b pages at 4/s; app a's two slow pages hold both in-flight places for 1.5 s.

    Rate slots taken before the in-flight place sent b's queued requests 1-2 ms apart
    when a's pages ended (a rate-limited gateway answers 429). A slot is taken only when
    the request can leave: no two of b's requests closer than 0.25 s.
    """
    slow, paced = simulator(phones=100), simulator(phones=2000)
    slow.set_faults([Fault("slow", value=1.5)])
    config = write_config(
        max_inflight_requests=2,
        targets=[
            target_entry(slow, "a1"),
            target_entry(slow, "a2"),
            target_entry(paced, "b", requests_per_second=4, timeout_seconds=30),
        ],
    )
    running = exporter_server(config)
    results: dict[str, str] = {}

    def probe(name: str) -> None:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "30"}
        results[name] = running.metrics(f"/probe?target={name}", headers=headers)

    paging = threading.Thread(target=probe, args=("b",))
    paging.start()
    deadline = time.monotonic() + 10
    while paced.stats()["query_requests"] < 2:  # b is paging
        assert time.monotonic() < deadline, "b never started paging"
        time.sleep(0.02)
    stalls = [threading.Thread(target=probe, args=(name,)) for name in ("a1", "a2")]
    for thread in stalls:
        thread.start()
    for thread in [*stalls, paging]:
        thread.join(timeout=40)
    assert sample(results["b"], "cec_up", target="b") == 1.0
    assert slow.stats()["faults_applied"] == {"slow": 2}, "a's pages held no place"
    arrivals = [at for _, at in paced.stats()["arrivals"]]  # type: ignore[union-attr]
    assert len(arrivals) == 1 + 20  # b's token and pages
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert max(gaps) > 1.0, "b's requests never waited for a's pages: no stall to test"
    assert min(gaps) >= 0.2, f"b's requests left {min(gaps) * 1000:.0f} ms apart"

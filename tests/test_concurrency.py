"""Scale and concurrency: concurrent paging, the scrape deadline, coalescing, cache, retries.

Everything goes over loopback: the simulator answers, a real exporter collects and
serves ``/metrics``, and the simulator's own request counters say what the exporter
asked for. Speed is not asserted here (see ``bench/bench_collect.py``); only generous
upper bounds that prove a deadline is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import RunningExporter, log_line, run_cli, sample, samples_named, target_entry
from support import softphone_counts as counts

from exporter.simulator import Fault, Simulator

Q = "queryPhone"
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
COUNT_SERIES = (
    "cec_softphones",
    "cec_softphones_allocated",
    "cec_registration_endpoint_info",
    "cec_collection_age_seconds",
)

StartSim = Callable[..., Simulator]
WriteConfig = Callable[..., Path]
StartExporter = Callable[..., RunningExporter]


# --- helpers ------------------------------------------------------------------------------


def expected_counts(sim: Simulator) -> dict[tuple[str, str], float]:
    return {key: float(n) for key, n in sim.expected().counts.items()}


def endpoints(text: str, target: str = "sim") -> set[tuple[str, ...]]:
    keys = ("mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port")
    return {
        tuple(labels[k] for k in keys)
        for labels, _ in samples_named(text, "cec_registration_endpoint_info")
        if labels["target"] == target
    }


def up(text: str, target: str = "sim") -> float | None:
    return sample(text, "cec_up", target=target)


def requests_total(text: str, outcome: str, target: str = "sim", api: str = Q) -> float:
    return sample(text, "cec_api_requests_total", target=target, api=api, outcome=outcome) or 0.0


def series_of(text: str, name: str, target: str) -> list[tuple[dict[str, str], float]]:
    return [(lb, v) for lb, v in samples_named(text, name) if lb.get("target") == target]


def stat(sim: Simulator, name: str) -> Any:
    return sim.stats()[name]


def by_page(sim: Simulator) -> dict[int, int]:
    return {int(k): int(v) for k, v in sim.stats()["query_requests_by_page"].items()}


def timed_scrape(
    running: RunningExporter, scrape_timeout: float | None = None
) -> tuple[float, str]:
    headers = {TIMEOUT_HEADER: str(scrape_timeout)} if scrape_timeout is not None else {}
    started = time.monotonic()
    text = running.metrics(headers=headers)
    return time.monotonic() - started, text


@pytest.fixture
def serve(
    write_config: WriteConfig, exporter_server: StartExporter
) -> Callable[..., RunningExporter]:
    """Factory: ``serve(entry, ...)`` writes a config with these targets and serves it."""

    def start(*entries: dict[str, Any], **defaults: Any) -> RunningExporter:
        data: dict[str, Any] = {"targets": list(entries)}
        if defaults:
            data["defaults"] = defaults
        return exporter_server(write_config(data))

    return start


# --- exact counts while pages finish out of order -----------------------------------------


@pytest.mark.parametrize("mode", ["single", "pool"])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_exact_counts_with_pages_finishing_out_of_order(
    simulator: StartSim, serve: Callable[..., RunningExporter], mode: str, concurrency: int
) -> None:
    # Jitter up to 8x the latency: with 8 pages in flight, later offsets often finish first.
    sim = simulator(
        phones=5_003,  # a short last page
        tenants=7,
        suspended_ratio=0.13,
        unknown_ratio=0.02,
        mode=mode,
        pool_nodes=3,
        latency_ms=1,
        jitter_ms=8,
    )
    running = serve(target_entry(sim, max_concurrency=concurrency))
    text = running.metrics()

    assert up(text) == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 5_003
    assert counts(text) == expected_counts(sim)
    assert sum(counts(text).values()) == 5_003
    assert endpoints(text) == set(sim.expected().endpoints)
    assert by_page(sim) == dict.fromkeys(range(51), 1)  # every page exactly once
    assert requests_total(text, "success") == 51
    in_flight_max = stat(sim, "in_flight_max")
    assert 1 <= in_flight_max <= concurrency
    if concurrency > 1:
        assert in_flight_max > 1, "pages were not fetched concurrently"


def test_exact_counts_through_the_scrape_command(
    simulator: StartSim, write_config: WriteConfig
) -> None:
    sim = simulator(phones=4_321, tenants=5, suspended_ratio=0.2, mode="pool", jitter_ms=5)
    path = write_config(targets=[target_entry(sim, max_concurrency=8)])
    result = run_cli("scrape", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert counts(result.stdout) == expected_counts(sim)
    assert sample(result.stdout, "cec_softphones_allocated", target="sim") == 4_321


# --- pages that disagree ------------------------------------------------------------------


def test_duplicates_across_pages_count_once(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000, tenants=4, suspended_ratio=0.25, jitter_ms=4)
    # Each faulted page repeats the first phone of the previous page (page 0: its own).
    sim.set_faults([Fault(kind="duplicate", pages=(0, 3, 4, 9))])
    running = serve(target_entry(sim, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 1
    assert stat(sim, "faults_applied") == {"duplicate": 4}
    assert counts(text) == expected_counts(sim)
    assert sum(counts(text).values()) == 1_000


@pytest.mark.parametrize("shift", [+250, -300])
def test_total_changing_on_a_later_page_is_read_again_from_the_first_page(
    simulator: StartSim, serve: Callable[..., RunningExporter], shift: int
) -> None:
    sim = simulator(phones=1_000, tenants=3)
    sim.set_faults([Fault(kind="total_shift", pages=(6,), value=shift, times=1)])
    running = serve(target_entry(sim, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 1
    assert stat(sim, "faults_applied") == {"total_shift": 1}
    assert sample(text, "cec_softphones_allocated", target="sim") == 1_000
    assert by_page(sim) == dict.fromkeys(range(10), 2)  # two whole passes, one collection
    assert counts(text) == expected_counts(sim)


def test_a_first_page_total_the_records_do_not_reach_is_read_again(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000, tenants=3)
    # Page 0 claims 1,150 phones once: pages 10 and 11 come back empty, 1,000 != 1,150.
    sim.set_faults([Fault(kind="total_shift", pages=(0,), value=150, times=1)])
    running = serve(target_entry(sim, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 1_000
    assert by_page(sim) == {**dict.fromkeys(range(10), 2), 10: 1, 11: 1}
    assert counts(text) == expected_counts(sim)


# --- the scrape deadline ------------------------------------------------------------------


@pytest.mark.slow
def test_a_hanging_page_is_cut_at_the_deadline_and_never_delays_another_target(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    slow = simulator(phones=1_000)
    healthy = simulator(phones=500, tenants=2)
    slow.set_faults([Fault(kind="hang", pages=(4,), value=30)])
    running = serve(
        target_entry(slow, "slow", max_concurrency=4),
        target_entry(healthy, "healthy"),
        timeout_seconds=20,
    )

    elapsed, text = timed_scrape(running, scrape_timeout=3)

    assert elapsed < 3.0, f"answered after {elapsed:.2f}s"
    assert up(text, "slow") == 0
    assert up(text, "healthy") == 1, "a hanging target delayed or failed another"
    healthy_duration = sample(text, "cec_collection_duration_seconds", target="healthy")
    assert healthy_duration is not None
    assert healthy_duration < 2.0  # it did not wait for the other target
    assert counts(text, "healthy") == expected_counts(healthy)
    for name in COUNT_SERIES:
        assert series_of(text, name, "slow") == [], f"{name} shown for a failed target"
    assert requests_total(text, "timeout", "slow") == 1  # the page cut in flight, counted once
    assert requests_total(text, "success", "slow") == 9
    duration = sample(text, "cec_collection_duration_seconds", target="slow")
    assert duration is not None
    assert duration < 3.0

    slow.clear_faults()
    text = running.metrics(headers={TIMEOUT_HEADER: "3"})
    assert up(text, "slow") == 1
    assert counts(text, "slow") == expected_counts(slow)


@pytest.mark.slow
def test_a_joined_scrape_gives_up_at_its_own_deadline_while_the_collection_goes_on(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=500)
    sim.set_faults([Fault(kind="slow", pages=(0,), value=2.5, times=1)])
    running = serve(target_entry(sim, timeout_seconds=20))
    owner: dict[str, Any] = {}

    def first_scrape() -> None:  # no header: its budget is timeout_seconds
        owner["elapsed"], owner["text"] = timed_scrape(running)

    thread = threading.Thread(target=first_scrape)
    thread.start()
    deadline = time.monotonic() + 5
    while stat(sim, "query_requests") == 0:  # the collection is in flight
        assert time.monotonic() < deadline, "the first scrape never reached the simulator"
        time.sleep(0.02)

    elapsed, text = timed_scrape(running, scrape_timeout=1)
    assert elapsed < 2.0, f"the joined scrape waited {elapsed:.2f}s, past its own deadline"
    assert up(text) == 0
    for name in COUNT_SERIES:
        assert series_of(text, name, "sim") == []

    thread.join(timeout=15)
    assert not thread.is_alive()
    assert up(owner["text"]) == 1, "the collection in flight was cancelled by a joiner"
    assert counts(owner["text"]) == expected_counts(sim)
    assert owner["elapsed"] > 2.0  # it did wait for the slow page
    assert stat(sim, "query_requests") == 5  # one collection: the joiner started none
    assert stat(sim, "tokens_issued") == 1


# --- coalescing and the cache -------------------------------------------------------------


@pytest.mark.slow
def test_simultaneous_scrapes_cost_one_collection_upstream(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000, latency_ms=2)
    # The first page is slow once, so every scrape arrives while the collection is in flight.
    sim.set_faults([Fault(kind="slow", pages=(0,), value=1.0, times=1)])
    running = serve(target_entry(sim, max_concurrency=4, cache_ttl_seconds=0))
    barrier = threading.Barrier(20)
    answers: list[str] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            with httpx2.Client(timeout=30) as client:
                barrier.wait(timeout=10)
                response = client.get(running.url + "/metrics")
                response.raise_for_status()
                answers.append(response.text)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(answers) == 20
    assert all(up(text) == 1 for text in answers)
    assert all(counts(text) == expected_counts(sim) for text in answers)
    assert stat(sim, "token_requests") == 1
    assert stat(sim, "tokens_issued") == 1
    assert stat(sim, "query_requests") == 10  # one collection of 10 pages, not 20
    assert by_page(sim) == dict.fromkeys(range(10), 1)


def test_cache_ttl_serves_a_recent_success_without_asking_upstream(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=300)
    running = serve(target_entry(sim, cache_ttl_seconds=30))
    first = running.metrics()
    assert up(first) == 1
    assert sample(first, "cec_collection_age_seconds", target="sim") == 0
    sim.reset_stats()
    time.sleep(0.05)

    second = running.metrics()
    assert stat(sim, "query_requests") == 0
    assert stat(sim, "token_requests") == 0
    assert up(second) == 1
    age = sample(second, "cec_collection_age_seconds", target="sim")
    assert age is not None
    assert 0 < age < 30
    assert counts(second) == counts(first)
    assert sample(second, "cec_last_success_timestamp_seconds", target="sim") == sample(
        first, "cec_last_success_timestamp_seconds", target="sim"
    )


def test_without_a_cache_every_scrape_collects(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=300)
    running = serve(target_entry(sim, cache_ttl_seconds=0))
    for n in range(1, 4):
        text = running.metrics()
        assert up(text) == 1
        assert sample(text, "cec_collection_age_seconds", target="sim") == 0
        assert stat(sim, "query_requests") == 3 * n


def test_a_failed_collection_is_not_cached(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    # Chosen behaviour: only successes are cached. Caching a failure would hold cec_up at 0
    # for a whole TTL after the API recovered; instead the next scrape asks again.
    sim = simulator(phones=300)
    sim.set_faults([Fault(kind="ret_code", pages=(1,), value="1", times=1)])
    running = serve(target_entry(sim, cache_ttl_seconds=30, max_concurrency=1))
    assert up(running.metrics()) == 0
    sim.reset_stats()

    text = running.metrics()
    assert stat(sim, "query_requests") == 3  # asked again at once, despite the 30 s TTL
    assert up(text) == 1
    assert sample(text, "cec_collection_age_seconds", target="sim") == 0
    sim.reset_stats()
    assert up(running.metrics()) == 1
    assert stat(sim, "query_requests") == 0  # and that success is cached


# --- retries ------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_retried_and_counted_once(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000)
    sim.set_faults([Fault(kind="http_status", pages=(3,), value=429, retry_after=0.2, times=1)])
    running = serve(target_entry(sim, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 1
    assert counts(text) == expected_counts(sim)
    assert by_page(sim)[3] == 2
    assert requests_total(text, "http_error") == 1
    assert requests_total(text, "success") == 10
    assert sample(text, "cec_api_http_errors_total", target="sim", api=Q, status_code="429") == 1


def test_a_503_twice_then_success(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000)
    sim.set_faults([Fault(kind="http_status", pages=(2,), value=503, times=2)])
    running = serve(target_entry(sim, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 1
    assert counts(text) == expected_counts(sim)
    assert by_page(sim)[2] == 3
    assert requests_total(text, "http_error") == 2
    assert requests_total(text, "success") == 10
    assert sample(text, "cec_api_http_errors_total", target="sim", api=Q, status_code="503") == 2


def test_a_retry_after_beyond_the_deadline_gives_up_without_waiting(
    simulator: StartSim,
    serve: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = simulator(phones=1_000)
    sim.set_faults([Fault(kind="http_status", pages=(2,), value=429, retry_after=10)])
    running = serve(target_entry(sim, max_concurrency=4, timeout_seconds=20))
    caplog.set_level(logging.WARNING, logger="exporter")
    elapsed, text = timed_scrape(running, scrape_timeout=3)
    assert elapsed < 3.0, f"answered after {elapsed:.2f}s: it waited for Retry-After"
    assert up(text) == 0
    # It gave up on the 429 itself, not by sleeping into the deadline.
    failures = [log_line(r) for r in caplog.records if r.getMessage() == "collection failed"]
    assert len(failures) == 1
    assert "HTTP 429" in failures[0]
    assert by_page(sim)[2] == 1  # no retry that could not fit
    assert sample(text, "cec_api_http_errors_total", target="sim", api=Q, status_code="429") == 1
    for name in COUNT_SERIES:
        assert series_of(text, name, "sim") == []


# --- limits -------------------------------------------------------------------------------


def test_max_pages_below_what_total_needs_fails_without_fetching_the_rest(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=1_000)
    running = serve(target_entry(sim, max_pages=5, max_concurrency=4))
    text = running.metrics()
    assert up(text) == 0
    assert by_page(sim) == {0: 1}
    for name in COUNT_SERIES:
        assert series_of(text, name, "sim") == []


@pytest.mark.parametrize("concurrency", [2, 5])
def test_max_concurrency_holds_with_retries_in_the_mix(
    simulator: StartSim, serve: Callable[..., RunningExporter], concurrency: int
) -> None:
    sim = simulator(phones=3_000, latency_ms=3, jitter_ms=3)
    sim.set_faults([Fault(kind="http_status", pages=(p,), value=503, times=1) for p in (4, 5, 6)])
    running = serve(target_entry(sim, max_concurrency=concurrency))
    text = running.metrics()
    assert up(text) == 1
    assert counts(text) == expected_counts(sim)
    assert requests_total(text, "http_error") == 3
    in_flight_max = stat(sim, "in_flight_max")
    assert 1 < in_flight_max <= concurrency


@pytest.mark.slow
def test_connections_are_reused_across_scrapes(
    simulator: StartSim, serve: Callable[..., RunningExporter]
) -> None:
    sim = simulator(phones=2_000, jitter_ms=3)
    running = serve(target_entry(sim, max_concurrency=4))
    for _ in range(2):
        assert up(running.metrics()) == 1
    time.sleep(5.5)  # idle longer than httpx2's default keep-alive expiry of 5 s
    for _ in range(2):
        assert up(running.metrics()) == 1
    assert stat(sim, "query_requests") == 4 * 20
    assert stat(sim, "connections") <= 4 + 1

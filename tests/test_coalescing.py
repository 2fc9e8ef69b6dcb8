"""Scrapes with different deadlines sharing one collection (SPEC sections 5 and 6).

The shared collection runs until the latest deadline among the scrapes waiting
for it; each scrape answers by its own deadline, and a longer one never gets a
failure caused by a shorter one. Over loopback, with the simulator's ``slow``
fault and its request counters as the witness of what went upstream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.exposition import generate_latest
from support import RunningExporter, sample, samples_named, target_entry
from support import softphone_counts as counts

from exporter.scrape import Collection, TargetCollector
from exporter.scrape.api_metrics import ApiMetrics
from exporter.settings import load_config
from exporter.simulator import Fault, Simulator

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
PHONES = 250  # three pages at page_size 100
SLOW_SECONDS = 2.0


class Scrape(threading.Thread):
    """One scrape in its own thread, as Prometheus sends it; remembers answer and time."""

    def __init__(self, url: str, scrape_timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.scrape_timeout = url, scrape_timeout
        self.text = ""
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            with httpx2.Client(timeout=60) as client:
                headers = {TIMEOUT_HEADER: str(self.scrape_timeout)}
                response = client.get(self.url, headers=headers)
                response.raise_for_status()
                self.text = response.text
        except BaseException as err:
            self.error = err
        self.elapsed = time.monotonic() - started

    def result(self) -> str:
        self.join(timeout=60)
        assert not self.is_alive(), "the scrape never answered"
        assert self.error is None, self.error
        return self.text


@pytest.fixture
def slow_target(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> tuple[Simulator, RunningExporter]:
    """A simulator whose first page takes 2 s once, and an exporter that allows 30 s."""
    sim = simulator(phones=PHONES, tenants=2)
    sim.set_faults([Fault("slow", pages=(0,), value=SLOW_SECONDS, times=1)])
    config = write_config(targets=[target_entry(sim, page_size=100, timeout_seconds=30)])
    return sim, exporter_server(config)


def start(url: str, scrape_timeout: float) -> Scrape:
    scrape = Scrape(url, scrape_timeout)
    scrape.start()
    return scrape


@pytest.mark.parametrize("order", ["short-first", "long-first"])
@pytest.mark.slow
def test_a_short_deadline_never_fails_a_longer_one_and_one_collection_serves_both(
    slow_target: tuple[Simulator, RunningExporter], order: str
) -> None:
    sim, running = slow_target
    probe_url, metrics_url = running.url + "/probe?target=sim", running.url + "/metrics"
    if order == "short-first":
        short = start(probe_url, 1)
        time.sleep(0.2)
        long = start(metrics_url, 30)
    else:
        long = start(metrics_url, 30)
        time.sleep(0.2)
        short = start(probe_url, 1)

    short_text = short.result()
    assert sample(short_text, "cec_up", target="sim") == 0
    assert counts(short_text) == {}
    assert short.elapsed < 1.0 + 0.5, f"the 1 s scrape answered after {short.elapsed:.2f}s"

    long_text = long.result()
    assert sample(long_text, "cec_up", target="sim") == 1, "the 30 s scrape failed"
    expected = {key: float(n) for key, n in sim.expected().counts.items() if n}
    assert counts(long_text) == expected
    assert long.elapsed > SLOW_SECONDS - 0.3  # it waited for the slow page
    failures = {
        labels["reason"]: value
        for labels, value in samples_named(long_text, "cec_collection_failures_total")
        if value
    }
    assert failures == {}, "the shared collection succeeded: no failed collection"
    abandoned = sample(long_text, "cec_scrapes_abandoned_total", target="sim")
    assert abandoned == 1, "the short scrape that gave up counts once, as an abandoned scrape"

    # What went upstream, as the simulator's own /_sim/state tells it.
    stats: dict[str, Any] = httpx2.get(sim.url + "/_sim/state", timeout=10).json()["stats"]
    assert stats["tokens_issued"] == 1
    assert stats["query_requests_by_page"] == {"0": 1, "1": 1, "2": 1}, "not one collection"


def failures(metrics: ApiMetrics) -> dict[str, float]:
    """Non-zero ``cec_collection_failures_total`` by reason."""
    (family,) = (f for f in metrics.families() if f.name == "cec_collection_failures")
    return {s.labels["reason"]: s.value for s in family.samples if s.value}


@pytest.mark.slow
def test_a_scrape_joining_just_after_the_deadline_fired_gets_a_collection_of_its_own(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    """Scrape A (0.3 s) starts a collection whose first page takes 2 s; the loop is busy
    past A's deadline, so the deadline's timer has fired (the collection is being
    cancelled) when scrape B (10 s) joins. B must not get A's failure, and the failure
    is counted once."""
    sim = simulator(phones=PHONES, tenants=2)
    sim.set_faults([Fault("slow", pages=(0,), value=SLOW_SECONDS, times=1)])
    config = load_config(write_config(targets=[target_entry(sim, timeout_seconds=30)]))
    metrics = ApiMetrics()
    metrics.add_target("sim")

    async def run() -> tuple[Collection | None, Collection | None]:
        collector = TargetCollector(config.targets[0], metrics)
        loop = asyncio.get_running_loop()
        base, start = loop.time(), time.monotonic()
        joined: list[asyncio.Future[Collection | None]] = []
        a = asyncio.ensure_future(collector.collect(start + 0.3))
        loop.call_at(base + 0.2, time.sleep, 0.3)  # the loop is busy from 0.2 s to 0.5 s
        loop.call_at(  # due after A's deadline (0.3 s), run in the same turn of the loop
            base + 0.35,
            lambda: joined.append(asyncio.ensure_future(collector.collect(time.monotonic() + 10))),
        )
        first = await a
        await asyncio.sleep(0.4)
        second = await joined[0]
        await collector.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert first is not None
    assert not first.up
    assert second is not None
    assert second.up, second.error
    assert failures(metrics) == {"deadline": 1}


@pytest.mark.slow
def test_a_loop_that_answers_late_still_gives_cec_up_0_for_every_target(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """The collection loop is stuck (a CPU-bound step) past the deadline of a scrape
    asked from another thread (the ``scrape`` command's path; HTTP is served on that
    loop itself, so it has no such wait)."""
    sim = simulator(phones=PHONES)
    config = write_config(targets=[target_entry(sim, "a"), target_entry(sim, "b")])
    running = exporter_server(config)
    assert sample(running.metrics(), "cec_up", target="a") == 1
    running.exporter.loop.call_soon_threadsafe(time.sleep, 3)  # a stuck loop
    started = time.monotonic()
    scraped = running.exporter.scrape_from_thread(None, 1.0)
    text = generate_latest(scraped.registry).decode()
    assert time.monotonic() - started < 2.5
    assert sample(text, "cec_up", target="a") == 0
    assert sample(text, "cec_up", target="b") == 0
    assert sample(text, "cec_last_success_timestamp_seconds", target="a") is not None
    assert counts(text, "a") == {}

"""The scrape timeout, end to end: the answer comes before Prometheus gives up on it.

Prometheus drops a scrape answered after its timeout whole (``up`` 0, every series
lost), so the collections' deadline leaves a margin for the work left after the cut
(``collection_timeout``), and grows it with that work: hundreds of targets cut at once
must still be answered in time. A timeout too small to hold any vendor request (below
``COLLECTION_FLOOR_SECONDS``) sends nothing at all. The exporter runs in its own process
(``serve``), as in production; the simulator in this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import sample, samples_named, target_entry, total
from support_procs import ServeProcess, serve_config

from exporter.scrape.collection import COLLECTION_FLOOR_SECONDS, collection_timeout
from exporter.simulator import Fault, Simulator

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def scrape(url: str, scrape_timeout: float, path: str = "/metrics") -> tuple[float, str]:
    """(seconds, body) of one scrape as Prometheus sends it, waiting past its timeout."""
    started = time.monotonic()
    response = httpx2.get(
        url + path, headers={TIMEOUT_HEADER: repr(scrape_timeout)}, timeout=scrape_timeout + 30
    )
    response.raise_for_status()
    return time.monotonic() - started, response.text


@pytest.fixture
def serve_many(
    simulator: Callable[..., Simulator], tmp_path: Path
) -> Callable[..., tuple[Simulator, ServeProcess]]:
    """Factory: a simulator and ``serve`` of ``count`` targets of one vendor app on it."""
    started: list[ServeProcess] = []

    def start(count: int, **settings: Any) -> tuple[Simulator, ServeProcess]:
        sim = simulator(phones=250)
        targets = [target_entry(sim, f"t{i:03d}", **settings) for i in range(count)]
        process = serve_config({"targets": targets}, tmp_path, "--log-level", "info").start()
        started.append(process)
        return sim, process

    yield start  # type: ignore[misc]
    for process in started:
        process.stop()


@pytest.mark.slow
def test_six_hundred_targets_cut_by_the_deadline_are_answered_in_time(
    serve_many: Callable[..., tuple[Simulator, ServeProcess]],
) -> None:
    """Every target hangs on its second page: all 600 are cut at the deadline at once, and
    their ``cec_up 0``, the encoding and the send must still fit before the timeout."""
    sim, exporter = serve_many(600)
    scrape(exporter.url, 30)  # tokens, connections, imports
    sim.set_faults([Fault("hang", pages=(1,), value=60)])
    for timeout in (2.1, 2.5, 3.0):
        seconds, text = scrape(exporter.url, timeout)
        assert seconds < timeout, f"answered {seconds - timeout:.3f}s after a {timeout}s timeout"
        ups = samples_named(text, "cec_up")
        assert len(ups) == 600
        assert all(value == 0 for _, value in ups)


@pytest.mark.parametrize("header", ["1e-320", "0.05", "0.1"])
@pytest.mark.slow
def test_a_timeout_below_the_floor_sends_nothing_and_logs_once(
    serve_many: Callable[..., tuple[Simulator, ServeProcess]], header: str
) -> None:
    """500 scrapes that leave no time to collect: no vendor connection, no request counted
    (``CECAPIErrorRatioHigh`` stays quiet), every collection a ``deadline`` failure, and one
    warning line for them all."""
    sim, exporter = serve_many(2)
    with httpx2.Client(base_url=exporter.url, headers={TIMEOUT_HEADER: header}) as client:
        for path in ("/metrics", "/probe?target=t000") * 250:
            text = client.get(path).text
            assert {value for _, value in samples_named(text, "cec_up")} == {0.0}
        own = client.get("/metrics?collect[]=exporter").text
    stats = sim.stats()
    assert (stats["connections"], stats["token_requests"], stats["query_requests"]) == (0, 0, 0)
    assert total(own, "cec_api_requests_total") == 0
    assert sample(own, "cec_collection_failures_total", target="t000", reason="deadline") == 500
    assert sample(own, "cec_collection_failures_total", target="t001", reason="deadline") == 250
    assert exporter.count(r"level=warn") == 1, exporter.output
    assert exporter.count(r"scrape timeout too short") == 1
    _, text = scrape(exporter.url, 5.0)  # time enough: it collects
    assert sample(text, "cec_up", target="t000") == 1, text


def test_the_floor_is_what_collection_timeout_leaves_after_its_margin() -> None:
    assert collection_timeout(None, 7.0) == 7.0  # no header: the target's own bound
    assert collection_timeout(10.0, 30.0) == 9.5  # 0.5 s margin
    assert collection_timeout(2.0, 30.0) == 1.8  # 10 %, the smaller
    assert collection_timeout(2.0, 30.0, after_cut=0.7) == pytest.approx(1.1)
    assert collection_timeout(2.0, 30.0, after_cut=1.75) == 0.0  # 0.05 s left: below the floor
    assert collection_timeout(COLLECTION_FLOOR_SECONDS, 30.0) == 0.0  # less its margin
    assert collection_timeout(1e-320, 30.0) == 0.0
    assert collection_timeout(0.2, 30.0) == pytest.approx(0.18)

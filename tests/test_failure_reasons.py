"""``cec_collection_failures_total{target, reason}``: why collections fail, for Prometheus.

Every reason starts at 0 for every target, leaves with the target, and each
failure counts once under its reason (the fault matrix in ``test_faults.py``
covers the reasons the API causes; here are the ones the config causes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fault_cases import REASONS
from support import RunningExporter, sample, samples_named, target_entry

from exporter.simulator import Simulator

FAILURES = "cec_collection_failures_total"
ABANDONED = "cec_scrapes_abandoned_total"

StartSim = Callable[..., Simulator]
WriteConfig = Callable[..., Path]
StartExporter = Callable[..., RunningExporter]


def failures(text: str, target: str) -> dict[str, float]:
    return {
        labels["reason"]: value
        for labels, value in samples_named(text, FAILURES)
        if labels["target"] == target
    }


def test_every_reason_starts_at_zero_for_every_target_and_only_on_metrics(
    simulator: StartSim, write_config: WriteConfig, exporter_server: StartExporter
) -> None:
    sims = simulator(phones=10), simulator(phones=20)
    entries = [target_entry(sims[0], "a"), target_entry(sims[1], "b")]
    running = exporter_server(write_config(targets=entries))
    # Before any scrape collected anything: a rate() must see the first failure.
    text = running.metrics()
    assert failures(text, "a") == dict.fromkeys(REASONS, 0.0)
    assert failures(text, "b") == dict.fromkeys(REASONS, 0.0)
    assert "# TYPE cec_collection_failures_total counter" in text
    # Scrapes that gave up waiting are no failed collections: a counter of their own.
    for target in ("a", "b"):
        assert sample(text, ABANDONED, target=target) == 0
    assert "# TYPE cec_scrapes_abandoned_total counter" in text
    # /probe carries the collection's series only (SPEC section 6), like the API counters.
    probe = running.metrics("/probe?target=a")
    assert sample(probe, "cec_up", target="a") == 1
    assert samples_named(probe, FAILURES) == []
    assert samples_named(probe, ABANDONED) == []


def test_a_wrong_app_secret_and_an_unreadable_secret_file_are_credentials(
    simulator: StartSim,
    write_config: WriteConfig,
    exporter_server: StartExporter,
    tmp_path: Path,
) -> None:
    sim = simulator(phones=10)
    secret_file = tmp_path / "secret"
    secret_file.write_text(sim.config.app_secret)
    entries = [
        target_entry(sim, "wrong", app_secret="not-the-secret"),
        {**target_entry(sim, "file"), "app_secret": None, "app_secret_file": str(secret_file)},
    ]
    running = exporter_server(write_config(targets=entries))
    secret_file.unlink()  # read when a token is needed: gone by now
    text = running.metrics()
    for target in ("wrong", "file"):
        assert sample(text, "cec_up", target=target) == 0
        assert {r: v for r, v in failures(text, target).items() if v} == {"credentials": 1}
    # The refused token request is an http_error request; the collection, a credentials one.
    requests = sample(
        text, "cec_api_requests_total", target="wrong", api="tokenByAkSk", outcome="http_error"
    )
    assert requests == 1


def test_more_pages_than_max_pages_is_page_limit(
    simulator: StartSim, write_config: WriteConfig, exporter_server: StartExporter
) -> None:
    sim = simulator(phones=1_000)
    config = write_config(targets=[target_entry(sim, page_size=100, max_pages=3)])
    running = exporter_server(config)
    text = running.metrics()
    assert sample(text, "cec_up", target="sim") == 0
    assert {r: v for r, v in failures(text, "sim").items() if v} == {"page_limit": 1}
    text = running.metrics()
    assert failures(text, "sim")["page_limit"] == 2  # a counter: each failure once

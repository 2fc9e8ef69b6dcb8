"""The fault matrix: every way the CEC API can fail, through a real exporter over loopback.

For each fault: the right ``cec_up``, the right API counters, no count series for a
failed target, exactly one warning line that names the target and the cause (no
traceback, no secret at any level), an answer inside the scrape deadline, and
recovery on the next scrape once the fault is cleared.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_cases import CASES, REASONS, SCRAPE_TIMEOUT, Case, Q, T
from support import (
    RunningExporter,
    expected_counts,
    free_port,
    log_line,
    sample,
    samples_named,
    target_entry,
)
from support import softphone_counts as counts

from exporter.simulator import Fault, SimConfig, Simulator

PHONES = 250  # pages 0, 1 and 2 at page_size 100: "a later page" exists
APP_SECRET = "app-secret-canary-5b1e"  # the simulator's; checked absent from every log line
PASSWORD_PREFIX = "SIPPW-canary-"
COUNT_SERIES = (
    "cec_softphones",
    "cec_softphones_allocated",
    "cec_registration_endpoint_info",
    "cec_collection_age_seconds",
)


# --- the harness --------------------------------------------------------------------------


@dataclass
class Harness:
    """One simulator, one exporter serving it, and the captured log."""

    sim: Simulator
    running: RunningExporter
    caplog: pytest.LogCaptureFixture

    def scrape(self, scrape_timeout: float = SCRAPE_TIMEOUT) -> str:
        """``/metrics`` as Prometheus asks for it; the answer must come inside the deadline."""
        started = time.monotonic()
        text = self.running.metrics(
            headers={"X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)}
        )
        elapsed = time.monotonic() - started
        assert elapsed < scrape_timeout, f"answered after {elapsed:.2f}s"
        return text


@pytest.fixture
def harness(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> Callable[..., Harness]:
    """Factory: ``harness(sim={...}, **target_settings)``."""
    caplog.set_level(logging.DEBUG)  # secrets must stay out of every level

    def start(sim: dict[str, Any] | None = None, **settings: Any) -> Harness:
        s = simulator(**{"phones": PHONES, "app_secret": APP_SECRET, **(sim or {})})
        entry = target_entry(s, **{"page_size": 100, **settings})
        running = exporter_server(write_config(targets=[entry]))
        return Harness(s, running, caplog)

    return start


def by_label(text: str, name: str, label: str, target: str = "sim") -> dict[str, float]:
    """``{"api:<label value>": value}`` for the non-zero samples of one target."""
    return {
        f"{labels['api']}:{labels[label]}": value
        for labels, value in samples_named(text, name)
        if labels["target"] == target and value
    }


def requests(text: str, target: str = "sim") -> dict[str, float]:
    return by_label(text, "cec_api_requests_total", "outcome", target)


def http_errors(text: str, target: str = "sim") -> dict[str, float]:
    return by_label(text, "cec_api_http_errors_total", "status_code", target)


def ret_codes(text: str, target: str = "sim") -> dict[str, float]:
    return by_label(text, "cec_api_ret_code_failures_total", "ret_code", target)


def failures(text: str, target: str = "sim") -> dict[str, float]:
    """The non-zero ``cec_collection_failures_total`` of one target, by reason.

    Every reason SPEC section 6 lists must be there, at 0 until it first happens.
    """
    found = {
        labels["reason"]: value
        for labels, value in samples_named(text, "cec_collection_failures_total")
        if labels["target"] == target
    }
    assert set(found) == set(REASONS), found
    return {reason: value for reason, value in found.items() if value}


def assert_down(text: str, target: str = "sim") -> None:
    """``cec_up 0`` and its duration, but not one count series: a partial count is no drop."""
    assert sample(text, "cec_up", target=target) == 0
    assert sample(text, "cec_collection_duration_seconds", target=target) is not None
    for name in COUNT_SERIES:
        leaked = [labels for labels, _ in samples_named(text, name) if labels["target"] == target]
        assert not leaked, f"{name} for a failed target: {leaked}"


def assert_up(text: str, sim: Simulator, target: str = "sim") -> None:
    """``cec_up 1`` with the simulator's exact ground truth."""
    assert sample(text, "cec_up", target=target) == 1
    assert sample(text, "cec_softphones_allocated", target=target) == sim.expected().total
    assert counts(text, target) == expected_counts(sim)
    assert sample(text, "cec_collection_age_seconds", target=target) == 0


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def assert_one_warning(caplog: pytest.LogCaptureFixture, target: str, cause: str) -> None:
    """Exactly one warning, from exporter.scrape.target, naming the target and the cause."""
    found = warnings(caplog)
    assert len(found) == 1, [r.getMessage() for r in found]
    record = found[0]
    assert record.name == "exporter.scrape.target"
    assert record.levelno == logging.WARNING
    message = log_line(record)
    assert f" target={target} " in message
    assert re.search(cause, message), f"{cause!r} not in {message!r}"


def assert_clean_logs(caplog: pytest.LogCaptureFixture, sim: Simulator) -> None:
    """No traceback anywhere, and no secret (password, app secret, token) at any level."""
    secrets = [PASSWORD_PREFIX, APP_SECRET, *sim.issued_tokens()]
    for record in caplog.records:
        assert not record.exc_info, f"traceback logged: {record.getMessage()}"
        assert not record.stack_info
        # Unredacted, message and context keys alike: the secret must never reach the log call.
        text = f"{record.getMessage()} {getattr(record, 'fields', {})!r}"
        assert "Traceback" not in text
        for secret in secrets:
            assert secret not in text, f"a secret in the {record.name} log: {text}"


# --- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fault_matrix(harness: Callable[..., Harness], case: Case) -> None:
    h = harness(sim=case.sim, **case.settings)
    h.sim.set_faults(list(case.faults))
    text = h.scrape(case.scrape_timeout)

    assert requests(text) == case.requests
    assert http_errors(text) == case.http_errors
    assert ret_codes(text) == case.ret_codes
    assert failures(text) == ({case.reason: 1} if case.reason else {})
    if case.tokens_issued is not None:
        assert h.sim.stats()["tokens_issued"] == case.tokens_issued
    if case.up:
        assert_up(text, h.sim)
        assert warnings(h.caplog) == []
    else:
        assert_down(text)
        assert_one_warning(h.caplog, "sim", case.cause)
    assert_clean_logs(h.caplog, h.sim)

    h.sim.clear_faults()
    h.caplog.clear()
    text = h.scrape()
    assert_up(text, h.sim)
    assert failures(text) == ({case.reason: 1} if case.reason else {})
    assert warnings(h.caplog) == []
    assert_clean_logs(h.caplog, h.sim)


# --- pages in flight when one fails --------------------------------------------------------


def test_one_failed_page_abandons_the_pages_in_flight_counted_as_cancelled(
    harness: Callable[..., Harness],
) -> None:
    """Page 1 fails while page 2 is still slow: answered at once; page 2, which the vendor
    saw, is counted as ``cancelled`` (no phantom timeout)."""
    h = harness(max_concurrency=4)
    h.sim.set_faults(
        [
            Fault("slow", pages=(2,), value=10),
            Fault("slow", pages=(1,), value=0.3),  # page 2 has reached the vendor by then
            Fault("ret_code", pages=(1,), value="1"),
        ]
    )
    started = time.monotonic()
    text = h.scrape(scrape_timeout=8)
    assert time.monotonic() - started < 5  # not held up by the slow page
    assert_down(text)
    assert requests(text) == {
        f"{T}:success": 1,
        f"{Q}:success": 1,
        f"{Q}:ret_code_error": 1,
        f"{Q}:cancelled": 1,
    }
    stats = h.sim.stats()
    assert (stats["query_requests"], stats["token_requests"]) == (3, 1)  # all counted
    assert ret_codes(text) == {f"{Q}:1": 1}
    assert_one_warning(h.caplog, "sim", r"retCode 1\b")
    assert_clean_logs(h.caplog, h.sim)


@pytest.mark.slow
def test_failed_collections_do_not_use_up_the_connection_pool(
    harness: Callable[..., Harness],
) -> None:
    """Many collections that cancel pages in flight; the next one still runs 4 pages at once.

    httpcore can leave a request cancelled at the wrong moment holding its pool slot
    for good (encode/httpcore#1093); a few dozen failures then starve the pool.
    """
    h = harness(sim={"phones": 1000}, max_concurrency=4, timeout_seconds=2)
    h.sim.set_faults([Fault("ret_code", pages=(1,), value="1")])
    for _ in range(80):
        assert sample(h.scrape(), "cec_up", target="sim") == 0
    h.sim.clear_faults()
    h.sim.update(latency_ms=20.0)  # pages overlap: max_concurrency of them in flight
    h.sim.reset_stats()
    assert_up(h.scrape(), h.sim)
    assert h.sim.stats()["in_flight_max"] == 4
    assert_clean_logs(h.caplog, h.sim)


# --- the network: refused, unresolvable, untrusted -------------------------------------------


def test_connection_refused_then_the_api_comes_up(
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # closed: nothing listens there yet
    entry = {
        "name": "sim",
        "base_url": f"http://127.0.0.1:{port}",
        "app_key": "demo-app-key",
        "app_secret": APP_SECRET,
    }
    running = exporter_server(write_config(targets=[entry]))
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    started = time.monotonic()
    text = running.metrics(headers=headers)
    assert time.monotonic() - started < SCRAPE_TIMEOUT
    assert_down(text)
    assert requests(text) == {f"{T}:network_error": 3}
    assert http_errors(text) == {}
    assert_one_warning(caplog, "sim", r"Connection refused")

    sim = Simulator(SimConfig(phones=PHONES, app_secret=APP_SECRET), port=port).start()
    try:
        caplog.clear()
        text = running.metrics(headers=headers)
        assert_up(text, sim)
        assert warnings(caplog) == []
        assert_clean_logs(caplog, sim)
    finally:
        sim.stop()


def test_a_name_that_does_not_resolve(
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    entry = {
        "name": "nowhere",
        "base_url": "http://does-not-resolve.invalid",
        "app_key": "demo-app-key",
        "app_secret": APP_SECRET,
    }
    running = exporter_server(write_config(targets=[entry]))
    started = time.monotonic()
    text = running.metrics(headers={"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)})
    assert time.monotonic() - started < SCRAPE_TIMEOUT
    assert_down(text, "nowhere")
    assert requests(text, "nowhere") == {f"{T}:network_error": 3}
    assert_one_warning(
        caplog, "nowhere", r"Name or service not known|name resolution|nodename nor servname"
    )
    for record in caplog.records:
        assert APP_SECRET not in record.getMessage()
        assert not record.exc_info


@pytest.fixture
def tls_simulator(tmp_path: Path) -> Any:
    """A simulator behind TLS with a certificate for 127.0.0.1 from a private CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    sim = Simulator(SimConfig(phones=PHONES, app_secret=APP_SECRET), ssl_context=context).start()
    yield sim, ca_file
    sim.stop()


def test_tls_certificate_that_does_not_verify_passes_with_ca_file(
    tls_simulator: tuple[Simulator, Path],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim, ca_file = tls_simulator
    assert sim.url.startswith("https://")
    targets = [
        target_entry(sim, "untrusted"),
        target_entry(sim, "trusted", ca_file=str(ca_file)),
        target_entry(sim, "insecure", verify_tls=False),
    ]
    running = exporter_server(write_config(targets=targets))
    started = time.monotonic()
    text = running.metrics(headers={"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)})
    assert time.monotonic() - started < SCRAPE_TIMEOUT
    assert_down(text, "untrusted")
    # The three are one vendor app, so they share one token: whichever target fetched it,
    # the untrusted one's three tries (a token or a page) all failed on the certificate.
    untrusted = requests(text, "untrusted")
    assert set(untrusted) <= {f"{T}:network_error", f"{Q}:network_error"}, untrusted
    assert sum(untrusted.values()) == 3
    assert_one_warning(caplog, "untrusted", r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")
    for name in ("trusted", "insecure"):
        assert_up(text, sim, name)
        assert requests(text, name)[f"{Q}:success"] == 3
    tokens = [requests(text, name).get(f"{T}:success", 0) for name in ("trusted", "insecure")]
    assert sum(tokens) == 1
    assert_clean_logs(caplog, sim)


def test_the_statuses_retried_and_401_exist_at_zero_so_a_first_burst_shows(
    harness: Callable[..., Harness],
) -> None:
    """A first 503 burst must show in ``increase()``: its series was there at 0 before."""
    h = harness()
    text = h.scrape()
    assert_up(text, h.sim)
    statuses = {"401", "429", "500", "502", "503", "504"}
    zeros = {
        (labels["api"], labels["status_code"]): value
        for labels, value in samples_named(text, "cec_api_http_errors_total")
        if labels["target"] == "sim"
    }
    assert zeros == {(api, status): 0 for api in (Q, T) for status in statuses}
    h.sim.add_fault(Fault("http_status", value=503, pages=(1,), times=2, retry_after=0))
    text = h.scrape()
    assert_up(text, h.sim)  # retried: the third try of page 1 succeeds
    assert http_errors(text) == {f"{Q}:503": 2}

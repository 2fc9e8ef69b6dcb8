"""The fault matrix: every way the CEC API can fail, through a real exporter over loopback.

For each fault: the right ``cec_up``, the right API counters, no count series for a
failed target, exactly one warning line that names the target and the cause (no
traceback, no secret at any level), an answer inside the scrape deadline, and
recovery on the next scrape once the fault is cleared.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningExporter, sample, samples_named, target_entry

from exporter.simulator import Fault, SimConfig, Simulator

Q, T = "queryPhone", "tokenByAkSk"
PHONES = 250  # pages 0, 1 and 2 at page_size 100: "a later page" exists
APP_SECRET = "app-secret-canary-5b1e"  # the simulator's; checked absent from every log line
PASSWORD_PREFIX = "SIPPW-canary-"
SCRAPE_TIMEOUT = 3.0
COUNT_SERIES = (
    "cec_softphones",
    "cec_softphones_allocated",
    "cec_registration_endpoint_info",
    "cec_collection_age_seconds",
)
# Page 1 is read only after page 0 and page 2 only after page 1: exact request counts.
LATER = {"max_concurrency": 1}


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


def counts(text: str, target: str = "sim") -> dict[tuple[str, str], float]:
    return {
        (labels["tenant_id"], labels["status"]): value
        for labels, value in samples_named(text, "cec_softphones")
        if labels["target"] == target
    }


def expected_counts(sim: Simulator) -> dict[tuple[str, str], float]:
    return {key: float(n) for key, n in sim.expected().counts.items() if n}


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
    """Exactly one warning, from exporter.collect, naming the target and the cause."""
    found = warnings(caplog)
    assert len(found) == 1, [r.getMessage() for r in found]
    record = found[0]
    assert record.name == "exporter.collect"
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert f"target={target} " in message
    assert re.search(cause, message), f"{cause!r} not in {message!r}"


def assert_clean_logs(caplog: pytest.LogCaptureFixture, sim: Simulator) -> None:
    """No traceback anywhere, and no secret (password, app secret, token) at any level."""
    secrets = [PASSWORD_PREFIX, APP_SECRET, *sim.issued_tokens()]
    for record in caplog.records:
        assert not record.exc_info, f"traceback logged: {record.getMessage()}"
        assert not record.stack_info
        text = record.getMessage()
        assert "Traceback" not in text
        for secret in secrets:
            assert secret not in text, f"a secret in the {record.name} log: {text}"


# --- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault and what the exporter must show for it."""

    id: str
    faults: tuple[Fault, ...]
    requests: dict[str, int]
    cause: str = ""
    """Regex the warning must match; empty for faults the exporter rides out (cec_up 1)."""
    http_errors: dict[str, int] = field(default_factory=dict)
    ret_codes: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    tokens_issued: int | None = None
    scrape_timeout: float = SCRAPE_TIMEOUT

    @property
    def up(self) -> bool:
        return not self.cause


def _ret_code_cases() -> list[Case]:
    cases = [
        Case(
            f"retcode-{code}-page-{page}",
            (Fault("ret_code", pages=(page,), value=str(code)),),
            {f"{T}:success": 1, f"{Q}:ret_code_error": 1} | ({f"{Q}:success": 1} if page else {}),
            rf"retCode {code}\b",
            ret_codes={f"{Q}:{code}": 1},
            settings=LATER,
        )
        for code in range(1, 6)
        for page in (0, 1)
    ]
    odd = [("E_VERY_LONG_CODE_42", "other"), ("9 9", "other"), ("\u00e9rr", "other")]
    odd += [("CEC.0001", "CEC.0001"), ("123456789", "other"), ("-1", "-1")]
    cases += [
        Case(
            f"retcode-label-{label}-for-{code!r}",
            (Fault("ret_code", value=code),),
            {f"{T}:success": 1, f"{Q}:ret_code_error": 1},
            rf"retCode {re.escape(code)}",
            ret_codes={f"{Q}:{label}": 1},
        )
        for code, label in odd
    ]
    return cases


def _http_cases() -> list[Case]:
    cases: list[Case] = []
    for status, page in ((400, 0), (403, 1), (404, 0), (404, 1)):  # not retried
        cases.append(
            Case(
                f"http-{status}-page-{page}",
                (Fault("http_status", pages=(page,), value=status),),
                {f"{T}:success": 1, f"{Q}:http_error": 1} | ({f"{Q}:success": 1} if page else {}),
                rf"HTTP {status}\b",
                http_errors={f"{Q}:{status}": 1},
                settings=LATER,
            )
        )
    for page in (0, 1):  # 401: the token is renewed once, then the failure counts
        cases.append(
            Case(
                f"http-401-persistent-page-{page}",
                (Fault("http_status", pages=(page,), value=401),),
                {f"{T}:success": 2, f"{Q}:http_error": 2} | ({f"{Q}:success": 1} if page else {}),
                r"HTTP 401\b",
                http_errors={f"{Q}:401": 2},
                settings=LATER,
                tokens_issued=2,
            )
        )
    cases.append(
        Case(
            "http-401-cured-by-a-new-token",
            (Fault("http_status", pages=(1,), value=401, times=1),),
            {f"{T}:success": 2, f"{Q}:http_error": 1, f"{Q}:success": 3},
            http_errors={f"{Q}:401": 1},
            settings=LATER,
            tokens_issued=2,
        )
    )
    # Retried statuses: 429 (with Retry-After), 500, 502 (a gateway's HTML page), 503.
    retried = [
        ("429", Fault("http_status", value=429, retry_after=0.2)),
        ("500", Fault("http_status", value=500)),
        ("502", Fault("html", value=502)),
        ("503", Fault("http_status", value=503)),
    ]
    for status, fault in retried:
        for page in (0, 1) if status == "500" else (1,):
            persistent = Fault(fault.kind, pages=(page,), value=fault.value, retry_after=0.2)
            cases.append(
                Case(
                    f"http-{status}-persistent-page-{page}",
                    (persistent,),
                    {f"{T}:success": 1, f"{Q}:http_error": 3}
                    | ({f"{Q}:success": 1} if page else {}),
                    rf"HTTP {status}\b",
                    http_errors={f"{Q}:{status}": 3},
                    settings=LATER,
                )
            )
        passing = Fault(fault.kind, pages=(1,), value=fault.value, retry_after=0.2, times=2)
        cases.append(
            Case(
                f"http-{status}-twice-then-fine",
                (passing,),
                {f"{T}:success": 1, f"{Q}:http_error": 2, f"{Q}:success": 3},
                http_errors={f"{Q}:{status}": 2},
                settings=LATER,
            )
        )
    cases.append(
        Case(
            "http-429-retry-after-1s-honoured",
            (Fault("http_status", pages=(0,), value=429, retry_after=1, times=1),),
            {f"{T}:success": 1, f"{Q}:http_error": 1, f"{Q}:success": 3},
            http_errors={f"{Q}:429": 1},
        )
    )
    cases.append(  # a wait that cannot fit in the deadline is not started
        Case(
            "http-429-retry-after-beyond-the-deadline",
            (Fault("http_status", value=429, retry_after=30),),
            {f"{T}:success": 1, f"{Q}:http_error": 1},
            r"HTTP 429\b",
            http_errors={f"{Q}:429": 1},
        )
    )
    return cases


def _token_cases() -> list[Case]:
    return [
        Case(
            "token-http-500",
            (Fault("http_status", api=T, value=500),),
            {f"{T}:http_error": 3},
            r"HTTP 500\b",
            http_errors={f"{T}:500": 3},
        ),
        Case(
            "token-http-500-twice-then-fine",
            (Fault("http_status", api=T, value=500, times=2),),
            {f"{T}:http_error": 2, f"{T}:success": 1, f"{Q}:success": 3},
            http_errors={f"{T}:500": 2},
        ),
        Case(
            "token-connection-dropped",
            (Fault("close", api=T),),
            {f"{T}:network_error": 3},
            r"[Dd]isconnected",
        ),
        Case(
            "token-without-access-token",
            (Fault("no_access_token", api=T),),
            {f"{T}:invalid_response": 1},
            r"AccessToken",
        ),
        Case(
            "token-non-numeric-expires",
            (Fault("bad_expires", api=T),),
            {f"{T}:invalid_response": 1},
            r"Expires",
        ),
        Case(
            "token-malformed-json",
            (Fault("malformed_json", api=T),),
            {f"{T}:invalid_response": 1},
            r"not valid JSON",
        ),
        Case(
            "token-endpoint-hangs",
            (Fault("hang", api=T),),
            {f"{T}:timeout": 1},
            r"deadline",
            settings={"timeout_seconds": 1},
        ),
    ]


def _body_cases() -> list[Case]:
    def invalid(name: str, fault: Fault, cause: str, **extra: Any) -> Case:
        page = (fault.pages or (0,))[0]  # the pages before it were read fine, one at a time
        before = {f"{Q}:success": page} if page else {}
        return Case(
            name,
            (fault,),
            {f"{T}:success": 1, f"{Q}:invalid_response": 1} | before,
            cause,
            **({"settings": LATER} | extra),
        )

    return [
        invalid("malformed-json", Fault("malformed_json"), r"not valid JSON"),
        invalid("html-error-page-200", Fault("html", pages=(1,)), r"HTML"),
        invalid("not-object-list", Fault("not_object", value="list"), r"JSON list"),
        invalid("not-object-string", Fault("not_object", pages=(1,), value="string"), r"JSON str"),
        invalid("result-is-a-list", Fault("result_wrong_type", value="list"), r"result is"),
        invalid(
            "result-is-a-string",
            Fault("result_wrong_type", pages=(2,), value="string"),
            r"result is",
        ),
        invalid(
            "huge-over-a-small-cap",
            Fault("huge", pages=(3,), value=100_000),
            r"4096-byte cap",
            settings={"max_concurrency": 1, "page_size": 20, "max_response_bytes": 4096},
        ),
        invalid("huge-over-the-default-cap", Fault("huge"), r"16777216-byte cap"),
        # Cut short by the server (Content-Length not reached): a transport failure, retried.
        Case(
            "truncated-body",
            (Fault("truncated", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 1, f"{Q}:network_error": 3},
            r"peer closed connection without sending complete message body",
            settings=LATER,
        ),
        Case(
            "connection-dropped-on-a-page",
            (Fault("close", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 1, f"{Q}:network_error": 3},
            r"[Dd]isconnected",
            settings=LATER,
        ),
        Case(
            "page-hangs",
            (Fault("hang", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 2, f"{Q}:timeout": 1},
            r"deadline of [0-9.]+s exceeded",
            scrape_timeout=2.0,
        ),
        Case(
            "page-hangs-past-timeout-seconds",
            (Fault("hang", pages=(0,)),),
            {f"{T}:success": 1, f"{Q}:timeout": 1},
            r"deadline of [0-9.]+s exceeded",
            settings={"timeout_seconds": 1},
        ),
    ]


def _paging_cases() -> list[Case]:
    return [
        Case(
            "total-grows-on-a-later-page",
            (Fault("total_shift", pages=(1,), value=50),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
        Case(
            "total-shrinks-on-a-later-page",
            (Fault("total_shift", pages=(2,), value=-100),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
        Case(
            "same-phone-on-two-pages",
            (Fault("duplicate", pages=(1,)),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
        Case(
            "same-phone-twice-on-one-page",
            (Fault("duplicate", pages=(0,)),),
            {f"{T}:success": 1, f"{Q}:success": 3},
        ),
    ]


CASES = _ret_code_cases() + _http_cases() + _token_cases() + _body_cases() + _paging_cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fault_matrix(harness: Callable[..., Harness], case: Case) -> None:
    h = harness(sim=case.sim, **case.settings)
    h.sim.set_faults(list(case.faults))
    text = h.scrape(case.scrape_timeout)

    assert requests(text) == case.requests
    assert http_errors(text) == case.http_errors
    assert ret_codes(text) == case.ret_codes
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
    assert warnings(h.caplog) == []
    assert_clean_logs(h.caplog, h.sim)


# --- paging anomalies that change what is read ---------------------------------------------


def test_total_growing_on_the_first_page_reads_the_extra_pages(
    harness: Callable[..., Harness],
) -> None:
    """The first page's total (450) is reported; the pages past the real 250 come back empty."""
    h = harness()
    h.sim.set_faults([Fault("total_shift", pages=(0,), value=200)])
    text = h.scrape()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 450
    assert counts(text) == expected_counts(h.sim)  # what was read: all 250
    assert requests(text) == {f"{T}:success": 1, f"{Q}:success": 5}
    changes = [r for r in h.caplog.records if "total changed" in r.getMessage()]
    assert changes
    assert {r.levelno for r in changes} == {logging.DEBUG}
    assert warnings(h.caplog) == []


def test_total_shrinking_on_the_first_page_stops_early(harness: Callable[..., Harness]) -> None:
    """A first page saying 150 means two pages are read: 200 phones, total reported as 150."""
    h = harness()
    h.sim.set_faults([Fault("total_shift", pages=(0,), value=-100)])
    text = h.scrape()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 150
    assert sum(counts(text).values()) == 200
    assert h.sim.stats()["query_requests_by_page"] == {0: 1, 1: 1}
    assert warnings(h.caplog) == []
    h.sim.clear_faults()
    assert_up(h.scrape(), h.sim)


def test_one_failed_page_abandons_the_pages_in_flight_without_a_phantom_timeout(
    harness: Callable[..., Harness],
) -> None:
    """Page 1 fails while page 2 is still slow: answered at once, and page 2 is no timeout."""
    h = harness(max_concurrency=4)
    h.sim.set_faults(
        [Fault("slow", pages=(2,), value=10), Fault("ret_code", pages=(1,), value="1")]
    )
    started = time.monotonic()
    text = h.scrape(scrape_timeout=8)
    assert time.monotonic() - started < 5  # not held up by the slow page
    assert_down(text)
    assert requests(text) == {f"{T}:success": 1, f"{Q}:success": 1, f"{Q}:ret_code_error": 1}
    assert ret_codes(text) == {f"{Q}:1": 1}
    assert_one_warning(h.caplog, "sim", r"retCode 1\b")
    assert_clean_logs(h.caplog, h.sim)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_then_the_api_comes_up(
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = _free_port()  # closed: nothing listens there yet
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
    assert requests(text, "untrusted") == {f"{T}:network_error": 3}
    assert_one_warning(caplog, "untrusted", r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")
    for name in ("trusted", "insecure"):
        assert_up(text, sim, name)
        assert requests(text, name) == {f"{T}:success": 1, f"{Q}:success": 3}
    assert_clean_logs(caplog, sim)

"""See why (issue 11): the debug probe, the landing page's recent collections, /sd,
``scrape --debug`` and the per-request debug log line, over loopback.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import httpx2
import pytest
import yaml
from support import RunningExporter, basic_auth, run_cli, sample, target_entry
from support_procs import ServeProcess

from exporter.cec.text import clip
from exporter.scrape.target import HISTORY
from exporter.simulator import Fault, Simulator

SCRIPT = "<script>alert(1)</script>"


def debug(running: RunningExporter, target: str = "sim", **headers: str) -> httpx2.Response:
    response = running.get(f"/probe?target={target}&debug=true", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return response


def section(report: str, title: str) -> str:
    """The lines of ``report`` under ``title:`` up to the next blank line or section."""
    body = report.split(f"{title}:\n", 1)[1]
    return body.split("\n\n", 1)[0]


def test_debug_probe_shows_the_failing_page_and_its_ret_code(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=250, app_key="key-canary-5d1")
    sim.set_faults([Fault("ret_code", pages=(2,), value="2", times=1)])
    running = exporter_server(write_config(targets=[target_entry(sim, "sim")]))
    report = debug(running).text
    assert "Result: DOWN after" in report
    assert "(reason ret_code): retCode 2 (simulated failure (retCode 2))" in report
    log = section(report, "Collection log")
    assert re.search(r"\+\d+\.\d{3}s new token: none held yet", log)
    assert re.search(r"tokenByAkSk try=1 status=200 duration=\S+ outcome=success", log)
    assert re.search(r"queryPhone offset=0 try=1 status=200 retCode=0 .*outcome=success", log)
    failing = re.search(r"queryPhone offset=200 try=1 status=200 retCode=2 .*", log)
    assert failing, log
    assert "outcome=ret_code_error" in failing.group(0)
    assert "retMsg='simulated failure (retCode 2)'" in failing.group(0)
    metrics = section(report, "Metrics that would be returned")
    assert sample(metrics, "cec_up", target="sim") == 0.0
    assert "cec_api_requests_total" not in metrics  # what /probe returns: the target only
    config = section(report, "Effective config (secrets redacted)")
    assert "name: sim" in config
    assert "app_key: <redacted>" in config
    assert "app_secret: <redacted>" in config
    assert "max_inflight_requests (all targets): 64" in config
    assert sim.config.app_secret not in report
    assert "key-canary-5d1" not in report

    # A real collection each time (no cache), reusing the token; then a 401 renews it.
    again = debug(running).text
    assert "Result: UP" in again
    assert "250 phone records" in again
    assert re.search(r"token reused: valid for another \d+s", again)
    assert "new token" not in again
    sim.expire_tokens()
    renewed = section(debug(running).text, "Collection log")
    assert re.search(r"queryPhone offset=0 try=1 status=401 .*outcome=http_error", renewed)
    assert "new token: the old one was rejected with HTTP 401" in renewed
    # The request sent again with the new token is the page's second try, not its first again.
    assert re.search(r"queryPhone offset=0 try=2 status=200 retCode=0 .*outcome=success", renewed)
    assert not re.search(r"queryPhone offset=0 try=1 status=200", renewed), renewed
    assert sim.stats()["query_requests"] == 3 + 3 + 4


@pytest.mark.slow
def test_debug_probe_honours_the_scrape_deadline(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=250)
    sim.set_faults([Fault("hang", pages=(1,), value=30)])
    running = exporter_server(write_config(targets=[target_entry(sim, "sim")]))
    started = time.monotonic()
    report = debug(running, **{"X-Prometheus-Scrape-Timeout-Seconds": "2"}).text
    assert time.monotonic() - started < 3.5
    assert "Deadline: 1.80s (scrape timeout header: 2.0)" in report
    assert re.search(r"Result: DOWN after 1\.\d+s \(reason deadline\): deadline", report), report
    log = section(report, "Collection log")
    assert re.search(r"queryPhone offset=100 try=1 status=- duration=1\.\d+s outcome=timeout", log)


def test_debug_probes_cost_the_vendor_no_more_than_scrapes(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """Debug probes used to skip cache_ttl_seconds: ten of them cost thirty requests."""
    sim = simulator(phones=250)
    cached = target_entry(sim, "cached", cache_ttl_seconds=300)
    busy = target_entry(sim, "busy", cache_ttl_seconds=0)
    running = exporter_server(write_config(targets=[cached, busy]))
    first = debug(running, "cached").text
    assert "Served from the cache" not in first
    spent = sim.stats()["query_requests"]
    for _ in range(10):
        report = debug(running, "cached").text
        assert re.search(r"Served from the cache \(cache_ttl_seconds: 300\), age \d", report)
        assert re.search(r"queryPhone offset=200 try=1 status=200 retCode=0", report)  # its log
    assert sim.stats()["query_requests"] == spent
    # Without a cache, concurrent debug probes share the one collection in flight.
    sim.set_faults([Fault("slow", value=0.5, pages=(0,))])
    with ThreadPoolExecutor(max_workers=5) as pool:
        reports = list(pool.map(lambda _: debug(running, "busy").text, range(5)))
    assert all("Result: UP" in report for report in reports)
    assert sim.stats()["query_requests"] <= spent + 3 * 2, "more than two collections ran"


def test_vendor_text_is_escaped_and_clipped(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """retCode and retMsg are the vendor's: HTML-escaped on `/`, clipped and escaped in text."""
    sim = simulator(phones=150)
    sim.set_faults([Fault("ret_code", pages=(1,), value=SCRIPT + "\x1b[2J" + "x" * 400)])
    running = exporter_server(write_config(targets=[target_entry(sim, "sim")]))
    report = debug(running).text
    assert "\x1b" not in report
    assert "\\x1b[2J" in report
    failing = next(line for line in report.splitlines() if "outcome=ret_code_error" in line)
    assert len(failing) < 600
    page = running.get("/")
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert clip("a\nb\x00" + "y" * 300, 10) == "a\\nb\\x00y…"


def test_landing_page_shows_recent_collections(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=250, tenants=1)
    other = simulator(phones=5)
    config = write_config(targets=[target_entry(sim, "sim"), target_entry(other, "never.seen")])
    running = exporter_server(config)
    page = running.get("/").text
    assert "No collection yet." in page
    for _ in range(HISTORY + 2):
        running.metrics("/probe?target=sim")
    sim.set_faults([Fault("ret_code", pages=(0,), value="3")])
    running.metrics("/probe?target=sim")
    page = running.get("/").text
    sim_part = page.split("<h3>sim</h3>", 1)[1].split("<h3>", 1)[0]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", sim_part)
    assert len(rows) == HISTORY  # a bounded ring: the oldest are gone
    newest = rows[0].split("</td><td>")
    assert newest[1] == '<span class="down">down</span>'
    assert newest[3] == "0"  # the first page failed
    assert newest[4] == ""  # no count for a failed collection
    assert newest[5] == "ret_code: retCode 3 (simulated failure (retCode 3))"
    ok = rows[1].split("</td><td>")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ok[0])
    assert ok[1] == '<span class="up">up</span>'
    assert re.fullmatch(r"\d+\.\d{3}s", ok[2])
    assert ok[3:] == ["3", "250", ""]
    assert '<a href="probe?target=sim&amp;debug=true">debug probe</a>' in sim_part
    assert "<h3>never.seen</h3>" in page


def test_sd_lists_every_target_grouped_by_vendor_budget(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    one, two = simulator(phones=5), simulator(phones=5)
    config = write_config(
        targets=[
            target_entry(one, "a"),
            target_entry(two, "b"),
            target_entry(one, "c"),
            {**target_entry(one, "d"), "app_key": "another-app"},
        ]
    )
    running = exporter_server(config)
    response = running.get("/sd")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == [
        {"targets": ["a", "c"], "labels": {"__meta_cec_budget_group": "a"}},
        {"targets": ["b"], "labels": {"__meta_cec_budget_group": "b"}},
        {"targets": ["d"], "labels": {"__meta_cec_budget_group": "d"}},
    ]
    assert "another-app" not in response.text
    assert one.stats()["query_requests"] == 0  # discovery collects nothing


def test_own_metrics_without_collecting(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=5)
    running = exporter_server(write_config(targets=[target_entry(sim, "sim")]))
    running.metrics("/probe?target=sim")
    own = running.metrics("/metrics?collect[]=exporter")
    assert "cec_up" not in own
    assert sample(own, "cec_api_requests_total", target="sim", api="queryPhone", outcome="success")
    assert "cec_exporter_build_info" in own
    assert sim.stats()["query_requests"] == 1  # only the probe's
    assert running.get("/metrics?collect[]=targets").status_code == 400


def test_new_paths_need_authentication(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=5)
    config = write_config(targets=[target_entry(sim, "sim")])
    hashed = bcrypt.hashpw(b"pw-horse", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"alice": hashed}}))
    server = serve_process("--config", str(config), "--web-config", str(web)).start()
    paths = ["/probe?target=sim&debug=true", "/sd", "/", "/metrics?collect[]=exporter"]
    with httpx2.Client(timeout=30) as client:
        for path in paths:
            assert client.get(server.url + path).status_code == 401, path
            wrong = client.get(server.url + path, headers=basic_auth("alice", "nope"))
            assert wrong.status_code == 401, path
        assert sim.stats()["query_requests"] == 0
        for path in paths:
            assert (
                client.get(server.url + path, headers=basic_auth("alice", "pw-horse")).status_code
                == 200
            )
    assert "pw-horse" not in server.stop()


@pytest.mark.slow
def test_scrape_debug_prints_the_report(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    ok, failing = simulator(phones=150), simulator(phones=150)
    failing.set_faults([Fault("http_status", value=500)])
    config = write_config(targets=[target_entry(ok, "ok"), target_entry(failing, "bad")])
    result = run_cli("scrape", "--config", str(config), "--target", "ok", "--debug")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Debug probe of target 'ok'\n")
    assert "Result: UP" in result.stdout
    assert "queryPhone offset=100 try=1 status=200 retCode=0" in result.stdout
    both = run_cli("scrape", "--config", str(config), "--debug")
    assert both.returncode == 1
    assert "Debug probe of target 'bad'" in both.stdout
    assert re.search(r"queryPhone offset=0 try=3 status=500 .*outcome=http_error", both.stdout)


def test_debug_log_has_one_line_per_request(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    """Runbook: `--log-level debug` shows each API call, with the offset that failed."""
    sim = simulator(phones=250)
    sim.set_faults([Fault("http_status", pages=(1,), value=503, times=1)])
    config = write_config(targets=[target_entry(sim, "sim")])
    result = run_cli(
        "scrape", "--config", str(config), "--log-level", "debug", "--log-format", "json"
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    requests = [line for line in lines if line["msg"] == "API request"]
    stats = sim.stats()
    assert len(requests) == stats["query_requests"] + stats["token_requests"]  # type: ignore[operator]
    failed = [r for r in requests if r.get("status") == 503]
    assert [(r["target"], r["api"], r["offset"], "ret_code" in r) for r in failed] == [
        ("sim", "queryPhone", 100, False)
    ]
    retried = [r["attempt"] for r in requests if r.get("offset") == 100]
    assert retried == [1, 2]
    assert all(re.fullmatch(r"\d+\.\d{3}s", r["duration"]) for r in requests)
    assert any(r["api"] == "tokenByAkSk" and r["status"] == 200 for r in requests)
    assert sim.config.app_secret not in result.stderr


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_debug_flag_spellings(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    value: str,
) -> None:
    sim = simulator(phones=5)
    running = exporter_server(write_config(targets=[target_entry(sim, "sim")]))
    assert running.get(f"/probe?target=sim&debug={value}").text.startswith("Debug probe")
    assert running.get("/probe?target=sim&debug=false").text.startswith("# HELP")

"""Benchmark many accounts on one exporter: 200 CEC accounts of 500 phones on one endpoint.

Runs the simulator and one ``cec-phone-exporter serve`` in their own processes on
loopback (the helpers are bench_collect.py's) and measures, for ``/metrics`` over
every account:

* scrape wall time (cold: tokens and connections; warm: median of ``--runs``);
* the exporter's CPU per warm scrape (user + system of the ``serve`` process);
* the exporter's peak open file descriptors, sampled every 5 ms during the scrapes;
* the peak of requests in flight and of connections open at once, as the simulator saw them;
* then, with ``requests_per_second`` on every account (one app: one shared budget),
  the rate the limiter achieved over a warm scrape;
* then a small account's collection time alone and beside a busy one on one budget
  (``--fair-rate``): the shared budget is handed out round-robin between targets.

Usage::

    python bench/bench_accounts.py [--accounts 200 --phones 500 --latency-ms 20 --rate 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import psutil
import yaml
from bench_collect import APP_KEY, APP_SECRET, Sim, cpu_seconds, free_port, process, value

SCRAPE_TIMEOUT = 120.0


class FdSampler:
    """Samples a process's open file descriptors in a thread; keeps the peak."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = proc.num_fds()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.peak = max(self.peak, self.proc.num_fds())
            except psutil.Error:
                return

    def __enter__(self) -> FdSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def accounts_config(sim_url: str, accounts: int, phones: int, **defaults: Any) -> dict[str, Any]:
    return {
        "defaults": {"timeout_seconds": 100, "cache_ttl_seconds": 0, **defaults},
        "targets": [
            {
                "name": f"account-{i:03d}",
                "base_url": sim_url,
                "app_key": APP_KEY,
                "app_secret": APP_SECRET,
            }
            for i in range(accounts)
        ],
    }


@contextmanager
def serve(config: dict[str, Any], workdir: Path) -> Iterator[tuple[psutil.Process, str]]:
    path = workdir / f"config-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--config", str(path), "--listen", f"127.0.0.1:{port}", "--log-level", "error"]
    with process(args, url + "/-/healthy") as proc:
        yield psutil.Process(proc.pid), url


def scrape(http: httpx2.Client, url: str, accounts: int) -> float:
    """Seconds for one ``GET /metrics``; fails unless every account is up."""
    started = time.perf_counter()
    response = http.get(
        url + "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    up = response.text.count("\ncec_up{") + response.text.startswith("cec_up{")
    down = [
        line
        for line in response.text.splitlines()
        if line.startswith("cec_up{") and line.endswith(" 0.0")
    ]
    if up != accounts or down:
        raise SystemExit(f"{len(down)} of {up} accounts down (want {accounts} up): {down[:3]}")
    return seconds


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--phones", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=4, help="max_concurrency per account")
    parser.add_argument("--inflight", type=int, default=64, help="max_inflight_requests")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="requests_per_second (phase 2)")
    parser.add_argument("--rate-accounts", type=int, default=20)
    parser.add_argument(
        "--fair-rate", type=float, default=10.0, help="requests_per_second (phase 3)"
    )
    args = parser.parse_args()

    pages = -(-args.phones // 100)
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{psutil.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average before: {load()}"
    )
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim_args = [
        "simulate", "--listen", f"127.0.0.1:{sim_port}", "--phones", str(args.phones),
        "--latency-ms", str(args.latency_ms), "--app-key", APP_KEY, "--app-secret", APP_SECRET,
    ]  # fmt: skip
    rows: list[tuple[str, str]] = []
    with (
        process(sim_args, sim_url + "/_sim/state"),
        tempfile.TemporaryDirectory() as tmp,
        httpx2.Client(timeout=SCRAPE_TIMEOUT + 10) as http,
    ):
        sim = Sim(sim_url)
        workdir = Path(tmp)
        # Phase 1: every account, no rate limit.
        config = accounts_config(
            sim_url,
            args.accounts,
            args.phones,
            max_concurrency=args.concurrency,
        )
        config["max_inflight_requests"] = args.inflight
        with serve(config, workdir) as (proc, url):
            fds_idle = proc.num_fds()
            sim.reset_stats()
            with FdSampler(proc) as fds:
                cold = scrape(http, url, args.accounts)
                cold_stats = sim.stats()
                cpu_before = cpu_seconds(proc)
                warm = [scrape(http, url, args.accounts) for _ in range(args.runs)]
                cpu = (cpu_seconds(proc) - cpu_before) / args.runs
            stats = sim.stats()
            own = http.get(url + "/metrics?collect[]=exporter").text
        requests = args.accounts * pages
        warm_ms = statistics.median(warm) * 1000
        per_page_us = cpu / requests * 1e6
        cold_requests = (
            f"{cold_stats['query_requests']} queryPhone + {cold_stats['token_requests']} token"
        )
        rows += [
            ("accounts x phones (pages each)", f"{args.accounts} x {args.phones} ({pages})"),
            ("simulator latency per request", f"{args.latency_ms:g} ms"),
            ("max_inflight_requests / max_concurrency", f"{args.inflight} / {args.concurrency}"),
            ("scrape wall, cold (tokens, connections)", f"{cold * 1000:.0f} ms"),
            ("scrape wall, warm", f"{warm_ms:.0f} ms  median of {args.runs}"),
            ("exporter CPU per warm scrape", f"{cpu * 1000:.0f} ms  ({per_page_us:.0f} us/page)"),
            ("exporter open fds, idle / peak", f"{fds_idle} / {fds.peak}"),
            ("upstream queryPhone in flight, peak", f"{stats['in_flight_max']}"),
            ("upstream connections open at once, peak", f"{stats['connections_open_max']}"),
            ("upstream connections opened, all scrapes", f"{stats['connections']}"),
            ("upstream requests, cold scrape", cold_requests),
            ("exporter resident memory", f"{proc_rss_mib(own):.1f} MiB"),
        ]
        # Phase 2: one app, one budget of --rate requests per second.
        config = accounts_config(
            sim_url, args.rate_accounts, args.phones, requests_per_second=args.rate
        )
        with serve(config, workdir) as (proc, url):
            scrape(http, url, args.rate_accounts)  # tokens and connections
            sim.reset_stats()
            seconds = scrape(http, url, args.rate_accounts)
            stats = sim.stats()
        sent = int(stats["query_requests"]) + int(stats["token_requests"])
        rows += [
            (
                f"rate limiter: {args.rate_accounts} accounts, one app, {args.rate:g}/s",
                f"{sent} requests in {seconds * 1000:.0f} ms = {sent / seconds:.1f}/s achieved",
            ),
        ]
        rows += fair_budget(http, sim_url, workdir, args.phones, args.fair_rate)
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")
    print(f"load average after: {load()}")


def probe(http: httpx2.Client, url: str, target: str, timeout: float) -> tuple[bool, float]:
    """``/probe`` one target: (up, its cec_collection_duration_seconds)."""
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(timeout)}
    text = http.get(f"{url}/probe?target={target}", headers=headers).text
    up = value(text, "cec_up") == 1.0
    return up, value(text, "cec_collection_duration_seconds") or 0.0


def fair_budget(
    http: httpx2.Client, sim_url: str, workdir: Path, phones: int, rate: float
) -> list[tuple[str, str]]:
    """Phase 3: a small target's collection alone, then beside a busy one on one budget.

    Both read the same account: busy in pages of 5 with 8 in flight (phones / 5 pages),
    small in pages of 100. Fair service gives small every other slot while busy pages.
    """
    base = {"base_url": sim_url, "app_key": APP_KEY, "app_secret": APP_SECRET}
    config = {
        "defaults": {"requests_per_second": rate, "timeout_seconds": 100},
        "targets": [
            {"name": "busy", **base, "page_size": 5, "max_concurrency": 8},
            {"name": "small", **base, "page_size": 100},
        ],
    }
    small_pages = -(-phones // 100)
    with serve(config, workdir) as (_, url):
        probe(http, url, "small", 30)  # token and connections
        alone = [probe(http, url, "small", 30) for _ in range(3)]
        busy_result: list[tuple[bool, float]] = []
        busy = threading.Thread(
            target=lambda: busy_result.append(probe(http, url, "busy", SCRAPE_TIMEOUT))
        )
        busy.start()
        time.sleep(1.0)  # busy's workers are queued on the budget
        beside = [probe(http, url, "small", 30) for _ in range(3)]
        busy.join()
    alone_s = statistics.median(seconds for _, seconds in alone)
    beside_s = statistics.median(seconds for _, seconds in beside)
    down = sum(not up for up, _ in alone + beside)
    busy_up, busy_s = busy_result[0] if busy_result else (False, 0.0)
    label = f"fair budget {rate:g}/s: small ({small_pages} pages)"
    return [
        (f"{label} alone", f"{alone_s * 1000:.0f} ms  median of 3"),
        (
            f"{label} beside busy ({-(-phones // 5)} pages)",
            f"{beside_s * 1000:.0f} ms  median of 3 = {beside_s / alone_s:.2f}x alone"
            f"  (fair bound ~2x); {down} of 6 small collections down",
        ),
        ("  busy collection meanwhile", f"{busy_s * 1000:.0f} ms, {'up' if busy_up else 'DOWN'}"),
    ]


def proc_rss_mib(own_metrics: str) -> float:
    rss = value(own_metrics, "process_resident_memory_bytes")
    return (rss or 0.0) / (1024 * 1024)


if __name__ == "__main__":
    main()

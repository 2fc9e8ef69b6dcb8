"""Benchmark many accounts on one exporter: 200 CEC accounts of 500 phones on one endpoint.

Runs the simulator and one ``cec-phone-exporter serve`` in their own processes on
loopback (the helpers are tests/support.py's) and measures, for ``/metrics`` over
every account:

* scrape wall time (cold: tokens and connections; warm: median of ``--runs``);
* the exporter's CPU per warm scrape (user + system of the ``serve`` process);
* the exporter's peak open file descriptors, sampled every 5 ms during the scrapes;
* the peak of requests in flight and of connections open at once, as the simulator saw them;
* then, with ``requests_per_second`` on every account (one app: one shared budget),
  the rate the limiter achieved over a warm scrape;
* then a small account's collection time alone and beside a busy one on one budget
  (``--fair-rate``): the budget serves the earliest deadline first;
* then a budget too small for every target (issue 23's two cases: 30 targets of 10 pages
  at 50/s in 3.5 s scrapes, 600 of 2 pages at 250/s in 3 s): targets up per scrape and
  the share of requests spent on collections that failed, over ``--budget-rounds``
  scrapes after two warm-up ones; with ``--baseline DIR`` (a checkout of another
  version) that version's exporter is measured too, its scrapes alternating with these.

Usage::

    .venv/bin/python bench/bench_accounts.py [--accounts 200 --phones 500 --latency-ms 20 \\
        --rate 100] [--baseline /tmp/main-checkout] [--only-budget]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _path  # noqa: F401  (tests/ on sys.path)
import httpx2
from support import APP_KEY, APP_SECRET, MIB, samples_named, scrape, value
from support_procs import Peaks, SimControl, load, machine, serve_config, simulate

SCRAPE_TIMEOUT = 120.0


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


def scrape_all(http: httpx2.Client, url: str, accounts: int) -> float:
    """Seconds for one ``GET /metrics``; fails unless every account is up."""
    seconds, text = scrape(http, url + "/metrics", SCRAPE_TIMEOUT)
    ups = samples_named(text, "cec_up")
    down = [labels["target"] for labels, up in ups if up != 1.0]
    if len(ups) != accounts or down:
        raise SystemExit(
            f"{len(down)} of {len(ups)} accounts down (want {accounts} up): {down[:3]}"
        )
    return seconds


def arguments() -> argparse.Namespace:
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
    parser.add_argument("--budget-rounds", type=int, default=5, help="scrapes per budget case")
    parser.add_argument("--baseline", type=Path, help="a checkout whose exporter/ to compare")
    parser.add_argument("--only-budget", action="store_true", help="the budget cases alone")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.only_budget:
        print(machine())
        print(f"load average before: {load()}")
        with tempfile.TemporaryDirectory() as tmp:
            print_rows(budget_cases(Path(tmp), args.latency_ms, args.budget_rounds, args.baseline))
        print(f"load average after: {load()}")
        return

    pages = -(-args.phones // 100)
    print(machine())
    print(f"load average before: {load()}")
    rows: list[tuple[str, str]] = []
    with (
        simulate(args.phones, args.latency_ms) as sim_process,
        tempfile.TemporaryDirectory() as tmp,
        httpx2.Client(timeout=SCRAPE_TIMEOUT + 10) as http,
    ):
        sim_url = sim_process.url
        sim = SimControl(sim_url)
        workdir = Path(tmp)
        # Phase 1: every account, no rate limit.
        config = accounts_config(
            sim_url,
            args.accounts,
            args.phones,
            max_concurrency=args.concurrency,
        )
        config["max_inflight_requests"] = args.inflight
        with serve_config(config, workdir, "--log-level", "error") as exporter:
            url = exporter.url
            fds_idle = exporter.ps.num_fds()
            sim.reset_stats()
            with Peaks(exporter.ps, every=0.005) as peaks:
                cold = scrape_all(http, url, args.accounts)
                cold_stats = sim.stats()
                cpu_before = exporter.cpu_seconds()
                warm = [scrape_all(http, url, args.accounts) for _ in range(args.runs)]
                cpu = (exporter.cpu_seconds() - cpu_before) / args.runs
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
            ("exporter open fds, idle / peak", f"{fds_idle} / {peaks.fds}"),
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
        with serve_config(config, workdir, "--log-level", "error") as exporter:
            scrape_all(http, exporter.url, args.rate_accounts)  # tokens and connections
            sim.reset_stats()
            seconds = scrape_all(http, exporter.url, args.rate_accounts)
            stats = sim.stats()
        sent = int(stats["query_requests"]) + int(stats["token_requests"])
        rows += [
            (
                f"rate limiter: {args.rate_accounts} accounts, one app, {args.rate:g}/s",
                f"{sent} requests in {seconds * 1000:.0f} ms = {sent / seconds:.1f}/s achieved",
            ),
        ]
        rows += fair_budget(http, sim_url, workdir, args.phones, args.fair_rate)
    with tempfile.TemporaryDirectory() as tmp:
        rows += budget_cases(Path(tmp), args.latency_ms, args.budget_rounds, args.baseline)
    print_rows(rows)
    print(f"load average after: {load()}")


def print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")


def probe(http: httpx2.Client, url: str, target: str, timeout: float) -> tuple[bool, float]:
    """``/probe`` one target: (up, its cec_collection_duration_seconds)."""
    _, text = scrape(http, f"{url}/probe?target={target}", timeout)
    up = value(text, "cec_up") == 1.0
    return up, value(text, "cec_collection_duration_seconds") or 0.0


def fair_budget(
    http: httpx2.Client, sim_url: str, workdir: Path, phones: int, rate: float
) -> list[tuple[str, str]]:
    """Phase 3: a small target's collection alone, then beside a busy one on one budget.

    Both read the same account: busy in pages of 5 with 8 in flight (phones / 5 pages),
    small in pages of 100. Small's deadline is the earlier: it is served ahead of busy's pages.
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
    with serve_config(config, workdir, "--log-level", "error") as exporter:
        url = exporter.url
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
            f"  (earliest deadline first: ~1x); {down} of 6 small collections down",
        ),
        ("  busy collection meanwhile", f"{busy_s * 1000:.0f} ms, {'up' if busy_up else 'DOWN'}"),
    ]


BUDGET_CASES = ((30, 10, 50.0, 3.5), (600, 2, 250.0, 3.0))
"""Issue 23's cases: targets of one app, pages each, requests_per_second, scrape timeout."""


def budget_cases(
    workdir: Path, latency_ms: float, rounds: int, baseline: Path | None
) -> list[tuple[str, str]]:
    """Phase 4: a budget too small for every target, scraped ``rounds`` times per version."""
    # ``python -m exporter`` finds the package in its working directory first.
    versions: dict[str, Path | None] = {
        "this": None,
        **({"baseline": baseline} if baseline else {}),
    }
    rows: list[tuple[str, str]] = []
    for targets, pages, rate, timeout in BUDGET_CASES:
        with (
            simulate(pages * 100, latency_ms) as sim_process,
            httpx2.Client(timeout=timeout + 10) as http,
        ):
            sim = SimControl(sim_process.url)
            config = accounts_config(sim_process.url, targets, 0, requests_per_second=rate)
            exporters = {
                name: serve_config(config, workdir, "--log-level", "error", cwd=cwd).start()
                for name, cwd in versions.items()
            }
            try:
                figures, every = alternate_budget_scrapes(
                    http, sim, exporters, rounds, timeout, pages
                )
            finally:
                for exporter in exporters.values():
                    exporter.stop()
        slots = int(rate * timeout * 0.9) + 1  # by the deadline: 90 % of the timeout
        case = f"budget {rate:g}/s, {targets} targets x {pages} pages, {timeout:g} s scrapes"
        rows.append((case, f"{slots} slots a scrape: {slots // pages} whole collections"))
        for name, found in figures.items():
            ups = found.ups
            rows += [
                (
                    f"  {name}: targets up per scrape",
                    f"median {statistics.median(ups):g} (min {min(ups)}, max {max(ups)}) "
                    f"of {rounds}; never up: {len(every - found.seen)}",
                ),
                (
                    f"  {name}: requests sent per scrape",
                    f"{found.sent / rounds:.0f}, of which to collections that failed: "
                    f"{1 - found.useful / max(1, found.sent):.0%}",
                ),
            ]
    return rows


@dataclass
class BudgetFigures:
    """What one exporter's scrapes of a budget case gave."""

    ups: list[int] = field(default_factory=list)
    """Targets up, per scrape."""
    sent: int = 0
    """Requests the simulator saw, over the scrapes."""
    useful: int = 0
    """Of those, the requests of collections that succeeded."""
    seen: set[str] = field(default_factory=set)
    """Targets up at least once."""


def alternate_budget_scrapes(
    http: httpx2.Client,
    sim: SimControl,
    exporters: dict[str, Any],
    rounds: int,
    timeout: float,
    pages: int,
) -> tuple[dict[str, BudgetFigures], set[str]]:
    """Each exporter's figures over ``rounds`` scrapes (after two warm-up ones), their
    scrapes alternating; and every target."""
    figures = {name: BudgetFigures() for name in exporters}
    every: set[str] = set()
    for warm_up in (True, True, *([False] * rounds)):
        for name, exporter in exporters.items():
            sim.reset_stats()
            _, text = scrape(http, exporter.url + "/metrics", timeout)
            stats = sim.stats()
            up = {labels["target"] for labels, v in samples_named(text, "cec_up") if v == 1}
            every |= {labels["target"] for labels, _ in samples_named(text, "cec_up")}
            if warm_up:
                continue
            found = figures[name]
            found.ups.append(len(up))
            found.seen |= up
            found.sent += int(stats["query_requests"]) + int(stats["token_requests"])
            found.useful += len(up) * pages
    return figures, every


def proc_rss_mib(own_metrics: str) -> float:
    rss = value(own_metrics, "process_resident_memory_bytes")
    return (rss or 0.0) / MIB


if __name__ == "__main__":
    main()

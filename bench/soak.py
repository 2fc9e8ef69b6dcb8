"""Soak: thousands of scrapes of a real exporter process while the CEC API misbehaves.

Starts the CEC simulator (in this process, steered through its Python API) and the
exporter in a subprocess (``python -m exporter serve --config ...``), then scrapes
``/metrics`` over and over while cycling the simulator through faults: retCode
failures, HTTP 401/429/5xx, broken bodies, dropped connections, hanging pages,
token-endpoint failures, totals that move and duplicated phones.

Prints the exporter's RSS and open file descriptors after warm-up, along the way and
at the end, scrapes per second, how every scrape and every API request ended, and
whether any secret reached the exporter's log. Exits 1 when RSS or fds grew beyond
the thresholds, a scrape answered after its deadline, or a secret leaked.

Usage::

    .venv/bin/python bench/soak.py [--scrapes 3000] [--phones 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import _path  # noqa: F401  (tests/ on sys.path)
import httpx2
import psutil
from support import MIB, parse_samples, sample, scrape
from support_procs import serve_config

from exporter.simulator import Fault, SimConfig, Simulator

APP_KEY, APP_SECRET = "soak-app-key", "soak-app-secret-canary"
PASSWORD_PREFIX = "SIPPW-canary-"
SCRAPE_TIMEOUT = 2.0  # seconds, sent as X-Prometheus-Scrape-Timeout-Seconds
CONCURRENCY = 4  # max_concurrency of the target


@dataclass(frozen=True)
class Phase:
    """One fault set, held for ``scrapes`` scrapes of each cycle."""

    name: str
    faults: tuple[Fault, ...] = ()
    scrapes: int = 5
    expire_tokens: bool = False  # revoke tokens before each scrape: token faults then bite
    changes: dict[str, object] = field(default_factory=dict)  # simulator config for the phase


PHASES = (
    Phase("healthy", scrapes=40),
    Phase("retcode-page-1", (Fault("ret_code", pages=(1,), value="1"),)),
    Phase("retcode-long", (Fault("ret_code", value="E_SOMETHING_VERY_LONG"),)),
    Phase("http-500-once", (Fault("http_status", pages=(2,), value=500, times=1),)),
    Phase("http-503-persistent", (Fault("http_status", pages=(3,), value=503),), scrapes=2),
    Phase("http-401-persistent", (Fault("http_status", pages=(1,), value=401),)),
    Phase("http-429-retry-after", (Fault("http_status", value=429, retry_after=0.1, times=1),)),
    Phase("http-404", (Fault("http_status", pages=(4,), value=404),)),
    Phase("html-502", (Fault("html", pages=(1,), value=502),), scrapes=2),
    Phase("malformed-json", (Fault("malformed_json", pages=(2,)),)),
    Phase("html-200", (Fault("html", pages=(0,)),)),
    Phase("not-object", (Fault("not_object", pages=(1,), value="list"),)),
    Phase("result-wrong-type", (Fault("result_wrong_type", pages=(5,), value="string"),)),
    Phase("truncated", (Fault("truncated", pages=(1,)),), scrapes=2),
    Phase("huge", (Fault("huge", pages=(1,), value=2 * MIB),), scrapes=3),
    Phase("connection-dropped", (Fault("close", pages=(2,)),), scrapes=2),
    Phase("page-hangs", (Fault("hang", pages=(3,), value=2.5),), scrapes=2),
    Phase("slow-pages", (Fault("slow", value=0.05),), scrapes=3),
    Phase("total-shifts", (Fault("total_shift", pages=(1,), value=37),)),
    Phase("duplicates", (Fault("duplicate", pages=(1, 2)),)),
    Phase("tokens-expired", expire_tokens=True),
    Phase("token-500", (Fault("http_status", api="tokenByAkSk", value=500),), 2, True),
    Phase("token-no-access-token", (Fault("no_access_token", api="tokenByAkSk"),), 3, True),
    Phase("token-bad-expires", (Fault("bad_expires", api="tokenByAkSk"),), 3, True),
    Phase("token-dropped-once", (Fault("close", api="tokenByAkSk", times=1),), 3, True),
    Phase("pool-mode", changes={"mode": "pool"}),
    Phase("legacy-mode", changes={"mode": "legacy"}),
    Phase("healthy-again", scrapes=40),
)


def phases_forever() -> Iterator[Phase]:
    while True:
        yield from PHASES


@dataclass
class Usage:
    rss: int
    fds: int
    threads: int

    def __str__(self) -> str:
        return f"rss {self.rss / MIB:7.1f} MiB   fds {self.fds:4d}   threads {self.threads:3d}"


def usage(proc: psutil.Process) -> Usage:
    return Usage(proc.memory_info().rss, proc.num_fds(), proc.num_threads())


class Soak:
    """The scrape loop against one exporter process, steering the simulator between scrapes."""

    def __init__(self, sim: Simulator, client: httpx2.Client) -> None:
        self.sim = sim
        self.client = client
        self.results: Counter[str] = Counter()  # "phase: up|down" -> scrapes
        self.late: list[float] = []  # seconds of the answers that came after the deadline

    def scrape(self) -> bool:
        """One scrape; True when the target was up."""
        elapsed, text = scrape(self.client, "/metrics", SCRAPE_TIMEOUT)
        if elapsed > SCRAPE_TIMEOUT:
            self.late.append(elapsed)
        return sample(text, "cec_up", target="soak") == 1.0

    def phase(self, phase: Phase, limit: int, record: bool = True) -> int:
        """Hold ``phase`` for its scrapes (at most ``limit``); returns how many ran."""
        self.sim.set_faults(list(phase.faults))
        if phase.changes:
            self.sim.update(**phase.changes)
        count = min(phase.scrapes, limit)
        for _ in range(count):
            if phase.expire_tokens:
                self.sim.expire_tokens()
            state = "up" if self.scrape() else "down"
            if record:
                self.results[f"{phase.name}: {state}"] += 1
        self.sim.clear_faults()
        if phase.changes:
            self.sim.update(mode="single")
        return count

    def reset(self) -> None:
        self.results.clear()
        self.late.clear()


def pages_in_flight(soak: Soak) -> int:
    """Most pages in flight at once in one slow healthy scrape: max_concurrency unless the
    exporter's connection pool lost slots (the failure mode of encode/httpcore#1093)."""
    soak.sim.update(latency_ms=50.0)
    soak.sim.reset_stats()
    soak.scrape()
    soak.sim.update(latency_ms=0.0)
    return int(soak.sim.stats()["in_flight_max"])  # type: ignore[call-overload]


def soak_config(sim: Simulator) -> dict[str, object]:
    target = {
        "name": "soak",
        "base_url": sim.url,
        "app_key": APP_KEY,
        "app_secret": APP_SECRET,
        "timeout_seconds": 5,
        "max_concurrency": CONCURRENCY,
        "max_response_bytes": MIB,
    }
    return {"targets": [target]}


def run(args: argparse.Namespace) -> int:
    sim = Simulator(
        SimConfig(phones=args.phones, tenants=4, app_key=APP_KEY, app_secret=APP_SECRET)
    ).start()
    work = Path(tempfile.mkdtemp(prefix="cec-soak-"))
    exporter = serve_config(soak_config(sim), work, "--log-level", "info", ready="/-/ready")
    phases = phases_forever()
    try:
        with exporter, httpx2.Client(base_url=exporter.url, timeout=30) as client:
            ps = exporter.ps
            soak = Soak(sim, client)
            # Warm-up: one full cycle of every fault, so every code path has run once.
            warmup = sum(soak.phase(phase, len(PHASES) * 100) for phase in PHASES)
            warmup_down = sum(n for k, n in soak.results.items() if k.endswith(": down"))
            soak.reset()
            start_usage = usage(ps)
            print(f"warm-up: {warmup} scrapes (one cycle of {len(PHASES)} fault phases)")
            print(f"start    {start_usage}")

            started = time.monotonic()
            done, next_report = 0, args.report_every
            while done < args.scrapes:
                done += soak.phase(next(phases), args.scrapes - done)
                if done >= next_report:
                    rate = done / (time.monotonic() - started)
                    print(f"{done:6d}   {usage(ps)}   {rate:6.1f} scrapes/s")
                    next_report += args.report_every
            seconds = time.monotonic() - started
            # A few healthy scrapes, so a page left hanging by the last phase is done with.
            soak.phase(PHASES[0], 5, record=False)
            end_usage = usage(ps)
            in_flight = pages_in_flight(soak)
            final = client.get("/metrics").text
    finally:
        sim.stop()
        log_file = work / "exporter.log"  # for reading after the run
        log_file.write_text(exporter.output + "\n")

    print(f"end      {end_usage}")
    rss_growth = (end_usage.rss - start_usage.rss) / MIB
    fd_growth = end_usage.fds - start_usage.fds
    print(
        f"\n{done} scrapes in {seconds:.1f}s: {done / seconds:.1f} scrapes/s   "
        f"rss growth {rss_growth:+.1f} MiB   fd growth {fd_growth:+d}   "
        f"threads {start_usage.threads} -> {end_usage.threads}"
    )
    up = print_scrapes(soak, done)
    print_api_outcomes(final)
    print(f"pages in flight at once after the soak: {in_flight} (max_concurrency {CONCURRENCY})")
    leaked, tracebacks = check_log(log_file, sim, warmup_down + done - up)

    problems = verdict(
        args,
        rss_growth=rss_growth,
        fd_growth=fd_growth,
        late=soak.late,
        bad_log=bool(leaked or tracebacks),
        in_flight=in_flight,
    )
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


def verdict(
    args: argparse.Namespace,
    *,
    rss_growth: float,
    fd_growth: int,
    late: list[float],
    bad_log: bool,
    in_flight: int,
) -> list[str]:
    """What went wrong, if anything."""
    problems = []
    if rss_growth > args.max_rss_growth_mib:
        problems.append(f"RSS grew by {rss_growth:.1f} MiB (limit {args.max_rss_growth_mib})")
    if fd_growth > args.max_fd_growth:
        problems.append(f"open fds grew by {fd_growth} (limit {args.max_fd_growth})")
    if late:
        problems.append(f"{len(late)} scrapes answered late (max {max(late):.2f}s)")
    if bad_log:
        problems.append("a secret or a traceback reached the log")
    if in_flight != CONCURRENCY:
        problems.append(f"only {in_flight} pages in flight at once: connection slots leaked")
    return problems


def print_scrapes(soak: Soak, done: int) -> int:
    """How the measured scrapes ended, overall and by phase (up/down); returns how many were up."""
    up = sum(n for k, n in soak.results.items() if k.endswith(": up"))
    late = len(soak.late)
    print(f"scrapes: {up} with cec_up 1, {done - up} with cec_up 0; {late} answered late")
    by_phase: dict[str, dict[str, int]] = {}
    for key, n in soak.results.items():
        name, _, state = key.partition(": ")
        by_phase.setdefault(name, {})[state] = n
    for name, states in by_phase.items():
        print(f"  {name:24s} up {states.get('up', 0):5d}   down {states.get('down', 0):5d}")
    return up


def check_log(log_file: Path, sim: Simulator, failed_scrapes: int) -> tuple[int, int]:
    """Count warnings, tracebacks and leaked secrets in the exporter's log; print them."""
    text = log_file.read_text(errors="replace")
    # promslog's spelling (level=warn); a line per failed collection is expected.
    warnings = sum(1 for line in text.splitlines() if " level=warn " in f" {line} ")
    tracebacks = text.count("Traceback")
    leaked = [s for s in (PASSWORD_PREFIX, APP_SECRET, *sim.issued_tokens()) if s in text]
    print(
        f"exporter log: {warnings} warning lines for {failed_scrapes} failed scrapes "
        f"(warm-up included), {tracebacks} tracebacks, {len(leaked)} secrets leaked ({log_file})"
    )
    return len(leaked), tracebacks


def print_api_outcomes(text: str) -> None:
    kinds = ("requests", "http_errors", "ret_code_failures")
    counters = {f"cec_api_{kind}_total" for kind in kinds}
    rows: list[tuple[str, float]] = []
    for (name, labels), found in parse_samples(text).items():
        if name in counters and found:
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels) if k != "target")
            rows.append((f"{name}{{{shown}}}", found))
    print("API requests (cumulative, whole run including warm-up):")
    for name, found in rows:
        print(f"  {name:75s} {found:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=3000)
    parser.add_argument("--phones", type=int, default=1000)
    parser.add_argument("--report-every", type=int, default=500)
    parser.add_argument("--max-rss-growth-mib", type=float, default=10.0)
    parser.add_argument("--max-fd-growth", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run(args))


if __name__ == "__main__":
    main()

"""Attack the exporter's front door from one client, and measure what a real scrape gets.

    .venv/bin/python bench/bench_attacks.py                    # this checkout's exporter
    .venv/bin/python bench/bench_attacks.py --exporter /other/.venv/bin/cec-phone-exporter
    .venv/bin/python bench/bench_attacks.py --only idle_tls handshakes   # some of them

Starts the simulator and ``cec-phone-exporter serve`` (basic auth at bcrypt cost 10,
open-files limit soft 1024 / hard 20000 as systemd gives a service by default; a second
one serving TLS for the TLS and HTTP/2 attacks) on loopback, then, one after the other,
bounded in count and time:

- ``flood``: 1,100 kept-alive connections, each asking ``/-/healthy`` every 3 s;
- ``bombs``: 40 request heads of 6.4 MB (99 lines of 65,000 bytes) that never finish;
- ``guesses``: 32 clients sending wrong passwords, while a user logs in for the first time;
- ``malformed``: ambiguous heads (two Content-Lengths, HTTP/0.9, obs-fold, ...);
- ``large``: /metrics with 50,000 per-phone series, while another target is probed;

and issue 24's, each beside a credentialed scraper on its own connection every 0.5 s:

- ``idle_tls``: 2,000 idle TLS connections;
- ``handshakes``: 500 unfinished TLS handshakes, cut by the server at 10 s, three rounds;
- ``idle_flood``: 5,000 idle kept-alive connections (and again at nofile 128);
- ``settings``: a sustained HTTP/2 SETTINGS flood on one connection;
- ``h2_body``: a 100 MiB HTTP/2 request body on a path that answers 405;
- ``heads``: 300 unfinished request heads just under 1 MiB;
- ``tiny_timeout``: 500 scrapes with ``X-Prometheus-Scrape-Timeout-Seconds: 1e-320``.

For each it prints what a credentialed scrape got (status, seconds, or how many of the
scraper's were answered and their median) and what the attack cost the exporter
(threads, RSS growth, CPU share of one core), against the ``idle`` baseline measured in
the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import _path  # noqa: F401  (tests/ on sys.path)
import bcrypt
import httpx2
import trustme
import yaml
from support import MIB, basic_auth, target_entry, tls_client
from support_attacks import (
    SETTINGS,
    UNFINISHED_HANDSHAKE,
    Background,
    h2_flood,
    h2_unread_body,
    kept_alive,
    raw_connections,
    scrape_every,
    unfinished_heads,
)
from support_procs import Peaks, ServeProcess, load, machine

from exporter.simulator import SimConfig, Simulator

USER, PASSWORD = "prometheus", "scrape-password"
LATE_USERS, LATE_PASSWORD = [f"grafana-{i}" for i in range(5)], "first-login"
COST = 10
SOFT, HARD = 1024, 20000


@dataclass
class Result:
    attack: str
    scrape: str
    threads: int
    rss_growth_mib: float
    cpu_share: float
    note: str = ""


class Exporter(ServeProcess):
    """The exporter under attack, in a child process with systemd's default limits."""

    @classmethod
    def launch(
        cls,
        program: str,
        config: Path,
        web: Path,
        nofile: tuple[int, int] = (SOFT, HARD),
        extra: tuple[str, ...] = (),
    ) -> Exporter:
        """``program serve`` on a free port under ``prlimit``, started."""
        prlimit = shutil.which("prlimit")
        limit = [prlimit, f"--nofile={nofile[0]}:{nofile[1]}"] if prlimit else []
        flags = ("--config", str(config), "--web-config", str(web), *extra)
        exporter = cls.on_free_port("serve", *flags, program=(*limit, program))
        if "tls_server_config" in web.read_text():
            exporter.url = exporter.url.replace("http://", "https://")
        return exporter.start(timeout=30)

    def rss_mib(self) -> float:
        return float(self.ps.memory_info().rss) / MIB

    def loud_lines(self) -> int:
        return self.count(r"level=(error|warn)|Traceback")

    def settled_mib(self, seconds: float = 3) -> float:
        """The lowest RSS over ``seconds``: what is held, not what is in flight."""
        lowest = self.rss_mib()
        for _ in range(int(seconds / 0.25)):
            time.sleep(0.25)
            lowest = min(lowest, self.rss_mib())
        return lowest


def scrape(exporter: Exporter, path: str = "/metrics", timeout: float = 15) -> str:
    """One credentialed scrape as Prometheus sends it: ``status in seconds``."""
    started = time.monotonic()
    try:
        response = httpx2.get(
            exporter.url + path,
            headers={**basic_auth(USER, PASSWORD), "X-Prometheus-Scrape-Timeout-Seconds": "10"},
            timeout=timeout,
            verify=False,  # the TLS exporter's certificate is made for the run
        )
        status = str(response.status_code)
    except httpx2.HTTPError as err:
        status = type(err).__name__
    return f"{status} in {time.monotonic() - started:.2f}s"


@contextmanager
def measured(exporter: Exporter, attack: str, results: list[Result]) -> Iterator[list[str]]:
    """Measure the exporter while the body attacks: peak threads and RSS (sampled every
    0.1 s), CPU share; the body appends its scrape line, then an optional note."""
    rss, cpu, wall = exporter.rss_mib(), exporter.cpu_seconds(), time.monotonic()
    box: list[str] = []
    with Peaks(exporter.ps) as peaks:
        yield box
    results.append(
        Result(
            attack,
            box[0] if box else "-",
            peaks.threads,
            peaks.rss / MIB - rss,
            (exporter.cpu_seconds() - cpu) / (time.monotonic() - wall),
            box[1] if len(box) > 1 else "",
        )
    )


# --- the attacks -----------------------------------------------------------------------------


async def _kept_alive(port: int, n: int, seconds: float) -> int:
    """``n`` connections, each asking /-/healthy every 3 s for ``seconds``; answers received."""
    answered = 0
    request = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"

    async def one() -> None:
        nonlocal answered
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"Healthy\n"), 20)
                answered += head.count(b" 200")
                await asyncio.sleep(3)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    tasks = []
    for _ in range(n):
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return answered


def flood(exporter: Exporter, results: list[Result], n: int = 1100, seconds: float = 20) -> None:
    with measured(exporter, f"flood: {n} kept-alive connections", results) as box:
        answered: list[int] = []
        attacker = threading.Thread(
            target=lambda: answered.append(asyncio.run(_kept_alive(exporter.port, n, seconds)))
        )
        attacker.start()
        time.sleep(seconds / 2)
        box.append(scrape(exporter))
        attacker.join()
        box.append(f"{answered[0] if answered else 0} health answers")
    time.sleep(3)
    results[-1].note += f"; RSS {exporter.rss_mib():.0f} MiB 3 s after it left"


def bombs(exporter: Exporter, results: list[Result], n: int = 40, mib: int = 6) -> None:
    # 99 lines of 65,000 bytes: under the old server's caps (64 KiB a line, 100 lines).
    line = b"X-Bomb: " + b"b" * 64990 + b"\r\n"
    lines = min(99, mib * 10**6 // len(line) + 1)
    with measured(exporter, f"bombs: {n} unfinished {mib} MB heads", results) as box:
        conns = []
        refused = 0

        def send_one() -> None:
            nonlocal refused
            conn = socket.create_connection(("127.0.0.1", exporter.port), timeout=10)
            conns.append(conn)
            try:
                conn.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")
                for _ in range(lines):
                    conn.sendall(line)
            except OSError:
                refused += 1

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: send_one(), range(n)))
        box.append(scrape(exporter))
        time.sleep(5)  # held: the server has read what it will read
        box.append(f"{refused} of {n} cut off before the end")
        for conn in conns:
            conn.close()


def guesses(exporter: Exporter, results: list[Result], clients: int = 32) -> None:
    stop = threading.Event()

    def guess(i: int) -> None:
        with httpx2.Client(timeout=30) as client:
            k = 0
            while not stop.is_set():
                k += 1
                with suppress(httpx2.HTTPError):
                    client.get(
                        exporter.url + "/metrics", headers=basic_auth(USER, f"wrong-{i}-{k}")
                    )

    with measured(exporter, f"guesses: {clients} clients, wrong passwords", results) as box:
        threads = [threading.Thread(target=guess, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        waits = []
        for user in LATE_USERS:
            started = time.monotonic()
            try:
                response = httpx2.get(
                    exporter.url + "/-/ready", headers=basic_auth(user, LATE_PASSWORD), timeout=30
                )
                status = str(response.status_code)
            except httpx2.HTTPError as err:
                status = type(err).__name__
            waits.append(time.monotonic() - started)
        box.append(f"{status} in {max(waits):.2f}s")
        box.append(
            f"worst of {len(waits)} first logins; median {sorted(waits)[len(waits) // 2]:.2f}s"
        )
        stop.set()
        for thread in threads:
            thread.join()


AMBIGUOUS = [
    b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\nx",
    b"GET /-/healthy\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET /-/healthy HTTP/1.1\nHost: x\n\n",
    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
]


def malformed(exporter: Exporter, results: list[Result]) -> None:
    loud = exporter.loud_lines()
    with measured(exporter, "malformed: ambiguous heads", results) as box:
        accepted = 0
        for data in AMBIGUOUS:
            with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as conn:
                conn.sendall(data)
                answer = b""
                try:
                    while chunk := conn.recv(65536):
                        answer += chunk
                except OSError:
                    pass
            codes = re.findall(rb"HTTP/1\.[01] (\d{3})", answer)
            if not codes or codes != [b"400"]:
                accepted += 1
        time.sleep(0.5)
        box.append(scrape(exporter))
        box.append(
            f"{accepted}/{len(AMBIGUOUS)} not answered 400 alone; "
            f"{exporter.loud_lines() - loud} error/warning lines"
        )


def large(exporter: Exporter, results: list[Result]) -> None:
    def probe_latencies(stop: threading.Event, out: list[float]) -> None:
        while not stop.is_set():
            started = time.monotonic()
            httpx2.get(exporter.url + "/probe?target=small", headers=basic_auth(USER, PASSWORD))
            out.append(time.monotonic() - started)

    scrape(exporter, timeout=60)  # the big collection, cached from now on
    with measured(exporter, "large: 50,000 per-phone series", results) as box:
        stop, latencies = threading.Event(), []
        prober = threading.Thread(target=probe_latencies, args=(stop, latencies))
        prober.start()
        lines = [scrape(exporter, timeout=60) for _ in range(3)]
        stop.set()
        prober.join()
        box.append(lines[-1])
        worst = max(latencies, default=0)
        box.append(f"/probe of another target meanwhile: worst {worst:.2f}s of {len(latencies)}")


# --- issue 24's: each beside a scraper on its own connection every 0.5 s ----------------------

CREDENTIALS = {**basic_auth(USER, PASSWORD), "X-Prometheus-Scrape-Timeout-Seconds": "10"}


def scraped_during(exporter: Exporter, seconds: float) -> str:
    """The credentialed scraper's share answered and median over ``seconds``."""
    url = exporter.url + "/probe?target=small"  # not the 50,000 series of /metrics
    scrapes = scrape_every(url, 0.5, seconds, headers=CREDENTIALS)
    return f"{scrapes.statuses.count('200')}/{len(scrapes.statuses)}, p50 {scrapes.median:.3f}s"


def idle_tls(run: Run, results: list[Result], n: int = 2000) -> None:
    exporter = run.tls()
    with measured(exporter, f"idle_tls: {n} idle TLS connections", results) as box:
        attack = Background(lambda: kept_alive(exporter.port, n, hold=8, ctx=tls_client(None)))
        with attack:
            time.sleep(4)
            box.append(scraped_during(exporter, 4))
        held = attack.result()
        box.append(f"{held} held")
    results[-1].note += f"; {results[-1].rss_growth_mib * 1024 / max(held, 1):.0f} KiB each"
    results[-1].note += f"; RSS {exporter.settled_mib():.0f} MiB 3 s after they left"


def handshakes(run: Run, results: list[Result], n: int = 500, rounds: int = 3) -> None:
    exporter = run.tls()
    held = [exporter.settled_mib(1)]
    with measured(exporter, f"handshakes: {n} unfinished TLS, cut at 10 s", results) as box:
        for _ in range(rounds):
            with raw_connections(exporter.port, n, UNFINISHED_HANDSHAKE):
                time.sleep(11)
            held.append(exporter.settled_mib(2))
        box.append(scraped_during(exporter, 2))
        box.append("RSS after each round " + " -> ".join(f"{mib:.0f}" for mib in held) + " MiB")


def idle_flood(run: Run, results: list[Result], n: int = 5000) -> None:
    for nofile in ((SOFT, HARD), (128, 128)):
        exporter = run.plain if nofile == (SOFT, HARD) else run.launch(nofile)
        label = f"idle_flood: {n} kept-alive, nofile {nofile[0]}:{nofile[1]}"
        with measured(exporter, label, results) as box:
            attack = Background(lambda e=exporter: kept_alive(e.port, n, hold=14))
            with attack:
                time.sleep(1)
                box.append(scraped_during(exporter, 12))
            box.append(f"{attack.result()} of the flood's answered")


def settings(run: Run, results: list[Result], seconds: float = 12) -> None:
    exporter = run.tls()
    with measured(exporter, "settings: HTTP/2 SETTINGS flood", results) as box:
        attack = Background(lambda: h2_flood(exporter.port, tls_client(None), SETTINGS, seconds))
        with attack:
            box.append(scraped_during(exporter, seconds - 2))
        flood = attack.result()
        if flood is None:
            box.append("the attack could not connect")
            return
        ended = "not ended" if flood.closed_after is None else f"closed {flood.closed_after:.1f}s"
        box.append(f"{flood.sent:,} frames sent; GOAWAY {flood.goaway}; {ended}")


def h2_body(run: Run, results: list[Result], total: int = 100 * MIB) -> None:
    exporter = run.tls()
    with measured(exporter, "h2_body: 100 MiB body on a 405 path", results) as box:
        taken = h2_unread_body(exporter.port, tls_client(None), "/-/healthy", total)
        box.append(scrape(exporter, "/probe?target=small"))
        box.append(f"{taken / 1024:,.0f} KiB of it taken")


def heads(run: Run, results: list[Result], n: int = 300) -> None:
    exporter = run.plain
    with measured(exporter, f"heads: {n} unfinished heads of ~1 MiB", results) as box:
        conns, refused = unfinished_heads(exporter.port, n, 1000 * 1000)
        box.append(scrape(exporter, "/probe?target=small"))
        for conn in conns:
            conn.close()
        box.append(f"{refused} answered 431")
    results[-1].note += f"; RSS {exporter.settled_mib():.0f} MiB 3 s after they left"


def tiny_timeout(run: Run, results: list[Result], n: int = 500) -> None:
    exporter, sim = run.plain, run.sim
    loud, before = exporter.loud_lines(), sim.stats()
    headers = {**basic_auth(USER, PASSWORD), "X-Prometheus-Scrape-Timeout-Seconds": "1e-320"}
    with measured(exporter, f"tiny_timeout: {n} scrapes, timeout 1e-320", results) as box:
        with httpx2.Client(timeout=10) as http:
            codes = [
                http.get(exporter.url + "/probe?target=small", headers=headers) for _ in range(n)
            ]
        box.append(f"{sum(r.status_code == 200 for r in codes)} of {n} answered")
        after = sim.stats()
        asked = sum(
            int(str(after[k])) - int(str(before[k])) for k in ("query_requests", "token_requests")
        )
        opened = int(str(after["connections"])) - int(str(before["connections"]))
        box.append(
            f"{asked} vendor requests, {opened} new vendor connections, "
            f"{exporter.loud_lines() - loud} warn/error lines"
        )


# --- the run ---------------------------------------------------------------------------------


class Run:
    """The exporters under attack: the plain one, and on demand one serving TLS and one under
    another open-files limit, all of one program, config and users."""

    def __init__(self, program: str, where: Path, sim: Simulator, big: Simulator) -> None:
        self.program, self.where, self.sim = program, where, sim
        self.config, self.web = setup(where, sim, big)
        self.plain = Exporter.launch(program, self.config, self.web)
        self._others: list[Exporter] = []
        self._tls: Exporter | None = None
        help_of = [program, "serve", "--help"]
        served = subprocess.run(help_of, check=False, capture_output=True, text=True)
        self.help = served.stdout

    def launch(self, nofile: tuple[int, int] = (SOFT, HARD), tls: bool = False) -> Exporter:
        web = self.web
        if tls:
            ca = trustme.CA()
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                str(self.where / "server.pem")
            )
            web = self.where / "web-tls.yml"
            server = str(self.where / "server.pem")
            settings = yaml.safe_load(self.web.read_text())
            settings["tls_server_config"] = {"cert_file": server, "key_file": server}
            web.write_text(yaml.safe_dump(settings))
        extra: tuple[str, ...] = ()
        if tls and "--web.max-per-client" in self.help:
            # One address (loopback) must be able to hold the 2,000 idle TLS connections.
            extra = ("--web.max-per-client", "4096")
        exporter = Exporter.launch(self.program, self.config, web, nofile, extra)
        self._others.append(exporter)
        scrape(exporter)  # warm-up, as for the plain one
        return exporter

    def tls(self) -> Exporter:
        if self._tls is None:
            self._tls = self.launch(tls=True)
        return self._tls

    def stop(self) -> None:
        for exporter in (self.plain, *self._others):
            exporter.stop()


def setup(where: Path, sim: Simulator, big: Simulator) -> tuple[Path, Path]:
    big_settings = {"cache_ttl_seconds": 3600, "max_pages": 1000, "timeout_seconds": 60}
    targets = [
        target_entry(sim, "small"),
        target_entry(big, "big", per_phone_metrics=True, **big_settings),
    ]
    config = where / "config.yml"
    config.write_text(yaml.safe_dump({"targets": targets}))
    users = {
        USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(COST)).decode(),
    }
    late = bcrypt.hashpw(LATE_PASSWORD.encode(), bcrypt.gensalt(COST)).decode()
    users |= dict.fromkeys(LATE_USERS, late)
    web = where / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": users}))
    return config, web


def on_plain(
    attack: Callable[[Exporter, list[Result]], None],
) -> Callable[[Run, list[Result]], None]:
    return lambda run, results: attack(run.plain, results)


ATTACKS: dict[str, Callable[[Run, list[Result]], None]] = {
    "flood": on_plain(flood),
    "bombs": on_plain(bombs),
    "guesses": on_plain(guesses),
    "malformed": on_plain(malformed),
    "large": on_plain(large),
    "idle_tls": idle_tls,
    "handshakes": handshakes,
    "idle_flood": idle_flood,
    "settings": settings,
    "h2_body": h2_body,
    "heads": heads,
    "tiny_timeout": tiny_timeout,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--exporter",
        default=str(Path(sys.executable).parent / "cec-phone-exporter"),
        help="the cec-phone-exporter program to attack (default: this venv's)",
    )
    parser.add_argument("--only", nargs="*", choices=list(ATTACKS), help="run only these")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker needs 1,100+
    sim = Simulator(SimConfig(phones=300)).start()
    big = Simulator(SimConfig(phones=50_000, tenants=20)).start()
    results: list[Result] = []
    load_before = load()
    with tempfile.TemporaryDirectory() as where:
        run = Run(args.exporter, Path(where), sim, big)
        exporter = run.plain
        try:
            scrape(exporter)  # warm-up: token, connections, the first login cached
            with measured(exporter, "idle (baseline)", results) as box:
                time.sleep(2)
                box.append(scrape(exporter, "/probe?target=small"))
                box.append(f"RSS {exporter.rss_mib():.0f} MiB")
            for name, attack in ATTACKS.items():
                if not args.only or name in args.only:
                    attack(run, results)
                    time.sleep(2)
        finally:
            run.stop()
            sim.stop()
            big.stop()
    print(f"exporter: {args.exporter}; limits soft {SOFT} / hard {HARD}; bcrypt cost {COST}")
    print(f"machine: {machine()}; load average {load_before} -> {load()}")
    head = f"{'attack':46} {'credentialed scrape':24} {'threads':>7} {'RSS +MiB':>9} {'CPU':>5}"
    print(f"{head}  note")
    for r in results:
        print(
            f"{r.attack:46} {r.scrape:24} {r.threads:7d} {r.rss_growth_mib:9.1f} "
            f"{r.cpu_share:5.0%}  {r.note.lstrip('; ')}"
        )


if __name__ == "__main__":
    main()

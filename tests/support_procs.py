"""Servers in subprocesses for the tests and the benchmarks: started, awaited, measured, stopped.

The process half of support.py: ``cec-phone-exporter serve``/``simulate``/``demo`` (or
Prometheus, Alertmanager) on loopback, what a process costs (CPU, peak RSS, fds), the
machine a figure was measured on, and the simulator steered over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx2
import psutil
import yaml
from support import APP_KEY, APP_SECRET, EXPORTER, free_port, port_of, wait_http

T = TypeVar("T")
# The exporter's "listening" line, logfmt (msg=listening url=http://...) or JSON.
LISTENING = re.compile(r"\bmsg\W+listening\W.*?\burl\W+((https?)://([^/\s\"]+)/\S*?)(?=[\s\"]|$)")


class ServeProcess:
    """``cec-phone-exporter COMMAND ARGS`` (or ``program``) serving on loopback, in a subprocess.

    Output (stdout and stderr together) is collected line by line as it comes. ``start()``
    waits until it listens and ``ready`` answers; ``with`` starts it and stops it after.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        command: Sequence[str] = ("serve", "--listen", "127.0.0.1:0"),
        program: Sequence[str] = EXPORTER,
        url: str = "",
        ready: str = "/-/healthy",
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        """``url``: where it will listen, when known (else read from its listening line)."""
        self.args = args
        self.url, self.ready = url, ready
        self.proc = subprocess.Popen(
            [*program, *command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=new_session,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def on_free_port(cls, command: str, *args: str, **kwargs: Any) -> Self:
        """``COMMAND --listen 127.0.0.1:PORT ARGS``: its URL is known before it starts, so it
        need not log its listening line (``--log-level error``)."""
        port = free_port()
        listen = (command, "--listen", f"127.0.0.1:{port}")
        return cls(*args, command=listen, url=f"http://127.0.0.1:{port}", **kwargs)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    @property
    def port(self) -> int:
        return port_of(self.url)

    def _wait(self, found: Callable[[], T | None], failure: str, timeout: float) -> T:
        """``found()`` once it is not None; AssertionError after ``timeout`` or once it exited."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (result := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{failure} in:\n{self.output}")
                self._changed.wait(min(left, 0.2))
            return result

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        """The first output line (from the start) matching ``pattern``; fails after ``timeout``."""
        regex = re.compile(pattern)
        return self._wait(
            lambda: next((m for line in self.lines if (m := regex.search(line))), None),
            f"no line matching {regex.pattern!r}",
            timeout,
        )

    def count(self, pattern: str) -> int:
        """How many output lines so far match ``pattern``."""
        return len(self.lines_matching(pattern))

    def lines_matching(self, pattern: str) -> list[str]:
        """Output lines so far that match ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.lines if regex.search(line)]

    def wait_for_count(self, pattern: str, n: int, timeout: float = 20) -> None:
        """Wait until at least ``n`` output lines match ``pattern``."""
        failure = f"fewer than {n} lines match {pattern!r}"
        self._wait(lambda: True if self.count(pattern) >= n else None, failure, timeout)

    def start(self, client: httpx2.Client | None = None, timeout: float = 20) -> Self:
        """Wait for the listening line (unless the URL is known), then for ``ready`` to answer."""
        if not self.url:
            match = self.wait_for_line(LISTENING, timeout)
            self.url = f"{match.group(2)}://{match.group(3)}"
        try:
            wait_http(self.url + self.ready, client, timeout, self.proc)
        except AssertionError as err:
            raise AssertionError(f"{err}:\n{self.output}") from None
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> str:
        """SIGTERM, wait (kill after 20 s), and return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.output

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @cached_property
    def ps(self) -> psutil.Process:
        """The process, for its CPU time, memory, threads and open files."""
        return psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.ps)

    def peak_rss(self) -> int:
        """VmHWM (peak resident set) in bytes; the current RSS off Linux."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return int(self.ps.memory_info().rss)


def serve_config(config: dict[str, Any], workdir: Path, *args: str, **kwargs: Any) -> ServeProcess:
    """``serve`` on a free port of ``config``, written as YAML into ``workdir`` (not started)."""
    path = workdir / f"config-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(config))
    return ServeProcess.on_free_port("serve", "--config", str(path), *args, **kwargs)


def simulate(phones: int, latency_ms: float, *args: str) -> ServeProcess:
    """``cec-phone-exporter simulate`` of the bench app on a free port, quiet (not started)."""
    flags = ("--phones", str(phones), "--latency-ms", str(latency_ms), "--log-level", "error")
    app = ("--app-key", APP_KEY, "--app-secret", APP_SECRET)
    return ServeProcess.on_free_port("simulate", *flags, *app, *args, ready="/_sim/state")


class Peaks:
    """The peaks of a process's open fds, threads and RSS, sampled in a thread every ``every``
    seconds while the ``with`` block runs."""

    def __init__(self, ps: psutil.Process, every: float = 0.1) -> None:
        self.ps, self.every = ps, every
        self.fds, self.threads, self.rss = 0, 0, 0
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.fds = max(self.fds, self.ps.num_fds())
        self.threads = max(self.threads, self.ps.num_threads())
        self.rss = max(self.rss, int(self.ps.memory_info().rss))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._sample()
            except psutil.Error:
                return

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_HEALTH_POLLER = """
import select, sys, time, httpx2
with httpx2.Client(timeout=30) as http:
    http.get(sys.argv[1]).raise_for_status()
    print("watching", flush=True)
    worst, answers = 0.0, 0
    while not select.select([sys.stdin], [], [], 0.01)[0]:  # stdin closed: stop
        started = time.perf_counter()
        http.get(sys.argv[1]).raise_for_status()
        worst, answers = max(worst, time.perf_counter() - started), answers + 1
    print(answers, worst, flush=True)
"""


class HealthWatch:
    """Asks ``url``/-/healthy every 10 ms while the ``with`` block runs (connected before it
    starts): ``worst`` is the longest answer, what a stalled event loop makes a liveness
    probe wait. From a process of its own, as the kubelet asks: a thread of the exporter's
    process would wait for the GIL, not for the loop."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.answers = url + "/-/healthy", 0.0, 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthWatch:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HEALTH_POLLER, self.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "watching":
            raise AssertionError(f"{self.url} did not answer")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(timeout=60)
        answers, worst = out.split()
        self.answers, self.worst = int(answers), float(worst)


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` (all its threads) so far."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def run_seconds(proc: psutil.Process) -> float:
    """CPU seconds of ``proc``'s living threads, to the nanosecond (Linux schedstat);
    ``cpu_seconds`` counts in clock ticks (10 ms), a twentieth of a 20,000-phone scrape.
    Off Linux, ``cpu_seconds``."""
    try:
        tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
    except OSError:
        return cpu_seconds(proc)
    nanoseconds = 0
    for task in tasks:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            nanoseconds += int((task / "schedstat").read_text().split()[0])
    return nanoseconds / 1e9


def machine() -> str:
    """The CPU model, usable cores, Python and kernel a figure was measured on."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, nproc {usable}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a figure."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class SimControl:
    """A simulator process (``cec-phone-exporter simulate``) steered through ``/_sim/``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.Client(base_url=url, timeout=10)

    def configure(self, **changes: Any) -> None:
        self.http.patch("/_sim/config", json=changes).raise_for_status()

    def steer(self, action: str, count: int) -> None:
        """Change the phone list (``POST /_sim/phones``)."""
        self.http.post("/_sim/phones", json={"action": action, "count": count}).raise_for_status()

    def churn(self, phones: int) -> int:
        """Flap, remove and add ``phones`` each; returns the changes the exporter must count."""
        for action in ("remove", "add", "flap"):  # flap last: none it touches is removed
            self.steer(action, phones)
        return 4 * phones  # flap: 2 status changes a phone; remove and add: 1 each

    def reset_phones(self) -> None:
        self.http.delete("/_sim/phones").raise_for_status()

    def faults(self, faults: list[dict[str, Any]]) -> None:
        self.http.put("/_sim/faults", json=faults).raise_for_status()

    def reset_stats(self) -> None:
        self.http.post("/_sim/reset-stats").raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/_sim/state")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()["stats"]
        return stats

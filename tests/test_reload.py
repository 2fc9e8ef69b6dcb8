"""Config reload by SIGHUP, ``POST /-/reload`` and ``--config.auto-reload-interval`` against a
running ``serve`` subprocess."""

from __future__ import annotations

import asyncio
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trustme
import yaml
from support import RunningExporter, parse_samples, sample, samples_named, target_entry
from support_procs import ServeProcess

from exporter.cec.upstream import Upstream
from exporter.scrape import Exporter
from exporter.settings import load_config
from exporter.simulator import Fault, SimConfig, Simulator

RELOAD_OK = "cec_exporter_config_last_reload_successful"
RELOAD_TIME = "cec_exporter_config_last_reload_success_timestamp_seconds"
LAST_SUCCESS = "cec_last_success_timestamp_seconds"


AUTO_RELOAD = ("--config.auto-reload-interval", "1s")
RELOADED = r"config reloaded|config reload failed"
# How a server is made to reload -> the extra flags it is started with.
HOW = {"sighup": (), "http": (), "auto": AUTO_RELOAD}


def rewrite(path: Path, text: str) -> None:
    """Write ``path`` at once, as an editor or a Kubernetes ConfigMap update does: a watch
    never reads it half-written."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    staged.replace(path)


def write(path: Path, targets: list[dict[str, Any]]) -> None:
    rewrite(path, yaml.safe_dump({"targets": targets}))


class Reloader:
    """Triggers a reload one way (``auto``: none, the file changed) and waits until the
    server has handled it."""

    def __init__(self, server: ServeProcess, how: str, client: httpx2.Client) -> None:
        self.server, self.how, self.client = server, how, client
        self.handled = 0

    def __call__(self, expect_ok: bool) -> None:
        if self.how == "http":
            response = self.client.post(self.server.url + "/-/reload")
            assert response.status_code == (200 if expect_ok else 500), response.text
        elif self.how == "sighup":
            self.server.signal(signal.SIGHUP)
        self.handled += 1
        self.server.wait_for_count(RELOADED, self.handled)
        last = self.server.lines_matching(RELOADED)[-1]
        assert ("config reloaded" in last) == expect_ok, last


def targets_in(text: str) -> set[str]:
    """Every ``target`` label value on any series."""
    return {dict(labels).get("target", "") for _, labels in parse_samples(text)} - {""}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.slow
def test_reload_adds_rejects_and_removes_targets(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    how: str,
) -> None:
    sim_a, sim_b = simulator(phones=120), simulator(phones=30)
    entry_a, entry_b = target_entry(sim_a, "alpha"), target_entry(sim_b, "beta")
    config = write_config(targets=[entry_a])
    server = serve_process("--config", str(config), *HOW[how]).start()
    with httpx2.Client(timeout=30) as client:
        reload = Reloader(server, how, client)

        def metrics() -> str:
            response = client.get(server.url + "/metrics")
            assert response.status_code == 200
            return response.text

        first = metrics()
        assert targets_in(first) == {"alpha"}
        assert sample(first, RELOAD_OK) == 1.0
        loaded_at = sample(first, RELOAD_TIME)
        assert loaded_at is not None
        assert loaded_at > 0
        tokens_a = sim_a.stats()["tokens_issued"]

        # 1. A valid new config adds a target.
        write(config, [entry_a, entry_b])
        reload(expect_ok=True)
        added = metrics()
        assert targets_in(added) == {"alpha", "beta"}
        assert sample(added, "cec_up", target="beta") == 1.0
        assert sample(added, "cec_softphones_allocated", target="beta") == 30
        assert sample(added, RELOAD_OK) == 1.0
        reloaded_at = sample(added, RELOAD_TIME)
        assert reloaded_at is not None
        assert reloaded_at > loaded_at
        assert "beta" in client.get(server.url + "/").text
        assert client.get(server.url + "/probe?target=beta").status_code == 200
        # The unchanged target kept its collector, and with it its token.
        assert sim_a.stats()["tokens_issued"] == tokens_a

        # 2. A broken config is rejected, named in the log, and the old one keeps serving.
        broken = {**entry_b, "page_size": 500}
        write(config, [entry_a, broken])
        reload(expect_ok=False)
        assert "targets[1].page_size" in server.lines_matching("config reload failed")[-1]
        kept = metrics()
        assert sample(kept, "cec_up", target="alpha") == 1.0
        assert sample(kept, "cec_up", target="beta") == 1.0
        assert sample(kept, RELOAD_OK) == 0.0
        assert sample(kept, RELOAD_TIME) == reloaded_at
        assert client.get(server.url + "/-/ready").status_code == 200
        # An unparseable file is rejected the same way.
        rewrite(config, "targets: [\n")
        reload(expect_ok=False)
        assert str(config) in server.lines_matching("config reload failed")[-1]
        assert sample(metrics(), RELOAD_OK) == 0.0

        # 3. A good reload that drops a target: every series about it goes, API counters too.
        assert samples_named(kept, "cec_api_requests_total")
        assert any(
            labels["target"] == "beta"
            for labels, _ in samples_named(kept, "cec_api_requests_total")
        )
        write(config, [entry_a])
        reload(expect_ok=True)
        removed = metrics()
        assert targets_in(removed) == {"alpha"}
        assert 'target="beta"' not in removed
        assert sample(removed, RELOAD_OK) == 1.0
        final_time = sample(removed, RELOAD_TIME)
        assert final_time is not None
        assert final_time > reloaded_at
        assert "beta" not in client.get(server.url + "/").text
        assert client.get(server.url + "/probe?target=beta").status_code == 400
        assert sample(removed, "cec_up", target="alpha") == 1.0
    output = server.stop()
    assert "Traceback" not in output
    assert server.count(RELOADED) == reload.handled  # one reload per change, not per look


def tls_simulator(ca: trustme.CA, port: int = 0) -> Simulator:
    """A simulator serving HTTPS with a certificate for 127.0.0.1 issued by ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return Simulator(SimConfig(phones=120), port=port, ssl_context=context).start()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.slow
def test_a_renewed_ca_file_is_read_again_on_reload(
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
    how: str,
) -> None:
    """The vendor's CA is renewed: once ``ca_file`` holds the new CA and the config is
    reloaded (its text unchanged), the target is up again without a restart."""
    ca_file = tmp_path / "vendor-ca.pem"
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_ca.cert_pem.write_to_path(str(ca_file))
    sim = tls_simulator(old_ca)
    try:
        config = write_config(targets=[target_entry(sim, ca_file=str(ca_file))])
        server = serve_process("--config", str(config), *HOW[how]).start()
        with httpx2.Client(timeout=30) as client:

            def up() -> float | None:
                return sample(client.get(server.url + "/metrics").text, "cec_up", target="sim")

            assert up() == 1
            # The vendor now serves a certificate from a new CA, on the same address.
            sim.stop()
            sim = tls_simulator(new_ca, port=sim.port)
            assert up() == 0  # the file still holds the old CA
            rewrite(ca_file, new_ca.cert_pem.bytes().decode())
            Reloader(server, how, client)(expect_ok=True)
            assert up() == 1, server.output
    finally:
        sim.stop()


def test_a_renewed_ca_file_replaces_the_pool_client_and_closes_the_old_one_later(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Only a changed CA content makes a new client; the old one serves what is in flight
    and is closed after the longest ``timeout_seconds`` (or when the exporter stops)."""
    ca_file = tmp_path / "vendor-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    entry = {"name": "t", "base_url": "https://127.0.0.1:9", "app_key": "k", "app_secret": "s"}
    config = load_config(write_config(targets=[{**entry, "ca_file": str(ca_file)}]))
    target = config.targets[0]

    async def run() -> None:
        upstream = Upstream()
        upstream.configure(config.targets, 8)
        pool = upstream.acquire_pool(target)
        first = pool.client
        upstream.configure(config.targets, 8)  # a reload, the CA file as it was
        assert pool.client is first
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        grace = [replace(target, timeout_seconds=0.2)]
        upstream.configure(grace, 8)  # a reload after the CA was renewed
        assert pool.client is not first
        assert not first.is_closed  # requests in flight on it finish
        await asyncio.sleep(0.5)
        assert first.is_closed
        second = pool.client
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        upstream.configure(config.targets, 8)  # renewed again, with a 10 s grace
        await upstream.aclose()  # the exporter stops: nothing waits out a grace
        assert second.is_closed
        assert pool.client.is_closed

    asyncio.run(run())


def test_rotated_secret_file_is_used_without_restart(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=50, app_secret="first-secret-aaaa")
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("first-secret-aaaa\n")
    entry = {**target_entry(sim, "sim"), "app_secret": None, "app_secret_file": str(secret_file)}
    config = write_config(targets=[entry])
    server = serve_process("--config", str(config)).start()
    with httpx2.Client(timeout=30) as client:

        def up() -> float | None:
            return sample(client.get(server.url + "/metrics").text, "cec_up", target="sim")

        assert up() == 1.0
        assert sim.stats()["tokens_issued"] == 1
        # The vendor side rotates first: the old secret no longer gets a token.
        sim.update(app_secret="second-secret-bbbb")
        sim.expire_tokens()
        assert up() == 0.0
        # The operator rotates the file: the next token request reads it, no reload needed.
        secret_file.write_text("second-secret-bbbb\n")
        assert up() == 1.0
        assert sim.stats()["tokens_issued"] == 2
        assert server.count("config reload") == 0
    output = server.stop()
    assert "second-secret-bbbb" not in output
    assert "first-secret-aaaa" not in output


def test_a_reload_that_changes_a_failing_target_keeps_its_last_success(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """The last success belongs to the target's name: a reload that changes a target which
    is down must not drop it (``CECCollectionStale`` would resolve while it is still
    down); only the change baseline starts again."""
    sim = simulator(phones=300, tenants=3)
    config = write_config(targets=[target_entry(sim)])
    running = exporter_server(config)
    text = running.metrics()
    assert sample(text, "cec_up", target="sim") == 1.0
    succeeded = sample(text, LAST_SUCCESS, target="sim")
    assert succeeded is not None
    sim.set_faults([Fault("http_status", value=404)])
    assert sample(running.metrics(), LAST_SUCCESS, target="sim") == succeeded
    write(config, [target_entry(sim, timeout_seconds=9)])
    assert running.exporter.reload()
    text = running.metrics()
    assert sample(text, "cec_up", target="sim") == 0.0
    assert sample(text, LAST_SUCCESS, target="sim") == succeeded
    assert [s.up for s in running.exporter.recent()["sim"]] == [False, False, True]
    sim.clear_faults()
    sim.change_phones("suspend", 2)  # before the new settings' first success: not counted
    text = running.metrics()
    assert (sample(text, LAST_SUCCESS, target="sim") or 0) > succeeded
    changes = samples_named(text, "cec_softphone_status_changes_total")
    assert changes
    assert all(value == 0 for _, value in changes)


@pytest.mark.slow
def test_auto_reload_watches_the_secret_files_and_the_web_config(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    """What the config names is watched as the config is: a secret file that can no longer
    be read fails the reload (and is tried once, not at every look); the web config is
    re-read with no request to make it."""
    sim = simulator(phones=5, app_secret="watched-secret-cccc")
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("watched-secret-cccc\n")
    entry = {**target_entry(sim, "sim"), "app_secret": None, "app_secret_file": str(secret_file)}
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    config = write_config(targets=[entry])
    server = serve_process("--config", str(config), "--web-config", str(web), *AUTO_RELOAD)
    server.start()
    with httpx2.Client(timeout=30) as client:
        reload = Reloader(server, "auto", client)

        def reloaded_ok() -> float | None:
            return sample(client.get(server.url + "/metrics").text, RELOAD_OK)

        assert reloaded_ok() == 1.0
        rewrite(secret_file, "")
        reload(expect_ok=False)
        assert "targets[0].app_secret_file" in server.lines_matching(RELOADED)[-1]
        assert reloaded_ok() == 0.0
        time.sleep(3.5)  # three more looks at the same files: no second attempt
        assert server.count(RELOADED) == reload.handled
        rewrite(secret_file, "watched-secret-cccc\n")
        reload(expect_ok=True)
        assert reloaded_ok() == 1.0
        assert server.count("web config reloaded") == 0
        rewrite(web, "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n")
        server.wait_for_line(r'msg="web config reloaded" file=\S+web\.yml')  # no request asked
        answer = client.get(server.url + "/metrics")
        assert answer.headers["x-frame-options"] == "sameorigin"
    output = server.stop()
    assert "watched-secret-cccc" not in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_reload_during_a_slow_scrape(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """A reload that replaces a target's collector while it collects: the scrape still answers."""
    sim = simulator(phones=300, latency_ms=700)
    entry = target_entry(sim, "sim")
    config = write_config(targets=[entry])
    server = serve_process("--config", str(config)).start()
    result: dict[str, Any] = {}

    def scrape() -> None:
        try:
            result["response"] = httpx2.get(server.url + "/metrics", timeout=30)
        except httpx2.HTTPError as err:
            result["error"] = err

    scraper = threading.Thread(target=scrape)
    scraper.start()
    while sim.stats()["query_requests"] == 0 and scraper.is_alive():
        threading.Event().wait(0.05)
    write(config, [{**entry, "page_size": 50}])  # a changed target gets a new collector
    with httpx2.Client(timeout=30) as client:
        assert client.post(server.url + "/-/reload").status_code == 200
        scraper.join(timeout=30)
        assert "error" not in result, result
        response = result["response"]
        assert response.status_code == 200
        assert sample(response.text, "cec_up", target="sim") in (0.0, 1.0)
        # The next scrape uses the new settings (pages of 50: page indexes up to 5).
        after = client.get(server.url + "/metrics")
        assert sample(after.text, "cec_up", target="sim") == 1.0
        by_page = sim.stats()["query_requests_by_page"]
        assert isinstance(by_page, dict)
        assert max(by_page) == 5
    output = server.stop()
    assert "Traceback" not in output


@pytest.mark.slow
def test_a_reload_mid_collection_counts_nothing_and_resurrects_nothing(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """Both targets are mid-collection (a slow page) when a reload changes one, drops the other.

    The cancelled collections are no timeout and no failure; the dropped target's series
    never come back; the scrape in flight answers for the reconfigured target.
    """
    kept, dropped = simulator(phones=120), simulator(phones=30)
    for sim in (kept, dropped):
        sim.set_faults([Fault("slow", pages=(0,), value=3, times=1)])
    entry_kept, entry_dropped = target_entry(kept, "kept"), target_entry(dropped, "dropped")
    config = write_config(targets=[entry_kept, entry_dropped])
    server = serve_process("--config", str(config)).start()
    with httpx2.Client(timeout=30) as client:
        result: dict[str, Any] = {}

        def scrape() -> None:
            headers = {"X-Prometheus-Scrape-Timeout-Seconds": "20"}
            result["text"] = client.get(server.url + "/metrics", headers=headers).text

        scraper = threading.Thread(target=scrape)
        scraper.start()
        deadline = time.monotonic() + 10
        while kept.stats()["query_requests"] == 0 or dropped.stats()["query_requests"] == 0:
            assert time.monotonic() < deadline, "the collections never reached the simulators"
            time.sleep(0.02)
        write(config, [{**entry_kept, "page_size": 50}])
        Reloader(server, "http", client)(expect_ok=True)
        scraper.join(timeout=30)
        during = result["text"]
        assert targets_in(during) == {"kept"}
        assert sample(during, "cec_up", target="kept") == 1.0  # the new collector answered

        time.sleep(3.5)  # past the slow page: a late report would land by now
        after = client.get(server.url + "/metrics").text
    assert targets_in(after) == {"kept"}, "a removed target's series came back"
    for labels, value in samples_named(after, "cec_api_requests_total"):
        if labels["outcome"] not in ("success",):
            assert value == 0, f"spurious {labels}: {value}"
    failures = samples_named(after, "cec_collection_failures_total")
    assert failures
    assert all(value == 0 for _, value in failures), failures
    output = server.stop()
    assert "Traceback" not in output
    assert "collection failed" not in output


def test_closing_the_exporter_while_a_scrape_waits_ends_both_promptly(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    """Shutdown cancels the collection in flight: the scrape answers, close() does not hang."""
    sim = simulator(phones=50)
    sim.set_faults([Fault("slow", pages=(0,), value=5, times=1)])
    exporter = Exporter(load_config(write_config(targets=[target_entry(sim, "sim")])))
    answered = threading.Event()

    def scrape() -> None:
        exporter.scrape_from_thread("sim", scrape_timeout=20)
        answered.set()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    deadline = time.monotonic() + 10
    while sim.stats()["query_requests"] == 0:
        assert time.monotonic() < deadline, "the collection never reached the simulator"
        time.sleep(0.02)
    started = time.monotonic()
    exporter.close()
    assert time.monotonic() - started < 3, "close() hung on the scrape in flight"
    assert answered.wait(3), "the scrape in flight never answered"


@pytest.mark.slow
def test_scrapes_beside_repeated_reloads_are_always_answered(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """Each reload replaces a collector, maybe before its collection took a first step.

    Every scrape still answers 200 with ``cec_up`` for both targets: a collector closed by
    a reload hands the scrape over to its replacement.
    """
    sim = simulator(phones=150)
    changing, steady = target_entry(sim, "changing"), target_entry(sim, "steady")
    config = write_config(targets=[changing, steady])
    server = serve_process("--config", str(config)).start()
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def scrape_loop() -> None:
        with httpx2.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.get(server.url + "/metrics")
                answers.append((response.status_code, response.text))

    scrapers = [threading.Thread(target=scrape_loop) for _ in range(4)]
    for scraper in scrapers:
        scraper.start()
    try:
        with httpx2.Client(timeout=30) as client:
            n, until = 0, time.monotonic() + 8
            while time.monotonic() < until:
                n += 1
                write(config, [{**changing, "page_size": 50 + n % 2}, steady])
                assert client.post(server.url + "/-/reload").status_code == 200
    finally:
        stop.set()
        for scraper in scrapers:
            scraper.join(timeout=30)
    assert len(answers) >= 100
    failed = [status for status, _ in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} scrapes failed: {failed[:5]}"
    for _, text in answers:
        assert targets_in(text) == {"changing", "steady"}
        assert sample(text, "cec_up", target="steady") == 1.0
        assert sample(text, "cec_up", target="changing") in (0.0, 1.0)
    output = server.stop()
    assert "Traceback" not in output

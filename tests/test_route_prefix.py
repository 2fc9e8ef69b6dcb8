"""Where the endpoints live (issue 25): ``--web.route-prefix``, ``--web.external-url``, a
reverse proxy in front, and the landing page's links under each; ``/config``.

Every link of the landing page is followed, as a browser resolves it against the page's
own URL, and must answer 200: under a route prefix, and through a real reverse proxy on
loopback that publishes the exporter at ``/cec/`` (stripping the prefix, as a proxy in
front of an exporter at its root does).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin

import httpx2
import pytest
import yaml
from support import sample, target_entry
from support_procs import ServeProcess

from exporter.cec.redact import REDACTED
from exporter.simulator import Simulator


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value for name, value in attrs if tag == "a" and name == "href" and value]


def links(page: str) -> list[str]:
    """The ``href`` of every ``<a>`` of ``page``, unescaped as a browser reads them."""
    parser = _Links()
    parser.feed(page)
    return parser.hrefs


def follow_every_link(client: httpx2.Client, page_url: str) -> dict[str, int]:
    """{link as written: status of GET of it resolved against ``page_url``}."""
    page = client.get(page_url)
    assert page.status_code == 200, page.text
    found = links(page.text)
    assert len(found) >= 7, found  # the endpoints, and /probe and the debug probe per target
    return {href: client.get(urljoin(page_url, href)).status_code for href in found}


class PrefixProxy(ThreadingHTTPServer):
    """A reverse proxy on loopback: ``/cec/PATH`` is ``upstream/PATH``; anything else 404."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.client = httpx2.Client(timeout=30)
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: PrefixProxy

    def do_GET(self) -> None:
        if not self.path.startswith("/cec/"):
            self.send_error(404)
            return
        answer = self.server.client.get(self.server.upstream + self.path.removeprefix("/cec"))
        self.send_response(answer.status_code)
        for name in ("content-type", "location"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[Callable[[str], PrefixProxy]]:
    started: list[PrefixProxy] = []

    def start(upstream: str) -> PrefixProxy:
        server = PrefixProxy(upstream)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()
        server.client.close()


@pytest.fixture
def config(simulator: Callable[..., Simulator], write_config: Callable[..., Path]) -> Path:
    sim = simulator(phones=5)
    return write_config(targets=[target_entry(sim, "sim"), target_entry(sim, "second.one")])


@pytest.mark.parametrize(
    "flags",
    [
        ("--web.route-prefix", "/cec/"),
        ("--web.external-url", "https://ops.example.com/cec"),  # its path is the prefix
        ("--web.route-prefix", "cec", "--web.external-url", "https://ops.example.com/other/"),
    ],
    ids=["route-prefix", "external-url", "both"],
)
def test_every_endpoint_and_link_lives_under_the_route_prefix(
    config: Path, serve_process: Callable[..., ServeProcess], flags: tuple[str, ...]
) -> None:
    server = serve_process(
        "--config", str(config), *flags, "--web.telemetry-path", "/scrape", ready="/cec/-/ready"
    ).start()
    assert server.wait_for_line(r"msg=listening url=http://127\.0\.0\.1:\d+/cec/scrape")
    with httpx2.Client(timeout=30) as client:
        statuses = follow_every_link(client, server.url + "/cec/")
        assert set(statuses.values()) == {200}, statuses
        assert not [href for href in statuses if re.match(r"^(/|[a-z]+:)", href)], statuses
        scraped = client.get(server.url + "/cec/scrape").text
        assert sample(scraped, "cec_up", target="second.one") == 1
        for outside in ("/metrics", "/scrape", "/-/healthy", "/probe?target=sim", "/cecx/"):
            assert client.get(server.url + outside).status_code == 404, outside
        for bare in ("/", "/cec"):  # as Prometheus: to the landing page, where links resolve
            answer = client.get(server.url + bare)
            assert (answer.status_code, answer.headers.get("location")) == (302, "/cec/"), bare


@pytest.mark.slow
def test_landing_page_links_work_behind_a_proxy_that_strips_its_prefix(
    config: Path, serve_process: Callable[..., ServeProcess], proxy: Callable[[str], PrefixProxy]
) -> None:
    server = serve_process("--config", str(config)).start()
    front = proxy(server.url)
    with httpx2.Client(timeout=30) as client:
        statuses = follow_every_link(client, front.url + "/cec/")
    assert set(statuses.values()) == {200}, statuses


def test_config_shows_the_config_in_force_with_every_secret_redacted(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    sim = simulator(phones=3, app_key="KEY-canary-61c", app_secret="SECRET-canary-3d2")
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("SECRET-canary-3d2")
    inline = target_entry(sim, "inline", tenant_space_id="space-7")
    from_file = {
        **target_entry(sim, "from-file", page_size=50),
        "app_secret_file": str(secret_file),
    }
    del from_file["app_secret"]
    config = write_config(defaults={"timeout_seconds": 7}, targets=[inline, from_file])
    server = serve_process("--config", str(config)).start()
    answer = httpx2.get(server.url + "/config", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "KEY-canary-61c" not in answer.text
    assert "SECRET-canary-3d2" not in answer.text
    shown = yaml.safe_load(answer.text)
    assert shown["max_inflight_requests"] == 64
    first, second = shown["targets"]
    assert first["name"] == "inline"
    assert (first["app_key"], first["app_secret"]) == (REDACTED, REDACTED)
    assert first["tenant_space_id"] == "space-7"
    assert first["timeout_seconds"] == 7  # the defaults filled in: what is in force
    assert second["app_secret_file"] == str(secret_file)
    assert "app_secret" not in second
    assert (second["page_size"], first["page_size"]) == (50, 100)
    assert first["base_url"] == sim.url

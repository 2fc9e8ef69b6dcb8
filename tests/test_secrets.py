"""Secrets canary: phone passwords, the app secret and access tokens never leave the exporter.

Every command and endpoint runs at ``--log-level debug`` in both log formats, on the
happy path and through failures; no canary may appear in any output, page or log line.
"""

from __future__ import annotations

import html
import json
import logging
import re
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import httpx2
import pytest
from support import RunningExporter, log_line, run_cli, sample, samples_named, target_entry
from support_procs import ServeProcess

from exporter.cec.redact import REDACTED, held_secrets, hold_secret, redact, release_secrets
from exporter.cec.text import CLIP_MARK, VENDOR_TEXT_CHARS
from exporter.logs import setup_logging
from exporter.settings import ConfigError, load_config
from exporter.simulator import Fault, Simulator

APP_SECRET = "APPSECRET-canary-7f3a"
PASSWORD_CANARY = "SIPPW-canary-"  # the simulator's default password prefix
FILE_SECRET = "FILESECRET-canary-19bd"
PHONES = 250  # three pages at page_size 100

# name -> (faults, extra target settings, exit status of `scrape`)
SCENARIOS: dict[str, tuple[list[Fault], dict[str, Any], int]] = {
    "ok": ([], {}, 0),
    "ret_code": ([Fault("ret_code", pages=(1,), value="1")], {}, 1),
    "query_401": ([Fault("http_status", value=401)], {}, 1),
    "malformed_page": ([Fault("malformed_json", pages=(2,))], {}, 1),
    "truncated_page": ([Fault("truncated", pages=(0,))], {}, 1),
    "total_shift": ([Fault("total_shift", pages=(1,), value=5, times=1)], {}, 0),  # read again
    "token_500": ([Fault("http_status", api="tokenByAkSk", value=500)], {}, 1),
    "token_malformed": ([Fault("malformed_json", api="tokenByAkSk")], {}, 1),
    "token_without_access_token": ([Fault("no_access_token", api="tokenByAkSk")], {}, 1),
    "response_over_cap": ([], {"max_response_bytes": 2048}, 1),
    "wrong_secret": ([], {"app_secret": APP_SECRET + "-old"}, 1),
}


def canaries(*sims: Simulator) -> list[str]:
    tokens = [t for sim in sims for t in sim.issued_tokens()]
    return [APP_SECRET, FILE_SECRET, PASSWORD_CANARY, *tokens]


def assert_clean(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:6]}...) leaked in {where}"


def assert_json_lines(text: str, where: str) -> None:
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(entry), (where, line)


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.slow
def test_scrape_never_prints_secrets(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path], log_format: str
) -> None:
    runs: dict[str, tuple[Simulator, Path, int]] = {}
    for name, (faults, settings, status) in SCENARIOS.items():
        sim = simulator(phones=PHONES, tenants=2, app_secret=APP_SECRET, app_key="leak-key")
        sim.set_faults(faults)
        entry = target_entry(sim, "sim", per_phone_metrics=True, **settings)
        runs[name] = (sim, write_config(targets=[entry]), status)

    def scrape(config: Path) -> Any:
        args = ("--log-level", "debug", "--log-format", log_format)
        return run_cli("scrape", "--config", str(config), *args)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(runs, pool.map(scrape, [c for _, c, _ in runs.values()]), strict=True))

    secrets = canaries(*(sim for sim, _, _ in runs.values()))
    assert len(secrets) > 3, "no token was issued: the canary check would prove nothing"
    for name, result in results.items():
        sim, _, status = runs[name]
        assert result.returncode == status, (name, result.stderr)
        assert_clean({f"{name} stdout": result.stdout, f"{name} stderr": result.stderr}, secrets)
        assert "Traceback" not in result.stderr, name
        if log_format == "json":
            assert_json_lines(result.stderr, name)
        up = sample(result.stdout, "cec_up", target="sim")
        assert up == (1.0 if status == 0 else 0.0), name
    ok = results["ok"]
    assert "new token" in ok.stderr  # debug logging was really on
    # Per-phone series carry numbers, never passwords.
    assert "cec_softphone_registered" in ok.stdout
    assert 'phone_num="88880000"' in ok.stdout
    assert "HTTP 401" in results["query_401"].stderr or "401" in results["query_401"].stderr


@pytest.mark.slow
def test_scrape_debug_never_prints_secrets(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    """The debug report (log, metrics, effective config) in every failure scenario."""
    runs: dict[str, tuple[Simulator, Path, int]] = {}
    for name, (faults, settings, status) in SCENARIOS.items():
        sim = simulator(phones=PHONES, tenants=2, app_secret=APP_SECRET, app_key="leak-key")
        sim.set_faults(faults)
        runs[name] = (sim, write_config(targets=[target_entry(sim, "sim", **settings)]), status)

    def scrape(config: Path) -> Any:
        return run_cli("scrape", "--config", str(config), "--debug", "--log-level", "debug")

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(runs, pool.map(scrape, [c for _, c, _ in runs.values()]), strict=True))
    secrets = [*canaries(*(sim for sim, _, _ in runs.values())), "leak-key"]
    for name, result in results.items():
        assert result.returncode == runs[name][2], (name, result.stderr)
        assert "Effective config (secrets redacted)" in result.stdout, name
        assert_clean({f"{name} stdout": result.stdout}, secrets)
        assert_clean({f"{name} stderr": result.stderr}, secrets[:-1])
    assert "new token: the old one was rejected with HTTP 401" in results["query_401"].stdout


def test_check_config_never_prints_secrets(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    sim = simulator(phones=1, app_secret=APP_SECRET)
    secret_file = tmp_path / "secret"
    secret_file.write_text(FILE_SECRET)
    config = write_config(
        targets=[
            target_entry(sim, "inline"),
            {**target_entry(sim, "file"), "app_secret": None, "app_secret_file": str(secret_file)},
        ]
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "- inline:" in result.stdout
    assert "- file:" in result.stdout
    assert_clean({"check-config": result.stdout + result.stderr}, canaries(sim))


# A secret where it does not belong: each config is refused (exit 2, the key path
# named) without echoing it. ``$S`` stands for the canary, ``${CEC_APP_SECRET}`` holds it.
LEAKY_CONFIGS = {
    "URL credentials": ("targets[0].base_url", {"base_url": "http://user:$S@127.0.0.1:9"}),
    "typo'd URL with credentials": ("targets[0].base_url", {"base_url": "http:/admin:$S@host"}),
    "proxy credentials": ("targets[0].proxy", {"proxy": "http//user:$S@proxy:3128"}),
    "secret as the secret file": (
        "targets[0].app_secret_file",
        {"app_secret": None, "app_secret_file": "${CEC_APP_SECRET}"},
    ),
    "secret as the CA file": ("targets[0].ca_file", {"ca_file": "$S"}),
    "secret variable in a number": ("targets[0].page_size", {"page_size": "${CEC_APP_SECRET}"}),
    "secret variable in the name": ("targets[0].name", {"name": "${CEC_APP_SECRET}!"}),
}


@pytest.mark.parametrize("case", LEAKY_CONFIGS)
@pytest.mark.slow
def test_config_errors_never_echo_secrets(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path], case: str
) -> None:
    sim = simulator(phones=1, app_secret=APP_SECRET)
    key_path, settings = LEAKY_CONFIGS[case]
    entry = {k: v.replace("$S", APP_SECRET) if v else v for k, v in settings.items()}
    config = write_config(targets=[{**target_entry(sim, "sim"), **entry}])
    for command in ("check-config", "scrape"):
        result = run_cli(command, "--config", str(config), env={"CEC_APP_SECRET": APP_SECRET})
        assert result.returncode == 2, (command, result.stderr)
        assert key_path in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
        assert_clean({f"{command} ({case})": result.stdout + result.stderr}, [APP_SECRET])


# A numeric secret (a PIN-like app secret) in a number key passes the number check
# and fails the range check: that error must name the variable, not the number.
NUMERIC_SECRET = "918273645"


@pytest.mark.parametrize(
    ("key_path", "top", "settings"),
    [
        ("targets[0].max_pages", {}, {"max_pages": "${CEC_APP_SECRET}"}),
        ("targets[0].timeout_seconds", {}, {"timeout_seconds": "${CEC_APP_SECRET}"}),
        ("targets[0].cache_ttl_seconds", {}, {"cache_ttl_seconds": "${CEC_APP_SECRET}"}),
        ("max_inflight_requests", {"max_inflight_requests": "${CEC_APP_SECRET}"}, {}),
    ],
)
def test_a_numeric_secret_out_of_range_is_named_not_echoed(
    write_config: Callable[..., Path], key_path: str, top: dict[str, Any], settings: dict[str, Any]
) -> None:
    entry = {"name": "a", "base_url": "http://127.0.0.1:9", "app_key": "k", "app_secret": "s"}
    config = write_config(targets=[{**entry, **settings}], **top)
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={"CEC_APP_SECRET": NUMERIC_SECRET})
    assert caught.value.path == key_path
    assert "${CEC_APP_SECRET}" in str(caught.value)
    assert_clean({key_path: str(caught.value)}, [NUMERIC_SECRET, "9.18274e+08"])


def _exercise(server: ServeProcess, sim: Simulator, config: Path, good: str) -> dict[str, str]:
    """Hit every endpoint through successes and failures; return every page seen."""
    pages: dict[str, str] = {}
    with httpx2.Client(timeout=30) as client:

        def hit(label: str, method: str, path: str) -> httpx2.Response:
            response = client.request(method, server.url + path)
            pages[label] = f"{response.status_code} {response.headers}\n{response.text}"
            return response

        def round_trip(label: str) -> None:
            hit(f"{label} /metrics", "GET", "/metrics")
            hit(f"{label} /probe", "GET", "/probe?target=sim")
            hit(f"{label} debug probe", "GET", "/probe?target=sim&debug=true")
            hit(f"{label} /sd", "GET", "/sd")
            hit(f"{label} /config", "GET", "/config")
            hit(f"{label} own metrics", "GET", "/metrics?collect[]=exporter")
            hit(f"{label} /", "GET", "/")  # last: its recent collections include the above

        round_trip("ok")
        assert sample(pages["ok /metrics"].split("\n", 1)[1], "cec_up", target="sim") == 1.0
        hit("bogus probe", "GET", "/probe?target=bogus")
        hit("URL probe", "GET", f"/probe?target={sim.url}")
        hit("healthy", "GET", "/-/healthy")
        hit("ready", "GET", "/-/ready")
        assert hit("reload", "POST", "/-/reload").status_code == 200
        for label, fault in [
            ("ret_code", Fault("ret_code", pages=(1,), value="2")),
            ("query_401", Fault("http_status", value=401)),
            ("malformed", Fault("malformed_json", pages=(1,))),
        ]:
            sim.set_faults([fault])
            round_trip(label)
            assert 'cec_up{target="sim"} 0.0' in pages[f"{label} /metrics"], label
        sim.clear_faults()
        # The token expires: the next scrape gets a 401 and asks for a new one...
        sim.expire_tokens()
        round_trip("expired token")
        assert 'cec_up{target="sim"} 1.0' in pages["expired token /metrics"]
        # ... unless the token endpoint fails.
        sim.expire_tokens()
        sim.set_faults([Fault("http_status", api="tokenByAkSk", value=500)])
        round_trip("token 500")
        sim.set_faults([Fault("bad_expires", api="tokenByAkSk")])
        round_trip("token bad expires")
        sim.clear_faults()
        # A broken config with the secret pasted where a file name belongs: the
        # reload error is logged, and the secret (registered by now) is scrubbed.
        config.write_text(
            good.replace(f"app_secret: {APP_SECRET}", f"app_secret_file: {APP_SECRET}")
        )
        assert hit("bad reload", "POST", "/-/reload").status_code == 500
        server.signal(signal.SIGHUP)
        server.wait_for_count(r"reload failed.*app_secret_file", 2)
        config.write_text(good)
        assert hit("good reload", "POST", "/-/reload").status_code == 200
        round_trip("after reload")
    return pages


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.slow
def test_serve_never_shows_secrets(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    log_format: str,
) -> None:
    sim = simulator(phones=PHONES, tenants=2, app_secret=APP_SECRET, app_key="leak-key")
    config = write_config(targets=[target_entry(sim, "sim", per_phone_metrics=True)])
    good = config.read_text()
    assert f"app_secret: {APP_SECRET}" in good
    server = serve_process(
        "--config", str(config), "--log-level", "debug", "--log-format", log_format
    ).start()
    pages = _exercise(server, sim, config, good)
    output = server.stop()
    secrets = canaries(sim)
    assert len(secrets) >= 6  # several tokens were issued and used along the way
    assert_clean({**pages, "serve output": output}, secrets)
    assert "Traceback" not in output
    assert "new token" in output  # debug logging was really on
    assert "reload failed" in output
    if log_format == "json":
        assert_json_lines(output, "serve")


ECHO_PAGES = {
    "metrics": "/metrics",
    "probe": "/probe?target=sim",
    "debug probe": "/probe?target=sim&debug=true",
    "landing page": "/",  # last: its recent collections include the others'
}


def echoed_pages(
    server: ServeProcess, sim: Simulator, echo: Callable[[str], str]
) -> dict[str, str]:
    """Target ``sim`` up once, then its vendor answers retCode 1 with ``echo(token)`` (the
    token in use) as retMsg: every page that shows that collection, and the serve output."""
    assert sample(httpx2.get(server.url + "/metrics").text, "cec_up", target="sim") == 1
    message = echo(sim.issued_tokens()[-1])  # the token the next collections reuse
    assert len(message) < VENDOR_TEXT_CHARS - len("retCode 1 ()")  # shown whole, not clipped
    sim.set_faults([Fault("ret_code", value=message)])
    shown = {label: httpx2.get(server.url + path).text for label, path in ECHO_PAGES.items()}
    shown["serve output"] = server.stop()
    return shown


def test_vendor_echo_of_credentials_is_redacted_everywhere(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """A vendor that echoes the request shows the token, app key, app secret, a password."""
    app_key = "ECHO-appkey-canary-5e1"
    sim = simulator(phones=10, app_secret=APP_SECRET, app_key=app_key)
    config = write_config(targets=[target_entry(sim, "sim")])
    server = serve_process("--config", str(config), "--log-level", "debug").start()
    shown = echoed_pages(
        server,
        sim,
        lambda token: (
            f"Bearer {token}; token {token}; X-APP-Key {app_key}; {APP_SECRET}; password hunter2"
        ),
    )
    assert_clean(shown, [*sim.issued_tokens(), app_key, APP_SECRET, "hunter2"])
    # Another process has a token of its own: the echoed one is not its secret.
    scrape = run_cli("scrape", "--config", str(config), "--debug", "--log-level", "debug")
    assert_clean(
        {"scrape --debug": scrape.stdout + scrape.stderr}, [app_key, APP_SECRET, "hunter2"]
    )
    assert "simulated failure" in shown["debug probe"]  # the message is shown, redacted
    assert "&lt;redacted&gt;" in shown["landing page"]


def test_vendor_echo_is_redacted_for_every_target_of_the_app_and_where_clipped(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """Two targets of one app share one token, fetched by one of them: neither shows it.
    Vendor text clipped (512 characters) inside the echoed secret shows no start of it."""
    sim = simulator(phones=10, app_secret=APP_SECRET)
    config = write_config(targets=[target_entry(sim, "a"), target_entry(sim, "b")])
    server = serve_process("--config", str(config), "--log-level", "debug").start()
    text = httpx2.get(server.url + "/metrics").text
    assert sample(text, "cec_up", target="a") == sample(text, "cec_up", target="b") == 1
    assert len(sim.issued_tokens()) == 1, "one token for the app"
    token = sim.issued_tokens()[-1]
    kept = 12  # characters of the secret before the retMsg's clip
    pad = "x" * (VENDOR_TEXT_CHARS - 1 - len("simulated failure (retCode ") - kept)
    sim.set_faults([Fault("ret_code", value=f"{pad}{APP_SECRET} {token}")])
    shown = {
        f"{where} of {name}": httpx2.get(server.url + path.format(name)).text
        for name in ("a", "b")
        for where, path in (("probe", "/probe?target={}"), ("debug", "/probe?target={}&debug=1"))
    }
    shown["landing page"] = httpx2.get(server.url + "/").text
    shown["serve output"] = server.stop()
    assert_clean(shown, [token, APP_SECRET[:kept], APP_SECRET[:6]])
    assert "simulated failure" in shown["debug of b"]


# --- escaped echoes, and many vendor apps ----------------------------------------------------

ESCAPED_SECRET = "Qx7d/Zr9e+Kp4f=Wm2g"
"""An app secret with the characters JSON and URLs escape; each 4-character run is its own."""
UNHELD = ("Unheld9Canary", "Unheld8Canary")
"""Values no target uses, echoed in the ``app_secret=`` and ``"app_secret":`` shapes."""


def json_escaped(value: str) -> str:
    """``value`` as a JSON string's inside with every character ``\\uXXXX``-escaped."""
    return "".join(f"\\u{ord(c):04x}" for c in value)


def decodings(text: str) -> list[str]:
    """``text`` as written, HTML-, JSON- and percent-decoded, each alone and together."""
    unhtml = html.unescape(text)
    unjson = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), unhtml).replace(
        "\\/", "/"
    )
    return [text, unhtml, unjson, unquote_plus(unhtml), unquote_plus(unjson)]


def assert_no_form(texts: dict[str, str], secrets: list[str]) -> None:
    """No secret in any decoding of any text, nor a 4-character run of ESCAPED_SECRET."""
    runs = [run for run in re.split(r"[/+=]", ESCAPED_SECRET) if len(run) >= 4]
    for where, text in texts.items():
        for shown in decodings(text):
            for secret in [*secrets, *runs]:
                assert secret not in shown, f"a secret ({secret[:6]}...) shows in {where}"


def escaped_echo(secret: str, token: str) -> str:
    """A vendor echo of the app secret and the token, JSON-escaped and percent-encoded."""
    slashed = secret.replace("/", "\\/")
    gson = secret.replace("=", "\\u003d")
    return (
        f'simulated failure {{"app_secret":"{slashed}"}} app_secret%3D{quote(secret, safe="")} '
        f"X-Token {json_escaped(token)} {gson} {json_escaped(secret)} "
        f'app_secret={UNHELD[0]} {{"app_secret": "{UNHELD[1]}"}}'
    )


@pytest.mark.parametrize("level", ["debug", "info", "warn", "error"])
def test_an_escaped_echo_is_redacted_on_every_page_and_in_the_log_at_every_level(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    level: str,
) -> None:
    """The vendor echoes the secret JSON-escaped (``\\/``, ``\\u003d``, every character
    ``\\uXXXX``) and percent-encoded, and values in the ``app_secret`` shapes: the log
    line redacted some of it, the debug probe and the landing page none (two redactors).
    One redactor: no form of them on any page or in the log."""
    sim = simulator(phones=10, app_secret=ESCAPED_SECRET)
    config = write_config(targets=[target_entry(sim, "sim")])
    with ServeProcess.on_free_port(
        "serve", "--config", str(config), "--log-level", level
    ) as server:
        shown = echoed_pages(server, sim, lambda token: escaped_echo(ESCAPED_SECRET, token))
    assert_no_form(shown, [ESCAPED_SECRET, *sim.issued_tokens(), *UNHELD])
    assert "simulated failure" in shown["debug probe"]  # the message is shown, redacted
    if level in ("debug", "info", "warn"):
        assert "collection failed" in shown["serve output"]


@pytest.mark.slow
def test_what_every_target_uses_stays_redacted_beside_520_vendor_apps(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """520 apps, each a secret and a token: the registry kept the 1024 most recently
    registered, so t000's secret, in use all along, showed in clear. What a live target
    uses stays known, however many apps there are."""
    apps = 520
    sim = simulator(phones=10, apps=apps, app_secret=APP_SECRET)
    targets = [
        {
            **target_entry(sim, f"t{n:03d}"),
            "app_key": f"{sim.config.app_key}-{n}" if n else sim.config.app_key,
            "app_secret": f"{APP_SECRET}-{n}" if n else APP_SECRET,
        }
        for n in range(apps)
    ]
    caplog.set_level(logging.DEBUG)
    running = exporter_server(write_config(targets=targets))
    text = running.metrics()
    assert sum(value for _, value in samples_named(text, "cec_up")) == apps
    assert sim.stats()["tokens_issued"] == apps
    first_token = sim.issued_tokens()[0]
    sim.set_faults([Fault("ret_code", value=f"simulated failure {APP_SECRET} {first_token}")])
    shown = {
        "debug probe": running.get("/probe?target=t000&debug=true").text,
        "landing page": running.get("/").text,
        "log": "\n".join(log_line(record) for record in caplog.records),
    }
    assert "simulated failure" in shown["debug probe"]
    assert "t000" in shown["log"]
    assert_no_form(shown, [APP_SECRET, first_token])


# --- the in-process logger ------------------------------------------------------------------


def test_redact_scrubs_credential_shapes() -> None:
    samples = {
        "Authorization: Bearer tok-123.abc": "tok-123.abc",
        "authorization: bearer   tok-456": "tok-456",
        "Authorization: Basic YWxpY2U6cGFzcw==": "YWxpY2U6cGFzcw==",
        '{"password": "SIPPW-canary-000001"}': "SIPPW-canary-000001",
        '{"password":"SIPPW-canary-000002","phoneNum":"88880002"}': "SIPPW-canary-000002",
        "{'password': 'SIPPW-canary-000003'}": "SIPPW-canary-000003",
        "password=SIPPW-canary-000004": "SIPPW-canary-000004",
        '{"AccessToken": "tok-789", "Expires": "600"}': "tok-789",
        '{"app_key": "k", "app_secret": "two words"}': "two words",
    }
    for text, secret in samples.items():
        scrubbed = redact(text)
        assert secret not in scrubbed, text
        assert REDACTED in scrubbed, text
    assert "88880002" in redact('{"phoneNum":"88880002","password":"x"}')  # before it stays
    # Anything after "password" goes, as vendor text's rule has it: one redactor for both.
    assert "88880003" not in redact('{"password":"x","phoneNum":"88880003"}')
    # Config errors carry no value and stay readable.
    for message in (
        "targets[0].app_secret: set exactly one of app_secret, app_secret_file",
        "basic_auth_users.john: not a bcrypt hash: must start $2a$, $2b$ or $2y$ and be 60 ch",
    ):
        assert redact(message) == message


ESCAPED_FORMS = {
    "as written": ESCAPED_SECRET,
    "JSON \\/": ESCAPED_SECRET.replace("/", "\\/"),
    "JSON \\uXXXX, every character": json_escaped(ESCAPED_SECRET),
    "JSON \\uXXXX, some (Gson)": ESCAPED_SECRET.replace("=", "\\u003d").replace("+", "\\u002b"),
    "percent-encoded": quote(ESCAPED_SECRET, safe=""),
    "percent-encoded, lower case": re.sub(
        "%[0-9A-F]{2}", lambda m: m.group().lower(), quote(ESCAPED_SECRET, safe="")
    ),
    "percent-encoded, + left as is": quote(ESCAPED_SECRET, safe="/+"),
    "form-encoded, a space as +": quote_plus("Qx7d Zr9e" + ESCAPED_SECRET[9:]),
    "percent-encoded in JSON": quote(ESCAPED_SECRET, safe="").replace("%", "\\u0025"),
    "JSON in a query string": quote(ESCAPED_SECRET.replace("/", "\\/"), safe=""),
}


@pytest.mark.parametrize("form", ESCAPED_FORMS)
def test_a_held_secret_is_redacted_in_every_form(form: str) -> None:
    holder = object()
    hold_secret(holder, "app_secret", ESCAPED_SECRET)
    hold_secret(holder, "token", "Qx7d Zr9e" + ESCAPED_SECRET[9:])  # one with a space
    try:
        text = f"retMsg: echo {ESCAPED_FORMS[form]} end"
        assert redact(text) == f"retMsg: echo {REDACTED} end"
        cut = ESCAPED_FORMS[form][: len(ESCAPED_FORMS[form]) * 2 // 3]
        clipped = f"retMsg: echo {cut}{CLIP_MARK}"  # clipped inside it
        assert redact(clipped) == f"retMsg: echo {REDACTED}{CLIP_MARK}"
    finally:
        release_secrets(holder)
    assert redact(text) == text  # released: nothing of it is redacted any more


def test_what_a_holder_uses_stays_known_until_it_is_released() -> None:
    """Bounded by the holders alive, not by a count: held values are never forgotten."""
    live, others = object(), [object() for _ in range(2048)]
    hold_secret(live, "token", "live-canary-0a1b")
    for n, holder in enumerate(others):
        hold_secret(holder, "token", f"other-canary-{n:05d}")
    hold_secret(live, "token", "live-canary-0a1c")  # renewed: the one before is kept too
    hold_secret(live, "token", "live-canary-0a1d")  # renewed again: the oldest goes
    assert redact("live-canary-0a1c live-canary-0a1d") == f"{REDACTED} {REDACTED}"
    assert redact("live-canary-0a1b") == "live-canary-0a1b"
    assert redact("other-canary-00000") == REDACTED
    for holder in others:
        release_secrets(holder)
    assert redact("other-canary-00000") == "other-canary-00000"
    assert {"live-canary-0a1c", "live-canary-0a1d"} <= held_secrets()
    release_secrets(live)
    assert not {"live-canary-0a1c", "live-canary-0a1d"} & held_secrets()


def test_redact_scrubs_held_secrets() -> None:
    holder = object()
    hold_secret(holder, "app_secret", "registered-canary-5e21")
    hold_secret(holder, "app_key", "abc")  # too short to scrub safely: ignored
    assert redact("sent registered-canary-5e21 to x") == f"sent {REDACTED} to x"
    assert redact("abc def") == "abc def"
    release_secrets(holder)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_are_scrubbed(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("debug", log_format)
        hold_secret(root, "app_secret", "registered-canary-77aa")
        log = logging.getLogger("exporter.test")
        log.debug("token registered-canary-77aa in a message")
        log.info("headers %s", {"Authorization": "Bearer tok-canary-1"})
        log.warning("page %s", {"phoneNum": "88880001", "password": "SIPPW-canary-000001"})
        try:
            raise ValueError("failed with registered-canary-77aa and password=SIPPW-canary-9")
        except ValueError:
            log.exception("it broke")
        # A third-party logger goes through the same formatter.
        logging.getLogger("somelib").error("app_secret=%s", APP_SECRET)
    finally:
        release_secrets(root)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 5, err
    for secret in ("registered-canary-77aa", "tok-canary-1", PASSWORD_CANARY, APP_SECRET):
        assert secret not in err
    assert "Traceback" not in err
    assert "88880001" in err
    if log_format == "json":
        assert_json_lines(err, "in-process")

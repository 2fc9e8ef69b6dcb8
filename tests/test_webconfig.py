"""The web config file against exporter-toolkit's own corpus, and the format's finer rules.

``tests/exporter_toolkit/`` is upstream's test corpus (see its README for source and
licence). Every file gets upstream's verdict, except the three that Python's ``ssl``
cannot serve with upstream's meaning, which are refused with a clear error instead
(docs/security.md lists them).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import bcrypt
import pytest
import trustme
from docs_common import SECURITY_DOC, section

from exporter.settings import ConfigError
from exporter.settings.readers import parse_duration
from exporter.settings.webconfig import KEYS, WebConfig, load_web_config

CORPUS = Path(__file__).resolve().parent / "exporter_toolkit"
TESTDATA = CORPUS / "testdata"
TLS = "tls_server_config"

ACCEPTED = {
    "tls_config_noAuth.requireandverifyclientcert.good.yml",
    # Same content as good.blocking; upstream's test never uses it, its Validate accepts it.
    "web_config_auth_clientCAs_missing.bad.yml",
    "web_config_empty.yml",
    "web_config_headers.good.yml",
    "web_config_noAuth.good.blocking.yml",
    "web_config_noAuth.good.yml",
    "web_config_noAuth_allCiphers.good.yml",
    "web_config_noAuth_noHTTP2.good.yml",
    "web_config_noAuth_someCiphers.good.yml",
    "web_config_noAuth_someCiphers_noOrder.good.yml",
    "web_config_noAuth_someCurves.good.yml",
    "web_config_noAuth_tlsInline.good.yml",
    "web_config_users.good.yml",
    "web_config_users_noTLS.good.yml",
    "web_config_auth_client_san.bad.yaml",  # loads; the client is refused (test_web_tls)
    "web_config_auth_client_san.good.yaml",
    "web_config_rate_limiter_nonblocking.yaml",
    "web_config_rate_limiter_one_second.yaml",
}
# file -> (the key path the error names, what it says): upstream's reason, in our words.
REFUSED = {
    "web_config_junk.yml": ("(top level)", "must be a mapping"),
    "web_config_junk_key.yml": (f"{TLS}.cert_filse", "unknown key"),
    "web_config_noAuth_certPath_empty.bad.yml": (f"{TLS}.cert_file", "missing one of cert or"),
    "web_config_noAuth_cert_empty.bad.yml": (f"{TLS}.cert_file", "missing one of cert or"),
    "web_config_noAuth_certPath_keyPath_empty.bad.yml": (f"{TLS}.cert_file", "missing one of cert"),
    "web_config_noAuth_keyPath_empty.bad.yml": (f"{TLS}.key_file", "missing one of key or"),
    "web_config_noAuth_key_empty.bad.yml": (f"{TLS}.key_file", "missing one of key or"),
    "web_config_noAuth_certPath_invalid.bad.yml": (f"{TLS}.cert_file", "no such file"),
    "web_config_noAuth_keyPath_invalid.bad.yml": (f"{TLS}.cert_file", "no such file"),
    "web_config_noAuth_certPath_keyPath_invalid.bad.yml": (f"{TLS}.cert_file", "no such file"),
    "web_config_auth_clientCAs_invalid.bad.yml": (f"{TLS}.client_ca_file", "no such file"),
    "web_config_noAuth.bad.yml": (
        f"{TLS}.client_auth_type",
        "client CA's have been configured without a Client Auth Policy",
    ),
    "web_config_auth_user_list_invalid.bad.yml": ("basic_auth_users.john", "not a bcrypt hash"),
    "web_config_noAuth_inventedCiphers.bad.yml": (f"{TLS}.cipher_suites[0]", "unknown cipher"),
    "web_config_noAuth_inventedCurves.bad.yml": (f"{TLS}.curve_preferences[0]", "unknown curve"),
    "web_config_noAuth_wrongTLSVersion.bad.yml": (f"{TLS}.min_version", "unknown TLS version"),
    "web_config_noAuth_noHTTP2Cipher.bad.yml": (
        f"{TLS}.cipher_suites",
        "missing an HTTP/2-required",
    ),
    "web_config_headers_content_type_options.bad.yml": (
        "http_server_config.headers.X-Content-Type-Options",
        "invalid value for",
    ),
    "web_config_headers_frame_options.bad.yml": (
        "http_server_config.headers.X-Frame-Options",
        "invalid value for",
    ),
    "web_config_headers_extra_header.bad.yml": (
        "http_server_config.headers.Content-Type",
        "can not be configured",
    ),
}
# Upstream serves these; Python's ssl cannot give them upstream's meaning, so they are
# refused rather than served with a different one.
DEVIATIONS = {
    "tls_config_noAuth.requireanyclientcert.good.yml": (
        f"{TLS}.client_auth_type",
        "cannot be expressed with Python's ssl",
    ),
    "tls_config_noAuth.requireanyclientcertkeyinline.good.yml": (
        f"{TLS}.client_auth_type",
        "cannot be expressed with Python's ssl",
    ),
    "web_config_noAuth_allCurves.good.yml": (f"{TLS}.curve_preferences", "one curve only"),
}
CORPUS_FILES = sorted(p.name for p in TESTDATA.iterdir() if p.suffix in (".yml", ".yaml"))


def test_every_corpus_file_has_a_verdict() -> None:
    assert set(CORPUS_FILES) == ACCEPTED | set(REFUSED) | set(DEVIATIONS)
    assert len(CORPUS_FILES) == 41


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_upstream_accepts_so_do_we(name: str) -> None:
    assert isinstance(load_web_config(str(TESTDATA / name)), WebConfig)


@pytest.mark.parametrize("name", sorted(REFUSED | DEVIATIONS))
def test_upstream_refuses_so_do_we(name: str) -> None:
    path, message = (REFUSED | DEVIATIONS)[name]
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(TESTDATA / name))
    assert caught.value.path == path
    assert message in caught.value.message


def test_documented_sample_loads(tmp_path: Path) -> None:
    """Upstream's docs/web-config.yml, beside the corpus's certificate and key."""
    for name in ("server.crt", "server.key"):
        shutil.copy(TESTDATA / name, tmp_path / name)
    shutil.copy(CORPUS / "docs-web-config.yml", tmp_path / "web.yml")
    config = load_web_config(str(tmp_path / "web.yml"))
    assert config.tls is not None
    assert set(config.users) == {"alice", "bob"}
    assert config.rate_limit is not None
    assert (config.rate_limit.interval_seconds, config.rate_limit.burst) == (1.0, 20)


def test_what_the_good_files_mean() -> None:
    users = load_web_config(str(TESTDATA / "web_config_users.good.yml"))
    assert set(users.users) == {"alice", "bob", "carol", "dave"}
    assert users.max_bcrypt_cost == 18  # bob's hash: unknown users must cost as much
    headers = load_web_config(str(TESTDATA / "web_config_headers.good.yml"))
    assert headers.headers["X-XSS-Protection"] == "1"  # an integer in YAML, a string in Go
    assert headers.headers["X-Frame-Options"] == "deny"
    sans = load_web_config(str(TESTDATA / "web_config_auth_client_san.good.yaml"))
    assert sans.tls is not None
    assert sans.tls.client_allowed_sans == ("one", "test3", "two")
    assert load_web_config(str(TESTDATA / "web_config_noAuth_noHTTP2.good.yml")).http2 is False
    assert (
        load_web_config(str(TESTDATA / "web_config_rate_limiter_nonblocking.yaml")).rate_limit
        is None
    )


def test_relative_paths_are_taken_from_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing the file names is here
    config = load_web_config(str(TESTDATA / "web_config_noAuth.good.yml"))
    assert config.tls is not None
    assert config.tls.files == (str(TESTDATA / "server.crt"), str(TESTDATA / "server.key"))
    # ... and also when the web config itself is named relative to the working directory.
    monkeypatch.chdir(CORPUS)
    assert load_web_config("testdata/web_config_noAuth.good.yml").tls is not None


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def refusal(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_web_config(write(tmp_path, text))
    return caught.value


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    error = refusal(
        tmp_path, f"basic_auth_users:\n  alice: '{hashed}'\n  bob: '{hashed}'\n  alice: x\n"
    )
    assert error.path.endswith("web.yml")
    assert "duplicate key basic_auth_users.alice (first given on line 2)" in error.message
    assert "line 4" in error.message


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    return {
        "cert": cert.cert_chain_pems[0].bytes().decode(),
        "key": cert.private_key_pem.bytes().decode(),
        "ca": ca.cert_pem.bytes().decode(),
    }


def indented(text: str) -> str:
    return "".join("    " + line + "\n" for line in text.splitlines())


def test_inline_pem_and_client_ca(
    tmp_path: Path, pem: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        f"{TLS}:\n  cert: |\n{indented(pem['cert'])}  key: |\n{indented(pem['key'])}"
        f"  client_ca: |\n{indented(pem['ca'])}  client_auth_type: RequireAndVerifyClientCert\n"
    )
    config = load_web_config(write(tmp_path, text))
    assert config.tls is not None
    assert config.tls.files == ()  # nothing on disk to watch
    # Without memfd (not Linux): a private temp file, removed once loaded.
    made: list[tuple[int, str]] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(suffix: str) -> tuple[int, str]:
        made.append(real_mkstemp(suffix=suffix, dir=tmp_path))
        return made[-1]

    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert load_web_config(write(tmp_path, text)).tls is not None
    assert len(made) == 2  # the certificate and the key
    assert not any(Path(name).exists() for _, name in made)
    error = refusal(tmp_path, text.replace("RequireAndVerifyClientCert", "NoClientCert"))
    assert error.path == f"{TLS}.client_auth_type"
    assert "without a Client Auth Policy" in error.message
    # A key that is not a key: refused, and the error never shows the inline value.
    error = refusal(tmp_path, text.replace(pem["key"].splitlines()[1], "bm90IGEga2V5"))
    assert error.path == TLS
    assert "bm90IGEga2V5" not in str(error)


def test_what_python_cannot_do_is_refused_not_weakened(tmp_path: Path) -> None:
    cert, key = TESTDATA / "server.crt", TESTDATA / "server.key"
    base = f"{TLS}:\n  cert_file: {cert}\n  key_file: {key}\n"
    for auth in ("RequireAnyClientCert", "RequireClientCert"):
        error = refusal(tmp_path, base + f"  client_auth_type: {auth}\n")
        assert error.path == f"{TLS}.client_auth_type"
    error = refusal(tmp_path, base + "  curve_preferences: [X25519, CurveP256]\n")
    assert error.path == f"{TLS}.curve_preferences"
    # client_allowed_sans would be ignored where no verified certificate is required.
    for auth in ("NoClientCert", "RequestClientCert", "VerifyClientCertIfGiven"):
        error = refusal(
            tmp_path,
            base + f"  client_auth_type: {auth}\n  client_allowed_sans: [a]\n"
            f"  client_ca_file: {TESTDATA / 'client_selfsigned.pem'}\n"
            if auth != "NoClientCert"
            else base + "  client_allowed_sans: [a]\n",
        )
        assert error.path == f"{TLS}.client_allowed_sans", auth
    # One curve, TLS 1.0 and the TLS 1.3 suite names are fine.
    assert load_web_config(write(tmp_path, base + "  curve_preferences: [X25519]\n")).tls
    assert load_web_config(write(tmp_path, base + "  min_version: TLS10\n")).tls
    only13 = base + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n  min_version: TLS13\n"
    assert load_web_config(write(tmp_path, only13)).tls


def test_headers_follow_upstreams_rules(tmp_path: Path) -> None:
    h = "http_server_config:\n  headers:\n"
    blank = load_web_config(
        write(tmp_path, h + "    X-XSS-Protection:\n    X-Frame-Options: sameorigin\n")
    )
    assert dict(blank.headers) == {"X-XSS-Protection": "", "X-Frame-Options": "sameorigin"}
    folded = load_web_config(write(tmp_path, h + '    Content-Security-Policy: "a\\r\\nb"\n'))
    assert folded.headers["Content-Security-Policy"] == "a  b"  # never a header of its own
    for line, path in [
        ("    X-Frame-Options:\n", "X-Frame-Options"),  # null is not deny/sameorigin
        ("    X-Frame-Options: DENY\n", "X-Frame-Options"),  # values are case-sensitive
        ("    x-frame-options: deny\n", "x-frame-options"),  # so are names
        ("    Content-Type: text/plain\n", "Content-Type"),
        ("    Server: x\n", "Server"),
        ("    Content-Security-Policy: [a, b]\n", "Content-Security-Policy"),
        # Accepted once, then every answer (health included) was cut off with a traceback.
        ('    Content-Security-Policy: "default-src \u2603"\n', "Content-Security-Policy"),
        ('    Strict-Transport-Security: "max-age=1\\x01"\n', "Strict-Transport-Security"),
    ]:
        assert refusal(tmp_path, h + line).path == f"http_server_config.headers.{path}", line
    assert refusal(tmp_path, "http_server_config:\n  http2: maybe\n").path == (
        "http_server_config.http2"
    )


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("1s", 1.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0), ("0", 0.0), (0, 0.0)],
)
def test_durations_as_go_reads_them(raw: object, seconds: float) -> None:
    assert parse_duration("x", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["1d", "1", "s", "1s2", "", "1 s", True, [1]])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration("rate_limit.interval", raw)


def test_rate_limit_keys(tmp_path: Path) -> None:
    assert refusal(tmp_path, "rate_limit:\n  interval: 1s\n  brust: 2\n").path == "rate_limit.brust"
    assert (
        refusal(tmp_path, "rate_limit:\n  interval: 1s\n  burst: '2'\n").path == "rate_limit.burst"
    )
    limited = load_web_config(write(tmp_path, "rate_limit:\n  interval: 250ms\n  burst: 5\n"))
    assert limited.rate_limit is not None
    assert (limited.rate_limit.interval_seconds, limited.rate_limit.burst) == (0.25, 5)


def test_security_doc_lists_every_key_of_the_format() -> None:
    web_config = section(SECURITY_DOC, "The web config file")
    rows = [line for line in web_config.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`([a-z_0-9.]+)`", row.split("|")[1])}
    accepted = {
        f"{section}.{key}" if section else key for section, keys in KEYS.items() for key in keys
    }
    accepted -= set(KEYS)  # sections are documented through their keys
    accepted |= {"basic_auth_users"}  # a free mapping of user names
    assert documented == accepted

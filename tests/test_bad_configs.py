"""Bad config files are refused with exit 2 and the key path; good ones are summarised.

Each ``tests/configs/bad/*.yaml`` names what its error must mention on its first
line: ``# expect: targets[0].page_size`` (``FILE`` stands for the file's own path;
``a | b`` means both must appear). ``${CEC_TEST_BAD_DIR}`` in those files points
at the helper files beside them (an empty secret, a non-UTF-8 one, a bogus CA);
``${CEC_TEST_SECRET}`` holds a canary that no error may echo.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme
import yaml
from support import run_cli

from exporter.settings import ConfigError, load_config

BAD_DIR = Path(__file__).resolve().parent / "configs" / "bad"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
SECRET_CANARY = "s3cr3t-canary"
# Credentials in bad URLs, a secret where a path belongs, a secret from the
# environment in the wrong key: an error must never echo them.
URL_CANARY = "pw-canary-9c1d"
ENV = {"CEC_TEST_BAD_DIR": str(BAD_DIR), "CEC_TEST_SECRET": URL_CANARY}


def expectations(path: Path) -> list[str]:
    """What the error for ``path`` must mention, from its ``# expect:`` first line."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    parts = [p.strip() for p in first.removeprefix("# expect: ").split("|")]
    return [str(path) if p == "FILE" else p for p in parts]


def assert_refused(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not named in: {result.stderr!r}"
    assert "Traceback" not in output
    assert URL_CANARY not in output
    assert "listening" not in output


@pytest.fixture(scope="module")
def check_results() -> Iterator[dict[Path, subprocess.CompletedProcess[str]]]:
    """``check-config`` on every bad file, run a few at a time (each is a Python start-up)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            path: pool.submit(run_cli, "check-config", "--config", str(path), env=ENV)
            for path in BAD_FILES
        }
        yield {path: future.result() for path, future in futures.items()}


def test_there_are_enough_bad_configs() -> None:
    assert len(BAD_FILES) >= 30
    for path in BAD_FILES:
        assert expectations(path)


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
@pytest.mark.slow
def test_check_config_refuses(
    path: Path, check_results: dict[Path, subprocess.CompletedProcess[str]]
) -> None:
    assert_refused(check_results[path], expectations(path))


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_config_error_carries_the_key_path(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the error's ``path`` is exactly the expected key path (or file)."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    expected = expectations(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == expected[0]
    for fragment in expected[1:]:
        assert fragment in str(caught.value)
    assert URL_CANARY not in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "page-size-500-in-defaults",
        "unknown-key-in-target",
        "secret-file-missing",
        "yaml-tab-indentation",
        "not-utf8",
        "base-url-with-credentials",
    ],
)
def test_serve_refuses_before_listening(name: str) -> None:
    path = BAD_DIR / f"{name}.yaml"
    result = run_cli("serve", "--config", str(path), "--listen", "127.0.0.1:0", env=ENV)
    assert_refused(result, expectations(path))


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yml"
    assert_refused(run_cli("check-config", "--config", str(missing)), [str(missing)])
    serve = run_cli("serve", "--config", str(missing), "--listen", "127.0.0.1:0")
    assert_refused(serve, [str(missing)])


def test_zero_byte_config_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_bytes(b"")
    assert_refused(run_cli("check-config", "--config", str(empty)), [str(empty), "empty"])


def test_config_is_a_directory(tmp_path: Path) -> None:
    assert_refused(run_cli("check-config", "--config", str(tmp_path)), [str(tmp_path)])


def test_missing_config_option_is_a_usage_error() -> None:
    result = run_cli("check-config", env={"CEC_EXPORTER_CONFIG": ""})
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert "Traceback" not in result.stderr


# --- good configs ---------------------------------------------------------------------


def summary_settings(text: str) -> dict[str, dict[str, str]]:
    """``check-config`` output as {target: {setting: value}}."""
    targets: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("- "):
            name, _, url = line[2:].partition(": ")
            current = targets.setdefault(name, {"base_url": url})
        elif line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            current[key] = value
    return targets


@pytest.fixture
def good_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    secret_file = tmp_path / "app-secret"
    secret_file.write_text(SECRET_CANARY + "\n")
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    env = {
        "CEC_TEST_APP_KEY": "key-from-env",
        "CEC_TEST_PAGE_SIZE": "25",
        "CEC_TEST_SECRET_FILE": str(secret_file),
        "CEC_TEST_HOST": "127.0.0.1",
    }
    config = {
        "defaults": {
            "page_size": "${CEC_TEST_PAGE_SIZE}",  # numeric string via the environment
            "timeout_seconds": "7.5",  # numeric string as written
            "max_concurrency": 2,
            "token_lifetime_seconds": 900,
            "verify_tls": "false",
        },
        "targets": [
            {
                "name": "prod",
                "base_url": "https://${CEC_TEST_HOST}:8443/",
                "app_key": "${CEC_TEST_APP_KEY}",
                "app_secret_file": "${CEC_TEST_SECRET_FILE}",
                "tenant_space_id": "space-1",
            },
            {
                "name": "staging",
                "base_url": "http://127.0.0.1:9",
                "app_key": "k2",
                "app_secret": "inline-canary-4411",
                "page_size": 100,  # overrides the default
                "max_concurrency": "8",
                "cache_ttl_seconds": 30,
                "ca_file": str(ca_file),  # a real CA bundle passes the check
            },
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path, env


def test_good_config_summary(good_config: tuple[Path, dict[str, str]]) -> None:
    path, env = good_config
    result = run_cli("check-config", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "OK, 2 target(s)" in result.stdout
    targets = summary_settings(result.stdout)
    assert set(targets) == {"prod", "staging"}
    prod, staging = targets["prod"], targets["staging"]
    assert prod["base_url"] == "https://127.0.0.1:8443"
    assert prod["app_secret"].startswith("file ")
    assert prod["tenant_space_id"] == "space-1"
    assert prod["page_size"] == "25"  # from ${VAR}, a numeric string
    assert prod["timeout_seconds"] == "7.5"
    assert prod["max_concurrency"] == "2"
    assert prod["token_lifetime_seconds"] == "900"
    assert prod["verify_tls"] == "False"
    assert prod["cache_ttl_seconds"] == "0.0"  # built-in default
    assert staging["page_size"] == "100"  # the target's own value wins
    assert staging["max_concurrency"] == "8"
    assert staging["timeout_seconds"] == "7.5"  # merged from defaults
    assert staging["cache_ttl_seconds"] == "30.0"
    assert staging["ca_file"].endswith("ca.pem")
    assert prod["ca_file"] == "None"
    assert "redacted" in staging["app_secret"]
    output = result.stdout + result.stderr
    assert SECRET_CANARY not in output
    assert "inline-canary-4411" not in output


def test_good_config_in_process(
    good_config: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, env = good_config
    config = load_config(path, environ=env)
    prod, staging = config.targets
    assert prod.app_key == "key-from-env"
    assert prod.app_secret.read() == SECRET_CANARY
    assert SECRET_CANARY not in repr(prod)
    assert "inline-canary-4411" not in repr(staging)
    assert (prod.page_size, staging.page_size) == (25, 100)
    assert (prod.max_concurrency, staging.max_concurrency) == (2, 8)
    assert prod.timeout_seconds == staging.timeout_seconds == 7.5
    assert prod.verify_tls is False
    # The process environment is the default source of ${VAR}.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_config(path) == config


def test_unset_variable_in_good_config_names_it(good_config: tuple[Path, dict[str, str]]) -> None:
    path, env = good_config
    partial = {k: v for k, v in env.items() if k != "CEC_TEST_APP_KEY"}
    result = run_cli("check-config", "--config", str(path), env=partial)
    assert_refused(result, ["targets[0].app_key", "CEC_TEST_APP_KEY"])


NOBODY = 65534


def load_as_another_user(config: Path) -> str:
    """The error ``load_config(config)`` raises for a user who cannot read what it names.

    As root (CI, containers): in a process of the forkserver (single-threaded, so safe
    to fork) that drops to uid/gid 65534 first, so the kernel itself refuses the read;
    the interpreter lives under /root, which that user could not exec. As anyone else,
    the files are simply not readable by their owner either (mode 0).
    """
    if os.getuid() != 0:
        return _load_error(str(config))
    forkserver = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=1, mp_context=forkserver) as pool:
        return pool.submit(_load_error_as, NOBODY, str(config)).result(timeout=60)


def _load_error_as(uid: int, config: str) -> str:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return _load_error(config)


def _load_error(config: str) -> str:
    try:
        load_config(config, environ={})
    except ConfigError as err:
        return str(err)
    return "loaded"


def test_an_unreadable_secret_file_is_named_with_the_uid_the_exporter_runs_as() -> None:
    """The container's uid cannot read a secret its owner made 0600: say which file and
    which uid, so the fix (chown, chmod, or run as the owner) is obvious."""
    folder = Path(tempfile.mkdtemp(prefix="cec-uid-"))
    try:
        folder.chmod(0o755)  # traversable by any user; the secret itself is not readable
        secret = folder / "cec_app_secret"
        secret.write_text("uid-secret-canary")
        secret.chmod(0o600 if os.getuid() == 0 else 0)
        config = folder / "config.yml"
        config.write_text(
            "targets:\n  - {name: a, base_url: 'https://cec.example', app_key: k,\n"
            f"     app_secret_file: {secret}}}\n"
        )
        config.chmod(0o644)
        said = load_as_another_user(config)
        uid = NOBODY if os.getuid() == 0 else os.getuid()
        assert said.startswith(f"targets[0].app_secret_file: cannot read {secret}: "), said
        assert "Permission denied" in said
        assert f"uid {uid}" in said
        assert "uid-secret-canary" not in said
        config.chmod(0o600 if os.getuid() == 0 else 0)
        said = load_as_another_user(config)
        assert said.startswith(f"{config}: cannot read config file: Permission denied"), said
        assert f"uid {uid}" in said
    finally:
        for path in sorted(folder.iterdir()):
            path.chmod(0o600)
            path.unlink()
        folder.rmdir()

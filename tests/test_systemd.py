"""The shipped systemd unit (deploy/systemd/) is valid, hardened, and its command line works.

``systemd-analyze`` checks the unit as systemd would load it; the exporter then runs
with the unit's own ``ExecStart`` arguments and environment, and reloads on the
signal ``ExecReload`` sends.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO
from support_procs import ServeProcess

pytestmark = pytest.mark.e2e

UNIT = REPO / "deploy" / "systemd" / "cec-phone-exporter.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives() -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given, in order (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in (raw.strip() for raw in UNIT.read_text().splitlines()):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def exec_start() -> list[str]:
    return shlex.split(directives()["Service.ExecStart"][0])


def test_unit_is_hardened_and_passes_the_secret_as_a_credential() -> None:
    unit = directives()
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ExecReload": "kill -HUP $MAINPID",
        "LoadCredential": "app_secret:/etc/cec-phone-exporter/app_secret",
        "Environment": "CEC_APP_SECRET_FILE=%d/app_secret",
    }.items():
        assert value in unit[f"Service.{key}"], f"{key}={value} missing from {UNIT.name}"
    assert exec_start()[1:3] == ["serve", "--config"]


@needs_systemd
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: use this test's install.
    program = Path(sys.executable).parent / "cec-phone-exporter"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(exec_start()[0], str(program)))
    assert ANALYZE is not None
    verify = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout + verify.stderr == "", "warnings: " + verify.stderr
    security = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert security.returncode == 0, security.stdout + security.stderr
    score = float(security.stdout.rsplit("exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 2.0, security.stdout  # systemd's "OK" band; an unhardened unit scores 9.6


def test_exec_start_serves_the_example_config_and_reloads_on_hup(
    tmp_path: Path, serve_process: Callable[..., ServeProcess]
) -> None:
    """As systemd runs it: the unit's arguments, its credential variable, SIGHUP to reload."""
    credentials = tmp_path / "credentials"  # what systemd names $CREDENTIALS_DIRECTORY
    credentials.mkdir()
    (credentials / "app_secret").write_text("unit-test-secret")
    config = tmp_path / "config.yml"
    shutil.copy(REPO / "config.example.yaml", config)
    args = [str(config) if a.startswith("/etc/") else a for a in exec_start()[1:]]
    env = {
        "CEC_APP_KEY": "unit-test-key",
        "CEC_APP_SECRET_FILE": f"{credentials}/app_secret",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    server = serve_process(
        command=(*args, "--listen", "127.0.0.1:0", "--log-level", "debug"), env=env
    ).start()
    server.signal(signal.SIGHUP)
    server.wait_for_line(r'msg="config reloaded" targets=1')
    assert "unit-test-secret" not in server.stop()


def test_unit_raises_the_open_files_limit() -> None:
    """systemd's default soft limit (1024) is below what a connection flood needs."""
    assert int(directives()["Service.LimitNOFILE"][0]) >= 8192

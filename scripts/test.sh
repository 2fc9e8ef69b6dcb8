#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them all:
# lint, types, pytest (unit, end-to-end over loopback, real Prometheus/Alertmanager)
# and the promtool checks. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  echo "==> installing prometheus and prometheus-alertmanager (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing the project and its test dependencies"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

echo "==> ruff"
ruff check exporter tests bench scripts
ruff format --check exporter tests bench scripts
echo "==> mypy --strict"
mypy
echo "==> operations bundle (promtool, hadolint)"
bash scripts/check_ops.sh
echo "==> pytest"
pytest "$@"

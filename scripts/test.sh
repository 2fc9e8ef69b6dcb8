#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them all:
# lint, types, the promtool checks, the container image smoke test and pytest
# (unit, end-to-end over loopback, real Prometheus/Alertmanager).
# Usage: bash scripts/test.sh [pytest args...]
#
# The image smoke test (scripts/image_smoke.sh: builds the Dockerfile with buildah
# and runs the image with podman) needs root; about 90 s on a fresh machine, 10 s
# once its Debian base is bootstrapped. It is skipped for non-root users (never
# under CI) and with IMAGE_SMOKE=0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  echo "==> installing prometheus and prometheus-alertmanager (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager >/dev/null
fi

# The image smoke test shares nothing with the installs and linters below, and
# nothing there is timing-sensitive: run it beside them, and wait for it before
# pytest, whose timing-sensitive tests then have the cores to themselves.
smoke_pid=""
smoke_log=""
if [ "${IMAGE_SMOKE:-1}" != 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "==> image smoke test: started in the background (its log follows the linters)"
    smoke_log=$(mktemp)
    bash scripts/image_smoke.sh >"$smoke_log" 2>&1 </dev/null &
    smoke_pid=$!
    trap 'if [ -n "$smoke_pid" ]; then kill "$smoke_pid" 2>/dev/null || true; fi; rm -f "$smoke_log"' EXIT
  elif [ -n "${CI:-}" ]; then
    echo "image smoke test: needs root (rootful buildah/podman, debootstrap)" >&2
    exit 1
  else
    echo "==> image smoke test: skipped, needs root (sudo bash scripts/image_smoke.sh)"
  fi
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
if [ -n "$smoke_pid" ]; then
  echo "==> image smoke test (scripts/image_smoke.sh)"
  smoke_rc=0
  wait "$smoke_pid" || smoke_rc=$?
  smoke_pid=""
  cat "$smoke_log"
  if [ "$smoke_rc" -ne 0 ]; then
    echo "image smoke test: FAILED (exit $smoke_rc)" >&2
    exit "$smoke_rc"
  fi
fi
echo "==> pytest"
pytest --durations=20 "$@"

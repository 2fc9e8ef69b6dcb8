#!/usr/bin/env bash
# Regenerate the lock files the container image installs from:
#   requirements.lock        the runtime dependencies, from pyproject.toml [project].dependencies
#   requirements-build.lock  the build backend, from pyproject.toml [build-system].requires
# Exact versions with the sha256 of every file PyPI has for them, for every
# platform and Python >= requires-python (uv's universal resolution), so one
# commit always builds the same image. pyproject.toml keeps the ranges.
#
#   bash scripts/lock.sh              # add what pyproject gained, keep every other pin
#   bash scripts/lock.sh --upgrade    # newest versions the ranges allow
#   bash scripts/lock.sh --upgrade-package httpx2
#
# Needs uv (used from PATH, or installed into a throwaway venv) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  venv="${TMPDIR:-/tmp}/cec-lock-uv"
  [ -x "$venv/bin/uv" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q uv; }
  uv="$venv/bin/uv"
fi

common=(--universal --generate-hashes --quiet --custom-compile-command "bash scripts/lock.sh")
"$uv" pip compile "${common[@]}" "$@" pyproject.toml -o requirements.lock
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  | "$uv" pip compile "${common[@]}" "$@" - -o requirements-build.lock
echo "wrote requirements.lock and requirements-build.lock"

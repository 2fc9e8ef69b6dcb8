#!/usr/bin/env bash
# The unit tests (every test marked neither e2e nor slow: pytest -m "not e2e and not slow")
# on each Python the project supports besides the one of .venv, with the interpreters this
# machine has: python3.X on the PATH, /usr/bin, /usr/local/bin, pyenv's versions. None is
# downloaded: a version the machine lacks is reported and skipped (REQUIRE_PYTHONS=1 makes
# that a failure). Each version gets its own venv, .venv-3.X, with the project installed
# editable and its test dependencies, one after the other; then the versions' tests run
# side by side (each takes one core), each one's output printed whole when it ends. The
# slow tests (servers against timers, memory and floods) run on .venv's Python only, alone
# on the machine, in scripts/test.sh.
# PYTHONS_STEP=install only installs, PYTHONS_STEP=test only tests (into the venvs made);
# PYTHONS_PRIORITY=idle runs the tests at idle CPU priority. .ci/run installs first, then
# runs the tests at idle priority beside scripts/test.sh.
#
#   bash scripts/test_pythons.sh                       # 3.12 and 3.13
#   PYTHON_VERSIONS=3.13 bash scripts/test_pythons.sh tests/test_cli.py
set -euo pipefail
cd "$(dirname "$0")/.."
versions=${PYTHON_VERSIONS:-3.12 3.13}

find_python() { # find_python 3.12: the path of an interpreter of exactly that version
  local version=$1 candidate
  for candidate in "$(command -v "python$version" || true)" "/usr/bin/python$version" \
    "/usr/local/bin/python$version" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
    [[ -n $candidate && -x $candidate ]] || continue
    # A pyenv shim exists for versions it has but may refuse to run one not selected.
    if [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) == "$version" ]]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

step=${PYTHONS_STEP:-all}
priority=()
if [[ ${PYTHONS_PRIORITY:-} == idle ]]; then # only the CPU nobody else wants
  if command -v chrt >/dev/null; then priority=(chrt --idle 0); else priority=(nice -n 19); fi
fi

missing=() venvs=() pids=() logs=() failed=()
for version in $versions; do # one install at a time: an editable install writes the tree
  if ! python=$(find_python "$version"); then
    echo "==> Python $version: not on this machine, skipped (nothing is downloaded)"
    missing+=("$version")
    continue
  fi
  venv=.venv-$version
  if [[ $step != test ]]; then
    echo "==> Python $version ($python): installing into $venv"
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  fi
  venvs+=("$venv")
done
[[ $step != install ]] || venvs=()
for venv in "${venvs[@]}"; do # the tests side by side
  log=$(mktemp)
  "${priority[@]}" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not e2e and not slow" "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!") logs+=("$log")
done
for i in "${!pids[@]}"; do
  echo "==> unit tests in ${venvs[$i]}"
  if ! wait "${pids[$i]}"; then failed+=("${venvs[$i]}"); fi
  cat "${logs[$i]}"
  rm -f "${logs[$i]}"
done
if ((${#failed[@]})); then
  echo "test_pythons: the unit tests failed in ${failed[*]} (above)" >&2
  exit 1
fi
if ((${#missing[@]})) && [[ ${REQUIRE_PYTHONS:-0} == 1 ]]; then
  echo "test_pythons: no interpreter for Python ${missing[*]}" >&2
  exit 1
fi

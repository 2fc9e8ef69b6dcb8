# syntax=docker/dockerfile:1
#
# cec-phone-exporter container image.
#
#   docker build -t cec-phone-exporter .
#   docker run --rm -p 9877:9877 cec-phone-exporter demo --listen 0.0.0.0:9877
#   docker run --rm -p 9877:9877 \
#       -v "$PWD/config.yml:/etc/cec-phone-exporter/config.yml:ro" \
#       -e CEC_APP_KEY=... -v "$PWD/app_secret:/run/secrets/cec_app_secret:ro" \
#       cec-phone-exporter
#
# The default command is `serve --config /etc/cec-phone-exporter/config.yml`:
# mount the config file there. CEC_EXPORTER_CONFIG holds the same path for the
# commands that read it from the environment (`check-config`, `scrape`, or
# `serve` without --config); a --config on the command line wins over it.
# The HEALTHCHECK probes http://127.0.0.1:9877/-/healthy: keep the default
# listen port, and plain HTTP, or override the health check.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# One wheel for the project and one for each dependency, installed offline below.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ------------------------------------------------------------------ final
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="cec-phone-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)" \
      org.opencontainers.image.source="https://github.com/cec-phone-exporter/cec-phone-exporter" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CEC_EXPORTER_CONFIG=/etc/cec-phone-exporter/config.yml

RUN groupadd --system --gid 10001 cec \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cec \
    && mkdir -p /etc/cec-phone-exporter

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl

USER 10001:10001
EXPOSE 9877

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["cec-phone-exporter"]
CMD ["serve", "--config", "/etc/cec-phone-exporter/config.yml"]

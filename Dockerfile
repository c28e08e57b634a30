# syntax=docker/dockerfile:1
#
# binance-futures-exporter container image.
#
#   docker build -t binance-futures-exporter \
#     --build-arg VERSION="$(python3 -m setuptools_scm)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://github.com/<you>/binance-futures-exporter .
#   docker run --rm -p 9894:9894 \
#     -v "$PWD/config.yaml:/etc/binance-futures-exporter/config.yaml:ro" \
#     binance-futures-exporter
#
# No configuration or API keys are baked into the image: mount the config
# (and key files / env vars it references) at run time.
#
# Reproducible: every Python package comes from requirements.lock (runtime) or
# requirements-build.lock (the wheel's build tools), pinned with hashes and
# installed with --require-hashes; the base image is a full version tag. Two
# builds of one commit install the same files. `make lock` updates the locks.
# VERSION is the version setuptools-scm gives the checkout (from git tags;
# the build context has no .git): build_info and the image label carry it.

# Full version tag, so rebuilds are reproducible; bump deliberately.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- stage 1: build wheels for the exporter and its dependencies ----------
FROM ${PYTHON_IMAGE} AS build

# The commit being built, if the build is told: the wheel carries it as
# exporter/REVISION, and binance_futures_exporter_build_info shows it as its
# `revision` label ("unknown" without it).
ARG REVISION=""
# The version (`python3 -m setuptools_scm` in the checkout); without it the
# package says 0.0.0+unknown, setuptools-scm's fallback in pyproject.toml.
ARG VERSION=0.0.0+unknown

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY requirements-build.lock requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: -r requirements-build.lock
# Only what the wheel needs (pyproject: readme = README.md, license-files = LICENSE).
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ ./exporter/
RUN rm -f exporter/REVISION exporter/_version.py \
 && if [ -n "$REVISION" ]; then printf '%s\n' "$REVISION" > exporter/REVISION; fi \
 && SETUPTOOLS_SCM_PRETEND_VERSION_FOR_BINANCE_FUTURES_EXPORTER="$VERSION" \
    pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && cp requirements.lock /wheels/

# ---- stage 2: runtime -------------------------------------------------------
FROM ${PYTHON_IMAGE}

# OCI annotations. VERSION is the one the wheel was built with (the same
# build argument); REVISION and SOURCE (the repository URL) are whatever the
# build passes.
ARG VERSION=0.0.0+unknown
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="binance-futures-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Binance futures accounts" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

# MALLOC_ARENA_MAX=2: glibc gives threads their own malloc arenas (up to 8 per
# core); for hundreds of mostly idle fetch threads that only fragments memory
# (4 MB less RSS measured at 300 accounts with 2).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies exactly as locked (hashes checked), then the exporter's
# wheel alone; pip check: the lock satisfies everything the wheel requires.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --require-hashes --only-binary=:all: -r /wheels/requirements.lock \
 && pip install --no-index --no-deps /wheels/*.whl \
 && pip check \
 && groupadd --gid 10001 exporter \
 && useradd --uid 10001 --gid exporter --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin exporter \
 && mkdir -p /etc/binance-futures-exporter

USER 10001:10001

EXPOSE 9894

# slim has no curl: probe /-/healthy with the interpreter we ship anyway.
# /-/healthy needs no basic auth, but this assumes the default plain-HTTP
# listener on port 9894: if you change --web.listen-address or enable TLS in
# --web.config.file, override it (compose `healthcheck:`) or disable it
# (`docker run --no-healthcheck`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9894/-/healthy', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["binance-futures-exporter"]
CMD ["--config.file=/etc/binance-futures-exporter/config.yaml"]

# syntax=docker/dockerfile:1
# One image for both parts of s3backup.
#   syncer:   docker run IMAGE sync /data s3://bucket/prefix [options]   (the entrypoint is `s3backup`)
#   operator: the Helm chart sets `command: ["s3backup-operator"]`
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK by design; Kubernetes probes the operator's /healthz, and the syncer is a run-to-completion Job
#
# Build:  docker build -t s3backup:0.1.0 --build-arg VERSION=0.1.0 .
# For reproducible builds, pin the base below by digest (python:3.11-slim-trixie@sha256:...).

FROM python:3.11-slim-trixie AS base

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY syncer/ syncer/
COPY operator/ operator/
COPY scripts/install-into-venv.sh scripts/
# The same script that tests/packaging runs: wheel, then a pip-less venv with the pinned dependencies.
RUN PYTHON=python3 sh scripts/install-into-venv.sh /src /opt/s3backup

FROM base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="s3backup" \
      org.opencontainers.image.description="One-way, incremental backup of local volumes to S3: CLI (s3backup sync) and Kubernetes operator (s3backup-operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="s3backup" \
      org.opencontainers.image.documentation="https://github.com/s3backup/s3backup#readme" \
      org.opencontainers.image.source="https://github.com/s3backup/s3backup"

# The final stage keeps no package installer: the base image's pip and setuptools go, and
# the application venv was made without pip. A fixed, numeric, non-root user owns nothing
# in the image, so the code is read-only to the process.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --gid 65532 s3backup \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin s3backup
COPY --from=build /opt/s3backup /opt/s3backup

ENV PATH=/opt/s3backup/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["s3backup"]
CMD ["--help"]

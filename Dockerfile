# One image for the operator (`cdi operator`, the default command) and the runner pods (`cdi sync --in-cluster …`).
#   docker build -t cdi-operator:dev .
#   kind load docker-image cdi-operator:dev --name cdi
# Without access to Docker Hub, `bash hack/image.sh` builds the same image on a base made from Debian's packages
# (through BASE_IMAGE). No `# syntax=` line: BuildKit would fetch that frontend from a registry.
#
# Both stages use the same base, pinned by the digest of its multi-arch index (python:3.11-slim-bookworm, Python
# 3.11.16): the venv built in the first stage links against exactly the libraries the second one has. To move to a
# newer patch release, replace the digest below with the one `docker buildx imagetools inspect
# python:3.11-slim-bookworm` shows.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator

# No compiler: every dependency comes as a wheel (checked on amd64). The project's own dependencies already hold
# every warehouse client (Snowflake, Redshift, BigQuery, Databricks) and the SSH tunnel, so no extra is needed;
# `dev` (test tools) stays out.
RUN pip wheel --wheel-dir /wheels . \
 && pip install --no-index --find-links /wheels cdi-operator \
 && pip uninstall -y pip \
 && rm -rf /wheels \
 && cdi --help >/dev/null


FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="cdi-operator" \
      org.opencontainers.image.description="Braze Cloud Data Ingestion operator and runner for Snowflake, Redshift, BigQuery and Databricks" \
      org.opencontainers.image.source="https://github.com/cdi-operator/cdi-operator" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid that the chart's securityContext names (runAsUser 10001); no login shell, no home directory.
RUN groupadd --system --gid 10001 cdi \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cdi

COPY --from=builder /opt/venv /opt/venv

# HOME=/tmp: client libraries that keep caches under ~ write there, not into the image (with a read-only root
# filesystem, mount an emptyDir at /tmp). The venv's bin comes first, so `cdi` is the project's console script.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /tmp
USER 10001:10001

# 8080: /metrics; 9443: the validating admission webhook.
EXPOSE 8080 9443

ENTRYPOINT ["cdi"]
CMD ["operator"]

# syntax=docker/dockerfile:1
# runbookd image: one image for every process (api, worker, beat, migrate); the
# Helm chart picks the process with the container's args, e.g. `runbookd worker`.
#
#   docker build -t runbookd:0.1.0 .
#   docker run --rm -p 8000:8000 runbookd:0.1.0 api

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# A compiler only for dependencies that may lack a wheel on this platform; it
# stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY workers ./workers
# A regular (not editable) install: the runtime stage copies only the venv.
RUN /opt/venv/bin/pip install .

FROM python:${PYTHON_VERSION}-slim AS runtime
# A fixed numeric UID so Kubernetes' runAsNonRoot can verify it; the chart's
# podSecurityContext uses the same one.
ARG UID=10001
RUN groupadd --system --gid ${UID} runbookd \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/runbookd --shell /usr/sbin/nologin runbookd \
    && mkdir -p /var/lib/runbookd \
    && chown ${UID}:${UID} /var/lib/runbookd
COPY --from=build /opt/venv /opt/venv
COPY runbooks /app/runbooks
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUNBOOKD_HOST=0.0.0.0 \
    RUNBOOKD_PORT=8000 \
    RUNBOOKD_HOME=/var/lib/runbookd \
    RUNBOOKD_RUNBOOKS_DIR=/app/runbooks
WORKDIR /app
USER ${UID}:${UID}
# /var/lib/runbookd holds writable data (artifacts, beat schedule): mount a
# volume there (the chart uses an emptyDir or a PVC) when the root is read-only.
EXPOSE 8000
ENTRYPOINT ["runbookd"]
CMD ["api"]

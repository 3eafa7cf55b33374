# sluiceway, CPU image: `docker build -t sluiceway:cpu .`
# Run: docker run -p 8001:8001 -p 8002:8002 -v /path/to/repository:/models:ro sluiceway:cpu
# Settings are SLUICEWAY_* variables or flags after the image name (README "Settings").

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with sluiceway and its dependencies (wheels only, no compiler)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY batcher batcher
COPY clients clients
COPY server server
COPY loadtest loadtest
# The CPU runtime (extra `cpu`); Dockerfile.gpu installs the GPU one instead. Spelled ./[cpu]:
# hadolint takes .[cpu] for an unpinned package from the index.
RUN pip install --no-cache-dir "./[cpu]"

# -- runtime: the venv only, a non-root user, the repository mounted at /models
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 sluiceway \
    && useradd --system --uid 10001 --gid sluiceway --create-home --home-dir /home/sluiceway sluiceway \
    && mkdir /models && chown sluiceway:sluiceway /models
COPY --from=build /opt/venv /opt/venv
# Listen on every interface (the default, 127.0.0.1, is for a laptop); JSON log lines for collectors.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SLUICEWAY_HOST=0.0.0.0 \
    SLUICEWAY_PORT=8001 \
    SLUICEWAY_METRICS_HOST=0.0.0.0 \
    SLUICEWAY_METRICS_PORT=8002 \
    SLUICEWAY_MODEL_REPOSITORY=/models \
    SLUICEWAY_CACHE_DIR=/home/sluiceway/.cache/sluiceway \
    SLUICEWAY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/sluiceway
EXPOSE 8001 8002
# grpc.health.v1 "" on 127.0.0.1:$SLUICEWAY_PORT: SERVING once the repository's load has finished
# (even when a model failed to load: that model's own service name is NOT_SERVING), NOT_SERVING
# while draining. The probe reads SLUICEWAY_PORT only: set the port with it (-e SLUICEWAY_PORT=9001),
# not with `--port` after the image, or the probe asks 8001 and reports a healthy server unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "clients.health_probe", "--timeout-s", "3"]
# Exec form: the server is PID 1 and gets SIGTERM itself (it drains within shutdown_grace_s).
ENTRYPOINT ["sluiceway", "serve"]
CMD []

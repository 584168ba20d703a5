# One image for every entry point: python -m collector | anomaly | merger | backfill
# (the Kubernetes manifests choose the command). Build: docker build -t fms-iot-collector:TAG .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: wheels for the project and its pinned dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
# Dependencies first (their own layer, rebuilt only when the lock changes).
RUN pip wheel --wheel-dir /wheels -r requirements.lock
# The packages (.dockerignore keeps tests, bench, k8s and local state out of the context).
COPY . .
# The project itself, no test extras; its dependencies come from the lock above.
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: slim, non-root, read-only root filesystem friendly -------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fms-iot-collector" \
      org.opencontainers.image.description="Kafka-to-Parquet collector for factory IoT data" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUST_BACKTRACE=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin fms
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels fms-iot-collector \
    && rm -rf /wheels \
    && python -c "import collector.__main__, anomaly.__main__, merger.__main__"
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["python", "-m", "collector"]

# syntax=docker/dockerfile:1
# vary's container images, GPU and CPU, from this one file (docs/deploy.md has the commands that were run).
#
#   GPU (CUDA runtime base, PyTorch's CUDA wheels):
#     docker build -t vary:gpu \
#       --build-arg BASE_IMAGE=docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   CPU (slim Python base, PyTorch's CPU wheels: the defaults):
#     docker build -t vary:cpu .
#
# The bases are build arguments, so the same file builds from a locally made base where no registry can
# be reached (tests/container/test_image.py). The index torch comes from is one too: where only PyPI can
# be reached, TORCH_INDEX_URL=https://pypi.org/simple (PyPI's torch is the CUDA build: a bigger image).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# What both stages share: a Python that makes venvs, and tini, so that SIGTERM reaches vary as PID 1 even
# before uvicorn installs its handlers (PID 1 ignores a signal it has no handler for).
FROM ${BASE_IMAGE} AS python
# Unpinned: the base's own distribution decides the versions. $packages is a list, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN packages="tini"; \
    python3 -c "import venv, ensurepip" 2>/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/*

FROM python AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=cluster
# Where the network intercepts TLS, the CA bundle pip should trust (a path bind-mounted for the build only).
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# torch first, from its own index (CPU or a CUDA build), in a layer of its own that survives vary's changes.
RUN python3 -m venv /opt/vary \
    && /opt/vary/bin/pip install --index-url "${TORCH_INDEX_URL}" torch
COPY pyproject.toml README.md LICENSE /build/
COPY src /build/src
RUN /opt/vary/bin/pip install "/build[${EXTRAS}]"

FROM python AS runtime
# Settings come from the environment (every `vary serve` flag is a VARY_* variable): listen on every
# interface, keep the data dir and the Hugging Face cache in volumes.
ENV PATH=/opt/vary/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VARY_HOST=0.0.0.0 \
    VARY_PORT=8000 \
    VARY_DATA_DIR=/data \
    HF_HOME=/cache/huggingface
# wget: KubeRay's probes run it in the Ray containers (examples/kuberay-rayservice.yaml).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vary \
    && useradd --system --no-log-init --uid 10001 --gid vary --home-dir /data --shell /usr/sbin/nologin vary \
    && mkdir -p /data /cache/huggingface \
    && chown -R vary:vary /data /cache
COPY --from=builder /opt/vary /opt/vary
USER 10001:10001
WORKDIR /data
VOLUME ["/data", "/cache/huggingface"]
EXPOSE 8000
# Loading real weights takes minutes: the start period covers it. No curl in the image: Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('VARY_PORT', '8000')}/healthz\", timeout=4)"]
# SIGTERM: uvicorn stops accepting and lets requests in flight finish (VARY_SHUTDOWN_TIMEOUT_SECONDS).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "vary"]
CMD ["serve"]

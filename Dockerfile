# syntax=docker/dockerfile:1
# vary's container images, GPU and CPU, from this one file (docs/deploy.md has the commands that were run).
#
#   GPU: torch as requirements.lock pins it, from PyPI, whose wheels carry CUDA (no CUDA base image: CUDA once)
#     docker build -t vary:gpu --build-arg TORCH_INDEX_URL= .
#   CPU (the default): the same torch version from PyTorch's CPU index, without the CUDA wheels
#     docker build -t vary:cpu .
#   Either, with one model's weights baked in for clusters that cannot reach the Hugging Face Hub:
#     docker build -t vary:gpu-kandinsky --build-arg TORCH_INDEX_URL= --build-arg MODEL=kandinsky-2.2 .
#
# Layers, so that an edit of vary's source rebuilds only the last ones: the base (tini), the dependencies from
# requirements.lock (gigabytes; rebuilt only when the lock changes), then vary's own wheel, then the weights.
# The base is a build argument too, so the same file builds from a locally made base where no registry can be
# reached (deploy/podman/make-base.sh; tests/deploy/test_image.py).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# What every stage shares: a Python that makes venvs, and tini, so that SIGTERM reaches vary as PID 1 even
# before uvicorn installs its handlers (PID 1 ignores a signal it has no handler for).
FROM ${BASE_IMAGE} AS python
# Unpinned: the base's own distribution decides the versions. $packages is a list, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN packages="tini"; \
    python3 -c "import venv, ensurepip" 2>/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/*

# The dependencies, exactly as requirements.lock pins them, in a venv of their own.
FROM python AS dependencies
# Empty: torch from PyPI with its CUDA wheels (the GPU image). An index URL: torch from there, at the lock's
# version, and none of the lock's CUDA wheels (PyTorch's CPU index: the CPU image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Where the network intercepts TLS, the CA bundle pip should trust (a path bind-mounted for the build only).
ARG PIP_CERT
# A directory of wheels pip may take files from besides the index (a local mirror, bind-mounted likewise).
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock /build/requirements.lock
# --no-deps: the lock is complete, so nothing unpinned comes in; `pip check` proves it is consistent.
RUN python3 -m venv /opt/vary \
    && if [ -n "${TORCH_INDEX_URL}" ]; then \
         grep -E '^torch==' /build/requirements.lock > /build/torch.txt \
         && /opt/vary/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" -r /build/torch.txt \
         && awk '!/^(nvidia-|triton==|torch==)/ || /^nvidia-ml-py==/' /build/requirements.lock > /build/deps.txt; \
       else cp /build/requirements.lock /build/deps.txt; fi \
    && /opt/vary/bin/pip install --no-deps -r /build/deps.txt \
    && /opt/vary/bin/pip check

# vary itself, as a wheel: the only layer an edit of the source changes.
FROM python AS wheel
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md LICENSE /build/
COPY src /build/src
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /dist /build

FROM python AS runtime
# Settings come from the environment (every `vary serve` flag is a VARY_* variable, and VARY_*_FILE reads one
# from a file): listen on every interface, keep the data dir and the Hugging Face cache in volumes. SIGTERM:
# /readyz fails at once and requests are still served for 10 s (load balancers notice), then those in flight
# finish (VARY_SHUTDOWN_TIMEOUT_SECONDS).
ENV PATH=/opt/vary/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VARY_HOST=0.0.0.0 \
    VARY_PORT=8000 \
    VARY_DATA_DIR=/data \
    VARY_DRAIN_SECONDS=10 \
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
COPY --from=dependencies /opt/vary /opt/vary
# vary's wheel and, with MODEL, one model's weights (`vary pull`), for clusters without the Hub: the image then
# serves that model by default, offline. Empty: none (the weights come at the first start, into the volume).
# These two small layers are all that a source edit changes. (COPY, not a RUN --mount of the wheel stage:
# buildah's layer cache does not see a mounted stage change, and would keep the old vary.)
COPY --from=wheel /dist /dist
ARG MODEL=""
RUN pip install --no-deps --no-cache-dir --disable-pip-version-check /dist/*.whl \
    && if [ -n "${MODEL}" ]; then vary pull "${MODEL}" && chown -R vary:vary /cache/huggingface; fi
ENV VARY_MODEL=${MODEL:-kandinsky-2.2} \
    HF_HUB_OFFLINE=${MODEL:+1}
USER 10001:10001
WORKDIR /data
VOLUME ["/data", "/cache/huggingface"]
EXPOSE 8000
# Loading real weights takes minutes: the start period covers it. No curl in the image: Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('VARY_PORT', '8000')}/healthz\", timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "vary"]
CMD ["serve"]
